//! The model registry and experiment tracking server, speaking MLflow's REST API so
//! unmodified MLflow clients work against it. Metadata lives in SQLite (default) or
//! PostgreSQL; artifacts in a local folder or S3/GCS/Azure through object_store.

pub mod api;
pub mod artifacts;
pub mod cli;
pub mod client;
pub mod error;
pub mod search;
pub mod store;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;

pub use artifacts::Artifacts;
pub use error::RegistryError;
pub use store::Store;

/// Options of the registry (`nexus registry`, and the registry inside `nexus up`).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Folder for the embedded defaults: the SQLite database and the local artifact store.
    #[arg(
        long,
        global = true,
        default_value = ".nexus/data",
        env = "NEXUS_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// Metadata database: sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in --data-dir).
    #[arg(long, global = true, env = "NEXUS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where artifacts go: a folder, file://…, s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix (default: <data-dir>/artifacts). Cloud credentials come from
    /// the usual environment variables.
    #[arg(long, global = true, env = "NEXUS_ARTIFACTS_DESTINATION")]
    pub artifacts_destination: Option<String>,
}

impl RegistryArgs {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("registry.db").display()
            )
        })
    }

    /// The artifact destination in effect.
    pub fn artifacts_destination(&self) -> String {
        self.artifacts_destination
            .clone()
            .unwrap_or_else(|| self.data_dir.join("artifacts").display().to_string())
    }
}

/// The registry's state: its store and artifact store.
pub struct Registry {
    pub store: Store,
    pub artifacts: Artifacts,
}

impl Registry {
    /// Opens the database (applying migrations) and the artifact store.
    pub async fn open(args: &RegistryArgs) -> Result<Arc<Self>, RegistryError> {
        std::fs::create_dir_all(&args.data_dir).map_err(|e| {
            RegistryError::Invalid(format!(
                "cannot create data dir {}: {e}",
                args.data_dir.display()
            ))
        })?;
        let url = args.database_url();
        let store = Store::open(&url).await?;
        let artifacts = Artifacts::open(&args.artifacts_destination())?;
        tracing::info!(
            database = %nexus_database::redact(&url),
            artifacts = %artifacts.destination(),
            "registry ready"
        );
        Ok(Arc::new(Registry { store, artifacts }))
    }

    /// The MLflow REST routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(Arc::clone(self))
    }
}
