//! The blob store port, shaped after Azure Blob Storage.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An opaque entity tag; changes on every write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ETag(pub String);

impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobProperties {
    pub name: String,
    pub etag: ETag,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

/// The condition a put is made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Create or replace.
    None,
    /// Only if the blob does not exist (`If-None-Match: *`); else [`BlobError::AlreadyExists`].
    IfNoneMatch,
    /// Only if the blob's etag is this one; else [`BlobError::PreconditionFailed`].
    IfMatch(ETag),
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("container {container} does not exist")]
    ContainerNotFound { container: String },
    #[error("blob {container}/{name} does not exist")]
    NotFound { container: String, name: String },
    /// Azure answers 409 for an existing blob under `If-None-Match: *`.
    #[error("blob {container}/{name} already exists")]
    AlreadyExists { container: String, name: String },
    /// Azure answers 412 when the etag no longer matches.
    #[error("blob {container}/{name} changed since it was read (etag mismatch)")]
    PreconditionFailed { container: String, name: String },
    #[error("invalid blob name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("blob {container}/{name}: transient error: {message}")]
    Transient {
        container: String,
        name: String,
        message: String,
    },
    #[error("blob {container}/{name}: {message}")]
    Other {
        container: String,
        name: String,
        message: String,
    },
}

impl BlobError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BlobError::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            BlobError::AlreadyExists { .. } | BlobError::PreconditionFailed { .. }
        )
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, BlobError::Transient { .. })
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short description for logs and status (never contains secrets).
    fn describe(&self) -> String;

    /// Create the container if it is missing. Idempotent.
    async fn create_container(&self, container: &str) -> Result<(), BlobError>;

    async fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: PutCondition,
    ) -> Result<BlobProperties, BlobError>;

    async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError>;

    /// Bytes `range` of the blob (clamped to its size).
    async fn get_range(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError>;

    async fn properties(&self, container: &str, name: &str) -> Result<BlobProperties, BlobError>;

    /// Every blob whose name starts with `prefix`, sorted by name.
    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobProperties>, BlobError>;

    /// Delete, optionally only if the etag still matches. Deleting a missing
    /// blob is [`BlobError::NotFound`].
    async fn delete(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError>;
}

/// Check a blob name the way every backend must accept it: non-empty,
/// relative, `/`-separated, no `.`/`..` segments, no control characters.
pub fn validate_blob_name(name: &str) -> Result<(), BlobError> {
    let invalid = |reason: &str| {
        Err(BlobError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 1024 {
        return invalid("length must be 1..=1024");
    }
    if name.starts_with('/') || name.ends_with('/') {
        return invalid("must not start or end with '/'");
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return invalid("control characters and '\\' are not allowed");
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return invalid("empty, '.' and '..' segments are not allowed");
    }
    Ok(())
}
