//! The registry against the running binary when things go wrong: crash safety under
//! kill -9, `nexus up` while its database goes away, a registry alias moved under
//! inference load, and the serving side's model cache interrupted mid-sync.
//!
//! PostgreSQL tests create a database of their own on `NEXUS_TEST_POSTGRES_URL`'s server
//! (default postgres://postgres@127.0.0.1:5432/test) and drop it; without a reachable
//! server they say so on stderr and pass.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use common::registry::{
    Database, Fixture, Mlflow, RegistryServer, TestDatabase, all_versions, create_version,
    sqlite_integrity_check, tag_map, tags, version_of,
};
use common::{Repository, Server, check_simple_response, nexus, poll_until, simple_request};

// ---------------------------------------------------------------------- 2. crash safety

/// Size of the large artifact, and of each chunk it is streamed in.
const BIG_BYTES: u64 = 200 << 20;
const CHUNK_BYTES: usize = 1 << 20;

/// A fixed pseudo-random megabyte (xorshift), the material of the large artifact.
fn random_block() -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = Vec::with_capacity(CHUNK_BYTES);
    while block.len() < CHUNK_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        block.extend_from_slice(&state.to_le_bytes());
    }
    block
}

/// Chunk `index` of the large artifact: the block with the index in its first 8 bytes,
/// so a chunk lost, repeated or out of place shows.
fn chunk(block: &[u8], index: u64) -> Vec<u8> {
    let mut chunk = block.to_vec();
    chunk[..8].copy_from_slice(&index.to_le_bytes());
    chunk
}

/// The large artifact as a streamed body, waiting `pause` before each chunk; `sent`
/// counts the bytes handed to the client.
fn big_body(block: Arc<Vec<u8>>, pause: Duration, sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunks = BIG_BYTES / CHUNK_BYTES as u64;
    let stream = futures::stream::iter(0..chunks).then(move |index| {
        let block = Arc::clone(&block);
        let sent = Arc::clone(&sent);
        async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let chunk = chunk(&block, index);
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk)
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Checks that `response`'s body is the large artifact, byte for byte.
async fn check_big_body(response: reqwest::Response, block: &[u8]) -> Result<()> {
    let mut body = response.bytes_stream();
    let mut offset = 0u64;
    let mut current: Option<(u64, Vec<u8>)> = None;
    while let Some(piece) = body.next().await {
        let piece = piece?;
        let mut rest = &piece[..];
        while !rest.is_empty() {
            let index = offset / CHUNK_BYTES as u64;
            ensure!(
                index < BIG_BYTES / CHUNK_BYTES as u64,
                "more than {BIG_BYTES} bytes"
            );
            if current.as_ref().map(|(i, _)| *i) != Some(index) {
                current = Some((index, chunk(block, index)));
            }
            let within = (offset % CHUNK_BYTES as u64) as usize;
            let expected = &current
                .as_ref()
                .map(|(_, c)| c.as_slice())
                .unwrap_or_default()[within..];
            let n = expected.len().min(rest.len());
            ensure!(
                rest[..n] == expected[..n],
                "downloaded bytes differ in chunk {index} (offset {offset})"
            );
            offset += n as u64;
            rest = &rest[n..];
        }
    }
    ensure!(
        offset == BIG_BYTES,
        "downloaded {offset} bytes, want {BIG_BYTES}"
    );
    Ok(())
}

/// The tags of create request `request`: its id and four more derived from it.
fn request_tags(request: u64) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([("request".to_string(), request.to_string())]);
    for k in 1..=4 {
        tags.insert(format!("t{k}"), format!("{request}-{k}"));
    }
    tags
}

/// What concurrent creators saw: acknowledged (request, version), and refused requests.
#[derive(Default)]
struct Creates {
    acked: Vec<(u64, u64)>,
    refused: Vec<(u64, String)>,
}

/// `workers` tasks creating tagged versions of `name` one after another until the
/// registry stops answering.
fn spawn_creators(
    mlflow: &Mlflow,
    name: &str,
    workers: usize,
    seen: &Arc<Mutex<Creates>>,
) -> JoinSet<()> {
    let next_request = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (mlflow, name) = (mlflow.clone(), name.to_string());
        let (next_request, seen) = (Arc::clone(&next_request), Arc::clone(seen));
        tasks.spawn(async move {
            loop {
                let request = next_request.fetch_add(1, Ordering::Relaxed);
                let source = format!("mlflow-artifacts:/{name}/{request}");
                let answer =
                    create_version(&mlflow, &name, &source, tags(request_tags(request))).await;
                let mut seen = seen.lock().expect("no creator panics holding the lock");
                match answer {
                    Ok((200, body)) => match version_of(&body["model_version"]) {
                        Ok(version) => seen.acked.push((request, version)),
                        Err(e) => seen.refused.push((request, e.to_string())),
                    },
                    Ok((status, body)) => seen.refused.push((request, format!("{status} {body}"))),
                    // The registry is gone (killed): this request's fate is unknown.
                    Err(_) => return,
                }
            }
        });
    }
    tasks
}

/// Checks the versions of `name` after a crash: each visible one whole (all five tags
/// of one request), every acknowledged one visible under its number, no refused one
/// visible, and get/search/latest agreeing. Returns the highest version.
async fn check_versions_after_crash(mlflow: &Mlflow, name: &str, seen: &Creates) -> Result<u64> {
    let versions = all_versions(mlflow, name).await?;
    let mut request_of = BTreeMap::new();
    for version in &versions {
        let number = version_of(version)?;
        let found = tag_map(&version["tags"]);
        let request: u64 = found
            .get("request")
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("version {number} has no request tag: {version}"))?;
        ensure!(
            found == request_tags(request),
            "version {number} is not whole: tags {found:?}"
        );
        ensure!(
            request_of.insert(number, request).is_none(),
            "version {number} listed twice"
        );
        let got = mlflow
            .get(
                "model-versions/get",
                &json!({"name": name, "version": number.to_string()}),
            )
            .await?;
        ensure!(
            tag_map(&got["model_version"]["tags"]) == found,
            "get and search disagree on version {number}: {got} / {version}"
        );
    }
    let requests: BTreeSet<u64> = request_of.values().copied().collect();
    ensure!(
        requests.len() == request_of.len(),
        "a request made two versions: {request_of:?}"
    );
    for (request, version) in &seen.acked {
        ensure!(
            request_of.get(version) == Some(request),
            "acknowledged version {version} (request {request}) is not visible as such: {request_of:?}"
        );
    }
    for (request, why) in &seen.refused {
        ensure!(
            !requests.contains(request),
            "refused request {request} ({why}) left a version"
        );
    }
    let highest = request_of.keys().max().copied().unwrap_or(0);
    let model = mlflow
        .get("registered-models/get", &json!({"name": name}))
        .await?;
    let latest: Vec<u64> = model["registered_model"]["latest_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(version_of)
        .collect::<Result<_>>()?;
    ensure!(
        latest == [highest],
        "latest versions {latest:?}, highest visible {highest}"
    );
    Ok(highest)
}

/// kill -9 while a 200 MB artifact upload is in flight (and versions are being created):
/// after a restart nothing of the upload is visible, the database is intact, and the
/// upload done again comes back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_upload_leaves_no_partial_artifact() -> Result<()> {
    let mut fx = Fixture::start(Database::Sqlite)
        .await?
        .context("SQLite is always there")?;
    let mlflow = fx.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "uploading"}))
        .await?;
    let block = Arc::new(random_block());
    let client = reqwest::Client::new();
    let url = mlflow.artifact_url("crash/big.bin");
    let sent = Arc::new(AtomicU64::new(0));
    let upload = tokio::spawn(
        client
            .put(&url)
            .body(big_body(
                Arc::clone(&block),
                Duration::from_millis(10),
                Arc::clone(&sent),
            ))
            .send(),
    );
    let seen = Arc::new(Mutex::new(Creates::default()));
    let creators = spawn_creators(&mlflow, "uploading", 2, &seen);
    let sent_enough = || async { Ok((sent.load(Ordering::Relaxed) >= 40 << 20).then_some(())) };
    poll_until(
        Duration::from_secs(30),
        "40 MB of the upload sent",
        sent_enough,
    )
    .await?;
    ensure!(
        !upload.is_finished(),
        "the upload ended early: {:?}",
        upload.await?
    );
    fx.server.kill();
    let answer = upload.await?;
    ensure!(
        !answer.as_ref().is_ok_and(|r| r.status().is_success()),
        "the upload succeeded although the registry was killed: {answer:?}"
    );
    creators.join_all().await;

    fx.server.restart().await?;
    let mlflow = fx.mlflow();
    let url = mlflow.artifact_url("crash/big.bin");
    let status = client.get(&url).send().await?.status();
    ensure!(status == 404, "the partial artifact answers {status}");
    for folder in ["", "crash"] {
        let listing = mlflow.list_artifacts(folder).await?;
        ensure!(
            listing
                .iter()
                .all(|(path, _, _)| path != "big.bin" && !path.contains('#')),
            "listing of {folder:?} after the crash: {listing:?}"
        );
    }
    sqlite_integrity_check(&fx.server.sqlite_path()).await?;
    let seen = std::mem::take(&mut *seen.lock().expect("creators are done"));
    check_versions_after_crash(&mlflow, "uploading", &seen).await?;

    let retry = client
        .put(&url)
        .body(big_body(
            Arc::clone(&block),
            Duration::ZERO,
            Arc::new(AtomicU64::new(0)),
        ))
        .send()
        .await?;
    ensure!(retry.status() == 200, "retried upload: {}", retry.status());
    let listing = mlflow.list_artifacts("crash").await?;
    ensure!(
        listing == [("big.bin".to_string(), false, Some(BIG_BYTES))],
        "listing after the retry: {listing:?}"
    );
    let download = client.get(&url).send().await?;
    ensure!(download.status() == 200, "download: {}", download.status());
    check_big_body(download, &block).await
}

/// kill -9 while versions with tags are being created: after a restart every visible
/// version is whole and consistent, and the next create works.
async fn killed_mid_creates_leaves_whole_versions(kind: Database) -> Result<()> {
    let Some(mut fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "crash"}))
        .await?;
    let seen = Arc::new(Mutex::new(Creates::default()));
    let creators = spawn_creators(&mlflow, "crash", 8, &seen);
    let enough = || async {
        let acked = seen.lock().expect("no creator panics").acked.len();
        Ok((acked >= 40).then_some(()))
    };
    poll_until(Duration::from_secs(30), "40 versions created", enough).await?;
    fx.server.kill();
    creators.join_all().await;

    fx.server.restart().await?;
    let mlflow = fx.mlflow();
    if kind == Database::Sqlite {
        sqlite_integrity_check(&fx.server.sqlite_path()).await?;
    }
    let seen = std::mem::take(&mut *seen.lock().expect("creators are done"));
    if !seen.refused.is_empty() {
        eprintln!(
            "{kind:?}: {} creates refused before the kill (concurrency bug), e.g. {}",
            seen.refused.len(),
            seen.refused[0].1
        );
    }
    let highest = check_versions_after_crash(&mlflow, "crash", &seen).await?;
    let (status, body) = create_version(
        &mlflow,
        "crash",
        "mlflow-artifacts:/after",
        tags(request_tags(1 << 40)),
    )
    .await?;
    ensure!(status == 200, "create after the restart: {status} {body}");
    let version = version_of(&body["model_version"])?;
    ensure!(
        version == highest + 1,
        "version {version} after highest {highest}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_mid_creates_leaves_whole_versions() -> Result<()> {
    killed_mid_creates_leaves_whole_versions(Database::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_creates_leaves_whole_versions() -> Result<()> {
    killed_mid_creates_leaves_whole_versions(Database::Postgres).await
}

// ------------------------------------------------------------------- 3. database down

/// A TCP proxy in front of PostgreSQL: down closes it and every connection it carries;
/// up listens again on the same port.
struct Proxy {
    port: u16,
    target: String,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: &str) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Proxy {
            port: listener.local_addr()?.port(),
            target: target.to_string(),
            task: Some(tokio::spawn(forward(listener, target.to_string()))),
        })
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Resolves once the task is dropped: its listener and connections with it.
            let _ = task.await;
        }
    }

    async fn up(&mut self) -> Result<()> {
        let address = &self.address();
        let bind = || async move { Ok(TcpListener::bind(address).await.ok()) };
        let listener =
            poll_until(Duration::from_secs(10), "the proxy port free again", bind).await?;
        self.task = Some(tokio::spawn(forward(listener, self.target.clone())));
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections and pipes each to `target`; dropping this future (aborting its
/// task) drops the connection tasks too.
async fn forward(listener: TcpListener, target: String) {
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// `count` inference requests on `simple`, four at a time; fails on the first that does
/// not answer 200 with the right sums.
async fn infer_simple(server: &Server, count: usize) -> Result<()> {
    let per_task = count / 4;
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let (client, url) = (
            reqwest::Client::new(),
            server.url("/v2/models/simple/infer"),
        );
        tasks.spawn(async move {
            for _ in 0..per_task {
                let response = client
                    .post(&url)
                    .json(&simple_request(2))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await?;
                let status = response.status();
                let body: Value = response.json().await?;
                ensure!(status == 200, "inference answered {status}: {body}");
                check_simple_response(&body, 2)?;
            }
            anyhow::Ok(())
        });
    }
    tasks.join_all().await.into_iter().collect()
}

/// Checks a registry answer is 503 TEMPORARILY_UNAVAILABLE naming the database and why.
fn check_unavailable(what: &str, status: u16, body: &Value, names: &str) -> Result<()> {
    ensure!(
        status == 503,
        "{what} while the database is down: {status} {body}"
    );
    ensure!(
        body["error_code"] == "TEMPORARILY_UNAVAILABLE",
        "{what}: {body}"
    );
    let message = body["message"].as_str().unwrap_or_default().to_lowercase();
    ensure!(
        message.contains("database"),
        "{what}: the message names no database: {body}"
    );
    ensure!(
        message.contains(names),
        "{what}: the message does not say {names:?}: {body}"
    );
    Ok(())
}

/// `nexus up` on PostgreSQL through a proxy: with the database gone the registry answers
/// 503 with the cause while inference carries on, and `/health/ready` says not ready and
/// why; back, the registry works and the process is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_while_the_registry_database_is_down() -> Result<()> {
    let Some(database) = TestDatabase::create(Database::Postgres).await? else {
        return Ok(());
    };
    let mut proxy = Proxy::start(database.address().context("a PostgreSQL address")?).await?;
    let data = tempfile::tempdir()?;
    let url = database.url_via(&proxy.address());
    let data_dir = data.path().display().to_string();
    let server = Server::start_up(
        Repository::examples()?,
        &["--data-dir", &data_dir, "--database-url", &url],
    )
    .await?;
    let mlflow = server.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "before"}))
        .await?;

    proxy.down().await;
    let (during, before) = (json!({"name": "during"}), json!({"name": "before"}));
    let create = mlflow.call(Method::POST, "registered-models/create", &during);
    let get = mlflow.call(Method::GET, "registered-models/get", &before);
    let (create, get, health, inference) = tokio::join!(
        create,
        get,
        server.get("/health"),
        infer_simple(&server, 52)
    );
    inference.context("inference while the database is down")?;
    let (status, body) = create?;
    check_unavailable("create", status, &body, "unavailable")?;
    let (status, body) = get?;
    check_unavailable("get", status, &body, "unavailable")?;
    let (status, body) = health?;
    check_unavailable("/health", status, &body, &proxy.address())?;
    check_unavailable("/health", status, &body, "refused")?;
    let (status, _) = server.get("/v2/health/ready").await?;
    ensure!(
        status == 200,
        "inference ready while the database is down: {status}"
    );
    let (status, body) = server.get("/health/ready").await?;
    let registry = body["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "registry"))
        .cloned()
        .unwrap_or_default();
    ensure!(
        status == 503
            && registry["status"] == "down"
            && registry["checks"]["database"]["status"] == "error"
            && registry["checks"]["artifacts"]["status"] == "ok",
        "/health/ready with the database down: {status} {body}"
    );
    let (status, _) = server.get("/health/live").await?;
    ensure!(
        status == 200,
        "not live while the database is down: {status}"
    );

    proxy.up().await?;
    let created = || async {
        let (status, body) = mlflow
            .call(
                Method::POST,
                "registered-models/create",
                &json!({"name": "after"}),
            )
            .await?;
        Ok((status == 200).then_some(body))
    };
    poll_until(
        Duration::from_secs(30),
        "the registry back with its database",
        created,
    )
    .await?;
    mlflow
        .get("registered-models/get", &json!({"name": "before"}))
        .await?;
    poll_until(Duration::from_secs(30), "ready again", || async {
        let (status, _) = server.get("/health/ready").await?;
        Ok((status == 200).then_some(()))
    })
    .await?;
    infer_simple(&server, 8).await
}

/// Registry answers name the database and why it cannot be reached when it goes down
/// while running, as they do when it is down from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_names_the_cause_when_its_database_goes_down() -> Result<()> {
    let Some(database) = TestDatabase::create(Database::Postgres).await? else {
        return Ok(());
    };
    let mut proxy = Proxy::start(database.address().context("a PostgreSQL address")?).await?;
    let data = tempfile::tempdir()?;
    let args = [
        "--database-url".to_string(),
        database.url_via(&proxy.address()),
    ];
    let server = RegistryServer::start(data.path(), &args).await?;
    let mlflow = server.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "before"}))
        .await?;
    proxy.down().await;
    let (status, body) = mlflow
        .call(
            Method::POST,
            "registered-models/create",
            &json!({"name": "during"}),
        )
        .await?;
    check_unavailable("create", status, &body, &proxy.address())?;
    check_unavailable("create", status, &body, "refused")
}

/// `nexus up` with an unreachable database starts anyway: the registry answers 503 with
/// the cause, inference works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_with_an_unreachable_registry_database() -> Result<()> {
    let data = tempfile::tempdir()?;
    let data_dir = data.path().display().to_string();
    let server = Server::start_up(
        Repository::examples()?,
        &[
            "--data-dir",
            &data_dir,
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
        ],
    )
    .await?;
    let (status, body) = server
        .mlflow()
        .call(
            Method::POST,
            "registered-models/create",
            &json!({"name": "m"}),
        )
        .await?;
    check_unavailable("create", status, &body, "127.0.0.1:1")?;
    check_unavailable("create", status, &body, "refused")?;
    let (status, _) = server.get("/health").await?;
    ensure!(status == 503, "registry /health with no database: {status}");
    let (status, _) = server.get("/v2/health/ready").await?;
    ensure!(status == 200, "ready with no registry database: {status}");
    infer_simple(&server, 52).await
}

// ------------------------------------------------------------- 4. hot swap under load

/// One inference answer of the swap model: which model answered (x + 1 or x + 2) or why
/// the request failed, with when it started and ended.
struct Sample {
    start: Instant,
    end: Instant,
    plus: Result<u8, String>,
}

/// Which model answered `body` for input `x`: 1 or 2 (every value x + 1 with
/// model_version "1", or every value x + 2 with "2"), or why neither.
fn which_model(body: &Value, x: &[f32; 4]) -> Result<u8, String> {
    let data = body["outputs"][0]["data"]
        .as_array()
        .ok_or_else(|| format!("no output data in {body}"))?;
    let got: Vec<f64> = data.iter().filter_map(Value::as_f64).collect();
    for plus in [1u8, 2] {
        let want: Vec<f64> = x.iter().map(|v| f64::from(v + f32::from(plus))).collect();
        if got == want {
            let version = body["model_version"].as_str().unwrap_or_default();
            return match version == plus.to_string() {
                true => Ok(plus),
                false => Err(format!("x + {plus} from model_version {version:?}: {body}")),
            };
        }
    }
    Err(format!("neither x + 1 nor x + 2 for {x:?}: {body}"))
}

/// What the load clients share: when to stop, how many answers came back, and when the
/// first x + 2 answer did.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    answered: AtomicU64,
    first_two: Mutex<Option<Instant>>,
}

/// Sends inference requests to the unversioned swap model until `load.stop`.
async fn swap_client(url: String, task: u32, load: Arc<Load>) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut n = 0u32;
    while !load.stop.load(Ordering::Relaxed) {
        // Small integers, exact in FP32.
        let base = (task * 100_000 + n % 100_000) as f32;
        let x = [base, base + 1.0, base + 2.0, base + 3.0];
        let request =
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]});
        let start = Instant::now();
        let plus = match client
            .post(&url)
            .json(&request)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Err(e) => Err(format!("request failed: {e}")),
            Ok(response) => {
                let status = response.status();
                match response.json::<Value>().await {
                    Err(e) => Err(format!("{status}, body not JSON: {e}")),
                    Ok(body) if status != 200 => Err(format!("{status}: {body}")),
                    Ok(body) => which_model(&body, &x),
                }
            }
        };
        let end = Instant::now();
        if plus == Ok(2) {
            let mut first_two = load.first_two.lock().expect("no client panics");
            first_two.get_or_insert(end);
        }
        load.answered.fetch_add(1, Ordering::Relaxed);
        samples.push(Sample { start, end, plus });
        n += 1;
    }
    samples
}

/// `nexus up --model models:/swap@champion` under 8 clients of steady load while the
/// alias moves from version 1 to 2: no request fails, no answer mixes the versions, and
/// once a version 2 answer has come back no request started later gets version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alias_move_swaps_versions_under_load_without_failures() -> Result<()> {
    let models = common::python_fixture("tests/fixtures/swap_models.py")?;
    let dirs = common::UpDirs::new()?;
    let server = dirs
        .start_up(&[
            "--model",
            "models:/swap@champion",
            "--registry-poll-secs",
            "1",
        ])
        .await?;
    let registry_url = server.url("");
    let v1 = models.path().join("v1.onnx").display().to_string();
    let v2 = models.path().join("v2.onnx").display().to_string();
    nexus(&[
        "models",
        "push",
        &v1,
        "--name",
        "swap",
        "--alias",
        "champion",
        "--registry-url",
        &registry_url,
    ])
    .await?;
    let ready = || async {
        let (status, _) = server.get("/v2/models/swap/ready").await?;
        Ok((status == 200).then_some(()))
    };
    poll_until(Duration::from_secs(30), "swap version 1 ready", ready).await?;

    let load = Arc::new(Load::default());
    let mut clients = JoinSet::new();
    for task in 0..8 {
        let url = server.url("/v2/models/swap/infer");
        clients.spawn(swap_client(url, task, Arc::clone(&load)));
    }
    let under_load = || async { Ok((load.answered.load(Ordering::Relaxed) >= 200).then_some(())) };
    poll_until(
        Duration::from_secs(30),
        "200 answers from version 1",
        under_load,
    )
    .await?;
    nexus(&[
        "models",
        "push",
        &v2,
        "--name",
        "swap",
        "--registry-url",
        &registry_url,
    ])
    .await?;
    nexus(&[
        "models",
        "alias",
        "set",
        "swap",
        "champion",
        "2",
        "--registry-url",
        &registry_url,
    ])
    .await?;
    let two_seconds_of_v2 = || async {
        let since = load
            .first_two
            .lock()
            .expect("no client panics")
            .map(|t| t.elapsed());
        Ok(since
            .is_some_and(|s| s >= Duration::from_secs(2))
            .then_some(()))
    };
    let waited = poll_until(
        Duration::from_secs(30),
        "2 s of version 2 answers",
        two_seconds_of_v2,
    )
    .await;
    load.stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = clients.join_all().await.into_iter().flatten().collect();
    waited?;

    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.plus.as_ref().err())
        .collect();
    let ones = samples.iter().filter(|s| s.plus == Ok(1)).count();
    let twos: Vec<&Sample> = samples.iter().filter(|s| s.plus == Ok(2)).collect();
    eprintln!(
        "swap under load: {} requests, {ones} answered by version 1, {} by version 2, {} failed",
        samples.len(),
        twos.len(),
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        samples.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    ensure!(ones > 0, "no request was answered by version 1");
    let first_two_end = twos
        .iter()
        .map(|s| s.end)
        .min()
        .context("no version 2 answers")?;
    let late_ones: Vec<Duration> = samples
        .iter()
        .filter(|s| s.plus == Ok(1) && s.start > first_two_end)
        .map(|s| s.start - first_two_end)
        .collect();
    ensure!(
        late_ones.is_empty(),
        "{} requests started after a version 2 answer came back were answered by version 1 \
         (started up to {:?} after it)",
        late_ones.len(),
        late_ones.iter().max()
    );

    let rows: Vec<Value> = server
        .index()
        .await?
        .into_iter()
        .filter(|r| r["name"] == "swap")
        .collect();
    ensure!(
        rows.iter()
            .any(|r| r["version"] == "2" && r["state"] == "READY"),
        "swap version 2 not READY in the index: {rows:?}"
    );
    ensure!(
        !rows
            .iter()
            .any(|r| r["version"] == "1" && r["state"] == "READY"),
        "swap version 1 still READY: {rows:?}"
    );
    Ok(())
}

// ------------------------------------------------------------------ 6. model cache

/// `nexus serve --model models:/cached@prod` stopped in the middle of syncing its cache
/// leaves what an interrupted write leaves: `config.pbtxt` cut off mid-write (the config
/// used to be rewritten in place), half-fetched folders and a half-written temporary
/// config. Started again on that cache, it serves the model, with the registry's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_cache_sync_does_not_block_the_next() -> Result<()> {
    let registry = Fixture::start(Database::Sqlite)
        .await?
        .context("SQLite needs no server")?;
    let registry_url = registry.server.url("");
    let examples = Repository::examples()?;
    let pushed = tempfile::tempdir()?;
    for file in ["config.pbtxt", "1/model.onnx"] {
        let name = file.rsplit('/').next().unwrap_or(file);
        std::fs::copy(
            examples.path().join("simple").join(file),
            pushed.path().join(name),
        )?;
    }
    let pushed_dir = pushed.path().display().to_string();
    nexus(&[
        "models",
        "push",
        &pushed_dir,
        "--name",
        "cached",
        "--alias",
        "prod",
        "--registry-url",
        &registry_url,
    ])
    .await?;
    let cache = tempfile::tempdir()?;
    let cache_dir = cache.path().display().to_string();
    let args = [
        "--model",
        "models:/cached@prod",
        "--registry-url",
        &registry_url,
        "--model-cache",
        &cache_dir,
    ];
    let serve_cached = || async {
        let server = Server::start(Repository::empty()?, &args).await?;
        let ready = || async {
            let (status, _) = server.get("/v2/models/cached/ready").await?;
            Ok((status == 200).then_some(()))
        };
        poll_until(Duration::from_secs(30), "cached ready", ready)
            .await
            .with_context(|| server.stderr())?;
        let (status, config) = server.get("/v2/models/cached/config").await?;
        ensure!(status == 200, "config: {status} {config}");
        ensure!(
            config["max_batch_size"] == 8,
            "not the registry's config: {config}"
        );
        infer_cached(&server).await?;
        anyhow::Ok(server)
    };
    drop(serve_cached().await?);

    let model_dir = cache.path().join("cached");
    let config = std::fs::read_to_string(model_dir.join("config.pbtxt"))?;
    let cut = config.find('"').context("a quoted name in the config")? + 3;
    std::fs::write(model_dir.join("config.pbtxt"), &config[..cut])?;
    let onnx = std::fs::read(model_dir.join("1/model.onnx"))?;
    for leftover in [".fetch-1", ".fetch-1.partial", ".fetch-1/model"] {
        std::fs::create_dir_all(model_dir.join(leftover))?;
        std::fs::write(
            model_dir.join(leftover).join("model.onnx"),
            &onnx[..onnx.len() / 2],
        )?;
    }
    std::fs::write(model_dir.join(".config.pbtxt.partial"), &config[..cut])?;

    let server = serve_cached().await?;
    let repaired = std::fs::read_to_string(model_dir.join("config.pbtxt"))?;
    ensure!(
        repaired.contains("max_batch_size: 8"),
        "config after the sync:\n{repaired}"
    );
    drop(server);
    Ok(())
}

/// One inference on `cached` (the `simple` model under another name) with the right sums.
async fn infer_cached(server: &Server) -> Result<()> {
    let (status, body) = server
        .post("/v2/models/cached/infer", &simple_request(2))
        .await?;
    ensure!(status == 200, "inference answered {status}: {body}");
    check_simple_response(&body, 2)
}

/// `nexus models push` of a model folder as Triton users keep them (`config.pbtxt` and
/// `1/model.onnx`) registers the newest version's model with its config, and `models:/`
/// serves it under the registered name. A folder no runtime here serves is refused before
/// anything is registered, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triton_model_folder_is_pushed_and_served() -> Result<()> {
    let registry = Fixture::start(Database::Sqlite)
        .await?
        .context("SQLite needs no server")?;
    let registry_url = registry.server.url("");
    let examples = Repository::examples()?;
    let folder = examples.path().join("simple").display().to_string();
    let pushed = nexus(&[
        "models",
        "push",
        &folder,
        "--name",
        "adder",
        "--alias",
        "prod",
        "--registry-url",
        &registry_url,
    ])
    .await?;
    ensure!(pushed.contains("adder version 1 registered"), "{pushed}");
    let server = Server::start(
        Repository::empty()?,
        &[
            "--model",
            "models:/adder@prod",
            "--registry-url",
            &registry_url,
        ],
    )
    .await?;
    let ready = || async {
        let (status, _) = server.get("/v2/models/adder/ready").await?;
        Ok((status == 200).then_some(()))
    };
    poll_until(Duration::from_secs(30), "adder ready", ready)
        .await
        .with_context(|| server.stderr())?;
    let (status, config) = server.get("/v2/models/adder/config").await?;
    ensure!(status == 200, "config: {status} {config}");
    ensure!(
        config["name"] == "adder" && config["max_batch_size"] == 8,
        "not the pushed folder's config under the registered name: {config}"
    );
    let (status, body) = server
        .post("/v2/models/adder/infer", &simple_request(2))
        .await?;
    ensure!(status == 200, "inference answered {status}: {body}");
    check_simple_response(&body, 2)?;

    let unservable = tempfile::tempdir()?;
    std::fs::create_dir_all(unservable.path().join("1"))?;
    std::fs::write(unservable.path().join("1/weights.bin"), b"not a model")?;
    let folder = unservable.path().display().to_string();
    let refused = nexus(&[
        "models",
        "push",
        &folder,
        "--name",
        "unservable",
        "--registry-url",
        &registry_url,
    ])
    .await
    .expect_err("a folder without a model is refused");
    ensure!(
        format!("{refused:#}").contains("holds no model this server can serve")
            || format!("{refused:#}").contains("no runtime recognises the model files"),
        "{refused:#}"
    );
    let (status, body) = registry
        .mlflow()
        .call(
            Method::GET,
            "registered-models/get",
            &json!({ "name": "unservable" }),
        )
        .await?;
    ensure!(
        status == 404,
        "the refused push registered something: {status} {body}"
    );
    Ok(())
}
