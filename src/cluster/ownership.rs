//! Partition ownership: one record per partition in the state container,
//! changed only by etag compare-and-swap, plus one heartbeat record per node.
//!
//! Records (names from [`hubflow_actors::ports::ownership_name`]):
//! - `<namespace>/<hub>/<group>/ownership/<partition>`: an
//!   [`OwnershipRecord`] (owner, epoch, expiry, pending hand-over request);
//! - `<namespace>/<hub>/<group>/nodes/<node>`: a [`NodeRecord`] heartbeat,
//!   so a node that owns nothing yet still counts in the fair share.
//!
//! The [`Balancer`] is pure: given the records, the heartbeats, a node id and
//! a clock it returns the [`Action`]s that node should take this round:
//! renew what it owns; claim free or expired partitions up to its fair share;
//! hand over a partition another node asked for when that improves the
//! balance; and ask (one at a time) for a partition of the node with the
//! most, when this node is below its share. A partition owned by a live node
//! is never taken: the stealer writes a request into the record, and the
//! owner stops its work and then writes the new owner (a hand-over), so two
//! nodes never process a partition at once.
//!
//! [`OwnershipStore`] is the I/O: load a [`ClusterView`], apply one action
//! by CAS (a concurrent change is [`OwnershipError::Conflict`], so a race
//! has exactly one winner), release on drain.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hubflow_actors::ports::{StateError, StateStore, Versioned, ownership_name};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// One partition's ownership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRecord {
    /// The node that owns the partition; `None` once released.
    pub owner: Option<String>,
    /// Bumped on every change of owner (claim or hand-over).
    pub epoch: u64,
    /// The claim is void after this (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// A node below its fair share asked the owner to hand this partition over.
    #[serde(default)]
    pub requested_by: Option<String>,
    pub updated_ms: i64,
}

impl OwnershipRecord {
    /// The owner, while the claim has not expired.
    pub fn live_owner(&self, now_ms: i64) -> Option<&str> {
        self.owner
            .as_deref()
            .filter(|_| self.expires_at_ms > now_ms)
    }
}

/// A node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub expires_at_ms: i64,
    /// The node is shutting down: it gets no share and is not stolen from
    /// (it releases its partitions itself).
    pub draining: bool,
    pub started_ms: i64,
}

/// What a node does with one partition this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Extend our claim (and decline a pending request, if any).
    Renew { partition: u32 },
    /// Take a free, released or expired partition.
    Claim { partition: u32 },
    /// Ask the live owner `from` to hand the partition over to us.
    RequestHandover { partition: u32, from: String },
    /// Stop our work on it, then make `to` the owner.
    HandOver { partition: u32, to: String },
}

impl Action {
    pub fn partition(&self) -> u32 {
        match self {
            Action::Renew { partition }
            | Action::Claim { partition }
            | Action::RequestHandover { partition, .. }
            | Action::HandOver { partition, .. } => *partition,
        }
    }
}

/// The balancer's decision for one node and round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The live, non-draining nodes the share was computed over (this one
    /// included), sorted.
    pub nodes: Vec<String>,
    /// How many partitions this node aims to own.
    pub quota: usize,
}

/// Decides claims, renewals, steals and hand-overs from the records alone.
pub struct Balancer;

impl Balancer {
    /// The actions `node` should take, given every partition's record
    /// (`None`: never claimed), the heartbeats and the time.
    ///
    /// Fair share: with `n` live nodes and `p` partitions every node owns
    /// `p / n`, and `p % n` of them one more. A node claims free partitions
    /// up to its quota; below quota with nothing free, it asks the node with
    /// the most partitions (only if that one has at least two more than
    /// this node, so every move strictly improves the balance and nothing
    /// ping-pongs) and waits for the hand-over before asking again.
    pub fn plan(
        node: &str,
        records: &BTreeMap<u32, Option<OwnershipRecord>>,
        heartbeats: &BTreeMap<String, NodeRecord>,
        now_ms: i64,
    ) -> Plan {
        let (mut counts, owners) = Self::shares(node, records, heartbeats, now_ms);
        let total = records.len();
        let n = counts.len().max(1);
        let (min, extra) = (total / n, total % n);

        let mut actions = Vec::new();
        let mut have = Self::renew_or_hand_over(node, records, &owners, &mut counts, &mut actions);
        counts.insert(node.to_string(), have);

        let others_above = counts
            .iter()
            .filter(|(k, c)| k.as_str() != node && **c > min)
            .count();
        let quota = if others_above < extra { min + 1 } else { min };

        // Free partitions, starting at a node-specific offset so nodes that
        // plan at the same moment mostly reach for different ones.
        let mut free: Vec<u32> = records
            .keys()
            .filter(|p| !owners.contains_key(p))
            .copied()
            .collect();
        if !free.is_empty() {
            let shift = (fnv1a(node) % free.len() as u64) as usize;
            free.rotate_left(shift);
        }
        for partition in free {
            if have >= quota {
                break;
            }
            actions.push(Action::Claim { partition });
            have += 1;
        }

        let waiting = records.values().flatten().any(|r| {
            r.requested_by.as_deref() == Some(node)
                && r.live_owner(now_ms).is_some_and(|o| o != node)
        });
        if have < quota && !waiting {
            actions.extend(Self::request_from_busiest(
                node, have, records, &owners, &counts,
            ));
        }
        Plan {
            actions,
            nodes: counts.into_keys().collect(),
            quota,
        }
    }

    /// Partitions held per live, non-draining node (this one included, a
    /// draining owner's partitions not counted), and each owned
    /// partition's live owner.
    fn shares<'r>(
        node: &str,
        records: &'r BTreeMap<u32, Option<OwnershipRecord>>,
        heartbeats: &BTreeMap<String, NodeRecord>,
        now_ms: i64,
    ) -> (BTreeMap<String, usize>, BTreeMap<u32, &'r str>) {
        let draining: BTreeSet<&str> = heartbeats
            .values()
            .filter(|h| h.draining && h.expires_at_ms > now_ms)
            .map(|h| h.node_id.as_str())
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        counts.insert(node.to_string(), 0);
        for h in heartbeats.values() {
            if h.expires_at_ms > now_ms && !h.draining {
                counts.entry(h.node_id.clone()).or_insert(0);
            }
        }
        let mut owners: BTreeMap<u32, &str> = BTreeMap::new();
        for (&partition, record) in records {
            if let Some(owner) = record.as_ref().and_then(|r| r.live_owner(now_ms)) {
                owners.insert(partition, owner);
                if !draining.contains(owner) {
                    *counts.entry(owner.to_string()).or_insert(0) += 1;
                }
            }
        }
        (counts, owners)
    }

    /// Renew each partition `node` owns, or hand it over to a node that
    /// asked for it and has at least two fewer; how many `node` keeps.
    fn renew_or_hand_over(
        node: &str,
        records: &BTreeMap<u32, Option<OwnershipRecord>>,
        owners: &BTreeMap<u32, &str>,
        counts: &mut BTreeMap<String, usize>,
        actions: &mut Vec<Action>,
    ) -> usize {
        let mine: Vec<u32> = owners
            .iter()
            .filter(|(_, o)| **o == node)
            .map(|(p, _)| *p)
            .collect();
        let mut have = mine.len();
        for partition in mine {
            let requester = records
                .get(&partition)
                .and_then(|r| r.as_ref())
                .and_then(|r| r.requested_by.as_deref())
                .filter(|r| *r != node);
            match requester {
                Some(to) if counts.get(to).is_some_and(|theirs| have > theirs + 1) => {
                    actions.push(Action::HandOver {
                        partition,
                        to: to.to_string(),
                    });
                    have -= 1;
                    if let Some(theirs) = counts.get_mut(to) {
                        *theirs += 1;
                    }
                }
                _ => actions.push(Action::Renew { partition }),
            }
        }
        have
    }

    /// Below quota with nothing free: ask the node with the most
    /// partitions (at least two more than `have`) for its highest one that
    /// nobody has asked for yet.
    fn request_from_busiest(
        node: &str,
        have: usize,
        records: &BTreeMap<u32, Option<OwnershipRecord>>,
        owners: &BTreeMap<u32, &str>,
        counts: &BTreeMap<String, usize>,
    ) -> Option<Action> {
        let from = counts
            .iter()
            .filter(|(k, c)| k.as_str() != node && **c > have + 1)
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(k, _)| k.clone())?;
        let partition = owners
            .iter()
            .rev()
            .filter(|(_, o)| **o == from.as_str())
            .map(|(p, _)| *p)
            .find(|p| {
                records
                    .get(p)
                    .and_then(|r| r.as_ref())
                    .is_some_and(|r| r.requested_by.is_none())
            })?;
        Some(Action::RequestHandover { partition, from })
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another node changed the record since it was read; nothing was written.
    #[error("partition {partition}: the ownership record changed since it was read")]
    Conflict { partition: u32 },
    /// The action no longer fits the record as read (for example a renewal
    /// of a partition another node owns).
    #[error("partition {partition}: {reason}")]
    Refused {
        partition: u32,
        reason: &'static str,
    },
    #[error("ownership state: {0}")]
    State(#[from] StateError),
}

impl OwnershipError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, OwnershipError::Conflict { .. })
    }
}

/// Every partition's record and the live heartbeats, as read at `now_ms`.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub now_ms: i64,
    pub records: BTreeMap<u32, Option<Versioned<OwnershipRecord>>>,
    /// Heartbeats that have not expired, by node id.
    pub nodes: BTreeMap<String, NodeRecord>,
}

impl ClusterView {
    /// The records without their etags (the balancer's input).
    pub fn plain(&self) -> BTreeMap<u32, Option<OwnershipRecord>> {
        self.records
            .iter()
            .map(|(p, r)| (*p, r.as_ref().map(|v| v.value.clone())))
            .collect()
    }

    /// The live owner of `partition`.
    pub fn owner_of(&self, partition: u32) -> Option<&str> {
        self.records
            .get(&partition)?
            .as_ref()?
            .value
            .live_owner(self.now_ms)
    }

    /// Partitions `node` owns (live claims).
    pub fn owned_by(&self, node: &str) -> Vec<u32> {
        self.records
            .keys()
            .copied()
            .filter(|p| self.owner_of(*p) == Some(node))
            .collect()
    }
}

/// The CAS I/O on ownership records and heartbeats, for one node.
#[derive(Debug, Clone)]
pub struct OwnershipStore {
    state: StateStore,
    namespace: String,
    hub: String,
    consumer_group: String,
    node: String,
    lease: Duration,
}

impl OwnershipStore {
    pub fn new(
        state: StateStore,
        namespace: impl Into<String>,
        hub: impl Into<String>,
        consumer_group: impl Into<String>,
        node: impl Into<String>,
        lease: Duration,
    ) -> Self {
        OwnershipStore {
            state,
            namespace: namespace.into(),
            hub: hub.into(),
            consumer_group: consumer_group.into(),
            node: node.into(),
            lease,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn record_name(&self, partition: u32) -> String {
        ownership_name(&self.namespace, &self.hub, &self.consumer_group, partition)
    }

    fn nodes_prefix(&self) -> String {
        format!(
            "{}/{}/{}/nodes/",
            self.namespace, self.hub, self.consumer_group
        )
    }

    fn expiry(&self, now_ms: i64) -> i64 {
        now_ms + self.lease.as_millis() as i64
    }

    /// Write this node's heartbeat (single writer: unconditional).
    pub async fn heartbeat(&self, now_ms: i64, draining: bool) -> Result<(), OwnershipError> {
        let name = format!("{}{}", self.nodes_prefix(), self.node);
        let started_ms = match self.state.load::<NodeRecord>(&name).await {
            Ok(Some(v)) if v.value.expires_at_ms > now_ms => v.value.started_ms,
            _ => now_ms,
        };
        let record = NodeRecord {
            node_id: self.node.clone(),
            expires_at_ms: self.expiry(now_ms),
            draining,
            started_ms,
        };
        self.state.store(&name, &record).await?;
        Ok(())
    }

    /// Delete this node's heartbeat (after a drain).
    pub async fn remove_heartbeat(&self) -> Result<(), OwnershipError> {
        let name = format!("{}{}", self.nodes_prefix(), self.node);
        match self
            .state
            .blobs()
            .delete(self.state.container(), &name, None)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(StateError::from(e).into()),
        }
    }

    /// Read every partition's record and the live heartbeats. Heartbeats
    /// expired for more than ten leases (dead nodes) are deleted.
    pub async fn load(
        &self,
        partitions: &[u32],
        now_ms: i64,
    ) -> Result<ClusterView, OwnershipError> {
        let mut records = BTreeMap::new();
        for &partition in partitions {
            let record = self
                .state
                .load::<OwnershipRecord>(&self.record_name(partition))
                .await?;
            records.insert(partition, record);
        }
        let mut nodes = BTreeMap::new();
        let forget_after = 10 * self.lease.as_millis() as i64;
        for name in self.state.list_names(&self.nodes_prefix()).await? {
            let record = match self.state.load::<NodeRecord>(&name).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(StateError::Corrupt { .. }) => {
                    warn!(name, "ignoring a corrupt node heartbeat");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if record.value.expires_at_ms > now_ms {
                nodes.insert(record.value.node_id.clone(), record.value);
            } else if now_ms - record.value.expires_at_ms > forget_after {
                let deleted = self
                    .state
                    .blobs()
                    .delete(self.state.container(), &name, Some(&record.etag))
                    .await;
                debug!(name, ok = deleted.is_ok(), "forgot a dead node's heartbeat");
            }
        }
        Ok(ClusterView {
            now_ms,
            records,
            nodes,
        })
    }

    /// The balancer's plan for this node over `view`.
    pub fn plan(&self, view: &ClusterView) -> Plan {
        Balancer::plan(&self.node, &view.plain(), &view.nodes, view.now_ms)
    }

    /// Apply one action to the record as read in `view`, by CAS. Returns
    /// the record as written.
    pub async fn apply(
        &self,
        view: &ClusterView,
        action: &Action,
        now_ms: i64,
    ) -> Result<Versioned<OwnershipRecord>, OwnershipError> {
        let partition = action.partition();
        let current = view
            .records
            .get(&partition)
            .ok_or(OwnershipError::Refused {
                partition,
                reason: "not a partition of this hub",
            })?
            .as_ref();
        let refuse = |reason| OwnershipError::Refused { partition, reason };
        let me = Some(self.node.as_str());
        let record = match action {
            Action::Renew { .. } => {
                let cur = current
                    .filter(|c| c.value.owner.as_deref() == me)
                    .ok_or(refuse("renewal of a partition this node does not own"))?;
                OwnershipRecord {
                    owner: Some(self.node.clone()),
                    epoch: cur.value.epoch,
                    expires_at_ms: self.expiry(now_ms),
                    requested_by: None,
                    updated_ms: now_ms,
                }
            }
            Action::Claim { .. } => {
                if current
                    .is_some_and(|c| c.value.live_owner(now_ms).is_some_and(|o| Some(o) != me))
                {
                    return Err(refuse("claim of a partition a live node owns"));
                }
                OwnershipRecord {
                    owner: Some(self.node.clone()),
                    epoch: current.map_or(1, |c| c.value.epoch + 1),
                    expires_at_ms: self.expiry(now_ms),
                    requested_by: None,
                    updated_ms: now_ms,
                }
            }
            Action::RequestHandover { from, .. } => {
                let cur = current
                    .filter(|c| c.value.live_owner(now_ms) == Some(from.as_str()))
                    .ok_or(refuse("hand-over request to a node that no longer owns it"))?;
                OwnershipRecord {
                    requested_by: Some(self.node.clone()),
                    updated_ms: now_ms,
                    ..cur.value.clone()
                }
            }
            Action::HandOver { to, .. } => {
                let cur = current
                    .filter(|c| c.value.owner.as_deref() == me)
                    .ok_or(refuse("hand-over of a partition this node does not own"))?;
                OwnershipRecord {
                    owner: Some(to.clone()),
                    epoch: cur.value.epoch + 1,
                    expires_at_ms: self.expiry(now_ms),
                    requested_by: None,
                    updated_ms: now_ms,
                }
            }
        };
        self.write(partition, &record, current.map(|c| &c.etag))
            .await
            .map(|etag| Versioned {
                value: record,
                etag,
            })
    }

    /// Give up `partition` (its work must already be stopped): the record
    /// says "no owner", so any node may claim it at once. False when this
    /// node did not own it.
    pub async fn release(
        &self,
        view: &ClusterView,
        partition: u32,
        now_ms: i64,
    ) -> Result<bool, OwnershipError> {
        let Some(Some(cur)) = view.records.get(&partition) else {
            return Ok(false);
        };
        if cur.value.owner.as_deref() != Some(self.node.as_str()) {
            return Ok(false);
        }
        let record = OwnershipRecord {
            owner: None,
            epoch: cur.value.epoch,
            expires_at_ms: now_ms,
            requested_by: None,
            updated_ms: now_ms,
        };
        self.write(partition, &record, Some(&cur.etag)).await?;
        Ok(true)
    }

    /// Release every partition this node owns (drain), re-reading after a
    /// conflict (a hand-over request racing the release). Returns the
    /// partitions released.
    pub async fn release_all(
        &self,
        partitions: &[u32],
        now_ms: impl Fn() -> i64,
    ) -> Result<Vec<u32>, OwnershipError> {
        let mut released = Vec::new();
        for _ in 0..5 {
            let view = self.load(partitions, now_ms()).await?;
            let mine: Vec<u32> = view
                .records
                .iter()
                .filter(|(_, r)| {
                    r.as_ref()
                        .is_some_and(|r| r.value.owner.as_deref() == Some(self.node.as_str()))
                })
                .map(|(p, _)| *p)
                .collect();
            if mine.is_empty() {
                return Ok(released);
            }
            for partition in mine {
                match self.release(&view, partition, now_ms()).await {
                    Ok(true) => released.push(partition),
                    Ok(false) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(released)
    }

    async fn write(
        &self,
        partition: u32,
        record: &OwnershipRecord,
        expected: Option<&hubflow_actors::ports::ETag>,
    ) -> Result<hubflow_actors::ports::ETag, OwnershipError> {
        match self
            .state
            .compare_and_swap(&self.record_name(partition), record, expected)
            .await
        {
            Ok(etag) => Ok(etag),
            Err(e) if e.is_conflict() => Err(OwnershipError::Conflict { partition }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hubflow_actors::ports::memory::MemoryBlobStore;

    use super::*;

    const LEASE: Duration = Duration::from_secs(3);
    const PARTITIONS: [u32; 6] = [0, 1, 2, 3, 4, 5];

    async fn state() -> StateStore {
        let state = StateStore::new(Arc::new(MemoryBlobStore::new()), "state");
        state.ensure_container().await.unwrap();
        state
    }

    fn store(state: &StateStore, node: &str) -> OwnershipStore {
        OwnershipStore::new(state.clone(), "ns", "ingest", "$Default", node, LEASE)
    }

    /// One round of a node: heartbeat, load, plan, apply every action
    /// (a hand-over's "stop the work" is a no-op here).
    async fn round(store: &OwnershipStore, now: i64) -> Plan {
        store.heartbeat(now, false).await.unwrap();
        let view = store.load(&PARTITIONS, now).await.unwrap();
        let plan = store.plan(&view);
        for action in &plan.actions {
            match store.apply(&view, action, now).await {
                Ok(_) | Err(OwnershipError::Conflict { .. }) => {}
                Err(e) => panic!("{action:?}: {e}"),
            }
        }
        plan
    }

    async fn owners(store: &OwnershipStore, now: i64) -> BTreeMap<String, Vec<u32>> {
        let view = store.load(&PARTITIONS, now).await.unwrap();
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for p in PARTITIONS {
            if let Some(o) = view.owner_of(p) {
                out.entry(o.to_string()).or_default().push(p);
            }
        }
        out
    }

    fn counts(owners: &BTreeMap<String, Vec<u32>>) -> Vec<usize> {
        owners.values().map(Vec::len).collect()
    }

    fn rec(owner: &str, expires: i64) -> Option<OwnershipRecord> {
        Some(OwnershipRecord {
            owner: Some(owner.to_string()),
            epoch: 1,
            expires_at_ms: expires,
            requested_by: None,
            updated_ms: 0,
        })
    }

    fn beat(node: &str, expires: i64) -> (String, NodeRecord) {
        (
            node.to_string(),
            NodeRecord {
                node_id: node.to_string(),
                expires_at_ms: expires,
                draining: false,
                started_ms: 0,
            },
        )
    }

    #[test]
    fn a_lone_node_claims_everything_and_shares_are_computed_over_heartbeats() {
        let records: BTreeMap<u32, Option<OwnershipRecord>> =
            PARTITIONS.iter().map(|p| (*p, None)).collect();
        let plan = Balancer::plan("a", &records, &BTreeMap::new(), 0);
        assert_eq!(plan.quota, 6);
        assert_eq!(plan.actions.len(), 6);
        assert!(
            plan.actions
                .iter()
                .all(|a| matches!(a, Action::Claim { .. }))
        );
        // Three heartbeats: a claims its third only.
        let beats = BTreeMap::from([beat("a", 10), beat("b", 10), beat("c", 10)]);
        let plan = Balancer::plan("a", &records, &beats, 0);
        assert_eq!(plan.quota, 2);
        assert_eq!(plan.actions.len(), 2);
        assert_eq!(plan.nodes, vec!["a", "b", "c"]);
        // An expired heartbeat does not count.
        let beats = BTreeMap::from([beat("a", 10), beat("b", 10), beat("c", -1)]);
        assert_eq!(Balancer::plan("a", &records, &beats, 0).quota, 3);
    }

    #[test]
    fn steals_only_from_a_node_two_above_and_one_at_a_time() {
        // a owns 5 of 6, b owns 1, c owns none: c asks a (not b) for one.
        let mut records: BTreeMap<u32, Option<OwnershipRecord>> = BTreeMap::new();
        for p in 0..5 {
            records.insert(p, rec("a", 100));
        }
        records.insert(5, rec("b", 100));
        let beats = BTreeMap::from([beat("a", 100), beat("b", 100), beat("c", 100)]);
        let plan = Balancer::plan("c", &records, &beats, 0);
        assert_eq!(
            plan.actions,
            vec![Action::RequestHandover {
                partition: 4,
                from: "a".to_string()
            }]
        );
        // While that request is pending, c asks for nothing else.
        if let Some(Some(r)) = records.get_mut(&4) {
            r.requested_by = Some("c".to_string());
        }
        assert!(Balancer::plan("c", &records, &beats, 0).actions.is_empty());
        // a hands it over (5 > 0 + 1) and renews the rest.
        let plan = Balancer::plan("a", &records, &beats, 0);
        assert!(plan.actions.contains(&Action::HandOver {
            partition: 4,
            to: "c".to_string()
        }));
        assert_eq!(plan.actions.len(), 5);
        // A request that would not improve the balance is declined (renewed).
        let mut even = records.clone();
        for p in [2, 3] {
            even.insert(p, rec("c", 100));
        }
        even.insert(4, rec("a", 100));
        if let Some(Some(r)) = even.get_mut(&1) {
            r.requested_by = Some("c".to_string());
        }
        // a: 0,1,4 = 3; b: 5 = 1; c: 2,3 = 2 -> a (3) vs c (2): decline.
        let plan = Balancer::plan("a", &even, &beats, 0);
        assert!(plan.actions.contains(&Action::Renew { partition: 1 }));
        // b (1) is below its share; a has 3 = 1 + 2: b asks a.
        let plan = Balancer::plan("b", &even, &beats, 0);
        assert_eq!(
            plan.actions,
            vec![
                Action::Renew { partition: 5 },
                Action::RequestHandover {
                    partition: 4,
                    from: "a".to_string()
                }
            ]
        );
    }

    #[test]
    fn draining_nodes_get_no_share_and_are_not_asked() {
        let mut records: BTreeMap<u32, Option<OwnershipRecord>> = BTreeMap::new();
        for p in 0..3 {
            records.insert(p, rec("a", 100));
        }
        for p in 3..6 {
            records.insert(p, None);
        }
        let mut beats = BTreeMap::from([beat("a", 100), beat("b", 100)]);
        if let Some(a) = beats.get_mut("a") {
            a.draining = true;
        }
        let plan = Balancer::plan("b", &records, &beats, 0);
        assert_eq!(plan.nodes, vec!["b"]);
        assert_eq!(plan.actions.len(), 3);
        assert!(
            plan.actions
                .iter()
                .all(|a| matches!(a, Action::Claim { partition } if *partition >= 3))
        );
    }

    #[tokio::test]
    async fn three_nodes_converge_to_a_fair_share() {
        let state = state().await;
        let nodes: Vec<OwnershipStore> = ["a", "b", "c"].iter().map(|n| store(&state, n)).collect();
        // a starts alone and takes everything.
        let mut now = 1_000_000;
        round(&nodes[0], now).await;
        assert_eq!(counts(&owners(&nodes[0], now).await), vec![6]);
        // b and c join; rounds every second (renew well inside the lease).
        for _ in 0..12 {
            now += 1_000;
            for n in &nodes {
                round(n, now).await;
            }
        }
        let owned = owners(&nodes[0], now).await;
        assert_eq!(owned.keys().collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(counts(&owned), vec![2, 2, 2], "{owned:?}");
        // Stable: more rounds change nothing, and every claim was renewed.
        for _ in 0..5 {
            now += 1_000;
            for n in &nodes {
                let plan = round(n, now).await;
                assert!(
                    plan.actions
                        .iter()
                        .all(|a| matches!(a, Action::Renew { .. })),
                    "{plan:?}"
                );
            }
        }
        assert_eq!(owners(&nodes[0], now).await, owned);

        // A fourth node: 2, 2, 1, 1 (one move at a time, no partition lost).
        let d = store(&state, "d");
        for _ in 0..10 {
            now += 1_000;
            for n in nodes.iter().chain([&d]) {
                round(n, now).await;
                let all: usize = counts(&owners(n, now).await).iter().sum();
                assert_eq!(all, 6, "every partition stays owned while rebalancing");
            }
        }
        let mut c = counts(&owners(&d, now).await);
        c.sort();
        assert_eq!(c, vec![1, 1, 2, 2]);
    }

    #[tokio::test]
    async fn a_dead_nodes_partitions_are_taken_only_after_expiry() {
        let state = state().await;
        let (a, b) = (store(&state, "a"), store(&state, "b"));
        let start = 1_000_000;
        round(&a, start).await;
        assert_eq!(owners(&a, start).await["a"].len(), 6);
        // a dies (stops renewing). Before its claims expire b takes nothing
        // (it may only ask), and a's records are untouched apart from that.
        let lease = LEASE.as_millis() as i64;
        let mut now = start;
        while now + 500 < start + lease {
            now += 500;
            round(&b, now).await;
            let owned = owners(&b, now).await;
            assert_eq!(owned.get("a").map(Vec::len), Some(6), "at {now}: {owned:?}");
            assert!(!owned.contains_key("b"));
        }
        // After expiry b claims all six, each with a new epoch.
        now = start + lease + 1;
        round(&b, now).await;
        let view = b.load(&PARTITIONS, now).await.unwrap();
        assert_eq!(view.owned_by("b"), PARTITIONS.to_vec());
        for p in PARTITIONS {
            let r = view.records[&p].as_ref().unwrap();
            assert_eq!(r.value.epoch, 2);
            assert_eq!(r.value.requested_by, None);
        }
    }

    #[tokio::test]
    async fn a_cas_race_has_exactly_one_winner() {
        let state = state().await;
        let now = 5_000;
        let nodes: Vec<OwnershipStore> = (0..4).map(|i| store(&state, &format!("n{i}"))).collect();
        // Everyone read the same (empty) view and claims partition 3 at once.
        let view = nodes[0].load(&PARTITIONS, now).await.unwrap();
        let claim = Action::Claim { partition: 3 };
        let results =
            futures::future::join_all(nodes.iter().map(|n| n.apply(&view, &claim, now))).await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r.is_err())
                .all(|r| matches!(r, Err(OwnershipError::Conflict { partition: 3 })))
        );
        let owner = nodes[0]
            .load(&PARTITIONS, now)
            .await
            .unwrap()
            .owner_of(3)
            .map(str::to_string);
        assert_eq!(owner, Some(format!("n{}", winners[0])));

        // The same for a renewal racing a steal request: one of them lands.
        let view = nodes[0].load(&PARTITIONS, now).await.unwrap();
        let owner = &nodes[winners[0]];
        let thief = &nodes[(winners[0] + 1) % 4];
        let request = Action::RequestHandover {
            partition: 3,
            from: owner.node_id().to_string(),
        };
        let (renew, ask) = tokio::join!(
            owner.apply(&view, &Action::Renew { partition: 3 }, now + 1),
            thief.apply(&view, &request, now + 1)
        );
        assert!(renew.is_ok() != ask.is_ok(), "{renew:?} / {ask:?}");
    }

    #[tokio::test]
    async fn a_claim_of_a_live_partition_is_refused_and_release_frees_it() {
        let state = state().await;
        let (a, b) = (store(&state, "a"), store(&state, "b"));
        round(&a, 0).await;
        let view = b.load(&PARTITIONS, 10).await.unwrap();
        let err = b
            .apply(&view, &Action::Claim { partition: 0 }, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, OwnershipError::Refused { .. }), "{err}");
        let err = b
            .apply(&view, &Action::Renew { partition: 0 }, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, OwnershipError::Refused { .. }), "{err}");
        // a drains: every record is released at once, b claims immediately.
        a.heartbeat(20, true).await.unwrap();
        let released = a.release_all(&PARTITIONS, || 20).await.unwrap();
        assert_eq!(released, PARTITIONS.to_vec());
        round(&b, 21).await;
        assert_eq!(
            b.load(&PARTITIONS, 21).await.unwrap().owned_by("b"),
            PARTITIONS.to_vec()
        );
        // A heartbeat is removed on drain and forgotten when long dead.
        a.remove_heartbeat().await.unwrap();
        let view = b.load(&PARTITIONS, 22).await.unwrap();
        assert_eq!(view.nodes.keys().collect::<Vec<_>>(), vec!["b"]);
        let far = 22 + 20 * LEASE.as_millis() as i64;
        b.load(&PARTITIONS, far).await.unwrap();
        assert!(
            state
                .list_names("ns/ingest/$Default/nodes/")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
