//! `hubflow run`: start the backends, the sources (the demo API when none is
//! configured) and the pipeline; print a status line; stop on a signal or,
//! with `exit_when_idle`, once everything fetched is curated.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hubflow_actors::ports::Source;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Settings;
use crate::demo;
use crate::pipeline::{Backends, Pipeline, Progress};
use crate::source::HttpSource;

/// How `run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit 0 once sources are caught up and everything is curated.
    pub exit_when_idle: bool,
    /// Print the status line (to stderr) every this often.
    pub status_every: Option<Duration>,
}

/// Run until Ctrl-C / SIGTERM (graceful drain) or idle.
pub async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    let backends = Backends::embedded(&settings).await?;
    let (demo_shutdown, demo_task) = tokio::sync::oneshot::channel::<()>();
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    for s in &settings.sources {
        sources.push(Arc::new(HttpSource::new(s.clone())?));
    }
    let mut demo_handle = None;
    if sources.is_empty() && settings.config.demo.enabled {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo api")?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = settings.config.demo.api();
        demo_handle = Some(tokio::spawn(async move {
            if let Err(error) = demo::serve(listener, config, async {
                let _ = demo_task.await;
            })
            .await
            {
                warn!(%error, "demo api stopped");
            }
        }));
        let source = HttpSource::from_config(&demo::demo_source_config(&url))?;
        info!(%url, "no sources configured: fetching from the built-in demo api");
        sources.push(Arc::new(source));
    }
    let source_count = sources.len();
    let pipeline = Pipeline::start(settings, backends, sources).await?;
    info!("pipeline started");

    let interactive = std::io::stderr().is_terminal();
    let mut tick =
        tokio::time::interval(options.status_every.unwrap_or(Duration::from_millis(500)));
    let mut idle_checks = 0;
    let outcome = loop {
        tokio::select! {
            _ = shutdown_signal() => break Ok(()),
            _ = tick.tick() => {
                let progress = match pipeline.progress().await {
                    Ok(p) => p,
                    Err(error) => {
                        warn!(%error, "cannot read progress");
                        continue;
                    }
                };
                if options.status_every.is_some() {
                    print_status(&progress, &pipeline, interactive);
                }
                if pipeline.root.snapshot().state == hubflow_supervision::NodeState::Failed {
                    warn!(error = ?pipeline.root.snapshot().last_error, "pipeline failed");
                }
                if options.exit_when_idle && progress.idle(source_count) {
                    idle_checks += 1;
                    if idle_checks >= 2 {
                        info!(?progress, "everything fetched is curated, exiting");
                        break Ok(());
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
    info!("draining");
    pipeline.shutdown().await;
    let _ = demo_shutdown.send(());
    if let Some(handle) = demo_handle {
        let _ = handle.await;
    }
    info!("stopped");
    outcome
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

/// `hubflow query`: SQL over the curated container, each source's table
/// typed by its schema registry record (the union of every file's schema).
pub async fn query(
    settings: &Settings,
    sql: &str,
) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    let store = crate::embedded::FsBlobStore::new(settings.data_dir().join("blobs"))?;
    let curated = store.container_path(&settings.config.storage.curated_container);
    let state = hubflow_actors::ports::StateStore::new(
        Arc::new(store),
        settings.config.storage.state_container.clone(),
    );
    let mut schemas = std::collections::BTreeMap::new();
    let names = match state.list_names("schemas/").await {
        Ok(names) => names,
        // No state container yet: nothing was curated; the query layer says so.
        Err(hubflow_actors::ports::StateError::Blob(
            hubflow_actors::ports::BlobError::ContainerNotFound { .. },
        )) => Vec::new(),
        Err(error) => {
            warn!(%error, "cannot read the schema registry; inferring schemas");
            Vec::new()
        }
    };
    for name in names {
        let Some(record) = state
            .load::<hubflow_actors::transformer::SchemaRecord>(&name)
            .await?
        else {
            continue;
        };
        let schema = hubflow_actors::formats::curated::schema_from_json(&record.value.schema)
            .with_context(|| format!("schema registry record {name}"))?;
        let source = name.trim_start_matches("schemas/").to_string();
        schemas.insert(source, Arc::new(schema));
    }
    Ok(crate::query::query_dir_with_schemas(&curated, sql, &schemas).await?)
}
