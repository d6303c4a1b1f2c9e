//! Replay: curate raw blobs again, for one partition and a sequence-number
//! and/or enqueued-time range, into the curated container.
//!
//! Raw blob names encode (hub, partition, first, last sequence number)
//! ([`RawBlobName`]), so the blobs of a range are found by listing, without
//! reading any. They are walked in the transformer's chain order (the same
//! choice of blob where two overlap), decoded with `formats::raw`, passed
//! through a dedupe window rebuilt from the blobs before the range (as the
//! transformer does after a restart), and curated with `formats::curated`
//! and the transform in effect when the replay starts, and landed, through
//! the transformer's own [`curate_batch`] and [`Landing`]: schemas merged
//! into the registry, files under their deterministic names, so a replay
//! rewrites what the transformer wrote (or would write): replaying twice,
//! or a range the transformer also covers, never adds rows.
//!
//! A time range selects the blobs holding at least one record enqueued in
//! it; a blob is always replayed whole (its curated files are named after
//! it). Blobs last modified before the range starts are skipped unread.
//!
//! Rejected records are dead-lettered under the transformer's deterministic
//! keys, only when that dead letter does not exist yet (a redriven one keeps
//! its marker; the transformer does the same). Corrupt blobs are reported
//! and skipped (the transformer quarantines them; replay does not move
//! blobs).
//!
//! [`ReplayJobs`] runs replays as background jobs with observable progress
//! (the admin port's `POST /replay`, `GET /replay/{id}` and `/status`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use hubflow_actors::formats::curated::{self, CurateInput, CurateOptions, CurateTransform};
use hubflow_actors::formats::raw::{self, RawBatch};
use hubflow_actors::now_ms;
use hubflow_actors::ports::{BlobProperties, BlobStore, StateStore};
use hubflow_actors::record::RawBlobName;
use hubflow_actors::transformer::{
    DedupeWindow, KnownSchemas, Landing, SchemaRecord, curate_batch,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backends::{Backends, INGEST_HUB};
use crate::config::Settings;

/// What to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub partition: u32,
    /// First sequence number (inclusive).
    #[serde(default)]
    pub from_sequence: Option<i64>,
    /// Last sequence number (inclusive).
    #[serde(default)]
    pub to_sequence: Option<i64>,
    /// Records enqueued at or after this instant (RFC 3339).
    #[serde(default)]
    pub from_time: Option<DateTime<Utc>>,
    /// Records enqueued before this instant (RFC 3339).
    #[serde(default)]
    pub to_time: Option<DateTime<Utc>>,
    /// The transform version to curate with (a label from the spec log);
    /// absent: the active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("partition {partition} does not exist (the hub has {count})")]
    UnknownPartition { partition: u32, count: usize },
    #[error("invalid range: {0}")]
    InvalidRange(String),
    #[error("no replay job {0}")]
    UnknownJob(u64),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl ReplayRequest {
    /// Check the request against the partitions the hub has.
    pub fn validate(&self, partitions: usize) -> Result<(), ReplayError> {
        if self.partition as usize >= partitions {
            return Err(ReplayError::UnknownPartition {
                partition: self.partition,
                count: partitions,
            });
        }
        if let Some(from) = self.from_sequence
            && from < 0
        {
            return Err(ReplayError::InvalidRange(
                "from_sequence must not be negative".into(),
            ));
        }
        if let (Some(from), Some(to)) = (self.from_sequence, self.to_sequence)
            && to < from
        {
            return Err(ReplayError::InvalidRange(format!(
                "to_sequence {to} is before from_sequence {from}"
            )));
        }
        if let (Some(from), Some(to)) = (self.from_time, self.to_time)
            && to <= from
        {
            return Err(ReplayError::InvalidRange(format!(
                "to_time {to} is not after from_time {from}"
            )));
        }
        Ok(())
    }

    fn first_seq(&self) -> i64 {
        self.from_sequence.unwrap_or(0)
    }

    fn last_seq(&self) -> i64 {
        self.to_sequence.unwrap_or(i64::MAX)
    }

    fn time_range(&self) -> Option<(i64, i64)> {
        if self.from_time.is_none() && self.to_time.is_none() {
            return None;
        }
        Some((
            self.from_time.map_or(i64::MIN, |t| t.timestamp_millis()),
            self.to_time.map_or(i64::MAX, |t| t.timestamp_millis()),
        ))
    }
}

/// Everything a replay reads and writes.
#[derive(Clone)]
pub struct ReplayContext {
    pub ingest_hub: String,
    pub raw: Arc<dyn BlobStore>,
    pub raw_container: String,
    pub curated: Arc<dyn BlobStore>,
    pub curated_container: String,
    pub dead_letters: Arc<dyn BlobStore>,
    pub dead_letter_container: String,
    pub state: StateStore,
    pub options: CurateOptions,
    pub dedupe_window: usize,
    /// This node's id, in the replay records.
    pub node: String,
    /// The transform the replay curates with: the active version unless
    /// the request names another (see [`ReplayContext::with_version`]).
    pub transform: CurateTransform,
}

impl ReplayContext {
    pub fn new(settings: &Settings, backends: &Backends) -> Self {
        let s = &settings.storage;
        ReplayContext {
            ingest_hub: INGEST_HUB.to_string(),
            raw: backends.blobs.clone(),
            raw_container: s.raw_container.clone(),
            curated: backends.blobs.clone(),
            curated_container: s.curated_container.clone(),
            dead_letters: backends.blobs.clone(),
            dead_letter_container: s.dead_letter_container.clone(),
            state: backends.state(settings),
            options: settings.curate.clone(),
            dedupe_window: settings.transform_options.dedupe_window,
            node: settings.node_id(),
            transform: settings.transform.current(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Completed,
    Failed,
}

/// Progress of one replay (also its final report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplayProgress {
    pub id: u64,
    pub request: ReplayRequest,
    /// The transform version the replay curates with.
    pub transform_version: String,
    pub state: JobState,
    /// Raw blobs selected by name (a time range may skip some once read).
    pub blobs_total: u64,
    pub blobs_done: u64,
    pub blobs_skipped: u64,
    pub blobs_corrupt: u64,
    pub rows: u64,
    pub files: u64,
    pub duplicates_dropped: u64,
    pub rejected: u64,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
}

impl ReplayProgress {
    fn new(id: u64, request: ReplayRequest) -> Self {
        ReplayProgress {
            id,
            request,
            transform_version: String::new(),
            state: JobState::Running,
            blobs_total: 0,
            blobs_done: 0,
            blobs_skipped: 0,
            blobs_corrupt: 0,
            rows: 0,
            files: 0,
            duplicates_dropped: 0,
            rejected: 0,
            started_ms: now_ms(),
            finished_ms: None,
            error: None,
        }
    }
}

/// The raw chain of a partition, as the transformer walks it, from `from`.
/// Returns each selected blob with the sequence number its records start at.
fn chain_from(
    mut listed: Vec<(RawBlobName, BlobProperties)>,
    from: i64,
    to: i64,
) -> Vec<(RawBlobName, i64, BlobProperties)> {
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let mut next = from;
    while next <= to {
        let exact = listed
            .iter()
            .filter(|(n, _)| n.first_seq == next)
            .max_by_key(|(n, _)| n.last_seq);
        let overlapping = || {
            listed
                .iter()
                .filter(|(n, _)| n.first_seq < next && n.last_seq >= next)
                .max_by_key(|(n, _)| n.last_seq)
        };
        let later = || {
            listed
                .iter()
                .filter(|(n, _)| n.first_seq > next)
                .min_by_key(|(n, _)| n.first_seq)
        };
        let Some((name, props)) = exact.or_else(overlapping).or_else(later) else {
            break;
        };
        let start = next.max(name.first_seq);
        if start > to {
            break;
        }
        out.push((name.clone(), start, props.clone()));
        next = name.last_seq + 1;
    }
    out
}

async fn list_partition(
    ctx: &ReplayContext,
    partition: u32,
) -> anyhow::Result<Vec<(RawBlobName, BlobProperties)>> {
    let prefix = RawBlobName::partition_prefix(&ctx.ingest_hub, partition);
    Ok(ctx
        .raw
        .list(&ctx.raw_container, &prefix)
        .await
        .with_context(|| format!("listing {}/{prefix}", ctx.raw_container))?
        .into_iter()
        .filter_map(|p| RawBlobName::parse(&p.name).map(|n| (n, p)))
        .collect())
}

async fn read_blob(
    ctx: &ReplayContext,
    name: &RawBlobName,
) -> anyhow::Result<Result<RawBatch, raw::RawError>> {
    let blob = name.to_name();
    let (bytes, _) = ctx
        .raw
        .get(&ctx.raw_container, &blob)
        .await
        .with_context(|| format!("reading {}/{blob}", ctx.raw_container))?;
    Ok(tokio::task::spawn_blocking(move || raw::decode(&bytes)).await?)
}

/// The dedupe window the transformer had when it reached `next`.
async fn rebuild_window(
    ctx: &ReplayContext,
    listed: &[(RawBlobName, BlobProperties)],
    next: i64,
) -> anyhow::Result<DedupeWindow> {
    let mut window = DedupeWindow::new(ctx.dedupe_window);
    if ctx.dedupe_window == 0 || next == 0 {
        return Ok(window);
    }
    let mut before: Vec<&RawBlobName> = listed
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.last_seq < next)
        .collect();
    before.sort();
    let mut covered = 0usize;
    let mut start = before.len();
    while start > 0 && covered < ctx.dedupe_window {
        start -= 1;
        covered += (before[start].last_seq - before[start].first_seq + 1) as usize;
    }
    for name in &before[start..] {
        match read_blob(ctx, name).await? {
            Ok(batch) => {
                for r in &batch.records {
                    window.insert(&r.source, &r.id, &r.payload);
                }
            }
            Err(error) => {
                warn!(blob = name.to_name(), %error, "skipping unreadable blob in dedupe replay")
            }
        }
    }
    Ok(window)
}

async fn load_known(ctx: &ReplayContext) -> anyhow::Result<BTreeMap<String, SchemaRef>> {
    let mut known = BTreeMap::new();
    let names = match ctx.state.list_names("schemas/").await {
        Ok(names) => names,
        Err(hubflow_actors::ports::StateError::Blob(
            hubflow_actors::ports::BlobError::ContainerNotFound { .. },
        )) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for name in names {
        if let Some(record) = ctx.state.load::<SchemaRecord>(&name).await? {
            let schema = curated::schema_from_json(&record.value.schema)
                .with_context(|| format!("schema registry record {name}"))?;
            known.insert(
                name.trim_start_matches("schemas/").to_string(),
                Arc::new(schema),
            );
        }
    }
    Ok(known)
}

/// Replay `request`, reporting progress through `report` after each blob.
pub async fn replay(
    ctx: &ReplayContext,
    request: &ReplayRequest,
    mut report: impl FnMut(&ReplayProgress),
    progress: &mut ReplayProgress,
) -> anyhow::Result<()> {
    let listed = list_partition(ctx, request.partition).await?;
    let chain = chain_from(listed.clone(), request.first_seq(), request.last_seq());
    let time = request.time_range();
    let chain: Vec<_> = chain
        .into_iter()
        // Every record of a blob was enqueued before the blob was written.
        .filter(|(_, _, props)| time.is_none_or(|(from, _)| props.last_modified_ms >= from))
        .collect();
    progress.blobs_total = chain.len() as u64;
    report(progress);
    let Some((_, first, _)) = chain.first() else {
        return Ok(());
    };
    let mut window = rebuild_window(ctx, &listed, *first).await?;
    let mut known = KnownSchemas {
        schemas: load_known(ctx).await?,
        outputs: BTreeMap::new(),
    };
    let landing = Landing {
        registry: &ctx.state,
        curated: ctx.curated.as_ref(),
        curated_container: &ctx.curated_container,
        dead_letters: ctx.dead_letters.as_ref(),
        dead_letter_container: &ctx.dead_letter_container,
    };
    for (name, start, _) in chain {
        let blob = name.to_name();
        let mut batch = match read_blob(ctx, &name).await? {
            Ok(batch) => batch,
            Err(error) => {
                warn!(blob, %error, "corrupt raw blob skipped by replay");
                progress.blobs_corrupt += 1;
                report(progress);
                continue;
            }
        };
        if let Some((from, to)) = time
            && !batch
                .records
                .iter()
                .any(|r| (from..to).contains(&r.enqueued_time_ms))
        {
            // Outside the time range; its records still feed the window.
            batch.records.retain(|r| r.sequence_number >= start);
            window.filter(batch);
            progress.blobs_skipped += 1;
            report(progress);
            continue;
        }
        batch.records.retain(|r| r.sequence_number >= start);
        let before = batch.records.len();
        let batch = window.filter(batch);
        let dropped = (before - batch.records.len()) as u64;
        let stem = name.stem();
        let raw_blob = format!("{}/{}", ctx.raw_container, blob);
        let options = ctx.options.clone();
        let snapshot = known.schemas.clone();
        let transform = ctx.transform.clone();
        let curated = tokio::task::spawn_blocking(move || {
            let inputs = CurateInput::from_raw(&batch);
            curate_batch(&inputs, &raw_blob, &stem, &snapshot, &options, &transform)
        })
        .await??;
        landing
            .land(&mut known, &blob, &name.stem(), &curated)
            .await?;
        let output = curated.output;
        let rows: u64 = output.files.iter().map(|f| f.rows as u64).sum();
        progress.blobs_done += 1;
        progress.rows += rows;
        progress.files += output.files.len() as u64;
        progress.duplicates_dropped += dropped;
        progress.rejected += output.rejected.len() as u64;
        metrics::counter!("hubflow_replay_blobs_total").increment(1);
        metrics::counter!("hubflow_replay_rows_total").increment(rows);
        report(progress);
    }
    Ok(())
}

/// Prefix of the durable replay records in the state container.
pub const REPLAY_RECORDS: &str = "replays/";

/// Name of a replay's record: by partition, then start time.
pub fn replay_record_name(partition: u32, started_ms: i64, node: &str, id: u64) -> String {
    format!("{REPLAY_RECORDS}{partition:05}/{started_ms:013}-{node}-{id}")
}

/// Background replay jobs and their progress.
#[derive(Clone, Default)]
pub struct ReplayJobs {
    inner: Arc<Mutex<JobsInner>>,
}

#[derive(Default)]
struct JobsInner {
    next_id: u64,
    jobs: BTreeMap<u64, ReplayProgress>,
}

/// Finished jobs kept for `GET /replay/{id}`.
const KEEP_FINISHED: usize = 100;

impl ReplayJobs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validate `request` and start it in the background; returns its id.
    pub async fn start(
        &self,
        ctx: ReplayContext,
        partitions: usize,
        request: ReplayRequest,
    ) -> Result<u64, ReplayError> {
        request.validate(partitions)?;
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner
                .jobs
                .insert(id, ReplayProgress::new(id, request.clone()));
            let finished: Vec<u64> = inner
                .jobs
                .values()
                .filter(|j| j.state != JobState::Running)
                .map(|j| j.id)
                .collect();
            for old in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                inner.jobs.remove(old);
            }
            id
        };
        let version = ctx.transform.version.clone();
        self.lock()
            .jobs
            .entry(id)
            .and_modify(|p| p.transform_version = version.clone());
        info!(id, ?request, transform_version = version, "replay started");
        let jobs = self.clone();
        tokio::spawn(async move {
            let mut progress = ReplayProgress::new(id, request.clone());
            progress.transform_version = version;
            let result = replay(
                &ctx,
                &request,
                |p| {
                    jobs.lock().jobs.insert(id, p.clone());
                },
                &mut progress,
            )
            .await;
            progress.finished_ms = Some(now_ms());
            match result {
                Ok(()) => {
                    progress.state = JobState::Completed;
                    info!(
                        id,
                        blobs = progress.blobs_done,
                        rows = progress.rows,
                        "replay completed"
                    );
                }
                Err(error) => {
                    progress.state = JobState::Failed;
                    progress.error = Some(format!("{error:#}"));
                    warn!(id, error = %format!("{error:#}"), "replay failed");
                }
            }
            // The durable record of what this replay rewrote, with which
            // version (`GET /transform` lists them per version).
            let name = replay_record_name(request.partition, progress.started_ms, &ctx.node, id);
            if let Err(error) = ctx.state.store(&name, &progress).await {
                warn!(id, %error, "cannot write the replay record");
            }
            jobs.lock().jobs.insert(id, progress);
        });
        Ok(id)
    }

    pub fn get(&self, id: u64) -> Result<ReplayProgress, ReplayError> {
        self.lock()
            .jobs
            .get(&id)
            .cloned()
            .ok_or(ReplayError::UnknownJob(id))
    }

    /// Every known job, oldest first.
    pub fn list(&self) -> Vec<ReplayProgress> {
        self.lock().jobs.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(name: &RawBlobName, modified: i64) -> (RawBlobName, BlobProperties) {
        (
            name.clone(),
            BlobProperties {
                name: name.to_name(),
                etag: hubflow_actors::ports::ETag("e".into()),
                size: 1,
                last_modified_ms: modified,
            },
        )
    }

    fn n(first: i64, last: i64) -> RawBlobName {
        RawBlobName {
            hub: "ingest".into(),
            partition: 0,
            first_seq: first,
            last_seq: last,
        }
    }

    #[test]
    fn the_chain_is_walked_like_the_transformer_walks_it() {
        // 0-9, an overlapping pair at 10 (the longer wins), a gap, then 40-49.
        let listed = vec![
            props(&n(0, 9), 1),
            props(&n(10, 14), 1),
            props(&n(10, 19), 1),
            props(&n(40, 49), 1),
        ];
        let chain = chain_from(listed.clone(), 0, i64::MAX);
        let got: Vec<_> = chain
            .iter()
            .map(|(n, s, _)| (n.first_seq, n.last_seq, *s))
            .collect();
        assert_eq!(got, vec![(0, 9, 0), (10, 19, 10), (40, 49, 40)]);
        // Starting inside a blob takes it from that point.
        let chain = chain_from(listed.clone(), 12, 41);
        let got: Vec<_> = chain.iter().map(|(n, s, _)| (n.first_seq, *s)).collect();
        assert_eq!(got, vec![(10, 12), (40, 40)]);
        assert!(chain_from(listed, 50, 60).is_empty());
    }

    #[test]
    fn requests_are_validated() {
        let ok = ReplayRequest {
            partition: 1,
            from_sequence: Some(5),
            to_sequence: Some(9),
            ..Default::default()
        };
        assert!(ok.validate(4).is_ok());
        assert!(matches!(
            ok.validate(1),
            Err(ReplayError::UnknownPartition { .. })
        ));
        let backwards = ReplayRequest {
            from_sequence: Some(9),
            to_sequence: Some(5),
            ..ok.clone()
        };
        assert!(matches!(
            backwards.validate(4),
            Err(ReplayError::InvalidRange(_))
        ));
        let json = r#"{"partition": 0, "from_time": "2026-01-01T00:00:00Z", "to_time": "2025-01-01T00:00:00Z"}"#;
        let bad_time: ReplayRequest = serde_json::from_str(json).unwrap();
        assert!(bad_time.validate(1).is_err());
        assert!(serde_json::from_str::<ReplayRequest>(r#"{"partition": 0, "nope": 1}"#).is_err());
    }
}
