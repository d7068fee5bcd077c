"""Models of every runtime through the registry: `nexus models push` of a TorchScript model in
its Triton folder (config.pbtxt + 1/model.pt) and of a Hugging Face sentence-transformers
folder, served by `nexus up --model models:/NAME@prod`, answering as PyTorch does, and an alias
move swapping the served version without a failed request. A bare .pt file (whose inputs
nothing records) is refused at push time, before anything is registered."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest
import requests

import conftest
from test_candle import minilm_folder, reference, text_input, torch_python
from support import Client


def push(base: str, path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(conftest.NEXUS_BIN), "models", "push", str(path), "--name", name, "--registry-url", base, *extra],
        capture_output=True, text=True, timeout=120, cwd=conftest.REPO,
    )  # fmt: skip


def wait_version(base: str, model: str, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = requests.get(f"{base}/v2/models/{model}/versions/{version}/ready", timeout=5)
        if ready.status_code == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"{model} version {version} never became ready")


@pytest.fixture(scope="module")
def torch_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_push")
    done = subprocess.run(
        [str(torch_python()), str(conftest.REPO / "tests" / "clients" / "torch_models.py"), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out / "mlp_traced"


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    work = tmp_path_factory.mktemp("registry_runtimes")
    extra = ["--model", "models:/mlp@prod", "--model", "models:/encoder@prod", "--registry-poll-secs", "1"]
    with conftest.up_server(work, extra) as server:
        yield server


def test_torchscript_and_hf_folders_serve_from_the_registry_and_swap(up, torch_folder):
    base, _ = up
    pushed = push(base, torch_folder, "mlp", "--alias", "prod")
    assert pushed.returncode == 0, pushed.stderr
    pushed = push(base, minilm_folder(), "encoder", "--alias", "prod")
    assert pushed.returncode == 0, pushed.stderr
    wait_version(base, "mlp", "1")
    wait_version(base, "encoder", "1")
    http = base.removeprefix("http://")
    client = Client.connect("http", http)
    saved = np.load(torch_folder / "reference.npz")
    try:
        got = client.infer("mlp", {"INPUT__0": saved["in__INPUT__0"]}, ["OUTPUT__0"])["OUTPUT__0"]
        np.testing.assert_allclose(got, saved["out__OUTPUT__0"], atol=1e-5, rtol=1e-5)
        texts = ["served from the registry"]
        want = np.array(reference("embed", str(minilm_folder()), texts=texts)["embeddings"])
        got = client.infer("encoder", {"text": text_input(texts)}, ["embedding"])["embedding"]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

        # Hot swap: version 2 of the TorchScript model, then the alias moves to it.
        pushed = push(base, torch_folder, "mlp")
        assert pushed.returncode == 0, pushed.stderr
        moved = subprocess.run(
            [str(conftest.NEXUS_BIN), "models", "alias", "set", "mlp", "prod", "2", "--registry-url", base],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        deadline = time.monotonic() + 60
        while True:
            result = client.api.infer("mlp", client.inputs({"INPUT__0": saved["in__INPUT__0"]}))
            np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), saved["out__OUTPUT__0"], atol=1e-5, rtol=1e-5)
            if result.get_response()["model_version"] == "2":
                break
            assert time.monotonic() < deadline, "the alias move never reached serving"
            time.sleep(0.1)
    finally:
        client.close()


def test_a_bare_torchscript_file_is_refused_at_push(up, torch_folder, tmp_path):
    base, _ = up
    bare = tmp_path / "model.pt"
    shutil.copyfile(torch_folder / "1" / "model.pt", bare)
    refused = push(base, bare, "bare")
    assert refused.returncode != 0
    assert "needs a config.pbtxt that lists its inputs and outputs" in refused.stderr
    found = requests.get(f"{base}/api/2.0/mlflow/registered-models/get", params={"name": "bare"}, timeout=10)
    assert found.status_code == 404, found.text
