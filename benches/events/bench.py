#!/usr/bin/env python3
"""What inference events cost serving: events off vs on at 100% sampling, in one run.

    .venv/bin/python benches/events/bench.py [--duration 8] [--rounds 3] [--concurrency 1,16]
        [--nexus target/release/nexus] [--json OUT]

Target (the issue): throughput with inference events on, at 100% sampling (inputs and outputs
in every event), to Kafka, costs at most 5% against events off.

Three `nexus serve` processes run side by side on benches/models (small_mlp: a 16->32->8 MLP,
batch 1 per request, so per-request overhead dominates and any cost of events shows):

    off      --no-events: no request ids, no events, no optimiser
    memory   --log-sample-rate 1, the in-process bus (`nexus up`'s default)
    kafka    --log-sample-rate 1 --kafka-brokers <tansu>: every event serialized and produced
             through rdkafka to a tansu broker (memory storage) on this machine

Each round runs `nexus bench run` (HTTP, binary tensors, closed loop) against each server in
turn, rotating the order between rounds so drift on a noisy machine hits every variant; the
table reports the median over rounds of throughput and latency, and each variant's cost
relative to `off`. The broker runs on the same 2 cores as the server and the load generator:
its CPU time (read from /proc) is reported, because on one machine every cycle it spends is a
cycle serving does not get. Events that could not be delivered are read from each server's
`nexus_events_dropped_total`; the published count must match the requests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.05


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} not ready after 60 s")


def tansu_binary() -> Path:
    path = os.environ.get("NEXUS_TANSU") or str(
        Path(os.environ.get("NEXUS_CACHE", Path.home() / ".cache" / "nexus")) / "tansu" / "bin" / "tansu"
    )
    if not Path(path).is_file():
        sys.exit(f"tansu not found at {path}: run scripts/install-tansu.sh")
    return Path(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--nexus", type=Path, default=ROOT / "target" / "release" / "nexus")
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args()
    if not args.nexus.is_file():
        sys.exit(f"{args.nexus} not found: cargo build --release --bin nexus")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="nexus-events-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        (kafka_port,) = free_ports(1)
        tansu = subprocess.Popen(
            [str(tansu_binary()), "broker",
             "--listener-url", f"tcp://127.0.0.1:{kafka_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{kafka_port}",
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=open(work / "tansu.log", "wb"),
        )  # fmt: skip
        procs.append(tansu)
        time.sleep(0.5)
        variants = {
            "off": ["--no-events"],
            "memory": ["--log-sample-rate", "1"],
            "kafka": ["--log-sample-rate", "1", "--kafka-brokers", f"127.0.0.1:{kafka_port}"],
        }
        servers = {}
        for name, extra in variants.items():
            http, grpc, metrics = free_ports(3)
            cmd = [
                str(args.nexus), "serve", "--model-repository", str(ROOT / "benches" / "models"),
                "--load-model", "small_mlp", "--model-control-mode", "explicit",
                "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                *extra,
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb"))
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{http}/v2/models/small_mlp/ready", proc, f"nexus ({name})")
            servers[name] = {"http": http, "metrics": f"http://127.0.0.1:{metrics}/metrics"}

        runs: dict[str, list[dict]] = {name: [] for name in variants}
        tansu_cpu = 0.0
        requests_to_kafka = 0
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                label = f"{name}-r{r}"
                before = cpu_seconds(tansu.pid)
                subprocess.run(
                    [str(args.nexus), "bench", "run", "--model", "small_mlp", "--protocol", "http-binary",
                     "--http-url", f"http://127.0.0.1:{servers[name]['http']}",
                     "--concurrency", ",".join(map(str, levels)),
                     "--warmup-secs", str(args.warmup), "--duration-secs", str(args.duration),
                     "--label", label, "--output", str(work / "runs")],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                result = json.loads((work / "runs" / f"{label}.json").read_text())
                runs[name].append(result)
                if name == "kafka":
                    tansu_cpu += cpu_seconds(tansu.pid) - before
                    requests_to_kafka += sum(l["requests"] for l in result["levels"])
                print(f"round {r + 1}/{args.rounds} {name}: "
                      + ", ".join(f"c={l['concurrency']} {l['throughput']:,.0f}/s" for l in result["levels"]),
                      file=sys.stderr)  # fmt: skip
        kafka = servers["kafka"]["metrics"]
        time.sleep(2)  # let the producer deliver what is still queued
        published = metric(kafka, "nexus_events_published_total")
        dropped = metric(kafka, "nexus_events_dropped_total")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def median(name: str, c: int, key: str) -> float:
        return statistics.median(next(l[key] for l in run["levels"] if l["concurrency"] == c) for run in runs[name])

    lines = [
        f"Command: `bash benches/events_bench.sh --rounds {args.rounds} --duration {args.duration:g}` "
        f"(small_mlp, HTTP binary, medians of {args.rounds} rotated rounds, {args.duration:g} s per level).",
        "",
        "| events | c | infer/s | p50 µs | p99 µs | throughput vs off | target ≤ 5% cost |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    summary = {}
    for c in levels:
        base = median("off", c, "throughput")
        for name in variants:
            tput = median(name, c, "throughput")
            cost = 1 - tput / base
            summary[f"{name}-c{c}"] = {"throughput": tput, "cost": cost}
            verdict = "—" if name == "off" else ("PASS" if cost <= TARGET else "MISS") + f" ({cost * 100:+.1f}%)"
            lines.append(
                f"| {name} | {c} | {tput:,.0f} | {median(name, c, 'p50_us'):.0f} | {median(name, c, 'p99_us'):.0f} "
                f"| {tput / base:.3f} | {verdict} |"
            )
    lines += [
        "",
        f"Kafka server: {published:,.0f} events published, {dropped:,.0f} dropped "
        f"({requests_to_kafka:,} measured requests plus warm-ups); tansu used {tansu_cpu:.1f} CPU-s "
        f"during the kafka runs ({tansu_cpu / max(requests_to_kafka, 1) * 1e6:.1f} µs per measured request).",
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
