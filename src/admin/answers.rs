//! The typed answers of the admin API: what each JSON route serializes.
//! The OpenAPI document's response schemas are derived from these same
//! types (see [`super::openapi::Answering`]), so what is documented is what
//! is served. Types the answers carry from elsewhere (the status tree,
//! progress, replay jobs, dead letters, lineage, spec logs) derive their
//! schemas where they are defined.

use std::collections::BTreeMap;

use hubflow_supervision::StatusNode;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::health::WriteBlock;
use crate::pipeline::Progress;
use crate::replay::ReplayProgress;

/// `GET /healthz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: &'static str,
}

/// `GET /readyz` (200 when ready, 503 with the reason otherwise).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Readiness {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Actors that cannot write (storage full), when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cannot_write: Option<Vec<WriteBlock>>,
}

/// The transform summary in the status document.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TransformSummary {
    /// The version this node runs.
    pub version: String,
    /// Its position in the durable spec log.
    pub seq: u64,
    /// The version the node's configuration file names.
    pub config_version: String,
    /// The running version differs from the configuration file's.
    pub drift: bool,
    /// A swap is being applied on this node.
    pub swapping: bool,
}

/// `GET /status`, and each `status` event of `GET /events`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusDocument {
    pub ready: bool,
    /// Why the node is not ready.
    pub not_ready: Option<String>,
    pub cannot_write: Vec<WriteBlock>,
    pub started_ms: i64,
    /// Version labels per group or source (`transform`, `source:<name>`).
    pub versions: BTreeMap<String, String>,
    pub transform: TransformSummary,
    /// Counts from durable state (`null` when they could not be read).
    pub progress: Option<Progress>,
    pub progress_error: Option<String>,
    pub replays: Vec<ReplayProgress>,
    /// The supervision tree.
    pub tree: StatusNode,
    /// When the document was made (events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<i64>,
}

/// `GET /auth/check`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenCheck {
    /// Always `accepted` (a refused token gets 401).
    pub token: &'static str,
}

/// `POST /pause` and `POST /resume`: the actors told, under the verb done.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PauseAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Vec<String>>,
}

/// `POST /drain`: a group or actor drained (200), or the node draining
/// (202, then it exits).
#[derive(Debug, Serialize, JsonSchema)]
pub struct DrainAnswer {
    /// `node` when the whole node drains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<&'static str>,
    /// The path drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<String>,
}

/// `POST /actors/kill`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Killed {
    pub killed: String,
}

/// `POST /actors/restart`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Restarted {
    pub restarted: String,
}

/// `POST /actors/panic`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PanicInjected {
    pub panic_injected: String,
}

/// `GET` and `POST /log-level`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogFilter {
    /// The EnvFilter directives in effect.
    pub filter: String,
}

/// `POST /replay`: the job started (202).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplayStarted {
    pub id: u64,
    /// Where its progress is (`/replay/<id>`).
    pub url: String,
    pub transform_version: String,
}

/// `GET /replay`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Replays {
    pub replays: Vec<ReplayProgress>,
}

/// `GET /dlq`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<crate::dlq::DeadLetterSummary>,
}

/// `GET /sources`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Sources {
    pub sources: Vec<crate::swap::source::SourceVersions>,
}

/// One replay job a backfill started.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackfillJob {
    pub id: u64,
    pub url: String,
    pub partition: u32,
    pub from_sequence: Option<i64>,
    pub to_sequence: Option<i64>,
}

/// `POST /transform/backfill` (202).
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackfillStarted {
    pub since: String,
    pub with: String,
    pub dry_run: crate::swap::transform::DryRun,
    pub jobs: Vec<BackfillJob>,
    /// Partitions whose checkpoints no longer say where `since` began
    /// (their oldest ranges were dropped); not backfilled.
    pub partitions_forgotten: Vec<u32>,
}

/// `GET /transform`: this node's transform, the durable spec log and the
/// ranges each version curated.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TransformDocument {
    #[serde(flatten)]
    pub node: crate::transform::TransformStatus,
    /// The durable spec log (`null` before the first swap is written).
    pub log: Option<crate::specs::SpecLog<crate::transform::TransformSpec>>,
    /// Per version label, the raw ranges it curated and replayed.
    pub ranges: BTreeMap<String, crate::swap::transform::VersionRanges>,
}

/// `POST /transform/dry-run`: a transform run on the newest raw blob
/// without a swap, with the first rows before and after it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DryRunPreview {
    #[serde(flatten)]
    pub dry_run: crate::swap::transform::DryRun,
    /// The first rows of the `batch` table the SQL reads (curated, before
    /// the transform), as JSON objects.
    pub before: Vec<serde_json::Map<String, Value>>,
    /// The first rows the SQL produced.
    pub after: Vec<serde_json::Map<String, Value>>,
}
