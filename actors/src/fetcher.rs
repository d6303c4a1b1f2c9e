//! The fetcher: polls one [`Source`], publishes its records to the ingest hub
//! and stores the source cursor once the records are durable there.
//!
//! Order of effects per page (the delivery guarantee rests on it):
//! 1. fetch the page from the stored cursor;
//! 2. group records by `partition_for_key(id)` and publish each group;
//! 3. compare-and-swap the cursor record (the etag fences a second fetcher).
//!
//! A crash between 2 and 3 re-publishes the page on restart; the transformer's
//! dedupe window removes those duplicates. A crash before 2 loses nothing.
//!
//! Transient errors (and unusable responses that cannot be skipped) are
//! retried in place after [`RetryDelay`]; once a failure streak exhausts the
//! [`RetryBudget`] the fetcher fails with the last error, and its supervisor
//! restarts it with backoff from the stored cursor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubflow_supervision::{ActorProbe, ExitReason};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::ports::{
    BlobStore, DeadLetter, ETag, EventData, Hub, HubError, PublishTarget, Source, SourceCursor,
    SourceError, StateStore, partition_for_key,
};
use crate::record::{PROP_FETCHED_MS, PROP_ID, PROP_SOURCE};
use crate::retry::{RetryBudget, RetryDelay};
use crate::{now_ms, write_dead_letter};

/// Messages the fetcher understands.
#[derive(Debug)]
pub enum FetcherMsg {
    /// Fetch the next page (sent by the fetcher to itself).
    Poll,
    /// Stop polling until [`FetcherMsg::Resume`]; in-flight work completes.
    Pause,
    Resume,
    Status(RpcReplyPort<FetcherStatus>),
}

/// Everything the fetcher needs; built by the topology.
#[derive(Clone)]
pub struct FetcherParams {
    pub source: Arc<dyn Source>,
    pub hub: Arc<dyn Hub>,
    pub state: StateStore,
    /// Where unusable responses go.
    pub dead_letters: Arc<dyn BlobStore>,
    pub dead_letter_container: String,
    pub poll_interval: Duration,
    /// Events per publish call (the hub also bounds bytes).
    pub max_publish_events: usize,
    pub retry: RetryDelay,
    /// When to stop retrying in place and fail (the supervisor restarts).
    pub retry_budget: RetryBudget,
    pub probe: ActorProbe,
    /// Start paused (operators resume through the admin port).
    pub start_paused: bool,
}

/// The cursor record in the state store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CursorRecord {
    pub cursor: SourceCursor,
    pub pages: u64,
    pub records: u64,
    pub updated_ms: i64,
    /// True once the source reported it had nothing more at this cursor.
    pub caught_up: bool,
}

/// Observable state of a fetcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FetcherStatus {
    pub source: String,
    pub paused: bool,
    /// The source has been drained at least once since start.
    pub caught_up: bool,
    pub pages: u64,
    pub records_published: u64,
    /// Records published over the lifetime of the cursor (all restarts).
    pub records_total: u64,
    pub dead_letters: u64,
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
}

pub struct FetcherState {
    params: FetcherParams,
    partitions: u32,
    cursor: CursorRecord,
    etag: Option<ETag>,
    status: FetcherStatus,
    poll_scheduled: bool,
    /// When the current failure streak began.
    failing_since: Option<tokio::time::Instant>,
}

pub struct Fetcher;

/// Name of the cursor record of a source.
pub fn cursor_record_name(source: &str) -> String {
    format!("sources/{source}/cursor")
}

impl Actor for Fetcher {
    type Msg = FetcherMsg;
    type State = FetcherState;
    type Arguments = FetcherParams;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        params: FetcherParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = params.source.name().to_string();
        let partitions = params.hub.partition_ids().await?.len() as u32;
        if partitions == 0 {
            return Err(format!("hub {} has no partitions", params.hub.name()).into());
        }
        let (cursor, etag) = match params
            .state
            .load::<CursorRecord>(&cursor_record_name(&name))
            .await?
        {
            Some(v) => (v.value, Some(v.etag)),
            None => (CursorRecord::default(), None),
        };
        info!(source = %name, pages = cursor.pages, records = cursor.records, "fetcher starting");
        let status = FetcherStatus {
            source: name,
            paused: params.start_paused,
            records_total: cursor.records,
            ..Default::default()
        };
        let mut state = FetcherState {
            partitions,
            cursor,
            etag,
            status,
            poll_scheduled: false,
            failing_since: None,
            params,
        };
        if !state.status.paused {
            schedule(&myself, &mut state, Duration::ZERO);
        }
        state.params.probe.publish(&state.status);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FetcherMsg::Poll => {
                state.poll_scheduled = false;
                if state.status.paused {
                    return Ok(());
                }
                state.params.probe.set_busy(true);
                let outcome = poll_once(state).await;
                // Publish the last error even when it fails the actor.
                state.params.probe.publish(&state.status);
                let delay = outcome?;
                state.params.probe.tick();
                state.params.probe.set_busy(false);
                schedule(&myself, state, delay);
            }
            FetcherMsg::Pause => {
                info!(source = %state.status.source, "fetcher paused");
                state.status.paused = true;
            }
            FetcherMsg::Resume => {
                if state.status.paused {
                    info!(source = %state.status.source, "fetcher resumed");
                    state.status.paused = false;
                    schedule(&myself, state, Duration::ZERO);
                }
            }
            FetcherMsg::Status(reply) => {
                let _ = reply.send(state.status.clone());
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
        state.params.probe.set_busy(false);
        Ok(())
    }
}

fn schedule(myself: &ActorRef<FetcherMsg>, state: &mut FetcherState, delay: Duration) {
    if state.poll_scheduled {
        return;
    }
    state.poll_scheduled = true;
    if delay.is_zero() {
        let _ = myself.cast(FetcherMsg::Poll);
    } else {
        myself.send_after(delay, || FetcherMsg::Poll);
    }
}

/// Fetch, publish and commit one page. Returns how long to wait before the
/// next poll. Errors returned from here fail the actor (its supervisor
/// restarts it with backoff); recoverable conditions are handled inside.
async fn poll_once(state: &mut FetcherState) -> Result<Duration, ActorProcessingErr> {
    let source = Arc::clone(&state.params.source);
    let result = source.fetch(&state.cursor.cursor).await;
    match result {
        Ok(page) => {
            let count = page.records.len() as u64;
            publish_page(state, &page.records).await?;
            state.cursor.cursor = page.next;
            state.cursor.pages += 1;
            state.cursor.records += count;
            state.cursor.updated_ms = now_ms();
            state.cursor.caught_up = page.caught_up;
            commit_cursor(state).await?;
            state.status.pages += 1;
            state.status.records_published += count;
            state.status.records_total = state.cursor.records;
            state.status.consecutive_errors = 0;
            state.status.last_error = None;
            state.failing_since = None;
            let source_label = state.status.source.clone();
            metrics::counter!("hubflow_fetcher_pages_total", "source" => source_label.clone())
                .increment(1);
            metrics::counter!("hubflow_fetcher_records_total", "source" => source_label)
                .increment(count);
            debug!(source = %state.status.source, records = count, caught_up = page.caught_up, "page published");
            if page.caught_up {
                state.status.caught_up = true;
                Ok(state.params.poll_interval)
            } else {
                Ok(Duration::ZERO)
            }
        }
        Err(SourceError::Transient {
            message,
            retry_after,
            ..
        }) => {
            let delay = note_error(state, "transient", &message);
            check_budget(state)?;
            Ok(retry_after.map_or(delay, |r| r.max(delay)))
        }
        Err(SourceError::BadResponse(letter, skip_to)) => {
            let delay = note_error(state, "bad_response", &letter.reason);
            dead_letter(state, &letter).await?;
            if let Some(next) = skip_to {
                warn!(source = %state.status.source, reason = %letter.reason, "skipping unusable response");
                state.cursor.cursor = next;
                state.cursor.updated_ms = now_ms();
                commit_cursor(state).await?;
                return Ok(Duration::ZERO);
            }
            check_budget(state)?;
            Ok(delay)
        }
        Err(SourceError::Fatal { message, .. }) => {
            note_error(state, "fatal", &message);
            state
                .params
                .probe
                .set_exit(ExitReason::Failed(message.clone()));
            Err(message.into())
        }
    }
}

fn note_error(state: &mut FetcherState, kind: &'static str, message: &str) -> Duration {
    state
        .failing_since
        .get_or_insert_with(tokio::time::Instant::now);
    state.status.consecutive_errors = state.status.consecutive_errors.saturating_add(1);
    state.status.last_error = Some(message.to_string());
    metrics::counter!("hubflow_fetcher_errors_total", "source" => state.status.source.clone(), "kind" => kind)
        .increment(1);
    warn!(source = %state.status.source, kind, error = %message, attempt = state.status.consecutive_errors, "fetch failed");
    state.params.retry.delay(state.status.consecutive_errors)
}

/// Fails the fetcher once the failure streak has used up the retry budget.
fn check_budget(state: &mut FetcherState) -> Result<(), ActorProcessingErr> {
    let failures = state.status.consecutive_errors;
    let elapsed = state
        .failing_since
        .map_or(Duration::ZERO, |since| since.elapsed());
    if !state.params.retry_budget.exhausted(failures, elapsed) {
        return Ok(());
    }
    let last = state
        .status
        .last_error
        .as_deref()
        .unwrap_or("unknown error");
    let message = format!(
        "retry budget exhausted after {failures} consecutive failures in {:.1}s; last error: {last}",
        elapsed.as_secs_f64()
    );
    metrics::counter!("hubflow_fetcher_retry_budget_exhausted_total", "source" => state.status.source.clone())
        .increment(1);
    warn!(source = %state.status.source, failures, elapsed_ms = elapsed.as_millis() as u64, error = %last, "retry budget exhausted, fetcher fails");
    state
        .params
        .probe
        .set_exit(ExitReason::Failed(message.clone()));
    Err(message.into())
}

async fn dead_letter(
    state: &mut FetcherState,
    letter: &DeadLetter,
) -> Result<(), ActorProcessingErr> {
    write_dead_letter(
        state.params.dead_letters.as_ref(),
        &state.params.dead_letter_container,
        &format!("source/{}", letter.source),
        &letter.reason,
        &serde_json::json!({ "request": letter.request }),
        letter.body.clone(),
    )
    .await?;
    state.status.dead_letters += 1;
    metrics::counter!("hubflow_fetcher_dead_letters_total", "source" => state.status.source.clone())
        .increment(1);
    Ok(())
}

async fn publish_page(
    state: &mut FetcherState,
    records: &[crate::ports::SourceRecord],
) -> Result<(), ActorProcessingErr> {
    let fetched = now_ms().to_string();
    let mut by_partition: BTreeMap<u32, Vec<EventData>> = BTreeMap::new();
    for record in records {
        let partition = partition_for_key(&record.id, state.partitions);
        by_partition.entry(partition).or_default().push(
            EventData::new(Bytes::clone(&record.payload))
                .with_property(PROP_ID, record.id.clone())
                .with_property(PROP_SOURCE, state.status.source.clone())
                .with_property(PROP_FETCHED_MS, fetched.clone()),
        );
    }
    let chunk = state.params.max_publish_events.max(1);
    for (partition, events) in by_partition {
        // Chunks in order; a chunk the hub finds too large is split in
        // halves and retried, and a single record too large for any batch
        // is dead-lettered (it can never be published).
        let mut pending: VecDeque<Vec<EventData>> = VecDeque::new();
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(chunk.min(events.len()));
            pending.push_back(events);
            events = rest;
        }
        while let Some(batch) = pending.pop_front() {
            match state
                .params
                .hub
                .publish(PublishTarget::Partition(partition), batch.clone())
                .await
            {
                Ok(()) => {}
                Err(HubError::BatchTooLarge { .. }) if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    pending.push_front(second);
                    pending.push_front(first);
                    metrics::counter!("hubflow_fetcher_batch_splits_total", "source" => state.status.source.clone())
                        .increment(1);
                }
                Err(HubError::BatchTooLarge { size, limit, .. }) => {
                    let Some(event) = batch.into_iter().next() else {
                        continue;
                    };
                    oversized_record(state, partition, event, size, limit).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// Dead-letter a record larger than the hub accepts in any batch.
async fn oversized_record(
    state: &mut FetcherState,
    partition: u32,
    event: EventData,
    size: usize,
    limit: usize,
) -> Result<(), ActorProcessingErr> {
    let id = event.properties.get(PROP_ID).cloned().unwrap_or_default();
    warn!(source = %state.status.source, id = %id, size, limit, "record too large for the hub, dead-lettered");
    let reason = format!("record of {size} bytes exceeds the hub's batch limit of {limit} bytes");
    write_dead_letter(
        state.params.dead_letters.as_ref(),
        &state.params.dead_letter_container,
        &format!("source/{}", state.status.source),
        &reason,
        &serde_json::json!({ "id": id, "partition": partition }),
        event.body,
    )
    .await?;
    state.status.dead_letters += 1;
    metrics::counter!("hubflow_fetcher_dead_letters_total", "source" => state.status.source.clone())
        .increment(1);
    Ok(())
}

async fn commit_cursor(state: &mut FetcherState) -> Result<(), ActorProcessingErr> {
    let name = cursor_record_name(&state.status.source);
    let etag = state
        .params
        .state
        .compare_and_swap(&name, &state.cursor, state.etag.as_ref())
        .await
        .inspect_err(|e| {
            if e.is_conflict() {
                // Someone else advanced this source: we are no longer its fetcher.
                state
                    .params
                    .probe
                    .set_exit(ExitReason::Failed("source cursor changed under us".into()));
            }
        })?;
    state.etag = Some(etag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::{MemoryBlobStore, MemoryHub};
    use crate::ports::{Page, SourceRecord, StartPosition};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A scripted source: serves `total` records in pages of `page`, with
    /// scripted failures at given call numbers.
    struct Scripted {
        total: u64,
        page: u64,
        calls: Mutex<u64>,
        fail_on: Vec<(u64, fn() -> SourceError)>,
    }

    #[async_trait]
    impl Source for Scripted {
        fn name(&self) -> &str {
            "orders"
        }
        async fn fetch(&self, cursor: &SourceCursor) -> Result<Page, SourceError> {
            let call = {
                let mut c = self.calls.lock().unwrap();
                *c += 1;
                *c
            };
            if let Some((_, f)) = self.fail_on.iter().find(|(n, _)| *n == call) {
                return Err(f());
            }
            let from = cursor.0.as_u64().unwrap_or(0);
            let to = (from + self.page).min(self.total);
            let records = (from..to)
                .map(|i| SourceRecord {
                    id: format!("r{i}"),
                    payload: Bytes::from(format!("{{\"id\":\"r{i}\"}}")),
                })
                .collect();
            Ok(Page {
                records,
                next: SourceCursor(serde_json::json!(to)),
                caught_up: to == self.total,
            })
        }
    }

    fn params(
        source: Arc<dyn Source>,
        hub: Arc<MemoryHub>,
        blobs: Arc<MemoryBlobStore>,
    ) -> FetcherParams {
        FetcherParams {
            source,
            hub,
            state: StateStore::new(blobs.clone(), "state"),
            dead_letters: blobs,
            dead_letter_container: "dead-letters".into(),
            poll_interval: Duration::from_secs(60),
            max_publish_events: 7,
            retry: RetryDelay::new(Duration::from_millis(10), Duration::from_millis(100)),
            retry_budget: RetryBudget::UNLIMITED,
            probe: ActorProbe::new(),
            start_paused: false,
        }
    }

    async fn all_ids(hub: &MemoryHub) -> Vec<String> {
        let mut ids = Vec::new();
        for p in hub.partition_ids().await.unwrap() {
            let mut rx = hub
                .open_receiver("t", p, StartPosition::Earliest)
                .await
                .unwrap();
            loop {
                let events = rx.receive(1000, Duration::from_millis(1)).await.unwrap();
                if events.is_empty() {
                    break;
                }
                ids.extend(events.iter().map(|e| e.properties[PROP_ID].clone()));
            }
        }
        ids.sort();
        ids
    }

    async fn run_until_caught_up(p: FetcherParams) -> FetcherStatus {
        let probe = p.probe.clone();
        let (actor, handle) = Actor::spawn(None, Fetcher, p).await.unwrap();
        for _ in 0..1000 {
            let status: FetcherStatus = serde_json::from_value(probe.state()).unwrap_or_default();
            if status.caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = ractor::call!(actor, FetcherMsg::Status).unwrap();
        actor.stop(None);
        handle.await.unwrap();
        status
    }

    fn blobs() -> Arc<MemoryBlobStore> {
        Arc::new(MemoryBlobStore::new())
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_every_record_once_and_stores_cursor() {
        let hub = Arc::new(MemoryHub::new("ingest", 3));
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        let source = Arc::new(Scripted {
            total: 50,
            page: 8,
            calls: Mutex::new(0),
            fail_on: vec![],
        });
        let status = run_until_caught_up(params(source, hub.clone(), store.clone())).await;
        assert_eq!(status.records_published, 50);
        assert_eq!(status.pages, 7);
        let mut expected: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        expected.sort();
        assert_eq!(all_ids(&hub).await, expected);
        let cursor = StateStore::new(store, "state")
            .load::<CursorRecord>(&cursor_record_name("orders"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cursor.value.cursor, SourceCursor(serde_json::json!(50)));
        assert!(cursor.value.caught_up);
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_batches_split_and_too_large_records_are_dead_lettered() {
        // Payloads `{"id":"r0"}` .. `{"id":"r9"}` are 11 bytes, the rest 12:
        // with an 11-byte limit every batch splits down to single records,
        // the first ten go through and the other forty can never fit.
        let hub = Arc::new(MemoryHub::new("ingest", 1).with_max_batch_bytes(11));
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        let source = Arc::new(Scripted {
            total: 50,
            page: 25,
            calls: Mutex::new(0),
            fail_on: vec![],
        });
        let status = run_until_caught_up(params(source, hub.clone(), store.clone())).await;
        let mut published: Vec<String> = all_ids(&hub).await;
        published.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        expected.sort();
        assert_eq!(published, expected);
        assert_eq!(status.dead_letters, 40);
        let letters = store.list("dead-letters", "source/orders/").await.unwrap();
        assert_eq!(
            letters.iter().filter(|b| b.name.ends_with(".body")).count(),
            40
        );
        let cursor = StateStore::new(store, "state")
            .load::<CursorRecord>(&cursor_record_name("orders"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cursor.value.cursor, SourceCursor(serde_json::json!(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn restart_resumes_from_stored_cursor() {
        let hub = Arc::new(MemoryHub::new("ingest", 2));
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        let first = Arc::new(Scripted {
            total: 20,
            page: 5,
            calls: Mutex::new(0),
            fail_on: vec![],
        });
        run_until_caught_up(params(first, hub.clone(), store.clone())).await;
        // A second fetcher over a source that has grown: only the new records.
        let grown = Arc::new(Scripted {
            total: 30,
            page: 5,
            calls: Mutex::new(0),
            fail_on: vec![],
        });
        let status = run_until_caught_up(params(grown, hub.clone(), store)).await;
        assert_eq!(status.records_published, 10);
        assert_eq!(status.records_total, 30);
        assert_eq!(all_ids(&hub).await.len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_retry_and_bad_responses_are_dead_lettered() {
        let hub = Arc::new(MemoryHub::new("ingest", 2));
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        let source = Arc::new(Scripted {
            total: 10,
            page: 5,
            calls: Mutex::new(0),
            fail_on: vec![
                (1, || SourceError::Transient {
                    source_name: "orders".into(),
                    message: "503".into(),
                    retry_after: Some(Duration::from_secs(2)),
                }),
                (3, || {
                    SourceError::BadResponse(
                        Box::new(DeadLetter {
                            source: "orders".into(),
                            reason: "malformed json".into(),
                            request: "GET http://x/records".into(),
                            body: Bytes::from_static(b"{not json"),
                        }),
                        None,
                    )
                }),
            ],
        });
        let status = run_until_caught_up(params(source, hub.clone(), store.clone())).await;
        assert_eq!(status.records_published, 10);
        assert_eq!(status.dead_letters, 1);
        let letters = store.list("dead-letters", "source/orders/").await.unwrap();
        assert_eq!(letters.len(), 2, "body and reason: {letters:?}");
        assert_eq!(all_ids(&hub).await.len(), 10);
    }

    struct Factory(FetcherParams);

    #[async_trait]
    impl hubflow_supervision::ChildFactory for Factory {
        async fn spawn(
            &self,
            ctx: hubflow_supervision::ChildContext,
        ) -> Result<ractor::ActorCell, ractor::SpawnErr> {
            let params = FetcherParams {
                probe: ctx.probe,
                ..self.0.clone()
            };
            let (actor, _) = Actor::spawn_linked(None, Fetcher, params, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retry_budget_fails_and_the_supervisor_restarts_from_the_cursor() {
        use hubflow_supervision::{
            Backoff, ChildSpec, NodeState, Restart, Strategy, SupervisorSpec, start_root,
        };
        let hub = Arc::new(MemoryHub::new("ingest", 2));
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        let unavailable = || SourceError::Transient {
            source_name: "orders".into(),
            message: "http 503 Service Unavailable for GET http://api.test/records?api_key=***"
                .into(),
            retry_after: None,
        };
        // Two pages, then three failures in a row, then healthy again.
        let source = Arc::new(Scripted {
            total: 20,
            page: 5,
            calls: Mutex::new(0),
            fail_on: vec![(3, unavailable), (4, unavailable), (5, unavailable)],
        });
        let mut p = params(source.clone(), hub.clone(), store.clone());
        p.retry_budget = RetryBudget {
            max_failures: Some(3),
            max_elapsed: None,
        };
        let spec = SupervisorSpec::new("root", Strategy::OneForOne)
            .backoff(Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(1),
                multiplier: 2.0,
                reset_after: Duration::from_secs(60),
            })
            .child(ChildSpec::new(
                "fetcher",
                Restart::Permanent,
                Arc::new(Factory(p)),
            ));
        let root = start_root(spec).await.unwrap();
        let mut saw_backing_off = false;
        let mut done = None;
        for _ in 0..20_000 {
            let snapshot = root.snapshot();
            let node = snapshot.find("root/fetcher").expect("fetcher node").clone();
            saw_backing_off |= node.state == NodeState::BackingOff;
            let status: FetcherStatus =
                serde_json::from_value(node.observed.clone()).unwrap_or_default();
            if node.restarts >= 1 && status.caught_up && status.records_total == 20 {
                done = Some(node);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let node = done.expect("fetcher restarted and caught up");
        assert_eq!(node.restarts, 1, "{node:?}");
        assert_eq!(node.state, NodeState::Running);
        assert!(
            saw_backing_off,
            "the supervisor backed off before the restart"
        );
        let error = node.last_error.clone().unwrap_or_default();
        assert!(
            error.contains("retry budget exhausted after 3 consecutive failures")
                && error.contains("http 503")
                && error.contains("http://api.test/records"),
            "{error}"
        );
        // Resumed from the stored cursor (10): every record exactly once.
        let ids = all_ids(&hub).await;
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!((ids.len(), unique.len()), (20, 20), "{ids:?}");
        assert_eq!(
            *source.calls.lock().unwrap(),
            7,
            "2 pages, 3 failures, 2 pages"
        );
        root.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_error_fails_the_actor_with_typed_reason() {
        let hub = Arc::new(MemoryHub::new("ingest", 1));
        let store = blobs();
        store.create_container("state").await.unwrap();
        let source = Arc::new(Scripted {
            total: 10,
            page: 5,
            calls: Mutex::new(0),
            fail_on: vec![(1, || SourceError::Fatal {
                source_name: "orders".into(),
                message: "http 404 for GET http://x/records".into(),
            })],
        });
        let p = params(source, hub, store);
        let probe = p.probe.clone();
        let (_actor, handle) = Actor::spawn(None, Fetcher, p).await.unwrap();
        handle.await.unwrap();
        assert!(matches!(probe.take_exit(), Some(ExitReason::Failed(m)) if m.contains("404")));
    }
}
