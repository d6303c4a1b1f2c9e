//! The transformer of one ingest partition: turns the partition's raw blobs
//! into curated Parquet, in chain order, one blob at a time.
//!
//! Raw blobs of a partition form a contiguous chain: each blob's first
//! sequence number is the previous blob's last plus one, so the next blob to
//! transform is found by a prefix lookup on its first sequence number. The
//! transformer's checkpoint (`transform/<hub>/<partition>`, etag-guarded) is
//! that next sequence number. Notifications on hub "landed" (from the
//! blob-writers or Event Grid, routed by [`crate::notices`]) only wake it up:
//! it also walks the chain every `poll_wait`, so a lost notification never
//! leaves raw data untransformed, and on start it picks up every blob that
//! landed while it was down (recovery).
//!
//! Per blob, in order:
//! 1. read and decode; a corrupt blob is quarantined and its range skipped;
//! 2. drop exact duplicates (same id and payload) seen in a sliding window,
//!    the copies an at-least-once source or fetcher restart sends twice;
//! 3. curate (infer/widen schema, Parquet + zstd), merge the batch schema into
//!    the source's registry record (`schemas/<source>`, by CAS) first, then
//!    put the files under deterministic names, so a rewrite is idempotent;
//! 4. dead-letter payloads that are not JSON objects (deterministic names);
//! 5. move the checkpoint.
//!
//! Memory is bounded by one raw blob plus the dedupe window; a slow
//! transformer leaves raw blobs waiting in the raw container (the durable
//! buffer), it never queues them in memory.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use hubflow_supervision::ActorProbe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::dead_letter::write_dead_letter_at;
use crate::formats::curated::{self, CurateInput, CurateOptions, CurateTransform, CuratedOutput};
use crate::formats::raw::{self, RawBatch};
use crate::notices::WakeBoard;
use crate::now_ms;
use crate::ports::{BlobStore, ETag, PutCondition, StateStore};
use crate::record::RawBlobName;

#[derive(Debug)]
pub enum TransformerMsg {
    /// Wait for a wake-up (up to `poll_wait`), then walk the chain.
    Poll,
    Pause,
    Resume,
}

#[derive(Clone)]
pub struct TransformerParams {
    pub ingest_hub: String,
    pub partition: u32,
    pub raw: Arc<dyn BlobStore>,
    pub raw_container: String,
    pub curated: Arc<dyn BlobStore>,
    pub curated_container: String,
    pub state: StateStore,
    /// Where the node's notice listeners wake this partition's transformer.
    pub board: WakeBoard,
    pub dead_letters: Arc<dyn BlobStore>,
    pub dead_letter_container: String,
    pub options: CurateOptions,
    /// How many recent (id, payload) keys are remembered to drop duplicates.
    pub dedupe_window: usize,
    pub poll_wait: Duration,
    /// Reshapes each batch before Parquet (a versioned SQL spec), and the
    /// version label its rows, files and checkpoint ranges carry.
    pub transform: CurateTransform,
    /// The dedupe window, kept across restarts of this partition's
    /// transformer within the process (see [`WindowCache`]).
    pub window_cache: WindowCache,
    /// Curations that may run at once on this node (shared by its
    /// transformers): one per core keeps the cores busy and memory bounded.
    pub curate_slots: CurateSlots,
    pub probe: ActorProbe,
}

/// The node's permits to curate, shared by its transformers.
#[derive(Clone, Debug)]
pub struct CurateSlots(Arc<tokio::sync::Semaphore>);

impl CurateSlots {
    pub fn new(slots: usize) -> Self {
        CurateSlots(Arc::new(tokio::sync::Semaphore::new(slots.max(1))))
    }

    /// One slot per core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Default for CurateSlots {
    fn default() -> Self {
        Self::per_core()
    }
}

/// The transformer checkpoint record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformCheckpoint {
    /// First sequence number of the next raw blob to transform.
    pub next_sequence: i64,
    pub updated_ms: i64,
    /// Which transform version curated which sequence range, oldest first:
    /// consecutive commits of one version share a range; the newest
    /// [`MAX_VERSION_RANGES`] are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionRange>,
}

/// Sequence numbers `from_sequence..to_sequence` of a partition, curated by
/// transform `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub version: String,
    pub from_sequence: i64,
    /// Exclusive: the checkpoint's `next_sequence` after the range.
    pub to_sequence: i64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How many version ranges a checkpoint keeps.
pub const MAX_VERSION_RANGES: usize = 64;

impl TransformCheckpoint {
    /// The checkpoint after `version` curated `self.next_sequence..next`.
    pub fn advanced(&self, next: i64, version: &str, at_ms: i64) -> TransformCheckpoint {
        let mut versions = self.versions.clone();
        match versions.last_mut() {
            Some(last) if last.version == version && last.to_sequence == self.next_sequence => {
                last.to_sequence = next;
                last.to_ms = at_ms;
            }
            _ if next > self.next_sequence => versions.push(VersionRange {
                version: version.to_string(),
                from_sequence: self.next_sequence,
                to_sequence: next,
                from_ms: at_ms,
                to_ms: at_ms,
            }),
            _ => {}
        }
        let excess = versions.len().saturating_sub(MAX_VERSION_RANGES);
        versions.drain(..excess);
        TransformCheckpoint {
            next_sequence: next,
            updated_ms: at_ms,
            versions,
        }
    }
}

/// A source's schema as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub version: u64,
    /// The inferred schema of the payloads (what inference evolves).
    pub schema: serde_json::Value,
    pub updated_ms: i64,
    /// The union of the schemas of the files written, when a transform
    /// reshaped them (what queries read); absent: same as `schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl SchemaRecord {
    /// The schema queries should read the source's files with.
    pub fn table_schema(&self) -> &serde_json::Value {
        self.output.as_ref().unwrap_or(&self.schema)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformerStatus {
    pub partition: u32,
    pub paused: bool,
    pub next_sequence: i64,
    pub blobs: u64,
    pub rows: u64,
    pub files: u64,
    pub duplicates_dropped: u64,
    pub rejected: u64,
    pub quarantined: u64,
    pub schema_conflicts: u64,
    pub last_blob: Option<String>,
    pub last_error: Option<String>,
}

pub struct TransformerState {
    params: TransformerParams,
    wake: Arc<tokio::sync::Notify>,
    /// The checkpoint as last read or written.
    checkpoint: TransformCheckpoint,
    etag: Option<ETag>,
    window: WindowClaim,
    /// The schema registry as last read or written.
    known: KnownSchemas,
    status: TransformerStatus,
    /// The wait for the next walk, while one is armed.
    waiter: Option<Waiter>,
}

/// A task that casts the next [`TransformerMsg::Poll`]; aborted when dropped.
struct Waiter(tokio::task::JoinHandle<()>);

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Transformer;

pub fn checkpoint_name(hub: &str, partition: u32) -> String {
    format!("transform/{hub}/{partition}")
}

pub fn schema_record_name(source: &str) -> String {
    format!("schemas/{source}")
}

impl Actor for Transformer {
    type Msg = TransformerMsg;
    type State = TransformerState;
    type Arguments = TransformerParams;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        params: TransformerParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Listen before walking the chain, so a blob landing in between is
        // either found by the walk or announced to us.
        let wake = params.board.line(params.partition);
        let name = checkpoint_name(&params.ingest_hub, params.partition);
        let (checkpoint, etag) = match params.state.load::<TransformCheckpoint>(&name).await? {
            Some(v) => (v.value, Some(v.etag)),
            None => (TransformCheckpoint::default(), None),
        };
        let next_sequence = checkpoint.next_sequence;
        // A restart in this process reuses the window when it is exactly as
        // of the checkpoint; otherwise it is rebuilt from the raw blobs.
        // An actor of an earlier generation that is still winding down (a
        // killed supervisor's children stop asynchronously) is fenced off:
        // claiming the cache makes its later use of it fail.
        let window = params.window_cache.claim();
        let reused = window.is_valid_at(next_sequence);
        if !reused {
            let rebuilt = rebuild_window(&params, next_sequence).await?;
            window.reset(rebuilt, next_sequence)?;
        }
        info!(
            partition = params.partition,
            next_sequence,
            remembered = window.len(),
            reused,
            "transformer started"
        );
        params.probe.set_busy(true);
        let _ = myself.cast(TransformerMsg::Poll);
        Ok(TransformerState {
            status: TransformerStatus {
                partition: params.partition,
                next_sequence,
                ..Default::default()
            },
            params,
            wake,
            checkpoint,
            etag,
            window,
            known: KnownSchemas::default(),
            waiter: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TransformerMsg::Poll => {
                state.waiter = None;
                if state.status.paused {
                    return Ok(());
                }
                state.params.probe.tick();
                if let Err(error) = walk_chain(state).await {
                    state.status.last_error = Some(format!("{error:#}"));
                    state.params.probe.publish(&state.status);
                    return Err(error.into());
                }
                // Walk again on a wake-up (a hint: the walk finds what there
                // is) or after `poll_wait`. The wait runs beside the actor,
                // so a stop is not held up by it.
                let wake = Arc::clone(&state.wake);
                let wait = state.params.poll_wait;
                let me = myself.clone();
                state.waiter = Some(Waiter(tokio::spawn(async move {
                    let _ = tokio::time::timeout(wait, wake.notified()).await;
                    let _ = me.cast(TransformerMsg::Poll);
                })));
            }
            TransformerMsg::Pause => {
                state.status.paused = true;
                state.params.probe.set_busy(false);
            }
            TransformerMsg::Resume => {
                if state.status.paused {
                    state.status.paused = false;
                    state.params.probe.set_busy(true);
                    state.waiter = None;
                    let _ = myself.cast(TransformerMsg::Poll);
                }
            }
        }
        state.params.probe.publish(&state.status);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.waiter = None;
        state.params.probe.set_busy(false);
        Ok(())
    }
}

/// Transform every raw blob available from the checkpoint on.
async fn walk_chain(state: &mut TransformerState) -> anyhow::Result<()> {
    loop {
        let next = state.status.next_sequence;
        let Some(blob) = find_next_blob(&state.params, next).await? else {
            return Ok(());
        };
        transform_blob(state, &blob).await?;
        state.params.probe.tick();
        state.params.probe.publish(&state.status);
    }
}

/// The raw blob holding sequence number `next`.
///
/// Normally one blob starts exactly there. Two can, if a killed writer's put
/// landed after its successor had already re-batched the same range: one
/// then covers the other, and the longer one is taken. A blob can also start
/// before `next` and overlap it (the shorter of such a pair was taken
/// earlier); its records below `next` are skipped. If nothing holds `next`
/// but later blobs exist (a range lost to hub retention or removed by hand),
/// the chain continues at the first of them, with a warning: it must not stop
/// forever at a hole.
async fn find_next_blob(
    params: &TransformerParams,
    next: i64,
) -> anyhow::Result<Option<RawBlobName>> {
    let prefix = RawBlobName::starting_at_prefix(&params.ingest_hub, params.partition, next);
    let found = params.raw.list(&params.raw_container, &prefix).await?;
    if let Some(name) = found
        .iter()
        .filter_map(|p| RawBlobName::parse(&p.name))
        .max_by_key(|n| n.last_seq)
    {
        return Ok(Some(name));
    }
    let partition_prefix = RawBlobName::partition_prefix(&params.ingest_hub, params.partition);
    let candidates: Vec<RawBlobName> = params
        .raw
        .list(&params.raw_container, &partition_prefix)
        .await?
        .into_iter()
        .filter_map(|p| RawBlobName::parse(&p.name))
        .filter(|n| n.last_seq >= next)
        .collect();
    if let Some(overlapping) = candidates
        .iter()
        .filter(|n| n.first_seq < next)
        .max_by_key(|n| n.last_seq)
    {
        return Ok(Some(overlapping.clone()));
    }
    let later = candidates.into_iter().min_by_key(|n| n.first_seq);
    // A blob starting exactly at `next` that landed between the two listings
    // is the normal case, not a gap.
    if let Some(name) = later.as_ref().filter(|n| n.first_seq > next) {
        warn!(
            partition = params.partition,
            missing_from = next,
            missing_to = name.first_seq - 1,
            "gap in the raw chain, skipping it"
        );
        metrics::counter!("hubflow_transformer_chain_gaps_total").increment(1);
    }
    Ok(later)
}

/// What became of one raw blob on the blocking pool.
enum Curated {
    Done {
        batch: CuratedBatch,
        dropped: u64,
        /// Records curated per fetch time (a page's records share one).
        fetched: Freshness,
    },
    Corrupt(raw::RawError),
}

/// One raw blob curated and committed: the `curate` span (exported over
/// OTLP when configured) names the blob, its partition and sequence range,
/// the transform version and what was written.
#[tracing::instrument(name = "curate", skip_all, fields(
    partition = state.params.partition,
    blob = %name.to_name(),
    first_seq = name.first_seq,
    last_seq = name.last_seq,
    transform_version = %state.params.transform.version,
    rows = tracing::field::Empty,
    files = tracing::field::Empty,
    first_file = tracing::field::Empty,
))]
async fn transform_blob(state: &mut TransformerState, name: &RawBlobName) -> anyhow::Result<()> {
    let params = state.params.clone();
    let blob = name.to_name();
    let (bytes, _) = params.raw.get(&params.raw_container, &blob).await?;
    let (batch, dropped, fetched) = match curate_blob(state, name, bytes).await? {
        Curated::Done {
            batch,
            dropped,
            fetched,
        } => (batch, dropped, fetched),
        Curated::Corrupt(error) => return quarantine_blob(state, name, error).await,
    };

    let landing = Landing {
        registry: &params.state,
        curated: params.curated.as_ref(),
        curated_container: &params.curated_container,
        dead_letters: params.dead_letters.as_ref(),
        dead_letter_container: &params.dead_letter_container,
    };
    landing
        .land(&mut state.known, &blob, &name.stem(), &batch)
        .await?;
    let output = batch.output;
    for conflict in &output.conflicts {
        warn!(partition = params.partition, ?conflict, "schema widened");
    }
    count_curated(state, &blob, &output, dropped);
    commit(state, name.last_seq + 1).await?;
    fetched.record(now_ms());
    Ok(())
}

/// Decode in place, drop duplicates and curate in one blocking step, under
/// a curate slot: the records are read from the decompressed archive
/// without copies.
async fn curate_blob(
    state: &TransformerState,
    name: &RawBlobName,
    bytes: Bytes,
) -> anyhow::Result<Curated> {
    let params = &state.params;
    let next = state.status.next_sequence;
    let window = state.window.clone();
    let known = state.known.schemas.clone();
    let options = params.options.clone();
    let transform = params.transform.clone();
    let stem = name.stem();
    let raw_blob = format!("{}/{}", params.raw_container, name.to_name());
    let slot = Arc::clone(&params.curate_slots.0).acquire_owned().await?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut buf = raw::RawBuf::default();
        let batch = match raw::decode_into(&bytes, &mut buf) {
            Ok(batch) => batch,
            Err(error) => return Ok(Curated::Corrupt(error)),
        };
        let mut inputs = CurateInput::from_archived(batch);
        inputs.retain(|r| r.sequence_number >= next);
        let before = inputs.len();
        let inputs = window.filter_inputs(inputs)?;
        let dropped = (before - inputs.len()) as u64;
        let batch = curate_batch(&inputs, &raw_blob, &stem, &known, &options, &transform)?;
        let fetched = Freshness::of(&inputs);
        Ok::<_, anyhow::Error>(Curated::Done {
            batch,
            dropped,
            fetched,
        })
    })
    .await?
}

/// A raw blob that does not decode: moved to quarantine, and the checkpoint
/// moved past its range.
async fn quarantine_blob(
    state: &mut TransformerState,
    name: &RawBlobName,
    error: raw::RawError,
) -> anyhow::Result<()> {
    let params = &state.params;
    let blob = name.to_name();
    warn!(partition = params.partition, blob, %error, "corrupt raw blob, quarantining");
    raw::quarantine(
        params.raw.as_ref(),
        &params.raw_container,
        &blob,
        &error.to_string(),
    )
    .await?;
    metrics::counter!("hubflow_transformer_quarantined_total").increment(1);
    state.status.quarantined += 1;
    commit(state, name.last_seq + 1).await
}

/// Count a landed blob in the `curate` span, the status and the metrics.
fn count_curated(state: &mut TransformerState, blob: &str, output: &CuratedOutput, dropped: u64) {
    let rows: u64 = output.files.iter().map(|f| f.rows as u64).sum();
    let span = tracing::Span::current();
    span.record("rows", rows);
    span.record("files", output.files.len());
    if let Some(file) = output.files.first() {
        span.record("first_file", file.path.as_str());
    }
    state.status.blobs += 1;
    state.status.rows += rows;
    state.status.files += output.files.len() as u64;
    state.status.duplicates_dropped += dropped;
    state.status.rejected += output.rejected.len() as u64;
    state.status.schema_conflicts += output.conflicts.len() as u64;
    state.status.last_blob = Some(blob.to_string());
    state.status.last_error = None;
    let partition_label = state.params.partition.to_string();
    metrics::counter!("hubflow_transformer_blobs_total", "partition" => partition_label.clone())
        .increment(1);
    metrics::counter!("hubflow_transformer_rows_total", "partition" => partition_label.clone())
        .increment(rows);
    metrics::counter!("hubflow_transformer_duplicates_total", "partition" => partition_label.clone())
        .increment(dropped);
    metrics::counter!("hubflow_transformer_rejected_total", "partition" => partition_label)
        .increment(output.rejected.len() as u64);
    debug!(
        partition = state.params.partition,
        blob, rows, dropped, "raw blob curated"
    );
}

/// How many records of a curated batch were fetched when, to record the
/// time from fetch to queryable of each once the batch is committed.
#[derive(Debug, Default)]
struct Freshness(BTreeMap<i64, u64>);

impl Freshness {
    fn of(inputs: &[CurateInput<'_>]) -> Self {
        let mut counts = BTreeMap::new();
        for input in inputs {
            *counts.entry(input.fetched_time_ms).or_insert(0u64) += 1;
        }
        Freshness(counts)
    }

    /// One `hubflow_end_to_end_latency_seconds` observation per record.
    fn record(&self, committed_ms: i64) {
        let histogram = metrics::histogram!("hubflow_end_to_end_latency_seconds");
        for (fetched_ms, count) in &self.0 {
            let seconds = (committed_ms - fetched_ms).max(0) as f64 / 1000.0;
            histogram.record_many(seconds, usize::try_from(*count).unwrap_or(usize::MAX));
        }
    }
}

/// Stage name of the dead letters of records the transformer rejected.
pub const TRANSFORM_STAGE: &str = "transform";

/// A raw blob's records curated, with the payloads of the rejected ones
/// (for their dead letters).
pub struct CuratedBatch {
    pub output: CuratedOutput,
    pub rejected_bodies: BTreeMap<String, Bytes>,
}

/// Curate the records of one raw blob (blocking: call it on a blocking
/// thread). The transformer and replay both curate through it.
pub fn curate_batch(
    inputs: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    options: &CurateOptions,
    transform: &CurateTransform,
) -> Result<CuratedBatch, curated::CurateError> {
    let output = curated::curate_versioned(inputs, raw_blob, stem, known, options, transform)?;
    let rejected_bodies = curated::rejected_payloads(inputs, &output);
    Ok(CuratedBatch {
        output,
        rejected_bodies,
    })
}

/// Where curated batches land: the schema registry, the curated container
/// and the dead letters. The transformer and replay both land through it.
pub struct Landing<'a> {
    pub registry: &'a StateStore,
    pub curated: &'a dyn BlobStore,
    pub curated_container: &'a str,
    pub dead_letters: &'a dyn BlobStore,
    pub dead_letter_container: &'a str,
}

impl Landing<'_> {
    /// Land the curated batch of raw blob `blob` (its name in the raw
    /// container; `stem` names its files and dead letters): the schemas
    /// into the registry first, so a query always finds a schema covering
    /// every file; then the files (deterministic names: landing again
    /// rewrites the same bytes); then one dead letter per rejected record,
    /// unless it is there already (a restart or a replay must not undo an
    /// operator's redrive mark).
    pub async fn land(
        &self,
        known: &mut KnownSchemas,
        blob: &str,
        stem: &str,
        batch: &CuratedBatch,
    ) -> anyhow::Result<()> {
        let output = &batch.output;
        known.register(self.registry, output).await?;
        for file in &output.files {
            self.curated
                .put(
                    self.curated_container,
                    &file.path,
                    file.data.clone(),
                    PutCondition::None,
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("writing {}/{}: {e}", self.curated_container, file.path)
                })?;
        }
        for (index, rejected) in output.rejected.iter().enumerate() {
            let key = format!("{stem}-{index:06}");
            let info = format!("{TRANSFORM_STAGE}/{key}.json");
            match self
                .dead_letters
                .properties(self.dead_letter_container, &info)
                .await
            {
                Ok(_) => continue,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            let context = serde_json::json!({
                "raw_blob": blob,
                "record_id": rejected.id,
                "source": rejected.source,
            });
            let body = batch
                .rejected_bodies
                .get(&rejected.id)
                .cloned()
                .unwrap_or_default();
            write_dead_letter_at(
                self.dead_letters,
                self.dead_letter_container,
                TRANSFORM_STAGE,
                &key,
                &rejected.reason,
                &context,
                body,
            )
            .await?;
        }
        Ok(())
    }
}

/// Merge each source's batch schema into the registry before any file that
/// uses it is written, so readers always find a schema covering every file.
/// What this process knows of the schema registry (`schemas/<source>`):
/// per source, the inferred schema and the transform's output schema as last
/// read or written. The transformer and replay both keep one.
#[derive(Debug, Clone, Default)]
pub struct KnownSchemas {
    /// Inferred schemas, what curation widens.
    pub schemas: BTreeMap<String, SchemaRef>,
    /// Output schemas of the files last registered, per source.
    pub outputs: BTreeMap<String, SchemaRef>,
}

impl KnownSchemas {
    /// Merge a curated batch's schemas into the registry (by CAS, retried on
    /// conflicts) before files using them are written, so queries always
    /// find a schema that covers every file.
    pub async fn register(
        &mut self,
        registry: &StateStore,
        output: &CuratedOutput,
    ) -> anyhow::Result<()> {
        for (source, schema) in &output.schemas {
            let produced = output.output_schemas.get(source);
            if let Some(known) = self.schemas.get(source)
                && known == schema
                && produced.is_none_or(|p| self.outputs.get(source) == Some(p))
            {
                continue;
            }
            let name = schema_record_name(source);
            loop {
                let current = registry.load::<SchemaRecord>(&name).await?;
                let (merged, merged_output, version, etag) = match &current {
                    Some(v) => {
                        let stored = curated::schema_from_json(&v.value.schema)?;
                        let (merged, _) = curated::merge_schemas(&stored, schema);
                        let stored_output = match &v.value.output {
                            Some(o) => Some(curated::schema_from_json(o)?),
                            None => None,
                        };
                        let merged_output = match (produced, &stored_output) {
                            // Files written before a transform have the inferred shape.
                            (Some(p), None) => Some(curated::merge_schemas(&merged, p).0),
                            (Some(p), Some(o)) => Some(curated::merge_schemas(o, p).0),
                            (None, Some(o)) => Some(curated::merge_schemas(o, &merged).0),
                            (None, None) => None,
                        };
                        if merged == stored && merged_output == stored_output {
                            self.remember(source, merged, produced);
                            break;
                        }
                        (merged, merged_output, v.value.version + 1, Some(&v.etag))
                    }
                    None => (
                        schema.as_ref().clone(),
                        produced.map(|p| p.as_ref().clone()),
                        1,
                        None,
                    ),
                };
                let record = SchemaRecord {
                    version,
                    schema: curated::schema_to_json(&merged),
                    updated_ms: now_ms(),
                    output: merged_output.as_ref().map(curated::schema_to_json),
                };
                match registry.compare_and_swap(&name, &record, etag).await {
                    Ok(_) => {
                        info!(source, version, "schema registry updated");
                        self.remember(source, merged, produced);
                        break;
                    }
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn remember(
        &mut self,
        source: &str,
        merged: arrow::datatypes::Schema,
        produced: Option<&SchemaRef>,
    ) {
        self.schemas.insert(source.to_string(), Arc::new(merged));
        if let Some(p) = produced {
            self.outputs.insert(source.to_string(), p.clone());
        }
    }
}

async fn commit(state: &mut TransformerState, next_sequence: i64) -> anyhow::Result<()> {
    let params = &state.params;
    let record = state
        .checkpoint
        .advanced(next_sequence, &params.transform.version, now_ms());
    let name = checkpoint_name(&params.ingest_hub, params.partition);
    let etag = params
        .state
        .compare_and_swap(&name, &record, state.etag.as_ref())
        .await?;
    state.etag = Some(etag);
    state.checkpoint = record;
    state.status.next_sequence = next_sequence;
    state.window.mark_valid_at(next_sequence)?;
    Ok(())
}

/// A partition's dedupe window shared by the successive transformer actors
/// of one process, so a restart does not re-read the raw history. It is
/// only reused when it is exactly as of the checkpoint the new actor starts
/// from: filtering a batch marks it stale until that batch's checkpoint is
/// durable, so a crash in between forces a rebuild from the raw blobs. Each
/// actor works through a [`WindowClaim`]; a newer claim fences off the older
/// ones, so an actor that is still winding down cannot touch the window its
/// successor relies on.
#[derive(Clone, Default)]
pub struct WindowCache(Arc<std::sync::Mutex<CachedWindow>>);

#[derive(Default)]
struct CachedWindow {
    /// The latest claim; only it may use the window.
    owner: u64,
    /// The checkpoint (`next_sequence`) the window is exact for.
    valid_at: Option<i64>,
    window: Option<DedupeWindow>,
}

impl std::fmt::Debug for WindowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.lock();
        f.debug_struct("WindowCache")
            .field("owner", &c.owner)
            .field("valid_at", &c.valid_at)
            .finish()
    }
}

impl WindowCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedWindow> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Become the only user of the window (earlier claims fail from now on).
    pub fn claim(&self) -> WindowClaim {
        let mut c = self.lock();
        c.owner += 1;
        WindowClaim {
            cache: self.clone(),
            token: c.owner,
        }
    }
}

/// One actor's use of a [`WindowCache`].
#[derive(Clone)]
pub struct WindowClaim {
    cache: WindowCache,
    token: u64,
}

/// A newer transformer of the same partition claimed the window.
#[derive(Debug, thiserror::Error)]
#[error("superseded by a newer transformer of this partition")]
pub struct Superseded;

impl WindowClaim {
    fn owned(&self) -> Result<std::sync::MutexGuard<'_, CachedWindow>, Superseded> {
        let c = self.cache.lock();
        if c.owner == self.token {
            Ok(c)
        } else {
            Err(Superseded)
        }
    }

    pub fn is_valid_at(&self, next_sequence: i64) -> bool {
        self.owned()
            .is_ok_and(|c| c.window.is_some() && c.valid_at == Some(next_sequence))
    }

    fn reset(&self, window: DedupeWindow, next_sequence: i64) -> Result<(), Superseded> {
        let mut c = self.owned()?;
        c.window = Some(window);
        c.valid_at = Some(next_sequence);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.owned()
            .map_or(0, |c| c.window.as_ref().map_or(0, DedupeWindow::len))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mark_valid_at(&self, next_sequence: i64) -> Result<(), Superseded> {
        self.owned()?.valid_at = Some(next_sequence);
        Ok(())
    }

    /// [`DedupeWindow::filter_inputs`]; the window is stale until the next commit.
    fn filter_inputs<'a>(
        &self,
        inputs: Vec<CurateInput<'a>>,
    ) -> Result<Vec<CurateInput<'a>>, Superseded> {
        let mut c = self.owned()?;
        c.valid_at = None;
        Ok(match c.window.as_mut() {
            Some(w) => w.filter_inputs(inputs),
            None => inputs,
        })
    }
}

/// Remembers the (id, payload) keys of the last `capacity` records.
pub struct DedupeWindow {
    capacity: usize,
    order: VecDeque<u128>,
    keys: HashSet<u128>,
}

impl DedupeWindow {
    pub fn new(capacity: usize) -> Self {
        DedupeWindow {
            capacity,
            order: VecDeque::new(),
            keys: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn key(source: &str, id: &str, payload: &[u8]) -> u128 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(source.as_bytes());
        hasher.update(&[0xff]);
        hasher.update(id.as_bytes());
        hasher.update(&[0xff]);
        hasher.update(payload);
        hasher.digest128()
    }

    /// Remember a record of `source`; false if it was already remembered.
    /// Two sources' records never collide, even with the same id and
    /// payload (two tables fed from one API).
    pub fn insert(&mut self, source: &str, id: &str, payload: &[u8]) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = Self::key(source, id, payload);
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// Keep the records not seen before, remembering them.
    pub fn filter(&mut self, mut batch: RawBatch) -> RawBatch {
        batch
            .records
            .retain(|r| self.insert(&r.source, &r.id, &r.payload));
        batch
    }

    /// [`DedupeWindow::filter`] over borrowed records.
    pub fn filter_inputs<'a>(&mut self, mut inputs: Vec<CurateInput<'a>>) -> Vec<CurateInput<'a>> {
        inputs.retain(|r| self.insert(r.source, r.id, r.payload));
        inputs
    }
}

/// Replay the ids of the raw blobs just before `next_sequence`, so duplicates
/// that straddle a restart are still recognised.
async fn rebuild_window(
    params: &TransformerParams,
    next_sequence: i64,
) -> anyhow::Result<DedupeWindow> {
    let mut window = DedupeWindow::new(params.dedupe_window);
    if params.dedupe_window == 0 || next_sequence == 0 {
        return Ok(window);
    }
    let prefix = RawBlobName::partition_prefix(&params.ingest_hub, params.partition);
    let names: Vec<RawBlobName> = params
        .raw
        .list(&params.raw_container, &prefix)
        .await?
        .into_iter()
        .filter_map(|p| RawBlobName::parse(&p.name))
        .filter(|n| n.last_seq < next_sequence)
        .collect();
    let mut covered = 0usize;
    let mut start = names.len();
    while start > 0 && covered < params.dedupe_window {
        start -= 1;
        covered += (names[start].last_seq - names[start].first_seq + 1) as usize;
    }
    let mut buf = raw::RawBuf::default();
    for name in &names[start..] {
        let (bytes, _) = params
            .raw
            .get(&params.raw_container, &name.to_name())
            .await?;
        let (w, b, result) = tokio::task::spawn_blocking(move || {
            let result = raw::decode_into(&bytes, &mut buf).map(|batch| {
                for r in batch.records.iter() {
                    window.insert(r.source.as_str(), r.id.as_str(), r.payload.as_slice());
                }
            });
            (window, buf, result)
        })
        .await?;
        (window, buf) = (w, b);
        // It will be quarantined if it is ever transformed; here it is only history.
        if let Err(error) = result {
            warn!(blob = name.to_name(), %error, "skipping unreadable blob in dedupe replay")
        }
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::RawRecord;
    use crate::ports::memory::MemoryBlobStore;
    use bytes::Bytes;

    fn record(i: i64, seq: i64) -> RawRecord {
        RawRecord {
            id: format!("evt-{i}"),
            source: "demo".into(),
            sequence_number: seq,
            offset: seq.to_string(),
            enqueued_time_ms: 1_767_225_600_000 + seq,
            fetched_time_ms: 1_767_225_600_000,
            payload: format!(r#"{{"id":"evt-{i}","n":{i},"user":{{"name":"u{i}"}}}}"#).into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn landing_again_rewrites_files_and_keeps_existing_dead_letters() {
        let blobs = Arc::new(MemoryBlobStore::new());
        for c in ["curated", "state", "dlq"] {
            blobs.create_container(c).await.unwrap();
        }
        let good = record(1, 0);
        let mut bad = record(2, 1);
        bad.payload = Bytes::from_static(b"{\"id\": \"evt-2\", broken");
        let raw = RawBatch {
            hub: "ingest".into(),
            partition: 0,
            first_seq: 0,
            last_seq: 1,
            created_ms: 0,
            records: vec![good, bad],
        };
        let inputs = CurateInput::from_raw(&raw);
        let batch = curate_batch(
            &inputs,
            "raw/blob",
            "stem",
            &BTreeMap::new(),
            &CurateOptions::default(),
            &CurateTransform::identity(),
        )
        .unwrap();
        assert_eq!(batch.output.rejected.len(), 1);
        let registry = StateStore::new(blobs.clone(), "state");
        let landing = Landing {
            registry: &registry,
            curated: blobs.as_ref(),
            curated_container: "curated",
            dead_letters: blobs.as_ref(),
            dead_letter_container: "dlq",
        };
        let mut known = KnownSchemas::default();
        landing
            .land(&mut known, "blob", "stem", &batch)
            .await
            .unwrap();
        let info = format!("{TRANSFORM_STAGE}/stem-000000.json");
        let (body, _) = blobs
            .get("dlq", &format!("{TRANSFORM_STAGE}/stem-000000.body"))
            .await
            .unwrap();
        assert_eq!(&body[..], &b"{\"id\": \"evt-2\", broken"[..]);
        // An operator marks it (a redrive); landing again must keep that.
        let marked = Bytes::from_static(b"{\"redriven\": true}");
        blobs
            .put("dlq", &info, marked.clone(), PutCondition::None)
            .await
            .unwrap();
        let mut known = KnownSchemas::default();
        landing
            .land(&mut known, "blob", "stem", &batch)
            .await
            .unwrap();
        assert_eq!(blobs.get("dlq", &info).await.unwrap().0, marked);
        let files = blobs.list("curated", "").await.unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    struct Fixture {
        blobs: Arc<MemoryBlobStore>,
        board: WakeBoard,
    }

    impl Fixture {
        async fn new() -> Self {
            let blobs = Arc::new(MemoryBlobStore::new());
            for c in ["raw", "curated", "state", "dlq"] {
                blobs.create_container(c).await.unwrap();
            }
            Fixture {
                blobs,
                board: WakeBoard::default(),
            }
        }

        fn params(&self) -> TransformerParams {
            TransformerParams {
                ingest_hub: "ingest".into(),
                partition: 1,
                raw: self.blobs.clone(),
                raw_container: "raw".into(),
                curated: self.blobs.clone(),
                curated_container: "curated".into(),
                state: StateStore::new(self.blobs.clone(), "state"),
                board: self.board.clone(),
                dead_letters: self.blobs.clone(),
                dead_letter_container: "dlq".into(),
                options: CurateOptions::default(),
                dedupe_window: 1000,
                poll_wait: Duration::from_millis(20),
                transform: CurateTransform::identity(),
                window_cache: WindowCache::default(),
                curate_slots: CurateSlots::new(2),
                probe: ActorProbe::default(),
            }
        }

        /// Land a blob of records `ids` at `first_seq..`, like the writer.
        async fn land(&self, first_seq: i64, ids: &[i64]) -> RawBlobName {
            let records: Vec<RawRecord> = ids
                .iter()
                .enumerate()
                .map(|(k, i)| record(*i, first_seq + k as i64))
                .collect();
            let name = RawBlobName {
                hub: "ingest".into(),
                partition: 1,
                first_seq,
                last_seq: first_seq + ids.len() as i64 - 1,
            };
            let batch = RawBatch {
                hub: "ingest".into(),
                partition: 1,
                first_seq,
                last_seq: name.last_seq,
                created_ms: 0,
                records,
            };
            self.put_raw(&name, Bytes::from(raw::encode(&batch, 1).unwrap()))
                .await;
            name
        }

        async fn put_raw(&self, name: &RawBlobName, data: Bytes) {
            self.blobs
                .put("raw", &name.to_name(), data, PutCondition::None)
                .await
                .unwrap();
            self.board.wake(1);
        }

        async fn checkpoint(&self) -> i64 {
            StateStore::new(self.blobs.clone(), "state")
                .load::<TransformCheckpoint>(&checkpoint_name("ingest", 1))
                .await
                .unwrap()
                .map(|v| v.value.next_sequence)
                .unwrap_or(0)
        }

        async fn wait_for_checkpoint(&self, want: i64) {
            for _ in 0..500 {
                if self.checkpoint().await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "checkpoint never reached {want}, at {}",
                self.checkpoint().await
            );
        }

        fn curated_rows(&self) -> Vec<String> {
            self.blobs.names("curated")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transforms_landed_blobs_and_recovers_missed_ones() {
        let f = Fixture::new().await;
        // Landed before the transformer existed: found by recovery.
        f.land(0, &[0, 1, 2]).await;
        let (actor, handle) = Actor::spawn(None, Transformer, f.params()).await.unwrap();
        f.wait_for_checkpoint(3).await;
        f.land(3, &[3, 4]).await;
        f.wait_for_checkpoint(5).await;
        let files = f.curated_rows();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(
            files
                .iter()
                .all(|n| n.starts_with("demo/date=2026-01-01/hour=00/"))
        );
        let registry = f.blobs.names("state");
        assert!(
            registry.contains(&"schemas/demo".to_string()),
            "{registry:?}"
        );
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_across_a_restart_are_dropped() {
        let f = Fixture::new().await;
        f.land(0, &[0, 1, 2]).await;
        let (actor, handle) = Actor::spawn(None, Transformer, f.params()).await.unwrap();
        f.wait_for_checkpoint(3).await;
        actor.stop(None);
        handle.await.unwrap();
        // A fetcher restart re-sent records 1 and 2 after 3.
        f.land(3, &[1, 2, 3]).await;
        let probe = ActorProbe::default();
        let mut params = f.params();
        params.probe = probe.clone();
        let (actor, handle) = Actor::spawn(None, Transformer, params).await.unwrap();
        f.wait_for_checkpoint(6).await;
        let status: TransformerStatus = serde_json::from_value(probe.state()).unwrap();
        assert_eq!(status.duplicates_dropped, 2);
        assert_eq!(status.rows, 1);
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_corrupt_blob_is_quarantined_and_the_chain_goes_on() {
        let f = Fixture::new().await;
        let bad = RawBlobName {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 9,
        };
        f.put_raw(
            &bad,
            Bytes::from_static(b"HFRW garbage that is not a raw blob at all....."),
        )
        .await;
        f.land(10, &[10, 11]).await;
        let (actor, handle) = Actor::spawn(None, Transformer, f.params()).await.unwrap();
        f.wait_for_checkpoint(12).await;
        let raw = f.blobs.names("raw");
        assert!(
            raw.contains(&format!("_quarantine/{}", bad.to_name())),
            "{raw:?}"
        );
        assert!(!raw.contains(&bad.to_name()));
        assert_eq!(f.curated_rows().len(), 1);
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn non_object_payloads_are_dead_lettered_once() {
        let f = Fixture::new().await;
        let mut bad = record(7, 0);
        bad.payload = bytes::Bytes::from_static(b"[not json");
        let batch = RawBatch {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 1,
            created_ms: 0,
            records: vec![bad, record(8, 1)],
        };
        let name = RawBlobName {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 1,
        };
        f.put_raw(&name, Bytes::from(raw::encode(&batch, 1).unwrap()))
            .await;
        let (actor, handle) = Actor::spawn(None, Transformer, f.params()).await.unwrap();
        f.wait_for_checkpoint(2).await;
        let dlq = f.blobs.names("dlq");
        assert_eq!(dlq.len(), 2, "{dlq:?}");
        let (body, _) = f
            .blobs
            .get("dlq", dlq.iter().find(|n| n.ends_with(".body")).unwrap())
            .await
            .unwrap();
        assert_eq!(body, "[not json");
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_blobs_from_a_killed_writer_are_read_once() {
        let f = Fixture::new().await;
        // The new writer landed [0..2] then [3..7]; the killed one's put of
        // [0..4] arrived late. Every sequence number must come out once.
        f.land(0, &[0, 1, 2]).await;
        f.land(0, &[0, 1, 2, 3, 4]).await;
        f.land(3, &[3, 4, 5, 6, 7]).await;
        let probe = ActorProbe::default();
        let mut params = f.params();
        params.probe = probe.clone();
        params.dedupe_window = 0;
        let (actor, handle) = Actor::spawn(None, Transformer, params).await.unwrap();
        f.wait_for_checkpoint(8).await;
        let status: TransformerStatus = serde_json::from_value(probe.state()).unwrap();
        assert_eq!((status.rows, status.blobs), (8, 2));
        actor.stop(None);
        handle.await.unwrap();
    }

    #[test]
    fn checkpoints_remember_which_version_curated_which_range() {
        let cp = TransformCheckpoint::default()
            .advanced(10, "identity", 1)
            .advanced(25, "identity", 2)
            .advanced(25, "v2", 3) // nothing new: no empty range
            .advanced(40, "v2", 4)
            .advanced(50, "identity", 5);
        let got: Vec<_> = cp
            .versions
            .iter()
            .map(|r| (r.version.as_str(), r.from_sequence, r.to_sequence))
            .collect();
        assert_eq!(
            got,
            [("identity", 0, 25), ("v2", 25, 40), ("identity", 40, 50)]
        );
        assert_eq!(
            (
                cp.next_sequence,
                cp.versions[1].from_ms,
                cp.versions[1].to_ms
            ),
            (50, 4, 4)
        );
        // Old checkpoints (no ranges) still read; the list is bounded.
        let old: TransformCheckpoint =
            serde_json::from_str(r#"{"next_sequence":7,"updated_ms":1}"#).unwrap();
        let mut cp = old;
        for i in 0..(MAX_VERSION_RANGES as i64 + 5) {
            cp = cp.advanced(cp.next_sequence + 1, if i % 2 == 0 { "a" } else { "b" }, i);
        }
        assert_eq!(cp.versions.len(), MAX_VERSION_RANGES);
        assert_eq!(cp.versions.last().unwrap().to_sequence, cp.next_sequence);
    }

    #[test]
    fn window_forgets_the_oldest() {
        let mut w = DedupeWindow::new(2);
        assert!(w.insert("s", "a", b"1"));
        assert!(!w.insert("s", "a", b"1"));
        assert!(w.insert("s", "a", b"2"), "an update is not a duplicate");
        assert!(w.insert("s", "b", b"1"));
        assert!(w.insert("s", "a", b"1"), "evicted");
        let mut w = DedupeWindow::new(8);
        assert!(w.insert("orders", "1", b"{}"));
        assert!(w.insert("refunds", "1", b"{}"), "another source's record");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_cached_window_is_reused_only_when_exact_and_fences_older_claims() {
        let cache = WindowCache::default();
        let first = cache.claim();
        assert!(!first.is_valid_at(0), "nothing cached yet");
        first.reset(DedupeWindow::new(10), 0).unwrap();
        assert!(first.is_valid_at(0));
        assert!(!first.is_valid_at(5));
        let batch = RawBatch {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 1,
            created_ms: 0,
            records: (0..2)
                .map(|i| RawRecord {
                    id: format!("r{i}"),
                    source: "s".into(),
                    sequence_number: i,
                    offset: i.to_string(),
                    enqueued_time_ms: 0,
                    fetched_time_ms: 0,
                    payload: bytes::Bytes::from_static(b"{}"),
                })
                .collect(),
        };
        let inputs = CurateInput::from_raw(&batch);
        assert_eq!(first.filter_inputs(inputs.clone()).unwrap().len(), 2);
        // Filtered but not committed (a crash here): stale, so rebuilt.
        assert!(!first.is_valid_at(0) && !first.is_valid_at(2));
        first.mark_valid_at(2).unwrap();
        let second = cache.claim();
        assert!(second.is_valid_at(2), "a restart reuses it");
        // The first actor, still winding down, can no longer touch it.
        assert!(first.filter_inputs(inputs.clone()).is_err());
        assert!(first.mark_valid_at(4).is_err());
        assert_eq!(second.filter_inputs(inputs).unwrap().len(), 0, "remembered");
        assert_eq!(second.len(), 2);
    }
}
