//! The in-memory fakes of `hubflow_actors::ports::memory`, which the unit
//! tests of the actors run on, against the same port contracts as the real
//! backends: a unit test that passes on a fake that breaks a rule would
//! prove nothing.

use std::sync::Arc;

use crate::common::contract::{blob_store_contract, hub_contract};
use hubflow_actors::ports::memory::{MemoryBlobStore, MemoryHub};

#[tokio::test]
async fn the_memory_blob_store_passes_the_blob_store_contract() {
    blob_store_contract(Arc::new(MemoryBlobStore::new())).await;
}

#[tokio::test]
async fn the_memory_hub_passes_the_hub_contract() {
    hub_contract(|name, partitions| Arc::new(MemoryHub::new(name, partitions))).await;
}
