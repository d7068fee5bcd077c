"""Artifacts in S3: Nexus's registry with `--artifacts-destination s3://…` against a real
S3-compatible server (moto's), driven by the unmodified MLflow client. Uploads and downloads go
through the registry (mlflow-artifacts:/) and land as objects in the bucket."""

import os
import subprocess
import time

import boto3
import pytest
import requests

from mlflow_support import NEXUS_BIN, REPO, free_port, reset_mlflow_client_state

BUCKET = "nexus-artifacts"
PREFIX = "team/mlflow"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def _wait(url, proc, what, log):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not ready:\n{log.read_text()[-2000:]}")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with an empty bucket; yields (endpoint, boto3 client)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = REPO / ".venv" / "bin" / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{endpoint}/", proc, "moto_server", log)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def registry_on_s3(s3, tmp_path_factory):
    endpoint, _ = s3
    work = tmp_path_factory.mktemp("registry-s3")
    port = free_port()
    log = work / "nexus.log"
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", "NO_COLOR": "1"}
    cmd = [str(NEXUS_BIN), "registry", "--address", "127.0.0.1", "--port", str(port), "--data-dir", str(work / "data"),
           "--artifacts-destination", f"s3://{BUCKET}/{PREFIX}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health", proc, "nexus registry", log)
        yield url
    finally:
        _stop(proc)


def test_artifacts_stream_through_the_registry_into_s3(s3, registry_on_s3, tmp_path):
    import mlflow

    _, bucket = s3
    reset_mlflow_client_state()
    client = mlflow.MlflowClient(tracking_uri=registry_on_s3)
    experiment = client.create_experiment("s3-artifacts")
    run = client.create_run(experiment)

    small = tmp_path / "notes.txt"
    small.write_text("hello from s3\n")
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # several multipart parts
    client.log_artifact(run.info.run_id, str(small))
    client.log_artifact(run.info.run_id, str(big), "model")

    listed = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "model")}
    assert listed == {"model/weights.bin": big.stat().st_size}

    out = tmp_path / "download"
    out.mkdir()
    got = client.download_artifacts(run.info.run_id, "", str(out))
    assert (out / "notes.txt").read_text() == "hello from s3\n"
    assert (out / "model" / "weights.bin").read_bytes() == big.read_bytes(), got

    keys = {o["Key"]: o["Size"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]}
    run_root = f"{PREFIX}/{experiment}/{run.info.run_id}/artifacts"
    assert keys[f"{run_root}/notes.txt"] == small.stat().st_size
    assert keys[f"{run_root}/model/weights.bin"] == big.stat().st_size
