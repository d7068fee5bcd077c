#!/usr/bin/env python3
"""Step `prepare`: a synthetic, seeded binary-classification dataset, split train/test.

    python3 prepare.py --seed 0 --samples 2000 --features 4 --out DATASET.npz

Points are drawn from a standard normal; the label is the side of a fixed random
hyperplane they fall on, with a little label noise and a curved term so a hidden layer
helps. Writes one .npz with X_train, y_train, X_test, y_test (float32 X, float32 y in {0, 1}).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def make(seed: int, samples: int, features: int, test_fraction: float):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    w = rng.standard_normal(features)
    score = x @ w + 0.5 * x[:, 0] * x[:, 1 % features] + 0.25 * rng.standard_normal(samples)
    y = (score > 0).astype(np.float32)
    split = int(samples * (1 - test_fraction))
    return x[:split], y[:split], x[split:], y[split:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--out", required=True, help="where to write the dataset (.npz)")
    a = p.parse_args()
    x_train, y_train, x_test, y_test = make(a.seed, a.samples, a.features, a.test_fraction)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    # np.savez appends .npz to names without it; write through a file object to keep the path exact.
    with open(a.out, "wb") as f:
        np.savez(f, X_train=x_train, y_train=y_train, X_test=x_test, y_test=y_test)
    print(f"dataset: {len(x_train)} train / {len(x_test)} test rows, {a.features} features, "
          f"{y_train.mean():.0%} positive -> {a.out}")


if __name__ == "__main__":
    main()
