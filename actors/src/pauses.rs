//! Operator pauses that outlive restarts.
//!
//! A pause is a message to a running actor, and a restarted actor is a new
//! actor: without a record, a fetcher or partition consumer that crashed
//! while paused would come back running. The admin port records each pause
//! and resume here first, then messages the running actors; the factories
//! that (re)start fetchers and consumers read the record, so the new actor
//! starts in the state the operator asked for.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The node's pause switches (cheap to clone, shared).
#[derive(Clone, Default)]
pub struct Pauses(Arc<Mutex<Switches>>);

#[derive(Default)]
struct Switches {
    ingest: bool,
    sources: BTreeSet<String>,
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, Switches> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every partition consumer of this node.
    pub fn set_ingest(&self, paused: bool) {
        self.lock().ingest = paused;
    }

    pub fn ingest(&self) -> bool {
        self.lock().ingest
    }

    /// One source's fetcher.
    pub fn set_source(&self, source: &str, paused: bool) {
        let mut s = self.lock();
        if paused {
            s.sources.insert(source.to_string());
        } else {
            s.sources.remove(source);
        }
    }

    pub fn source(&self, source: &str) -> bool {
        self.lock().sources.contains(source)
    }
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Pauses")
            .field("ingest", &s.ingest)
            .field("sources", &s.sources)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_shared_by_clones() {
        let pauses = Pauses::default();
        let seen = pauses.clone();
        pauses.set_ingest(true);
        pauses.set_source("orders", true);
        assert!(seen.ingest() && seen.source("orders") && !seen.source("users"));
        pauses.set_source("orders", false);
        pauses.set_ingest(false);
        assert!(!seen.ingest() && !seen.source("orders"));
    }
}
