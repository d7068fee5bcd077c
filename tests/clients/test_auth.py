"""Authentication and roles (`nexus up --auth`) through the real, unmodified clients.

One `nexus up --auth` per module serves `simple` with the registry on the same HTTP port. Its
API keys are made with the CLI (`nexus token --data-dir D create|list|revoke`) on the same
registry database: before the start, and while it runs.

- mlflow: the key goes in `MLFLOW_TRACKING_TOKEN` (sent as `Authorization: Bearer`), or as the
  password of `MLFLOW_TRACKING_USERNAME`/`_PASSWORD` (Basic). A deployer writes (registered
  models, experiments, runs, params, metrics, artifacts, versions, aliases); a reader only
  reads (403 PERMISSION_DENIED otherwise); no or a wrong key gets 401 UNAUTHENTICATED.
- tritonclient http and grpc: the key goes in `headers=` (`Authorization: Bearer`, or
  `X-API-Key`). Health is open; metadata needs a key; infer needs the inference role (a reader
  gets 403 / PERMISSION_DENIED). A revoked key is refused once the key cache's TTL (1 s) has
  passed; an expired key at once.
- `nexus models push` authenticates with `MLFLOW_TRACKING_TOKEN` from its environment.
- `nexus registry --auth` (the registry alone) sits behind the same gateway: the mlflow client
  with `MLFLOW_TRACKING_TOKEN` is admitted by role there too.

The mlflow client reads MLFLOW_TRACKING_TOKEN from the environment on every request (its
stores are cached per URI): a client sends whichever token is set when it makes a call, so the
tests switch tokens through `mlflow_as`, which sets the environment and hands out a new client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from tritonclient.utils import InferenceServerException

import conftest
import mlflow_support
import support
from mlflow_support import unique

# Roles a key is made for before the server starts.
ROLES = ("admin", "deployer", "runner", "inference", "reader")
# gateway/src/keys.rs KEY_CACHE_TTL: a revoked key is refused within this time.
KEY_CACHE_TTL_S = 1.0
UNAUTHENTICATED = {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}
PERMISSION_DENIED = {"http": "403", "grpc": "StatusCode.PERMISSION_DENIED"}


def _cli_env(**extra: str) -> dict[str, str]:
    """This environment without any Nexus or MLflow settings (a developer's NEXUS_DATABASE_URL
    or MLFLOW_TRACKING_URI must not redirect the CLI or the server), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "MLFLOW_"))}
    env.update(NO_COLOR="1", RUST_BACKTRACE="0", **extra)
    return env


def nexus_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(conftest.NEXUS_BIN), *args], capture_output=True, text=True, timeout=60,
                         env=env if env is not None else _cli_env(), cwd=conftest.REPO)  # fmt: skip
    if check and out.returncode != 0:
        pytest.fail(f"nexus {' '.join(args)} exited with {out.returncode}:\n{out.stderr}", pytrace=False)
    return out


@dataclass
class Key:
    id: str
    name: str
    role: str
    token: str


def key_rows(data_dir: Path) -> dict[str, dict[str, str]]:
    """`nexus token list` as {name: {id, role, status}} (names are unique in these tests)."""
    lines = nexus_cli("token", "--data-dir", str(data_dir), "list").stdout.splitlines()
    assert lines and lines[0].split()[:3] == ["ID", "NAME", "ROLE"], lines
    rows = {}
    for line in lines[1:]:
        cols = line.split()
        if cols:
            rows[cols[1]] = {"id": cols[0], "role": cols[2], "status": cols[-1]}
    return rows


def create_key(data_dir: Path, role: str, expires: str | None = None) -> Key:
    """A new key from `nexus token create`: the token is stdout's last line; its id comes from
    `nexus token list`."""
    name = unique(f"test-{role}")
    args = ["token", "--data-dir", str(data_dir), "create", "--role", role, "--name", name]
    out = nexus_cli(*args, *(["--expires", expires] if expires else []))
    token = out.stdout.strip().splitlines()[-1]
    assert token and " " not in token, f"no token on stdout: {out.stdout!r}"
    assert token not in out.stderr, "the token must be printed on stdout only"
    row = key_rows(data_dir)[name]
    assert (row["role"], row["status"]) == (role, "active"), row
    assert row["id"] in out.stderr, f"key id {row['id']} not in the details: {out.stderr}"
    return Key(row["id"], name, role, token)


@dataclass
class AuthServer:
    base: str  # http://127.0.0.1:PORT: KServe V2 HTTP and the MLflow REST API
    http_url: str  # host:port for tritonclient.http
    grpc_url: str  # host:port for tritonclient.grpc
    data_dir: Path
    repository: Path
    log: Path
    keys: dict[str, Key] = field(default_factory=dict)  # role -> a key made before the start

    def token(self, role: str) -> str:
        return self.keys[role].token


@pytest.fixture(scope="module")
def auth_server(model_repository, tmp_path_factory) -> AuthServer:
    """`nexus up --auth` serving `simple`, with one key per role made before it starts."""
    if not conftest.NEXUS_BIN.is_file():
        pytest.fail(f"server binary {conftest.NEXUS_BIN} not found: run `cargo build --bin nexus` or set NEXUS_BIN")
    work = tmp_path_factory.mktemp("auth-server")
    repository = work / "models"
    shutil.copytree(model_repository / "simple", repository / "simple")
    data_dir = work / "data"
    # `nexus token` does not create the data dir (`nexus up` does): give it one.
    data_dir.mkdir()
    keys = {role: create_key(data_dir, role) for role in ROLES}

    http, grpc, metrics = conftest._free_ports(3)
    cmd = [
        str(conftest.NEXUS_BIN), "up", "--auth",
        "--model-repository", str(repository),
        "--address", "127.0.0.1",
        "--http-port", str(http),
        "--grpc-port", str(grpc),
        "--metrics-port", str(metrics),
        "--data-dir", str(data_dir),
        "--model-cache", str(work / "model-cache"),
    ]  # fmt: skip
    log = work / "nexus-up-auth.log"
    conftest._server_logs.append(log)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        # cwd = repo root: .nexus/lib/libonnxruntime.so is found there.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=conftest.REPO, env=_cli_env())
    base = f"http://127.0.0.1:{http}"
    # /v2/health/ready is open under --auth: the readiness wait needs no key.
    with conftest.serving(proc, f"{base}/v2/health/ready", log, "nexus up --auth"):
        yield AuthServer(base, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", data_dir, repository, log, keys)


# ------------------------------------------------------------------------------ mlflow


def _mlflow_clients(base: str, monkeypatch):
    """A factory make(token) -> an MlflowClient for the server at `base` that sends `token` as
    MLFLOW_TRACKING_TOKEN (None: no credentials). The token is set in the environment, which
    the client reads on every request: use the client before asking for the next one."""
    mlflow_support.reset_mlflow_client_state()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # 401/403 fail at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    # For the fluent helpers (mlflow.artifacts.*) that resolve models:/ and mlflow-artifacts:/.
    mlflow.set_tracking_uri(base)
    mlflow.set_registry_uri(base)

    def make(token: str | None) -> mlflow.MlflowClient:
        if token is None:
            monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        return mlflow.MlflowClient(tracking_uri=base, registry_uri=base)

    return make


@pytest.fixture
def mlflow_as(auth_server, monkeypatch):
    """mlflow_as(token) -> an MlflowClient for `nexus up --auth` sending `token`."""
    yield _mlflow_clients(auth_server.base, monkeypatch)
    mlflow_support.reset_mlflow_client_state()


def assert_refused(exc: pytest.ExceptionInfo, status: int, code: str):
    """An MlflowException from the REST store carrying the server's status and error code."""
    e = exc.value
    assert isinstance(e, MlflowException), repr(e)
    assert e.get_http_status_code() == status, f"HTTP {e.get_http_status_code()}: {e}"
    assert e.error_code == code, f"{e.error_code}: {e}"


def test_mlflow_deployer_writes_and_reader_reads(auth_server, mlflow_as, tmp_path):
    """A deployer key does a whole registry and tracking round through the mlflow client; a
    reader key reads all of it back."""
    name = unique("auth-rm")
    client = mlflow_as(auth_server.token("deployer"))
    assert client.create_registered_model(name, description="by a deployer").name == name
    experiment_id = client.create_experiment(unique("auth-exp"))
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "lr", "0.01")
    client.log_metric(run_id, "auc", 0.93, step=1)
    client.set_tag(run_id, "who", "deployer")
    client.log_text(run_id, "weights", "model/weights.txt")  # through the artifact proxy
    client.set_terminated(run_id)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    client.set_model_version_tag(name, version.version, "stage", "prod")

    client = mlflow_as(auth_server.token("reader"))
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.01"}
    assert run.data.metrics == {"auc": 0.93}
    assert run.data.tags["who"] == "deployer"
    assert run.info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/weights.txt"]
    local = client.download_artifacts(run_id, "model/weights.txt", str(tmp_path))
    assert Path(local).read_text() == "weights"
    assert client.get_registered_model(name).description == "by a deployer"
    by_alias = client.get_model_version_by_alias(name, "champion")
    assert (by_alias.version, by_alias.tags) == (version.version, {"stage": "prod"})
    assert name in [m.name for m in client.search_registered_models(filter_string=f"name = '{name}'")]
    assert [h.value for h in client.get_metric_history(run_id, "auc")] == [0.93]


def test_mlflow_reader_cannot_write(auth_server, mlflow_as):
    deployer = mlflow_as(auth_server.token("deployer"))
    name = unique("auth-ro")
    deployer.create_registered_model(name)
    experiment_id = deployer.create_experiment(unique("auth-ro-exp"))
    run_id = deployer.create_run(experiment_id).info.run_id

    reader = mlflow_as(auth_server.token("reader"))
    assert [m.name for m in reader.search_registered_models(filter_string=f"name = '{name}'")] == [name]
    assert reader.get_experiment(experiment_id).experiment_id == experiment_id
    with pytest.raises(MlflowException) as exc:
        reader.create_registered_model(unique("auth-ro-new"))
    assert_refused(exc, 403, "PERMISSION_DENIED")
    assert "reader" in exc.value.message, exc.value.message
    for write in (
        lambda: reader.create_experiment(unique("auth-ro-exp")),
        lambda: reader.log_param(run_id, "p", "1"),
        lambda: reader.set_registered_model_tag(name, "k", "v"),
        lambda: reader.delete_registered_model(name),
    ):
        with pytest.raises(MlflowException) as exc:
            write()
        assert_refused(exc, 403, "PERMISSION_DENIED")
    # Artifact uploads go through the mlflow-artifacts proxy with the same check (the client's
    # artifact repository raises requests' HTTPError there, not MlflowException).
    with pytest.raises(Exception, match=r"403[\s\S]*PERMISSION_DENIED"):
        reader.log_text(run_id, "nope", "notes/nope.txt")
    # Nothing was written.
    reader_view = mlflow_as(auth_server.token("reader"))
    assert reader_view.get_registered_model(name).tags == {}
    assert reader_view.get_run(run_id).data.params == {}
    assert reader_view.list_artifacts(run_id) == []


@pytest.mark.parametrize("token", [None, "nexus_not-a-real-key", "not even a nexus key"], ids=["none", "unknown", "garbage"])
def test_mlflow_without_valid_key(auth_server, mlflow_as, token):
    client = mlflow_as(token)
    with pytest.raises(MlflowException) as exc:
        client.search_registered_models()
    assert_refused(exc, 401, "UNAUTHENTICATED")
    with pytest.raises(MlflowException) as exc:
        client.create_registered_model(unique("auth-anon"))
    assert_refused(exc, 401, "UNAUTHENTICATED")
    with pytest.raises(MlflowException) as exc:
        client.create_experiment(unique("auth-anon-exp"))
    assert_refused(exc, 401, "UNAUTHENTICATED")


def test_mlflow_inference_key_has_no_registry_access(auth_server, mlflow_as):
    client = mlflow_as(auth_server.token("inference"))
    with pytest.raises(MlflowException) as exc:
        client.search_registered_models()
    assert_refused(exc, 403, "PERMISSION_DENIED")


def test_mlflow_basic_credentials_carry_the_key(auth_server, mlflow_as, monkeypatch):
    """MLFLOW_TRACKING_USERNAME/PASSWORD (Basic) with the key as the password; a password that
    is not a key is 401."""
    client = mlflow_as(None)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.token("deployer"))
    name = unique("auth-basic")
    assert client.create_registered_model(name).name == name
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    with pytest.raises(MlflowException) as exc:
        client.get_registered_model(name)
    assert_refused(exc, 401, "UNAUTHENTICATED")


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory) -> AuthServer:
    """`nexus registry --auth` alone (no inference), with one key per role."""
    work = tmp_path_factory.mktemp("auth-registry")
    data_dir = work / "data"
    data_dir.mkdir()
    keys = {role: create_key(data_dir, role) for role in ROLES}
    (port,) = conftest._free_ports(1)
    cmd = [
        str(conftest.NEXUS_BIN), "registry", "--auth",
        "--address", "127.0.0.1",
        "--port", str(port),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    log = work / "nexus-registry-auth.log"
    conftest._server_logs.append(log)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=conftest.REPO, env=_cli_env())
    base = f"http://127.0.0.1:{port}"
    with conftest.serving(proc, f"{base}/health", log, "nexus registry --auth"):
        yield AuthServer(base, "", "", data_dir, work, log, keys)


def test_registry_alone_takes_mlflow_tracking_token(registry_server, monkeypatch):
    """`nexus registry --auth` is behind the same gateway as `nexus up`: the mlflow client
    with a deployer's MLFLOW_TRACKING_TOKEN writes, a reader's reads but cannot write, no
    token is 401."""
    clients = _mlflow_clients(registry_server.base, monkeypatch)
    try:
        deployer = clients(registry_server.token("deployer"))
        name = unique("registry-auth")
        assert deployer.create_registered_model(name).name == name
        experiment_id = deployer.create_experiment(unique("registry-auth-exp"))
        run_id = deployer.create_run(experiment_id).info.run_id
        deployer.log_metric(run_id, "auc", 0.9)

        reader = clients(registry_server.token("reader"))
        assert reader.get_run(run_id).data.metrics == {"auc": 0.9}
        assert reader.get_registered_model(name).name == name
        with pytest.raises(MlflowException) as exc:
            reader.create_registered_model(unique("registry-auth-ro"))
        assert_refused(exc, 403, "PERMISSION_DENIED")

        anonymous = clients(None)
        with pytest.raises(MlflowException) as exc:
            anonymous.search_registered_models()
        assert_refused(exc, 401, "UNAUTHENTICATED")
    finally:
        mlflow_support.reset_mlflow_client_state()


# ------------------------------------------------------------------------------ tritonclient


def simple_feeds() -> dict[str, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    return {"INPUT0": a, "INPUT1": np.full((1, 16), 7, dtype=np.int32)}


def bearer(protocol: str, token: str) -> dict[str, str]:
    # gRPC metadata keys must be lowercase (grpcio refuses "Authorization" before sending).
    return {"authorization" if protocol == "grpc" else "Authorization": f"Bearer {token}"}


def api_key(protocol: str, token: str) -> dict[str, str]:
    return {"x-api-key" if protocol == "grpc" else "X-API-Key": token}


@pytest.fixture(params=support.PROTOCOLS)
def triton(request, auth_server):
    c = support.Client.connect(request.param, auth_server.http_url if request.param == "http" else auth_server.grpc_url)
    yield c
    c.close()


def infer(c: support.Client, headers: dict[str, str]) -> dict[str, np.ndarray]:
    feeds = simple_feeds()
    result = c.api.infer("simple", c.inputs(feeds), outputs=c.requested(["OUTPUT0", "OUTPUT1"]), headers=headers)
    return {n: result.as_numpy(n) for n in ("OUTPUT0", "OUTPUT1")}


def assert_status(exc: pytest.ExceptionInfo, want: dict[str, str], protocol: str, message: str):
    e = exc.value
    assert isinstance(e, InferenceServerException), repr(e)
    assert e.status() == want[protocol], f"{e.status()}: {e.message()}"
    assert message in (e.message() or ""), e.message()


def test_triton_health_is_open(triton):
    assert triton.api.is_server_live()
    assert triton.api.is_server_ready()


@pytest.mark.parametrize("how", ["bearer", "x-api-key"])
def test_triton_inference_key_infers(auth_server, triton, how):
    headers = (bearer if how == "bearer" else api_key)(triton.protocol, auth_server.token("inference"))
    out = infer(triton, headers)
    feeds = simple_feeds()
    np.testing.assert_array_equal(out["OUTPUT0"], feeds["INPUT0"] + feeds["INPUT1"])
    np.testing.assert_array_equal(out["OUTPUT1"], feeds["INPUT0"] - feeds["INPUT1"])
    metadata = triton.as_dict(triton.api.get_model_metadata("simple", headers=headers))
    assert [i["name"] for i in metadata["inputs"]] == ["INPUT0", "INPUT1"]


def test_triton_without_credentials(triton):
    with pytest.raises(InferenceServerException) as exc:
        triton.api.get_model_metadata("simple")
    assert_status(exc, UNAUTHENTICATED, triton.protocol, "missing credentials")
    with pytest.raises(InferenceServerException) as exc:
        infer(triton, {})
    assert_status(exc, UNAUTHENTICATED, triton.protocol, "missing credentials")
    with pytest.raises(InferenceServerException) as exc:
        infer(triton, bearer(triton.protocol, "nexus_not-a-real-key"))
    assert_status(exc, UNAUTHENTICATED, triton.protocol, "invalid API key")


def test_triton_reader_reads_metadata_but_cannot_infer(auth_server, triton):
    headers = bearer(triton.protocol, auth_server.token("reader"))
    metadata = triton.as_dict(triton.api.get_model_metadata("simple", headers=headers))
    assert metadata["name"] == "simple"
    assert triton.api.is_model_ready("simple", headers=headers)
    with pytest.raises(InferenceServerException) as exc:
        infer(triton, headers)
    assert_status(exc, PERMISSION_DENIED, triton.protocol, "reader")


def test_revoked_and_expired_keys_are_refused(auth_server):
    """Keys made while the server runs work at once; after `nexus token revoke` (and the key
    cache's TTL) and after `--expires` passes, both protocols answer 401 / UNAUTHENTICATED."""
    expiring_at = time.monotonic() + 2
    expiring = create_key(auth_server.data_dir, "inference", expires="2s")
    revoked = create_key(auth_server.data_dir, "inference")
    clients = [support.Client.connect("http", auth_server.http_url), support.Client.connect("grpc", auth_server.grpc_url)]
    try:
        for c in clients:
            infer(c, bearer(c.protocol, revoked.token))
            infer(c, api_key(c.protocol, expiring.token))
        nexus_cli("token", "--data-dir", str(auth_server.data_dir), "revoke", revoked.id)
        assert key_rows(auth_server.data_dir)[revoked.name]["status"] == "revoked"
        time.sleep(max(KEY_CACHE_TTL_S + 0.3, expiring_at - time.monotonic() + 0.3))
        for c in clients:
            for key in (revoked, expiring):
                for headers in (bearer(c.protocol, key.token), api_key(c.protocol, key.token)):
                    with pytest.raises(InferenceServerException) as exc:
                        infer(c, headers)
                    assert_status(exc, UNAUTHENTICATED, c.protocol, "invalid API key")
                with pytest.raises(InferenceServerException) as exc:
                    c.api.get_model_metadata("simple", headers=bearer(c.protocol, key.token))
                assert_status(exc, UNAUTHENTICATED, c.protocol, "invalid API key")
            # Other keys are unaffected.
            infer(c, bearer(c.protocol, auth_server.token("inference")))
    finally:
        for c in clients:
            c.close()


# ------------------------------------------------------------------------------ nexus models push


def push(auth_server: AuthServer, name: str, token: str | None, *extra: str) -> subprocess.CompletedProcess:
    env = _cli_env(**({"MLFLOW_TRACKING_TOKEN": token} if token else {}))
    model = auth_server.repository / "simple" / "1" / "model.onnx"
    return nexus_cli("models", "push", str(model), "--name", name, "--registry-url", auth_server.base, *extra,
                     env=env, check=False)  # fmt: skip


def test_models_push_with_token(auth_server, mlflow_as, tmp_path):
    name = unique("auth-push")
    out = push(auth_server, name, auth_server.token("deployer"), "--alias", "champion")
    assert out.returncode == 0, out.stderr
    reader = mlflow_as(auth_server.token("reader"))
    version = reader.get_model_version_by_alias(name, "champion")
    assert version.version == "1"
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1", dst_path=str(tmp_path))
    pushed = Path(local) / "model.onnx"
    assert pushed.read_bytes() == (auth_server.repository / "simple" / "1" / "model.onnx").read_bytes()


@pytest.mark.parametrize("role, code", [(None, "UNAUTHENTICATED"), ("reader", "PERMISSION_DENIED")], ids=["no-token", "reader"])
def test_models_push_refused(auth_server, mlflow_as, role, code):
    name = unique("auth-push-refused")
    out = push(auth_server, name, auth_server.token(role) if role else None)
    assert out.returncode != 0, f"push without write rights succeeded:\n{out.stdout}\n{out.stderr}"
    assert code in out.stderr, out.stderr
    reader = mlflow_as(auth_server.token("reader"))
    with pytest.raises(MlflowException) as exc:
        reader.get_registered_model(name)
    assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"
