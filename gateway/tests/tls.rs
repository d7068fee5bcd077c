//! TLS and mutual TLS on real listeners, with certificates made here by rcgen: HTTPS through
//! axum, gRPC over TLS (HTTP/2 by ALPN) through tonic, and the refusals: plain TCP, an
//! untrusted server, a client without a certificate or with one from another CA.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::routing::get;
use common::*;
use nexus_gateway::tls::{TlsConnectInfo, TlsListener, server_config};
use nexus_gateway::{Gateway, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "nexus test");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Nexus test CA");
    let (server_cert, server_key) = leaf(
        &ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key).unwrap();
    Pki {
        dir,
        ca: ca.pem(),
        client_cert,
        client_key,
    }
}

/// Serves a router over TLS: `/hello` says whether the client presented a certificate.
async fn serve_https(
    pki: &Pki,
    mutual: bool,
    gateway: &Gateway,
) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let ca = pki.path("ca.pem");
    let config = server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        mutual.then_some(ca.as_path()),
    )
    .unwrap();
    let listener =
        TlsListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), config).unwrap();
    let addr = listener.local_addr();
    let app = router(gateway).route(
        "/hello",
        get(
            |ConnectInfo(info): ConnectInfo<TlsConnectInfo>| async move {
                axum::Json(json!({
                    "client_certificate": info.client_certificate.is_some(),
                    "remote": info.remote_addr.ip().to_string(),
                }))
            },
        ),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop)
}

/// A client trusting the test CA, resolving localhost to `addr`, with a client
/// certificate when `identity` is given.
fn https_client(
    pki: &Pki,
    addr: std::net::SocketAddr,
    identity: Option<(&str, &str)>,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(std::time::Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn https_and_refusals() {
    let pki = pki();
    let gateway = gateway(None, |_| {}).await;
    let (addr, _stop) = serve_https(&pki, false, &gateway).await;
    let port = addr.port();
    let client = https_client(&pki, addr, None);

    let response = client
        .get(format!("https://localhost:{port}/hello"))
        .bearer_auth(token_for(Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"client_certificate": false, "remote": "127.0.0.1"})
    );
    // The gateway works the same behind TLS.
    let response = client
        .post(format!(
            "https://localhost:{port}/v2/repository/models/m/load"
        ))
        .bearer_auth(token_for(Role::Inference))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Plain HTTP to the TLS port, and a client that does not trust the server's CA.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v2/health/ready"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let result = untrusting
        .get(format!("https://localhost:{port}/v2/health/ready"))
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    // The listener goes on accepting after failed handshakes.
    let response = client
        .get(format!("https://localhost:{port}/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn mutual_tls() {
    let pki = pki();
    let gateway = gateway(None, |_| {}).await;
    let (addr, _stop) = serve_https(&pki, true, &gateway).await;
    let url = format!("https://localhost:{}/hello", addr.port());

    let anonymous = https_client(&pki, addr, None).get(&url).send().await;
    assert!(anonymous.is_err(), "{anonymous:?}");

    let stranger_ca = ca("Some other CA");
    let (cert, key) = leaf(&stranger_ca, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = https_client(&pki, addr, Some((&cert, &key)))
        .get(&url)
        .send()
        .await;
    assert!(stranger.is_err(), "{stranger:?}");

    let response = https_client(&pki, addr, Some((&pki.client_cert, &pki.client_key)))
        .get(&url)
        .bearer_auth(token_for(Role::Reader))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["client_certificate"], true);
}

#[tokio::test]
async fn grpc_over_mutual_tls() {
    let pki = pki();
    let ca_path = pki.path("ca.pem");
    let config = server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&ca_path),
    )
    .unwrap();
    let listener =
        TlsListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), config).unwrap();
    let addr = listener.local_addr();
    let gateway = gateway(None, |_| {}).await;
    let server = tonic::transport::Server::builder()
        .layer(gateway.grpc_layer())
        .add_service(StandIn);
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(listener.into_incoming(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    // A rustls client offering only HTTP/2 by ALPN, with the client certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap(),
        )
        .unwrap();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    let message = InferRequest {
        model_name: "m".into(),
        id: "1".into(),
        raw: vec![vec![0; 10]],
    };
    let metadata = vec![(
        "authorization",
        format!("Bearer {}", token_for(Role::Inference)),
    )];
    let reply = grpc_call(&mut client, "ModelInfer", message.clone(), &metadata)
        .await
        .unwrap();
    assert_eq!(reply.model_name, "m");
    assert_eq!(reply.subject, "inference-user");
    // Tonic sees the peer address through the TLS connection.
    assert!(reply.remote_addr.starts_with("127.0.0.1:"), "{reply:?}");
    let denied = grpc_call(&mut client, "RepositoryModelLoad", message, &metadata).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[test]
fn bad_tls_material_is_a_clear_error() {
    let pki = pki();
    let missing = server_config(&pki.path("nope.pem"), &pki.path("server.key"), None).unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    // A key file given as the certificate.
    let swapped =
        server_config(&pki.path("server.key"), &pki.path("server.key"), None).unwrap_err();
    assert!(swapped.to_string().contains("no certificate"), "{swapped}");
}
