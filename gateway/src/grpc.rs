//! The gRPC front end: a tower layer for tonic's server with the same policy as HTTP.
//!
//! It is a layer over the whole server rather than a tonic `Interceptor` because an
//! interceptor sees neither the method's path (which decides the route class) nor the
//! message (which names the model). Credentials come from the `authorization` (Bearer) or
//! `x-api-key` metadata; refusals are UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED (with `retry-after` seconds in the metadata) or UNAVAILABLE.
//!
//! Per-model limits apply to unary `ModelInfer`: the layer reads just enough of the request
//! body to find `model_name` (field 1, which every protobuf encoder writes first) and hands
//! the body on untouched. A compressed message, or one whose name is not in its first
//! 64 KiB, gets the per-credential limit only; so does `ModelStreamInfer`, which is limited
//! per credential when the stream opens (its messages may name different models).

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tonic::Status;
use tonic::metadata::MetadataValue;
use tower::{Layer, Service};

use crate::gateway::{Protocol, client_ip, retry_secs};
use crate::policy::{classify_grpc, is_grpc_model_infer};
use crate::{Denial, Gateway};

/// Bytes of a `ModelInfer` request read at most to find its model name.
const PEEK_LIMIT: usize = 64 << 10;

/// Tower layer putting the gateway in front of a tonic server
/// (`Server::builder().layer(layer)`). Cheap to clone.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    gateway: Gateway,
}

impl GrpcAuthLayer {
    /// The layer for `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        GrpcAuthLayer { gateway }
    }
}

impl<S> Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthService {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// The service [`GrpcAuthLayer`] wraps around tonic's routes.
#[derive(Clone)]
pub struct GrpcAuthService<S> {
    inner: S,
    gateway: Gateway,
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for GrpcAuthService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        // The clone is the one that was not polled ready; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        let path = request.uri().path();
        let class = classify_grpc(path);
        let find_model = gateway.limits_models() && is_grpc_model_infer(path);
        let client = client_ip(request.extensions());
        Box::pin(async move {
            match gateway
                .admit(Protocol::Grpc, class, request.headers(), client)
                .await
            {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                }
                Ok(None) => {}
                Err(denial) => return Ok(status(&denial).into_http()),
            }
            if find_model {
                let (parts, body) = request.into_parts();
                let (model, body) = peek_model(body).await;
                if let Some(model) = model.filter(|m| !m.is_empty())
                    && let Err(denial) = gateway.limit_model(Protocol::Grpc, &model)
                {
                    return Ok(status(&denial).into_http());
                }
                request = Request::from_parts(parts, body);
            }
            inner.call(request).await
        })
    }
}

/// The gRPC status of a refusal.
fn status(denial: &Denial) -> Status {
    let message = denial.message();
    match denial {
        Denial::Unauthenticated(_) => Status::unauthenticated(message),
        Denial::Forbidden(_) => Status::permission_denied(message),
        Denial::Unavailable(_) => Status::unavailable(message),
        Denial::RateLimited { retry_after, .. } => {
            let mut status = Status::resource_exhausted(message);
            status
                .metadata_mut()
                .insert("retry-after", MetadataValue::from(retry_secs(*retry_after)));
            status
        }
    }
}

/// Reads the start of a request body for the `model_name` of its `ModelInferRequest`, and
/// returns the name with a body that replays what was read, then the rest.
async fn peek_model(mut body: tonic::body::Body) -> (Option<String>, tonic::body::Body) {
    let mut read: Vec<Result<Frame<Bytes>, Status>> = Vec::new();
    let mut seen = BytesMut::new();
    let mut model = None;
    let mut ended = false;
    loop {
        match scan_model_name(&seen) {
            Scan::Found(name) => {
                model = Some(name);
                break;
            }
            Scan::Stop => break,
            Scan::More if seen.len() >= PEEK_LIMIT => break,
            Scan::More => {}
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                let data = frame.data_ref().cloned();
                read.push(Ok(frame));
                match data {
                    Some(data) => {
                        let room = PEEK_LIMIT.saturating_sub(seen.len());
                        seen.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    None => break,
                }
            }
            Some(Err(e)) => {
                read.push(Err(e));
                ended = true;
                break;
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    let replay = futures::stream::iter(read);
    let body = if ended {
        tonic::body::Body::new(StreamBody::new(replay))
    } else {
        tonic::body::Body::new(StreamBody::new(replay.chain(BodyStream::new(body))))
    };
    (model, body)
}

/// What the bytes read so far say about the model name.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Found(String),
    /// Not decided yet: read more.
    More,
    /// It cannot be found (compressed, malformed, or absent).
    Stop,
}

/// Finds field 1 (a string) of the protobuf message in a gRPC frame (1 byte compression
/// flag, 4 bytes big-endian length, the message), skipping other fields.
fn scan_model_name(frame: &[u8]) -> Scan {
    let Some(header) = frame.get(..5) else {
        return Scan::More;
    };
    if header[0] != 0 {
        return Scan::Stop;
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let available = &frame[5..];
    let complete = available.len() >= length;
    let message = &available[..available.len().min(length)];
    let short = || if complete { Scan::Stop } else { Scan::More };
    let mut pos = 0usize;
    while pos < message.len() {
        let Some((key, n)) = varint(&message[pos..]) else {
            return short();
        };
        pos += n;
        match key & 7 {
            0 => match varint(&message[pos..]) {
                Some((_, n)) => pos += n,
                None => return short(),
            },
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some((len, n)) = varint(&message[pos..]) else {
                    return short();
                };
                pos += n;
                let Ok(len) = usize::try_from(len) else {
                    return Scan::Stop;
                };
                if key >> 3 == 1 {
                    let Some(bytes) = message.get(pos..pos.saturating_add(len)) else {
                        return short();
                    };
                    return match std::str::from_utf8(bytes) {
                        Ok(name) => Scan::Found(name.to_string()),
                        Err(_) => Scan::Stop,
                    };
                }
                pos = pos.saturating_add(len);
            }
            _ => return Scan::Stop,
        }
    }
    if complete { Scan::Stop } else { Scan::More }
}

/// A protobuf varint at the start of `bytes` and its length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn finds_the_model_name() {
        // model_name = "fraud", then id = "r1".
        let message = [b"\x0a\x05fraud".as_slice(), b"\x1a\x02r1"].concat();
        let whole = frame(&message);
        assert_eq!(scan_model_name(&whole), Scan::Found("fraud".into()));
        for cut in 0..7 {
            assert_eq!(scan_model_name(&whole[..cut]), Scan::More, "cut at {cut}");
        }
        // Another field first (id, then a varint field 9), then the name.
        let message = [b"\x1a\x02r1".as_slice(), b"\x48\x96\x01", b"\x0a\x01m"].concat();
        assert_eq!(scan_model_name(&frame(&message)), Scan::Found("m".into()));
        // No name at all, or compressed.
        assert_eq!(scan_model_name(&frame(b"\x1a\x02r1")), Scan::Stop);
        let mut compressed = frame(b"\x0a\x01m");
        compressed[0] = 1;
        assert_eq!(scan_model_name(&compressed), Scan::Stop);
        // A group (wire type 3) is not something ModelInferRequest has.
        assert_eq!(scan_model_name(&frame(b"\x0b")), Scan::Stop);
    }

    #[tokio::test]
    async fn peeking_keeps_the_body_intact() {
        let message = [b"\x0a\x05fraud".as_slice(), &[7u8; 100_000]].concat();
        let bytes = frame(&message);
        let chunks: Vec<Result<Frame<Bytes>, Status>> = bytes
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = tonic::body::Body::new(StreamBody::new(futures::stream::iter(chunks)));
        let (model, body) = peek_model(body).await;
        assert_eq!(model.as_deref(), Some("fraud"));
        let replayed = body.collect().await.unwrap().to_bytes();
        assert_eq!(replayed.as_ref(), bytes.as_slice());
    }
}
