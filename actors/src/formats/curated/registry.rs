//! The schema registry's encoding of a curated schema
//! (`state/schemas/<source>`): [`schema_to_json`] and [`schema_from_json`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use serde_json::{Map, Value, json};

use super::CurateError;

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
