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
//!
//! No Azure SDK, HTTP server or SQL engine lives here; `hubflow` (the root
//! crate) supplies the adapters.

pub mod formats;
pub mod ports;
pub mod record;
