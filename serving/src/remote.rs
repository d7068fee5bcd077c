//! Serving models from a registry: `models:/<name>@<alias>` or `models:/<name>/<version>`.
//!
//! This module holds what a registry model is ([`RemoteSpec`]) and the seam it is fetched
//! through ([`ModelSource`]). The handle the manager gives its hooks names both, so this
//! module depends on nothing else of serving; keeping the models loaded, which needs the
//! manager, is the watcher's job (`watcher.rs`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use nexus_models::repository::CONFIG_FILE;
use nexus_models::{config, pb};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where `models:/` references are resolved and model files fetched: the registry seam.
pub trait ModelSource: Send + Sync {
    /// The version `reference` (an alias, or a version number) of `name` names now.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<String, String>>;
    /// Points `alias` of `name` at `version` (promotion).
    fn set_alias<'a>(
        &'a self,
        name: &'a str,
        alias: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Downloads every file of `name` version `version` into the folder `dest`.
    fn fetch<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A `models:/` URI taken apart, and how to serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpec {
    /// The registered model's name.
    pub name: String,
    /// An alias, or a version number.
    pub reference: String,
    /// The name clients use (the registered name, or the repository entry's folder).
    pub serve_as: String,
    /// The config to serve it with (a repository entry's), instead of the one fetched.
    pub config: Option<pb::ModelConfig>,
}

/// Config parameter that makes a repository entry a pointer to a registry model.
pub const SOURCE_PARAMETER: &str = "source";

impl RemoteSpec {
    /// Parses `models:/<name>@<alias>` or `models:/<name>/<version>`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let bad = || format!("'{uri}' is not models:/<name>@<alias> or models:/<name>/<version>");
        let rest = uri.strip_prefix("models:/").ok_or_else(bad)?;
        let (name, reference) = match rest.split_once('@') {
            Some((name, alias)) => (name, alias),
            None => {
                let (name, version) = rest.rsplit_once('/').ok_or_else(bad)?;
                version.parse::<u64>().map_err(|_| bad())?;
                (name, version)
            }
        };
        let valid_name = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
        if !valid_name || reference.is_empty() {
            return Err(bad());
        }
        Ok(RemoteSpec {
            name: name.to_string(),
            reference: reference.to_string(),
            serve_as: name.to_string(),
            config: None,
        })
    }

    /// The repository entries under `roots` whose config.pbtxt points at a registry model
    /// with `parameters { key: "source" value: { string_value: "models:/…" } }`; the entry's
    /// folder name is the served name and the rest of its config applies.
    pub fn discover(roots: &[PathBuf]) -> Result<Vec<Self>, String> {
        let mut found = Vec::new();
        for root in roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path().join(CONFIG_FILE)) else {
                    continue;
                };
                let Ok(mut parsed) = config::parse_text(&text) else {
                    continue;
                };
                let Some(source) = parsed.parameters.remove(SOURCE_PARAMETER) else {
                    continue;
                };
                let mut spec = Self::parse(&source.string_value)
                    .map_err(|e| format!("{}: {e}", entry.path().join(CONFIG_FILE).display()))?;
                spec.serve_as = entry.file_name().to_string_lossy().into_owned();
                spec.config = Some(parsed);
                found.push(spec);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_uris() {
        let spec = RemoteSpec::parse("models:/fraud@champion").unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.reference.as_str()),
            ("fraud", "champion")
        );
        let spec = RemoteSpec::parse("models:/fraud/3").unwrap();
        assert_eq!(spec.reference, "3");
        for bad in [
            "models:/fraud",
            "models:/@x",
            "runs:/a/b",
            "models:/a/b/latest",
            "models:/../x@y",
        ] {
            assert!(RemoteSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_entries_can_point_at_the_registry() {
        let root = tempfile::tempdir().unwrap();
        let entry = root.path().join("fraud");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(
            entry.join(CONFIG_FILE),
            "max_batch_size: 8\nparameters { key: \"source\" value: { string_value: \"models:/fraud-detector@champion\" } }",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("plain/1")).unwrap();
        let specs = RemoteSpec::discover(&[root.path().to_path_buf()]).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(
            (specs[0].name.as_str(), specs[0].serve_as.as_str()),
            ("fraud-detector", "fraud")
        );
        let config = specs[0].config.as_ref().unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert!(config.parameters.is_empty());
    }
}
