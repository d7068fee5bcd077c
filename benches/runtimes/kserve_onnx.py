#!/usr/bin/env python3
"""Serve one ONNX file with KServe's Python model server (kserve 0.21) and onnxruntime.

    python benches/runtimes/kserve_onnx.py --name small_mlp --model-file PATH \
        --http-port 18100 --grpc-port 18101 [--intra-op-threads 1]

A `kserve.Model` subclass loads the file into an onnxruntime InferenceSession and implements
the V2 `predict` (InferRequest -> InferResponse); `kserve.ModelServer(workers=1)` serves it
over V2 REST (JSON and the binary tensor extension) and V2 gRPC. `predict` is synchronous,
as in KServe's own sklearn/xgboost runtimes: for a model that runs in microseconds, a hop to
a thread pool would cost more than it frees the event loop.

KServe 0.21 binds REST to 0.0.0.0 and gRPC to [::] with no option to change it; for a
benchmark both are pinned to 127.0.0.1 here (two small patches below), nothing else changes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Dict, Optional

import onnxruntime as ort

# kserve parses sys.argv when it is imported (parse_known_args): give it only its own flags.
_cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_cli.add_argument("--name", required=True)
_cli.add_argument("--model-file", required=True)
_cli.add_argument("--http-port", type=int, default=18100)
_cli.add_argument("--grpc-port", type=int, default=18101)
_cli.add_argument("--intra-op-threads", type=int, default=1)
ARGS = _cli.parse_args()
sys.argv = sys.argv[:1]

import grpc.aio  # noqa: E402
import kserve  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.protocol.rest import server as rest_server  # noqa: E402
from kserve.utils.numpy_codec import from_np_dtype  # noqa: E402
from kserve.utils.utils import generate_uuid  # noqa: E402

_rest_init = rest_server.RESTServer.__init__


def _rest_init_loopback(self, *args, **kwargs):
    _rest_init(self, *args, **kwargs)
    self.config.host = "127.0.0.1"


rest_server.RESTServer.__init__ = _rest_init_loopback

_server_factory = grpc.aio.server


def _grpc_server_loopback(*args, **kwargs):
    server = _server_factory(*args, **kwargs)
    add_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
    return server


grpc.aio.server = _grpc_server_loopback

DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
}


class OnnxModel(kserve.Model):
    def __init__(self, name: str, model_file: str, threads: int):
        super().__init__(name)
        self.model_file = model_file
        self.threads = threads
        self.session: Optional[ort.InferenceSession] = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.model_file, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def _types(self, tensors) -> list:
        return [
            {"name": t.name, "datatype": DATATYPES.get(t.type, t.type), "shape": [d if isinstance(d, int) else -1 for d in t.shape]}
            for t in tensors
        ]

    def get_input_types(self) -> list:
        return self._types(self.session.get_inputs())

    def get_output_types(self) -> list:
        return self._types(self.session.get_outputs())

    def predict(self, payload: InferRequest, headers: Dict[str, str] = None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        binary = payload.use_binary_outputs
        outputs = []
        for name, array in zip(self.output_names, results):
            out = InferOutput(name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype))
            out.set_data_from_numpy(array, binary_data=binary)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id or generate_uuid(),
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    model = OnnxModel(ARGS.name, ARGS.model_file, ARGS.intra_op_threads)
    server = kserve.ModelServer(
        http_port=ARGS.http_port, grpc_port=ARGS.grpc_port, workers=1, enable_latency_logging=False
    )
    # No per-request log lines (uvicorn's access log, KServe's REST timing middleware and gRPC
    # logging interceptor), as with Nexus and with MLServer (debug: false) in this benchmark.
    for name in ("uvicorn.access", "kserve.trace", "kserve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
