//! Artifact storage through `object_store`: a local folder by default, or S3, GCS and
//! Azure Blob from a URL (credentials from the usual environment variables).
//!
//! Uploads and downloads stream in bounded memory, and nothing is visible at an artifact's
//! path until its whole body has arrived. Cloud stores get multipart uploads, which they
//! publish only when completed. The local store writes each upload to a file in its own
//! staging folder ([`STAGING`], at the top of the artifact folder and refused as an artifact
//! path) and renames it into place when complete; a crash leaves only files in that folder,
//! which the next start removes.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncWriteExt;

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
    /// The same store when it is a local folder.
    local: Option<Local>,
    root: Path,
    destination: String,
}

/// A local artifact folder, which Nexus reads and writes itself: downloads read files in
/// large chunks (object_store's local stream reads 8 KiB at a time), and uploads stage in
/// [`STAGING`] (object_store's local uploads stage next to their target as `name#n`, a name
/// an artifact can have: `a#b.txt` uploads through `a#b.txt#1`, which object_store lists).
#[derive(Clone)]
struct Local {
    store: Arc<LocalFileSystem>,
    /// `<folder>/STAGING`.
    staging: std::path::PathBuf,
}

/// The local store's staging folder, at the top of the artifact folder. A client path whose
/// first segment is this name is refused, on every store, so no artifact can live there.
const STAGING: &str = ".nexus-staging";

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
                let folder_store = Arc::new(
                    LocalFileSystem::new_with_prefix(folder)
                        .map_err(|e| invalid(e.to_string()))?
                        .with_fsync(true),
                );
                let staging = folder_store
                    .path_to_filesystem(&Path::from(STAGING))
                    .map_err(|e| invalid(e.to_string()))?;
                remove_staging(&staging, std::path::Path::new(folder))
                    .map_err(|e| invalid(format!("cleaning {}: {e}", staging.display())))?;
                local = Some(Local {
                    store: Arc::clone(&folder_store),
                    staging,
                });
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

    /// The object path for a client path, refusing `..` and other escapes, the staging
    /// folder, and (on the local store) names object_store keeps for its own temporary files.
    fn location(&self, path: &str) -> Result<Path, RegistryError> {
        let refuse = |why: &dyn std::fmt::Display| {
            RegistryError::Invalid(format!("Invalid artifact path '{path}': {why}"))
        };
        let relative = Path::parse(path.trim_matches('/')).map_err(|e| refuse(&e))?;
        if in_staging(&relative) {
            return Err(refuse(&format!("'{STAGING}' is reserved")));
        }
        if self.local.is_some() && relative.filename().is_some_and(is_object_store_temporary) {
            return Err(refuse(
                &"a local artifact store cannot hold a file named like NAME#123",
            ));
        }
        Ok(self.root.parts().chain(relative.parts()).collect())
    }

    /// Whether `location` (a store path) is in the local staging folder.
    fn is_staging(&self, location: &Path) -> bool {
        self.local.is_some() && in_staging(location)
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
        if let Some(local) = &self.local {
            return local.put_stream(path, &location, body).await;
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
            let file_path = local.store.path_to_filesystem(&location)?;
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
            .filter(|p| !self.is_staging(p))
            .map(|p| FileInfo {
                path: relative(p),
                is_dir: true,
                file_size: None,
            })
            .chain(listing.objects.iter().map(|o| FileInfo {
                path: relative(&o.location),
                is_dir: false,
                file_size: Some(o.size),
            }))
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
            .filter(|o| !self.is_staging(&o.location))
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

impl Local {
    /// Writes `body` to a new file in the staging folder, then fsyncs it and renames it to
    /// `location`'s file, so the artifact appears whole or not at all.
    async fn put_stream<S, E>(
        &self,
        path: &str,
        location: &Path,
        mut body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let target = self.store.path_to_filesystem(location)?;
        let staged = self.staging.join(uuid::Uuid::new_v4().simple().to_string());
        let failed = |what: &str, e: std::io::Error| {
            RegistryError::Unavailable(format!("the artifact store failed {what} '{path}': {e}"))
        };
        tokio::fs::create_dir_all(&self.staging)
            .await
            .map_err(|e| failed("staging", e))?;
        let file = tokio::fs::File::create(&staged)
            .await
            .map_err(|e| failed("staging", e))?;
        let mut file = tokio::io::BufWriter::with_capacity(READ_CHUNK, file);
        let written = async {
            let mut written = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    RegistryError::Invalid(format!("upload of '{path}' interrupted: {e}"))
                })?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| failed("writing", e))?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(|e| failed("writing", e))?;
            file.get_ref()
                .sync_all()
                .await
                .map_err(|e| failed("writing", e))?;
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| failed("creating the folder of", e))?;
            }
            tokio::fs::rename(&staged, &target)
                .await
                .map_err(|e| failed("storing", e))?;
            if let Some(parent) = target.parent() {
                sync_dir(parent).await.map_err(|e| failed("storing", e))?;
            }
            Ok(written)
        }
        .await;
        if written.is_err() {
            // Nothing to keep; a file the removal misses goes at the next start.
            let _ = tokio::fs::remove_file(&staged).await;
        }
        written
    }
}

/// Whether the first segment of `path` is [`STAGING`].
fn in_staging(path: &Path) -> bool {
    path.parts().next().is_some_and(|p| p.as_ref() == STAGING)
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// Deletes what uploads a crashed process left half written: everything in the staging
/// folder, and object_store's own temporary files (`name#123`, from writes through
/// [`Artifacts::object_store`] and from earlier versions), which object_store neither lists
/// nor reads and [`Artifacts::location`] refuses as artifact names. Nothing else writes the
/// folder while it opens. The walk keeps its own stack: no recursion as deep as the tree.
fn remove_staging(staging: &std::path::Path, folder: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut folders = vec![folder.to_path_buf()];
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file()
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(is_object_store_temporary)
            {
                tracing::info!(file = %path.display(), "removing an upload interrupted by a crash");
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Whether `name` has the form of object_store's local temporary files, `NAME#<digits>`
/// (the same test object_store applies: the text after the first `#` is all digits).
fn is_object_store_temporary(name: &str) -> bool {
    name.split_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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

    /// Many body chunks of an odd size, several read chunks and a partial last one.
    #[tokio::test]
    async fn a_large_upload_comes_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        let data: Vec<u8> = (0..(3 * READ_CHUNK + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let chunks = data
            .chunks(65_536 + 7)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let n = store
            .put_stream("1/run/artifacts/big.bin", futures::stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        let (size, stream) = store.get_stream("1/run/artifacts/big.bin").await.unwrap();
        assert_eq!(size, data.len() as u64);
        let pieces: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert!(
            pieces.concat() == data,
            "the download differs from the upload"
        );
        // Nothing is left in staging.
        let staged = std::fs::read_dir(dir.path().join(STAGING)).unwrap().count();
        assert_eq!(staged, 0);
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
    async fn names_with_hash_survive_a_restart_and_only_staging_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_stream("1/run/artifacts/a#b.txt", body(&[b"kept"]))
            .await
            .unwrap();
        // What a crash mid-upload leaves: a file in the staging folder, and an object_store
        // temporary file from a write through `object_store()`.
        std::fs::write(dir.path().join(STAGING).join("0123abcd"), b"half").unwrap();
        std::fs::write(dir.path().join("1/run/artifacts/m.onnx#1"), b"half").unwrap();
        assert_eq!(
            store.list("").await.unwrap(),
            vec![FileInfo {
                path: "1".into(),
                is_dir: true,
                file_size: None
            }]
        );

        let store = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        let (size, stream) = store.get_stream("1/run/artifacts/a#b.txt").await.unwrap();
        assert_eq!(size, 4);
        let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"kept");
        assert_eq!(
            store.walk("").await.unwrap(),
            vec![("1/run/artifacts/a#b.txt".to_string(), 4)]
        );
        assert!(!dir.path().join(STAGING).exists());
        assert!(!dir.path().join("1/run/artifacts/m.onnx#1").exists());
        for refused in [".nexus-staging/x", "1/m.onnx#1"] {
            assert!(matches!(
                store.put_stream(refused, body(&[b"x"])).await,
                Err(RegistryError::Invalid(_))
            ));
        }
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
