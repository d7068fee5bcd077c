//! The protocol's floor for `benches/compare.sh`: the least a KServe V2 HTTP/JSON server built
//! on Nexus's HTTP stack (axum on hyper and tokio, served by `axum::serve` as Nexus's listener
//! is) does per request. It reads the whole infer body, parses it as JSON, and answers with a
//! fixed reply: the file given by `--reply`, which compare.sh captures from Nexus for the same
//! request, so both send the same bytes back. No model, no tensors, no queue. Nexus's JSON
//! infer/s over this server's, under the same load, is how close Nexus is to that floor.
//!
//!     floor --port 18400 --reply target/bench-compare/small_mlp-reply.json

use std::path::PathBuf;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Minimal axum V2 infer endpoint with a fixed JSON reply (benches/compare.sh)")]
struct Args {
    /// Loopback port to listen on.
    #[arg(long)]
    port: u16,
    /// File whose bytes every infer request gets back (application/json).
    #[arg(long)]
    reply: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reply = Bytes::from(
        std::fs::read(&args.reply).with_context(|| format!("reading {}", args.reply.display()))?,
    );
    let app = axum::Router::new().route(
        "/v2/models/{model}/infer",
        post(move |body: Bytes| {
            let reply = reply.clone();
            async move { infer(&body, reply) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Parses the request as JSON (every V2 server must) and answers `reply`; 400 when the
/// body is not a JSON object with `inputs`.
fn infer(body: &[u8], reply: Bytes) -> Response {
    match serde_json::from_slice::<Value>(body) {
        Ok(request) if request.get("inputs").is_some() => {
            ([(header::CONTENT_TYPE, "application/json")], reply).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "expected a V2 infer request (JSON with \"inputs\")",
        )
            .into_response(),
    }
}
