//! The ownership manager: the actor (child `ownership` of the root
//! supervisor) that keeps this node's share of the cluster running.
//!
//! Every `renew` interval it:
//! 1. writes its heartbeat and reads every ownership record;
//! 2. applies the [`Balancer`](super::Balancer)'s plan: hand-overs first
//!    (the partition's groups are stopped *before* the record names the new
//!    owner), then renewals, claims and at most one hand-over request;
//! 3. drops partitions it could not renew and whose claim is about to
//!    expire, and partitions another node now owns (lose the claim: stop
//!    work first);
//! 4. makes the children of `ingest` and `transform` match what it holds
//!    (`pNNNN` groups added with [`ingest_partition_spec`] and
//!    [`transform_partition_spec`], removed gracefully: consumers stop,
//!    writers finish their batch and checkpoint);
//! 5. renews its fetcher leases and takes free or expired ones up to its
//!    fair share (`ceil(sources / live nodes)`), hands one back when over
//!    it (fetcher stopped first), and starts or stops
//!    `sources/fetcher-<name>` the same way;
//! 6. publishes a [`ClusterStatus`] through its probe (the status tree) and
//!    the `hubflow_cluster_*` metrics.
//!
//! Stopped (node drain, shutdown): it stops every group and fetcher it
//! runs, then releases its partitions and leases so other nodes take them
//! at their next tick instead of after the expiry, and removes its
//! heartbeat.
//!
//! The manager drives its sibling supervisors through the status tree
//! ([`TreeDriver`]), looked up by path on every call, so a restarted
//! `ingest` supervisor (which comes back empty) is refilled on the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hubflow_actors::now_ms;
use hubflow_actors::ports::Source;
use hubflow_supervision::{
    ActorFactory, ActorProbe, ChildContext, ChildSpec, NodeKind, Restart, StatusHandle,
    SupervisorMsg,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::lease::{LeaseOutcome, LeaseStore};
use super::ownership::OwnershipError;
use super::ownership::{Action, ClusterView, OwnershipStore};
use crate::backends::{Backends, INGEST_HUB};
use crate::config::Settings;
use crate::config::cluster::ClusterSettings;
use crate::pipeline::{
    INGEST_SUPERVISOR, SOURCES_SUPERVISOR, Switchboards, TRANSFORM_SUPERVISOR, fetcher_child_name,
    fetcher_spec, ingest_partition_spec, partition_child_name, transform_partition_spec,
};

/// The manager's child name under the root supervisor.
pub const MANAGER_NAME: &str = "ownership";

/// How long adding a child may take (its factory runs recovery in pre_start).
const ADD_TIMEOUT_MS: u64 = 60_000;
/// How long removing a child may take (the supervisor kills it after 10 s).
const REMOVE_TIMEOUT_MS: u64 = 30_000;

pub enum ManagerMsg {
    /// Renew, balance and reconcile.
    Tick,
}

/// What the manager needs; cloned into every generation.
#[derive(Clone)]
pub struct ManagerParams {
    pub settings: Settings,
    pub cluster: ClusterSettings,
    pub backends: Backends,
    pub boards: Switchboards,
    pub sources: Vec<Arc<dyn Source>>,
    /// Partitions of hub "ingest" (each owned as a whole: ingest + transform).
    pub partitions: Vec<u32>,
    pub tree: TreeDriver,
    pub probe: ActorProbe,
}

/// The observable state, published through the probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    /// Live, non-draining nodes the share is computed over.
    pub nodes: Vec<String>,
    /// This node's fair share of partitions.
    pub quota: usize,
    /// Partitions this node owns and runs.
    pub owned: Vec<OwnedPartition>,
    /// Every partition's live owner.
    pub owners: BTreeMap<u32, Option<String>>,
    /// Every source's fetcher lease.
    pub leases: BTreeMap<String, LeaseView>,
    pub ownership_changes: u64,
    pub ticks: u64,
    pub draining: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnedPartition {
    pub partition: u32,
    pub epoch: u64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// This node holds it and runs the fetcher.
    pub held_here: bool,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    expires_at_ms: i64,
}

pub struct ManagerState {
    params: ManagerParams,
    ownership: OwnershipStore,
    leases: LeaseStore,
    partitions: BTreeMap<u32, Held>,
    fetchers: BTreeMap<String, Held>,
    status: ClusterStatus,
}

pub struct OwnershipManager;

/// The manager's child spec for a running tree whose root status is `root`
/// (see `Pipeline::start` in `crate::node`).
pub async fn manager_spec(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    sources: Vec<Arc<dyn Source>>,
    root: StatusHandle,
) -> anyhow::Result<ChildSpec> {
    let partitions = backends
        .ingest
        .partition_ids()
        .await
        .context("listing ingest partitions")?;
    let params = ManagerParams {
        settings: settings.clone(),
        cluster: settings.cluster.clone(),
        backends: backends.clone(),
        boards: boards.clone(),
        sources,
        partitions,
        tree: TreeDriver::new(root),
        probe: ActorProbe::new(),
    };
    Ok(manager_child(params))
}

/// The manager's child spec from explicit parameters (tests use short
/// leases this way). A manager stuck for the stall timeout is restarted
/// and reconciles from the records.
pub fn manager_child(params: ManagerParams) -> ChildSpec {
    let stall = Duration::from_millis(params.settings.supervision.stall_timeout_ms);
    ChildSpec::new(
        MANAGER_NAME,
        Restart::Permanent,
        ActorFactory::new(
            || OwnershipManager,
            move |ctx: &ChildContext| {
                Ok(ManagerParams {
                    probe: ctx.probe.clone(),
                    ..params.clone()
                })
            },
        ),
    )
    .with_stall_timeout(stall)
}

impl Actor for OwnershipManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerParams;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        params: ManagerParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = &params.settings;
        let state = params.backends.state(&params.settings);
        let node = params.cluster.node_id.clone();
        let ownership = OwnershipStore::new(
            state.clone(),
            cfg.pipeline.namespace.clone(),
            INGEST_HUB,
            cfg.pipeline.consumer_group.clone(),
            node.clone(),
            params.cluster.lease,
        );
        let leases = LeaseStore::new(
            state,
            &cfg.pipeline.namespace,
            node.clone(),
            params.cluster.lease,
        );
        info!(
            node,
            partitions = params.partitions.len(),
            "ownership manager started"
        );
        let status = ClusterStatus {
            node_id: node,
            ..Default::default()
        };
        params.probe.publish(&status);
        Ok(ManagerState {
            params,
            ownership,
            leases,
            partitions: BTreeMap::new(),
            fetchers: BTreeMap::new(),
            status,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_message(ManagerMsg::Tick)?;
        myself.send_interval(state.params.cluster.renew, || ManagerMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Tick => {
                state.params.probe.set_busy(true);
                tick(state).await;
                state.params.probe.tick();
                state.params.probe.set_busy(false);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        drain(state).await;
        state.params.probe.set_busy(false);
        Ok(())
    }
}

async fn tick(state: &mut ManagerState) {
    state.status.ticks += 1;
    state.status.last_error = None;
    if let Err(error) = balance(state).await {
        warn!(%error, "ownership round failed");
        state.status.last_error = Some(format!("{error:#}"));
    }
    drop_unrenewed(state);
    if let Err(error) = reconcile_partitions(state).await {
        warn!(%error, "cannot start or stop partition groups");
        state.status.last_error = Some(format!("{error:#}"));
    }
    if let Err(error) = fetcher_leases(state).await {
        warn!(%error, "fetcher lease round failed");
        state.status.last_error = Some(format!("{error:#}"));
    }
    publish(state);
}

/// Heartbeat, read, plan, apply.
async fn balance(state: &mut ManagerState) -> anyhow::Result<()> {
    let now = now_ms();
    // Renewals matter more than the heartbeat: go on without it.
    if let Err(error) = state.ownership.heartbeat(now, false).await {
        warn!(%error, "cannot write the heartbeat");
    }
    let view = state
        .ownership
        .load(&state.params.partitions, now)
        .await
        .context("reading ownership records")?;
    let plan = state.ownership.plan(&view);
    state.status.nodes = plan.nodes.clone();
    state.status.quota = plan.quota;
    for action in &plan.actions {
        apply(state, &view, action).await;
    }
    // Claims another node holds now (ours expired and it claimed them):
    // stop at once.
    let node = state.ownership.node_id().to_string();
    let lost: Vec<u32> = state
        .partitions
        .keys()
        .copied()
        .filter(|p| view.owner_of(*p).is_some_and(|o| o != node))
        .collect();
    for partition in lost {
        warn!(partition, owner = ?view.owner_of(partition), "partition is owned by another node, stopping it here");
        state.partitions.remove(&partition);
        change("lost");
    }
    state.status.owners = view
        .records
        .keys()
        .map(|p| (*p, view.owner_of(*p).map(str::to_string)))
        .collect();
    Ok(())
}

async fn apply(state: &mut ManagerState, view: &ClusterView, action: &Action) {
    let partition = action.partition();
    if let Action::HandOver { to, .. } = action {
        // Stop first: the new owner starts as soon as it reads the record.
        state.partitions.remove(&partition);
        if let Err(error) = stop_partition(state, partition).await {
            warn!(partition, %error, "cannot stop the partition, not handing it over");
            return;
        }
        match state.ownership.apply(view, action, now_ms()).await {
            Ok(_) => {
                info!(partition, to, "handed partition over");
                state.status.ownership_changes += 1;
                change("handed_over");
            }
            // Still ours on the record: renewed (and restarted) next round.
            Err(error) => warn!(partition, %error, "hand-over failed"),
        }
        return;
    }
    match state.ownership.apply(view, action, now_ms()).await {
        Ok(written) => match action {
            Action::Renew { .. } | Action::Claim { .. } => {
                let held = Held {
                    epoch: written.value.epoch,
                    expires_at_ms: written.value.expires_at_ms,
                };
                if state.partitions.insert(partition, held).is_none() {
                    let kind = if matches!(action, Action::Claim { .. }) {
                        "claimed"
                    } else {
                        "taken_over"
                    };
                    info!(partition, epoch = held.epoch, kind, "partition acquired");
                    state.status.ownership_changes += 1;
                    change(kind);
                }
            }
            Action::RequestHandover { from, .. } => {
                info!(
                    partition,
                    from, "asked for a partition to balance the cluster"
                );
            }
            Action::HandOver { .. } => {}
        },
        Err(OwnershipError::Conflict { .. }) => {
            debug!(partition, ?action, "ownership record changed concurrently");
        }
        Err(error) => warn!(partition, ?action, %error, "ownership action failed"),
    }
}

/// Stop holding what could not be renewed and expires before the next
/// round can try again (with a half-interval margin for the stop itself).
fn drop_unrenewed(state: &mut ManagerState) {
    let now = now_ms();
    let margin = state.params.cluster.renew.as_millis() as i64 * 3 / 2;
    state.partitions.retain(|&partition, held| {
        let keep = held.expires_at_ms - now >= margin;
        if !keep {
            warn!(
                partition,
                "ownership not renewed and about to expire, stopping the partition"
            );
            change("expired");
        }
        keep
    });
    state.fetchers.retain(|source, held| {
        let keep = held.expires_at_ms - now >= margin;
        if !keep {
            warn!(
                source,
                "fetcher lease not renewed and about to expire, stopping the fetcher"
            );
        }
        keep
    });
}

async fn stop_partition(state: &ManagerState, partition: u32) -> anyhow::Result<()> {
    let name = partition_child_name(partition);
    // Ingest first: no new raw data for the transformer to chase.
    state.params.tree.remove(INGEST_SUPERVISOR, &name).await?;
    state
        .params
        .tree
        .remove(TRANSFORM_SUPERVISOR, &name)
        .await?;
    Ok(())
}

/// Make the children of `ingest` and `transform` match the held partitions.
async fn reconcile_partitions(state: &mut ManagerState) -> anyhow::Result<()> {
    let wanted: BTreeSet<u32> = state.partitions.keys().copied().collect();
    for sup in [INGEST_SUPERVISOR, TRANSFORM_SUPERVISOR] {
        let running: BTreeSet<u32> = state
            .params
            .tree
            .children(sup)
            .await?
            .iter()
            .filter_map(|name| name.strip_prefix('p')?.parse().ok())
            .collect();
        for &partition in running.difference(&wanted) {
            info!(partition, supervisor = sup, "stopping partition");
            state
                .params
                .tree
                .remove(sup, &partition_child_name(partition))
                .await?;
        }
        for &partition in wanted.difference(&running) {
            info!(partition, supervisor = sup, "starting partition");
            let p = &state.params;
            let spec = if sup == INGEST_SUPERVISOR {
                ingest_partition_spec(&p.settings, &p.backends, &p.boards, partition)
            } else {
                transform_partition_spec(&p.settings, &p.backends, &p.boards, partition)
            };
            p.tree.add(sup, spec).await?;
        }
    }
    Ok(())
}

/// Renew the fetcher leases this node holds and take free or expired ones
/// up to its fair share (`ceil(sources / live nodes)`), preferring sources
/// in an order of its own so nodes do not all reach for the same lease;
/// run exactly the fetchers whose lease it holds. A node over its share
/// (after another joined) hands one lease back per round: its fetcher stops
/// first (finishing its page, cursor saved), then the lease is released,
/// and an under-share node takes it on its next round.
async fn fetcher_leases(state: &mut ManagerState) -> anyhow::Result<()> {
    let mut first_error = None;
    let node = state.leases.node_id().to_string();
    let quota = lease_quota(state.params.sources.len(), state.status.nodes.len());
    let mut order: Vec<Arc<dyn Source>> = state.params.sources.clone();
    order.sort_by_key(|s| preference(&node, s.name()));
    let mut held = state.fetchers.len();
    for source in order.iter() {
        let name = source.name().to_string();
        let key = lease_key(&name);
        let mine_before = state.fetchers.contains_key(&name);
        if !mine_before && held >= quota {
            // At its share: only look, so the status shows the holder.
            if let Ok(Some(record)) = state.leases.load(&key).await {
                let now = now_ms();
                state.status.leases.insert(
                    name,
                    LeaseView {
                        holder: record.value.live_holder(now).map(str::to_string),
                        held_here: false,
                        expires_at_ms: record.value.expires_at_ms,
                    },
                );
            }
            continue;
        }
        match state.leases.acquire_or_renew(&key, now_ms()).await {
            Ok(outcome) => {
                let mine = outcome.is_mine();
                let holder = match &outcome {
                    LeaseOutcome::HeldBy { holder, .. } => holder.clone(),
                    _ => node.clone(),
                };
                if let LeaseOutcome::Acquired { epoch, .. } = outcome {
                    info!(source = name, epoch, quota, "fetcher lease acquired");
                    change("lease_acquired");
                }
                if mine {
                    let held_lease = Held {
                        epoch: 0,
                        expires_at_ms: outcome.expires_at_ms(),
                    };
                    if state.fetchers.insert(name.clone(), held_lease).is_none() {
                        held += 1;
                    }
                } else if state.fetchers.remove(&name).is_some() {
                    held -= 1;
                    warn!(source = name, holder, "fetcher lease lost");
                    change("lease_lost");
                }
                state.status.leases.insert(
                    name,
                    LeaseView {
                        holder: Some(holder),
                        held_here: mine,
                        expires_at_ms: outcome.expires_at_ms(),
                    },
                );
            }
            Err(error) if error.is_conflict() => {
                debug!(source = name, "fetcher lease changed concurrently");
            }
            Err(error) => {
                warn!(source = name, %error, "cannot renew the fetcher lease");
                first_error.get_or_insert(error);
            }
        }
    }
    // Over the share: hand back the lease this node prefers least.
    let handed_back = if held > quota {
        order
            .iter()
            .rev()
            .map(|s| s.name().to_string())
            .find(|name| state.fetchers.contains_key(name))
    } else {
        None
    };
    if let Some(name) = &handed_back {
        state.fetchers.remove(name);
    }
    reconcile_fetchers(state).await?;
    if let Some(name) = handed_back {
        match state.leases.release(&lease_key(&name), now_ms()).await {
            Ok(_) => {
                info!(
                    source = name,
                    quota, "fetcher lease handed back (over this node's share)"
                );
                change("lease_handed_back");
            }
            Err(error) => {
                warn!(source = name, %error, "cannot release the lease; it expires instead")
            }
        }
    }
    match first_error {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// A node's fair share of fetcher leases.
fn lease_quota(sources: usize, live_nodes: usize) -> usize {
    sources.div_ceil(live_nodes.max(1))
}

/// The order in which `node` prefers sources: a hash of both, the same in
/// every process of this build, different between nodes.
fn preference(node: &str, source: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (node, source).hash(&mut h);
    h.finish()
}

fn lease_key(source: &str) -> String {
    format!("fetcher/{source}")
}

async fn reconcile_fetchers(state: &mut ManagerState) -> anyhow::Result<()> {
    let running: BTreeSet<String> = state
        .params
        .tree
        .children(SOURCES_SUPERVISOR)
        .await?
        .into_iter()
        .collect();
    for source in state.params.sources.clone() {
        let name = source.name().to_string();
        let child = fetcher_child_name(&name);
        let held = state.fetchers.contains_key(&name);
        if let Some(view) = state.status.leases.get_mut(&name) {
            view.held_here = held;
        }
        metrics::gauge!("hubflow_cluster_lease_held", "source" => name.clone()).set(if held {
            1.0
        } else {
            0.0
        });
        match (held, running.contains(&child)) {
            (true, false) => {
                info!(source = name, "starting fetcher");
                let p = &state.params;
                let spec = fetcher_spec(&p.settings, &p.backends, &p.boards, source);
                p.tree.add(SOURCES_SUPERVISOR, spec).await?;
            }
            (false, true) => {
                info!(source = name, "stopping fetcher");
                state.params.tree.remove(SOURCES_SUPERVISOR, &child).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Stop everything this node runs, then release what it holds.
async fn drain(state: &mut ManagerState) {
    let node = state.ownership.node_id().to_string();
    info!(node, "ownership manager draining");
    state.status.draining = true;
    if let Err(error) = state.ownership.heartbeat(now_ms(), true).await {
        warn!(%error, "cannot mark the node draining");
    }
    state.partitions.clear();
    state.fetchers.clear();
    // Stop the work first; a failure here must not release (another node
    // could start while this one still writes), so the claims then expire.
    let stopped = reconcile_partitions(state).await;
    let stopped_fetchers = reconcile_fetchers(state).await;
    match (stopped, stopped_fetchers) {
        (Ok(()), Ok(())) => {
            match state
                .ownership
                .release_all(&state.params.partitions, now_ms)
                .await
            {
                Ok(released) => {
                    for partition in &released {
                        info!(partition, "partition released");
                        change("released");
                    }
                }
                Err(error) => warn!(%error, "cannot release partitions; they expire instead"),
            }
            for source in &state.params.sources {
                match state
                    .leases
                    .release(&lease_key(source.name()), now_ms())
                    .await
                {
                    Ok(true) => info!(source = source.name(), "fetcher lease released"),
                    Ok(false) => {}
                    Err(error) => warn!(source = source.name(), %error, "cannot release lease"),
                }
            }
            if let Err(error) = state.ownership.remove_heartbeat().await {
                warn!(%error, "cannot remove the heartbeat");
            }
        }
        (Err(error), _) | (_, Err(error)) => {
            warn!(%error, "cannot stop this node's work; its claims will expire instead");
        }
    }
    publish(state);
}

fn change(kind: &'static str) {
    metrics::counter!("hubflow_cluster_ownership_changes_total", "kind" => kind).increment(1);
}

fn publish(state: &mut ManagerState) {
    state.status.owned = state
        .partitions
        .iter()
        .map(|(p, h)| OwnedPartition {
            partition: *p,
            epoch: h.epoch,
            expires_at_ms: h.expires_at_ms,
        })
        .collect();
    metrics::gauge!("hubflow_cluster_owned_partitions").set(state.partitions.len() as f64);
    state.params.probe.publish(&state.status);
}

/// Adds and removes children of the root's supervisors, found by path in
/// the status tree on every call (the same way `RootHandle` does; the
/// manager runs inside the tree, so it holds the root's status, not the
/// handle).
#[derive(Clone)]
pub struct TreeDriver {
    root: StatusHandle,
}

impl TreeDriver {
    pub fn new(root: StatusHandle) -> Self {
        TreeDriver { root }
    }

    fn supervisor(&self, name: &str) -> anyhow::Result<ActorRef<SupervisorMsg>> {
        let path = format!("{}/{name}", self.root.path());
        let node = self
            .root
            .find(&path)
            .with_context(|| format!("no supervisor at {path}"))?;
        anyhow::ensure!(
            node.snapshot().kind == NodeKind::Supervisor,
            "{path} is not a supervisor"
        );
        let cell = node
            .cell()
            .with_context(|| format!("supervisor {path} is not running"))?;
        Ok(ActorRef::from(cell))
    }

    /// Names of the children of the supervisor `name` (a child of the root).
    pub async fn children(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let sup = self.supervisor(name)?;
        ractor::call_t!(sup, SupervisorMsg::Children, 10_000)
            .map_err(|e| anyhow::anyhow!("supervisor {name} did not answer: {e}"))
    }

    pub async fn add(&self, name: &str, child: ChildSpec) -> anyhow::Result<()> {
        let sup = self.supervisor(name)?;
        let child_name = child.name.clone();
        ractor::call_t!(sup, SupervisorMsg::AddChild, ADD_TIMEOUT_MS, child)
            .map_err(|e| anyhow::anyhow!("supervisor {name} did not answer: {e}"))?
            .map_err(|e| anyhow::anyhow!("adding {name}/{child_name}: {e}"))
    }

    /// Stop a child gracefully and forget it; false when it did not exist.
    pub async fn remove(&self, name: &str, child: &str) -> anyhow::Result<bool> {
        let sup = self.supervisor(name)?;
        ractor::call_t!(
            sup,
            SupervisorMsg::RemoveChild,
            REMOVE_TIMEOUT_MS,
            child.to_string()
        )
        .map_err(|e| anyhow::anyhow!("supervisor {name} did not answer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hubflow_actors::ports::memory::{MemoryBlobStore, MemoryHub};
    use hubflow_actors::ports::{Page, SourceCursor, SourceError};
    use hubflow_supervision::{NodeState, RootHandle, StatusNode, start_root};

    use super::*;
    use crate::backends::LANDED_HUB;
    use crate::config::Config;
    use crate::pipeline::{ROOT_SUPERVISOR, Switchboards, tree};

    /// A source that is always caught up.
    struct Quiet;

    #[async_trait::async_trait]
    impl Source for Quiet {
        fn name(&self) -> &str {
            "quiet"
        }
        async fn fetch(&self, cursor: &SourceCursor) -> Result<Page, SourceError> {
            Ok(Page {
                records: Vec::new(),
                next: cursor.clone(),
                caught_up: true,
                request: String::new(),
            })
        }
    }

    fn settings() -> Settings {
        let mut config = Config::default();
        config.demo.enabled = false;
        config.hub.partitions = 4;
        config.cluster.enabled = true;
        config.fetcher.poll_interval_ms = 100;
        config.transform.poll_ms = 100;
        config.validate().unwrap()
    }

    async fn backends(settings: &Settings) -> Backends {
        let backends = Backends {
            ingest: Arc::new(MemoryHub::new(INGEST_HUB, 4)),
            landed: Arc::new(MemoryHub::new(LANDED_HUB, 4)),
            blobs: Arc::new(MemoryBlobStore::new()),
            curated_dir: None,
        };
        backends.ensure_containers(settings).await.unwrap();
        backends
    }

    /// A node: the cluster tree (empty supervisors) plus a manager with
    /// 600 ms leases renewed every 150 ms.
    async fn node(settings: &Settings, backends: &Backends, id: &str) -> RootHandle {
        let sources: Vec<Arc<dyn Source>> = vec![Arc::new(Quiet)];
        let boards = Switchboards::default();
        let spec = tree(settings, backends, &boards, sources.clone())
            .await
            .unwrap();
        assert!(spec.children.iter().all(|c| c.is_supervisor()));
        let root = start_root(spec).await.unwrap();
        let params = ManagerParams {
            settings: settings.clone(),
            cluster: ClusterSettings {
                enabled: true,
                node_id: id.to_string(),
                lease: Duration::from_millis(600),
                renew: Duration::from_millis(150),
            },
            backends: backends.clone(),
            boards,
            sources,
            partitions: vec![0, 1, 2, 3],
            tree: TreeDriver::new(root.status().clone()),
            probe: ActorProbe::new(),
        };
        root.add_child(ROOT_SUPERVISOR, manager_child(params))
            .await
            .unwrap();
        root
    }

    /// Partitions with a running group under `ingest` and `transform`.
    fn running(snapshot: &StatusNode, sup: &str) -> BTreeSet<u32> {
        snapshot
            .find(&format!("pipeline/{sup}"))
            .map(|n| {
                n.children
                    .iter()
                    .filter(|c| c.state == NodeState::Running)
                    .filter_map(|c| c.name.strip_prefix('p')?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn fetcher_running(snapshot: &StatusNode) -> bool {
        snapshot
            .find("pipeline/sources/fetcher-quiet")
            .is_some_and(|n| n.state == NodeState::Running)
    }

    fn observed(snapshot: &StatusNode) -> serde_json::Value {
        snapshot
            .find("pipeline/ownership")
            .map(|n| n.observed.clone())
            .unwrap_or_default()
    }

    /// Poll until `done` holds for the nodes' snapshots, checking on
    /// every poll that no partition runs on two nodes at once.
    async fn until(nodes: &[&RootHandle], limit: Duration, done: impl Fn(&[StatusNode]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let snaps: Vec<StatusNode> = nodes.iter().map(|n| n.snapshot()).collect();
            for sup in ["ingest", "transform"] {
                let mut seen = BTreeSet::new();
                for s in &snaps {
                    for p in running(s, sup) {
                        assert!(seen.insert(p), "partition {p} runs twice under {sup}");
                    }
                }
            }
            let fetchers = snaps.iter().filter(|s| fetcher_running(s)).count();
            assert!(fetchers <= 1, "{fetchers} fetchers for one source");
            if done(&snaps) {
                return;
            }
            let obs: Vec<serde_json::Value> = snaps.iter().map(observed).collect();
            assert!(Instant::now() < deadline, "timed out; status: {obs:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_share_partitions_and_a_drained_node_hands_over_at_once() {
        let settings = settings();
        let backends = backends(&settings).await;
        let a = node(&settings, &backends, "a").await;
        until(&[&a], Duration::from_secs(10), |s| {
            running(&s[0], "ingest").len() == 4
                && running(&s[0], "transform").len() == 4
                && fetcher_running(&s[0])
        })
        .await;
        let status = observed(&a.snapshot());
        assert_eq!(status["node_id"], "a");
        assert_eq!(status["owned"].as_array().map(Vec::len), Some(4));
        assert_eq!(status["leases"]["quiet"]["held_here"], true);

        // b joins: two each, every group running exactly once.
        let b = node(&settings, &backends, "b").await;
        until(&[&a, &b], Duration::from_secs(15), |s| {
            (0..2).all(|i| {
                running(&s[i], "ingest").len() == 2 && running(&s[i], "transform").len() == 2
            })
        })
        .await;
        let status = observed(&b.snapshot());
        assert_eq!(status["nodes"], serde_json::json!(["a", "b"]));
        assert_eq!(status["quota"], 2);

        // a drains: b runs all four and the fetcher well before a's claims
        // would have expired (600 ms).
        let drained = Instant::now();
        a.shutdown().await;
        until(&[&b], Duration::from_secs(10), |s| {
            running(&s[0], "ingest").len() == 4 && fetcher_running(&s[0])
        })
        .await;
        assert!(
            drained.elapsed() < Duration::from_secs(3),
            "hand-over took {:?}",
            drained.elapsed()
        );
        let state = backends.state(&settings);
        let heartbeats = state
            .list_names("local/ingest/$Default/nodes/")
            .await
            .unwrap();
        assert_eq!(heartbeats, vec!["local/ingest/$Default/nodes/b"]);
        b.shutdown().await;
        // Both drained: nothing owned, nothing leased.
        let store = OwnershipStore::new(
            state.clone(),
            "local",
            INGEST_HUB,
            "$Default",
            "x",
            Duration::from_secs(1),
        );
        let view = store.load(&[0, 1, 2, 3], now_ms()).await.unwrap();
        assert!((0..4).all(|p| view.owner_of(p).is_none()));
        let lease = LeaseStore::new(state, "local", "x", Duration::from_secs(1));
        let record = lease.load("fetcher/quiet").await.unwrap().unwrap();
        assert_eq!(record.value.holder, None);
    }
}
