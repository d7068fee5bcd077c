//! TLS and mutual TLS for both servers, with rustls (aws-lc-rs crypto).
//!
//! [`TlsListener`] accepts TCP connections and runs each TLS handshake in its own task (with
//! a timeout), so a slow or silent client never holds up the others. It is an
//! `axum::serve::Listener` for the HTTP server and, through [`TlsListener::into_incoming`],
//! the incoming stream of tonic's `serve_with_incoming_shutdown` for the gRPC server. Tonic
//! therefore needs none of its own TLS features, and both servers share one certificate
//! configuration and one crypto provider.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::GatewayError;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the server to take them.
const BACKLOG: usize = 128;

/// The server's TLS configuration: its certificate chain and key (PEM files) and, when
/// `client_ca` is given, mutual TLS: every client must present a certificate signed by one
/// of the CA certificates in that PEM file. ALPN offers HTTP/2 and HTTP/1.1.
pub fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, GatewayError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| {
        GatewayError::Tls(format!(
            "cannot read a private key from {}: {e}",
            key_pem.display()
        ))
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| {
                    GatewayError::Tls(format!("bad CA certificate in {}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| GatewayError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        GatewayError::Tls(format!(
            "certificate {} with key {}: {e}",
            cert_pem.display(),
            key_pem.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let err = |e: rustls_pki_types::pem::Error| {
        GatewayError::Tls(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "no certificate in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
            path.display()
        )));
    }
    Ok(certs)
}

/// A server's TLS settings, shared by the HTTP and gRPC listeners.
pub type ServerTls = Arc<ServerConfig>;

/// Accepts TLS connections on a TCP listener.
pub struct TlsListener {
    connections: mpsc::Receiver<TlsConnection>,
    local_addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config` (from [`server_config`]). Needs a
    /// tokio runtime; accepting stops when the listener is dropped.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(BACKLOG);
        let acceptor = tokio::spawn(accept(listener, TlsAcceptor::from(config), sender));
        Ok(TlsListener {
            connections,
            local_addr,
            acceptor,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn into_incoming(self) -> impl Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let connection = listener.connections.recv().await?;
            Some((Ok(connection), listener))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => {
                let remote = connection.remote_addr;
                (connection, remote)
            }
            None => {
                // Only a panic in the accept task closes the channel while `self` lives.
                tracing::error!("TLS accept loop stopped; no more connections");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts TCP connections and hands on those whose handshake succeeds.
async fn accept(listener: TcpListener, acceptor: TlsAcceptor, sender: mpsc::Sender<TlsConnection>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (tcp, remote_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if sender.is_closed() {
            return;
        }
        // Small replies must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let local_addr = tcp.local_addr().unwrap_or(remote_addr);
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = sender
                        .send(TlsConnection {
                            stream,
                            remote_addr,
                            local_addr,
                        })
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(%remote_addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote_addr, "TLS handshake timed out"),
            }
        });
    }
}

/// One accepted TLS connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    remote_addr: SocketAddr,
    local_addr: SocketAddr,
}

impl TlsConnection {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The client's certificate chain, leaf first (mutual TLS only).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// For tonic: requests see the same `TcpConnectInfo` as on plain TCP, so
/// `Request::remote_addr()` and the gateway's per-address limits work unchanged.
impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: Some(self.local_addr),
            remote_addr: Some(self.remote_addr),
        }
    }
}

/// Connection info of an axum server on a [`TlsListener`]
/// (`router.into_make_service_with_connect_info::<TlsConnectInfo>()`, then
/// `ConnectInfo<TlsConnectInfo>` in handlers).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client's certificate (mutual TLS only).
    pub client_certificate: Option<CertificateDer<'static>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnectInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        TlsConnectInfo {
            remote_addr: *stream.remote_addr(),
            client_certificate: stream
                .io()
                .peer_certificates()
                .and_then(|chain| chain.first().cloned()),
        }
    }
}
