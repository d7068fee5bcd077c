"""The model registry through the unmodified `mlflow` client: registered models, versions,
tags, aliases, search with filters and pagination, download URIs."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mlflow_support import unique


@pytest.fixture
def model_run(mlflow_client, experiment_id, tmp_path):
    """A finished run with a `model/` artifact directory. Returns (run_id, {relpath: bytes})."""
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    files = {"model.onnx": bytes(range(256)) * 40, "MLmodel": b"flavors: {}\n", "extra/vocab.txt": b"a\nb\nc\n"}
    src = tmp_path / "model"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    mlflow_client.log_artifacts(run_id, str(src), artifact_path="model")
    mlflow_client.set_terminated(run_id)
    return run_id, files


def _version(mlflow_client, name, run_id, **kw):
    return mlflow_client.create_model_version(name, f"runs:/{run_id}/model", run_id, **kw)


# --- Registered models --------------------------------------------------------------------------


def test_create_and_get_registered_model(mlflow_client):
    name = unique("rm")
    created = mlflow_client.create_registered_model(name, tags={"team": "fraud", "tier": "1"}, description="fraud detector")
    assert created.name == name
    assert created.description == "fraud detector"
    assert created.tags == {"team": "fraud", "tier": "1"}
    assert created.creation_timestamp > 0

    got = mlflow_client.get_registered_model(name)
    assert got.name == name
    assert got.description == "fraud detector"
    assert got.tags == {"team": "fraud", "tier": "1"}
    assert got.creation_timestamp == created.creation_timestamp
    assert got.latest_versions == []
    assert got.aliases == {}


def test_update_registered_model_and_tags(mlflow_client):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    updated = mlflow_client.update_registered_model(name, description="v2 description")
    assert updated.description == "v2 description"
    mlflow_client.set_registered_model_tag(name, "owner", "bob")
    mlflow_client.set_registered_model_tag(name, "owner", "carol")  # overwrite
    mlflow_client.set_registered_model_tag(name, "tmp", "x")
    mlflow_client.delete_registered_model_tag(name, "tmp")
    got = mlflow_client.get_registered_model(name)
    assert got.description == "v2 description"
    assert got.tags == {"owner": "carol"}
    assert got.last_updated_timestamp >= got.creation_timestamp


def test_rename_registered_model_keeps_versions(mlflow_client, model_run):
    run_id, _ = model_run
    old, new = unique("old"), unique("new")
    mlflow_client.create_registered_model(old)
    _version(mlflow_client, old, run_id)
    mlflow_client.rename_registered_model(old, new)
    assert mlflow_client.get_registered_model(new).name == new
    mv = mlflow_client.get_model_version(new, "1")
    assert mv.name == new and mv.run_id == run_id
    with pytest.raises(MlflowException) as e:
        mlflow_client.get_registered_model(old)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_delete_registered_model(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    mlflow_client.delete_registered_model(name)
    with pytest.raises(MlflowException) as e:
        mlflow_client.get_registered_model(name)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow_client.search_model_versions(f"name='{name}'") == []
    # The name is free again, and versions restart at 1.
    mlflow_client.create_registered_model(name)
    assert _version(mlflow_client, name, run_id).version == "1"


@pytest.fixture(scope="module")
def search_models(registry_server):
    """Registered models under one unique prefix P: P-alpha, P-apple, P-avocado, P-beta,
    P-blueberry; tags k=v on alpha, beta, blueberry; created in that order."""
    client = mlflow.MlflowClient(tracking_uri=registry_server.url, registry_uri=registry_server.url)
    prefix = unique("srm")
    names = ["alpha", "apple", "avocado", "beta", "blueberry"]
    for n in names:
        tags = {"k": "v"} if n in ("alpha", "beta", "blueberry") else {"k": "other"}
        client.create_registered_model(f"{prefix}-{n}", tags=tags)
    return prefix


@pytest.mark.parametrize(
    "filter_tmpl, expected",
    [
        ("name LIKE '{p}-a%'", ["alpha", "apple", "avocado"]),
        ("name LIKE '{p}-%'", ["alpha", "apple", "avocado", "beta", "blueberry"]),
        ("name ILIKE '{P}-B%'", ["beta", "blueberry"]),
        ("name = '{p}-beta'", ["beta"]),
        ("name LIKE '{p}-%' AND tags.k = 'v'", ["alpha", "beta", "blueberry"]),
        ("name LIKE '{p}-a%' and tags.k = 'v'", ["alpha"]),
        ("name LIKE '{p}-%' AND tags.k != 'v'", ["apple", "avocado"]),
        ("name LIKE '{p}-%' AND tag.k = 'other'", ["apple", "avocado"]),
    ],
)
def test_search_registered_models_filter(mlflow_client, search_models, filter_tmpl, expected):
    p = search_models
    found = mlflow_client.search_registered_models(filter_string=filter_tmpl.format(p=p, P=p.upper()))
    assert sorted(m.name for m in found) == [f"{p}-{n}" for n in expected]


def test_search_registered_models_order_and_pagination(mlflow_client, search_models):
    p = search_models
    flt = f"name LIKE '{p}-%'"
    desc = mlflow_client.search_registered_models(filter_string=flt, order_by=["name DESC"])
    assert [m.name for m in desc] == [f"{p}-{n}" for n in ("blueberry", "beta", "avocado", "apple", "alpha")]
    asc = mlflow_client.search_registered_models(filter_string=flt, order_by=["name ASC"])
    assert [m.name for m in asc] == [f"{p}-{n}" for n in ("alpha", "apple", "avocado", "beta", "blueberry")]

    seen, token, pages = [], None, 0
    while True:
        page = mlflow_client.search_registered_models(filter_string=flt, max_results=2, order_by=["name ASC"], page_token=token)
        pages += 1
        assert len(page) <= 2
        seen += [m.name for m in page]
        token = page.token
        if not token:
            break
        assert pages < 10, "pagination does not end"
    assert seen == [m.name for m in asc]
    assert pages == 3

    first = mlflow_client.search_registered_models(filter_string=flt, max_results=1, order_by=["name DESC"])
    assert [m.name for m in first] == [f"{p}-blueberry"]
    assert first.token


# --- Model versions -----------------------------------------------------------------------------


def test_create_and_get_model_versions(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("mv")
    mlflow_client.create_registered_model(name)
    v1 = _version(mlflow_client, name, run_id, tags={"quality": "good"}, description="first")
    assert v1.name == name
    assert v1.version == "1"
    assert v1.run_id == run_id
    assert v1.source == f"runs:/{run_id}/model"
    assert v1.status == "READY"
    assert v1.description == "first"
    assert v1.tags == {"quality": "good"}
    v2 = _version(mlflow_client, name, run_id)
    assert v2.version == "2"

    got = mlflow_client.get_model_version(name, "1")
    assert (got.name, got.version, got.run_id, got.source, got.status) == (name, "1", run_id, v1.source, "READY")
    assert got.tags == {"quality": "good"}
    assert got.creation_timestamp > 0

    rm = mlflow_client.get_registered_model(name)
    assert [v.version for v in rm.latest_versions] == ["2"]


def test_create_version_registers_on_the_fly(tracking_uri, model_run):
    run_id, _ = model_run
    name = unique("auto")
    mv = mlflow.register_model(f"runs:/{run_id}/model", name)
    assert (mv.name, mv.version) == (name, "1")
    mv2 = mlflow.register_model(f"runs:/{run_id}/model", name)  # existing model: a new version
    assert mv2.version == "2"


def test_update_and_delete_model_version(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("mv")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    _version(mlflow_client, name, run_id)
    updated = mlflow_client.update_model_version(name, "1", description="now described")
    assert updated.description == "now described"
    assert mlflow_client.get_model_version(name, "1").description == "now described"

    mlflow_client.delete_model_version(name, "1")
    with pytest.raises(MlflowException) as e:
        mlflow_client.get_model_version(name, "1")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert [v.version for v in mlflow_client.search_model_versions(f"name='{name}'")] == ["2"]
    # Version numbers are never reused.
    assert _version(mlflow_client, name, run_id).version == "3"


def test_model_version_tags(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("mvt")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    mlflow_client.set_model_version_tag(name, "1", "validated", "yes")
    mlflow_client.set_model_version_tag(name, "1", "tmp", "x")
    mlflow_client.set_model_version_tag(name, "1", "validated", "no")  # overwrite
    mlflow_client.delete_model_version_tag(name, "1", "tmp")
    assert mlflow_client.get_model_version(name, "1").tags == {"validated": "no"}


def test_search_model_versions(mlflow_client, experiment_id, model_run, tmp_path):
    run_a, _ = model_run
    run_b = mlflow_client.create_run(experiment_id).info.run_id
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("b")
    mlflow_client.log_artifacts(run_b, str(tmp_path / "m"), "model")
    x, y = unique("smv-x"), unique("smv-y")
    mlflow_client.create_registered_model(x)
    mlflow_client.create_registered_model(y)
    _version(mlflow_client, x, run_a, tags={"env": "prod"})  # x/1
    _version(mlflow_client, x, run_b)  # x/2
    _version(mlflow_client, y, run_b, tags={"env": "prod"})  # y/1

    def found(flt, **kw):
        return sorted((v.name, v.version) for v in mlflow_client.search_model_versions(flt, **kw))

    assert found(f"name='{x}'") == [(x, "1"), (x, "2")]
    assert found(f"name = '{y}'") == [(y, "1")]
    assert found(f"run_id='{run_b}'") == [(x, "2"), (y, "1")]
    assert found(f"run_id = '{run_a}'") == [(x, "1")]
    assert found(f"name='{x}' and run_id='{run_b}'") == [(x, "2")]
    assert found(f"name='{x}' AND tags.env = 'prod'") == [(x, "1")]
    assert found(f"run_id IN ('{run_a}', '{run_b}') AND tags.env = 'prod'") == [(x, "1"), (y, "1")]
    assert found(f"name LIKE '{x[:-3]}%'") == [(x, "1"), (x, "2")]

    ordered = mlflow_client.search_model_versions(f"name='{x}'", order_by=["version_number DESC"])
    assert [v.version for v in ordered] == ["2", "1"]
    page = mlflow_client.search_model_versions(f"name='{x}'", max_results=1, order_by=["version_number ASC"])
    assert [v.version for v in page] == ["1"]
    assert page.token
    rest = mlflow_client.search_model_versions(f"name='{x}'", max_results=1, order_by=["version_number ASC"], page_token=page.token)
    assert [v.version for v in rest] == ["2"]


# --- Aliases ------------------------------------------------------------------------------------


def test_aliases(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("alias")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    _version(mlflow_client, name, run_id)

    mlflow_client.set_registered_model_alias(name, "champion", "1")
    mlflow_client.set_registered_model_alias(name, "challenger", "2")
    champ = mlflow_client.get_model_version_by_alias(name, "champion")
    assert (champ.name, champ.version, champ.run_id) == (name, "1", run_id)
    assert "champion" in champ.aliases
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "1", "challenger": "2"}
    assert mlflow_client.get_model_version(name, "2").aliases == ["challenger"]

    # Moving an alias takes it off the old version.
    mlflow_client.set_registered_model_alias(name, "champion", "2")
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "2"
    assert mlflow_client.get_model_version(name, "1").aliases == []
    assert sorted(mlflow_client.get_model_version(name, "2").aliases) == ["challenger", "champion"]

    mlflow_client.delete_registered_model_alias(name, "challenger")
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "2"}
    with pytest.raises(MlflowException) as e:
        mlflow_client.get_model_version_by_alias(name, "challenger")
    assert e.value.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def test_deleting_version_drops_its_aliases(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("alias-del")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    _version(mlflow_client, name, run_id)
    mlflow_client.set_registered_model_alias(name, "prod", "1")
    mlflow_client.delete_model_version(name, "1")
    assert mlflow_client.get_registered_model(name).aliases == {}


# --- Download URIs ------------------------------------------------------------------------------


def test_model_version_download_uri_and_download(mlflow_client, model_run, tmp_path):
    run_id, files = model_run
    name = unique("dl")
    mlflow_client.create_registered_model(name)
    _version(mlflow_client, name, run_id)
    mlflow_client.set_registered_model_alias(name, "prod", "1")

    uri = mlflow_client.get_model_version_download_uri(name, "1")
    # MLflow answers the source for runs:/ sources; a resolved artifact URI would do as well.
    assert uri == f"runs:/{run_id}/model" or uri.rstrip("/").endswith(f"{run_id}/artifacts/model"), uri

    for i, model_uri in enumerate([f"models:/{name}/1", f"models:/{name}@prod", uri]):
        out = tmp_path / f"dl{i}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(out)))
        for rel, data in files.items():
            assert (local / rel).read_bytes() == data, (model_uri, rel)


def test_timestamps_move_forward(mlflow_client, model_run):
    run_id, _ = model_run
    name = unique("ts")
    rm = mlflow_client.create_registered_model(name)
    time.sleep(0.01)
    mlflow_client.update_registered_model(name, description="x")
    assert mlflow_client.get_registered_model(name).last_updated_timestamp >= rm.creation_timestamp
    mv = _version(mlflow_client, name, run_id)
    assert mv.creation_timestamp >= rm.creation_timestamp


# --- Edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["my model v1", "modèle-ü", "a.b_c-d", "paren (1)"])
def test_unusual_registered_model_names(mlflow_client, model_run, tmp_path, suffix):
    run_id, files = model_run
    name = f"{unique('odd')} {suffix}"
    mlflow_client.create_registered_model(name, tags={"k": "v"})
    assert mlflow_client.get_registered_model(name).name == name
    mv = _version(mlflow_client, name, run_id)
    mlflow_client.set_registered_model_alias(name, "prod", mv.version)
    assert mlflow_client.get_model_version_by_alias(name, "prod").version == "1"
    assert [m.name for m in mlflow_client.search_registered_models(filter_string=f"name = '{name}'")] == [name]
    assert [(v.name, v.version) for v in mlflow_client.search_model_versions(f"name = '{name}'")] == [(name, "1")]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@prod", dst_path=str(tmp_path / "o")))
    assert (local / "model.onnx").read_bytes() == files["model.onnx"]
    mlflow_client.delete_registered_model(name)


def test_search_registered_models_by_timestamp(mlflow_client):
    prefix = unique("ts-order")
    for n in ("a", "b", "c"):
        mlflow_client.create_registered_model(f"{prefix}-{n}")
        time.sleep(0.01)
    mlflow_client.update_registered_model(f"{prefix}-a", description="touched last")
    flt = f"name LIKE '{prefix}-%'"
    by_update = mlflow_client.search_registered_models(filter_string=flt, order_by=["last_updated_timestamp DESC"])
    assert [m.name for m in by_update] == [f"{prefix}-{n}" for n in ("a", "c", "b")]
    by_update_asc = mlflow_client.search_registered_models(filter_string=flt, order_by=["last_updated_timestamp ASC"])
    assert [m.name for m in by_update_asc] == [f"{prefix}-{n}" for n in ("b", "c", "a")]


def test_copy_model_version(mlflow_client, model_run, tmp_path):
    run_id, files = model_run
    src, dst = unique("copy-src"), unique("copy-dst")
    mlflow_client.create_registered_model(src)
    _version(mlflow_client, src, run_id)
    copied = mlflow_client.copy_model_version(f"models:/{src}/1", dst)
    assert (copied.name, copied.version) == (dst, "1")
    assert copied.run_id == run_id
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{dst}/1", dst_path=str(tmp_path / "o")))
    assert (local / "model.onnx").read_bytes() == files["model.onnx"]


def test_registered_model_search_default_and_empty(mlflow_client):
    assert mlflow_client.search_registered_models(filter_string=f"name = '{unique('none')}'") == []
    name = unique("plain")
    mlflow_client.create_registered_model(name)
    # No filter at all: the client still adds its prompt-exclusion clause; the model is found.
    everything = []
    token = None
    while True:
        page = mlflow_client.search_registered_models(max_results=100, page_token=token)
        everything += [m.name for m in page]
        token = page.token
        if not token:
            break
    assert name in everything
