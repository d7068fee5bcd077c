//! Starts the real `nexus` binary on free ports over a fresh copy of the example models,
//! and drives it like a client would. Each test file uses part of this module.
#![allow(dead_code)]

pub mod registry;

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;

pub use nexus_testing::{free_port, free_ports};

/// How long a server may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of every polling loop.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts at starting a server when another process took one of its ports first.
pub const START_ATTEMPTS: usize = 3;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the Python `script` (relative to the project root, under `.venv`), which takes
/// `--out DIR`, on a new temporary directory; returns that directory.
pub fn python_fixture(script: &str) -> Result<TempDir> {
    let dir = tempfile::tempdir()?;
    let python = manifest_dir().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(manifest_dir().join(script))
        .arg("--out")
        .arg(dir.path())
        .output()
        .with_context(|| format!("cannot run {} (run scripts/setup.sh)", python.display()))?;
    ensure!(
        output.status.success(),
        "{script} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(dir)
}

/// Runs the `nexus` command line with `args` (off the async runtime's threads) and
/// returns its stdout; fails with its stderr when it exits non-zero.
pub async fn nexus(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let shown = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .with_context(|| format!("cannot run nexus {shown}"))?;
    ensure!(
        output.status.success(),
        "nexus {shown} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Triton-layout model repository in a temporary directory.
pub struct Repository {
    dir: TempDir,
}

impl Repository {
    /// The example models, written by `examples/make_models.py`.
    pub fn examples() -> Result<Self> {
        Self::from_script("examples/make_models.py")
    }

    /// The dynamic-batching test models, written by `tests/fixtures/batching_models.py`.
    pub fn batching() -> Result<Self> {
        Self::from_script("tests/fixtures/batching_models.py")
    }

    /// Three models of 48 MiB of weights each, written by `tests/fixtures/weighty_models.py`.
    pub fn weighty() -> Result<Self> {
        Self::from_script("tests/fixtures/weighty_models.py")
    }

    /// A repository written by the Python `script` (relative to the project root), which
    /// takes `--out DIR`.
    fn from_script(script: &str) -> Result<Self> {
        Ok(Repository {
            dir: python_fixture(script)?,
        })
    }

    /// An empty repository.
    pub fn empty() -> Result<Self> {
        Ok(Repository {
            dir: tempfile::tempdir()?,
        })
    }

    /// The repository's root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds model `name` whose version 1 `model.onnx` is garbage bytes.
    pub fn add_corrupt_model(&self, name: &str) -> Result<()> {
        let file = self.path().join(name).join("1/model.onnx");
        fs::create_dir_all(file.parent().expect("a file path has a parent"))?;
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        fs::write(file, garbage)?;
        Ok(())
    }

    /// Adds model `name`: a valid copy of `simple`'s model file under a config.pbtxt that
    /// does not parse.
    pub fn add_bad_config(&self, name: &str) -> Result<()> {
        let dir = self.path().join(name);
        fs::create_dir_all(dir.join("1"))?;
        fs::copy(
            self.path().join("simple/1/model.onnx"),
            dir.join("1/model.onnx"),
        )?;
        fs::write(
            dir.join("config.pbtxt"),
            format!("name: \"{name}\"\nmax_batch_size: [ this is not a config\n"),
        )?;
        Ok(())
    }

    /// Copies model `from` (its folder, config included) to `to`, renaming it in config.pbtxt.
    /// The copy is built in a hidden folder and renamed into place, so a poller never
    /// sees it half written.
    pub fn copy_model(&self, from: &str, to: &str) -> Result<()> {
        let staging = self.path().join(format!(".staging-{to}"));
        copy_dir(&self.path().join(from), &staging)?;
        let config = staging.join("config.pbtxt");
        if config.exists() {
            let text = fs::read_to_string(&config)?;
            fs::write(
                &config,
                text.replace(&format!("name: \"{from}\""), &format!("name: \"{to}\"")),
            )?;
        }
        fs::rename(&staging, self.path().join(to))?;
        Ok(())
    }

    /// Removes model `name`'s folder.
    pub fn remove_model(&self, name: &str) -> Result<()> {
        fs::remove_dir_all(self.path().join(name))?;
        Ok(())
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Polls `url` until it answers 200, failing if `child` exits first or after [`READY_TIMEOUT`].
pub async fn wait_for_ok(
    child: &mut Child,
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before it was ready");
        }
        let answer = client.get(url).timeout(Duration::from_secs(5)).send().await;
        if answer.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what} not ready after {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The sum of every sample of metric `name` (all label sets) in a Prometheus scrape of
/// `url`; 0 when the metric is absent.
pub async fn metric_sum(url: &str, name: &str) -> Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Which `nexus` command a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `nexus serve`: serving only.
    Serve,
    /// `nexus up`: serving, with the registry on the same HTTP port.
    Up,
}

impl Mode {
    fn command(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Up => "up",
        }
    }
}

/// The folders `nexus up` keeps state in: the registry's data dir and the model cache.
pub struct UpDirs {
    data: TempDir,
    cache: TempDir,
}

impl UpDirs {
    pub fn new() -> Result<Self> {
        Ok(UpDirs {
            data: tempfile::tempdir()?,
            cache: tempfile::tempdir()?,
        })
    }

    /// The registry's data folder.
    pub fn data_dir(&self) -> String {
        self.data.path().display().to_string()
    }

    /// `nexus up` over the example models, keeping state in these folders, with `extra`
    /// flags; ready.
    pub async fn start_up(&self, extra: &[&str]) -> Result<Server> {
        let mut args = self.args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_up(Repository::examples()?, &argv).await
    }

    /// `--data-dir D --model-cache C`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--data-dir".into(),
            self.data.path().display().to_string(),
            "--model-cache".into(),
            self.cache.path().display().to_string(),
        ]
    }
}

/// A `nexus serve` (or `nexus up`) process; killed when dropped, its stderr printed if
/// the test panicked.
pub struct Server {
    child: Child,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub repository: Repository,
    log: PathBuf,
    _log_dir: TempDir,
    client: reqwest::Client,
}

impl Server {
    /// Starts `nexus serve` over `repository` with `args` appended, and waits until
    /// `/v2/health/ready` answers 200.
    pub async fn start(repository: Repository, args: &[&str]) -> Result<Server> {
        Server::start_as(Mode::Serve, repository, args).await
    }

    /// Starts `nexus up` over `repository` with `args` appended (give it `--data-dir`),
    /// and waits until `/v2/health/ready` answers 200.
    pub async fn start_up(repository: Repository, args: &[&str]) -> Result<Server> {
        Server::start_as(Mode::Up, repository, args).await
    }

    /// Starts `nexus <mode>` over `repository` with `args` appended, and waits until
    /// `/v2/health/ready` answers 200.
    pub async fn start_as(mode: Mode, repository: Repository, args: &[&str]) -> Result<Server> {
        let mut repository = repository;
        for attempt in 1..=START_ATTEMPTS {
            let mut server = Server::spawn_as(mode, repository, args, &[])?;
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < START_ATTEMPTS && server.stderr().contains("cannot listen") => {
                    eprintln!("port taken, starting again: {e:#}");
                    repository = server.into_repository();
                }
                Err(e) => return Err(e.context(format!("stderr:\n{}", server.stderr()))),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Spawns `nexus serve` over `repository` with `args` appended and `env` set, on free
    /// ports, without waiting for it.
    pub fn spawn(repository: Repository, args: &[&str], env: &[(&str, &str)]) -> Result<Server> {
        Server::spawn_as(Mode::Serve, repository, args, env)
    }

    /// Spawns `nexus <mode>` over `repository` with `args` appended and `env` set, on
    /// free ports, without waiting for it.
    pub fn spawn_as(
        mode: Mode,
        repository: Repository,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let [http_port, grpc_port, metrics_port] = free_ports()?;
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("stderr.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
        command
            .arg(mode.command())
            .arg("--model-repository")
            .arg(repository.path())
            .args(["--address", "127.0.0.1"])
            .args(["--http-port", &http_port.to_string()])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        let child = command.spawn().context("cannot start nexus")?;
        Ok(Server {
            child,
            http_port,
            grpc_port,
            metrics_port,
            repository,
            log,
            _log_dir: log_dir,
            client: reqwest::Client::new(),
        })
    }

    /// Stops the server with SIGTERM (a graceful shutdown), waits for it to exit and
    /// returns its repository for a restart.
    pub async fn into_stopped_repository(mut self) -> Result<Repository> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit(Duration::from_secs(30)).await?;
        Ok(self.into_repository())
    }

    fn into_repository(mut self) -> Repository {
        self.kill();
        let placeholder = Repository {
            // An empty directory stands in for the repository moved out; Drop only kills.
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        std::mem::replace(&mut self.repository, placeholder)
    }

    /// Waits until `/v2/health/ready` answers 200 (or the process exits).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let url = self.url("/v2/health/ready");
        wait_for_ok(&mut self.child, &self.client, &url, "nexus").await
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "nexus still running after {timeout:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The pid of the `nexus` process listening on this server's HTTP port.
    pub fn pid(&self) -> Result<u32> {
        let wanted = format!("--http-port\0{}\0", self.http_port);
        for entry in fs::read_dir("/proc")? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline).contains(&wanted) {
                return Ok(pid);
            }
        }
        bail!("no process listens on HTTP port {}", self.http_port)
    }

    /// The server's anonymous resident memory (`RssAnon` in /proc: heap and private
    /// mappings, not the shared libraries' pages), in bytes.
    pub fn rss_anon(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .context("no RssAnon in /proc/PID/status")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read stderr: {e})"))
    }

    /// `http://127.0.0.1:<http port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The Prometheus endpoint.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// A client of the registry on the HTTP port (`nexus up`).
    pub fn mlflow(&self) -> registry::Mlflow {
        registry::Mlflow::new(&self.url(""))
    }

    /// GETs `path`; returns the status and the body as JSON (`Null` when empty or not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self.client.get(self.url(path)).send().await?;
        json_reply(response).await
    }

    /// POSTs `body` as JSON to `path`; returns the status and the body as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.client.post(self.url(path)).json(body).send().await?;
        json_reply(response).await
    }

    /// The repository index (`POST /v2/repository/index`).
    pub async fn index(&self) -> Result<Vec<Value>> {
        let (status, body) = self.post("/v2/repository/index", &json!({})).await?;
        ensure!(status == 200, "index answered {status}: {body}");
        match body {
            Value::Array(rows) => Ok(rows),
            other => bail!("index is not a list: {other}"),
        }
    }

    /// The index row of `model`, if listed (the first one when it has several versions).
    pub async fn index_row(&self, model: &str) -> Result<Option<Value>> {
        Ok(self
            .index()
            .await?
            .into_iter()
            .find(|row| row["name"] == model))
    }

    fn kill(&mut self) {
        // The process may have exited already; then there is nothing to kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- nexus stderr (http {}, grpc {}, metrics {}) ----\n{}",
                self.http_port,
                self.grpc_port,
                self.metrics_port,
                self.stderr()
            );
        }
    }
}

pub async fn json_reply(response: reqwest::Response) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, body))
}

/// Calls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `INPUT0` of the `simple` model for a batch of `batch` rows: 0, 1, 2, …
pub fn simple_input0(batch: usize) -> Vec<i32> {
    (0..16 * batch as i32).collect()
}

/// `INPUT1` of the `simple` model for a batch of `batch` rows: 1, 1, 1, …
pub fn simple_input1(batch: usize) -> Vec<i32> {
    vec![1; 16 * batch]
}

/// A valid JSON inference request for `simple` with a batch of `batch` rows.
pub fn simple_request(batch: usize) -> Value {
    json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [batch, 16], "data": simple_input0(batch)},
        {"name": "INPUT1", "datatype": "INT32", "shape": [batch, 16], "data": simple_input1(batch)},
    ]})
}

/// Checks a JSON inference response of `simple` to [`simple_request`]`(batch)`.
pub fn check_simple_response(body: &Value, batch: usize) -> Result<()> {
    let outputs = body["outputs"]
        .as_array()
        .with_context(|| format!("no outputs in {body}"))?;
    let a = simple_input0(batch);
    let b = simple_input1(batch);
    let sum: Vec<i64> = a.iter().zip(&b).map(|(x, y)| i64::from(x + y)).collect();
    let diff: Vec<i64> = a.iter().zip(&b).map(|(x, y)| i64::from(x - y)).collect();
    for (name, want) in [("OUTPUT0", sum), ("OUTPUT1", diff)] {
        let output = outputs
            .iter()
            .find(|o| o["name"] == name)
            .with_context(|| format!("{name} missing from {body}"))?;
        ensure!(output["datatype"] == "INT32", "{name}: {output}");
        ensure!(output["shape"] == json!([batch, 16]), "{name}: {output}");
        ensure!(output["data"] == json!(want), "{name}: {output}");
    }
    Ok(())
}
