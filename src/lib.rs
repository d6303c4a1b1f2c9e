//! Hubflow: the service. Adapters, configuration, topology, SQL, CLI.
//!
//! Layout, from the bottom up (no module `use`s one above it; checked by
//! `scripts/modgraph.py`):
//! - [`source`]: the HTTP GET source (pagination, auth, error
//!   classification, dead letters) and [`source::ActiveSources`], the
//!   settings this node runs per source. [`demo`]: the built-in third-party
//!   API simulator used by the quick start and the tests.
//! - [`embedded`]: the default backends: a durable SQLite-WAL hub shared by
//!   processes on one host, and a filesystem blob store with atomic,
//!   cross-process conditional writes.
//! - [`azure`]: Azure Blob Storage as the blob store (Entra ID, account key
//!   via a Shared Key policy, or SAS), tested against Azurite; Azure Event
//!   Hubs as the hubs (Entra ID), glue tested against a fake of the SDK;
//!   each with its configuration section.
//! - [`transform`]: transformation specs (SQL over each curated batch,
//!   versioned) and the version this node runs. [`specs`]: the versioned
//!   spec logs in the state container.
//! - [`config`]: the TOML wire format (unknown fields refused, environment
//!   overrides) and [`config::Settings`], every section validated once.
//! - [`backends`]: [`backends::Backends::open`], the one place that opens
//!   the hubs and the blob store.
//! - [`pipeline`]: the supervision tree of fetchers, partition consumers,
//!   blob-writers and transformers, the node's switchboards, and progress
//!   read from durable state.
//! - [`cluster`]: several nodes on one hub and blob store: partition
//!   ownership and fetcher leases by etag compare-and-swap, and the
//!   ownership manager that starts and stops this node's share.
//! - [`swap`]: hot swaps of transforms and source settings, durable and
//!   applied on every node, with automatic roll back.
//! - [`replay`], [`dlq`]: curated replay from raw and dead-letter redrive.
//! - [`node`]: `Pipeline::start`, which assembles the above into a running
//!   node.
//! - [`health`], [`telemetry`], [`otel`]: readiness, logs and Prometheus
//!   metrics, OpenTelemetry export.
//! - [`query`]: SQL (DataFusion) over the curated container;
//!   [`curated_cache`]: the local mirror of a remote curated container that
//!   `hubflow query` reads.
//! - [`sql`]: the SQL server for data scientists' own clients (Postgres
//!   wire protocol: psql, DBeaver, psycopg, Power BI), read-only, with
//!   logins and per-statement limits.
//! - [`trace`]: lineage: the path of one record from the request that
//!   fetched it to its curated row (`GET /trace`, `hubflow ctl trace`).
//! - [`admin`], [`ctl`]: the admin port (axum: status, metrics, control,
//!   replay, dead letters, swaps) and its client `hubflow ctl`.
//! - [`service`]: `hubflow run` (status line, signals, exit when idle).
//!   [`shell`]: the interactive `hubflow query` and how the CLI shows an
//!   error.
//! - [`progress`]: progress bars (rate, ETA) for long operations when
//!   stderr is a terminal. [`chaos`]: the chaos driver (kills and panics
//!   random actors at a rate) used by the chaos tests and the chaos
//!   throughput benchmark.

pub mod admin;
pub mod azure;
pub mod backends;
pub mod chaos;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod curated_cache;
pub mod demo;
pub mod dlq;
pub mod embedded;
pub mod health;
pub mod node;
pub mod otel;
pub mod pipeline;
pub mod progress;
pub mod query;
pub mod replay;
pub mod service;
pub mod shell;
pub mod source;
pub mod specs;
pub mod sql;
pub mod swap;
pub mod telemetry;
pub mod trace;
pub mod transform;
