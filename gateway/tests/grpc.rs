//! The gateway in front of a real tonic server: the role × class matrix over gRPC, API keys
//! in `x-api-key` metadata, and rate limits (per credential, and per model from the
//! `ModelInfer` message) answered with RESOURCE_EXHAUSTED.

mod common;

use common::*;
use nexus_gateway::{Role, RouteClass, allowed};
use serde_json::json;
use tonic::Code;

/// One method per gRPC route class.
const GRPC_SAMPLES: &[(RouteClass, &str)] = &[
    (RouteClass::Health, "ServerLive"),
    (RouteClass::Health, "ServerReady"),
    (RouteClass::InferenceRead, "ModelMetadata"),
    (RouteClass::InferenceRead, "RepositoryIndex"),
    (RouteClass::Infer, "ModelInfer"),
    (RouteClass::Infer, "ModelStreamInfer"),
    (RouteClass::ModelControl, "RepositoryModelLoad"),
    (RouteClass::ModelControl, "RepositoryModelUnload"),
    (RouteClass::InferenceRead, "SystemSharedMemoryStatus"),
    (RouteClass::ModelControl, "SystemSharedMemoryRegister"),
    (RouteClass::Admin, "TraceSetting"),
];

fn message(model: &str) -> InferRequest {
    InferRequest {
        model_name: model.into(),
        id: "r1".into(),
        raw: vec![vec![1; 4096]],
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

#[tokio::test]
async fn every_role_on_every_grpc_class() {
    let (_dir, _pool, keys) = sqlite_keys().await;
    let gateway = gateway(Some(keys.clone()), |_| {}).await;
    let server = serve_grpc(&gateway).await;
    let mut client = grpc_client(server.addr).await;

    for (class, method) in GRPC_SAMPLES {
        let path = format!("/inference.GRPCInferenceService/{method}");
        assert_eq!(
            nexus_gateway::policy::classify_grpc(&path),
            *class,
            "{path}"
        );
    }
    for role in Role::ALL {
        let (_, key) = keys.create("k", role, None).await.unwrap();
        let credentials = [bearer(&token_for(role)), vec![("x-api-key", key)]];
        for metadata in &credentials {
            for (class, method) in GRPC_SAMPLES {
                let result = grpc_call(&mut client, method, message("m"), metadata).await;
                if allowed(role, *class) {
                    let reply = result.unwrap_or_else(|e| panic!("{role} {method}: {e:?}"));
                    assert_eq!(reply.model_name, "m");
                    assert_eq!(reply.raw_bytes, 4096);
                    if *class != RouteClass::Health {
                        assert!(!reply.subject.is_empty(), "{role} {method}");
                    }
                } else {
                    let status = result.expect_err(method);
                    assert_eq!(status.code(), Code::PermissionDenied, "{role} {method}");
                    assert!(status.message().contains(role.as_str()), "{status:?}");
                }
            }
        }
    }
    for (class, method) in GRPC_SAMPLES {
        let result = grpc_call(&mut client, method, message("m"), &[]).await;
        match class {
            RouteClass::Health => assert!(result.is_ok(), "{method}: {result:?}"),
            _ => assert_eq!(
                result.unwrap_err().code(),
                Code::Unauthenticated,
                "{method}"
            ),
        }
    }
    let bad = grpc_call(
        &mut client,
        "ModelInfer",
        message("m"),
        &bearer("nexus_nope"),
    )
    .await;
    assert_eq!(bad.unwrap_err().code(), Code::Unauthenticated);
    let expired = hs256(json!({"sub": "x", "role": "admin", "exp": now() - 3600}));
    let bad = grpc_call(&mut client, "ModelInfer", message("m"), &bearer(&expired)).await;
    assert_eq!(bad.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn grpc_rate_limits() {
    let gateway = gateway(None, tight_limits).await;
    let server = serve_grpc(&gateway).await;
    let mut client = grpc_client(server.addr).await;
    let token = |sub: &str| bearer(&hs256(json!({"sub": sub, "role": "inference"})));

    // Per credential, on metadata reads (no model limit there).
    for _ in 0..3 {
        grpc_call(&mut client, "ModelMetadata", message("m"), &token("alice"))
            .await
            .unwrap();
    }
    let status = grpc_call(&mut client, "ModelMetadata", message("m"), &token("alice"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("credential"), "{status:?}");
    let retry = retry_after(&status);
    assert!(retry >= 1);

    // Per model, read from the ModelInfer message: different callers share m's budget, and
    // the message reaches the service whole.
    let reply = grpc_call(&mut client, "ModelInfer", message("m"), &token("bob"))
        .await
        .unwrap();
    assert_eq!((reply.model_name.as_str(), reply.raw_bytes), ("m", 4096));
    assert_eq!(reply.subject, "bob");
    assert!(reply.remote_addr.starts_with("127.0.0.1:"), "{reply:?}");
    grpc_call(&mut client, "ModelInfer", message("m"), &token("carol"))
        .await
        .unwrap();
    let status = grpc_call(&mut client, "ModelInfer", message("m"), &token("dave"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("model"), "{status:?}");
    let reply = grpc_call(&mut client, "ModelInfer", message("other"), &token("dave"))
        .await
        .unwrap();
    assert_eq!(reply.model_name, "other");

    // A large message (many frames) passes through the model peek intact.
    let big = InferRequest {
        model_name: "big".into(),
        id: String::new(),
        raw: vec![vec![7; 3 << 20]],
    };
    let reply = grpc_call(&mut client, "ModelInfer", big, &token("erin"))
        .await
        .unwrap();
    assert_eq!(reply.raw_bytes, 3 << 20);
}

/// Over gRPC as over HTTP: wrong credentials from one address, then RESOURCE_EXHAUSTED
/// with `retry-after` metadata for every call from it, a valid credential included.
#[tokio::test]
async fn grpc_failed_authentication_is_limited_per_address() {
    let gateway = gateway(None, |c| {
        c.auth_failure_rps = Some(0.5);
        c.auth_failure_burst = Some(2);
    })
    .await;
    let server = serve_grpc(&gateway).await;
    let mut client = grpc_client(server.addr).await;
    for guess in ["nexus_guess1", "not-a-jwt"] {
        let status = grpc_call(&mut client, "ModelMetadata", message("m"), &bearer(guess))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let valid = bearer(&token_for(Role::Reader));
    let status = grpc_call(&mut client, "ModelMetadata", message("m"), &valid)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("failed authentications"),
        "{status:?}"
    );
    let retry = retry_after(&status);
    assert_eq!(retry, 2);
    // Health stays open.
    grpc_call(&mut client, "ServerLive", message("m"), &[])
        .await
        .unwrap();
}

/// The seconds a RESOURCE_EXHAUSTED status asks the client to wait.
fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}
