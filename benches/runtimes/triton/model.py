"""Triton Python-backend model for benches/compare.sh: runs the model's `model.onnx` (a link to
the very file Nexus serves) with onnxruntime, the intra-op thread count taken from the
`intra_op_thread_count` parameter of config.pbtxt, as Nexus reads it.

With dynamic batching Triton hands `execute` several requests at once: their rows are
concatenated into one ONNX Runtime run and the outputs split back, which is what Triton's own
ONNX Runtime backend does with a batch (and what the batcher is for). Without it, each call
carries one request.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config["parameters"]["intra_op_thread_count"]["string_value"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        parts = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
        if len(requests) == 1:
            feed = {n: p[0] for n, p in parts.items()}
        else:
            feed = {n: np.concatenate(p) for n, p in parts.items()}
        results = self.session.run(self.outputs, feed)
        # Row offsets where each request's rows end (all but the last).
        ends = np.cumsum([len(x) for x in parts[self.inputs[0]]])[:-1]
        split = [np.split(r, ends) for r in results]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, split[k][i]) for k, n in enumerate(self.outputs)])
            for i in range(len(requests))
        ]
