"""The end-to-end MLflow client workload of benches/registry_bench.sh, run against one
server. Uses only the stock `mlflow` client (MlflowClient, as a user would); every phase is
timed with perf_counter inside this process, so interpreter start-up and imports are not
counted. Prints one JSON object: seconds per phase and in total, and the operation counts.

usage: workload.py TRACKING_URI SEEDED_EXPERIMENT_ID OUT.json
"""

import json
import os
import sys
import tempfile
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

VERSIONS = 200
ALIAS_OPS = 100       # set_registered_model_alias
TAG_OPS = 100         # set_model_version_tag
VERSION_SEARCHES = 25  # search_model_versions("name='wl'")  -> 200 versions each
RUN_SEARCHES = 25      # search_runs(seeded exp, "metrics.acc > 0.5", max_results=100)
BATCHES = 5            # log_batch of 100 metrics each
BATCH_SIZE = 100
SINGLE_METRICS = 500   # log_metric one by one
ARTIFACTS = 50         # 4 KiB files logged one by one, then downloaded one by one


def main() -> None:
    uri, seeded_exp = sys.argv[1], sys.argv[2]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    phases = {}

    def phase(name):
        class _P:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                phases[name] = time.perf_counter() - self.t

        return _P()

    t_all = time.perf_counter()
    with phase("setup: experiment + run"):
        exp = client.create_experiment("workload")
        run = client.create_run(exp, run_name="workload")
        rid = run.info.run_id
    with phase(f"create model + {VERSIONS} versions"):
        client.create_registered_model("wl")
        for _ in range(VERSIONS):
            client.create_model_version("wl", source=f"runs:/{rid}/model", run_id=rid)
    with phase(f"{ALIAS_OPS} alias + {TAG_OPS} tag ops"):
        for k in range(ALIAS_OPS):
            client.set_registered_model_alias("wl", f"a{k % 10}", str(k + 1))
        for k in range(TAG_OPS):
            client.set_model_version_tag("wl", str(k + 1), "checked", str(k))
    n_versions = n_runs = 0
    with phase(f"{VERSION_SEARCHES + RUN_SEARCHES} searches"):
        for _ in range(VERSION_SEARCHES):
            n_versions = len(client.search_model_versions("name='wl'"))
        for _ in range(RUN_SEARCHES):
            n_runs = len(client.search_runs([seeded_exp], "metrics.acc > 0.5", max_results=100))
    with phase(f"{BATCHES * BATCH_SIZE} metrics in {BATCHES} batches"):
        step = 0
        for b in range(BATCHES):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{j % 10}", float(j), now, step + j) for j in range(BATCH_SIZE)]
            client.log_batch(rid, metrics=metrics)
            step += BATCH_SIZE
    with phase(f"{SINGLE_METRICS} metrics singly"):
        for j in range(SINGLE_METRICS):
            client.log_metric(rid, "single", float(j), step=j)
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "weights.bin")
        with open(source, "wb") as f:
            f.write(os.urandom(4096))
        with phase(f"{ARTIFACTS} artifact uploads (4 KiB)"):
            for k in range(ARTIFACTS):
                client.log_artifact(rid, source, artifact_path=f"files/{k}")
        with phase(f"{ARTIFACTS} artifact downloads (4 KiB)"):
            for k in range(ARTIFACTS):
                client.download_artifacts(rid, f"files/{k}/weights.bin", os.path.join(scratch, str(k)))
    client.set_terminated(rid)
    total = time.perf_counter() - t_all

    # Sanity: both servers must have done the same work.
    check = {
        "versions_found": n_versions,
        "runs_found": n_runs,
        "single_history": len(client.get_metric_history(rid, "single")),
        "alias_a9": client.get_model_version_by_alias("wl", "a9").version,
        "artifact_folders": len(client.list_artifacts(rid, "files")),
    }
    with open(sys.argv[3], "w") as f:
        json.dump({"total_s": total, "phases_s": phases, "check": check}, f)


if __name__ == "__main__":
    main()
