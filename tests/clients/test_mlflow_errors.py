"""Errors as the MLflow client sees them (`MlflowException.error_code`) and on the wire (HTTP
status and `{"error_code": ..., "message": ...}` bodies, checked with `requests`)."""

from __future__ import annotations

import mlflow
import pytest
import requests
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException

from mlflow_support import unique

MISSING_RUN = "f" * 32


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(MlflowException) as e:
        fn(*args, **kwargs)
    assert str(e.value.message), "error without a message"
    return e.value.error_code


# --- Through the client -------------------------------------------------------------------------


def test_duplicate_registered_model(mlflow_client):
    name = unique("dup")
    mlflow_client.create_registered_model(name)
    assert _code(mlflow_client.create_registered_model, name) == "RESOURCE_ALREADY_EXISTS"


def test_duplicate_experiment(mlflow_client):
    name = unique("dup-exp")
    mlflow_client.create_experiment(name)
    assert _code(mlflow_client.create_experiment, name) == "RESOURCE_ALREADY_EXISTS"


def test_missing_registered_model(mlflow_client, experiment_id):
    name = unique("nope")
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    assert _code(mlflow_client.get_registered_model, name) == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.delete_registered_model, name) == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.update_registered_model, name, description="x") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.create_model_version, name, f"runs:/{run_id}/model", run_id) == "RESOURCE_DOES_NOT_EXIST"


def test_missing_model_version(mlflow_client):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    assert _code(mlflow_client.get_model_version, name, "7") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.delete_model_version, name, "7") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.get_model_version_download_uri, name, "7") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.set_registered_model_alias, name, "prod", "7") == "RESOURCE_DOES_NOT_EXIST"


def test_missing_alias(mlflow_client):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    assert _code(mlflow_client.get_model_version_by_alias, name, "ghost") == "INVALID_PARAMETER_VALUE"


def test_missing_run(mlflow_client):
    assert _code(mlflow_client.get_run, MISSING_RUN) == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.log_param, MISSING_RUN, "p", "1") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.log_metric, MISSING_RUN, "m", 1.0) == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.delete_run, MISSING_RUN) == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow_client.get_metric_history(MISSING_RUN, "m") == []  # MLflow: no error, no history


def test_missing_experiment(mlflow_client):
    assert _code(mlflow_client.get_experiment, "987654321") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.create_run, "987654321") == "RESOURCE_DOES_NOT_EXIST"
    assert _code(mlflow_client.delete_experiment, "987654321") == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow_client.get_experiment_by_name(unique("nope")) is None  # the client maps 404 to None


@pytest.mark.parametrize(
    "bad_filter",
    ["metrics.x >>> 0.5", "params.p = unquoted", "nonsense", "metrics.x > 'abc' AND"],
)
def test_bad_run_filter(mlflow_client, experiment_id, bad_filter):
    assert _code(mlflow_client.search_runs, [experiment_id], filter_string=bad_filter) == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("bad_filter", ["name LIKE", "name === 'x'", "foo = 'bar'"])
def test_bad_registered_model_filter(mlflow_client, bad_filter):
    assert _code(mlflow_client.search_registered_models, filter_string=bad_filter) == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("bad_filter", ["name LIKE", "run_id === 'x'", "foo = 'bar'"])
def test_bad_model_version_filter(mlflow_client, bad_filter):
    assert _code(mlflow_client.search_model_versions, filter_string=bad_filter) == "INVALID_PARAMETER_VALUE"


def test_bad_experiment_filter(mlflow_client):
    assert _code(mlflow_client.search_experiments, filter_string="name >>> 'x'") == "INVALID_PARAMETER_VALUE"


def test_bad_order_by(mlflow_client, experiment_id):
    assert _code(mlflow_client.search_runs, [experiment_id], order_by=["metrics.x SIDEWAYS"]) == "INVALID_PARAMETER_VALUE"


def test_hostile_filters_through_the_client(mlflow_client, experiment_id):
    """Filters past the bounds (64 KiB, 256 comparisons) are INVALID_PARAMETER_VALUE for every
    search the client makes, the one that used to overflow the server's stack included; the
    registry answers the next search."""
    hostile = " AND ".join(["attributes.status = 'x'"] * 20_000)
    assert _code(mlflow_client.search_runs, [experiment_id], filter_string=hostile) == "INVALID_PARAMETER_VALUE"
    # Sent as GET query strings by the client: past the comparison bound, under the length one.
    many = " AND ".join(["name = 'x'"] * 257)
    assert _code(mlflow_client.search_registered_models, filter_string=many) == "INVALID_PARAMETER_VALUE"
    assert _code(mlflow_client.search_model_versions, filter_string=many) == "INVALID_PARAMETER_VALUE"
    assert _code(mlflow_client.search_experiments, filter_string=many) == "INVALID_PARAMETER_VALUE"
    assert _code(mlflow_client.search_logged_models, [experiment_id], filter_string=many) == "INVALID_PARAMETER_VALUE"
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    found = mlflow_client.search_runs([experiment_id], filter_string=" AND ".join(["attributes.status = 'RUNNING'"] * 256))
    assert [r.info.run_id for r in found] == [run_id]


def test_log_batch_over_mlflow_limits(mlflow_client, experiment_id):
    """The client splits big batches itself; one sent whole past MLflow's limits (as another
    client may) is refused with MLflow's message and stores nothing."""
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    store = mlflow_client._tracking_client.store  # the REST store sends a batch as it is
    metrics = [Metric(f"m{i}", float(i), 1, 0) for i in range(1001)]
    with pytest.raises(MlflowException) as e:
        store.log_batch(run_id, metrics=metrics, params=[], tags=[])
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert e.value.message == (  # the client puts the code in front of the server's message
        "INVALID_PARAMETER_VALUE: A batch logging request can contain at most 1000 metrics. Got 1001 metrics. "
        "Please split up metrics across multiple requests and try again."
    )
    with pytest.raises(MlflowException) as e:
        store.log_batch(run_id, metrics=[], params=[Param(f"p{i}", "v") for i in range(101)], tags=[])
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert mlflow_client.get_run(run_id).data.metrics == {}
    assert mlflow_client.get_run(run_id).data.params == {}
    mlflow_client.log_batch(run_id, metrics=metrics * 2, params=[Param(f"p{i}", "v") for i in range(250)])
    data = mlflow_client.get_run(run_id).data
    assert (len(data.metrics), len(data.params)) == (1001, 250)


def test_param_cannot_change(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.log_param(run_id, "p", "1")
    mlflow_client.log_param(run_id, "p", "1")  # the same value again is fine
    assert _code(mlflow_client.log_param, run_id, "p", "2") == "INVALID_PARAMETER_VALUE"
    assert mlflow_client.get_run(run_id).data.params == {"p": "1"}


def test_log_to_deleted_run(mlflow_client, experiment_id):
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.delete_run(run_id)
    assert _code(mlflow_client.log_metric, run_id, "m", 1.0) == "INVALID_PARAMETER_VALUE"


def test_fluent_missing_model_uri(tracking_uri):
    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model(f"models:/{unique('nope')}/1")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_deleted_experiment_not_searchable_by_default(mlflow_client):
    name = unique("gone")
    exp_id = mlflow_client.create_experiment(name)
    mlflow_client.delete_experiment(exp_id)
    assert mlflow_client.search_experiments(filter_string=f"name = '{name}'") == []
    assert len(mlflow_client.search_experiments(view_type=ViewType.ALL, filter_string=f"name = '{name}'")) == 1


# --- On the wire --------------------------------------------------------------------------------


def _error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers.get("Content-Type")
    body = r.json()
    assert body["error_code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def test_http_missing_registered_model_404(tracking_uri):
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/registered-models/get", params={"name": unique("nope")}, timeout=10)
    _error(r, 404, "RESOURCE_DOES_NOT_EXIST")


def test_http_missing_run_404(tracking_uri):
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/runs/get", params={"run_id": MISSING_RUN}, timeout=10)
    _error(r, 404, "RESOURCE_DOES_NOT_EXIST")


def test_http_missing_experiment_404(tracking_uri):
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": "987654321"}, timeout=10)
    _error(r, 404, "RESOURCE_DOES_NOT_EXIST")
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": unique("x")}, timeout=10)
    _error(r, 404, "RESOURCE_DOES_NOT_EXIST")


def test_http_missing_model_version_404(tracking_uri, mlflow_client):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": "3"}, timeout=10)
    _error(r, 404, "RESOURCE_DOES_NOT_EXIST")


def test_http_duplicate_registered_model_400(tracking_uri):
    name = unique("dup")
    url = f"{tracking_uri}/api/2.0/mlflow/registered-models/create"
    r = requests.post(url, json={"name": name}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["registered_model"]["name"] == name
    _error(requests.post(url, json={"name": name}, timeout=10), 400, "RESOURCE_ALREADY_EXISTS")


def test_http_bad_filter_400(tracking_uri, experiment_id):
    r = requests.post(
        f"{tracking_uri}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id], "filter": "metrics.x >>> 0.5"},
        timeout=10,
    )
    _error(r, 400, "INVALID_PARAMETER_VALUE")
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/registered-models/search", params={"filter": "name LIKE"}, timeout=10)
    _error(r, 400, "INVALID_PARAMETER_VALUE")


def test_http_missing_required_field_400(tracking_uri):
    r = requests.post(f"{tracking_uri}/api/2.0/mlflow/registered-models/create", json={}, timeout=10)
    _error(r, 400, "INVALID_PARAMETER_VALUE")
    r = requests.post(f"{tracking_uri}/api/2.0/mlflow/experiments/create", json={}, timeout=10)
    _error(r, 400, "INVALID_PARAMETER_VALUE")


def test_http_success_shapes(tracking_uri):
    """Bodies a raw HTTP user sees on success: ids as strings, empty replies as `{}`."""
    name = unique("raw")
    r = requests.post(f"{tracking_uri}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=10)
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    assert isinstance(exp_id, str)
    r = requests.post(f"{tracking_uri}/api/2.0/mlflow/experiments/set-experiment-tag", json={"experiment_id": exp_id, "key": "k", "value": "v"}, timeout=10)
    assert r.status_code == 200 and r.json() == {}, r.text
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id}, timeout=10)
    exp = r.json()["experiment"]
    assert exp["experiment_id"] == exp_id and exp["name"] == name and exp["lifecycle_stage"] == "active"
    assert {"key": "k", "value": "v"} in exp["tags"]


# --- More of the registry's rules ---------------------------------------------------------------


def test_alias_on_missing_model(mlflow_client):
    assert _code(mlflow_client.set_registered_model_alias, unique("nope"), "prod", "1") == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize("alias", ["latest", "v1", "V12"])
def test_reserved_alias_names(mlflow_client, experiment_id, alias):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.create_model_version(name, f"runs:/{run_id}/model", run_id)
    assert _code(mlflow_client.set_registered_model_alias, name, alias, "1") == "INVALID_PARAMETER_VALUE"


def test_rename_onto_existing_name(mlflow_client):
    a, b = unique("a"), unique("b")
    mlflow_client.create_registered_model(a)
    mlflow_client.create_registered_model(b)
    assert _code(mlflow_client.rename_registered_model, a, b) == "RESOURCE_ALREADY_EXISTS"
    assert mlflow_client.get_registered_model(a).name == a


def test_non_numeric_version(mlflow_client):
    name = unique("rm")
    mlflow_client.create_registered_model(name)
    assert _code(mlflow_client.get_model_version, name, "abc") == "INVALID_PARAMETER_VALUE"


def test_http_malformed_json_400(tracking_uri):
    r = requests.post(
        f"{tracking_uri}/api/2.0/mlflow/experiments/create",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    _error(r, 400, "INVALID_PARAMETER_VALUE")


def test_http_unknown_endpoint_404(tracking_uri):
    r = requests.get(f"{tracking_uri}/api/2.0/mlflow/no-such-endpoint", timeout=10)
    assert r.status_code == 404
