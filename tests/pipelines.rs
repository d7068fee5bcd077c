//! Pipeline runs through the real `nexus up`: spec validation over REST, DAG order and
//! parallelism, parameters and artifacts between steps, retries, timeouts, cancel,
//! caching, and a `kill -9` of Nexus mid-run on SQLite and PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::registry::{Database, TestDatabase};
use common::{Mode, Repository, Server};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A `nexus up` with its own data dir, kept across restarts.
struct Runner {
    server: Option<Server>,
    data: TempDir,
    args: Vec<String>,
}

impl Runner {
    async fn start(extra: &[&str]) -> Result<Runner> {
        let data = tempfile::tempdir()?;
        let mut args: Vec<String> = vec!["--data-dir".into(), data.path().display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut runner = Runner {
            server: None,
            data,
            args,
        };
        runner.restart().await?;
        Ok(runner)
    }

    /// A `nexus up` whose own environment holds `env` (as a secret given to the server would).
    async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Runner> {
        let data = tempfile::tempdir()?;
        let mut args = vec!["--data-dir", data.path().to_str().context("data dir")?];
        args.extend(extra);
        let server = Server::spawn_as(Mode::Up, Repository::empty()?, &args, env)?;
        common::poll_until(Duration::from_secs(60), "nexus up ready", || async {
            let ready = server.get("/v2/health/ready").await.ok();
            Ok(ready.filter(|(status, _)| *status == 200).map(drop))
        })
        .await
        .with_context(|| format!("stderr:\n{}", server.stderr()))?;
        Ok(Runner {
            server: Some(server),
            data,
            args: Vec::new(),
        })
    }

    async fn restart(&mut self) -> Result<()> {
        self.server = None;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Some(Server::start_up(Repository::empty()?, &args).await?);
        Ok(())
    }

    /// SIGKILL, as `kill -9`.
    fn kill(&mut self) {
        self.server = None;
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    async fn submit(&self, spec: &str, parameters: Value) -> Result<(u16, Value)> {
        self.server()
            .post(
                "/api/v1/pipelines/runs",
                &json!({"spec": spec, "parameters": parameters}),
            )
            .await
    }

    async fn run_id(&self, spec: &str, parameters: Value) -> Result<String> {
        let (status, body) = self.submit(spec, parameters).await?;
        ensure!(status == 201, "submit answered {status}: {body}");
        Ok(body["run"]["id"].as_str().context("run id")?.to_string())
    }

    async fn get(&self, id: &str) -> Result<Value> {
        let (status, body) = self
            .server()
            .get(&format!("/api/v1/pipelines/runs/{id}"))
            .await?;
        ensure!(status == 200, "get run answered {status}: {body}");
        Ok(body["run"].clone())
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.get(id).await?;
            if !matches!(run["status"].as_str(), Some("PENDING" | "RUNNING")) {
                return Ok(run);
            }
            ensure!(
                Instant::now() < deadline,
                "run not finished after {timeout:?}: {run:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run(&self, spec: &str, parameters: Value) -> Result<Value> {
        let id = self.run_id(spec, parameters).await?;
        self.wait(&id, Duration::from_secs(60)).await
    }
}

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["path"] == name))
        .unwrap_or(&Value::Null)
}

fn scratch() -> Result<(TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    Ok((dir, path))
}

/// Reads `<dir>/<name>` as whitespace-separated numbers (timestamps written by steps).
fn stamps(dir: &Path, name: &str) -> Result<(u128, u128)> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("stamp {name}"))?;
    let numbers: Vec<u128> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match numbers.as_slice() {
        [start, end] => Ok((*start, *end)),
        other => bail!("stamp {name}: {other:?}"),
    }
}

#[tokio::test]
async fn invalid_specs_are_refused_before_anything_runs() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let cases = [
        (
            "name: p\nsteps:\n- name: a\n  command: [echo, '{{params.missing}}']\n",
            Some("a"),
            Some("command[1]"),
            "unknown parameter 'missing'",
        ),
        (
            "name: p\nsteps:\n- name: a\n  command: [echo]\n  args: ['{{steps.ghost.outputs.x}}']\n",
            Some("a"),
            Some("args[0]"),
            "unknown step 'ghost'",
        ),
        (
            "name: p\nsteps:\n- name: a\n  command: [echo]\n  after: [b]\n- name: b\n  command: [echo]\n  after: [a]\n",
            Some("a"),
            Some("after"),
            "dependency cycle",
        ),
        (
            "name: p\nparameters: {n: {}}\nsteps:\n- name: a\n  command: [echo, '{{params.n}}']\n",
            None,
            Some("parameters.n"),
            "'n' is required",
        ),
        ("name: p\nsteps: [[\n", None, None, "not valid YAML"),
        ("hello: world\n", None, None, "neither a Nexus pipeline"),
    ];
    for (spec, step, field, message) in cases {
        let (status, body) = runner.submit(spec, json!({})).await?;
        ensure!(status == 400, "{spec}: answered {status}: {body}");
        let error = &body["error"];
        ensure!(error["code"] == "INVALID_SPEC", "{spec}: {body}");
        ensure!(
            error["message"].as_str().unwrap_or("").contains(message),
            "{spec}: {body}"
        );
        ensure!(error["step"].as_str() == step, "{spec}: step in {body}");
        ensure!(error["field"].as_str() == field, "{spec}: field in {body}");
    }
    let (status, body) = runner.server().get("/api/v1/pipelines/runs").await?;
    ensure!(
        status == 200 && body["runs"] == json!([]),
        "nothing was recorded: {body}"
    );
    let (status, _) = runner.server().get("/api/v1/pipelines/runs/nope").await?;
    ensure!(status == 404);
    let (status, body) = runner
        .server()
        .get("/api/v1/pipelines/runs?page_token=not-a-token")
        .await?;
    ensure!(
        status == 400
            && body["error"]["message"].as_str() == Some("invalid page_token 'not-a-token'"),
        "{status} {body}"
    );
    Ok(())
}

#[tokio::test]
async fn dag_order_parallelism_parameters_and_artifacts() -> Result<()> {
    let runner = Runner::start(&["--pipeline-parallelism", "2"]).await?;
    let (_keep, dir) = scratch()?;
    let stamp = |name: &str, body: &str| {
        format!(
            "date +%s%N > {dir}/{name}; {body}; sleep 0.4; date +%s%N >> {dir}/{name}",
            dir = dir.display()
        )
    };
    // a -> (b, c, d) -> e, at most two at once: b, c and d overlap two by two, never three.
    let spec = format!(
        r#"
name: diamond
parameters:
  greeting: hello
  count: 3
steps:
  - name: a
    command: "{a}"
    outputs: {{parameters: [word], artifacts: [data]}}
  - name: b
    command: "{b}"
    outputs: {{parameters: [upper]}}
  - name: c
    command: "{c}"
    outputs: {{artifacts: [folder]}}
    after: [a]
  - name: d
    command: "{d}"
    after: [a]
  - name: e
    command: [sh, -c, 'cat "$0" "$1/x" "$1/sub/y" > "$2"; echo "{{{{steps.b.outputs.upper}}}}" >> "$2"', "{{{{steps.a.outputs.data}}}}", "{{{{steps.c.outputs.folder}}}}", "{dir}/result"]
    after: [d]
"#,
        a = stamp(
            "a",
            "printf '%s' '{{params.greeting}}' > {{outputs.word}}; seq {{params.count}} > {{outputs.data}}"
        ),
        b = stamp(
            "b",
            "echo '{{steps.a.outputs.word}}' | tr a-z A-Z > {{outputs.upper}}"
        ),
        c = stamp(
            "c",
            "mkdir -p {{outputs.folder}}/sub; echo x > {{outputs.folder}}/x; echo y > {{outputs.folder}}/sub/y"
        ),
        d = stamp("d", "true"),
        dir = dir.display(),
    );
    let run = runner.run(&spec, json!({"greeting": "hi there"})).await?;
    ensure!(run["status"] == "SUCCEEDED", "{run:#}");
    // The run's graph: a node per step, an edge per dependency (explicit or through a
    // reference), as the web console draws it.
    let id = run["id"].as_str().context("run id")?;
    let (_, body) = runner
        .server()
        .get(&format!("/api/v1/pipelines/runs/{id}"))
        .await?;
    let graph = &body["graph"];
    let mut edges: Vec<String> = graph["edges"]
        .as_array()
        .context("graph edges")?
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e["from"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    edges.sort();
    ensure!(
        edges == ["a->b", "a->c", "a->d", "a->e", "b->e", "c->e", "d->e"],
        "{graph:#}"
    );
    ensure!(
        graph["nodes"].as_array().map(Vec::len) == Some(5),
        "{graph:#}"
    );
    ensure!(
        run["parameters"] == json!({"greeting": "hi there", "count": 3}),
        "{run:#}"
    );
    ensure!(
        task(&run, "a")["outputs"]["parameters"]["word"] == "hi there",
        "{run:#}"
    );
    ensure!(
        task(&run, "b")["outputs"]["parameters"]["upper"] == "HI THERE",
        "{run:#}"
    );
    let result = std::fs::read_to_string(dir.join("result"))?;
    ensure!(result == "1\n2\n3\nx\ny\nHI THERE\n", "{result:?}");
    // The artifact is in the registry's artifact store, not only in a's folder.
    let uri = task(&run, "a")["outputs"]["artifacts"]["data"][0]["uri"]
        .as_str()
        .context("uri")?;
    ensure!(
        uri.starts_with(&runner.data.path().join("artifacts").display().to_string()),
        "{uri}"
    );
    ensure!(std::fs::read_to_string(uri)? == "1\n2\n3\n");

    let (a, b, c, d) = (
        stamps(&dir, "a")?,
        stamps(&dir, "b")?,
        stamps(&dir, "c")?,
        stamps(&dir, "d")?,
    );
    for (name, s) in [("b", b), ("c", c), ("d", d)] {
        ensure!(s.0 >= a.1, "{name} started before a ended");
    }
    let overlap = |x: (u128, u128), y: (u128, u128)| x.0 < y.1 && y.0 < x.1;
    let pairs = [overlap(b, c), overlap(b, d), overlap(c, d)];
    ensure!(
        pairs.iter().any(|p| *p),
        "with parallelism 2, two of b, c, d ran together"
    );
    ensure!(!(pairs[0] && pairs[1] && pairs[2]), "never three at once");
    Ok(())
}

#[tokio::test]
async fn retries_timeouts_and_failures() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let spec = format!(
        r#"
name: flaky
steps:
  - name: flaky
    # Fails twice, then succeeds: the count of attempts is kept in a file.
    command: 'n=$(cat {dir}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dir}/count; [ $n -ge 3 ]'
    retries: 3
    backoff: 100ms
  - name: slow
    command: 'sleep 300 & echo $! > {dir}/sleeper; wait'
    timeout: 1s
  - name: after-slow
    command: [touch, "{dir}/never"]
    after: [slow]
"#,
        dir = dir.display()
    );
    let run = runner.run(&spec, json!({})).await?;
    ensure!(run["status"] == "FAILED", "{run:#}");
    let flaky = task(&run, "flaky");
    ensure!(
        flaky["status"] == "SUCCEEDED" && flaky["attempts"] == 3,
        "{flaky:#}"
    );
    let slow = task(&run, "slow");
    ensure!(slow["status"] == "FAILED", "{slow:#}");
    ensure!(
        slow["error"]
            .as_str()
            .unwrap_or("")
            .contains("timed out after 1s"),
        "{slow:#}"
    );
    let downstream = task(&run, "after-slow");
    ensure!(downstream["status"] == "SKIPPED", "{downstream:#}");
    ensure!(
        !dir.join("never").exists(),
        "a step after a failed one never runs"
    );
    ensure!(
        run["error"]
            .as_str()
            .unwrap_or("")
            .contains("'slow' failed"),
        "{run:#}"
    );
    // The timeout took the step's whole process group, the background sleep included.
    let sleeper: i32 = std::fs::read_to_string(dir.join("sleeper"))?
        .trim()
        .parse()?;
    ensure!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "sleep {sleeper} still running"
    );

    // A step that keeps failing uses up its retries.
    let run = runner
        .run("name: broken\nsteps:\n- name: x\n  command: 'echo boom >&2; exit 3'\n  retries: 1\n  backoff: 0s\n", json!({}))
        .await?;
    let x = task(&run, "x");
    ensure!(run["status"] == "FAILED" && x["attempts"] == 2, "{run:#}");
    ensure!(
        x["error"]
            .as_str()
            .unwrap_or("")
            .contains("exited with code 3"),
        "{x:#}"
    );
    let id = run["id"].as_str().unwrap_or_default();
    let logs = reqwest::get(
        runner
            .server()
            .url(&format!("/api/v1/pipelines/runs/{id}/logs?step=x")),
    )
    .await?
    .text()
    .await?;
    ensure!(
        logs.matches("boom").count() == 2,
        "both attempts' stderr in the log: {logs}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_running_step() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let spec = format!(
        "name: long\nsteps:\n- name: wait\n  command: 'sleep 300 & echo $! > {d}/pid; wait'\n- name: later\n  command: [touch, {d}/later]\n  after: [wait]\n",
        d = dir.display()
    );
    let id = runner.run_id(&spec, json!({})).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("pid").exists() {
        ensure!(Instant::now() < deadline, "step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = runner
        .server()
        .post(&format!("/api/v1/pipelines/runs/{id}/cancel"), &json!({}))
        .await?;
    ensure!(status == 200, "cancel answered {status}: {body}");
    let run = runner.wait(&id, Duration::from_secs(20)).await?;
    ensure!(run["status"] == "CANCELLED", "{run:#}");
    ensure!(task(&run, "wait")["status"] == "CANCELLED", "{run:#}");
    ensure!(!dir.join("later").exists());
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))?.trim().parse()?;
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived the cancel"
    );
    let (status, _) = runner
        .server()
        .post(&format!("/api/v1/pipelines/runs/{id}/cancel"), &json!({}))
        .await?;
    ensure!(status == 409, "cancelling an ended run is a conflict");
    Ok(())
}

#[tokio::test]
async fn cached_steps_are_not_run_again() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let spec = format!(
        r#"
name: cached
cache: true
parameters: {{n: 1}}
steps:
  - name: produce
    command: 'echo run >> {d}/produce; echo "value {{{{params.n}}}}" > {{{{outputs.v}}}}'
    outputs: {{artifacts: [v]}}
  - name: consume
    command: 'echo run >> {d}/consume; cat {{{{steps.produce.outputs.v}}}} > {{{{outputs.copy}}}}'
    outputs: {{parameters: [copy]}}
  - name: uncached
    command: 'echo run >> {d}/uncached'
    cache: false
"#,
        d = dir.display()
    );
    let runs = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let first = runner.run(&spec, json!({})).await?;
    ensure!(first["status"] == "SUCCEEDED", "{first:#}");
    let second = runner.run(&spec, json!({})).await?;
    ensure!(second["status"] == "SUCCEEDED", "{second:#}");
    ensure!(
        task(&second, "produce")["cached"] == true && task(&second, "consume")["cached"] == true,
        "{second:#}"
    );
    ensure!(
        task(&second, "consume")["outputs"]["parameters"]["copy"] == "value 1",
        "{second:#}"
    );
    ensure!((runs("produce"), runs("consume"), runs("uncached")) == (1, 1, 2));
    // Other inputs, another key.
    let third = runner.run(&spec, json!({"n": 2})).await?;
    ensure!(task(&third, "produce")["cached"] == false, "{third:#}");
    ensure!(
        task(&third, "consume")["outputs"]["parameters"]["copy"] == "value 2",
        "{third:#}"
    );
    ensure!((runs("produce"), runs("consume")) == (2, 2));
    Ok(())
}

/// Kills Nexus while the middle step of a chain runs; after a restart the run finishes,
/// the finished step is not run again and the interrupted one runs once more, never
/// beside its first attempt.
async fn resume_after_kill(database: Database) -> Result<()> {
    let Some(db) = TestDatabase::create(database).await? else {
        return Ok(());
    };
    let db_args = db.args();
    let args: Vec<&str> = db_args.iter().map(String::as_str).collect();
    let mut runner = Runner::start(&args).await?;
    let (_keep, dir) = scratch()?;
    let journal = dir.join("journal");
    let spec = format!(
        r#"
name: chain
steps:
  - name: first
    command: 'echo first >> {j}; echo 42 > {{{{outputs.n}}}}'
    outputs: {{parameters: [n]}}
  - name: second
    command: 'echo second-start {{{{steps.first.outputs.n}}}} >> {j}; sleep 2; echo second-end >> {j}'
  - name: third
    command: 'echo third >> {j}'
    after: [second]
"#,
        j = journal.display()
    );
    let id = runner.run_id(&spec, json!({})).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .contains("second-start")
    {
        ensure!(Instant::now() < deadline, "second never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    runner.restart().await?;
    let run = runner.wait(&id, Duration::from_secs(60)).await?;
    ensure!(run["status"] == "SUCCEEDED", "{run:#}");
    let lines: Vec<String> = std::fs::read_to_string(&journal)?
        .lines()
        .map(str::to_string)
        .collect();
    ensure!(
        lines
            == [
                "first",
                "second-start 42",
                "second-start 42",
                "second-end",
                "third"
            ],
        "journal: {lines:?}"
    );
    ensure!(task(&run, "first")["attempts"] == 1, "{run:#}");
    ensure!(task(&run, "second")["attempts"] == 2, "{run:#}");
    Ok(())
}

#[tokio::test]
async fn kill_9_mid_run_resumes_on_sqlite() -> Result<()> {
    resume_after_kill(Database::Sqlite).await
}

#[tokio::test]
async fn kill_9_mid_run_resumes_on_postgres() -> Result<()> {
    resume_after_kill(Database::Postgres).await
}

#[tokio::test]
async fn cli_submits_waits_and_reads_logs() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let spec_path = dir.join("hello.yaml");
    std::fs::write(
        &spec_path,
        "name: hello\nparameters: {who: world}\nsteps:\n- name: greet\n  workdir: .\n  command: 'echo hello {{params.who}}; pwd > where; echo \"$NEXUS_URL $NEXUS_RUN_ID\" > env'\n",
    )?;
    let url = runner.server().url("");
    let out = common::nexus(&[
        "pipeline",
        "--url",
        &url,
        "submit",
        spec_path.to_str().unwrap_or_default(),
        "--param",
        "who=nexus",
        "--wait",
    ])
    .await?;
    let id = out.lines().next().unwrap_or_default().trim().to_string();
    ensure!(out.contains("SUCCEEDED"), "{out}");
    // A relative workdir resolves against the spec's folder.
    ensure!(
        std::fs::read_to_string(dir.join("where"))?.trim()
            == std::fs::canonicalize(&dir)?.display().to_string()
    );
    // Steps learn where this server is (to push models) and which run they belong to.
    ensure!(std::fs::read_to_string(dir.join("env"))?.trim() == format!("{url} {id}"));
    let logs = common::nexus(&["pipeline", "--url", &url, "logs", &id, "greet"]).await?;
    ensure!(logs.contains("hello nexus"), "{logs}");
    let list = common::nexus(&["pipeline", "--url", &url, "list"]).await?;
    ensure!(list.contains(&id) && list.contains("hello"), "{list}");
    let status = common::nexus(&["pipeline", "--url", &url, "status", &id, "--json"]).await?;
    let status: Value = serde_json::from_str(&status)?;
    ensure!(status["tasks"][0]["status"] == "SUCCEEDED", "{status:#}");
    let metrics = reqwest::get(runner.server().metrics_url())
        .await?
        .text()
        .await?;
    for line in [
        "nexus_pipeline_runs_total{status=\"SUCCEEDED\"} 1",
        "nexus_pipeline_steps_total{status=\"SUCCEEDED\"} 1",
    ] {
        ensure!(metrics.contains(line), "{line} not in /metrics:\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn database_down_is_a_503_with_the_cause() -> Result<()> {
    let runner = Runner::start(&["--database-url", "postgres://postgres@127.0.0.1:1/x"]).await?;
    let (status, body) = runner
        .submit("name: p\nsteps:\n- name: a\n  command: [true]\n", json!({}))
        .await?;
    ensure!(
        status == 503,
        "submit with no database answered {status}: {body}"
    );
    ensure!(body["error"]["code"] == "UNAVAILABLE", "{body}");
    ensure!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "{body}"
    );
    let (status, _) = runner.server().get("/api/v1/pipelines/runs").await?;
    ensure!(status == 503);
    // Serving is unaffected.
    let (status, _) = runner.server().get("/v2/health/ready").await?;
    ensure!(status == 200);
    Ok(())
}

#[tokio::test]
async fn steps_start_from_a_clean_environment() -> Result<()> {
    let runner = Runner::start_with_env(
        &["--pipeline-env", "NEXUS_TEST_ALLOWED"],
        &[
            ("NEXUS_TEST_SECRET", "server-secret-1"),
            ("AWS_SECRET_ACCESS_KEY", "server-secret-2"),
            ("NEXUS_TEST_ALLOWED", "allowed-value"),
            ("PIP_INDEX_URL", "http://pypi.example/simple"),
            ("https_proxy", "http://proxy.example:3128"),
        ],
    )
    .await?;
    let spec = "name: env\nsteps:\n- name: show\n  command: 'env > {{outputs.env}}'\n  env: {OWN: mine}\n  outputs: {parameters: [env]}\n";
    let run = runner.run(spec, json!({})).await?;
    ensure!(run["status"] == "SUCCEEDED", "{run:#}");
    let env = task(&run, "show")["outputs"]["parameters"]["env"]
        .as_str()
        .context("env output")?
        .to_string();
    for absent in ["server-secret", "NEXUS_TEST_SECRET", "AWS_SECRET", "CARGO_"] {
        ensure!(!env.contains(absent), "{absent} reached the step:\n{env}");
    }
    let vars: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for present in [
        "NEXUS_TEST_ALLOWED=allowed-value",
        "OWN=mine",
        "PIP_INDEX_URL=http://pypi.example/simple",
        "https_proxy=http://proxy.example:3128",
    ] {
        ensure!(
            env.lines().any(|l| l == present),
            "{present} missing:\n{env}"
        );
    }
    for name in [
        "PATH",
        "HOME",
        "NEXUS_RUN_ID",
        "NEXUS_STEP_DIR",
        "NEXUS_URL",
        "NEXUS_BIN",
    ] {
        ensure!(vars.contains(&name), "{name} missing:\n{env}");
    }
    Ok(())
}

/// A file outside every work folder, and what it holds.
fn outside_secret(dir: &Path) -> Result<PathBuf> {
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "outside-secret")?;
    Ok(secret)
}

/// Whether any file below `dir` holds `needle` (Nexus's data: the artifact store, run rows).
fn any_file_holds(dir: &Path, needle: &[u8]) -> Result<bool> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && std::fs::read(entry.path())?
                    .windows(needle.len())
                    .any(|w| w == needle)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[tokio::test]
async fn outputs_never_follow_links_out_of_the_step_folder() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let secret = outside_secret(&dir)?;
    // A folder outside, holding a file named like the `folder` step's output.
    let stolen = dir.join("elsewhere");
    std::fs::create_dir(&stolen)?;
    std::fs::copy(&secret, stolen.join("stolen"))?;
    let spec = format!(
        "name: links\nsteps:\n\
         - name: param\n  command: 'ln -s {s} {{{{outputs.leak}}}}'\n  outputs: {{parameters: [leak]}}\n\
         - name: file\n  command: 'ln -s {s} {{{{outputs.model}}}}'\n  outputs: {{artifacts: [model]}}\n\
         - name: tree\n  command: 'mkdir {{{{outputs.tree}}}} && ln -s {s} {{{{outputs.tree}}}}/x'\n  outputs: {{artifacts: [tree]}}\n\
         - name: folder\n  command: 'rm -r outputs && ln -s {d} outputs'\n  outputs: {{artifacts: [stolen]}}\n",
        s = secret.display(),
        d = stolen.display(),
    );
    let run = runner.run(&spec, json!({})).await?;
    ensure!(run["status"] == "FAILED", "{run:#}");
    for step in ["param", "file", "tree", "folder"] {
        let t = task(&run, step);
        ensure!(t["status"] == "FAILED", "{step}: {run:#}");
        ensure!(
            t["error"].as_str().unwrap_or("").contains("symbolic link"),
            "{step}: {t:#}"
        );
    }
    ensure!(!run.to_string().contains("outside-secret"), "{run:#}");
    ensure!(
        !any_file_holds(runner.data.path(), b"outside-secret")?,
        "the secret was copied into Nexus's data folder"
    );
    ensure!(std::fs::read_to_string(&secret)? == "outside-secret");
    Ok(())
}

/// A compiled-KFP-shaped pipeline with one container task `t` running `sh -c SCRIPT`, given
/// its output parameter file, its artifact path and the executor output file as $0, $1, $2.
fn kfp_shell(script: &str) -> String {
    json!({
        "pipelineInfo": {"name": "kfp-shell"},
        "root": {"dag": {"tasks": {"t": {"componentRef": {"name": "comp-t"}, "taskInfo": {"name": "t"}}}}},
        "components": {"comp-t": {
            "executorLabel": "exec-t",
            "outputDefinitions": {
                "parameters": {"out": {"parameterType": "STRING"}},
                "artifacts": {"art": {"artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}},
            },
        }},
        "deploymentSpec": {"executors": {"exec-t": {"container": {
            "image": "alpine",
            "command": ["sh", "-c", script,
                "{{$.outputs.parameters['out'].output_file}}",
                "{{$.outputs.artifacts['art'].path}}",
                "{{$.outputs.output_file}}"],
        }}}},
    })
    .to_string()
}

#[tokio::test]
async fn kfp_outputs_stay_inside_the_step_folder() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let (_keep, dir) = scratch()?;
    let secret = outside_secret(&dir)?;
    let s = secret.display();
    let cases = [
        (format!("ln -s {s} \"$0\""), "symbolic link"),
        (format!("ln -s {s} \"$1\""), "symbolic link"),
        (
            format!(
                "printf '{{\"artifacts\": {{\"art\": {{\"artifacts\": [{{\"uri\": \"{s}\"}}]}}}}}}' > \"$2\""
            ),
            "outside the step's folder",
        ),
    ];
    for (script, expected) in cases {
        let run = runner.run(&kfp_shell(&script), json!({})).await?;
        ensure!(run["status"] == "FAILED", "{script}: {run:#}");
        let error = task(&run, "t")["error"].as_str().unwrap_or("").to_string();
        ensure!(error.contains(expected), "{script}: {run:#}");
        ensure!(!run.to_string().contains("outside-secret"), "{run:#}");
    }
    ensure!(!any_file_holds(runner.data.path(), b"outside-secret")?);
    Ok(())
}

#[tokio::test]
async fn hostile_kfp_ir_is_refused_and_the_server_keeps_serving() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let leaf = json!({"componentRef": {"name": "comp-leaf"}});
    let ir = |tasks: Value, mut components: Value| {
        components["comp-leaf"] = json!({"executorLabel": "exec-leaf"});
        json!({
            "pipelineInfo": {"name": "hostile"},
            "root": {"dag": {"tasks": tasks}},
            "components": components,
            "deploymentSpec": {"executors": {"exec-leaf": {"container": {"image": "x", "command": ["true"]}}}},
        })
        .to_string()
    };
    let uses = |c: &str| json!({"componentRef": {"name": c}});
    let mut fan = json!({});
    for level in 0..6 {
        let child = if level == 5 {
            "comp-leaf".to_string()
        } else {
            format!("comp-l{}", level + 1)
        };
        let tasks: serde_json::Map<String, Value> =
            (0..10).map(|i| (format!("t{i}"), uses(&child))).collect();
        fan[format!("comp-l{level}")] = json!({"dag": {"tasks": tasks}});
    }
    let cases = [
        (
            ir(
                json!({"a": uses("comp-a")}),
                json!({"comp-a": {"dag": {"tasks": {"self": uses("comp-a")}}}}),
            ),
            "component cycle: comp-a -> comp-a",
        ),
        (
            ir(
                json!({"a": uses("comp-a")}),
                json!({
                    "comp-a": {"dag": {"tasks": {"b": uses("comp-b")}}},
                    "comp-b": {"dag": {"tasks": {"a": uses("comp-a")}}},
                }),
            ),
            "component cycle: comp-a -> comp-b -> comp-a",
        ),
        (
            ir(json!({"top": uses("comp-l0")}), fan),
            "more than 10000 tasks",
        ),
        (
            ir(json!({"..": leaf.clone()}), json!({})),
            "cannot be a folder name",
        ),
        (
            ir(json!({"a/b": leaf}), json!({})),
            "cannot be a folder name",
        ),
    ];
    for (spec, message) in cases {
        let (status, body) = runner.submit(&spec, json!({})).await?;
        ensure!(status == 400, "{message}: answered {status}: {body}");
        ensure!(body["error"]["code"] == "INVALID_SPEC", "{body}");
        ensure!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(message),
            "{message}: {body}"
        );
    }
    let (status, body) = runner.server().get("/api/v1/pipelines/runs").await?;
    ensure!(status == 200 && body["runs"] == json!([]), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_follow_whose_client_left_stops_at_once() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    let spec = "name: slow\nsteps:\n- name: talk\n  command: 'echo started; sleep 120'\n";
    let id = runner.run_id(spec, json!({})).await?;
    let server = runner.server();
    let metrics_url = server.metrics_url();
    let streams = || common::metric_sum(&metrics_url, "nexus_pipeline_log_streams");
    let logs_url = server.url(&format!(
        "/api/v1/pipelines/runs/{id}/logs?step=talk&follow=true"
    ));
    // The step is known (and its log followable) once the run has scheduled it.
    let mut response = common::poll_until(Duration::from_secs(30), "the step scheduled", || {
        let logs_url = logs_url.clone();
        async move {
            let response = reqwest::get(logs_url).await?;
            Ok((response.status() == 200).then_some(response))
        }
    })
    .await?;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("started") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .context("no log line within 30 s")??
            .context("the stream ended while the step runs")?;
        seen.extend_from_slice(&chunk);
    }
    ensure!(streams().await? == 1.0, "one stream open");
    drop(response);
    // The step still runs for two minutes: only the client leaving can end the stream.
    common::poll_until(
        Duration::from_secs(10),
        "the log stream stopped",
        || async { Ok((streams().await? == 0.0).then_some(())) },
    )
    .await?;
    let run = runner.get(&id).await?;
    ensure!(run["status"] == "RUNNING", "{run:#}");
    let (status, _) = server
        .post(&format!("/api/v1/pipelines/runs/{id}/cancel"), &json!({}))
        .await?;
    ensure!(status == 200);
    Ok(())
}

#[tokio::test]
async fn large_logs_stream_whole() -> Result<()> {
    let runner = Runner::start(&[]).await?;
    // 3 MiB of log in 48 lines of 64 KiB, more than one read of the server's.
    let spec = "name: chatty\nsteps:\n- name: talk\n  command: 'for i in $(seq 48); do head -c 65535 /dev/zero | tr \"\\\\0\" x; echo; done'\n";
    let run = runner.run(spec, json!({})).await?;
    ensure!(run["status"] == "SUCCEEDED", "{run:#}");
    let id = run["id"].as_str().context("id")?;
    let text = reqwest::get(
        runner
            .server()
            .url(&format!("/api/v1/pipelines/runs/{id}/logs?step=talk")),
    )
    .await?
    .text()
    .await?;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('x')).collect();
    ensure!(lines.len() == 48, "{} lines of x", lines.len());
    ensure!(lines.iter().all(|l| l.len() == 65535));
    Ok(())
}
