//! Test support for the workspace's test trees, so each does not carry its own copy: a
//! Kafka-protocol broker a test can take down ([`TestBroker`]), a PostgreSQL database of
//! a test's own ([`PostgresDatabase`]), free ports and unique names.
//!
//! A dev-dependency only: nothing here is part of Nexus.

mod broker;
mod postgres;

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use broker::{
    BROKERS_ENV, TANSU_CLIENT_OPTIONS, TANSU_ENV, TestBroker, TopicReader, tansu_binary,
    unique_topics,
};
pub use postgres::{DEFAULT_POSTGRES_URL, POSTGRES_URL_ENV, PostgresDatabase};

/// A port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` different ports that were free a moment ago: the listeners are held together, so
/// the kernel hands out different ports.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    for _ in 0..N {
        listeners.push(TcpListener::bind("127.0.0.1:0")?);
    }
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A name no other test (or earlier run against the same external server) uses:
/// `prefix`, the process id, a clock reading and a counter, joined by `separator`
/// (`-` for topics and groups, `_` for SQL identifiers).
pub fn unique_name_with(prefix: &str, separator: char) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{separator}{}{separator}{}{separator}{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// [`unique_name_with`] joined by `-`.
pub fn unique_name(prefix: &str) -> String {
    unique_name_with(prefix, '-')
}
