//! `hubflow run`: start the backends, the sources (the demo API when none is
//! configured), the pipeline and the admin port; print a status line; stop
//! on a signal, an admin node drain or, with `exit_when_idle`, once
//! everything fetched is curated.
//!
//! Lifecycle: the first SIGTERM/Ctrl-C (or `POST /drain` without a path)
//! drains everything (the tree stops gracefully: in-flight batches finish
//! and checkpoint) within `[admin] shutdown_deadline_secs`, and `run`
//! returns Ok (exit 0). Past the deadline it returns
//! [`ServiceError::DrainTimeout`]; a second signal while draining returns
//! [`ServiceError::Interrupted`] at once. Neither corrupts anything: every
//! write is temp + rename and every checkpoint moves only after its data is
//! durable, so the next start resumes from the last checkpoint.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hubflow_actors::ports::Source;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, AdminParts, AdminState};
use crate::backends::Backends;
use crate::config::Settings;
use crate::demo;
use crate::pipeline::{Pipeline, Progress};
use crate::telemetry::{self, LogControl};

/// How `run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit 0 once sources are caught up and everything is curated.
    pub exit_when_idle: bool,
    /// Print the status line (to stderr) every this often.
    pub status_every: Option<Duration>,
}

/// What the process hands `run` beyond settings.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// The reloadable log filter (for `POST /log-level`).
    pub logs: Option<LogControl>,
    /// Called with the admin port's address once it listens.
    pub on_admin_listening: Option<tokio::sync::mpsc::UnboundedSender<std::net::SocketAddr>>,
    /// Called with the SQL server's address once it listens (`[sql]
    /// enabled`).
    pub on_sql_listening: Option<tokio::sync::mpsc::UnboundedSender<std::net::SocketAddr>>,
    /// Notified: stop as on a first signal (for embedding `run` in a
    /// process that handles signals itself, and for tests).
    pub stop: Option<Arc<tokio::sync::Notify>>,
}

/// How a run ended other than normally.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("a second signal arrived while draining; exited without finishing the drain")]
    Interrupted,
    #[error("draining did not finish within {0:?}")]
    DrainTimeout(Duration),
}

/// Why the main loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal,
    AdminDrain,
    Requested,
    Idle,
}

/// Run until a signal, an admin node drain, or idle (see the module docs).
pub async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    run_with(settings, options, Hooks::default()).await
}

/// [`run`] with the process's log control and hooks.
pub async fn run_with(settings: Settings, options: RunOptions, hooks: Hooks) -> anyhow::Result<()> {
    let admin_settings = settings.admin.clone();
    let metrics = telemetry::install_metrics();
    // Listen for signals before anything starts, so none is missed.
    let mut signals = Signals::new().context("installing signal handlers")?;
    let admin_listener = if admin_settings.enabled {
        Some(admin::bind(&admin_settings).await?)
    } else {
        None
    };

    // `[azure_blob]` puts the blob store in Azure, `[event_hubs]` the hubs;
    // whatever is not configured stays embedded under the data directory.
    let backends = Backends::open(&settings).await?;
    backends.ensure_containers(&settings).await?;
    let (sources, demo) = start_sources(&settings, &backends).await?;
    let source_count = sources.len();
    let shutdown_deadline = admin_settings.shutdown_deadline;
    let sql_settings = settings.sql.clone();
    let curated = settings.curated_location();
    let pipeline = Arc::new(Pipeline::start(settings, backends, sources).await?);
    info!("pipeline started");
    // Follow transform swaps made on any node (the durable spec log).
    let (sync_stop, sync_stopped) = tokio::sync::watch::channel(false);
    let sync_task = tokio::spawn(crate::swap::transform::run_sync(
        Arc::downgrade(&pipeline),
        sync_stopped,
    ));
    // The SQL server for data scientists, when `[sql] enabled`.
    let sql = if sql_settings.enabled {
        let server = crate::sql::SqlServer::start(&sql_settings, curated).await?;
        if let Some(tx) = &hooks.on_sql_listening {
            let _ = tx.send(server.pg_addr());
        }
        Some(server)
    } else {
        None
    };
    let admin = match admin_listener {
        Some(listener) => Some(AdminPort::start(
            listener,
            AdminParts {
                pipeline: pipeline.clone(),
                settings: admin_settings.clone(),
                logs: hooks.logs.clone(),
                metrics,
            },
            &hooks,
        )?),
        None => None,
    };

    let stop = watch(
        &pipeline,
        &options,
        &hooks,
        admin.as_ref().map(|a| &a.state),
        &mut signals,
        source_count,
    )
    .await;
    if let Some(admin) = &admin {
        admin.state.set_ready(false);
    }
    info!(
        ?stop,
        deadline_secs = shutdown_deadline.as_secs(),
        "draining"
    );
    let drain = async move {
        // The admin port goes first: no new control calls during the drain,
        // and the pipeline is ours alone again.
        if let Some(admin) = admin {
            admin.stop().await;
        }
        if let Some(sql) = sql {
            sql.stop().await;
        }
        let _ = sync_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(2), sync_task)
            .await
            .is_err()
        {
            warn!("transform sync did not stop within 2s");
        }
        stop_pipeline(pipeline).await;
        demo.stop().await;
    };
    tokio::select! {
        drained = tokio::time::timeout(shutdown_deadline, drain) => match drained {
            Ok(()) => {
                info!("stopped");
                Ok(())
            }
            Err(_) => {
                warn!(deadline_secs = shutdown_deadline.as_secs(), "drain deadline passed, exiting");
                Err(ServiceError::DrainTimeout(shutdown_deadline).into())
            }
        },
        _ = signals.recv() => {
            warn!("second signal while draining, exiting now");
            Err(ServiceError::Interrupted.into())
        }
    }
}

/// The built-in demo API, while it serves (only when no source is
/// configured).
struct DemoApi {
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DemoApi {
    async fn stop(self) {
        let _ = self.shutdown.send(());
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Each configured source from its stored settings (the file's on the first
/// start); with none configured and the demo enabled, the demo API on
/// loopback and a source reading it.
async fn start_sources(
    settings: &Settings,
    backends: &Backends,
) -> anyhow::Result<(Vec<Arc<dyn Source>>, DemoApi)> {
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut demo = DemoApi {
        shutdown,
        task: None,
    };
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    for config in &settings.source_configs {
        sources.push(crate::swap::source::bootstrap(settings, backends, config).await?);
    }
    if sources.is_empty() && settings.demo.enabled {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo api")?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = settings.demo.api();
        demo.task = Some(tokio::spawn(async move {
            if let Err(error) = demo::serve(listener, config, async {
                let _ = stopped.await;
            })
            .await
            {
                warn!(%error, "demo api stopped");
            }
        }));
        let source =
            crate::swap::source::register_builtin(settings, &demo::demo_source_config(&url))?;
        info!(%url, "no sources configured: fetching from the built-in demo api");
        sources.push(source);
    }
    Ok((sources, demo))
}

/// The admin port, serving.
struct AdminPort {
    state: AdminState,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl AdminPort {
    fn start(listener: TcpListener, parts: AdminParts, hooks: &Hooks) -> anyhow::Result<AdminPort> {
        let addr = listener.local_addr()?;
        let state = AdminState::new(parts);
        state.set_ready(true);
        let server_state = state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(error) = admin::serve(listener, server_state, stopped).await {
                warn!(%error, "admin port stopped");
            }
        });
        if let Some(tx) = &hooks.on_admin_listening {
            let _ = tx.send(addr);
        }
        Ok(AdminPort { state, task, stop })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            warn!("admin port did not stop within 2s");
        }
    }
}

/// Watch the running pipeline (status line or backlog bar, idle check)
/// until something asks it to stop.
async fn watch(
    pipeline: &Pipeline,
    options: &RunOptions,
    hooks: &Hooks,
    admin: Option<&AdminState>,
    signals: &mut Signals,
    source_count: usize,
) -> Stop {
    let interactive = std::io::stderr().is_terminal();
    // An exit-when-idle run checks progress often (the check reads a few
    // small records, and a run should end as soon as it is done); the
    // status line keeps its own pace.
    let every = if options.exit_when_idle {
        Duration::from_millis(100)
    } else {
        options.status_every.unwrap_or(Duration::from_millis(500))
    };
    let mut tick = tokio::time::interval(every);
    let mut printed: Option<tokio::time::Instant> = None;
    let mut backlog_bar: Option<indicatif::ProgressBar> = None;
    let mut idle_checks = 0;
    let stop = loop {
        tokio::select! {
            _ = signals.recv() => break Stop::Signal,
            _ = admin_drain(admin) => break Stop::AdminDrain,
            _ = external_stop(hooks.stop.as_deref()) => break Stop::Requested,
            _ = tick.tick() => {
                let progress = match pipeline.progress().await {
                    Ok(p) => p,
                    Err(error) => {
                        warn!(%error, "cannot read progress");
                        continue;
                    }
                };
                if let Some(status_every) = options.status_every
                    && printed.is_none_or(|at| at.elapsed() >= status_every)
                {
                    printed = Some(tokio::time::Instant::now());
                    if !show_backlog(&mut backlog_bar, &progress, interactive) {
                        print_status(&progress, pipeline, interactive);
                    }
                }
                if pipeline.root.snapshot().state == hubflow_supervision::NodeState::Failed {
                    warn!(error = ?pipeline.root.snapshot().last_error, "pipeline failed");
                }
                if options.exit_when_idle
                    && progress.idle(source_count)
                    && fetchers_caught_up_this_run(pipeline)
                {
                    idle_checks += 1;
                    if idle_checks >= 2 {
                        info!(?progress, "everything fetched is curated, exiting");
                        break Stop::Idle;
                    }
                } else {
                    idle_checks = 0;
                }
            }
        }
    };
    if interactive && options.status_every.is_some() {
        eprintln!();
    }
    stop
}

/// Whether every fetcher of this node has found its source caught up since
/// it started. The stored cursors say whether the source was caught up when
/// last written, possibly by an earlier run: right after a restart they can
/// claim caught up before the fetcher has asked the source again, and an
/// exit-when-idle run must not end on that.
fn fetchers_caught_up_this_run(pipeline: &Pipeline) -> bool {
    use crate::pipeline::{ROOT_SUPERVISOR, SOURCES_SUPERVISOR, fetcher_child_name};
    let prefix = format!(
        "{ROOT_SUPERVISOR}/{SOURCES_SUPERVISOR}/{}",
        fetcher_child_name("")
    );
    pipeline
        .root
        .snapshot()
        .walk()
        .iter()
        .filter(|n| n.path.starts_with(&prefix))
        .all(|n| {
            n.observed
                .get("caught_up")
                .and_then(serde_json::Value::as_bool)
                == Some(true)
        })
}

/// Stop the tree gracefully (in-flight batches finish and checkpoint).
async fn stop_pipeline(pipeline: Arc<Pipeline>) {
    match Arc::try_unwrap(pipeline) {
        Ok(pipeline) => pipeline.shutdown().await,
        Err(shared) => {
            // An admin request still holds it: stop the root directly.
            warn!("pipeline still shared at shutdown; stopping its root");
            let actor = shared.root.actor().clone();
            actor.stop(Some("shutdown".to_string()));
            while !matches!(actor.get_status(), ractor::ActorStatus::Stopped) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn external_stop(stop: Option<&tokio::sync::Notify>) {
    match stop {
        Some(stop) => stop.notified().await,
        None => std::future::pending().await,
    }
}

async fn admin_drain(state: Option<&AdminState>) {
    match state {
        Some(state) => state.node_drain_requested().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered once so a signal arriving
/// between two waits is not lost.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {},
                _ = self.int.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// On a terminal, a bar (curated of in hub, rate, ETA) while a large
/// backlog is worked off ([`crate::progress::backlog`]); true while it is
/// shown (instead of the status line).
fn show_backlog(
    bar: &mut Option<indicatif::ProgressBar>,
    progress: &Progress,
    interactive: bool,
) -> bool {
    let backlog = crate::progress::backlog(progress.in_hub, progress.transformed);
    match (interactive, backlog) {
        (true, Some((curated, in_hub))) => {
            if bar.is_none() {
                // End the status line; the bar takes its place.
                eprintln!();
                *bar = crate::progress::bar(in_hub, "events curated", "backlog");
            }
            if let Some(bar) = bar {
                bar.set_length(in_hub);
                bar.set_position(curated);
                bar.set_message(format!("fetched {}", progress.fetched));
            }
            bar.is_some()
        }
        _ => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            false
        }
    }
}

fn print_status(progress: &Progress, pipeline: &Pipeline, interactive: bool) {
    let snapshot = pipeline.root.snapshot();
    let restarts: u64 = snapshot.walk().iter().map(|n| n.restarts).sum();
    let rows: u64 = snapshot
        .walk()
        .iter()
        .filter(|n| n.path.starts_with("pipeline/transform/"))
        .filter_map(|n| n.observed.get("rows").and_then(|v| v.as_u64()))
        .sum();
    let line = format!(
        "fetched {:>9} | in hub {:>9} | landed {:>9} | curated {:>9} (rows this run {:>9}) | restarts {}",
        progress.fetched, progress.in_hub, progress.landed, progress.transformed, rows, restarts
    );
    let mut err = std::io::stderr();
    if interactive {
        let _ = write!(err, "\r{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
