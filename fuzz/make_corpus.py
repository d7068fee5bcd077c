"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ from real inputs:
the repository's model configs and pipeline specs, the KFP pipelines the client tests compile
(with the kfp SDK), V2 requests built by tritonclient, and the MLflow filters of the registry's
search tests. Run from the repository root with the project's virtual environment:

    .venv/bin/python fuzz/make_corpus.py

Inputs found by fuzzing (crashes once fixed, or new coverage worth keeping) are added to the
same folders under their own names; this script only rewrites the files it names.
"""

import ast
import json
import pathlib
import re
import struct
import sys
import tempfile

import numpy as np
import tritonclient.grpc.service_pb2 as pb
import tritonclient.http as httpclient

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target: str, name: str, data: bytes | str) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


# --- V2 requests -------------------------------------------------------------------------------

def v2_inputs():
    """(name, inputs, outputs) of a few requests covering every datatype and both encodings."""
    def inp(name, array, datatype, binary):
        i = httpclient.InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array, binary_data=binary)
        return i

    def out(name, binary):
        return httpclient.InferRequestedOutput(name, binary_data=binary)

    for binary in (False, True):
        kind = "binary" if binary else "json"
        yield f"simple-{kind}", [
            inp("INPUT0", np.arange(16, dtype=np.int32).reshape(1, 16), "INT32", binary),
            inp("INPUT1", np.ones((1, 16), dtype=np.int32), "INT32", binary),
        ], [out("OUTPUT0", binary), out("OUTPUT1", False)]
        yield f"floats-{kind}", [
            inp("x", np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "FP32", binary),
            inp("d", np.array([1e300, -0.0], dtype=np.float64), "FP64", binary),
        ], [out("y", binary)]
        yield f"bytes-{kind}", [
            inp("s", np.array([b"hello", b"", "ключ".encode()], dtype=np.object_), "BYTES", binary),
        ], None
        yield f"ints-{kind}", [
            inp("b", np.array([True, False]), "BOOL", binary),
            inp("i8", np.array([-128, 127], dtype=np.int8), "INT8", binary),
            inp("u16", np.array([65535], dtype=np.uint16), "UINT16", binary),
            inp("i64", np.array([-(2**63)], dtype=np.int64), "INT64", binary),
            inp("u64", np.array([2**64 - 1], dtype=np.uint64), "UINT64", binary),
        ], None
    yield "fp16-binary", [inp("h", np.array([1.5, -2], dtype=np.float16), "FP16", True)], None


def v2_requests() -> None:
    for name, inputs, outputs in v2_inputs():
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            inputs, outputs=outputs, request_id="req-1"
        )
        if json_size is None:
            write("v2_json", f"{name}.json", body)
        else:
            write("v2_binary", f"{name}.bin", struct.pack("<H", json_size) + body)
    write("v2_json", "parameters.json", json.dumps({
        "id": "r", "parameters": {"binary_data_output": True, "priority": 1},
        "inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]],
                    "parameters": {"shared_memory_region": "x"}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }))


# --- gRPC ModelInferRequest --------------------------------------------------------------------

def grpc_requests() -> None:
    def tensor(name, datatype, shape, **contents):
        t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(t.contents, field).extend(values)
        return t

    typed = pb.ModelInferRequest(model_name="simple", model_version="1", id="typed")
    typed.inputs.extend([
        tensor("b", "BOOL", [2], bool_contents=[True, False]),
        tensor("i8", "INT8", [2], int_contents=[-128, 127]),
        tensor("i32", "INT32", [1, 2], int_contents=[1, -1]),
        tensor("i64", "INT64", [1], int64_contents=[-(2**63)]),
        tensor("u16", "UINT16", [1], uint_contents=[65535]),
        tensor("u64", "UINT64", [1], uint64_contents=[2**64 - 1]),
        tensor("f", "FP32", [2], fp32_contents=[0.5, -1]),
        tensor("d", "FP64", [1], fp64_contents=[1e-300]),
        tensor("s", "BYTES", [2], bytes_contents=[b"a", b""]),
    ])
    typed.outputs.add(name="y")
    typed.parameters["priority"].int64_param = 1
    write("grpc_model_infer", "typed.pb", typed.SerializeToString())

    raw = pb.ModelInferRequest(model_name="simple", id="raw")
    raw.inputs.extend([
        pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[1, 4]),
        pb.ModelInferRequest.InferInputTensor(name="h", datatype="FP16", shape=[2]),
        pb.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[1]),
    ])
    raw.raw_input_contents.extend([
        np.arange(4, dtype=np.int32).tobytes(),
        np.array([1, 2], dtype=np.float16).tobytes(),
        struct.pack("<I", 3) + b"abc",
    ])
    raw.outputs.add(name="OUTPUT0").parameters["binary_data"].bool_param = True
    write("grpc_model_infer", "raw.pb", raw.SerializeToString())


# --- config.pbtxt ------------------------------------------------------------------------------

def model_configs() -> None:
    for path in sorted(ROOT.glob("*/models/*/config.pbtxt")):
        write("config_pbtxt", f"{path.parent.parent.parent.name}-{path.parent.name}.pbtxt",
              path.read_text())
    write("config_pbtxt", "ensemble-and-policies.pbtxt", """\
name: "e"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest { num_versions: 2 } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] reshape: { shape: [ 3 ] } } ]
output [ { name: "y", data_type: TYPE_STRING, dims: [ 1 ], label_filename: "labels.txt" } ]
instance_group [ { count: 2, kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
# a comment with "quotes" and [brackets]
optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
""")


# --- MLflow filters ----------------------------------------------------------------------------

FILTER_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
COMPARISON = re.compile(r"(=|<|>|\bLIKE\b|\bILIKE\b|\bIS\b|\bIN\b)", re.IGNORECASE)


def mlflow_filters() -> None:
    """Every comparison-looking string literal of the registry's search tests."""
    source = (ROOT / "registry" / "src" / "search.rs").read_text()
    tests = source[source.index("mod tests"):]
    filters = set()
    for literal in FILTER_LITERAL.findall(tests):
        # Rust's line continuation (backslash, newline, indentation) joins the lines.
        literal = re.sub(r"\\\n\s*", "", literal)
        try:
            text = ast.literal_eval('"' + literal + '"')
        except (SyntaxError, ValueError):
            continue
        if COMPARISON.search(text) and len(text) < 300:
            filters.add(text)
    filters.update([
        "attributes.status = 'FINISHED' AND metrics.acc >= 0.9 AND params.lr != '0.1'",
        "tags.`mlflow.runName` LIKE 'a%' AND tags.\"x y\" IS NOT NULL",
        "run_id IN ('a', 'b') AND attributes.start_time > 1700000000000",
        "name ILIKE '%model%' AND tags.`mlflow.prompt.is_prompt` = 'true'",
        "params.`ключ` = 'значение'",
    ])
    for i, text in enumerate(sorted(filters)):
        write("mlflow_filter", f"filter-{i:03}.txt", text)


# --- pipelines ---------------------------------------------------------------------------------

def pipeline_specs() -> None:
    for path in sorted((ROOT / "examples" / "pipelines").glob("*.yaml")):
        text = path.read_text()
        write("pipeline_spec", path.name, text)
        # Relative workdirs are refused without a base folder: also the rest of the spec.
        write("pipeline_spec", f"no-workdir-{path.name}", re.sub(r"\n\s*workdir: .*", "", text))
    write("pipeline_spec", "features.yaml", """\
name: features
cache: true
parameters:
  n: 3
  who: {default: world}
steps:
  - name: a
    command: "echo {{params.who}} > {{outputs.greeting}}"
    outputs: {parameters: [greeting], artifacts: [data]}
    retries: 2
    backoff: 1s
    timeout: 30
    env: {X: "{{params.n}}", Y: 1}
  - name: b
    image: python:3.11
    command: [python3, -c, "import sys; print(sys.argv)", "{{steps.a.outputs.greeting}}"]
    args: [--data, "{{steps.a.outputs.data}}"]
    after: [a]
    cache: false
    resources: {cpu: "1", memory: 1Gi}
""")


def kfp_pipelines() -> None:
    """Every pipeline of tests/clients/kfp_pipelines.py, compiled by the kfp SDK."""
    from kfp import compiler
    from kfp.dsl.graph_component import GraphComponent

    sys.path.insert(0, str(ROOT / "tests" / "clients"))
    import kfp_pipelines

    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(vars(kfp_pipelines)):
            pipeline = getattr(kfp_pipelines, name)
            if not isinstance(pipeline, GraphComponent):
                continue
            out = pathlib.Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(pipeline, str(out))
            write("kfp_ir", f"{name}.yaml", out.read_text())


if __name__ == "__main__":
    v2_requests()
    grpc_requests()
    model_configs()
    mlflow_filters()
    pipeline_specs()
    kfp_pipelines()
