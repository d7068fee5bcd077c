"""Driver of benches/registry_bench.sh: with both servers already started and seeded, runs
(a) the wrk load on the hot endpoints, (b) the MLflow client workload, (c) the 1 GiB artifact
transfer with RSS sampling, and writes everything to one JSON file (report.py renders it).

usage: bench.py --config CONFIG.json --out RESULTS.json
CONFIG: {"tmp": DIR, "wrk_duration": "10s", "wrk_threads": 2, "wrk_connections": 16,
         "artifact_mib": 1024,
         "servers": {"nexus": {"url", "pid", "seed": {...}, "artifact_dir"},
                     "mlflow": {...}}}
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ("nexus", "mlflow")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- (a) hot endpoints

def endpoints(seed):
    exp = seed["experiment_id"]
    return [
        {
            "name": "runs/get",
            "method": "GET",
            "path": "/api/2.0/mlflow/runs/get?run_id=" + seed["run_id"],
        },
        {
            "name": "runs/search",
            "method": "POST",
            "path": "/api/2.0/mlflow/runs/search",
            "body": json.dumps({"experiment_ids": [exp], "filter": "metrics.acc > 0.5", "max_results": 100}),
        },
        {
            "name": "model-versions/search",
            "method": "GET",
            "path": "/api/2.0/mlflow/model-versions/search?" + urllib.parse.urlencode({"filter": "name='m'"}),
        },
        {
            "name": "registered-models/alias",
            "method": "GET",
            "path": "/api/2.0/mlflow/registered-models/alias?name=m&alias=champion",
        },
    ]


def fetch(url, ep):
    data = ep.get("body")
    req = urllib.request.Request(
        url + ep["path"],
        data=data.encode() if data else None,
        method=ep["method"],
        headers={"Content-Type": "application/json"} if data else {},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return r.status, raw, json.loads(raw)


def summarize(name, body):
    """What must match between the servers for the comparison to be fair."""
    if name == "runs/get":
        d = body["run"]["data"]
        user_tags = [t for t in d.get("tags", []) if not t["key"].startswith("mlflow.")]
        return {
            "results": 1,
            "run_name": body["run"]["info"]["run_name"],
            "params": sorted((p["key"], p["value"]) for p in d.get("params", [])),
            "metrics": sorted((m["key"], m["value"], m["step"]) for m in d.get("metrics", [])),
            "user_tags": sorted((t["key"], t["value"]) for t in user_tags),
        }
    if name == "runs/search":
        runs = body.get("runs", [])
        return {
            "results": len(runs),
            "run_names": [r["info"]["run_name"] for r in runs],
            "has_next_page": bool(body.get("next_page_token")),
        }
    if name == "model-versions/search":
        mvs = body.get("model_versions", [])
        return {"results": len(mvs), "versions": sorted(int(m["version"]) for m in mvs)}
    if name == "registered-models/alias":
        return {"results": 1, "version": body["model_version"]["version"]}
    raise ValueError(name)


def check_endpoints(cfg):
    """Both servers answer 200 with the same results; returns per endpoint the counts."""
    out = {}
    for ep_name in [e["name"] for e in endpoints(cfg["servers"]["nexus"]["seed"])]:
        row = {}
        sums = {}
        for s in ORDER:
            srv = cfg["servers"][s]
            ep = next(e for e in endpoints(srv["seed"]) if e["name"] == ep_name)
            status, raw, body = fetch(srv["url"], ep)
            sums[s] = summarize(ep_name, body)
            row[s] = {"status": status, "results": sums[s]["results"], "bytes": len(raw)}
        same = sums["nexus"] == sums["mlflow"]
        row["same_results"] = same
        if not same or any(row[s]["status"] != 200 for s in ORDER):
            for s in ORDER:
                log(ep_name, s, json.dumps(sums[s])[:2000])
            raise SystemExit(f"FAIR-CHECK FAILED for {ep_name}: the servers disagree (see above)")
        log(f"check {ep_name}: 200 on both, {row['nexus']['results']} results, identical content")
        out[ep_name] = row
    return out


def run_wrk(cfg, url, ep, duration):
    env = dict(os.environ, WRK_METHOD=ep["method"], WRK_BODY=ep.get("body", ""))
    cmd = [
        "wrk", f"-t{cfg['wrk_threads']}", f"-c{cfg['wrk_connections']}", f"-d{duration}",
        "--timeout", "10s", "-s", os.path.join(HERE, "wrk_json.lua"), url + ep["path"],
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    line = next(l for l in p.stdout.splitlines() if l.startswith("WRKJSON "))
    res = json.loads(line[len("WRKJSON "):])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["cmd"] = " ".join(cmd)
    res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return res


def phase_a(cfg):
    results = {"check": check_endpoints(cfg), "wrk": {}}
    for ep_name in results["check"]:
        results["wrk"][ep_name] = {}
        for s in ORDER:
            srv = cfg["servers"][s]
            ep = next(e for e in endpoints(srv["seed"]) if e["name"] == ep_name)
            run_wrk(cfg, srv["url"], ep, "2s")  # warm-up, not recorded
            la = loadavg()
            res = run_wrk(cfg, srv["url"], ep, cfg["wrk_duration"])
            res["loadavg_before"] = la
            results["wrk"][ep_name][s] = res
            log(f"wrk {ep_name:24s} {s:6s} {res['rps']:9.1f} req/s  p50 {res['lat_p50_us']/1000:8.2f} ms"
                f"  p99 {res['lat_p99_us']/1000:8.2f} ms  errors {res['errors']}  (load {la})")
    # Where the time of a search goes: one connection, page size 1 / 10 / 100.
    results["scaling"] = {}
    for n in (1, 10, 100):
        results["scaling"][n] = {}
        for s in ORDER:
            srv = cfg["servers"][s]
            ep = dict(next(e for e in endpoints(srv["seed"]) if e["name"] == "runs/search"))
            body = json.loads(ep["body"])
            body["max_results"] = n
            ep["body"] = json.dumps(body)
            res = run_wrk(dict(cfg, wrk_threads=1, wrk_connections=1), srv["url"], ep, "3s")
            results["scaling"][n][s] = res
            log(f"runs/search c=1 max_results={n:3d} {s:6s} {res['rps']:8.1f} req/s mean {res['lat_mean_us']/1000:.2f} ms")
    return results


# ---------------------------------------------------------------- (b) client workload

def phase_b(cfg):
    out = {}
    for s in ORDER:
        srv = cfg["servers"][s]
        la = loadavg()
        res_file = os.path.join(cfg["tmp"], f"workload-{s}.json")
        p = subprocess.run(
            [sys.executable, os.path.join(HERE, "workload.py"), srv["url"], srv["seed"]["experiment_id"], res_file],
            capture_output=True, text=True,
        )
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-5000:])
            raise SystemExit(f"workload failed against {s}")
        with open(res_file) as f:
            res = json.load(f)
        res["loadavg_before"] = la
        out[s] = res
        log(f"workload {s}: {res['total_s']:.2f} s  {json.dumps(res['check'])}")
    if out["nexus"]["check"] != out["mlflow"]["check"]:
        raise SystemExit(f"workload results differ: {out['nexus']['check']} vs {out['mlflow']['check']}")
    return out


# ---------------------------------------------------------------- (c) artifacts

def tree_pids(root):
    """root and all its descendants (scanned once: the servers' worker sets are fixed)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
                parents[int(d)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    pids, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        pids.update(kids)
        frontier.extend(kids)
    return sorted(pids)


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples VmRSS of a process tree every 20 ms: peak of the tree's sum and per process."""

    def __init__(self, pids):
        self.pids = pids
        self.peak_sum = 0
        self.peak_proc = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            vals = [status_kb(p, "VmRSS") for p in self.pids]
            self.peak_sum = max(self.peak_sum, sum(vals))
            self.peak_proc = max(self.peak_proc, max(vals))
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def cpu_s(pids):
    """User + system CPU seconds used so far by these processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            pass
    return total / tick


def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]} {p.stdout[-500:]}")
    return dt, p.stdout


def phase_c(cfg):
    tmp = cfg["tmp"]
    mib = cfg["artifact_mib"]
    size = mib << 20
    src = os.path.join(tmp, "big.bin")
    log(f"writing {mib} MiB of random data to {src}")
    subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=open(src, "wb"), check=True)
    subprocess.run(["sync"], check=True)
    out = {"bytes": size, "file": src, "baseline": {}, "servers": {}}

    # Baseline: plain cp on the same disk (page cache, as the server writes land there too),
    # and cp + fsync of the copy (Nexus fsyncs uploads before making them visible).
    cps = []
    for i in range(2):
        dst = os.path.join(tmp, f"cp{i}.bin")
        subprocess.run(["sync"], check=True)
        dt, _ = timed(["cp", src, dst])
        cps.append(dt)
        os.remove(dst)
    subprocess.run(["sync"], check=True)
    dst = os.path.join(tmp, "cpsync.bin")
    dt_sync, _ = timed(["sh", "-c", f"cp '{src}' '{dst}' && sync '{dst}'"])
    os.remove(dst)
    out["baseline"] = {"cp_s": cps, "cp_best_s": min(cps), "cp_fsync_s": dt_sync}
    log(f"cp: {[round(c, 3) for c in cps]} s, cp+fsync {dt_sync:.3f} s")

    for s in ORDER:
        srv = cfg["servers"][s]
        pids = tree_pids(srv["pid"])
        url = srv["url"] + f"/api/2.0/mlflow-artifacts/artifacts/bench/{s}/big.bin"
        res = {"pids": pids, "url": url}
        res["rss_before_kb"] = sum(status_kb(p, "VmRSS") for p in pids)
        res["hwm_before_kb"] = {p: status_kb(p, "VmHWM") for p in pids}
        subprocess.run(["sync"], check=True)
        res["loadavg_before"] = loadavg()
        c0 = cpu_s(pids)
        with RssSampler(pids) as smp:
            dt, code = timed(["curl", "-sS", "-f", "-X", "PUT", "-H", "Expect:", "-H",
                              "Content-Type: application/octet-stream", "-T", src, "-o", "/dev/null",
                              "-w", "%{http_code}", url])
        res["upload_s"], res["upload_http"] = dt, code
        res["upload_cpu_s"] = cpu_s(pids) - c0
        res["upload_rss_peak_kb"], res["upload_rss_peak_proc_kb"] = smp.peak_sum, smp.peak_proc
        res["upload_samples"] = smp.samples
        log(f"{s} upload: {dt:.3f} s ({size / dt / 2**20:.0f} MiB/s, server CPU {res['upload_cpu_s']:.2f} s), RSS tree {res['rss_before_kb']//1024} -> peak "
            f"{smp.peak_sum//1024} MiB ({smp.samples} samples)")
        dl = os.path.join(tmp, f"dl-{s}.bin")
        subprocess.run(["sync"], check=True)
        rss_mid = sum(status_kb(p, "VmRSS") for p in pids)
        c0 = cpu_s(pids)
        with RssSampler(pids) as smp:
            dt, code = timed(["curl", "-sS", "-f", "-o", dl, "-w", "%{http_code}", url])
        res["download_s"], res["download_http"] = dt, code
        res["download_cpu_s"] = cpu_s(pids) - c0
        res["rss_before_download_kb"] = rss_mid
        res["download_rss_peak_kb"], res["download_rss_peak_proc_kb"] = smp.peak_sum, smp.peak_proc
        res["download_samples"] = smp.samples
        res["hwm_after_kb"] = {p: status_kb(p, "VmHWM") for p in pids}
        res["rss_after_kb"] = sum(status_kb(p, "VmRSS") for p in pids)
        log(f"{s} download: {dt:.3f} s ({size / dt / 2**20:.0f} MiB/s, server CPU {res['download_cpu_s']:.2f} s), RSS tree peak {smp.peak_sum//1024} MiB")
        same = subprocess.run(["cmp", "-s", src, dl]).returncode == 0
        res["download_identical"] = same
        if not same:
            raise SystemExit(f"{s}: downloaded artifact differs from the upload")
        os.remove(dl)
        out["servers"][s] = res
    os.remove(src)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--phases", default="abc")
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    results = {"config": cfg, "loadavg": {"start": loadavg()}}
    t0 = time.time()
    if "a" in args.phases:
        log("(a) hot endpoints under wrk")
        results["a"] = phase_a(cfg)
        results["loadavg"]["after_a"] = loadavg()
    if "b" in args.phases:
        log("(b) MLflow client workload")
        results["b"] = phase_b(cfg)
        results["loadavg"]["after_b"] = loadavg()
    if "c" in args.phases:
        log("(c) 1 GiB artifact upload/download")
        results["c"] = phase_c(cfg)
        results["loadavg"]["after_c"] = loadavg()
    results["elapsed_s"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
