#!/usr/bin/env python3
"""Step `evaluate`: run the exported ONNX model with onnxruntime on the held-out split.

    python3 evaluate.py --model MODEL_DIR --data DATASET.npz --min-accuracy 0.85 \
        --accuracy-out FILE

Writes the test accuracy to FILE (the step's output parameter) and exits 1 when it is below
--min-accuracy, which fails the step and stops the pipeline before anything is registered.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (model.onnx inside) or .onnx file")
    p.add_argument("--data", required=True)
    p.add_argument("--min-accuracy", type=float, default=0.0)
    p.add_argument("--accuracy-out", required=True)
    a = p.parse_args()
    path = os.path.join(a.model, "model.onnx") if os.path.isdir(a.model) else a.model
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    data = np.load(a.data)
    (prob,) = session.run(["OUTPUT0"], {"INPUT0": data["X_test"].astype(np.float32)})
    accuracy = float(((prob[:, 0] > 0.5) == (data["y_test"] > 0.5)).mean())
    with open(a.accuracy_out, "w") as f:
        f.write(f"{accuracy:.4f}\n")
    print(f"test accuracy {accuracy:.4f} on {len(prob)} rows (minimum {a.min_accuracy})")
    if accuracy < a.min_accuracy:
        print(f"accuracy {accuracy:.4f} < min_accuracy {a.min_accuracy}: not registering", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
