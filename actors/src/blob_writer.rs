//! The blob-writer of one ingest partition: turns a batch of hub events into a
//! raw blob, then moves the partition checkpoint, then announces the blob on
//! hub "landed".
//!
//! Effects, in order, per batch:
//! 1. put `raw/<hub>/p<partition>/<first>-<last>.hfr` (same range, same name);
//! 2. compare-and-swap the checkpoint (the etag fences a stale owner);
//! 3. publish a [`LandedEvent`].
//!
//! On start the writer loads the checkpoint and walks the raw chain forward
//! from it: a blob that was written but not checkpointed before a crash is
//! found by name, the checkpoint is fast-forwarded past it and its landed
//! event re-sent, so batch boundaries after a restart never overlap a blob
//! that already exists.

use std::sync::Arc;

use bytes::Bytes;
use hubflow_supervision::{ActorProbe, ExitReason};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::formats::raw::{self, RawBatch, RawRecord};
use crate::now_ms;
use crate::ports::{
    BlobStore, ETag, EventData, Hub, PublishTarget, PutCondition, ReceivedEvent, StateStore,
    checkpoint_name,
};
use crate::record::{LandedEvent, PROP_FETCHED_MS, PROP_ID, PROP_SOURCE, RawBlobName};

#[derive(Debug)]
pub enum WriterMsg {
    /// Land a batch; replies with the next sequence number to read.
    Write(Vec<ReceivedEvent>, RpcReplyPort<Result<i64, String>>),
    /// The sequence number the consumer should start reading at.
    ResumePoint(RpcReplyPort<i64>),
}

#[derive(Clone)]
pub struct WriterParams {
    /// Namespace of checkpoint records (the Event Hubs namespace, or "local").
    pub namespace: String,
    pub ingest_hub: String,
    pub consumer_group: String,
    pub partition: u32,
    pub raw: Arc<dyn BlobStore>,
    pub raw_container: String,
    pub state: StateStore,
    pub landed: Arc<dyn Hub>,
    /// Publish a [`LandedEvent`] per blob. Off when Event Grid delivers
    /// BlobCreated events to hub "landed" instead (see [`crate::notices`]).
    pub announce: bool,
    pub zstd_level: i32,
    pub probe: ActorProbe,
}

/// The partition checkpoint record, as the Event Hubs processor keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last sequence number that is durably in a raw blob (-1: none yet).
    pub sequence_number: i64,
    pub offset: Option<String>,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    pub partition: u32,
    /// Next sequence number to land.
    pub next_sequence: i64,
    pub blobs_written: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    pub last_blob: Option<String>,
    pub last_error: Option<String>,
}

pub struct WriterState {
    params: WriterParams,
    checkpoint: Checkpoint,
    etag: Option<ETag>,
    landed_partitions: u32,
    status: WriterStatus,
}

pub struct BlobWriter;

impl Actor for BlobWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterParams;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        params: WriterParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = checkpoint_name(
            &params.namespace,
            &params.ingest_hub,
            &params.consumer_group,
            params.partition,
        );
        let (checkpoint, etag) = match params.state.load::<Checkpoint>(&name).await? {
            Some(v) => (v.value, Some(v.etag)),
            None => (
                Checkpoint {
                    sequence_number: -1,
                    ..Default::default()
                },
                None,
            ),
        };
        let landed_partitions = params.landed.partition_ids().await?.len().max(1) as u32;
        let mut state = WriterState {
            status: WriterStatus {
                partition: params.partition,
                next_sequence: checkpoint.sequence_number + 1,
                ..Default::default()
            },
            params,
            checkpoint,
            etag,
            landed_partitions,
        };
        recover_chain(&mut state).await?;
        info!(
            partition = state.params.partition,
            next_sequence = state.status.next_sequence,
            "blob writer ready"
        );
        state.params.probe.publish(&state.status);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::ResumePoint(reply) => {
                let _ = reply.send(state.status.next_sequence);
            }
            WriterMsg::Write(events, reply) => {
                state.params.probe.set_busy(true);
                let result = write_batch(state, events).await;
                state.params.probe.set_busy(false);
                match result {
                    Ok(next) => {
                        state.params.probe.tick();
                        let _ = reply.send(Ok(next));
                    }
                    Err(error) => {
                        let message = format!("{error:#}");
                        state.status.last_error = Some(message.clone());
                        state.params.probe.publish(&state.status);
                        let _ = reply.send(Err(message.clone()));
                        // Our view of the checkpoint may be stale now: restart
                        // from the store rather than guess.
                        state.params.probe.set_exit(ExitReason::Failed(message));
                        return Err(error.into());
                    }
                }
            }
        }
        state.params.probe.publish(&state.status);
        Ok(())
    }
}

/// Fast-forward past raw blobs that exist beyond the checkpoint.
async fn recover_chain(state: &mut WriterState) -> anyhow::Result<()> {
    let p = &state.params;
    let mut recovered = Vec::new();
    loop {
        let prefix =
            RawBlobName::starting_at_prefix(&p.ingest_hub, p.partition, state.status.next_sequence);
        let found = p.raw.list(&p.raw_container, &prefix).await?;
        let Some((name, size)) = found
            .iter()
            .filter_map(|b| RawBlobName::parse(&b.name).map(|n| (n, b.size)))
            .max_by_key(|(n, _)| n.last_seq)
        else {
            break;
        };
        state.status.next_sequence = name.last_seq + 1;
        recovered.push((name, size));
    }
    if recovered.is_empty() {
        return Ok(());
    }
    warn!(
        partition = p.partition,
        blobs = recovered.len(),
        next_sequence = state.status.next_sequence,
        "raw blobs beyond the checkpoint found; fast-forwarding"
    );
    state.checkpoint.sequence_number = state.status.next_sequence - 1;
    state.checkpoint.offset = None;
    commit_checkpoint(state).await?;
    for (name, size) in recovered {
        announce(state, &name, 0, size).await?;
    }
    Ok(())
}

/// One raw blob written, checkpointed and announced: the `raw.write` span
/// names the partition, the sequence range and the blob.
#[tracing::instrument(name = "raw.write", skip_all, fields(
    partition = state.params.partition,
    first_seq = tracing::field::Empty,
    last_seq = tracing::field::Empty,
    blob = tracing::field::Empty,
    records = tracing::field::Empty,
    bytes = tracing::field::Empty,
))]
async fn write_batch(state: &mut WriterState, events: Vec<ReceivedEvent>) -> anyhow::Result<i64> {
    // Events below the resume point were landed already (a consumer re-read);
    // drop them so the new blob starts exactly where the chain continues.
    let expected = state.status.next_sequence;
    let events: Vec<ReceivedEvent> = events
        .into_iter()
        .filter(|e| e.sequence_number >= expected)
        .collect();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(expected);
    };
    if first.sequence_number != expected {
        // Retention removed events we never read: land what exists and say so.
        warn!(
            partition = state.params.partition,
            expected,
            got = first.sequence_number,
            "gap in partition sequence numbers (expired by retention?)"
        );
        metrics::counter!("hubflow_writer_sequence_gaps_total").increment(1);
    }
    let name = RawBlobName {
        hub: state.params.ingest_hub.clone(),
        partition: state.params.partition,
        first_seq: first.sequence_number,
        last_seq: last.sequence_number,
    };
    let last_offset = last.offset.clone();
    let batch = RawBatch {
        hub: name.hub.clone(),
        partition: name.partition,
        first_seq: name.first_seq,
        last_seq: name.last_seq,
        created_ms: now_ms(),
        records: events.into_iter().map(to_raw_record).collect(),
    };
    let records = batch.records.len() as u64;
    let level = state.params.zstd_level;
    let encoded = tokio::task::spawn_blocking(move || raw::encode(&batch, level)).await??;
    let size = encoded.len() as u64;
    let blob = name.to_name();
    let span = tracing::Span::current();
    span.record("first_seq", name.first_seq);
    span.record("last_seq", name.last_seq);
    span.record("blob", blob.as_str());
    span.record("records", records);
    span.record("bytes", size);
    state
        .params
        .raw
        .put(
            &state.params.raw_container,
            &blob,
            Bytes::from(encoded),
            PutCondition::None,
        )
        .await?;
    state.checkpoint.sequence_number = name.last_seq;
    state.checkpoint.offset = Some(last_offset);
    commit_checkpoint(state).await?;
    state.status.next_sequence = name.last_seq + 1;
    announce(state, &name, records, size).await?;

    state.status.blobs_written += 1;
    state.status.records_written += records;
    state.status.bytes_written += size;
    state.status.last_blob = Some(blob);
    state.status.last_error = None;
    let partition = state.params.partition.to_string();
    metrics::counter!("hubflow_writer_blobs_total", "partition" => partition.clone()).increment(1);
    metrics::counter!("hubflow_writer_records_total", "partition" => partition.clone())
        .increment(records);
    metrics::counter!("hubflow_writer_bytes_total", "partition" => partition).increment(size);
    debug!(
        partition = state.params.partition,
        records, size, "raw blob landed"
    );
    Ok(state.status.next_sequence)
}

fn to_raw_record(mut event: ReceivedEvent) -> RawRecord {
    let id = event
        .properties
        .remove(PROP_ID)
        .unwrap_or_else(|| format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&event.body)));
    let source = event
        .properties
        .remove(PROP_SOURCE)
        .unwrap_or_else(|| "unknown".to_string());
    let fetched_time_ms = event
        .properties
        .get(PROP_FETCHED_MS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(event.enqueued_time_ms);
    RawRecord {
        id,
        source,
        sequence_number: event.sequence_number,
        offset: event.offset,
        enqueued_time_ms: event.enqueued_time_ms,
        fetched_time_ms,
        payload: event.body,
    }
}

async fn commit_checkpoint(state: &mut WriterState) -> anyhow::Result<()> {
    let p = &state.params;
    let name = checkpoint_name(&p.namespace, &p.ingest_hub, &p.consumer_group, p.partition);
    state.checkpoint.updated_ms = now_ms();
    let etag = p
        .state
        .compare_and_swap(&name, &state.checkpoint, state.etag.as_ref())
        .await?;
    state.etag = Some(etag);
    Ok(())
}

async fn announce(
    state: &WriterState,
    name: &RawBlobName,
    records: u64,
    bytes: u64,
) -> anyhow::Result<()> {
    if !state.params.announce {
        return Ok(());
    }
    let event = LandedEvent {
        container: state.params.raw_container.clone(),
        blob: name.to_name(),
        records,
        bytes,
    };
    let body = serde_json::to_vec(&event)?;
    let target = PublishTarget::Partition(name.partition % state.landed_partitions);
    state
        .params
        .landed
        .publish(target, vec![EventData::new(body)])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::StartPosition;
    use crate::ports::memory::{MemoryBlobStore, MemoryHub};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn event(seq: i64) -> ReceivedEvent {
        ReceivedEvent {
            partition: 1,
            sequence_number: seq,
            offset: seq.to_string(),
            enqueued_time_ms: 1_700_000_000_000 + seq,
            body: Bytes::from(format!("{{\"n\":{seq}}}")),
            properties: BTreeMap::from([
                (PROP_ID.to_string(), format!("id-{seq}")),
                (PROP_SOURCE.to_string(), "orders".to_string()),
            ]),
        }
    }

    struct Fixture {
        blobs: Arc<MemoryBlobStore>,
        landed: Arc<MemoryHub>,
    }

    impl Fixture {
        async fn new() -> Self {
            let blobs = Arc::new(MemoryBlobStore::new());
            blobs.create_container("raw").await.unwrap();
            blobs.create_container("state").await.unwrap();
            Fixture {
                blobs,
                landed: Arc::new(MemoryHub::new("landed", 2)),
            }
        }

        fn params(&self) -> WriterParams {
            WriterParams {
                namespace: "local".into(),
                ingest_hub: "ingest".into(),
                consumer_group: "$default".into(),
                partition: 1,
                raw: self.blobs.clone(),
                raw_container: "raw".into(),
                state: StateStore::new(self.blobs.clone(), "state"),
                landed: self.landed.clone(),
                announce: true,
                zstd_level: 1,
                probe: ActorProbe::new(),
            }
        }

        async fn landed_blobs(&self) -> Vec<String> {
            let mut rx = self
                .landed
                .open_receiver("t", 1, StartPosition::Earliest)
                .await
                .unwrap();
            let events = rx.receive(100, Duration::from_millis(1)).await.unwrap();
            events
                .iter()
                .map(|e| serde_json::from_slice::<LandedEvent>(&e.body).unwrap().blob)
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_blob_then_checkpoint_then_landed() {
        let f = Fixture::new().await;
        let (w, h) = Actor::spawn(None, BlobWriter, f.params()).await.unwrap();
        assert_eq!(ractor::call!(w, WriterMsg::ResumePoint).unwrap(), 0);
        let next = ractor::call!(w, WriterMsg::Write, (0..10).map(event).collect())
            .unwrap()
            .unwrap();
        assert_eq!(next, 10);
        // A re-read overlapping what is landed is trimmed to the new part.
        let next = ractor::call!(w, WriterMsg::Write, (5..15).map(event).collect())
            .unwrap()
            .unwrap();
        assert_eq!(next, 15);
        w.stop(None);
        h.await.unwrap();

        let names: Vec<String> = f
            .blobs
            .list("raw", "")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(
            names,
            vec![
                "ingest/p0001/00000000000000000000-00000000000000000009.hfr",
                "ingest/p0001/00000000000000000010-00000000000000000014.hfr"
            ]
        );
        let (bytes, _) = f.blobs.get("raw", &names[1]).await.unwrap();
        let batch = raw::decode(&bytes).unwrap();
        assert_eq!(batch.records.len(), 5);
        assert_eq!(batch.records[0].id, "id-10");
        assert_eq!(batch.records[0].source, "orders");
        assert_eq!(f.landed_blobs().await, names);
        let ckpt = StateStore::new(f.blobs.clone(), "state")
            .load::<Checkpoint>(&checkpoint_name("local", "ingest", "$default", 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ckpt.value.sequence_number, 14);
    }

    #[tokio::test(start_paused = true)]
    async fn with_event_grid_announcing_the_writer_publishes_no_notice() {
        let f = Fixture::new().await;
        let params = WriterParams {
            announce: false,
            ..f.params()
        };
        let (w, h) = Actor::spawn(None, BlobWriter, params).await.unwrap();
        let next = ractor::call!(w, WriterMsg::Write, (0..10).map(event).collect())
            .unwrap()
            .unwrap();
        assert_eq!(next, 10);
        w.stop(None);
        h.await.unwrap();
        assert_eq!(f.blobs.list("raw", "").await.unwrap().len(), 1);
        assert!(f.landed_blobs().await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn restart_fast_forwards_past_uncheckpointed_blobs() {
        let f = Fixture::new().await;
        // A blob landed before a crash, with no checkpoint written.
        let name = RawBlobName {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 9,
        };
        let batch = RawBatch {
            hub: "ingest".into(),
            partition: 1,
            first_seq: 0,
            last_seq: 9,
            created_ms: 0,
            records: (0..10).map(|s| to_raw_record(event(s))).collect(),
        };
        f.blobs
            .put(
                "raw",
                &name.to_name(),
                Bytes::from(raw::encode(&batch, 1).unwrap()),
                PutCondition::None,
            )
            .await
            .unwrap();
        let (w, h) = Actor::spawn(None, BlobWriter, f.params()).await.unwrap();
        assert_eq!(ractor::call!(w, WriterMsg::ResumePoint).unwrap(), 10);
        w.stop(None);
        h.await.unwrap();
        assert_eq!(
            f.landed_blobs().await,
            vec![name.to_name()],
            "landed re-announced"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_put_fails_the_writer_and_moves_nothing() {
        let f = Fixture::new().await;
        let params = f.params();
        let probe = params.probe.clone();
        let (w, h) = Actor::spawn(None, BlobWriter, params).await.unwrap();
        f.blobs.fail_next_puts(1);
        let reply = ractor::call!(w, WriterMsg::Write, (0..3).map(event).collect()).unwrap();
        assert!(reply.is_err());
        h.await.unwrap();
        assert!(matches!(probe.take_exit(), Some(ExitReason::Failed(_))));
        assert!(f.blobs.list("raw", "").await.unwrap().is_empty());
        assert!(f.landed_blobs().await.is_empty());
    }
}
