//! A [`Hub`] on one SQLite file in WAL mode: a durable, partitioned event log
//! that several processes on one host can share.
//!
//! Several hubs (for example `ingest` and `landed`) can live in the same file.
//! The schema (version 2) is three tables:
//!
//! - `hubflow_hubs(id, name, partitions, created_ms)`: one row per hub; the
//!   partition count is fixed when the hub is first opened.
//! - `hubflow_partitions(hub_id, partition, last_sequence, next_offset,
//!   last_enqueued_ms)`: the per-partition counters. They survive retention,
//!   so sequence numbers never restart even when every event has expired.
//! - `hubflow_segments(hub_id, partition, first_sequence, last_sequence,
//!   first_offset, enqueued_ms, last_enqueued_ms, events)`: the log, one row
//!   per published batch (a *segment*, see [`super::segment`]), keyed by
//!   `(hub_id, partition, first_sequence)`. A row per batch instead of per
//!   event keeps SQLite's per-row work off the per-record path.
//!
//! A file of schema version 1 (one row per event in `hubflow_events`) is
//! converted to segments when it is first opened, keeping every sequence
//! number, offset and enqueued time.
//!
//! A publish is one `BEGIN IMMEDIATE` transaction: it reads the partition's
//! counters, appends the batch as a segment with consecutive sequence numbers
//! and updates the counters, so a batch is appended entirely or not at all,
//! and concurrent publishers (threads or processes) serialize on SQLite's
//! write lock (with a busy timeout) and never produce gaps or duplicates.
//! [`Hub::publish_many`] appends several batches (to several partitions) in
//! one transaction: one fsync for all of them.
//!
//! Offsets are the string form of a per-partition logical byte position: an
//! event occupies `1 + body length + encoded properties length` bytes, so
//! offsets are strictly increasing even for empty bodies. Enqueued times are
//! clamped to be non-decreasing within a partition.
//!
//! Durability: the file uses `journal_mode=WAL` with `synchronous=FULL`, so a
//! publish that returned `Ok` survives a power loss, not only a process crash
//! (`synchronous=NORMAL` would keep the database consistent but could lose
//! the last commits on power loss).
//!
//! Receivers own a read connection and poll: a receive that finds nothing
//! sleeps a short, growing interval (5 ms up to 50 ms) until `max_wait`.
//! WAL readers never block the writer. Event bodies are slices of the
//! segment read, not copies. All SQLite calls run on tokio's blocking pool.
//!
//! Retention: with a retention period, segments whose last event was
//! enqueued longer ago than that are deleted by [`SqliteHub::prune`], which
//! publish also runs every [`PRUNE_EVERY_PUBLISHES`] publishes of a handle; a
//! service may call [`SqliteHub::prune_expired`] on a timer as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use hubflow_actors::ports::{
    EventData, Hub, HubError, PartitionProperties, PartitionReceiver, PublishTarget, ReceivedEvent,
    StartPosition, Unpublished, partition_for_key,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::segment::{SegmentError, SegmentReader, SegmentWriter, encode_properties};
use tracing::{debug, info, warn};

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;
/// How long a connection waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default batch size limit, as Event Hubs Standard (1 MiB).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Publishes of one handle between two automatic retention passes.
pub const PRUNE_EVERY_PUBLISHES: u64 = 1024;
/// Segments deleted per retention transaction, so the write lock is held briefly.
const PRUNE_CHUNK: i64 = 256;
/// Events per segment when a version 1 file is converted.
const MIGRATION_SEGMENT_EVENTS: usize = 512;
/// Idle connections kept per handle.
const MAX_IDLE_CONNECTIONS: usize = 4;
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hubflow_hubs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hubflow_partitions (
    hub_id INTEGER NOT NULL REFERENCES hubflow_hubs(id),
    partition INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    last_enqueued_ms INTEGER,
    PRIMARY KEY (hub_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hubflow_segments (
    hub_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    first_sequence INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    last_enqueued_ms INTEGER NOT NULL,
    events BLOB NOT NULL,
    PRIMARY KEY (hub_id, partition, first_sequence)
);
";

/// One hub in a shared SQLite file. Cheap to clone; clones share a small
/// connection pool. Open several handles (in one or many processes) on the
/// same file to share the hub.
#[derive(Clone)]
pub struct SqliteHub {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    hub_id: i64,
    partitions: u32,
    retention: Option<Duration>,
    max_batch_bytes: usize,
    pool: Pool,
    publishes: AtomicU64,
}

/// A batch encoded as a segment, ready to append to its partition.
struct Prepared {
    partition: u32,
    events: u64,
    /// The offset just past the last event, relative to the first.
    end_offset: u64,
    data: Vec<u8>,
}

impl std::fmt::Debug for SqliteHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHub")
            .field("name", &self.inner.name)
            .field("path", &self.inner.pool.path)
            .field("partitions", &self.inner.partitions)
            .field("retention", &self.inner.retention)
            .finish()
    }
}

impl SqliteHub {
    /// Open hub `name` in the SQLite file at `path`, creating the file, the
    /// schema and the hub as needed. An existing hub must have `partitions`
    /// partitions, else this fails with [`HubError::Other`] naming both counts.
    ///
    /// Blocking (file IO, may wait for another process's write lock): call it
    /// at startup or through [`SqliteHub::open_async`].
    pub fn open(
        path: &Path,
        name: &str,
        partitions: u32,
        retention: Option<Duration>,
    ) -> Result<Self, HubError> {
        if name.is_empty() {
            return Err(other(name, "hub name must not be empty".to_string()));
        }
        if partitions == 0 || partitions > 4096 {
            return Err(other(
                name,
                format!("partition count must be 1..=4096, got {partitions}"),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                other(
                    name,
                    format!("cannot create directory {}: {e}", parent.display()),
                )
            })?;
        }
        let pool = Pool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        let hub_id = pool
            .with(|conn| ensure_hub(conn, name, partitions))
            .map_err(|e| match e {
                OpenError::Sql(e) => sql_error(name, "cannot open hub", e),
                OpenError::Mismatch { existing } => other(
                    name,
                    format!(
                        "hub exists in {} with {existing} partitions, not {partitions}",
                        path.display()
                    ),
                ),
                OpenError::NewerSchema(v) => other(
                    name,
                    format!(
                        "{} has schema version {v}, newer than this build's {SCHEMA_VERSION}",
                        path.display()
                    ),
                ),
            })?;
        info!(hub = name, path = %path.display(), partitions, "embedded hub opened");
        Ok(SqliteHub {
            inner: Arc::new(Inner {
                name: name.to_string(),
                hub_id,
                partitions,
                retention,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                pool,
                publishes: AtomicU64::new(0),
            }),
        })
    }

    /// [`SqliteHub::open`] on the blocking pool.
    pub async fn open_async(
        path: PathBuf,
        name: String,
        partitions: u32,
        retention: Option<Duration>,
    ) -> Result<Self, HubError> {
        let hub = name.clone();
        tokio::task::spawn_blocking(move || Self::open(&path, &name, partitions, retention))
            .await
            .map_err(|e| other(&hub, format!("open task failed: {e}")))?
    }

    /// Change the batch size limit (default [`DEFAULT_MAX_BATCH_BYTES`]).
    /// Call before cloning the handle.
    pub fn with_max_batch_bytes(mut self, limit: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_batch_bytes = limit;
        } else {
            warn!(
                hub = %self.inner.name,
                "max batch size not changed: the handle is already shared"
            );
        }
        self
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.inner.pool.path
    }

    pub fn retention(&self) -> Option<Duration> {
        self.inner.retention
    }

    /// Delete events enqueued before `now_ms - retention` (milliseconds since
    /// the Unix epoch). Returns how many were deleted; 0 without retention.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, HubError> {
        let Some(retention) = self.inner.retention else {
            return Ok(0);
        };
        let cutoff =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let inner = self.inner.clone();
        let deleted = self.blocking(move || inner.prune_blocking(cutoff)).await?;
        if deleted > 0 {
            metrics::counter!("hubflow_embedded_hub_pruned_events_total", "hub" => self.inner.name.clone())
                .increment(deleted);
            debug!(hub = %self.inner.name, deleted, "expired events pruned");
        }
        Ok(deleted)
    }

    /// [`SqliteHub::prune`] at the current time.
    pub async fn prune_expired(&self) -> Result<u64, HubError> {
        self.prune(now_ms()).await
    }

    /// The partition of a batch and the batch encoded as a segment; refuses
    /// a batch above the size limit.
    fn prepare(&self, target: &PublishTarget, events: &[EventData]) -> Result<Prepared, HubError> {
        let partition = match target {
            PublishTarget::Partition(p) => *p,
            PublishTarget::PartitionKey(key) => partition_for_key(key, self.inner.partitions),
        };
        self.check_partition(partition)?;
        let bytes: usize = events.iter().map(|e| e.body.len() + 64).sum();
        let mut segment = SegmentWriter::with_capacity(bytes);
        let mut size = 0usize;
        for event in events {
            let advance = segment.push(&event.body, &event.properties);
            size += usize::try_from(advance).unwrap_or(usize::MAX) - 1;
        }
        if size > self.inner.max_batch_bytes {
            return Err(HubError::BatchTooLarge {
                hub: self.inner.name.clone(),
                size,
                limit: self.inner.max_batch_bytes,
            });
        }
        Ok(Prepared {
            partition,
            events: segment.events(),
            end_offset: segment.end_offset(),
            data: segment.finish(),
        })
    }

    fn check_partition(&self, partition: u32) -> Result<(), HubError> {
        if partition < self.inner.partitions {
            Ok(())
        } else {
            Err(HubError::NoSuchPartition {
                hub: self.inner.name.clone(),
                partition,
            })
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, HubError>
    where
        F: FnOnce() -> Result<T, HubError> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| other(&self.inner.name, format!("database task failed: {e}")))?
    }
}

impl Inner {
    /// Appends each batch to its partition as a segment, all in one
    /// transaction: one fsync for the lot, each batch all or nothing with
    /// the others.
    fn publish_blocking(&self, batches: &[&Prepared]) -> Result<(), HubError> {
        self.pool
            .with(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for batch in batches {
                    let partition = batch.partition;
                    let (last_sequence, next_offset, last_ms): (i64, i64, Option<i64>) = tx
                        .query_row(
                            "SELECT last_sequence, next_offset, last_enqueued_ms
                             FROM hubflow_partitions WHERE hub_id = ?1 AND partition = ?2",
                            params![self.hub_id, partition],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                        )?;
                    let enqueued = now_ms().max(last_ms.unwrap_or(i64::MIN));
                    let events = i64::try_from(batch.events).unwrap_or(i64::MAX);
                    let first = last_sequence + 1;
                    let last = last_sequence + events;
                    let end = next_offset + i64::try_from(batch.end_offset).unwrap_or(i64::MAX);
                    tx.prepare_cached(
                        "INSERT INTO hubflow_segments
                         (hub_id, partition, first_sequence, last_sequence, first_offset,
                          enqueued_ms, last_enqueued_ms, events)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                    )?
                    .execute(params![
                        self.hub_id,
                        partition,
                        first,
                        last,
                        next_offset,
                        enqueued,
                        batch.data
                    ])?;
                    tx.prepare_cached(
                        "UPDATE hubflow_partitions
                         SET last_sequence = ?3, next_offset = ?4, last_enqueued_ms = ?5
                         WHERE hub_id = ?1 AND partition = ?2",
                    )?
                    .execute(params![
                        self.hub_id,
                        partition,
                        last,
                        end,
                        enqueued
                    ])?;
                }
                tx.commit()
            })
            .map_err(|e| sql_error(&self.name, "publish failed", e))
    }

    fn prune_blocking(&self, cutoff_ms: i64) -> Result<u64, HubError> {
        let mut total = 0u64;
        for partition in 0..self.partitions {
            loop {
                let (segments, events) = self
                    .pool
                    .with(|conn| {
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                        // Enqueued times are non-decreasing along sequence
                        // numbers, so the expired segments are a prefix.
                        let deleted: Vec<(i64, i64)> = {
                            let mut delete = tx.prepare_cached(
                                "DELETE FROM hubflow_segments
                                 WHERE hub_id = ?1 AND partition = ?2 AND last_enqueued_ms < ?3
                                   AND first_sequence IN (
                                     SELECT first_sequence FROM hubflow_segments
                                     WHERE hub_id = ?1 AND partition = ?2
                                     ORDER BY first_sequence LIMIT ?4)
                                 RETURNING first_sequence, last_sequence",
                            )?;
                            delete
                                .query_map(
                                    params![self.hub_id, partition, cutoff_ms, PRUNE_CHUNK],
                                    |row| Ok((row.get(0)?, row.get(1)?)),
                                )?
                                .collect::<rusqlite::Result<_>>()?
                        };
                        tx.commit()?;
                        let events: i64 = deleted.iter().map(|(f, l)| l - f + 1).sum();
                        Ok((deleted.len() as i64, events))
                    })
                    .map_err(|e| sql_error(&self.name, "retention pass failed", e))?;
                total += events.max(0) as u64;
                if segments < PRUNE_CHUNK {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn properties_blocking(&self, partition: u32) -> Result<PartitionProperties, HubError> {
        self.pool
            .with(|conn| {
                let tx = conn.transaction()?;
                let (last_sequence, last_ms): (i64, Option<i64>) = tx.query_row(
                    "SELECT last_sequence, last_enqueued_ms FROM hubflow_partitions
                     WHERE hub_id = ?1 AND partition = ?2",
                    params![self.hub_id, partition],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                let first: Option<i64> = tx.query_row(
                    "SELECT MIN(first_sequence) FROM hubflow_segments
                     WHERE hub_id = ?1 AND partition = ?2",
                    params![self.hub_id, partition],
                    |row| row.get(0),
                )?;
                tx.commit()?;
                Ok(PartitionProperties {
                    partition,
                    beginning_sequence_number: first.unwrap_or(last_sequence + 1),
                    last_enqueued_sequence_number: last_sequence,
                    last_enqueued_time_ms: last_ms,
                    is_empty: first.is_none(),
                })
            })
            .map_err(|e| sql_error(&self.name, "cannot read partition properties", e))
    }

    fn last_sequence_blocking(&self, partition: u32) -> Result<i64, HubError> {
        self.pool
            .with(|conn| {
                conn.query_row(
                    "SELECT last_sequence FROM hubflow_partitions
                     WHERE hub_id = ?1 AND partition = ?2",
                    params![self.hub_id, partition],
                    |row| row.get(0),
                )
            })
            .map_err(|e| sql_error(&self.name, "cannot read partition position", e))
    }
}

#[async_trait]
impl Hub for SqliteHub {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn partition_ids(&self) -> Result<Vec<u32>, HubError> {
        Ok((0..self.inner.partitions).collect())
    }

    async fn publish(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError> {
        self.publish_many(vec![(target, events)])
            .await
            .map_err(|unpublished| unpublished.error)
    }

    async fn publish_many(
        &self,
        batches: Vec<(PublishTarget, Vec<EventData>)>,
    ) -> Result<(), Unpublished> {
        // Check every batch first; the ones before a bad one are published
        // together, the bad one and the rest are handed back.
        let mut prepared: Vec<(Prepared, Vec<EventData>)> = Vec::with_capacity(batches.len());
        let mut refused = None;
        let mut rest = batches.into_iter();
        for (target, events) in rest.by_ref() {
            match self.prepare(&target, &events) {
                Ok(segment) => prepared.push((segment, events)),
                Err(error) => {
                    refused = Some((error, target, events));
                    break;
                }
            }
        }
        let count: u64 = prepared.iter().map(|(p, _)| p.events).sum();
        if count > 0 {
            let inner = self.inner.clone();
            let (result, prepared) = tokio::task::spawn_blocking(move || {
                let segments: Vec<&Prepared> = prepared.iter().map(|(p, _)| p).collect();
                let result = inner.publish_blocking(&segments);
                (result, prepared)
            })
            .await
            .map_err(|e| Unpublished {
                error: other(&self.inner.name, format!("database task failed: {e}")),
                batches: Vec::new(),
            })?;
            if let Err(error) = result {
                // Nothing of the transaction is in the hub: hand it all back.
                let mut batches: Vec<(PublishTarget, Vec<EventData>)> = prepared
                    .into_iter()
                    .map(|(p, events)| (PublishTarget::Partition(p.partition), events))
                    .collect();
                batches.extend(refused.map(|(_, target, events)| (target, events)));
                batches.extend(rest);
                return Err(Unpublished { error, batches });
            }
            metrics::counter!("hubflow_embedded_hub_published_events_total", "hub" => self.inner.name.clone())
                .increment(count);
            let publishes = self.inner.publishes.fetch_add(1, Ordering::Relaxed) + 1;
            if self.inner.retention.is_some()
                && publishes.is_multiple_of(PRUNE_EVERY_PUBLISHES)
                && let Err(error) = self.prune_expired().await
            {
                warn!(hub = %self.inner.name, %error, "retention pass failed");
            }
        }
        match refused {
            None => Ok(()),
            Some((error, target, events)) => {
                let mut batches = vec![(target, events)];
                batches.extend(rest);
                Err(Unpublished { error, batches })
            }
        }
    }

    async fn open_receiver(
        &self,
        consumer_group: &str,
        partition: u32,
        from: StartPosition,
    ) -> Result<Box<dyn PartitionReceiver>, HubError> {
        self.check_partition(partition)?;
        if consumer_group.is_empty() {
            return Err(other(
                &self.inner.name,
                "consumer group must not be empty".to_string(),
            ));
        }
        let (next, strict) = match from {
            StartPosition::Earliest => (0, false),
            StartPosition::Latest => {
                let inner = self.inner.clone();
                let last = self
                    .blocking(move || inner.last_sequence_blocking(partition))
                    .await?;
                (last + 1, true)
            }
            StartPosition::SequenceNumber { value, inclusive } => {
                let next = if inclusive {
                    value
                } else {
                    value.saturating_add(1)
                };
                (next.max(0), true)
            }
        };
        debug!(hub = %self.inner.name, consumer_group, partition, next, "receiver opened");
        Ok(Box::new(SqliteReceiver {
            inner: self.inner.clone(),
            partition,
            next,
            warn_on_gap: strict,
            conn: None,
        }))
    }

    async fn partition_properties(&self, partition: u32) -> Result<PartitionProperties, HubError> {
        self.check_partition(partition)?;
        let inner = self.inner.clone();
        self.blocking(move || inner.properties_blocking(partition))
            .await
    }
}

/// A polling reader on one partition, with its own connection.
struct SqliteReceiver {
    inner: Arc<Inner>,
    partition: u32,
    /// The next sequence number to read.
    next: i64,
    /// Whether a jump past `next` means events were lost to retention.
    warn_on_gap: bool,
    conn: Option<Connection>,
}

impl SqliteReceiver {
    async fn fetch(&mut self, max_events: usize) -> Result<Vec<ReceivedEvent>, HubError> {
        let inner = self.inner.clone();
        let partition = self.partition;
        let next = self.next;
        let conn = self.conn.take();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(conn) => conn,
                None => match open_connection(&inner.pool.path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        return (None, Err(sql_error(&inner.name, "cannot open receiver", e)));
                    }
                },
            };
            let result = read_events(&conn, &inner, partition, next, max_events);
            (Some(conn), result)
        })
        .await
        .map_err(|e| other(&self.inner.name, format!("receive task failed: {e}")))?;
        self.conn = conn;
        result
    }
}

#[async_trait]
impl PartitionReceiver for SqliteReceiver {
    async fn receive(
        &mut self,
        max_events: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReceivedEvent>, HubError> {
        if max_events == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut interval = POLL_MIN;
        loop {
            let events = self.fetch(max_events).await?;
            if let (Some(first), Some(last)) = (events.first(), events.last()) {
                if first.sequence_number > self.next && self.warn_on_gap {
                    let skipped = first.sequence_number - self.next;
                    warn!(
                        hub = %self.inner.name,
                        partition = self.partition,
                        expected = self.next,
                        found = first.sequence_number,
                        "events expired by retention before they were read"
                    );
                    metrics::counter!("hubflow_embedded_hub_expired_unread_events_total", "hub" => self.inner.name.clone())
                        .increment(skipped as u64);
                }
                self.warn_on_gap = true;
                self.next = last.sequence_number + 1;
                return Ok(events);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(events);
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(POLL_MAX);
        }
    }
}

/// Up to `max_events` events from sequence number `next` on: the segment
/// holding `next` (or the first after it) and those following it.
fn read_events(
    conn: &Connection,
    inner: &Inner,
    partition: u32,
    next: i64,
    max_events: usize,
) -> Result<Vec<ReceivedEvent>, HubError> {
    let failed = |e| sql_error(&inner.name, "receive failed", e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT first_sequence, first_offset, enqueued_ms, events
             FROM hubflow_segments
             WHERE hub_id = ?1 AND partition = ?2 AND first_sequence >= COALESCE(
                 (SELECT MAX(first_sequence) FROM hubflow_segments
                  WHERE hub_id = ?1 AND partition = ?2 AND first_sequence <= ?3), 0)
             ORDER BY first_sequence",
        )
        .map_err(failed)?;
    let mut rows = stmt
        .query(params![inner.hub_id, partition, next])
        .map_err(failed)?;
    let mut events = Vec::new();
    while events.len() < max_events {
        let Some(row) = rows.next().map_err(failed)? else {
            break;
        };
        let first_sequence: i64 = row.get(0).map_err(failed)?;
        let first_offset: i64 = row.get(1).map_err(failed)?;
        let enqueued_ms: i64 = row.get(2).map_err(failed)?;
        let data: Vec<u8> = row.get(3).map_err(failed)?;
        let corrupt = |e: SegmentError| {
            other(
                &inner.name,
                format!("partition {partition} segment at {first_sequence}: {e}"),
            )
        };
        let mut reader = SegmentReader::new(Bytes::from(data));
        let mut sequence_number = first_sequence;
        while events.len() < max_events {
            let Some(event) = reader.next_event().map_err(corrupt)? else {
                break;
            };
            if sequence_number >= next {
                events.push(ReceivedEvent {
                    partition,
                    sequence_number,
                    offset: (first_offset + i64::try_from(event.offset).unwrap_or(i64::MAX))
                        .to_string(),
                    enqueued_time_ms: enqueued_ms
                        + i64::try_from(event.enqueued_delta).unwrap_or(0),
                    body: event.body,
                    properties: event.properties,
                });
            }
            sequence_number += 1;
        }
    }
    Ok(events)
}

enum OpenError {
    Sql(rusqlite::Error),
    Mismatch { existing: i64 },
    NewerSchema(i64),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sql(e)
    }
}

/// Create the schema and the hub if absent; return the hub's id.
fn ensure_hub(conn: &mut Connection, name: &str, partitions: u32) -> Result<i64, OpenError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema(version));
    }
    tx.execute_batch(SCHEMA)?;
    if version == 1 {
        migrate_events_to_segments(&tx)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    let existing: Option<(i64, i64)> = tx
        .query_row(
            "SELECT id, partitions FROM hubflow_hubs WHERE name = ?1",
            params![name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let id = match existing {
        Some((id, existing)) if existing == i64::from(partitions) => id,
        Some((_, existing)) => return Err(OpenError::Mismatch { existing }),
        None => {
            tx.execute(
                "INSERT INTO hubflow_hubs (name, partitions, created_ms) VALUES (?1, ?2, ?3)",
                params![name, partitions, now_ms()],
            )?;
            let id = tx.last_insert_rowid();
            let mut insert = tx.prepare(
                "INSERT INTO hubflow_partitions (hub_id, partition, last_sequence, next_offset)
                 VALUES (?1, ?2, -1, 0)",
            )?;
            for partition in 0..partitions {
                insert.execute(params![id, partition])?;
            }
            drop(insert);
            id
        }
    };
    tx.commit()?;
    Ok(id)
}

/// Schema 1 kept one row per event in `hubflow_events`: rewrite them as
/// segments of up to [`MIGRATION_SEGMENT_EVENTS`] consecutive events,
/// keeping every sequence number, offset and enqueued time, then drop it.
fn migrate_events_to_segments(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let exists: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'hubflow_events'",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    struct Open {
        hub_id: i64,
        partition: i64,
        first: i64,
        last: i64,
        first_offset: i64,
        enqueued: i64,
        last_enqueued: i64,
        writer: SegmentWriter,
    }
    let flush = |open: Open| -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO hubflow_segments
             (hub_id, partition, first_sequence, last_sequence, first_offset,
              enqueued_ms, last_enqueued_ms, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            open.hub_id,
            open.partition,
            open.first,
            open.last,
            open.first_offset,
            open.enqueued,
            open.last_enqueued,
            open.writer.finish()
        ])?;
        Ok(())
    };
    let mut migrated = 0u64;
    let mut current: Option<Open> = None;
    {
        let mut stmt = tx.prepare(
            "SELECT hub_id, partition, sequence_number, byte_offset, enqueued_ms, body, properties
             FROM hubflow_events ORDER BY hub_id, partition, sequence_number",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (hub_id, partition, sequence, offset, enqueued): (i64, i64, i64, i64, i64) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            let body: Vec<u8> = row.get(5)?;
            let properties: String = row.get(6)?;
            let properties: BTreeMap<String, String> =
                serde_json::from_str(&properties).unwrap_or_default();
            let continues = current.as_ref().is_some_and(|c| {
                c.hub_id == hub_id
                    && c.partition == partition
                    && c.last + 1 == sequence
                    && (c.writer.events() as usize) < MIGRATION_SEGMENT_EVENTS
            });
            if !continues && let Some(done) = current.take() {
                flush(done)?;
            }
            let open = current.get_or_insert_with(|| Open {
                hub_id,
                partition,
                first: sequence,
                last: sequence - 1,
                first_offset: offset,
                enqueued,
                last_enqueued: enqueued,
                writer: SegmentWriter::with_capacity(64 * 1024),
            });
            let mut encoded = Vec::new();
            encode_properties(&properties, &mut encoded);
            open.writer.push_encoded(
                u64::try_from(offset - open.first_offset).unwrap_or(0),
                u64::try_from(enqueued - open.enqueued).unwrap_or(0),
                &body,
                &encoded,
            );
            open.last = sequence;
            open.last_enqueued = enqueued;
            migrated += 1;
        }
    }
    if let Some(done) = current.take() {
        flush(done)?;
    }
    tx.execute_batch("DROP TABLE hubflow_events")?;
    info!(
        events = migrated,
        "embedded hub converted to segments (schema 2)"
    );
    Ok(())
}

/// A few idle connections to the file, opened on demand.
struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    /// Run `f` on a pooled connection. Blocking: call on the blocking pool.
    fn with<T, E>(&self, f: impl FnOnce(&mut Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&mut conn);
        // A connection left inside a transaction (an error path) is dropped,
        // which rolls the transaction back.
        if conn.is_autocommit()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_CONNECTIONS
        {
            idle.push(conn);
        }
        result
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Segments are large blobs: with 64 KiB pages one is read and written
    // in a few page I/Os instead of hundreds of 4 KiB overflow pages. Only
    // a new, empty file takes it (an existing hub keeps its page size).
    conn.pragma_update(None, "page_size", 65536)?;
    // Switching to WAL needs a moment of exclusive access; another process
    // opening the file at the same time can make it report busy.
    let mut attempt = 0;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        }) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
            Ok(mode) => {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot switch to WAL journal mode (still {mode})")),
                ));
            }
            Err(e) if is_busy(&e) && attempt < 100 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn sql_error(hub: &str, context: &str, e: rusqlite::Error) -> HubError {
    let transient = is_busy(&e)
        || matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull | ErrorCode::OutOfMemory)
        );
    let message = format!("{context}: {e}");
    if transient {
        HubError::Transient {
            hub: hub.to_string(),
            message,
        }
    } else {
        other(hub, message)
    }
}

fn other(hub: &str, message: String) -> HubError {
    HubError::Other {
        hub: hub.to_string(),
        message,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubflow_actors::ports::{EventData, Hub, PublishTarget, StartPosition};

    /// A file written by schema 1 (one row per event) opens as schema 2
    /// with every event, offset, enqueued time and property kept, and
    /// publishing continues after the last migrated sequence number.
    #[tokio::test]
    async fn a_schema_1_file_is_converted_to_segments_with_every_event_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        drop(SqliteHub::open(&path, "ingest", 2, None).unwrap());
        let mut offsets = Vec::new();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE hubflow_segments;
                 CREATE TABLE hubflow_events (
                     hub_id INTEGER NOT NULL, partition INTEGER NOT NULL,
                     sequence_number INTEGER NOT NULL, byte_offset INTEGER NOT NULL,
                     enqueued_ms INTEGER NOT NULL, body BLOB NOT NULL,
                     properties TEXT NOT NULL,
                     PRIMARY KEY (hub_id, partition, sequence_number));",
            )
            .unwrap();
            let hub_id: i64 = conn
                .query_row(
                    "SELECT id FROM hubflow_hubs WHERE name = 'ingest'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let mut offset = 0i64;
            for seq in 0..5i64 {
                let body = format!("{{\"n\":{seq}}}");
                conn.execute(
                    "INSERT INTO hubflow_events VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        hub_id,
                        seq,
                        offset,
                        1_000 + 10 * seq,
                        body.as_bytes(),
                        format!("{{\"id\":\"r{seq}\"}}")
                    ],
                )
                .unwrap();
                offsets.push(offset);
                offset += body.len() as i64;
            }
            conn.execute(
                "UPDATE hubflow_partitions SET last_sequence = 4, next_offset = ?2,
                 last_enqueued_ms = 1040 WHERE hub_id = ?1 AND partition = 1",
                params![hub_id, offset],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }

        let hub = SqliteHub::open(&path, "ingest", 2, None).unwrap();
        let mut receiver = hub
            .open_receiver("$Default", 1, StartPosition::Earliest)
            .await
            .unwrap();
        let events = receiver
            .receive(100, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(events.len(), 5);
        for (i, event) in events.iter().enumerate() {
            let seq = i as i64;
            assert_eq!(event.sequence_number, seq);
            assert_eq!(event.offset, offsets[i].to_string());
            assert_eq!(event.enqueued_time_ms, 1_000 + 10 * seq);
            assert_eq!(&event.body[..], format!("{{\"n\":{seq}}}").as_bytes());
            assert_eq!(event.properties.get("id"), Some(&format!("r{seq}")));
        }
        hub.publish(PublishTarget::Partition(1), vec![EventData::new("next")])
            .await
            .unwrap();
        let more = receiver
            .receive(100, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].sequence_number, 5);
        let conn = Connection::open(&path).unwrap();
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'hubflow_events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the schema 1 table is gone");
    }
}
