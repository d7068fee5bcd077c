"""Statistics extension and Prometheus metrics."""

import re

import requests

from support import sample_inputs


def _simple_stats(client) -> dict:
    stats = client.stats("simple", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("simple", "1")], stats
    return stats[0]


def test_statistics_count_inferences(client):
    before = _simple_stats(client)
    feeds, outputs = sample_inputs("simple")  # a batch of 2
    for _ in range(3):
        client.infer("simple", feeds, outputs)
    after = _simple_stats(client)

    success = lambda s: int(s["inference_stats"]["success"]["count"])  # noqa: E731
    assert success(after) >= success(before) + 3, (before, after)
    assert int(after["inference_count"]) >= int(before["inference_count"]) + 6, (before, after)
    assert int(after["execution_count"]) > int(before["execution_count"]), (before, after)
    assert int(after["last_inference"]) > 0
    assert int(after["inference_stats"]["success"]["ns"]) > int(before["inference_stats"]["success"]["ns"])


def test_statistics_all_models(client):
    names = {s["name"] for s in client.stats("")["model_stats"]}
    assert {"simple", "mlp_classifier", "dynamic_add"} <= names


def test_http_statistics_body(server):
    r = requests.get(f"{server.base}/v2/models/simple/versions/1/stats", timeout=10)
    assert r.status_code == 200, r.text
    stats = r.json()["model_stats"][0]
    assert stats["name"] == "simple" and stats["version"] == "1"
    assert isinstance(stats["inference_count"], int)
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(stats["inference_stats"][key]) >= {"count", "ns"}, stats["inference_stats"]


def test_metrics(client, server):
    feeds, outputs = sample_inputs("simple")
    client.infer("simple", feeds, outputs)
    r = requests.get(server.metrics_url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    line = re.search(r'^nv_inference_request_success\{model="simple",version="1"\} (\S+)$', r.text, re.M)
    assert line, r.text[:3000]
    assert float(line.group(1)) >= 1
    assert re.search(r'^nv_inference_count\{model="simple",version="1"\} ', r.text, re.M), r.text[:3000]
