//! Logs and metrics for the process.
//!
//! - [`init_logs`] installs the tracing subscriber (text or JSON on stderr)
//!   behind a reloadable [`EnvFilter`]; the returned [`LogControl`] changes
//!   the filter at run time (the admin port's `POST /log-level`).
//! - [`install_metrics`] installs the Prometheus recorder once per process
//!   and returns the [`PrometheusHandle`] that renders `/metrics`; a second
//!   call returns the same handle.
//! - [`PipelineMetrics`] computes the metrics no actor can emit on its own,
//!   from durable state and the supervision status tree: per-partition lag
//!   (hub last enqueued sequence minus the writer and the transformer
//!   checkpoints), actor queue depths, busy/stalled gauges, restarts, stored
//!   dead letters. It is refreshed by the service loop and on every scrape.
//!   (The end-to-end latency, fetch to queryable, is recorded by the
//!   transformers when they commit, one observation per record.)

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use hubflow_supervision::{NodeKind, NodeState, StatusNode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::backends::Backends;
use crate::config::Settings;
use crate::pipeline::PartitionProgress;

/// The default log filter when `HUBFLOW_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Buckets of the `*_latency_seconds` histograms (seconds to an hour).
const LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0,
    900.0, 3600.0,
];
/// Buckets of every other histogram (mostly short operations).
const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {filter:?}: {message}")]
    InvalidFilter { filter: String, message: String },
    #[error("the log subscriber is gone: {0}")]
    Unavailable(String),
}

/// Changes the process's log filter at run time.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("filter", &self.current())
            .finish()
    }
}

impl LogControl {
    /// Replace the filter with `directives` (`EnvFilter` syntax, e.g.
    /// `info,hubflow_actors::transformer=debug`). An invalid directive is
    /// refused and the current filter stays.
    pub fn set(&self, directives: &str) -> Result<(), LogError> {
        let filter = parse_filter(directives)?;
        self.handle
            .reload(filter)
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        tracing::info!(filter = directives, "log filter changed");
        Ok(())
    }

    /// The filter in effect, as text.
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_else(|_| "(unavailable)".to_string())
    }
}

/// Parse `EnvFilter` directives strictly (a directive with an unknown level
/// or bad syntax is an error, not silently dropped).
pub fn parse_filter(directives: &str) -> Result<EnvFilter, LogError> {
    let invalid = |message: String| LogError::InvalidFilter {
        filter: directives.to_string(),
        message,
    };
    if directives.trim().is_empty() {
        return Err(invalid("empty filter".to_string()));
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| invalid(e.to_string()))
}

static LOGS: OnceLock<LogControl> = OnceLock::new();

/// Install the global subscriber (once per process; later calls return the
/// first call's control). The initial filter is `HUBFLOW_LOG`, or
/// [`DEFAULT_LOG_FILTER`] when unset or invalid (with a warning).
pub fn init_logs(format: LogFormat) -> LogControl {
    init_logs_with(format, None)
}

/// [`init_logs`], and with `tracer` every span (and the events in it) also
/// goes to OpenTelemetry (see [`crate::otel`]); the log filter applies to
/// both.
pub fn init_logs_with(
    format: LogFormat,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> LogControl {
    LOGS.get_or_init(|| {
        let from_env = std::env::var("HUBFLOW_LOG").ok();
        let (filter, rejected) = match from_env.as_deref().map(parse_filter) {
            Some(Ok(filter)) => (filter, None),
            Some(Err(error)) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some(error)),
            None => (EnvFilter::new(DEFAULT_LOG_FILTER), None),
        };
        let (filter_layer, handle) = reload::Layer::new(filter);
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        let fmt = match format {
            LogFormat::Text => fmt.compact().boxed(),
            LogFormat::Json => fmt.json().boxed(),
        };
        // Fails only if another subscriber is installed (tests): the control
        // then drives a filter nobody reads, which is harmless.
        let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
        let _ = tracing_subscriber::registry()
            .with(filter_layer)
            .with(fmt)
            .with(otel)
            .try_init();
        if let Some(error) = rejected {
            warn!(%error, "HUBFLOW_LOG ignored, using the default filter");
        }
        LogControl { handle }
    })
    .clone()
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder as the global `metrics` recorder (once
/// per process) and return the handle that renders it.
pub fn install_metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(
                    Matcher::Suffix("_latency_seconds".to_string()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| b.set_buckets(DEFAULT_BUCKETS));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                // Only on empty bucket lists, which the constants are not.
                Err(error) => {
                    warn!(%error, "histogram buckets refused; histograms render as summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                warn!(%error, "another metrics recorder is installed; /metrics will be empty");
            }
            describe_metrics();
            handle
        })
        .clone()
}

/// Render the Prometheus text exposition (runs the recorder's upkeep first).
pub fn render_metrics(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// HELP text of every metric Hubflow emits (Prometheus linters, and
/// `promtool check metrics` in tests/suite/admin.rs, require one per metric).
/// A metric added anywhere in the workspace gets its line here.
const METRIC_HELP: &[(MetricKind, &str, &str)] = &[
    // Computed here (see [`PipelineMetrics`]).
    (
        Gauge,
        "hubflow_writer_lag_events",
        "events in hub ingest not yet landed in raw blobs (last enqueued sequence - writer checkpoint)",
    ),
    (
        Gauge,
        "hubflow_transformer_lag_events",
        "events in hub ingest not yet curated (last enqueued sequence - transformer checkpoint)",
    ),
    (
        Histogram,
        "hubflow_end_to_end_latency_seconds",
        "fetch of a record to its curated commit (queryable), one observation per curated record",
    ),
    (
        Gauge,
        "hubflow_actor_queue_depth",
        "pending work an actor reports through its probe",
    ),
    (
        Gauge,
        "hubflow_actor_busy",
        "1 when the actor holds work it must finish",
    ),
    (
        Gauge,
        "hubflow_actor_stalled_seconds",
        "how long a busy actor has gone without progress",
    ),
    (
        Gauge,
        "hubflow_actor_up",
        "1 when the node of the supervision tree is running",
    ),
    (
        Counter,
        "hubflow_actor_restarts_total",
        "restarts of each node of the supervision tree (by path)",
    ),
    (
        Gauge,
        "hubflow_pipeline_ready",
        "1 when the root supervisor has not failed",
    ),
    (
        Gauge,
        "hubflow_storage_write_blocked",
        "1 while an actor of the stage cannot write because its storage is full (see /readyz)",
    ),
    (
        Gauge,
        "hubflow_dlq_stored_letters",
        "dead letters in the dead-letter container, by stage and whether they were redriven",
    ),
    (
        Counter,
        "hubflow_dlq_redriven_total",
        "dead letters redriven to hub ingest",
    ),
    (
        Counter,
        "hubflow_replay_blobs_total",
        "raw blobs curated again by replays",
    ),
    (
        Counter,
        "hubflow_replay_rows_total",
        "rows written by replays",
    ),
    // Emitted by the actors, supervision and adapters.
    (
        Histogram,
        "hubflow_transformer_record_latency_seconds",
        "per record: hub enqueued time to the start of its curation",
    ),
    (
        Counter,
        "hubflow_dead_letters_total",
        "dead letters written, by stage",
    ),
    (
        Counter,
        "hubflow_supervisor_restarts_total",
        "child restarts, by supervisor",
    ),
    (
        Counter,
        "hubflow_supervisor_stalls_total",
        "actors killed by a health check for making no progress",
    ),
    (
        Counter,
        "hubflow_fetcher_pages_total",
        "pages published by fetchers",
    ),
    (
        Counter,
        "hubflow_fetcher_records_total",
        "records published by fetchers",
    ),
    (
        Counter,
        "hubflow_fetcher_errors_total",
        "failed fetches, by kind",
    ),
    (
        Counter,
        "hubflow_fetcher_dead_letters_total",
        "unusable responses dead-lettered by fetchers",
    ),
    (
        Counter,
        "hubflow_fetcher_page_log_errors_total",
        "page-log writes that failed (those pages cannot be traced)",
    ),
    (
        Counter,
        "hubflow_fetcher_retry_budget_exhausted_total",
        "fetches that ran out of retry budget",
    ),
    (Counter, "hubflow_writer_blobs_total", "raw blobs written"),
    (
        Counter,
        "hubflow_writer_bytes_total",
        "raw blob bytes written",
    ),
    (
        Counter,
        "hubflow_writer_records_total",
        "records landed in raw blobs",
    ),
    (
        Counter,
        "hubflow_writer_sequence_gaps_total",
        "gaps in hub sequence numbers seen by writers",
    ),
    (
        Counter,
        "hubflow_fetcher_batch_splits_total",
        "publishes the hub refused as too large and retried as two halves",
    ),
    (
        Counter,
        "hubflow_notices_events_total",
        "events read from hub landed, by shape (writer, event_grid, cloud_event, malformed)",
    ),
    (
        Counter,
        "hubflow_notices_routed_total",
        "raw blob notices that woke a transformer",
    ),
    (
        Counter,
        "hubflow_notices_ignored_total",
        "notices for blobs outside the raw container or hub (not routed)",
    ),
    (
        Counter,
        "hubflow_transformer_blobs_total",
        "raw blobs curated",
    ),
    (
        Counter,
        "hubflow_transformer_rows_total",
        "rows written to curated",
    ),
    (
        Counter,
        "hubflow_transformer_duplicates_total",
        "duplicate records dropped by the dedupe window",
    ),
    (
        Counter,
        "hubflow_transformer_rejected_total",
        "records rejected by the curated format",
    ),
    (
        Counter,
        "hubflow_transformer_quarantined_total",
        "corrupt raw blobs quarantined",
    ),
    (
        Gauge,
        "hubflow_transform_config_drift",
        "1 when the transform this node runs (from the spec log) differs from its config file's",
    ),
    (
        Gauge,
        "hubflow_transform_active_seq",
        "sequence number in the spec log of the transform version this node runs",
    ),
    (
        Counter,
        "hubflow_transform_swaps_total",
        "cluster-wide transform swaps decided, by outcome",
    ),
    (
        Counter,
        "hubflow_transform_apply_failures_total",
        "transform versions this node failed to apply (drain, replace or probation)",
    ),
    (
        Counter,
        "hubflow_transform_sync_errors_total",
        "rounds of following the spec logs that failed (unreadable, corrupt or unappliable)",
    ),
    (
        Counter,
        "hubflow_source_apply_failures_total",
        "source settings versions this node failed to apply, by source",
    ),
    (
        Counter,
        "hubflow_transformer_chain_gaps_total",
        "gaps skipped in the raw chain",
    ),
    (
        Counter,
        "hubflow_curate_records_total",
        "records accepted by the curated format",
    ),
    (
        Counter,
        "hubflow_curate_rejected_records_total",
        "records rejected by the curated format",
    ),
    (
        Counter,
        "hubflow_curate_schema_conflicts_total",
        "schema widenings and renames",
    ),
    (
        Histogram,
        "hubflow_curate_duration_seconds",
        "time to curate one raw blob",
    ),
    (
        Counter,
        "hubflow_source_requests_total",
        "HTTP requests to sources",
    ),
    (
        Counter,
        "hubflow_source_response_bytes_total",
        "response bytes read from sources",
    ),
    (
        Counter,
        "hubflow_source_not_modified_total",
        "304 answers from sources",
    ),
    (
        Counter,
        "hubflow_source_token_requests_total",
        "OAuth token requests",
    ),
    (
        Histogram,
        "hubflow_source_request_duration_seconds",
        "source request latency",
    ),
    (
        Histogram,
        "hubflow_source_rate_limit_wait_seconds",
        "time waited for the source rate limit",
    ),
    (
        Counter,
        "hubflow_demo_requests_total",
        "requests served by the demo api",
    ),
    (
        Counter,
        "hubflow_embedded_hub_published_events_total",
        "events published to the embedded hub",
    ),
    (
        Counter,
        "hubflow_embedded_hub_pruned_events_total",
        "events pruned by retention",
    ),
    (
        Counter,
        "hubflow_embedded_hub_expired_unread_events_total",
        "events pruned before every consumer read them",
    ),
    (
        Counter,
        "hubflow_fsblob_conflicts_total",
        "conditional put conflicts in the filesystem blob store",
    ),
    (
        Counter,
        "hubflow_fsblob_put_bytes_total",
        "bytes written to the filesystem blob store",
    ),
    (
        Counter,
        "hubflow_azblob_requests_total",
        "Azure Blob Storage requests",
    ),
    (
        Counter,
        "hubflow_azblob_conflicts_total",
        "Azure Blob Storage conditional-write conflicts",
    ),
    (
        Counter,
        "hubflow_azblob_get_bytes_total",
        "bytes read from Azure Blob Storage",
    ),
    (
        Counter,
        "hubflow_azblob_put_bytes_total",
        "bytes written to Azure Blob Storage",
    ),
    (
        Histogram,
        "hubflow_azblob_request_duration_seconds",
        "Azure Blob Storage request latency",
    ),
    (
        Counter,
        "hubflow_eventhubs_send_batches_total",
        "batches (publish calls) sent to Azure Event Hubs",
    ),
    (
        Counter,
        "hubflow_eventhubs_sent_events_total",
        "events sent to Azure Event Hubs",
    ),
    (
        Counter,
        "hubflow_eventhubs_sent_bytes_total",
        "encoded batch bytes sent to Azure Event Hubs",
    ),
    (
        Histogram,
        "hubflow_eventhubs_send_duration_seconds",
        "Azure Event Hubs publish latency (batch built and sent)",
    ),
    (
        Counter,
        "hubflow_eventhubs_batches_too_large_total",
        "publishes refused because the events do not fit one Event Hubs batch",
    ),
    (
        Counter,
        "hubflow_eventhubs_received_events_total",
        "events received from Azure Event Hubs",
    ),
    (
        Counter,
        "hubflow_eventhubs_errors_total",
        "Azure Event Hubs failures by operation and kind",
    ),
    (
        Counter,
        "hubflow_eventhubs_client_opens_total",
        "Azure Event Hubs producer and consumer clients opened (reconnects included)",
    ),
    (
        Counter,
        "hubflow_cluster_ownership_changes_total",
        "partition ownership changes",
    ),
    (
        Gauge,
        "hubflow_cluster_owned_partitions",
        "partitions this node owns",
    ),
    (
        Gauge,
        "hubflow_cluster_lease_held",
        "1 when this node holds a source's fetcher lease",
    ),
    (
        Counter,
        "hubflow_sql_connections_total",
        "Postgres wire protocol connections accepted",
    ),
    (
        Counter,
        "hubflow_sql_connections_refused_total",
        "Postgres wire protocol connections refused at sql.max_connections",
    ),
    (
        Gauge,
        "hubflow_sql_connections_active",
        "Postgres wire protocol connections open now",
    ),
    (
        Counter,
        "hubflow_sql_failed_logins_total",
        "SQL logins refused (wrong password, unknown user or database), by protocol (postgres, flight)",
    ),
    (
        Counter,
        "hubflow_sql_protocol_errors_total",
        "SQL connections ended by a protocol error (garbage, bad messages)",
    ),
    (
        Counter,
        "hubflow_sql_queries_total",
        "SQL statements finished, by protocol (postgres, flight) and outcome (ok, error)",
    ),
    (
        Counter,
        "hubflow_sql_queries_killed_total",
        "SQL statements stopped, by protocol and reason (timeout, rows, cancel)",
    ),
    (
        Counter,
        "hubflow_sql_refused_total",
        "SQL statements refused because the server is read-only, by protocol",
    ),
    (
        Histogram,
        "hubflow_sql_query_duration_seconds",
        "SQL statement time from planning to the last row sent, by protocol",
    ),
    (Gauge, "hubflow_sql_tables", "tables the SQL server serves"),
    (
        Counter,
        "hubflow_sql_refresh_errors_total",
        "SQL table refreshes that failed (the tables stay as they were)",
    ),
];

#[derive(Clone, Copy)]
enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}
use MetricKind::{Counter, Gauge, Histogram};

fn describe_metrics() {
    for (kind, name, help) in METRIC_HELP {
        match kind {
            Counter => metrics::describe_counter!(*name, *help),
            Gauge => metrics::describe_gauge!(*name, *help),
            Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// The metrics computed outside the actors; see the module docs.
#[derive(Default)]
pub struct PipelineMetrics {
    /// When stored dead letters were last counted (listing is not free).
    dlq_counted: Option<Instant>,
}

/// How often dead letters are counted at most.
const DLQ_COUNT_EVERY: Duration = Duration::from_secs(15);

impl PipelineMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refresh every computed gauge.
    pub async fn refresh(
        &mut self,
        settings: &Settings,
        backends: &Backends,
        tree: &StatusNode,
    ) -> anyhow::Result<()> {
        record_tree(tree);
        crate::health::record(&crate::health::write_blocks(
            tree,
            hubflow_actors::now_ms(),
            settings.supervision.backoff_reset_ms,
        ));
        self.record_lag(settings, backends).await?;
        if self
            .dlq_counted
            .is_none_or(|at| at.elapsed() >= DLQ_COUNT_EVERY)
        {
            self.dlq_counted = Some(Instant::now());
            let container = &settings.storage.dead_letter_container;
            match crate::dlq::count(backends.blobs.as_ref(), container).await {
                Ok(counts) => {
                    for ((stage, redriven), n) in counts {
                        metrics::gauge!(
                            "hubflow_dlq_stored_letters",
                            "stage" => stage,
                            "redriven" => redriven.to_string()
                        )
                        .set(n as f64);
                    }
                }
                Err(error) => warn!(%error, "cannot count dead letters"),
            }
        }
        Ok(())
    }

    async fn record_lag(&mut self, settings: &Settings, backends: &Backends) -> anyhow::Result<()> {
        for row in PartitionProgress::read_all(settings, backends)
            .await
            .context("reading partition progress")?
        {
            let label = row.partition.to_string();
            metrics::gauge!("hubflow_writer_lag_events", "partition" => label.clone())
                .set(row.in_hub.saturating_sub(row.landed) as f64);
            metrics::gauge!("hubflow_transformer_lag_events", "partition" => label)
                .set(row.in_hub.saturating_sub(row.transformed) as f64);
        }
        Ok(())
    }
}

/// Gauges and counters read from the status tree.
pub fn record_tree(tree: &StatusNode) {
    metrics::gauge!("hubflow_pipeline_ready").set(if tree.state == NodeState::Failed {
        0.0
    } else {
        1.0
    });
    for node in tree.walk() {
        let path = node.path.clone();
        metrics::counter!("hubflow_actor_restarts_total", "path" => path.clone())
            .absolute(node.restarts);
        metrics::gauge!("hubflow_actor_up", "path" => path.clone()).set(
            if node.state == NodeState::Running {
                1.0
            } else {
                0.0
            },
        );
        if node.kind == NodeKind::Worker {
            metrics::gauge!("hubflow_actor_queue_depth", "path" => path.clone())
                .set(node.queue_depth as f64);
            metrics::gauge!("hubflow_actor_busy", "path" => path.clone()).set(if node.busy {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("hubflow_actor_stalled_seconds", "path" => path)
                .set(node.stalled_ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed_strictly() {
        assert!(parse_filter("info,hubflow=debug").is_ok());
        assert!(parse_filter("hubflow_actors::transformer=trace").is_ok());
        for bad in ["", "  ", "hubflow=loud", "info,[=x"] {
            let err = parse_filter(bad).unwrap_err();
            assert!(
                matches!(err, LogError::InvalidFilter { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn log_control_swaps_the_filter_and_keeps_it_on_bad_input() {
        let control = init_logs(LogFormat::Text);
        control.set("warn,hubflow=debug").unwrap();
        let before = control.current();
        assert!(before.contains("hubflow=debug"), "{before}");
        assert!(control.set("hubflow=nonsense").is_err());
        assert_eq!(control.current(), before);
        control.set(DEFAULT_LOG_FILTER).unwrap();
    }

    #[test]
    fn metrics_install_once_and_render() {
        let a = install_metrics();
        let b = install_metrics();
        metrics::counter!("hubflow_test_renders_total").increment(2);
        let text = render_metrics(&a);
        assert!(text.contains("hubflow_test_renders_total 2"), "{text}");
        // The second call returns the same recorder's handle.
        assert!(render_metrics(&b).contains("hubflow_test_renders_total 2"));
    }
}
