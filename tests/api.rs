//! The HTTP API through the real router (`sluice::api::app`), in process with
//! `tower::ServiceExt::oneshot` and over a real socket for WebSockets: applications are
//! all-or-nothing with positioned errors, queries/streams/sinks are managed with the
//! right status codes (404, 409), HTTP ingest reports what it accepted and rejected,
//! WebSockets send the latest results then live ones and drop a client that stops
//! reading without slowing the query, `/metrics` has per-query counters, the token
//! guards every route but `/healthz` and `/`, the query cap holds, and SQL that would
//! read or write local files is refused with nothing created.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use serde_json::{Value, json};
use sluice::api::{ApiOptions, app};
use sluice::runtime::manager::QueryStatus;
use sluice::runtime::{Manager, ManagerOptions};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tower::ServiceExt;

/// A router over a fresh in-memory manager.
struct Api {
    router: axum::Router,
    manager: Arc<Manager>,
    token: Option<String>,
}

fn manager_options() -> ManagerOptions {
    ManagerOptions {
        tick: Duration::from_millis(20),
        ..Default::default()
    }
}

impl Api {
    fn new() -> Self {
        Self::with(manager_options(), ApiOptions::default())
    }

    fn with(options: ManagerOptions, api: ApiOptions) -> Self {
        let manager = Manager::new(options);
        let token = api.token.clone();
        Api {
            router: app(Arc::clone(&manager), api),
            manager,
            token,
        }
    }

    /// One request; the body is parsed as JSON when it is JSON, else kept as a string.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, Body::empty()).await
    }

    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call("DELETE", uri, None, Body::empty()).await
    }

    async fn post(&self, uri: &str) -> (StatusCode, Value) {
        self.call("POST", uri, None, Body::empty()).await
    }

    async fn submit(&self, sql: &str) -> (StatusCode, Value) {
        self.call("POST", "/applications", Some("text/plain"), sql.to_string())
            .await
    }

    async fn submit_ok(&self, sql: &str) -> Value {
        let (status, body) = self.submit(sql).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn ingest(&self, stream: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/streams/{stream}/records"),
            Some(content_type),
            body.to_string(),
        )
        .await
    }

    async fn query(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/queries/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Names listed by `GET /{what}`.
    async fn names(&self, what: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/{what}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn assert_empty(&self) {
        for what in ["streams", "sinks", "queries"] {
            assert_eq!(
                self.names(what).await,
                Vec::<String>::new(),
                "{what} should be empty"
            );
        }
    }

    /// Serves the router on a real socket.
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// Serves the router on a socket whose connections have small send buffers, so a
    /// client that stops reading blocks the server's sends after a few messages.
    async fn serve_small_buffers(&self) -> SocketAddr {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(SMALL_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }
}

const SMALL_BUFFER: u32 = 32 * 1024;

/// Polls `f` until it yields a value, failing after `timeout` (also used by
/// tests/redis_sink.rs).
pub(crate) async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HTTP_STREAM: &str = "CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,\n\
     WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');\n";

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no kind in {body}")),
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {body}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_are_all_or_nothing_with_positioned_errors() {
    let api = Api::new();
    // The fifth line names a field that does not exist: nothing of the first three
    // statements may be created.
    let bad = format!(
        "{HTTP_STREAM}CREATE SINK out WITH (connector = 'stdout');\n\
         CREATE QUERY q AS INSERT INTO out\nSELECT deviceId, temp FROM r;\n"
    );
    let (status, body) = api.submit(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (kind, message) = error_of(&body);
    assert_eq!(kind, "invalid");
    assert!(message.contains("temp"), "{body}");
    assert_eq!(body["position"], json!({"line": 5, "column": 18}), "{body}");
    api.assert_empty().await;

    // A bad option in the first statement: its position too.
    let (status, body) = api
        .submit("CREATE STREAM s (x INT) WITH (connector = 'http', colour = 'red');")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).1.contains("colour"), "{body}");
    assert_eq!(body["position"]["line"], 1, "{body}");
    api.assert_empty().await;

    // The same application without the mistake applies entirely.
    let good = bad.replace("temp FROM", "temperature FROM");
    let body = api.submit_ok(&good).await;
    assert_eq!(
        body["created"],
        json!([{"kind": "stream", "name": "r"}, {"kind": "sink", "name": "out"}, {"kind": "query", "name": "q"}]),
        "{body}"
    );
    assert_eq!(api.names("streams").await, ["r"]);
    assert_eq!(api.names("sinks").await, ["out"]);
    assert_eq!(api.names("queries").await, ["q"]);
    assert_eq!(api.query("q").await["status"], "running");

    // Submitting it again changes nothing and says so (200, not 201), comments and
    // layout notwithstanding.
    let (status, body) = api
        .submit(&format!("-- again\n{}", good.replace("\n", "\n  ")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    assert_eq!(
        body["message"], "identical to what exists: nothing changed",
        "{body}"
    );
    assert_eq!(body["unchanged"].as_array().unwrap().len(), 3, "{body}");
    // A name defined differently is a conflict (409) at its position, and nothing
    // of the submission is created.
    let (status, body) = api
        .submit(&format!(
            "CREATE SINK other WITH (connector = 'stdout');\n{}",
            good.replace("temperature FROM", "temperature * 2 AS temperature FROM")
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (kind, message) = error_of(&body);
    assert_eq!(kind, "conflict");
    assert!(
        message.contains("query 'q' already exists with a different definition")
            && message.contains("CREATE OR REPLACE QUERY"),
        "{body}"
    );
    assert_eq!(body["position"], json!({"line": 5, "column": 1}), "{body}");
    assert_eq!(api.names("sinks").await, ["out"]);
    let (status, body) = api
        .submit(
            "CREATE SINK IF NOT EXISTS out WITH (connector = 'redis', url = 'redis://elsewhere');",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["unchanged"],
        json!([{"kind": "sink", "name": "out"}]),
        "{body}"
    );
    assert_eq!(body["created"], json!([]), "{body}");

    // DROP in an application reports what it dropped (200: nothing was created).
    let (status, body) = api.submit("DROP QUERY q; DROP SINK out;").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["dropped"],
        json!([{"kind": "query", "name": "q"}, {"kind": "sink", "name": "out"}]),
        "{body}"
    );
    assert_eq!(api.names("queries").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_arrive_as_text_or_multipart_within_the_size_limit() {
    let api = Api::with(
        manager_options(),
        ApiOptions {
            max_sql_bytes: 4096,
            ..Default::default()
        },
    );
    // multipart/form-data, as a browser's file upload sends it.
    let boundary = "sluice-test-boundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"app.sql\"\r\n\
         Content-Type: application/sql\r\n\r\n{HTTP_STREAM}CREATE QUERY m AS SELECT deviceId FROM r;\r\n--{boundary}--\r\n"
    );
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            multipart,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(api.names("queries").await, ["m"]);

    // application/sql is text too; a missing content type is taken as text.
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some("application/sql"),
            "CREATE SINK a WITH (connector = 'stdout');",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            None,
            "CREATE SINK b WITH (connector = 'stdout');",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(api.names("sinks").await, ["a", "b"]);

    // Anything else is refused with 415, not parsed.
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some("application/json"),
            "CREATE SINK c WITH (connector = 'stdout');",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(error_of(&body).0, "unsupported_media_type");
    // Bytes that are not UTF-8: 400.
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some("text/plain"),
            vec![0xffu8, 0xfe, b';'],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A form without a file: 400.
    let empty = format!("--{boundary}--\r\n");
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            empty,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Over the limit: 413 in the API's error shape, whichever way it is sent.
    let big = format!(
        "CREATE SINK big WITH (connector = 'stdout'); -- {}\n",
        "x".repeat(8192)
    );
    let (status, body) = api.submit(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_of(&body).0, "too_large");
    let big_form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.sql\"\r\n\r\n{big}\r\n--{boundary}--\r\n"
    );
    let (status, body) = api
        .call(
            "POST",
            "/applications",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            big_form,
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_of(&body).0, "too_large");
    assert_eq!(api.names("sinks").await, ["a", "b"]);
}

/// Records into the test's `http` stream `r`, answered 200.
async fn ingest_ok(api: &Api, rows: &str) {
    let (status, body) = api.ingest("r", "application/json", rows).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_are_named_replaced_listed_and_deleted() {
    let api = Api::new();
    let v1 = format!(
        "{HTTP_STREAM}-- hot readings\n\
         CREATE QUERY hot AS SELECT deviceId, temperature FROM r WHERE temperature > 50;\n\
         CREATE QUERY cold AS SELECT deviceId FROM r WHERE temperature < 0;\n"
    );
    let (status, body) = api
        .call(
            "POST",
            "/applications?name=climate",
            Some("application/sql"),
            v1.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["application"], "climate", "{body}");
    ingest_ok(&api, r#"[{"deviceId": 1, "temperature": 60, "ts": 1}]"#).await;
    assert_eq!(api.query("hot").await["records_out"], 1);

    // The same text under PUT: nothing changes, the queries keep their counters.
    let (status, body) = api
        .call(
            "PUT",
            "/applications/climate",
            Some("text/plain"),
            v1.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    assert_eq!(api.query("hot").await["records_out"], 1);

    // An edited text: `hot` changed (replaced: it restarts), `cold` is gone
    // (dropped), `warm` is new; the stream is unchanged.
    let v2 = format!(
        "{HTTP_STREAM}CREATE QUERY hot AS SELECT deviceId, temperature FROM r WHERE temperature > 80;\n\
         CREATE QUERY warm AS SELECT deviceId FROM r WHERE temperature BETWEEN 20 AND 30;\n"
    );
    let (status, body) = api
        .call(
            "PUT",
            "/applications/climate",
            Some("text/plain"),
            v2.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["replaced"],
        json!([{"kind": "query", "name": "hot"}]),
        "{body}"
    );
    assert_eq!(
        body["dropped"],
        json!([{"kind": "query", "name": "cold"}]),
        "{body}"
    );
    assert_eq!(
        body["created"],
        json!([{"kind": "query", "name": "warm"}]),
        "{body}"
    );
    assert_eq!(
        body["unchanged"],
        json!([{"kind": "stream", "name": "r"}]),
        "{body}"
    );
    assert_eq!(api.names("queries").await, ["hot", "warm"]);
    let hot = api.query("hot").await;
    assert_eq!(
        (hot["status"].as_str(), hot["records_out"].as_u64()),
        (Some("running"), Some(0)),
        "{hot}"
    );
    assert!(hot["sql"].as_str().unwrap().contains("> 80"), "{hot}");
    ingest_ok(&api, r#"[{"deviceId": 2, "temperature": 90, "ts": 2}, {"deviceId": 3, "temperature": 25, "ts": 2}]"#).await;
    assert_eq!(api.query("hot").await["records_out"], 1);
    assert_eq!(api.query("warm").await["records_out"], 1);

    // Listed, with its objects and what the last submission did; one by name has
    // its text.
    let (status, list) = api.get("/applications").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["applications"][0]["name"], "climate", "{list}");
    let (status, app) = api.get("/applications/climate").await;
    assert_eq!(status, StatusCode::OK, "{app}");
    assert_eq!(app["sql"], v2.as_str(), "{app}");
    assert_eq!(
        app["objects"],
        json!([
            {"kind": "stream", "name": "r"},
            {"kind": "query", "name": "hot", "status": "running"},
            {"kind": "query", "name": "warm", "status": "running"},
        ]),
        "{app}"
    );
    assert_eq!(
        app["last_change"]["dropped"],
        json!([{"kind": "query", "name": "cold"}]),
        "{app}"
    );

    // Another application reads `r` but cannot redefine it; and while it reads it,
    // `climate` cannot be deleted.
    let (status, body) = api
        .call(
            "PUT",
            "/applications/audit",
            Some("text/plain"),
            "CREATE QUERY every AS SELECT deviceId FROM r;".to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .call(
            "PUT",
            "/applications/audit",
            Some("text/plain"),
            "CREATE STREAM r (x INT) WITH (connector = 'http');".to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_of(&body)
            .1
            .contains("belongs to application 'climate'"),
        "{body}"
    );
    let (status, body) = api.delete("/applications/climate").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("query 'every'"), "{body}");
    assert!(body.get("position").is_none(), "{body}");
    assert_eq!(api.names("queries").await, ["every", "hot", "warm"]);

    // Deleted in order of dependence, they leave nothing behind.
    let (status, body) = api.delete("/applications/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["dropped"],
        json!([{"kind": "query", "name": "every"}]),
        "{body}"
    );
    let (status, body) = api.delete("/applications/climate").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.assert_empty().await;
    let (status, list) = api.get("/applications").await;
    assert_eq!(
        (status, &list["applications"]),
        (StatusCode::OK, &json!([])),
        "{list}"
    );
    let (status, body) = api.get("/applications/climate").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .call(
            "PUT",
            "/applications/bad%20name",
            Some("text/plain"),
            "SELECT 1".to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_stream_restarts_the_queries_that_read_it() {
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY q AS SELECT deviceId, temperature FROM r WHERE temperature > 50;"
    ))
    .await;
    // A new column: the query plans again over it, and records with it flow.
    let (status, body) = api
        .submit(
            "CREATE OR REPLACE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, \
             room TEXT) WITH (connector = 'http');",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["replaced"],
        json!([{"kind": "stream", "name": "r"}]),
        "{body}"
    );
    assert_eq!(api.query("q").await["status"], "running");
    ingest_ok(&api, r#"[{"deviceId": 7, "temperature": 70, "room": "a"}]"#).await;
    assert_eq!(api.query("q").await["records_out"], 1);
    // A replacement its queries cannot read is refused, naming the query.
    let (status, body) = api
        .submit("CREATE OR REPLACE STREAM r (id INT) WITH (connector = 'http');")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("query 'q'"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_listed_stopped_started_and_deleted() {
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY q AS SELECT deviceId, temperature FROM r WHERE temperature > 50;"
    ))
    .await;
    let q = api.query("q").await;
    assert_eq!(q["status"], "running");
    assert_eq!(q["stream"], "r");
    assert_eq!(q["sink"], Value::Null);
    assert_eq!(
        q["sql"],
        "CREATE QUERY q AS SELECT deviceId, temperature FROM r WHERE temperature > 50"
    );
    let (status, list) = api.get("/queries").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "q");

    let (status, body) = api.post("/queries/q/stop").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "stopped");
    assert_eq!(api.query("q").await["status"], "stopped");
    // A stopped query's stream does not take records (they would be lost).
    let (status, body) = api
        .ingest(
            "r",
            "application/json",
            r#"[{"deviceId": 1, "temperature": 60, "ts": 1}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_of(&body).0, "conflict");

    let (status, body) = api.post("/queries/q/start").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    // Starting a running query changes nothing.
    let (status, body) = api.post("/queries/q/start").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    let (status, body) = api
        .ingest(
            "r",
            "application/json",
            r#"[{"deviceId": 1, "temperature": 60, "ts": 1}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let q = api.query("q").await;
    assert_eq!(
        (q["records_in"].as_u64(), q["records_out"].as_u64()),
        (Some(1), Some(1)),
        "{q}"
    );

    let (status, body) = api.get("/queries/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_of(&body).0, "not_found");
    for uri in ["/queries/nope/stop", "/queries/nope/start"] {
        let (status, body) = api.post(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert_eq!(error_of(&body).0, "not_found");
    }

    let (status, body) = api.delete("/queries/q").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = api.get("/queries/q").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete("/queries/q").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // With its only query gone, the stream stopped: ingest is refused again.
    let (status, _) = api
        .ingest("r", "application/json", r#"[{"deviceId": 1, "ts": 1}]"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // An unknown route is a 404 in the API's error shape.
    let (status, body) = api.get("/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_sinks_are_shown_and_dropped_only_when_unused() {
    let api = Api::new();
    api.submit_ok(&format!(
        "CREATE SINK bad WITH (connector = 'stdout');\n\
         CREATE STREAM e (x INT, room TEXT PATH '$.location.room') WITH (connector = 'http', errors = 'bad', idle_timeout = '5s');\n\
         {HTTP_STREAM}CREATE SINK out WITH (connector = 'stdout');\n\
         CREATE QUERY q AS INSERT INTO out SELECT deviceId FROM r;"
    ))
    .await;

    let (status, r) = api.get("/streams/r").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["connector"], "http");
    assert_eq!(r["event_time"], "ts");
    assert_eq!(r["watermark_delay_ms"], 1000);
    assert_eq!(r["source"]["status"], "running");
    let columns: Vec<&str> = r["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["deviceId", "temperature", "ts"]);
    assert_eq!(r["columns"][0]["nullable"], false);
    assert!(
        r["sql"].as_str().unwrap().starts_with("CREATE STREAM r"),
        "{r}"
    );
    let (_, e) = api.get("/streams/e").await;
    assert_eq!(e["idle_timeout_ms"], 5000);
    assert_eq!(e["columns"][1]["path"], "location.room");
    assert_eq!(e["source"]["status"], "idle", "no query reads e");
    let (status, out) = api.get("/sinks/out").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["connector"], "stdout");
    assert_eq!(out["sql"], "CREATE SINK out WITH (connector = 'stdout')");

    for uri in ["/streams/nope", "/sinks/nope"] {
        for method in ["GET", "DELETE"] {
            let (status, body) = api.call(method, uri, None, Body::empty()).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
            assert_eq!(error_of(&body).0, "not_found");
        }
    }

    // In use: 409, naming the user; nothing dropped.
    let (status, body) = api.delete("/streams/r").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_of(&body).0, "conflict");
    assert!(error_of(&body).1.contains("query 'q'"), "{body}");
    let (status, body) = api.delete("/sinks/out").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("query 'q'"), "{body}");
    let (status, body) = api.delete("/sinks/bad").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("stream 'e'"), "{body}");
    assert_eq!(api.names("streams").await, ["e", "r"]);
    assert_eq!(api.names("sinks").await, ["bad", "out"]);

    // Once unused, they go.
    assert_eq!(api.delete("/queries/q").await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.delete("/streams/r").await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.delete("/sinks/out").await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.delete("/streams/e").await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.delete("/sinks/bad").await.0, StatusCode::NO_CONTENT);
    api.assert_empty().await;
    assert_eq!(api.get("/streams/r").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_reports_accepted_and_rejected_records() {
    let api = Api::with(
        manager_options(),
        ApiOptions {
            max_ingest_bytes: 2048,
            ..Default::default()
        },
    );
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY q AS SELECT deviceId, temperature FROM r;\n\
         CREATE STREAM quiet (x INT) WITH (connector = 'http');\n\
         CREATE STREAM sim (deviceId INT) WITH (connector = 'simulator', rate = '1', devices = '1');\n\
         CREATE QUERY s AS SELECT deviceId FROM sim;"
    ))
    .await;

    // A JSON array: a wrong type and a missing required field are rejected, with why.
    let (status, report) = api
        .ingest(
            "r",
            "application/json",
            r#"[{"deviceId": 1, "temperature": 20.5, "ts": 1000},
                {"deviceId": "one", "ts": 1000},
                {"temperature": 3, "ts": 1000},
                {"deviceId": 2, "ts": 2000}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 2, "{report}");
    assert_eq!(report["rejected"], 2, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    for e in errors {
        assert_eq!(e["kind"], "schema", "{report}");
        assert!(!e["reason"].as_str().unwrap().is_empty(), "{report}");
    }
    assert!(
        errors
            .iter()
            .any(|e| e["payload"].as_str().unwrap().contains(r#""one""#)),
        "{report}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("deviceId")),
        "{report}"
    );

    // NDJSON: a line that is not JSON is rejected as malformed, with its text.
    let (status, report) = api
        .ingest(
            "r",
            "application/x-ndjson",
            "{\"deviceId\": 3, \"ts\": 3000}\n{oops\n{\"deviceId\": 4, \"ts\": 4000}\n",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 2, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["errors"][0]["kind"], "malformed", "{report}");
    assert_eq!(report["errors"][0]["payload"], "{oops", "{report}");

    // The query saw exactly the accepted records, and counted the rejected ones.
    let q = api.query("q").await;
    assert_eq!(q["records_in"], 4, "{q}");
    assert_eq!(q["records_out"], 4, "{q}");
    assert_eq!(q["errors"], 3, "{q}");
    let (_, stream) = api.get("/streams/r").await;
    assert_eq!(stream["source"]["records_in"], 4, "{stream}");
    assert_eq!(stream["source"]["decode_errors"], 3, "{stream}");

    // Not an http stream, or no query running on it: 409. Unknown: 404.
    let one = r#"[{"deviceId": 1, "ts": 1}]"#;
    let (status, body) = api.ingest("sim", "application/json", one).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("http"), "{body}");
    let (status, body) = api
        .ingest("quiet", "application/json", r#"[{"x": 1}]"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).1.contains("no running query"), "{body}");
    let (status, body) = api.ingest("nope", "application/json", one).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Over the size limit: 413, and nothing is ingested.
    let big = format!(
        "[{}]",
        vec![r#"{"deviceId": 7, "temperature": 1.5, "ts": 5000}"#; 64].join(",")
    );
    assert!(big.len() > 2048);
    let (status, body) = api.ingest("r", "application/json", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_of(&body).0, "too_large", "{body}");
    assert_eq!(api.query("q").await["records_in"], 4);

    // Bodies that are JSON but not objects are rejected, not a server error.
    for body in ["5", "\"text\"", "[1, 2]", "", "[]"] {
        let (status, report) = api.ingest("r", "application/json", body).await;
        assert_eq!(status, StatusCode::OK, "{body:?}: {report}");
        assert_eq!(report["accepted"], 0, "{body:?}: {report}");
    }
}

/// Reads the next text message as JSON, failing after a few seconds (also used by
/// tests/redis_sink.rs).
pub(crate) async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message within 10 s")
            .expect("the WebSocket is open")
            .expect("no WebSocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_the_latest_results_then_live_ones_in_order() {
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY live AS SELECT deviceId, temperature FROM r WHERE temperature > 50;\n\
         CREATE QUERY win AS SELECT window_start, window_end, count(*) AS n FROM r GROUP BY TUMBLE(ts, INTERVAL '10' SECOND);"
    ))
    .await;
    // 20 emissions before anyone connects: a client gets the latest 16, oldest first.
    for i in 1..=20 {
        let (status, report) = api
            .ingest(
                "r",
                "application/json",
                &format!(r#"[{{"deviceId": {i}, "temperature": 60, "ts": {i}}}]"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(report["accepted"], 1);
    }
    let addr = api.serve().await;
    // An unknown query: 404 instead of the upgrade.
    match tokio_tungstenite::connect_async(format!("ws://{addr}/queries/nope/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("expected 404, got {:?}", other.map(|(_, r)| r.status())),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/queries/live/ws"))
        .await
        .unwrap();
    let mut last_seq = 0;
    for i in 5..=20 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["query"], "live", "{m}");
        assert_eq!(
            m["rows"],
            json!([{"deviceId": i, "temperature": 60}]),
            "{m}"
        );
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq must increase: {seq} after {last_seq}");
        last_seq = seq;
    }
    assert_eq!(last_seq, 20);
    // Live: a filtered-out record sends nothing; the next hot one comes next.
    api.ingest(
        "r",
        "application/json",
        r#"[{"deviceId": 98, "temperature": 10, "ts": 30}]"#,
    )
    .await;
    api.ingest(
        "r",
        "application/json",
        r#"[{"deviceId": 99, "temperature": 70, "ts": 31}]"#,
    )
    .await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        m["rows"],
        json!([{"deviceId": 99, "temperature": 70}]),
        "{m}"
    );
    assert!(m["seq"].as_u64().unwrap() > last_seq, "{m}");
    assert!(m.get("window").is_none(), "{m}");

    // A windowed query's messages carry the window.
    let (mut win, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/queries/win/ws"))
        .await
        .unwrap();
    // Whether the window closes before or after this client subscribed, it gets it:
    // the latest results come first.
    api.ingest(
        "r",
        "application/json",
        r#"[{"deviceId": 1, "temperature": 70, "ts": 20000}]"#,
    )
    .await;
    let m = next_json(&mut win).await;
    assert_eq!(m["query"], "win");
    assert_eq!(
        m["window"],
        json!({"start": "1970-01-01T00:00:00Z", "end": "1970-01-01T00:00:10Z"}),
        "{m}"
    );
    assert_eq!(m["rows"][0]["n"], 22, "{m}");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_that_stops_reading_is_dropped_and_the_query_goes_on() {
    let api = Api::new();
    // One-millisecond windows over 250 readings a second (one every 4 ms): 250
    // messages a second of ~20 KB each. The server keeps up with a reading client; one
    // that reads nothing fills the (small) socket buffers within a few messages, and
    // then falls more than SUBSCRIBER_BUFFER messages behind in about a second.
    api.submit_ok(
        "CREATE STREAM fast (deviceId INT NOT NULL, deviceIP TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts)\n\
         WITH (connector = 'simulator', rate = '250', devices = '10', start = '0');\n\
         CREATE QUERY flood AS SELECT window_start, repeat(max(deviceIP), 2000) AS pad\n\
         FROM fast GROUP BY TUMBLE(ts, INTERVAL '1' MILLISECOND);",
    )
    .await;
    let q = api.manager.query_state("flood").unwrap();
    let addr = api.serve_small_buffers().await;
    // At most what was emitted before the client subscribed.
    let out_at_connect = q.rows_out.load(std::sync::atomic::Ordering::Relaxed);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/queries/flood/ws"), stream)
            .await
            .unwrap();
    eventually(
        "the server to subscribe the client",
        Duration::from_secs(10),
        || async { (q.output.subscribers() == 1).then_some(()) },
    )
    .await;
    // The client reads nothing. The server must notice and let go of it on its own.
    eventually(
        "the server to drop the client that reads nothing",
        Duration::from_secs(30),
        || async { (q.output.subscribers() == 0).then_some(()) },
    )
    .await;
    // Not dropped early: it fell about SUBSCRIBER_BUFFER messages behind (the counter
    // runs up to one step, ~25 windows, ahead of what was published).
    let out_at_drop = q.rows_out.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        out_at_drop > out_at_connect + sluice::runtime::manager::SUBSCRIBER_BUFFER as u64 - 64,
        "the client was dropped after only {} messages",
        out_at_drop - out_at_connect
    );
    // The query was never held up by the client, and goes on.
    assert_eq!(q.status(), QueryStatus::Running);
    eventually(
        "the query to keep emitting",
        Duration::from_secs(10),
        || async {
            (q.rows_out.load(std::sync::atomic::Ordering::Relaxed) > out_at_drop + 100)
                .then_some(())
        },
    )
    .await;

    // It reads again only after a while, longer than a send may block (issue 12: the
    // close frame used to be given up on after 5 s, and the client saw 1006).
    tokio::time::sleep(Duration::from_secs(8)).await;
    // What the client finds when it reads at last: messages in order, then a close
    // with code 1008 (policy: too slow).
    let mut last_seq = 0;
    let mut messages = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("the socket ends within 20 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                let seq = m["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "seq {seq} after {last_seq}");
                last_seq = seq;
                messages += 1;
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!(
                "the connection ended without a close frame after {messages} messages: {other:?}"
            ),
        }
    };
    let frame = close.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    let behind: u64 = frame
        .reason
        .as_str()
        .split(' ')
        .find_map(|w| w.parse().ok())
        .expect("a count in the reason");
    assert!(
        behind > sluice::runtime::manager::SUBSCRIBER_BUFFER as u64,
        "{frame:?}"
    );
    assert!(messages > 0);
    // The client's answer completes the handshake: the server then ends the
    // connection, cleanly.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the connection ends after the close handshake");
    assert!(end.is_none(), "after the close frame: {end:?}");
    assert_eq!(q.status(), QueryStatus::Running);
    api.manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_from_the_client_is_answered() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY q AS SELECT deviceId FROM r;"
    ))
    .await;
    api.ingest("r", "application/json", r#"[{"deviceId": 1, "ts": 1}]"#)
        .await;
    let addr = api.serve().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/queries/q/ws"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["rows"], json!([{"deviceId": 1}]));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The server answers the close frame (RFC 6455, 5.5.1), then the connection ends
    // cleanly; without the answer the client's library reports 1006.
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the close frame was not answered: {other:?}"),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Normal));
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the connection ends");
    assert!(end.is_none(), "after the answer: {end:?}");
    let q = api.manager.query_state("q").unwrap();
    eventually(
        "the server to let go of the client",
        Duration::from_secs(10),
        || async { (q.output.subscribers() == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_of_a_dropped_query_is_closed() {
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY q AS SELECT deviceId FROM r;"
    ))
    .await;
    api.ingest("r", "application/json", r#"[{"deviceId": 1, "ts": 1}]"#)
        .await;
    let addr = api.serve().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/queries/q/ws"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["rows"], json!([{"deviceId": 1}]));
    assert_eq!(api.delete("/queries/q").await.0, StatusCode::NO_CONTENT);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the socket of a dropped query closes");
    let frame = end.expect("a close code");
    assert_eq!(frame.code, CloseCode::Normal, "{frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_per_query_stream_and_sink_counters() {
    let api = Api::new();
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY hot AS SELECT deviceId FROM r WHERE temperature > 50;\n\
         CREATE QUERY \"odd\"\"name\" AS SELECT deviceId FROM r;"
    ))
    .await;
    api.ingest(
        "r",
        "application/json",
        r#"[{"deviceId": 1, "temperature": 60, "ts": 1}, {"deviceId": 2, "temperature": 10, "ts": 2}, {"ts": 3}]"#,
    )
    .await;
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "# TYPE sluice_query_records_in_total counter",
        "sluice_query_records_in_total{query=\"hot\"} 2",
        "sluice_query_records_out_total{query=\"hot\"} 1",
        "sluice_query_records_out_total{query=\"odd\\\"name\"} 2",
        "sluice_query_errors_total{query=\"hot\"} 1",
        "sluice_query_running{query=\"hot\"} 1",
        "sluice_stream_records_total{stream=\"r\"} 2",
        "sluice_stream_decode_errors_total{stream=\"r\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("sluice_query_watermark_seconds{query=\"hot\"}"),
        "{text}"
    );
    api.post("/queries/hot/stop").await;
    let (_, text) = api.get("/metrics").await;
    assert!(
        text.as_str()
            .unwrap()
            .lines()
            .any(|l| l == "sluice_query_running{query=\"hot\"} 0"),
        "{text}"
    );

    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_every_route_but_health_and_the_dashboard() {
    let token = "s3cret-token";
    let mut api = Api::with(
        manager_options(),
        ApiOptions {
            token: Some(token.into()),
            ..Default::default()
        },
    );
    api.submit_ok(&format!("{HTTP_STREAM}CREATE SINK out WITH (connector = 'stdout');\nCREATE QUERY q AS SELECT deviceId FROM r;"))
        .await;
    let routes = [
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("POST", "/applications"),
        ("GET", "/queries"),
        ("GET", "/queries/q"),
        ("DELETE", "/queries/q"),
        ("POST", "/queries/q/stop"),
        ("POST", "/queries/q/start"),
        ("GET", "/queries/q/ws"),
        ("GET", "/streams"),
        ("GET", "/streams/r"),
        ("DELETE", "/streams/r"),
        ("POST", "/streams/r/records"),
        ("GET", "/sinks"),
        ("GET", "/sinks/out"),
        ("DELETE", "/sinks/out"),
    ];
    let bodies = |uri: &str| match uri {
        "/applications" => "CREATE SINK sneaky WITH (connector = 'stdout');",
        "/streams/r/records" => r#"[{"deviceId": 1, "ts": 1}]"#,
        _ => "",
    };
    let wrong = [
        "Bearer nope",
        "Bearer ",
        "s3cret-token",
        "Basic czNjcmV0LXRva2Vu",
    ];
    for (method, uri) in routes {
        for auth in [None].into_iter().chain(wrong.iter().map(|w| Some(*w))) {
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "text/plain");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = api
                .router
                .clone()
                .oneshot(req.body(Body::from(bodies(uri))).unwrap())
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}"
            );
        }
        // A token in the query string is as good as the header (WebSockets need it).
        let wrong_param = format!("{uri}?token=nope");
        let req = Request::builder()
            .method(method)
            .uri(&wrong_param)
            .body(Body::from(bodies(uri)))
            .unwrap();
        assert_eq!(
            api.router.clone().oneshot(req).await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{wrong_param}"
        );
    }
    // Nothing the refused requests asked for happened.
    api.token = Some(token.into());
    assert_eq!(api.names("sinks").await, ["out"]);
    assert_eq!(api.names("queries").await, ["q"]);
    assert_eq!(api.query("q").await["records_in"], 0);
    assert_eq!(api.query("q").await["status"], "running");

    // Open routes, and the right token everywhere.
    api.token = None;
    assert_eq!(api.get("/healthz").await.0, StatusCode::OK);
    let (status, page) = api.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.as_str().unwrap().contains("<html") || page.as_str().unwrap().contains("<!"),
        "dashboard"
    );
    // The token as a parameter is for WebSockets only (browsers cannot set their
    // headers); elsewhere it would end up in URLs and logs.
    assert_eq!(
        api.get(&format!("/queries?token={token}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    api.token = Some(token.into());
    assert_eq!(api.get("/openapi.json").await.0, StatusCode::OK);
    assert_eq!(api.get("/metrics").await.0, StatusCode::OK);
    assert_eq!(
        api.ingest("r", "application/json", r#"[{"deviceId": 1, "ts": 1}]"#)
            .await
            .0,
        StatusCode::OK
    );

    // Over a real socket: the WebSocket handshake needs the token, as a parameter.
    let addr = api.serve().await;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/queries/q/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!(
            "a WebSocket without the token must get 401, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/queries/q/ws?token={token}"))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(next_json(&mut ws).await["rows"], json!([{"deviceId": 1}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_cap_refuses_applications_that_exceed_it() {
    let api = Api::with(
        ManagerOptions {
            max_queries: 2,
            ..manager_options()
        },
        ApiOptions::default(),
    );
    let three = format!(
        "{HTTP_STREAM}CREATE QUERY a AS SELECT deviceId FROM r;\nCREATE QUERY b AS SELECT deviceId FROM r;\n\
         CREATE QUERY c AS SELECT deviceId FROM r;"
    );
    let (status, body) = api.submit(&three).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).1.contains("at most 2 queries"), "{body}");
    api.assert_empty().await;

    api.submit_ok(&format!("{HTTP_STREAM}CREATE QUERY a AS SELECT deviceId FROM r;\nCREATE QUERY b AS SELECT deviceId FROM r;"))
        .await;
    let (status, body) = api
        .submit("CREATE QUERY c AS SELECT deviceId FROM r;")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(api.names("queries").await, ["a", "b"]);
    // Dropping one in the same application keeps the total within the cap.
    api.submit_ok("DROP QUERY a; CREATE QUERY c AS SELECT deviceId FROM r;")
        .await;
    assert_eq!(api.names("queries").await, ["b", "c"]);
    assert_eq!(api.query("c").await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queries_on_one_stream_in_one_application_all_start() {
    let api = Api::new();
    let mut sql = HTTP_STREAM.to_string();
    for i in 0..40 {
        sql.push_str(&format!(
            "CREATE QUERY q{i} AS SELECT deviceId FROM r WHERE deviceId > {i};\n"
        ));
    }
    api.submit_ok(&sql).await;
    assert_eq!(api.names("queries").await.len(), 40);
    let (status, report) = api
        .ingest("r", "application/json", r#"[{"deviceId": 100, "ts": 1}]"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    for i in 0..40 {
        let q = api.query(&format!("q{i}")).await;
        assert_eq!(q["status"], "running", "{q}");
        assert_eq!(q["records_out"], 1, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_that_would_read_or_write_files_is_refused_and_creates_nothing() {
    let api = Api::new();
    let secret = std::env::temp_dir().join("sluice-api-test-written.jsonl");
    let _ = std::fs::remove_file(&secret);
    let path = secret.display();
    let attempts = [
        "CREATE STREAM p (line TEXT) WITH (connector = 'file', path = '/etc/passwd');".to_string(),
        "CREATE STREAM p (line TEXT) WITH (connector = 'file', path = '../../../../etc/passwd');"
            .to_string(),
        format!("CREATE SINK leak WITH (connector = 'file', path = '{path}');"),
        format!("CREATE SINK leak WITH (connector = 'file', path = '{path}', append = 'true');"),
        format!("COPY (SELECT 1) TO '{path}';"),
        format!("COPY r TO '{path}' STORED AS JSON;"),
        "CREATE EXTERNAL TABLE p (line TEXT) STORED AS CSV LOCATION '/etc/passwd';".to_string(),
        "CREATE TABLE t (x INT);".to_string(),
        "CREATE TABLE t AS SELECT 1;".to_string(),
        "CREATE VIEW v AS SELECT 1;".to_string(),
        format!("INSERT INTO '{path}' SELECT 1;"),
        "SELECT * FROM '/etc/passwd';".to_string(),
        "SELECT * FROM read_csv('/etc/passwd');".to_string(),
        "INSERT INTO t VALUES (1);".to_string(),
        "SET datafusion.catalog.information_schema = true;".to_string(),
        // The server's environment (its secrets) must not reach a connector of the
        // submitter's choosing.
        "CREATE SINK leak WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topic = 'x/${HOME}');"
            .to_string(),
        "CREATE STREAM p (x INT) WITH (connector = 'mqtt', url = 'mqtt://${SLUICE_API_TOKEN:-h}', topics = 'a');"
            .to_string(),
        "CREATE STREAM p (x INT) WITH (connector = 'mqtt', url = 'mqtts://127.0.0.1:1', topics = 'a', ca = '/etc/passwd');"
            .to_string(),
    ];
    for sql in &attempts {
        // Each after a valid statement: the whole application must be refused.
        let app = format!("{HTTP_STREAM}CREATE QUERY ok AS SELECT deviceId FROM r;\n{sql}\n");
        let (status, body) = api.submit(&app).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert_eq!(error_of(&body).0, "invalid", "{sql}: {body}");
        assert_eq!(body["position"]["line"], 4, "{sql}: {body}");
        assert!(
            !error_of(&body).1.contains("root:"),
            "{sql} leaked a file: {body}"
        );
        api.assert_empty().await;
    }
    let (_, body) = api.submit(&attempts[0]).await;
    assert!(
        error_of(&body)
            .1
            .contains("'file' connector is not available"),
        "{body}"
    );
    assert!(!secret.exists(), "a file was written");
    let (_, body) = api.submit(&attempts[attempts.len() - 3]).await;
    assert!(
        error_of(&body).1.contains("reads an environment variable"),
        "{body}"
    );
}

/// `GET /queries/{name}/errors` of the test's queries.
async fn bad_records(api: &Api, query: &str) -> Value {
    let (status, body) = api.get(&format!("/queries/{query}/errors")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querys_latest_bad_records_are_kept_newest_first_with_their_reasons() {
    let api = Api::new();
    // Two queries on one stream: both see the stream's bad records; only `b` divides
    // by zero, so only `b` has eval errors of its own.
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE QUERY a AS SELECT deviceId FROM r;\n\
         CREATE QUERY b AS SELECT deviceId, 10 / (deviceId - deviceId) AS boom FROM r;"
    ))
    .await;
    let (status, fresh) = api.get("/queries/a/errors").await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["records"], json!([]), "{fresh}");
    assert_eq!(fresh["errors"], 0, "{fresh}");

    let (status, report) = api
        .ingest(
            "r",
            "application/x-ndjson",
            "{\"deviceId\": 1, \"temperature\":\n\
             {\"deviceId\": 2, \"temperature\": \"hot\", \"ts\": 1000}\n\
             {\"deviceId\": 3, \"temperature\": 20.5, \"ts\": 1000}\n",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rejected"], 2, "{report}");

    // The stream's two bad records, newest (the later line) first, with their reasons.
    let a = bad_records(&api, "a").await;
    let records = a["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{a}");
    assert!(
        records[0]["payload"].as_str().unwrap().contains("hot"),
        "{a}"
    );
    assert!(
        records[1]["payload"]
            .as_str()
            .unwrap()
            .contains("\"deviceId\": 1"),
        "{a}"
    );
    for r in records {
        assert!(
            ["malformed", "schema"].contains(&r["kind"].as_str().unwrap()),
            "{a}"
        );
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{a}");
        assert_eq!(r["truncated"], false, "{a}");
        assert!(r["arrival_time"].as_str().unwrap().starts_with("20"), "{a}");
    }
    assert_eq!(a["errors"], 2, "{a}");
    // `b` has the same two, and its own failed division (the newest) first.
    let b = bad_records(&api, "b").await;
    let records = b["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{b}");
    assert_eq!(records[0]["kind"], "eval", "{b}");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("zero"),
        "{b}"
    );
    assert_eq!(records[1]["payload"], a["records"][0]["payload"], "{b}");

    // A long payload is kept cut, saying so and how long it was.
    let long = format!("{{\"deviceId\": \"{}", "x".repeat(5000));
    ingest_ok(&api, &long).await;
    let a = bad_records(&api, "a").await;
    let newest = &a["records"][0];
    assert_eq!(newest["truncated"], true, "{newest}");
    assert_eq!(newest["payload_bytes"], long.len(), "{newest}");
    assert_eq!(newest["payload"].as_str().unwrap().len(), 2048, "{newest}");
    assert!(long.starts_with(newest["payload"].as_str().unwrap()));

    // The ring is bounded; the counters still count every record.
    let many: String = (0..60).map(|i| format!("{{\"bad\": {i}\n")).collect();
    ingest_ok(&api, &many).await;
    let a = bad_records(&api, "a").await;
    let records = a["records"].as_array().unwrap();
    assert_eq!(records.len(), 50, "{a}");
    assert_eq!(a["kept"], 50, "{a}");
    assert_eq!(a["errors"], 63, "{a}");
    assert_eq!(records[0]["payload"], "{\"bad\": 59", "{a}");
    assert_eq!(records[49]["payload"], "{\"bad\": 10", "{a}");
    assert_eq!(api.query("a").await["errors"], 63);

    let (status, body) = api.get("/queries/nope/errors").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_sinks_are_idle_until_they_first_write() {
    let dir = crate::service::scratch("api_idle_sinks");
    let mut options = manager_options();
    options.connectors.sinks.data_dir = Some(dir.clone());
    let api = Api::with(options, ApiOptions::default());
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE SINK hot WITH (connector = 'table', table = 'hot', partition_key = 'deviceId');\n\
         CREATE SINK arch WITH (connector = 'archive', flush_interval = '1s');\n\
         CREATE QUERY to_table AS INSERT INTO hot SELECT deviceId, temperature FROM r;\n\
         CREATE QUERY to_archive AS INSERT INTO arch SELECT deviceId, temperature, ts FROM r;"
    ))
    .await;
    let connection = |sink: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.get(&format!("/sinks/{sink}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["writer"]["connection"].clone()
        }
    };
    // Running, nothing written: idle, not a `connecting` that never ends.
    for sink in ["hot", "arch"] {
        let c = connection(sink).await;
        assert_eq!(c["status"], "idle", "{sink}: {c}");
        assert_eq!(c["retries"], 0, "{sink}: {c}");
    }
    ingest_ok(
        &api,
        r#"[{"deviceId": 7, "temperature": 31.5, "ts": 1000}]"#,
    )
    .await;
    for sink in ["hot", "arch"] {
        eventually(
            &format!("sink {sink} to have written"),
            Duration::from_secs(15),
            || async {
                let c = connection(sink).await;
                (c["status"] == "connected").then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_shown_only_while_records_wait_for_a_query() {
    // The SQL arrives over HTTP: the Redis it names must be allowed.
    let mut options = manager_options();
    options.connectors.allow(sluice::reach::AllowList {
        redis: vec![sluice::reach::HostPort::parse("127.0.0.1:1").unwrap()],
        ..Default::default()
    });
    let api = Api::with(options, ApiOptions::default());
    // `slow` writes to a Redis nobody listens on: its sink retries, holding the query,
    // so what is posted next waits in the stream's input. `quiet` reads a stream that
    // got one old record and nothing since.
    api.submit_ok(&format!(
        "{HTTP_STREAM}CREATE SINK down WITH (connector = 'redis', url = 'redis://127.0.0.1:1', commands = 'SET a b');\n\
         CREATE QUERY slow AS INSERT INTO down SELECT deviceId FROM r;\n\
         CREATE STREAM q (deviceId INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');\n\
         CREATE QUERY quiet AS SELECT deviceId FROM q;"
    ))
    .await;
    let (status, body) = api
        .ingest("q", "application/json", r#"[{"deviceId": 1, "ts": 1000}]"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A watermark in 1970 is not lag: nothing waits for the query.
    let quiet = api.query("quiet").await;
    assert!(quiet["watermark"].as_str().is_some(), "{quiet}");
    assert_eq!(quiet["lag_ms"], Value::Null, "{quiet}");
    assert_eq!(api.query("slow").await["lag_ms"], Value::Null);

    // Each post is one chunk and waits for its answer: post from tasks. The sink holds
    // one batch, its channel 16 more, then the stream task waits and chunks queue.
    let mut posts = Vec::new();
    for i in 0..40 {
        let manager = Arc::clone(&api.manager);
        posts.push(tokio::spawn(async move {
            let row = format!(r#"{{"deviceId": {i}, "ts": 1000}}"#);
            let _ = manager.ingest("r", row.into_bytes()).await;
        }));
    }
    let first = eventually("slow to be behind", Duration::from_secs(10), || async {
        api.query("slow").await["lag_ms"].as_i64()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = api.query("slow").await["lag_ms"].as_i64();
    assert!(
        later.is_some_and(|l| l >= first + 250),
        "lag did not grow while records waited: {first} then {later:?}"
    );
    let listed = api.get("/queries").await.1;
    let slow = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "slow")
        .unwrap();
    assert!(slow["lag_ms"].as_i64().is_some(), "{listed}");
    assert_eq!(api.query("quiet").await["lag_ms"], Value::Null);

    // Stopped: not behind any more, whatever was waiting.
    let (status, body) = api.post("/queries/slow/stop").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lag_ms"], Value::Null, "{body}");
    for p in posts {
        p.abort();
    }
}

/// Names of any case, quoted or not (#11): through the API's paths, the WebSocket,
/// errors with a hint for a name in the wrong case, and the persisted catalog's
/// restore (names that need quoting: upper case, spaces, dots, quotes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_any_case_work_through_the_api_and_a_restart() {
    let dir = std::env::temp_dir().join(format!("sluice-api-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = || ManagerOptions {
        catalog_file: Some(dir.join("catalog.json")),
        ..manager_options()
    };
    let app_sql = "CREATE STREAM WEATHERSTREAM (City TEXT, temperature DOUBLE) WITH (connector = 'http');\n\
         CREATE STREAM \"SOURCE_SQL_STREAM_001\" (x INT) WITH (connector = 'http');\n\
         CREATE STREAM \"say \"\"hi\"\".v2\" (x INT) WITH (connector = 'http');\n\
         CREATE SINK \"Alert Sink\" WITH (connector = 'stdout');\n\
         CREATE QUERY \"Live View\" AS SELECT W.City, W.temperature FROM WEATHERSTREAM W;\n\
         INSERT INTO \"Alert Sink\" SELECT x FROM \"SOURCE_SQL_STREAM_001\";\n\
         CREATE QUERY SrcY AS SELECT \"say \"\"hi\"\".v2\".x FROM \"say \"\"hi\"\".v2\";";
    let api = Api::with(options(), ApiOptions::default());
    api.submit_ok(app_sql).await;
    assert_eq!(
        api.names("streams").await,
        ["SOURCE_SQL_STREAM_001", "WEATHERSTREAM", "say \"hi\".v2"]
    );
    assert_eq!(
        api.names("queries").await,
        ["Alert Sink", "Live View", "SrcY"]
    );

    let addr = api.serve().await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/queries/Live%20View/ws"))
            .await
            .unwrap();
    let (status, report) = api
        .ingest(
            "WEATHERSTREAM",
            "application/json",
            r#"[{"City": "Rome", "temperature": 31}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 1);
    let m = next_json(&mut ws).await;
    assert_eq!(m["query"], "Live View");
    assert_eq!(m["rows"], json!([{"City": "Rome", "temperature": 31}]));

    for path in [
        "/streams/WEATHERSTREAM",
        "/streams/say%20%22hi%22.v2",
        "/sinks/Alert%20Sink",
        "/queries/Live%20View",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // Another case is another name: a 404 that names the one that exists.
    let (status, body) = api.get("/streams/weatherstream").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error_of(&body).1,
        "stream 'weatherstream' does not exist; did you mean 'WEATHERSTREAM'? Names are case-sensitive"
    );
    let (status, body) = api.delete("/queries/live%20view").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error_of(&body).1.contains("did you mean 'Live View'?"),
        "{body}"
    );

    // An API action Sluice turns into SQL has no position in the user's text.
    let (status, body) = api.delete("/streams/WEATHERSTREAM").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        error_of(&body).1,
        "stream 'WEATHERSTREAM' is in use by query 'Live View'; drop those first"
    );
    assert_eq!(body.get("position"), None, "{body}");
    let (status, body) = api.delete("/sinks/Alert%20Sink").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body.get("position"), None, "{body}");

    // A restart brings every name back from the persisted catalog, queries running.
    api.manager.shutdown(Duration::from_secs(5)).await;
    drop(ws);
    let api = Api::with(options(), ApiOptions::default());
    assert_eq!(api.manager.restore().unwrap(), 3);
    assert_eq!(
        api.names("streams").await,
        ["SOURCE_SQL_STREAM_001", "WEATHERSTREAM", "say \"hi\".v2"]
    );
    assert_eq!(api.names("sinks").await, ["Alert Sink"]);
    assert_eq!(
        api.names("queries").await,
        ["Alert Sink", "Live View", "SrcY"]
    );
    for q in ["Alert%20Sink", "Live%20View", "SrcY"] {
        assert_eq!(api.query(q).await["status"], "running", "{q}");
    }
    let (status, _) = api
        .ingest(
            "say%20%22hi%22.v2",
            "application/json",
            r#"[{"x": 1}, {"x": 2}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.query("SrcY").await["records_out"], 2);
    for path in [
        "/queries/SrcY",
        "/queries/Live%20View",
        "/queries/Alert%20Sink",
        "/sinks/Alert%20Sink",
        "/streams/WEATHERSTREAM",
        "/streams/SOURCE_SQL_STREAM_001",
        "/streams/say%20%22hi%22.v2",
    ] {
        let (status, body) = api.delete(path).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
    }
    api.assert_empty().await;
    api.manager.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
