//! Keeps registry models loaded at the versions their references name.
//!
//! A watcher per model resolves the reference, downloads the version's files into a
//! local cache laid out as a model repository, writes a config that selects exactly that
//! version, and asks the manager to load it. The manager swaps the new version in
//! atomically while the old one finishes its in-flight requests, so an alias move never
//! fails a request.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_models::Backends;
use nexus_models::repository::CONFIG_FILE;
use nexus_models::{config, pb};
use tokio::io::AsyncWriteExt;

use crate::manager::ModelManager;
use crate::remote::{ModelSource, RemoteSpec};

/// Keeps one served model loaded at the versions its references name: usually one
/// (`models:/fraud@champion`), or several served side by side under one name
/// (`--model models:/fraud@champion --model models:/fraud@challenger`) for the router.
pub struct Watcher {
    specs: Vec<RemoteSpec>,
    source: Arc<dyn ModelSource>,
    manager: Arc<ModelManager>,
    cache: PathBuf,
    current: BTreeSet<u64>,
}

impl Watcher {
    /// One watcher per served name, caching files under `cache` (a root of the manager's
    /// repository). References served under one name must name one registered model.
    pub fn for_specs(
        specs: &[RemoteSpec],
        source: &Arc<dyn ModelSource>,
        manager: &Arc<ModelManager>,
        cache: &Path,
    ) -> Result<Vec<Watcher>, String> {
        let mut grouped: BTreeMap<&str, Vec<RemoteSpec>> = BTreeMap::new();
        for spec in specs {
            grouped
                .entry(&spec.serve_as)
                .or_default()
                .push(spec.clone());
        }
        grouped
            .into_values()
            .map(|specs| {
                if specs.iter().any(|s| s.name != specs[0].name) {
                    return Err(format!(
                        "'{}' is served from two registered models; serve each under its own name",
                        specs[0].serve_as
                    ));
                }
                Ok(Watcher {
                    specs,
                    source: Arc::clone(source),
                    manager: Arc::clone(manager),
                    cache: cache.to_path_buf(),
                    current: BTreeSet::new(),
                })
            })
            .collect()
    }

    /// Resolves the references once and, when they name other versions, fetches and loads them.
    ///
    /// Every file this writes into the cache is complete before it has its final name
    /// (fetched into `.fetch-<version>`, fsynced, renamed; the config written to a temporary
    /// file, fsynced, renamed), so a sync killed at any point leaves only dot-named leftovers,
    /// which the repository ignores and the next sync replaces. A cached config that does
    /// not parse (damaged on disk, or left half-written by an older Nexus) is not trusted:
    /// it is removed and the versions are fetched again with the registry's config.
    pub async fn sync(&mut self) -> Result<(), String> {
        let registered = self.specs[0].name.clone();
        let name = self.specs[0].serve_as.clone();
        let mut wanted = BTreeSet::new();
        for spec in &self.specs {
            let version = self.source.resolve(&registered, &spec.reference).await?;
            let number: u64 = version.parse().map_err(|_| {
                format!("registry answered version '{version}' for {name}, not a number")
            })?;
            wanted.insert(number);
        }
        if wanted == self.current {
            return Ok(());
        }
        let model_dir = self.cache.join(&name);
        let config_path = model_dir.join(CONFIG_FILE);
        let base = self.specs[0].config.as_ref();
        let cache_trusted = base.is_some() || config_parses(&config_path).await;
        if !cache_trusted {
            tracing::warn!(model = %name, config = %config_path.display(), "cached config does not parse; fetching the model again");
            remove_any(&config_path).await?;
        }
        for &number in &wanted {
            let version_dir = model_dir.join(number.to_string());
            let backends = self.manager.backends();
            if cache_trusted && backends.detect(&version_dir).is_some() {
                continue;
            }
            let staging = model_dir.join(format!(".fetch-{number}"));
            remove_any(&staging).await?;
            self.source
                .fetch(&registered, &number.to_string(), &staging)
                .await?;
            arrange(&staging, &name, backends).await?;
            let fetched = staging.join(CONFIG_FILE);
            if fetched.exists() {
                tokio::fs::rename(&fetched, &config_path)
                    .await
                    .map_err(|e| format!("cannot install the config of {name}: {e}"))?;
            }
            remove_any(&version_dir).await?;
            tokio::fs::rename(staging.join("model"), &version_dir)
                .await
                .map_err(|e| format!("cannot move {name} version {number} into the cache: {e}"))?;
            sync_dir(&model_dir).await?;
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        let config = select_versions(&config_path, &name, &wanted, base).await?;
        write_atomically(&config_path, config.as_bytes())
            .await
            .map_err(|e| format!("cannot write the config of {name}: {e}"))?;
        self.manager
            .load(&name, None)
            .await
            .map_err(|e| e.to_string())?;
        let references: Vec<&str> = self.specs.iter().map(|s| s.reference.as_str()).collect();
        tracing::info!(model = %name, ?references, versions = ?wanted, "serving registry versions");
        for old in self.current.difference(&wanted) {
            // The manager no longer serves it; its files are no longer read.
            let _ = tokio::fs::remove_dir_all(model_dir.join(old.to_string())).await;
        }
        self.current = wanted;
        Ok(())
    }

    /// Syncs every `interval` until the task is dropped; failures are logged and retried.
    pub async fn watch(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(e) = self.sync().await {
                tracing::warn!(model = %self.specs[0].name, error = %e, "registry sync failed; still serving the current versions");
            }
        }
    }
}

/// Lays out fetched files as the version folder `<staging>/model/` that their runtime
/// expects: every file but the config, the model renamed to its runtime's name
/// (`model.onnx`) when it has another. The folder is fsynced so the names survive a crash
/// once it is renamed into the cache; the fetched `config.pbtxt` stays in `staging`.
async fn arrange(staging: &Path, name: &str, backends: &Backends) -> Result<(), String> {
    let (runtime, found) = backends.detect(staging).ok_or_else(|| {
        format!(
            "the registry version of {name} holds no model this server can serve (looked for {})",
            backends.expected_files()
        )
    })?;
    let model = staging.join("model");
    let io = |what: &Path, e: std::io::Error| format!("cannot arrange {}: {e}", what.display());
    tokio::fs::create_dir_all(&model)
        .await
        .map_err(|e| io(&model, e))?;
    let mut entries = tokio::fs::read_dir(staging)
        .await
        .map_err(|e| io(staging, e))?;
    while let Some(entry) = entries.next_entry().await.map_err(|e| io(staging, e))? {
        let path = entry.path();
        let file = entry.file_name();
        if file == CONFIG_FILE || path == model {
            continue;
        }
        let target = if path == found {
            model.join(runtime.model_filename())
        } else {
            model.join(file)
        };
        tokio::fs::rename(&path, &target)
            .await
            .map_err(|e| io(&path, e))?;
    }
    sync_dir(&model).await
}

/// Whether the config at `path` parses; an absent one counts as parsing (the model has
/// none of its own).
async fn config_parses(path: &Path) -> bool {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => config::parse_text(&text).is_ok(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Replaces `path` by `contents` so that whoever reads it, then or after a crash, finds
/// the old file or the new one, whole: written to a dot-named file beside it (which the
/// repository ignores), fsynced, renamed over it, and the folder fsynced.
async fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = parent.join(format!(".{file_name}.partial"));
    tokio::fs::create_dir_all(parent).await?;
    let mut file = tokio::fs::File::create(&temporary).await?;
    file.write_all(contents).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&temporary, path).await?;
    tokio::fs::File::open(parent).await?.sync_all().await
}

/// Removes whatever an earlier sync left at `path` (folder or file); nothing there is fine.
async fn remove_any(path: &Path) -> Result<(), String> {
    let removed = match tokio::fs::symlink_metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
    };
    removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

/// Makes the entries of `dir` (files created or renamed in it) durable.
async fn sync_dir(dir: &Path) -> Result<(), String> {
    let sync = async { tokio::fs::File::open(dir).await?.sync_all().await };
    sync.await
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// `base`, else the config at `path` (or an empty one), with `name` and a policy serving
/// exactly `versions`.
async fn select_versions(
    path: &Path,
    name: &str,
    versions: &BTreeSet<u64>,
    base: Option<&pb::ModelConfig>,
) -> Result<String, String> {
    let mut parsed = match (base, tokio::fs::read_to_string(path).await) {
        (Some(base), _) => base.clone(),
        (None, Ok(text)) => config::parse_text(&text).map_err(|e| format!("{name}: {e}"))?,
        (None, Err(_)) => pb::ModelConfig::default(),
    };
    parsed.name = name.to_string();
    parsed.default_model_filename = String::new();
    parsed.version_policy = Some(pb::ModelVersionPolicy {
        policy_choice: Some(pb::model_version_policy::PolicyChoice::Specific(
            pb::model_version_policy::Specific {
                versions: versions.iter().map(|v| *v as i64).collect(),
            },
        )),
    });
    Ok(config::to_text(&parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fetched_files_become_the_selected_versions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"onnx").unwrap();
        std::fs::write(dir.path().join("MLmodel"), b"flavors: {}").unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "name: \"other\" max_batch_size: 4",
        )
        .unwrap();
        let backends = Backends::new(vec![Arc::new(nexus_backend_onnx::OnnxRuntime::default())]);
        arrange(dir.path(), "fraud", &backends).await.unwrap();
        let versions = BTreeSet::from([7, 9]);
        let text = select_versions(&dir.path().join(CONFIG_FILE), "fraud", &versions, None)
            .await
            .unwrap();
        let config = config::parse_text(&text).unwrap();
        assert_eq!(config.name, "fraud");
        assert_eq!(config.max_batch_size, 4);
        assert_eq!(config::select_versions(&config, &[1, 7, 9]), vec![7, 9]);
        assert!(dir.path().join("model/model.onnx").is_file());
    }
}
