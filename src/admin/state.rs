//! What the admin handlers share: the running pipeline and the process's
//! log control, metrics, replay jobs, readiness and the node-drain request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use super::AdminSettings;
use super::auth::Auth;
use super::events::Feed;
use crate::pipeline::Pipeline;
use crate::replay::{ReplayContext, ReplayJobs};
use crate::telemetry::{LogControl, PipelineMetrics};

/// Everything [`AdminState::new`] needs.
pub struct AdminParts {
    pub pipeline: Arc<Pipeline>,
    pub settings: AdminSettings,
    /// `None` when the process did not install the reloadable subscriber
    /// (then `/log-level` answers 503).
    pub logs: Option<LogControl>,
    pub metrics: PrometheusHandle,
}

struct Inner {
    pipeline: Arc<Pipeline>,
    auth: Auth,
    drain_deadline: Duration,
    logs: Option<LogControl>,
    metrics: PrometheusHandle,
    pipeline_metrics: tokio::sync::Mutex<PipelineMetrics>,
    replays: ReplayJobs,
    ready: AtomicBool,
    drain_requested: Notify,
    versions: Mutex<BTreeMap<String, String>>,
    started_ms: i64,
    feed: Feed,
    /// Set when the server begins its graceful shutdown: open event
    /// streams end, so the shutdown does not wait for the browsers.
    closing: tokio::sync::watch::Sender<bool>,
}

/// Cheap to clone; one per server.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

impl AdminState {
    pub fn new(parts: AdminParts) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert("hubflow".to_string(), env!("CARGO_PKG_VERSION").to_string());
        AdminState {
            inner: Arc::new(Inner {
                auth: Auth::new(parts.settings.token.as_ref()),
                drain_deadline: parts.settings.drain_deadline,
                pipeline: parts.pipeline,
                logs: parts.logs,
                metrics: parts.metrics,
                pipeline_metrics: tokio::sync::Mutex::new(PipelineMetrics::new()),
                replays: ReplayJobs::new(),
                ready: AtomicBool::new(false),
                drain_requested: Notify::new(),
                versions: Mutex::new(versions),
                started_ms: hubflow_actors::now_ms(),
                feed: Feed::default(),
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.inner.pipeline
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn logs(&self) -> Option<&LogControl> {
        self.inner.logs.as_ref()
    }

    pub fn metrics_handle(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn pipeline_metrics(&self) -> &tokio::sync::Mutex<PipelineMetrics> {
        &self.inner.pipeline_metrics
    }

    pub fn replays(&self) -> &ReplayJobs {
        &self.inner.replays
    }

    pub fn replay_context(&self) -> ReplayContext {
        let p = self.pipeline();
        ReplayContext::new(&p.settings, &p.backends)
    }

    pub fn drain_deadline(&self) -> Duration {
        self.inner.drain_deadline
    }

    pub fn started_ms(&self) -> i64 {
        self.inner.started_ms
    }

    /// The shared producer of `/events` snapshots.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// End every open event stream (the server is shutting down).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Completes once [`Self::close_streams`] was called.
    pub async fn streams_closed(&self) {
        let mut closing = self.inner.closing.subscribe();
        let _ = closing.wait_for(|closed| *closed).await;
    }

    pub fn streams_are_closed(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// Mark the pipeline started (or, during shutdown, no longer serving).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_started(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Ask the service to drain the whole node and exit (`POST /drain`
    /// without a path).
    pub fn request_node_drain(&self) {
        self.inner.drain_requested.notify_one();
    }

    /// Completes once a node drain was requested.
    pub async fn node_drain_requested(&self) {
        self.inner.drain_requested.notified().await
    }

    /// Record a component version shown in `/status` (e.g. the transformer
    /// spec version after a hot swap).
    pub fn set_version(&self, component: &str, version: &str) {
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(component.to_string(), version.to_string());
    }

    pub fn versions(&self) -> BTreeMap<String, String> {
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
