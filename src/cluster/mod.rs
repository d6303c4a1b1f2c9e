//! Several `hubflow run` processes (nodes) sharing one hub and one blob store.
//!
//! Nodes coordinate only through conditional writes to the blob store's state
//! container (etag compare-and-swap), the way the Azure Event Hubs processor
//! balances partitions; there is no other consensus. The same code runs on
//! the embedded filesystem store and on Azure Blob, since it only uses the
//! [`hubflow_actors::ports::BlobStore`] port.
//!
//! Layout:
//! - [`ownership`]: one record per partition (owner, epoch, expiry, a
//!   pending hand-over request), node heartbeats, the pure [`ownership::Balancer`]
//!   that decides renewals, claims and steals from the records and a clock,
//!   and [`ownership::OwnershipStore`], the CAS I/O that applies them.
//! - [`lease`]: one renewable lease per key (a fetcher per source across the
//!   cluster).
//! - [`manager`]: the ownership manager actor under the root supervisor:
//!   on every tick it renews, claims, hands over and releases, then starts or
//!   stops this node's partition groups (`ingest/pNNNN`, `transform/pNNNN`)
//!   and fetchers so they match what it holds.
//!
//! The safety rule: a node starts a partition only when the previous owner
//! has stopped writing it. A claim is only taken after the record expired or
//! was released; an owner stops a partition's groups before handing it over
//! or releasing it, and stops them on its own when it could not renew and
//! the record is about to expire. Checkpoint CAS in the writer and the
//! transformer fences a stale writer anyway, and deterministic blob names make
//! any overlap idempotent.
//!
//! The `[cluster]` section and its validation live in `crate::config::cluster`.

pub mod lease;
pub mod manager;
pub mod ownership;

pub use lease::{LeaseError, LeaseOutcome, LeaseRecord, LeaseStore};
pub use manager::{
    ClusterStatus, MANAGER_NAME, ManagerMsg, ManagerParams, OwnershipManager, TreeDriver,
    manager_spec,
};
pub use ownership::{
    Action, Balancer, ClusterView, NodeRecord, OwnershipError, OwnershipRecord, OwnershipStore,
    Plan,
};
