//! Artifact storage through `object_store`: a local folder by default, or S3, GCS and
//! Azure Blob from a URL (credentials from the usual environment variables).
//!
//! Uploads and downloads stream in bounded memory. Uploads go through multipart writes,
//! which the local store stages in a temporary file and renames into place when complete,
//! so a crash mid-upload never leaves a partial artifact visible.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::error::RegistryError;

/// One entry of an artifact listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileInfo {
    pub path: String,
    pub is_dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
}

/// The artifact store.
#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local folder: downloads read the file directly in large
    /// chunks (object_store's local stream reads 8 KiB at a time).
    local: Option<Arc<LocalFileSystem>>,
    root: Path,
    destination: String,
}

/// Multipart part size: big enough for cloud stores' minimum part, small enough to keep
/// memory flat.
const PART_SIZE: usize = 8 << 20;

/// Read size for local downloads.
const READ_CHUNK: usize = 1 << 20;

impl Artifacts {
    /// Opens `destination`: a folder path, `file://…`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, or `az://container/prefix` (also `abfs://`).
    pub fn open(destination: &str) -> Result<Self, RegistryError> {
        let invalid = |e: String| {
            RegistryError::Invalid(format!("artifacts destination '{destination}': {e}"))
        };
        let mut local = None;
        let (store, root): (Arc<dyn ObjectStore>, Path) = match destination.split_once("://") {
            None | Some(("file", _)) => {
                let folder = destination.strip_prefix("file://").unwrap_or(destination);
                std::fs::create_dir_all(folder).map_err(|e| invalid(e.to_string()))?;
                remove_staging(std::path::Path::new(folder));
                let folder_store = Arc::new(
                    LocalFileSystem::new_with_prefix(folder)
                        .map_err(|e| invalid(e.to_string()))?
                        .with_fsync(true),
                );
                local = Some(Arc::clone(&folder_store));
                (folder_store, Path::default())
            }
            Some((scheme, _)) => {
                let url = url::Url::parse(destination).map_err(|e| invalid(e.to_string()))?;
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" | "s3a" => Arc::new(
                        object_store::aws::AmazonS3Builder::from_env()
                            .with_url(destination)
                            .build()
                            .map_err(|e| invalid(e.to_string()))?,
                    ),
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(destination)
                            .build()
                            .map_err(|e| invalid(e.to_string()))?,
                    ),
                    "az" | "abfs" | "abfss" | "azure" => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(destination)
                            .build()
                            .map_err(|e| invalid(e.to_string()))?,
                    ),
                    other => return Err(invalid(format!("unsupported scheme '{other}'"))),
                };
                let root = Path::parse(url.path().trim_start_matches('/'))
                    .map_err(|e| invalid(e.to_string()))?;
                (store, root)
            }
        };
        Ok(Artifacts {
            store,
            local,
            root,
            destination: destination.to_string(),
        })
    }

    /// The object store and the root below which this store's objects live, for others
    /// (pipeline artifacts) that keep their files in the same place.
    pub fn object_store(&self) -> (Arc<dyn ObjectStore>, Path) {
        (Arc::clone(&self.store), self.root.clone())
    }

    /// The destination this store was opened with.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The object path for a client path, refusing `..` and other escapes.
    fn location(&self, path: &str) -> Result<Path, RegistryError> {
        let relative = Path::parse(path.trim_matches('/'))
            .map_err(|e| RegistryError::Invalid(format!("Invalid artifact path '{path}': {e}")))?;
        Ok(self.root.parts().chain(relative.parts()).collect())
    }

    /// Stores a streamed body at `path`; returns the bytes written. Nothing is visible at
    /// `path` until the whole body has arrived.
    pub async fn put_stream<S, E>(&self, path: &str, body: S) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let location = self.location(path)?;
        if path.trim_matches('/').is_empty() {
            return Err(RegistryError::Invalid(
                "an artifact needs a file path".into(),
            ));
        }
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut body = body;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(RegistryError::Invalid(format!(
                        "upload of '{path}' interrupted: {e}"
                    )));
                }
            };
            // Backpressure: at most a few parts in flight, so memory stays flat.
            if let Err(e) = writer.wait_for_capacity(4).await {
                return Err(e.into());
            }
            written += chunk.len() as u64;
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(written)
    }

    /// Streams the artifact at `path`, with its size.
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, object_store::Error>>), RegistryError> {
        let location = self.location(path)?;
        if let Some(local) = &self.local {
            let file_path = local.path_to_filesystem(&location)?;
            let missing = || RegistryError::NotFound(format!("artifact '{path}' does not exist"));
            let file = tokio::fs::File::open(&file_path)
                .await
                .map_err(|_| missing())?;
            let meta = file.metadata().await.map_err(|_| missing())?;
            if !meta.is_file() {
                return Err(missing());
            }
            let stream =
                tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).map(|chunk| {
                    chunk.map_err(|e| object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    })
                });
            return Ok((meta.len(), stream.boxed()));
        }
        let result = self.store.get(&location).await?;
        let size = result.meta.size;
        Ok((size, result.into_stream().boxed()))
    }

    /// The direct children of `path` (files with sizes, and folders), named relative to
    /// `path` as MLflow's artifact listing names them.
    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>, RegistryError> {
        let location = self.location(path)?;
        let depth = location.parts().count();
        let prefix = (depth > 0).then_some(&location);
        let listing = self.store.list_with_delimiter(prefix).await?;
        let relative = |p: &Path| -> String {
            let parts: Vec<String> = p
                .parts()
                .skip(depth)
                .map(|s| s.as_ref().to_string())
                .collect();
            parts.join("/")
        };
        let mut entries: Vec<FileInfo> = listing
            .common_prefixes
            .iter()
            .map(|p| FileInfo {
                path: relative(p),
                is_dir: true,
                file_size: None,
            })
            .chain(
                listing
                    .objects
                    .iter()
                    .filter(|o| !is_staging(&o.location))
                    .map(|o| FileInfo {
                        path: relative(&o.location),
                        is_dir: false,
                        file_size: Some(o.size),
                    }),
            )
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Every file under `path`, recursively, relative to `path`.
    pub async fn walk(&self, path: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        let location = self.location(path)?;
        let depth = location.parts().count();
        let files: Vec<_> = self.store.list(Some(&location)).try_collect().await?;
        Ok(files
            .into_iter()
            .filter(|o| !is_staging(&o.location))
            .map(|o| {
                let parts: Vec<String> = o
                    .location
                    .parts()
                    .skip(depth)
                    .map(|s| s.as_ref().to_string())
                    .collect();
                (parts.join("/"), o.size)
            })
            .collect())
    }

    /// Deletes the artifact at `path`.
    pub async fn delete(&self, path: &str) -> Result<(), RegistryError> {
        let location = self.location(path)?;
        self.store.delete(&location).await?;
        Ok(())
    }

    /// Checks the store answers (a listing of the root).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.store.list_with_delimiter(Some(&self.root)).await?;
        Ok(())
    }
}

/// Deletes uploads a crashed process left half written (the local store stages them as
/// `name#n` next to their final name); nothing else writes this folder while it opens.
fn remove_staging(folder: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_staging(&path);
        } else if entry.file_name().to_string_lossy().contains('#') {
            tracing::info!(file = %path.display(), "removing an upload interrupted by a crash");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The local store's in-progress multipart files (`name#n`) are not artifacts.
fn is_staging(path: &Path) -> bool {
    path.filename().is_some_and(|f| f.contains('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn streams_in_and_out_lists_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        let n = store
            .put_stream("1/run/artifacts/a.txt", body(&[b"hello ", b"world"]))
            .await
            .unwrap();
        assert_eq!(n, 11);
        store
            .put_stream("1/run/artifacts/sub/b.bin", body(&[b"x"]))
            .await
            .unwrap();
        let (size, stream) = store.get_stream("1/run/artifacts/a.txt").await.unwrap();
        assert_eq!(size, 11);
        let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"hello world");
        let listing = store.list("1/run/artifacts").await.unwrap();
        assert_eq!(
            listing,
            vec![
                FileInfo {
                    path: "a.txt".into(),
                    is_dir: false,
                    file_size: Some(11)
                },
                FileInfo {
                    path: "sub".into(),
                    is_dir: true,
                    file_size: None
                },
            ]
        );
        let walked = store.walk("1/run").await.unwrap();
        assert_eq!(walked.len(), 2);
        assert!(matches!(
            store.get_stream("1/../../etc/passwd").await,
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            store.get_stream("1/none").await,
            Err(RegistryError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn an_interrupted_upload_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(std::io::Error::other("client went away")),
        ]);
        let err = store.put_stream("x/model.onnx", broken).await.unwrap_err();
        assert!(err.to_string().contains("interrupted"), "{err}");
        assert!(matches!(
            store.get_stream("x/model.onnx").await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(store.list("x").await.unwrap().is_empty());
    }
}
