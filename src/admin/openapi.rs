//! The OpenAPI 3.1 document of the admin API, generated from the route
//! table (so a route cannot be served without being described) and from
//! the types its handlers take and give: a request body's schema is its
//! request struct's, and an answer's schema is the type the handler
//! returns, found by [`Answering`] from the handler's own signature, so the
//! document cannot drift from what is served. Schemas are JSON Schema
//! 2020-12 (what OpenAPI 3.1 uses), derived with `schemars` from the same
//! serde types.

use std::convert::Infallible;

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::routes::{Access, ApiError, Route};

/// Where a schema comes from: the generator collects named types under
/// `#/components/schemas`.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Option<Schema>;

/// The schema of `T` (a `$ref` to its component for named types).
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<Schema> {
    Some(generator.subschema_for::<T>())
}

/// What a handler's return type answers with: a JSON type (its schema) or
/// something else (`None`: text, a page, an event stream).
pub trait IntoAnswer {
    fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema>;
}

impl<A: JsonSchema> IntoAnswer for Json<A> {
    fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
        schema_of::<A>(generator)
    }
}

impl<A: JsonSchema> IntoAnswer for (StatusCode, Json<A>) {
    fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
        schema_of::<A>(generator)
    }
}

impl<X: IntoAnswer> IntoAnswer for Result<X, ApiError> {
    fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
        X::answer_schema(generator)
    }
}

impl IntoAnswer for Response {
    fn answer_schema(_: &mut SchemaGenerator) -> Option<Schema> {
        None
    }
}

impl<S: Stream<Item = Result<Event, Infallible>>> IntoAnswer for Sse<S> {
    fn answer_schema(_: &mut SchemaGenerator) -> Option<Schema> {
        None
    }
}

/// A handler, by the type its future resolves to (`Args` are its
/// extractors, inferred like axum's `Handler`).
pub trait Answering<Args> {
    fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema>;
}

macro_rules! answering {
    ($($arg:ident),*) => {
        impl<F, Fut, R, $($arg,)*> Answering<($($arg,)*)> for F
        where
            F: FnOnce($($arg),*) -> Fut,
            Fut: Future<Output = R>,
            R: IntoAnswer,
        {
            fn answer_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
                R::answer_schema(generator)
            }
        }
    };
}

answering!();
answering!(A1);
answering!(A1, A2);
answering!(A1, A2, A3);
answering!(A1, A2, A3, A4);

/// axum's `{*rest}` is OpenAPI's `{rest}`.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|p| p.trim_start_matches('*').to_string())
        .collect()
}

/// What an error status means on this API.
fn describe(status: u16) -> &'static str {
    match status {
        400 => "invalid input (body, path or query)",
        401 => {
            "missing or wrong bearer token (control calls; every call on a non-loopback address)"
        }
        403 => "control calls are disabled: no admin token configured",
        404 => "unknown path, source, version or id",
        409 => "not possible in the current state",
        415 => "the body is not application/json",
        422 => {
            "well-formed but refused: a body of the wrong shape or with an unknown field (a transform or source that fails validation or its dry run, a payload that is not an object)"
        }
        500 => "unexpected failure (storage or the hub)",
        503 => "not available now (the hub, the supervision tree or log control)",
        _ => "error",
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let answers = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .for_serialize();
    let mut answers = answers.into_generator();
    // Request bodies are inlined: each is its own struct, read with the
    // deserialize contract (defaults make fields optional).
    let mut bodies = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .for_deserialize()
        .into_generator();
    let mut paths = Map::new();
    for route in routes {
        let answer = (route.answer)(&mut answers);
        let body = route.body.and_then(|b| b(&mut bodies));
        let op = operation(route, answer, body);
        let entry = paths
            .entry(openapi_path(route.path))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_lowercase(), op);
        }
    }
    let mut schemas = answers.take_definitions(true);
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hubflow admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Status, metrics and control of a running hubflow node. Control calls need Authorization: Bearer <token>; on a non-loopback address every call does."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        }
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string" },
                    "message": { "type": "string" }
                }
            }
        }
    })
}

/// The operation object of one route.
fn operation(route: &Route, answer: Option<Schema>, body: Option<Schema>) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(route.summary));
    op.insert(
        "operationId".into(),
        json!(format!(
            "{}{}",
            route.method.as_str().to_lowercase(),
            openapi_path(route.path)
                .replace(['/', '{', '}', '.', '-'], "_")
                .trim_end_matches('_')
        )),
    );
    let params: Vec<Value> = path_params(route.path)
        .into_iter()
        .map(|name| {
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
        })
        .collect();
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(schema) = body {
        op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
        );
    }
    if route.access == Access::Control {
        op.insert("security".into(), json!([{ "bearer": [] }]));
    }
    op.insert("responses".into(), Value::Object(responses(route, answer)));
    Value::Object(op)
}

/// The answers of one route: its success (with the handler's answer
/// schema) and the errors its access and input allow.
fn responses(route: &Route, answer: Option<Schema>) -> Map<String, Value> {
    let mut responses = Map::new();
    let success_content = match answer {
        Some(schema) => json!({ "application/json": { "schema": schema } }),
        None => json!({ route.media: { "schema": { "type": "string" } } }),
    };
    responses.insert(
        route.success.as_u16().to_string(),
        json!({ "description": "success", "content": success_content }),
    );
    let has_params = !path_params(route.path).is_empty();
    let mut errors: Vec<u16> = route.fails.to_vec();
    if route.body.is_some() || has_params {
        errors.push(400);
    }
    if route.body.is_some() {
        // axum's JSON rejections: not JSON 400, wrong content type 415,
        // JSON of the wrong shape (or an unknown field) 422.
        errors.extend([415, 422]);
    }
    if !matches!(route.access, Access::Probe | Access::Asset) {
        errors.extend([401, 500]);
    }
    if route.access == Access::Control {
        errors.extend([403, 404, 409]);
    }
    if has_params {
        errors.push(404);
    }
    for status in errors {
        responses.insert(status.to_string(), error_response(describe(status)));
    }
    if route.path == "/readyz" {
        // Not ready answers the same document, with the reason.
        let same = responses[&route.success.as_u16().to_string()].clone();
        responses.insert("503".into(), same);
    }
    responses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::routes::routes;

    #[test]
    fn every_route_is_described_once() {
        let routes = routes();
        let doc = document(&routes);
        let mut operations = 0;
        for route in &routes {
            let method = route.method.as_str().to_lowercase();
            let op = &doc["paths"][openapi_path(route.path)][&method];
            assert!(op.is_object(), "{method} {} is not described", route.path);
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(op["responses"][route.success.as_u16().to_string()].is_object());
            assert_eq!(
                route.body.is_some(),
                op["requestBody"].is_object(),
                "{}",
                route.path
            );
            assert_eq!(route.access == Access::Control, op["security"].is_array());
            // JSON routes describe their answer with the handler's type.
            let success = &op["responses"][route.success.as_u16().to_string()]["content"];
            let json_schema = &success["application/json"]["schema"];
            assert_eq!(
                route.media == "application/json",
                json_schema.is_object() || json_schema.is_boolean(),
                "{} answers {success}",
                route.path
            );
            for param in path_params(route.path) {
                assert!(op["parameters"].to_string().contains(&param));
            }
        }
        for methods in doc["paths"].as_object().unwrap().values() {
            operations += methods.as_object().unwrap().len();
        }
        assert_eq!(operations, routes.len(), "a route is described twice");
        let mut ids: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|m| m.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap().to_string())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids must be unique");
    }

    #[test]
    fn answers_and_bodies_come_from_the_types() {
        let doc = document(&routes());
        let schemas = &doc["components"]["schemas"];
        // The status document, from its struct down to the tree's nodes.
        let status = &doc["paths"]["/status"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert_eq!(status["$ref"], "#/components/schemas/StatusDocument");
        let required = schemas["StatusDocument"]["required"].to_string();
        assert!(
            required.contains("\"tree\"") && required.contains("\"progress\""),
            "{required}"
        );
        assert!(schemas["StatusNode"]["properties"]["generation"].is_object());
        assert!(schemas["NodeState"].to_string().contains("backing_off"));
        // A swap's outcome is tagged by `outcome`.
        assert!(schemas["SwapOutcome"].to_string().contains("rolled_back"));
        // Request bodies are inlined, refuse unknown fields and keep bounds.
        let body = &doc["paths"]["/transform"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["additionalProperties"], false, "{body}");
        assert_eq!(body["required"], serde_json::json!(["version"]), "{body}");
        assert_eq!(
            body["properties"]["probation_secs"]["maximum"], 3600,
            "{body}"
        );
        // Every reference resolves.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(schemas[name].is_object(), "dangling $ref to {name}");
        }
    }

    #[test]
    fn wildcards_become_plain_parameters() {
        assert_eq!(openapi_path("/dlq/{*id}"), "/dlq/{id}");
        assert_eq!(path_params("/replay/{id}"), vec!["id".to_string()]);
    }
}
