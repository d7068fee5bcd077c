// The web console at scale: 10,000 MLflow runs in one experiment and 10,000 pipeline runs,
// against a real `nexus up` (release build). Measures what the console's pages do: the
// server's time for each page of the runs lists (first page, every page walked by token to
// the last, a filtered search), and, in headless Chromium, the time from navigation to the
// first page of rows drawn. Writes a Markdown table to stdout.
//
//   node benches/console_scale.mjs        (RUNS=10000; NEXUS_BIN=target/release/nexus)
//
// MLflow runs are made through the REST API (runs/create and log-batch, 8 at a time). The
// pipeline runs are one real run of a one-step pipeline, then copies of its row written into
// the registry database (sqlite) beside it: 10,000 submissions would measure process spawning,
// not the list.
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Nexus, REPO, browser } from "../tests/console/nexus.mjs";

process.env.NEXUS_BIN ??= join(REPO, "target/release/nexus");
const RUNS = Number(process.env.RUNS ?? 10_000);
const PAGE = 50; // the console's page size

const nexus = await Nexus.start();
const b = await browser();
try {
  const call = async (method, path, body) => {
    const r = await fetch(`${nexus.url}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return JSON.parse(text || "{}");
  };

  // --- seeding ---------------------------------------------------------------------------
  const seedStarted = performance.now();
  const { experiment_id: experiment } = await call("POST", "/api/2.0/mlflow/experiments/create", { name: "scale" });
  let next = 0;
  const worker = async () => {
    while (next < RUNS) {
      const i = next++;
      const { run } = await call("POST", "/api/2.0/mlflow/runs/create", {
        experiment_id: experiment,
        run_name: `run-${i}`,
        start_time: Date.now(),
      });
      await call("POST", "/api/2.0/mlflow/runs/log-batch", {
        run_id: run.info.run_id,
        params: [{ key: "lr", value: String((i % 10) / 100) }],
        metrics: [{ key: "accuracy", value: (i % 1000) / 1000, timestamp: Date.now(), step: 0 }],
      });
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  const mlflowSeed = (performance.now() - seedStarted) / 1000;

  const spec = "name: scale\nsteps:\n  - name: only\n    command: [\"true\"]\n";
  const { run: first } = await call("POST", "/api/v1/pipelines/runs", { spec });
  for (;;) {
    const { run } = await call("GET", `/api/v1/pipelines/runs/${first.id}`);
    if (run.status === "SUCCEEDED") break;
    if (!["PENDING", "RUNNING"].includes(run.status)) throw new Error(`seed run ${run.status}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await nexus.python(`
import sqlite3, sys, uuid
db = sqlite3.connect(sys.argv[1], timeout=30)
with db:
    row = db.execute("SELECT * FROM pipeline_runs WHERE id = ?", (sys.argv[2],)).fetchone()
    names = [d[0] for d in db.execute("SELECT * FROM pipeline_runs LIMIT 0").description]
    at = {n: i for i, n in enumerate(names)}
    rows = []
    for i in range(int(sys.argv[3]) - 1):
        r = list(row)
        r[at["id"]] = uuid.uuid4().hex
        r[at["name"]] = f"scale-{i}" if i % 2 else f"nightly-{i}"
        r[at["created_at"]] = row[at["created_at"]] - (i + 1) * 1000
        if i % 10 == 0:
            r[at["status"]] = "FAILED"
        rows.append(r)
    db.executemany(f"INSERT INTO pipeline_runs VALUES ({','.join('?' * len(names))})", rows)
`.replace("sys.argv[1]", JSON.stringify(join(nexus.data, "registry.db")))
    .replace("sys.argv[2]", JSON.stringify(first.id))
    .replace("int(sys.argv[3])", String(RUNS)));

  // --- the server's time per page ----------------------------------------------------------
  const timed = async (f) => {
    const t = performance.now();
    const out = await f();
    return [performance.now() - t, out];
  };
  const walk = async (page) => {
    const times = [];
    let token;
    let rows = 0;
    do {
      const [ms, out] = await timed(() => page(token));
      times.push(ms);
      rows += out.rows;
      token = out.token;
    } while (token);
    const first = times[0];
    times.sort((a, b) => a - b);
    return { pages: times.length, rows, first, median: times[times.length >> 1], max: times[times.length - 1] };
  };
  const searchRuns = (filter) => async (token) => {
    const out = await call("POST", "/api/2.0/mlflow/runs/search", {
      experiment_ids: [experiment],
      filter,
      order_by: ["attributes.start_time DESC"],
      max_results: PAGE,
      page_token: token,
    });
    return { rows: (out.runs ?? []).length, token: out.next_page_token };
  };
  const listPipelines = (query) => async (token) => {
    const q = new URLSearchParams({ limit: String(PAGE), ...query, ...(token ? { page_token: token } : {}) });
    const out = await call("GET", `/api/v1/pipelines/runs?${q}`);
    return { rows: out.runs.length, token: out.next_page_token };
  };
  const lists = [
    ["MLflow runs/search, all runs", await walk(searchRuns(""))],
    ["MLflow runs/search, `metrics.accuracy > 0.9`", await walk(searchRuns("metrics.accuracy > 0.9"))],
    ["pipelines runs, all", await walk(listPipelines({}))],
    ["pipelines runs, `status=FAILED`", await walk(listPipelines({ status: "FAILED" }))],
    ["pipelines runs, `name=nightly`", await walk(listPipelines({ name: "nightly" }))],
  ];

  // --- the browser: navigation to the first page of rows drawn -----------------------------
  const { page } = b;
  const drawn = async (hash, rows) => {
    await page.goto("about:blank");
    const t = performance.now();
    await page.goto(`${nexus.url}/#${hash}`);
    await page.locator(rows).nth(PAGE - 1).waitFor({ timeout: 60_000 });
    return performance.now() - t;
  };
  const pages = [];
  for (const [what, hash, rows] of [
    ["Experiment page (runs table)", `/experiments/${experiment}`, "[data-testid=runs] tbody tr"],
    ["Pipelines page", "/pipelines", "[data-testid=pipeline-runs] tbody tr"],
  ]) {
    const times = [];
    for (let i = 0; i < 5; i++) times.push(await drawn(hash, rows));
    times.sort((a, b) => a - b);
    pages.push([what, times[2], times[4]]);
  }

  const f = (ms) => ms.toFixed(1);
  console.log(`RUNS=${RUNS}: ${RUNS} MLflow runs seeded in ${mlflowSeed.toFixed(1)} s through the REST API; ${RUNS} pipeline runs.\n`);
  console.log("| list (page size 50) | pages walked | rows | first page ms | median page ms | slowest page ms |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const [what, w] of lists) console.log(`| ${what} | ${w.pages} | ${w.rows} | ${f(w.first)} | ${f(w.median)} | ${f(w.max)} |`);
  console.log("\n| page in Chromium | median of 5, ms to 50 rows drawn | slowest of 5 |");
  console.log("|---|---:|---:|");
  for (const [what, median, max] of pages) console.log(`| ${what} | ${f(median)} | ${f(max)} |`);
} finally {
  await b.instance.close();
  await nexus.stop();
}
