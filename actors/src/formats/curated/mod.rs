//! Curated format: JSON records → Arrow → zstd Parquet, Hive-partitioned.
//!
//! [`curate`] takes the records of one raw blob and produces one Parquet file
//! per (source, hour of ingestion), at
//! `<source>/date=YYYY-MM-DD/hour=HH/<stem>.parquet`. The name depends only on
//! the inputs, so rewriting a batch after a crash replaces the file with the
//! same bytes.
//!
//! The steps, one file each:
//! - [`tape`]: payloads parsed by serde_json onto one flat tape per batch,
//!   strings borrowed from the payload bytes, no DOM;
//! - [`schema`]: the type lattice and its widening rules, inference from the
//!   tape evolved by union with the schema registry's schema (`known`),
//!   [`merge_schemas`];
//! - [`columns`]: Arrow columns built from the tape, metadata columns last;
//! - [`layout`]: Hive paths and Parquet writer properties;
//! - [`registry`]: [`schema_to_json`] / [`schema_from_json`], the registry's
//!   encoding.
//!
//! Column order: the known fields in their order, then new fields in order
//! of first appearance. Metadata columns ([`metadata_fields`]) come last; a
//! payload field whose name collides with one, or with a partition key
//! ([`PARTITION_COLUMNS`]), is renamed with the [`RENAMED_SUFFIX`] and
//! reported.
//!
//! A [`BatchTransform`] (a versioned SQL spec, for example) may reshape each
//! batch between inference and Parquet ([`curate_with`]): add, drop, rename
//! or cast data columns and filter rows. The metadata columns must survive
//! it, so lineage and the exactly-once checks still hold.

mod columns;
mod layout;
mod registry;
mod schema;
mod tape;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use bytes::Bytes;
use parquet::errors::ParquetError;
use serde_json::{Map, Value};
use tracing::warn;

pub use registry::{schema_from_json, schema_to_json};
pub use schema::merge_schemas;

use tape::{Elem, Tape};

/// Metadata column: the record's stable id.
pub const COL_RECORD_ID: &str = "_record_id";
/// Metadata column: hub partition the record was read from.
pub const COL_HUB_PARTITION: &str = "_hub_partition";
/// Metadata column: hub offset (opaque string, as Event Hubs reports it).
pub const COL_HUB_OFFSET: &str = "_hub_offset";
/// Metadata column: hub sequence number.
pub const COL_HUB_SEQUENCE: &str = "_hub_sequence";
/// Metadata column: hub enqueued time, UTC milliseconds.
pub const COL_INGESTED_AT: &str = "_ingested_at";
/// Metadata column: name of the raw blob the record came from.
pub const COL_RAW_BLOB: &str = "_raw_blob";
/// Metadata column: the version label of the transform that wrote the row.
/// Set by the curate step after the transform runs (a transform cannot
/// forge it), so `WHERE _transform_version = 'v2'` finds a version's rows.
pub const COL_TRANSFORM_VERSION: &str = "_transform_version";
/// Names of the metadata columns, in the order they are appended.
pub const METADATA_COLUMNS: [&str; 7] = [
    COL_RECORD_ID,
    COL_HUB_PARTITION,
    COL_HUB_OFFSET,
    COL_HUB_SEQUENCE,
    COL_INGESTED_AT,
    COL_RAW_BLOB,
    COL_TRANSFORM_VERSION,
];
/// The version label of the identity transform (no SQL).
pub const IDENTITY_VERSION: &str = "identity";
/// Hive partition keys of the layout. Query engines expose them as columns,
/// so payload fields of these names are renamed like metadata collisions.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];
/// Suffix given to a payload field whose name collides with a metadata column
/// or a partition column.
pub const RENAMED_SUFFIX: &str = "_payload";

const HOUR_MS: i64 = 3_600_000;
/// 9999-12-31T23:59:59.999Z: the last instant a `date=YYYY-MM-DD` path can name.
const MAX_ENQUEUED_MS: i64 = 253_402_300_799_999;

/// Errors of the curated format. Bad records are not errors (they are
/// returned as [`Rejected`]); these are problems with the call itself.
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    #[error("invalid curated file stem {stem:?}: {reason}")]
    InvalidStem { stem: String, reason: &'static str },
    #[error("invalid curate options: {0}")]
    InvalidOptions(String),
    #[error("invalid stored schema: {0}")]
    InvalidSchema(String),
    #[error("batch too large: {0}")]
    TooLarge(&'static str),
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
    #[error("parquet error: {0}")]
    Parquet(#[from] ParquetError),
    #[error("transform {version} failed on source {source_name}: {message}")]
    Transform {
        version: String,
        source_name: String,
        message: String,
    },
}

/// A reshaping of each curated batch (one source, one hour), applied before
/// the Parquet file is written. Implementations must be deterministic, so
/// a rewrite after a crash produces the same file.
pub trait BatchTransform: Send + Sync {
    /// The version label written to the status tree and the file metadata.
    fn version(&self) -> &str;
    /// The batch holds the data columns then the [`METADATA_COLUMNS`].
    fn apply(&self, source: &str, batch: RecordBatch) -> Result<RecordBatch, String>;
}

/// A transform as the curate step runs it: the version label its rows are
/// stamped with and, unless it is the identity, the batch transform.
#[derive(Clone)]
pub struct CurateTransform {
    pub version: String,
    pub transform: Option<Arc<dyn BatchTransform>>,
}

impl CurateTransform {
    /// The identity, labelled [`IDENTITY_VERSION`].
    pub fn identity() -> Self {
        CurateTransform {
            version: IDENTITY_VERSION.to_string(),
            transform: None,
        }
    }
}

impl fmt::Debug for CurateTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurateTransform")
            .field("version", &self.version)
            .field("sql", &self.transform.is_some())
            .finish()
    }
}

/// Parquet key-value metadata naming the transform version of a file.
pub const TRANSFORM_VERSION_KEY: &str = "hubflow.transform_version";

/// One input record (the raw format's record, borrowed).
#[derive(Debug, Clone, Copy)]
pub struct CurateInput<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub partition: u32,
    pub sequence_number: i64,
    pub offset: &'a str,
    pub enqueued_time_ms: i64,
    /// When the fetcher got the record (ms since the epoch), for freshness.
    pub fetched_time_ms: i64,
    pub payload: &'a [u8],
}

impl<'a> CurateInput<'a> {
    /// The records of a decoded raw blob, borrowed, in order.
    pub fn from_raw(batch: &'a crate::formats::raw::RawBatch) -> Vec<CurateInput<'a>> {
        batch
            .records
            .iter()
            .map(|r| CurateInput {
                id: &r.id,
                source: &r.source,
                partition: batch.partition,
                sequence_number: r.sequence_number,
                offset: &r.offset,
                enqueued_time_ms: r.enqueued_time_ms,
                fetched_time_ms: r.fetched_time_ms,
                payload: &r.payload,
            })
            .collect()
    }
}

impl<'a> CurateInput<'a> {
    /// The records of a raw blob read in place ([`crate::formats::raw::decode_into`]),
    /// borrowed, in order.
    pub fn from_archived(batch: &'a crate::formats::raw::ArchivedRawBatch) -> Vec<CurateInput<'a>> {
        let partition = batch.partition.to_native();
        batch
            .records
            .iter()
            .map(|r| CurateInput {
                id: r.id.as_str(),
                source: r.source.as_str(),
                partition,
                sequence_number: r.sequence_number.to_native(),
                offset: r.offset.as_str(),
                enqueued_time_ms: r.enqueued_time_ms.to_native(),
                fetched_time_ms: r.fetched_time_ms.to_native(),
                payload: r.payload.as_slice(),
            })
            .collect()
    }
}

/// The payloads of the records `output` rejected, by id (for their dead
/// letters).
pub fn rejected_payloads(
    inputs: &[CurateInput<'_>],
    output: &CuratedOutput,
) -> BTreeMap<String, Bytes> {
    let rejected: std::collections::BTreeSet<&str> =
        output.rejected.iter().map(|r| r.id.as_str()).collect();
    inputs
        .iter()
        .filter(|i| rejected.contains(i.id))
        .map(|i| (i.id.to_string(), Bytes::copy_from_slice(i.payload)))
        .collect()
}

/// How to write the Parquet files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurateOptions {
    /// zstd level (1..=22).
    pub zstd_level: i32,
    /// Maximum rows per Parquet row group (> 0).
    pub max_row_group_rows: usize,
}

impl Default for CurateOptions {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            max_row_group_rows: 1024 * 1024,
        }
    }
}

/// The result of curating one batch.
#[derive(Debug, Clone, Default)]
pub struct CuratedOutput {
    /// One file per (source, hour), sorted by path.
    pub files: Vec<CuratedFile>,
    /// The merged schema (data columns, then metadata columns) of every source
    /// present in the batch; the files of a source all use it.
    pub schemas: BTreeMap<String, SchemaRef>,
    /// Type widenings and field renames, in the order they were found.
    pub conflicts: Vec<SchemaConflict>,
    /// Records that could not be curated, in input order.
    pub rejected: Vec<Rejected>,
    /// With a transform: the schema of the files it produced, per source.
    pub output_schemas: BTreeMap<String, SchemaRef>,
}

/// One Parquet file, ready to put in the curated container.
#[derive(Clone, PartialEq, Eq)]
pub struct CuratedFile {
    pub source: String,
    /// `<source>/date=YYYY-MM-DD/hour=HH/<stem>.parquet`
    pub path: String,
    pub rows: usize,
    pub data: Bytes,
}

impl fmt::Debug for CuratedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CuratedFile")
            .field("source", &self.source)
            .field("path", &self.path)
            .field("rows", &self.rows)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// What kind of schema change a [`SchemaConflict`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// The field's type was widened (`from` and `to` are type names).
    Widened,
    /// A payload field collided with a metadata column and was renamed
    /// (`from` and `to` are field names).
    Renamed,
}

/// A schema change that was not a plain addition of a field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaConflict {
    /// The source, or empty when reported by [`merge_schemas`].
    pub source: String,
    /// Dotted path of the field; `[]` marks a list's elements (`tags[]`).
    pub field: String,
    pub from: String,
    pub to: String,
    pub kind: ConflictKind,
}

/// A record that could not be curated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: String,
    pub source: String,
    pub reason: String,
}

/// The metadata columns appended to every curated schema, in order.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(COL_RECORD_ID, DataType::Utf8, true),
        Field::new(COL_HUB_PARTITION, DataType::Int32, true),
        Field::new(COL_HUB_OFFSET, DataType::Utf8, true),
        Field::new(COL_HUB_SEQUENCE, DataType::Int64, true),
        Field::new(
            COL_INGESTED_AT,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new(COL_RAW_BLOB, DataType::Utf8, true),
        Field::new(COL_TRANSFORM_VERSION, DataType::Utf8, true),
    ]
}

fn is_metadata_name(name: &str) -> bool {
    METADATA_COLUMNS.contains(&name)
}

/// Names a payload field cannot keep: metadata and partition columns.
fn is_reserved_name(name: &str) -> bool {
    is_metadata_name(name) || PARTITION_COLUMNS.contains(&name)
}

/// Checks that `source` can name a directory of the curated container: one
/// non-empty path segment of at most 255 bytes, not hidden, without `/`, `\`
/// or control characters.
pub fn validate_source_name(source: &str) -> Result<(), &'static str> {
    segment_problem(source, 255).map_or(Ok(()), |reason| {
        Err(match reason {
            SegmentProblem::Length => "source name length must be 1..=255 bytes",
            SegmentProblem::Hidden => "source name must not start with '.'",
            SegmentProblem::Separator => {
                "source name must not contain '/', '\\' or control characters"
            }
        })
    })
}

fn validate_stem(stem: &str) -> Result<(), CurateError> {
    segment_problem(stem, 512).map_or(Ok(()), |reason| {
        Err(CurateError::InvalidStem {
            stem: stem.to_string(),
            reason: match reason {
                SegmentProblem::Length => "length must be 1..=512 bytes",
                SegmentProblem::Hidden => "must not start with '.'",
                SegmentProblem::Separator => "must not contain '/', '\\' or control characters",
            },
        })
    })
}

/// Why a text cannot be one segment of a blob path.
enum SegmentProblem {
    Length,
    Hidden,
    Separator,
}

fn segment_problem(text: &str, max_len: usize) -> Option<SegmentProblem> {
    if text.is_empty() || text.len() > max_len {
        Some(SegmentProblem::Length)
    } else if text.starts_with('.') {
        Some(SegmentProblem::Hidden)
    } else if text
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        Some(SegmentProblem::Separator)
    } else {
        None
    }
}

/// A record that passed validation: its payload's root on the batch tape,
/// or, for a record that repeats a key, its parsed object.
struct Accepted<'a> {
    input: &'a CurateInput<'a>,
    root: u32,
    value: Option<Map<String, Value>>,
}

fn renamed(name: &str) -> String {
    format!("{name}{RENAMED_SUFFIX}")
}

fn apply_transform(
    t: &dyn BatchTransform,
    source: &str,
    batch: RecordBatch,
) -> Result<RecordBatch, CurateError> {
    let error = |message: String| CurateError::Transform {
        version: t.version().to_string(),
        source_name: source.to_string(),
        message,
    };
    let out = t.apply(source, batch).map_err(error)?;
    let out = stamp_version(out, t.version()).map_err(|e| error(e.to_string()))?;
    for column in METADATA_COLUMNS {
        if out.schema().column_with_name(column).is_none() {
            return Err(error(format!("the output lacks metadata column {column}")));
        }
    }
    Ok(out)
}

/// `batch` with [`COL_TRANSFORM_VERSION`] set to `version` on every row,
/// replacing a column of that name the transform produced.
fn stamp_version(batch: RecordBatch, version: &str) -> Result<RecordBatch, ArrowError> {
    let column: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        version,
        batch.num_rows(),
    )));
    let schema = batch.schema();
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    let field = Arc::new(Field::new(COL_TRANSFORM_VERSION, DataType::Utf8, true));
    match schema.index_of(COL_TRANSFORM_VERSION) {
        Ok(i) => {
            fields[i] = field;
            columns[i] = column;
        }
        Err(_) => {
            fields.push(field);
            columns.push(column);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Checks what the metadata columns need of a record.
fn check_metadata(input: &CurateInput<'_>) -> Result<(), String> {
    validate_source_name(input.source).map_err(str::to_string)?;
    if !(0..=MAX_ENQUEUED_MS).contains(&input.enqueued_time_ms) {
        return Err(format!(
            "enqueued time {} ms is outside 1970..=9999",
            input.enqueued_time_ms
        ));
    }
    if i32::try_from(input.partition).is_err() {
        return Err(format!(
            "partition {} does not fit in int32",
            input.partition
        ));
    }
    Ok(())
}

/// Validates the records and parses their payloads onto `tape`, returning
/// the accepted ones grouped by source.
fn accept<'a>(
    records: &'a [CurateInput<'a>],
    tape: &mut Tape<'a>,
    rejected: &mut Vec<Rejected>,
    read: Read,
) -> BTreeMap<&'a str, Vec<Accepted<'a>>> {
    let mut by_source: BTreeMap<&str, Vec<Accepted<'_>>> = BTreeMap::new();
    for input in records {
        let checked = check_metadata(input).and_then(|()| match read {
            Read::Tape => {
                let root = tape
                    .push(input.payload)
                    .map_err(|e| format!("payload is not valid json: {}", e.0))?;
                match tape.get(root) {
                    Elem::Object { .. } => Ok((root, None)),
                    other => Err(format!(
                        "payload is a json {}, not an object",
                        elem_kind(&other)
                    )),
                }
            }
            #[cfg(test)]
            Read::Values => match serde_json::from_slice::<Value>(input.payload) {
                Ok(Value::Object(object)) => Ok((0, Some(object))),
                Ok(other) => Err(format!(
                    "payload is a json {}, not an object",
                    match other {
                        Value::Null => "null",
                        Value::Bool(_) => "boolean",
                        Value::Number(_) => "number",
                        Value::String(_) => "string",
                        Value::Array(_) => "array",
                        Value::Object(_) => "object",
                    }
                )),
                Err(error) => Err(format!("payload is not valid json: {error}")),
            },
        });
        match checked {
            Ok((root, value)) => {
                by_source
                    .entry(input.source)
                    .or_default()
                    .push(Accepted { input, root, value })
            }
            Err(reason) => rejected.push(Rejected {
                id: input.id.to_string(),
                source: input.source.to_string(),
                reason,
            }),
        }
    }
    by_source
}

fn elem_kind(e: &Elem<'_>) -> &'static str {
    match e {
        Elem::Null => "null",
        Elem::Bool(_) => "boolean",
        Elem::U64(_) | Elem::I64(_) | Elem::F64(_) => "number",
        Elem::Str(_) | Elem::Key(_) => "string",
        Elem::Array { .. } => "array",
        Elem::Object { .. } => "object",
    }
}

/// Infers a source's schema; records that repeat a key are read from their
/// parsed object instead of the tape (the first one found makes every such
/// record of the source switch, then inference starts over).
fn infer_with_fallback(
    source: &str,
    records: &mut [Accepted<'_>],
    tape: &Tape<'_>,
    known: Option<&Schema>,
    conflicts: &mut Vec<SchemaConflict>,
) -> (
    arrow::datatypes::Fields,
    std::collections::HashMap<String, String>,
) {
    let before = conflicts.len();
    let mut scanned = false;
    loop {
        match schema::infer_source(source, records, tape, known, conflicts) {
            Ok(inferred) => return inferred,
            Err((position, _)) => {
                conflicts.truncate(before);
                if !scanned {
                    scanned = true;
                    for rec in records.iter_mut() {
                        if repeats_a_key(tape, rec.root, true) {
                            rec.value = object_of(tape, rec.root);
                        }
                    }
                }
                // Whatever the scan decided, this record goes the slow way.
                if let Some(rec) = records.get_mut(position)
                    && rec.value.is_none()
                {
                    rec.value = Some(object_of(tape, rec.root).unwrap_or_default());
                }
            }
        }
    }
}

/// Whether an object of the value at `at` has a key twice (at the top
/// level, a reserved name and its renamed form count as the same key).
fn repeats_a_key(tape: &Tape<'_>, at: u32, top: bool) -> bool {
    match tape.get(at) {
        Elem::Object { .. } => {
            let mut seen = std::collections::HashSet::new();
            for (key, value) in tape.entries(at) {
                let name = if top && is_reserved_name(key) {
                    renamed(key)
                } else {
                    key.to_string()
                };
                if !seen.insert(name) || repeats_a_key(tape, value, false) {
                    return true;
                }
            }
            false
        }
        Elem::Array { .. } => tape.items(at).any(|i| repeats_a_key(tape, i, false)),
        _ => false,
    }
}

fn object_of(tape: &Tape<'_>, root: u32) -> Option<Map<String, Value>> {
    match tape.to_value(root) {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Curates one raw blob's records into Parquet files.
///
/// `raw_blob` is stored in the `_raw_blob` column; `stem` names the files
/// (derive it from the raw inputs, e.g. `RawBlobName::stem`); `known` holds
/// the registry's current schema per source (with or without metadata
/// columns). Records with an invalid payload, source name or enqueued time
/// are returned in `rejected`; the call fails only on bad arguments or an
/// Arrow/Parquet error.
pub fn curate(
    records: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    opts: &CurateOptions,
) -> Result<CuratedOutput, CurateError> {
    curate_with(records, raw_blob, stem, known, opts, None)
}

/// [`curate`], with `transform` applied to every batch before it is
/// written. A batch the transform filters down to no rows writes no file.
/// The identity (`None`) stamps its rows [`IDENTITY_VERSION`].
pub fn curate_with(
    records: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    opts: &CurateOptions,
    transform: Option<&dyn BatchTransform>,
) -> Result<CuratedOutput, CurateError> {
    let how = How {
        version: transform.map_or(IDENTITY_VERSION, |t| t.version()),
        transform,
        read: Read::Tape,
    };
    curate_impl(records, raw_blob, stem, known, opts, how)
}

/// [`curate_with`], with the version label the rows are stamped with
/// (an identity transform may carry its own label, such as the config's).
pub fn curate_versioned(
    records: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    opts: &CurateOptions,
    transform: &CurateTransform,
) -> Result<CuratedOutput, CurateError> {
    let how = How {
        version: &transform.version,
        transform: transform.transform.as_deref(),
        read: Read::Tape,
    };
    curate_impl(records, raw_blob, stem, known, opts, how)
}

/// What shapes a curation: the version label, the transform, and how
/// payloads are read.
#[derive(Clone, Copy)]
struct How<'a> {
    version: &'a str,
    transform: Option<&'a dyn BatchTransform>,
    read: Read,
}

/// How payloads are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Onto the batch's tape (records that repeat a key: as a `Value`).
    Tape,
    /// Every record as a `serde_json::Value`: the reference the tape path is
    /// tested against.
    #[cfg(test)]
    Values,
}

fn curate_impl(
    records: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    opts: &CurateOptions,
    how: How<'_>,
) -> Result<CuratedOutput, CurateError> {
    let How {
        version,
        transform,
        read,
    } = how;
    let started = Instant::now();
    validate_stem(stem)?;
    let props = layout::with_version_metadata(layout::writer_properties(opts)?, version);
    let mut out = CuratedOutput::default();

    // An upper bound of the elements (a JSON element takes at least two
    // bytes, `1,`, except a scalar root): the tape never grows by copying,
    // and the capacity it does not use is never touched, so costs no memory.
    let payload_bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    let mut tape = Tape::with_capacity(payload_bytes / 2 + records.len());
    let mut by_source = accept(records, &mut tape, &mut out.rejected, read);
    for (source, accepted) in by_source.iter_mut() {
        let (data, renames) = infer_with_fallback(
            source,
            accepted,
            &tape,
            known.get(*source).map(AsRef::as_ref),
            &mut out.conflicts,
        );
        let mut fields: Vec<Field> = data.iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(metadata_fields());
        let schema = Arc::new(Schema::new(fields));

        let mut by_hour: BTreeMap<i64, Vec<&Accepted<'_>>> = BTreeMap::new();
        for rec in accepted.iter() {
            by_hour
                .entry(rec.input.enqueued_time_ms.div_euclid(HOUR_MS))
                .or_default()
                .push(rec);
        }
        for (hour, group) in by_hour {
            let mut batch =
                columns::build_batch(&schema, &data, &renames, &tape, &group, raw_blob, version)?;
            if let Some(t) = transform {
                batch = apply_transform(t, source, batch)?;
                out.output_schemas
                    .insert(source.to_string(), batch.schema());
                if batch.num_rows() == 0 {
                    continue;
                }
            }
            let rows = batch.num_rows();
            let data = layout::write_parquet(&batch, &props)?;
            out.files.push(CuratedFile {
                source: source.to_string(),
                path: layout::hour_path(source, hour, stem),
                rows,
                data,
            });
        }
        out.schemas.insert(source.to_string(), schema);
    }

    let accepted: usize = by_source.values().map(Vec::len).sum();
    metrics::counter!("hubflow_curate_records_total").increment(accepted as u64);
    metrics::counter!("hubflow_curate_rejected_records_total").increment(out.rejected.len() as u64);
    metrics::counter!("hubflow_curate_schema_conflicts_total")
        .increment(out.conflicts.len() as u64);
    metrics::histogram!("hubflow_curate_duration_seconds").record(started.elapsed().as_secs_f64());
    if !out.rejected.is_empty() {
        warn!(
            raw_blob,
            rejected = out.rejected.len(),
            first_reason = %out.rejected[0].reason,
            "curate rejected records"
        );
    }
    Ok(out)
}
