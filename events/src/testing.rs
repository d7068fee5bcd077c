//! Test support (not part of the API): a Kafka-protocol broker for tests.
//!
//! [`TestBroker::start`] uses the broker in `NEXUS_TEST_KAFKA_BROKERS` when it is set, or
//! starts [tansu](https://github.com/tansu-io/tansu) (`NEXUS_TANSU`, else
//! `${NEXUS_CACHE:-$HOME/.cache/nexus}/tansu/bin/tansu`) on a free port with its in-memory
//! storage. With neither it fails: Kafka tests must not pass without a broker
//! (`scripts/install-tansu.sh` installs tansu).
//!
//! tansu's memory engine keeps nothing across [`TestBroker::restart`]: events and
//! committed offsets are gone. `restart` creates the topics the broker had again (same
//! names and partition counts), as a restarted Kafka would still have them.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{Delivery, EventError, KafkaArgs, Topic, TopicNames};

/// Environment variable naming an external broker (host:port,...) for the tests.
pub const BROKERS_ENV: &str = "NEXUS_TEST_KAFKA_BROKERS";
/// Environment variable naming the tansu binary.
pub const TANSU_ENV: &str = "NEXUS_TANSU";

/// librdkafka settings clients of tansu need (`--kafka-option KEY=VALUE` each).
///
/// tansu 0.6 answers a fetch with the stored batches whose *base* offset is at or after
/// the fetch offset, so a consumer resuming inside a multi-record batch (after a commit
/// in the middle of it) would skip the rest of that batch. One record per batch keeps
/// every offset a batch boundary. Real Kafka does not need this.
pub const TANSU_CLIENT_OPTIONS: &[(&str, &str)] = &[("batch.num.messages", "1")];

/// Client settings for tests: tansu's, and reconnect backoff short enough that a client
/// finds a restarted broker within a second.
const TEST_CLIENT_OPTIONS: &[(&str, &str)] = &[
    ("batch.num.messages", "1"),
    ("reconnect.backoff.ms", "50"),
    ("reconnect.backoff.max.ms", "500"),
];

/// A Kafka-protocol broker for one test: external, or a tansu process killed on drop.
pub struct TestBroker {
    /// Bootstrap servers to give clients.
    pub brokers: String,
    /// Topic names of [`TestBroker::args`]: the defaults (`nexus.inference`, ...) on a
    /// local tansu, unique ones on an external broker.
    pub topics: TopicNames,
    port: u16,
    binary: Option<PathBuf>,
    child: Option<Child>,
    log: Option<PathBuf>,
    /// Topics (name, partitions) seen at the last stop, created again on restart.
    topics_at_stop: Mutex<Vec<(String, i32)>>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("brokers", &self.brokers)
            .field("local", &self.binary.is_some())
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// The tansu binary: `NEXUS_TANSU`, else `${NEXUS_CACHE:-$HOME/.cache/nexus}/tansu/bin/tansu`
/// (where `scripts/install-tansu.sh` puts it), when it exists.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(TANSU_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let cache = match std::env::var_os("NEXUS_CACHE").filter(|p| !p.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/nexus"),
    };
    let path = cache.join("tansu/bin/tansu");
    path.is_file().then_some(path)
}

/// A name no other test (or earlier run against the same external broker) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Topic names unique to one test.
pub fn unique_topics() -> TopicNames {
    let base = unique_name("nexus-test");
    TopicNames {
        inference: format!("{base}.inference"),
        feedback: format!("{base}.feedback"),
        decisions: format!("{base}.decisions"),
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestBroker {
    /// The external broker of `NEXUS_TEST_KAFKA_BROKERS`, else a local tansu.
    ///
    /// Fails when there is neither.
    pub fn start() -> io::Result<TestBroker> {
        match std::env::var(BROKERS_ENV) {
            Ok(brokers) if !brokers.trim().is_empty() => Ok(TestBroker {
                brokers: brokers.trim().to_owned(),
                topics: unique_topics(),
                port: 0,
                binary: None,
                child: None,
                log: None,
                topics_at_stop: Mutex::new(Vec::new()),
            }),
            _ => TestBroker::start_local(),
        }
    }

    /// A local tansu, even when an external broker is configured (tests that stop and
    /// restart the broker).
    ///
    /// Fails when tansu is not installed.
    pub fn start_local() -> io::Result<TestBroker> {
        let binary = tansu_binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "Kafka tests need a broker: set {BROKERS_ENV}=host:port, or install tansu \
                     (`bash scripts/install-tansu.sh`, which scripts/test.sh runs), or point \
                     {TANSU_ENV} at its binary"
                ),
            )
        })?;
        if !binary.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "tansu binary {} does not exist ({TANSU_ENV})",
                    binary.display()
                ),
            ));
        }
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut broker = TestBroker {
                brokers: format!("127.0.0.1:{port}"),
                topics: TopicNames::default(),
                port,
                binary: Some(binary.clone()),
                child: None,
                log: None,
                topics_at_stop: Mutex::new(Vec::new()),
            };
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("cannot start tansu")))
    }

    /// Whether this is a local broker that can be stopped and restarted.
    pub fn is_local(&self) -> bool {
        self.binary.is_some()
    }

    /// Whether the local broker is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Where the local broker's output goes (kept when a test panics).
    pub fn log_path(&self) -> Option<&PathBuf> {
        self.log.as_ref()
    }

    /// Stops the local broker (SIGTERM, then SIGKILL after 5 s) and waits for it,
    /// remembering its topics for [`TestBroker::restart`].
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.is_local() {
            return Err(io::Error::other(format!(
                "an external broker ({BROKERS_ENV}) cannot be stopped: use TestBroker::start_local"
            )));
        }
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        *self.topics_at_stop.lock() = self.list_topics().unwrap_or_default();
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait()? {
                Some(_) => break,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
            }
        }
        // Until the port refuses connections, clients could still reach it.
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the local broker again on the same port (stopping it first if running).
    /// With the memory engine its events and offsets are gone; the topics it had are
    /// created again.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let mut last_error = None;
        // The port may linger a moment after the old process.
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(e) = last_error {
            return Err(io::Error::other(format!(
                "cannot restart tansu on port {}: {e}",
                self.port
            )));
        }
        let topics = std::mem::take(&mut *self.topics_at_stop.lock());
        self.create_topics(&topics)
    }

    /// `nexus` command-line arguments for this broker: `--kafka-brokers`, the test
    /// client options ([`TANSU_CLIENT_OPTIONS`], short reconnect backoff) and the topic
    /// names of [`TestBroker::topics`].
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--kafka-brokers".to_owned(), self.brokers.clone()];
        for (key, value) in TEST_CLIENT_OPTIONS {
            args.push("--kafka-option".into());
            args.push(format!("{key}={value}"));
        }
        for (flag, name) in [
            ("--topic-inference", &self.topics.inference),
            ("--topic-feedback", &self.topics.feedback),
            ("--topic-decisions", &self.topics.decisions),
        ] {
            args.push(flag.into());
            args.push(name.clone());
        }
        args
    }

    /// `KafkaArgs` for this broker with topics unique to the caller (several buses can
    /// share one broker), 3 partitions, and the test client options of
    /// [`TestBroker::args`].
    pub fn kafka_args(&self) -> KafkaArgs {
        KafkaArgs {
            brokers: Some(self.brokers.clone()),
            options: TEST_CLIENT_OPTIONS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            topics: unique_topics(),
            ..KafkaArgs::default()
        }
    }

    /// Reads a topic outside any group. `topic` is a broker topic name; the default
    /// names (`nexus.inference`, ...) stand for this broker's [`TestBroker::topics`].
    pub fn reader(&self, topic: &str) -> TopicReader {
        let defaults = TopicNames::default();
        let resolved = Topic::ALL
            .into_iter()
            .find(|t| defaults.name(*t) == topic || self.topics.name(*t) == topic);
        let (label, name) = match resolved {
            Some(t) => (t, self.topics.name(t).to_owned()),
            None => (Topic::Inference, topic.to_owned()),
        };
        TopicReader {
            args: KafkaArgs {
                brokers: Some(self.brokers.clone()),
                ..KafkaArgs::default()
            },
            topic: label,
            name,
            next: Mutex::new(HashMap::new()),
        }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// The topics on the broker with their partition counts.
    fn list_topics(&self) -> io::Result<Vec<(String, i32)>> {
        let consumer: BaseConsumer = self.client_config().create().map_err(io::Error::other)?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(io::Error::other)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| (t.name().to_owned(), t.partitions().len().max(1) as i32))
            .collect())
    }

    fn create_topics(&self, topics: &[(String, i32)]) -> io::Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().map_err(io::Error::other)?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        // The admin client's own thread completes the future.
        let results = futures::executor::block_on(admin.create_topics(&new, &options))
            .map_err(io::Error::other)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(io::Error::other(format!(
                        "cannot create topic {name}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let binary = self.binary.clone().expect("local broker");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::env::temp_dir().join(format!(
            "nexus-tansu-{}-{}.log",
            std::process::id(),
            self.port
        ));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let mut child = Command::new(&binary)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "tansu exited with {status} (log: {})",
                    log.display()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "tansu did not listen on {addr} within 10 s (log: {})",
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self.log = Some(log);
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(log) = self.log.take()
            && !std::thread::panicking()
        {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Reads one topic outside any group (see [`TestBroker::reader`]).
#[derive(Debug)]
pub struct TopicReader {
    args: KafkaArgs,
    topic: Topic,
    name: String,
    /// Next offset per partition after what was returned.
    next: Mutex<HashMap<i32, i64>>,
}

impl TopicReader {
    /// The broker's name of the topic read.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The events stored now that earlier calls did not return (all of them the first
    /// time), in offset order per partition; empty when the topic does not exist.
    pub async fn read_available(&self) -> Result<Vec<Delivery>, EventError> {
        let from = self.next.lock().clone();
        let events = crate::kafka::read_topic(&self.args, self.topic, &self.name, from).await?;
        let mut next = self.next.lock();
        for event in &events {
            let offset = next.entry(event.partition).or_insert(0);
            *offset = (*offset).max(event.offset + 1);
        }
        Ok(events)
    }
}
