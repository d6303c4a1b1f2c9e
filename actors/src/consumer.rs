//! The partition-consumer of one ingest partition: reads the hub from the
//! blob-writer's resume point and hands it bounded batches (by count, bytes
//! and age), one at a time.
//!
//! Flow control is a single credit: the consumer waits for the writer's reply
//! before reading more, so at most one batch per partition is in memory, and
//! a slow blob store slows the consumer instead of growing a queue.
//!
//! The consumer holds no durable state. If it or its writer dies, it is
//! rebuilt, asks the writer where to start, and re-reads from the hub.

use std::sync::Arc;
use std::time::Duration;

use hubflow_supervision::{ActorProbe, ExitReason};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::blob_writer::WriterMsg;
use crate::ports::{Hub, PartitionReceiver, ReceivedEvent, StartPosition};

/// When a batch is cut: full (records or bytes), old (`max_age` since its
/// first event), or idle (nothing more arrived for `idle`, so the partition
/// has caught up: waiting longer would only delay what is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub idle: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_records: 10_000,
            max_bytes: 8 * 1024 * 1024,
            max_age: Duration::from_secs(5),
            idle: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
pub enum ConsumerMsg {
    /// Read once more (sent by the consumer to itself).
    Pull,
    Pause,
    Resume,
}

/// How long a starting consumer waits for its writer's resume point.
pub const RESUME_POINT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ConsumerParams {
    pub hub: Arc<dyn Hub>,
    pub consumer_group: String,
    pub partition: u32,
    pub writer: ActorRef<WriterMsg>,
    pub limits: BatchLimits,
    /// Upper bound of one receive call; also the stop latency.
    pub max_wait: Duration,
    /// Start paused (an operator paused ingest before this restart).
    pub start_paused: bool,
    pub probe: ActorProbe,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    pub partition: u32,
    pub paused: bool,
    /// Next sequence number the consumer will hand to the writer.
    pub position: i64,
    pub pending_records: usize,
    pub pending_bytes: usize,
    pub batches: u64,
    pub records: u64,
}

pub struct ConsumerState {
    params: ConsumerParams,
    receiver: Box<dyn PartitionReceiver>,
    pending: Vec<ReceivedEvent>,
    pending_bytes: usize,
    batch_started: Option<Instant>,
    status: ConsumerStatus,
}

pub struct PartitionConsumer;

impl Actor for PartitionConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerParams;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        params: ConsumerParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Bounded: a writer stuck in a hung write must not hang our start
        // (and with it our supervisor); failing here is retried with backoff.
        let resume = ractor::call_t!(
            params.writer,
            WriterMsg::ResumePoint,
            RESUME_POINT_TIMEOUT.as_millis() as u64
        )?;
        let receiver = params
            .hub
            .open_receiver(
                &params.consumer_group,
                params.partition,
                StartPosition::SequenceNumber {
                    value: resume,
                    inclusive: true,
                },
            )
            .await?;
        info!(
            partition = params.partition,
            position = resume,
            "partition consumer started"
        );
        // A consumer always expects to complete a receive within max_wait:
        // if it stops ticking, the receiver is stuck and health kills it.
        // A paused one waits for Resume and is not busy.
        let paused = params.start_paused;
        if !paused {
            params.probe.set_busy(true);
            let _ = myself.cast(ConsumerMsg::Pull);
        }
        let status = ConsumerStatus {
            partition: params.partition,
            position: resume,
            paused,
            ..Default::default()
        };
        params.probe.publish(&status);
        Ok(ConsumerState {
            status,
            params,
            receiver,
            pending: Vec::new(),
            pending_bytes: 0,
            batch_started: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Pull => {
                if state.status.paused {
                    return Ok(());
                }
                pull(state).await?;
                state.params.probe.tick();
                let _ = myself.cast(ConsumerMsg::Pull);
            }
            ConsumerMsg::Pause => {
                state.status.paused = true;
                state.params.probe.set_busy(false);
            }
            ConsumerMsg::Resume => {
                if state.status.paused {
                    state.status.paused = false;
                    state.params.probe.set_busy(true);
                    let _ = myself.cast(ConsumerMsg::Pull);
                }
            }
        }
        state.status.pending_records = state.pending.len();
        state.status.pending_bytes = state.pending_bytes;
        state
            .params
            .probe
            .set_queue_depth(state.pending.len() as u64);
        state.params.probe.publish(&state.status);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Pending events were never landed; the next consumer re-reads them.
        state.params.probe.set_busy(false);
        Ok(())
    }
}

async fn pull(state: &mut ConsumerState) -> Result<(), ActorProcessingErr> {
    let limits = state.params.limits;
    let wait = match state.batch_started {
        Some(started) => limits
            .max_age
            .saturating_sub(started.elapsed())
            .min(limits.idle)
            .min(state.params.max_wait),
        None => state.params.max_wait,
    };
    let room = limits
        .max_records
        .saturating_sub(state.pending.len())
        .max(1);
    let events = state.receiver.receive(room, wait).await?;
    // Nothing came while a batch waited: the partition is caught up.
    let idle = events.is_empty() && !state.pending.is_empty();
    if !events.is_empty() && state.batch_started.is_none() {
        state.batch_started = Some(Instant::now());
    }
    for event in events {
        state.pending_bytes += event.body.len();
        state.pending.push(event);
    }
    let full = state.pending.len() >= limits.max_records || state.pending_bytes >= limits.max_bytes;
    let old = state
        .batch_started
        .is_some_and(|started| started.elapsed() >= limits.max_age);
    if !state.pending.is_empty() && (full || old || idle) {
        flush(state).await?;
    }
    Ok(())
}

async fn flush(state: &mut ConsumerState) -> Result<(), ActorProcessingErr> {
    let batch = std::mem::take(&mut state.pending);
    let count = batch.len() as u64;
    state.pending_bytes = 0;
    state.batch_started = None;
    // Waiting for the writer is back-pressure, not a stall of ours: the
    // writer is judged on its own progress, so a hung write kills the
    // writer (and, rest_for_one, us after it), not just us.
    state.params.probe.set_busy(false);
    let reply = ractor::call!(state.params.writer, WriterMsg::Write, batch);
    state.params.probe.set_busy(true);
    match reply {
        Ok(Ok(next)) => {
            state.status.position = next;
            state.status.batches += 1;
            state.status.records += count;
            Ok(())
        }
        Ok(Err(message)) => {
            warn!(partition = state.params.partition, error = %message, "writer failed the batch");
            state.params.probe.set_exit(ExitReason::DownstreamClosed);
            Err(message.into())
        }
        Err(error) => {
            warn!(partition = state.params.partition, %error, "writer unreachable");
            state.params.probe.set_exit(ExitReason::DownstreamClosed);
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_writer::{BlobWriter, WriterParams};
    use crate::formats::raw;
    use crate::ports::memory::{MemoryBlobStore, MemoryHub};
    use crate::ports::{BlobStore, EventData, PublishTarget, StateStore};
    use crate::record::{PROP_ID, RawBlobName};

    /// A one-partition hub "ingest" and a blob store with the "raw" and
    /// "state" containers.
    async fn stores() -> (Arc<MemoryHub>, Arc<MemoryBlobStore>) {
        let hub = Arc::new(MemoryHub::new("ingest", 1));
        let blobs = Arc::new(MemoryBlobStore::new());
        blobs.create_container("raw").await.unwrap();
        blobs.create_container("state").await.unwrap();
        (hub, blobs)
    }

    /// Batch limits with 1 MiB of bytes.
    fn limits(max_records: usize, max_age: Duration, idle: Duration) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes: 1 << 20,
            max_age,
            idle,
        }
    }

    async fn publish(hub: &MemoryHub, partition: u32, range: std::ops::Range<u32>) {
        let events = range
            .map(|i| {
                EventData::new(format!("{{\"i\":{i}}}")).with_property(PROP_ID, format!("id{i}"))
            })
            .collect();
        hub.publish(PublishTarget::Partition(partition), events)
            .await
            .unwrap();
    }

    async fn start(
        hub: Arc<MemoryHub>,
        blobs: Arc<MemoryBlobStore>,
        limits: BatchLimits,
    ) -> (ActorRef<WriterMsg>, ActorRef<ConsumerMsg>, ActorProbe) {
        start_with(hub, blobs, limits, false).await
    }

    async fn start_with(
        hub: Arc<MemoryHub>,
        blobs: Arc<MemoryBlobStore>,
        limits: BatchLimits,
        start_paused: bool,
    ) -> (ActorRef<WriterMsg>, ActorRef<ConsumerMsg>, ActorProbe) {
        let writer_params = WriterParams {
            namespace: "local".into(),
            ingest_hub: "ingest".into(),
            consumer_group: "$default".into(),
            partition: 0,
            raw: blobs.clone(),
            raw_container: "raw".into(),
            state: StateStore::new(blobs.clone(), "state"),
            landed: Arc::new(MemoryHub::new("landed", 1)),
            announce: true,
            zstd_level: 1,
            probe: ActorProbe::new(),
        };
        let (writer, _) = Actor::spawn(None, BlobWriter, writer_params).await.unwrap();
        let probe = ActorProbe::new();
        let (consumer, _) = Actor::spawn(
            None,
            PartitionConsumer,
            ConsumerParams {
                hub,
                consumer_group: "$default".into(),
                partition: 0,
                writer: writer.clone(),
                limits,
                max_wait: Duration::from_millis(200),
                start_paused,
                probe: probe.clone(),
            },
        )
        .await
        .unwrap();
        (writer, consumer, probe)
    }

    async fn raw_ranges(blobs: &MemoryBlobStore) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        for b in blobs.list("raw", "").await.unwrap() {
            let name = RawBlobName::parse(&b.name).unwrap();
            let (bytes, _) = blobs.get("raw", &b.name).await.unwrap();
            let batch = raw::decode(&bytes).unwrap();
            assert_eq!(
                batch.records.len() as i64,
                name.last_seq - name.first_seq + 1
            );
            out.push((name.first_seq, name.last_seq));
        }
        out
    }

    async fn wait_for_position(probe: &ActorProbe, position: i64) {
        for _ in 0..2000 {
            let s: ConsumerStatus = serde_json::from_value(probe.state()).unwrap_or_default();
            if s.position >= position {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("consumer never reached {position}: {:?}", probe.state());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_count_and_age() {
        let (hub, blobs) = stores().await;
        publish(&hub, 0, 0..25).await;
        let limits = limits(10, Duration::from_secs(2), Duration::from_secs(60));
        let (writer, consumer, probe) = start(hub.clone(), blobs.clone(), limits).await;
        wait_for_position(&probe, 25).await;
        assert_eq!(raw_ranges(&blobs).await, vec![(0, 9), (10, 19), (20, 24)]);
        consumer.stop(None);
        writer.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_partition_cuts_its_batch_before_max_age() {
        let (hub, blobs) = stores().await;
        publish(&hub, 0, 0..7).await;
        let limits = limits(1000, Duration::from_secs(3600), Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        let (writer, consumer, probe) = start(hub.clone(), blobs.clone(), limits).await;
        wait_for_position(&probe, 7).await;
        assert_eq!(raw_ranges(&blobs).await, vec![(0, 6)]);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cut by idleness, not age"
        );
        // Events that arrive later start a batch of their own.
        publish(&hub, 0, 7..9).await;
        wait_for_position(&probe, 9).await;
        assert_eq!(raw_ranges(&blobs).await, vec![(0, 6), (7, 8)]);
        consumer.stop(None);
        writer.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_started_paused_reads_nothing_until_resumed() {
        let (hub, blobs) = stores().await;
        publish(&hub, 0, 0..10).await;
        let limits = limits(10, Duration::from_millis(100), Duration::from_secs(60));
        let (writer, consumer, probe) = start_with(hub.clone(), blobs.clone(), limits, true).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(raw_ranges(&blobs).await.is_empty());
        assert!(!probe.is_busy(), "a paused consumer is not busy");
        consumer.cast(ConsumerMsg::Resume).unwrap();
        wait_for_position(&probe, 10).await;
        assert_eq!(raw_ranges(&blobs).await, vec![(0, 9)]);
        consumer.stop(None);
        writer.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn restarted_consumer_resumes_at_the_writer_checkpoint() {
        let (hub, blobs) = stores().await;
        publish(&hub, 0, 0..10).await;
        let limits = limits(10, Duration::from_secs(1), Duration::from_secs(60));
        let (writer, consumer, probe) = start(hub.clone(), blobs.clone(), limits).await;
        wait_for_position(&probe, 10).await;
        consumer.kill();
        writer.kill();
        publish(&hub, 0, 10..15).await;
        let (writer, consumer, probe) = start(hub.clone(), blobs.clone(), limits).await;
        wait_for_position(&probe, 15).await;
        assert_eq!(raw_ranges(&blobs).await, vec![(0, 9), (10, 14)]);
        consumer.stop(None);
        writer.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn writer_death_fails_the_consumer_as_downstream_closed() {
        let (hub, blobs) = stores().await;
        let limits = limits(2, Duration::from_secs(1), Duration::from_secs(60));
        let (writer, consumer, probe) = start(hub.clone(), blobs.clone(), limits).await;
        writer.kill();
        tokio::time::sleep(Duration::from_millis(50)).await;
        publish(&hub, 0, 0..2).await;
        for _ in 0..200 {
            if consumer.get_status() == ractor::ActorStatus::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(probe.take_exit(), Some(ExitReason::DownstreamClosed));
    }

    /// A writer that takes 50 ms per batch and records the largest batch.
    struct SlowWriter;

    impl Actor for SlowWriter {
        type Msg = WriterMsg;
        type State = Arc<std::sync::Mutex<(usize, i64)>>;
        type Arguments = Arc<std::sync::Mutex<(usize, i64)>>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            seen: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(seen)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            msg: Self::Msg,
            seen: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                WriterMsg::ResumePoint(reply) => {
                    let _ = reply.send(0);
                }
                WriterMsg::Write(events, reply) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let next = events.last().map_or(0, |e| e.sequence_number + 1);
                    {
                        let mut s = seen.lock().unwrap();
                        s.0 = s.0.max(events.len());
                        s.1 = next;
                    }
                    let _ = reply.send(Ok(next));
                }
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_writer_bounds_what_the_consumer_holds() {
        let hub = Arc::new(MemoryHub::new("ingest", 1));
        publish(&hub, 0, 0..20_000).await;
        let seen = Arc::new(std::sync::Mutex::new((0usize, 0i64)));
        let (writer, _) = Actor::spawn(None, SlowWriter, seen.clone()).await.unwrap();
        let probe = ActorProbe::new();
        let limits = limits(500, Duration::from_secs(1), Duration::from_secs(60));
        let (consumer, _) = Actor::spawn(
            None,
            PartitionConsumer,
            ConsumerParams {
                hub: hub.clone(),
                consumer_group: "$default".into(),
                partition: 0,
                writer,
                limits,
                max_wait: Duration::from_millis(200),
                start_paused: false,
                probe: probe.clone(),
            },
        )
        .await
        .unwrap();
        // Sample while the writer is the bottleneck: the consumer never holds
        // more than one batch, however far behind the writer is.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s: ConsumerStatus = serde_json::from_value(probe.state()).unwrap_or_default();
            assert!(s.pending_records <= limits.max_records, "{s:?}");
            assert!(probe.queue_depth() <= limits.max_records as u64);
        }
        wait_for_position(&probe, 20_000).await;
        let (largest, next) = *seen.lock().unwrap();
        assert!(largest <= limits.max_records, "batch of {largest}");
        assert_eq!(next, 20_000);
        consumer.stop(None);
    }
}
