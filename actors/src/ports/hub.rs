//! The hub port, shaped after Azure Event Hubs.
//!
//! A hub has a fixed number of partitions. Each partition is an append-only
//! log addressed by a per-partition sequence number (monotonic, starting at 0)
//! and an opaque offset string. Readers open a receiver at a position and pull
//! bounded batches from it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Errors a hub can report. Callers match on these.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub {hub}: partition {partition} does not exist")]
    NoSuchPartition { hub: String, partition: u32 },
    #[error("hub {hub}: batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        hub: String,
        size: usize,
        limit: usize,
    },
    /// Worth retrying (throttling, a dropped link, a busy database).
    #[error("hub {hub}: transient error: {message}")]
    Transient { hub: String, message: String },
    #[error("hub {hub}: {message}")]
    Other { hub: String, message: String },
}

impl HubError {
    pub fn is_transient(&self) -> bool {
        matches!(self, HubError::Transient { .. })
    }
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    pub body: Bytes,
    pub properties: BTreeMap<String, String>,
}

impl EventData {
    pub fn new(body: impl Into<Bytes>) -> Self {
        EventData {
            body: body.into(),
            properties: BTreeMap::new(),
        }
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }
}

/// An event read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    pub partition: u32,
    pub sequence_number: i64,
    pub offset: String,
    /// Milliseconds since the Unix epoch, assigned by the hub.
    pub enqueued_time_ms: i64,
    pub body: Bytes,
    pub properties: BTreeMap<String, String>,
}

/// Where a receiver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StartPosition {
    Earliest,
    Latest,
    /// The event with this sequence number (inclusive) or the one after it.
    SequenceNumber {
        value: i64,
        inclusive: bool,
    },
}

impl StartPosition {
    /// The position just after `seq`, the usual resume point after a checkpoint.
    pub fn after(seq: i64) -> Self {
        StartPosition::SequenceNumber {
            value: seq,
            inclusive: false,
        }
    }
}

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    Partition(u32),
    /// The hub hashes the key to pick a partition.
    PartitionKey(String),
}

/// Publishes a hub did not make, handed back with the reason (see
/// [`Hub::publish_many`]).
#[derive(Debug)]
pub struct Unpublished {
    pub error: HubError,
    /// The batch that failed first, then every batch after it, in order.
    pub batches: Vec<(PublishTarget, Vec<EventData>)>,
}

/// Publishes `batches` in order with `publish`, which hands each batch back
/// with its result; at the first failure, that batch and every later one
/// come back in [`Unpublished`]. The loop of every [`Hub::publish_many`]
/// that sends batch by batch.
pub async fn publish_in_order<F, Fut>(
    batches: Vec<(PublishTarget, Vec<EventData>)>,
    mut publish: F,
) -> Result<(), Unpublished>
where
    F: FnMut(PublishTarget, Vec<EventData>) -> Fut,
    Fut: std::future::Future<Output = (Result<(), HubError>, PublishTarget, Vec<EventData>)>,
{
    let mut rest = batches.into_iter();
    while let Some((target, events)) = rest.next() {
        if let (Err(error), target, events) = publish(target, events).await {
            let mut batches = vec![(target, events)];
            batches.extend(rest);
            return Err(Unpublished { error, batches });
        }
    }
    Ok(())
}

/// What a partition holds now; used for lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProperties {
    pub partition: u32,
    /// First sequence number still retained.
    pub beginning_sequence_number: i64,
    /// Last sequence number enqueued, or -1 when the partition has never held an event.
    pub last_enqueued_sequence_number: i64,
    pub last_enqueued_time_ms: Option<i64>,
    pub is_empty: bool,
}

/// A pull-style reader on one partition.
#[async_trait]
pub trait PartitionReceiver: Send {
    /// Up to `max_events` events after the previous batch. Waits at most
    /// `max_wait` for the first event, then returns what it has (possibly none).
    async fn receive(
        &mut self,
        max_events: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReceivedEvent>, HubError>;
}

#[async_trait]
pub trait Hub: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// The fixed partition ids, `0..n`.
    async fn partition_ids(&self) -> Result<Vec<u32>, HubError>;

    /// Publish a batch atomically: either every event is appended or none is.
    async fn publish(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError>;

    /// Publish several batches in order, each atomic on its own, made
    /// durable together where the hub can (the embedded hub: one
    /// transaction, one fsync for all of them). On failure the batches
    /// before the failed one are in the hub and the rest come back in
    /// [`Unpublished`], so the caller can split or retry them without
    /// having kept a copy. The default publishes one by one (and copies
    /// each batch to be able to hand it back).
    async fn publish_many(
        &self,
        batches: Vec<(PublishTarget, Vec<EventData>)>,
    ) -> Result<(), Unpublished> {
        publish_in_order(batches, |target, events| async move {
            let result = self.publish(target.clone(), events.clone()).await;
            (result, target, events)
        })
        .await
    }

    async fn open_receiver(
        &self,
        consumer_group: &str,
        partition: u32,
        from: StartPosition,
    ) -> Result<Box<dyn PartitionReceiver>, HubError>;

    async fn partition_properties(&self, partition: u32) -> Result<PartitionProperties, HubError>;
}

/// The partition a key maps to, stable across processes and versions.
///
/// Used by publishers that group events per partition themselves (one send per
/// partition instead of one per key), so events with the same record id always
/// meet in the same partition.
pub fn partition_for_key(key: &str, partition_count: u32) -> u32 {
    let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    (hash % u64::from(partition_count.max(1))) as u32
}
