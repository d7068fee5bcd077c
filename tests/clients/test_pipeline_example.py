"""End to end: examples/pipelines/train_register_promote.yaml on a real `nexus up`.

One `nexus up` (temporary data dir, free ports, an empty model repository) is started with
`--model models:/example-classifier@champion --registry-poll-secs 1`: it serves nothing at
first. The example pipeline, submitted over REST, trains a classifier, exports it to ONNX,
gates it on accuracy, pushes it to this server's registry (`$NEXUS_BIN models push`) and
moves `champion` to it (`$NEXUS_BIN models alias set`). The test then checks the registry
(MLflow REST) and that the server picks the version up and serves it, predictions equal to a
numpy forward pass over the weights the train step wrote (read through the run's task
outputs). A second run moves the alias to version 2 and the server swaps; a run whose
accuracy gate fails registers nothing (submitted with `nexus pipeline submit --wait`).

The steps run `python3` from the server's PATH, so the server is started with this
interpreter's folder (the project venv: numpy, onnx, onnxruntime) first on PATH.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

import conftest

REPO = conftest.REPO
EXAMPLE_DIR = REPO / "examples" / "pipelines"
SPEC = EXAMPLE_DIR / "train_register_promote.yaml"
MODEL = "example-classifier"  # the spec's default model_name
RUN_TIMEOUT_S = 180
SERVE_TIMEOUT_S = 60
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
STEPS = ["prepare", "train", "export", "evaluate", "register", "promote"]


class Up:
    """A running `nexus up` for this module."""

    def __init__(self, base: str, log: Path):
        self.base = base
        self.log = log

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.base + path, timeout=30, **kw)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    # The model repository is empty: the only model served comes from the registry.
    extra = ["--model", f"models:/{MODEL}@champion", "--registry-poll-secs", "1"]
    with conftest.up_server(tmp_path_factory.mktemp("pipeline-example"), extra) as (base, log):
        yield Up(base, log)


def submit(up: Up, parameters: dict) -> str:
    r = up.post(
        "/api/v1/pipelines/runs",
        json={"spec": SPEC.read_text(), "parameters": parameters, "base_dir": str(EXAMPLE_DIR)},
    )
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    run = r.json()["run"]
    assert run["kind"] == "nexus"
    assert run["status"] in {"PENDING", "RUNNING", "SUCCEEDED"}
    return run["id"]


def wait(up: Up, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        r = up.get(f"/api/v1/pipelines/runs/{run_id}")
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        run = r.json()["run"]
        if run["status"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {RUN_TIMEOUT_S}s: {run}"
        time.sleep(0.2)


def logs(up: Up, run_id: str) -> str:
    r = up.get(f"/api/v1/pipelines/runs/{run_id}/logs")
    return f"--- logs of run {run_id} (HTTP {r.status_code}) ---\n{r.text}"


def tasks_by_name(run: dict) -> dict:
    return {t["name"]: t for t in run["tasks"]}


def run_succeeded(up: Up, parameters: dict) -> dict:
    run_id = submit(up, parameters)
    run = wait(up, run_id)
    assert run["status"] == "SUCCEEDED", f"{run}\n{logs(up, run_id)}"
    tasks = tasks_by_name(run)
    assert sorted(tasks) == sorted(STEPS)
    for name, task in tasks.items():
        assert task["status"] == "SUCCEEDED", (name, task)
        assert task["started_at"] <= task["finished_at"]
    for k, v in parameters.items():
        assert str(run["parameters"][k]) == str(v)
    return run


def artifact_path(task: dict, name: str) -> Path:
    artifact = task["outputs"]["artifacts"][name]
    if isinstance(artifact, list):  # KFP-style artifact lists: one artifact per name here
        assert len(artifact) == 1, artifact
        artifact = artifact[0]
    uri = artifact["uri"]
    path = Path(uri.removeprefix("file://"))
    assert path.exists(), f"artifact {name} of {task['name']}: {uri} does not exist"
    return path


def alias_version(up: Up, alias: str = "champion") -> str | None:
    r = up.get("/api/2.0/mlflow/registered-models/alias", params={"name": MODEL, "alias": alias})
    # As MLflow: no such model -> 404 RESOURCE_DOES_NOT_EXIST; no such alias -> 400
    # INVALID_PARAMETER_VALUE "Registered model alias ... not found."
    if r.status_code == 404 or (r.status_code == 400 and "not found" in r.text):
        return None
    assert r.status_code == 200, r.text
    return r.json()["model_version"]["version"]


def versions(up: Up) -> list[str]:
    r = up.get("/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{MODEL}'"})
    assert r.status_code == 200, r.text
    return sorted((v["version"] for v in r.json().get("model_versions", [])), key=int)


def reference(weights: Path, x: np.ndarray) -> np.ndarray:
    """The forward pass the exported graph computes, in numpy (float32 like ORT)."""
    w = np.load(weights)
    h = np.tanh(x @ w["W1"] + w["b1"])
    return (1.0 / (1.0 + np.exp(-(h @ w["W2"] + w["b2"])))).astype(np.float32)


def wait_served_version(up: Up, version: str) -> None:
    """Until the server serves exactly `version` of MODEL (it polls the alias every second)."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        r = up.get(f"/v2/models/{MODEL}")
        last = f"{r.status_code} {r.text[:300]}"
        if r.status_code == 200 and r.json().get("versions") == [version]:
            if up.get(f"/v2/models/{MODEL}/ready").status_code == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"{MODEL} version {version} not served after {SERVE_TIMEOUT_S}s (last metadata: {last})")


def infer(up: Up, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = up.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "OUTPUT0" and out["datatype"] == "FP32" and out["shape"] == [len(x), 1], out
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def check_promoted_and_served(up: Up, run: dict) -> str:
    tasks = tasks_by_name(run)
    version = tasks["register"]["outputs"]["parameters"]["version"]
    accuracy = float(tasks["evaluate"]["outputs"]["parameters"]["accuracy"])
    assert accuracy >= float(run["parameters"]["min_accuracy"])

    # The registry holds the version, tagged by the register step, and champion names it.
    r = up.get("/api/2.0/mlflow/model-versions/get", params={"name": MODEL, "version": version})
    assert r.status_code == 200, r.text
    tags = {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}
    assert tags.get("accuracy") == tasks["evaluate"]["outputs"]["parameters"]["accuracy"], tags
    assert tags.get("nexus.pipeline_run") == run["id"], tags
    assert alias_version(up) == version

    # The server follows models:/example-classifier@champion and serves that version, and it
    # computes what the trained weights compute.
    wait_served_version(up, version)
    data = np.load(artifact_path(tasks["prepare"], "dataset"))
    x = data["X_test"][:48].astype(np.float32)
    got = infer(up, x)
    want = reference(artifact_path(tasks["train"], "weights"), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    served_accuracy = float(((got[:, 0] > 0.5) == (data["y_test"][:48] > 0.5)).mean())
    assert served_accuracy > 0.8
    return version


def test_pipeline_trains_registers_promotes_and_nexus_serves_it(up):
    assert alias_version(up) is None
    r = up.get(f"/v2/models/{MODEL}/ready")
    assert r.status_code != 200, "nothing is registered yet, so nothing can be served"

    first = run_succeeded(up, {"epochs": 300})
    assert run_param(first, "model_name") == MODEL and run_param(first, "alias") == "champion"
    v1 = check_promoted_and_served(up, first)
    assert tasks_by_name(first)["promote"]["outputs"]["parameters"]["previous"] == "none"

    # Retrain with another seed: a new version, champion moves, the server swaps to it.
    second = run_succeeded(up, {"epochs": 400, "seed": 1, "lr": 0.3})
    v2 = check_promoted_and_served(up, second)
    assert int(v2) == int(v1) + 1
    assert tasks_by_name(second)["promote"]["outputs"]["parameters"]["previous"] == v1
    w1 = np.load(artifact_path(tasks_by_name(first)["train"], "weights"))
    w2 = np.load(artifact_path(tasks_by_name(second)["train"], "weights"))
    assert not np.allclose(w1["W1"], w2["W1"]), "the second run should have trained different weights"


def run_param(run: dict, name: str) -> str:
    return str(run["parameters"][name])


def test_accuracy_gate_stops_registration(up):
    """`nexus pipeline submit --wait` exits non-zero; evaluate fails; nothing is pushed."""
    before_versions, before_alias = versions(up), alias_version(up)
    env = {**os.environ, "NEXUS_URL": up.base}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [str(conftest.NEXUS_BIN), "pipeline", "submit", str(SPEC), "--param", "min_accuracy=1.01", "--wait"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode != 0, done
    runs = up.get("/api/v1/pipelines/runs").json()["runs"]
    failed = [r for r in runs if str(r["parameters"].get("min_accuracy")) == "1.01"]
    assert len(failed) == 1, runs
    run = up.get(f"/api/v1/pipelines/runs/{failed[0]['id']}").json()["run"]
    assert run["status"] == "FAILED", run
    tasks = tasks_by_name(run)
    assert tasks["evaluate"]["status"] == "FAILED", tasks["evaluate"]
    # The CLI resolved the spec's relative workdirs against the spec's folder.
    assert tasks["train"]["status"] == "SUCCEEDED", tasks["train"]
    for name in ("register", "promote"):
        assert tasks[name]["status"] not in {"SUCCEEDED", "RUNNING"}, tasks[name]
    assert "accuracy" in up.get(f"/api/v1/pipelines/runs/{run['id']}/logs", params={"step": "evaluate"}).text
    assert versions(up) == before_versions
    assert alias_version(up) == before_alias
