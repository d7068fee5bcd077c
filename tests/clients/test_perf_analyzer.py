"""perf_analyzer, the load generator Triton users measure servers with, against Nexus.

It drives the standard endpoints its own way (server and model metadata, model config, infer,
the statistics extension before and after each window), so a missing or off-spec endpoint
shows up as an error here before it does in a user's benchmark. scripts/install-perf-analyzer.sh
puts it in ${NEXUS_CACHE:-~/.cache/nexus}/perf-analyzer-2.51.0/ (scripts/test.sh runs that);
NEXUS_PERF_ANALYZER names another binary.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("NEXUS_CACHE") or Path.home() / ".cache" / "nexus")
PERF_ANALYZER = Path(
    os.environ.get("NEXUS_PERF_ANALYZER") or CACHE / "perf-analyzer-2.51.0" / "bin" / "perf_analyzer"
)

# (perf_analyzer -i, extra flags): HTTP sends binary tensors unless told to use JSON.
MODES = {
    "http-binary": ("http", []),
    "http-json": ("http", ["--input-tensor-format", "json", "--output-tensor-format", "json"]),
    "grpc": ("grpc", []),
    # Tensors in system shared memory regions it creates under /dev/shm and registers.
    "http-shm": ("http", ["--shared-memory", "system", "--output-shared-memory-size", "1024"]),
    "grpc-shm": ("grpc", ["--shared-memory", "system", "--output-shared-memory-size", "1024"]),
}


@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_measures_nexus(server, mode, tmp_path):
    if not PERF_ANALYZER.is_file():
        pytest.skip(f"perf_analyzer is not installed at {PERF_ANALYZER}: run bash scripts/install-perf-analyzer.sh")
    protocol, flags = MODES[mode]
    report = tmp_path / "report.csv"
    cmd = [
        str(PERF_ANALYZER),
        "-m", "simple",  # two INT32 [16] inputs, max_batch_size 8: random data, batch 1
        "-u", server.http_url if protocol == "http" else server.grpc_url,
        "-i", protocol,
        "--concurrency-range", "4",
        # One window of a fixed number of requests (no stability search): a few seconds
        # even on a debug build, and deterministic in length.
        "--request-count", "400",
        "-f", str(report),
        *flags,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}"
    assert "error" not in output.lower(), output
    (row,) = list(csv.DictReader(report.open()))
    assert int(row["Concurrency"]) == 4, row
    assert float(row["Inferences/Second"]) > 0, output
