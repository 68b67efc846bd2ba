//! The OpenAPI 3.1 document of a front, derived from the services' descriptions: one
//! `POST /rpc/{service}/{method}` operation per method, its arguments as an object (named)
//! or an array (positional), its result, and the error envelope for every failing status.

use serde_json::{json, Map, Value};

use crate::gateway::{DEADLINE_HEADER, TRACE_HEADER};

/// Where descriptions keep their shared definitions, and where OpenAPI wants them.
const DESCRIBE_DEFS: &str = "#/definitions/";
const OPENAPI_DEFS: &str = "#/components/schemas/";

/// The error statuses every call may answer, with what they mean.
const ERRORS: &[(&str, &str)] = &[
    ("400", "Bad arguments or a malformed request"),
    ("401", "The call lacks an accepted credential"),
    ("404", "No such service or method"),
    ("408", "The body did not arrive in time"),
    ("413", "The body is too large"),
    ("415", "The body is not application/json"),
    ("422", "The handler returned an error"),
    ("500", "The handler panicked, or the server failed"),
    ("502", "The backend answered something unreadable"),
    ("503", "No server is available"),
    ("504", "The deadline passed"),
];

/// The OpenAPI 3.1 document for a describe document (`{"services": [..], "definitions":
/// {..}}`).
pub fn document(descriptions: &Value, title: &str) -> Value {
    let mut paths = Map::new();
    let services = descriptions.get("services").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut tags = Vec::new();
    for service in &services {
        let service_name = service.get("name").and_then(Value::as_str).unwrap_or_default();
        let doc = service.get("doc").and_then(Value::as_str).unwrap_or_default();
        tags.push(json!({"name": service_name, "description": doc}));
        for method in service.get("methods").and_then(Value::as_array).into_iter().flatten() {
            let name = method.get("name").and_then(Value::as_str).unwrap_or_default();
            let path = format!("/rpc/{service_name}/{name}");
            paths.insert(path, json!({"post": operation(service_name, method)}));
        }
    }
    let mut schemas = Map::new();
    for (name, schema) in descriptions.get("definitions").and_then(Value::as_object).into_iter().flatten() {
        schemas.insert(component_name(name), rewrite_refs(schema.clone()));
    }
    schemas.insert("RpcError".to_owned(), error_schema());
    let responses: Map<String, Value> = ERRORS
        .iter()
        .map(|(status, description)| {
            let body = json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RpcError"}}}
            });
            (format!("E{status}"), body)
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every method of every service, callable with POST and a JSON body: an object of named \
                arguments or an array of positional ones. Errors carry the envelope RpcError."
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "parameters": {
                "Deadline": {
                    "name": DEADLINE_HEADER,
                    "in": "header",
                    "required": false,
                    "description": "The call's deadline in milliseconds, capped by the server",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 9_999_999_999_u64}
                },
                "TraceId": {
                    "name": TRACE_HEADER,
                    "in": "header",
                    "required": false,
                    "description": "The call's trace id",
                    "schema": {"type": "string", "maxLength": crate::gateway::MAX_TRACE_ID}
                }
            }
        }
    })
}

fn operation(service: &str, method: &Value) -> Value {
    let name = method.get("name").and_then(Value::as_str).unwrap_or_default();
    let doc = method.get("doc").and_then(Value::as_str).unwrap_or_default().trim();
    let summary = doc.lines().next().unwrap_or_default();
    let params = method.get("params").and_then(Value::as_array).cloned().unwrap_or_default();
    let variadic = method.get("variadic").and_then(Value::as_bool).unwrap_or(false);
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut positional = Vec::new();
    for (i, param) in params.iter().enumerate() {
        let param_name = param.get("name").and_then(Value::as_str).unwrap_or_default();
        let schema = open_schema(rewrite_refs(param.get("schema").cloned().unwrap_or(Value::Null)));
        if !accepts_null(&schema) {
            required.push(Value::from(param_name));
        }
        if !(variadic && i + 1 == params.len()) {
            positional.push(schema.clone());
        }
        properties.insert(param_name.to_owned(), schema);
    }
    let named =
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    let mut array = json!({"type": "array", "prefixItems": positional});
    if !variadic {
        array["items"] = Value::Bool(false);
    }
    let returns = open_schema(rewrite_refs(method.pointer("/returns/schema").cloned().unwrap_or(Value::Null)));
    let mut responses = Map::new();
    responses.insert(
        "200".to_owned(),
        json!({"description": "The method's result", "content": {"application/json": {"schema": returns}}}),
    );
    for (status, _) in ERRORS {
        responses.insert((*status).to_owned(), json!({"$ref": format!("#/components/responses/E{status}")}));
    }
    json!({
        "operationId": format!("{service}.{name}"),
        "tags": [service],
        "summary": summary,
        "description": doc,
        "parameters": [
            {"$ref": "#/components/parameters/Deadline"},
            {"$ref": "#/components/parameters/TraceId"}
        ],
        "requestBody": {
            "required": false,
            "content": {"application/json": {"schema": {"oneOf": [named, array]}}}
        },
        "responses": responses
    })
}

/// The error envelope's schema.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "The error's kind: unknown_method, handler, deadline_exceeded, ..."},
                    "message": {"type": "string", "description": "What went wrong, for people"},
                    "data": {
                        "type": "object",
                        "description": "The error's wire form: kind, message and the kind's own fields",
                        "properties": {"kind": {"type": "string"}}
                    }
                }
            }
        }
    })
}

/// A schema as OpenAPI takes it: an object, never a bare `true`/`null`.
fn open_schema(schema: Value) -> Value {
    match schema {
        Value::Object(_) => schema,
        Value::Bool(false) => json!({"not": {}}),
        _ => json!({}),
    }
}

fn accepts_null(schema: &Value) -> bool {
    let is_null = |t: &Value| t.as_str() == Some("null");
    match schema.get("type") {
        Some(Value::String(t)) if t == "null" => true,
        Some(Value::Array(items)) if items.iter().any(is_null) => true,
        _ => ["anyOf", "oneOf"]
            .iter()
            .any(|key| schema.get(*key).and_then(Value::as_array).is_some_and(|alts| alts.iter().any(accepts_null))),
    }
}

/// A definition's name as a component name (`^[a-zA-Z0-9._-]+$`).
fn component_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

/// `schema` with every `$ref` into the descriptions' definitions pointed at the components,
/// and without `$schema` keys (the document's dialect applies).
fn rewrite_refs(schema: Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "$schema")
                .map(|(k, v)| match (k.as_str(), &v) {
                    ("$ref", Value::String(r)) if r.starts_with(DESCRIBE_DEFS) => {
                        let name = component_name(&r[DESCRIBE_DEFS.len()..]);
                        (k, Value::String(format!("{OPENAPI_DEFS}{name}")))
                    }
                    _ => (k, rewrite_refs(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(rewrite_refs).collect()),
        other => other,
    }
}
