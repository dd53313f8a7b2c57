//! `GET /openapi.json`: the API described in OpenAPI 3.0 (what schemathesis fuzzes).

use axum::Json;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn name_param(what: &str) -> Value {
    json!({ "name": "name", "in": "path", "required": true, "description": format!("the {what}'s name"), "schema": { "type": "string" } })
}

pub(super) async fn document() -> Json<Value> {
    let query = json!({ "$ref": "#/components/schemas/Query" });
    let secured = json!([{ "bearer": [] }]);
    let object_routes = |what: &str, schema: &str| -> (Value, Value) {
        let list = json!({ "get": {
            "summary": format!("List {what}s"),
            "security": secured,
            "responses": {
                "200": json_response("all of them", json!({ "type": "array", "items": { "$ref": schema } })),
                "401": error_response("missing or wrong token"),
            }
        }});
        let one = json!({
            "get": {
                "summary": format!("One {what}"),
                "security": secured,
                "parameters": [name_param(what)],
                "responses": {
                    "200": json_response("found", json!({ "$ref": schema })),
                    "401": error_response("missing or wrong token"),
                    "404": error_response("no such name"),
                }
            },
            "delete": {
                "summary": format!("Drop a {what}"),
                "security": secured,
                "parameters": [name_param(what)],
                "responses": {
                    "204": { "description": "dropped" },
                    "401": error_response("missing or wrong token"),
                    "404": error_response("no such name"),
                    "409": error_response("in use by a query"),
                }
            }
        });
        (list, one)
    };
    let (streams, stream) = object_routes("stream", "#/components/schemas/Stream");
    let (sinks, sink) = object_routes("sink", "#/components/schemas/Sink");
    let changes = json!({ "$ref": "#/components/schemas/Changes" });
    let sql_body = json!({ "required": true, "content": {
        "text/plain": { "schema": { "type": "string" } },
        "application/sql": { "schema": { "type": "string" } },
        "multipart/form-data": { "schema": { "type": "object", "properties": { "file": { "type": "string", "format": "binary" } } } }
    } });
    let applications = json!({
        "post": {
            "summary": "Submit statements (a SQL file), as application `name` when given: all apply, or none; identical ones change nothing",
            "security": secured,
            "parameters": [{ "name": "name", "in": "query", "required": false, "description": "the application (letters, digits, '_', '-', '.'); a multipart upload's file name otherwise", "schema": { "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$" } }],
            "requestBody": sql_body.clone(),
            "responses": {
                "200": json_response("nothing created (identical to what exists, or only replaced or dropped)", changes.clone()),
                "201": json_response("applied, something created", changes.clone()),
                "400": error_response("invalid SQL or options, with the position"),
                "401": error_response("missing or wrong token"),
                "409": error_response("a name exists with a different definition, or is in use"),
                "413": error_response("too large"),
                "415": error_response("not text/plain or multipart")
            }
        },
        "get": { "summary": "List applications, and persisted entries a restart could not restore", "security": secured,
            "responses": { "200": json_response("the applications", json!({ "type": "object", "required": ["applications", "skipped"], "properties": {
                "applications": { "type": "array", "items": { "$ref": "#/components/schemas/Application" } },
                "skipped": { "type": "array", "items": { "type": "object" } }
            } })), "401": error_response("missing or wrong token") } }
    });
    let application = json!({
        "get": { "summary": "One application: its text, objects and last change", "security": secured, "parameters": [name_param("application")],
            "responses": { "200": json_response("found", json!({ "$ref": "#/components/schemas/Application" })), "401": error_response("missing or wrong token"), "404": error_response("no such application") } },
        "put": {
            "summary": "Replace an application with its whole text: identical objects stay, changed ones are replaced, missing ones dropped",
            "security": secured,
            "parameters": [name_param("application")],
            "requestBody": sql_body,
            "responses": {
                "200": json_response("applied, nothing created", changes.clone()),
                "201": json_response("applied, something created", changes.clone()),
                "400": error_response("invalid SQL, options or name"),
                "401": error_response("missing or wrong token"),
                "409": error_response("an object belongs to another application, or is in use"),
                "413": error_response("too large"),
                "415": error_response("not text/plain or multipart")
            }
        },
        "delete": { "summary": "Drop an application's queries, sinks and streams", "security": secured, "parameters": [name_param("application")],
            "responses": { "200": json_response("dropped", changes), "401": error_response("missing or wrong token"), "404": error_response("no such application"), "409": error_response("another application uses one of its objects") } }
    });
    let adhoc = json!({ "post": {
                "summary": "One read-only SQL statement over archives and embedded tables (JSON, CSV or Arrow IPC)",
                "security": secured,
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["sql"], "additionalProperties": false, "properties": {
                        "sql": { "type": "string" },
                        "limit": { "type": "integer", "minimum": 0, "maximum": 100000 },
                        "format": { "type": "string", "enum": ["json", "csv", "arrow"] }
                    }
                } } } },
                "responses": {
                    "200": { "description": "the rows", "content": {
                        "application/json": { "schema": { "type": "object", "required": ["columns", "rows", "row_count", "truncated"], "properties": {
                            "columns": { "type": "array", "items": { "type": "object" } },
                            "rows": { "type": "array", "items": { "type": "object" } },
                            "row_count": { "type": "integer" }, "truncated": { "type": "boolean" },
                            "elapsed_ms": { "type": "number" }
                        } } },
                        "text/csv": { "schema": { "type": "string" } },
                        "application/vnd.apache.arrow.stream": { "schema": { "type": "string", "format": "binary" } }
                    } },
                    "400": error_response("not a read-only query, bad SQL (with its position), over a limit"),
                    "401": error_response("missing or wrong token"),
                    "503": error_response("a store could not be read, or every ad hoc query slot and queue place is taken (kind busy, with Retry-After)")
                }
            } });
    let table_items = json!({ "get": {
                "summary": "Items of an embedded table ('table' sink), in key order; the sort-key range is inclusive",
                "security": secured,
                "parameters": [
                    name_param("table"),
                    { "name": "pk", "in": "query", "required": false, "description": "partition key (all partitions when absent)", "schema": { "type": "string" } },
                    { "name": "sk_from", "in": "query", "required": false, "description": "smallest sort key", "schema": { "type": "string" } },
                    { "name": "sk_to", "in": "query", "required": false, "description": "largest sort key", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "required": false, "description": "most items (1 to 10000, default 10000)", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 } }
                ],
                "responses": {
                    "200": json_response("the items", json!({ "type": "object", "required": ["table", "count", "items"], "properties": {
                        "table": { "type": "string" }, "partition_key": { "type": "string", "nullable": true },
                        "sort_key": { "type": "string", "nullable": true }, "count": { "type": "integer" },
                        "items": { "type": "array", "items": { "type": "object" } }
                    } })),
                    "400": error_response("bad parameter"),
                    "401": error_response("missing or wrong token"),
                    "404": error_response("no such table")
                }
            } });
    Json(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Streaming SQL for sensor data: submit applications, manage queries, ingest records, watch results."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "kind"],
                    "properties": {
                        "error": { "type": "string" },
                        "kind": { "type": "string" },
                        "position": { "type": "object", "properties": { "line": { "type": "integer" }, "column": { "type": "integer" } } }
                    }
                },
                "Query": {
                    "type": "object",
                    "required": ["name", "sql", "stream", "status", "records_in", "records_out", "errors", "late"],
                    "properties": {
                        "name": { "type": "string" },
                        "sql": { "type": "string" },
                        "stream": { "type": "string" },
                        "sink": { "type": "string", "nullable": true },
                        "status": { "type": "string", "enum": ["running", "stopped", "finished", "failed"] },
                        "error": { "type": "string", "nullable": true },
                        "records_in": { "type": "integer" },
                        "records_out": { "type": "integer" },
                        "errors": { "type": "integer" },
                        "late": { "type": "integer" },
                        "watermark": { "type": "string", "nullable": true },
                        "lag_ms": { "type": "integer", "nullable": true },
                        "state_bytes": { "type": "integer" }
                    }
                },
                "QueryErrors": { "type": "object", "required": ["query", "errors", "late", "kept", "payload_limit", "records"], "properties": {
                    "query": { "type": "string" },
                    "errors": { "type": "integer" },
                    "late": { "type": "integer" },
                    "kept": { "type": "integer" },
                    "payload_limit": { "type": "integer" },
                    "records": { "type": "array", "items": { "type": "object",
                        "required": ["kind", "reason", "payload", "payload_bytes", "truncated", "arrival_time"],
                        "properties": {
                            "kind": { "type": "string", "enum": ["malformed", "schema", "oversized", "late", "eval"] },
                            "reason": { "type": "string" },
                            "payload": { "type": "string" },
                            "payload_bytes": { "type": "integer" },
                            "truncated": { "type": "boolean" },
                            "arrival_time": { "type": "string" }
                        } } }
                } },
                "Stream": { "type": "object", "required": ["name", "sql", "connector", "columns"], "properties": {
                    "name": { "type": "string" }, "sql": { "type": "string" }, "connector": { "type": "string" },
                    "columns": { "type": "array", "items": { "type": "object" } },
                    "event_time": { "type": "string", "nullable": true },
                    "source": { "type": "object" }
                } },
                "Sink": { "type": "object", "required": ["name", "sql", "connector"], "properties": {
                    "name": { "type": "string" }, "sql": { "type": "string" }, "connector": { "type": "string" },
                    "writer": { "type": "object" }
                } },
                "Changes": { "type": "object", "properties": {
                    "application": { "type": "string", "nullable": true },
                    "changed": { "type": "boolean" },
                    "message": { "type": "string" },
                    "created": { "type": "array", "items": { "type": "object" } },
                    "replaced": { "type": "array", "items": { "type": "object" } },
                    "dropped": { "type": "array", "items": { "type": "object" } },
                    "unchanged": { "type": "array", "items": { "type": "object" } }
                } },
                "Application": { "type": "object", "required": ["name", "objects"], "properties": {
                    "name": { "type": "string" },
                    "sql": { "type": "string" },
                    "objects": { "type": "array", "items": { "type": "object" } },
                    "last_change": { "type": "object" }
                } },
                "IngestReport": { "type": "object", "required": ["accepted", "rejected", "errors"], "properties": {
                    "accepted": { "type": "integer" }, "rejected": { "type": "integer" },
                    "errors": { "type": "array", "items": { "type": "object" } }
                } }
            }
        },
        "paths": {
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": json_response("alive", json!({ "type": "object" })) } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": secured,
                "responses": { "200": { "description": "text exposition", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": error_response("missing or wrong token") } } },
            "/applications": applications,
            "/applications/{name}": application,
            "/queries": { "get": { "summary": "List queries", "security": secured,
                "responses": { "200": json_response("all queries", json!({ "type": "array", "items": query })), "401": error_response("missing or wrong token") } } },
            "/queries/{name}": {
                "get": { "summary": "One query", "security": secured, "parameters": [name_param("query")],
                    "responses": { "200": json_response("found", query.clone()), "401": error_response("missing or wrong token"), "404": error_response("no such query") } },
                "delete": { "summary": "Stop and drop a query", "security": secured, "parameters": [name_param("query")],
                    "responses": { "204": { "description": "dropped" }, "401": error_response("missing or wrong token"), "404": error_response("no such query") } }
            },
            "/queries/{name}/stop": { "post": { "summary": "Stop a query", "security": secured, "parameters": [name_param("query")],
                "responses": { "200": json_response("stopped", query.clone()), "401": error_response("missing or wrong token"), "404": error_response("no such query") } } },
            "/queries/{name}/start": { "post": { "summary": "Start a stopped query", "security": secured, "parameters": [name_param("query")],
                "responses": { "200": json_response("running", query.clone()), "400": error_response("cannot start"), "401": error_response("missing or wrong token"), "404": error_response("no such query") } } },
            "/queries/{name}/errors": { "get": { "summary": "The newest records of the query's error output (at most 50), newest first, with their reasons", "security": secured, "parameters": [name_param("query")],
                "responses": { "200": json_response("the records", json!({ "$ref": "#/components/schemas/QueryErrors" })), "401": error_response("missing or wrong token"), "404": error_response("no such query") } } },
            "/queries/{name}/ws": { "get": { "summary": "WebSocket of the query's output: latest results, then live ones", "security": secured, "parameters": [name_param("query")],
                "responses": { "101": { "description": "switching to WebSocket" }, "400": error_response("not a WebSocket request"), "401": error_response("missing or wrong token"), "404": error_response("no such query") } } },
            "/streams": streams,
            "/streams/{name}": stream,
            "/streams/{name}/records": { "post": {
                "summary": "Ingest records into an 'http' stream: a JSON array or NDJSON",
                "security": secured,
                "parameters": [name_param("stream")],
                "requestBody": { "required": true, "content": {
                    "application/json": { "schema": { "type": "array", "items": { "type": "object" } } },
                    "application/x-ndjson": { "schema": { "type": "string" } }
                } },
                "responses": {
                    "200": json_response("how many records were accepted and rejected, and why", json!({ "$ref": "#/components/schemas/IngestReport" })),
                    "401": error_response("missing or wrong token"),
                    "404": error_response("no such stream"),
                    "409": error_response("not an http stream, or no query runs on it"),
                    "413": error_response("body too large")
                }
            } },
            "/sinks": sinks,
            "/sinks/{name}": sink,
            "/tables": { "get": {
                "summary": "What ad hoc SQL can query: archive sinks and embedded tables",
                "security": secured,
                "responses": {
                    "200": json_response("the tables", json!({ "type": "array", "items": { "type": "object", "required": ["name", "kind"], "properties": {
                        "name": { "type": "string" }, "kind": { "type": "string", "enum": ["archive", "table"] }
                    } } })),
                    "401": error_response("missing or wrong token")
                }
            } },
            "/query": adhoc,
            "/tables/{name}/items": table_items
        }
    }))
}
