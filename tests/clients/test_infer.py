"""Inference through tritonclient (HTTP JSON, HTTP binary, gRPC), compared with onnxruntime's
Python answers on the same model files and inputs."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from tritonclient.utils import InferenceServerException

from support import NOT_FOUND, LOADABLE, Client, assert_tensor_equal, ort_run, output_names, sample_inputs

# FP16 has no JSON form in Triton's HTTP protocol (it answers FP16 over JSON with an error),
# so fp16_scale runs over binary HTTP and gRPC only.
JSON_UNSUPPORTED = {"fp16_scale"}


@pytest.mark.parametrize("model", LOADABLE)
def test_infer_matches_onnxruntime(transport, server, model):
    if model in JSON_UNSUPPORTED and transport.protocol == "http" and not transport.binary:
        pytest.skip("FP16 tensors are binary-only over HTTP")
    feeds, outputs = sample_inputs(model)
    version = "2" if model == "mlp_classifier" else "1"
    got = transport.infer(model, feeds, outputs)
    want = ort_run(server.repository, model, feeds, outputs, version=version)
    for name in outputs:
        assert_tensor_equal(got[name], want[name], f"{model}/{name}")


def test_bytes_are_returned_as_bytes(transport):
    feeds, _ = sample_inputs("identity_bytes")
    got = transport.infer("identity_bytes", feeds, ["OUTPUT0"])["OUTPUT0"]
    assert got.dtype == np.object_
    assert got.shape == feeds["INPUT0"].shape
    if transport.binary:
        # Binary BYTES keep their bytes exactly.
        assert got.tolist() == feeds["INPUT0"].tolist()
    else:
        # JSON carries BYTES as UTF-8 strings; tritonclient gives them back as str.
        assert got.tolist() == [[w.decode() for w in row] for row in feeds["INPUT0"].tolist()]


def test_bytes_varying_length_and_batch(transport):
    words = np.array([[b"x" * n] for n in (0, 1, 7, 300)], dtype=np.object_)  # [4, 1]
    got = transport.infer("identity_bytes", {"INPUT0": words}, ["OUTPUT0"])["OUTPUT0"]
    assert got.shape == (4, 1)
    assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == words.ravel().tolist()


@pytest.mark.parametrize("transport", ["http-binary", "grpc"], indirect=True)
def test_fp16(transport, server):
    x = np.array([[0.5, -1.25, 3.0, 0.0, -0.0, 1e-3, 60000.0 / 4, -2.0]], dtype=np.float16)
    got = transport.infer("fp16_scale", {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, x * np.float16(2))
    want = ort_run(server.repository, "fp16_scale", {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    np.testing.assert_array_equal(got, want)


def test_dynamic_add_any_width(transport, server):
    for shape in [(1, 1), (4, 9), (2, 33)]:
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        got = transport.infer("dynamic_add", {"x": x}, ["y"])["y"]
        np.testing.assert_allclose(got, x + 1)
        np.testing.assert_allclose(got, ort_run(server.repository, "dynamic_add", {"x": x}, ["y"])["y"])


def test_all_outputs_when_none_requested(client):
    feeds, _ = sample_inputs("simple")
    result = client.api.infer("simple", client.inputs(feeds))
    assert sorted(output_names(result)) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), feeds["INPUT0"] + feeds["INPUT1"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), feeds["INPUT0"] - feeds["INPUT1"])


def test_only_requested_output_is_returned(client):
    feeds, _ = sample_inputs("simple")
    result = client.api.infer("simple", client.inputs(feeds), outputs=client.requested(["OUTPUT1"]))
    assert output_names(result) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), feeds["INPUT0"] - feeds["INPUT1"])


def test_request_id_is_echoed(client):
    feeds, _ = sample_inputs("simple")
    result = client.api.infer("simple", client.inputs(feeds), request_id="req-42")
    response = client.as_dict(result.get_response())
    assert response["id"] == "req-42"
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"


# ---------------------------------------------------------------- versions


def test_mlp_classifier_serves_latest_version_only(client):
    assert client.api.is_model_ready("mlp_classifier", "2")
    assert not client.api.is_model_ready("mlp_classifier", "1")
    assert client.metadata("mlp_classifier", "2")["versions"] == ["2"]


def test_mlp_classifier_version_2_answers(transport, server):
    feeds, outputs = sample_inputs("mlp_classifier")
    explicit = transport.infer("mlp_classifier", feeds, outputs, version="2")
    default = transport.infer("mlp_classifier", feeds, outputs)
    v2 = ort_run(server.repository, "mlp_classifier", feeds, outputs, version="2")
    v1 = ort_run(server.repository, "mlp_classifier", feeds, outputs, version="1")
    for name in outputs:
        assert_tensor_equal(explicit[name], v2[name], name)
        assert_tensor_equal(default[name], v2[name], name)
    # The two versions really differ, so the comparison above tells them apart.
    assert not np.allclose(v1["probabilities"], v2["probabilities"])


def test_mlp_classifier_version_1_not_served(transport):
    feeds, outputs = sample_inputs("mlp_classifier")
    with pytest.raises(InferenceServerException) as excinfo:
        transport.infer("mlp_classifier", feeds, outputs, version="1")
    assert excinfo.value.status() == NOT_FOUND[transport.protocol], excinfo.value


def test_mlp_classifier_batch_consistency(transport, server):
    """Rows give the same answer alone and in a batch (dynamic batching must not mix rows)."""
    feeds, outputs = sample_inputs("mlp_classifier", seed=7)
    batch = transport.infer("mlp_classifier", feeds, outputs)
    for i in range(feeds["input"].shape[0]):
        row = transport.infer("mlp_classifier", {"input": feeds["input"][i : i + 1]}, outputs)
        assert_tensor_equal(row["probabilities"], batch["probabilities"][i : i + 1], "probabilities")
        assert_tensor_equal(row["label"], batch["label"][i : i + 1], "label")


def test_concurrent_requests_are_not_mixed(server):
    """Many concurrent requests to the dynamically batched model each get their own answer."""
    def one(seed):
        c = Client.connect("grpc", server.grpc_url)
        try:
            feeds, outputs = sample_inputs("mlp_classifier", seed=seed)
            got = c.infer("mlp_classifier", feeds, outputs)
            want = ort_run(server.repository, "mlp_classifier", feeds, outputs, version="2")
            return all(np.allclose(got[n], want[n], rtol=1e-5, atol=1e-6) for n in outputs)
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(one, range(32)))


def test_http_json_response_body(server):
    """A raw JSON request and the JSON response body of Triton's HTTP protocol."""
    body = {
        "id": "raw-1",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ],
        "outputs": [{"name": "OUTPUT0"}],
    }
    r = requests.post(f"{server.base}/v2/models/simple/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    out = r.json()
    assert out["id"] == "raw-1"
    assert out["model_name"] == "simple"
    assert out["model_version"] == "1"
    assert out["outputs"] == [
        {**out["outputs"][0], "name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(1, 17))}
    ]
