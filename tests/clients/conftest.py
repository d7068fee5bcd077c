"""Fixtures: a temporary model repository and `nexus serve` processes to drive with tritonclient.

The server binary is `$NEXUS_BIN` (default `<repo>/target/debug/nexus`). Each server listens on
free ports of 127.0.0.1; its log goes to a file that is printed at the end of a failing run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

import support

REPO = Path(__file__).resolve().parents[2]
NEXUS_BIN = Path(os.environ.get("NEXUS_BIN", REPO / "target" / "debug" / "nexus"))
READY_TIMEOUT_S = 60

# Logs of every server started in this session, printed by pytest_terminal_summary on failure.
_server_logs: list[Path] = []


@dataclass
class Server:
    """A running `nexus serve` and where to reach it."""

    http_url: str  # host:port, the form tritonclient.http wants
    grpc_url: str  # host:port, the form tritonclient.grpc wants
    metrics_url: str  # full URL of the Prometheus endpoint
    repository: Path
    log: Path

    @property
    def base(self) -> str:
        """Base URL for raw HTTP requests."""
        return f"http://{self.http_url}"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(path: Path, lines: int = 200) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text[-lines:])


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if `proc` is still running after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(proc: subprocess.Popen, ready_url: str, log: Path, what: str):
    """Waits until `ready_url` answers 200 (failing with the server's log if `proc` exits first
    or takes longer than READY_TIMEOUT_S), and stops `proc` when the block ends."""
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode} before it was ready; log:\n{_log_tail(log)}")
            try:
                r = requests.get(ready_url, timeout=2)
                if r.status_code == 200:
                    break
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                last = type(e).__name__
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after {READY_TIMEOUT_S}s (last: {last}); log:\n{_log_tail(log)}")
            time.sleep(0.2)
        yield
    finally:
        stop(proc, timeout=10)


def _start_server(repository: Path, log: Path, extra_args: list[str]):
    """Start `nexus serve`, wait until it is ready, yield it, then stop it."""
    if not NEXUS_BIN.is_file():
        pytest.fail(f"server binary {NEXUS_BIN} not found: run `cargo build --bin nexus` or set NEXUS_BIN")
    http, grpc, metrics = _free_ports(3)
    cmd = [
        str(NEXUS_BIN), "serve",
        "--model-repository", str(repository),
        "--address", "127.0.0.1",
        "--http-port", str(http),
        "--grpc-port", str(grpc),
        "--metrics-port", str(metrics),
        *extra_args,
    ]  # fmt: skip
    _server_logs.append(log)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        # cwd = repo root, so the server finds .nexus/lib/libonnxruntime.so by default.
        env = {**os.environ, "NO_COLOR": "1"}  # plain log lines
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    server = Server(
        http_url=f"127.0.0.1:{http}",
        grpc_url=f"127.0.0.1:{grpc}",
        metrics_url=f"http://127.0.0.1:{metrics}/metrics",
        repository=repository,
        log=log,
    )
    with serving(proc, f"{server.base}/v2/health/ready", log, "nexus"):
        yield server


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """The example models, onnxruntime's shipped test models, and two models that cannot load."""
    repo = tmp_path_factory.mktemp("model_repository")
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_models.py"), "--out", str(repo)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # onnxruntime's own test models, served with no config.pbtxt (completed from the model).
    for name in support.ORT_DATASET_MODELS:
        dest = repo / name / "1" / "model.onnx"
        dest.parent.mkdir(parents=True)
        shutil.copyfile(support.ort_dataset_path(name), dest)
    # A valid config over a file that is not an ONNX model.
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"\x00\x01this is not an onnx model\xff" * 8)
    (broken / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    # A valid model under a config.pbtxt that is not protobuf text format.
    badconfig = repo / "badconfig"
    (badconfig / "1").mkdir(parents=True)
    shutil.copyfile(repo / "dynamic_add" / "1" / "model.onnx", badconfig / "1" / "model.onnx")
    (badconfig / "config.pbtxt").write_text('name: "badconfig"\nmax_batch_size: [ this is { not text format\n')
    return repo


@pytest.fixture(scope="session")
def server(model_repository, tmp_path_factory):
    """`nexus serve` in the default model control mode (none): everything loads at start."""
    log = tmp_path_factory.mktemp("logs") / "nexus-serve.log"
    yield from _start_server(model_repository, log, [])


@pytest.fixture(scope="session")
def explicit_server(model_repository, tmp_path_factory):
    """`nexus serve --model-control-mode explicit`: nothing loads until asked to."""
    log = tmp_path_factory.mktemp("logs") / "nexus-serve-explicit.log"
    yield from _start_server(model_repository, log, ["--model-control-mode", "explicit"])


def _client(server: Server, protocol: str) -> support.Client:
    return support.Client.connect(protocol, server.http_url if protocol == "http" else server.grpc_url)


@pytest.fixture(params=support.PROTOCOLS)
def client(request, server):
    """A tritonclient client of each protocol (http, grpc) against the default server."""
    c = _client(server, request.param)
    yield c
    c.close()


@pytest.fixture(params=support.TRANSPORTS)
def transport(request, server):
    """A client and tensor encoding: http with JSON tensors, http with binary tensors, grpc."""
    protocol, binary = support.TRANSPORTS[request.param]
    c = _client(server, protocol)
    c.binary = binary
    yield c
    c.close()


@pytest.fixture(params=support.PROTOCOLS)
def explicit_client(request, explicit_server):
    """A tritonclient client of each protocol against the explicit-mode server."""
    c = _client(explicit_server, request.param)
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter, exitstatus):
    if exitstatus == 0:
        return
    for log in _server_logs:
        terminalreporter.section(f"server log: {log} (last 200 lines)")
        terminalreporter.write_line(_log_tail(log))


# --- MLflow registry/tracking server (test_mlflow_*.py) -----------------------------------------
# `NEXUS_REGISTRY_SERVER=nexus` (default) runs `nexus registry` on sqlite and on a fresh
# PostgreSQL database; `NEXUS_REGISTRY_SERVER=mlflow` runs the reference `mlflow server` (sqlite).
# See mlflow_support.py.

import mlflow_support  # noqa: E402


@pytest.fixture(scope="session", params=mlflow_support.DATABASES)
def registry_server(request, tmp_path_factory):
    """A registry server of the selected kind on each database, one per session."""
    kind, database = mlflow_support.SERVER_KIND, request.param
    workdir = tmp_path_factory.mktemp(f"registry-{kind}-{database}")
    log = workdir / f"{kind}-{database}.log"
    _server_logs.append(log)

    def fail(msg):
        pytest.fail(msg, pytrace=False)

    try:
        gen = mlflow_support.start_server(kind, database, workdir, fail)
        server = next(gen)
    except RuntimeError as e:  # PostgreSQL unreachable
        pytest.skip(f"{database}: {e}")
    yield server
    next(gen, None)


@pytest.fixture
def tracking_uri(registry_server, monkeypatch):
    """The server's URL, set as the global tracking and registry URI for this test only."""
    import mlflow

    mlflow_support.reset_mlflow_client_state()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of retrying 5xx
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(registry_server.url)
    mlflow.set_registry_uri(registry_server.url)
    yield registry_server.url
    mlflow_support.reset_mlflow_client_state()


@pytest.fixture
def mlflow_client(tracking_uri):
    """An MlflowClient bound explicitly to the server under test."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture
def experiment_id(mlflow_client):
    """A fresh experiment for one test."""
    return mlflow_client.create_experiment(mlflow_support.unique("exp"))


# --- Pipelines server (test_kfp.py) ---------------------------------------------------------------


@dataclass
class PipelinesServer:
    """A running `nexus up` whose pipelines REST API the KFP tests drive."""

    base: str  # http://127.0.0.1:PORT
    log: Path
    python: str  # the interpreter the steps run (`--pipeline-python`, and first on PATH)


@pytest.fixture(scope="session")
def pipelines_server(tmp_path_factory):
    """`nexus up` on free ports with its own data dir and an empty model repository.

    KFP lightweight components run `python3 -m kfp.dsl.executor_main`: the server gets this
    interpreter as `--pipeline-python` (what kfp.local's SubprocessRunner does with
    sys.executable) and its folder first on PATH (the `pip` prelude and plain `python3`).
    """
    with up_server(tmp_path_factory.mktemp("pipelines-server"), ["--pipeline-python", sys.executable]) as (base, log):
        yield PipelinesServer(base=base, log=log, python=sys.executable)


@contextlib.contextmanager
def up_server(work: Path, extra: list[str]):
    """Runs `nexus up` on free ports with its data dir, model cache and (empty) model repository
    in `work`, `extra` arguments appended and this interpreter's folder first on PATH (pipeline
    steps run `python3` from it); yields (base URL, log) once ready, and stops it after."""
    if not NEXUS_BIN.is_file():
        pytest.fail(f"server binary {NEXUS_BIN} not found: run `cargo build --bin nexus` or set NEXUS_BIN")
    repository = work / "models"
    repository.mkdir()
    log = work / "nexus-up.log"
    http, grpc, metrics = _free_ports(3)
    cmd = [
        str(NEXUS_BIN), "up",
        "--model-repository", str(repository),
        "--address", "127.0.0.1",
        "--http-port", str(http),
        "--grpc-port", str(grpc),
        "--metrics-port", str(metrics),
        "--data-dir", str(work / "data"),
        "--model-cache", str(work / "model-cache"),
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NEXUS_URL", "NEXUS_DATA_DIR")}
    env["NO_COLOR"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    _server_logs.append(log)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        # cwd = repo root, as for `nexus serve`: .nexus/lib/libonnxruntime.so is found there.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{http}"
    with serving(proc, f"{base}/v2/health/ready", log, "nexus up"):
        yield base, log


# --- Kafka-protocol broker (test_events.py) ------------------------------------------------------
# `NEXUS_TEST_KAFKA_BROKERS=host:port` names an external broker; otherwise tansu (`$NEXUS_TANSU`,
# else ~/.cache/nexus/tansu/bin/tansu, installed by scripts/install-tansu.sh) runs on a free port
# with its in-memory storage, one per test module.

KAFKA_BROKERS_ENV = "NEXUS_TEST_KAFKA_BROKERS"


def tansu_binary() -> Path:
    """Where tansu should be: `$NEXUS_TANSU`, else ~/.cache/nexus/tansu/bin/tansu."""
    return Path(os.environ.get("NEXUS_TANSU") or Path.home() / ".cache" / "nexus" / "tansu" / "bin" / "tansu")


def external_kafka_brokers() -> str | None:
    """The external broker of NEXUS_TEST_KAFKA_BROKERS, if set."""
    return os.environ.get(KAFKA_BROKERS_ENV, "").strip() or None


@pytest.fixture(scope="module")
def kafka_brokers(tmp_path_factory) -> str:
    """Bootstrap servers of a Kafka-protocol broker: the external one, or a tansu started for
    this module (stopped with SIGTERM at its end). Fails without either: CI installs tansu."""
    external = external_kafka_brokers()
    if external:
        yield external
        return
    binary = tansu_binary()
    if not binary.is_file():
        pytest.fail(
            f"the event tests need a Kafka-protocol broker: tansu not found at {binary}; run "
            f"scripts/install-tansu.sh (or set NEXUS_TANSU to its binary, or {KAFKA_BROKERS_ENV}=host:port)",
            pytrace=False,
        )
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    _server_logs.append(log)
    (port,) = _free_ports(1)
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]  # fmt: skip
    # tansu also reads these from the environment; the command line must be what counts.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")}  # fmt: skip
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tansu exited with {proc.returncode} at start; log:\n{_log_tail(log)}", pytrace=False)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"tansu not listening on {port} after 10 s; log:\n{_log_tail(log)}", pytrace=False)
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc, timeout=5)


@contextlib.contextmanager
def nexus_serve(repository: Path, log: Path, extra_args: list[str]):
    """`nexus serve` on `repository` with `extra_args` as a context manager: yields the ready
    Server, stops it when the block ends."""
    yield from _start_server(repository, log, extra_args)
