//! The observable side of a supervised actor.
//!
//! Every supervised actor receives an [`ActorProbe`] from its factory. The actor
//! writes to it (progress ticks, busy flag, queue depth, a JSON snapshot of its
//! state, its typed exit reason); supervisors, health checks, tests and the
//! admin port read it without sending the actor a message, so a stuck actor
//! can still be observed.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Why an actor stopped. Supervisors decide from this, never from strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ExitReason {
    /// The actor finished its work (a bounded source ran out, for example).
    Completed,
    /// Asked to stop (drain, shutdown, replace).
    Shutdown,
    /// A peer it depends on is gone; restarting it alone will not help.
    DownstreamClosed,
    /// Failed with an error (or panicked).
    Failed(String),
    /// Killed by a health check because it made no progress while busy.
    Stalled,
}

impl ExitReason {
    /// True when the supervisor should treat the exit as abnormal.
    pub fn is_abnormal(&self) -> bool {
        matches!(
            self,
            ExitReason::Failed(_) | ExitReason::Stalled | ExitReason::DownstreamClosed
        )
    }
}

#[derive(Debug)]
struct ProbeInner {
    progress: AtomicU64,
    busy: AtomicBool,
    queue_depth: AtomicU64,
    last_progress: Mutex<Instant>,
    state: Mutex<serde_json::Value>,
    exit: Mutex<Option<ExitReason>>,
    /// Fault injection: panic at the next progress or busy mark.
    panic_requested: AtomicBool,
}

/// A cheap, cloneable handle shared between an actor and whoever watches it.
#[derive(Debug, Clone)]
pub struct ActorProbe {
    inner: Arc<ProbeInner>,
}

impl Default for ActorProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl ActorProbe {
    pub fn new() -> Self {
        ActorProbe {
            inner: Arc::new(ProbeInner {
                progress: AtomicU64::new(0),
                busy: AtomicBool::new(false),
                queue_depth: AtomicU64::new(0),
                last_progress: Mutex::new(Instant::now()),
                state: Mutex::new(serde_json::Value::Null),
                exit: Mutex::new(None),
                panic_requested: AtomicBool::new(false),
            }),
        }
    }

    /// Record that the actor completed a unit of work.
    pub fn tick(&self) {
        self.panic_if_requested();
        self.inner.progress.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.last_progress) = Instant::now();
    }

    /// Mark whether the actor currently holds work it is expected to finish.
    /// Only a busy actor can be judged stalled.
    pub fn set_busy(&self, busy: bool) {
        if busy {
            self.panic_if_requested();
        }
        if busy && !self.inner.busy.swap(true, Ordering::Relaxed) {
            // Becoming busy starts the stall clock afresh.
            *lock(&self.inner.last_progress) = Instant::now();
        } else if !busy {
            self.inner.busy.store(false, Ordering::Relaxed);
        }
    }

    pub fn set_queue_depth(&self, depth: u64) {
        self.inner.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// Replace the actor's observable state snapshot.
    pub fn publish<S: Serialize>(&self, state: &S) {
        let value = serde_json::to_value(state).unwrap_or(serde_json::Value::Null);
        *lock(&self.inner.state) = value;
    }

    /// Record the typed reason the actor is about to stop with.
    pub fn set_exit(&self, reason: ExitReason) {
        *lock(&self.inner.exit) = Some(reason);
    }

    pub fn take_exit(&self) -> Option<ExitReason> {
        lock(&self.inner.exit).take()
    }

    /// Fault injection (chaos tests, `hubflow ctl panic`): the actor panics
    /// the next time it takes work or records progress, that is inside its
    /// own handler, exactly where a bug would panic.
    pub fn request_panic(&self) {
        self.inner.panic_requested.store(true, Ordering::Relaxed);
    }

    fn panic_if_requested(&self) {
        if self.inner.panic_requested.swap(false, Ordering::Relaxed) {
            panic!("injected panic");
        }
    }

    pub fn progress(&self) -> u64 {
        self.inner.progress.load(Ordering::Relaxed)
    }

    pub fn is_busy(&self) -> bool {
        self.inner.busy.load(Ordering::Relaxed)
    }

    pub fn queue_depth(&self) -> u64 {
        self.inner.queue_depth.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> serde_json::Value {
        lock(&self.inner.state).clone()
    }

    /// How long a busy actor has gone without progress (zero when idle).
    pub fn stalled_for(&self) -> Duration {
        if !self.is_busy() {
            return Duration::ZERO;
        }
        lock(&self.inner.last_progress).elapsed()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned probe only means a panicking actor held it; the data is plain.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stall_clock_runs_only_while_busy() {
        let probe = ActorProbe::new();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(probe.stalled_for(), Duration::ZERO);
        probe.set_busy(true);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(probe.stalled_for(), Duration::from_secs(3));
        probe.tick();
        assert_eq!(probe.stalled_for(), Duration::ZERO);
        probe.set_busy(false);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(probe.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn a_requested_panic_fires_once_on_the_next_busy_mark() {
        let probe = ActorProbe::new();
        probe.set_busy(false);
        probe.request_panic();
        probe.set_busy(false);
        let fired = std::panic::catch_unwind(|| probe.set_busy(true));
        assert!(fired.is_err());
        probe.set_busy(true);
        probe.tick();
    }

    #[test]
    fn exit_reason_is_typed() {
        let probe = ActorProbe::new();
        probe.set_exit(ExitReason::Failed("boom".into()));
        assert!(probe.take_exit().is_some_and(|r| r.is_abnormal()));
        assert_eq!(probe.take_exit(), None);
    }
}
