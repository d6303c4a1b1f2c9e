//! Small JSON state records kept in a blob container and updated by etag
//! compare-and-swap, the way the Azure Event Hubs processor keeps checkpoints
//! and ownership.
//!
//! Names follow the processor's layout:
//! `<namespace>/<hub>/<consumer group>/checkpoint/<partition>` and
//! `<namespace>/<hub>/<consumer group>/ownership/<partition>`; other state
//! (source cursors, transformer positions, leases) lives beside them under
//! its own prefix.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::blob::{BlobError, BlobStore, ETag, PutCondition};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("state record {name} is not valid: {source}")]
    Corrupt {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// Another writer changed the record since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StateError::Blob(e) if e.is_conflict())
    }
}

/// A record as read, with the etag to update it under.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: ETag,
}

/// Typed JSON records in one container.
#[derive(Clone)]
pub struct StateStore {
    blobs: Arc<dyn BlobStore>,
    container: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("blobs", &self.blobs.describe())
            .field("container", &self.container)
            .finish()
    }
}

impl StateStore {
    pub fn new(blobs: Arc<dyn BlobStore>, container: impl Into<String>) -> Self {
        StateStore {
            blobs,
            container: container.into(),
        }
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    pub async fn ensure_container(&self) -> Result<(), StateError> {
        Ok(self.blobs.create_container(&self.container).await?)
    }

    pub async fn load<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<Versioned<T>>, StateError> {
        match self.blobs.get(&self.container, name).await {
            Ok((bytes, props)) => {
                let value =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                        name: name.to_string(),
                        source,
                    })?;
                Ok(Some(Versioned {
                    value,
                    etag: props.etag,
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Write `value`. With `expected = None` the record must not exist yet;
    /// otherwise its etag must still be `expected`. Returns the new etag.
    pub async fn compare_and_swap<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        expected: Option<&ETag>,
    ) -> Result<ETag, StateError> {
        let body = serialize(name, value)?;
        let condition = match expected {
            None => PutCondition::IfNoneMatch,
            Some(etag) => PutCondition::IfMatch(etag.clone()),
        };
        let props = self
            .blobs
            .put(&self.container, name, body, condition)
            .await?;
        Ok(props.etag)
    }

    /// Write `value` unconditionally (single-writer records).
    pub async fn store<T: Serialize>(&self, name: &str, value: &T) -> Result<ETag, StateError> {
        let body = serialize(name, value)?;
        let props = self
            .blobs
            .put(&self.container, name, body, PutCondition::None)
            .await?;
        Ok(props.etag)
    }

    pub async fn list_names(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .blobs
            .list(&self.container, prefix)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect())
    }
}

fn serialize<T: Serialize>(name: &str, value: &T) -> Result<Bytes, StateError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| StateError::Corrupt {
            name: name.to_string(),
            source,
        })
}

/// Name of a partition checkpoint record.
pub fn checkpoint_name(namespace: &str, hub: &str, consumer_group: &str, partition: u32) -> String {
    format!("{namespace}/{hub}/{consumer_group}/checkpoint/{partition}")
}

/// Name of a partition ownership record.
pub fn ownership_name(namespace: &str, hub: &str, consumer_group: &str, partition: u32) -> String {
    format!("{namespace}/{hub}/{consumer_group}/ownership/{partition}")
}
