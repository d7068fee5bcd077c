// The console with `--auth`: the page loads without a credential and asks for one; a wrong
// key is refused; a reader sees no write action, an inference key sees the registry's 403
// as such, a deployer may move aliases; no credential ever appears in a URL or the log.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Nexus, REPO, browser } from "./nexus.mjs";

describe("the console with --auth", { timeout: 600_000 }, () => {
  let nexus;
  let b;
  const keys = {};
  const requested = [];
  before(async () => {
    // Explicit model control, so load and unload are possible and a role decides who sees them.
    nexus = await Nexus.start(["--auth", "--no-events", "--model-control-mode", "explicit", "--load-model", "*"]);
    for (const role of ["reader", "inference", "deployer"]) {
      keys[role] = (await nexus.cli(["token", "create", "--role", role, "--name", `console ${role}`, "--data-dir", nexus.data])).trim();
      assert.match(keys[role], /^nexus_/);
    }
    // A registered model to look at, pushed with the deployer's key.
    await nexus.cli(["models", "push", join(REPO, "examples/models/simple/1/model.onnx"), "--name", "guarded", "--alias", "champion"], {
      MLFLOW_TRACKING_TOKEN: keys.deployer,
    });
    b = await browser();
    b.page.on("request", (r) => requested.push(r.url()));
  });
  after(async () => {
    await b?.instance.close();
    await nexus?.stop();
  });

  const signIn = async (key) => {
    const { page } = b;
    await page.goto(`${nexus.url}/`);
    await page.getByTestId("credential").fill(key);
    await page.getByTestId("credential").press("Enter");
  };

  test("the page loads without a credential, asks for one, and refuses a wrong key", async () => {
    const { page, shot } = b;
    const statuses = [];
    const record = (r) => statuses.push([r.url(), r.status()]);
    page.on("response", record);
    await page.goto(`${nexus.url}/`);
    await page.getByTestId("sign-in").waitFor();
    page.off("response", record);
    const assets = statuses.filter(([url]) => url === `${nexus.url}/` || url.includes("/assets/"));
    assert.ok(assets.length >= 3, JSON.stringify(statuses));
    for (const [url, status] of assets) assert.equal(status, 200, url);
    await shot("auth-sign-in");

    await signIn("nexus_this-is-not-a-key");
    await page.locator(".error[data-status='401']").waitFor();
    assert.match(await page.locator(".error").innerText(), /Not authenticated \(401\)/);
    await shot("auth-refused");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("nexus.credential")), null);
  });

  test("a reader sees everything and is offered no write action", async () => {
    const { page, shot } = b;
    await signIn(keys.reader);
    await page.locator("[data-testid=identity][data-role=reader]").waitFor();

    await page.goto(`${nexus.url}/#/serving`);
    await page.locator("[data-testid=serving-models] tr[data-model=simple]", { hasText: "READY" }).waitFor();
    assert.equal(await page.getByRole("button", { name: /^(Load|Unload)$/ }).count(), 0);

    await page.goto(`${nexus.url}/#/models/guarded`);
    await page.locator("[data-testid=aliases] tr[data-alias=champion]").waitFor();
    assert.equal(await page.getByTestId("alias-form").count(), 0);
    await shot("auth-reader-model");

    await page.goto(`${nexus.url}/#/pipelines`);
    await page.getByTestId("pipeline-runs").waitFor();
    assert.equal(await page.getByTestId("open-submit").count(), 0);
  });

  test("an inference key gets the registry's 403, shown as such", async () => {
    const { page, shot } = b;
    await page.getByRole("button", { name: "Sign out" }).click();
    await signIn(keys.inference);
    await page.locator("[data-testid=identity][data-role=inference]").waitFor();
    await page.goto(`${nexus.url}/#/experiments`);
    await page.locator(".error[data-status='403']").waitFor();
    assert.match(await page.locator(".error").first().innerText(), /Forbidden \(403\)[\s\S]*role 'inference' may not/);
    await shot("auth-forbidden");
  });

  test("a deployer may move an alias; no credential is ever in a URL or the server's log", async () => {
    const { page, shot } = b;
    await page.getByRole("button", { name: "Sign out" }).click();
    await signIn(keys.deployer);
    await page.locator("[data-testid=identity][data-role=deployer]").waitFor();
    await page.goto(`${nexus.url}/#/models/guarded`);
    await page.getByTestId("alias-form").waitFor();
    await page.getByTestId("alias-name").fill("staging");
    await page.getByTestId("set-alias").click();
    await page.locator("[data-testid=aliases] tr[data-alias=staging]").waitFor();
    await shot("auth-deployer-model");
    await page.goto(`${nexus.url}/#/pipelines`);
    await page.getByTestId("open-submit").waitFor();

    // Model control: unload a model and load it again.
    await page.goto(`${nexus.url}/#/serving`);
    const simple = page.locator("[data-testid=serving-models] tr[data-model=simple]");
    await simple.filter({ hasText: "READY" }).waitFor();
    await simple.getByRole("button", { name: "Unload", exact: true }).click();
    await simple.getByRole("button", { name: "Load", exact: true }).waitFor();
    assert.doesNotMatch(await simple.innerText(), /READY/);
    await shot("auth-deployer-unloaded");
    await simple.getByRole("button", { name: "Load", exact: true }).click();
    await simple.filter({ hasText: "READY" }).getByRole("button", { name: "Unload", exact: true }).waitFor();

    assert.ok(requested.length > 20, `${requested.length} requests`);
    const log = nexus.logText();
    for (const key of Object.values(keys)) {
      const secret = key.slice("nexus_".length);
      assert.ok(!requested.some((url) => url.includes(secret)), "a credential in a URL");
      assert.ok(!log.includes(secret), "a credential in the server's log");
    }
  });
});
