//! Hubflow's domain: records, the ports the pipeline needs, the raw and
//! curated formats, and the four pipeline actors.
//!
//! Layout:
//! - [`ports`]: traits shaped after Event Hubs ([`ports::Hub`]), Blob Storage
//!   ([`ports::BlobStore`]) and the HTTP source ([`ports::Source`]), the
//!   etag-guarded state store for checkpoints, cursors and ownership
//!   ([`ports::StateStore`]), and in-memory versions for tests
//!   ([`ports::memory`]).
//! - [`record`]: naming conventions shared by every stage (event properties,
//!   deterministic raw blob names, the "landed" notification).
//! - [`formats`]: the raw format (header + zstd rkyv) and the curated format
//!   (JSON → Arrow schema inference, Parquet + zstd).
//! - [`fetcher`], [`consumer`], [`blob_writer`], [`transformer`]: the actors,
//!   one per file, each with its message enum, observable status and tests.
//! - [`notices`]: "landed" notifications (blob-writer or Event Grid
//!   BlobCreated) parsed and routed to the transformer of the blob's
//!   partition by a listener per landed partition.
//! - [`pauses`]: operator pauses recorded so restarted actors keep them.
//! - [`page_log`]: the fetcher's log of which request fetched which page,
//!   for lineage.
//! - [`dead_letter`], [`retry`]: small shared pieces the actors use.
//!
//! No Azure SDK, HTTP server or SQL engine lives here; `hubflow` (the root
//! crate) supplies the adapters.

pub mod blob_writer;
pub mod consumer;
pub mod dead_letter;
pub mod fetcher;
pub mod formats;
pub mod notices;
pub mod page_log;
pub mod pauses;
pub mod ports;
pub mod record;
pub mod retry;
pub mod transformer;

pub use dead_letter::write_dead_letter;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
