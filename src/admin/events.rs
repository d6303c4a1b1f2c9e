//! `GET /events`: the `/status` document as server-sent events, for the
//! console.
//!
//! One producer task per process samples the in-memory status tree every
//! [`SAMPLE`] and publishes the document when the tree changed (an actor
//! restarted, stalled, drained...) and at least every [`EVERY`]; progress
//! from durable state is read at most every [`EVERY`], whatever the number
//! of viewers. Every stream subscribes to the producer's `watch` channel
//! (a slow reader skips to the newest document, it never queues them); the
//! producer starts with the first viewer and ends with the last.
//!
//! A browser's `EventSource` cannot send a header, so the console reads
//! this route with `fetch` and the `Authorization` header instead; on a
//! loopback address it is open like `/status`.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use hubflow_supervision::StatusNode;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::state::AdminState;
use super::status;
use crate::pipeline::Progress;

/// How often the tree is looked at.
pub const SAMPLE: Duration = Duration::from_millis(250);
/// The longest time between two documents, and the shortest between two
/// reads of durable progress.
pub const EVERY: Duration = Duration::from_secs(1);
/// A progress read that takes longer is given up (the document says so).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);

type Document = Arc<str>;

/// The running producer, if anyone watches.
#[derive(Default)]
pub struct Feed {
    sender: Mutex<Option<Arc<watch::Sender<Document>>>>,
}

impl Feed {
    /// A receiver of the newest document, starting the producer if none runs.
    fn subscribe(&self, state: &AdminState) -> watch::Receiver<Document> {
        let mut slot = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = slot.as_ref() {
            return sender.subscribe();
        }
        let sender = Arc::new(watch::Sender::new(Document::from("")));
        let receiver = sender.subscribe();
        *slot = Some(sender.clone());
        tokio::spawn(produce(state.clone(), sender));
        receiver
    }

    /// Called by the producer: true (and the producer is forgotten) when
    /// nobody watches any more. Under the lock, so a viewer arriving now
    /// either is counted or starts a new producer.
    fn abandoned(&self, sender: &watch::Sender<Document>) -> bool {
        let mut slot = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if sender.receiver_count() > 0 {
            return false;
        }
        *slot = None;
        true
    }
}

/// An actor this long without progress while busy shows as stalled.
pub const STALLED_AFTER_MS: u64 = 1_000;

/// What identifies a change worth a document at once: each node's state,
/// generation, restarts, stall, version and last error. Not the busy flag
/// or the queue depth: under load they change all the time, and the next
/// periodic document carries them.
fn shape(tree: &StatusNode) -> u64 {
    let mut h = DefaultHasher::new();
    for node in tree.walk() {
        node.path.hash(&mut h);
        format!("{:?}", node.state).hash(&mut h);
        node.generation.hash(&mut h);
        node.restarts.hash(&mut h);
        (node.stalled_ms >= STALLED_AFTER_MS).hash(&mut h);
        node.version.hash(&mut h);
        node.last_error.hash(&mut h);
    }
    h.finish()
}

async fn read_progress(state: &AdminState) -> anyhow::Result<Progress> {
    match tokio::time::timeout(PROGRESS_TIMEOUT, state.pipeline().progress()).await {
        Ok(progress) => progress,
        Err(_) => Err(anyhow::anyhow!(
            "reading progress took more than {}s",
            PROGRESS_TIMEOUT.as_secs()
        )),
    }
}

/// Durable progress as last read, and the read under way. Reads run beside
/// the producer, so a slow store (many partitions, a loaded machine) never
/// holds up the tree's updates: documents carry the newest completed read.
#[derive(Default)]
struct ProgressReads {
    last: Option<(Instant, Result<Progress, String>)>,
    pending: Option<tokio::task::JoinHandle<Result<Progress, String>>>,
}

impl ProgressReads {
    /// Take a finished read, and start the next one once the last is
    /// older than [`EVERY`]. The first document waits for the first read
    /// (bounded by [`PROGRESS_TIMEOUT`]); later ones never wait.
    async fn refresh(&mut self, state: &AdminState, now: Instant) {
        if self.pending.as_ref().is_some_and(|p| p.is_finished())
            && let Some(done) = self.pending.take()
        {
            self.last = Some((now, joined(done).await));
        }
        let stale = self
            .last
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= EVERY);
        if stale && self.pending.is_none() {
            let state = state.clone();
            let read =
                tokio::spawn(
                    async move { read_progress(&state).await.map_err(|e| format!("{e:#}")) },
                );
            match self.last {
                None => self.last = Some((now, joined(read).await)),
                Some(_) => self.pending = Some(read),
            }
        }
    }

    fn current(&self) -> anyhow::Result<Progress> {
        match self.last.as_ref().map(|(_, p)| p) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!("progress not read yet")),
        }
    }
}

async fn joined(
    read: tokio::task::JoinHandle<Result<Progress, String>>,
) -> Result<Progress, String> {
    read.await
        .unwrap_or_else(|e| Err(format!("progress read failed: {e}")))
}

impl Drop for ProgressReads {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
    }
}

async fn produce(state: AdminState, sender: Arc<watch::Sender<Document>>) {
    debug!("event feed started");
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: Option<(Instant, u64)> = None;
    let mut progress = ProgressReads::default();
    loop {
        tick.tick().await;
        if state.streams_are_closed() || state.feed().abandoned(&sender) {
            break;
        }
        let now = Instant::now();
        progress.refresh(&state, now).await;
        let shape = shape(&state.pipeline().root.snapshot());
        let due = match sent {
            None => true,
            Some((at, last)) => last != shape || now.duration_since(at) >= EVERY,
        };
        if !due {
            continue;
        }
        let mut document = status::document(&state, progress.current());
        document.ts_ms = Some(hubflow_actors::now_ms());
        let text = serde_json::to_string(&document).unwrap_or_default();
        sender.send_replace(Document::from(text));
        sent = Some((now, shape));
    }
    debug!("event feed stopped");
}

/// The handler of `GET /events`.
pub async fn stream(
    State(state): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut receiver = state.feed().subscribe(&state);
    // The newest document goes out at once, if there is one.
    receiver.mark_changed();
    let events = futures::stream::unfold((receiver, state), |(mut receiver, state)| async move {
        loop {
            tokio::select! {
                changed = receiver.changed() => {
                    changed.ok()?;
                    let document = receiver.borrow_and_update().clone();
                    if document.is_empty() {
                        continue;
                    }
                    let event = Event::default().event("status").data(&*document);
                    return Some((Ok(event), (receiver, state)));
                }
                _ = state.streams_closed() => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubflow_supervision::{NodeKind, NodeState};

    fn worker(generation: u64) -> StatusNode {
        StatusNode {
            name: "consumer".into(),
            path: "pipeline/ingest/p0000/consumer".into(),
            kind: NodeKind::Worker,
            state: NodeState::Running,
            generation,
            restarts: 0,
            last_error: None,
            since_ms: 0,
            version: None,
            history: Vec::new(),
            busy: false,
            queue_depth: 0,
            stalled_ms: 0,
            observed: serde_json::Value::Null,
            children: Vec::new(),
        }
    }

    #[test]
    fn a_restart_or_a_stall_is_a_change_a_queue_is_not() {
        let before = worker(1);
        let mut queued = before.clone();
        queued.queue_depth = 7;
        queued.since_ms = 99;
        queued.busy = true;
        queued.stalled_ms = 250;
        assert_eq!(shape(&before), shape(&queued));
        assert_ne!(shape(&before), shape(&worker(2)));
        let mut stalled = before.clone();
        stalled.stalled_ms = 5_000;
        assert_ne!(shape(&before), shape(&stalled));
        let mut drained = before.clone();
        drained.state = NodeState::Drained;
        assert_ne!(shape(&before), shape(&drained));
    }
}
