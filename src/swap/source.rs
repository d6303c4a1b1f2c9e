//! The source settings hot swap. Durable source settings: every version of a source's settings is kept in
//! its spec log (`specs/sources/<name>` in the state container, see
//! [`crate::specs`]), and that is what every node runs.
//!
//! - [`bootstrap`], at start, before the fetcher is built: the log's stable
//!   settings (the config file's `[[sources]]` table is version `config`
//!   when the log is new, or when the file holds settings the log has never
//!   seen from a file).
//! - `crate::source::ActiveSources`: the settings this node runs per source, shared by
//!   the settings' clones: the tree and the cluster's ownership manager
//!   build a fetcher from it, so a fetcher lease that moves to this node
//!   starts with the newest version.
//! - [`converge`], each sync round: when the log's active version is not
//!   what this node has, the node replaces its running fetcher (drain, then
//!   the new one from the saved cursor, watched for the probation) or, if
//!   the fetcher runs elsewhere, just takes the settings for its next start.
//!   The node running the fetcher decides the probation: a failure rolls
//!   the log back; passing it past the deadline promotes it.
//! - [`swap`], an admin call: validate, propose by compare-and-swap, then
//!   converge and wait for the decision.
//! - [`register_builtin`]: the built-in demo source (no `[[sources]]`) is
//!   listed like the others but not kept, so it cannot be swapped.
//!
//! Settings with inline secret literals are never written to the state
//! container: such a source keeps the file's settings, and swaps of it are
//! refused (use `{ env = "VAR" }` or `{ file = "path" }`).

use std::sync::Arc;
use std::time::Duration;

use hubflow_actors::now_ms;
use hubflow_actors::ports::Source;
use hubflow_supervision::ReplaceOutcome;
use serde::Serialize;
use tracing::{info, warn};

use crate::backends::Backends;
use crate::config::Settings;
use crate::pipeline::{Pipeline, ROOT_SUPERVISOR, SOURCES_SUPERVISOR, fetcher_child_name};
use crate::source::{HttpSource, HttpSourceConfig, LiveSource};
use crate::specs::{Decision, Entry, Probation, Proposal, SpecError, SpecStore};

/// Prefix of the source spec logs in the state container.
pub const SOURCE_SPECS: &str = "specs/sources/";
/// The version label of settings read from the config file.
pub const CONFIG_VERSION: &str = "config";
/// The version label of the built-in demo source's settings.
pub const BUILTIN_VERSION: &str = "built-in";

/// The spec log of source `name`.
pub fn record_name(name: &str) -> String {
    format!("{SOURCE_SPECS}{name}")
}

/// Why source settings were not swapped.
#[derive(Debug, thiserror::Error)]
pub enum SourceSpecError {
    #[error("invalid source settings: {0}")]
    Invalid(String),
    #[error("no source {0} on this node")]
    Unknown(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Busy(String),
    #[error("the fetcher cannot be replaced: {0}")]
    Tree(String),
    #[error(transparent)]
    Store(#[from] SpecError),
}

fn build(
    config: &HttpSourceConfig,
    version: &str,
    seq: u64,
) -> Result<LiveSource, SourceSpecError> {
    let validated = config
        .validate()
        .map_err(|e| SourceSpecError::Invalid(e.to_string()))?;
    let budget = validated.retry_budget();
    let source = HttpSource::new(validated).map_err(|e| SourceSpecError::Invalid(e.to_string()))?;
    Ok(LiveSource {
        source: Arc::new(source),
        budget,
        version: version.to_string(),
        seq,
        durable: true,
        builtin: false,
    })
}

fn store(settings: &Settings, backends: &Backends) -> SpecStore {
    SpecStore::new(backends.state(settings), settings.node_id())
}

/// The settings `config`'s source starts with on this node (see the module
/// docs), registered in `settings`' `ActiveSources`.
pub async fn bootstrap(
    settings: &Settings,
    backends: &Backends,
    config: &HttpSourceConfig,
) -> anyhow::Result<Arc<dyn Source>> {
    if config.has_literal_secrets() {
        warn!(
            source = config.name,
            "source settings hold inline secrets: they are not kept in the spec log, so they cannot be hot-swapped (use env or file secrets)"
        );
        let mut live = build(config, CONFIG_VERSION, 0)?;
        live.durable = false;
        settings.live_sources.set(&config.name, live.clone());
        return Ok(live.source);
    }
    let name = record_name(&config.name);
    let read = store(settings, backends)
        .init(&name, CONFIG_VERSION, config.clone(), false)
        .await?;
    let stable = read
        .log
        .stable_entry()
        .ok_or_else(|| anyhow::anyhow!("{name}: no stable version"))?;
    if stable.spec != *config {
        warn!(
            source = config.name,
            running = stable.version,
            seq = stable.seq,
            "the source's running settings differ from the config file's (the stored version wins)"
        );
    }
    let live = build(&stable.spec, &stable.version, stable.seq)?;
    settings.live_sources.set(&config.name, live.clone());
    Ok(live.source)
}

/// The built-in demo source (started when no `[[sources]]` are configured),
/// registered in `settings`' `ActiveSources` like a configured one, so
/// `GET /sources` lists it and lineage knows it; its settings are not kept
/// in a spec log (they name a loopback port chosen at this start), so it
/// cannot be hot-swapped.
pub fn register_builtin(
    settings: &Settings,
    config: &HttpSourceConfig,
) -> anyhow::Result<Arc<dyn Source>> {
    let mut live = build(config, BUILTIN_VERSION, 0)?;
    live.durable = false;
    live.builtin = true;
    settings.live_sources.set(&config.name, live.clone());
    Ok(live.source)
}

fn fetcher_path(name: &str) -> String {
    format!(
        "{ROOT_SUPERVISOR}/{SOURCES_SUPERVISOR}/{}",
        fetcher_child_name(name)
    )
}

/// Move this node's sources to their logs' active versions, and decide a
/// probation this node can decide (see the module docs).
pub async fn converge(pipeline: &Pipeline) -> Result<(), SourceSpecError> {
    let settings = &pipeline.settings;
    let _one_at_a_time = settings.transform.applying().await;
    let store = store(settings, &pipeline.backends);
    for (name, live) in settings.live_sources.snapshot() {
        if !live.durable {
            continue;
        }
        let record = record_name(&name);
        let Some(read) = store.load::<HttpSourceConfig>(&record).await? else {
            continue;
        };
        let log = &read.log;
        let running_here = pipeline.root.status().find(&fetcher_path(&name)).is_some();
        let mut seq = live.seq;
        if live.seq != log.active
            && let Some(entry) = log.active_entry()
        {
            let watched = log.probation.filter(|p| p.seq == entry.seq);
            let next = build(&entry.spec, &entry.version, entry.seq);
            let outcome = match (&next, running_here) {
                (Ok(next), true) => {
                    let probation = remaining_probation(watched);
                    replace_fetcher(pipeline, &name, entry, next, probation).await
                }
                (Ok(_), false) => Ok(()),
                (Err(e), _) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    if let Ok(next) = next {
                        settings.live_sources.set(&name, next);
                        seq = entry.seq;
                    }
                }
                Err(error) => {
                    metrics::counter!("hubflow_source_apply_failures_total", "source" => name.clone())
                        .increment(1);
                    if watched.is_some() {
                        let detail = format!("node {}: {error}", store.node());
                        store
                            .decide::<HttpSourceConfig>(&record, entry.seq, false, Some(detail))
                            .await?;
                        warn!(source = name, version = entry.version, %error, "source settings failed their probation: rolled back");
                    } else {
                        warn!(source = name, version = entry.version, %error, "cannot apply the source's active settings; retrying");
                    }
                    continue;
                }
            }
        }
        if let Some(p) = log.probation
            && p.seq == seq
            && running_here
            && now_ms() >= p.until_ms
        {
            let (_, decided) = store
                .decide::<HttpSourceConfig>(&record, p.seq, true, None)
                .await?;
            if decided {
                info!(source = name, seq, "source settings promoted");
            }
        }
    }
    Ok(())
}

/// How long the rest of a probation lasts (at least a second; two when the
/// version is not on probation).
fn remaining_probation(watched: Option<Probation>) -> Duration {
    let now = now_ms();
    match watched {
        Some(p) if p.until_ms > now => Duration::from_millis((p.until_ms - now) as u64),
        Some(p) => Duration::from_millis(p.probation_ms),
        None => Duration::from_secs(2),
    }
    .max(Duration::from_secs(1))
}

/// Drain this node's fetcher of `name` and start `next` from its saved
/// cursor, watched for `probation`; the error if it was rolled back.
async fn replace_fetcher(
    pipeline: &Pipeline,
    name: &str,
    entry: &Entry<HttpSourceConfig>,
    next: &LiveSource,
    probation: Duration,
) -> Result<(), String> {
    info!(
        source = name,
        version = entry.version,
        seq = entry.seq,
        "applying source settings"
    );
    let spec = crate::pipeline::fetcher_spec_with(
        &pipeline.settings,
        &pipeline.backends,
        &pipeline.boards,
        next.source.clone(),
        next.budget,
    )
    .with_version(&entry.version);
    match pipeline
        .root
        .replace(
            &format!("{ROOT_SUPERVISOR}/{SOURCES_SUPERVISOR}"),
            spec,
            pipeline.settings.admin.drain_deadline,
            probation,
        )
        .await
    {
        Ok(ReplaceOutcome::Promoted { .. }) => Ok(()),
        Ok(ReplaceOutcome::RolledBack { error, .. }) => Err(error),
        Err(e) => Err(e.to_string()),
    }
}

/// What `GET /sources` shows of one source.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SourceVersions {
    pub name: String,
    /// The version this node runs (or starts its fetcher with).
    pub version: String,
    pub seq: u64,
    /// Kept in a spec log, so it can be swapped.
    pub durable: bool,
    /// The built-in demo source (see [`register_builtin`]).
    pub builtin: bool,
    /// The spec log; secrets appear as their env or file references only.
    pub log: Option<crate::specs::SpecLog<HttpSourceConfig>>,
}

/// Every source of this node, with its spec log.
pub async fn logs(
    settings: &Settings,
    backends: &Backends,
) -> Result<Vec<SourceVersions>, SpecError> {
    let store = store(settings, backends);
    let mut out = Vec::new();
    for (name, live) in settings.live_sources.snapshot() {
        let log = if live.durable {
            store
                .load::<HttpSourceConfig>(&record_name(&name))
                .await?
                .map(|r| r.log)
        } else {
            None
        };
        out.push(SourceVersions {
            name,
            version: live.version,
            seq: live.seq,
            durable: live.durable,
            builtin: live.builtin,
            log,
        });
    }
    Ok(out)
}

/// How a source swap ended.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SourceSwapOutcome {
    Promoted {
        version: String,
        seq: u64,
    },
    RolledBack {
        version: String,
        seq: u64,
        restored: String,
        error: String,
    },
}

/// Validate `config`, propose it as version `version` of its source, and
/// wait until the node running the fetcher decides it.
pub async fn swap(
    pipeline: &Pipeline,
    config: HttpSourceConfig,
    version: &str,
    probation: Duration,
    by: &str,
) -> Result<SourceSwapOutcome, SourceSpecError> {
    let settings = &pipeline.settings;
    let name = config.name.clone();
    let live = settings
        .live_sources
        .get(&name)
        .ok_or_else(|| SourceSpecError::Unknown(name.clone()))?;
    build(&config, version, 0)?;
    if config.has_literal_secrets() {
        return Err(SourceSpecError::Invalid(
            "settings with inline secrets cannot be kept in the spec log; give secrets as { env = \"VAR\" } or { file = \"path\" }".into(),
        ));
    }
    if live.builtin {
        return Err(SourceSpecError::Invalid(format!(
            "source {name} is the built-in demo source (no [[sources]] are configured): its settings are not kept in a spec log, so they cannot be swapped; configure it as a [[sources]] table to swap it"
        )));
    }
    if !live.durable {
        return Err(SourceSpecError::Invalid(format!(
            "source {name} runs settings with inline secrets from the config file; move them to env or file secrets to swap it"
        )));
    }
    let record = record_name(&name);
    let store = store(settings, &pipeline.backends);
    let base = store
        .load::<HttpSourceConfig>(&record)
        .await?
        .ok_or_else(|| SourceSpecError::Unknown(name.clone()))?;
    let settle = Duration::from_millis(settings.transform_options.sync_ms).saturating_mul(3);
    let proposal = Proposal {
        version: version.to_string(),
        spec: config,
        origin: crate::specs::Origin::Swap,
        by: by.to_string(),
        dry_run: None,
        probation_ms: probation.as_millis() as u64,
        settle_ms: settle.as_millis() as u64,
    };
    let seq = match store.propose(&record, &base, proposal).await {
        Ok(read) => read.log.active,
        Err(e @ (SpecError::Conflict { .. } | SpecError::LabelTaken { .. })) => {
            return Err(SourceSpecError::Conflict(e.to_string()));
        }
        Err(e @ SpecError::Busy { .. }) => return Err(SourceSpecError::Busy(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    info!(source = name, version, seq, by, "source settings proposed");
    let limit = settings.admin.drain_deadline + probation + settle + Duration::from_secs(60);
    let round = || async {
        if let Err(error) = converge(pipeline).await {
            warn!(%error, "source sync round failed during a swap");
        }
    };
    match store
        .await_decision::<HttpSourceConfig, _, _>(&record, seq, limit, round)
        .await?
    {
        Some(Decision::Promoted) => Ok(SourceSwapOutcome::Promoted {
            version: version.to_string(),
            seq,
        }),
        Some(Decision::RolledBack { restored, error }) => Ok(SourceSwapOutcome::RolledBack {
            version: version.to_string(),
            seq,
            restored,
            error,
        }),
        None => Err(SourceSpecError::Tree(format!(
            "version {version} (seq {seq}) of {name} was not decided within {limit:?}"
        ))),
    }
}
