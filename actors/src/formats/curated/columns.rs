//! Arrow columns built row by row from the tape (or, for records that
//! repeat a key, from their `serde_json::Value`), and the record batch of
//! one (source, hour) group with its metadata columns.
//!
//! One pass over the records touches each value once. Values are converted
//! to the column's type; a value that cannot be (which the inference never
//! produces) is stored as null. A `Utf8` column stores other kinds as JSON
//! text, exactly as `serde_json` prints them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBufferBuilder, BooleanBuilder, Float64Builder, Int32Array,
    Int64Array, Int64Builder, ListArray, NullArray, RecordBatch, StringArray, StringBuilder,
    StructArray, TimestampMillisecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, FieldRef, Fields, SchemaRef};
use arrow::error::ArrowError;
use serde_json::{Map, Number, Value};

use super::tape::{Elem, Tape};
use super::{Accepted, CurateError, METADATA_COLUMNS};

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

    /// [`Col::append`] for the value at `at` on the tape (`None`: absent).
    fn append_tape(&mut self, tape: &Tape<'_>, at: Option<u32>) -> Result<(), CurateError> {
        let elem = at
            .map(|i| (i, tape.get(i)))
            .filter(|(_, e)| !matches!(e, Elem::Null));
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(b) => b.append_option(match elem {
                Some((_, Elem::Bool(v))) => Some(v),
                _ => None,
            }),
            Col::Int(b) => b.append_option(match elem {
                Some((_, Elem::U64(n))) => i64::try_from(n).ok(),
                Some((_, Elem::I64(n))) => Some(n),
                _ => None,
            }),
            Col::Float(b) => b.append_option(match elem {
                Some((_, Elem::U64(n))) => Some(n as f64),
                Some((_, Elem::I64(n))) => Some(n as f64),
                Some((_, Elem::F64(f))) => Some(f),
                _ => None,
            }),
            Col::Str(b) => {
                let failed = |_| ArrowError::ComputeError("formatting a json value failed".into());
                match elem {
                    None => b.append_null(),
                    Some((_, Elem::Str(t))) => b.append_value(tape.text(t)),
                    Some((_, Elem::Bool(x))) => b.append_value(if x { "true" } else { "false" }),
                    // Numbers, objects and arrays as serde_json prints them.
                    Some((_, Elem::U64(n))) => {
                        write!(b, "{}", Number::from(n)).map_err(failed)?;
                        b.append_value("");
                    }
                    Some((_, Elem::I64(n))) => {
                        write!(b, "{}", Number::from(n)).map_err(failed)?;
                        b.append_value("");
                    }
                    Some((i, _)) => {
                        write!(b, "{}", tape.to_value(i)).map_err(failed)?;
                        b.append_value("");
                    }
                }
            }
            Col::List {
                offsets,
                validity,
                item,
                ..
            } => {
                match elem {
                    Some((i, Elem::Array { .. })) => {
                        for x in tape.items(i) {
                            item.append_tape(tape, Some(x))?;
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
            Col::Struct(s) => s.append_tape(
                tape,
                match elem {
                    Some((i, Elem::Object { .. })) => Some(i),
                    _ => None,
                },
            )?,
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

    /// [`StructCol::append`] for the object at `at` on the tape.
    fn append_tape(&mut self, tape: &Tape<'_>, object: Option<u32>) -> Result<(), CurateError> {
        let row = self.len;
        if let Some(at) = object {
            for (pos, (key, value)) in tape.entries(at).enumerate() {
                let i = if self.keys.get(pos).is_some_and(|k| k == key) {
                    pos
                } else {
                    match self.index.get(key) {
                        Some(&i) => i,
                        None => continue,
                    }
                };
                let child = &mut self.children[i];
                if child.len() == row {
                    child.append_tape(tape, Some(value))?;
                }
            }
        }
        for child in &mut self.children {
            if child.len() == row {
                child.append_tape(tape, None)?;
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

/// Builds the record batch of one (source, hour) group: the data columns of
/// `data` (`renames`: column name → payload key), then the metadata columns.
pub(super) fn build_batch(
    schema: &SchemaRef,
    data: &Fields,
    renames: &HashMap<String, String>,
    tape: &Tape<'_>,
    records: &[&Accepted<'_>],
    raw_blob: &str,
    version: &str,
) -> Result<RecordBatch, CurateError> {
    let n = records.len();
    let mut top = StructCol::new(data.clone(), renames, n)?;
    for r in records {
        match &r.value {
            Some(object) => top.append(Some(object))?,
            None => top.append_tape(tape, Some(r.root))?,
        }
    }
    let (_, mut columns, _) = top.finish_parts()?;
    columns.reserve(METADATA_COLUMNS.len());
    columns.push(Arc::new(StringArray::from_iter_values(
        records.iter().map(|r| r.input.id),
    )));
    columns.push(Arc::new(Int32Array::from_iter_values(
        // Checked when the record was accepted.
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
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(version, n),
    )));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
