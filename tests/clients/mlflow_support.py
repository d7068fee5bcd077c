"""What the MLflow client tests share: the registry server under test (`nexus registry` or the
reference `mlflow server`), per-test client state, and an optional request recorder.

Server kind: `NEXUS_REGISTRY_SERVER=nexus` (default; binary `$NEXUS_BIN`, default
`target/debug/nexus`) or `mlflow` (the reference `.venv/bin/mlflow server`, used to prove the
tests right). Databases: `sqlite` and `postgres` for nexus (a fresh PostgreSQL database per
session, dropped afterwards), `sqlite` only for mlflow.

`NEXUS_MLFLOW_RECORD=/path/requests.jsonl` puts a recording HTTP proxy in front of the server:
every request the clients make (method, path, query, JSON body, status, response) is appended as
one JSON line. `python tests/clients/mlflow_support.py summarize FILE` lists the distinct
endpoints seen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parents[2]
NEXUS_BIN = Path(os.environ.get("NEXUS_BIN", REPO / "target" / "debug" / "nexus"))
MLFLOW_BIN = Path(os.environ.get("MLFLOW_BIN", REPO / ".venv" / "bin" / "mlflow"))
SERVER_KIND = os.environ.get("NEXUS_REGISTRY_SERVER", "nexus")
RECORD = os.environ.get("NEXUS_MLFLOW_RECORD")
PG_HOST = os.environ.get("NEXUS_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("NEXUS_PG_PORT", "5432")
PG_USER = os.environ.get("NEXUS_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("NEXUS_PG_DB", "test")
READY_TIMEOUT_S = 90

# The client must not phone home (no network here anyway) nor probe servers for telemetry.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if SERVER_KIND not in ("nexus", "mlflow"):
    raise RuntimeError(f"NEXUS_REGISTRY_SERVER must be 'nexus' or 'mlflow', not {SERVER_KIND!r}")

# Databases each server kind is tested on.
DATABASES = ["sqlite", "postgres"] if SERVER_KIND == "nexus" else ["sqlite"]


@dataclass
class RegistryServer:
    """A running registry server and where to reach it."""

    kind: str  # "nexus" or "mlflow"
    database: str  # "sqlite" or "postgres"
    url: str  # http://127.0.0.1:PORT (the proxy's when recording)
    log: Path
    data_dir: Path
    extra: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str = "t") -> str:
    """A name no other test (or earlier session on the same database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def log_tail(path: Path, lines: int = 200) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text[-lines:])


# --- PostgreSQL ------------------------------------------------------------------------------


def _psql(sql: str, db: str = PG_ADMIN_DB) -> subprocess.CompletedProcess:
    psql = shutil.which("psql")
    if psql is None:
        raise FileNotFoundError("psql not found")
    return subprocess.run(
        [psql, "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )


def create_pg_database() -> tuple[str, str]:
    """Create `nexus_test_<random>`; return (name, database URL). Raises RuntimeError when
    PostgreSQL cannot be reached."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    try:
        r = _psql(f"CREATE DATABASE {name}")
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot run psql: {e}") from e
    if r.returncode != 0:
        raise RuntimeError(f"CREATE DATABASE {name} failed: {r.stderr.strip()}")
    return name, f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(name: str) -> None:
    r = _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if r.returncode != 0:
        print(f"warning: DROP DATABASE {name} failed: {r.stderr.strip()}", file=sys.stderr)


# --- Server processes -------------------------------------------------------------------------


def server_command(kind: str, port: int, data_dir: Path, database_url: str | None) -> list[str]:
    if kind == "mlflow":
        if database_url is not None:
            raise ValueError("the mlflow reference runs on sqlite only")
        return [
            str(MLFLOW_BIN), "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}",
            "--artifacts-destination", str(data_dir / "artifacts"),
            "--workers", "1",
        ]  # fmt: skip
    cmd = [
        str(NEXUS_BIN), "registry",
        "--address", "127.0.0.1",
        "--port", str(port),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    if database_url is not None:
        # The PostgreSQL variant also keeps artifacts at an explicit file:// destination.
        cmd += ["--database-url", database_url]
        cmd += ["--artifacts-destination", (data_dir / "pg-artifacts").as_uri()]
    return cmd


def _ready(base: str, requests) -> tuple[bool, str]:
    try:
        r = requests.get(f"{base}/health", timeout=2)
        if r.status_code == 200:
            return True, "health 200"
        last = f"/health HTTP {r.status_code}"
        r = requests.get(
            f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "Default"}, timeout=2
        )
        if r.status_code == 200:
            return True, "get-by-name 200"
        return False, f"{last}; get-by-name HTTP {r.status_code} {r.text[:200]}"
    except requests.RequestException as e:
        return False, type(e).__name__


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        env = {**os.environ, "NO_COLOR": "1"}
        # The server must not see a client-side tracking URI or experiment.
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
            env.pop(k, None)
        # Own process group: mlflow server runs uvicorn as a child, stopped together.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


def start_server(kind: str, database: str, workdir: Path, fail):
    """Start a server, wait until ready, yield a RegistryServer, then stop it.
    `fail(msg)` reports a fatal setup error (pytest.fail / pytest.skip)."""
    import requests

    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{kind}-{database}.log"
    if kind == "nexus" and not NEXUS_BIN.is_file():
        fail(f"server binary {NEXUS_BIN} not found: run `cargo build --bin nexus` or set NEXUS_BIN")
    if kind == "mlflow" and not MLFLOW_BIN.is_file():
        fail(f"{MLFLOW_BIN} not found: run scripts/setup.sh")
    pg_name = database_url = None
    if database == "postgres":
        pg_name, database_url = create_pg_database()
    port = free_port()
    cmd = server_command(kind, port, data_dir, database_url)
    try:
        proc = _spawn(cmd, log)
    except BaseException:
        if pg_name is not None:
            drop_pg_database(pg_name)
        raise
    base = f"http://127.0.0.1:{port}"
    proxy = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                fail(f"{kind} exited with {proc.returncode} before it was ready; log:\n{log_tail(log)}")
            ok, last = _ready(base, requests)
            if ok:
                break
            if time.monotonic() > deadline:
                fail(f"{kind} not ready after {READY_TIMEOUT_S}s (last: {last}); log:\n{log_tail(log)}")
            time.sleep(0.2)
        url = base
        if RECORD:
            proxy = RecordingProxy(base, Path(RECORD), tag=f"{kind}/{database}")
            url = proxy.url
        yield RegistryServer(kind=kind, database=database, url=url, log=log, data_dir=data_dir)
    finally:
        if proxy is not None:
            proxy.close()
        # mlflow server runs uvicorn as a child: signal the whole group. The reference's data
        # does not matter, so it is killed outright (its graceful stop takes seconds).
        try:
            os.killpg(proc.pid, 15 if kind == "nexus" else 9)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        if pg_name is not None:
            drop_pg_database(pg_name)


# --- Client-side state -------------------------------------------------------------------------


def reset_mlflow_client_state() -> None:
    """Forget everything the mlflow package keeps between calls (active runs, experiment,
    tracking/registry URIs), so tests against different servers cannot leak into each other."""
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None
    fluent._last_active_run_id.set(None)
    fluent._last_logged_model_id.set(None)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(k, None)


# --- Recording proxy ---------------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


class RecordingProxy:
    """A threaded HTTP proxy in front of `target` that appends every exchange to a JSONL file."""

    def __init__(self, target: str, out: Path, tag: str):
        import requests

        self.target = target
        self.lock = threading.Lock()
        out.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(out, "a")
        session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *a):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if not n and self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(chunks)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
                r = session.request(self.command, proxy.target + self.path, data=body or None, headers=headers, allow_redirects=False, timeout=120)
                content = r.content
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP and k.lower() not in ("content-length", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
                proxy.record(tag, self.command, self.path, self.headers.get("Content-Type"), body, r, content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, tag, method, path, ctype, body: bytes, r, content: bytes):
        parts = urlsplit(path)
        entry = {
            "t": round(time.time(), 3),
            "server": tag,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "method": method,
            "path": parts.path,
            "query": parse_qsl(parts.query, keep_blank_values=True),
            "content_type": ctype,
            "status": r.status_code,
            "ms": round(r.elapsed.total_seconds() * 1000, 1),
            "response_type": r.headers.get("Content-Type"),
        }
        entry["body"] = _json_or_size(body, ctype)
        entry["response"] = _json_or_size(content, r.headers.get("Content-Type"))
        with self.lock:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.file.close()


def _json_or_size(data: bytes, ctype: str | None):
    if not data:
        return None
    if ctype and "json" in ctype:
        try:
            return json.loads(data)
        except ValueError:
            pass
    return f"<{len(data)} bytes {ctype or ''}>"


# --- Summary of a recording ---------------------------------------------------------------------

_ID_PATTERNS = [
    (re.compile(r"^(/(?:ajax-)?api/2\.0/mlflow-artifacts/artifacts)/.+$"), "{path}"),
    (re.compile(r"^(/api/2\.0/mlflow-artifacts/mpu/[a-z-]+)/.+$"), "{path}"),
    (re.compile(r"^(/api/[23]\.0/mlflow/logged-models)/(?!search$|batch-get$)[^/]+(/.*)?$"), "{model_id}"),
]


def template(path: str) -> str:
    """The path with ids and artifact paths replaced by {placeholders}."""
    for pat, placeholder in _ID_PATTERNS:
        m = pat.match(path)
        if m:
            rest = m.group(2) if pat.groups >= 2 and m.group(2) else ""
            return f"{m.group(1)}/{placeholder}{rest}"
    return path


def _keys(obj, prefix="") -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= _keys(v, prefix + k + ".")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                out |= _keys(v[0], prefix + k + "[].")
    return out


def examples(path: Path, limit: int = 700) -> str:
    """One example exchange per endpoint (first 2xx seen, else first seen)."""
    first: dict[tuple[str, str], dict] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        key = (e["method"], template(e["path"]))
        if key not in first or (first[key]["status"] >= 300 and e["status"] < 300):
            first[key] = e
    out = []
    for (m, p), e in sorted(first.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        q = "?" + "&".join(f"{k}={v}" for k, v in e["query"]) if e["query"] else ""
        body = json.dumps(e["body"]) if e["body"] is not None else ""
        resp = json.dumps(e["response"]) if e["response"] is not None else ""
        out.append(f"{m} {e['path']}{q}")
        if body:
            out.append(f"  > ({e['content_type']}) {body[:limit]}")
        out.append(f"  < {e['status']} ({e['response_type']}) {resp[:limit]}")
    return "\n".join(out)


def errors(path: Path) -> str:
    """Every distinct (endpoint, status, error_code) seen, with one message."""
    seen: dict[tuple, str] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["status"] >= 400 and isinstance(e["response"], dict):
            key = (e["method"], template(e["path"]), e["status"], e["response"].get("error_code"))
            seen.setdefault(key, " ".join(e["response"].get("message", "").split())[:160])
    head = "| method | path | status | error_code | example message |\n|---|---|---|---|---|"
    rows = [f"| {m} | `{p}` | {s} | {c} | {msg.replace('|', '/')} |" for (m, p, s, c), msg in sorted(seen.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2]))]
    return head + "\n" + "\n".join(rows)


def summarize(path: Path) -> str:
    seen: dict[tuple[str, str], dict] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        key = (e["method"], template(e["path"]))
        s = seen.setdefault(key, {"query": set(), "body": set(), "status": set(), "resp": set(), "n": 0})
        s["n"] += 1
        s["query"] |= {k for k, _ in e["query"]}
        s["status"].add(e["status"])
        if isinstance(e["body"], dict):
            s["body"] |= _keys(e["body"])
        elif e["body"] and e["status"] < 400:
            s["body"].add("<raw bytes>")
        if isinstance(e["response"], dict) and e["status"] < 300:
            s["resp"] |= {k for k in e["response"]}
    lines = []
    for (m, p), s in sorted(seen.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(
            f"| {m} | `{p}` | {', '.join(sorted(s['query'])) or '-'} | {', '.join(sorted(s['body'])) or '-'} "
            f"| {', '.join(sorted(s['resp'])) or '-'} | {', '.join(map(str, sorted(s['status'])))} | {s['n']} |"
        )
    head = "| method | path | query | JSON body fields | response fields (2xx) | statuses seen | calls |\n|---|---|---|---|---|---|---|"
    return head + "\n" + "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        print(summarize(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "errors":
        print(errors(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "examples":
        print(examples(Path(sys.argv[2])))
    else:
        print(__doc__)
