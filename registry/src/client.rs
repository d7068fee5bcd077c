//! A client for MLflow's REST API (Nexus's registry or MLflow's own server): what
//! `nexus models` and serving's `models:/…` resolution use.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the registry at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{code}: {message}")]
    Registry { code: String, message: String },
    #[error("{0}")]
    Io(String),
    /// The registry listed an artifact whose name could put a file outside the folder
    /// being filled (absolute, `..`, `.`, empty), or more files or deeper folders than a
    /// model may have.
    #[error("refusing the registry's artifact listing: {0}")]
    UnsafeListing(String),
}

impl ClientError {
    /// The MLflow error code, when the registry answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Registry { code, .. } => Some(code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// What a `models:/` URI names: a version number or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Version(String),
    Alias(String),
}

/// An MLflow REST client.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

impl RegistryClient {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base_url: &str) -> Self {
        Self::with_token(base_url, None)
    }

    /// A client that sends `token` as `Authorization: Bearer` (MLflow's
    /// `MLFLOW_TRACKING_TOKEN`) with every call, artifact transfers included.
    pub fn with_token(base_url: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) =
            token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        RegistryClient {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(ClientError::Registry {
                code: value["error_code"]
                    .as_str()
                    .unwrap_or(status.as_str())
                    .to_string(),
                message: value["message"]
                    .as_str()
                    .map_or(text.clone(), str::to_string),
            });
        }
        Ok(value)
    }

    /// Creates a registered model unless it exists.
    pub async fn ensure_registered_model(&self, name: &str) -> Result<()> {
        match self
            .call(
                reqwest::Method::POST,
                "registered-models/create",
                &[],
                Some(json!({ "name": name })),
            )
            .await
        {
            Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Registered models with their latest versions and aliases.
    pub async fn list_models(&self) -> Result<Vec<Value>> {
        let mut models = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("max_results", "1000")];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page = self
                .call(
                    reqwest::Method::GET,
                    "registered-models/search",
                    &query,
                    None,
                )
                .await?;
            models.extend(
                page["registered_models"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            match page["next_page_token"].as_str() {
                Some(next) => token = next.to_string(),
                None => return Ok(models),
            }
        }
    }

    /// Points `alias` of `name` at `version`.
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        let body = json!({ "name": name, "alias": alias, "version": version });
        self.call(
            reqwest::Method::POST,
            "registered-models/alias",
            &[],
            Some(body),
        )
        .await?;
        Ok(())
    }

    /// The version number a reference resolves to.
    pub async fn resolve(&self, name: &str, reference: &Reference) -> Result<String> {
        match reference {
            Reference::Version(v) => {
                let found = self
                    .call(
                        reqwest::Method::GET,
                        "model-versions/get",
                        &[("name", name), ("version", v)],
                        None,
                    )
                    .await?;
                Ok(found["model_version"]["version"]
                    .as_str()
                    .unwrap_or(v)
                    .to_string())
            }
            Reference::Alias(alias) => {
                let found = self
                    .call(
                        reqwest::Method::GET,
                        "registered-models/alias",
                        &[("name", name), ("alias", alias)],
                        None,
                    )
                    .await?;
                found["model_version"]["version"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        ClientError::Io(format!("alias {alias} of {name} has no version"))
                    })
            }
        }
    }

    fn artifact_url(&self, uri: &str) -> Result<String> {
        let path = uri.strip_prefix("mlflow-artifacts:/").ok_or_else(|| {
            ClientError::Io(format!(
                "artifact URI '{uri}' is not served by the registry (mlflow-artifacts:/…)"
            ))
        })?;
        Ok(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}",
            self.base,
            path.trim_start_matches('/')
        ))
    }

    /// Uploads `file` to the artifact URI `uri`, streaming it with a progress bar.
    pub async fn upload(&self, uri: &str, file: &Path, progress: &ProgressBar) -> Result<()> {
        let url = self.artifact_url(uri)?;
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|e| ClientError::Io(format!("cannot open {}: {e}", file.display())))?;
        let bar = progress.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    bar.inc(c.len() as u64);
                }
            });
        let response = self
            .http
            .put(&url)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(ClientError::Io(format!(
                "upload of {} failed: {text}",
                file.display()
            )));
        }
        Ok(())
    }

    /// Pushes the files of one model version (each by its name in the version and its
    /// path here): uploads them as a logged model of the Default experiment, registers a
    /// new version of `name` from it, tags it and points `alias` at it. Returns the new
    /// version.
    pub async fn push(
        &self,
        files: &[(String, PathBuf)],
        name: &str,
        alias: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<String> {
        let mut total = 0;
        for (_, path) in files {
            let meta = std::fs::metadata(path)
                .map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
            total += meta.len();
        }
        self.ensure_registered_model(name).await?;
        let created = self
            .call(
                reqwest::Method::POST,
                "logged-models",
                &[],
                Some(json!({ "experiment_id": "0", "name": name, "model_type": "nexus-push" })),
            )
            .await?;
        let info = &created["model"]["info"];
        let model_id = info["model_id"].as_str().unwrap_or_default().to_string();
        let root = info["artifact_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let progress = bar(total, &format!("pushing {name}"));
        for (relative, absolute) in files {
            self.upload(&format!("{root}/{relative}"), absolute, &progress)
                .await?;
        }
        progress.finish_and_clear();
        self.call(
            reqwest::Method::PATCH,
            &format!("logged-models/{model_id}"),
            &[],
            Some(json!({ "model_id": model_id, "status": "LOGGED_MODEL_READY" })),
        )
        .await?;
        let tag_list: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let version = self
            .call(
                reqwest::Method::POST,
                "model-versions/create",
                &[],
                Some(json!({ "name": name, "source": format!("models:/{model_id}"), "model_id": model_id, "tags": tag_list })),
            )
            .await?["model_version"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(alias) = alias {
            self.set_alias(name, alias, &version).await?;
        }
        Ok(version)
    }

    /// Downloads every file of `name` version `version` into `dest` (replacing it). The
    /// files go to `<dest>.partial` first and are fsynced; the folder is renamed into place
    /// once complete, so `dest` never holds a partial download, even after a crash.
    pub async fn fetch_version(&self, name: &str, version: &str, dest: &Path) -> Result<()> {
        let found = self
            .call(
                reqwest::Method::GET,
                "model-versions/get-download-uri",
                &[("name", name), ("version", version)],
                None,
            )
            .await?;
        let root = found["artifact_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let staging = dest.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&staging).await;
        if let Err(e) = self.download_tree(&root, &staging).await {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
        let _ = tokio::fs::remove_dir_all(dest).await;
        tokio::fs::rename(&staging, dest).await.map_err(|e| {
            ClientError::Io(format!("cannot move {} into place: {e}", dest.display()))
        })?;
        match dest.parent() {
            Some(parent) => sync_dir(parent).await,
            None => Ok(()),
        }
    }

    /// The entries of the artifact folder `path`: `{path, is_dir, file_size}` objects.
    async fn list_artifacts(&self, path: &str) -> Result<Vec<Value>> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts", self.base);
        let response = self
            .http
            .get(&url)
            .query(&[("path", path)])
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let listing: Value = response
            .json()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        if !status.is_success() {
            return Err(ClientError::Registry {
                code: listing["error_code"]
                    .as_str()
                    .unwrap_or(status.as_str())
                    .to_string(),
                message: format!("listing artifacts at '{path}': {}", listing["message"]),
            });
        }
        Ok(listing["files"].as_array().cloned().unwrap_or_default())
    }

    /// Downloads the artifact tree under `root` into `dest`, folder by folder (a work list,
    /// not recursion: the registry decides how deep it is). Every listed name must be a
    /// relative path of plain components, and the tree is bounded by [`MAX_LISTED_ENTRIES`]
    /// and [`MAX_LISTED_DEPTH`]; anything else fails the download. Files and folders are
    /// fsynced before this returns.
    async fn download_tree(&self, root: &str, dest: &Path) -> Result<()> {
        let remote_root = root.trim_start_matches("mlflow-artifacts:/");
        let mut pending = vec![(String::new(), dest.to_path_buf(), 0)];
        let mut folders = Vec::new();
        let mut entries = 0;
        while let Some((relative, folder, depth)) = pending.pop() {
            let listed = format!("{remote_root}/{relative}");
            let listing = self.list_artifacts(listed.trim_end_matches('/')).await?;
            tokio::fs::create_dir_all(&folder)
                .await
                .map_err(|e| ClientError::Io(format!("cannot create {}: {e}", folder.display())))?;
            for entry in listing {
                entries += 1;
                if entries > MAX_LISTED_ENTRIES {
                    return Err(ClientError::UnsafeListing(format!(
                        "more than {MAX_LISTED_ENTRIES} files and folders"
                    )));
                }
                let name = entry["path"].as_str().unwrap_or_default();
                let local = folder.join(plain_relative(name)?);
                let child = if relative.is_empty() {
                    name.to_string()
                } else {
                    format!("{relative}/{name}")
                };
                if entry["is_dir"].as_bool().unwrap_or(false) {
                    if depth >= MAX_LISTED_DEPTH {
                        return Err(ClientError::UnsafeListing(format!(
                            "folders nested more than {MAX_LISTED_DEPTH} deep"
                        )));
                    }
                    pending.push((child, local, depth + 1));
                } else {
                    if let Some(parent) = local.parent() {
                        tokio::fs::create_dir_all(parent).await.map_err(|e| {
                            ClientError::Io(format!("cannot create {}: {e}", parent.display()))
                        })?;
                    }
                    self.download_file(&format!("{root}/{child}"), &local)
                        .await?;
                }
            }
            folders.push(folder);
        }
        for folder in folders.iter().rev() {
            sync_dir(folder).await?;
        }
        Ok(())
    }

    /// Downloads one artifact into `dest` and fsyncs it.
    async fn download_file(&self, uri: &str, dest: &Path) -> Result<()> {
        let url = self.artifact_url(uri)?;
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        if !response.status().is_success() {
            return Err(ClientError::Io(format!(
                "download of {uri} failed: HTTP {}",
                response.status()
            )));
        }
        let write_error =
            |e: std::io::Error| ClientError::Io(format!("cannot write {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| ClientError::Io(format!("cannot create {}: {e}", dest.display())))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        file.sync_all().await.map_err(write_error)
    }
}

/// Most files and folders one downloaded model version may list.
pub const MAX_LISTED_ENTRIES: usize = 100_000;

/// How deep the folders of one downloaded model version may nest.
pub const MAX_LISTED_DEPTH: usize = 32;

/// `name` as a path below the folder being filled: relative, of plain components only (no
/// root, drive, `.` or `..`), not empty. A registry's listing is not trusted to stay inside
/// the model cache.
fn plain_relative(name: &str) -> Result<&Path> {
    let path = Path::new(name);
    let plain = !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        // `a/./b` reads as `a/b` to `components`; the name must be what it says.
        && !name.split(['/', '\\']).any(|part| part.is_empty() || part == "." || part == "..");
    if plain {
        Ok(path)
    } else {
        Err(ClientError::UnsafeListing(format!(
            "artifact name '{name}' is not a plain relative path"
        )))
    }
}

/// Makes the entries of `dir` (files created or renamed in it) durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let sync = async { tokio::fs::File::open(dir).await?.sync_all().await };
    sync.await
        .map_err(|e| ClientError::Io(format!("cannot sync {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Query, State};
    use axum::routing::get;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// The listing a fake registry answers for a `path` below the version's root (`""` for
    /// the root itself).
    type Listing = Arc<dyn Fn(&str) -> Value + Send + Sync>;

    const ROOT: &str = "models/m-1/artifacts";

    /// A real HTTP server speaking just enough of MLflow's REST API for `fetch_version`:
    /// the version's download URI, the listings `listing` gives, and `content` for every
    /// file. Returns its base URL.
    async fn registry(listing: Listing) -> String {
        async fn download_uri() -> axum::Json<Value> {
            axum::Json(json!({ "artifact_uri": format!("mlflow-artifacts:/{ROOT}") }))
        }
        async fn list(
            State(listing): State<Listing>,
            Query(query): Query<HashMap<String, String>>,
        ) -> axum::Json<Value> {
            let path = query.get("path").map_or("", String::as_str);
            let below = path.strip_prefix(ROOT).unwrap_or(path);
            axum::Json(listing(below.trim_start_matches('/')))
        }
        let app = axum::Router::new()
            .route(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                get(download_uri),
            )
            .route("/api/2.0/mlflow-artifacts/artifacts", get(list))
            .route(
                "/api/2.0/mlflow-artifacts/artifacts/{*path}",
                get(|| async { "content" }),
            )
            .with_state(listing);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn file(name: &str) -> Value {
        json!({ "path": name, "is_dir": false, "file_size": 7 })
    }

    /// Every file under `path`: (path relative to it, size, absolute path).
    fn local_files(path: &Path) -> Result<Vec<(String, u64, PathBuf)>> {
        let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_file() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model.onnx")
                .to_string();
            return Ok(vec![(name, meta.len(), path.to_path_buf())]);
        }
        let mut files = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let relative = p
                        .strip_prefix(path)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .replace('\\', "/");
                    files.push((relative, entry.metadata().map_err(io)?.len(), p));
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every file under `dir`, relative, sorted.
    fn files_under(dir: &Path) -> Vec<String> {
        local_files(dir)
            .map(|files| files.into_iter().map(|(name, _, _)| name).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_plain_listing_is_downloaded() {
        let base = registry(Arc::new(|path: &str| match path {
            "" => json!({ "files": [file("model.onnx"), { "path": "sub", "is_dir": true }] }),
            "sub" => json!({ "files": [file("a.txt")] }),
            _ => json!({}),
        }))
        .await;
        let cache = tempfile::tempdir().unwrap();
        let dest = cache.path().join("m").join("1");
        RegistryClient::new(&base)
            .fetch_version("m", "1", &dest)
            .await
            .unwrap();
        assert_eq!(files_under(&dest), ["model.onnx", "sub/a.txt"]);
        assert_eq!(std::fs::read(dest.join("sub/a.txt")).unwrap(), b"content");
        assert_eq!(
            files_under(cache.path()),
            ["m/1/model.onnx", "m/1/sub/a.txt"]
        );
    }

    /// A hostile registry lists names that lead out of the cache folder: each download
    /// fails naming the entry, and nothing is written anywhere, inside the cache or out.
    #[tokio::test]
    async fn names_leading_out_of_the_cache_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let absolute = outside.path().join("absolute").display().to_string();
        let hostile = [
            absolute.as_str(),
            "../escaped",
            "../../escaped",
            "sub/../../escaped",
            "./model.onnx",
            "sub//x",
            "",
        ];
        for name in hostile {
            let cache = outside.path().join("cache");
            let listed = name.to_string();
            let base = registry(Arc::new(move |path: &str| match path {
                "" => json!({ "files": [file("model.onnx"), file(&listed)] }),
                _ => json!({}),
            }))
            .await;
            let dest = cache.join("m").join("1");
            let result = RegistryClient::new(&base)
                .fetch_version("m", "1", &dest)
                .await;
            match result {
                Err(ClientError::UnsafeListing(why)) => {
                    assert!(why.contains(&format!("'{name}'")), "{name}: {why}")
                }
                other => panic!("{name:?}: expected a refused listing, got {other:?}"),
            }
            assert!(!dest.exists(), "{name:?}: {} exists", dest.display());
            let written = files_under(outside.path());
            assert!(written.is_empty(), "{name:?}: left {written:?}");
            let _ = std::fs::remove_dir_all(&cache);
        }
    }

    /// A registry whose every folder holds another folder cannot keep the client
    /// creating folders forever.
    #[tokio::test]
    async fn endless_nesting_is_refused() {
        let base = registry(Arc::new(
            |_: &str| json!({ "files": [{ "path": "d", "is_dir": true }] }),
        ))
        .await;
        let cache = tempfile::tempdir().unwrap();
        let result = RegistryClient::new(&base)
            .fetch_version("m", "1", &cache.path().join("m"))
            .await;
        match result {
            Err(ClientError::UnsafeListing(why)) => assert!(why.contains("nested"), "{why}"),
            other => panic!("expected a refused listing, got {other:?}"),
        }
    }
}
