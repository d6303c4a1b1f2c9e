//! Azure adapters: Azure Blob Storage as the blob store, Azure Event Hubs
//! as the hubs.
//!
//! - [`blob`]: [`AzureBlobStore`], the `BlobStore` port on
//!   `azure_storage_blob` 1.x (conditional puts, staged blocks, ranged
//!   reads, paged listing), passing the same contract suite as the
//!   filesystem store (`tests/suite/azurite_contract.rs`, against Azurite).
//! - [`shared_key`]: the Shared Key signing policy for account-key auth
//!   (and Azurite), which the SDK does not ship.
//! - [`config`]: the `[azure_blob]` section (account URL; Entra ID, account
//!   key or SAS), its validation, secrets kept out of logs and `Debug`.
//! - [`eventhubs`]: [`EventHubsHub`], the `Hub` port on
//!   `azure_messaging_eventhubs` 0.15 (one batch per publish, receivers
//!   with prefetch, reconnect after fatal errors), and the `[event_hubs]`
//!   section (Entra ID). Glue tested against a fake of the SDK; the live
//!   suite is `tests/suite/eventhubs_live.rs`.
//!
//! [`azure_backends`] builds the pipeline's [`Backends`] from whichever of
//! the two sections is present: the blob store on Azure Blob Storage with
//! `[azure_blob]` (else the embedded filesystem store), the "ingest" and
//! "landed" hubs on Azure Event Hubs with `[event_hubs]` (else the embedded
//! SQLite hub). [`is_configured`] says whether either section is present.

pub mod blob;
pub mod config;
pub mod eventhubs;
pub mod shared_key;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use blob::AzureBlobStore;
pub use config::{AzureAuthConfig, AzureBlobConfig, AzureBlobSettings, EntraCredential};
pub use eventhubs::{EventHubsConfig, EventHubsHub, EventHubsSettings};
pub use shared_key::SharedKeyPolicy;

use hubflow_actors::ports::Hub;

use crate::config::Settings;
use crate::embedded::SqliteHub;
use crate::pipeline::{Backends, INGEST_HUB, LANDED_HUB};

/// Whether the configuration puts the blob store or the hubs on Azure (an
/// `[azure_blob]` or an `[event_hubs]` section is present).
pub fn is_configured(settings: &Settings) -> bool {
    settings.config.azure_blob.is_some() || settings.config.event_hubs.is_some()
}

/// The validated `[event_hubs]` section of `settings`.
pub fn event_hubs_settings(settings: &Settings) -> anyhow::Result<EventHubsSettings> {
    let section = settings
        .config
        .event_hubs
        .as_ref()
        .context("the configuration has no [event_hubs] section")?;
    Ok(section.validate()?)
}

/// The "ingest" and "landed" hubs of the `[event_hubs]` section, sharing one
/// credential. Makes no request: clients open on first use.
pub fn event_hubs(settings: &Settings) -> anyhow::Result<(EventHubsHub, EventHubsHub)> {
    let hubs = event_hubs_settings(settings)?;
    let credential = eventhubs::credential(&hubs)?;
    let ingest = EventHubsHub::with_credential(&hubs, hubs.ingest_hub.clone(), credential.clone());
    let landed = EventHubsHub::with_credential(&hubs, hubs.landed_hub.clone(), credential);
    Ok((ingest, landed))
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

/// The pipeline's backends: the blob store (raw, curated, state and
/// dead-letter containers) on Azure Blob Storage when `[azure_blob]` is
/// present, the hubs on Azure Event Hubs when `[event_hubs]` is present,
/// the embedded backends under `settings.data_dir()` for the rest. Makes no
/// request to Azure: containers are created by `Pipeline::start`
/// (`Backends::ensure_containers`), Event Hubs clients open on first use.
pub async fn azure_backends(settings: &Settings) -> anyhow::Result<Backends> {
    let mut backends = match settings.config.azure_blob {
        Some(_) => {
            let store = azure_blob_store(settings)?;
            let (ingest, landed) = if settings.config.event_hubs.is_some() {
                // No embedded hub file when both hubs are on Azure.
                let (ingest, landed) = event_hubs(settings)?;
                (
                    Arc::new(ingest) as Arc<dyn Hub>,
                    Arc::new(landed) as Arc<dyn Hub>,
                )
            } else {
                embedded_hubs(settings).await?
            };
            tracing::info!(store = %hubflow_actors::ports::BlobStore::describe(&store), "blob store on azure");
            return Ok(Backends {
                ingest,
                landed,
                blobs: Arc::new(store),
                curated_dir: None,
                board: Default::default(),
                pauses: Default::default(),
                curate_slots: Default::default(),
            });
        }
        None => Backends::embedded(settings).await?,
    };
    if settings.config.event_hubs.is_some() {
        let (ingest, landed) = event_hubs(settings)?;
        backends.ingest = Arc::new(ingest);
        backends.landed = Arc::new(landed);
    }
    Ok(backends)
}

async fn embedded_hubs(settings: &Settings) -> anyhow::Result<(Arc<dyn Hub>, Arc<dyn Hub>)> {
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
    Ok((Arc::new(ingest), Arc::new(landed)))
}
