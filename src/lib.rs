//! Hubflow: the service. Adapters, configuration, topology, SQL, CLI.
//!
//! Layout:
//! - [`config`]: the TOML wire format (unknown fields refused, environment
//!   overrides) and the validated [`config::Settings`].
//! - [`embedded`]: the default backends: a durable SQLite-WAL hub shared by
//!   processes on one host, and a filesystem blob store with atomic,
//!   cross-process conditional writes.
//! - [`source`]: the HTTP GET source (pagination, auth, error classification,
//!   dead letters).
//! - [`demo`]: the built-in third-party API simulator used by the quick start
//!   and the tests.
//! - [`pipeline`]: the supervision tree of fetchers, partition consumers,
//!   blob-writers and transformers, and progress read from durable state.
//! - [`service`]: `hubflow run` (status line, signals, exit when idle).
//! - [`query`]: SQL (DataFusion) over the curated container.
//! - [`chaos`]: the chaos driver (kills and panics random actors at a rate)
//!   used by the chaos tests and the chaos throughput benchmark.
//! - [`testkit`]: the port contract suites every backend must pass.
//!
//! The Azure adapters (Blob Storage, Event Hubs) are not built yet; the
//! ports they will implement are in `hubflow_actors::ports`.

pub mod chaos;
pub mod config;
pub mod demo;
pub mod embedded;
pub mod pipeline;
pub mod query;
pub mod service;
pub mod source;
pub mod testkit;
