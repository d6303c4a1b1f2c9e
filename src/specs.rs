//! Durable, versioned specs: the history of a hot-swappable spec (the
//! transform, a source's settings) kept as one JSON record in the state
//! container and changed only by etag compare-and-swap.
//!
//! A [`SpecLog`] is the cluster's truth about which version runs: `active`
//! is what every node runs (or is moving to), `stable` the newest version
//! that passed its probation, and `probation` the swap being watched, if
//! any. Every node starts with `stable` and converges on `active` (see
//! `swap::transform`). One record holds the whole history, so a proposal,
//! a decision or a refusal is one atomic write: nothing is half applied.
//!
//! Writers:
//! - [`SpecStore::init`]: the first start writes the config file's spec as
//!   version 1 (origin `config`); an explicit override appends it again
//!   (origin `override`), even over a corrupt record.
//! - [`SpecStore::propose`]: a swap appends an entry in probation and makes
//!   it active, against the etag the operator's request started from: a
//!   concurrent swap that won makes it [`SpecError::Conflict`] (409 with the
//!   winner's version); a swap still in probation makes it
//!   [`SpecError::Busy`].
//! - [`SpecStore::decide`]: the end of a probation, by whichever node
//!   decides first: promoted (active becomes stable) or rolled back (stable
//!   becomes active again).
//! - [`SpecStore::refuse`]: a refused attempt, for the history.

use hubflow_actors::now_ms;
use hubflow_actors::ports::{ETag, StateError, StateStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The record format's version.
pub const SPEC_LOG_SCHEMA: u32 = 1;
/// Entries a log keeps; older ones (never the active or stable one) go.
pub const MAX_ENTRIES: usize = 200;

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The config file's spec, written by the first start.
    Config,
    /// The config file's spec forced over the stored one (logged).
    Override,
    /// A hot swap through an admin port.
    Swap,
    /// `ctl transform rollback`: an earlier version again.
    Rollback,
}

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Active and watched: one node's failure rolls it back everywhere.
    Probation,
    Promoted,
    RolledBack,
    /// Never ran: invalid, or failed its dry run.
    Refused,
}

/// One version of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Entry<S> {
    pub seq: u64,
    /// The operator's label (`v7`, a git sha).
    pub version: String,
    pub spec: S,
    pub origin: Origin,
    pub outcome: Outcome,
    /// Who asked (`X-Hubflow-Operator`, or `config`).
    pub by: String,
    /// The node whose admin port (or start) wrote it.
    pub node: String,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<i64>,
    /// Why it was refused or rolled back, and by which node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The dry run's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<serde_json::Value>,
}

/// The swap being watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probation {
    pub seq: u64,
    pub started_ms: i64,
    /// No node may promote it before this instant.
    pub until_ms: i64,
    /// How long a node that applies it late watches it.
    pub probation_ms: u64,
}

/// The versions of one spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecLog<S> {
    pub schema: u32,
    pub active: u64,
    pub stable: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<Probation>,
    pub entries: Vec<Entry<S>>,
}

/// Why a spec log could not be read or changed. Nothing is written when
/// one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec record {name} is corrupt ({reason}); start one node with the override to rewrite it"
    )]
    Corrupt { name: String, reason: String },
    #[error("another swap won: version {winner} (seq {seq}) is now active")]
    Conflict { winner: String, seq: u64 },
    #[error("version {version} (seq {seq}) is still in probation")]
    Busy { version: String, seq: u64 },
    #[error("version label {version} already names a different spec (seq {seq})")]
    LabelTaken { version: String, seq: u64 },
    #[error("no version {0} in the spec history")]
    UnknownVersion(String),
    #[error("spec record {name}: {source}")]
    Storage {
        name: String,
        #[source]
        source: StateError,
    },
}

impl<S: Clone + PartialEq> SpecLog<S> {
    fn new(entry: Entry<S>) -> Self {
        SpecLog {
            schema: SPEC_LOG_SCHEMA,
            active: entry.seq,
            stable: entry.seq,
            probation: None,
            entries: vec![entry],
        }
    }

    pub fn entry(&self, seq: u64) -> Option<&Entry<S>> {
        self.entries.iter().find(|e| e.seq == seq)
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry<S>> {
        self.entries.iter_mut().find(|e| e.seq == seq)
    }

    pub fn active_entry(&self) -> Option<&Entry<S>> {
        self.entry(self.active)
    }

    pub fn stable_entry(&self) -> Option<&Entry<S>> {
        self.entry(self.stable)
    }

    /// The newest entry labelled `version` that ran (not refused).
    pub fn by_version(&self, version: &str) -> Option<&Entry<S>> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.version == version && e.outcome != Outcome::Refused)
    }

    fn next_seq(&self) -> u64 {
        self.entries.iter().map(|e| e.seq).max().unwrap_or(0) + 1
    }

    fn push(&mut self, mut entry: Entry<S>) -> u64 {
        entry.seq = self.next_seq();
        let seq = entry.seq;
        self.entries.push(entry);
        while self.entries.len() > MAX_ENTRIES {
            let keep = [self.active, self.stable];
            match self.entries.iter().position(|e| !keep.contains(&e.seq)) {
                Some(i) => {
                    self.entries.remove(i);
                }
                None => break,
            }
        }
        seq
    }

    /// Checks the record is consistent: the active and stable entries exist,
    /// and the probation names the active one.
    fn check(&self) -> Result<(), String> {
        if self.schema != SPEC_LOG_SCHEMA {
            return Err(format!("unknown schema {}", self.schema));
        }
        if self.active_entry().is_none() || self.stable_entry().is_none() {
            return Err(format!(
                "active {} or stable {} has no entry",
                self.active, self.stable
            ));
        }
        if let Some(p) = &self.probation
            && p.seq != self.active
        {
            return Err(format!(
                "probation of {} but {} is active",
                p.seq, self.active
            ));
        }
        Ok(())
    }
}

/// A spec log as read, with the etag to change it under.
#[derive(Debug, Clone)]
pub struct Read<S> {
    pub log: SpecLog<S>,
    pub etag: ETag,
}

/// The spec logs in the state container.
#[derive(Debug, Clone)]
pub struct SpecStore {
    state: StateStore,
    node: String,
}

/// What [`SpecStore::propose`] appends.
#[derive(Debug, Clone)]
pub struct Proposal<S> {
    pub version: String,
    pub spec: S,
    pub origin: Origin,
    pub by: String,
    pub dry_run: Option<serde_json::Value>,
    pub probation_ms: u64,
    /// Extra time before anyone may promote it, for every node to apply it.
    pub settle_ms: u64,
}

impl SpecStore {
    pub fn new(state: StateStore, node: impl Into<String>) -> Self {
        SpecStore {
            state,
            node: node.into(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn storage(name: &str) -> impl FnOnce(StateError) -> SpecError + '_ {
        move |source| SpecError::Storage {
            name: name.to_string(),
            source,
        }
    }

    /// The log, or `None` before the first start wrote one.
    pub async fn load<S>(&self, name: &str) -> Result<Option<Read<S>>, SpecError>
    where
        S: DeserializeOwned + Clone + PartialEq,
    {
        let loaded = match self.state.load::<SpecLog<S>>(name).await {
            Ok(loaded) => loaded,
            Err(StateError::Corrupt { source, .. }) => {
                return Err(SpecError::Corrupt {
                    name: name.to_string(),
                    reason: source.to_string(),
                });
            }
            Err(e) => return Err(Self::storage(name)(e)),
        };
        let Some(v) = loaded else { return Ok(None) };
        v.value.check().map_err(|reason| SpecError::Corrupt {
            name: name.to_string(),
            reason,
        })?;
        Ok(Some(Read {
            log: v.value,
            etag: v.etag,
        }))
    }

    fn entry<S>(&self, version: &str, spec: S, origin: Origin, by: &str) -> Entry<S> {
        Entry {
            seq: 0,
            version: version.to_string(),
            spec,
            origin,
            outcome: Outcome::Promoted,
            by: by.to_string(),
            node: self.node.clone(),
            at_ms: now_ms(),
            decided_ms: None,
            detail: None,
            dry_run: None,
        }
    }

    /// The log, written first with the config file's `spec` as version 1
    /// when there is none. Later starts keep the stored versions, unless the
    /// file holds a spec the log has never seen from a file (a deploy that
    /// changed it): that becomes a new version, active and stable. A file
    /// spec seen before (a restart, or a node of a rolling deploy still on
    /// the old file) changes nothing, so nodes never flip-flop. With
    /// `force`, `spec` becomes the active and stable version in any case,
    /// even over a corrupt record (the override).
    pub async fn init<S>(
        &self,
        name: &str,
        version: &str,
        spec: S,
        force: bool,
    ) -> Result<Read<S>, SpecError>
    where
        S: Serialize + DeserializeOwned + Clone + PartialEq,
    {
        loop {
            let (mut log, etag) = match self.load::<S>(name).await {
                Ok(Some(read))
                    if !force
                        && read.log.entries.iter().any(|e| {
                            matches!(e.origin, Origin::Config | Origin::Override)
                                && e.spec == spec
                                && e.version == version
                        }) =>
                {
                    return Ok(read);
                }
                Ok(Some(read)) => (Some(read.log), Some(read.etag)),
                Ok(None) => (None, None),
                Err(SpecError::Corrupt { .. }) if force => {
                    let (_, props) = self
                        .state
                        .blobs()
                        .get(self.state.container(), name)
                        .await
                        .map_err(|e| Self::storage(name)(e.into()))?;
                    (None, Some(props.etag))
                }
                Err(e) => return Err(e),
            };
            let origin = if force {
                Origin::Override
            } else {
                Origin::Config
            };
            let entry = self.entry(version, spec.clone(), origin, "config");
            let log = match log.as_mut() {
                Some(log) => {
                    let seq = log.push(entry);
                    if let Some(p) = log.probation.take()
                        && let Some(e) = log.entry_mut(p.seq)
                    {
                        e.outcome = Outcome::RolledBack;
                        e.decided_ms = Some(now_ms());
                        e.detail = Some(format!(
                            "superseded by the config file of node {}",
                            self.node
                        ));
                    }
                    log.active = seq;
                    log.stable = seq;
                    log.clone()
                }
                None => SpecLog::new(Entry { seq: 1, ..entry }),
            };
            match self.state.compare_and_swap(name, &log, etag.as_ref()).await {
                Ok(etag) => return Ok(Read { log, etag }),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(Self::storage(name)(e)),
            }
        }
    }

    /// Make `proposal` the active version, in probation. `base` is the log
    /// the request started from: if another swap became active since, this
    /// one loses ([`SpecError::Conflict`]); other changes (a refusal, a
    /// decision) are merged and retried.
    pub async fn propose<S>(
        &self,
        name: &str,
        base: &Read<S>,
        proposal: Proposal<S>,
    ) -> Result<Read<S>, SpecError>
    where
        S: Serialize + DeserializeOwned + Clone + PartialEq,
    {
        let mut current = base.clone();
        loop {
            let log = &current.log;
            if log.active != base.log.active
                && let Some(winner) = log.active_entry()
            {
                return Err(SpecError::Conflict {
                    winner: winner.version.clone(),
                    seq: winner.seq,
                });
            }
            if let Some(p) = log.probation
                && let Some(e) = log.entry(p.seq)
            {
                return Err(SpecError::Busy {
                    version: e.version.clone(),
                    seq: e.seq,
                });
            }
            if let Some(taken) = log
                .entries
                .iter()
                .find(|e| e.version == proposal.version && e.spec != proposal.spec)
            {
                return Err(SpecError::LabelTaken {
                    version: taken.version.clone(),
                    seq: taken.seq,
                });
            }
            let mut log = log.clone();
            let mut entry = self.entry(
                &proposal.version,
                proposal.spec.clone(),
                proposal.origin,
                &proposal.by,
            );
            entry.outcome = Outcome::Probation;
            entry.dry_run = proposal.dry_run.clone();
            let started_ms = entry.at_ms;
            let seq = log.push(entry);
            log.active = seq;
            log.probation = Some(Probation {
                seq,
                started_ms,
                until_ms: started_ms
                    .saturating_add(i64::try_from(proposal.probation_ms).unwrap_or(i64::MAX))
                    .saturating_add(i64::try_from(proposal.settle_ms).unwrap_or(i64::MAX)),
                probation_ms: proposal.probation_ms,
            });
            match self
                .state
                .compare_and_swap(name, &log, Some(&current.etag))
                .await
            {
                Ok(etag) => return Ok(Read { log, etag }),
                Err(e) if e.is_conflict() => {
                    current = self.reload(name).await?;
                }
                Err(e) => return Err(Self::storage(name)(e)),
            }
        }
    }

    async fn reload<S>(&self, name: &str) -> Result<Read<S>, SpecError>
    where
        S: DeserializeOwned + Clone + PartialEq,
    {
        self.load(name).await?.ok_or_else(|| SpecError::Corrupt {
            name: name.to_string(),
            reason: "the record disappeared".into(),
        })
    }

    /// End the probation of `seq`: promoted, or rolled back with `detail`.
    /// Returns the log after the call and whether this call decided (false:
    /// it was decided already, or is no longer in probation).
    pub async fn decide<S>(
        &self,
        name: &str,
        seq: u64,
        promoted: bool,
        detail: Option<String>,
    ) -> Result<(Read<S>, bool), SpecError>
    where
        S: Serialize + DeserializeOwned + Clone + PartialEq,
    {
        loop {
            let current = self.reload::<S>(name).await?;
            if current.log.probation.is_none_or(|p| p.seq != seq) {
                return Ok((current, false));
            }
            let mut log = current.log.clone();
            log.probation = None;
            if promoted {
                log.stable = seq;
            } else {
                log.active = log.stable;
            }
            if let Some(e) = log.entry_mut(seq) {
                e.outcome = if promoted {
                    Outcome::Promoted
                } else {
                    Outcome::RolledBack
                };
                e.decided_ms = Some(now_ms());
                e.detail = detail.clone();
            }
            match self
                .state
                .compare_and_swap(name, &log, Some(&current.etag))
                .await
            {
                Ok(etag) => return Ok((Read { log, etag }, true)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(Self::storage(name)(e)),
            }
        }
    }

    /// Record a refused attempt (it never becomes active).
    pub async fn refuse<S>(
        &self,
        name: &str,
        version: &str,
        spec: S,
        by: &str,
        reason: &str,
    ) -> Result<(), SpecError>
    where
        S: Serialize + DeserializeOwned + Clone + PartialEq,
    {
        loop {
            let current = self.reload::<S>(name).await?;
            let mut log = current.log.clone();
            let mut entry = self.entry(version, spec.clone(), Origin::Swap, by);
            entry.outcome = Outcome::Refused;
            entry.decided_ms = Some(entry.at_ms);
            entry.detail = Some(reason.to_string());
            log.push(entry);
            match self
                .state
                .compare_and_swap(name, &log, Some(&current.etag))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(Self::storage(name)(e)),
            }
        }
    }
}

/// How a proposed version ended, as [`SpecStore::await_decision`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Promoted,
    /// The log went back to `restored`; `error` says which node failed how.
    RolledBack {
        restored: String,
        error: String,
    },
}

impl SpecStore {
    /// Run `round` (this node's converge step) and read the log again until
    /// version `seq` is decided; `None` when `limit` passes first. After a
    /// rollback `round` runs once more, so this node follows it before the
    /// caller answers.
    pub async fn await_decision<S, F, Fut>(
        &self,
        name: &str,
        seq: u64,
        limit: std::time::Duration,
        mut round: F,
    ) -> Result<Option<Decision>, SpecError>
    where
        S: DeserializeOwned + Clone + PartialEq,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let started = tokio::time::Instant::now();
        loop {
            round().await;
            let read = self.reload::<S>(name).await?;
            let entry = read
                .log
                .entry(seq)
                .ok_or_else(|| SpecError::UnknownVersion(format!("seq {seq}")))?;
            match entry.outcome {
                Outcome::Promoted => return Ok(Some(Decision::Promoted)),
                Outcome::RolledBack | Outcome::Refused => {
                    let error = entry.detail.clone().unwrap_or_default();
                    round().await;
                    let restored = read
                        .log
                        .active_entry()
                        .map(|e| e.version.clone())
                        .unwrap_or_default();
                    return Ok(Some(Decision::RolledBack { restored, error }));
                }
                Outcome::Probation => {}
            }
            if started.elapsed() > limit {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use hubflow_actors::ports::memory::MemoryBlobStore;
    use hubflow_actors::ports::{BlobStore, PutCondition};

    use super::*;

    const NAME: &str = "specs/transform";

    async fn store(node: &str, blobs: &Arc<MemoryBlobStore>) -> SpecStore {
        let blobs: Arc<dyn BlobStore> = blobs.clone();
        let state = StateStore::new(blobs, "state");
        state.ensure_container().await.unwrap();
        SpecStore::new(state, node)
    }

    fn proposal(version: &str, spec: &str) -> Proposal<String> {
        Proposal {
            version: version.into(),
            spec: spec.into(),
            origin: Origin::Swap,
            by: "alice".into(),
            dry_run: None,
            probation_ms: 1_000,
            settle_ms: 0,
        }
    }

    #[tokio::test]
    async fn first_start_writes_the_config_spec_and_later_starts_read_the_stored_one() {
        let blobs = Arc::new(MemoryBlobStore::new());
        let a = store("a", &blobs).await;
        let first = a.init(NAME, "v1", "one".to_string(), false).await.unwrap();
        assert_eq!((first.log.active, first.log.stable), (1, 1));
        let p = a
            .propose(NAME, &first, proposal("v2", "two"))
            .await
            .unwrap();
        a.decide::<String>(NAME, p.log.active, true, None)
            .await
            .unwrap();
        // A restart with the config's v1 keeps v2.
        let again = a.init(NAME, "v1", "one".to_string(), false).await.unwrap();
        assert_eq!(again.log.active_entry().unwrap().version, "v2");
        assert_eq!(again.log.active_entry().unwrap().outcome, Outcome::Promoted);
        // The override makes the config's spec the truth, as a new version.
        let forced = a.init(NAME, "v1", "one".to_string(), true).await.unwrap();
        let active = forced.log.active_entry().unwrap();
        assert_eq!((active.seq, active.origin), (3, Origin::Override));
        assert_eq!(forced.log.stable, 3);
        // A deploy with a new file spec makes it a new version; a node still
        // on an old file (seen before) changes nothing.
        let deployed = a.init(NAME, "v5", "five".to_string(), false).await.unwrap();
        assert_eq!(deployed.log.active_entry().unwrap().version, "v5");
        let old_node = a.init(NAME, "v1", "one".to_string(), false).await.unwrap();
        assert_eq!(old_node.log.active_entry().unwrap().version, "v5");
        assert_eq!(old_node.log.entries.len(), 4);
    }

    #[tokio::test]
    async fn two_swaps_from_the_same_state_one_wins_the_other_learns_the_winner() {
        let blobs = Arc::new(MemoryBlobStore::new());
        let (a, b) = (store("a", &blobs).await, store("b", &blobs).await);
        let base = a.init(NAME, "v1", "one".to_string(), false).await.unwrap();
        let won = a.propose(NAME, &base, proposal("v2", "two")).await.unwrap();
        match b.propose(NAME, &base, proposal("v3", "three")).await {
            Err(SpecError::Conflict { winner, seq }) => {
                assert_eq!((winner.as_str(), seq), ("v2", 2))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // While v2 is in probation, nobody else swaps.
        match b.propose(NAME, &won, proposal("v3", "three")).await {
            Err(SpecError::Busy { version, .. }) => assert_eq!(version, "v2"),
            other => panic!("expected busy, got {other:?}"),
        }
        // A failure on one node rolls it back for all: v1 is active again.
        let (after, decided) = b
            .decide::<String>(NAME, 2, false, Some("node b: boom".into()))
            .await
            .unwrap();
        assert!(decided);
        assert_eq!((after.log.active, after.log.stable), (1, 1));
        assert_eq!(after.log.entry(2).unwrap().outcome, Outcome::RolledBack);
        // The other node's late promotion changes nothing.
        let (_, decided) = a.decide::<String>(NAME, 2, true, None).await.unwrap();
        assert!(!decided);
        // A label names one spec.
        match a.propose(NAME, &after, proposal("v2", "other")).await {
            Err(SpecError::LabelTaken { seq, .. }) => assert_eq!(seq, 2),
            other => panic!("expected label taken, got {other:?}"),
        }
        // A refusal is history, not a conflict for the next swap.
        a.refuse(NAME, "bad", "x".to_string(), "bob", "sql: syntax")
            .await
            .unwrap();
        let ok = a
            .propose(NAME, &after, proposal("v4", "four"))
            .await
            .unwrap();
        assert_eq!(ok.log.active_entry().unwrap().version, "v4");
        assert_eq!(ok.log.entries.len(), 4);
    }

    #[tokio::test]
    async fn a_corrupt_record_is_a_typed_error_until_the_override_rewrites_it() {
        let blobs = Arc::new(MemoryBlobStore::new());
        let a = store("a", &blobs).await;
        for body in [
            &b"{not json"[..],
            br#"{"schema":1,"active":5,"stable":5,"entries":[]}"#,
        ] {
            blobs
                .put("state", NAME, Bytes::from_static(body), PutCondition::None)
                .await
                .unwrap();
            match a.init(NAME, "v1", "one".to_string(), false).await {
                Err(e @ SpecError::Corrupt { .. }) => {
                    assert!(e.to_string().contains("override"), "{e}")
                }
                other => panic!("expected corrupt, got {other:?}"),
            }
            let fixed = a.init(NAME, "v1", "one".to_string(), true).await.unwrap();
            assert_eq!(fixed.log.active_entry().unwrap().spec, "one");
            blobs.delete("state", NAME, None).await.unwrap();
        }
    }

    #[tokio::test]
    async fn history_is_bounded_but_keeps_the_active_and_stable_versions() {
        let blobs = Arc::new(MemoryBlobStore::new());
        let a = store("a", &blobs).await;
        let mut read = a.init(NAME, "v0", "zero".to_string(), false).await.unwrap();
        for i in 1..=(MAX_ENTRIES + 10) {
            read = a
                .propose(NAME, &read, proposal(&format!("v{i}"), &i.to_string()))
                .await
                .unwrap();
            read = a
                .decide::<String>(NAME, read.log.active, true, None)
                .await
                .unwrap()
                .0;
        }
        assert_eq!(read.log.entries.len(), MAX_ENTRIES);
        assert_eq!(
            read.log.active_entry().unwrap().version,
            format!("v{}", MAX_ENTRIES + 10)
        );
        assert!(read.log.by_version("v0").is_none());
    }
}
