//! The source port: where the fetcher gets records from.
//!
//! A source is polled page by page from an opaque cursor. The fetcher stores
//! the cursor only after the page's records are durably in the hub, so a
//! restart neither skips nor repeats a page.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A record as fetched, before it enters the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// Stable id: from the source, or a hash of the payload.
    pub id: String,
    /// The record as JSON text.
    pub payload: Bytes,
}

/// Where the next poll starts; opaque to everything but the source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceCursor(pub serde_json::Value);

/// One fetched page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<SourceRecord>,
    /// The cursor to store once `records` are durable.
    pub next: SourceCursor,
    /// True when the source has nothing more right now; the fetcher waits for
    /// its poll interval before asking again from `next`.
    pub caught_up: bool,
    /// The request that fetched it, secrets removed (`GET https://…`): the
    /// fetcher's page log keeps it for lineage (`hubflow ctl trace`).
    pub request: String,
}

/// A response the source could not turn into records. It goes to the dead
/// letter container with the reason; the fetcher keeps going.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub source: String,
    pub reason: String,
    /// The request, with secrets removed.
    pub request: String,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Worth retrying later (5xx, 429, timeouts, connection errors).
    #[error("source {source_name}: transient: {message}")]
    Transient {
        source_name: String,
        message: String,
        /// The server asked us to wait at least this long.
        retry_after: Option<std::time::Duration>,
    },
    /// The response was unusable; it is dead-lettered and the cursor skips it
    /// only if `skip_to` is set (otherwise the fetcher retries after backoff).
    #[error("source {}: bad response: {}", .0.source, .0.reason)]
    BadResponse(Box<DeadLetter>, Option<SourceCursor>),
    /// Will not get better by retrying (a 4xx other than 429, bad config).
    #[error("source {source_name}: {message}")]
    Fatal {
        source_name: String,
        message: String,
    },
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn fetch(&self, cursor: &SourceCursor) -> Result<Page, SourceError>;
}
