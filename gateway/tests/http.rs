//! The gateway in front of a real axum server: the role × class matrix, API keys (headers,
//! revocation, expiry), JWT checks (HS256, RS256 and ES256 from a key set file and URL),
//! rate limits and the error shapes of each API.

mod common;

use std::time::Duration;

use axum::routing::get;
use base64::Engine;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_gateway::{AuthConfig, Gateway, KEY_CACHE_TTL, KeyStore, Role, RouteClass, allowed};
use serde_json::{Value, json};

#[tokio::test]
async fn every_role_on_every_class() {
    let (_dir, _pool, keys) = sqlite_keys().await;
    let gateway = gateway(Some(keys.clone()), |_| {}).await;
    let server = serve_http(router(&gateway)).await;

    for role in Role::ALL {
        // An API key and a JWT per role: both credential paths see the whole matrix.
        let (_, key) = keys
            .create(&format!("{role} key"), role, None)
            .await
            .unwrap();
        let jwt = token_for(role);
        for token in [key.as_str(), jwt.as_str()] {
            for (class, method, path) in HTTP_SAMPLES {
                let (status, _, body) = call(&server, method, path, Some(token)).await;
                let expected = if allowed(role, *class) { 200 } else { 403 };
                assert_eq!(status, expected, "{role} {method} {path}: {body}");
                if status == 200 && !class.is_open() {
                    assert_eq!(body["role"], role.as_str(), "{body}");
                }
            }
        }
    }
    for (class, method, path) in HTTP_SAMPLES {
        let (status, headers, body) = call(&server, method, path, None).await;
        if class.is_open() {
            assert_eq!(status, 200, "{path}");
            assert_eq!(body["subject"], Value::Null);
        } else {
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }
}

/// `GET /api/v1/whoami` names the caller and the route classes its role may use (what the
/// web console offers); a missing or wrong credential is refused like any request, and with
/// authentication off there is no caller and every class is allowed.
#[tokio::test]
async fn whoami_names_the_caller_and_its_rights() {
    let (_dir, _pool, keys) = sqlite_keys().await;
    let gateway = gateway(Some(keys.clone()), |_| {}).await;
    let app = nexus_gateway::whoami::router(&gateway).layer(gateway.http_layer());
    let server = serve_http(app).await;
    let (_, key) = keys.create("ci reader", Role::Reader, None).await.unwrap();

    let (status, _, body) = call(&server, "GET", "/api/v1/whoami", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth"], true);
    assert_eq!(body["subject"], "ci reader");
    assert_eq!(body["role"], "reader");
    assert_eq!(
        body["allowed"],
        json!([
            "inference_read",
            "registry_read",
            "pipeline_read",
            "optimizer_read"
        ])
    );
    let (_, _, body) = call(
        &server,
        "GET",
        "/api/v1/whoami",
        Some(&token_for(Role::Deployer)),
    )
    .await;
    let allowed = body["allowed"].as_array().unwrap();
    assert!(allowed.contains(&json!("registry_write")), "{body}");
    assert!(!allowed.contains(&json!("optimizer_write")), "{body}");

    for bearer in [None, Some("nexus_not-a-key")] {
        let (status, _, body) = call(&server, "GET", "/api/v1/whoami", bearer).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
    }

    let open = Gateway::new(&AuthConfig::default(), None).await.unwrap();
    let server = serve_http(nexus_gateway::whoami::router(&open).layer(open.http_layer())).await;
    let (status, _, body) = call(&server, "GET", "/api/v1/whoami", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth"], false);
    assert_eq!(body["role"], Value::Null);
    let expected: Vec<&str> = RouteClass::ALL
        .into_iter()
        .filter(|c| !c.is_open())
        .map(RouteClass::as_str)
        .collect();
    assert_eq!(body["allowed"], json!(expected));
}

#[tokio::test]
async fn error_bodies_follow_each_api() {
    let gateway = gateway(None, |c| c.per_credential_rps = Some(1000.0)).await;
    let server = serve_http(router(&gateway)).await;
    let reader = token_for(Role::Reader);

    let (status, _, body) = call(
        &server,
        "POST",
        "/api/2.0/mlflow/registered-models/create",
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error_code"], "UNAUTHENTICATED", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );

    let (status, _, body) = call(
        &server,
        "POST",
        "/api/2.0/mlflow/registered-models/create",
        Some(&reader),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error_code"], "PERMISSION_DENIED", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("reader"),
        "{body}"
    );

    let (status, _, body) = call(
        &server,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/a/b.bin",
        Some(&reader),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error_code"], "PERMISSION_DENIED", "{body}");

    for path in ["/v2/repository/models/m/load", "/api/v1/pipelines/runs"] {
        let (status, _, body) = call(&server, "POST", path, Some(&reader)).await;
        assert_eq!(status, 403, "{path}");
        assert!(body["error"].as_str().unwrap().contains("reader"), "{body}");
        assert!(body.get("error_code").is_none(), "{body}");
    }
    let (status, _, body) = call(&server, "POST", "/v2/models/m/infer", None).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn api_keys_in_every_header_and_revocation() {
    let (_dir, pool, keys) = sqlite_keys().await;
    let gateway = gateway(Some(keys.clone()), |_| {}).await;
    let server = serve_http(router(&gateway)).await;
    let (id, token) = keys.create("ci", Role::Inference, None).await.unwrap();
    let url = format!("{}/v2/models/m/infer", server.url());

    let by_header = client()
        .post(&url)
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    let body: Value = by_header.json().await.unwrap();
    assert_eq!(body["subject"], "ci");
    assert_eq!(body["credential"], format!("key:{id}"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{token}"));
    let by_basic = client()
        .post(&url)
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_basic.status(), 200);

    // A made-up key, and a key's token one character off.
    let (status, _, _) = call(&server, "POST", "/v2/models/m/infer", Some("nexus_madeup")).await;
    assert_eq!(status, 401);
    let mut wrong = token.clone();
    wrong.push('x');
    assert_eq!(
        call(&server, "POST", "/v2/models/m/infer", Some(&wrong))
            .await
            .0,
        401
    );

    // Revoked by another process on the same database: refused once the cache entry ages.
    KeyStore::new(pool.clone()).revoke(&id).await.unwrap();
    tokio::time::sleep(KEY_CACHE_TTL + Duration::from_millis(200)).await;
    let (status, headers, body) = call(&server, "POST", "/v2/models/m/infer", Some(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Expiry is exact, cache or not.
    let (_, short) = keys
        .create("short", Role::Inference, Some(Duration::from_millis(700)))
        .await
        .unwrap();
    assert_eq!(
        call(&server, "POST", "/v2/models/m/infer", Some(&short))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        call(&server, "POST", "/v2/models/m/infer", Some(&short))
            .await
            .0,
        401
    );

    let listed = keys.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == id && k.revoked_at.is_some()));

    // The database going away answers 503, not 401: the key may well be valid.
    let (_, fresh) = keys.create("fresh", Role::Admin, None).await.unwrap();
    pool.close().await;
    let (status, _, body) = call(&server, "POST", "/v2/models/m/infer", Some(&fresh)).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn jwts_are_checked() {
    let gateway = gateway(None, |c| {
        c.issuer = Some("https://idp.test".into());
        c.audience = Some("nexus".into());
    })
    .await;
    let server = serve_http(router(&gateway)).await;
    let path = "/api/v1/pipelines/runs";
    let ok = json!({"sub": "alice", "role": "runner", "iss": "https://idp.test", "aud": "nexus"});
    let with = |changes: Value| {
        let mut claims = ok.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };

    let (status, _, body) = call(&server, "POST", path, Some(&hs256(ok.clone()))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subject"], "alice");
    assert_eq!(body["credential"], "jwt:alice");

    // A list of roles (highest wins), an audience list holding ours.
    let roles = with(json!({"role": null, "roles": ["reader", "runner"], "aud": ["x", "nexus"]}));
    assert_eq!(
        call(&server, "POST", path, Some(&hs256(roles))).await.0,
        200
    );

    let refused: &[(&str, Value)] = &[
        ("expired", with(json!({"exp": now() - 3600}))),
        ("not yet valid", with(json!({"nbf": now() + 3600}))),
        ("wrong issuer", with(json!({"iss": "https://evil.test"}))),
        ("no issuer", with(json!({"iss": null}))),
        ("wrong audience", with(json!({"aud": "other"}))),
        ("no audience", with(json!({"aud": null}))),
    ];
    for (why, claims) in refused {
        let (status, headers, body) =
            call(&server, "POST", path, Some(&hs256(claims.clone()))).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{why}");
    }
    let wrongly_signed = sign(
        Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(b"another secret"),
        ok.clone(),
    );
    let (status, _, body) = call(&server, "POST", path, Some(&wrongly_signed)).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    for garbage in ["not.a.jwt", "abc"] {
        assert_eq!(
            call(&server, "POST", path, Some(garbage)).await.0,
            401,
            "{garbage}"
        );
    }
    // An unsigned token ("alg": "none").
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none"})), b64(ok.clone()));
    assert_eq!(call(&server, "POST", path, Some(&unsigned)).await.0, 401);
    // Valid, but no Nexus role: authenticated, not allowed.
    let no_role = with(json!({"role": "superuser"}));
    let (status, _, body) = call(&server, "POST", path, Some(&hs256(no_role))).await;
    assert_eq!(status, 403, "{body}");
}

/// A key pair and its public JWK with `kid`.
fn key_pair(alg: Algorithm, kid: &str) -> (EncodingKey, Jwk) {
    let (rcgen_alg, from_pem): (_, fn(&[u8]) -> _) = match alg {
        Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
        other => panic!("{other:?}"),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let key = from_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, jwk)
}

#[tokio::test]
async fn rs256_from_a_key_set_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let (key, jwk) = key_pair(Algorithm::RS256, "k1");
    let write = |keys: Vec<Jwk>| {
        std::fs::write(&file, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap()
    };
    write(vec![jwk.clone()]);
    let config = AuthConfig {
        enabled: true,
        jwks_file: Some(file.clone()),
        jwks_refresh_secs: Some(1),
        role_claim: Some("realm_access.roles".into()),
        ..AuthConfig::default()
    };
    let gateway = Gateway::new(&config, None).await.unwrap();
    let server = serve_http(router(&gateway)).await;
    let path = "/api/2.0/mlflow/registered-models/create";
    let claims = json!({"sub": "ci", "realm_access": {"roles": ["offline_access", "deployer"]}});
    let header = |kid: &str| Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::RS256)
    };

    let (status, _, body) = call(
        &server,
        "POST",
        path,
        Some(&sign(header("k1"), &key, claims.clone())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "deployer");

    // Another key claiming the same kid; an unknown kid; HS256 (not configured here).
    let (other, _) = key_pair(Algorithm::RS256, "k1");
    let forged = sign(header("k1"), &other, claims.clone());
    let (status, _, body) = call(&server, "POST", path, Some(&forged)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error_code"], "UNAUTHENTICATED", "{body}");
    assert_eq!(
        call(
            &server,
            "POST",
            path,
            Some(&sign(header("k9"), &key, claims.clone()))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(&server, "POST", path, Some(&hs256(claims.clone())))
            .await
            .0,
        401
    );

    // Key rotation: the file gains k2; the periodic reload picks it up.
    let (key2, jwk2) = key_pair(Algorithm::RS256, "k2");
    write(vec![jwk, jwk2]);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, _, body) = call(
        &server,
        "POST",
        path,
        Some(&sign(header("k2"), &key2, claims)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn es256_from_a_key_set_url() {
    let (key, jwk) = key_pair(Algorithm::ES256, "ec1");
    let set = serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap();
    let idp = serve_http(axum::Router::new().route(
        "/jwks",
        get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    ))
    .await;
    let config = AuthConfig {
        enabled: true,
        jwks_url: Some(format!("{}/jwks", idp.url())),
        ..AuthConfig::default()
    };
    let gateway = Gateway::new(&config, None).await.unwrap();
    let server = serve_http(router(&gateway)).await;
    let header = Header {
        kid: Some("ec1".into()),
        ..Header::new(Algorithm::ES256)
    };
    let token = sign(header, &key, json!({"sub": "svc", "role": "inference"}));
    assert_eq!(
        call(&server, "POST", "/v2/models/m/infer", Some(&token))
            .await
            .0,
        200
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/v2/repository/models/m/load",
            Some(&token)
        )
        .await
        .0,
        403
    );

    // Both sources at once is a configuration error.
    let both = AuthConfig {
        jwks_file: Some("x.json".into()),
        ..config
    };
    assert!(Gateway::new(&both, None).await.is_err());
}

#[tokio::test]
async fn rate_limits_per_credential_and_per_model() {
    let gateway = gateway(None, tight_limits).await;
    let server = serve_http(router(&gateway)).await;
    let alice = hs256(json!({"sub": "alice", "role": "admin"}));
    let bob = hs256(json!({"sub": "bob", "role": "admin"}));
    let carol = hs256(json!({"sub": "carol", "role": "admin"}));

    // Per credential: alice's burst of 3 on reads, then 429 (MLflow's shape on its path).
    for _ in 0..3 {
        assert_eq!(
            call(
                &server,
                "GET",
                "/api/2.0/mlflow/registered-models/get",
                Some(&alice)
            )
            .await
            .0,
            200
        );
    }
    let (status, headers, body) = call(
        &server,
        "GET",
        "/api/2.0/mlflow/registered-models/get",
        Some(&alice),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED", "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Health probes are never limited.
    assert_eq!(
        call(&server, "GET", "/v2/health/ready", Some(&alice))
            .await
            .0,
        200
    );

    // Per model: two inferences on m from different callers, then 429 for a third caller;
    // another model still answers.
    assert_eq!(
        call(&server, "POST", "/v2/models/m/infer", Some(&bob))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&server, "POST", "/v2/models/m/feedback", Some(&carol))
            .await
            .0,
        200
    );
    let (status, headers, body) = call(&server, "POST", "/v2/models/m/infer", Some(&carol)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("model"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        call(&server, "POST", "/v2/models/other/infer", Some(&bob))
            .await
            .0,
        200
    );
}

/// The server decodes `/v2/models/simpl%65/infer` to model "simple", so the per-model
/// limit must too: a percent-encoded name is the same bucket, not a way around it.
#[tokio::test]
async fn an_encoded_model_name_shares_the_models_limit() {
    let gateway = gateway(None, tight_limits).await;
    let server = serve_http(router(&gateway)).await;
    let callers = ["a", "b", "c", "d"].map(|sub| hs256(json!({"sub": sub, "role": "inference"})));
    for (caller, path) in callers
        .iter()
        .zip(["/v2/models/simple/infer", "/v2/models/simpl%65/infer"])
    {
        let (status, _, body) = call(&server, "POST", path, Some(caller)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in ["/v2/models/%73imple/infer", "/v2/models/simple/infer"] {
        let (status, headers, body) = call(&server, "POST", path, Some(&callers[2])).await;
        assert_eq!(status, 429, "{path}: {body}");
        assert!(headers.contains_key("retry-after"), "{path}");
    }
    assert_eq!(
        call(
            &server,
            "POST",
            "/v2/models/simple2/infer",
            Some(&callers[3])
        )
        .await
        .0,
        200
    );
}

/// Wrong credentials fill the address's bucket; once full, every request from it gets 429
/// with Retry-After before its credential is even looked at (a valid one included), and
/// the bucket drains with time. Requests without any credential do not count.
#[tokio::test]
async fn failed_authentication_is_limited_per_address() {
    let limited = gateway(None, |c| {
        c.auth_failure_rps = Some(2.0);
        c.auth_failure_burst = Some(3);
    })
    .await;
    let server = serve_http(router(&limited)).await;
    let valid = token_for(Role::Reader);
    let path = "/api/2.0/mlflow/registered-models/get";
    for _ in 0..5 {
        assert_eq!(call(&server, "GET", path, None).await.0, 401);
    }
    for guess in ["nexus_guess1", "not-a-jwt", "nexus_guess3"] {
        let (status, _, body) = call(&server, "GET", path, Some(guess)).await;
        assert_eq!(status, 401, "{guess}: {body}");
    }
    for token in ["nexus_guess4", valid.as_str()] {
        let (status, headers, body) = call(&server, "GET", path, Some(token)).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("failed authentications"),
            "{body}"
        );
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert_eq!(retry, 1);
    }
    // Health probes stay open; after the wait the valid credential is admitted.
    assert_eq!(call(&server, "GET", "/v2/health/ready", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&server, "GET", path, Some(&valid)).await.0, 200);

    // 0 turns the limit off (a proxy every client shares).
    let open = gateway(None, |c| c.auth_failure_rps = Some(0.0)).await;
    let server = serve_http(router(&open)).await;
    for _ in 0..30 {
        assert_eq!(call(&server, "GET", path, Some("nexus_guess")).await.0, 401);
    }
    assert_eq!(call(&server, "GET", path, Some(&valid)).await.0, 200);
}

#[tokio::test]
async fn without_auth_everything_passes_but_limits_apply_per_address() {
    let config = AuthConfig {
        per_credential_rps: Some(1.0),
        per_credential_burst: Some(2),
        ..AuthConfig::default()
    };
    let gateway = Gateway::new(&config, None).await.unwrap();
    assert!(!gateway.enabled());
    let server = serve_http(router(&gateway)).await;
    let (status, _, body) = call(&server, "POST", "/api/v1/tokens", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["subject"], Value::Null);
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            None
        )
        .await
        .0,
        200
    );
    let (status, _, body) = call(&server, "GET", "/v2/models/m", None).await;
    assert_eq!(status, 429, "{body}");

    // Auth on with nothing to check credentials against is refused at start-up.
    let nothing = AuthConfig {
        enabled: true,
        ..AuthConfig::default()
    };
    assert!(Gateway::new(&nothing, None).await.is_err());
}

#[tokio::test]
async fn layer_inside_a_nested_router_sees_the_full_path() {
    let gateway = gateway(None, |_| {}).await;
    let inner = axum::Router::new()
        .route(
            "/registered-models/create",
            axum::routing::post(|| async { "created" }),
        )
        .layer(gateway.http_layer());
    let server = serve_http(axum::Router::new().nest("/api/2.0/mlflow", inner)).await;
    let path = "/api/2.0/mlflow/registered-models/create";
    let deployer = token_for(Role::Deployer);
    assert_eq!(call(&server, "POST", path, Some(&deployer)).await.0, 200);
    let (status, _, body) = call(&server, "POST", path, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error_code"], "UNAUTHENTICATED", "{body}");
}

#[test]
fn unauthenticated_servers_stay_on_loopback() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    assert!(nexus_gateway::check_bind(IpAddr::V4(Ipv4Addr::LOCALHOST), false, false).is_ok());
    assert!(nexus_gateway::check_bind(IpAddr::V6(Ipv6Addr::LOCALHOST), false, false).is_ok());
    assert!(nexus_gateway::check_bind(any, true, false).is_ok());
    assert!(nexus_gateway::check_bind(any, false, true).is_ok());
    let error = nexus_gateway::check_bind(any, false, false).unwrap_err();
    assert!(error.to_string().contains("--insecure"), "{error}");
}
