// What the console tests share: a real `nexus up` on free ports with a data folder of its
// own (the binary is $NEXUS_BIN, default target/debug/nexus, as in tests/clients), the
// project's Python for the real MLflow client, Debian's Chromium, and screenshots under
// target/console-screenshots/.
import { spawn, execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const NEXUS_BIN = process.env.NEXUS_BIN ?? join(REPO, "target/debug/nexus");
export const PYTHON = join(REPO, ".venv/bin/python");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const SCREENSHOTS = join(REPO, "target/console-screenshots");
const READY_TIMEOUT_MS = 180_000;

const run = promisify(execFile);

async function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A running `nexus up`: `url` is its HTTP address; `stop()` ends it and removes its data. */
export class Nexus {
  static async start(extra = []) {
    const [http, grpc, metrics] = [await freePort(), await freePort(), await freePort()];
    const dir = mkdtempSync(join(tmpdir(), "nexus-console-"));
    const data = join(dir, "data");
    const log = join(dir, "nexus.log");
    const args = [
      "up",
      "--address", "127.0.0.1",
      "--http-port", String(http),
      "--grpc-port", String(grpc),
      "--metrics-port", String(metrics),
      "--data-dir", data,
      "--model-cache", join(dir, "model-cache"),
      "--model-repository", join(REPO, "examples/models"),
      ...extra,
    ];
    const out = openSync(log, "w");
    // Pipeline steps run `python3` from PATH: the project's venv has what the example needs
    // (as scripts/up.sh arranges).
    const env = { ...process.env, NO_COLOR: "1", PATH: `${join(REPO, ".venv/bin")}:${process.env.PATH}` };
    delete env.MLFLOW_TRACKING_TOKEN;
    const child = spawn(NEXUS_BIN, args, { cwd: REPO, env, stdio: ["ignore", out, out] });
    const nexus = new Nexus(child, `http://127.0.0.1:${http}`, dir, data, log);
    await nexus.waitReady();
    return nexus;
  }

  constructor(child, url, dir, data, log) {
    Object.assign(this, { child, url, dir, data, log });
    this.exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  }

  async waitReady() {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = "no answer";
    for (;;) {
      const exited = await Promise.race([this.exited, sleep(250).then(() => null)]);
      if (exited) throw new Error(`nexus exited (${JSON.stringify(exited)}) before it was ready:\n${this.logTail()}`);
      try {
        const r = await fetch(`${this.url}/v2/health/ready`);
        if (r.status === 200) return;
        last = `HTTP ${r.status}`;
      } catch (e) {
        last = String(e.cause?.code ?? e);
      }
      if (Date.now() > deadline) throw new Error(`nexus not ready after ${READY_TIMEOUT_MS} ms (${last}):\n${this.logTail()}`);
    }
  }

  logText() {
    try {
      return readFileSync(this.log, "utf8");
    } catch {
      return "";
    }
  }

  logTail(lines = 60) {
    return this.logText().split("\n").slice(-lines).join("\n");
  }

  /** Runs the nexus CLI against this server (`nexus models …`, `nexus token …`). */
  async cli(args, env = {}) {
    const { stdout } = await run(NEXUS_BIN, args, {
      cwd: REPO,
      env: { ...process.env, MLFLOW_TRACKING_URI: this.url, NO_COLOR: "1", ...env },
    });
    return stdout;
  }

  /** Runs a Python script with the project's venv (the real mlflow client), against this server. */
  async python(script, env = {}) {
    const { stdout } = await run(PYTHON, ["-c", script], {
      cwd: REPO,
      env: { ...process.env, MLFLOW_TRACKING_URI: this.url, ...env },
      maxBuffer: 16 << 20,
    });
    return stdout;
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      const done = await Promise.race([this.exited, sleep(10_000).then(() => null)]);
      if (!done) {
        this.child.kill("SIGKILL");
        await this.exited;
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Headless Chromium (Debian's) with one page; `shot(name)` saves a full-page screenshot. */
export async function browser() {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const instance = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  const context = await instance.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  return {
    instance,
    context,
    page,
    errors,
    shot: (name) => page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true }),
  };
}

/** Polls `check` until it returns a truthy value or `timeout` ms pass. */
export async function eventually(check, { timeout = 30_000, interval = 250, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(interval);
  }
}
