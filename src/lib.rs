//! Hubflow: the service. Adapters, configuration, topology, admin port, SQL, CLI.
//!
//! Layout:
//! - [`embedded`]: the default backends: a durable SQLite-WAL hub shared by
//!   processes on one host, and a filesystem blob store with atomic,
//!   cross-process conditional writes.
//! - [`source`]: the HTTP GET source (pagination, auth, retries, dead letters).
//! - [`demo`]: the built-in third-party API simulator used by the quick start
//!   and the tests.
//! - [`azure`]: Azure Blob Storage and Azure Event Hubs adapters.

pub mod azure;
pub mod demo;
pub mod embedded;
pub mod source;
