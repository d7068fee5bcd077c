// The web console in a real browser (Debian's headless Chromium, driven by playwright-core)
// against a real `nexus up` on the example models: the MLflow client's printed links, the
// metric chart's drawn points, an alias move and the serving side's hot swap, the example
// pipeline's DAG reaching SUCCEEDED with its step logs, a KFP pipeline's loops and
// conditions, a log streamed as it is written, and live serving figures. Screenshots go to
// target/console-screenshots/.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, mkdtempSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nexus, REPO, browser, eventually } from "./nexus.mjs";

/** Served from the registry by this test's server, following its `champion` alias. */
const SWAPPED = "console-swap";
/** Served as two versions side by side (`champion`, `challenger`), traffic split by the optimiser. */
const ROUTED = "console-route";
/** The p99 target the optimiser tunes batching to, in milliseconds. */
const SLO_MS = 50;

describe("the console against nexus up", { timeout: 900_000 }, () => {
  let nexus;
  let b;
  before(async () => {
    nexus = await Nexus.start([
      "--model", `models:/${SWAPPED}@champion`,
      "--model", `models:/${ROUTED}@champion`,
      "--model", `models:/${ROUTED}@challenger`,
      "--registry-poll-secs", "1",
      "--route-model", ROUTED,
      "--latency-slo-ms", String(SLO_MS),
      "--optimizer-interval-ms", "300",
    ]); // prettier-ignore
    b = await browser();
  });
  after(async () => {
    await b?.instance.close();
    await nexus?.stop();
  });

  test("the page and its assets load, with cache rules and content types", async () => {
    const index = await fetch(`${nexus.url}/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get("content-type"), /text\/html/);
    assert.equal(index.headers.get("cache-control"), "no-cache");
    const html = await index.text();
    const script = html.match(/src="(\/assets\/[^"]+\.js)"/)[1];
    const asset = await fetch(`${nexus.url}${script}`);
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get("content-type"), /javascript/);
    assert.match(asset.headers.get("cache-control"), /immutable/);
  });

  test("the MLflow client's printed links open the experiment and the run, whose chart draws the logged points", async () => {
    const { page, shot } = b;
    const printed = await nexus.python(
      `
import mlflow
mlflow.set_experiment("console-demo")
for i, lr in enumerate([0.1, 0.01, 0.001]):
    with mlflow.start_run(run_name=f"run-{i}"):
        mlflow.log_param("lr", lr)
        mlflow.log_param("layers", 2 + i)
        for step in range(6):
            mlflow.log_metric("loss", round(1.0 / (step + 1 + i), 4), step=step)
        mlflow.log_metric("accuracy", 0.8 + 0.05 * i)
        mlflow.set_tag("team", "console")
        mlflow.log_text("hello from run %d" % i, "notes/readme.txt")
`,
      { PYTHONIOENCODING: "utf-8" },
    );
    const runLinks = [...printed.matchAll(/View run (run-\d) at: (\S+)/g)].map((m) => ({ name: m[1], url: m[2] }));
    const experimentLink = printed.match(/View experiment at: (\S+)/)[1];
    assert.equal(runLinks.length, 3, printed);
    assert.ok(experimentLink.startsWith(`${nexus.url}/#/experiments/`), experimentLink);

    await page.goto(experimentLink);
    await page.getByTestId("experiment-name").filter({ hasText: "console-demo" }).waitFor();
    const rows = page.locator("[data-testid=runs] tbody tr");
    await eventually(async () => (await rows.count()) === 3, { what: "three runs" });
    const header = await page.locator("[data-testid=runs] thead").innerText();
    for (const column of ["lr", "layers", "loss", "accuracy"]) assert.ok(header.includes(column), header);
    await shot("experiment");

    // Sorted by the server: accuracy ascending puts run-0 first, descending run-2.
    await page.locator("th[data-column='metrics.accuracy']").click();
    await eventually(async () => (await rows.first().innerText()).startsWith("run-2"), { what: "accuracy descending" });
    await page.locator("th[data-column='metrics.accuracy']").click();
    await eventually(async () => (await rows.first().innerText()).startsWith("run-0"), { what: "accuracy ascending" });

    // Searched by the server with MLflow's filter grammar; a bad filter is its error.
    await page.getByTestId("run-filter").fill("params.lr = '0.01' and metrics.accuracy > 0.8");
    await page.getByTestId("run-filter").press("Enter");
    await eventually(async () => (await rows.count()) === 1 && (await rows.first().innerText()).startsWith("run-1"), { what: "filtered run" });
    await page.getByTestId("run-filter").fill("params.lr ~ 1");
    await page.getByTestId("run-filter").press("Enter");
    await page.locator(".error").filter({ hasText: "Error 400" }).waitFor();

    const run0 = runLinks.find((r) => r.name === "run-0");
    await page.goto(run0.url);
    await page.getByTestId("run-name").filter({ hasText: "run-0" }).waitFor();
    const chart = page.getByTestId("metric-chart-loss");
    await chart.locator("canvas").waitFor();
    // The chart holds exactly the logged history, and draws each point where its axes put it.
    const drawn = await eventually(
      () =>
        chart.evaluate((el) => {
          const u = el.uplot;
          const canvas = el.querySelector("canvas");
          const ctx = canvas.getContext("2d");
          const [xs, ys] = u.data;
          const points = [...xs].map((x, i) => {
            const px = Math.round(u.valToPos(x, "x", true));
            const py = Math.round(u.valToPos(ys[i], "y", true));
            const { data } = ctx.getImageData(px - 3, py - 3, 7, 7);
            let blue = 0;
            for (let j = 0; j < data.length; j += 4) {
              // The series colour, #2f5bd3.
              if (Math.abs(data[j] - 47) < 40 && Math.abs(data[j + 1] - 91) < 40 && Math.abs(data[j + 2] - 211) < 40) blue++;
            }
            return { x, y: ys[i], blue };
          });
          return points.length ? points : null;
        }),
      { what: "the chart's points" },
    );
    assert.deepEqual(
      drawn.map((p) => [p.x, p.y]),
      [0, 1, 2, 3, 4, 5].map((s) => [s, Math.round((1 / (s + 1)) * 10000) / 10000]),
    );
    for (const p of drawn) assert.ok(p.blue >= 6, `no point drawn at step ${p.x}: ${JSON.stringify(drawn)}`);
    assert.match(await page.locator("[data-section=Parameters]").innerText(), /lr\s+0\.1\b/);
    assert.match(await page.locator("[data-section=Tags]").innerText(), /team\s+console/);

    // Artifacts: open the folder, download the file (with the credential, through fetch).
    await page.locator("[data-testid=artifacts] button", { hasText: "notes/" }).click();
    const [download] = await Promise.all([page.waitForEvent("download"), page.locator("[data-artifact='notes/readme.txt']").click()]);
    assert.equal(readFileSync(await download.path(), "utf8"), "hello from run 0");
    await shot("run");
  });

  test("pushing a model and moving its alias: the served version swaps", async () => {
    const { page, shot } = b;
    const file = join(REPO, "examples/models/simple/1/model.onnx");
    await nexus.cli(["models", "push", file, "--name", SWAPPED, "--alias", "champion", "--tag", "source=console-test"]);
    await nexus.cli(["models", "push", file, "--name", SWAPPED]);

    await page.goto(`${nexus.url}/#/models/${SWAPPED}`);
    await page.getByTestId("model-name").filter({ hasText: SWAPPED }).waitFor();
    const served = page.getByTestId("served-versions");
    await eventually(async () => (await served.locator("[data-version='1'][data-state=READY]").count()) === 1, {
      timeout: 60_000,
      what: "version 1 served",
    });
    assert.equal(await page.locator("[data-testid=aliases] tr[data-alias=champion]").getAttribute("data-version"), "1");
    await shot("model-before-alias-move");

    await page.getByTestId("alias-name").fill("champion");
    await page.getByTestId("alias-version").selectOption("2");
    await page.getByTestId("set-alias").click();
    await page.locator("[data-testid=aliases] tr[data-alias=champion][data-version='2']").waitFor();
    // The server follows the alias: version 2 comes up and version 1 goes.
    await eventually(
      async () =>
        (await served.locator("[data-version='2'][data-state=READY]").count()) === 1 &&
        (await served.locator("[data-version='1']").count()) === 0,
      { timeout: 60_000, what: "version 2 swapped in" },
    );
    await shot("model-after-alias-move");

    await page.goto(`${nexus.url}/#/models/${SWAPPED}/versions/2`);
    await page.getByTestId("version-title").filter({ hasText: `${SWAPPED} version 2` }).waitFor();
    assert.match(await page.locator("[data-section=Version]").innerText(), /@champion/);
  });

  test("the example pipeline, submitted from the console: its DAG reaches SUCCEEDED with each step's state and log", async () => {
    const { page, shot } = b;
    await page.goto(`${nexus.url}/#/pipelines`);
    await page.getByTestId("open-submit").click();
    // The example comes from the server's library (`nexus up` offers examples/pipelines),
    // with the folder its relative workdirs need: nothing to type but the parameters.
    await page.getByTestId("library").selectOption("train_register_promote.yaml");
    await page.locator("[data-param=epochs]").waitFor();
    assert.equal(await page.getByTestId("base-dir").inputValue(), realpathSync(join(REPO, "examples/pipelines")));
    await page.locator("[data-param=epochs]").fill("120");
    await page.locator("[data-param=model_name]").fill("console-pipeline-model");
    await page.getByTestId("submit").click();
    await page.waitForURL(/#\/pipelines\/runs\/[0-9a-f]+$/);
    const runId = page.url().split("/").pop();

    const steps = ["prepare", "train", "export", "evaluate", "register", "promote"];
    const dag = page.getByTestId("dag");
    await dag.waitFor();
    // The DAG is the run's real dependency graph: one node per step, an arrow per dependency.
    assert.deepEqual((await dag.locator("g.node").evaluateAll((gs) => gs.map((g) => g.dataset.nodeId))).sort(), [...steps].sort());
    const edges = await dag.locator("path.edge").evaluateAll((ps) => ps.map((p) => `${p.dataset.from}->${p.dataset.to}`));
    assert.deepEqual(edges.sort(), [
      "evaluate->register",
      "export->evaluate",
      "export->register",
      "prepare->evaluate",
      "prepare->train",
      "register->promote",
      "train->export",
    ]);
    // Each arrow leaves its step's box and ends at its dependent's box.
    const geometry = await dag.evaluate((svg) => {
      const box = (id) => svg.querySelector(`g.node[data-node-id="${id}"] rect`).getBBox();
      const at = (id) => {
        const g = svg.querySelector(`g.node[data-node-id="${id}"]`);
        const m = g.transform.baseVal.consolidate().matrix;
        const b = box(id);
        return { left: m.e, top: m.f, right: m.e + b.width, bottom: m.f + b.height };
      };
      return [...svg.querySelectorAll("path.edge")].map((p) => {
        const start = p.getPointAtLength(0);
        const end = p.getPointAtLength(p.getTotalLength());
        return { from: at(p.dataset.from), to: at(p.dataset.to), start: { x: start.x, y: start.y }, end: { x: end.x, y: end.y } };
      });
    });
    const near = (pt, r) => pt.x >= r.left - 2 && pt.x <= r.right + 2 && pt.y >= r.top - 2 && pt.y <= r.bottom + 2;
    for (const g of geometry) {
      assert.ok(near(g.start, g.from), `an arrow does not start at its step: ${JSON.stringify(g)}`);
      assert.ok(near(g.end, g.to), `an arrow does not end at its step: ${JSON.stringify(g)}`);
    }

    // Live: states change while the page is open, without a reload.
    const seen = new Set();
    await eventually(
      async () => {
        for (const s of await dag.locator("g.node").evaluateAll((gs) => gs.map((g) => g.dataset.state))) seen.add(s);
        return (await page.getByTestId("run-status").getAttribute("data-status")) === "SUCCEEDED";
      },
      { timeout: 240_000, interval: 200, what: `run ${runId} to succeed` },
    );
    assert.ok(seen.has("RUNNING") || seen.has("PENDING") || seen.has("NOT STARTED"), [...seen].join());
    for (const step of steps) {
      assert.equal(await dag.locator(`g.node[data-node-id=${step}]`).getAttribute("data-state"), "SUCCEEDED", step);
    }
    await dag.locator("g.node[data-node-id=train]").click();
    await eventually(async () => /epoch\s+0\s+loss/.test(await page.getByTestId("log").innerText()), { what: "train's log" });
    assert.match(await page.getByTestId("log").innerText(), /trained 120 epochs/);
    assert.match(await page.locator("#step").innerText(), /train_accuracy/);
    await shot("pipeline-example");

    await page.goto(`${nexus.url}/#/pipelines`);
    await page.locator(`[data-testid=pipeline-runs] tr[data-run-id="${runId}"]`, { hasText: "SUCCEEDED" }).waitFor();
  });

  test("a step's log streams while it runs, and a KFP pipeline shows its loops and conditions", async () => {
    const { page, shot } = b;
    const ticking = [
      "name: console-ticks",
      "parameters:",
      "  ticks: {default: 8}",
      "steps:",
      "  - name: tick",
      "    command: [python3, -u, -c, \"import sys, time\\nfor i in range(int(sys.argv[1])):\\n    print('tick', i)\\n    time.sleep(0.6)\", \"{{params.ticks}}\"]",
      "  - name: done",
      "    after: [tick]",
      "    command: [python3, -c, \"print('all ticks seen')\"]",
    ].join("\n");
    await page.goto(`${nexus.url}/#/pipelines`);
    await page.getByTestId("open-submit").click();
    await page.getByTestId("spec").fill(ticking);
    await page.locator("[data-param=ticks]").fill("10");
    await page.getByTestId("submit").click();
    await page.waitForURL(/#\/pipelines\/runs\/[0-9a-f]+$/);
    await page.locator("g.node[data-node-id=tick][data-state=RUNNING]").waitFor({ timeout: 60_000 });
    await page.locator("g.node[data-node-id=tick]").click();
    // Lines arrive while the step runs: an early tick shows before the last was written.
    await eventually(async () => /tick 1\b/.test(await page.getByTestId("log").innerText()), { what: "the first ticks" });
    const partial = await page.getByTestId("log").innerText();
    assert.ok(!partial.includes("tick 9"), partial);
    assert.equal(await page.getByTestId("log-state").innerText(), "● streaming");
    await shot("pipeline-log-streaming");
    await eventually(async () => /tick 9\b/.test(await page.getByTestId("log").innerText()), { timeout: 60_000, what: "the last tick" });
    await page.getByTestId("run-status").and(page.locator("[data-status=SUCCEEDED]")).waitFor({ timeout: 60_000 });

    // A compiled KFP pipeline (tests/clients/kfp_pipelines.py): a loop over a parameter, a
    // condition inside it and a nested loop inside that.
    const dir = mkdtempSync(join(tmpdir(), "nexus-console-kfp-"));
    const ir = join(dir, "nested_loops.yaml");
    await nexus.python(
      `import sys; sys.path.insert(0, "tests/clients")
from kfp import compiler
import kfp_pipelines
compiler.Compiler().compile(kfp_pipelines.nested_loops, ${JSON.stringify(ir)})`,
    );
    await page.goto(`${nexus.url}/#/pipelines`);
    await page.getByTestId("open-submit").click();
    await page.getByTestId("spec-file").setInputFiles(ir);
    await page.locator("[data-param=limit]").fill("2");
    await page.getByTestId("submit").click();
    await page.waitForURL(/#\/pipelines\/runs\/[0-9a-f]+$/);
    await page.getByTestId("run-status").and(page.locator("[data-status=SUCCEEDED]")).waitFor({ timeout: 240_000 });
    const dag = page.getByTestId("dag");
    const kinds = await dag.locator("[data-node-id]").evaluateAll((gs) => gs.map((g) => [g.dataset.nodeId, g.dataset.kind, g.dataset.state]));
    assert.ok(kinds.some(([, kind]) => kind === "loop"), JSON.stringify(kinds));
    assert.ok(kinds.some(([, kind]) => kind === "condition"), JSON.stringify(kinds));
    // Steps inside the loop and the condition are drawn inside their boxes, with the
    // iterations' states summed up.
    const square = kinds.find(([id]) => id.endsWith("/square"));
    assert.ok(square && square[0].split("/").length >= 3, JSON.stringify(kinds));
    assert.match(await dag.locator(`g.node[data-node-id="${square[0]}"]`).textContent(), /2\/2 iterations/);
    writeFileSync(join(dir, "kinds.json"), JSON.stringify(kinds));
    await shot("pipeline-kfp-loops");
  });

  test("the Models page shows the example models with live figures from the server's metrics", async () => {
    const { page, shot } = b;
    await page.goto(`${nexus.url}/#/serving`);
    const simple = page.locator("[data-testid=serving-models] tr[data-model=simple]");
    await simple.filter({ hasText: "READY" }).waitFor();
    for (const model of ["simple", "mlp_classifier", "minilm"]) {
      await page.locator(`[data-testid=serving-models] tr[data-model=${model}]`).first().waitFor();
    }
    assert.match(await simple.innerText(), /onnxruntime/);
    const body = {
      inputs: [
        { name: "INPUT0", datatype: "INT32", shape: [1, 16], data: [...Array(16).keys()] },
        { name: "INPUT1", datatype: "INT32", shape: [1, 16], data: Array(16).fill(1) },
      ],
    };
    // Bounded load: requests for at most 12 s, stopped as soon as the page shows them.
    let stop = false;
    const load = (async () => {
      const until = Date.now() + 12_000;
      while (!stop && Date.now() < until) {
        const r = await fetch(`${nexus.url}/v2/models/simple/infer`, { method: "POST", body: JSON.stringify(body) });
        assert.equal(r.status, 200);
        await r.arrayBuffer();
      }
    })();
    try {
      await eventually(
        async () => {
          const rate = Number(await simple.getByTestId("rate").innerText());
          const p99 = await simple.getByTestId("p99").innerText();
          return rate > 0 && /ms$/.test(p99);
        },
        { timeout: 12_000, what: "a request rate and p99 for simple" },
      );
      await shot("serving");
    } finally {
      stop = true;
      await load;
    }
    // The server loads models at start-up (model control mode none): no load/unload offered.
    assert.equal(await page.getByRole("button", { name: /^(Load|Unload)$/ }).count(), 0);
    await page.goto(`${nexus.url}/#/services`);
    await page.locator("[data-testid=services] tr[data-service=registry]", { hasText: "UP" }).waitFor();
    await shot("services");
  });

  test("the optimiser page: traffic weights over time, decisions with reasons, batching against the SLO, the freeze switch", async () => {
    const { page, shot } = b;
    const folder = join(REPO, "examples/models/mlp_classifier");
    await nexus.cli(["models", "push", folder, "--name", ROUTED, "--alias", "champion"]);
    await nexus.cli(["models", "push", folder, "--name", ROUTED, "--alias", "challenger"]);
    const state = () => fetch(`${nexus.url}/api/v1/optimizer/state`).then((r) => r.json());
    await eventually(async () => Object.keys((await state()).models[ROUTED]?.weights ?? {}).length === 2, {
      timeout: 60_000,
      what: "both versions routed",
    });

    // Bounded load, 4 clients for 10 s: every answer from version 2 is rewarded, version 1's not.
    const body = JSON.stringify({ inputs: [{ name: "input", datatype: "FP32", shape: [1, 4], data: [0.5, -1.2, 0.3, 2.0] }] });
    const until = Date.now() + 10_000;
    const client = async () => {
      while (Date.now() < until) {
        const answer = await (await fetch(`${nexus.url}/v2/models/${ROUTED}/infer`, { method: "POST", body })).json();
        const reward = answer.model_version === "2" ? 1 : 0;
        const fb = await fetch(`${nexus.url}/v2/models/${ROUTED}/feedback`, {
          method: "POST",
          body: JSON.stringify({ id: answer.id, reward }),
        });
        assert.equal(fb.status, 200, await fb.text());
      }
    };
    await page.goto(`${nexus.url}/#/optimizer`);
    await Promise.all([client(), client(), client(), client()]);

    const weights = page.locator(".chart", { hasText: "traffic weight per version" });
    const drawn = await eventually(
      () =>
        weights.evaluate((el) => {
          const u = el.uplot;
          return u && u.data[0].length >= 3 ? { series: u.series.slice(1).map((s) => s.label), v2: [...u.data[2]] } : null;
        }),
      { timeout: 20_000, what: "the weights chart" },
    );
    assert.deepEqual(drawn.series, ["v1", "v2"]);
    const shares = drawn.v2.filter((w) => w !== null);
    assert.ok(shares[shares.length - 1] > shares[0], `version 2's share did not grow: ${shares}`);
    const decisions = page.locator("[data-testid=decisions] tbody tr", { hasText: "traffic" });
    assert.ok((await decisions.count()) >= 2);
    assert.ok((await decisions.first().innerText()).includes(ROUTED));
    await page.locator("[data-testid=batching] tr", { hasText: `${SLO_MS} ms` }).first().waitFor({ timeout: 20_000 });
    await shot("optimizer");

    await page.getByTestId("freeze").click();
    await page.getByTestId("frozen").filter({ hasText: "frozen" }).waitFor();
    assert.equal((await state()).frozen, true);
    await page.getByTestId("freeze").click();
    await page.getByTestId("frozen").filter({ hasText: "adjusting" }).waitFor();
    assert.equal((await state()).frozen, false);
    assert.deepEqual(b.errors, []);
  });
});
