//! The outside world a node runs against, opened in one place:
//! [`Backends::open`] puts the blob store (raw, curated, state and
//! dead-letter containers) on Azure Blob Storage when `[azure_blob]` is
//! configured and the "ingest" and "landed" hubs on Azure Event Hubs when
//! `[event_hubs]` is, and keeps whatever is not configured embedded under
//! the data directory (the SQLite hub file, the filesystem blob store).
//!
//! Opening makes no request to Azure: containers are created by
//! [`Backends::ensure_containers`] (called by `Pipeline::start`), Event Hubs
//! clients open on first use. The node's switchboards (wake-ups, pauses,
//! curation slots) are not backends; they live with the running pipeline
//! (`crate::pipeline::Switchboards`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hubflow_actors::ports::{BlobError, BlobStore, Hub, StateStore};

use crate::azure::AzureBlobStore;
use crate::config::Settings;
use crate::embedded::{FsBlobStore, SqliteHub};

/// The hub the fetchers publish records to and the partition consumers read.
pub const INGEST_HUB: &str = "ingest";
/// The hub the blob writers announce landed raw blobs on.
pub const LANDED_HUB: &str = "landed";

/// The hubs and the blob store.
#[derive(Clone)]
pub struct Backends {
    pub ingest: Arc<dyn Hub>,
    pub landed: Arc<dyn Hub>,
    pub blobs: Arc<dyn BlobStore>,
    /// Set for the embedded filesystem store: where curated files are on disk.
    pub curated_dir: Option<PathBuf>,
}

impl Backends {
    /// The backends `settings` configure: Azure where a section says so,
    /// embedded for the rest.
    pub async fn open(settings: &Settings) -> anyhow::Result<Backends> {
        let (ingest, landed): (Arc<dyn Hub>, Arc<dyn Hub>) = match &settings.event_hubs {
            Some(section) => {
                let (ingest, landed) = crate::azure::event_hubs(section)?;
                (Arc::new(ingest), Arc::new(landed))
            }
            None => embedded_hubs(settings).await?,
        };
        let (blobs, curated_dir): (Arc<dyn BlobStore>, _) = match &settings.azure_blob {
            Some(section) => {
                let store = AzureBlobStore::new(section)?;
                tracing::info!(store = %BlobStore::describe(&store), "blob store on azure");
                (Arc::new(store), None)
            }
            None => {
                let store = embedded_store(settings).await?;
                let curated_dir = store.container_path(&settings.storage.curated_container);
                (Arc::new(store), Some(curated_dir))
            }
        };
        Ok(Backends {
            ingest,
            landed,
            blobs,
            curated_dir,
        })
    }

    /// The embedded backends under `settings.data_dir()`, whatever the
    /// Azure sections say.
    pub async fn embedded(settings: &Settings) -> anyhow::Result<Backends> {
        let (ingest, landed) = embedded_hubs(settings).await?;
        let store = embedded_store(settings).await?;
        let curated_dir = Some(store.container_path(&settings.storage.curated_container));
        Ok(Backends {
            ingest,
            landed,
            blobs: Arc::new(store),
            curated_dir,
        })
    }

    pub async fn ensure_containers(&self, settings: &Settings) -> anyhow::Result<()> {
        let s = &settings.storage;
        for c in [
            &s.raw_container,
            &s.curated_container,
            &s.state_container,
            &s.dead_letter_container,
        ] {
            self.blobs
                .create_container(c)
                .await
                .with_context(|| format!("creating container {c}"))?;
        }
        Ok(())
    }

    pub fn state(&self, settings: &Settings) -> StateStore {
        StateStore::new(self.blobs.clone(), settings.storage.state_container.clone())
    }
}

/// The embedded SQLite hubs "ingest" and "landed" in `hub.sqlite` under
/// the data directory.
async fn embedded_hubs(settings: &Settings) -> anyhow::Result<(Arc<dyn Hub>, Arc<dyn Hub>)> {
    let dir = settings.data_dir().to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let partitions = settings.hub.partitions;
    let retention = Some(Duration::from_secs(settings.hub.retention_hours * 3600));
    let hub_file = dir.join("hub.sqlite");
    let ingest = SqliteHub::open_async(hub_file.clone(), INGEST_HUB.into(), partitions, retention)
        .await
        .context("opening the embedded hub")?;
    let landed = SqliteHub::open_async(hub_file, LANDED_HUB.into(), partitions, retention)
        .await
        .context("opening the embedded hub")?;
    Ok((Arc::new(ingest), Arc::new(landed)))
}

/// The filesystem blob store under the data directory, with the temp
/// files of writes a crash interrupted removed (younger ones may belong to
/// another live process sharing the store).
async fn embedded_store(settings: &Settings) -> anyhow::Result<FsBlobStore> {
    let store =
        FsBlobStore::new(settings.data_dir().join("blobs")).context("opening the blob store")?;
    let s = &settings.storage;
    for container in [&s.raw_container, &s.curated_container, &s.state_container] {
        match store
            .remove_stale_temp_files(container, Duration::from_secs(600))
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(container, removed, "removed stale temp files"),
            Err(BlobError::ContainerNotFound { .. }) => {}
            Err(error) => tracing::warn!(container, %error, "cannot clean temp files"),
        }
    }
    Ok(store)
}
