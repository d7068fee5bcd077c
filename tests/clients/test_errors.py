"""Errors: what tritonclient raises (HTTP status / gRPC status code) and the raw HTTP answers
(status code and a JSON body {"error": "..."} that names the problem)."""

import json

import numpy as np
import pytest
import requests
from tritonclient.utils import InferenceServerException

from support import INVALID_ARGUMENT, NOT_FOUND, sample_inputs

A = np.arange(16, dtype=np.int32).reshape(1, 16)


def _raises(fn, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as excinfo:
        fn(*args, **kwargs)
    assert str(excinfo.value.message()), "error without a message"
    return excinfo.value


# --------------------------------------------------------------------------- tritonclient


def test_unknown_model(client):
    feeds, outputs = sample_inputs("simple")
    e = _raises(client.infer, "no_such_model", feeds, outputs)
    assert e.status() == NOT_FOUND[client.protocol], e
    e = _raises(client.api.get_model_metadata, "no_such_model")
    assert e.status() == NOT_FOUND[client.protocol], e
    e = _raises(client.api.get_model_config, "no_such_model")
    assert e.status() == NOT_FOUND[client.protocol], e


def test_unknown_version(client):
    e = _raises(client.api.get_model_metadata, "simple", "7")
    assert e.status() == NOT_FOUND[client.protocol], e
    e = _raises(client.infer, "simple", {"INPUT0": A, "INPUT1": A}, ["OUTPUT0"], version="7")
    assert e.status() == NOT_FOUND[client.protocol], e


def _infer_raw(client, feeds, outputs=None):
    outputs = client.requested(outputs) if outputs else None
    return client.api.infer("simple", client.inputs(feeds), outputs=outputs)


@pytest.mark.parametrize(
    "case",
    ["wrong_datatype", "wrong_shape", "missing_input", "unknown_input", "unknown_output", "batch_too_large"],
)
def test_invalid_requests(client, case):
    feeds = {"INPUT0": A, "INPUT1": A}
    kwargs = {}
    if case == "wrong_datatype":
        feeds["INPUT1"] = A.astype(np.float32)
        needle = "INPUT1"
    elif case == "wrong_shape":
        feeds["INPUT1"] = np.zeros((1, 15), dtype=np.int32)
        needle = "INPUT1"
    elif case == "missing_input":
        del feeds["INPUT1"]
        needle = "INPUT1"
    elif case == "unknown_input":
        feeds["INPUT7"] = A
        needle = "INPUT7"
    elif case == "unknown_output":
        kwargs["outputs"] = ["OUTPUT0", "OUTPUT9"]
        needle = "OUTPUT9"
    else:  # max_batch_size is 8
        feeds = {"INPUT0": np.zeros((9, 16), np.int32), "INPUT1": np.zeros((9, 16), np.int32)}
        needle = "8"
    e = _raises(_infer_raw, client, feeds, **kwargs)
    assert e.status() == INVALID_ARGUMENT[client.protocol], e
    assert needle in e.message(), e


# ----------------------------------------------------------------------------- raw HTTP


def _post_infer(server, body, model="simple", **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{server.base}/v2/models/{model}/infer", data=data, timeout=10, **kwargs)


def _error(r, status) -> str:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def _tensor(name, datatype="INT32", shape=(1, 16), data=None):
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data if data is not None else [1] * 16}


GOOD = {"inputs": [_tensor("INPUT0"), _tensor("INPUT1")]}


def test_http_good_request_is_good(server):
    """The base of the cases below is accepted, so each error comes from the one change."""
    assert _post_infer(server, GOOD).status_code == 200


def test_http_unknown_model(server):
    _error(_post_infer(server, GOOD, model="no_such_model"), 404)
    _error(requests.get(f"{server.base}/v2/models/no_such_model", timeout=10), 404)
    _error(requests.get(f"{server.base}/v2/models/no_such_model/config", timeout=10), 404)
    _error(requests.post(f"{server.base}/v2/models/simple/versions/7/infer", json=GOOD, timeout=10), 404)


@pytest.mark.parametrize(
    "body, needle",
    [
        pytest.param({"inputs": [_tensor("INPUT0"), _tensor("INPUT1", "FP32", data=[1.5] * 16)]}, "INPUT1", id="wrong_datatype"),
        pytest.param({"inputs": [_tensor("INPUT0"), _tensor("INPUT1", shape=(1, 15), data=[1] * 15)]}, "INPUT1", id="wrong_shape"),
        pytest.param({"inputs": [_tensor("INPUT0")]}, "INPUT1", id="missing_input"),
        pytest.param({**GOOD, "outputs": [{"name": "OUTPUT9"}]}, "OUTPUT9", id="unknown_output"),
        pytest.param({"inputs": [_tensor("INPUT0"), _tensor("INPUT1", data=[1] * 15)]}, "INPUT1", id="data_count_mismatch"),
        pytest.param({"inputs": [_tensor("INPUT0"), _tensor("INPUT1", "INT33")]}, "INT33", id="unknown_datatype"),
    ],
)  # fmt: skip
def test_http_bad_request(server, body, needle):
    message = _error(_post_infer(server, body), 400)
    assert needle in message, message


def test_http_non_json_body(server):
    message = _error(_post_infer(server, b"this is {not json", headers={"Content-Type": "application/json"}), 400)
    assert "json" in message.lower(), message


def test_http_json_missing_inputs_field(server):
    _error(_post_infer(server, {"outputs": [{"name": "OUTPUT0"}]}), 400)


def _binary_request(header: dict, tensor_bytes: bytes):
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + tensor_bytes, headers


def test_http_binary_request(server):
    """A well-formed binary request, built by hand: the base of the size error below."""
    header = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }
    body, headers = _binary_request(header, A.tobytes() + A.tobytes())
    r = _post_infer(server, body, headers=headers)
    assert r.status_code == 200, r.text
    json_len = int(r.headers["Inference-Header-Content-Length"])
    out = json.loads(r.content[:json_len])
    assert out["outputs"][0]["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(np.frombuffer(r.content[json_len:], dtype=np.int32), (A + A).ravel())


def test_http_binary_sizes_do_not_add_up(server):
    """The header claims more binary data than the body holds."""
    header = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 640}},
        ]
    }
    body, headers = _binary_request(header, A.tobytes() + A.tobytes())
    message = _error(_post_infer(server, body, headers=headers), 400)
    assert "INPUT1" in message, message


def test_http_binary_size_wrong_for_shape(server):
    """binary_data_size adds up with the body but does not match the shape and datatype."""
    header = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 60}},
        ]
    }
    body, headers = _binary_request(header, A.tobytes() + A.tobytes()[:60])
    message = _error(_post_infer(server, body, headers=headers), 400)
    assert "INPUT1" in message, message


def test_http_header_length_past_body(server):
    body, headers = _binary_request(GOOD, b"")
    headers["Inference-Header-Content-Length"] = str(len(body) + 100)
    _error(_post_infer(server, body, headers=headers), 400)
