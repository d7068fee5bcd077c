//! Platform services against the real binary: the layered configuration (file, NEXUS_*
//! environment, flags) and `nexus config show`, health and discovery endpoints.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use common::{Repository, Server, UpDirs, poll_until};
use nexus_testing::TestBroker;

/// Runs `nexus config show` with `args` and `env`; returns (success, stdout, stderr).
fn config_show(args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["config", "show"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NEXUS_CONFIG")
        .output()
        .context("cannot run nexus config show")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn line<'a>(shown: &'a str, key: &str) -> &'a str {
    shown
        .lines()
        .find(|l| l.split(" = ").next() == Some(key))
        .unwrap_or("")
}

/// A flag beats `NEXUS_*`, which beats the file, which beats the default; lists and
/// switches work; secrets are masked; TOML and YAML read the same.
#[test]
fn config_layers_file_environment_and_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("nexus.toml");
    std::fs::write(
        &toml,
        "max_queue_size = 5\ndefault_max_batch_size = 3\nmodel_control_mode = \"explicit\"\n\
         database_url = \"postgres://nexus:hunter2@db:5432/nexus\"\n\
         route_model = [\"a\", \"b\"]\nfreeze_routing = true\nkafka_option = [\"sasl.password=pw\"]\n",
    )?;
    let yaml = dir.path().join("nexus.yaml");
    std::fs::write(
        &yaml,
        "max_queue_size: 5\ndefault_max_batch_size: 3\nmodel_control_mode: explicit\n\
         database_url: postgres://nexus:hunter2@db:5432/nexus\n\
         route_model: [a, b]\nfreeze_routing: true\nkafka_option: [sasl.password=pw]\n",
    )?;
    for file in [&toml, &yaml] {
        let file = file.display().to_string();
        let (ok, shown, stderr) = config_show(
            &["--config", &file, "--default-max-batch-size", "9"],
            &[("NEXUS_MAX_QUEUE_SIZE", "7"), ("NEXUS_HTTP_PORT", "9100")],
        )?;
        ensure!(ok, "config show failed: {stderr}");
        for (key, want) in [
            ("default_max_batch_size", "\"9\""),
            ("max_queue_size", "\"7\""),
            ("http_port", "\"9100\""),
            ("model_control_mode", "\"explicit\""),
            ("grpc_port", "\"8001\""),
            ("route_model", "[\"a\", \"b\"]"),
            ("freeze_routing", "\"true\""),
            ("kafka_option", "[\"sasl.password=****\"]"),
        ] {
            let got = line(&shown, key);
            ensure!(
                got == format!("{key} = {want}"),
                "{file}: {key}: got {got:?}, want {want}\n{shown}"
            );
        }
        ensure!(
            !shown.contains("hunter2") && line(&shown, "database_url").contains("***"),
            "the database password is shown:\n{shown}"
        );
    }
    // What `config show` prints is a config file `--config` accepts, and reads the same.
    let (_, shown, _) = config_show(&["--config", &toml.display().to_string()], &[])?;
    let round_trip = dir.path().join("shown.toml");
    std::fs::write(
        &round_trip,
        shown.replace("postgres://nexus:***@", "postgres://nexus:x@"),
    )?;
    let (ok, again, stderr) = config_show(&["--config", &round_trip.display().to_string()], &[])?;
    ensure!(ok, "the shown config does not load: {stderr}");
    ensure!(
        line(&again, "max_queue_size") == "max_queue_size = \"5\"",
        "{again}"
    );
    Ok(())
}

#[test]
fn unknown_or_invalid_config_keys_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nexus.toml");
    std::fs::write(&file, "http_port = 8000\nhttp_prot = 9000\n")?;
    let (ok, _, stderr) = config_show(&["--config", &file.display().to_string()], &[])?;
    ensure!(
        !ok && stderr.contains("`http_prot`") && stderr.contains("nexus.toml"),
        "{stderr}"
    );
    std::fs::write(&file, "http_port = \"eighty\"\n")?;
    let (ok, _, stderr) = config_show(&["--config", &file.display().to_string()], &[])?;
    ensure!(!ok && stderr.contains("--http-port"), "{stderr}");
    let (ok, _, stderr) = config_show(&["--config", "/nonexistent/nexus.toml"], &[])?;
    ensure!(!ok && stderr.contains("not found"), "{stderr}");
    Ok(())
}

/// `nexus serve` runs with what the file (named by NEXUS_CONFIG) says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_options_from_the_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nexus.yaml");
    std::fs::write(&file, "max_request_bytes: 300\n")?;
    let config = file.display().to_string();
    let server = spawn_ready(
        common::Mode::Serve,
        Repository::examples()?,
        &[],
        &[("NEXUS_CONFIG", &config)],
    )
    .await?;
    let (status, body) = server
        .post("/v2/models/simple/infer", &common::simple_request(4))
        .await?;
    ensure!(
        status == 400 && body.to_string().contains("300"),
        "a body over the file's 300-byte limit answered {status}: {body}"
    );
    let (status, _) = server
        .post("/v2/models/simple/infer", &json!({"inputs": []}))
        .await?;
    ensure!(status == 400, "{status}");
    Ok(())
}

/// `nexus up` lists its components with status, version and address, and is live and ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_list_every_component() -> Result<()> {
    let dirs = UpDirs::new()?;
    let server = dirs.start_up(&[]).await?;
    let (status, body) = server.get("/api/v1/services").await?;
    ensure!(status == 200, "{status}: {body}");
    let services = body["services"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    ensure!(
        names == ["serving", "registry", "pipelines", "events", "optimizer"],
        "components: {names:?}"
    );
    for service in &services {
        ensure!(
            service["status"] == "up"
                && service["version"] == env!("CARGO_PKG_VERSION")
                && service["address"].as_str().is_some_and(|a| !a.is_empty()),
            "{service}"
        );
    }
    let serving = services[0]["address"].as_str().unwrap_or_default();
    ensure!(serving.contains(&server.http_port.to_string()), "{serving}");
    ensure!(
        services[0]["settings"]["model_control_mode"] == "none",
        "{}",
        services[0]
    );
    for path in ["/health/live", "/health/ready"] {
        let (status, body) = server.get(path).await?;
        ensure!(status == 200, "{path}: {status} {body}");
    }
    Ok(())
}

/// Every response carries a request id: the client's `x-request-id`, or a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() -> Result<()> {
    let dirs = UpDirs::new()?;
    let server = dirs.start_up(&[]).await?;
    let client = reqwest::Client::new();
    let mut issued = Vec::new();
    for path in [
        "/v2",
        "/api/2.0/mlflow/registered-models/search",
        "/api/v1/pipelines/runs",
    ] {
        let response = client.get(server.url(path)).send().await?;
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        ensure!(
            id.as_deref().is_some_and(|i| !i.is_empty()),
            "{path}: no x-request-id"
        );
        issued.extend(id);
        let response = client
            .get(server.url(path))
            .header("x-request-id", "client-42")
            .send()
            .await?;
        ensure!(
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                == Some("client-42"),
            "{path}: the client's request id is not echoed"
        );
    }
    issued.sort();
    issued.dedup();
    ensure!(issued.len() == 3, "request ids repeat: {issued:?}");
    // The registry's request latency is measured per route pattern.
    let scraped = reqwest::get(server.metrics_url()).await?.text().await?;
    ensure!(
        scraped.contains(
            "nexus_registry_request_duration_seconds_count{method=\"GET\",route=\"/api/2.0/mlflow/registered-models/search\",status=\"200\"}"
        ),
        "no registry latency series"
    );
    Ok(())
}

/// `nexus token create` for the database in `data_dir`; returns the token.
fn create_token(data_dir: &str, role: &str) -> Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "token",
            "--data-dir",
            data_dir,
            "create",
            "--role",
            role,
            "--name",
            role,
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let token = stdout.lines().last().unwrap_or_default().trim().to_string();
    ensure!(token.starts_with("nexus_"), "not a token: {stdout}");
    Ok(token)
}

/// The id of the key named `name`, from `nexus token list`.
fn token_id(data_dir: &str, name: &str) -> Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["token", "--data-dir", data_dir, "list"])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .and_then(|l| l.split_whitespace().next())
        .map(String::from)
        .with_context(|| format!("no key {name} in:\n{text}"))
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let mut request = reqwest::Client::new().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::json_reply(request.send().await?).await
}

/// `nexus up --auth`: no credential is 401, a role without the right is 403 (MLflow's body
/// on registry routes, V2's on inference), the right role passes, a revoked key stops
/// working; registry models are still served (the watcher's own calls are authenticated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_admits_by_role_and_registry_models_still_load() -> Result<()> {
    use reqwest::Method;
    let models = common::python_fixture("tests/fixtures/swap_models.py")?;
    let dirs = UpDirs::new()?;
    let data_dir = dirs.data_dir();
    let (reader, inference, deployer) = (
        create_token(&data_dir, "reader")?,
        create_token(&data_dir, "inference")?,
        create_token(&data_dir, "deployer")?,
    );
    let server = dirs
        .start_up(&[
            "--auth",
            "--model",
            "models:/swap@champion",
            "--registry-poll-secs",
            "1",
        ])
        .await?;
    let infer = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
    let create = json!({"name": "swap"});

    let (status, body) = call(&server, Method::GET, "/v2/models/simple", None, None).await?;
    ensure!(
        status == 401 && body["error"].is_string(),
        "{status} {body}"
    );
    let search = "/api/2.0/mlflow/registered-models/search";
    let (status, body) = call(&server, Method::GET, search, None, None).await?;
    ensure!(
        status == 401 && body["error_code"] == "UNAUTHENTICATED",
        "{status} {body}"
    );
    let (status, _) = call(&server, Method::GET, search, Some(&reader), None).await?;
    ensure!(status == 200, "reader search: {status}");
    let create_path = "/api/2.0/mlflow/registered-models/create";
    let (status, body) = call(
        &server,
        Method::POST,
        create_path,
        Some(&reader),
        Some(create.clone()),
    )
    .await?;
    ensure!(
        status == 403 && body["error_code"] == "PERMISSION_DENIED",
        "{status} {body}"
    );
    let (status, body) = call(
        &server,
        Method::POST,
        "/v2/models/simple/infer",
        Some(&reader),
        Some(common::simple_request(1)),
    )
    .await?;
    ensure!(
        status == 403 && body["error"].is_string(),
        "reader infer: {status} {body}"
    );
    let (status, _) = call(&server, Method::GET, "/health/ready", None, None).await?;
    ensure!(status == 200, "health needs no credential: {status}");

    // A deployer registers a version; the server's watcher (its own credential) serves it.
    let file = models.path().join("v1.onnx").display().to_string();
    let pushed = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "models", "push", &file, "--name", "swap", "--alias", "champion",
        ])
        .args(["--registry-url", &server.url("")])
        .env("MLFLOW_TRACKING_TOKEN", &deployer)
        .output()?;
    ensure!(
        pushed.status.success(),
        "push with a deployer token: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let answer = poll_until(Duration::from_secs(30), "swap served", || async {
        let (status, body) = call(
            &server,
            Method::POST,
            "/v2/models/swap/infer",
            Some(&inference),
            Some(infer.clone()),
        )
        .await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    ensure!(answer["outputs"][0]["data"][0] == 2.0, "{answer}");

    // Revoked: refused once the key cache (1 s) has expired.
    let id = token_id(&data_dir, "reader")?;
    let revoked = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["token", "--data-dir", &data_dir, "revoke", &id])
        .output()?;
    ensure!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    poll_until(
        Duration::from_secs(10),
        "the revoked key refused",
        || async {
            let (status, _) = call(&server, Method::GET, search, Some(&reader), None).await?;
            Ok((status == 401).then_some(()))
        },
    )
    .await?;
    let scraped = reqwest::get(server.metrics_url()).await?.text().await?;
    ensure!(
        scraped.contains("nexus_auth_denied_total"),
        "no auth denial metric"
    );
    Ok(())
}

/// Listening beyond loopback without authentication needs --insecure.
#[test]
fn non_loopback_without_auth_is_refused() -> Result<()> {
    let repository = Repository::examples()?;
    let port = common::free_port()?.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--model-repository"])
        .arg(repository.path())
        .args(["--address", "0.0.0.0", "--http-port", &port])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "started open on 0.0.0.0");
    ensure!(
        stderr.contains("--insecure") && stderr.contains("--auth"),
        "{stderr}"
    );
    Ok(())
}

/// `nexus registry` alone refuses to listen beyond loopback without --auth, like serve/up.
#[test]
fn registry_on_non_loopback_without_auth_is_refused() -> Result<()> {
    let data = tempfile::tempdir()?;
    let port = common::free_port()?.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["registry", "--address", "0.0.0.0", "--port", &port])
        .arg("--data-dir")
        .arg(data.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "registry started open on 0.0.0.0");
    ensure!(
        stderr.contains("--insecure") && stderr.contains("--auth"),
        "{stderr}"
    );
    Ok(())
}

/// `nexus registry --auth` goes through the gateway: no credential is 401, a reader reads
/// but cannot write (403), a deployer writes; wrong keys from one address are answered 429
/// with Retry-After once over `--auth-failure-burst`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_alone_admits_by_role() -> Result<()> {
    use reqwest::Method;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().display().to_string();
    let (reader, deployer) = (
        create_token(&data_dir, "reader")?,
        create_token(&data_dir, "deployer")?,
    );
    let server = common::registry::RegistryServer::start(
        data.path(),
        &[
            "--auth",
            "--auth-failure-burst",
            "3",
            "--auth-failure-rps",
            "0.1",
        ]
        .map(String::from),
    )
    .await?;
    let client = reqwest::Client::new();
    let send = |token: Option<&str>, method: Method, endpoint: &str, body: serde_json::Value| {
        let mut request =
            client.request(method, server.url(&format!("/api/2.0/mlflow/{endpoint}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let request = request.json(&body);
        async move { common::json_reply(request.send().await?).await }
    };
    let create = "registered-models/create";
    let (status, body) = send(None, Method::POST, create, json!({"name": "m"})).await?;
    ensure!(
        status == 401 && body["error_code"] == "UNAUTHENTICATED",
        "no credential: {status} {body}"
    );
    let (status, body) = send(Some(&reader), Method::POST, create, json!({"name": "m"})).await?;
    ensure!(
        status == 403 && body["error_code"] == "PERMISSION_DENIED",
        "reader writes: {status} {body}"
    );
    let (status, body) = send(Some(&deployer), Method::POST, create, json!({"name": "m"})).await?;
    ensure!(status == 200, "deployer writes: {status} {body}");
    let (status, body) = send(
        Some(&reader),
        Method::GET,
        "registered-models/get?name=m",
        json!({}),
    )
    .await?;
    ensure!(
        status == 200 && body["registered_model"]["name"] == "m",
        "reader reads: {status} {body}"
    );

    for _ in 0..3 {
        let (status, _) = send(
            Some("nexus_wrong"),
            Method::GET,
            "registered-models/search",
            json!({}),
        )
        .await?;
        ensure!(status == 401, "a wrong key: {status}");
    }
    let response = client
        .get(server.url("/api/2.0/mlflow/registered-models/search"))
        .bearer_auth(&reader)
        .send()
        .await?;
    let retry = response.headers().get("retry-after").cloned();
    let (status, body) = common::json_reply(response).await?;
    ensure!(
        status == 429 && retry.is_some() && body["error_code"] == "RESOURCE_EXHAUSTED",
        "after 3 wrong keys: {status} {retry:?} {body}"
    );
    Ok(())
}

/// `nexus serve` starts while its Kafka broker is down (it used to wait 10 s and exit):
/// inference serves; events are dropped and counted; `/health/ready` is 503 and names Kafka
/// while `/v2/health/ready` (inference's) stays 200; once the broker is back the process is
/// ready and inference events reach the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_while_kafka_is_down_and_events_flow_once_it_is_back() -> Result<()> {
    let mut broker = TestBroker::start_local()?;
    broker.take_down()?;
    let args = broker.args();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(Repository::examples()?, &argv).await?;

    let request = common::simple_request(1);
    let (status, body) = server.post("/v2/models/simple/infer", &request).await?;
    ensure!(
        status == 200,
        "inference while Kafka is down: {status} {body}"
    );
    common::check_simple_response(&body, 1)?;
    let dropped = common::metric_sum(&server.metrics_url(), "nexus_events_dropped_total").await?;
    ensure!(dropped >= 1.0, "no dropped event counted");
    let (status, body) = server.get("/health/ready").await?;
    let events = body["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "events"))
        .cloned()
        .unwrap_or_default();
    let why = events["checks"]["bus"]["error"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        status == 503
            && events["status"] == "down"
            && why.contains("Kafka")
            && why.contains("nexus_events_dropped_total"),
        "/health/ready while Kafka is down: {status} {body}"
    );
    let (status, _) = server.get("/v2/health/ready").await?;
    ensure!(
        status == 200,
        "inference not ready while Kafka is down: {status}"
    );

    broker.bring_back()?;
    poll_until(
        Duration::from_secs(60),
        "ready once Kafka is back",
        || async { Ok((server.get("/health/ready").await?.0 == 200).then_some(())) },
    )
    .await?;
    let reader = broker.reader("nexus.inference");
    poll_until(
        Duration::from_secs(30),
        "inference events on the topic",
        || async {
            let (status, body) = server.post("/v2/models/simple/infer", &request).await?;
            ensure!(status == 200, "{status} {body}");
            Ok((!reader.read_available().await?.is_empty()).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Spawns `nexus <mode>` with `env` (which `Server::start` cannot set) and waits until it
/// is ready.
async fn spawn_ready(
    mode: common::Mode,
    repository: Repository,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Server> {
    let server = Server::spawn_as(mode, repository, args, env)?;
    poll_until(Duration::from_secs(60), "nexus ready", || async {
        let ready = server.get("/v2/health/ready").await.map(|(s, _)| s == 200);
        Ok(ready.unwrap_or(false).then_some(()))
    })
    .await?;
    Ok(server)
}

/// Spans received by a local OTLP/HTTP (JSON) collector.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

impl Collector {
    /// Listens on a free port; returns its base URL.
    async fn start(&self) -> Result<String> {
        let spans = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    if let Ok(export) = serde_json::from_slice::<serde_json::Value>(&body) {
                        let mut all = spans.0.lock().expect("no panics");
                        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                                all.extend(
                                    scope["spans"].as_array().into_iter().flatten().cloned(),
                                );
                            }
                        }
                    }
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    /// Waits for spans `first` and `second` of `trace`.
    async fn pair(
        &self,
        first: &str,
        second: &str,
        trace: &str,
    ) -> Result<(serde_json::Value, serde_json::Value)> {
        poll_until(Duration::from_secs(20), "spans exported", || async {
            Ok(self.find(first, trace).zip(self.find(second, trace)))
        })
        .await
    }

    fn find(&self, name: &str, trace: &str) -> Option<serde_json::Value> {
        self.0
            .lock()
            .expect("no panics")
            .iter()
            .find(|s| s["name"] == name && s["traceId"].as_str() == Some(trace))
            .cloned()
    }
}

/// With `--otlp-endpoint`, a request carrying a W3C `traceparent` produces spans in the
/// caller's trace: the request span's parent is the caller's span, the inference span's
/// parent is the request span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_spans_join_the_callers_trace() -> Result<()> {
    let collector = Collector::default();
    let endpoint = collector.start().await?;
    let server = spawn_ready(
        common::Mode::Serve,
        Repository::examples()?,
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "http-json"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await?;
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = reqwest::Client::new()
        .post(server.url("/v2/models/simple/infer"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&common::simple_request(1))
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    let (request, infer) = collector.pair("request", "infer", trace).await?;
    ensure!(
        request["parentSpanId"].as_str() == Some(caller),
        "the request span's parent is not the caller's span: {request}"
    );
    ensure!(
        infer["parentSpanId"] == request["spanId"],
        "the inference span is not a child of the request span: {infer} / {request}"
    );
    Ok(())
}

/// A pipeline submitted with a `traceparent` runs in the caller's trace: the run's span is
/// a child of the submit request's, and each step's process gets it as `TRACEPARENT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_steps_receive_the_trace() -> Result<()> {
    let collector = Collector::default();
    let endpoint = collector.start().await?;
    let dirs = UpDirs::new()?;
    let mut args = dirs.args();
    args.extend(["--otlp-endpoint", &endpoint, "--otlp-protocol", "http-json"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_ready(
        common::Mode::Up,
        Repository::examples()?,
        &argv,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await?;
    let spec = "name: traced\nsteps:\n  - name: show\n    command: [sh, -c, 'printf %s \"$TRACEPARENT\" > \"{{outputs.tp}}\"']\n    outputs: {parameters: [tp]}\n";
    let (trace, caller) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/pipelines/runs"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"spec": spec}))
        .send()
        .await?;
    let (status, body) = common::json_reply(response).await?;
    ensure!(status == 201, "{status}: {body}");
    let id = body["run"]["id"].as_str().context("run id")?.to_string();
    let run = poll_until(Duration::from_secs(60), "the run finished", || async {
        let (_, body) = server.get(&format!("/api/v1/pipelines/runs/{id}")).await?;
        let done = !matches!(body["run"]["status"].as_str(), Some("PENDING" | "RUNNING"));
        Ok(done.then_some(body["run"].clone()))
    })
    .await?;
    let step = run["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["path"] == "show"))
        .cloned()
        .unwrap_or_default();
    let traceparent = step["outputs"]["parameters"]["tp"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "the step got TRACEPARENT {traceparent:?}: {run}"
    );
    let (request, pipeline) = collector.pair("request", "pipeline_run", trace).await?;
    ensure!(
        request["parentSpanId"].as_str() == Some(caller),
        "{request}"
    );
    ensure!(
        pipeline["parentSpanId"] == request["spanId"],
        "{pipeline} / {request}"
    );
    let step_parent = traceparent.split('-').nth(2).unwrap_or_default();
    ensure!(
        pipeline["spanId"].as_str() == Some(step_parent),
        "the step's parent is not the run's span: {traceparent} / {pipeline}"
    );
    Ok(())
}
