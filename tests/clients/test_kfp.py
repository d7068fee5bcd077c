"""Kubeflow Pipelines compatibility: KFP v2 IR YAML run by Nexus vs kfp.local.

Each pipeline in kfp_pipelines.py is compiled here with the pinned kfp 2.x
(`kfp.compiler.Compiler().compile`), submitted to a session-wide `nexus up`
(`POST /api/v1/pipelines/runs`, polled until it ends) and, where kfp.local can run it, run
with `kfp.local.SubprocessRunner(use_venv=False)` on the same arguments in this process;
the pipeline outputs are compared: parameter values equal, artifact files byte-equal (Nexus:
the file at the artifact's `uri`; kfp.local: the artifact's local path). The Nexus run is
submitted first and kfp.local runs while Nexus works.

Where kfp.local cannot be the reference, expected values are computed in the test instead:
- container components: the SubprocessRunner refuses them (it runs only lightweight Python
  components), so `containers` is checked against values worked out from its shell commands;
- caching: kfp.local 2.17.3 caches nothing (every task runs again), so `caching` is Nexus only;
- loop items kfp.local 2.17.3 gets wrong (kfp/local/orchestrator/task_spec_utils.py,
  create_parameter_loop_iteration_task_spec): a ParallelFor body reading an output of a task
  outside the loop gets the loop item instead (every `taskOutputParameter` input of the loop
  is swapped for the item) -- `loop_upstream`; and in nested loops whose outer loop iterates a
  parameter or a task output, the inner body gets the inner item for the outer one too (any
  input named `...-loop-item` is swapped) -- `outer_item`. Those tests assert what a cluster
  run gives and that kfp.local still differs, so they fail (and say so) once kfp fixes it.

kfp.local also hands numbers inside list/dict parameters, collected parameters and artifact
metadata over as floats (protobuf Struct numbers: [1, 2] arrives as [1.0, 2.0]); the
components int() such values so that outputs do not depend on it.

Task checks find tasks by their IR task name (`name`), not by exact `path`.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import kfp
import pytest
import requests
from kfp import compiler, dsl, local

import conftest
import kfp_pipelines as kp

RUN_TIMEOUT_S = 240
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
RUNS = "/api/v1/pipelines/runs"


# --- helpers -------------------------------------------------------------------------------


def compile_ir(pipeline, tmp_path: Path) -> Path:
    """The pipeline compiled to KFP v2 IR YAML in tmp_path."""
    path = tmp_path / f"{pipeline.name}.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return path


def submit(server, ir: Path, parameters: dict | None = None) -> str:
    body = {"spec": ir.read_text(), "parameters": parameters or {}, "name": ir.stem}
    r = requests.post(server.base + RUNS, json=body, timeout=30)
    assert r.status_code == 201, f"POST {RUNS} ({ir.name}): {r.status_code} {r.text}"
    run = r.json()["run"]
    assert run["kind"] == "kfp", run
    assert run["status"] in {"PENDING", "RUNNING", "SUCCEEDED"}, run
    return run["id"]


def logs(server, run_id: str) -> str:
    try:
        r = requests.get(f"{server.base}{RUNS}/{run_id}/logs", timeout=30)
        return r.text[-6000:]
    except requests.RequestException as e:
        return f"(no logs: {e})"


def wait(server, run_id: str, expect: str | None = "SUCCEEDED") -> dict:
    """Polls the run until it ends; fails (with the run and its logs) unless its status is
    `expect` (None: any terminal status)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        r = requests.get(f"{server.base}{RUNS}/{run_id}", timeout=30)
        assert r.status_code == 200, f"GET run {run_id}: {r.status_code} {r.text}"
        run = r.json()["run"]
        if run["status"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            requests.post(f"{server.base}{RUNS}/{run_id}/cancel", timeout=30)
            pytest.fail(f"run {run_id} not done after {RUN_TIMEOUT_S}s:\n{describe_run(run)}\n{logs(server, run_id)}")
        time.sleep(0.3)
    if expect is not None and run["status"] != expect:
        pytest.fail(
            f"run {run_id} ended {run['status']}, expected {expect}:\n{describe_run(run)}\n"
            f"logs:\n{logs(server, run_id)}"
        )
    return run


def describe_run(run: dict) -> str:
    lines = [f"status={run['status']} error={run.get('error')!r} outputs={json.dumps(run.get('outputs'))}"]
    for t in run.get("tasks", []):
        lines.append(
            f"  {t['path']}: {t['status']} attempts={t.get('attempts')} cached={t.get('cached')} "
            f"error={t.get('error')!r} outputs={json.dumps(t.get('outputs'))}"
        )
    return "\n".join(lines)


def tasks_named(run: dict, name: str) -> list[dict]:
    return [t for t in run["tasks"] if t["name"] == name]


def task(run: dict, name: str) -> dict:
    found = tasks_named(run, name)
    assert len(found) == 1, f"expected one task named {name!r}, got {[t['path'] for t in found]}\n{describe_run(run)}"
    return found[0]


def read_uri(uri: str) -> bytes:
    assert uri.startswith("/"), f"artifact uri {uri!r} is not an absolute file path"
    return Path(uri).read_bytes()


def artifact(value) -> dict:
    """An ARTIFACT of `outputs.artifacts` (the contract: {name: ARTIFACT}). A one-element list
    is accepted too, so that the rest of a test still runs where the server sends lists;
    test_artifact_outputs_follow_contract is the one that insists on the contract's form."""
    if isinstance(value, list):
        assert len(value) == 1, value
        value = value[0]
    return value


def nexus_outputs(run: dict) -> dict:
    """The run's pipeline outputs: parameter values, and (schema_title, file bytes) per artifact."""
    out = dict(run["outputs"]["parameters"])
    for name, art in run["outputs"]["artifacts"].items():
        art = artifact(art)
        out[name] = (art["schema_title"], read_uri(art["uri"]))
    return out


def run_local(pipeline, arguments: dict, root: Path, raise_on_error: bool = True) -> dict:
    """Runs `pipeline(**arguments)` with kfp.local's SubprocessRunner(use_venv=False), in this
    process (it changes no cwd; the steps run sys.executable), and returns its outputs in
    nexus_outputs' form."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=raise_on_error,
    )
    result = pipeline(**arguments)
    out = {}
    for name, value in (result.outputs if result is not None else {}).items():
        if isinstance(value, dsl.Artifact):
            out[name] = (value.schema_title, Path(value.path).read_bytes())
        else:
            out[name] = value
    return out


def started(t: dict) -> int:
    assert t["started_at"] is not None, t
    return t["started_at"]


def finished(t: dict) -> int:
    assert t["finished_at"] is not None, t
    return t["finished_at"]


def test_kfp_version_is_pinned():
    pins = (conftest.REPO / "requirements-dev.txt").read_text()
    assert f"kfp=={kfp.__version__}" in pins


# --- dataflow: params, artifacts, loops, Collected, nested pipeline, NamedTuple outputs -----


def test_dataflow_matches_kfp_local(pipelines_server, tmp_path):
    ir = compile_ir(kp.dataflow, tmp_path)
    args = {"n": 4}  # prefix, mark, factor keep their defaults
    run_id = submit(pipelines_server, ir, args)
    expected = run_local(kp.dataflow, args, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    assert run["parameters"] == {"n": 4, "prefix": "row", "mark": "!", "factor": 0.5}
    assert nexus_outputs(run) == expected
    # What kfp.local gave, spelled out (so a change in both shows too).
    assert expected["count"] == 4
    assert expected["squares_total"] == 1 + 4 + 9 + 16
    assert expected["shouted"] == "ROW0!+ROW1!+ROW2!+ROW3!"
    assert expected["weighted"] == pytest.approx(9.875)  # 0.75+1 + 1+2 + 2.125+3
    assert expected["merged"] == ("system.Dataset", b"x,yy,zzz")
    assert expected["merged_count"] == 3
    assert expected["summary"] == "row0|row1|row2|row3"
    assert expected["report"] == (
        "system.Artifact",
        b"4 rows, first=row0, meta_rows=4, framework=none, weights=28!",
    )
    assert expected["inner_sq"] == 16
    assert expected["inner_copy"] == ("system.Dataset", b"inner:row0\nrow1\nrow2\nrow3\n")
    assert expected["stamped"] == "stamp:row"

    # Tasks: every one succeeded, loops ran once per item, artifact metadata came through.
    assert {t["status"] for t in run["tasks"]} == {"SUCCEEDED"}, describe_run(run)
    assert len(tasks_named(run, "square")) == 5  # 4 loop iterations + the nested pipeline's
    for name, n in [("shout", 4), ("weigh", 3), ("write-part", 3)]:
        found = tasks_named(run, name)
        assert len({t["path"] for t in found}) == n, f"{name}: {[t['path'] for t in found]}"
    made = task(run, "make-data")
    assert made["outputs"]["parameters"]["names"] == ["row0", "row1", "row2", "row3"]
    data, model = (artifact(made["outputs"]["artifacts"][k]) for k in ("data", "model"))
    assert data["schema_title"] == "system.Dataset" and data["metadata"]["rows"] == 4
    assert model["schema_title"] == "system.Model" and model["metadata"] == {"framework": "none"}
    assert read_uri(model["uri"]) == b"weights=28"
    assert artifact(task(run, "copy-data")["outputs"]["artifacts"]["out"])["schema_title"] == "system.Dataset"
    # .after(tot, j): stamp starts only once both have finished
    stamp = task(run, "stamp")
    assert started(stamp) >= finished(task(run, "total"))
    assert started(stamp) >= finished(task(run, "join"))


def artifact_list(value) -> list[dict]:
    return value if isinstance(value, list) else [value]


def test_pipelines_returning_artifacts(pipelines_server, tmp_path):
    """A pipeline whose output is one artifact, and one whose output is a list of artifacts
    (dsl.Collected over a ParallelFor on a list-typed pipeline parameter)."""
    solo = submit(pipelines_server, compile_ir(kp.artifact_out, tmp_path), {"text": "one"})
    several = submit(pipelines_server, compile_ir(kp.collected_out, tmp_path), {"texts": ["k", "ll"]})
    expected_solo = run_local(kp.artifact_out, {"text": "one"}, tmp_path / "local")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "local"))
    parts = kp.collected_out(texts=["k", "ll"]).outputs["Output"]
    expected_parts = sorted((a.schema_title, Path(a.path).read_bytes()) for a in parts)

    assert expected_solo == {"Output": ("system.Dataset", b"copy:one")}
    assert nexus_outputs(wait(pipelines_server, solo)) == expected_solo
    assert expected_parts == [("system.Dataset", b"k"), ("system.Dataset", b"ll")]
    run = wait(pipelines_server, several)
    assert run["parameters"] == {"texts": ["k", "ll"]}
    assert list(run["outputs"]["artifacts"]) == ["Output"], run["outputs"]
    got = sorted((a["schema_title"], read_uri(a["uri"])) for a in artifact_list(run["outputs"]["artifacts"]["Output"]))
    assert got == expected_parts


def test_artifact_outputs_follow_contract(pipelines_server, tmp_path):
    """`outputs.artifacts` maps each name to a list of ARTIFACT objects (KFP's ArtifactList: one
    element, or one per iteration when collected from a loop), for the run and for its tasks."""
    run = wait(pipelines_server, submit(pipelines_server, compile_ir(kp.artifact_out, tmp_path), {"text": "shape"}))
    shapes = {name: (type(v).__name__, len(v)) for name, v in run["outputs"]["artifacts"].items()}
    for t in run["tasks"]:
        shapes.update(
            {f"{t['name']}.{name}": (type(v).__name__, len(v)) for name, v in t["outputs"]["artifacts"].items()}
        )
    assert shapes and set(shapes.values()) == {("list", 1)}, shapes
    for [art] in run["outputs"]["artifacts"].values():
        assert {"uri", "name", "schema_title", "metadata"} <= set(art), art


# --- control: If/Elif/Else, OneOf, an exit handler on success -----------------------------


@pytest.mark.parametrize(
    "x,y,first,second",
    [
        (12, 5, "big:12", "sq-mid:25"),  # If / Elif
        (3, 11, "small:3", "sq-high:121"),  # Else / If
    ],
)
def test_conditions_match_kfp_local(pipelines_server, tmp_path, x, y, first, second):
    ir = compile_ir(kp.control, tmp_path)
    nexus_status, local_status = tmp_path / "nexus-status.json", tmp_path / "local-status.json"
    run_id = submit(pipelines_server, ir, {"x": x, "y": y, "status_path": str(nexus_status)})
    expected = run_local(kp.control, {"x": x, "y": y, "status_path": str(local_status)}, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    assert expected == {"first": first, "second": second}
    assert nexus_outputs(run) == expected
    assert run["parameters"]["threshold"] == 5
    # One branch of each If/Elif/Else chain ran (its label task gave the output), the other two
    # were skipped: the compiler makes a `condition-N` DAG task per branch.
    ran = [t for t in run["tasks"] if t["name"].startswith("label") and t["status"] == "SUCCEEDED"]
    assert sorted(t["outputs"]["parameters"]["Output"] for t in ran) == sorted([first, second]), describe_run(run)
    branches = sorted(t["status"] for t in run["tasks"] if re.fullmatch(r"condition-\d+", t["name"]))
    assert branches == ["SKIPPED"] * 4 + ["SUCCEEDED"] * 2, describe_run(run)
    # The exit task ran after the guarded group and saw it succeed, as in kfp.local.
    exit_task = task(run, "record-status")
    assert exit_task["status"] == "SUCCEEDED"
    assert exit_task["outputs"]["parameters"]["Output"] == "SUCCEEDED"
    assert started(exit_task) >= finished(task(run, "stamp"))
    # The whole PipelineTaskFinalStatus the exit task wrote (state, error_code) matches.
    assert json.loads(nexus_status.read_text()) == json.loads(local_status.read_text())
    assert json.loads(nexus_status.read_text())["state"] == "SUCCEEDED"


# --- loop items where kfp.local 2.17.3 gets them wrong ---------------------------------------


def test_loop_reads_upstream_output(pipelines_server, tmp_path):
    ir = compile_ir(kp.loop_upstream, tmp_path)
    run_id = submit(pipelines_server, ir)
    local_out = run_local(kp.loop_upstream, {}, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    # KFP semantics (a cluster run): add(a=base()=100, b=item) for items 1, 2, 3.
    assert nexus_outputs(run) == {"Output": 101 + 102 + 103}
    assert sorted(t["outputs"]["parameters"]["Output"] for t in tasks_named(run, "add")) == [101, 102, 103]
    # kfp.local 2.17.3 passes the item as `a` too: (1+1) + (2+2) + (3+3).
    assert local_out == {"Output": 12}, (
        f"kfp.local now gives {local_out}: its ParallelFor upstream-output bug looks fixed; "
        "compare with kfp.local directly here"
    )


def test_outer_loop_item_in_inner_loop(pipelines_server, tmp_path):
    ir = compile_ir(kp.outer_item, tmp_path)
    run_id = submit(pipelines_server, ir, {"outers": ["u", "v"]})
    local_out = run_local(kp.outer_item, {"outers": ["u", "v"]}, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    # KFP semantics: pair(a=outer item, b=inner item) for every (outer, inner).
    assert nexus_outputs(run) == {"Output": "u-a,u-b;v-a,v-b"}
    pairs = sorted(t["outputs"]["parameters"]["Output"] for t in tasks_named(run, "pair"))
    assert pairs == ["u-a", "u-b", "v-a", "v-b"], describe_run(run)
    # kfp.local 2.17.3 hands the inner item over as the outer one too (when the outer loop
    # iterates a parameter or a task output, its item's channel name ends in `-loop-item`).
    assert local_out == {"Output": "a-a,b-b;a-a,b-b"}, (
        f"kfp.local now gives {local_out}: its nested-loop item bug looks fixed; compare with kfp.local directly here"
    )


# --- conditions inside nested loops; dict, bool and list parameters ------------------------


def test_conditions_inside_nested_loops(pipelines_server, tmp_path):
    ir = compile_ir(kp.nested_loops, tmp_path)
    args = {"limit": 3, "loud": True, "sizes": [5, 1, 4]}  # opts keeps its default
    run_id = submit(pipelines_server, ir, args)
    expected = run_local(kp.nested_loops, args, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    assert expected == {"Output": "CM/FAST: 5+1+4"}
    assert nexus_outputs(run) == expected
    assert run["parameters"] == {**args, "opts": {"unit": "cm", "mode": "fast"}}
    # Only the items above the limit (5, 4) ran the condition's body: square + an inner loop.
    squares = tasks_named(run, "square")
    ran = sorted(t["outputs"]["parameters"]["Output"] for t in squares if t["status"] == "SUCCEEDED")
    assert ran == [16, 25], describe_run(run)
    assert {t["status"] for t in squares if t["status"] != "SUCCEEDED"} <= {"SKIPPED"}, describe_run(run)
    branches = sorted(t["status"] for t in run["tasks"] if t["name"] == "condition-2")  # one per item
    assert branches == ["SKIPPED", "SUCCEEDED", "SUCCEEDED"], describe_run(run)
    tags = [t["outputs"]["parameters"]["Output"] for t in tasks_named(run, "tag") if t["status"] == "SUCCEEDED"]
    assert sorted(tags) == ["a@cm", "a@cm", "b@cm", "b@cm"], describe_run(run)


# --- container components (refused by kfp.local's SubprocessRunner) -----------------------


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # kfp.local, alpine image
def test_container_components(pipelines_server, tmp_path):
    ir = compile_ir(kp.containers, tmp_path)
    run_id = submit(pipelines_server, ir, {"msg": "hey", "n": 4})
    # kfp.local cannot be the reference here: it refuses container components.
    with pytest.raises(RuntimeError, match="Container Component"):
        run_local(kp.containers, {"msg": "hey", "n": 4}, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    # Worked out from the components' shell commands:
    #   produce: printf "%s-%s" msg n > text; seq 1 n > data
    #   decorate: printf "<prefix>"; tr "\n" "," < data; printf "$4" (suffix when present)
    assert run["parameters"] == {"msg": "hey", "n": 4}
    assert nexus_outputs(run) == {
        "text": "hey-4",
        "lines": 4,
        "decorated": ("system.Artifact", b"<hey-4>1,2,3,4,END"),
        "plain": ("system.Artifact", b"<plain>1,2,3,4,"),
    }
    produced = task(run, "produce")
    assert read_uri(artifact(produced["outputs"]["artifacts"]["data"])["uri"]) == b"1\n2\n3\n4\n"
    assert started(task(run, "decorate-2")) >= finished(task(run, "count-lines"))  # .after(cl)


# --- failure: the failed task, skipped downstream tasks, the exit handler ------------------


def test_failure_runs_exit_handler(pipelines_server, tmp_path):
    ir = compile_ir(kp.failing, tmp_path)
    nexus_dir, local_dir = tmp_path / "nexus", tmp_path / "local-files"
    nexus_dir.mkdir()
    local_dir.mkdir()

    def args(d):
        return {"status_path": str(d / "status.json"), "counter_path": str(d / "calls")}

    run_id = submit(pipelines_server, ir, args(nexus_dir))
    assert run_local(kp.failing, args(local_dir), tmp_path / "local", raise_on_error=False) == {}
    run = wait(pipelines_server, run_id, expect="FAILED")

    assert run["error"], describe_run(run)
    assert task(run, "square")["status"] == "SUCCEEDED"
    bad = task(run, "bump")
    assert bad["status"] == "FAILED" and bad["error"], describe_run(run)
    assert bad["attempts"] == 2  # set_retry(num_retries=1)
    assert task(run, "square-2")["status"] == "SKIPPED", describe_run(run)  # consumes bump's output
    assert task(run, "stamp")["status"] == "SKIPPED", describe_run(run)  # .after(bad)
    exit_task = task(run, "record-status")
    assert exit_task["status"] == "SUCCEEDED", describe_run(run)
    assert exit_task["outputs"]["parameters"]["Output"] == "FAILED"
    # Same as kfp.local: two calls of the failing task, the exit task saw FAILED (and the same
    # error_code).
    for d in (nexus_dir, local_dir):
        assert (d / "calls").read_text() == "call\ncall\n", d
    nexus_final, local_final = (json.loads((d / "status.json").read_text()) for d in (nexus_dir, local_dir))
    assert nexus_final["state"] == "FAILED"
    assert nexus_final == local_final


# --- retries ---------------------------------------------------------------------------------


def test_retry_until_success(pipelines_server, tmp_path):
    ir = compile_ir(kp.retry, tmp_path)
    nexus_calls, local_calls = tmp_path / "nexus-calls", tmp_path / "local-calls"
    run_id = submit(pipelines_server, ir, {"counter_path": str(nexus_calls)})  # fail_times=2
    expected = run_local(kp.retry, {"counter_path": str(local_calls)}, tmp_path / "local")
    run = wait(pipelines_server, run_id)

    assert expected == {"Output": 70}
    assert nexus_outputs(run) == expected
    flaky = task(run, "bump")
    assert flaky["status"] == "SUCCEEDED" and flaky["attempts"] == 3, describe_run(run)
    assert nexus_calls.read_text() == local_calls.read_text() == "call\n" * 3


# --- caching (kfp.local 2.17.3 has none: Nexus only) ---------------------------------------


def test_caching(pipelines_server, tmp_path):
    ir = compile_ir(kp.caching, tmp_path)
    paths = {k: tmp_path / k for k in ("a", "b", "c")}
    params = {"a_path": str(paths["a"]), "b_path": str(paths["b"]), "c_path": str(paths["c"])}

    def calls():
        return {k: len(p.read_text().splitlines()) if p.exists() else 0 for k, p in paths.items()}

    first = wait(pipelines_server, submit(pipelines_server, ir, params))
    assert nexus_outputs(first) == {"Output": 4000}  # x=4 -> 40 -> 400 -> 4000
    assert calls() == {"a": 1, "b": 1, "c": 1}
    assert not any(t["cached"] for t in first["tasks"]), describe_run(first)

    # Same inputs: bump and bump-3 come from the cache, bump-2 (caching off) runs again.
    second = wait(pipelines_server, submit(pipelines_server, ir, params))
    assert nexus_outputs(second) == {"Output": 4000}
    assert calls() == {"a": 1, "b": 2, "c": 1}
    cached = {t["name"]: t["cached"] for t in second["tasks"] if t["name"].startswith("bump")}
    assert cached == {"bump": True, "bump-2": False, "bump-3": True}, describe_run(second)
    assert task(second, "bump")["outputs"]["parameters"]["Output"] == 40
    assert all(t["status"] == "SUCCEEDED" for t in second["tasks"]), describe_run(second)

    # Another x through the CLI (`--param x=5`: a string, typed by the IR): nothing cached.
    before = {r["id"] for r in requests.get(pipelines_server.base + RUNS, timeout=30).json()["runs"]}
    env = {**os.environ, "NEXUS_URL": pipelines_server.base, "NO_COLOR": "1"}
    cmd = [str(conftest.NEXUS_BIN), "pipeline", "submit", str(ir), "--wait", "--param", "x=5"]
    for k, v in params.items():
        cmd += ["--param", f"{k}={v}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"{cmd}: rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    new = [r for r in requests.get(pipelines_server.base + RUNS, timeout=30).json()["runs"] if r["id"] not in before]
    assert len(new) == 1, new
    third = wait(pipelines_server, new[0]["id"])
    assert third["parameters"]["x"] == 5
    assert nexus_outputs(third) == {"Output": 5000}
    assert calls() == {"a": 2, "b": 3, "c": 2}
    assert not any(t["cached"] for t in third["tasks"]), describe_run(third)


# --- metrics: Output[Metrics] filled by log_metric (metadata only, no file) ----------------


def test_metrics_survive_like_kfp_local(pipelines_server, tmp_path):
    """An Output[Metrics] that a component fills with `metrics.log_metric` has metadata and no
    file: kfp.local keeps it (pipeline output, and the consumer's Input[Metrics]); so must Nexus,
    in the REST run and in `nexus pipeline status`."""
    ir = compile_ir(kp.metrics_out, tmp_path)
    run_id = submit(pipelines_server, ir, {"score": 0.75})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "local"))
    expected = kp.metrics_out(score=0.75).outputs
    assert expected["seen"] == "acc=0.75"
    assert expected["metrics"].schema_title == "system.Metrics"
    local_metadata = {k: float(v) for k, v in expected["metrics"].metadata.items()}
    assert local_metadata == {"acc": 0.75, "n": 3.0}
    run = wait(pipelines_server, run_id)

    assert run["outputs"]["parameters"] == {"seen": "acc=0.75"}, describe_run(run)
    [metrics] = artifact_list(run["outputs"]["artifacts"].get("metrics", []))
    assert metrics["schema_title"] == "system.Metrics"
    assert {k: float(v) for k, v in metrics["metadata"].items()} == local_metadata
    [from_task] = artifact_list(task(run, "evaluate")["outputs"]["artifacts"]["metrics"])
    assert from_task["metadata"] == metrics["metadata"]
    env = {**os.environ, "NEXUS_URL": pipelines_server.base, "NO_COLOR": "1"}
    shown = subprocess.run(
        [str(conftest.NEXUS_BIN), "pipeline", "status", run_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"evaluate\s+metrics\s+acc=0\.75\s+n=3\b", shown.stdout), shown.stdout


# --- bad submissions -------------------------------------------------------------------------


def test_invalid_ir_is_rejected(pipelines_server, tmp_path):
    text = compile_ir(kp.loop_upstream, tmp_path).read_text()
    assert "name: comp-base\n" in text
    broken = text.replace("name: comp-base\n", "name: comp-nowhere\n")
    r = requests.post(pipelines_server.base + RUNS, json={"spec": broken, "parameters": {}}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_SPEC", r.text
    assert "comp-nowhere" in r.json()["error"]["message"], r.text


def test_missing_required_parameter_is_rejected(pipelines_server, tmp_path):
    ir = compile_ir(kp.control, tmp_path)  # x, y and status_path have no default
    r = requests.post(pipelines_server.base + RUNS, json={"spec": ir.read_text(), "parameters": {"x": 1}}, timeout=30)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "status_path" in message or re.search(r"\by\b", message), r.text


def test_unknown_run(pipelines_server):
    r = requests.get(f"{pipelines_server.base}{RUNS}/no-such-run", timeout=30)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "NOT_FOUND", r.text
