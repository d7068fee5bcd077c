//! Step artifacts in the registry's object store: a file or a folder a step wrote is
//! streamed up (hashed on the way, for the cache) and streamed down into each consumer's
//! own folder, so consumers never share, or corrupt, a producer's copy.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::PipelineError;

const CHUNK: usize = 8 << 20;

/// Where artifacts go.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// How URIs are shown: the destination the store was opened with.
    destination: String,
}

/// What an upload produced.
pub struct Stored {
    pub key: String,
    pub uri: String,
    pub dir: bool,
    pub digest: String,
}

fn io(context: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(format!("{context}: {e}"))
}

impl ArtifactStore {
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, destination: &str) -> Self {
        ArtifactStore {
            store,
            root,
            destination: destination.trim_end_matches('/').to_string(),
        }
    }

    fn location(&self, key: &str) -> Path {
        self.root.parts().chain(Path::from(key).parts()).collect()
    }

    /// Uploads the file or folder at `local` under `key`. Symbolic links are refused, not
    /// followed (the artifact itself, or anything in its folder): a step could otherwise
    /// publish any file Nexus can read.
    pub async fn upload(&self, local: &FsPath, key: &str) -> Result<Stored, PipelineError> {
        let meta = tokio::fs::symlink_metadata(local)
            .await
            .map_err(|e| io(&format!("artifact {}", local.display()), e))?;
        if meta.file_type().is_symlink() {
            return Err(PipelineError::Invalid(format!(
                "artifact {} is a symbolic link; Nexus does not follow links in a step's folder",
                local.display()
            )));
        }
        let mut hasher = Sha256::new();
        let dir = meta.is_dir();
        if dir {
            let mut files = walk(local)?;
            files.sort();
            for relative in files {
                let digest = self
                    .put_file(&local.join(&relative), &format!("{key}/{relative}"))
                    .await?;
                hasher.update(relative.as_bytes());
                hasher.update([0]);
                hasher.update(digest);
            }
        } else {
            hasher.update(self.put_file(local, key).await?);
        }
        Ok(Stored {
            key: key.to_string(),
            uri: format!("{}/{key}", self.destination),
            dir,
            digest: hex::encode(hasher.finalize()),
        })
    }

    async fn put_file(&self, local: &FsPath, key: &str) -> Result<[u8; 32], PipelineError> {
        let context = || format!("uploading {}", local.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(local)
            .map_err(|e| io(&context(), e))?;
        let is_file = file.metadata().map_err(|e| io(&context(), e))?.is_file();
        if !is_file {
            return Err(PipelineError::Invalid(format!(
                "artifact {} is not a regular file",
                local.display()
            )));
        }
        let mut file = tokio::fs::File::from_std(file);
        let upload = self
            .store
            .put_multipart(&self.location(key))
            .await
            .map_err(|e| io(&context(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file
                .read(&mut buffer)
                .await
                .map_err(|e| io(&context(), e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buffer[..n]);
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| io(&context(), e))?;
            writer.write(&buffer[..n]);
        }
        if total == 0 {
            // Some stores reject an empty multipart upload.
            writer.abort().await.map_err(|e| io(&context(), e))?;
            self.store
                .put(&self.location(key), PutPayload::new())
                .await
                .map_err(|e| io(&context(), e))?;
        } else {
            writer.finish().await.map_err(|e| io(&context(), e))?;
        }
        Ok(hasher.finalize().into())
    }

    /// Downloads `key` (a file, or a folder when `dir`) to `local`.
    pub async fn download(
        &self,
        key: &str,
        dir: bool,
        local: &FsPath,
    ) -> Result<(), PipelineError> {
        if !dir {
            return self.get_file(&self.location(key), local).await;
        }
        tokio::fs::create_dir_all(local)
            .await
            .map_err(|e| io(&format!("creating {}", local.display()), e))?;
        let prefix = self.location(key);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| io(&format!("listing artifact {key}"), e))?;
        for object in objects {
            let relative: PathBuf = object
                .location
                .prefix_match(&prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            self.get_file(&object.location, &local.join(relative))
                .await?;
        }
        Ok(())
    }

    async fn get_file(&self, location: &Path, local: &FsPath) -> Result<(), PipelineError> {
        let context = || format!("downloading {location} to {}", local.display());
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io(&context(), e))?;
        }
        let mut stream = self
            .store
            .get(location)
            .await
            .map_err(|e| io(&context(), e))?
            .into_stream();
        let mut file = tokio::fs::File::create(local)
            .await
            .map_err(|e| io(&context(), e))?;
        while let Some(chunk) = stream.try_next().await.map_err(|e| io(&context(), e))? {
            file.write_all(&chunk)
                .await
                .map_err(|e| io(&context(), e))?;
        }
        file.flush().await.map_err(|e| io(&context(), e))?;
        Ok(())
    }
}

/// Relative paths of every regular file below `root`, walked with an explicit stack (a step
/// can nest folders as deep as it likes). A symbolic link or a special file anywhere is an
/// error: links are never followed out of a step's folder.
fn walk(root: &FsPath) -> Result<Vec<String>, PipelineError> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let context = || format!("reading {}", dir.display());
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&context(), e))? {
            let entry = entry.map_err(|e| io(&context(), e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io(&context(), e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                if let Ok(relative) = path.strip_prefix(root) {
                    files.push(relative.to_string_lossy().into_owned());
                }
            } else {
                return Err(PipelineError::Invalid(format!(
                    "artifact {}: {} is {}; Nexus copies only regular files and folders",
                    root.display(),
                    path.display(),
                    if kind.is_symlink() {
                        "a symbolic link"
                    } else {
                        "a special file"
                    }
                )));
            }
        }
    }
    Ok(files)
}
