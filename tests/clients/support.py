"""What the client tests share: one face over tritonclient.http and tritonclient.grpc, and
onnxruntime's own answers to compare the server's with."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.utils import np_to_triton_dtype

PROTOCOLS = ["http", "grpc"]
# transport id -> (protocol, binary tensor data); gRPC always carries raw bytes.
TRANSPORTS = {"http-json": ("http", False), "http-binary": ("http", True), "grpc": ("grpc", True)}

ORT_DATASET_MODELS = ["mul_1", "sigmoid", "logreg_iris"]

# The status an InferenceServerException carries for each protocol: the HTTP status code as a
# string (tritonclient.http) or the gRPC status code's name (tritonclient.grpc).
NOT_FOUND = {"http": "404", "grpc": "StatusCode.NOT_FOUND"}
INVALID_ARGUMENT = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def ort_dataset_path(name: str) -> Path:
    from onnxruntime import datasets

    return Path(datasets.__file__).parent / f"{name}.onnx"


@dataclass
class Client:
    """A tritonclient InferenceServerClient of either protocol."""

    protocol: str  # "http" or "grpc"
    module: object  # tritonclient.http or tritonclient.grpc
    api: object  # the InferenceServerClient
    binary: bool = True  # http only: send and ask for binary tensor data

    @classmethod
    def connect(cls, protocol: str, url: str) -> "Client":
        module = httpclient if protocol == "http" else grpcclient
        return cls(protocol, module, module.InferenceServerClient(url=url))

    def close(self):
        self.api.close()

    def as_dict(self, value) -> dict:
        """A response as a dict with proto field names (gRPC messages converted; int64 fields
        then come as strings, so compare them through int())."""
        if isinstance(value, Message):
            return json_format.MessageToDict(
                value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        return value

    def metadata(self, model: str, version: str = "") -> dict:
        return self.as_dict(self.api.get_model_metadata(model, version))

    def config(self, model: str, version: str = "") -> dict:
        cfg = self.api.get_model_config(model, version)
        return self.as_dict(cfg.config if self.protocol == "grpc" else cfg)

    def index(self) -> list[dict]:
        index = self.api.get_model_repository_index()
        return self.as_dict(index)["models"] if self.protocol == "grpc" else index

    def stats(self, model: str, version: str = "") -> dict:
        return self.as_dict(self.api.get_inference_statistics(model, version))

    def inputs(self, feeds: dict[str, np.ndarray]) -> list:
        """InferInputs for `feeds`, each with the datatype of its numpy array."""
        result = []
        for name, array in feeds.items():
            tensor = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=self.binary)
            else:
                tensor.set_data_from_numpy(array)
            result.append(tensor)
        return result

    def requested(self, names: list[str]) -> list:
        if self.protocol == "http":
            return [self.module.InferRequestedOutput(n, binary_data=self.binary) for n in names]
        return [self.module.InferRequestedOutput(n) for n in names]

    def infer(self, model: str, feeds: dict, outputs: list[str], version: str = "") -> dict[str, np.ndarray]:
        """Run one inference asking for `outputs`; returns them by name."""
        result = self.api.infer(model, self.inputs(feeds), model_version=version, outputs=self.requested(outputs))
        arrays = {n: result.as_numpy(n) for n in outputs}
        for name, array in arrays.items():
            assert array is not None, f"output {name} missing from the response: {result.get_response()}"
        return arrays


def output_names(result) -> list[str]:
    """Names of the outputs in an InferResult of either protocol."""
    response = result.get_response()
    if isinstance(response, Message):
        return [o.name for o in response.outputs]
    return [o["name"] for o in response["outputs"]]


@functools.lru_cache(maxsize=None)
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def ort_run(repository: Path, model: str, feeds: dict, outputs: list[str], version: str = "1") -> dict:
    """onnxruntime's answer for `model` (the file the server serves) on `feeds`."""
    session = _session(os.fspath(repository / model / version / "model.onnx"))
    ort_feeds = {n: (to_str(a) if a.dtype == np.object_ else a) for n, a in feeds.items()}
    return dict(zip(outputs, session.run(outputs, ort_feeds)))


def to_str(array: np.ndarray) -> np.ndarray:
    """A BYTES tensor (np.object_ of bytes or str) as str, how onnxruntime takes and gives strings."""
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(array)


def assert_tensor_equal(got: np.ndarray, want: np.ndarray, name: str, rtol=1e-5, atol=1e-6):
    """Compare a served output with onnxruntime's: same shape, same numpy dtype, close values."""
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    if want.dtype == np.object_:
        np.testing.assert_array_equal(to_str(got), to_str(want), err_msg=name)
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


# What the server should say about each model it loads: (max_batch_size, inputs, outputs) with
# tensors as name -> (datatype, metadata shape). Metadata shapes carry -1 for the batch dim when
# max_batch_size > 0. The onnxruntime dataset models have no config.pbtxt and fixed shapes, so
# they are completed with max_batch_size 0 and their full shapes.
EXPECTED = {
    "simple": (8, {"INPUT0": ("INT32", [-1, 16]), "INPUT1": ("INT32", [-1, 16])},
               {"OUTPUT0": ("INT32", [-1, 16]), "OUTPUT1": ("INT32", [-1, 16])}),
    "mlp_classifier": (32, {"input": ("FP32", [-1, 4])},
                       {"probabilities": ("FP32", [-1, 3]), "label": ("INT64", [-1, 1])}),
    "identity_bytes": (8, {"INPUT0": ("BYTES", [-1, -1])}, {"OUTPUT0": ("BYTES", [-1, -1])}),
    "fp16_scale": (8, {"INPUT0": ("FP16", [-1, 8])}, {"OUTPUT0": ("FP16", [-1, 8])}),
    "dynamic_add": (4, {"x": ("FP32", [-1, -1])}, {"y": ("FP32", [-1, -1])}),
    "mul_1": (0, {"X": ("FP32", [3, 2])}, {"Y": ("FP32", [3, 2])}),
    "sigmoid": (0, {"x": ("FP32", [3, 4, 5])}, {"y": ("FP32", [3, 4, 5])}),
    # logreg_iris's other output, "probabilities", is a sequence of maps: not a tensor.
    "logreg_iris": (0, {"float_input": ("FP32", [3, 2])}, {"label": ("INT64", [3])}),
}  # fmt: skip
LOADABLE = sorted(EXPECTED)
UNLOADABLE = ["broken", "badconfig"]

CONFIG_TYPES = {"INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "BYTES": "TYPE_STRING"}


def sample_inputs(model: str, seed: int = 0) -> tuple[dict, list[str]]:
    """Inputs for one inference of `model`, and the outputs to ask for."""
    rng = np.random.default_rng(seed)
    if model == "simple":
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        return {"INPUT0": a, "INPUT1": np.full_like(a, 3)}, ["OUTPUT0", "OUTPUT1"]
    if model == "mlp_classifier":
        return {"input": rng.standard_normal((5, 4)).astype(np.float32)}, ["probabilities", "label"]
    if model == "identity_bytes":
        words = [[b"hello", b"nexus", b""], [b"a", b"d\xc3\xa9f", b"\xe2\x9c\x93 ok"]]
        return {"INPUT0": np.array(words, dtype=np.object_)}, ["OUTPUT0"]
    if model == "fp16_scale":
        return {"INPUT0": np.linspace(-3, 3, 24, dtype=np.float16).reshape(3, 8)}, ["OUTPUT0"]
    if model == "dynamic_add":
        return {"x": rng.standard_normal((3, 5)).astype(np.float32)}, ["y"]
    if model == "mul_1":
        return {"X": rng.standard_normal((3, 2)).astype(np.float32)}, ["Y"]
    if model == "sigmoid":
        return {"x": rng.standard_normal((3, 4, 5)).astype(np.float32)}, ["y"]
    if model == "logreg_iris":
        return {"float_input": rng.uniform(0, 7, (3, 2)).astype(np.float32)}, ["label"]
    raise KeyError(model)
