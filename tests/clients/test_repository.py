"""Model repository extension: index, load, unload (tritonclient over HTTP and gRPC)."""

import numpy as np
import pytest
import requests
from tritonclient.utils import InferenceServerException

from support import LOADABLE, UNLOADABLE, sample_inputs


def _by_name(index):
    entries = {}
    for entry in index:
        entries.setdefault(entry["name"], []).append(entry)
    return entries


def test_index_states(client):
    """Mode none loads everything: good models READY, broken ones UNAVAILABLE with a reason."""
    index = _by_name(client.index())
    assert set(LOADABLE + UNLOADABLE) <= set(index), index
    for model in LOADABLE:
        ready = [e for e in index[model] if e.get("state") == "READY"]
        assert ready, f"{model}: {index[model]}"
        assert [e["version"] for e in ready] == (["2"] if model == "mlp_classifier" else ["1"])
    for model in UNLOADABLE:
        entries = index[model]
        assert not [e for e in entries if e.get("state") == "READY"], entries
        unavailable = [e for e in entries if e.get("state") == "UNAVAILABLE"]
        assert unavailable, entries
        assert all(e.get("reason") for e in unavailable), entries


def test_http_index_body(server):
    """POST /v2/repository/index returns a JSON list of {name, version, state, reason}."""
    r = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10)
    assert r.status_code == 200, r.text
    index = r.json()
    assert isinstance(index, list)
    simple = [e for e in index if e["name"] == "simple"]
    assert simple == [{**simple[0], "name": "simple", "version": "1", "state": "READY"}]
    broken = [e for e in index if e["name"] == "broken"]
    assert broken and broken[0]["state"] == "UNAVAILABLE" and broken[0]["reason"], broken

    r = requests.post(f"{server.base}/v2/repository/index", json={"ready": True}, timeout=10)
    assert r.status_code == 200, r.text
    names = {e["name"] for e in r.json()}
    assert set(LOADABLE) <= names
    assert not names & set(UNLOADABLE), r.json()


def test_broken_model_not_served(server):
    """A model that failed to load answers 503 (not ready), with Triton's error body."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    r = requests.post(f"{server.base}/v2/models/broken/infer", json=body, timeout=10)
    assert r.status_code == 503, r.text
    assert r.json()["error"]


# ------------------------------------------------------------------- explicit model control

# Each protocol cycles its own model so the two parametrizations do not see each other's state.
CYCLE_MODEL = {"http": "simple", "grpc": "dynamic_add"}


def test_explicit_index_lists_repository(explicit_client):
    index = _by_name(explicit_client.index())
    assert set(LOADABLE + UNLOADABLE) <= set(index), index
    # Nothing is loaded at start; models no test loads stay unloaded.
    for model in ("sigmoid", "logreg_iris", "broken", "badconfig"):
        assert not [e for e in index[model] if e.get("state") == "READY"], index[model]
        assert not explicit_client.api.is_model_ready(model)


def test_explicit_load_unload_cycle(explicit_client):
    api = explicit_client.api
    model = CYCLE_MODEL[explicit_client.protocol]
    feeds, outputs = sample_inputs(model)
    assert not api.is_model_ready(model)

    api.load_model(model)
    assert api.is_model_ready(model)
    assert explicit_client.infer(model, feeds, outputs)
    ready = [e for e in explicit_client.index() if e["name"] == model and e.get("state") == "READY"]
    assert [e["version"] for e in ready] == ["1"], ready

    api.unload_model(model)
    assert not api.is_model_ready(model)
    with pytest.raises(InferenceServerException):
        explicit_client.infer(model, feeds, outputs)

    api.load_model(model)
    assert api.is_model_ready(model)
    got = explicit_client.infer(model, feeds, outputs)
    if model == "simple":
        np.testing.assert_array_equal(got["OUTPUT0"], feeds["INPUT0"] + feeds["INPUT1"])
    else:
        np.testing.assert_allclose(got["y"], feeds["x"] + 1)


def test_explicit_load_versioned_model(explicit_client):
    """Loading honours the version policy: mlp_classifier comes up at version 2 only."""
    api = explicit_client.api
    api.load_model("mlp_classifier")
    assert api.is_model_ready("mlp_classifier", "2")
    assert not api.is_model_ready("mlp_classifier", "1")


@pytest.mark.parametrize("model", UNLOADABLE + ["no_such_model"])
def test_explicit_load_failure(explicit_client, model):
    with pytest.raises(InferenceServerException) as excinfo:
        explicit_client.api.load_model(model)
    assert str(excinfo.value), "load failure without a message"
    assert not explicit_client.api.is_model_ready(model)
