//! Transformation specs: what a transform is and which one a node runs.
//!
//! A [`TransformSpec`] is data, not a recompile: a version label and a SQL
//! query over the table `batch` (one source's curated batch: its data
//! columns then the metadata columns), run by DataFusion between inference
//! and Parquet. Projections, renames, casts, filters and derived columns are
//! all SQL; the metadata columns must stay in the output (the curate step
//! stamps `_transform_version` itself). No SQL is the identity transform
//! (the default).
//!
//! This file holds the spec, [`SqlTransform`] and [`ActiveTransform`] (the
//! version this node runs, its local history and the config's spec, for
//! drift): data that the configuration needs, with nothing of the running
//! pipeline. Changing the version while the pipeline runs (dry run, the
//! durable cluster-wide spec log, converge, probation, rollback) is the hot
//! swap in `crate::swap::transform`.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use hubflow_actors::formats::curated::{BatchTransform, CurateTransform, IDENTITY_VERSION};
use serde::{Deserialize, Serialize};

/// The transform's spec log in the state container.
pub const SPEC_RECORD: &str = "specs/transform";

/// The version label of the identity transform.
pub const IDENTITY: &str = IDENTITY_VERSION;

/// A transformation as operators submit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    #[error("a swap is already in progress: {0}")]
    Busy(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the spec store: {0}")]
    Store(#[from] crate::specs::SpecError),
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

/// One step of this node's transform history.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TransformEvent {
    pub at_ms: i64,
    pub version: String,
    /// `refused`, `promoted`, `rolled_back`, `applied`, `apply_failed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the status API shows about the transform on this node.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TransformStatus {
    pub active: TransformSpec,
    /// Its sequence number in the durable spec log (0 before the first
    /// read of the store).
    pub seq: u64,
    pub previous: Option<TransformSpec>,
    pub swapping: bool,
    /// The config file's spec, and whether the running one differs.
    pub config: TransformSpec,
    pub drift: bool,
    pub history: Vec<TransformEvent>,
}

struct Active {
    spec: TransformSpec,
    seq: u64,
    transform: Option<Arc<dyn BatchTransform>>,
    previous: Option<TransformSpec>,
    swapping: bool,
    config: TransformSpec,
    history: VecDeque<TransformEvent>,
}

/// What [`ActiveTransform::begin`] replaced, to put back on a failure.
pub(crate) struct Previous {
    pub(crate) spec: TransformSpec,
    seq: u64,
    transform: Option<Arc<dyn BatchTransform>>,
}

/// The transform in effect on this node, shared by every clone of the
/// settings: what new transformers (and partitions a cluster moves here)
/// start with, kept equal to the spec log's active version by
/// [`sync::converge`].
#[derive(Clone)]
pub struct ActiveTransform {
    inner: Arc<Mutex<Active>>,
    /// Held while this node applies a version: one change at a time.
    applying: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for ActiveTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ActiveTransform")
            .field(&self.lock().spec.version)
            .finish()
    }
}

const HISTORY: usize = 50;

impl ActiveTransform {
    /// The config file's spec; the store's version replaces it at start.
    pub fn new(spec: TransformSpec) -> Result<ActiveTransform, TransformError> {
        let transform = SqlTransform::build(&spec)?;
        Ok(ActiveTransform {
            inner: Arc::new(Mutex::new(Active {
                config: spec.clone(),
                spec,
                seq: 0,
                transform,
                previous: None,
                swapping: false,
                history: VecDeque::new(),
            })),
            applying: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transform new transformers start with.
    pub fn current(&self) -> CurateTransform {
        let a = self.lock();
        CurateTransform {
            version: a.spec.version.clone(),
            transform: a.transform.clone(),
        }
    }

    /// The running spec and its sequence number in the spec log.
    pub fn running(&self) -> (TransformSpec, u64) {
        let a = self.lock();
        (a.spec.clone(), a.seq)
    }

    /// The config file's spec.
    pub fn config_spec(&self) -> TransformSpec {
        self.lock().config.clone()
    }

    pub fn status(&self) -> TransformStatus {
        let a = self.lock();
        TransformStatus {
            active: a.spec.clone(),
            seq: a.seq,
            previous: a.previous.clone(),
            swapping: a.swapping,
            drift: !same_spec(&a.spec, &a.config),
            config: a.config.clone(),
            history: a.history.iter().cloned().collect(),
        }
    }

    /// Run `spec` (sequence `seq` of the log) from now on, before any
    /// transformer starts (the start of the node).
    pub(crate) fn set(&self, spec: TransformSpec, seq: u64) -> Result<(), TransformError> {
        let transform = SqlTransform::build(&spec)?;
        let mut a = self.lock();
        a.spec = spec;
        a.seq = seq;
        a.transform = transform;
        Ok(())
    }

    /// Start moving to `spec`: new partition groups start with it at once.
    pub(crate) fn begin(
        &self,
        spec: TransformSpec,
        seq: u64,
        transform: Option<Arc<dyn BatchTransform>>,
    ) -> Previous {
        let mut a = self.lock();
        a.swapping = true;
        Previous {
            spec: std::mem::replace(&mut a.spec, spec),
            seq: std::mem::replace(&mut a.seq, seq),
            transform: std::mem::replace(&mut a.transform, transform),
        }
    }

    /// The move is done: `applied` or back to `previous`.
    pub(crate) fn finish(&self, previous: Previous, applied: bool) {
        let mut a = self.lock();
        a.swapping = false;
        if applied {
            a.previous = Some(previous.spec);
        } else {
            a.spec = previous.spec;
            a.seq = previous.seq;
            a.transform = previous.transform;
        }
    }

    pub(crate) async fn applying(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.applying.lock().await
    }

    pub(crate) fn record(&self, version: &str, outcome: &str, detail: Option<String>) {
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

/// Two specs run the same transform (same label and same SQL, ignoring
/// surrounding whitespace).
pub fn same_spec(a: &TransformSpec, b: &TransformSpec) -> bool {
    let sql = |s: &TransformSpec| {
        s.sql
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_string)
    };
    a.version.trim() == b.version.trim() && sql(a) == sql(b)
}
