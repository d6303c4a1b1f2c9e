//! Hubflow's integration tests, as one test binary.
//!
//! Each module was once its own `tests/*.rs` crate; every one of them linked
//! DataFusion, the Azure SDK and the whole service, so CI spent most of its
//! time compiling and linking near-identical binaries. One binary builds
//! once. Run a part with a filter: `cargo test --test suite chaos::`.
//!
//! Layout:
//! - [`common`]: the demo API on loopback, settings for a temporary data
//!   directory, SQL checks over curated, Azurite, a faulty blob store, and
//!   [`common::exclusive`], the lock heavy tests hold so two of them never
//!   share the machine.
//! - Port contracts (the suites are in [`common::contract`]):
//!   [`contract_memory`] (the in-memory fakes the unit tests use),
//!   [`contract_embedded`] (filesystem store, SQLite hub, across processes), [`azurite_contract`] (Azure Blob on Azurite),
//!   [`eventhubs_live`] (Azure Event Hubs; needs a namespace, says SKIPPED
//!   loudly without one).
//! - Sources: [`http_source`], [`source_incremental`], [`source_restart`].
//! - The dataflow: [`end_to_end`], [`azurite_end_to_end`], [`curated_query`],
//!   [`sql_server`] (psql and psycopg against the SQL server),
//!   [`event_grid`] (BlobCreated events as the only trigger).
//! - Faults: [`chaos`], [`crash_restart`].
//! - Operations: [`admin`], [`console`] (the browser console, in headless
//!   Chromium), [`hot_swap`], [`lifecycle`], [`cli`], [`deploy`]
//!   (alert rules, environment configs, the systemd unit).
//! - The clustered service: [`cluster`], [`cluster_leases`] (fetcher leases
//!   shared fairly), [`cluster_swap`] (transform versions across nodes and
//!   restarts).

mod common;

mod admin;
mod azurite_contract;
mod azurite_end_to_end;
mod chaos;
mod cli;
mod cluster;
mod cluster_leases;
mod cluster_swap;
mod console;
mod contract_embedded;
mod contract_memory;
mod crash_restart;
mod curated_query;
mod deploy;
mod end_to_end;
mod event_grid;
mod eventhubs_live;
mod hot_swap;
mod http_source;
mod lifecycle;
mod otel;
mod source_incremental;
mod source_restart;
mod sql_server;
mod storage_full;
