//! The one DataFusion session every connection queries: database
//! `hubflow`, schema `public`, one table per source (the same tables and
//! types as `hubflow query`, see `crate::query`), Postgres's `pg_catalog`
//! and `information_schema` for clients' start-up and `\d` queries, and a
//! memory pool all queries share. [`Catalog::refresh`] re-reads the curated
//! container (and the schema registry) so new sources appear as tables and
//! widened columns as schema changes, without a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use tracing::{debug, info};

use crate::config::CuratedLocation;

use super::auth::DATABASE;

/// The schema the curated tables are in.
pub const SCHEMA: &str = "public";

/// The shared session and where its tables come from.
pub struct Catalog {
    ctx: Arc<SessionContext>,
    location: CuratedLocation,
    /// Tables registered by the last refresh.
    tables: tokio::sync::Mutex<BTreeSet<String>>,
}

/// What a refresh changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Catalog {
    /// The session with every curated table registered once.
    pub async fn open(location: CuratedLocation, memory_limit: usize) -> anyhow::Result<Catalog> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
            .build_arc()
            .context("building the sql runtime")?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(true)
            .with_default_catalog_and_schema(DATABASE, SCHEMA);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(super::yielding::YieldBetweenOperators))
            .build();
        let ctx = SessionContext::new_with_state(state);
        setup_pg_catalog(&ctx, DATABASE, EmptyContextProvider)
            .map_err(|e| anyhow::anyhow!("setting up pg_catalog: {e}"))?;
        let catalog = Catalog {
            ctx: Arc::new(ctx),
            location,
            tables: Default::default(),
        };
        catalog.refresh().await?;
        Ok(catalog)
    }

    pub fn context(&self) -> Arc<SessionContext> {
        Arc::clone(&self.ctx)
    }

    /// The table names registered now.
    pub async fn tables(&self) -> Vec<String> {
        self.tables.lock().await.iter().cloned().collect()
    }

    /// Re-read the curated tables: register new ones, replace those whose
    /// schema changed, drop those whose data is gone. A query already
    /// running keeps the table it planned with.
    pub async fn refresh(&self) -> anyhow::Result<Refreshed> {
        let found = crate::query::curated_providers(&self.location).await?;
        let mut tables = self.tables.lock().await;
        let mut report = Refreshed::default();
        let mut seen = BTreeSet::new();
        for (name, provider) in found {
            seen.insert(name.clone());
            let provider = super::json::present(&name, provider)
                .with_context(|| format!("presenting table {name}"))?;
            let old = self
                .ctx
                .table_provider(name.as_str())
                .await
                .ok()
                .map(|t| t.schema());
            match old {
                Some(schema) if schema == provider.schema() => continue,
                Some(_) => report.changed.push(name.clone()),
                None => report.added.push(name.clone()),
            }
            self.ctx
                .register_table(name.as_str(), provider)
                .with_context(|| format!("registering table {name}"))?;
        }
        for gone in tables.difference(&seen) {
            self.ctx
                .deregister_table(gone.as_str())
                .with_context(|| format!("dropping table {gone}"))?;
            report.removed.push(gone.clone());
        }
        *tables = seen;
        if report != Refreshed::default() {
            info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "sql tables refreshed");
        } else {
            debug!(tables = tables.len(), "sql tables unchanged");
        }
        metrics::gauge!("hubflow_sql_tables").set(tables.len() as f64);
        Ok(report)
    }
}
