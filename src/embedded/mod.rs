//! Embedded backends: what `hubflow run` uses when no cloud is configured.
//!
//! - [`hub`]: [`SqliteHub`], a durable partitioned event log in one SQLite
//!   file (WAL mode) that several processes on one host can share;
//!   [`segment`] is how one published batch is encoded in it.
//! - [`blob`]: [`FsBlobStore`], a blob store on a directory tree with
//!   crash-safe writes and cross-process atomic conditional puts.
//!
//! Both implement the ports in `hubflow_actors::ports`, and both pass the
//! contract suites in `tests/suite/common/contract.rs`.

pub mod blob;
pub mod hub;
pub mod segment;

pub use blob::FsBlobStore;
pub use hub::SqliteHub;
