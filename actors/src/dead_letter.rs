//! Dead letters: inputs that could not be processed, kept with their reason
//! so an operator can inspect and redrive them. Nothing is dropped silently.
//!
//! Layout in the dead-letter container: `<stage>/<ms>-<hash>.body` holds the
//! bytes, `<stage>/<ms>-<hash>.json` the reason and context.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::now_ms;
use crate::ports::{BlobError, BlobStore, PutCondition};

/// The description stored next to a dead letter's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterInfo {
    pub stage: String,
    pub reason: String,
    pub created_ms: i64,
    pub body_blob: String,
    pub context: serde_json::Value,
}

/// Store a dead letter under a time-ordered name; returns the name of its
/// description blob.
pub async fn write_dead_letter(
    store: &dyn BlobStore,
    container: &str,
    stage: &str,
    reason: &str,
    context: &serde_json::Value,
    body: Bytes,
) -> Result<String, BlobError> {
    let hash = xxhash_rust::xxh3::xxh3_64(&body) ^ xxhash_rust::xxh3::xxh3_64(reason.as_bytes());
    let key = format!("{:013}-{hash:016x}", now_ms());
    write_dead_letter_at(store, container, stage, &key, reason, context, body).await
}

/// Store a dead letter under `<stage>/<key>`: with a key derived from the
/// input's identity, writing it again after a crash replaces it instead of
/// adding a second copy.
pub async fn write_dead_letter_at(
    store: &dyn BlobStore,
    container: &str,
    stage: &str,
    key: &str,
    reason: &str,
    context: &serde_json::Value,
    body: Bytes,
) -> Result<String, BlobError> {
    let created_ms = now_ms();
    let base = format!("{stage}/{key}");
    let body_blob = format!("{base}.body");
    store
        .put(container, &body_blob, body, PutCondition::None)
        .await?;
    let info = DeadLetterInfo {
        stage: stage.to_string(),
        reason: reason.to_string(),
        created_ms,
        body_blob,
        context: context.clone(),
    };
    let info_blob = format!("{base}.json");
    let json = serde_json::to_vec_pretty(&info).map_err(|e| BlobError::Other {
        container: container.to_string(),
        name: info_blob.clone(),
        message: e.to_string(),
    })?;
    store
        .put(container, &info_blob, Bytes::from(json), PutCondition::None)
        .await?;
    metrics::counter!("hubflow_dead_letters_total", "stage" => stage.to_string()).increment(1);
    Ok(info_blob)
}
