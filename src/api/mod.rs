//! The HTTP API (front door of `sluice serve`): applications in, queries managed,
//! results out over WebSockets, metrics for Prometheus, and the dashboard page.
//!
//! Every handler is thin: it parses the request, calls the [`Manager`], and turns the
//! answer into JSON. Errors take one shape, `{error, kind, position?}`, with a 4xx
//! status when the request was wrong and a 5xx only when Sluice (or something behind
//! it) failed; internal details are logged, not shown. [`app`] builds the router so
//! tests can drive it in process.

mod error;
mod metrics;
mod openapi;
mod ws;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::catalog::Change;
use crate::engine::fmt_ts;
use crate::engine::watermark::{Clock, SystemClock};
use crate::runtime::Manager;
use crate::runtime::manager::{QueryState, QueryStatus};
use crate::sql::ObjectKind;
pub use error::ApiError;

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// When set, every route but `/healthz` and the dashboard page needs
    /// `Authorization: Bearer <token>` (WebSockets may pass `?token=`).
    pub token: Option<String>,
    /// Largest HTTP ingest body, bytes.
    pub max_ingest_bytes: usize,
    /// Largest application (SQL file), bytes.
    pub max_sql_bytes: usize,
    /// The server's data directory, where embedded tables live (`GET /tables/…`);
    /// `None`: no embedded tables.
    pub data_dir: Option<std::path::PathBuf>,
    /// Row limit, timeout and memory of `POST /query`.
    pub adhoc: crate::adhoc::Limits,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            token: None,
            max_ingest_bytes: 16 << 20,
            max_sql_bytes: 1 << 20,
            data_dir: None,
            adhoc: crate::adhoc::Limits::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    manager: Arc<Manager>,
    options: Arc<ApiOptions>,
    /// Runs `POST /query` apart from the API's and the streams' threads.
    adhoc: Arc<crate::adhoc::Executor>,
}

/// The whole API as a router.
pub fn app(manager: Arc<Manager>, options: ApiOptions) -> Router {
    let state = AppState {
        manager,
        adhoc: Arc::new(crate::adhoc::Executor::new(options.adhoc.clone())),
        options: Arc::new(options),
    };
    let ingest_limit = state.options.max_ingest_bytes;
    let sql_limit = state.options.max_sql_bytes;
    let protected = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::render))
        .route(
            "/applications",
            post(submit_application)
                .get(list_applications)
                .layer(DefaultBodyLimit::max(sql_limit)),
        )
        .route(
            "/applications/{name}",
            get(get_application)
                .put(put_application)
                .delete(delete_application)
                .layer(DefaultBodyLimit::max(sql_limit)),
        )
        .route("/queries", get(list_queries))
        .route("/queries/{name}", get(get_query).delete(delete_query))
        .route("/queries/{name}/stop", post(stop_query))
        .route("/queries/{name}/start", post(start_query))
        .route("/queries/{name}/ws", get(ws::upgrade))
        .route("/queries/{name}/errors", get(query_errors))
        .route("/streams", get(list_streams))
        .route("/streams/{name}", get(get_stream).delete(delete_stream))
        .route(
            "/streams/{name}/records",
            post(ingest).layer(DefaultBodyLimit::max(ingest_limit)),
        )
        .route("/sinks", get(list_sinks))
        .route("/sinks/{name}", get(get_sink).delete(delete_sink))
        .route("/tables", get(list_tables))
        .route("/tables/{name}/items", get(table_items))
        .route(
            "/query",
            post(adhoc_query).layer(DefaultBodyLimit::max(sql_limit)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.options.token.as_deref() else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // Browsers cannot set headers on a WebSocket: there, accept the token as a
    // parameter (only there, so tokens do not end up in other URLs and logs).
    let param = req
        .uri()
        .path()
        .ends_with("/ws")
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_string)
        });
    let given = bearer.map(str::to_string).or(param);
    if given
        .as_deref()
        .is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Compares without an early exit, so response time does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// `POST /applications[?name=…]`: a SQL file as the body (text/plain) or as a
/// multipart upload (whose file name, without `.sql`, names the application when
/// `name` does not). What it creates belongs to the named application; submitting
/// the same statements again changes nothing and says so (200 instead of 201).
async fn submit_application(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    req: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut name = None;
    for (k, v) in form_pairs(query.as_deref().unwrap_or(""))? {
        match k.as_str() {
            "name" => name = Some(v),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter '{other}'; use name"
                )));
            }
        }
    }
    let (sql, file_name) = read_sql(&state, &headers, req).await?;
    let app = match name.or(file_name) {
        Some(n) => Some(application_name(&n)?),
        None => None,
    };
    let manager = Arc::clone(&state.manager);
    let submitted = app.clone();
    let changes =
        tokio::task::spawn_blocking(move || manager.apply_untrusted(submitted.as_deref(), &sql))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(changes_response(app.as_deref(), &changes))
}

/// `PUT /applications/{name}`: the application's whole text. What is identical
/// keeps running, what changed is replaced, what the text no longer defines is
/// dropped.
async fn put_application(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let app = application_name(&name)?;
    let (sql, _) = read_sql(&state, &headers, req).await?;
    let manager = Arc::clone(&state.manager);
    let target = app.clone();
    let changes =
        tokio::task::spawn_blocking(move || manager.replace_application(&target, &sql, false))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(changes_response(Some(&app), &changes))
}

/// `GET /applications`: every application with its objects, and the persisted
/// entries the last restart could not restore.
async fn list_applications(State(state): State<AppState>) -> Json<Value> {
    let catalog = state.manager.catalog();
    let apps: Vec<Value> = catalog
        .applications
        .keys()
        .map(|name| application_json(&state, &catalog, name, false))
        .collect();
    let skipped: Vec<Value> = state
        .manager
        .skipped()
        .iter()
        .map(|s| json!({"kind": s.kind, "name": s.name, "application": s.app, "reason": s.reason, "sql": s.sql}))
        .collect();
    Json(json!({ "applications": apps, "skipped": skipped }))
}

/// `GET /applications/{name}`: its text, its objects and their state, and what the
/// last submission did.
async fn get_application(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.manager.catalog();
    if !catalog.applications.contains_key(&name) {
        return Err(ApiError::not_found(format!(
            "application '{name}' does not exist"
        )));
    }
    Ok(Json(application_json(&state, &catalog, &name, true)))
}

/// `DELETE /applications/{name}`: drops its queries, sinks and streams (409 when
/// another application still uses one of them).
async fn delete_application(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.manager.catalog().applications.contains_key(&name) {
        return Err(ApiError::not_found(format!(
            "application '{name}' does not exist"
        )));
    }
    let manager = Arc::clone(&state.manager);
    let target = name.clone();
    let changes = tokio::task::spawn_blocking(move || manager.drop_application(&target))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(changes_response(Some(&name), &changes).1.0))
}

fn application_json(
    state: &AppState,
    catalog: &crate::catalog::Catalog,
    name: &str,
    with_sql: bool,
) -> Value {
    let mut objects = Vec::new();
    for kind in [ObjectKind::Stream, ObjectKind::Sink, ObjectKind::Query] {
        for object in catalog.objects_of(name, kind) {
            let status = match kind {
                ObjectKind::Query => state
                    .manager
                    .query_state(&object)
                    .map(|q| json!(query_status(&q).0)),
                _ => None,
            };
            let mut o = json!({"kind": kind, "name": object});
            if let Some(s) = status {
                o["status"] = s;
            }
            objects.push(o);
        }
    }
    let mut v = json!({ "name": name, "objects": objects });
    if let Some((at, changes)) = state.manager.last_change(name) {
        let mut last = changes_json(&changes);
        last["at"] = json!(fmt_ts(at));
        v["last_change"] = last;
    }
    if with_sql {
        v["sql"] = json!(catalog.applications.get(name).map(|a| a.sql.as_str()));
    }
    v
}

/// An application's name: what a file stem or a URL path segment may hold.
fn application_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let name = name.strip_suffix(".sql").unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "'{name}' is not a valid application name: 1 to 128 letters, digits, '_', '-' or '.'"
        )));
    }
    Ok(name.to_string())
}

/// The SQL of a request: its body (text/plain, application/sql) or its first
/// multipart file, and that file's name.
async fn read_sql(
    state: &AppState,
    headers: &HeaderMap,
    req: Request,
) -> Result<(String, Option<String>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        // The first field is the file, whatever its name.
        let field = form
            .next_field()
            .await
            .map_err(multipart_error)?
            .ok_or_else(|| ApiError::bad_request("the form has no file"))?;
        let file_name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(multipart_error)?;
        let sql = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("the SQL file is not UTF-8"))?;
        Ok((sql, file_name))
    } else if content_type.starts_with("text/") || content_type.starts_with("application/sql") {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?;
        let sql = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the SQL is not UTF-8"))?;
        Ok((sql, None))
    } else {
        Err(ApiError::unsupported_media_type(
            "send the SQL as text/plain, or as a multipart/form-data file upload",
        ))
    }
}

fn changes_json(changes: &[Change]) -> Value {
    let mut v = json!({"created": [], "replaced": [], "dropped": [], "unchanged": []});
    for c in changes {
        if let Some(list) = v[c.verb()].as_array_mut() {
            list.push(json!({"kind": c.kind(), "name": c.name()}));
        }
    }
    v
}

/// What a submission did: 201 when it created something, 200 otherwise, with a
/// sentence for the one case that surprises (nothing changed).
fn changes_response(app: Option<&str>, changes: &[Change]) -> (StatusCode, Json<Value>) {
    let mut body = changes_json(changes);
    body["application"] = json!(app);
    let changed = changes.iter().any(|c| !matches!(c, Change::Unchanged(..)));
    body["changed"] = json!(changed);
    if !changed {
        body["message"] = json!("identical to what exists: nothing changed");
    }
    let created = changes.iter().any(|c| matches!(c, Change::Created(..)));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body))
}

/// A failed upload is the client's: too large (413) or malformed (400), never a 5xx.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::from_rejection(status, e.body_text())
}

/// 404 for a name that is not in the catalog, with the name most likely meant
/// (names are case-sensitive: `/streams/weatherstream` is not `WEATHERSTREAM`).
fn missing(state: &AppState, kind: ObjectKind, name: &str) -> ApiError {
    let catalog = state.manager.catalog();
    let hint = crate::error::name_hint(name, catalog.names(kind));
    ApiError::not_found(format!("{kind} '{name}' does not exist{hint}"))
}

/// A query's status word, and the reason when it failed.
fn query_status(q: &QueryState) -> (&'static str, Option<String>) {
    match q.status() {
        QueryStatus::Running => ("running", None),
        QueryStatus::Stopped => ("stopped", None),
        QueryStatus::Finished => ("finished", None),
        QueryStatus::Failed(e) => ("failed", Some(e)),
    }
}

pub(crate) fn query_json(state: &AppState, q: &QueryState) -> Value {
    let now = SystemClock.now_ms();
    let (status, error) = query_status(q);
    let wm = q.watermark().filter(|&w| w != i64::MAX);
    // Only a running query can be behind, and only while input waits for it (see
    // docs/api.md): a quiet or stopped query's old watermark is not lag.
    let lag = match q.status() {
        QueryStatus::Running => state
            .manager
            .stream_state(&q.stream)
            .and_then(|s| s.lag_ms(now)),
        _ => None,
    };
    json!({
        "name": q.name,
        "sql": q.sql,
        "stream": q.stream,
        "sink": q.sink,
        "status": status,
        "error": error,
        "records_in": q.rows_in.load(Ordering::Relaxed),
        "records_out": q.rows_out.load(Ordering::Relaxed),
        "errors": q.errors.load(Ordering::Relaxed),
        "late": q.late.load(Ordering::Relaxed),
        "watermark": wm.map(fmt_ts),
        "lag_ms": lag,
        "state_bytes": q.state_bytes.load(Ordering::Relaxed),
    })
}

async fn list_queries(State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(
        state
            .manager
            .query_states()
            .iter()
            .map(|q| query_json(&state, q))
            .collect(),
    ))
}

fn find_query(state: &AppState, name: &str) -> Result<Arc<QueryState>, ApiError> {
    state
        .manager
        .query_state(name)
        .ok_or_else(|| missing(state, ObjectKind::Query, name))
}

async fn get_query(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let q = find_query(&state, &name)?;
    Ok(Json(query_json(&state, &q)))
}

/// `GET /queries/{name}/errors`: the newest records the query sent to its error
/// output (at most [`RECENT_ERRORS`](crate::runtime::manager::RECENT_ERRORS)),
/// newest first, with the counters that say how many there were in all.
async fn query_errors(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    use crate::runtime::manager::{RECENT_ERRORS, RECENT_PAYLOAD_BYTES};
    let q = find_query(&state, &name)?;
    let records: Vec<Value> = q
        .recent_errors
        .newest_first()
        .into_iter()
        .map(|e| {
            json!({
                "kind": e.kind,
                "reason": e.reason,
                "truncated": e.payload_bytes > e.payload.len(),
                "payload_bytes": e.payload_bytes,
                "payload": e.payload,
                "arrival_time": fmt_ts(e.arrival_ms),
            })
        })
        .collect();
    Ok(Json(json!({
        "query": q.name,
        "errors": q.errors.load(Ordering::Relaxed),
        "late": q.late.load(Ordering::Relaxed),
        "kept": RECENT_ERRORS,
        "payload_limit": RECENT_PAYLOAD_BYTES,
        "records": records,
    })))
}

async fn stop_query(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let q = find_query(&state, &name)?;
    state.manager.stop_query(&name)?;
    Ok(Json(query_json(&state, &q)))
}

async fn start_query(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let q = find_query(&state, &name)?;
    state.manager.start_query(&name)?;
    Ok(Json(query_json(&state, &q)))
}

async fn delete_query(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    find_query(&state, &name)?;
    state.manager.drop_object(ObjectKind::Query, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

fn stream_json(state: &AppState, def: &crate::catalog::StreamDef) -> Value {
    let columns: Vec<Value> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name,
                "type": c.data_type.to_string(),
                "nullable": c.nullable && Some(i) != def.event_time.as_ref().map(|_| def.info.time_index),
                "path": c.path.join("."),
            })
        })
        .collect();
    let source = match state.manager.stream_state(&def.name) {
        Some(s) => json!({
            "status": s.status.lock().map(|s| s.clone()).unwrap_or_default(),
            "records_in": s.records_in.load(Ordering::Relaxed),
            "decode_errors": s.decode_errors.load(Ordering::Relaxed),
            "restarts": s.restarts.load(Ordering::Relaxed),
            "chunks": s.chunks.load(Ordering::Relaxed),
            "connection": s.health.as_ref().map(|h| h.to_json()),
        }),
        None => json!({"status": "idle", "records_in": 0, "decode_errors": 0, "chunks": 0}),
    };
    json!({
        "name": def.name,
        "sql": def.sql,
        "connector": def.connector,
        "columns": columns,
        "event_time": def.event_time,
        "watermark_delay_ms": def.watermark_delay_ms,
        "idle_timeout_ms": def.idle_timeout_ms,
        "source": source,
    })
}

async fn list_streams(State(state): State<AppState>) -> Json<Value> {
    let catalog = state.manager.catalog();
    Json(Value::Array(
        catalog
            .streams
            .values()
            .map(|s| stream_json(&state, s))
            .collect(),
    ))
}

async fn get_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.manager.catalog();
    let def = catalog
        .streams
        .get(&name)
        .ok_or_else(|| missing(&state, ObjectKind::Stream, &name))?;
    Ok(Json(stream_json(&state, def)))
}

async fn delete_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.manager.catalog().streams.contains_key(&name) {
        return Err(missing(&state, ObjectKind::Stream, &name));
    }
    state
        .manager
        .drop_object(ObjectKind::Stream, &name)
        .map_err(ApiError::conflict_if_user)?;
    Ok(StatusCode::NO_CONTENT)
}

fn sink_json(state: &AppState, def: &crate::catalog::SinkDef) -> Value {
    let status = match state.manager.sink_state(&def.name) {
        Some(s) => json!({
            "status": s.status.lock().map(|s| s.clone()).unwrap_or_default(),
            "batches": s.batches.load(Ordering::Relaxed),
            "rows": s.rows.load(Ordering::Relaxed),
            "connection": s.health.as_ref().map(|h| h.to_json()),
        }),
        None => json!({"status": "idle", "batches": 0, "rows": 0}),
    };
    json!({ "name": def.name, "sql": def.sql, "connector": def.connector, "writer": status })
}

async fn list_sinks(State(state): State<AppState>) -> Json<Value> {
    let catalog = state.manager.catalog();
    Json(Value::Array(
        catalog
            .sinks
            .values()
            .map(|s| sink_json(&state, s))
            .collect(),
    ))
}

async fn get_sink(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.manager.catalog();
    let def = catalog
        .sinks
        .get(&name)
        .ok_or_else(|| missing(&state, ObjectKind::Sink, &name))?;
    Ok(Json(sink_json(&state, def)))
}

async fn delete_sink(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.manager.catalog().sinks.contains_key(&name) {
        return Err(missing(&state, ObjectKind::Sink, &name));
    }
    state
        .manager
        .drop_object(ObjectKind::Sink, &name)
        .map_err(ApiError::conflict_if_user)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /streams/{name}/records`: a JSON array or NDJSON body into an `http` stream.
async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // Too large (413) in the API's error shape, not axum's plain text.
    let body = body.map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?;
    if !state.manager.catalog().streams.contains_key(&name) {
        return Err(missing(&state, ObjectKind::Stream, &name));
    }
    let report = state
        .manager
        .ingest(&name, body.to_vec())
        .await
        .map_err(ApiError::conflict_if_user)?;
    let rejected: Vec<Value> = report
        .rejected
        .iter()
        .map(|e| json!({"kind": e.kind.as_str(), "reason": e.reason, "payload": e.payload}))
        .collect();
    Ok(Json(json!({
        "accepted": report.accepted,
        "rejected": rejected.len(),
        "errors": rejected,
    })))
}

/// `GET /tables`: what ad hoc SQL can query (archive sinks and embedded tables).
async fn list_tables(State(state): State<AppState>) -> Json<Value> {
    let sources = state.manager.adhoc_sources();
    Json(Value::Array(
        crate::adhoc::table_names(&sources)
            .into_iter()
            .map(|(name, kind)| json!({"name": name, "kind": kind}))
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    limit: Option<usize>,
    /// json (default), csv or arrow; else taken from the Accept header.
    #[serde(default)]
    format: Option<String>,
}

/// `POST /query {"sql", "limit"?, "format"?}`: one read-only statement over archives
/// and embedded tables, answered as JSON, CSV or Arrow IPC.
async fn adhoc_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    use crate::adhoc::{AdhocError, OutputFormat};
    let req: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"sql\": \"SELECT …\", \"limit\"?: n, \"format\"?: \"json|csv|arrow\"}}: {e}"
        ))
    })?;
    let format = match req.format.as_deref() {
        Some(f) => OutputFormat::parse(f)?,
        None => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("text/csv") {
                OutputFormat::Csv
            } else if accept.contains("application/vnd.apache.arrow.stream") {
                OutputFormat::Arrow
            } else {
                OutputFormat::Json
            }
        }
    };
    if format == OutputFormat::Table {
        return Err(ApiError::bad_request("format must be json, csv or arrow"));
    }
    let sources = state.manager.adhoc_sources();
    let out = match state.adhoc.run(&req.sql, req.limit, sources).await {
        Ok(out) => out,
        Err(AdhocError::Busy {
            message,
            retry_after,
        }) => return Err(ApiError::busy(message, retry_after)),
        Err(AdhocError::Query(e)) => return Err(e.into()),
    };
    let body = out.encode(format)?;
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::HeaderName::from_static("x-sluice-row-count"),
                out.rows.to_string(),
            ),
            (
                header::HeaderName::from_static("x-sluice-truncated"),
                out.truncated.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Most items one `GET /tables/{name}/items` returns.
const MAX_ITEMS: usize = 10_000;

/// `GET /tables/{name}/items?pk=…&sk_from=…&sk_to=…&limit=…`: items of an embedded
/// table (`table` sink), in key order; the sort-key range is inclusive. Without `pk`,
/// every partition (a scan), up to `limit` (default and most: 10000).
async fn table_items(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    use crate::tables::{self, ItemQuery, KeyValue};
    let dir = state.options.data_dir.as_ref();
    let Some(dir) = dir.filter(|d| tables::exists(d, &name)) else {
        return Err(ApiError::not_found(format!("no table '{name}'")));
    };
    let mut q = ItemQuery::default();
    let pairs = form_pairs(query.as_deref().unwrap_or(""))?;
    for (k, v) in pairs {
        match k.as_str() {
            "pk" => q.pk = Some(KeyValue::parse(&v)),
            "sk_from" => q.sk_from = Some(KeyValue::parse(&v)),
            "sk_to" => q.sk_to = Some(KeyValue::parse(&v)),
            "limit" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_ITEMS).contains(n));
                q.limit = Some(n.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "parameter 'limit' must be a whole number from 1 to {MAX_ITEMS}, got '{v}'"
                    ))
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter '{other}'; use pk, sk_from, sk_to, limit"
                )));
            }
        }
    }
    q.limit = Some(q.limit.unwrap_or(MAX_ITEMS));
    let table = tables::open(dir, &name)?;
    let keys = table.keys()?;
    let sort_key = keys.as_ref().and_then(|k| k.sort_key.clone());
    if sort_key.is_none() && (q.sk_from.is_some() || q.sk_to.is_some()) {
        return Err(ApiError::bad_request(format!(
            "table '{name}' has no sort key: sk_from and sk_to do not apply"
        )));
    }
    let items = tokio::task::spawn_blocking(move || table.query(&q))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({
        "table": name,
        "partition_key": keys.as_ref().map(|k| k.partition_key.clone()),
        "sort_key": sort_key,
        "count": items.len(),
        "items": items,
    })))
}

/// `a=1&b=x%20y` as decoded pairs; a parameter given twice is refused.
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::bad_request(format!(
                "parameter '{k}' is given twice"
            )));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("malformed percent-encoding in '{s}'"));
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}
