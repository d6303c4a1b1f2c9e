//! The fetcher: polls one [`Source`], publishes its records to the ingest hub
//! and stores the source cursor once the records are durable there.
//!
//! Pages are read ahead: a reader task walks the source from the stored
//! cursor, following each page's `next`, and hands pages over a bounded
//! channel (`read_ahead_pages`, default [`READ_AHEAD_PAGES`]), so page N+1
//! is requested while page N is published. The actor takes every page that
//! is ready (at least one) and commits them as a group, in order:
//! 1. group their records by `partition_for_key(id)` and publish all groups
//!    in one [`Hub::publish_many`] (the embedded hub makes them durable with
//!    one transaction);
//! 2. compare-and-swap the cursor record to the last page's `next` (the etag
//!    fences a second fetcher).
//!
//! A crash between 1 and 2 re-publishes those pages on restart; the
//! transformer's dedupe window removes the duplicates. A crash before 1
//! loses nothing: pages read ahead but not published are fetched again from
//! the stored cursor.
//!
//! Transient errors (and unusable responses that cannot be skipped) are
//! retried after [`RetryDelay`] from the stored cursor (the reader stops at
//! the failed page); once a failure streak exhausts the [`RetryBudget`] the
//! fetcher fails with the last error, and its supervisor restarts it with
//! backoff from the stored cursor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hubflow_supervision::{ActorProbe, ExitReason};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::page_log::{PageLog, PageLogPage};
use crate::ports::{
    BlobStore, DeadLetter, ETag, EventData, Hub, HubError, Page, PublishTarget, Source,
    SourceCursor, SourceError, StateStore, Unpublished, partition_for_key,
};
use crate::record::{PROP_FETCHED_MS, PROP_ID, PROP_SOURCE};
use crate::retry::{RetryBudget, RetryDelay};
use crate::{now_ms, write_dead_letter};

/// Pages a reader fetches ahead of the publishes.
pub const READ_AHEAD_PAGES: usize = 16;
/// Records published as one group at most (pages are never split).
const GROUP_MAX_RECORDS: usize = 20_000;

/// Messages the fetcher understands.
#[derive(Debug)]
pub enum FetcherMsg {
    /// Publish the next ready pages (sent by the fetcher to itself).
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
    /// Pages requested ahead of the publishes (at least 1); the pages
    /// ready when a publish starts are committed together.
    pub read_ahead_pages: usize,
    pub retry: RetryDelay,
    /// When to stop retrying in place and fail (the supervisor restarts).
    pub retry_budget: RetryBudget,
    pub probe: ActorProbe,
    /// Start paused (operators resume through the admin port).
    pub start_paused: bool,
    /// How long the page log ([`crate::page_log`]) is kept; zero: none.
    pub page_log_retention: Duration,
    /// This node's id, recorded in the page log.
    pub node_id: String,
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
    /// The walk ahead of the stored cursor, while one runs.
    reader: Option<Reader>,
    page_log: PageLog,
}

/// A page as the reader got it, with the cursor it was requested at and
/// when it arrived.
struct Fetched {
    from: SourceCursor,
    at_ms: i64,
    result: Result<Page, SourceError>,
}

/// A page to publish, with its request cursor and fetch time.
struct FetchedPage {
    page: Page,
    from: SourceCursor,
    at_ms: i64,
}

/// A task fetching pages ahead; aborted when dropped.
struct Reader {
    pages: mpsc::Receiver<Fetched>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    /// Walks `source` from `cursor` until a page is caught up or fails.
    fn start(source: Arc<dyn Source>, mut cursor: SourceCursor, read_ahead: usize) -> Reader {
        let (tx, pages) = mpsc::channel(read_ahead.max(1));
        let task = tokio::spawn(async move {
            loop {
                let result = source.fetch(&cursor).await;
                let next = match &result {
                    Ok(page) if !page.caught_up => Some(page.next.clone()),
                    _ => None,
                };
                let from = std::mem::take(&mut cursor);
                let at_ms = now_ms();
                if tx
                    .send(Fetched {
                        from,
                        at_ms,
                        result,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                match next {
                    Some(next) => cursor = next,
                    None => return,
                }
            }
        });
        Reader { pages, task }
    }
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
        let page_log = PageLog::new(&status.source, &params.node_id, params.page_log_retention);
        let mut state = FetcherState {
            partitions,
            cursor,
            etag,
            status,
            poll_scheduled: false,
            failing_since: None,
            reader: None,
            page_log,
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
        state.reader = None;
        state.page_log.flush(&state.params.state).await;
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

/// Take the pages that are ready (waiting for the first), publish and commit
/// them, and handle a failed page. Returns how long to wait before the next
/// poll. Errors returned from here fail the actor (its supervisor restarts
/// it with backoff); recoverable conditions are handled inside.
async fn poll_once(state: &mut FetcherState) -> Result<Duration, ActorProcessingErr> {
    let cursor = state.cursor.cursor.clone();
    let reader = state.reader.get_or_insert_with(|| {
        Reader::start(
            Arc::clone(&state.params.source),
            cursor,
            state.params.read_ahead_pages,
        )
    });
    let Some(first) = reader.pages.recv().await else {
        // The reader ended without a page (it panicked): start over.
        state.reader = None;
        return Ok(state.params.retry.delay(1));
    };
    let mut pages = Vec::new();
    let mut failed = None;
    let mut records = 0usize;
    let mut next = Some(first);
    while let Some(fetched) = next.take() {
        if fetched.from != state.cursor.cursor && pages.is_empty() {
            // Read ahead from a cursor that is no longer ours: start over.
            state.reader = None;
            return Ok(Duration::ZERO);
        }
        match fetched.result {
            Ok(page) => {
                records += page.records.len();
                let last = page.caught_up;
                pages.push(FetchedPage {
                    page,
                    from: fetched.from,
                    at_ms: fetched.at_ms,
                });
                if last || records >= GROUP_MAX_RECORDS {
                    break;
                }
            }
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
        next = state.reader.as_mut().and_then(|r| r.pages.try_recv().ok());
    }
    let caught_up = pages.last().is_some_and(|p| p.page.caught_up);
    if !pages.is_empty() {
        commit_pages(state, pages).await?;
    }
    if state.page_log.due() {
        state.page_log.flush(&state.params.state).await;
        state.page_log.prune(&state.params.state, now_ms()).await;
    }
    if caught_up || failed.is_some() {
        // The reader stopped there; the next poll starts a new one from the
        // stored cursor.
        state.reader = None;
    }
    match failed {
        None if caught_up => {
            state.status.caught_up = true;
            Ok(state.params.poll_interval)
        }
        None => Ok(Duration::ZERO),
        Some(error) => handle_failure(state, error).await,
    }
}

/// Publish the records of `pages` as one group, then store the cursor after
/// the last of them.
/// Pages published to the hub and the cursor saved after them: the
/// `fetch.publish` span names the source, the pages and records and the hub
/// partitions they went to.
#[tracing::instrument(name = "fetch.publish", skip_all, fields(
    source = %state.status.source,
    pages = pages.len(),
    records = tracing::field::Empty,
    partitions = tracing::field::Empty,
))]
async fn commit_pages(
    state: &mut FetcherState,
    pages: Vec<FetchedPage>,
) -> Result<(), ActorProcessingErr> {
    let count: u64 = pages.iter().map(|p| p.page.records.len() as u64).sum();
    let page_count = pages.len() as u64;
    tracing::Span::current().record("records", count);
    let mut last = None;
    let mut stamped = Vec::with_capacity(pages.len());
    let mut logged = Vec::with_capacity(pages.len());
    for FetchedPage { page, from, at_ms } in pages {
        let fetched_ms = state.page_log.stamp(at_ms);
        if state.page_log.enabled() && !page.records.is_empty() {
            logged.push(PageLogPage {
                fetched_ms,
                request: page.request,
                cursor: from.0,
                records: page.records.len() as u64,
                first_id: page.records.first().map(|r| r.id.clone()),
                last_id: page.records.last().map(|r| r.id.clone()),
            });
        }
        stamped.push((fetched_ms, page.records));
        last = Some((page.next, page.caught_up));
    }
    publish_records(state, stamped).await?;
    // Logged once published (a page published twice after a crash is
    // logged under both fetch times; the transformer keeps the first copy).
    for page in logged {
        state.page_log.push(page);
    }
    if let Some((next, caught_up)) = last {
        state.cursor.cursor = next;
        state.cursor.caught_up = caught_up;
    }
    state.cursor.pages += page_count;
    state.cursor.records += count;
    state.cursor.updated_ms = now_ms();
    commit_cursor(state).await?;
    state.status.pages += page_count;
    state.status.records_published += count;
    state.status.records_total = state.cursor.records;
    state.status.consecutive_errors = 0;
    state.status.last_error = None;
    state.failing_since = None;
    let source_label = state.status.source.clone();
    metrics::counter!("hubflow_fetcher_pages_total", "source" => source_label.clone())
        .increment(page_count);
    metrics::counter!("hubflow_fetcher_records_total", "source" => source_label).increment(count);
    debug!(source = %state.status.source, pages = page_count, records = count, "pages published");
    Ok(())
}

/// A page that failed: retry later, skip it, or fail the actor.
async fn handle_failure(
    state: &mut FetcherState,
    error: SourceError,
) -> Result<Duration, ActorProcessingErr> {
    match error {
        SourceError::Transient {
            message,
            retry_after,
            ..
        } => {
            let delay = note_error(state, "transient", &message);
            check_budget(state)?;
            Ok(retry_after.map_or(delay, |r| r.max(delay)))
        }
        SourceError::BadResponse(letter, skip_to) => {
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
        SourceError::Fatal { message, .. } => {
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

/// Publish `records` grouped by partition, in chunks of at most
/// `max_publish_events`, all in one [`Hub::publish_many`]. A chunk the hub
/// finds too large is split in halves and retried; a single record too
/// large for any batch is dead-lettered (it can never be published).
async fn publish_records(
    state: &mut FetcherState,
    pages: Vec<(i64, Vec<crate::ports::SourceRecord>)>,
) -> Result<(), ActorProcessingErr> {
    let source = state.status.source.clone();
    let mut by_partition: BTreeMap<u32, Vec<EventData>> = BTreeMap::new();
    for (fetched_ms, records) in pages {
        // Every record of a page carries the page's fetch time (which names
        // the page in the page log).
        let fetched = fetched_ms.to_string();
        for record in records {
            let partition = partition_for_key(&record.id, state.partitions);
            by_partition.entry(partition).or_default().push(
                EventData::new(record.payload)
                    .with_property(PROP_ID, record.id)
                    .with_property(PROP_SOURCE, source.clone())
                    .with_property(PROP_FETCHED_MS, fetched.clone()),
            );
        }
    }
    let touched: Vec<String> = by_partition.keys().map(u32::to_string).collect();
    tracing::Span::current().record("partitions", touched.join(",").as_str());
    let chunk = state.params.max_publish_events.max(1);
    let mut pending: VecDeque<(PublishTarget, Vec<EventData>)> = VecDeque::new();
    for (partition, mut events) in by_partition {
        while !events.is_empty() {
            let rest = events.split_off(chunk.min(events.len()));
            pending.push_back((PublishTarget::Partition(partition), events));
            events = rest;
        }
    }
    while !pending.is_empty() {
        let batches: Vec<_> = pending.drain(..).collect();
        let Err(Unpublished { error, batches }) = state.params.hub.publish_many(batches).await
        else {
            return Ok(());
        };
        let mut batches = VecDeque::from(batches);
        let Some((target, failed)) = batches.pop_front() else {
            return Ok(());
        };
        match error {
            HubError::BatchTooLarge { .. } if failed.len() > 1 => {
                let mut first = failed;
                let second = first.split_off(first.len() / 2);
                pending.push_back((target.clone(), first));
                pending.push_back((target, second));
                metrics::counter!("hubflow_fetcher_batch_splits_total", "source" => source.clone())
                    .increment(1);
            }
            HubError::BatchTooLarge { size, limit, .. } => {
                let partition = match target {
                    PublishTarget::Partition(p) => p,
                    PublishTarget::PartitionKey(_) => 0,
                };
                if let Some(event) = failed.into_iter().next() {
                    oversized_record(state, partition, event, size, limit).await?;
                }
            }
            error => return Err(error.into()),
        }
        pending.extend(batches);
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
    use bytes::Bytes;
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
                request: format!("GET scripted?from={from}"),
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
            read_ahead_pages: READ_AHEAD_PAGES,
            retry: RetryDelay::new(Duration::from_millis(10), Duration::from_millis(100)),
            retry_budget: RetryBudget::UNLIMITED,
            probe: ActorProbe::new(),
            start_paused: false,
            page_log_retention: Duration::from_secs(3600),
            node_id: "n1".into(),
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

    /// A blob store with the "state" and "dead-letters" containers.
    async fn stores() -> Arc<MemoryBlobStore> {
        let store = blobs();
        store.create_container("state").await.unwrap();
        store.create_container("dead-letters").await.unwrap();
        store
    }

    /// A source of `total` records in pages of `page`, failing the calls in
    /// `fail_on`.
    fn scripted(total: u64, page: u64, fail_on: Vec<(u64, fn() -> SourceError)>) -> Arc<Scripted> {
        Arc::new(Scripted {
            total,
            page,
            calls: Mutex::new(0),
            fail_on,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_every_record_once_and_stores_cursor() {
        let hub = Arc::new(MemoryHub::new("ingest", 3));
        let store = stores().await;
        let source = scripted(50, 8, vec![]);
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
        let store = stores().await;
        let source = scripted(50, 25, vec![]);
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
        let store = stores().await;
        let first = scripted(20, 5, vec![]);
        run_until_caught_up(params(first, hub.clone(), store.clone())).await;
        // A second fetcher over a source that has grown: only the new records.
        let grown = scripted(30, 5, vec![]);
        let status = run_until_caught_up(params(grown, hub.clone(), store)).await;
        assert_eq!(status.records_published, 10);
        assert_eq!(status.records_total, 30);
        assert_eq!(all_ids(&hub).await.len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_retry_and_bad_responses_are_dead_lettered() {
        let hub = Arc::new(MemoryHub::new("ingest", 2));
        let store = stores().await;
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
        let store = stores().await;
        let unavailable = || SourceError::Transient {
            source_name: "orders".into(),
            message: "http 503 Service Unavailable for GET http://api.test/records?api_key=***"
                .into(),
            retry_after: None,
        };
        // Two pages, then three failures in a row, then healthy again.
        let source = scripted(
            20,
            5,
            vec![(3, unavailable), (4, unavailable), (5, unavailable)],
        );
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
