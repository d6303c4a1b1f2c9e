//! Lineage: the whole path of one record, from the request that fetched it
//! to the curated file that holds its row (`GET /trace`, `hubflow ctl
//! trace`).
//!
//! Nothing is scanned but curated's metadata columns: the curated row
//! (`_record_id`) names the hub partition, sequence number and offset, the
//! raw blob and the transform version, and its file follows from the raw
//! blob's stem and the row's `date`/`hour`; the raw blob gives the record
//! as fetched and its fetch time, which names the page in the fetcher's
//! page log ([`hubflow_actors::page_log`]) and so the request; dead letters
//! that name the record and replays whose range covers its sequence number
//! complete the picture. [`trace_row`] starts from a curated file and row
//! instead.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use bytes::Bytes;
use hubflow_actors::formats::curated::{
    COL_HUB_OFFSET, COL_HUB_PARTITION, COL_HUB_SEQUENCE, COL_RAW_BLOB, COL_RECORD_ID,
    COL_TRANSFORM_VERSION,
};
use hubflow_actors::formats::raw;
use hubflow_actors::page_log;
use hubflow_actors::ports::{BlobStore, StateStore};
use hubflow_actors::record::RawBlobName;
use serde::Serialize;
use serde_json::Value;

use crate::backends::Backends;
use crate::config::Settings;
use crate::dlq::{DeadLetterSummary, Dlq};
use crate::replay::{REPLAY_RECORDS, ReplayProgress};

/// Payload bytes shown in a trace, at most.
pub const PAYLOAD_PREVIEW_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("no curated row or dead letter of source {source_name:?} has record id {id:?}")]
    NotFound { source_name: String, id: String },
    #[error("no curated file {0:?}")]
    NoSuchFile(String),
    #[error("bad curated file {file:?}: {reason}")]
    BadFile { file: String, reason: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Where a record is curated.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CuratedRow {
    /// `<source>/date=…/hour=…/<stem>.parquet` in the curated container.
    pub file: String,
    pub partition: i64,
    pub sequence: i64,
    pub offset: String,
    pub raw_blob: String,
    pub transform_version: String,
}

/// The record in its raw blob.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RawRecordHit {
    pub blob: String,
    /// Its position among the blob's records.
    pub index: usize,
    pub records_in_blob: usize,
    pub sequence: i64,
    pub enqueued_ms: i64,
    pub fetched_ms: i64,
    pub payload_bytes: usize,
    /// The record as fetched (lossy UTF-8), cut at [`PAYLOAD_PREVIEW_BYTES`].
    pub payload_preview: String,
}

/// The request that fetched it, from the page log.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FetchHit {
    pub page_log_blob: String,
    pub fetched_ms: i64,
    /// Secrets removed.
    pub request: String,
    pub cursor: Value,
    pub page_records: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// A replay that re-curated the record's range.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ReplayHit {
    pub record: String,
    pub id: u64,
    pub transform_version: String,
    pub state: Value,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

/// The whole path of one record.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Trace {
    pub source: String,
    pub id: String,
    /// Normally one; more only if the record was curated twice.
    pub curated: Vec<CuratedRow>,
    pub raw: Option<RawRecordHit>,
    pub fetch: Option<FetchHit>,
    pub dead_letters: Vec<DeadLetterSummary>,
    pub replays: Vec<ReplayHit>,
    /// What could not be found, and why.
    pub notes: Vec<String>,
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The path of record `id` of `source`.
pub async fn trace(
    settings: &Settings,
    backends: &Backends,
    source: &str,
    id: &str,
) -> Result<Trace, TraceError> {
    let known = settings.sources.iter().any(|s| s.name() == source)
        || settings.live_sources.get(source).is_some();
    if !known {
        return Err(TraceError::UnknownSource(source.to_string()));
    }
    let mut trace = Trace {
        source: source.to_string(),
        id: id.to_string(),
        curated: curated_rows(settings, source, id).await?,
        raw: None,
        fetch: None,
        dead_letters: Vec::new(),
        replays: Vec::new(),
        notes: Vec::new(),
    };
    trace.dead_letters = Dlq::of(settings, backends)
        .touching(source, id)
        .await
        .context("reading dead letters")?;
    let Some(row) = trace.curated.first().cloned() else {
        if trace.dead_letters.is_empty() {
            return Err(TraceError::NotFound {
                source_name: source.to_string(),
                id: id.to_string(),
            });
        }
        trace
            .notes
            .push("not curated: see the dead letters".to_string());
        return Ok(trace);
    };
    upstream(settings, backends, &row, &mut trace).await?;
    Ok(trace)
}

/// The curated rows of record `id` of `source`, from its metadata columns.
async fn curated_rows(
    settings: &Settings,
    source: &str,
    id: &str,
) -> Result<Vec<CuratedRow>, TraceError> {
    let sql = format!(
        "SELECT date, hour, {COL_HUB_PARTITION}, {COL_HUB_SEQUENCE}, {COL_HUB_OFFSET}, \
         {COL_RAW_BLOB}, {COL_TRANSFORM_VERSION} FROM \"{}\" WHERE {COL_RECORD_ID} = {} \
         ORDER BY {COL_HUB_SEQUENCE}",
        source.replace('"', "\"\""),
        sql_text(id)
    );
    let batches = crate::query::curated(&settings.curated_location(), &sql)
        .await
        .with_context(|| format!("querying curated table {source}"))?;
    let mut curated = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let text = |i: usize| -> String {
                let col = batch.column(i);
                arrow::util::display::array_value_to_string(col, row).unwrap_or_default()
            };
            let raw_blob = text(5);
            let stem = raw_blob
                .split_once('/')
                .and_then(|(_, name)| RawBlobName::parse(name))
                .map(|n| n.stem())
                .unwrap_or_default();
            curated.push(CuratedRow {
                file: format!("{source}/date={}/hour={}/{stem}.parquet", text(0), text(1)),
                partition: text(2).parse().unwrap_or(-1),
                sequence: text(3).parse().unwrap_or(-1),
                offset: text(4),
                raw_blob,
                transform_version: text(6),
            });
        }
    }
    Ok(curated)
}

/// Upstream of a curated row: the raw record, the page that fetched it
/// (from the page log) and the replays that rewrote it. What cannot be
/// found becomes a note, not an error.
async fn upstream(
    settings: &Settings,
    backends: &Backends,
    row: &CuratedRow,
    trace: &mut Trace,
) -> Result<(), TraceError> {
    let state = backends.state(settings);
    let raw_container = &settings.storage.raw_container;
    let hit = match raw_hit(backends.blobs.as_ref(), raw_container, row).await {
        Ok(Some(hit)) => hit,
        Ok(None) => {
            trace.notes.push(format!(
                "raw blob {} holds no record with sequence number {}",
                row.raw_blob, row.sequence
            ));
            return Ok(());
        }
        Err(error) => {
            trace
                .notes
                .push(format!("cannot read raw blob {}: {error:#}", row.raw_blob));
            return Ok(());
        }
    };
    match page_log::find(&state, &trace.source, hit.fetched_ms).await {
        Ok(Some((blob, page))) => {
            trace.fetch = Some(FetchHit {
                page_log_blob: blob,
                fetched_ms: page.fetched_ms,
                request: page.request,
                cursor: page.cursor,
                page_records: page.records,
                first_id: page.first_id,
                last_id: page.last_id,
            })
        }
        Ok(None) => trace.notes.push(format!(
            "the page log holds no page fetched at {} (older than \
             [fetcher] page_log_retention_hours, or not written before a crash)",
            hit.fetched_ms
        )),
        Err(error) => trace
            .notes
            .push(format!("cannot read the page log: {error}")),
    }
    trace.replays = replays_touching(&state, row, hit.enqueued_ms)
        .await
        .context("reading replay records")?;
    trace.raw = Some(hit);
    Ok(())
}

async fn raw_hit(
    blobs: &dyn BlobStore,
    raw_container: &str,
    row: &CuratedRow,
) -> anyhow::Result<Option<RawRecordHit>> {
    let name = row
        .raw_blob
        .strip_prefix(&format!("{raw_container}/"))
        .unwrap_or(&row.raw_blob);
    let (bytes, _) = blobs.get(raw_container, name).await?;
    let batch = raw::decode(&bytes)?;
    let total = batch.records.len();
    let Some((index, record)) = batch
        .records
        .into_iter()
        .enumerate()
        .find(|(_, r)| r.sequence_number == row.sequence)
    else {
        return Ok(None);
    };
    let preview: Bytes = record
        .payload
        .slice(..record.payload.len().min(PAYLOAD_PREVIEW_BYTES));
    Ok(Some(RawRecordHit {
        blob: row.raw_blob.clone(),
        index,
        records_in_blob: total,
        sequence: record.sequence_number,
        enqueued_ms: record.enqueued_time_ms,
        fetched_ms: record.fetched_time_ms,
        payload_bytes: record.payload.len(),
        payload_preview: String::from_utf8_lossy(&preview).into_owned(),
    }))
}

async fn replays_touching(
    state: &StateStore,
    row: &CuratedRow,
    enqueued_ms: i64,
) -> anyhow::Result<Vec<ReplayHit>> {
    let prefix = format!("{REPLAY_RECORDS}{:05}/", row.partition);
    let mut out = Vec::new();
    for name in state.list_names(&prefix).await? {
        let Some(progress) = state.load::<ReplayProgress>(&name).await? else {
            continue;
        };
        let p = progress.value;
        let r = &p.request;
        let covers = r.from_sequence.is_none_or(|s| s <= row.sequence)
            && r.to_sequence.is_none_or(|s| row.sequence <= s)
            && r.from_time
                .is_none_or(|t| t.timestamp_millis() <= enqueued_ms)
            && r.to_time.is_none_or(|t| enqueued_ms < t.timestamp_millis());
        if covers {
            out.push(ReplayHit {
                record: name,
                id: p.id,
                transform_version: p.transform_version,
                state: serde_json::to_value(p.state).unwrap_or(Value::Null),
                started_ms: p.started_ms,
                finished_ms: p.finished_ms,
            });
        }
    }
    Ok(out)
}

/// The path of the record in row `row` (from 0) of curated file `file`
/// (`<source>/date=…/hour=…/<name>.parquet`).
pub async fn trace_row(
    settings: &Settings,
    backends: &Backends,
    file: &str,
    row: usize,
) -> Result<Trace, TraceError> {
    let bad = |reason: String| TraceError::BadFile {
        file: file.to_string(),
        reason,
    };
    let source = file
        .split('/')
        .next()
        .filter(|s| !s.is_empty() && file.ends_with(".parquet") && !file.contains(".."))
        .ok_or_else(|| bad("expected <source>/date=…/hour=…/<name>.parquet".into()))?;
    let container = &settings.storage.curated_container;
    let (bytes, _) = match backends.blobs.get(container, file).await {
        Ok(found) => found,
        Err(e) if e.is_not_found() => return Err(TraceError::NoSuchFile(file.to_string())),
        Err(e) => return Err(TraceError::Other(e.into())),
    };
    let id = record_id_at(bytes, row).map_err(bad)?;
    trace(settings, backends, source, &id).await
}

/// The `_record_id` of row `row` of a curated Parquet file.
fn record_id_at(bytes: Bytes, row: usize) -> Result<String, String> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("not a Parquet file: {e}"))?;
    let rows = reader.metadata().file_metadata().num_rows() as usize;
    if row >= rows {
        return Err(format!("row {row} is past the last row ({rows} rows)"));
    }
    let schema = Arc::clone(reader.schema());
    let index = schema
        .index_of(COL_RECORD_ID)
        .map_err(|_| format!("no {COL_RECORD_ID} column (not a curated file)"))?;
    let mask = parquet::arrow::ProjectionMask::roots(reader.parquet_schema(), [index]);
    let mut seen = 0;
    for batch in reader
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?
    {
        let batch = batch.map_err(|e| e.to_string())?;
        if row < seen + batch.num_rows() {
            let ids = batch
                .column(0)
                .as_string_opt::<i32>()
                .ok_or_else(|| format!("{COL_RECORD_ID} is not a string column"))?;
            let at = row - seen;
            if ids.is_null(at) {
                return Err(format!("row {row} has no record id"));
            }
            return Ok(ids.value(at).to_string());
        }
        seen += batch.num_rows();
    }
    Err(format!("row {row} not found"))
}

/// The trace as text for `hubflow ctl trace`.
pub fn render(trace: &Value) -> String {
    let mut out = format!(
        "record {} of source {}\n",
        trace["id"].as_str().unwrap_or("?"),
        trace["source"].as_str().unwrap_or("?")
    );
    let f = &trace["fetch"];
    if f.is_object() {
        out.push_str(&format!(
            "  fetched    {} at {} ms (page of {} records, {} .. {}; page log {})\n",
            f["request"].as_str().unwrap_or("?"),
            f["fetched_ms"],
            f["page_records"],
            f["first_id"].as_str().unwrap_or("-"),
            f["last_id"].as_str().unwrap_or("-"),
            f["page_log_blob"].as_str().unwrap_or("?")
        ));
    }
    let r = &trace["raw"];
    if r.is_object() {
        out.push_str(&format!(
            "  hub        partition {} sequence {} (enqueued at {} ms)\n  raw        {} record {} of {} ({} bytes)\n",
            trace["curated"][0]["partition"],
            r["sequence"],
            r["enqueued_ms"],
            r["blob"].as_str().unwrap_or("?"),
            r["index"],
            r["records_in_blob"],
            r["payload_bytes"]
        ));
    }
    for c in trace["curated"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  curated    {} (transform {}, offset {})\n",
            c["file"].as_str().unwrap_or("?"),
            c["transform_version"].as_str().unwrap_or("?"),
            c["offset"].as_str().unwrap_or("?")
        ));
    }
    for d in trace["dead_letters"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  dead letter {}: {}\n",
            d["id"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("?")
        ));
    }
    for p in trace["replays"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  replay     {} with {} ({})\n",
            p["id"],
            p["transform_version"].as_str().unwrap_or("?"),
            p["state"]
        ));
    }
    for n in trace["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("  note       {}\n", n.as_str().unwrap_or("?")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_quoted_for_sql() {
        assert_eq!(sql_text("a'b"), "'a''b'");
    }

    #[test]
    fn a_row_of_a_file_without_ids_or_past_the_end_is_a_clear_error() {
        assert!(
            record_id_at(Bytes::from_static(b"not parquet"), 0)
                .unwrap_err()
                .contains("not a Parquet file")
        );
    }

    #[test]
    fn the_text_names_every_stage() {
        let trace = serde_json::json!({
            "source": "demo", "id": "evt-1",
            "fetch": {"request": "GET http://api/v1/events?cursor=0", "fetched_ms": 5, "page_records": 100,
                      "first_id": "evt-0", "last_id": "evt-99", "page_log_blob": "pagelog/demo/0000000000005"},
            "raw": {"blob": "raw/ingest/p0001/x.hfr", "index": 3, "records_in_blob": 40, "sequence": 7,
                    "enqueued_ms": 6, "payload_bytes": 120},
            "curated": [{"file": "demo/date=2026-01-01/hour=00/s.parquet", "partition": 1,
                         "transform_version": "identity", "offset": "7"}],
            "dead_letters": [], "replays": [{"id": 2, "transform_version": "v2", "state": "done"}],
            "notes": ["n"]
        });
        let text = render(&trace);
        for want in [
            "GET http://api/v1/events?cursor=0",
            "partition 1 sequence 7",
            "raw/ingest/p0001/x.hfr record 3 of 40",
            "demo/date=2026-01-01/hour=00/s.parquet (transform identity",
            "replay     2 with v2",
            "note       n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
