"""KServe's own Python clients (`kserve` 0.21, protocol v2) against `nexus serve`, beside
tritonclient: InferenceRESTClient (JSON and binary tensor data) and InferenceGRPCClient, for
server and model health and for inference, compared with onnxruntime in-process. The clients
run in their own process (kserve_calls.py): kserve and tritonclient register the same
protobuf messages and cannot be imported together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import ort_run, sample_inputs


@pytest.fixture(scope="module")
def seen(server):
    feeds, _ = sample_inputs("simple")
    job = {
        "http": server.http_url,
        "grpc": server.grpc_url,
        "model": "simple",
        "other_model": "dynamic_add",
        "inputs": {
            name: {"datatype": "INT32", "shape": list(array.shape), "data": array.ravel().tolist()}
            for name, array in feeds.items()
        },
    }
    script = Path(__file__).parent / "kserve_calls.py"
    done = subprocess.run(
        [sys.executable, str(script)], input=json.dumps(job), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout), feeds


def test_health_through_rest_and_grpc(seen):
    answers, _ = seen
    assert answers["rest_health"] == [True, True, True]
    assert answers["grpc_health"] == [True, True, True]


@pytest.mark.parametrize("transport", ["rest_json", "rest_binary", "grpc"])
def test_infer_matches_onnxruntime(seen, server, transport):
    answers, feeds = seen
    got = answers[transport]
    if transport != "grpc":
        assert got["model_name"] == "simple"
        assert got["id"] == "kserve-1"
    want = ort_run(server.repository, "simple", feeds, ["OUTPUT0", "OUTPUT1"])
    for name, expected in want.items():
        np.testing.assert_array_equal(np.array(got["outputs"][name]), expected)


def test_a_body_naming_another_model_is_refused(seen):
    answers, _ = seen
    refused = answers["rest_other_model"]
    assert refused["status"] == 400
    assert "model_name 'simple'" in refused["body"]
