#!/usr/bin/env python3
"""Build the benchmark model repository (Triton layout) used by benches/compare.sh.

    python benches/make_models.py [--out DIR]      (default: benches/models)

Models (FP32, dynamic batch dimension, opset 17, IR version 8, weights from numpy with
fixed seeds, so the files are byte-for-byte reproducible):

  small_mlp         input [N,16] -> Gemm 16x32 -> Relu -> Gemm 32x8 -> output [N,8].
                    A few microseconds of compute: the server's own overhead dominates.
  wide_mlp          input [N,1024] -> Gemm 1024x8192 -> Relu -> Gemm 8192x1024 -> output [N,1024].
                    64 MiB of weights, more than the L3 cache: one row is a memory-bound
                    matrix-vector product (~1-2 ms on the 2-core benchmark machine), while a
                    batch of 32 reads each weight once for 32 rows.
  wide_mlp_nobatch  the same file as wide_mlp (a symlink), served without dynamic batching.
  small_mlp_nobatch the same file as small_mlp (a symlink), served without dynamic batching
                    (the Triton comparison runs both variants on both servers).

The `model.onnx` files go into `<model>/1/` (gitignored); the `config.pbtxt` files are written
deterministically and committed. Files are only rewritten when their content changes, so a
second run is quick and leaves timestamps alone. When onnxruntime is importable each model is
run once and checked against a numpy reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
DEFAULT_OUT = Path(__file__).resolve().parent / "models"

# ONNX Runtime intra-op threads for every server and for the in-process baseline.
# small_mlp: one thread (a 16x32 product gains nothing from a thread pool, and a second
# spinning thread would take the core the load generator needs on a 2-core machine).
# wide_mlp: two threads, i.e. every core of the benchmark machine, for all runtimes alike.
SMALL_THREADS = 1
WIDE_THREADS = 2

# Batching, tuned on the 2-core benchmark machine (figures in benches/results/NOTES.md):
# small_mlp uses the dynamic batcher with no queue delay: requests that arrive while the
# instance is busy run together (~5 rows per execution at c=16), none ever waits for others.
# That gave 2-3 % more infer/s at c=16 than no batcher, at the same c=1 latency over HTTP.
# wide_mlp waits up to 5 ms for a batch to fill: at c=32 the 32 requests of the previous batch
# come back spread over a few ms on 2 busy cores; 2 ms gave ~22-row batches, 5 ms ~31.
SMALL_BATCHING = "  max_queue_delay_microseconds: 0\n"
WIDE_QUEUE_DELAY_US = 5000


def mlp(name: str, sizes: list[int], seed: int) -> onnx.ModelProto:
    """input [N, sizes[0]] -> (Gemm -> Relu)* -> Gemm -> output [N, sizes[-1]]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    layers = list(zip(sizes[:-1], sizes[1:]))
    for i, (fan_in, fan_out) in enumerate(layers):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        y = "output" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y if last else f"g{i}"], name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [y], name=f"relu{i}"))
        x = y
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nexus-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n = len([k for k in w if k.startswith("w")])
    for i in range(n):
        x = x @ w[f"w{i}"] + w[f"b{i}"]
        if i < n - 1:
            x = np.maximum(x, 0)
    return x


def config(name: str, in_dim: int, out_dim: int, max_batch: int, threads: int, batching: str | None) -> str:
    text = (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        f'input [\n  {{\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ {in_dim} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "output"\n    data_type: TYPE_FP32\n    dims: [ {out_dim} ]\n  }}\n]\n'
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    )
    if batching is not None:
        text += f"dynamic_batching {{\n{batching}}}\n"
    text += f'parameters {{\n  key: "intra_op_thread_count"\n  value: {{ string_value: "{threads}" }}\n}}\n'
    return text


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def link_if_changed(path: Path, target: str) -> bool:
    if path.is_symlink() and os.readlink(path) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    return True


def verify(model: onnx.ModelProto, path: Path, in_dim: int, ort) -> str:
    if ort is None:
        return "not checked (onnxruntime not importable)"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, in_dim), dtype=np.float32)
    (got,) = session.run(["output"], {"input": x})
    want = reference(model, x)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise SystemExit(f"{path}: onnxruntime disagrees with the numpy reference")
    return "checked with onnxruntime"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args(argv).out.resolve()
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None

    small = mlp("small_mlp", [16, 32, 8], seed=1)
    wide = mlp("wide_mlp", [1024, 8192, 1024], seed=2)
    wide_batching = f"  max_queue_delay_microseconds: {WIDE_QUEUE_DELAY_US}\n"
    entries = [
        ("small_mlp", small, 16, 8, 64, SMALL_THREADS, SMALL_BATCHING),
        ("wide_mlp", wide, 1024, 1024, 32, WIDE_THREADS, wide_batching),
        ("wide_mlp_nobatch", None, 1024, 1024, 32, WIDE_THREADS, None),
        ("small_mlp_nobatch", None, 16, 8, 64, SMALL_THREADS, None),
    ]
    for name, model, in_dim, out_dim, max_batch, threads, batching in entries:
        changed = []
        onnx_path = out / name / "1" / "model.onnx"
        if model is None:
            source = name.removesuffix("_nobatch")
            if link_if_changed(onnx_path, f"../../{source}/1/model.onnx"):
                changed.append(f"model.onnx -> {source}")
            note = f"same file as {source}"
        else:
            if write_if_changed(onnx_path, model.SerializeToString()):
                changed.append("model.onnx")
            note = verify(model, onnx_path, in_dim, ort)
        text = config(name, in_dim, out_dim, max_batch, threads, batching)
        if write_if_changed(out / name / "config.pbtxt", text.encode()):
            changed.append("config.pbtxt")
        print(f"{name:<17} {'wrote ' + ', '.join(changed) if changed else 'up to date'}; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
