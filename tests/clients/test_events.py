"""Nexus's events read back from a real Kafka-protocol broker with an independent client.

Each test starts `nexus serve --kafka-brokers B` with topics of its own (so a shared external
broker or a rerun never mixes runs), drives it over HTTP and gRPC, and reads the inference,
feedback and decision topics with confluent-kafka (librdkafka through its own Python
binding, not Nexus's code). Every event read is validated against the documented JSON
Schemas in events/schemas/ and checked against what the client sent and got back.

The broker is `kafka_brokers` (conftest.py): NEXUS_TEST_KAFKA_BROKERS, else a tansu started
for this module.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from jsonschema import Draft202012Validator
from tritonclient.utils import InferenceServerException

import conftest
from support import Client

SCHEMAS = conftest.REPO / "events" / "schemas"
# Partitions Nexus gives the topics it creates (--kafka-partitions' default).
DEFAULT_PARTITIONS = 3
# How long an event may take to show up on the broker.
EVENT_TIMEOUT_S = 15
MLP = "mlp_classifier"


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


VALIDATORS = {
    "inference": _validator("inference.v1.json"),
    "feedback": _validator("feedback.v1.json"),
    "decisions": _validator("decision.v1.json"),
}

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test, run or concurrent session uses."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}-{next(_counter)}"


def traceparent() -> tuple[str, str]:
    """A fresh W3C traceparent header and its trace id."""
    trace_id = uuid.uuid4().hex
    return f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", trace_id


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def assert_valid(stream: str, event: dict, where: str):
    errors = sorted(VALIDATORS[stream].iter_errors(event), key=lambda e: list(e.absolute_path))
    if errors:
        details = "\n".join(f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        pytest.fail(f"{where} does not match the {stream} schema:\n{details}\nevent: {json.dumps(event)}")


# ------------------------------------------------------------------------------ reading topics


@dataclass
class Record:
    key: str | None
    event: dict
    partition: int
    offset: int
    headers: dict


class TopicReader:
    """Every event of one topic from its beginning, outside any consumer group (partitions are
    assigned, never subscribed, so no group is joined or committed to)."""

    def __init__(self, brokers: str, stream: str, topic: str):
        self.stream, self.topic = stream, topic
        self.consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": unique("nexus-test-reader"),  # required by the client; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # Short fetch long-polls: the broker answers the watermark queries sharing the
            # connection after them.
            "fetch.wait.max.ms": 20,
        })  # fmt: skip
        metadata = self.consumer.list_topics(topic, timeout=10)
        info = metadata.topics.get(topic)
        assert info is not None and info.error is None, f"topic {topic}: {info and info.error}"
        self.partitions = sorted(info.partitions)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        self.records: list[Record] = []

    def close(self):
        self.consumer.close()

    def _poll(self, timeout: float):
        for msg in self.consumer.consume(num_messages=1000, timeout=timeout):
            if msg.error():
                raise AssertionError(f"reading {self.topic}: {msg.error()}")
            where = f"{self.stream} event {msg.partition()}@{msg.offset()} of {self.topic}"
            try:
                event = json.loads(msg.value())
            except ValueError as e:
                pytest.fail(f"{where} is not JSON ({e}): {msg.value()!r}")
            assert_valid(self.stream, event, where)
            key = msg.key().decode() if msg.key() is not None else None
            headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
            self.records.append(Record(key, event, msg.partition(), msg.offset(), headers))

    def wait_for(self, done, what: str, timeout: float = EVENT_TIMEOUT_S) -> list[Record]:
        """Reads until `done(records)` is true; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            if time.monotonic() > deadline:
                got = "\n".join(json.dumps(r.event) for r in self.records[-20:])
                pytest.fail(f"{what}: not on {self.topic} after {timeout}s; {len(self.records)} read, last:\n{got}")
            self._poll(0.2)
        return self.records

    def wait_ids(self, ids: list[str], timeout: float = EVENT_TIMEOUT_S) -> dict[str, Record]:
        """Reads until an event of every id in `ids` arrived; the records by id."""
        wanted = set(ids)
        self.wait_for(lambda rs: wanted <= {r.event["id"] for r in rs}, f"{self.stream} events {sorted(wanted)}", timeout)
        return {r.event["id"]: r for r in self.records if r.event["id"] in wanted}

    def high_watermarks(self) -> dict[int, int]:
        """The next offset of every partition, as the broker says now."""
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in self.partitions
        }

    def read_all(self, quiet_s: float = 0.5) -> list[Record]:
        """Reads until every event stored now has been read and none came for `quiet_s`.

        The quiet period is not only for late events: tansu 0.6's memory engine answers a
        high watermark short of the end after a batch of several records (the batch's base
        offset + 1), so the watermarks alone can stop too early.
        """
        stored = sum(self.high_watermarks().values())
        self.wait_for(lambda rs: len(rs) >= stored, f"all {stored} stored events")
        seen, until = len(self.records), time.monotonic() + quiet_s
        while time.monotonic() < until:
            self._poll(0.1)
            if len(self.records) != seen:
                seen, until = len(self.records), time.monotonic() + quiet_s
        return self.records


def committed_offsets(brokers: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """What consumer group `group` committed on `topic` (negative: nothing), asked without joining it."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    for tp in offsets:
        assert tp.error is None, f"committed offset of {group} on {topic}/{tp.partition}: {tp.error}"
    return {tp.partition: tp.offset for tp in offsets}


# ------------------------------------------------------------------------------ servers


@dataclass
class EventServer:
    """`nexus serve` publishing to topics of its own, and readers of those topics."""

    server: conftest.Server
    brokers: str
    topics: dict[str, str]  # stream -> topic name
    group: str  # the optimiser's consumer group
    readers: dict[str, TopicReader]

    @property
    def base(self) -> str:
        return self.server.base

    def post(self, path: str, body, **kw) -> requests.Response:
        return requests.post(self.base + path, json=body, timeout=30, **kw)

    def get(self, path: str) -> dict:
        r = requests.get(self.base + path, timeout=30)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def reader(self, stream: str) -> TopicReader:
        if stream not in self.readers:
            self.readers[stream] = TopicReader(self.brokers, stream, self.topics[stream])
        return self.readers[stream]


@pytest.fixture(scope="module")
def event_repository(model_repository, tmp_path_factory) -> Path:
    """simple, mlp_classifier (newest version served) and identity_bytes."""
    repo = tmp_path_factory.mktemp("event_repository")
    for name in ("simple", MLP, "identity_bytes"):
        shutil.copytree(model_repository / name, repo / name)
    return repo


@pytest.fixture(scope="module")
def routing_repository(model_repository, tmp_path_factory) -> Path:
    """mlp_classifier with both versions ready."""
    repo = tmp_path_factory.mktemp("routing_repository")
    shutil.copytree(model_repository / MLP, repo / MLP)
    config = repo / MLP / "config.pbtxt"
    text = config.read_text()
    both = text.replace("version_policy: { latest: { num_versions: 1 } }", "version_policy: { all: {} }")
    assert both != text, "mlp_classifier's version policy changed; update this test"
    config.write_text(both)
    return repo


@pytest.fixture
def start_events_server(kafka_brokers, tmp_path):
    """Starts `nexus serve` on a repository with extra flags, publishing to fresh topics."""
    started = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(repository: Path, extra: list[str]) -> EventServer:
            base = unique("nexus-test")
            topics = {s: f"{base}.{s}" for s in ("inference", "feedback", "decisions")}
            # A fresh tansu holds no other run's groups: check the default group there. On a
            # shared external broker, a group of this run's own.
            group = "nexus-optimizer" if conftest.external_kafka_brokers() is None else unique("nexus-optimizer")
            args = [
                "--kafka-brokers", kafka_brokers,
                "--topic-inference", topics["inference"],
                "--topic-feedback", topics["feedback"],
                "--topic-decisions", topics["decisions"],
                *([] if group == "nexus-optimizer" else ["--optimizer-group", group]),
                *extra,
            ]  # fmt: skip
            log = tmp_path / f"nexus-serve-{next(started)}.log"
            server = stack.enter_context(conftest.nexus_serve(repository, log, args))
            events = EventServer(server, kafka_brokers, topics, group, {})
            stack.callback(lambda: [r.close() for r in events.readers.values()])
            return events

        yield start


# ------------------------------------------------------------------------------ checks


def simple_body(request_id: str | None = None, rows: int = 1) -> dict:
    a = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [rows, 16], "data": a.ravel().tolist()},
            {"name": "INPUT1", "datatype": "INT32", "shape": [rows, 16], "data": [3] * (16 * rows)},
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def mlp_body(row=(0.5, -1.0, 2.0, 0.25), request_id: str | None = None) -> dict:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": list(row)}]}
    if request_id is not None:
        body["id"] = request_id
    return body


def label_of(response: dict) -> int:
    return next(o for o in response["outputs"] if o["name"] == "label")["data"][0]


def tensors(samples: list[dict]) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """Tensor samples of an event (or V2 JSON tensors) as name -> (datatype, shape, flat data)."""
    out = {}
    for s in samples:
        dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "BYTES": object}.get(s["datatype"], np.int64)
        out[s["name"]] = (s["datatype"], list(s["shape"]), np.asarray(s["data"], dtype=dtype).ravel())
    return out


def assert_tensors_equal(got: list[dict], want: list[dict], what: str):
    """Same names, datatypes, shapes and values (FP32 compared as float32: exactly)."""
    g, w = tensors(got), tensors(want)
    assert sorted(g) == sorted(w), f"{what}: tensors {sorted(g)}, expected {sorted(w)}"
    for name in w:
        assert g[name][:2] == w[name][:2], f"{what} {name}: {g[name][:2]}, expected {w[name][:2]}"
        np.testing.assert_array_equal(g[name][2], w[name][2], err_msg=f"{what} {name}")


def from_numpy(name: str, array: np.ndarray, datatype: str) -> dict:
    """A numpy tensor in V2 JSON form (BYTES as str)."""
    data = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def assert_served(event: dict, *, model: str, version: str, protocol: str, routed: bool, before: int, after: int,
                  elapsed_us: int, trace_id: str | None):  # fmt: skip
    """The fields every successful inference event carries."""
    where = json.dumps(event)
    assert event["model"] == model, where
    assert event["version"] == version, where
    assert event["protocol"] == protocol, where
    assert event["routed"] is routed, where
    assert event["status"] == "ok" and "error" not in event, where
    assert before - 1 <= event["timestamp_ms"] <= after + 1, f"timestamp not within [{before}, {after}]: {where}"
    assert 0 < event["latency_us"] <= elapsed_us, f"latency not within the client's {elapsed_us} µs: {where}"
    assert event["queue_us"] <= event["latency_us"], where
    assert event["batch_size"] >= 1, where
    if trace_id is None:
        assert "trace_id" not in event, where
    else:
        assert event["trace_id"] == trace_id, where


def assert_topics_created(events: EventServer):
    for stream in ("inference", "feedback", "decisions"):
        reader = events.reader(stream)
        assert len(reader.partitions) == DEFAULT_PARTITIONS, f"{reader.topic}: partitions {reader.partitions}"


def assert_keyed_by_model(records: list[Record]):
    """Every event keyed by its model, so one model's events share one partition."""
    partitions: dict[str, set[int]] = {}
    for r in records:
        assert r.key == r.event["model"], f"key {r.key!r} of {json.dumps(r.event)}"
        partitions.setdefault(r.key, set()).add(r.partition)
    for model, parts in partitions.items():
        assert len(parts) == 1, f"events of {model} in partitions {sorted(parts)}"


class Timed:
    """Wall-clock bounds of one request: Unix ms before/after and the elapsed µs."""

    def __enter__(self):
        self.before, self.start = now_ms(), time.perf_counter_ns()
        return self

    def __exit__(self, *exc):
        self.elapsed_us = (time.perf_counter_ns() - self.start) // 1000 + 1
        self.after = now_ms()


# ------------------------------------------------------------------------------ inference events


def test_http_inference_events(start_events_server, event_repository):
    """HTTP JSON and binary requests: one event each, its id the response's (issued or
    echoed), with trace id and the sampled tensors equal to what was sent and returned."""
    events = start_events_server(event_repository, ["--log-sample-rate", "1"])
    assert_topics_created(events)
    sent = []  # (response id, model, request tensors, response tensors, Timed, trace id)

    # JSON, no id: the server issues one. With a traceparent.
    header, trace_id = traceparent()
    with Timed() as t:
        r = events.post("/v2/models/simple/infer", simple_body(rows=2), headers={"traceparent": header})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply.get("id"), f"no server-issued id in {reply}"
    sent.append((reply["id"], "simple", "1", simple_body(rows=2)["inputs"], reply["outputs"], t, trace_id))

    # JSON with the client's id: echoed. No traceparent.
    own = unique("client")
    with Timed() as t:
        r = events.post(f"/v2/models/{MLP}/infer", mlp_body(request_id=own))
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["id"] == own
    sent.append((own, MLP, "2", mlp_body()["inputs"], reply["outputs"], t, None))

    # Binary tensors through tritonclient: the event still holds them in JSON form.
    client = Client.connect("http", events.server.http_url)
    try:
        words = np.array([[b"hello", b"nexus"], [b"", b"d\xc3\xa9f"]], dtype=np.object_)
        header, bytes_trace = traceparent()
        with Timed() as t:
            result = client.api.infer(
                "identity_bytes", client.inputs({"INPUT0": words}), outputs=client.requested(["OUTPUT0"]),
                headers={"traceparent": header},
            )  # fmt: skip
        response = result.get_response()
        assert response.get("id"), f"no server-issued id in {response}"
        got = result.as_numpy("OUTPUT0")
        sent.append((response["id"], "identity_bytes", "1", [from_numpy("INPUT0", words, "BYTES")],
                     [from_numpy("OUTPUT0", got, "BYTES")], t, bytes_trace))  # fmt: skip
    finally:
        client.close()

    ids = [s[0] for s in sent]
    assert len(set(ids)) == len(ids), f"issued ids repeat: {ids}"
    reader = events.reader("inference")
    by_id = reader.wait_ids(ids)
    for rid, model, version, inputs, outputs, t, trace in sent:
        event = by_id[rid].event
        # The trace travels on as a Kafka header (the caller's traceparent: no exporter here).
        header = by_id[rid].headers.get("traceparent")
        if trace is None:
            assert header is None, f"{rid}: traceparent header {header!r} without a trace"
        else:
            assert header and header.split("-")[1] == trace, f"{rid}: traceparent header {header!r}, trace {trace}"

        assert_served(event, model=model, version=version, protocol="http", routed=False, before=t.before,
                      after=t.after, elapsed_us=t.elapsed_us, trace_id=trace)  # fmt: skip
        assert "inputs" in event and "outputs" in event, f"--log-sample-rate 1 but no tensors: {json.dumps(event)}"
        assert_tensors_equal(event["inputs"], inputs, f"{rid} inputs")
        assert_tensors_equal(event["outputs"], outputs, f"{rid} outputs")
    # Exactly one event per request.
    records = reader.read_all()
    assert sorted(r.event["id"] for r in records) == sorted(ids)
    assert_keyed_by_model(records)


def test_grpc_inference_events(start_events_server, event_repository):
    """gRPC requests: protocol "grpc", the issued or echoed id, trace id from metadata."""
    events = start_events_server(event_repository, ["--log-sample-rate", "1"])
    client = Client.connect("grpc", events.server.grpc_url)
    sent = []
    try:
        feeds = {"input": np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)}
        header, trace_id = traceparent()
        with Timed() as t:
            result = client.api.infer(MLP, client.inputs(feeds), headers={"traceparent": header})
        rid = result.get_response().id
        assert rid, "no server-issued id in the gRPC response"
        outputs = [from_numpy("probabilities", result.as_numpy("probabilities"), "FP32"),
                   from_numpy("label", result.as_numpy("label"), "INT64")]  # fmt: skip
        sent.append((rid, MLP, [from_numpy("input", feeds["input"], "FP32")], outputs, t, trace_id))

        own = unique("grpc-client")
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        simple_feeds = {"INPUT0": a, "INPUT1": a * 2}
        with Timed() as t:
            result = client.api.infer("simple", client.inputs(simple_feeds), request_id=own,
                                      outputs=client.requested(["OUTPUT1"]))  # fmt: skip
        assert result.get_response().id == own
        sent.append((own, "simple", [from_numpy(n, v, "INT32") for n, v in simple_feeds.items()],
                     [from_numpy("OUTPUT1", result.as_numpy("OUTPUT1"), "INT32")], t, None))  # fmt: skip
    finally:
        client.close()

    reader = events.reader("inference")
    by_id = reader.wait_ids([s[0] for s in sent])
    for rid, model, inputs, outputs, t, trace in sent:
        event = by_id[rid].event
        assert_served(event, model=model, version="2" if model == MLP else "1", protocol="grpc", routed=False,
                      before=t.before, after=t.after, elapsed_us=t.elapsed_us, trace_id=trace)  # fmt: skip
        assert_tensors_equal(event["inputs"], inputs, f"{rid} inputs")
        assert_tensors_equal(event["outputs"], outputs, f"{rid} outputs")
    records = reader.read_all()
    assert sorted(r.event["id"] for r in records) == sorted(s[0] for s in sent)
    assert_keyed_by_model(records)


def test_failed_inference_is_an_error_event(start_events_server, event_repository):
    """A request the model refuses (wrong shape) is still one event: status "error" with the
    reason, the sampled inputs, and no outputs."""
    events = start_events_server(event_repository, ["--log-sample-rate", "1"])
    bad = {"id": unique("bad-http"), "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 8], "data": list(range(8))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 8], "data": [1] * 8},
    ]}  # fmt: skip
    r = events.post("/v2/models/simple/infer", bad)
    assert r.status_code == 400, r.text

    client = Client.connect("grpc", events.server.grpc_url)
    grpc_id = unique("bad-grpc")
    try:
        wrong = {"input": np.zeros((2, 5), dtype=np.float32)}  # mlp_classifier takes [-1, 4]
        with pytest.raises(InferenceServerException):
            client.api.infer(MLP, client.inputs(wrong), request_id=grpc_id)
    finally:
        client.close()
    ok_id = unique("good")
    assert events.post("/v2/models/simple/infer", simple_body(ok_id)).status_code == 200

    by_id = events.reader("inference").wait_ids([bad["id"], grpc_id, ok_id])
    for rid, model, version, protocol, inputs in [
        (bad["id"], "simple", "1", "http", bad["inputs"]),
        (grpc_id, MLP, "2", "grpc", [from_numpy("input", wrong["input"], "FP32")]),
    ]:
        event = by_id[rid].event
        where = json.dumps(event)
        assert (event["model"], event["version"], event["protocol"]) == (model, version, protocol), where
        assert event["status"] == "error" and event["error"], where
        assert event["routed"] is False, where
        assert "outputs" not in event, where
        assert_tensors_equal(event["inputs"], inputs, f"{rid} inputs")
    assert by_id[ok_id].event["status"] == "ok"


def test_unsampled_events_carry_no_tensors(start_events_server, event_repository):
    """With --log-sample-rate 0, events have no inputs and no outputs."""
    events = start_events_server(event_repository, ["--log-sample-rate", "0"])
    ids = []
    for _ in range(3):
        r = events.post("/v2/models/simple/infer", simple_body())
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    client = Client.connect("grpc", events.server.grpc_url)
    try:
        result = client.api.infer(MLP, client.inputs({"input": np.ones((1, 4), dtype=np.float32)}))
        ids.append(result.get_response().id)
    finally:
        client.close()
    by_id = events.reader("inference").wait_ids(ids)
    for rid in ids:
        event = by_id[rid].event
        assert event["status"] == "ok", json.dumps(event)
        assert "inputs" not in event and "outputs" not in event, json.dumps(event)


# ------------------------------------------------------------------------------ feedback events


def test_feedback_events(start_events_server, event_repository):
    """Feedback by reward, by label (1/0 against the prediction) and as a list: one event per
    accepted item, keyed by the model, naming the version that answered; an unknown id is a
    404 and a second reward for the same request a 409, and neither publishes anything."""
    events = start_events_server(event_repository, [])
    path = f"/v2/models/{MLP}/feedback"
    r = events.post(f"/v2/models/{MLP}/infer", mlp_body())
    assert r.status_code == 200, r.text
    first = r.json()["id"]
    r = events.post(f"/v2/models/{MLP}/infer", mlp_body())
    assert r.status_code == 200, r.text
    second, second_label = r.json()["id"], label_of(r.json())
    own = unique("client")
    r = events.post(f"/v2/models/{MLP}/infer", mlp_body(row=(-2.0, 1.5, 0.0, 3.0), request_id=own))
    assert r.status_code == 200 and r.json()["id"] == own, r.text
    own_label = label_of(r.json())

    before = now_ms()
    r = events.post(path, {"id": first, "reward": 0.25})
    assert (r.status_code, r.json()) == (200, {"accepted": 1}), r.text
    r = events.post(path, [{"id": second, "label": second_label}, {"id": own, "label": own_label + 1}])
    assert (r.status_code, r.json()) == (200, {"accepted": 2}), r.text
    r = events.post(path, {"id": first, "reward": 1})
    assert r.status_code == 409 and "already has feedback" in r.json()["error"], r.text
    r = events.post(path, {"id": unique("never-issued"), "reward": 1})
    assert r.status_code == 404, r.text
    assert isinstance(r.json().get("error"), str) and r.json()["error"], r.text
    after = now_ms()

    reader = events.reader("feedback")
    records = reader.wait_for(lambda rs: len(rs) >= 3, "3 feedback events")
    # Feedback is stored before the answer: everything on the topic is read now.
    records = reader.read_all()
    got = [(r.event["id"], r.event["reward"], r.event.get("label", "<none>")) for r in records]
    assert got == [(first, 0.25, "<none>"), (second, 1.0, second_label), (own, 0.0, own_label + 1)]
    for r in records:
        assert (r.event["model"], r.event["version"]) == (MLP, "2"), json.dumps(r.event)
        assert before - 1 <= r.event["timestamp_ms"] <= after + 1, json.dumps(r.event)
    assert_keyed_by_model(records)

    # The inference events of the requests the feedback is about.
    inference = events.reader("inference").wait_ids([first, second, own])
    for rid in (first, second, own):
        assert inference[rid].event["version"] == "2"


# ------------------------------------------------------------------------------ decisions


def test_routing_decisions_and_committed_offsets(start_events_server, routing_repository):
    """Routed traffic and feedback lead to traffic decisions on the decisions topic (also at
    GET /api/v1/optimizer/decisions) whose posterior counts every reward once, and the
    optimiser's group commits the feedback offsets once its state covers them."""
    events = start_events_server(
        routing_repository,
        ["--route-model", MLP, "--optimizer-interval-ms", "100", "--checkpoint-secs", "1"],
    )
    # Until the optimiser's first pass sets a split, unpinned requests go to the newest
    # version unrouted; wait for it so every unpinned request below is routed.
    deadline = time.monotonic() + 10
    while not events.get("/api/v1/optimizer/state")["models"].get(MLP, {}).get("weights"):
        assert time.monotonic() < deadline, f"no traffic weights: {events.get('/api/v1/optimizer/state')}"
        time.sleep(0.05)

    answered = {}  # id -> (version, routed)
    rewards = {"1": [], "2": []}
    for _ in range(60):
        r = events.post(f"/v2/models/{MLP}/infer", mlp_body())
        assert r.status_code == 200, r.text
        rid, version = r.json()["id"], r.json()["model_version"]
        answered[rid] = (version, True)
        reward = 1.0 if version == "2" else 0.0
        rewards[version].append(reward)
        fb = events.post(f"/v2/models/{MLP}/feedback", {"id": rid, "reward": reward})
        assert (fb.status_code, fb.json()) == (200, {"accepted": 1}), fb.text
    r = events.post(f"/v2/models/{MLP}/versions/1/infer", mlp_body())
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
    answered[r.json()["id"]] = ("1", False)

    # Inference events: the version that answered, routed unless pinned.
    by_id = events.reader("inference").wait_ids(list(answered))
    for rid, (version, routed) in answered.items():
        event = by_id[rid].event
        assert (event["version"], event["routed"]) == (version, routed), json.dumps(event)

    feedback = events.reader("feedback").read_all()
    assert len(feedback) == 60
    assert_keyed_by_model(feedback)
    assert [r.event["reward"] for r in feedback if r.event["version"] == "1"] == rewards["1"]
    assert [r.event["reward"] for r in feedback if r.event["version"] == "2"] == rewards["2"]
    # Each feedback item is stored before its answer, one per produce: the watermarks are exact.
    feedback_ends = {p: high for p, high in events.reader("feedback").high_watermarks().items() if high > 0}
    read_ends = {r.partition: r.offset + 1 for r in feedback}
    assert feedback_ends == read_ends, f"high watermarks {feedback_ends}, events read up to {read_ends}"
    counted = {v: len(rs) for v, rs in rewards.items() if rs}

    # Decisions until one covers every reward (a decision or the checkpoint after the last).
    def covers_all(records: list[Record]) -> bool:
        return any(sum(a["count"] for a in r.event.get("arms", {}).values()) == 60 for r in records)

    decisions = events.reader("decisions").wait_for(covers_all, "a decision covering all 60 rewards")
    assert_keyed_by_model(decisions)
    for r in decisions:
        d = r.event
        where = json.dumps(d)
        assert (d["kind"], d["model"]) == ("traffic", MLP), where
        assert set(d["weights"]) == {"1", "2"}, where
        assert abs(sum(d["weights"].values()) - 1) < 1e-9, where
        assert set(d.get("arms", {})) <= {"1", "2"}, where
        for partition, offset in d.get("feedback_offsets", {}).items():
            assert offset <= feedback_ends.get(int(partition), 0), f"offset beyond the feedback topic's end: {where}"
    final = next(r.event for r in decisions if covers_all([r]))
    for version in ("1", "2"):
        arm = final["arms"].get(version, {"count": 0, "sum": 0.0})
        assert arm["count"] == counted.get(version, 0), f"version {version}: {json.dumps(final)}"
        assert arm["sum"] == pytest.approx(sum(rewards[version])), f"version {version}: {json.dumps(final)}"
    assert {int(p): o for p, o in final["feedback_offsets"].items()} == feedback_ends, json.dumps(final)

    # The API lists the same decisions as the topic, in order.
    deadline = time.monotonic() + 5
    while True:
        listed = events.get(f"/api/v1/optimizer/decisions?model={MLP}")["decisions"]
        on_topic = [r.event for r in events.reader("decisions").read_all()]
        if listed == on_topic or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for d in listed:
        assert_valid("decisions", d, "a decision listed by the API")
    assert [d["id"] for d in listed] == [d["id"] for d in on_topic]
    assert listed == on_topic

    # The optimiser's group committed up to the end of every feedback partition with data.
    deadline = time.monotonic() + 5
    while True:
        committed = committed_offsets(events.brokers, events.group, events.topics["feedback"], list(feedback_ends))
        if committed == feedback_ends or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert committed == feedback_ends, f"group {events.group} committed {committed}; feedback ends at {feedback_ends}"
