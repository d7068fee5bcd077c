#!/usr/bin/env python3
"""Build the example Triton-layout model repository for Nexus.

    python examples/make_models.py [--out DIR]      (default: examples/models)

Every model is built with the `onnx` package (opset 17, IR version 8, weights from numpy
with fixed seeds), so the output is byte-for-byte reproducible. The `model.onnx` files go
into version folders (`<model>/<version>/model.onnx`, gitignored); the `config.pbtxt` files
are written here too, deterministically, and are committed. Files are only rewritten when
their content changes, so running this again is quick and leaves timestamps alone.

When `onnxruntime` is importable, each model is loaded and run once after it is written and
checked against a numpy reference; one line per model says how that went.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
DEFAULT_OUT = Path(__file__).resolve().parent / "models"


@dataclass
class Tensor:
    """One input or output as both ONNX and config.pbtxt see it."""

    name: str
    onnx_type: int
    shape: list  # ONNX shape: ints, or strings for symbolic (dynamic) dims
    config_type: str  # config.pbtxt data_type, e.g. TYPE_INT32
    config_dims: list  # config.pbtxt dims (without the batch dim when max_batch_size > 0)

    def value_info(self) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(self.name, self.onnx_type, self.shape)


@dataclass
class Version:
    """One version folder: the graph's nodes and initializers."""

    number: int
    nodes: list
    initializers: list = field(default_factory=list)


@dataclass
class Model:
    """A model of the example repository and how to check it."""

    name: str
    inputs: list
    outputs: list
    versions: list
    # config.pbtxt body after the inputs/outputs; None: no config.pbtxt (auto-completed)
    config_tail: str | None
    max_batch_size: int = 0
    # numpy reference: (version number, feeds) -> list of expected outputs
    sample: callable = None
    reference: callable = None


# --------------------------------------------------------------------------- models


def simple() -> Model:
    """Triton's classic "simple" example: sum and difference of two INT32 vectors."""
    inputs = [Tensor(n, TensorProto.INT32, ["batch", 16], "TYPE_INT32", [16]) for n in ("INPUT0", "INPUT1")]
    outputs = [Tensor(n, TensorProto.INT32, ["batch", 16], "TYPE_INT32", [16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]

    def sample(_version):
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        return {"INPUT0": a, "INPUT1": np.ones_like(a)}

    def reference(_version, feeds):
        return [feeds["INPUT0"] + feeds["INPUT1"], feeds["INPUT0"] - feeds["INPUT1"]]

    return Model(
        name="simple",
        inputs=inputs,
        outputs=outputs,
        versions=[Version(1, nodes)],
        max_batch_size=8,
        config_tail="instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n",
        sample=sample,
        reference=reference,
    )


MLP_SEEDS = {1: 1, 2: 2}


def mlp_weights(version: int) -> dict:
    """The weights of mlp_classifier version `version` (a fixed seed per version)."""
    rng = np.random.default_rng(MLP_SEEDS[version])
    return {
        "W1": rng.standard_normal((4, 16)).astype(np.float32),
        "b1": rng.standard_normal(16).astype(np.float32) * np.float32(0.1),
        "W2": rng.standard_normal((16, 3)).astype(np.float32),
        "b2": rng.standard_normal(3).astype(np.float32) * np.float32(0.1),
    }


def mlp_classifier() -> Model:
    """A 4 -> 16 (ReLU) -> 3 classifier: softmax probabilities and the arg-max label."""
    inputs = [Tensor("input", TensorProto.FLOAT, ["batch", 4], "TYPE_FP32", [4])]
    outputs = [
        Tensor("probabilities", TensorProto.FLOAT, ["batch", 3], "TYPE_FP32", [3]),
        Tensor("label", TensorProto.INT64, ["batch", 1], "TYPE_INT64", [1]),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "b1"], ["hidden_pre"]),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    versions = [
        Version(v, nodes, [numpy_helper.from_array(w, name) for name, w in mlp_weights(v).items()])
        for v in sorted(MLP_SEEDS)
    ]

    def sample(_version):
        return {"input": np.linspace(-2, 2, 5 * 4, dtype=np.float32).reshape(5, 4)}

    def reference(version, feeds):
        w = mlp_weights(version)
        logits = np.maximum(feeds["input"] @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return [e / e.sum(axis=1, keepdims=True), logits.argmax(axis=1).astype(np.int64)[:, None]]

    return Model(
        name="mlp_classifier",
        inputs=inputs,
        outputs=outputs,
        versions=versions,
        max_batch_size=32,
        config_tail=(
            "instance_group [\n  {\n    count: 2\n    kind: KIND_CPU\n  }\n]\n"
            "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n"
            "version_policy: { latest: { num_versions: 1 } }\n"
        ),
        sample=sample,
        reference=reference,
    )


def identity_bytes() -> Model:
    """BYTES passthrough: a string tensor of any length per batch row comes back unchanged."""
    inputs = [Tensor("INPUT0", TensorProto.STRING, ["batch", "length"], "TYPE_STRING", [-1])]
    outputs = [Tensor("OUTPUT0", TensorProto.STRING, ["batch", "length"], "TYPE_STRING", [-1])]
    nodes = [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])]

    def sample(_version):
        return {"INPUT0": np.array([["hello", "nexus", ""], ["a", "bc", "déf"]], dtype=object)}

    def reference(_version, feeds):
        return [feeds["INPUT0"]]

    return Model(
        name="identity_bytes",
        inputs=inputs,
        outputs=outputs,
        versions=[Version(1, nodes)],
        max_batch_size=8,
        config_tail="",
        sample=sample,
        reference=reference,
    )


def fp16_scale() -> Model:
    """FP16 in, FP16 out: the input times 2."""
    inputs = [Tensor("INPUT0", TensorProto.FLOAT16, ["batch", 8], "TYPE_FP16", [8])]
    outputs = [Tensor("OUTPUT0", TensorProto.FLOAT16, ["batch", 8], "TYPE_FP16", [8])]
    two = numpy_helper.from_array(np.array(2, dtype=np.float16), "two")
    nodes = [helper.make_node("Mul", ["INPUT0", "two"], ["OUTPUT0"])]

    def sample(_version):
        return {"INPUT0": np.linspace(-1, 1, 3 * 8, dtype=np.float16).reshape(3, 8)}

    def reference(_version, feeds):
        return [feeds["INPUT0"] * np.float16(2)]

    return Model(
        name="fp16_scale",
        inputs=inputs,
        outputs=outputs,
        versions=[Version(1, nodes, [two])],
        max_batch_size=8,
        config_tail="",
        sample=sample,
        reference=reference,
    )


def dynamic_add() -> Model:
    """No config.pbtxt: Nexus completes the config from the model (both dims dynamic)."""
    inputs = [Tensor("x", TensorProto.FLOAT, ["batch", "width"], "TYPE_FP32", [-1])]
    outputs = [Tensor("y", TensorProto.FLOAT, ["batch", "width"], "TYPE_FP32", [-1])]
    one = numpy_helper.from_array(np.array(1, dtype=np.float32), "one")
    nodes = [helper.make_node("Add", ["x", "one"], ["y"])]

    def sample(_version):
        return {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}

    def reference(_version, feeds):
        return [feeds["x"] + np.float32(1)]

    return Model(
        name="dynamic_add",
        inputs=inputs,
        outputs=outputs,
        versions=[Version(1, nodes, [one])],
        config_tail=None,
        sample=sample,
        reference=reference,
    )


MODELS = [simple, mlp_classifier, identity_bytes, fp16_scale, dynamic_add]


# --------------------------------------------------------------------------- writing


def build_onnx(model: Model, version: Version) -> bytes:
    graph = helper.make_graph(
        version.nodes,
        f"{model.name}_v{version.number}",
        [t.value_info() for t in model.inputs],
        [t.value_info() for t in model.outputs],
        initializer=version.initializers,
    )
    proto = helper.make_model(
        graph,
        producer_name="nexus-examples",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(deterministic=True)


def tensor_block(kind: str, tensors: list) -> str:
    entries = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t.config_dims)
        entries.append(f'  {{\n    name: "{t.name}"\n    data_type: {t.config_type}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def config_pbtxt(model: Model) -> str:
    return (
        f'name: "{model.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {model.max_batch_size}\n"
        + tensor_block("input", model.inputs)
        + tensor_block("output", model.outputs)
        + model.config_tail
    )


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def verify(model: Model, version: Version, path: Path, ort) -> str:
    """Run the model once in onnxruntime and compare with the numpy reference."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = model.sample(version.number)
    got = session.run([t.name for t in model.outputs], feeds)
    want = model.reference(version.number, feeds)
    for tensor, g, w in zip(model.outputs, got, want):
        if tensor.onnx_type == TensorProto.STRING:
            np.testing.assert_array_equal(np.asarray(g, dtype=object), w, err_msg=tensor.name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=tensor.name)
            assert g.dtype == w.dtype, f"{tensor.name}: {g.dtype} != {w.dtype}"
    shapes = ", ".join(f"{t.name}{list(g.shape)}" for t, g in zip(model.outputs, got))
    return f"ok ({shapes})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository to write (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        import onnxruntime as ort
    except ImportError:
        ort = None

    out: Path = args.out
    for make in MODELS:
        model = make()
        changed = []
        if model.config_tail is not None:
            if write_if_changed(out / model.name / "config.pbtxt", config_pbtxt(model).encode()):
                changed.append("config.pbtxt")
        checks = []
        for version in model.versions:
            path = out / model.name / str(version.number) / "model.onnx"
            if write_if_changed(path, build_onnx(model, version)):
                changed.append(f"{version.number}/model.onnx")
            checks.append(f"v{version.number} " + (verify(model, version, path, ort) if ort else "not checked (no onnxruntime)"))
        state = "wrote " + ", ".join(changed) if changed else "up to date"
        print(f"{model.name:15} {state}; " + "; ".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
