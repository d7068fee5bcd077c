"""libtorch in-process, the floor for benches/torch_compare.sh: Python torch calls the loaded
TorchScript module with one row, back to back, on one intra-op thread, as Nexus and
TorchServe run it (torch.inference_mode(), torch.set_num_threads(1)).

    python torch_inprocess.py --model model.pt --features 64 --warmup 2 --duration 8 --output DIR/libtorch.json

Writes the result in `nexus bench run`'s JSON layout (one level, concurrency 1). Each call is
timed with perf_counter_ns around the forward call only; the Python call itself (a few µs
through pybind11) is included, so the floor is slightly above libtorch's C++ cost.

Only c=1: the servers run one instance with one intra-op thread, so one forward call at a time
is the most any of them can execute, and this loop's rows/s is their ceiling at every
concurrency. Sixteen Python threads calling the module would measure GIL hand-offs, not
libtorch.
"""

import argparse
import datetime
import json
import os
import platform
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--output", required=True)
    a = p.parse_args()

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    module = torch.jit.load(a.model, map_location="cpu")
    module.eval()
    x = torch.randn(1, a.features)
    clock = time.perf_counter_ns
    latencies = []
    with torch.inference_mode():
        end = time.monotonic() + a.warmup
        while time.monotonic() < end:
            module(x)
        start = clock()
        stop = start + int(a.duration * 1e9)
        now = start
        while now < stop:
            t0 = clock()
            module(x)
            now = clock()
            latencies.append(now - t0)
        elapsed = (now - start) / 1e9

    latencies.sort()
    n = len(latencies)

    def pct(q):  # nearest-rank percentile, in µs
        return round(latencies[min(n - 1, max(0, int(q * n + 0.5) - 1))] / 1000)

    level = {
        "concurrency": 1,
        "requests": n,
        "errors": 0,
        "seconds": elapsed,
        "throughput": n / elapsed,
        "rows_per_second": n / elapsed,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "mean_us": sum(latencies) / n / 1000,
    }
    result = {
        "label": "libtorch-inprocess",
        "protocol": "in-process",
        "model": "mlp",
        "batch": 1,
        "target": f"torch {torch.__version__} in-process (Python {platform.python_version()})",
        "levels": [level],
        "machine": f"{os.cpu_count()} cores",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with open(a.output, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"libtorch in-process: {level['throughput']:,.0f} calls/s, p50 {level['p50_us']} µs, "
        f"p99 {level['p99_us']} µs ({n} calls in {elapsed:.1f} s)"
    )


if __name__ == "__main__":
    main()
