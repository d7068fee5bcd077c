//! `GET /api/v1/whoami`: who the gateway took the caller for and which route classes their
//! role may use, so a client such as the web console offers only the actions the server
//! would allow (the server still decides every request on its own).

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use crate::policy::{RouteClass, allowed};
use crate::{Gateway, Principal};

/// The route, to merge into a router that the gateway's layer wraps (the layer puts the
/// caller's [`Principal`] into the request).
pub fn router(gateway: &Gateway) -> Router {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .with_state(gateway.enabled())
}

/// `{"auth", "subject", "role", "allowed": [class names]}`. With authentication off there
/// is no principal and every class is allowed.
async fn whoami(State(auth): State<bool>, principal: Option<Extension<Principal>>) -> Json<Value> {
    let role = principal.as_ref().map(|Extension(p)| p.role);
    let classes: Vec<&str> = RouteClass::ALL
        .into_iter()
        .filter(|class| !class.is_open() && role.is_none_or(|role| allowed(role, *class)))
        .map(RouteClass::as_str)
        .collect();
    Json(json!({
        "auth": auth,
        "subject": principal.as_ref().map(|Extension(p)| p.subject.clone()),
        "role": role.map(|r| r.as_str()),
        "allowed": classes,
    }))
}
