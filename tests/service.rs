//! `sluice serve`, the real binary over real sockets: a restart (SIGTERM, which must
//! finish within seconds even with a WebSocket open) brings back every stream, sink and
//! query with the same SQL, running ones running and stopped ones stopped, and the
//! running ones process new records; a catalog entry that no longer applies is skipped
//! and kept; `--queries DIR` files are applications, so starting twice creates nothing
//! twice and restarts nothing the user stopped, and an edited file replaces what
//! changed; the token guards the
//! API, WebSockets included; a bad record is logged once per stream however many
//! queries read it, in plain text (or JSON) lines with the filter SLUICE_LOG or
//! RUST_LOG sets; and an OpenAPI-driven fuzz run (schemathesis) against the
//! live server, seeded with real objects, gets no 5xx.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// A fresh directory under the target dir, removed and recreated per test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `sluice serve`; killed on drop if the test did not stop it (also used by
/// tests/seeds.rs).
pub(crate) struct Server {
    child: Child,
    addr: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Server {
    /// Starts the server on a free port and waits until `/healthz` answers.
    pub(crate) fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        for attempt in 0.. {
            // A free port: bind port 0, note it, let it go. Another process may take it
            // before the server binds; then the server exits and we try another.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let stdout = dir.join(format!("{name}.stdout"));
            let stderr = dir.join(format!("{name}.stderr"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
            cmd.args(["serve", "--listen", &addr]).args(args);
            for var in [
                "SLUICE_API_TOKEN",
                "SLUICE_QUERIES",
                "SLUICE_MAX_QUERIES",
                "SLUICE_LISTEN",
                "SLUICE_DATA_DIR",
                "SLUICE_LOG_FORMAT",
                "SLUICE_ALLOW_ENDPOINT",
                "SLUICE_ALLOW_REDIS",
                "SLUICE_ALLOW_MQTT",
            ] {
                cmd.env_remove(var);
            }
            let child = cmd
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let mut server = Server {
                child,
                addr,
                stdout,
                stderr,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Some(status) = server.child.try_wait().unwrap() {
                    let log = server.stderr_text();
                    if log.contains("cannot listen") && attempt < 3 {
                        break;
                    }
                    panic!("sluice serve exited early ({status}):\n{log}");
                }
                if TcpStream::connect(&server.addr).is_ok() && server.get("/healthz").status == 200
                {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                server.child.try_wait().unwrap().is_some(),
                "no /healthz within 30 s:\n{}",
                server.stderr_text()
            );
        }
        unreachable!()
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// One HTTP/1.1 request on a fresh connection.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Response { status, body }
    }

    pub(crate) fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], "")
    }

    pub(crate) fn post(&self, path: &str, content_type: &str, body: &str) -> Response {
        self.request("POST", path, &[("Content-Type", content_type)], body)
    }

    pub(crate) fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// Names (and SQL, and status for queries) of everything in the catalog, sorted.
    fn catalog(&self) -> Value {
        let pick = |what: &str, keys: &[&str]| -> Value {
            let mut items: Vec<Value> = self
                .get_json(&format!("/{what}"))
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    keys.iter()
                        .map(|k| (k.to_string(), o[*k].clone()))
                        .collect()
                })
                .collect();
            items.sort_by_key(|o: &Value| o["name"].as_str().unwrap().to_string());
            Value::Array(items)
        };
        json!({
            "streams": pick("streams", &["name", "sql", "connector"]),
            "sinks": pick("sinks", &["name", "sql", "connector"]),
            "queries": pick("queries", &["name", "sql", "stream", "sink", "status"]),
        })
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub(crate) fn terminate(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sluice serve did not exit within 20 s of SIGTERM:\n{}",
            self.stderr_text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Polls until `f` holds, failing after `timeout`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

type Socket = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket; `Err(status)` when the handshake is refused.
fn websocket(addr: &str, path: &str) -> Result<Socket, u16> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client::client(format!("ws://{addr}{path}"), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

fn next_json(ws: &mut Socket) -> Value {
    loop {
        match ws.read().expect("a WebSocket message within 10 s") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

const APP: &str = "\
CREATE STREAM readings (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');
CREATE SINK alerts WITH (connector = 'stdout');
CREATE QUERY hot AS INSERT INTO alerts SELECT deviceId, temperature FROM readings WHERE temperature > 50;
SELECT window_start, count(*) AS n FROM readings GROUP BY TUMBLE(ts, INTERVAL '10' SECOND);
";

#[test]
fn restart_brings_back_the_catalog_and_the_running_queries() {
    let dir = scratch("service_restart");
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap();
    let mut first = Server::start(&dir, "first", &["--data-dir", data_arg], &[]);
    let r = first.post("/applications", "text/plain", APP);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = first.post("/queries/select_1/stop", "text/plain", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = first.post(
        "/streams/readings/records",
        "application/json",
        r#"[{"deviceId": 1, "temperature": 60, "ts": 1000}, {"deviceId": 2, "temperature": 20, "ts": 2000},
            {"deviceId": 3, "temperature": 70, "ts": 3000}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 3);
    let hot = first.get_json("/queries/hot");
    assert_eq!(
        (hot["records_in"].as_u64(), hot["records_out"].as_u64()),
        (Some(3), Some(2)),
        "{hot}"
    );
    let before = first.catalog();
    assert_eq!(before["queries"][0]["name"], "hot");
    assert_eq!(before["queries"][0]["status"], "running");
    assert_eq!(before["queries"][1]["name"], "select_1");
    assert_eq!(before["queries"][1]["status"], "stopped");
    eventually(
        "the sink to print the hot readings",
        Duration::from_secs(10),
        || first.stdout_text().lines().count() == 2,
    );

    // A WebSocket stays open across the shutdown: it must not hold it up.
    let mut ws = websocket(&first.addr, "/queries/hot/ws").unwrap();
    assert_eq!(
        next_json(&mut ws)["rows"],
        json!([{"deviceId": 1, "temperature": 60}, {"deviceId": 3, "temperature": 70}])
    );
    let (status, took) = first.terminate();
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        first.stderr_text()
    );
    // Under the 5 s grace main.rs allows: an open WebSocket must not hold it up.
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    eprintln!("service: shutdown with an open WebSocket took {took:?}");
    drop(ws);

    let second = Server::start(&dir, "second", &["--data-dir", data_arg], &[]);
    assert_eq!(second.catalog(), before, "the catalog after the restart");
    // The running query processes new records, through its sink; the stopped one not.
    let r = second.post(
        "/streams/readings/records",
        "application/x-ndjson",
        "{\"deviceId\": 4, \"temperature\": 80, \"ts\": 4000}\n{\"deviceId\": 5, \"temperature\": 10, \"ts\": 5000}\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 2);
    let hot = second.get_json("/queries/hot");
    assert_eq!(
        (hot["records_in"].as_u64(), hot["records_out"].as_u64()),
        (Some(2), Some(1)),
        "{hot}"
    );
    assert_eq!(second.get_json("/queries/select_1")["records_in"], 0);
    eventually(
        "the restarted query to write to its sink",
        Duration::from_secs(10),
        || {
            second
                .stdout_text()
                .contains(r#"{"deviceId":4,"temperature":80}"#)
        },
    );
    // The stopped one starts again when asked.
    let r = second.post("/queries/select_1/start", "text/plain", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "running");
}

#[test]
fn loading_a_queries_directory_twice_creates_nothing_twice() {
    let dir = scratch("service_queries_dir");
    let data = dir.join("data");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    // Trusted files may use the file sink, inside the data directory.
    std::fs::write(
        queries.join("10-sim.sql"),
        "CREATE STREAM sim (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,\n\
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
           WITH (connector = 'simulator', rate = '200', devices = '3');\n\
         CREATE SINK archive WITH (connector = 'file', path = 'archive.jsonl');\n\
         INSERT INTO archive SELECT deviceId, temperature FROM sim WHERE temperature > 50;\n\
         CREATE QUERY counts AS SELECT window_start, count(*) AS n FROM sim GROUP BY TUMBLE(ts, INTERVAL '1' SECOND);\n",
    )
    .unwrap();
    std::fs::write(
        queries.join("20-inbox.sql"),
        "CREATE STREAM inbox (x INT) WITH (connector = 'http');\nCREATE QUERY echo AS SELECT x FROM inbox;\n",
    )
    .unwrap();
    std::fs::write(queries.join("notes.txt"), "not SQL, not loaded").unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--queries",
        queries.to_str().unwrap(),
    ];

    let mut first = Server::start(&dir, "first", &args, &[]);
    let catalog = first.catalog();
    let names = |what: &str, c: &Value| -> Vec<String> {
        c[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("streams", &catalog), ["inbox", "sim"]);
    assert_eq!(names("sinks", &catalog), ["archive"]);
    assert_eq!(names("queries", &catalog), ["archive", "counts", "echo"]);
    assert!(
        catalog["queries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["status"] == "running"),
        "{catalog}"
    );
    // The user stops one; the directory must not restart it.
    assert_eq!(
        first.post("/queries/counts/stop", "text/plain", "").status,
        200
    );
    eventually(
        "the simulator to produce hot readings",
        Duration::from_secs(20),
        || {
            first.get_json("/queries/archive")["records_out"]
                .as_u64()
                .unwrap()
                > 0
        },
    );
    let (status, _) = first.terminate();
    assert!(status.success(), "{}", first.stderr_text());
    // The file sink was flushed at shutdown, inside the data directory.
    let archived =
        std::fs::read_to_string(data.join("archive.jsonl")).expect("archive.jsonl in the data dir");
    assert!(archived.lines().count() > 0);
    for line in archived.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert!(row["temperature"].as_f64().unwrap() > 50.0, "{row}");
    }

    let mut second = Server::start(&dir, "second", &args, &[]);
    let again = second.catalog();
    let mut expected = catalog.clone();
    expected["queries"][1]["status"] = json!("stopped");
    assert_eq!(again, expected, "the second start changed the catalog");
    let (status, _) = second.terminate();
    assert!(status.success());
    let log = second.stderr_text();
    assert!(
        !log.contains("ERROR") && !log.contains("error:"),
        "errors on the second start:\n{log}"
    );
}

#[test]
fn loading_a_queries_directory_twice_does_not_duplicate_an_unnamed_select() {
    let dir = scratch("service_queries_dir_select");
    let data = dir.join("data");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    std::fs::write(
        queries.join("app.sql"),
        "CREATE STREAM inbox (x INT) WITH (connector = 'http');\nSELECT x FROM inbox;\n",
    )
    .unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--queries",
        queries.to_str().unwrap(),
    ];
    let mut first = Server::start(&dir, "first", &args, &[]);
    let before = first.catalog();
    first.terminate();
    let second = Server::start(&dir, "second", &args, &[]);
    assert_eq!(second.catalog(), before);
}

#[test]
fn an_edited_queries_file_replaces_what_changed_at_the_next_start() {
    let dir = scratch("service_queries_edited");
    let data = dir.join("data");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    let file = queries.join("inbox.sql");
    std::fs::write(
        &file,
        "CREATE STREAM inbox (x INT) WITH (connector = 'http');\n\
         CREATE QUERY big AS SELECT x FROM inbox WHERE x > 10;\n\
         CREATE QUERY small AS SELECT x FROM inbox WHERE x < 0;\n",
    )
    .unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--queries",
        queries.to_str().unwrap(),
    ];
    let mut first = Server::start(&dir, "first", &args, &[]);
    // Over HTTP, an application whose last statement ends in a comment and no `;`
    // (which once made the next start fail on the whole catalog).
    let r = first.post(
        "/applications?name=tail",
        "text/plain",
        "CREATE STREAM t (y INT) WITH (connector = 'http');\nSELECT y FROM t -- the end",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (status, _) = first.terminate();
    assert!(status.success(), "{}", first.stderr_text());

    // Edited: `big` changed, `small` is gone, `huge` is new.
    std::fs::write(
        &file,
        "CREATE STREAM inbox (x INT) WITH (connector = 'http');\n\
         -- a comment changes nothing\n\
         CREATE QUERY big AS SELECT x FROM inbox WHERE x > 100;\n\
         CREATE QUERY huge AS SELECT x FROM inbox WHERE x > 1000;\n",
    )
    .unwrap();
    let mut second = Server::start(&dir, "second", &args, &[]);
    let app = second.get_json("/applications/inbox");
    let last = &app["last_change"];
    assert_eq!(
        last["replaced"],
        json!([{"kind": "query", "name": "big"}]),
        "{app}"
    );
    assert_eq!(
        last["dropped"],
        json!([{"kind": "query", "name": "small"}]),
        "{app}"
    );
    assert_eq!(
        last["created"],
        json!([{"kind": "query", "name": "huge"}]),
        "{app}"
    );
    assert_eq!(
        last["unchanged"],
        json!([{"kind": "stream", "name": "inbox"}]),
        "{app}"
    );
    assert!(
        second.get_json("/queries/big")["sql"]
            .as_str()
            .unwrap()
            .contains("x > 100"),
        "{app}"
    );
    assert_eq!(second.get("/queries/small").status, 404);
    // The HTTP application came back too, its query running.
    let tail = second.get_json("/applications/tail");
    assert_eq!(tail["objects"][1]["status"], "running", "{tail}");
    let log = second.stderr_text();
    assert!(log.contains("query replaced 'big'"), "{log}");
    assert!(log.contains("query dropped 'small'"), "{log}");
    let (status, _) = second.terminate();
    assert!(status.success(), "{}", second.stderr_text());

    // Unedited: nothing changes.
    let third = Server::start(&dir, "third", &args, &[]);
    let app = third.get_json("/applications/inbox");
    assert_eq!(
        app["last_change"]["unchanged"].as_array().unwrap().len(),
        3,
        "{app}"
    );
    assert_eq!(app["last_change"]["replaced"], json!([]), "{app}");
}

#[test]
fn a_catalog_entry_that_no_longer_applies_is_skipped_and_kept() {
    let dir = scratch("service_catalog_skipped");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A version 1 catalog (before applications had names) with one stream whose
    // option this version refuses, and a query reading it.
    let catalog = json!({
        "version": 1,
        "sinks": [],
        "streams": [
            {"name": "good", "sql": "CREATE STREAM good (x INT) WITH (connector = 'http')"},
            {"name": "bad", "sql": "CREATE STREAM bad (x INT) WITH (connector = 'http', colour = 'red')"}
        ],
        "queries": [
            {"name": "q_good", "sql": "CREATE QUERY q_good AS SELECT x FROM good", "running": true},
            {"name": "q_bad", "sql": "CREATE QUERY q_bad AS SELECT x FROM bad", "running": true}
        ]
    });
    std::fs::write(data.join("catalog.json"), catalog.to_string()).unwrap();
    let mut server = Server::start(
        &dir,
        "skipped",
        &["--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(server.get_json("/queries/q_good")["status"], "running");
    let apps = server.get_json("/applications");
    let skipped: Vec<(&str, &str)> = apps["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped, [("stream", "bad"), ("query", "q_bad")], "{apps}");
    assert!(
        apps["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{apps}"
    );
    assert!(server.stderr_text().contains("no longer applies"));
    // A change rewrites the catalog file; the skipped entries stay in it.
    let r = server.post(
        "/applications",
        "text/plain",
        "CREATE STREAM more (x INT) WITH (connector = 'http');",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    server.terminate();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("catalog.json")).unwrap()).unwrap();
    assert_eq!(file["skipped"].as_array().unwrap().len(), 2, "{file}");
}

#[test]
fn the_token_guards_the_real_server() {
    let dir = scratch("service_token");
    let data = dir.join("data");
    let token = "t0ken-for-tests";
    let server = Server::start(
        &dir,
        "server",
        &["--data-dir", data.to_str().unwrap()],
        &[("SLUICE_API_TOKEN", token)],
    );
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];

    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/").status, 200);
    for path in [
        "/queries",
        "/streams",
        "/sinks",
        "/metrics",
        "/openapi.json",
        "/queries/x",
    ] {
        assert_eq!(server.get(path).status, 401, "GET {path} without the token");
        let wrong = server.request("GET", path, &[("Authorization", "Bearer wrong")], "");
        assert_eq!(wrong.status, 401, "GET {path} with a wrong token");
        assert_eq!(wrong.json()["kind"], "unauthorized");
    }
    let sql =
        "CREATE STREAM r (x INT) WITH (connector = 'http');\nCREATE QUERY q AS SELECT x FROM r;";
    let r = server.post("/applications", "text/plain", sql);
    assert_eq!(r.status, 401);
    let r = server.request("GET", "/streams", &auth, "");
    assert_eq!(
        (r.status, r.json()),
        (200, json!([])),
        "the refused application created something"
    );

    let r = server.request(
        "POST",
        "/applications",
        &[auth[0], ("Content-Type", "text/plain")],
        sql,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = server.request(
        "POST",
        "/streams/r/records",
        &[("Content-Type", "application/json")],
        r#"[{"x": 1}]"#,
    );
    assert_eq!(r.status, 401);
    let r = server.request(
        "POST",
        "/streams/r/records",
        &[auth[0], ("Content-Type", "application/json")],
        r#"[{"x": 2}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // WebSockets: the handshake needs the token; browsers pass it as ?token=.
    assert_eq!(websocket(&server.addr, "/queries/q/ws").err(), Some(401));
    assert_eq!(
        websocket(&server.addr, "/queries/q/ws?token=wrong").err(),
        Some(401)
    );
    let mut ws = websocket(&server.addr, &format!("/queries/q/ws?token={token}"))
        .expect("the handshake with ?token=");
    assert_eq!(next_json(&mut ws)["rows"], json!([{"x": 2}]));
}

/// The schemathesis command, or a failure telling how to install it.
fn schemathesis() -> &'static str {
    for cmd in ["st", "schemathesis"] {
        if Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return cmd;
        }
    }
    panic!(
        "schemathesis is not installed (neither `st` nor `schemathesis` is on PATH): run .ci/install-deps \
         (it runs `pip install schemathesis`), then run the tests again"
    );
}

/// Every (method, path, status) schemathesis recorded in its NDJSON report.
fn interactions(report_dir: &Path) -> Vec<(String, String, u64)> {
    fn walk(v: &Value, out: &mut Vec<(String, String, u64)>) {
        match v {
            Value::Object(o) => {
                if let (Some(req), Some(resp)) = (o.get("request"), o.get("response")) {
                    let method = req["method"].as_str().unwrap_or_default().to_string();
                    let uri = req["uri"].as_str().unwrap_or_default();
                    let path = uri
                        .splitn(4, '/')
                        .nth(3)
                        .map(|p| format!("/{}", p.split('?').next().unwrap()))
                        .unwrap_or_default();
                    if let Some(status) = resp["status_code"].as_u64() {
                        out.push((method, path, status));
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(report_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ndjson") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    walk(&v, &mut out);
                }
            }
        }
    }
    out
}

/// The operations /openapi.json documents.
const OPERATIONS: [(&str, &str); 17] = [
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/applications"),
    ("GET", "/queries"),
    ("GET", "/queries/{name}"),
    ("DELETE", "/queries/{name}"),
    ("POST", "/queries/{name}/stop"),
    ("POST", "/queries/{name}/start"),
    ("GET", "/queries/{name}/ws"),
    ("GET", "/queries/{name}/errors"),
    ("GET", "/streams"),
    ("GET", "/streams/{name}"),
    ("DELETE", "/streams/{name}"),
    ("POST", "/streams/{name}/records"),
    ("GET", "/sinks"),
    ("GET", "/sinks/{name}"),
    ("DELETE", "/sinks/{name}"),
];

/// The (method, route) pairs requested, names replaced by `{name}`.
fn operations(seen: &[(String, String, u64)]) -> std::collections::BTreeSet<(String, String)> {
    seen.iter()
        .map(|(m, p, _)| {
            let mut parts: Vec<&str> = p.split('/').collect();
            if parts.len() > 2 && matches!(parts[1], "queries" | "streams" | "sinks") {
                parts[2] = "{name}";
            }
            (m.clone(), parts.join("/"))
        })
        .collect()
}

#[test]
fn openapi_fuzz_run_gets_no_server_errors() {
    let st = schemathesis();
    let dir = scratch("service_fuzz");
    let data = dir.join("data");
    let server = Server::start(&dir, "server", &["--data-dir", data.to_str().unwrap()], &[]);
    // Real objects for the paths with names. `keep` is not in the fuzzer's names, so
    // `r` always has a running query and takes records.
    let seed = "\
CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');
CREATE STREAM sim (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts)
    WITH (connector = 'simulator', rate = '20', devices = '3');
CREATE SINK out WITH (connector = 'stdout');
CREATE SINK spare WITH (connector = 'stdout');
CREATE QUERY hot AS INSERT INTO out SELECT deviceId, temperature FROM r WHERE temperature > 50;
CREATE QUERY win AS SELECT window_start, count(*) AS n FROM sim GROUP BY TUMBLE(ts, INTERVAL '1' SECOND);
CREATE QUERY keep AS SELECT deviceId FROM r;
SELECT deviceId FROM r;
";
    let r = server.post("/applications", "text/plain", seed);
    assert_eq!(r.status, 201, "{}", r.body);
    let names = ["r", "sim", "out", "spare", "hot", "win", "select_1", "nope"];
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[dictionaries.names]\nvalues = {}\n\n[parameters]\n\"path.name\" = {{ dictionary = \"names\", probability = 0.8 }}\n",
            serde_json::to_string(&names).unwrap()
        ),
    )
    .unwrap();
    let url = format!("http://{}/openapi.json", server.addr);
    let run = |phase: &str, max_time: &str, extra: &[&str]| {
        let reports = dir.join(format!("report-{phase}"));
        let out = Command::new(st)
            .current_dir(&dir)
            .arg("--config-file")
            .arg(&config)
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error",
                "--max-time",
                max_time,
            ])
            .args([
                "--request-timeout",
                "10",
                "--no-color",
                "--generation-database",
                "none",
            ])
            .args(["--report", "ndjson", "--report-dir"])
            .arg(&reports)
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "schemathesis ({phase}) failed:\n{text}\n--- server log:\n{}",
            server.stderr_text()
        );
        (text, interactions(&reports))
    };
    // First without DELETE, so the seeded objects live through the run; then all
    // operations, dropping things included.
    let (text, seen) = run("keep", "15", &["--exclude-method", "DELETE"]);
    let expected: Vec<&(&str, &str)> = OPERATIONS.iter().filter(|(m, _)| *m != "DELETE").collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|(m, p)| !operations(&seen).contains(&(m.to_string(), p.to_string())))
        .collect();
    assert!(
        missing.is_empty(),
        "operations never requested: {missing:?}\n{text}"
    );
    let ok = |method: &str, path: &str| {
        seen.iter()
            .filter(|(m, p, s)| m == method && p == path && *s < 300)
            .count()
    };
    assert!(
        ok("GET", "/queries/hot") + ok("GET", "/queries/win") > 0,
        "no query was found by name"
    );
    assert!(
        ok("GET", "/streams/r") + ok("GET", "/streams/sim") > 0,
        "no stream was found by name"
    );
    assert!(
        ok("GET", "/sinks/out") + ok("GET", "/sinks/spare") > 0,
        "no sink was found by name"
    );
    assert!(
        ok("POST", "/streams/r/records") > 0,
        "no records were ingested"
    );
    assert!(
        ok("GET", "/queries/hot/errors") + ok("GET", "/queries/keep/errors") > 0
            || ok("GET", "/queries/win/errors") > 0,
        "no query's bad records were read by name"
    );
    let stops: usize = ["hot", "win", "select_1"]
        .iter()
        .map(|q| ok("POST", &format!("/queries/{q}/stop")))
        .sum();
    assert!(stops > 0, "no query was stopped");
    assert!(
        seen.iter().all(|(_, _, s)| *s < 500),
        "a 5xx slipped through"
    );
    eprintln!("service: fuzz (no DELETE) made {} requests", seen.len());

    let (text, seen) = run("all", "8", &[]);
    let missing: Vec<_> = OPERATIONS
        .iter()
        .filter(|(m, p)| !operations(&seen).contains(&(m.to_string(), p.to_string())))
        .collect();
    assert!(
        missing.is_empty(),
        "operations never requested: {missing:?}\n{text}"
    );
    let deletes = seen
        .iter()
        .filter(|(m, _, s)| m == "DELETE" && (*s == 204 || *s == 409))
        .count();
    assert!(deletes > 0, "no DELETE reached a real object");
    eprintln!("service: fuzz (all) made {} requests", seen.len());
    // The server is still healthy.
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn a_bad_record_is_logged_once_per_stream_however_many_queries_read_it() {
    let dir = scratch("service_log_once");
    let data = dir.join("data");
    let server = Server::start(
        &dir,
        "server",
        &["--data-dir", data.to_str().unwrap()],
        &[("SLUICE_LOG", "info")],
    );
    // Two queries read the stream; `c` also fails on every good record (a division
    // by zero): that error is its own, logged once for it.
    let app = "\
CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');
CREATE QUERY a AS SELECT deviceId, temperature FROM r;
CREATE QUERY c AS SELECT deviceId, 10 / (deviceId - deviceId) AS boom FROM r;
";
    let r = server.post("/applications", "text/plain", app);
    assert_eq!(r.status, 201, "{}", r.body);
    const BAD: usize = 7;
    // Half malformed (cut short), half of the wrong type.
    let mut body: String = (0..BAD)
        .map(|i| match i % 2 {
            0 => format!("{{\"deviceId\": {i}, \"temperature\": \"bad-{i}\"\n"),
            _ => format!("{{\"deviceId\": {i}, \"temperature\": \"bad-{i}\", \"ts\": 1000}}\n"),
        })
        .collect();
    body.push_str("{\"deviceId\": 100, \"temperature\": 1.5, \"ts\": 1000}\n");
    body.push_str("{\"deviceId\": 101, \"temperature\": 2.5, \"ts\": 1000}\n");
    let r = server.post("/streams/r/records", "application/x-ndjson", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["rejected"], BAD, "{}", r.body);
    // Both queries have them on their error output (and the API keeps them)...
    for q in ["a", "c"] {
        let errors = server.get_json(&format!("/queries/{q}/errors"));
        let bad = errors["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["payload"].as_str().unwrap().contains("bad-"))
            .count();
        assert_eq!(bad, BAD, "{errors}");
    }
    assert_eq!(
        server.get_json("/streams/r")["source"]["decode_errors"],
        BAD
    );

    // ...but the log has each once, for the stream, with no query named.
    let log = server.stderr_text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for i in 0..BAD {
        let marker = format!("bad-{i}\"");
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| l["payload"].as_str().is_some_and(|p| p.contains(&marker)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "record {i} was logged {} times:\n{log}",
            found.len()
        );
        assert_eq!(found[0]["stream"], "r", "{}", found[0]);
        assert!(found[0].get("query").is_none(), "{}", found[0]);
    }
    // The failed divisions are `c`'s alone: one line each, naming it.
    let eval: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "eval").collect();
    assert_eq!(eval.len(), 2, "{log}");
    assert!(eval.iter().all(|l| l["query"] == "c"), "{log}");
    assert_eq!(lines.len(), BAD + 2, "{log}");
    // A file is not a terminal: no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    assert!(log.contains("listening on"), "{log}");
}

#[test]
fn log_format_json_and_the_log_filter_variables() {
    let dir = scratch("service_log_format");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    // JSON lines, one object each.
    let mut server = Server::start(
        &dir,
        "json",
        &["--data-dir", data, "--log-format", "json"],
        &[("SLUICE_LOG", "info")],
    );
    let (status, _) = server.terminate();
    assert!(status.success(), "{}", server.stderr_text());
    let log = server.stderr_text();
    let mut listening = false;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
        assert!(v["level"].is_string(), "{line}");
        listening |= v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on"));
    }
    assert!(listening, "{log}");

    // RUST_LOG is honoured when SLUICE_LOG is not set (or empty)...
    let mut server = Server::start(
        &dir,
        "rust_log",
        &["--data-dir", data],
        &[("SLUICE_LOG", ""), ("RUST_LOG", "warn")],
    );
    server.terminate();
    let log = server.stderr_text();
    assert!(!log.contains("listening on"), "{log}");
    // ...and SLUICE_LOG wins over it.
    let mut server = Server::start(
        &dir,
        "both",
        &["--data-dir", data],
        &[("SLUICE_LOG", "info"), ("RUST_LOG", "warn")],
    );
    server.terminate();
    let log = server.stderr_text();
    assert!(log.contains("listening on"), "{log}");
    // A filter that does not parse is said, and the server runs at info.
    let mut server = Server::start(
        &dir,
        "bad_filter",
        &["--data-dir", data],
        &[("SLUICE_LOG", "sluice=loud")],
    );
    server.terminate();
    let log = server.stderr_text();
    assert!(
        log.contains("SLUICE_LOG='sluice=loud' is not a log filter"),
        "{log}"
    );
    assert!(log.contains("listening on"), "{log}");
}
