"""Artifact stores end to end: `nexus registry --artifacts-destination` on a local folder, on S3
(moto's server) and on Azure Blob (Azurite), driven by the unmodified MLflow client and served
from the registry with `nexus serve --model models:/NAME@ALIAS`.

Each store is checked the same way: artifacts round-trip (a multi-part one included), a name with
`#` survives a restart, an upload cut off by the client or by a crash of the server leaves nothing
that lists or downloads (nor any object in the store), and a registered ONNX model serves.

Google Cloud Storage is not here: object_store (the Rust crate behind every store) speaks GCS's
XML API (PUT object, `?list-type=2` listings, `?uploads` multipart uploads), and neither
PyPI emulator answers it: fake-gcs-server 1.54 routes an XML PUT or `POST ?uploads` to its JSON
upload handler (400 "invalid uploadType"), gcp-storage-emulator has no XML listing nor multipart.

Azurite comes from npm into a cache outside the clone (scripts/setup.sh): `$NEXUS_AZURITE`, or
`${NEXUS_CACHE:-~/.cache/nexus}/azurite-<version>/node_modules/.bin/azurite-blob`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import requests

import conftest
from mlflow_support import NEXUS_BIN, REPO, free_port, reset_mlflow_client_state, unique
from test_mlflow_models import make_model, ort_predict

AZURITE_VERSION = "3.37.0"  # the version scripts/setup.sh installs
CACHE = Path(os.environ.get("NEXUS_CACHE", Path.home() / ".cache" / "nexus"))
AZURITE = Path(
    os.environ.get("NEXUS_AZURITE", CACHE / f"azurite-{AZURITE_VERSION}" / "node_modules" / ".bin" / "azurite-blob")
)
# Azurite's well-known development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "nexus-artifacts"
PREFIX = "team/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
STAGING = ".nexus-staging"  # the local store's staging folder (registry/src/artifacts.rs)
BIG = 20 * 1024 * 1024  # several 8 MiB parts


# --- Stores ------------------------------------------------------------------------------------


class LocalStore:
    """A folder on this machine."""

    def __init__(self, root: Path):
        self.root = root
        self.destination = str(root)
        self.env: dict[str, str] = {}

    def objects(self) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_size for p in self.root.rglob("*") if p.is_file()}


class S3Store:
    """moto's S3 server with an empty bucket."""

    def __init__(self, endpoint: str):
        import boto3

        self.destination = f"s3://{CONTAINER}/{PREFIX}"
        credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        self.env = {**credentials, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=CONTAINER)

    def objects(self) -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=CONTAINER, Prefix=PREFIX)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


class AzureStore:
    """Azurite's Blob service with an empty container, reached the way a user reaches it:
    AZURE_STORAGE_USE_EMULATOR and AZURITE_BLOB_STORAGE_URL (account and key are Azurite's
    defaults)."""

    def __init__(self, endpoint: str):
        from azure.storage.blob import BlobServiceClient

        self.destination = f"az://{CONTAINER}/{PREFIX}"
        self.env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": endpoint}
        service = BlobServiceClient(
            f"{endpoint}/{AZURITE_ACCOUNT}", credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
        )
        self.container = service.create_container(CONTAINER)

    def objects(self) -> dict[str, int]:
        # Committed blobs only: blocks of an unfinished upload are not objects (nor readable).
        return {b.name: b.size for b in self.container.list_blobs(name_starts_with=PREFIX)}


def _serve_process(cmd: list[str], log: Path, ready_url: str, what: str, **kw):
    """Starts `cmd`, yields it once `ready_url` answers 200, stops it afterwards."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    with conftest.serving(proc, ready_url, log, what):
        yield proc


def _moto(work: Path):
    port = free_port()
    cmd = [str(REPO / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    # moto answers its root with 200 once it serves.
    for _ in _serve_process(cmd, work / "moto.log", f"http://127.0.0.1:{port}/", "moto_server"):
        yield S3Store(f"http://127.0.0.1:{port}")


def _azurite(work: Path):
    if not AZURITE.is_file():
        pytest.fail(f"Azurite not found at {AZURITE}: run scripts/setup.sh (or set NEXUS_AZURITE)")
    port = free_port()
    cmd = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(work / "azurite"),
           "--silent", "--skipApiVersionCheck"]  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    # Azurite answers an unauthenticated request with 4xx once it serves; wait for the port.
    with open(work / "azurite.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + conftest.READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"azurite exited with {proc.returncode}:\n{(work / 'azurite.log').read_text()[-2000:]}")
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "azurite not listening"
                time.sleep(0.2)
        yield AzureStore(endpoint)
    finally:
        conftest.stop(proc, timeout=10)


@pytest.fixture(scope="module", params=["local", "s3", "azure"])
def store(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"store-{request.param}")
    if request.param == "local":
        yield LocalStore(work / "artifacts")
    elif request.param == "s3":
        yield from _moto(work)
    else:
        yield from _azurite(work)


# --- The registry ------------------------------------------------------------------------------


class Registry:
    """`nexus registry` on `store`, restartable on the same data folder."""

    def __init__(self, store, work: Path):
        self.store = store
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "nexus-registry.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [str(NEXUS_BIN), "registry", "--address", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.work / "data"), "--artifacts-destination", self.store.destination]  # fmt: skip
        env = {**os.environ, **self.store.env, "NO_COLOR": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + conftest.READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"nexus registry exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"nexus registry not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            conftest.stop(self.proc, timeout=10)
            self.proc = None

    def crash(self) -> None:
        """SIGKILL: no clean-up runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def artifact_url(self, path: str) -> str:
        return f"{self.url}{ARTIFACTS_API}/{urllib.parse.quote(path)}"


@pytest.fixture(scope="module")
def registry(store, tmp_path_factory):
    if not NEXUS_BIN.is_file():
        pytest.fail(f"server binary {NEXUS_BIN} not found: run `cargo build --bin nexus` or set NEXUS_BIN")
    r = Registry(store, tmp_path_factory.mktemp("registry"))
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def client(registry):
    import mlflow

    reset_mlflow_client_state()
    return mlflow.MlflowClient(tracking_uri=registry.url)


def run_root(client) -> tuple[str, str]:
    """A fresh run; returns (run id, its artifact folder as the artifact API names it)."""
    experiment = client.create_experiment(unique("artifacts"))
    run = client.create_run(experiment)
    return run.info.run_id, f"{experiment}/{run.info.run_id}/artifacts"


def listed(client, run_id: str, path: str = "") -> dict[str, int | None]:
    return {f.path: f.file_size for f in client.list_artifacts(run_id, path)}


def absent(registry, client, run_id: str, root: str, name: str) -> None:
    """`name` is in no listing, does not download, and is no object in the store."""
    assert name not in listed(client, run_id)
    r = requests.get(registry.artifact_url(f"{root}/{name}"), timeout=30)
    assert r.status_code == 404, (r.status_code, r.text[:200])
    assert not [k for k in registry.store.objects() if k.endswith(f"{root}/{name}")]


# --- Tests -------------------------------------------------------------------------------------


def test_artifacts_round_trip_and_a_hash_name_survives_a_restart(registry, client, tmp_path):
    run_id, root = run_root(client)
    small = tmp_path / "notes.txt"
    small.write_text("hello\n")
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(BIG))
    client.log_artifact(run_id, str(small))
    client.log_artifact(run_id, str(big), "model")
    # MLflow's Python client cannot carry a `#`: it refuses one in a listing ("Invalid path")
    # and would send `a#b.txt` unencoded, as `a`. Other clients (and pipelines) can, so the
    # REST API is driven directly for it, in a folder of its own.
    hashed = b"# a name with a hash\n" * 1000
    r = requests.put(registry.artifact_url(f"{root}/odd/a#b.txt"), data=hashed, timeout=30)
    assert r.status_code == 200, r.text

    def rest_listing(path: str) -> dict[str, int | None]:
        r = requests.get(f"{registry.url}{ARTIFACTS_API}", params={"path": f"{root}/{path}"}, timeout=30)
        assert r.status_code == 200, r.text
        return {f["path"]: f.get("file_size") for f in r.json().get("files", [])}

    expected = {"model": None, "notes.txt": small.stat().st_size, "odd": None}
    assert listed(client, run_id) == expected
    assert listed(client, run_id, "model") == {"model/weights.bin": BIG}
    assert rest_listing("odd") == {"a#b.txt": len(hashed)}
    # The local store's staging folder (there now) is no artifact, even at the top.
    top = requests.get(f"{registry.url}{ARTIFACTS_API}", params={"path": ""}, timeout=30).json()["files"]
    assert STAGING not in {f["path"] for f in top}
    stored = registry.store.objects()
    assert {k.rsplit(root + "/", 1)[-1] for k in stored if root in k} == {"odd/a#b.txt", "notes.txt", "model/weights.bin"}

    registry.restart()

    assert listed(client, run_id) == expected
    assert rest_listing("odd") == {"a#b.txt": len(hashed)}
    r = requests.get(registry.artifact_url(f"{root}/odd/a#b.txt"), timeout=30)
    assert r.status_code == 200 and r.content == hashed
    out = tmp_path / "download"
    out.mkdir()
    client.download_artifacts(run_id, "model", str(out))
    client.download_artifacts(run_id, "notes.txt", str(out))
    assert (out / "model" / "weights.bin").read_bytes() == big.read_bytes()
    assert (out / "notes.txt").read_text() == "hello\n"


def _start_upload(registry, path: str, nbytes: int) -> socket.socket:
    """A chunked PUT of `path` that sends `nbytes` and stops before its end."""
    sock = socket.create_connection(("127.0.0.1", registry.port), timeout=30)
    target = f"{ARTIFACTS_API}/{urllib.parse.quote(path)}"
    sock.sendall(
        f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    chunk = os.urandom(1024 * 1024)
    for _ in range(nbytes // len(chunk)):
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    return sock


def test_an_upload_cut_off_by_the_client_leaves_nothing_visible(registry, client):
    run_id, root = run_root(client)
    sock = _start_upload(registry, f"{root}/cut.bin", BIG)
    time.sleep(0.5)  # the server has written the parts that arrived
    absent(registry, client, run_id, root, "cut.bin")  # nothing shows while it is under way
    sock.close()
    # The server drops what it staged once it sees the body end early.
    deadline = time.monotonic() + 30
    while isinstance(registry.store, LocalStore) and list((registry.store.root / STAGING).glob("*")):
        assert time.monotonic() < deadline, "the staged upload was not removed"
        time.sleep(0.1)
    time.sleep(0.5)
    absent(registry, client, run_id, root, "cut.bin")


def test_an_upload_cut_off_by_a_crash_leaves_nothing_visible_after_restart(registry, client):
    run_id, root = run_root(client)
    r = requests.put(registry.artifact_url(f"{root}/kept.txt"), data=b"kept", timeout=30)
    assert r.status_code == 200, r.text
    sock = _start_upload(registry, f"{root}/crashed.bin", BIG)
    time.sleep(0.5)
    if isinstance(registry.store, LocalStore):
        staged = list((registry.store.root / STAGING).glob("*"))
        assert staged, "the upload is not being staged"
    registry.crash()
    sock.close()
    registry.start()
    absent(registry, client, run_id, root, "crashed.bin")
    assert listed(client, run_id) == {"kept.txt": 4}
    if isinstance(registry.store, LocalStore):
        assert not (registry.store.root / STAGING).exists(), "a crashed upload's staging file was kept"


def test_a_registered_model_serves_from_the_store(registry, client, tmp_path):
    import mlflow
    import mlflow.onnx

    name = unique("stored-model")
    model = make_model(seed=7)
    mlflow.set_tracking_uri(registry.url)
    mlflow.set_experiment(unique("serve"))
    with mlflow.start_run():
        mlflow.onnx.log_model(
            model, name="model", registered_model_name=name, pip_requirements=["onnx", "onnxruntime"]
        )
    client.set_registered_model_alias(name, "champion", "1")
    model_objects = [k for k in registry.store.objects() if k.endswith("model.onnx")]
    assert model_objects, "the logged model is not in the store"

    repository = tmp_path / "empty-repository"
    repository.mkdir()
    extra = ["--model", f"models:/{name}@champion", "--registry-url", registry.url,
             "--model-cache", str(tmp_path / "cache")]  # fmt: skip
    with conftest.nexus_serve(repository, tmp_path / "serve.log", extra) as server:
        deadline = time.monotonic() + 60
        while requests.get(f"{server.base}/v2/models/{name}/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, conftest._log_tail(server.log)
            time.sleep(0.25)
        x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], dtype=np.float32)
        body = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = requests.post(f"{server.base}/v2/models/{name}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, ort_predict(model, x), rtol=1e-5)
