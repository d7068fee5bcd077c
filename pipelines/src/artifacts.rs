//! Step artifacts in the registry's object store: a file or a folder a step wrote is
//! streamed up (hashed on the way, for the cache) and streamed down into each consumer's
//! own folder, so consumers never share, or corrupt, a producer's copy.

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

    /// Uploads the file or folder at `local` under `key`.
    pub async fn upload(&self, local: &FsPath, key: &str) -> Result<Stored, PipelineError> {
        let meta = tokio::fs::metadata(local)
            .await
            .map_err(|e| io(&format!("artifact {}", local.display()), e))?;
        let mut hasher = Sha256::new();
        let dir = meta.is_dir();
        if dir {
            let mut files = Vec::new();
            walk(local, local, &mut files)
                .map_err(|e| io(&format!("reading {}", local.display()), e))?;
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
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| io(&context(), e))?;
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

/// Relative paths of every file below `dir`.
fn walk(base: &FsPath, dir: &FsPath, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(base, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(base) {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}
