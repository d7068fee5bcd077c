"""TorchScript models (PyTorch's own torch.jit.trace and torch.jit.script: an MLP, control
flow, LSTM+GRU, a dict return, FP16/INT64/BOOL) served by the PyTorch backend with Triton's
config conventions, through tritonclient over HTTP JSON, HTTP binary and gRPC, with dynamic
batching, compared with what PyTorch computes in-process for the same inputs (1e-5).

Models and references come from torch_models.py, run by the cached torch venv; the backend
is the plugin scripts/install-torch-backend.sh builds into .nexus/lib.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

import conftest
from support import TRANSPORTS, Client
from test_candle import torch_python

MODELS = ["mlp_traced", "gate_scripted", "recurrent", "heads_dict", "types"]


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("torch_models")
    script = Path(__file__).parent / "torch_models.py"
    done = subprocess.run([str(torch_python()), str(script), str(repository)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    with conftest.nexus_serve(repository, repository / "serve.log", []) as server:
        yield server


def reference(server, model: str) -> tuple[dict, dict]:
    saved = np.load(server.repository / model / "reference.npz")
    inputs = {k[4:]: saved[k] for k in saved.files if k.startswith("in__")}
    outputs = {k[5:]: saved[k] for k in saved.files if k.startswith("out__")}
    return inputs, outputs


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_matches_pytorch_in_process(torch_server, model, transport):
    protocol, binary = TRANSPORTS[transport]
    if model == "types" and protocol == "http" and not binary:
        pytest.skip("FP16 tensors are binary-only over HTTP")
    inputs, want = reference(torch_server, model)
    if model == "gate_scripted":
        inputs["threshold"] = inputs["threshold"].reshape(-1, 1)
    client = Client.connect(protocol, torch_server.http_url if protocol == "http" else torch_server.grpc_url)
    client.binary = binary
    try:
        got = client.infer(model, inputs, list(want))
    finally:
        client.close()
    for name, expected in want.items():
        value = got[name].reshape(expected.shape)
        assert value.dtype == expected.dtype, f"{model}/{name}: {value.dtype} != {expected.dtype}"
        if expected.dtype.kind in "fc":
            np.testing.assert_allclose(value, expected, atol=1e-5, rtol=1e-5, err_msg=f"{model}/{name}")
        else:
            np.testing.assert_array_equal(value, expected, err_msg=f"{model}/{name}")


def test_concurrent_single_rows_are_batched_with_the_same_answers(torch_server):
    inputs, want = reference(torch_server, "mlp_traced")
    rows = inputs["INPUT__0"]

    def one(i: int) -> np.ndarray:
        client = Client.connect("grpc", torch_server.grpc_url)
        try:
            return client.infer("mlp_traced", {"INPUT__0": rows[i : i + 1]}, ["OUTPUT__0"])["OUTPUT__0"][0]
        finally:
            client.close()

    for _ in range(5):
        with ThreadPoolExecutor(len(rows)) as pool:
            got = np.array(list(pool.map(one, range(len(rows)))))
        np.testing.assert_allclose(got, want["OUTPUT__0"], atol=1e-5, rtol=1e-5)
    stats = requests.get(f"{torch_server.base}/v2/models/mlp_traced/stats", timeout=10).json()
    version = stats["model_stats"][0]
    assert int(version["inference_count"]) >= 15
    assert int(version["execution_count"]) <= int(version["inference_count"])


def test_a_model_without_config_is_unavailable_with_the_reason(torch_server):
    index = requests.post(f"{torch_server.base}/v2/repository/index", json={}, timeout=10).json()
    entry = next(m for m in index if m["name"] == "mlp_no_config")
    assert entry["state"] == "UNAVAILABLE"
    assert "needs a config.pbtxt that lists its inputs and outputs" in entry["reason"]
    config = requests.get(f"{torch_server.base}/v2/models/mlp_traced/config", timeout=10).json()
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"


def bench_in_process(model_file: Path, out: Path) -> subprocess.CompletedProcess:
    command = [str(conftest.NEXUS_BIN), "bench", "run", "--model", "plugin", "--protocol", "in-process",
               "--model-file", str(model_file), "--concurrency", "1", "--warmup-secs", "0",
               "--requests", "50", "--output", str(out), "--label", "plugin"]
    return subprocess.run(command, capture_output=True, text=True, cwd=conftest.REPO, timeout=120)


def test_nexus_bench_runs_a_torchscript_file_in_process_with_its_folders_config(torch_server, tmp_path):
    # In its Triton model folder, the file's inputs come from the folder's config.pbtxt.
    done = bench_in_process(torch_server.repository / "mlp_traced" / "1" / "model.pt", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    level = json.loads((tmp_path / "plugin.json").read_text())["levels"][0]
    assert level["requests"] >= 50 and level["errors"] == 0, level
    # Outside one, nothing says what the module takes: refused with the reason.
    done = bench_in_process(torch_server.repository / "mlp_no_config" / "1" / "model.pt", tmp_path)
    assert done.returncode != 0
    assert "needs a config.pbtxt that lists its inputs and outputs" in done.stderr, done.stderr[-3000:]


def test_wrong_input_shape_is_a_400_and_the_model_keeps_serving(torch_server):
    body = {"inputs": [{"name": "INPUT__0", "shape": [1, 16, 5], "datatype": "FP32", "data": [0.0] * 80}]}
    answer = requests.post(f"{torch_server.base}/v2/models/recurrent/infer", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    inputs, want = reference(torch_server, "recurrent")
    client = Client.connect("http", torch_server.http_url)
    try:
        got = client.infer("recurrent", inputs, ["OUTPUT__1"])["OUTPUT__1"]
    finally:
        client.close()
    np.testing.assert_allclose(got, want["OUTPUT__1"], atol=1e-5, rtol=1e-5)
