"""TorchServe handler for benches/torch_compare.sh: the TorchScript MLP, one JSON row in, one out.

The request body is a JSON list of floats (one row, e.g. 64 values); the response is the
model's output row as a JSON list. Everything else is TorchServe's stock BaseHandler:
it loads `model.pt` with torch.jit.load, runs it under torch.inference_mode() and times it.

Two settings differ from a stock deployment, both in TorchServe's favour:
  - torch.set_num_threads(1) (and OMP_NUM_THREADS=1 from the script): one intra-op thread,
    as Nexus runs the model;
  - the worker's per-request INFO lines on stdout ("Backend received inference at", the
    [METRICS] HandlerTime/PredictionTime lines the frontend parses) are silenced by raising
    the worker's root log level to WARNING once the model is loaded: that removes log writes
    and parses per request. The frontend's own request metrics stay.
"""

import json
import logging

import torch
from ts.torch_handler.base_handler import BaseHandler


class MlpHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only possible before any parallel work)
            pass
        super().initialize(context)
        logging.getLogger().setLevel(logging.WARNING)

    def preprocess(self, data):
        # One entry per request in the (here always size-1) batch; TorchServe has already
        # decoded an application/json body into Python lists.
        rows = []
        for request in data:
            body = request.get("data")
            if body is None:
                body = request.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(body)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        return data.tolist()
