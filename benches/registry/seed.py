"""Seeds one MLflow-REST server with the benchmark's fixed data set, through the stock
MLflow client, and prints the ids the load phase needs as one JSON object.

Data (identical on every server; only generated ids differ):
  experiment "bench" with 200 runs "run-000".."run-199" (start_time ascending),
    each: 6 params, 5 metrics (acc, loss with a 10-step history, f1, precision, recall),
    3 tags, status FINISHED;  acc = 0.25 + 0.75 * ((i * 37) % 200) / 199, so 133 runs
    have acc > 0.5 (more than one page of 100).
  registered model "m" with 2 tags and 50 versions (v_i from run-i, 2 tags each),
    aliases champion -> 50, challenger -> 49, prod -> 10, staging -> 20.

usage: seed.py TRACKING_URI OUT.json   (runs are created by 8 client threads; start_time fixes
their order, so the data set is the same whatever the interleaving)
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

RUNS = 200
VERSIONS = 50
T0 = 1_700_000_000_000


def acc_of(i: int) -> float:
    return round(0.25 + 0.75 * ((i * 37) % RUNS) / (RUNS - 1), 6)


def main() -> None:
    uri = sys.argv[1]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = client.create_experiment("bench", tags={"purpose": "registry-bench"})

    def make_run(i: int) -> str:
        t = T0 + i * 1000
        run = client.create_run(
            exp_id, start_time=t, run_name=f"run-{i:03d}", tags={"team": f"t{i % 4}"}
        )
        rid = run.info.run_id
        acc = acc_of(i)
        metrics = [
            Metric("acc", acc, t + 1, 0),
            Metric("f1", round(acc * 0.9, 6), t + 1, 0),
            Metric("precision", round(acc * 0.95, 6), t + 1, 0),
            Metric("recall", round(acc * 0.85, 6), t + 1, 0),
        ] + [Metric("loss", round((1 - acc) * (10 - s) / 10 + 0.01, 6), t + 1 + s, s) for s in range(10)]
        params = [
            Param("lr", str(0.001 * (i % 10 + 1))),
            Param("batch_size", str(16 * (i % 4 + 1))),
            Param("optimizer", "adam" if i % 2 else "sgd"),
            Param("layers", str(2 + i % 5)),
            Param("dropout", str(0.1 * (i % 3))),
            Param("seed", str(i)),
        ]
        tags = [RunTag("stage", "sweep"), RunTag("idx", str(i))]
        client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        client.set_terminated(rid, "FINISHED", end_time=t + 500)
        return rid

    with ThreadPoolExecutor(8) as pool:
        run_ids = list(pool.map(make_run, range(RUNS)))

    client.create_registered_model("m", tags={"owner": "bench", "task": "cls"}, description="bench model")
    for v in range(1, VERSIONS + 1):
        rid = run_ids[v - 1]
        client.create_model_version(
            "m",
            source=f"runs:/{rid}/model",
            run_id=rid,
            tags={"acc": str(acc_of(v - 1)), "idx": str(v)},
            description=f"version {v}",
        )
    for alias, version in (("champion", VERSIONS), ("challenger", VERSIONS - 1), ("prod", 10), ("staging", 20)):
        client.set_registered_model_alias("m", alias, str(version))

    with open(sys.argv[2], "w") as f:
        json.dump({"experiment_id": exp_id, "run_id": run_ids[100], "run_ids": run_ids}, f)


if __name__ == "__main__":
    main()
