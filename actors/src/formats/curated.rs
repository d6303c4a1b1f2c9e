//! Curated format: JSON records → Arrow → zstd Parquet, Hive-partitioned.
//!
//! [`curate`] takes the records of one raw blob and produces one Parquet file
//! per (source, hour of ingestion), at
//! `<source>/date=YYYY-MM-DD/hour=HH/<stem>.parquet`. The name depends only on
//! the inputs, so rewriting a batch after a crash replaces the file with the
//! same bytes.
//!
//! Schemas are inferred from the JSON payloads and evolved by union with the
//! schema registry's current schema for the source (`known`):
//!
//! - JSON types map to `Boolean`, `Int64`, `Float64`, `Utf8`, `Struct` (kept
//!   nested), `List` (of the merged element type); null-only fields are
//!   `Null`. Every field is nullable.
//! - Widening: `Int64` + `Float64` → `Float64`; any other mix of kinds (bool
//!   with number, scalar with string, scalar with object or array, object
//!   with array) → `Utf8` holding the value as text (JSON text for numbers,
//!   objects and arrays). Structs are unioned field by field, list element
//!   types are merged. Each type change is reported as a [`SchemaConflict`].
//! - Column order: the known fields in their order, then new fields in order
//!   of first appearance. Metadata columns ([`metadata_fields`]) come last;
//!   a payload field whose name collides with one, or with a partition key
//!   ([`PARTITION_COLUMNS`]), is renamed with the [`RENAMED_SUFFIX`] and
//!   reported.
//!
//! Payloads are parsed with `serde_json` (on several threads for large
//! batches) and arrays built row by row with Arrow builders (the widening
//! rules, such as objects stored as JSON text, are beyond what `arrow_json`'s
//! decoder does). [`schema_to_json`] / [`schema_from_json`]
//! store the per-source schema in the registry.
//!
//! A [`BatchTransform`] (a versioned SQL spec, for example) may reshape each
//! batch between inference and Parquet ([`curate_with`]): add, drop, rename
//! or cast data columns and filter rows. The metadata columns must survive
//! it, so lineage and the exactly-once checks still hold.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBufferBuilder, BooleanBuilder, Float64Builder, Int32Array,
    Int64Array, Int64Builder, ListArray, NullArray, RecordBatch, StringArray, StringBuilder,
    StructArray, TimestampMillisecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde_json::{Map, Value, json};
use tracing::{debug, warn};

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
/// Names of the metadata columns, in the order they are appended.
pub const METADATA_COLUMNS: [&str; 6] = [
    COL_RECORD_ID,
    COL_HUB_PARTITION,
    COL_HUB_OFFSET,
    COL_HUB_SEQUENCE,
    COL_INGESTED_AT,
    COL_RAW_BLOB,
];
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
                payload: &r.payload,
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
    if source.is_empty() || source.len() > 255 {
        return Err("source name length must be 1..=255 bytes");
    }
    if source.starts_with('.') {
        return Err("source name must not start with '.'");
    }
    if source
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err("source name must not contain '/', '\\' or control characters");
    }
    Ok(())
}

fn validate_stem(stem: &str) -> Result<(), CurateError> {
    let invalid = |reason| {
        Err(CurateError::InvalidStem {
            stem: stem.to_string(),
            reason,
        })
    };
    if stem.is_empty() || stem.len() > 512 {
        return invalid("length must be 1..=512 bytes");
    }
    if stem.starts_with('.') {
        return invalid("must not start with '.'");
    }
    if stem
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return invalid("must not contain '/', '\\' or control characters");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Type inference lattice
// ---------------------------------------------------------------------------

/// The inferred type of a field, while a batch is being scanned.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<Kind>),
    Struct(StructKind),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct StructKind {
    fields: Vec<(String, Kind)>,
    index: HashMap<String, usize>,
}

impl StructKind {
    /// The slot of `name`, trying position `pos` first (records of a source
    /// mostly share a key order, so this usually avoids hashing).
    fn slot_at(&mut self, pos: usize, name: &str) -> &mut Kind {
        if self.fields.get(pos).is_some_and(|(n, _)| n == name) {
            return &mut self.fields[pos].1;
        }
        self.slot(name)
    }

    fn slot(&mut self, name: &str) -> &mut Kind {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                let i = self.fields.len();
                self.fields.push((name.to_string(), Kind::Null));
                self.index.insert(name.to_string(), i);
                i
            }
        };
        &mut self.fields[i].1
    }

    fn from_fields(fields: &Fields, parent: Option<&Path<'_>>, ctx: &mut Ctx<'_>) -> Self {
        let mut s = StructKind::default();
        for f in fields {
            let path = Path {
                parent,
                name: f.name(),
            };
            let kind = Kind::from_data_type(f.data_type(), &path, ctx);
            // A duplicate name (not produced by Hubflow) keeps its first type.
            if !s.index.contains_key(f.name()) {
                s.index.insert(f.name().clone(), s.fields.len());
                s.fields.push((f.name().clone(), kind));
            }
        }
        s
    }

    fn merge(&mut self, other: &StructKind, parent: Option<&Path<'_>>, ctx: &mut Ctx<'_>) {
        for (name, kind) in &other.fields {
            let path = Path { parent, name };
            self.slot(name).merge(kind, &path, ctx);
        }
    }

    fn to_fields(&self) -> Fields {
        self.fields
            .iter()
            .map(|(name, kind)| Field::new(name, kind.to_data_type(), true))
            .collect()
    }
}

/// A field path, built on the stack and rendered only when a conflict is reported.
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'a str,
}

impl Path<'_> {
    fn render(&self) -> String {
        let mut segments = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            segments.push(p.name);
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segments.iter().rev() {
            if *seg != LIST_ITEM && !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }
}

const LIST_ITEM: &str = "[]";

struct Ctx<'c> {
    source: &'c str,
    conflicts: &'c mut Vec<SchemaConflict>,
}

impl Ctx<'_> {
    fn report(&mut self, path: &Path<'_>, from: String, to: String, kind: ConflictKind) {
        let conflict = SchemaConflict {
            source: self.source.to_string(),
            field: path.render(),
            from,
            to,
            kind,
        };
        debug!(
            source = %conflict.source,
            field = %conflict.field,
            from = %conflict.from,
            to = %conflict.to,
            kind = ?conflict.kind,
            "curated schema changed"
        );
        self.conflicts.push(conflict);
    }
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Null => "Null",
            Kind::Bool => "Boolean",
            Kind::Int => "Int64",
            Kind::Float => "Float64",
            Kind::Str => "Utf8",
            Kind::List(_) => "List",
            Kind::Struct(_) => "Struct",
        }
    }

    fn widen(&mut self, to: Kind, path: &Path<'_>, ctx: &mut Ctx<'_>) {
        ctx.report(
            path,
            self.name().to_string(),
            to.name().to_string(),
            ConflictKind::Widened,
        );
        *self = to;
    }

    /// Merges a scalar kind (`Bool`, `Int`, `Float`, `Str`) into `self`.
    fn absorb_scalar(&mut self, new: Kind, path: &Path<'_>, ctx: &mut Ctx<'_>) {
        match (&*self, &new) {
            (Kind::Null, _) => *self = new,
            (Kind::Str, _) | (Kind::Float, Kind::Int) => {}
            (a, b) if a == b => {}
            (Kind::Int, Kind::Float) => self.widen(Kind::Float, path, ctx),
            _ => self.widen(Kind::Str, path, ctx),
        }
    }

    /// Merges the type of one JSON value into `self`.
    fn absorb(&mut self, value: &Value, path: &Path<'_>, ctx: &mut Ctx<'_>) {
        match value {
            Value::Null => {}
            Value::Bool(_) => self.absorb_scalar(Kind::Bool, path, ctx),
            Value::Number(n) => {
                let kind = if n.is_i64() { Kind::Int } else { Kind::Float };
                self.absorb_scalar(kind, path, ctx)
            }
            Value::String(_) => self.absorb_scalar(Kind::Str, path, ctx),
            Value::Array(items) => {
                match self {
                    Kind::Null => *self = Kind::List(Box::new(Kind::Null)),
                    Kind::List(_) => {}
                    Kind::Str => return,
                    _ => return self.widen(Kind::Str, path, ctx),
                }
                if let Kind::List(elem) = self {
                    let item_path = Path {
                        parent: Some(path),
                        name: LIST_ITEM,
                    };
                    for item in items {
                        elem.absorb(item, &item_path, ctx);
                    }
                }
            }
            Value::Object(map) => {
                match self {
                    Kind::Null => *self = Kind::Struct(StructKind::default()),
                    Kind::Struct(_) => {}
                    Kind::Str => return,
                    _ => return self.widen(Kind::Str, path, ctx),
                }
                if let Kind::Struct(s) = self {
                    for (pos, (key, v)) in map.iter().enumerate() {
                        let child = Path {
                            parent: Some(path),
                            name: key,
                        };
                        s.slot_at(pos, key).absorb(v, &child, ctx);
                    }
                }
            }
        }
    }

    /// Merges another inferred kind into `self` (schema ∪ schema).
    fn merge(&mut self, other: &Kind, path: &Path<'_>, ctx: &mut Ctx<'_>) {
        match other {
            Kind::Null => {}
            Kind::Bool | Kind::Int | Kind::Float | Kind::Str => {
                self.absorb_scalar(other.clone(), path, ctx)
            }
            Kind::List(other_elem) => match self {
                Kind::Null => *self = other.clone(),
                Kind::List(elem) => {
                    let item_path = Path {
                        parent: Some(path),
                        name: LIST_ITEM,
                    };
                    elem.merge(other_elem, &item_path, ctx);
                }
                Kind::Str => {}
                _ => self.widen(Kind::Str, path, ctx),
            },
            Kind::Struct(other_struct) => match self {
                Kind::Null => *self = other.clone(),
                Kind::Struct(s) => s.merge(other_struct, Some(path), ctx),
                Kind::Str => {}
                _ => self.widen(Kind::Str, path, ctx),
            },
        }
    }

    /// Maps a stored Arrow type onto the lattice. Types Hubflow does not
    /// produce are mapped to the nearest lattice type and reported.
    fn from_data_type(dt: &DataType, path: &Path<'_>, ctx: &mut Ctx<'_>) -> Kind {
        let kind = match dt {
            DataType::Null => return Kind::Null,
            DataType::Boolean => return Kind::Bool,
            DataType::Int64 => return Kind::Int,
            DataType::Float64 => return Kind::Float,
            DataType::Utf8 => return Kind::Str,
            DataType::List(item) => {
                let item_path = Path {
                    parent: Some(path),
                    name: LIST_ITEM,
                };
                return Kind::List(Box::new(Kind::from_data_type(
                    item.data_type(),
                    &item_path,
                    ctx,
                )));
            }
            DataType::Struct(fields) => {
                return Kind::Struct(StructKind::from_fields(fields, Some(path), ctx));
            }
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Kind::Int,
            DataType::Float16 | DataType::Float32 => Kind::Float,
            DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
                let item_path = Path {
                    parent: Some(path),
                    name: LIST_ITEM,
                };
                Kind::List(Box::new(Kind::from_data_type(
                    item.data_type(),
                    &item_path,
                    ctx,
                )))
            }
            _ => Kind::Str,
        };
        ctx.report(
            path,
            dt.to_string(),
            kind.name().to_string(),
            ConflictKind::Widened,
        );
        kind
    }

    fn to_data_type(&self) -> DataType {
        match self {
            Kind::Null => DataType::Null,
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Str => DataType::Utf8,
            Kind::List(elem) => {
                DataType::List(Arc::new(Field::new_list_field(elem.to_data_type(), true)))
            }
            // Parquet cannot store a struct without fields: `{}` is stored as null.
            Kind::Struct(s) if s.fields.is_empty() => DataType::Null,
            Kind::Struct(s) => DataType::Struct(s.to_fields()),
        }
    }
}

/// Splits a schema into its data fields (neither metadata nor partition
/// columns) and whether it held metadata columns.
fn data_fields(schema: &Schema) -> (Fields, bool) {
    let mut had_metadata = false;
    let fields = schema
        .fields()
        .iter()
        .filter(|f| {
            had_metadata |= is_metadata_name(f.name());
            !is_reserved_name(f.name())
        })
        .cloned()
        .collect();
    (fields, had_metadata)
}

/// Unions two curated schemas with the widening rules of this module: `a`'s
/// fields first, then `b`'s new ones. Metadata columns are kept out of the
/// merge and appended (in their canonical form) if either side has any;
/// partition columns are dropped (they come from the paths).
/// Conflicts carry an empty `source`.
pub fn merge_schemas(a: &Schema, b: &Schema) -> (Schema, Vec<SchemaConflict>) {
    let mut conflicts = Vec::new();
    let mut ctx = Ctx {
        source: "",
        conflicts: &mut conflicts,
    };
    let (a_fields, a_meta) = data_fields(a);
    let (b_fields, b_meta) = data_fields(b);
    let mut merged = StructKind::from_fields(&a_fields, None, &mut ctx);
    let other = StructKind::from_fields(&b_fields, None, &mut ctx);
    merged.merge(&other, None, &mut ctx);
    let mut fields: Vec<Field> = merged
        .to_fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if a_meta || b_meta {
        fields.extend(metadata_fields());
    }
    (Schema::new(fields), conflicts)
}

// ---------------------------------------------------------------------------
// JSON values → Arrow arrays
// ---------------------------------------------------------------------------

/// A column being built, row by row. One pass over the records touches each
/// parsed value once; a pass per column over heap-scattered maps is bound by
/// cache misses. Values are converted to the column's type; a value that
/// cannot be (which the inference never produces) is stored as null.
enum Col {
    Null(usize),
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        validity: BooleanBufferBuilder,
        item: Box<Col>,
    },
    Struct(StructCol),
}

/// A struct column; also the top level of a record batch.
struct StructCol {
    fields: Fields,
    /// The payload key each child reads (differs from the field name for
    /// renamed top-level fields).
    keys: Vec<String>,
    /// Payload key → child. A renamed field is also reachable by its new name.
    index: HashMap<String, usize>,
    children: Vec<Col>,
    validity: BooleanBufferBuilder,
    len: usize,
}

fn non_null(v: &Value) -> Option<&Value> {
    (!v.is_null()).then_some(v)
}

impl Col {
    fn new(dt: &DataType, capacity: usize) -> Result<Col, CurateError> {
        Ok(match dt {
            DataType::Null => Col::Null(0),
            DataType::Boolean => Col::Bool(BooleanBuilder::with_capacity(capacity)),
            DataType::Int64 => Col::Int(Int64Builder::with_capacity(capacity)),
            DataType::Float64 => Col::Float(Float64Builder::with_capacity(capacity)),
            DataType::Utf8 => Col::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
            DataType::List(field) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Col::List {
                    field: field.clone(),
                    offsets,
                    validity: BooleanBufferBuilder::new(capacity),
                    item: Box::new(Col::new(field.data_type(), capacity)?),
                }
            }
            DataType::Struct(fields) => {
                Col::Struct(StructCol::new(fields.clone(), &HashMap::new(), capacity)?)
            }
            other => {
                return Err(ArrowError::NotYetImplemented(format!(
                    "curated columns of type {other} are not supported"
                ))
                .into());
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            Col::Null(n) => *n,
            Col::Bool(b) => b.len(),
            Col::Int(b) => b.len(),
            Col::Float(b) => b.len(),
            Col::Str(b) => b.len(),
            Col::List { validity, .. } => validity.len(),
            Col::Struct(s) => s.len,
        }
    }

    fn append(&mut self, v: Option<&Value>) -> Result<(), CurateError> {
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(b) => b.append_option(v.and_then(Value::as_bool)),
            Col::Int(b) => b.append_option(v.and_then(Value::as_i64)),
            Col::Float(b) => b.append_option(v.and_then(Value::as_f64)),
            Col::Str(b) => match v {
                None | Some(Value::Null) => b.append_null(),
                Some(Value::String(s)) => b.append_value(s),
                Some(Value::Bool(x)) => b.append_value(if *x { "true" } else { "false" }),
                // `Display` of numbers, objects and arrays is compact JSON.
                Some(other) => {
                    write!(b, "{other}").map_err(|_| {
                        ArrowError::ComputeError("formatting a json value failed".into())
                    })?;
                    b.append_value("");
                }
            },
            Col::List {
                offsets,
                validity,
                item,
                ..
            } => {
                match v {
                    Some(Value::Array(items)) => {
                        for x in items {
                            item.append(non_null(x))?;
                        }
                        validity.append(true);
                    }
                    _ => validity.append(false),
                }
                let end = i32::try_from(item.len()).map_err(|_| {
                    CurateError::TooLarge("more than 2^31 list elements in one column")
                })?;
                offsets.push(end);
            }
            Col::Struct(s) => s.append(v.and_then(Value::as_object))?,
        }
        Ok(())
    }

    fn finish(self) -> Result<ArrayRef, CurateError> {
        Ok(match self {
            Col::Null(n) => Arc::new(NullArray::new(n)),
            Col::Bool(mut b) => Arc::new(b.finish()),
            Col::Int(mut b) => Arc::new(b.finish()),
            Col::Float(mut b) => Arc::new(b.finish()),
            Col::Str(mut b) => Arc::new(b.finish()),
            Col::List {
                field,
                offsets,
                mut validity,
                item,
            } => Arc::new(ListArray::try_new(
                field,
                OffsetBuffer::new(offsets.into()),
                item.finish()?,
                nulls(&mut validity),
            )?),
            Col::Struct(s) => {
                let (fields, children, nulls) = s.finish_parts()?;
                Arc::new(StructArray::try_new(fields, children, nulls)?)
            }
        })
    }
}

fn nulls(validity: &mut BooleanBufferBuilder) -> Option<NullBuffer> {
    let nulls = NullBuffer::new(validity.finish());
    (nulls.null_count() > 0).then_some(nulls)
}

impl StructCol {
    /// `renames` maps a field name to the payload key it reads.
    fn new(
        fields: Fields,
        renames: &HashMap<String, String>,
        capacity: usize,
    ) -> Result<Self, CurateError> {
        let mut keys = Vec::with_capacity(fields.len());
        let mut index = HashMap::with_capacity(fields.len());
        let mut children = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let key = renames.get(f.name()).unwrap_or(f.name());
            index.insert(key.clone(), i);
            keys.push(key.clone());
            children.push(Col::new(f.data_type(), capacity)?);
        }
        for (i, f) in fields.iter().enumerate() {
            index.entry(f.name().clone()).or_insert(i);
        }
        Ok(StructCol {
            fields,
            keys,
            index,
            children,
            validity: BooleanBufferBuilder::new(capacity),
            len: 0,
        })
    }

    fn append(&mut self, object: Option<&Map<String, Value>>) -> Result<(), CurateError> {
        let row = self.len;
        if let Some(map) = object {
            for (pos, (key, value)) in map.iter().enumerate() {
                // Records of one source mostly share a key order: try the
                // same position first, hash only when it misses.
                let i = if self.keys.get(pos) == Some(key) {
                    pos
                } else {
                    match self.index.get(key.as_str()) {
                        Some(&i) => i,
                        None => continue,
                    }
                };
                let child = &mut self.children[i];
                // First key wins when a renamed field's two spellings both occur.
                if child.len() == row {
                    child.append(non_null(value))?;
                }
            }
        }
        for child in &mut self.children {
            if child.len() == row {
                child.append(None)?;
            }
        }
        self.validity.append(object.is_some());
        self.len += 1;
        Ok(())
    }

    fn finish_parts(mut self) -> Result<(Fields, Vec<ArrayRef>, Option<NullBuffer>), CurateError> {
        let nulls = nulls(&mut self.validity);
        let children = self
            .children
            .into_iter()
            .map(Col::finish)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.fields, children, nulls))
    }
}

/// A parsed, accepted record.
struct Accepted<'a> {
    input: &'a CurateInput<'a>,
    object: Map<String, Value>,
}

fn renamed(name: &str) -> String {
    format!("{name}{RENAMED_SUFFIX}")
}

fn hour_path(source: &str, hour_bucket: i64, stem: &str) -> String {
    // The bucket comes from a validated enqueued time, so it is in range.
    let start = DateTime::from_timestamp_millis(hour_bucket * HOUR_MS).unwrap_or_default();
    format!(
        "{source}/date={:04}-{:02}-{:02}/hour={:02}/{stem}.parquet",
        start.year(),
        start.month(),
        start.day(),
        start.hour()
    )
}

fn writer_properties(opts: &CurateOptions) -> Result<WriterProperties, CurateError> {
    let level = ZstdLevel::try_new(opts.zstd_level)
        .map_err(|e| CurateError::InvalidOptions(format!("zstd_level: {e}")))?;
    if opts.max_row_group_rows == 0 {
        return Err(CurateError::InvalidOptions(
            "max_row_group_rows must be > 0".into(),
        ));
    }
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(opts.max_row_group_rows))
        .build())
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
    for column in METADATA_COLUMNS {
        if out.schema().column_with_name(column).is_none() {
            return Err(error(format!("the output lacks metadata column {column}")));
        }
    }
    Ok(out)
}

fn with_version_metadata(props: WriterProperties, version: &str) -> WriterProperties {
    use parquet::file::metadata::KeyValue;
    props
        .into_builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            TRANSFORM_VERSION_KEY.to_string(),
            version.to_string(),
        )]))
        .build()
}

fn write_parquet(batch: &RecordBatch, props: &WriterProperties) -> Result<Bytes, CurateError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// Batches at least this large are parsed on several threads.
const PARALLEL_PARSE_MIN: usize = 4096;

/// Validates one record and parses its payload.
fn check(input: &CurateInput<'_>) -> Result<Map<String, Value>, String> {
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
    match serde_json::from_slice::<Value>(input.payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "payload is a json {}, not an object",
            json_kind(&other)
        )),
        Err(error) => Err(format!("payload is not valid json: {error}")),
    }
}

/// [`check`]s every record, in order; large batches on scoped threads (JSON
/// parsing is most of the cost of curating).
fn check_all(records: &[CurateInput<'_>]) -> Vec<Result<Map<String, Value>, String>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads <= 1 || records.len() < PARALLEL_PARSE_MIN {
        return records.iter().map(check).collect();
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Parses and validates the records, returning the accepted ones grouped by source.
fn accept<'a>(
    records: &'a [CurateInput<'a>],
    rejected: &mut Vec<Rejected>,
) -> BTreeMap<&'a str, Vec<Accepted<'a>>> {
    let mut by_source: BTreeMap<&str, Vec<Accepted<'_>>> = BTreeMap::new();
    for (input, checked) in records.iter().zip(check_all(records)) {
        match checked {
            Ok(object) => by_source
                .entry(input.source)
                .or_default()
                .push(Accepted { input, object }),
            Err(reason) => rejected.push(Rejected {
                id: input.id.to_string(),
                source: input.source.to_string(),
                reason,
            }),
        }
    }
    by_source
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Infers the merged data schema of one source's records. Returns the data
/// fields and the renames (column name → payload key).
fn infer_source(
    source: &str,
    records: &[Accepted<'_>],
    known: Option<&SchemaRef>,
    conflicts: &mut Vec<SchemaConflict>,
) -> (Fields, HashMap<String, String>) {
    let mut ctx = Ctx { source, conflicts };
    let mut root = match known {
        Some(schema) => StructKind::from_fields(&data_fields(schema).0, None, &mut ctx),
        None => StructKind::default(),
    };
    let mut renames: HashMap<String, String> = HashMap::new();
    for rec in records {
        for (pos, (key, value)) in rec.object.iter().enumerate() {
            if !is_reserved_name(key) {
                let path = Path {
                    parent: None,
                    name: key,
                };
                root.slot_at(pos, key).absorb(value, &path, &mut ctx);
                continue;
            }
            let column = renamed(key);
            let path = Path {
                parent: None,
                name: &column,
            };
            if !renames.contains_key(&column) {
                let original = Path {
                    parent: None,
                    name: key,
                };
                ctx.report(
                    &original,
                    key.clone(),
                    column.clone(),
                    ConflictKind::Renamed,
                );
                renames.insert(column.clone(), key.clone());
            }
            root.slot(&column).absorb(value, &path, &mut ctx);
        }
    }
    (root.to_fields(), renames)
}

/// Builds the record batch of one (source, hour) group.
fn build_batch(
    schema: &SchemaRef,
    data: &Fields,
    renames: &HashMap<String, String>,
    records: &[&Accepted<'_>],
    raw_blob: &str,
) -> Result<RecordBatch, CurateError> {
    let n = records.len();
    let mut top = StructCol::new(data.clone(), renames, n)?;
    for r in records {
        top.append(Some(&r.object))?;
    }
    let (_, mut columns, _) = top.finish_parts()?;
    columns.reserve(METADATA_COLUMNS.len());
    columns.push(Arc::new(StringArray::from_iter_values(
        records.iter().map(|r| r.input.id),
    )));
    columns.push(Arc::new(Int32Array::from_iter_values(
        // Checked by `accept`.
        records
            .iter()
            .map(|r| i32::try_from(r.input.partition).unwrap_or(i32::MAX)),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        records.iter().map(|r| r.input.offset),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        records.iter().map(|r| r.input.sequence_number),
    )));
    columns.push(Arc::new(
        TimestampMillisecondArray::from_iter_values(
            records.iter().map(|r| r.input.enqueued_time_ms),
        )
        .with_timezone("UTC"),
    ));
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(raw_blob, n),
    )));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
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
pub fn curate_with(
    records: &[CurateInput<'_>],
    raw_blob: &str,
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
    opts: &CurateOptions,
    transform: Option<&dyn BatchTransform>,
) -> Result<CuratedOutput, CurateError> {
    let started = Instant::now();
    validate_stem(stem)?;
    let mut props = writer_properties(opts)?;
    if let Some(t) = transform {
        props = with_version_metadata(props, t.version());
    }
    let mut out = CuratedOutput::default();

    let by_source = accept(records, &mut out.rejected);
    for (source, accepted) in &by_source {
        let (data, renames) =
            infer_source(source, accepted, known.get(*source), &mut out.conflicts);
        let mut fields: Vec<Field> = data.iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(metadata_fields());
        let schema = Arc::new(Schema::new(fields));

        let mut by_hour: BTreeMap<i64, Vec<&Accepted<'_>>> = BTreeMap::new();
        for rec in accepted {
            by_hour
                .entry(rec.input.enqueued_time_ms.div_euclid(HOUR_MS))
                .or_default()
                .push(rec);
        }
        for (hour, group) in by_hour {
            let mut batch = build_batch(&schema, &data, &renames, &group, raw_blob)?;
            if let Some(t) = transform {
                batch = apply_transform(t, source, batch)?;
                out.output_schemas
                    .insert(source.to_string(), batch.schema());
                if batch.num_rows() == 0 {
                    continue;
                }
            }
            let rows = batch.num_rows();
            let data = write_parquet(&batch, &props)?;
            out.files.push(CuratedFile {
                source: source.to_string(),
                path: hour_path(source, hour, stem),
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

// ---------------------------------------------------------------------------
// Schema registry encoding
// ---------------------------------------------------------------------------

/// Encodes a schema as JSON for the schema registry:
/// `{"fields": [{"name", "type", "nullable", ...}]}` with `"fields"` for
/// structs, `"item"` for lists and `"unit"`/`"tz"` for timestamps. Types
/// outside that set are stored as `{"type": "arrow", "arrow": "<display>"}`.
pub fn schema_to_json(schema: &Schema) -> Value {
    json!({ "fields": fields_to_json(schema.fields()) })
}

fn fields_to_json(fields: &Fields) -> Value {
    Value::Array(fields.iter().map(|f| field_to_json(f)).collect())
}

fn field_to_json(field: &Field) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), Value::String(field.name().clone()));
    let simple = |name: &str| Value::String(name.to_string());
    let ty = match field.data_type() {
        DataType::Null => simple("null"),
        DataType::Boolean => simple("bool"),
        DataType::Int32 => simple("int32"),
        DataType::Int64 => simple("int64"),
        DataType::Float64 => simple("float64"),
        DataType::Utf8 => simple("utf8"),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            obj.insert("unit".into(), simple(unit));
            if let Some(tz) = tz {
                obj.insert("tz".into(), simple(tz));
            }
            simple("timestamp")
        }
        DataType::Struct(fields) => {
            obj.insert("fields".into(), fields_to_json(fields));
            simple("struct")
        }
        DataType::List(item) => {
            obj.insert("item".into(), field_to_json(item));
            simple("list")
        }
        other => {
            obj.insert("arrow".into(), Value::String(other.to_string()));
            simple("arrow")
        }
    };
    obj.insert("type".into(), ty);
    obj.insert("nullable".into(), Value::Bool(field.is_nullable()));
    Value::Object(obj)
}

/// Decodes a schema written by [`schema_to_json`].
pub fn schema_from_json(value: &Value) -> Result<Schema, CurateError> {
    let fields = value
        .get("fields")
        .ok_or_else(|| CurateError::InvalidSchema("missing \"fields\"".into()))?;
    Ok(Schema::new(fields_from_json(fields, "")?))
}

fn fields_from_json(value: &Value, path: &str) -> Result<Fields, CurateError> {
    let items = value.as_array().ok_or_else(|| {
        CurateError::InvalidSchema(format!("\"fields\" of {path:?} is not an array"))
    })?;
    items
        .iter()
        .map(|f| field_from_json(f, path))
        .collect::<Result<Vec<_>, _>>()
        .map(Fields::from)
}

fn field_from_json(value: &Value, parent: &str) -> Result<Field, CurateError> {
    let bad = |what: String| CurateError::InvalidSchema(what);
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("a field of {parent:?} has no string \"name\"")))?;
    let path = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    };
    let ty = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("field {path:?} has no string \"type\"")))?;
    let nullable = value
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let data_type = match ty {
        "null" => DataType::Null,
        "bool" => DataType::Boolean,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float64" => DataType::Float64,
        "utf8" => DataType::Utf8,
        "timestamp" => {
            let unit = match value.get("unit").and_then(Value::as_str) {
                Some("s") => TimeUnit::Second,
                Some("ms") => TimeUnit::Millisecond,
                Some("us") => TimeUnit::Microsecond,
                Some("ns") => TimeUnit::Nanosecond,
                other => return Err(bad(format!("field {path:?}: bad timestamp unit {other:?}"))),
            };
            let tz = value.get("tz").and_then(Value::as_str).map(Arc::from);
            DataType::Timestamp(unit, tz)
        }
        "struct" => DataType::Struct(fields_from_json(
            value
                .get("fields")
                .ok_or_else(|| bad(format!("struct field {path:?} has no \"fields\"")))?,
            &path,
        )?),
        "list" => {
            let item = value
                .get("item")
                .ok_or_else(|| bad(format!("list field {path:?} has no \"item\"")))?;
            DataType::List(Arc::new(field_from_json(item, &path)?))
        }
        "arrow" => {
            let text = value
                .get("arrow")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("field {path:?} has no \"arrow\" type string")))?;
            text.parse::<DataType>()
                .map_err(|e| bad(format!("field {path:?}: {e}")))?
        }
        other => return Err(bad(format!("field {path:?} has unknown type {other:?}"))),
    };
    Ok(Field::new(name, data_type, nullable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    const T0: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

    struct Rec {
        id: String,
        source: String,
        seq: i64,
        time: i64,
        payload: Vec<u8>,
    }

    fn rec(source: &str, seq: i64, time: i64, payload: Value) -> Rec {
        Rec {
            id: format!("{source}-{seq}"),
            source: source.into(),
            seq,
            time,
            payload: serde_json::to_vec(&payload).unwrap(),
        }
    }

    fn inputs(recs: &[Rec]) -> Vec<CurateInput<'_>> {
        recs.iter()
            .map(|r| CurateInput {
                id: &r.id,
                source: &r.source,
                partition: 2,
                sequence_number: r.seq,
                offset: "off",
                enqueued_time_ms: r.time,
                payload: &r.payload,
            })
            .collect()
    }

    fn run(recs: &[Rec], known: &BTreeMap<String, SchemaRef>) -> CuratedOutput {
        curate(
            &inputs(recs),
            "ingest/p0002/1-2.hfr",
            "stem",
            known,
            &CurateOptions::default(),
        )
        .unwrap()
    }

    fn read(file: &CuratedFile) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file.data.clone())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    fn field_type(schema: &Schema, name: &str) -> DataType {
        schema.field_with_name(name).unwrap().data_type().clone()
    }

    fn widened(out: &CuratedOutput, field: &str) -> Option<(String, String)> {
        out.conflicts
            .iter()
            .find(|c| c.field == field && c.kind == ConflictKind::Widened)
            .map(|c| (c.from.clone(), c.to.clone()))
    }

    #[test]
    fn nested_objects_and_arrays_round_trip() {
        let recs = vec![
            rec(
                "s",
                1,
                T0,
                json!({"user": {"name": "ann", "age": 3, "tags": ["a", "b"]}, "scores": [1, 2]}),
            ),
            rec(
                "s",
                2,
                T0,
                json!({"user": {"name": "bob", "geo": {"lat": 1.5}}, "scores": []}),
            ),
            rec("s", 3, T0, json!({"user": null, "scores": [null, 7]})),
        ];
        let out = run(&recs, &BTreeMap::new());
        assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
        assert_eq!(out.files.len(), 1);
        let batch = read(&out.files[0]);
        assert_eq!(batch.schema(), out.schemas["s"]);
        assert_eq!(batch.num_rows(), 3);

        let user = batch.column_by_name("user").unwrap().as_struct();
        assert!(user.is_null(2));
        let names = user.column_by_name("name").unwrap().as_string::<i32>();
        assert_eq!(names.value(1), "bob");
        let tags = user.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value(0).as_string::<i32>().value(1), "b");
        assert!(tags.is_null(1));
        let geo = user.column_by_name("geo").unwrap().as_struct();
        let lat = geo
            .column_by_name("lat")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(lat.value(1), 1.5);
        assert!(geo.is_null(0));

        let scores = batch.column_by_name("scores").unwrap().as_list::<i32>();
        assert_eq!(
            field_type(&batch.schema(), "scores"),
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
        );
        assert_eq!(scores.value(1).len(), 0);
        let third = scores.value(2);
        let third = third.as_primitive::<Int64Type>();
        assert!(third.is_null(0));
        assert_eq!(third.value(1), 7);
    }

    #[test]
    fn int_and_float_widen_to_float() {
        let recs = vec![
            rec("s", 1, T0, json!({"x": 1})),
            rec("s", 2, T0, json!({"x": 2.5})),
        ];
        let out = run(&recs, &BTreeMap::new());
        assert_eq!(field_type(&out.schemas["s"], "x"), DataType::Float64);
        assert_eq!(widened(&out, "x"), Some(("Int64".into(), "Float64".into())));
        let batch = read(&out.files[0]);
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!((x.value(0), x.value(1)), (1.0, 2.5));
    }

    #[test]
    fn scalar_mixed_with_string_becomes_text() {
        let recs = vec![
            rec("s", 1, T0, json!({"a": 7, "b": true, "c": "x"})),
            rec("s", 2, T0, json!({"a": "seven", "b": 1, "c": 2.5})),
        ];
        let out = run(&recs, &BTreeMap::new());
        for f in ["a", "b", "c"] {
            assert_eq!(field_type(&out.schemas["s"], f), DataType::Utf8, "{f}");
        }
        assert_eq!(widened(&out, "a"), Some(("Int64".into(), "Utf8".into())));
        assert_eq!(widened(&out, "b"), Some(("Boolean".into(), "Utf8".into())));
        assert_eq!(widened(&out, "c"), None, "a Utf8 column absorbs numbers");
        let batch = read(&out.files[0]);
        let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
        assert_eq!((col("a").value(0), col("a").value(1)), ("7", "seven"));
        assert_eq!((col("b").value(0), col("b").value(1)), ("true", "1"));
        assert_eq!(col("c").value(1), "2.5");
    }

    #[test]
    fn scalar_mixed_with_object_or_array_becomes_json_text() {
        let recs = vec![
            rec(
                "s",
                1,
                T0,
                json!({"o": {"k": 1, "z": [1]}, "l": [1, 2], "n": 5}),
            ),
            rec(
                "s",
                2,
                T0,
                json!({"o": 3, "l": "flat", "n": {"deep": true}}),
            ),
        ];
        let out = run(&recs, &BTreeMap::new());
        assert_eq!(widened(&out, "o"), Some(("Struct".into(), "Utf8".into())));
        assert_eq!(widened(&out, "l"), Some(("List".into(), "Utf8".into())));
        assert_eq!(widened(&out, "n"), Some(("Int64".into(), "Utf8".into())));
        let batch = read(&out.files[0]);
        let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
        assert_eq!(col("o").value(0), r#"{"k":1,"z":[1]}"#);
        assert_eq!(col("o").value(1), "3");
        assert_eq!(col("l").value(0), "[1,2]");
        assert_eq!(col("n").value(1), r#"{"deep":true}"#);
    }

    #[test]
    fn structs_union_recursively_and_list_elements_merge() {
        let recs = vec![
            rec("s", 1, T0, json!({"u": {"a": 1}, "l": [1]})),
            rec("s", 2, T0, json!({"u": {"b": {"c": 1}}, "l": [2.5]})),
            rec(
                "s",
                3,
                T0,
                json!({"u": {"b": {"c": "x", "d": null}}, "l": [[1]]}),
            ),
        ];
        let out = run(&recs, &BTreeMap::new());
        let u = field_type(&out.schemas["s"], "u");
        let DataType::Struct(fields) = u else {
            panic!("u is {u}")
        };
        let names: Vec<_> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = fields[1].data_type();
        assert_eq!(
            b,
            &DataType::Struct(Fields::from(vec![
                Field::new("c", DataType::Utf8, true),
                Field::new("d", DataType::Null, true),
            ]))
        );
        assert_eq!(
            widened(&out, "u.b.c"),
            Some(("Int64".into(), "Utf8".into()))
        );
        assert_eq!(widened(&out, "l[]").map(|c| c.1), Some("Float64".into()));
        assert_eq!(
            field_type(&out.schemas["s"], "l"),
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
        );
        let batch = read(&out.files[0]);
        let l = batch.column_by_name("l").unwrap().as_list::<i32>();
        assert_eq!(l.value(2).as_string::<i32>().value(0), "[1]");
        assert_eq!(l.value(1).as_string::<i32>().value(0), "2.5");
    }

    #[test]
    fn known_schema_comes_first_and_is_widened() {
        let known_schema = Schema::new(vec![
            Field::new("z", DataType::Int64, true),
            Field::new("old", DataType::Utf8, true),
        ]);
        let mut known = BTreeMap::new();
        known.insert("s".to_string(), Arc::new(known_schema));
        let recs = vec![rec("s", 1, T0, json!({"new": true, "z": 0.5}))];
        let out = run(&recs, &known);
        let names: Vec<_> = out.schemas["s"]
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut expected = vec!["z", "old", "new"];
        expected.extend(METADATA_COLUMNS);
        assert_eq!(names, expected);
        assert_eq!(widened(&out, "z"), Some(("Int64".into(), "Float64".into())));
        assert_eq!(out.conflicts.len(), 1);
        // Known schemas that already carry metadata columns are accepted as is.
        let mut known2 = BTreeMap::new();
        known2.insert("s".to_string(), out.schemas["s"].clone());
        let again = run(&recs, &known2);
        assert_eq!(again.schemas["s"], out.schemas["s"]);
        assert!(again.conflicts.is_empty(), "{:?}", again.conflicts);
    }

    #[test]
    fn float_known_absorbs_ints_without_conflict() {
        let mut known = BTreeMap::new();
        known.insert(
            "s".to_string(),
            Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
        );
        let out = run(&[rec("s", 1, T0, json!({"x": 3}))], &known);
        assert!(out.conflicts.is_empty());
        let batch = read(&out.files[0]);
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(x.value(0), 3.0);
    }

    #[test]
    fn metadata_columns_are_filled_and_collisions_renamed() {
        let recs = vec![
            rec(
                "s",
                41,
                T0,
                json!({"_record_id": "payload-id", "v": 1, "date": "2020-01-01"}),
            ),
            rec("s", 42, T0 + 1, json!({"v": 2})),
        ];
        let out = run(&recs, &BTreeMap::new());
        let renamed: Vec<_> = out
            .conflicts
            .iter()
            .filter(|c| c.kind == ConflictKind::Renamed)
            .collect();
        assert_eq!(renamed.len(), 2);
        assert_eq!(renamed[0].from, "_record_id");
        assert_eq!(renamed[0].to, "_record_id_payload");
        assert_eq!(renamed[1].to, "date_payload");

        let batch = read(&out.files[0]);
        let schema = batch.schema();
        let tail: Vec<_> = schema
            .fields()
            .iter()
            .rev()
            .take(6)
            .rev()
            .cloned()
            .collect();
        let meta: Vec<_> = metadata_fields().into_iter().map(Arc::new).collect();
        assert_eq!(tail, meta);
        let s = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
        assert_eq!(s("_record_id_payload").value(0), "payload-id");
        assert!(s("_record_id_payload").is_null(1));
        assert_eq!(s("date_payload").value(0), "2020-01-01");
        assert!(batch.column_by_name("date").is_none());
        assert_eq!(s("_record_id").value(0), "s-41");
        assert_eq!(s("_hub_offset").value(1), "off");
        assert_eq!(s("_raw_blob").value(1), "ingest/p0002/1-2.hfr");
        let part = batch.column_by_name("_hub_partition").unwrap();
        assert_eq!(part.as_primitive::<Int32Type>().value(0), 2);
        let seq = batch.column_by_name("_hub_sequence").unwrap();
        assert_eq!(seq.as_primitive::<Int64Type>().value(1), 42);
        let at = batch.column_by_name("_ingested_at").unwrap();
        assert_eq!(
            at.as_primitive::<TimestampMillisecondType>().value(1),
            T0 + 1
        );
    }

    #[test]
    fn files_are_split_by_source_and_hour() {
        let recs = vec![
            rec("b", 1, T0, json!({"v": 1})),
            rec("a", 2, T0, json!({"v": 1})),
            rec("a", 3, T0 + HOUR_MS, json!({"v": 1})),
            rec("a", 4, T0 + 10, json!({"v": 1})),
        ];
        let out = run(&recs, &BTreeMap::new());
        let paths: Vec<_> = out
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.rows))
            .collect();
        assert_eq!(
            paths,
            [
                ("a/date=2023-11-14/hour=22/stem.parquet", 2),
                ("a/date=2023-11-14/hour=23/stem.parquet", 1),
                ("b/date=2023-11-14/hour=22/stem.parquet", 1),
            ]
        );
        let ids = read(&out.files[0]);
        let ids = ids.column_by_name("_record_id").unwrap().as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("a-2", "a-4"));
    }

    #[test]
    fn output_is_deterministic() {
        // Large enough to take the multi-threaded parse path.
        let recs: Vec<_> = (0..(PARALLEL_PARSE_MIN as i64 + 500))
            .map(|i| {
                rec(
                    if i % 3 == 0 { "x" } else { "y" },
                    i,
                    T0 + i * 60_000,
                    json!({"i": i, "f": i as f64 / 3.0, "s": format!("v{i}"), "o": {"k": [i]}}),
                )
            })
            .collect();
        let a = run(&recs, &BTreeMap::new());
        let b = run(&recs, &BTreeMap::new());
        assert!(a.files.len() > 2);
        assert_eq!(a.files, b.files);
        assert_eq!(a.schemas, b.schemas);
        // Input order is kept within a file.
        let batch = read(&a.files[0]);
        let seq = batch.column_by_name("_hub_sequence").unwrap();
        let seq = seq.as_primitive::<Int64Type>();
        assert!(seq.values().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.files.iter().map(|f| f.rows).sum::<usize>(), recs.len());
    }

    #[test]
    fn key_order_does_not_matter() {
        let recs = vec![
            rec("s", 1, T0, json!({"a": 1, "b": "x", "o": {"p": 1, "q": 2}})),
            rec("s", 2, T0, json!({"o": {"q": 4, "p": 3}, "b": "y", "a": 2})),
            rec("s", 3, T0, json!({"b": "z"})),
        ];
        let out = run(&recs, &BTreeMap::new());
        let batch = read(&out.files[0]);
        let a = batch.column_by_name("a").unwrap();
        let a = a.as_primitive::<Int64Type>();
        assert_eq!((a.value(0), a.value(1)), (1, 2));
        assert!(a.is_null(2));
        let b = batch.column_by_name("b").unwrap();
        let b = b.as_string::<i32>();
        assert_eq!((b.value(0), b.value(1), b.value(2)), ("x", "y", "z"));
        let o = batch.column_by_name("o").unwrap().as_struct();
        let q = o.column_by_name("q").unwrap().as_primitive::<Int64Type>();
        assert_eq!((q.value(0), q.value(1)), (2, 4));
        assert!(o.is_null(2));
    }

    #[test]
    fn bad_records_are_rejected_not_fatal() {
        let mut recs = vec![
            rec("s", 1, T0, json!({"ok": 1})),
            rec("s", 2, T0, json!([1, 2])),
            rec("s", 3, T0, json!("text")),
            rec("../x", 4, T0, json!({"ok": 1})),
            rec("s", 5, -1, json!({"ok": 1})),
        ];
        recs.push(Rec {
            id: "broken".into(),
            source: "s".into(),
            seq: 6,
            time: T0,
            payload: b"{\"ok\": ".to_vec(),
        });
        let out = run(&recs, &BTreeMap::new());
        let rejected: Vec<_> = out.rejected.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(rejected, ["s-2", "s-3", "../x-4", "s-5", "broken"]);
        assert!(out.rejected[0].reason.contains("array"));
        assert!(out.rejected[4].reason.contains("not valid json"));
        assert_eq!(out.files.len(), 1);
        assert_eq!(out.files[0].rows, 1);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let recs = vec![rec("s", 1, T0, json!({}))];
        let recs = inputs(&recs);
        let known = BTreeMap::new();
        let err = curate(&recs, "r", "a/b", &known, &CurateOptions::default());
        assert!(matches!(err, Err(CurateError::InvalidStem { .. })));
        let opts = CurateOptions {
            zstd_level: 99,
            ..CurateOptions::default()
        };
        let err = curate(&recs, "r", "ok", &known, &opts);
        assert!(matches!(err, Err(CurateError::InvalidOptions(_))));
        let opts = CurateOptions {
            max_row_group_rows: 0,
            ..CurateOptions::default()
        };
        let err = curate(&recs, "r", "ok", &known, &opts);
        assert!(matches!(err, Err(CurateError::InvalidOptions(_))));
    }

    #[test]
    fn empty_objects_and_null_only_fields_are_writable() {
        let recs = vec![
            rec("s", 1, T0, json!({})),
            rec("s", 2, T0, json!({"e": {}, "n": null, "l": [], "le": [{}]})),
        ];
        let out = run(&recs, &BTreeMap::new());
        let schema = &out.schemas["s"];
        assert_eq!(field_type(schema, "e"), DataType::Null);
        assert_eq!(field_type(schema, "n"), DataType::Null);
        let batch = read(&out.files[0]);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), out.schemas["s"]);
    }

    #[test]
    fn row_groups_respect_the_limit() {
        let recs: Vec<_> = (0..25).map(|i| rec("s", i, T0, json!({"i": i}))).collect();
        let out = curate(
            &inputs(&recs),
            "r",
            "stem",
            &BTreeMap::new(),
            &CurateOptions {
                zstd_level: 1,
                max_row_group_rows: 10,
            },
        )
        .unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(out.files[0].data.clone()).unwrap();
        let meta = builder.metadata();
        assert_eq!(meta.num_row_groups(), 3);
        let column = meta.row_group(0).column(0);
        assert!(column.statistics().is_some());
        assert!(matches!(column.compression(), Compression::ZSTD(_)));
    }

    #[test]
    fn merge_schemas_unions_and_keeps_metadata_last() {
        let a = Schema::new(
            [Field::new("x", DataType::Int64, true)]
                .into_iter()
                .chain(metadata_fields())
                .collect::<Vec<_>>(),
        );
        let b = Schema::new(vec![
            Field::new("y", DataType::Boolean, true),
            Field::new("x", DataType::Float64, true),
        ]);
        let (merged, conflicts) = merge_schemas(&a, &b);
        let names: Vec<_> = merged.fields().iter().map(|f| f.name().clone()).collect();
        let mut expected = vec!["x", "y"];
        expected.extend(METADATA_COLUMNS);
        assert_eq!(names, expected);
        assert_eq!(field_type(&merged, "x"), DataType::Float64);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].field, "x");
    }

    #[test]
    fn schema_json_round_trips() {
        let recs = vec![rec(
            "s",
            1,
            T0,
            json!({"u": {"n": "a", "l": [[1.5]]}, "b": true, "z": null}),
        )];
        let out = run(&recs, &BTreeMap::new());
        let mut fields: Vec<Field> = out.schemas["s"]
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("odd", DataType::UInt16, false));
        let schema = Schema::new(fields);
        let encoded = schema_to_json(&schema);
        let text = serde_json::to_string(&encoded).unwrap();
        let decoded = schema_from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(decoded, schema);

        for bad in [
            json!({}),
            json!({"fields": 3}),
            json!({"fields": [{"name": "a"}]}),
            json!({"fields": [{"name": "a", "type": "wat"}]}),
            json!({"fields": [{"name": "a", "type": "list"}]}),
        ] {
            assert!(
                matches!(schema_from_json(&bad), Err(CurateError::InvalidSchema(_))),
                "{bad}"
            );
        }
    }
}
