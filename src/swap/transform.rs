//! The transform hot swap: dry runs and durable, cluster-wide versions.
//!
//! The spec log `specs/transform` ([`crate::specs::SpecLog`]) says which
//! version every node runs. Three things move a node:
//! - [`bootstrap`], at start, before any transformer: the log's stable
//!   version (the config file's spec only when there is no log yet, or with
//!   `[transform] override_stored`); drift from the config file is logged.
//! - [`converge`], every `[transform] sync_ms` (and right after a swap on
//!   this node): when the log's active version is not what this node runs,
//!   drain and replace the node's transform group with it, watched for the
//!   rest of the cluster's probation. A failure while the version is in
//!   probation rolls the log back (every node follows on its next round); a
//!   node that passed and sees the probation's end decides it promoted.
//! - [`swap`], an admin call: validate, dry-run, propose by compare-and-swap
//!   (a concurrent winner makes it a conflict), converge, and wait for the
//!   cluster's decision.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use hubflow_actors::formats::curated::{self, BatchTransform, CurateInput, CurateTransform};
use hubflow_actors::formats::raw;
use hubflow_actors::now_ms;
use hubflow_actors::record::RawBlobName;
use hubflow_actors::transformer::{MAX_VERSION_RANGES, TransformCheckpoint, checkpoint_name};
use hubflow_supervision::ReplaceOutcome;
use serde::Serialize;
use tracing::{info, warn};

use crate::backends::{Backends, INGEST_HUB};
use crate::config::Settings;
use crate::pipeline::{Pipeline, ROOT_SUPERVISOR, TRANSFORM_SUPERVISOR};
use crate::specs::{Decision, Origin, Outcome, Proposal, Read, SpecError, SpecLog, SpecStore};
use crate::transform::{
    ActiveTransform, SPEC_RECORD, SqlTransform, TransformError, TransformSpec, same_spec,
};

/// How long a node watches a version it moves back to after a rollback.
const ROLLBACK_PROBATION: Duration = Duration::from_secs(2);

/// How a swap ended.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SwapOutcome {
    Promoted {
        version: String,
        seq: u64,
        dry_run: DryRun,
    },
    RolledBack {
        version: String,
        seq: u64,
        restored: String,
        error: String,
    },
}

/// Timing and attribution of a swap.
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// How long the old transformers get to finish their blob.
    pub drain_deadline: Duration,
    /// How long the new version must stay healthy on every node.
    pub probation: Duration,
    /// Who asks (recorded in the spec log).
    pub by: String,
    /// A swap or a rollback to an earlier version.
    pub origin: Origin,
}

impl Default for SwapOptions {
    fn default() -> Self {
        SwapOptions {
            drain_deadline: Duration::from_secs(30),
            probation: Duration::from_secs(10),
            by: "admin".into(),
            origin: Origin::Swap,
        }
    }
}

/// The spec store of `settings`' state container, as this node.
pub fn store(settings: &Settings, backends: &Backends) -> SpecStore {
    SpecStore::new(backends.state(settings), settings.node_id())
}

fn sync_interval(settings: &Settings) -> Duration {
    Duration::from_millis(settings.transform_options.sync_ms)
}

/// Read (or write, on the first start) the spec log and make the version
/// this node starts with the log's stable one. Fails on a corrupt log
/// unless the config asks for the override: a node that does not know
/// which version is in effect must not curate.
pub async fn bootstrap(settings: &Settings, store: &SpecStore) -> Result<(), TransformError> {
    let active = &settings.transform;
    let config = active.config_spec();
    let force = settings.transform_options.override_stored;
    let read = store
        .init(SPEC_RECORD, &config.version, config.clone(), force)
        .await?;
    if force {
        warn!(
            version = config.version,
            "transform override: the config file's spec replaces the stored versions"
        );
    }
    let stable = read
        .log
        .stable_entry()
        .ok_or_else(|| TransformError::Invalid("the spec log has no stable version".into()))?;
    active.set(stable.spec.clone(), stable.seq)?;
    let drift = !same_spec(&stable.spec, &config);
    metrics::gauge!("hubflow_transform_config_drift").set(if drift { 1.0 } else { 0.0 });
    metrics::gauge!("hubflow_transform_active_seq").set(stable.seq as f64);
    if drift {
        warn!(
            running = stable.spec.version,
            seq = stable.seq,
            config = config.version,
            "the running transform differs from the config file's (the stored version wins; set [transform] override_stored to force the file's)"
        );
    } else {
        info!(
            version = stable.spec.version,
            seq = stable.seq,
            "transform version from the spec log"
        );
    }
    Ok(())
}

/// Move this node to the spec log's active version, and decide a probation
/// this node can decide. One round; errors are returned, not retried.
pub async fn converge(pipeline: &Pipeline) -> Result<(), TransformError> {
    let active = &pipeline.settings.transform;
    let _one_at_a_time = active.applying().await;
    let store = store(&pipeline.settings, &pipeline.backends);
    let Some(read) = store.load::<TransformSpec>(SPEC_RECORD).await? else {
        return Ok(());
    };
    let log = &read.log;
    let (_, running) = active.running();
    if running != log.active {
        let entry = log
            .active_entry()
            .ok_or_else(|| TransformError::Invalid("the active version has no entry".into()))?
            .clone();
        let now = now_ms();
        let watched = log.probation.filter(|p| p.seq == entry.seq);
        let probation = match watched {
            Some(p) if p.until_ms > now => {
                Duration::from_millis((p.until_ms - now) as u64).max(Duration::from_secs(1))
            }
            Some(p) => Duration::from_millis(p.probation_ms).max(Duration::from_secs(1)),
            None => ROLLBACK_PROBATION,
        };
        let deadline = pipeline_drain_deadline(&pipeline.settings);
        match apply_local(pipeline, &entry.spec, entry.seq, deadline, probation).await {
            Ok(()) => {}
            Err(error) => {
                metrics::counter!("hubflow_transform_apply_failures_total").increment(1);
                if watched.is_some() {
                    let detail = format!("node {}: {error}", store.node());
                    let (_, decided) = store
                        .decide::<TransformSpec>(SPEC_RECORD, entry.seq, false, Some(detail))
                        .await?;
                    warn!(
                        version = entry.version,
                        seq = entry.seq,
                        decided,
                        %error,
                        "transform failed its probation on this node: rolled back on every node"
                    );
                    return Ok(());
                }
                return Err(error);
            }
        }
    }
    // This node runs the version in probation and watched it for its part:
    // past the cluster's deadline, promote it (whoever comes first). The
    // log is read again only when applying took time.
    let read = if running != read.log.active {
        match store.load::<TransformSpec>(SPEC_RECORD).await? {
            Some(read) => read,
            None => return Ok(()),
        }
    } else {
        read
    };
    if let Some(p) = read.log.probation
        && active.running().1 == p.seq
        && now_ms() >= p.until_ms
    {
        let (_, decided) = store
            .decide::<TransformSpec>(SPEC_RECORD, p.seq, true, None)
            .await?;
        if decided {
            let version = read
                .log
                .entry(p.seq)
                .map(|e| e.version.clone())
                .unwrap_or_default();
            info!(version, seq = p.seq, "transform promoted on every node");
            metrics::counter!("hubflow_transform_swaps_total", "outcome" => "promoted")
                .increment(1);
        }
    }
    let (spec, seq) = active.running();
    metrics::gauge!("hubflow_transform_active_seq").set(seq as f64);
    let drift = !same_spec(&spec, &active.config_spec());
    metrics::gauge!("hubflow_transform_config_drift").set(if drift { 1.0 } else { 0.0 });
    Ok(())
}

fn pipeline_drain_deadline(settings: &Settings) -> Duration {
    settings.admin.drain_deadline
}

/// Drain and replace this node's transform group with `spec`, watched for
/// `probation`. On a failure the previous version runs again.
async fn apply_local(
    pipeline: &Pipeline,
    spec: &TransformSpec,
    seq: u64,
    deadline: Duration,
    probation: Duration,
) -> Result<(), TransformError> {
    let active: &ActiveTransform = &pipeline.settings.transform;
    let transform = SqlTransform::build(spec)?;
    let previous = active.begin(spec.clone(), seq, transform);
    info!(
        version = spec.version,
        seq,
        from = previous.spec.version,
        probation_ms = probation.as_millis() as u64,
        "applying transform version"
    );
    let group = crate::pipeline::transform_group_spec(pipeline)
        .await
        .map_err(|e| TransformError::Tree(format!("{e:#}")));
    let outcome = match group {
        Ok(group) => pipeline
            .root
            .replace(ROOT_SUPERVISOR, group, deadline, probation)
            .await
            .map_err(|e| TransformError::Tree(e.to_string())),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(ReplaceOutcome::Promoted { .. }) => {
            active.finish(previous, true);
            active.record(&spec.version, "applied", Some(format!("seq {seq}")));
            Ok(())
        }
        Ok(ReplaceOutcome::RolledBack { error, .. }) => {
            active.finish(previous, false);
            active.record(&spec.version, "apply_failed", Some(error.clone()));
            Err(TransformError::Tree(error))
        }
        Err(e) => {
            active.finish(previous, false);
            active.record(&spec.version, "apply_failed", Some(e.to_string()));
            Err(e)
        }
    }
}

/// Converge every `[transform] sync_ms` until `stop`; holds the pipeline
/// only while a round runs.
pub async fn run_sync(
    pipeline: std::sync::Weak<Pipeline>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stop = stop;
    let mut failures: u32 = 0;
    loop {
        let Some(p) = pipeline.upgrade() else { return };
        let every = sync_interval(&p.settings);
        let result = match converge(&p).await {
            Ok(()) => crate::swap::source::converge(&p)
                .await
                .map_err(|e| TransformError::Tree(format!("sources: {e}"))),
            Err(e) => Err(e),
        };
        drop(p);
        let wait = match result {
            Ok(()) => {
                failures = 0;
                every
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                metrics::counter!("hubflow_transform_sync_errors_total").increment(1);
                if failures <= 3 || failures.is_power_of_two() {
                    warn!(%error, failures, "transform sync round failed");
                }
                // Back off a node that cannot apply the active version.
                every.saturating_mul(failures.min(30))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Validate, dry-run, propose `spec` to the cluster and wait for its
/// decision (see the module docs).
pub async fn swap(
    pipeline: &Pipeline,
    spec: TransformSpec,
    options: SwapOptions,
) -> Result<SwapOutcome, TransformError> {
    let active = &pipeline.settings.transform;
    let store = store(&pipeline.settings, &pipeline.backends);
    let base: Read<TransformSpec> = store
        .load(SPEC_RECORD)
        .await?
        .ok_or_else(|| TransformError::Invalid("the spec log is not written yet".into()))?;
    let dry = match checked_dry_run(pipeline, &spec).await {
        Ok(dry) => dry,
        Err(e) => return Err(refuse(active, &store, &spec, &options.by, e).await),
    };
    let settle = sync_interval(&pipeline.settings).saturating_mul(3);
    let proposal = Proposal {
        version: spec.version.clone(),
        spec: spec.clone(),
        origin: options.origin,
        by: options.by.clone(),
        dry_run: serde_json::to_value(&dry).ok(),
        probation_ms: options.probation.as_millis() as u64,
        settle_ms: settle.as_millis() as u64,
    };
    let proposed = store
        .propose(SPEC_RECORD, &base, proposal)
        .await
        .map_err(|e| match e {
            SpecError::Conflict { .. } | SpecError::LabelTaken { .. } => {
                TransformError::Conflict(e.to_string())
            }
            SpecError::Busy { .. } => TransformError::Busy(e.to_string()),
            e => TransformError::Store(e),
        })?;
    let seq = proposed.log.active;
    info!(
        version = spec.version,
        seq,
        by = options.by,
        "transform proposed to the cluster"
    );
    // Apply here at once; the other nodes follow on their next round.
    let limit = options.drain_deadline + options.probation + settle + Duration::from_secs(60);
    let round = || async {
        if let Err(error) = converge(pipeline).await {
            warn!(%error, "transform sync round failed during a swap");
        }
    };
    let decision = store
        .await_decision::<TransformSpec, _, _>(SPEC_RECORD, seq, limit, round)
        .await?;
    match decision {
        Some(Decision::Promoted) => {
            active.record(&spec.version, "promoted", None);
            Ok(SwapOutcome::Promoted {
                version: spec.version,
                seq,
                dry_run: dry,
            })
        }
        Some(Decision::RolledBack { restored, error }) => {
            active.record(&spec.version, "rolled_back", Some(error.clone()));
            metrics::counter!("hubflow_transform_swaps_total", "outcome" => "rolled_back")
                .increment(1);
            Ok(SwapOutcome::RolledBack {
                version: spec.version,
                seq,
                restored,
                error,
            })
        }
        None => Err(TransformError::Tree(format!(
            "version {} (seq {seq}) was not decided within {limit:?}",
            spec.version
        ))),
    }
}

/// Build `spec` and dry-run it on the newest raw blob; its output must keep
/// every metadata column.
async fn checked_dry_run(
    pipeline: &Pipeline,
    spec: &TransformSpec,
) -> Result<DryRun, TransformError> {
    let transform = SqlTransform::build(spec)?;
    let dry = dry_run(pipeline, &spec.version, transform).await?;
    keeps_metadata(&dry, &spec.version)?;
    Ok(dry)
}

/// A version's output must keep every metadata column (lineage, dedupe
/// and replays read them).
pub fn keeps_metadata(dry: &DryRun, version: &str) -> Result<(), TransformError> {
    match dry.columns.iter().find(|(_, c)| {
        hubflow_actors::formats::curated::METADATA_COLUMNS
            .iter()
            .any(|m| !c.iter().any(|name| name == m))
    }) {
        Some((source, columns)) => Err(TransformError::DryRun {
            version: version.to_string(),
            raw_blob: dry.raw_blob.clone().unwrap_or_default(),
            message: format!("output of {source} lacks metadata columns: {columns:?}"),
        }),
        None => Ok(()),
    }
}

/// A swap refused before it was proposed: recorded in this node's history
/// and in the spec log, so operators see why.
async fn refuse(
    active: &ActiveTransform,
    store: &SpecStore,
    spec: &TransformSpec,
    by: &str,
    e: TransformError,
) -> TransformError {
    active.record(&spec.version, "refused", Some(e.to_string()));
    warn!(version = spec.version, error = %e, "transform refused");
    if let Err(store_error) = store
        .refuse(SPEC_RECORD, &spec.version, spec.clone(), by, &e.to_string())
        .await
    {
        warn!(error = %store_error, "cannot record the refusal in the spec log");
    }
    e
}

/// The transform of version `label` in the spec log (`None`: the active
/// version), as replays curate with it.
pub async fn resolve(
    settings: &Settings,
    backends: &Backends,
    label: Option<&str>,
) -> Result<CurateTransform, TransformError> {
    let read = store(settings, backends)
        .load::<TransformSpec>(SPEC_RECORD)
        .await?
        .ok_or_else(|| TransformError::Invalid("the spec log is not written yet".into()))?;
    let entry = match label {
        Some(label) => read
            .log
            .by_version(label)
            .ok_or_else(|| TransformError::Store(SpecError::UnknownVersion(label.to_string())))?,
        None => read
            .log
            .active_entry()
            .ok_or_else(|| TransformError::Invalid("the active version has no entry".into()))?,
    };
    Ok(CurateTransform {
        version: entry.spec.version.clone(),
        transform: SqlTransform::build(&entry.spec)?,
    })
}

/// The version a rollback returns to: `to` if given, else the newest
/// promoted version before the active one with another label.
pub fn rollback_target(
    log: &SpecLog<TransformSpec>,
    to: Option<&str>,
) -> Result<TransformSpec, TransformError> {
    let active = log
        .active_entry()
        .ok_or_else(|| TransformError::Invalid("the active version has no entry".into()))?;
    let target = match to {
        Some(label) => log
            .by_version(label)
            .ok_or_else(|| TransformError::Store(SpecError::UnknownVersion(label.to_string())))?,
        None => log
            .entries
            .iter()
            .rev()
            .find(|e| {
                e.seq < active.seq && e.outcome == Outcome::Promoted && e.version != active.version
            })
            .ok_or_else(|| {
                TransformError::Invalid(format!(
                    "no promoted version before {} to roll back to",
                    active.version
                ))
            })?,
    };
    if target.version == active.version {
        return Err(TransformError::Invalid(format!(
            "{} is already the active version",
            target.version
        )));
    }
    Ok(target.spec.clone())
}

/// Sequence numbers of one partition a transform version curated.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CuratedRange {
    pub partition: u32,
    pub from_sequence: i64,
    /// Exclusive.
    pub to_sequence: i64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A replay, as its durable record tells it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ReplayedRange {
    pub partition: u32,
    pub job: u64,
    pub node: String,
    pub from_sequence: Option<i64>,
    pub to_sequence: Option<i64>,
    pub rows: u64,
    pub started_ms: i64,
    pub state: crate::replay::JobState,
}

/// What one version curated: by the transformers (their checkpoints'
/// ranges) and by replays (their records).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VersionRanges {
    pub curated: Vec<CuratedRange>,
    pub replayed: Vec<ReplayedRange>,
}

/// Per version label, the raw ranges it curated on every partition.
pub async fn ranges(
    settings: &Settings,
    backends: &Backends,
) -> anyhow::Result<BTreeMap<String, VersionRanges>> {
    let state = backends.state(settings);
    let mut out: BTreeMap<String, VersionRanges> = BTreeMap::new();
    for partition in backends.ingest.partition_ids().await? {
        let name = checkpoint_name(INGEST_HUB, partition);
        let Some(cp) = state.load::<TransformCheckpoint>(&name).await? else {
            continue;
        };
        for r in cp.value.versions {
            out.entry(r.version)
                .or_default()
                .curated
                .push(CuratedRange {
                    partition,
                    from_sequence: r.from_sequence,
                    to_sequence: r.to_sequence,
                    from_ms: r.from_ms,
                    to_ms: r.to_ms,
                });
        }
    }
    for name in state.list_names(crate::replay::REPLAY_RECORDS).await? {
        let record = match state.load::<crate::replay::ReplayProgress>(&name).await {
            Ok(Some(r)) => r.value,
            Ok(None) => continue,
            Err(error) => {
                warn!(name, %error, "unreadable replay record skipped");
                continue;
            }
        };
        out.entry(record.transform_version.clone())
            .or_default()
            .replayed
            .push(ReplayedRange {
                partition: record.request.partition,
                job: record.id,
                node: name.rsplit('/').next().unwrap_or_default().to_string(),
                from_sequence: record.request.from_sequence,
                to_sequence: record.request.to_sequence,
                rows: record.rows,
                started_ms: record.started_ms,
                state: record.state,
            });
    }
    Ok(out)
}

/// The labels of version `since` and of every version that first ran after
/// it, from the spec log.
pub fn versions_since(
    log: &SpecLog<TransformSpec>,
    since: &str,
) -> Result<std::collections::BTreeSet<String>, TransformError> {
    let first = log
        .entries
        .iter()
        .find(|e| e.version == since && e.outcome != Outcome::Refused)
        .ok_or_else(|| TransformError::Store(SpecError::UnknownVersion(since.to_string())))?;
    Ok(log
        .entries
        .iter()
        .filter(|e| e.seq >= first.seq && e.outcome != Outcome::Refused)
        .map(|e| e.version.clone())
        .collect())
}

/// The replays that rewrite everything curated by the versions in `labels`
/// (see [`versions_since`]): on each partition, from the first sequence
/// number one of them curated (by the transformer, or by a replay) to the
/// checkpoint. Partitions whose checkpoint may have forgotten their
/// ranges (it keeps [`MAX_VERSION_RANGES`]) are returned in the second list.
pub async fn backfill_plan(
    settings: &Settings,
    backends: &Backends,
    labels: &std::collections::BTreeSet<String>,
    with: &str,
) -> anyhow::Result<(Vec<crate::replay::ReplayRequest>, Vec<u32>)> {
    let state = backends.state(settings);
    let mut first: BTreeMap<u32, i64> = BTreeMap::new();
    for name in state.list_names(crate::replay::REPLAY_RECORDS).await? {
        if let Ok(Some(r)) = state.load::<crate::replay::ReplayProgress>(&name).await
            && labels.contains(&r.value.transform_version)
            && r.value.state == crate::replay::JobState::Completed
        {
            let from = r.value.request.from_sequence.unwrap_or(0);
            let slot = first.entry(r.value.request.partition).or_insert(from);
            *slot = (*slot).min(from);
        }
    }
    let mut plan = Vec::new();
    let mut forgotten = Vec::new();
    for partition in backends.ingest.partition_ids().await? {
        let name = checkpoint_name(INGEST_HUB, partition);
        let Some(cp) = state.load::<TransformCheckpoint>(&name).await? else {
            continue;
        };
        let cp = cp.value;
        let curated = cp
            .versions
            .iter()
            .find(|r| labels.contains(&r.version))
            .map(|r| r.from_sequence);
        if cp.versions.len() >= MAX_VERSION_RANGES {
            forgotten.push(partition);
        }
        let from = match (curated, first.get(&partition)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => a,
            (None, Some(b)) => *b,
            (None, None) => continue,
        };
        if cp.next_sequence > from {
            plan.push(crate::replay::ReplayRequest {
                partition,
                from_sequence: Some(from),
                to_sequence: Some(cp.next_sequence - 1),
                version: Some(with.to_string()),
                ..Default::default()
            });
        }
    }
    Ok((plan, forgotten))
}

/// How a dry run went.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DryRun {
    /// The raw blob it ran on; `None` when no raw data exists yet (only the
    /// SQL was checked).
    pub raw_blob: Option<String>,
    pub rows_in: usize,
    pub rows_out: usize,
    /// Output columns per source.
    pub columns: Vec<(String, Vec<String>)>,
}

/// Run `transform` on the newest raw blob, as a transformer would.
pub async fn dry_run(
    pipeline: &Pipeline,
    version: &str,
    transform: Option<Arc<dyn BatchTransform>>,
) -> Result<DryRun, TransformError> {
    let Some(newest) = newest_raw_blob(pipeline).await? else {
        return Ok(DryRun {
            raw_blob: None,
            rows_in: 0,
            rows_out: 0,
            columns: Vec::new(),
        });
    };
    let curated = curate_on(&newest, version, transform).await?;
    Ok(curated.summary())
}

/// The newest raw blob of hub "ingest", read whole: what dry runs run on.
pub struct NewestBlob {
    /// `<container>/<name>`.
    pub raw_blob: String,
    pub bytes: bytes::Bytes,
    options: hubflow_actors::formats::curated::CurateOptions,
}

/// The newest raw blob, or `None` when no raw data exists yet.
pub async fn newest_raw_blob(pipeline: &Pipeline) -> Result<Option<NewestBlob>, TransformError> {
    let container = &pipeline.settings.storage.raw_container;
    let blobs = pipeline
        .backends
        .blobs
        .list(container, &format!("{}/", INGEST_HUB))
        .await
        .map_err(|e| TransformError::Storage(e.to_string()))?;
    let newest = blobs
        .into_iter()
        .filter(|b| RawBlobName::parse(&b.name).is_some())
        .max_by_key(|b| (b.last_modified_ms, b.name.clone()));
    let Some(newest) = newest else {
        return Ok(None);
    };
    let (bytes, _) = pipeline
        .backends
        .blobs
        .get(container, &newest.name)
        .await
        .map_err(|e| TransformError::Storage(e.to_string()))?;
    Ok(Some(NewestBlob {
        raw_blob: format!("{container}/{}", newest.name),
        bytes,
        options: pipeline.settings.curate.clone(),
    }))
}

/// A raw blob curated by a version, as a dry run.
pub struct DryCurated {
    pub raw_blob: String,
    pub rows_in: usize,
    pub output: curated::CuratedOutput,
}

impl DryCurated {
    /// Rows in and out and the output columns.
    pub fn summary(&self) -> DryRun {
        let output = &self.output;
        let schemas = if output.output_schemas.is_empty() {
            &output.schemas
        } else {
            &output.output_schemas
        };
        DryRun {
            raw_blob: Some(self.raw_blob.clone()),
            rows_in: self.rows_in,
            rows_out: output.files.iter().map(|f| f.rows).sum(),
            columns: schemas
                .iter()
                .map(|(s, schema)| {
                    let names = schema.fields().iter().map(|f| f.name().clone()).collect();
                    (s.clone(), names)
                })
                .collect(),
        }
    }
}

/// Curate `blob` with `transform` (labelled `version`) on the blocking pool.
pub async fn curate_on(
    blob: &NewestBlob,
    version: &str,
    transform: Option<Arc<dyn BatchTransform>>,
) -> Result<DryCurated, TransformError> {
    let transform = CurateTransform {
        version: version.to_string(),
        transform,
    };
    let failed = |message: String| TransformError::DryRun {
        version: version.to_string(),
        raw_blob: blob.raw_blob.clone(),
        message,
    };
    let batch =
        raw::decode(&blob.bytes).map_err(|e| failed(format!("raw blob unreadable: {e}")))?;
    let options = blob.options.clone();
    let blob_name = blob.raw_blob.clone();
    let (rows_in, output) = tokio::task::spawn_blocking(move || {
        let inputs = CurateInput::from_raw(&batch);
        let out = curated::curate_versioned(
            &inputs,
            &blob_name,
            "dry-run",
            &Default::default(),
            &options,
            &transform,
        );
        (inputs.len(), out)
    })
    .await
    .map_err(|e| failed(format!("dry run panicked: {e}")))?;
    Ok(DryCurated {
        raw_blob: blob.raw_blob.clone(),
        rows_in,
        output: output.map_err(|e| failed(e.to_string()))?,
    })
}

/// The path of the transform group in the tree.
pub fn group_path() -> String {
    format!("{ROOT_SUPERVISOR}/{TRANSFORM_SUPERVISOR}")
}
