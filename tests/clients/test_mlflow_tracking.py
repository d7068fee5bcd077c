"""Experiment tracking through the unmodified `mlflow` client: experiments, runs, params,
metrics, tags, batch logging, metric history, run search, artifacts."""

from __future__ import annotations

import filecmp
import os
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from mlflow_support import unique


# --- Experiments --------------------------------------------------------------------------------


def test_default_experiment_exists(mlflow_client):
    exp = mlflow_client.get_experiment_by_name("Default")
    assert exp is not None
    assert exp.experiment_id == "0"
    assert exp.lifecycle_stage == "active"


def test_create_and_get_experiment(mlflow_client):
    name = unique("exp")
    exp_id = mlflow_client.create_experiment(name, tags={"team": "fraud", "stage": "dev"})
    assert isinstance(exp_id, str) and exp_id

    by_id = mlflow_client.get_experiment(exp_id)
    assert by_id.experiment_id == exp_id
    assert by_id.name == name
    assert by_id.lifecycle_stage == "active"
    assert by_id.tags["team"] == "fraud"
    assert by_id.tags["stage"] == "dev"
    assert by_id.artifact_location  # some URI the client can log artifacts to

    by_name = mlflow_client.get_experiment_by_name(name)
    assert by_name.experiment_id == exp_id
    assert by_name.tags == by_id.tags

    assert mlflow_client.get_experiment_by_name(unique("missing")) is None


def test_experiment_tag_and_rename(mlflow_client, experiment_id):
    mlflow_client.set_experiment_tag(experiment_id, "owner", "alice")
    new_name = unique("renamed")
    mlflow_client.rename_experiment(experiment_id, new_name)
    exp = mlflow_client.get_experiment(experiment_id)
    assert exp.name == new_name
    assert exp.tags["owner"] == "alice"
    assert mlflow_client.get_experiment_by_name(new_name).experiment_id == experiment_id


def test_set_experiment_fluent_creates_once(tracking_uri):
    name = unique("fluent")
    exp = mlflow.set_experiment(name)
    again = mlflow.set_experiment(name)
    assert again.experiment_id == exp.experiment_id
    assert mlflow.get_experiment_by_name(name).experiment_id == exp.experiment_id


def test_search_experiments_filter_and_pagination(mlflow_client):
    prefix = unique("srch")
    ids = [mlflow_client.create_experiment(f"{prefix}-{i}", tags={"parity": "even" if i % 2 == 0 else "odd"}) for i in range(5)]

    found = mlflow_client.search_experiments(filter_string=f"name LIKE '{prefix}-%'")
    assert sorted(e.experiment_id for e in found) == sorted(ids)

    even = mlflow_client.search_experiments(filter_string=f"name LIKE '{prefix}-%' AND tags.parity = 'even'")
    assert sorted(e.name for e in even) == [f"{prefix}-0", f"{prefix}-2", f"{prefix}-4"]

    ordered = mlflow_client.search_experiments(filter_string=f"name LIKE '{prefix}-%'", order_by=["name DESC"])
    assert [e.name for e in ordered] == [f"{prefix}-{i}" for i in (4, 3, 2, 1, 0)]

    # Pages of 2: 2 + 2 + 1, each page carrying a token until the last.
    seen, token, pages = [], None, 0
    while True:
        page = mlflow_client.search_experiments(
            filter_string=f"name LIKE '{prefix}-%'", max_results=2, order_by=["name ASC"], page_token=token
        )
        pages += 1
        assert len(page) <= 2
        seen += [e.name for e in page]
        token = page.token
        if not token:
            break
        assert pages < 10, "pagination does not end"
    assert seen == [f"{prefix}-{i}" for i in range(5)]
    assert pages == 3


def test_delete_and_restore_experiment(mlflow_client):
    name = unique("del")
    exp_id = mlflow_client.create_experiment(name)
    mlflow_client.delete_experiment(exp_id)
    assert mlflow_client.get_experiment(exp_id).lifecycle_stage == "deleted"

    active = mlflow_client.search_experiments(filter_string=f"name = '{name}'")
    assert active == []
    deleted = mlflow_client.search_experiments(view_type=ViewType.DELETED_ONLY, filter_string=f"name = '{name}'")
    assert [e.experiment_id for e in deleted] == [exp_id]

    mlflow_client.restore_experiment(exp_id)
    assert mlflow_client.get_experiment(exp_id).lifecycle_stage == "active"


# --- Runs ---------------------------------------------------------------------------------------


def test_run_lifecycle(mlflow_client, experiment_id):
    run = mlflow_client.create_run(experiment_id, run_name="first-run", tags={"team": "fraud"})
    info = run.info
    assert info.run_name == "first-run"
    assert info.experiment_id == experiment_id
    assert info.status == "RUNNING"
    assert info.lifecycle_stage == "active"
    assert info.start_time > 0
    assert info.end_time is None
    assert run.data.tags["team"] == "fraud"
    assert run.data.tags["mlflow.runName"] == "first-run"

    mlflow_client.set_terminated(info.run_id, status="FINISHED")
    got = mlflow_client.get_run(info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.end_time is not None and got.info.end_time >= info.start_time

    mlflow_client.update_run(info.run_id, name="renamed-run")
    assert mlflow_client.get_run(info.run_id).info.run_name == "renamed-run"

    mlflow_client.set_terminated(info.run_id, status="FAILED")
    assert mlflow_client.get_run(info.run_id).info.status == "FAILED"


def test_fluent_run_params_metrics_tags(tracking_uri):
    mlflow.set_experiment(unique("fluent-run"))
    with mlflow.start_run(run_name="fluent") as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"layers": 3, "activation": "relu"})
        mlflow.log_metric("loss", 0.5, step=0)
        mlflow.log_metric("loss", 0.25, step=1)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8}, step=1)
        mlflow.set_tag("stage", "test")
        mlflow.set_tags({"a": "1", "b": "2"})
        run_id = run.info.run_id
    got = mlflow.get_run(run_id)
    assert got.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert got.info.run_name == "fluent"
    assert got.data.params == {"lr": "0.01", "layers": "3", "activation": "relu"}
    # data.metrics holds the latest value of each metric.
    assert got.data.metrics == {"loss": 0.25, "acc": 0.9, "f1": 0.8}
    assert got.data.tags["stage"] == "test"
    assert got.data.tags["a"] == "1" and got.data.tags["b"] == "2"


def test_failed_fluent_run(tracking_uri):
    mlflow.set_experiment(unique("fluent-fail"))
    with pytest.raises(ZeroDivisionError):
        with mlflow.start_run() as run:
            1 / 0
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_log_param_metric_with_steps_and_history(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.log_param(run_id, "optimizer", "adam")
    for step, value in enumerate([1.0, 0.5, 0.25, 0.125]):
        mlflow_client.log_metric(run_id, "loss", value, timestamp=1_700_000_000_000 + step, step=step)
    mlflow_client.log_metric(run_id, "other", 7.0)

    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (0, 1.0, 1_700_000_000_000),
        (1, 0.5, 1_700_000_000_001),
        (2, 0.25, 1_700_000_000_002),
        (3, 0.125, 1_700_000_000_003),
    ]
    assert all(m.key == "loss" for m in history)
    assert mlflow_client.get_metric_history(run_id, "never-logged") == []

    run = mlflow_client.get_run(run_id)
    assert run.data.params == {"optimizer": "adam"}
    assert run.data.metrics == {"loss": 0.125, "other": 7.0}


def test_log_batch(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    ts = 1_700_000_000_000
    mlflow_client.log_batch(
        run_id,
        metrics=[Metric("m1", 1.5, ts, 0), Metric("m1", 2.5, ts + 1, 1), Metric("m2", -3.0, ts, 0)],
        params=[Param("p1", "a"), Param("p2", "b")],
        tags=[RunTag("t1", "x"), RunTag("t2", "y")],
    )
    run = mlflow_client.get_run(run_id)
    assert run.data.metrics == {"m1": 2.5, "m2": -3.0}
    assert run.data.params == {"p1": "a", "p2": "b"}
    assert run.data.tags["t1"] == "x" and run.data.tags["t2"] == "y"
    assert [(m.step, m.value) for m in sorted(mlflow_client.get_metric_history(run_id, "m1"), key=lambda m: m.step)] == [
        (0, 1.5),
        (1, 2.5),
    ]


def test_set_and_delete_run_tag(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.set_tag(run_id, "color", "red")
    mlflow_client.set_tag(run_id, "color", "blue")  # overwrite
    assert mlflow_client.get_run(run_id).data.tags["color"] == "blue"
    mlflow_client.delete_tag(run_id, "color")
    assert "color" not in mlflow_client.get_run(run_id).data.tags


def test_delete_and_restore_run(mlflow_client, experiment_id):
    keep = mlflow_client.create_run(experiment_id).info.run_id
    gone = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.delete_run(gone)
    assert mlflow_client.get_run(gone).info.lifecycle_stage == "deleted"

    active = [r.info.run_id for r in mlflow_client.search_runs([experiment_id])]
    assert active == [keep]
    deleted = [r.info.run_id for r in mlflow_client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)]
    assert deleted == [gone]
    everything = {r.info.run_id for r in mlflow_client.search_runs([experiment_id], run_view_type=ViewType.ALL)}
    assert everything == {keep, gone}

    mlflow_client.restore_run(gone)
    assert mlflow_client.get_run(gone).info.lifecycle_stage == "active"
    assert {r.info.run_id for r in mlflow_client.search_runs([experiment_id])} == {keep, gone}


# --- Run search ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_runs_fixture(registry_server):
    """Six runs: x = 0.0, 0.2, ..., 1.0; p = 'a' for even i; t = 'v' for i < 3; runs 4 and 5
    left RUNNING, the rest FINISHED. Returns (experiment_id, {i: run_id}). Built once per server."""
    mlflow_client = mlflow.MlflowClient(tracking_uri=registry_server.url)
    experiment_id = mlflow_client.create_experiment(unique("search-runs"))
    runs = {}
    for i in range(6):
        run_id = mlflow_client.create_run(experiment_id, run_name=f"run-{i}", start_time=1_700_000_000_000 + i * 1000).info.run_id
        mlflow_client.log_batch(
            run_id,
            metrics=[Metric("x", i / 5, 1_700_000_000_000, 0)],
            params=[Param("p", "a" if i % 2 == 0 else "b")],
            tags=[RunTag("t", "v" if i < 3 else "w")],
        )
        if i < 4:
            mlflow_client.set_terminated(run_id, "FINISHED")
        runs[i] = run_id
    return experiment_id, runs


def _ids(runs, result):
    back = {v: k for k, v in runs.items()}
    return sorted(back[r.info.run_id] for r in result)


@pytest.mark.parametrize(
    "filter_string, expected",
    [
        ("metrics.x > 0.5", [3, 4, 5]),
        ("metrics.x >= 0.4 and metrics.x < 0.9", [2, 3, 4]),
        ("params.p = 'a'", [0, 2, 4]),
        ("params.p != 'a'", [1, 3, 5]),
        ("tags.t = 'v'", [0, 1, 2]),
        ("attributes.status = 'FINISHED'", [0, 1, 2, 3]),
        ("attributes.status = 'RUNNING'", [4, 5]),
        ("metrics.x > 0.5 AND params.p = 'b'", [3, 5]),
        ("params.p = 'a' and tags.t = 'v' and attributes.status = 'FINISHED'", [0, 2]),
        ("attributes.run_name = 'run-3'", [3]),
        ("tags.t LIKE 'v%'", [0, 1, 2]),
        ("", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_search_runs_filters(mlflow_client, search_runs_fixture, filter_string, expected):
    experiment_id, runs = search_runs_fixture
    result = mlflow_client.search_runs([experiment_id], filter_string=filter_string)
    assert _ids(runs, result) == expected


def test_search_runs_order_by_and_pagination(mlflow_client, search_runs_fixture):
    experiment_id, runs = search_runs_fixture
    back = {v: k for k, v in runs.items()}

    by_x_desc = mlflow_client.search_runs([experiment_id], order_by=["metrics.x DESC"])
    assert [back[r.info.run_id] for r in by_x_desc] == [5, 4, 3, 2, 1, 0]
    by_x_asc = mlflow_client.search_runs([experiment_id], order_by=["metrics.x ASC"])
    assert [back[r.info.run_id] for r in by_x_asc] == [0, 1, 2, 3, 4, 5]
    # Default order: start_time DESC.
    default = mlflow_client.search_runs([experiment_id])
    assert [back[r.info.run_id] for r in default] == [5, 4, 3, 2, 1, 0]
    by_name = mlflow_client.search_runs([experiment_id], order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in by_name] == [f"run-{i}" for i in range(6)]

    top = mlflow_client.search_runs([experiment_id], filter_string="params.p = 'a'", order_by=["metrics.x DESC"], max_results=1)
    assert [back[r.info.run_id] for r in top] == [4]
    assert top.token  # more results exist

    pages, token, seen = 0, None, []
    while True:
        page = mlflow_client.search_runs([experiment_id], order_by=["metrics.x ASC"], max_results=4, page_token=token)
        pages += 1
        seen += [back[r.info.run_id] for r in page]
        token = page.token
        if not token:
            break
        assert pages < 10, "pagination does not end"
    assert seen == [0, 1, 2, 3, 4, 5]
    assert pages == 2


def test_search_runs_returns_data(mlflow_client, search_runs_fixture):
    experiment_id, runs = search_runs_fixture
    [run] = mlflow_client.search_runs([experiment_id], filter_string="attributes.run_name = 'run-2'")
    assert run.info.run_id == runs[2]
    assert run.data.metrics == {"x": 0.4}
    assert run.data.params == {"p": "a"}
    assert run.data.tags["t"] == "v"
    assert run.info.status == "FINISHED"


def test_fluent_search_runs_dataframe(tracking_uri, search_runs_fixture):
    experiment_id, runs = search_runs_fixture
    df = mlflow.search_runs(experiment_ids=[experiment_id], filter_string="metrics.x > 0.5", order_by=["metrics.x DESC"])
    assert list(df["run_id"]) == [runs[5], runs[4], runs[3]]
    assert list(df["params.p"]) == ["b", "a", "b"]


# --- Artifacts ----------------------------------------------------------------------------------


def _make_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.json").write_text('{"b": 1}')
    (tree / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(70_000) + bytes(range(256)))
    return tree


def test_log_artifact_file_and_download(mlflow_client, experiment_id, tmp_path):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(200_000))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello artifacts\n")
    mlflow_client.log_artifact(run_id, str(src))
    mlflow_client.log_artifact(run_id, str(notes), artifact_path="docs")

    listing = {f.path: f for f in mlflow_client.list_artifacts(run_id)}
    assert set(listing) == {"weights.bin", "docs"}
    assert not listing["weights.bin"].is_dir and listing["weights.bin"].file_size == 200_000
    assert listing["docs"].is_dir
    docs = mlflow_client.list_artifacts(run_id, "docs")
    assert [(f.path, f.is_dir, f.file_size) for f in docs] == [("docs/notes.txt", False, len("hello artifacts\n"))]

    out = tmp_path / "out"
    out.mkdir()
    local = mlflow_client.download_artifacts(run_id, "weights.bin", str(out))
    assert Path(local).read_bytes() == src.read_bytes()
    local = mlflow_client.download_artifacts(run_id, "docs/notes.txt", str(out))
    assert Path(local).read_text() == "hello artifacts\n"


def test_log_artifacts_directory_and_download(mlflow_client, experiment_id, tmp_path):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    tree = _make_tree(tmp_path)
    mlflow_client.log_artifacts(run_id, str(tree), artifact_path="bundle")

    top = mlflow_client.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in top] == [("bundle", True)]
    bundle = {f.path: f for f in mlflow_client.list_artifacts(run_id, "bundle")}
    assert set(bundle) == {"bundle/a.txt", "bundle/sub"}
    assert bundle["bundle/sub"].is_dir and not bundle["bundle/a.txt"].is_dir
    sub = {f.path for f in mlflow_client.list_artifacts(run_id, "bundle/sub")}
    assert sub == {"bundle/sub/b.json", "bundle/sub/deeper"}

    out = tmp_path / "out"
    out.mkdir()
    local = Path(mlflow_client.download_artifacts(run_id, "bundle", str(out)))
    cmp = filecmp.dircmp(tree, local)
    _assert_same_tree(cmp)
    for rel in ("a.txt", "sub/b.json", "sub/deeper/c.bin"):
        assert (local / rel).read_bytes() == (tree / rel).read_bytes(), rel


def _assert_same_tree(cmp: filecmp.dircmp):
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, (cmp.left_only, cmp.right_only, cmp.diff_files)
    for sub in cmp.subdirs.values():
        _assert_same_tree(sub)


def test_fluent_artifacts_and_download_by_uri(tracking_uri, tmp_path):
    mlflow.set_experiment(unique("fluent-art"))
    tree = _make_tree(tmp_path)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tree))
        mlflow.log_text("some text", "texts/t.txt")
        mlflow.log_dict({"k": [1, 2]}, "cfg.json")
    out = tmp_path / "dl"
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(out)))
    for rel in ("a.txt", "sub/b.json", "sub/deeper/c.bin"):
        assert (local / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert (local / "texts" / "t.txt").read_text() == "some text"
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/cfg.json") == {"k": [1, 2]}
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/texts/t.txt") == "some text"


def test_list_artifacts_empty_run(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    assert mlflow_client.list_artifacts(run_id) == []


def test_missing_run_raises(mlflow_client):
    with pytest.raises(MlflowException):
        mlflow_client.get_run("0" * 32)


# --- Edge cases ---------------------------------------------------------------------------------


def test_artifact_names_needing_escapes(mlflow_client, experiment_id, tmp_path):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    src = tmp_path / "src dir"
    src.mkdir()
    # (The client does not escape '%', '#' or '?' in artifact paths: MLflow itself mangles those.)
    names = ["with space.txt", "ünïcödé.txt", "a+b=c&d.txt", "semi;colon,comma'quote.txt"]
    for i, n in enumerate(names):
        (src / n).write_bytes(f"{i}:{n}".encode())
    mlflow_client.log_artifacts(run_id, str(src), artifact_path="odd dir")
    listed = {f.path for f in mlflow_client.list_artifacts(run_id, "odd dir")}
    assert listed == {f"odd dir/{n}" for n in names}
    out = tmp_path / "out"
    local = Path(mlflow_client.download_artifacts(run_id, "odd dir", str(out)))
    for i, n in enumerate(names):
        assert (local / n).read_bytes() == f"{i}:{n}".encode(), n
    one = Path(mlflow_client.download_artifacts(run_id, "odd dir/with space.txt", str(tmp_path / "one")))
    assert one.read_bytes() == b"0:with space.txt"


def test_large_artifact(mlflow_client, experiment_id, tmp_path):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 7))
    mlflow_client.log_artifact(run_id, str(big), "blobs")
    [entry] = mlflow_client.list_artifacts(run_id, "blobs")
    assert (entry.path, entry.file_size) == ("blobs/big.bin", big.stat().st_size)
    local = Path(mlflow_client.download_artifacts(run_id, "blobs/big.bin", str(tmp_path / "out")))
    assert filecmp.cmp(local, big, shallow=False)


def test_nested_file_download_and_list_of_a_file(mlflow_client, experiment_id, tmp_path):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    tree = _make_tree(tmp_path)
    mlflow_client.log_artifacts(run_id, str(tree))
    local = Path(mlflow_client.download_artifacts(run_id, "sub/deeper/c.bin", str(tmp_path / "out")))
    assert local.name == "c.bin"
    assert local.read_bytes() == (tree / "sub" / "deeper" / "c.bin").read_bytes()
    # Listing a path that is a file, or that does not exist, gives nothing.
    assert mlflow_client.list_artifacts(run_id, "a.txt") == []
    assert mlflow_client.list_artifacts(run_id, "no/such/dir") == []


def test_special_metric_values(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.log_metric(run_id, "nan", float("nan"))
    mlflow_client.log_metric(run_id, "pinf", float("inf"))
    mlflow_client.log_metric(run_id, "ninf", float("-inf"))
    mlflow_client.log_metric(run_id, "neg", -1.5e-300)
    mlflow_client.log_metric(run_id, "big", 1.7976931348623157e308)
    mlflow_client.log_metric(run_id, "int", 42)
    m = mlflow_client.get_run(run_id).data.metrics
    assert m["nan"] != m["nan"]  # NaN
    # MLflow's SQL store keeps ±inf as ±max float; either reads back fine.
    assert m["pinf"] in (float("inf"), sys.float_info.max)
    assert m["ninf"] in (float("-inf"), -sys.float_info.max)
    assert m["neg"] == -1.5e-300 and m["big"] == 1.7976931348623157e308 and m["int"] == 42.0
    [h] = mlflow_client.get_metric_history(run_id, "pinf")
    assert h.value in (float("inf"), sys.float_info.max)


def test_long_and_unicode_values(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id, run_name="ünïcödé run ✓").info.run_id
    long_value = "x" * 6000
    mlflow_client.log_param(run_id, "long", long_value)
    mlflow_client.log_param(run_id, "ключ", "значение")
    mlflow_client.set_tag(run_id, "emoji", "🚀 launch")
    mlflow_client.set_tag(run_id, "multiline", "line1\nline2\ttab")
    run = mlflow_client.get_run(run_id)
    assert run.info.run_name == "ünïcödé run ✓"
    assert run.data.params["long"] == long_value
    assert run.data.params["ключ"] == "значение"
    assert run.data.tags["emoji"] == "🚀 launch"
    assert run.data.tags["multiline"] == "line1\nline2\ttab"
    found = mlflow_client.search_runs([experiment_id], filter_string="params.`ключ` = 'значение'")
    assert [r.info.run_id for r in found] == [run_id]


def test_many_metric_steps(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    ts = 1_700_000_000_000
    metrics = [Metric("curve", float(i) / 7, ts + i, i) for i in range(1500)]  # the client splits batches of 1000
    mlflow_client.log_batch(run_id, metrics=metrics)
    history = sorted(mlflow_client.get_metric_history(run_id, "curve"), key=lambda m: m.step)
    assert len(history) == 1500
    assert [(m.step, m.value) for m in history[:3]] == [(0, 0.0), (1, 1 / 7), (2, 2 / 7)]
    assert history[-1].step == 1499
    assert mlflow_client.get_run(run_id).data.metrics["curve"] == 1499 / 7


def test_search_runs_more(mlflow_client, tracking_uri):
    exp_a = mlflow_client.create_experiment(unique("more-a"))
    exp_b = mlflow_client.create_experiment(unique("more-b"))
    ra = mlflow_client.create_run(exp_a, run_name="alpha-1", start_time=1_700_000_000_000).info.run_id
    rb = mlflow_client.create_run(exp_b, run_name="alpha-2", start_time=1_700_000_001_000).info.run_id
    rc = mlflow_client.create_run(exp_b, run_name="beta-1", start_time=1_700_000_002_000).info.run_id
    mlflow_client.log_metric(ra, "acc", 0.7)
    mlflow_client.log_metric(rb, "acc", 0.9)  # rc has no acc at all
    mlflow_client.log_param(ra, "model", "cnn")
    mlflow_client.log_param(rb, "model", "rnn")
    mlflow_client.log_param(rc, "model", "cnn")

    def ids(**kw):
        return [r.info.run_id for r in mlflow_client.search_runs([exp_a, exp_b], **kw)]

    assert set(ids()) == {ra, rb, rc}  # across experiments
    assert ids(filter_string="metrics.acc > 0.5", order_by=["metrics.acc DESC"]) == [rb, ra]  # rc lacks acc
    assert ids(filter_string="attributes.run_name LIKE 'alpha%'", order_by=["attributes.start_time ASC"]) == [ra, rb]
    assert ids(filter_string=f"attributes.run_id IN ('{ra}', '{rc}')", order_by=["start_time DESC"]) == [rc, ra]
    assert ids(order_by=["params.model ASC", "start_time ASC"]) == [ra, rc, rb]
    assert ids(filter_string="params.model = 'cnn'", order_by=["attributes.start_time DESC"]) == [rc, ra]
    # Runs without the metric sort after those with it, whichever the direction.
    assert ids(order_by=["metrics.acc ASC"])[-1] == rc
    assert ids(order_by=["metrics.acc DESC"])[-1] == rc


def test_metric_float_precision(mlflow_client, experiment_id):
    """Every double comes back bit for bit (the client sends repr(); a parser that is not
    correctly rounded loses the last digit of values like 214.14285714285714)."""
    values = [0.1 + 0.2, 1 / 3, 2 / 3, 214.14285714285714, 1499 / 7, 5e-324, 2.2250738585072014e-308, 123456789.12345679, -9.87654321e-5]
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    ts = 1_700_000_000_000
    mlflow_client.log_batch(run_id, metrics=[Metric("batch", v, ts + i, i) for i, v in enumerate(values)])
    for i, v in enumerate(values):
        mlflow_client.log_metric(run_id, f"single{i}", v)
    history = sorted(mlflow_client.get_metric_history(run_id, "batch"), key=lambda m: m.step)
    assert [m.value for m in history] == values
    metrics = mlflow_client.get_run(run_id).data.metrics
    assert metrics["batch"] == values[-1]
    assert [metrics[f"single{i}"] for i in range(len(values))] == values


def test_search_experiments_order_by_time(mlflow_client):
    prefix = unique("exp-time")
    ids = []
    for i in range(3):
        ids.append(mlflow_client.create_experiment(f"{prefix}-{i}"))
        time.sleep(0.01)
    flt = f"name LIKE '{prefix}-%'"
    newest_first = mlflow_client.search_experiments(filter_string=flt, order_by=["creation_time DESC"])
    assert [e.experiment_id for e in newest_first] == ids[::-1]
    oldest_first = mlflow_client.search_experiments(filter_string=flt, order_by=["creation_time ASC"])
    assert [e.experiment_id for e in oldest_first] == ids
