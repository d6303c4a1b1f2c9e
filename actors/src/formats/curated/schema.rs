//! The schema lattice: what type each field has, how types widen, and
//! how two schemas union.
//!
//! JSON types map to `Boolean`, `Int64`, `Float64`, `Utf8`, `Struct` (kept
//! nested), `List` (of the merged element type); null-only fields are
//! `Null`. Every field is nullable. `Int64` + `Float64` widen to `Float64`;
//! any other mix of kinds widens to `Utf8` holding the value as JSON text.
//! Structs union field by field, list element types merge. Each type change
//! is reported as a [`SchemaConflict`].
//!
//! Inference reads the records from a [`Tape`]; a record that repeats a key
//! is read from its `serde_json::Value` instead, so the later value wins as
//! it always has (see [`infer_source`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use serde_json::Value;
use tracing::debug;

use super::tape::{Elem, Tape};
use super::{
    Accepted, ConflictKind, SchemaConflict, is_metadata_name, is_reserved_name, metadata_fields,
    renamed,
};

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

#[derive(Debug, Clone, Default)]
struct StructKind {
    fields: Vec<(String, Kind)>,
    index: HashMap<String, usize>,
    /// Per field, the stamp of the last object that set it: an object that
    /// sets a field twice repeats a key (see [`Stamps`]).
    seen: Vec<u64>,
}

impl PartialEq for StructKind {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

impl StructKind {
    /// The slot of `name`, trying position `pos` first (records of a source
    /// mostly share a key order, so this usually avoids hashing).
    fn slot_at(&mut self, pos: usize, name: &str) -> &mut Kind {
        let i = self.index_at(pos, name);
        &mut self.fields[i].1
    }

    fn index_at(&mut self, pos: usize, name: &str) -> usize {
        if self.fields.get(pos).is_some_and(|(n, _)| n == name) {
            return pos;
        }
        self.index_of(name)
    }

    fn slot(&mut self, name: &str) -> &mut Kind {
        let i = self.index_of(name);
        &mut self.fields[i].1
    }

    fn index_of(&mut self, name: &str) -> usize {
        match self.index.get(name) {
            Some(&i) => i,
            None => {
                let i = self.fields.len();
                self.fields.push((name.to_string(), Kind::Null));
                self.seen.push(0);
                self.index.insert(name.to_string(), i);
                i
            }
        }
    }

    /// Marks field `i` as set by the object with `stamp`; false if that
    /// object set it already.
    fn mark(&mut self, i: usize, stamp: u64) -> bool {
        if self.seen.len() < self.fields.len() {
            self.seen.resize(self.fields.len(), 0);
        }
        std::mem::replace(&mut self.seen[i], stamp) != stamp
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
                s.seen.push(0);
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
    stamps: Stamps,
}

/// Stamps objects as inference visits them, to notice a repeated key.
#[derive(Default)]
struct Stamps(u64);

impl Stamps {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A record of the tape repeats a key in one of its objects (or holds both
/// a reserved key and its renamed form); it must be inferred from its
/// `serde_json::Value`, where the later value wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RepeatedKey;

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

    /// [`Kind::absorb`] for the value at `at` on a tape. Fails when an
    /// object it walks sets a field twice.
    fn absorb_tape(
        &mut self,
        tape: &Tape<'_>,
        at: u32,
        path: &Path<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), RepeatedKey> {
        match tape.get(at) {
            Elem::Null | Elem::Key(_) => {}
            Elem::Bool(_) => self.absorb_scalar(Kind::Bool, path, ctx),
            Elem::U64(n) => {
                let kind = if i64::try_from(n).is_ok() {
                    Kind::Int
                } else {
                    Kind::Float
                };
                self.absorb_scalar(kind, path, ctx)
            }
            Elem::I64(_) => self.absorb_scalar(Kind::Int, path, ctx),
            Elem::F64(_) => self.absorb_scalar(Kind::Float, path, ctx),
            Elem::Str(_) => self.absorb_scalar(Kind::Str, path, ctx),
            Elem::Array { .. } => {
                match self {
                    Kind::Null => *self = Kind::List(Box::new(Kind::Null)),
                    Kind::List(_) => {}
                    Kind::Str => return Ok(()),
                    _ => {
                        self.widen(Kind::Str, path, ctx);
                        return Ok(());
                    }
                }
                if let Kind::List(elem) = self {
                    let item_path = Path {
                        parent: Some(path),
                        name: LIST_ITEM,
                    };
                    for item in tape.items(at) {
                        elem.absorb_tape(tape, item, &item_path, ctx)?;
                    }
                }
            }
            Elem::Object { .. } => {
                match self {
                    Kind::Null => *self = Kind::Struct(StructKind::default()),
                    Kind::Struct(_) => {}
                    Kind::Str => return Ok(()),
                    _ => {
                        self.widen(Kind::Str, path, ctx);
                        return Ok(());
                    }
                }
                if let Kind::Struct(s) = self {
                    let stamp = ctx.stamps.next();
                    for (pos, (key, value)) in tape.entries(at).enumerate() {
                        let i = s.index_at(pos, key);
                        if !s.mark(i, stamp) {
                            return Err(RepeatedKey);
                        }
                        let child = Path {
                            parent: Some(path),
                            name: key,
                        };
                        s.fields[i].1.absorb_tape(tape, value, &child, ctx)?;
                    }
                }
            }
        }
        Ok(())
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
        stamps: Stamps::default(),
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

/// Infers the merged data schema of one source's records, starting from the
/// registry's schema (`known`). Returns the data fields and the renames
/// (column name → payload key), or the position of a record that must be
/// read from its `serde_json::Value` (see [`RepeatedKey`]); conflicts found
/// before that are left in `conflicts`.
pub(super) fn infer_source(
    source: &str,
    records: &[Accepted<'_>],
    tape: &Tape<'_>,
    known: Option<&Schema>,
    conflicts: &mut Vec<SchemaConflict>,
) -> Result<(Fields, HashMap<String, String>), (usize, RepeatedKey)> {
    let mut ctx = Ctx {
        source,
        conflicts,
        stamps: Stamps::default(),
    };
    let mut root = match known {
        Some(schema) => StructKind::from_fields(&data_fields(schema).0, None, &mut ctx),
        None => StructKind::default(),
    };
    let mut renames: HashMap<String, String> = HashMap::new();
    for (position, rec) in records.iter().enumerate() {
        let stamp = ctx.stamps.next();
        let mut absorb = |pos: usize,
                          key: &str,
                          value: TopValue<'_>,
                          ctx: &mut Ctx<'_>|
         -> Result<(), RepeatedKey> {
            let reserved = is_reserved_name(key);
            let column = if reserved {
                renamed(key)
            } else {
                String::new()
            };
            let name: &str = if reserved { &column } else { key };
            if reserved && !renames.contains_key(&column) {
                let original = Path {
                    parent: None,
                    name: key,
                };
                ctx.report(
                    &original,
                    key.to_string(),
                    column.clone(),
                    ConflictKind::Renamed,
                );
                renames.insert(column.clone(), key.to_string());
            }
            let i = if reserved {
                root.index_of(name)
            } else {
                root.index_at(pos, name)
            };
            let path = Path { parent: None, name };
            match value {
                TopValue::Tape(at) => {
                    if !root.mark(i, stamp) {
                        return Err(RepeatedKey);
                    }
                    root.fields[i].1.absorb_tape(tape, at, &path, ctx)
                }
                TopValue::Value(v) => {
                    root.fields[i].1.absorb(v, &path, ctx);
                    Ok(())
                }
            }
        };
        let result = match &rec.value {
            Some(map) => map
                .iter()
                .enumerate()
                .try_for_each(|(pos, (key, v))| absorb(pos, key, TopValue::Value(v), &mut ctx)),
            None => tape
                .entries(rec.root)
                .enumerate()
                .try_for_each(|(pos, (key, at))| absorb(pos, key, TopValue::Tape(at), &mut ctx)),
        };
        result.map_err(|e| (position, e))?;
    }
    Ok((root.to_fields(), renames))
}

/// A top-level value, on the tape or parsed.
#[derive(Clone, Copy)]
enum TopValue<'v> {
    Tape(u32),
    Value(&'v Value),
}
