"""Real models from PyPI packages that our own examples do not look like.

silero-vad (PyPI `silero-vad`, its ONNX file only; installed with --no-deps by scripts/setup.sh)
is a recurrent voice-activity model with a rank-0 input, the sample rate `sr`. Served with no
config.pbtxt, its config is completed as Triton writes such inputs (dims [1] with
`reshape { shape: [] }`), and it answers over HTTP JSON, HTTP binary and gRPC exactly what
onnxruntime answers in-process for the same inputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import conftest
from support import TRANSPORTS, Client, assert_tensor_equal


def silero_vad_onnx() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    assert spec and spec.origin, "silero-vad is not installed: run scripts/setup.sh"
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


@pytest.fixture(scope="module")
def vad_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("real_models")
    (repository / "silero_vad" / "1").mkdir(parents=True)
    shutil.copyfile(silero_vad_onnx(), repository / "silero_vad" / "1" / "model.onnx")
    with conftest.nexus_serve(repository, repository / "serve.log", []) as server:
        yield server


def test_scalar_input_is_completed_as_triton_declares_it(vad_server):
    client = Client.connect("http", vad_server.http_url)
    try:
        config = client.config("silero_vad")
        metadata = client.metadata("silero_vad")
    finally:
        client.close()
    sr = next(i for i in config["input"] if i["name"] == "sr")
    assert sr["dims"] == [1]
    assert sr["reshape"]["shape"] == []
    assert sr["data_type"] == "TYPE_INT64"
    assert config["max_batch_size"] == 0
    assert {"name": "sr", "datatype": "INT64", "shape": [1]} in metadata["inputs"]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_scalar_input_model_matches_onnxruntime(vad_server, transport):
    import onnxruntime as ort

    protocol, binary = TRANSPORTS[transport]
    url = vad_server.http_url if protocol == "http" else vad_server.grpc_url
    client = Client.connect(protocol, url)
    client.binary = binary
    rng = np.random.default_rng(7)
    audio = rng.uniform(-0.5, 0.5, size=(1, 512)).astype(np.float32)
    state = np.zeros((2, 1, 128), dtype=np.float32)
    session = ort.InferenceSession(str(silero_vad_onnx()), providers=["CPUExecutionProvider"])
    try:
        # Two chunks: the second feeds back the state the first returned, as a streaming
        # caller does, so the recurrent path is compared too.
        for _ in range(2):
            got = client.infer(
                "silero_vad",
                {"input": audio, "state": state, "sr": np.array([16000], dtype=np.int64)},
                ["output", "stateN"],
            )
            want = session.run(["output", "stateN"], {"input": audio, "state": state, "sr": np.array(16000, dtype=np.int64)})
            assert_tensor_equal(got["output"], want[0], "output")
            assert_tensor_equal(got["stateN"], want[1], "stateN")
            state = want[1]
            audio = rng.uniform(-0.5, 0.5, size=(1, 512)).astype(np.float32)
    finally:
        client.close()
