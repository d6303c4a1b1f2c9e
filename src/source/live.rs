//! The settings this node runs per source: [`ActiveSources`], shared by
//! every clone of the node's settings, so the tree and the cluster's
//! ownership manager build a source's fetcher from its newest version. The
//! hot swap that changes them is `crate::swap::source`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hubflow_actors::ports::Source;
use hubflow_actors::retry::RetryBudget;

/// Settings a node runs for one source.
#[derive(Clone)]
pub struct LiveSource {
    pub source: Arc<dyn Source>,
    pub budget: RetryBudget,
    pub version: String,
    /// Sequence number in the spec log; 0 when not kept there.
    pub seq: u64,
    /// Kept in the spec log (false for settings with inline secrets, and for
    /// the built-in demo source).
    pub durable: bool,
    /// The built-in demo source (no `[[sources]]` configured): its settings
    /// name a loopback port chosen at start, so they are never kept.
    pub builtin: bool,
}

/// The settings this node runs per source (shared by every clone).
#[derive(Clone, Default)]
pub struct ActiveSources(Arc<Mutex<BTreeMap<String, LiveSource>>>);

impl std::fmt::Debug for ActiveSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: BTreeMap<String, String> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect();
        f.debug_tuple("ActiveSources").field(&versions).finish()
    }
}

impl ActiveSources {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LiveSource>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<LiveSource> {
        self.lock().get(name).cloned()
    }

    pub fn set(&self, name: &str, live: LiveSource) {
        self.lock().insert(name.to_string(), live);
    }

    pub fn snapshot(&self) -> Vec<(String, LiveSource)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
