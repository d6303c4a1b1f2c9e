//! Azure adapters: Azure Blob Storage as the blob store.
//!
//! - [`blob`]: [`AzureBlobStore`], the `BlobStore` port on
//!   `azure_storage_blob` 1.x (conditional puts, staged blocks, ranged
//!   reads, paged listing), passing the same contract suite as the
//!   filesystem store (`tests/azurite_contract.rs`, against Azurite).
//! - [`shared_key`]: the Shared Key signing policy for account-key auth
//!   (and Azurite), which the SDK does not ship.
//! - [`config`]: the `[azure_blob]` section (account URL; Entra ID, account
//!   key or SAS), its validation, secrets kept out of logs and `Debug`.
//!
//! [`azure_backends`] builds the pipeline's [`Backends`] with the blob store
//! on Azure; the hubs stay the embedded SQLite hub until the Event Hubs
//! adapter exists.

pub mod blob;
pub mod config;
pub mod shared_key;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use blob::AzureBlobStore;
pub use config::{AzureAuthConfig, AzureBlobConfig, AzureBlobSettings, EntraCredential};
pub use shared_key::SharedKeyPolicy;

use crate::config::Settings;
use crate::embedded::SqliteHub;
use crate::pipeline::{Backends, INGEST_HUB, LANDED_HUB};

/// Whether the configuration puts the blob store on Azure (an `[azure_blob]`
/// section is present).
pub fn is_configured(settings: &Settings) -> bool {
    settings.config.azure_blob.is_some()
}

/// The validated `[azure_blob]` section of `settings`.
pub fn azure_settings(settings: &Settings) -> anyhow::Result<AzureBlobSettings> {
    let section = settings
        .config
        .azure_blob
        .as_ref()
        .context("the configuration has no [azure_blob] section")?;
    Ok(section.validate()?)
}

/// The blob store of the `[azure_blob]` section.
pub fn azure_blob_store(settings: &Settings) -> anyhow::Result<AzureBlobStore> {
    AzureBlobStore::new(&azure_settings(settings)?)
}

/// The pipeline's backends with the blob store (raw, curated, state and
/// dead-letter containers) on Azure Blob Storage, and the embedded hubs under
/// `settings.data_dir()`. Makes no request to Azure: containers are created
/// by `Pipeline::start` (`Backends::ensure_containers`).
pub async fn azure_backends(settings: &Settings) -> anyhow::Result<Backends> {
    let store = azure_blob_store(settings)?;
    let dir = settings.data_dir().to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let partitions = settings.config.hub.partitions;
    let retention = Some(Duration::from_secs(
        settings.config.hub.retention_hours * 3600,
    ));
    let hub_file = dir.join("hub.sqlite");
    let ingest = SqliteHub::open_async(hub_file.clone(), INGEST_HUB.into(), partitions, retention)
        .await
        .context("opening the embedded hub")?;
    let landed = SqliteHub::open_async(hub_file, LANDED_HUB.into(), partitions, retention)
        .await
        .context("opening the embedded hub")?;
    tracing::info!(store = %hubflow_actors::ports::BlobStore::describe(&store), "blob store on azure");
    Ok(Backends {
        ingest: Arc::new(ingest),
        landed: Arc::new(landed),
        blobs: Arc::new(store),
        curated_dir: None,
    })
}
