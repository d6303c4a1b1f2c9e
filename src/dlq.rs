//! Dead letters for operators: list, inspect and redrive.
//!
//! Dead letters live in the dead-letter container as written by
//! `hubflow_actors::dead_letter`: `<stage>/<key>.json` (the reason and
//! context) next to `<stage>/<key>.body` (the bytes). A dead letter's id is
//! `<stage>/<key>`. Redriving one writes `<stage>/<key>.redriven.json`; the
//! original is never changed, so a redriven letter stays inspectable.
//!
//! What each kind supports:
//! - `transform` (a record the curated format rejected, e.g. a payload that
//!   is not a JSON object): redrive republishes the record to hub "ingest"
//!   with its id and source, optionally with a corrected payload, so it flows
//!   through the pipeline again. The payload sent must be a JSON object. An
//!   unchanged payload is refused when it is not a JSON object (it would only
//!   be rejected again); note that the transformer drops an (id, payload)
//!   pair it has seen within its dedupe window, so a redrive normally comes
//!   with a corrected payload.
//! - `source/<name>` (an HTTP response the source could not use): inspect
//!   only. The body is a whole response, not records; fix the source (or
//!   its configuration) and the fetcher refetches from its cursor.
//!
//! A redrive publishes first and writes the marker second: a crash in between
//! republishes on the next redrive, and the stable record id lets the
//! transformer's dedupe window drop the copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hubflow_actors::dead_letter::DeadLetterInfo;
use hubflow_actors::now_ms;
use hubflow_actors::ports::{
    BlobError, BlobStore, EventData, Hub, PublishTarget, PutCondition, partition_for_key,
};
use hubflow_actors::record::{PROP_FETCHED_MS, PROP_ID, PROP_SOURCE};
use serde::{Deserialize, Serialize};

/// Stage name of records the transformer rejected.
pub use hubflow_actors::transformer::TRANSFORM_STAGE;
/// Stage prefix of responses a source could not use.
pub const SOURCE_STAGE_PREFIX: &str = "source/";

const INFO_SUFFIX: &str = ".json";
const MARKER_SUFFIX: &str = ".redriven.json";
/// Bytes of a body shown by [`inspect`] (the rest is summarised by its size).
pub const BODY_PREVIEW_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no dead letter {0}")]
    NotFound(String),
    #[error("invalid dead letter id {0:?}")]
    InvalidId(String),
    #[error("dead letter {id} cannot be redriven: {reason}")]
    NotRedrivable { id: String, reason: String },
    #[error("dead letter {id} was already redriven at {at_ms} (ms since epoch)")]
    AlreadyRedriven { id: String, at_ms: i64 },
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    #[error("dead letter {id} is damaged: {message}")]
    Damaged { id: String, message: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("publishing to the hub failed: {0}")]
    Publish(String),
}

/// What redrive does for a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedriveSupport {
    /// Republish to hub "ingest".
    Republish,
    /// Inspect only.
    None,
}

pub fn redrive_support(stage: &str) -> RedriveSupport {
    if stage == TRANSFORM_STAGE {
        RedriveSupport::Republish
    } else {
        RedriveSupport::None
    }
}

/// The marker a redrive leaves next to the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RedriveMarker {
    pub redriven_ms: i64,
    pub partition: u32,
    pub payload_replaced: bool,
}

/// One dead letter in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterSummary {
    pub id: String,
    pub stage: String,
    pub reason: String,
    pub created_ms: i64,
    pub redrive: RedriveSupport,
    pub redriven_ms: Option<i64>,
}

/// One dead letter in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterDetail {
    pub id: String,
    pub info: DeadLetterInfo,
    pub redrive: RedriveSupport,
    pub redriven: Option<RedriveMarker>,
    pub body_bytes: u64,
    /// The body as text (lossy UTF-8), cut at [`BODY_PREVIEW_BYTES`].
    pub body_preview: String,
    pub body_truncated: bool,
}

/// Filter of [`list`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Only ids under this stage (`transform`, `source/demo`, ...).
    pub stage: Option<String>,
    /// Leave out letters already redriven.
    #[serde(default)]
    pub pending_only: bool,
    /// At most this many, newest first (default 100, max 10,000).
    pub limit: Option<usize>,
}

/// What [`redrive`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RedriveOutcome {
    pub id: String,
    pub record_id: String,
    pub source: String,
    pub partition: u32,
    pub payload_replaced: bool,
}

/// Where dead letters are and where redrives go.
#[derive(Clone)]
pub struct Dlq {
    pub store: Arc<dyn BlobStore>,
    pub container: String,
    pub ingest: Arc<dyn Hub>,
}

fn check_id(id: &str) -> Result<(), DlqError> {
    let ok = !id.is_empty()
        && !id.ends_with(INFO_SUFFIX)
        && !id.ends_with(".body")
        && id.contains('/')
        && hubflow_actors::ports::validate_blob_name(id).is_ok();
    if ok {
        Ok(())
    } else {
        Err(DlqError::InvalidId(id.to_string()))
    }
}

fn stage_of(id: &str) -> &str {
    id.rsplit_once('/').map_or("", |(stage, _)| stage)
}

/// Ids of every dead letter under `prefix`, with their redriven marker names.
async fn scan(
    store: &dyn BlobStore,
    container: &str,
    prefix: &str,
) -> Result<(Vec<String>, BTreeMap<String, ()>), BlobError> {
    let listed = match store.list(container, prefix).await {
        Ok(l) => l,
        Err(BlobError::ContainerNotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    let mut markers = BTreeMap::new();
    for blob in listed {
        if let Some(id) = blob.name.strip_suffix(MARKER_SUFFIX) {
            markers.insert(id.to_string(), ());
        } else if let Some(id) = blob.name.strip_suffix(INFO_SUFFIX) {
            ids.push(id.to_string());
        }
    }
    Ok((ids, markers))
}

/// Stored dead letters per (stage, redriven).
pub async fn count(
    store: &dyn BlobStore,
    container: &str,
) -> Result<BTreeMap<(String, bool), u64>, BlobError> {
    let (ids, markers) = scan(store, container, "").await?;
    let mut out = BTreeMap::new();
    for id in ids {
        let redriven = markers.contains_key(&id);
        *out.entry((stage_of(&id).to_string(), redriven))
            .or_insert(0) += 1;
    }
    Ok(out)
}

impl Dlq {
    /// The dead letters of a node: its dead-letter container, redriven to
    /// its hub "ingest".
    pub fn of(settings: &crate::config::Settings, backends: &crate::backends::Backends) -> Dlq {
        Dlq {
            store: backends.blobs.clone(),
            container: settings.storage.dead_letter_container.clone(),
            ingest: backends.ingest.clone(),
        }
    }

    async fn load_json<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<T>, DlqError> {
        match self.store.get(&self.container, name).await {
            Ok((bytes, _)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| DlqError::Damaged {
                        id: id.to_string(),
                        message: format!("{name}: {e}"),
                    })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(BlobError::ContainerNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn info(&self, id: &str) -> Result<DeadLetterInfo, DlqError> {
        check_id(id)?;
        self.load_json(id, &format!("{id}{INFO_SUFFIX}"))
            .await?
            .ok_or_else(|| DlqError::NotFound(id.to_string()))
    }

    async fn marker(&self, id: &str) -> Result<Option<RedriveMarker>, DlqError> {
        self.load_json(id, &format!("{id}{MARKER_SUFFIX}")).await
    }

    /// A listing line for letter `id` (`redriven`: a marker was listed).
    async fn summary(
        &self,
        id: String,
        info: DeadLetterInfo,
        redriven: bool,
    ) -> Result<DeadLetterSummary, DlqError> {
        let redriven_ms = if redriven {
            self.marker(&id).await?.map(|m| m.redriven_ms)
        } else {
            None
        };
        Ok(DeadLetterSummary {
            redrive: redrive_support(&info.stage),
            stage: info.stage,
            reason: info.reason,
            created_ms: info.created_ms,
            redriven_ms,
            id,
        })
    }

    /// Dead letters, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<DeadLetterSummary>, DlqError> {
        let prefix = match &filter.stage {
            Some(stage) => format!("{}/", stage.trim_end_matches('/')),
            None => String::new(),
        };
        let (mut ids, markers) = scan(self.store.as_ref(), &self.container, &prefix).await?;
        if filter.pending_only {
            ids.retain(|id| !markers.contains_key(id));
        }
        // Keys start with a zero-padded creation time (or a stem of ordered
        // numbers), so name order is age order within a stage.
        ids.sort_by(|a, b| {
            let key = |id: &str| id.rsplit_once('/').map_or(id, |(_, k)| k).to_string();
            key(b).cmp(&key(a)).then(b.cmp(a))
        });
        let limit = filter.limit.unwrap_or(100).clamp(1, 10_000);
        let mut out = Vec::new();
        for id in ids.into_iter().take(limit) {
            let info = match self.info(&id).await {
                Ok(info) => info,
                // Listed a moment ago, removed since: skip it.
                Err(DlqError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let redriven = markers.contains_key(&id);
            out.push(self.summary(id, info, redriven).await?);
        }
        Ok(out)
    }

    /// Dead letters that name record `id` of `source`: transform letters
    /// whose context names the record and source, and the source's own
    /// letters for a record (one too large for the hub). Reads every letter
    /// of those two stages: dead letters are few, and this is an operator's
    /// one-off question (`hubflow ctl trace`).
    pub async fn touching(
        &self,
        source: &str,
        id: &str,
    ) -> Result<Vec<DeadLetterSummary>, DlqError> {
        let mut out = Vec::new();
        for (stage, id_key, source_key) in [
            (TRANSFORM_STAGE.to_string(), "record_id", Some("source")),
            (format!("{SOURCE_STAGE_PREFIX}{source}"), "id", None),
        ] {
            let (ids, markers) =
                scan(self.store.as_ref(), &self.container, &format!("{stage}/")).await?;
            for letter in ids {
                let info = match self.info(&letter).await {
                    Ok(info) => info,
                    Err(DlqError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                let names = info.context.get(id_key).and_then(|v| v.as_str()) == Some(id)
                    && source_key.is_none_or(|k| {
                        info.context.get(k).and_then(|v| v.as_str()) == Some(source)
                    });
                if !names {
                    continue;
                }
                let redriven = markers.contains_key(&letter);
                out.push(self.summary(letter, info, redriven).await?);
            }
        }
        Ok(out)
    }

    /// One dead letter with a preview of its body.
    pub async fn inspect(&self, id: &str) -> Result<DeadLetterDetail, DlqError> {
        let info = self.info(id).await?;
        let redriven = self.marker(id).await?;
        let body = match self.store.get(&self.container, &info.body_blob).await {
            Ok((bytes, _)) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(DlqError::Damaged {
                    id: id.to_string(),
                    message: format!("body {} is missing", info.body_blob),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let shown = &body[..body.len().min(BODY_PREVIEW_BYTES)];
        Ok(DeadLetterDetail {
            id: id.to_string(),
            redrive: redrive_support(&info.stage),
            redriven,
            body_bytes: body.len() as u64,
            body_preview: String::from_utf8_lossy(shown).into_owned(),
            body_truncated: body.len() > BODY_PREVIEW_BYTES,
            info,
        })
    }

    /// Republish a `transform` dead letter to hub "ingest" (with `payload`
    /// instead of the stored body when given) and mark it redriven.
    pub async fn redrive(
        &self,
        id: &str,
        payload: Option<&serde_json::Value>,
    ) -> Result<RedriveOutcome, DlqError> {
        let info = self.info(id).await?;
        if redrive_support(&info.stage) == RedriveSupport::None {
            return Err(DlqError::NotRedrivable {
                id: id.to_string(),
                reason: format!(
                    "stage {} holds a response the source could not use, not records; fix the source and it refetches from its cursor",
                    info.stage
                ),
            });
        }
        if let Some(marker) = self.marker(id).await? {
            return Err(DlqError::AlreadyRedriven {
                id: id.to_string(),
                at_ms: marker.redriven_ms,
            });
        }
        let field = |name: &str| {
            info.context
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| DlqError::Damaged {
                    id: id.to_string(),
                    message: format!("context has no {name}"),
                })
        };
        let record_id = field("record_id")?;
        let source = field("source")?;
        let body = match payload {
            Some(value) => {
                if !value.is_object() {
                    return Err(DlqError::InvalidPayload(
                        "a corrected payload must be a JSON object".to_string(),
                    ));
                }
                Bytes::from(serde_json::to_vec(value).map_err(|e| {
                    DlqError::InvalidPayload(format!("cannot encode the payload: {e}"))
                })?)
            }
            None => {
                let (body, _) = self.store.get(&self.container, &info.body_blob).await?;
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
                if !parsed.as_ref().is_ok_and(|v| v.is_object()) {
                    return Err(DlqError::InvalidPayload(
                        "the stored payload is not a JSON object and would be rejected again; pass a corrected payload".to_string(),
                    ));
                }
                body
            }
        };
        let partitions = self
            .ingest
            .partition_ids()
            .await
            .map_err(|e| DlqError::Publish(e.to_string()))?
            .len() as u32;
        let partition = partition_for_key(&record_id, partitions);
        let event = EventData::new(body)
            .with_property(PROP_ID, record_id.clone())
            .with_property(PROP_SOURCE, source.clone())
            .with_property(PROP_FETCHED_MS, now_ms().to_string());
        self.ingest
            .publish(PublishTarget::Partition(partition), vec![event])
            .await
            .map_err(|e| DlqError::Publish(e.to_string()))?;
        let marker = RedriveMarker {
            redriven_ms: now_ms(),
            partition,
            payload_replaced: payload.is_some(),
        };
        let json = serde_json::to_vec_pretty(&marker).map_err(|e| DlqError::Damaged {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        self.store
            .put(
                &self.container,
                &format!("{id}{MARKER_SUFFIX}"),
                Bytes::from(json),
                PutCondition::None,
            )
            .await?;
        metrics::counter!("hubflow_dlq_redriven_total", "stage" => info.stage.clone()).increment(1);
        tracing::info!(id, partition, "dead letter redriven");
        Ok(RedriveOutcome {
            id: id.to_string(),
            record_id,
            source,
            partition,
            payload_replaced: payload.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubflow_actors::dead_letter::{write_dead_letter, write_dead_letter_at};
    use hubflow_actors::ports::memory::{MemoryBlobStore, MemoryHub};

    async fn fixture() -> (Dlq, Arc<MemoryHub>) {
        let store = Arc::new(MemoryBlobStore::new());
        store.create_container("dlq").await.unwrap();
        let hub = Arc::new(MemoryHub::new("ingest", 4));
        let dlq = Dlq {
            store: store.clone(),
            container: "dlq".into(),
            ingest: hub.clone(),
        };
        write_dead_letter_at(
            store.as_ref(),
            "dlq",
            TRANSFORM_STAGE,
            "ingest-p0001-00000000000000000000-00000000000000000009-000000",
            "payload is not a JSON object",
            &serde_json::json!({"raw_blob": "x", "record_id": "evt-7", "source": "demo"}),
            Bytes::from_static(b"[1,2]"),
        )
        .await
        .unwrap();
        write_dead_letter(
            store.as_ref(),
            "dlq",
            "source/demo",
            "truncated body",
            &serde_json::json!({"request": "GET /v1/events"}),
            Bytes::from_static(b"{\"data\": [tru"),
        )
        .await
        .unwrap();
        (dlq, hub)
    }

    #[tokio::test]
    async fn lists_and_inspects_each_kind() {
        let (dlq, _) = fixture().await;
        let all = dlq.list(&ListFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let source = dlq
            .list(&ListFilter {
                stage: Some("source/demo".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(source.len(), 1);
        assert_eq!(source[0].redrive, RedriveSupport::None);
        let detail = dlq.inspect(&source[0].id).await.unwrap();
        assert_eq!(detail.body_preview, "{\"data\": [tru");
        assert!(matches!(
            dlq.inspect("transform/nope").await,
            Err(DlqError::NotFound(_))
        ));
        assert!(matches!(
            dlq.inspect("../x").await,
            Err(DlqError::InvalidId(_))
        ));
        assert!(matches!(
            dlq.redrive(&source[0].id, None).await,
            Err(DlqError::NotRedrivable { .. })
        ));
    }

    #[tokio::test]
    async fn letters_touching_a_record_are_found_by_its_id_and_source() {
        let (dlq, _) = fixture().await;
        write_dead_letter(
            dlq.store.as_ref(),
            "dlq",
            "source/demo",
            "record of 2000000 bytes exceeds the hub's batch limit",
            &serde_json::json!({"id": "evt-9", "partition": 3}),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
        let found = dlq.touching("demo", "evt-7").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].stage, TRANSFORM_STAGE);
        assert_eq!(found[0].reason, "payload is not a JSON object");
        let found = dlq.touching("demo", "evt-9").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].stage, "source/demo");
        // Same id, other source: none.
        assert!(dlq.touching("other", "evt-7").await.unwrap().is_empty());
        assert!(dlq.touching("demo", "evt-8").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn redrive_republishes_once_with_a_corrected_payload() {
        let (dlq, hub) = fixture().await;
        let id = "transform/ingest-p0001-00000000000000000000-00000000000000000009-000000";
        // The stored body is not an object: refused, nothing published.
        assert!(matches!(
            dlq.redrive(id, None).await,
            Err(DlqError::InvalidPayload(_))
        ));
        assert!(matches!(
            dlq.redrive(id, Some(&serde_json::json!([1]))).await,
            Err(DlqError::InvalidPayload(_))
        ));
        assert_eq!(hub.len(), 0);
        let fixed = serde_json::json!({"id": "evt-7", "n": 7});
        let outcome = dlq.redrive(id, Some(&fixed)).await.unwrap();
        assert_eq!(outcome.record_id, "evt-7");
        assert_eq!(hub.len(), 1);
        let event = &hub.events(outcome.partition)[0];
        assert_eq!(
            event.properties.get(PROP_ID).map(String::as_str),
            Some("evt-7")
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&event.body).unwrap(),
            fixed
        );
        assert!(matches!(
            dlq.redrive(id, Some(&fixed)).await,
            Err(DlqError::AlreadyRedriven { .. })
        ));
        let pending = dlq
            .list(&ListFilter {
                pending_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        let counts = count(dlq.store.as_ref(), "dlq").await.unwrap();
        assert_eq!(counts.get(&("transform".to_string(), true)), Some(&1));
        assert_eq!(counts.get(&("source/demo".to_string(), false)), Some(&1));
    }
}
