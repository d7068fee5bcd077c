"""Health, server and model metadata, model configuration: tritonclient over HTTP and gRPC."""

import pytest
import requests

from support import CONFIG_TYPES, EXPECTED, LOADABLE, UNLOADABLE


def test_server_live_and_ready(client):
    assert client.api.is_server_live()
    assert client.api.is_server_ready()


def test_server_metadata(client):
    meta = client.as_dict(client.api.get_server_metadata())
    assert meta["name"]
    assert meta["version"]
    for extension in ("binary_tensor_data", "model_configuration", "model_repository", "statistics"):
        assert extension in meta["extensions"], meta


@pytest.mark.parametrize("model", LOADABLE)
def test_model_ready(client, model):
    assert client.api.is_model_ready(model)


@pytest.mark.parametrize("model", UNLOADABLE + ["no_such_model"])
def test_model_not_ready(client, model):
    assert not client.api.is_model_ready(model)


@pytest.mark.parametrize("model", LOADABLE)
def test_model_metadata(client, model):
    _, inputs, outputs = EXPECTED[model]
    meta = client.metadata(model)
    assert meta["name"] == model
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == (["2"] if model == "mlp_classifier" else ["1"])
    got_inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
    assert got_inputs == inputs
    got_outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]}
    for name, want in outputs.items():
        assert got_outputs.get(name) == want, f"output {name}: {meta['outputs']}"


def _tensors(config_tensors):
    return {t["name"]: (t["data_type"], [int(d) for d in t["dims"]]) for t in config_tensors}


def _config_tensors(tensors, max_batch_size):
    """config.pbtxt view of expected metadata: TYPE_* names, dims without the batch dim."""
    return {
        name: (CONFIG_TYPES[dtype], shape[1:] if max_batch_size > 0 else shape)
        for name, (dtype, shape) in tensors.items()
    }


@pytest.mark.parametrize("model", LOADABLE)
def test_model_config(client, model):
    max_batch_size, inputs, outputs = EXPECTED[model]
    cfg = client.config(model)
    assert cfg["name"] == model
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == max_batch_size
    assert _tensors(cfg["input"]) == _config_tensors(inputs, max_batch_size)
    got_outputs = _tensors(cfg["output"])
    for name, want in _config_tensors(outputs, max_batch_size).items():
        assert got_outputs.get(name) == want, f"output {name}: {cfg['output']}"


def test_model_config_details(client):
    cfg = client.config("mlp_classifier")
    groups = cfg["instance_group"]
    assert [(int(g["count"]), g["kind"]) for g in groups] == [(2, "KIND_CPU")]
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 100
    assert int(cfg["version_policy"]["latest"]["num_versions"]) == 1

    cfg = client.config("simple")
    assert [(int(g["count"]), g["kind"]) for g in cfg["instance_group"]] == [(1, "KIND_CPU")]


def test_auto_completed_config(client):
    """dynamic_add has no config.pbtxt: Nexus completes it from the model like Triton does."""
    cfg = client.config("dynamic_add")
    assert cfg["max_batch_size"] == 4
    assert _tensors(cfg["input"]) == {"x": ("TYPE_FP32", [-1])}
    assert _tensors(cfg["output"]) == {"y": ("TYPE_FP32", [-1])}


def test_http_config_json_shape(server):
    """GET /v2/models/{m}/config: proto field names, enum names as strings, dims as numbers."""
    r = requests.get(f"{server.base}/v2/models/simple/config", timeout=10)
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0] == {**cfg["input"][0], "name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}
    assert [i["name"] for i in cfg["input"]] == ["INPUT0", "INPUT1"]
    assert [o["name"] for o in cfg["output"]] == ["OUTPUT0", "OUTPUT1"]


def test_http_health_endpoints(server):
    assert requests.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{server.base}/v2/models/simple/ready", timeout=10).status_code == 200
    assert requests.get(f"{server.base}/v2/models/simple/versions/1/ready", timeout=10).status_code == 200
    r = requests.get(f"{server.base}/v2/models/simple/versions/1", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "simple"
