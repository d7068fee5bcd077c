//! A Kafka-protocol broker for tests.
//!
//! [`TestBroker::start`] uses the broker in `NEXUS_TEST_KAFKA_BROKERS` when it is set, or
//! starts [tansu](https://github.com/tansu-io/tansu) (`NEXUS_TANSU`, else
//! `${NEXUS_CACHE:-$HOME/.cache/nexus}/tansu/bin/tansu`) on a free port with its in-memory
//! storage. With neither it fails: Kafka tests must not pass without a broker
//! (`scripts/install-tansu.sh` installs tansu).
//!
//! A local tansu can be taken off the network and brought back
//! ([`TestBroker::take_down`], [`TestBroker::bring_back`]) while it keeps its topics,
//! events and offsets, as a restarted Kafka broker keeps its logs.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use nexus_events::kafka::read_topic;
use nexus_events::{Delivery, EventError, KafkaArgs, Topic, TopicNames};

use crate::{free_port, unique_name};

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
/// finds a broker that came back within a second.
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
    local: Option<LocalBroker>,
}

/// A tansu process listening on a private port, reached by clients through a [`Relay`]
/// on the public one (the port tansu advertises).
struct LocalBroker {
    child: Child,
    log: PathBuf,
    public: SocketAddr,
    private: SocketAddr,
    relay: Option<Relay>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("brokers", &self.brokers)
            .field("local", &self.local.is_some())
            .field(
                "reachable",
                &self.local.as_ref().is_none_or(|l| l.relay.is_some()),
            )
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

/// Topic names unique to one test.
pub fn unique_topics() -> TopicNames {
    let base = unique_name("nexus-test");
    TopicNames {
        inference: format!("{base}.inference"),
        feedback: format!("{base}.feedback"),
        decisions: format!("{base}.decisions"),
    }
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
                local: None,
            }),
            _ => TestBroker::start_local(),
        }
    }

    /// A local tansu, even when an external broker is configured (tests that take the
    /// broker down and bring it back).
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
            match LocalBroker::spawn(&binary) {
                Ok(local) => {
                    return Ok(TestBroker {
                        brokers: local.public.to_string(),
                        topics: TopicNames::default(),
                        local: Some(local),
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("cannot start tansu")))
    }

    /// Whether this is a local broker that can be taken down and brought back.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Where the local broker's output goes (kept when a test panics).
    pub fn log_path(&self) -> Option<&PathBuf> {
        self.local.as_ref().map(|l| &l.log)
    }

    /// Takes the local broker off the network, as clients see a broker that dies: open
    /// connections are cut and its port refuses new ones until [`TestBroker::bring_back`].
    pub fn take_down(&mut self) -> io::Result<()> {
        // Dropping the relay closes it.
        self.local_mut()?.relay = None;
        Ok(())
    }

    /// Makes the broker reachable again on the same port. It still has its topics,
    /// events and committed offsets, as a restarted Kafka broker has its logs.
    pub fn bring_back(&mut self) -> io::Result<()> {
        let local = self.local_mut()?;
        if local.relay.is_none() {
            local.relay = Some(Relay::open_retrying(local.public, local.private)?);
        }
        Ok(())
    }

    fn local_mut(&mut self) -> io::Result<&mut LocalBroker> {
        self.local.as_mut().ok_or_else(|| {
            io::Error::other(format!(
                "an external broker ({BROKERS_ENV}) cannot be taken down: use TestBroker::start_local"
            ))
        })
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
}

impl LocalBroker {
    /// Starts tansu with its in-memory storage on a private port, advertising the public
    /// one, and the relay between them.
    fn spawn(binary: &Path) -> io::Result<LocalBroker> {
        let public = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let private = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = std::env::temp_dir().join(format!(
            "nexus-tansu-{}-{}.log",
            std::process::id(),
            public.port()
        ));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut child = Command::new(binary)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{private}")])
            .args(["--advertised-listener-url", &format!("tcp://{public}")])
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
        // On failure the log stays, for the error message that names it.
        if let Err(e) = wait_listening(&mut child, private, &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // Killed on drop from here on.
        let mut local = LocalBroker {
            child,
            log,
            public,
            private,
            relay: None,
        };
        local.relay = Some(Relay::open(TcpListener::bind(public)?, private)?);
        Ok(local)
    }
}

/// Waits until tansu accepts connections on `private`, or fails when it exits or is
/// not listening within 10 s.
fn wait_listening(child: &mut Child, private: SocketAddr, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "tansu exited with {status} (log: {})",
                log.display()
            )));
        }
        if TcpStream::connect_timeout(&private, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "tansu did not listen on {private} within 10 s (log: {})",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.relay = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A TCP relay from a broker's public port to the port it really listens on, so that a
/// test can cut the broker off from its clients without stopping it.
///
/// Why not stop tansu and start it again: its memory engine comes back empty, and while
/// topics are missing tansu 0.6 answers fetches with a zero topic id and a current-leader
/// tag, on which librdkafka 2.12 dereferences a null topic name and the client process
/// segfaults (`rd_kafka_metadata_update_op`). A Kafka broker keeps its topics across a
/// restart, so what clients of a restarted Kafka see is what the relay shows them:
/// connections reset, the port refused, then the same broker with the same logs.
struct Relay {
    closed: Arc<AtomicBool>,
    connections: Arc<Connections>,
    acceptor: Option<JoinHandle<()>>,
}

/// Both ends of every open relayed connection, by number: cut when the relay closes,
/// forgotten when the connection ends.
type Connections = Mutex<HashMap<u64, [TcpStream; 2]>>;

impl Relay {
    fn open(listener: TcpListener, private: SocketAddr) -> io::Result<Relay> {
        listener.set_nonblocking(true)?;
        let closed = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Connections::default());
        let acceptor = {
            let (closed, connections) = (Arc::clone(&closed), Arc::clone(&connections));
            std::thread::Builder::new()
                .name("test-broker-relay".into())
                .spawn(move || {
                    let mut next = 0;
                    while !closed.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((client, _)) => {
                                next += 1;
                                if let Err(error) = relay(next, client, private, &connections) {
                                    tracing::debug!(%error, "test broker relay: connection refused");
                                }
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })?
        };
        Ok(Relay {
            closed,
            connections,
            acceptor: Some(acceptor),
        })
    }

    /// Opens the relay on a port it listened on before (which may linger a moment).
    fn open_retrying(public: SocketAddr, private: SocketAddr) -> io::Result<Relay> {
        let mut attempts = 0;
        loop {
            match TcpListener::bind(public) {
                Ok(listener) => return Relay::open(listener, private),
                Err(e) if attempts >= 50 => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {public} again: {e}"),
                    ));
                }
                Err(_) => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        // The acceptor owns the listener: once joined, the port refuses connections and
        // every accepted connection is in `connections`.
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, ends) in self.connections.lock().drain() {
            cut(&ends);
        }
    }
}

/// Connects `client` to the broker and copies bytes both ways on two threads.
fn relay(
    id: u64,
    client: TcpStream,
    private: SocketAddr,
    connections: &Arc<Connections>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&private, Duration::from_secs(1))?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
    }
    connections
        .lock()
        .insert(id, [client.try_clone()?, server.try_clone()?]);
    pipe(id, client.try_clone()?, server.try_clone()?, connections)?;
    pipe(id, server, client, connections)
}

/// Copies `from` to `to` until either side closes; then the whole connection is over
/// (Kafka clients never half-close), so both ends are cut and forgotten.
fn pipe(
    id: u64,
    mut from: TcpStream,
    mut to: TcpStream,
    connections: &Arc<Connections>,
) -> io::Result<()> {
    let connections = Arc::clone(connections);
    std::thread::Builder::new()
        .name("test-broker-relay-pipe".into())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            if let Some(ends) = connections.lock().remove(&id) {
                cut(&ends);
            }
        })?;
    Ok(())
}

fn cut(ends: &[TcpStream; 2]) {
    for stream in ends {
        let _ = stream.shutdown(Shutdown::Both);
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
        let events = read_topic(&self.args, self.topic, &self.name, from).await?;
        let mut next = self.next.lock();
        for event in &events {
            let offset = next.entry(event.partition).or_insert(0);
            *offset = (*offset).max(event.offset + 1);
        }
        Ok(events)
    }
}
