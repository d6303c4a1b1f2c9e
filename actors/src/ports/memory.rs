//! In-memory versions of the ports, for unit tests.
//!
//! They keep the semantics of the real services (etags change on every
//! write, conditional puts conflict with the Azure status codes' meaning,
//! sequence numbers are consecutive per partition) and add knobs to inject
//! failures (`fail_next_puts`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::blob::{BlobError, BlobProperties, BlobStore, ETag, PutCondition, validate_blob_name};
use super::hub::{
    EventData, Hub, HubError, PartitionProperties, PartitionReceiver, PublishTarget, ReceivedEvent,
    StartPosition, partition_for_key,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not poison every later assertion.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- blobs --

#[derive(Clone)]
struct StoredBlob {
    data: Bytes,
    props: BlobProperties,
}

/// A blob store in a map.
#[derive(Default)]
pub struct MemoryBlobStore {
    containers: Mutex<BTreeMap<String, BTreeMap<String, StoredBlob>>>,
    generation: AtomicU64,
    failing_puts: AtomicU64,
}

impl MemoryBlobStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` puts fail with a transient error and store nothing.
    pub fn fail_next_puts(&self, n: u64) {
        self.failing_puts.store(n, Ordering::SeqCst);
    }

    /// Names of every blob in `container` (empty when it does not exist).
    pub fn names(&self, container: &str) -> Vec<String> {
        lock(&self.containers)
            .get(container)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn take_failure(&self) -> bool {
        self.failing_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn not_found(container: &str, name: &str) -> BlobError {
    BlobError::NotFound {
        container: container.to_string(),
        name: name.to_string(),
    }
}

fn no_container(container: &str) -> BlobError {
    BlobError::ContainerNotFound {
        container: container.to_string(),
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        lock(&self.containers)
            .entry(container.to_string())
            .or_default();
        Ok(())
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        validate_blob_name(name)?;
        if self.take_failure() {
            return Err(BlobError::Transient {
                container: container.to_string(),
                name: name.to_string(),
                message: "injected failure".to_string(),
            });
        }
        let mut containers = lock(&self.containers);
        let blobs = containers
            .get_mut(container)
            .ok_or_else(|| no_container(container))?;
        match (&condition, blobs.get(name)) {
            (PutCondition::IfNoneMatch, Some(_)) => {
                return Err(BlobError::AlreadyExists {
                    container: container.to_string(),
                    name: name.to_string(),
                });
            }
            (PutCondition::IfMatch(etag), Some(b)) if &b.props.etag != etag => {
                return Err(BlobError::PreconditionFailed {
                    container: container.to_string(),
                    name: name.to_string(),
                });
            }
            (PutCondition::IfMatch(_), None) => {
                return Err(BlobError::PreconditionFailed {
                    container: container.to_string(),
                    name: name.to_string(),
                });
            }
            _ => {}
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let props = BlobProperties {
            name: name.to_string(),
            etag: ETag(format!("\"m{generation}\"")),
            size: data.len() as u64,
            last_modified_ms: chrono::Utc::now().timestamp_millis(),
        };
        blobs.insert(
            name.to_string(),
            StoredBlob {
                data,
                props: props.clone(),
            },
        );
        Ok(props)
    }

    async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError> {
        let containers = lock(&self.containers);
        let blob = containers
            .get(container)
            .ok_or_else(|| no_container(container))?
            .get(name)
            .ok_or_else(|| not_found(container, name))?;
        Ok((blob.data.clone(), blob.props.clone()))
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let (data, _) = self.get(container, name).await?;
        let len = data.len() as u64;
        let start = range.start.min(len) as usize;
        let end = range.end.min(len).max(range.start.min(len)) as usize;
        Ok(data.slice(start..end))
    }

    async fn properties(&self, container: &str, name: &str) -> Result<BlobProperties, BlobError> {
        Ok(self.get(container, name).await?.1)
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobProperties>, BlobError> {
        let containers = lock(&self.containers);
        let blobs = containers
            .get(container)
            .ok_or_else(|| no_container(container))?;
        Ok(blobs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, b)| b.props.clone())
            .collect())
    }

    async fn delete(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        let mut containers = lock(&self.containers);
        let blobs = containers
            .get_mut(container)
            .ok_or_else(|| no_container(container))?;
        let blob = blobs.get(name).ok_or_else(|| not_found(container, name))?;
        if let Some(etag) = if_match
            && &blob.props.etag != etag
        {
            return Err(BlobError::PreconditionFailed {
                container: container.to_string(),
                name: name.to_string(),
            });
        }
        blobs.remove(name);
        Ok(())
    }
}

// ------------------------------------------------------------------ hub --

struct StoredEvent {
    event: ReceivedEvent,
}

struct HubState {
    partitions: Vec<Vec<StoredEvent>>,
}

/// A hub whose partitions are vectors. Receivers wait on a [`Notify`].
pub struct MemoryHub {
    name: String,
    state: Arc<Mutex<HubState>>,
    published: Arc<Notify>,
    /// Largest publish accepted, in body bytes (`None`: unlimited).
    max_batch_bytes: Option<usize>,
}

impl MemoryHub {
    fn check_size(&self, events: &[EventData]) -> Result<(), HubError> {
        if let Some(limit) = self.max_batch_bytes {
            let size = events.iter().map(|e| e.body.len()).sum::<usize>();
            if size > limit {
                return Err(HubError::BatchTooLarge {
                    hub: self.name.clone(),
                    size,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn append(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError> {
        {
            let mut state = lock(&self.state);
            let count = state.partitions.len() as u32;
            let partition = match target {
                PublishTarget::Partition(p) => p,
                PublishTarget::PartitionKey(key) => partition_for_key(&key, count),
            };
            let log = state
                .partitions
                .get_mut(partition as usize)
                .ok_or_else(|| self.no_partition(partition))?;
            let now = chrono::Utc::now().timestamp_millis();
            for event in events {
                let seq = log.len() as i64;
                log.push(StoredEvent {
                    event: ReceivedEvent {
                        partition,
                        sequence_number: seq,
                        offset: seq.to_string(),
                        enqueued_time_ms: now,
                        body: event.body,
                        properties: event.properties,
                    },
                });
            }
        }
        self.published.notify_waiters();
        Ok(())
    }

    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        MemoryHub {
            name: name.into(),
            state: Arc::new(Mutex::new(HubState {
                partitions: (0..partitions).map(|_| Vec::new()).collect(),
            })),
            published: Arc::new(Notify::new()),
            max_batch_bytes: None,
        }
    }

    /// Refuse publishes whose bodies add up to more than `limit` bytes with
    /// [`HubError::BatchTooLarge`], like a real hub's batch size limit.
    pub fn with_max_batch_bytes(mut self, limit: usize) -> Self {
        self.max_batch_bytes = Some(limit);
        self
    }

    /// Every event of a partition, in order.
    pub fn events(&self, partition: u32) -> Vec<ReceivedEvent> {
        lock(&self.state)
            .partitions
            .get(partition as usize)
            .map(|p| p.iter().map(|s| s.event.clone()).collect())
            .unwrap_or_default()
    }

    /// Events in all partitions.
    pub fn len(&self) -> usize {
        lock(&self.state).partitions.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn no_partition(&self, partition: u32) -> HubError {
        HubError::NoSuchPartition {
            hub: self.name.clone(),
            partition,
        }
    }
}

#[async_trait]
impl Hub for MemoryHub {
    fn name(&self) -> &str {
        &self.name
    }

    async fn partition_ids(&self) -> Result<Vec<u32>, HubError> {
        Ok((0..lock(&self.state).partitions.len() as u32).collect())
    }

    async fn publish(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError> {
        self.check_size(&events)?;
        self.append(target, events)
    }

    async fn open_receiver(
        &self,
        _consumer_group: &str,
        partition: u32,
        from: StartPosition,
    ) -> Result<Box<dyn PartitionReceiver>, HubError> {
        let state = lock(&self.state);
        let log = state
            .partitions
            .get(partition as usize)
            .ok_or_else(|| self.no_partition(partition))?;
        let next = match from {
            StartPosition::Earliest => 0,
            StartPosition::Latest => log.len() as i64,
            StartPosition::SequenceNumber { value, inclusive } => {
                if inclusive {
                    value.max(0)
                } else {
                    value.saturating_add(1).max(0)
                }
            }
        };
        Ok(Box::new(MemoryReceiver {
            state: self.state.clone(),
            published: self.published.clone(),
            partition,
            next,
        }))
    }

    async fn partition_properties(&self, partition: u32) -> Result<PartitionProperties, HubError> {
        let state = lock(&self.state);
        let log = state
            .partitions
            .get(partition as usize)
            .ok_or_else(|| self.no_partition(partition))?;
        Ok(PartitionProperties {
            partition,
            beginning_sequence_number: 0,
            last_enqueued_sequence_number: log.len() as i64 - 1,
            last_enqueued_time_ms: log.last().map(|e| e.event.enqueued_time_ms),
            is_empty: log.is_empty(),
        })
    }
}

struct MemoryReceiver {
    state: Arc<Mutex<HubState>>,
    published: Arc<Notify>,
    partition: u32,
    next: i64,
}

impl MemoryReceiver {
    fn take(&mut self, max_events: usize) -> Vec<ReceivedEvent> {
        let state = lock(&self.state);
        let log = &state.partitions[self.partition as usize];
        let start = (self.next as usize).min(log.len());
        let events: Vec<ReceivedEvent> = log[start..]
            .iter()
            .take(max_events)
            .map(|s| s.event.clone())
            .collect();
        self.next += events.len() as i64;
        events
    }
}

#[async_trait]
impl PartitionReceiver for MemoryReceiver {
    async fn receive(
        &mut self,
        max_events: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReceivedEvent>, HubError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let published = self.published.clone();
        loop {
            let notified = published.notified();
            let events = self.take(max_events);
            if !events.is_empty() {
                return Ok(events);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_puts_conflict_like_azure() {
        let store = MemoryBlobStore::new();
        store.create_container("c").await.unwrap();
        let first = store
            .put(
                "c",
                "a/b",
                Bytes::from_static(b"1"),
                PutCondition::IfNoneMatch,
            )
            .await
            .unwrap();
        let again = store
            .put(
                "c",
                "a/b",
                Bytes::from_static(b"2"),
                PutCondition::IfNoneMatch,
            )
            .await;
        assert!(matches!(again, Err(BlobError::AlreadyExists { .. })));
        let second = store
            .put(
                "c",
                "a/b",
                Bytes::from_static(b"2"),
                PutCondition::IfMatch(first.etag.clone()),
            )
            .await
            .unwrap();
        assert_ne!(first.etag, second.etag);
        let stale = store
            .put(
                "c",
                "a/b",
                Bytes::from_static(b"3"),
                PutCondition::IfMatch(first.etag),
            )
            .await;
        assert!(matches!(stale, Err(BlobError::PreconditionFailed { .. })));
        assert_eq!(store.get_range("c", "a/b", 0..10).await.unwrap(), "2");
        store.fail_next_puts(1);
        assert!(
            store
                .put("c", "x", Bytes::new(), PutCondition::None)
                .await
                .is_err()
        );
        assert!(
            store
                .put("c", "x", Bytes::new(), PutCondition::None)
                .await
                .is_ok()
        );
        assert_eq!(store.names("c"), vec!["a/b".to_string(), "x".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn receiver_waits_then_sees_new_events() {
        let hub = MemoryHub::new("h", 2);
        let mut rx = hub
            .open_receiver("cg", 1, StartPosition::Latest)
            .await
            .unwrap();
        assert!(
            rx.receive(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
        hub.publish(
            PublishTarget::Partition(1),
            vec![EventData::new("a"), EventData::new("b")],
        )
        .await
        .unwrap();
        let got = rx.receive(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].sequence_number, 0);
        let got = rx.receive(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got[0].sequence_number, 1);
        let mut from = hub
            .open_receiver("cg", 1, StartPosition::after(0))
            .await
            .unwrap();
        assert_eq!(from.receive(10, Duration::ZERO).await.unwrap()[0].body, "b");
    }
}
