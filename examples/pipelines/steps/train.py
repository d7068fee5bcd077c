#!/usr/bin/env python3
"""Step `train`: a one-hidden-layer MLP (tanh, sigmoid output) by full-batch gradient descent.

    python3 train.py --data DATASET.npz --epochs 300 --lr 0.5 --hidden 8 \
        --weights-out WEIGHTS.npz [--train-accuracy-out FILE]

Plain numpy, seeded: the same inputs give the same weights. Writes W1 [F, H], b1 [H],
W2 [H, 1], b2 [1] (float32) to one .npz, the input of `export.py` and the reference a test
can check served predictions against:  sigmoid(tanh(X @ W1 + b1) @ W2 + b2).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def forward(x, w1, b1, w2, b2):
    h = np.tanh(x @ w1 + b1)
    return h, 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))


def train(x, y, epochs: int, lr: float, hidden: int, seed: int):
    rng = np.random.default_rng(seed)
    n, f = x.shape
    x = x.astype(np.float64)
    y = y.reshape(-1, 1).astype(np.float64)
    w1 = rng.standard_normal((f, hidden)) / np.sqrt(f)
    b1 = np.zeros(hidden)
    w2 = rng.standard_normal((hidden, 1)) / np.sqrt(hidden)
    b2 = np.zeros(1)
    for epoch in range(epochs):
        h, p = forward(x, w1, b1, w2, b2)
        d_out = (p - y) / n  # d(mean binary cross-entropy)/d(logit)
        g_w2 = h.T @ d_out
        g_b2 = d_out.sum(axis=0)
        d_h = (d_out @ w2.T) * (1.0 - h * h)
        g_w1 = x.T @ d_h
        g_b1 = d_h.sum(axis=0)
        w1 -= lr * g_w1
        b1 -= lr * g_b1
        w2 -= lr * g_w2
        b2 -= lr * g_b2
        if epoch % max(1, epochs // 5) == 0 or epoch == epochs - 1:
            loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
            print(f"epoch {epoch:4d}  loss {loss:.4f}")
    return [a.astype(np.float32) for a in (w1, b1, w2, b2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-out", required=True)
    p.add_argument("--train-accuracy-out", help="file to write the training accuracy to")
    a = p.parse_args()
    data = np.load(a.data)
    start = time.perf_counter()
    w1, b1, w2, b2 = train(data["X_train"], data["y_train"], a.epochs, a.lr, a.hidden, a.seed)
    _, prob = forward(data["X_train"], w1, b1, w2, b2)
    accuracy = float(((prob[:, 0] > 0.5) == (data["y_train"] > 0.5)).mean())
    print(f"trained {a.epochs} epochs in {time.perf_counter() - start:.2f}s, train accuracy {accuracy:.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.weights_out)), exist_ok=True)
    with open(a.weights_out, "wb") as f:
        np.savez(f, W1=w1, b1=b1, W2=w2, b2=b2)
    if a.train_accuracy_out:
        with open(a.train_accuracy_out, "w") as f:
            f.write(f"{accuracy:.4f}\n")


if __name__ == "__main__":
    main()
