#!/usr/bin/env python3
"""Step `export`: the trained weights as an ONNX model folder Nexus can serve.

    python3 export.py --weights WEIGHTS.npz --out MODEL_DIR [--max-batch-size 64]

Writes MODEL_DIR/model.onnx, built with onnx.helper (opset 17, IR 8):
    OUTPUT0 = Sigmoid(Tanh(INPUT0 @ W1 + b1) @ W2 + b2)
with INPUT0 float32 [N, F] and OUTPUT0 float32 [N, 1] (N dynamic: the batch dimension), and
MODEL_DIR/config.pbtxt (Triton's ModelConfig text format). `nexus models push MODEL_DIR`
uploads both; a server following models:/NAME@ALIAS serves the version with that config
(otherwise the config is completed from the model with --default-max-batch-size, 4).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
INPUT = "INPUT0"
OUTPUT = "OUTPUT0"


def build(w1, b1, w2, b2) -> onnx.ModelProto:
    features = w1.shape[0]
    inits = [
        numpy_helper.from_array(np.asarray(w1, np.float32), "W1"),
        numpy_helper.from_array(np.asarray(b1, np.float32), "b1"),
        numpy_helper.from_array(np.asarray(w2, np.float32), "W2"),
        numpy_helper.from_array(np.asarray(b2, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT, "W1"], ["xw1"]),
        helper.make_node("Add", ["xw1", "b1"], ["z1"]),
        helper.make_node("Tanh", ["z1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["hw2"]),
        helper.make_node("Add", ["hw2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp_classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="nexus-examples-pipelines",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def config_text(features: int, max_batch_size: int) -> str:
    # No `name`: the server names the model after what it serves it as.
    return (
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {features} ] }} ]\n'
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ 1 ] }} ]\n'
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--max-batch-size", type=int, default=64)
    a = p.parse_args()
    w = np.load(a.weights)
    model = build(w["W1"], w["b1"], w["W2"], w["b2"])
    os.makedirs(a.out, exist_ok=True)
    onnx.save(model, os.path.join(a.out, "model.onnx"))
    with open(os.path.join(a.out, "config.pbtxt"), "w") as f:
        f.write(config_text(w["W1"].shape[0], a.max_batch_size))
    print(f"exported {a.out}/model.onnx ({w['W1'].shape[0]} features, hidden {w['W1'].shape[1]}) and config.pbtxt")


if __name__ == "__main__":
    main()
