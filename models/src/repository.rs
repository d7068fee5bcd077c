//! A model repository in Triton's layout:
//!
//! ```text
//! <root>/<model>/config.pbtxt          optional
//! <root>/<model>/<version>/            one folder per numeric version, holding the model
//! ```
//!
//! Which file in a version folder is the model (`model.onnx`, `model.pt`, or the folder
//! itself) is the runtime's business: see [`crate::backend::BackendFactory`].
//!
//! Like Triton, a repository may span several roots; a model name is looked up in the
//! roots in order.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, ModelConfig};

/// File name of a model's configuration.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// Why a model could not be read from the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {0} is not a readable directory")]
    Root(String),
    #[error("model '{0}' is not in the model repository")]
    NotFound(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One model as found on disk, before loading.
#[derive(Debug, Clone)]
pub struct RepositoryModel {
    pub name: String,
    /// The parsed `config.pbtxt`, or an empty config to be completed from the model.
    pub config: ModelConfig,
    /// Version number and folder for every numeric version folder.
    pub versions: Vec<(u64, PathBuf)>,
}

/// Directories of models in Triton's layout.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    roots: Vec<PathBuf>,
}

impl ModelRepository {
    /// Opens the repository at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepositoryError> {
        Self::open_all(vec![root.into()])
    }

    /// Opens a repository spanning `roots` (searched in order).
    pub fn open_all(roots: Vec<PathBuf>) -> Result<Self, RepositoryError> {
        if let Some(missing) = roots.iter().find(|r| !r.is_dir()) {
            return Err(RepositoryError::Root(missing.display().to_string()));
        }
        Ok(ModelRepository { roots })
    }

    /// The repository's directories.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Names of the models present (sub-directories, hidden ones skipped), sorted.
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        let mut names = Vec::new();
        for root in &self.roots {
            names.extend(
                read_dir(root)?
                    .into_iter()
                    .filter(|p| p.is_dir())
                    .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
                    .filter(|n| !n.starts_with('.')),
            );
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Reads a model's config and version folders. A config that does not parse is an error.
    pub fn read(&self, name: &str) -> Result<RepositoryModel, RepositoryError> {
        let dir = self.model_dir(name)?;
        let config = read_config(&dir)?.unwrap_or_default();
        let mut versions: Vec<(u64, PathBuf)> = read_dir(&dir)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| {
                let version = p.file_name()?.to_str()?.parse::<u64>().ok()?;
                Some((version, p))
            })
            .collect();
        versions.sort_by_key(|(v, _)| *v);
        Ok(RepositoryModel {
            name: name.to_string(),
            config,
            versions,
        })
    }

    /// A cheap digest of a model's files (names, sizes, modification times), so the
    /// poller reloads a model only when something under it changed.
    pub fn fingerprint(&self, name: &str) -> Option<u64> {
        let dir = self.model_dir(name).ok()?;
        let mut hasher = DefaultHasher::new();
        let mut stack = vec![dir];
        while let Some(path) = stack.pop() {
            let mut entries = read_dir(&path).ok()?;
            entries.sort();
            for entry in entries {
                let meta = std::fs::metadata(&entry).ok()?;
                entry.hash(&mut hasher);
                meta.len().hash(&mut hasher);
                meta.modified().ok().hash(&mut hasher);
                if meta.is_dir() {
                    stack.push(entry);
                }
            }
        }
        Some(hasher.finish())
    }

    fn model_dir(&self, name: &str) -> Result<PathBuf, RepositoryError> {
        let valid = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
        self.roots
            .iter()
            .map(|root| root.join(name))
            .find(|dir| valid && dir.is_dir())
            .ok_or_else(|| RepositoryError::NotFound(name.to_string()))
    }
}

/// The parsed `config.pbtxt` of the model folder `dir`; `None` where it has none.
pub fn read_config(dir: &Path) -> Result<Option<ModelConfig>, RepositoryError> {
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(config::parse_text(&text)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RepositoryError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, RepositoryError> {
    let io = |source| RepositoryError::Io {
        path: dir.display().to_string(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_layout_configs_and_versions() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("simple");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::create_dir_all(m.join("3")).unwrap();
        std::fs::create_dir_all(m.join("notes")).unwrap();
        std::fs::write(
            m.join("config.pbtxt"),
            "name: \"simple\" default_model_filename: \"net.onnx\"",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("bare/2")).unwrap();
        std::fs::create_dir_all(root.path().join(".hidden")).unwrap();
        std::fs::write(root.path().join("README.md"), "not a model").unwrap();

        let repo = ModelRepository::open(root.path()).unwrap();
        assert_eq!(repo.model_names().unwrap(), vec!["bare", "simple"]);
        let simple = repo.read("simple").unwrap();
        assert_eq!(simple.config.name, "simple");
        assert_eq!(simple.versions, vec![(1, m.join("1")), (3, m.join("3"))]);
        assert_eq!(simple.config.default_model_filename, "net.onnx");
        let bare = repo.read("bare").unwrap();
        assert_eq!(bare.config, ModelConfig::default());
        assert_eq!(bare.versions[0].1, root.path().join("bare/2"));
        assert!(matches!(
            repo.read("missing"),
            Err(RepositoryError::NotFound(_))
        ));
        assert!(matches!(
            repo.read("../etc"),
            Err(RepositoryError::NotFound(_))
        ));
    }

    #[test]
    fn bad_config_is_an_error_and_fingerprint_tracks_changes() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("bad");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::write(m.join("config.pbtxt"), "max_batch_size: {").unwrap();
        let repo = ModelRepository::open(root.path()).unwrap();
        let err = repo.read("bad").unwrap_err();
        assert!(matches!(err, RepositoryError::Config(_)), "{err}");

        let before = repo.fingerprint("bad").unwrap();
        assert_eq!(repo.fingerprint("bad"), Some(before));
        std::fs::write(m.join("1/model.onnx"), b"x").unwrap();
        assert_ne!(repo.fingerprint("bad"), Some(before));
        assert!(ModelRepository::open(root.path().join("nope")).is_err());
    }

    #[test]
    fn several_roots_are_searched_in_order() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(first.path().join("a/1")).unwrap();
        std::fs::create_dir_all(second.path().join("a/2")).unwrap();
        std::fs::create_dir_all(second.path().join("b/1")).unwrap();
        let repo =
            ModelRepository::open_all(vec![first.path().into(), second.path().into()]).unwrap();
        assert_eq!(repo.model_names().unwrap(), vec!["a", "b"]);
        assert_eq!(repo.read("a").unwrap().versions[0].0, 1);
        assert_eq!(repo.read("b").unwrap().versions[0].0, 1);
    }
}
