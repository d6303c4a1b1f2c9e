//! The status tree: every supervisor and actor with its path, state,
//! generation, restart count, last error and queue depth.
//!
//! Supervisors write their nodes as things happen; readers (the admin port,
//! tests, the CLI status line) take a [`StatusNode`] snapshot without sending
//! any actor a message, so a stuck actor is still visible.

use std::sync::{Arc, Mutex, MutexGuard};

use ractor::ActorCell;
use serde::{Deserialize, Serialize};

use crate::probe::ActorProbe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Supervisor,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Starting,
    Running,
    /// Waiting for its backoff delay before the next start.
    BackingOff,
    /// Exited normally and is not restarted (temporary/transient children).
    Stopped,
    /// Gave up: restart intensity exceeded (on the root: the pipeline failed).
    Failed,
    /// Stopped on request (drain); not restarted until asked to.
    Drained,
}

/// A serializable snapshot of one node and its subtree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusNode {
    pub name: String,
    pub path: String,
    pub kind: NodeKind,
    pub state: NodeState,
    pub generation: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// When the state last changed (ms since the epoch).
    pub since_ms: i64,
    /// The version label of what runs here (see `ChildSpec::with_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Recent lifecycle events (drain, replace, promote, roll back), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    pub busy: bool,
    pub queue_depth: u64,
    /// How long a busy actor has gone without progress.
    pub stalled_ms: u64,
    /// The actor's own published state (its status struct as JSON).
    pub observed: serde_json::Value,
    pub children: Vec<StatusNode>,
}

impl StatusNode {
    /// Depth-first iterator over this node and its descendants.
    pub fn walk(&self) -> Vec<&StatusNode> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }

    pub fn find(&self, path: &str) -> Option<&StatusNode> {
        self.walk().into_iter().find(|n| n.path == path)
    }
}

struct Node {
    name: String,
    path: String,
    kind: NodeKind,
    state: NodeState,
    generation: u64,
    restarts: u64,
    last_error: Option<String>,
    since_ms: i64,
    version: Option<String>,
    history: std::collections::VecDeque<String>,
    probe: Option<ActorProbe>,
    cell: Option<ActorCell>,
    children: Vec<StatusHandle>,
}

/// How many lifecycle events a node keeps.
pub const HISTORY_LEN: usize = 32;

/// A shared, live node of the status tree.
#[derive(Clone)]
pub struct StatusHandle(Arc<Mutex<Node>>);

impl std::fmt::Debug for StatusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatusHandle").field(&self.path()).finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl StatusHandle {
    pub fn new(name: &str, path: String, kind: NodeKind) -> Self {
        StatusHandle(Arc::new(Mutex::new(Node {
            name: name.to_string(),
            path,
            kind,
            state: NodeState::Starting,
            generation: 0,
            restarts: 0,
            last_error: None,
            since_ms: now_ms(),
            version: None,
            history: Default::default(),
            probe: None,
            cell: None,
            children: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Node> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> String {
        self.lock().path.clone()
    }

    pub fn name(&self) -> String {
        self.lock().name.clone()
    }

    pub fn state(&self) -> NodeState {
        self.lock().state
    }

    pub fn kind(&self) -> NodeKind {
        self.lock().kind
    }

    pub fn cell(&self) -> Option<ActorCell> {
        self.lock().cell.clone()
    }

    pub fn probe(&self) -> Option<ActorProbe> {
        self.lock().probe.clone()
    }

    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn children(&self) -> Vec<StatusHandle> {
        self.lock().children.clone()
    }

    pub(crate) fn set_state(&self, state: NodeState) {
        let mut n = self.lock();
        if n.state != state {
            n.state = state;
            n.since_ms = now_ms();
        }
    }

    pub(crate) fn started(&self, cell: ActorCell, probe: ActorProbe, generation: u64) {
        let mut n = self.lock();
        n.cell = Some(cell);
        n.probe = Some(probe);
        n.generation = generation;
        n.state = NodeState::Running;
        n.since_ms = now_ms();
    }

    pub(crate) fn exited(&self, error: Option<String>, restarted: bool) {
        let mut n = self.lock();
        n.cell = None;
        if error.is_some() {
            n.last_error = error;
        }
        if restarted {
            n.restarts += 1;
        }
        n.since_ms = now_ms();
    }

    pub(crate) fn set_children(&self, children: Vec<StatusHandle>) {
        self.lock().children = children;
    }

    pub fn version(&self) -> Option<String> {
        self.lock().version.clone()
    }

    pub(crate) fn set_version(&self, version: Option<String>) {
        self.lock().version = version;
    }

    /// Append a lifecycle event (the last [`HISTORY_LEN`] are kept).
    pub(crate) fn record(&self, event: String) {
        let mut n = self.lock();
        if n.history.len() == HISTORY_LEN {
            n.history.pop_front();
        }
        n.history.push_back(event);
    }

    pub(crate) fn set_error(&self, error: String) {
        self.lock().last_error = Some(error);
    }

    /// The node at `path` in this subtree.
    pub fn find(&self, path: &str) -> Option<StatusHandle> {
        if self.path() == path {
            return Some(self.clone());
        }
        self.children().iter().find_map(|c| c.find(path))
    }

    /// Every worker (non-supervisor) node in this subtree.
    pub fn workers(&self) -> Vec<StatusHandle> {
        let mut out = Vec::new();
        let (kind, children) = {
            let n = self.lock();
            (n.kind, n.children.clone())
        };
        if kind == NodeKind::Worker {
            out.push(self.clone());
        }
        for c in children {
            out.extend(c.workers());
        }
        out
    }

    pub fn snapshot(&self) -> StatusNode {
        let (node, children) = {
            let n = self.lock();
            let (busy, queue_depth, stalled_ms, observed) = match &n.probe {
                Some(p) => (
                    p.is_busy(),
                    p.queue_depth(),
                    p.stalled_for().as_millis() as u64,
                    p.state(),
                ),
                None => (false, 0, 0, serde_json::Value::Null),
            };
            (
                StatusNode {
                    name: n.name.clone(),
                    path: n.path.clone(),
                    kind: n.kind,
                    state: n.state,
                    generation: n.generation,
                    restarts: n.restarts,
                    last_error: n.last_error.clone(),
                    since_ms: n.since_ms,
                    version: n.version.clone(),
                    history: n.history.iter().cloned().collect(),
                    busy,
                    queue_depth,
                    stalled_ms,
                    observed,
                    children: Vec::new(),
                },
                n.children.clone(),
            )
        };
        StatusNode {
            children: children.iter().map(StatusHandle::snapshot).collect(),
            ..node
        }
    }
}
