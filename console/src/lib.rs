//! The web console: the single-page app built from `console/web` (Vite, Preact), embedded in
//! the binary at compile time, so `nexus up` and `nexus registry` serve it with no file,
//! CDN or network beside them.
//!
//! [`router`] answers `GET /` with the page and `GET /assets/…` with its files. The page
//! routes after `#` (`/#/experiments/1/runs/…`, the links MLflow clients print), so every
//! console address reaches this one page. Everything it shows comes from the server's own
//! APIs (V2, MLflow REST, `/api/v1/…`), called with the credential the user gives it; the
//! gateway classifies these two routes as open (`RouteClass::Console` in
//! `nexus_gateway::policy`), since they hold no data.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::{EmbeddedFile, RustEmbed};

/// The files `npm run build` wrote: `index.html` and content-hashed `assets/*`.
#[derive(RustEmbed)]
#[folder = "web/dist"]
struct Dist;

/// The page may only load its own files and call its own server: a credential kept in the
/// page's session storage cannot be sent anywhere else by injected markup.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; \
     style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes: `/` and `/assets/{file}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*file}", get(asset))
}

/// The page itself: revalidated on every load, so a new binary's console is picked up at
/// once (its assets have new names).
async fn index() -> Response {
    match Dist::get("index.html") {
        Some(file) => {
            let mut response = reply(file, "no-cache");
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            response
        }
        // build.rs refuses to build without it; kept as an answer rather than a panic.
        None => (StatusCode::NOT_FOUND, "the console was not built").into_response(),
    }
}

/// A hashed asset: its name changes with its content, so it may be cached for good.
async fn asset(Path(file): Path<String>) -> Response {
    match Dist::get(&format!("assets/{file}")) {
        Some(file) => reply(file, "public, max-age=31536000, immutable"),
        None => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

fn reply(file: EmbeddedFile, cache: &'static str) -> Response {
    let mime = file.metadata.mimetype().to_string();
    // Borrowed from the binary in release builds: answered without a copy.
    let mut response = file.data.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> Response {
        let request = Request::get(path).body(Body::empty()).unwrap();
        router().oneshot(request).await.unwrap()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    /// The page is never cached stale, and names the hashed files the binary embeds.
    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types_and_cache_rules() {
        let page = get("/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(header(&page, header::CONTENT_TYPE).starts_with("text/html"));
        assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache");
        assert!(header(&page, header::CONTENT_SECURITY_POLICY).contains("default-src 'self'"));

        let assets: Vec<_> = Dist::iter().filter(|f| f.starts_with("assets/")).collect();
        assert!(assets.iter().any(|f| f.ends_with(".js")), "{assets:?}");
        assert!(assets.iter().any(|f| f.ends_with(".css")), "{assets:?}");
        for name in assets {
            let response = get(&format!("/{name}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert!(header(&response, header::CACHE_CONTROL).contains("immutable"));
            let expected = if name.ends_with(".js") {
                "javascript"
            } else if name.ends_with(".css") {
                "text/css"
            } else {
                continue;
            };
            let content_type = header(&response, header::CONTENT_TYPE);
            assert!(content_type.contains(expected), "{name}: {content_type}");
        }
        assert_eq!(
            get("/assets/missing.js").await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
