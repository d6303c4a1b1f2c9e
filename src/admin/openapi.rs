//! The OpenAPI 3 document of the admin API, generated from the route table
//! (so a route cannot be served without being described).

use serde_json::{Map, Value, json};

use super::routes::{Access, Route};

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

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let mut responses = Map::new();
        let success_content = if route.media == "application/json" {
            json!({ "application/json": { "schema": { "type": "object" } } })
        } else {
            json!({ route.media: { "schema": { "type": "string" } } })
        };
        responses.insert(
            route.success.as_u16().to_string(),
            json!({ "description": "success", "content": success_content }),
        );
        if route.body.is_some() || !path_params(route.path).is_empty() {
            responses.insert("400".into(), error_response("invalid input"));
        }
        if !matches!(route.access, Access::Probe | Access::Asset) {
            responses.insert(
                "401".into(),
                error_response("missing or wrong bearer token (control calls; every call on a non-loopback address)"),
            );
        }
        if route.access == Access::Control {
            responses.insert(
                "403".into(),
                error_response("control calls are disabled: no admin token configured"),
            );
            responses.insert("404".into(), error_response("unknown path, source or id"));
            responses.insert(
                "409".into(),
                error_response("not possible in the current state"),
            );
        }
        if route.path == "/readyz" {
            responses.insert("503".into(), error_response("not ready"));
        }
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
        if let Some(schema) = route.body {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": schema() } } }),
            );
        }
        if route.access == Access::Control {
            op.insert("security".into(), json!([{ "bearer": [] }]));
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(openapi_path(route.path))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_lowercase(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Hubflow admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Status, metrics and control of a running hubflow node. Control calls need Authorization: Bearer <token>; on a non-loopback address every call does."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
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
                }
            }
        }
    })
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
    fn wildcards_become_plain_parameters() {
        assert_eq!(openapi_path("/dlq/{*id}"), "/dlq/{id}");
        assert_eq!(path_params("/replay/{id}"), vec!["id".to_string()]);
    }
}
