//! Transformation specs and their hot swap.
//!
//! A [`TransformSpec`] is data, not a recompile: a version label and a SQL
//! query over the table `batch` (one source's curated batch: its data
//! columns then the metadata columns), run by DataFusion between inference
//! and Parquet. Projections, renames, casts, filters and derived columns are
//! all SQL; the metadata columns must stay in the output. No SQL is the
//! identity transform (the default).
//!
//! [`swap`] changes the running transform without stopping the dataflow:
//! 1. validate: parse the SQL, build the transform;
//! 2. dry-run it on the newest raw blob (decode, curate, transform), so a
//!    spec that cannot run is refused before anything stops;
//! 3. replace the `pipeline/transform` group through the supervision tree:
//!    the old transformers drain (finish their blob, checkpoint, stop), the
//!    new ones start from those checkpoints;
//! 4. watch the new group through its probation: if any transformer fails,
//!    restarts or stalls, the previous version is restored automatically.
//!
//! [`ActiveTransform`] holds the version in effect (what new partition
//! groups start with, for the cluster's ownership manager) and the history
//! of every attempt, shown on the status API.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use hubflow_actors::formats::curated::{self, BatchTransform, CurateInput, METADATA_COLUMNS};
use hubflow_actors::formats::raw;
use hubflow_actors::record::RawBlobName;
use hubflow_supervision::ReplaceOutcome;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::pipeline::{Pipeline, ROOT_SUPERVISOR, TRANSFORM_SUPERVISOR};

/// The version label of the identity transform.
pub const IDENTITY: &str = "identity";

/// A transformation as operators submit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// A label for this version (`v7`, a git sha, a date).
    pub version: String,
    /// `SELECT … FROM batch`; absent: the identity transform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

impl TransformSpec {
    pub fn identity() -> TransformSpec {
        TransformSpec {
            version: IDENTITY.to_string(),
            sql: None,
        }
    }
}

/// Why a spec was refused or a swap did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("invalid transform spec: {0}")]
    Invalid(String),
    #[error("transform {version} failed its dry run on {raw_blob}: {message}")]
    DryRun {
        version: String,
        raw_blob: String,
        message: String,
    },
    #[error("a swap is already in progress")]
    Busy,
    #[error("the transform group cannot be replaced: {0}")]
    Tree(String),
    #[error("cannot read raw data for the dry run: {0}")]
    Storage(String),
}

/// A [`BatchTransform`] running a SQL query over the table `batch`.
pub struct SqlTransform {
    version: String,
    sql: String,
}

impl std::fmt::Debug for SqlTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTransform")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl SqlTransform {
    /// Build the transform of `spec` (`None` for the identity), checking
    /// the SQL parses as a single query.
    pub fn build(spec: &TransformSpec) -> Result<Option<Arc<dyn BatchTransform>>, TransformError> {
        let version = spec.version.trim();
        if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
            return Err(TransformError::Invalid(
                "version must be 1-64 printable characters".into(),
            ));
        }
        let Some(sql) = spec.sql.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let statements = datafusion::sql::parser::DFParser::parse_sql(sql)
            .map_err(|e| TransformError::Invalid(format!("sql: {e}")))?;
        if statements.len() != 1 {
            return Err(TransformError::Invalid(
                "sql must be exactly one SELECT statement".into(),
            ));
        }
        let is_query = matches!(
            statements.front(),
            Some(datafusion::sql::parser::Statement::Statement(s))
                if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_))
        );
        if !is_query {
            return Err(TransformError::Invalid(
                "sql must be a SELECT over the table `batch`".into(),
            ));
        }
        Ok(Some(Arc::new(SqlTransform {
            version: version.to_string(),
            sql: sql.to_string(),
        })))
    }

    async fn run(&self, batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let config = SessionConfig::new().with_target_partitions(1);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_batch("batch", batch)?;
        let frame = ctx.sql(&self.sql).await?;
        let out_schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok(arrow::compute::concat_batches(&out_schema, &batches)?)
    }
}

impl BatchTransform for SqlTransform {
    fn version(&self) -> &str {
        &self.version
    }

    /// Runs on the transformer's blocking thread (curate is CPU work done in
    /// `spawn_blocking`), driving DataFusion on the runtime it came from.
    fn apply(&self, _source: &str, batch: RecordBatch) -> Result<RecordBatch, String> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "no tokio runtime to run the sql on".to_string())?;
        handle.block_on(self.run(batch)).map_err(|e| e.to_string())
    }
}

/// One step of the transform's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformEvent {
    pub at_ms: i64,
    pub version: String,
    /// `refused`, `promoted`, `rolled_back`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the status API shows about the transform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformStatus {
    pub active: TransformSpec,
    pub previous: Option<TransformSpec>,
    pub swapping: bool,
    pub history: Vec<TransformEvent>,
}

struct Active {
    spec: TransformSpec,
    transform: Option<Arc<dyn BatchTransform>>,
    previous: Option<TransformSpec>,
    swapping: bool,
    history: VecDeque<TransformEvent>,
}

/// The transform in effect, shared by every clone of the settings.
#[derive(Clone)]
pub struct ActiveTransform(Arc<Mutex<Active>>);

impl std::fmt::Debug for ActiveTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ActiveTransform")
            .field(&self.lock().spec.version)
            .finish()
    }
}

const HISTORY: usize = 50;

impl ActiveTransform {
    pub fn new(spec: TransformSpec) -> Result<ActiveTransform, TransformError> {
        let transform = SqlTransform::build(&spec)?;
        Ok(ActiveTransform(Arc::new(Mutex::new(Active {
            spec,
            transform,
            previous: None,
            swapping: false,
            history: VecDeque::new(),
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transform new transformers start with.
    pub fn current(&self) -> (String, Option<Arc<dyn BatchTransform>>) {
        let a = self.lock();
        (a.spec.version.clone(), a.transform.clone())
    }

    pub fn status(&self) -> TransformStatus {
        let a = self.lock();
        TransformStatus {
            active: a.spec.clone(),
            previous: a.previous.clone(),
            swapping: a.swapping,
            history: a.history.iter().cloned().collect(),
        }
    }

    fn record(&self, version: &str, outcome: &str, detail: Option<String>) {
        let mut a = self.lock();
        if a.history.len() == HISTORY {
            a.history.pop_front();
        }
        a.history.push_back(TransformEvent {
            at_ms: hubflow_actors::now_ms(),
            version: version.to_string(),
            outcome: outcome.to_string(),
            detail,
        });
    }
}

/// How a dry run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    /// The raw blob it ran on; `None` when no raw data exists yet (only the
    /// SQL was checked).
    pub raw_blob: Option<String>,
    pub rows_in: usize,
    pub rows_out: usize,
    /// Output columns per source.
    pub columns: Vec<(String, Vec<String>)>,
}

/// Run `transform` on the newest raw blob, as a transformer would.
pub async fn dry_run(
    pipeline: &Pipeline,
    version: &str,
    transform: Option<Arc<dyn BatchTransform>>,
) -> Result<DryRun, TransformError> {
    let cfg = &pipeline.settings.config;
    let container = &cfg.storage.raw_container;
    let blobs = pipeline
        .backends
        .blobs
        .list(container, &format!("{}/", crate::pipeline::INGEST_HUB))
        .await
        .map_err(|e| TransformError::Storage(e.to_string()))?;
    let newest = blobs
        .into_iter()
        .filter(|b| RawBlobName::parse(&b.name).is_some())
        .max_by_key(|b| (b.last_modified_ms, b.name.clone()));
    let Some(newest) = newest else {
        return Ok(DryRun {
            raw_blob: None,
            rows_in: 0,
            rows_out: 0,
            columns: Vec::new(),
        });
    };
    let (bytes, _) = pipeline
        .backends
        .blobs
        .get(container, &newest.name)
        .await
        .map_err(|e| TransformError::Storage(e.to_string()))?;
    let raw_blob = format!("{container}/{}", newest.name);
    let failed = |message: String| TransformError::DryRun {
        version: version.to_string(),
        raw_blob: raw_blob.clone(),
        message,
    };
    let batch = raw::decode(&bytes).map_err(|e| failed(format!("raw blob unreadable: {e}")))?;
    let options = pipeline.settings.curate.clone();
    let blob_name = raw_blob.clone();
    let output = tokio::task::spawn_blocking(move || {
        let inputs = CurateInput::from_raw(&batch);
        let out = curated::curate_with(
            &inputs,
            &blob_name,
            "dry-run",
            &Default::default(),
            &options,
            transform.as_deref(),
        );
        (inputs.len(), out)
    })
    .await
    .map_err(|e| failed(format!("dry run panicked: {e}")))?;
    let (rows_in, output) = output;
    let output = output.map_err(|e| failed(e.to_string()))?;
    let schemas = if output.output_schemas.is_empty() {
        &output.schemas
    } else {
        &output.output_schemas
    };
    Ok(DryRun {
        raw_blob: Some(raw_blob),
        rows_in,
        rows_out: output.files.iter().map(|f| f.rows).sum(),
        columns: schemas
            .iter()
            .map(|(s, schema)| {
                let names = schema.fields().iter().map(|f| f.name().clone()).collect();
                (s.clone(), names)
            })
            .collect(),
    })
}

/// How a swap ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SwapOutcome {
    Promoted {
        version: String,
        dry_run: DryRun,
    },
    RolledBack {
        version: String,
        restored: String,
        error: String,
    },
}

/// Timing of a swap.
#[derive(Debug, Clone, Copy)]
pub struct SwapOptions {
    /// How long the old transformers get to finish their blob.
    pub drain_deadline: Duration,
    /// How long the new version must stay healthy to be kept.
    pub probation: Duration,
}

impl Default for SwapOptions {
    fn default() -> Self {
        SwapOptions {
            drain_deadline: Duration::from_secs(30),
            probation: Duration::from_secs(10),
        }
    }
}

/// Validate, dry-run and hot-swap the transform (see the module docs).
pub async fn swap(
    pipeline: &Pipeline,
    spec: TransformSpec,
    options: SwapOptions,
) -> Result<SwapOutcome, TransformError> {
    let active = pipeline.settings.transform.clone();
    let refuse = |e: TransformError| {
        active.record(&spec.version, "refused", Some(e.to_string()));
        warn!(version = spec.version, error = %e, "transform refused");
        e
    };
    let transform = SqlTransform::build(&spec).map_err(refuse)?;
    let dry = dry_run(pipeline, &spec.version, transform.clone())
        .await
        .map_err(refuse)?;
    if let Some((source, columns)) = dry.columns.iter().find(|(_, c)| {
        METADATA_COLUMNS
            .iter()
            .any(|m| !c.iter().any(|name| name == m))
    }) {
        return Err(refuse(TransformError::DryRun {
            version: spec.version.clone(),
            raw_blob: dry.raw_blob.clone().unwrap_or_default(),
            message: format!("output of {source} lacks metadata columns: {columns:?}"),
        }));
    }
    let previous = {
        let mut a = active.lock();
        if a.swapping {
            return Err(TransformError::Busy);
        }
        a.swapping = true;
        let previous = (a.spec.clone(), a.transform.clone());
        // New partition groups (cluster moves) start with the new version.
        a.spec = spec.clone();
        a.transform = transform;
        previous
    };
    info!(
        version = spec.version,
        from = previous.0.version,
        "swapping transform"
    );
    let group = crate::pipeline::transform_group_spec(pipeline)
        .await
        .map_err(|e| TransformError::Tree(format!("{e:#}")));
    let outcome = match group {
        Ok(group) => pipeline
            .root
            .replace(
                ROOT_SUPERVISOR,
                group,
                options.drain_deadline,
                options.probation,
            )
            .await
            .map_err(|e| TransformError::Tree(e.to_string())),
        Err(e) => Err(e),
    };
    let mut a = active.lock();
    a.swapping = false;
    match outcome {
        Ok(ReplaceOutcome::Promoted { .. }) => {
            a.previous = Some(previous.0);
            drop(a);
            active.record(&spec.version, "promoted", None);
            info!(version = spec.version, "transform promoted");
            Ok(SwapOutcome::Promoted {
                version: spec.version,
                dry_run: dry,
            })
        }
        Ok(ReplaceOutcome::RolledBack { error, .. }) => {
            a.spec = previous.0.clone();
            a.transform = previous.1;
            drop(a);
            active.record(&spec.version, "rolled_back", Some(error.clone()));
            warn!(version = spec.version, %error, "transform rolled back");
            Ok(SwapOutcome::RolledBack {
                version: spec.version,
                restored: previous.0.version,
                error,
            })
        }
        Err(e) => {
            a.spec = previous.0;
            a.transform = previous.1;
            drop(a);
            Err(refuse(e))
        }
    }
}

/// The path of the transform group in the tree.
pub fn group_path() -> String {
    format!("{ROOT_SUPERVISOR}/{TRANSFORM_SUPERVISOR}")
}
