"""An MLServer (1.7) custom runtime serving an ONNX file with onnxruntime.

MLServer has no ONNX runtime of its own. This `mlserver.MLModel` subclass loads the file named
by `parameters.uri` in model-settings.json into an onnxruntime InferenceSession (intra-op threads
from `parameters.extra.intra_op_threads`, default 1) and runs the V2 request's tensors through it.
Used by benches/compare.sh: `PYTHONPATH=benches/runtimes mlserver start benches/runtimes/mlserver`.
"""

from __future__ import annotations

import onnxruntime as ort

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings, wellknown_filenames=["model.onnx"])
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self.output_names, results)],
        )
