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
//! Nothing here reads the whole configuration: `crate::config` validates
//! the two sections into [`AzureBlobSettings`] and [`EventHubsSettings`]
//! (errors as [`AzureConfigError`]), and `crate::backends` opens the
//! adapters from them.

pub mod blob;
pub mod config;
pub mod eventhubs;
pub mod shared_key;

pub use blob::AzureBlobStore;
pub use config::{
    AzureAuthConfig, AzureBlobConfig, AzureBlobSettings, AzureConfigError, EntraCredential,
};
pub use eventhubs::{EventHubsConfig, EventHubsHub, EventHubsSettings};
pub use shared_key::SharedKeyPolicy;

/// The "ingest" and "landed" hubs of the validated `[event_hubs]` section,
/// sharing one credential. Makes no request: clients open on first use.
pub fn event_hubs(hubs: &EventHubsSettings) -> anyhow::Result<(EventHubsHub, EventHubsHub)> {
    let credential = eventhubs::credential(hubs)?;
    let ingest = EventHubsHub::with_credential(hubs, hubs.ingest_hub.clone(), credential.clone());
    let landed = EventHubsHub::with_credential(hubs, hubs.landed_hub.clone(), credential);
    Ok((ingest, landed))
}
