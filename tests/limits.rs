//! Issue 12, "SQL that takes the server down", against the real binary as
//! `tests/service.rs` drives it: a 2,000-term expression over `POST /applications`
//! and `POST /query` (a positioned 400, the server up), a 1 ms HOP over a day
//! (refused at CREATE), `repeat(deviceIP, 100000000)` (the record on the error
//! output, its query and stream still running and taking records), two ad hoc 4-way
//! cross joins and `unnest(range(0, 3e8))` (clear errors, the server's peak memory
//! bounded, `/healthz` under 100 ms throughout), and a full ad hoc queue (503 with
//! Retry-After).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::service::{Server, scratch};

/// A 2,000-term `x + 1 + 1 + …`: 4 KB of SQL, 2,000 levels deep once parsed.
fn long_sum() -> String {
    format!("x{}", "+1".repeat(2_000))
}

/// One request on a fresh connection: status, the head (for its headers), the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), rest.to_string())
}

fn query(addr: &str, sql: &str) -> (u16, String, String) {
    http(addr, "POST", "/query", &json!({ "sql": sql }).to_string())
}

/// The peak resident memory of a process, bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_deep_expression_is_a_positioned_error_over_http_and_ad_hoc() {
    let dir = scratch("limits-deep");
    let server = Server::start(&dir, "deep", &["--data-dir", dir.to_str().unwrap()], &[]);
    let app = format!(
        "CREATE STREAM s (x BIGINT) WITH (connector = 'http');\n\
         SELECT {} AS y FROM s;",
        long_sum()
    );
    let r = server.post("/applications?name=deep", "text/plain", &app);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("this expression is nested more than 256 levels deep"),
        "{e}"
    );
    assert_eq!(e["position"], json!({"line": 2, "column": 8}), "{e}");
    // Nothing of the application was created.
    assert_eq!(server.get_json("/streams"), json!([]));

    let (status, _, body) = query(
        server.addr(),
        &format!("SELECT {} FROM (VALUES (1)) AS t(x)", long_sum()),
    );
    assert_eq!(status, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("nested more than 256 levels deep"),
        "{e}"
    );
    assert_eq!(e["position"], json!({"line": 1, "column": 8}), "{e}");

    // Still up, and a shallower expression still works.
    assert_eq!(server.get("/healthz").status, 200);
    let (status, _, body) = query(
        server.addr(),
        "SELECT x+1+1+1 AS y FROM (VALUES (1)) AS t(x)",
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_hop_of_too_many_windows_is_refused_at_create() {
    let dir = scratch("limits-hop");
    let server = Server::start(&dir, "hop", &["--data-dir", dir.to_str().unwrap()], &[]);
    let app = "CREATE STREAM s (v INT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http');\n\
               SELECT window_start, count(*) AS n FROM s\n\
               GROUP BY HOP(ts, INTERVAL '1' MILLISECOND, INTERVAL '1' DAY);";
    let r = server.post("/applications?name=hop", "text/plain", app);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json();
    assert_eq!(
        e["error"],
        "HOP(ts, slide, size) puts every record in 86400000 windows (size / slide = 86400000 ms \
         / 1 ms); at most 1000 are allowed: use a slide of at least 86400 ms, or a smaller size"
    );
    assert_eq!(e["position"]["line"], 3, "{e}");
    assert_eq!(server.get_json("/queries"), json!([]));
}

#[test]
fn a_record_too_large_to_make_goes_to_the_error_output_and_the_stream_goes_on() {
    let dir = scratch("limits-repeat");
    let server = Server::start(&dir, "repeat", &["--data-dir", dir.to_str().unwrap()], &[]);
    let app = "CREATE STREAM readings (deviceId INT NOT NULL, deviceIP TEXT) WITH (connector = 'http');\n\
               CREATE QUERY big AS SELECT deviceId, repeat(deviceIP, 100000000) AS r FROM readings;\n\
               CREATE QUERY ids AS SELECT deviceId FROM readings;";
    let r = server.post("/applications?name=repeat", "text/plain", app);
    assert_eq!(r.status, 201, "{}", r.body);
    let records = (0..10)
        .map(|i| json!({"deviceId": i, "deviceIP": format!("192.168.1.{}", 10 + i)}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for round in 0..3 {
        let r = server.post(
            "/streams/readings/records",
            "application/x-ndjson",
            &records,
        );
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let errors = loop {
        let e = server.get_json("/queries/big/errors");
        if e["errors"] == 30 || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(errors["errors"], 30, "{errors}");
    let newest = &errors["records"][0];
    assert_eq!(newest["kind"], "eval", "{newest}");
    assert_eq!(
        newest["reason"],
        "repeat would make a value of 1.1 GB for this record, more than the 16 MB one value may hold"
    );
    assert_eq!(
        serde_json::from_str::<Value>(newest["payload"].as_str().unwrap()).unwrap()["deviceId"],
        9
    );
    for q in ["big", "ids"] {
        assert_eq!(
            server.get_json(&format!("/queries/{q}"))["status"],
            "running",
            "{q}"
        );
    }
    assert_eq!(server.get_json("/queries/ids")["records_out"], 30);
    assert_eq!(
        server.get_json("/streams/readings")["source"]["status"],
        "running"
    );
    let r = server.post(
        "/streams/readings/records",
        "application/x-ndjson",
        &records,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        peak_rss(server.pid()) < 1 << 30,
        "peak RSS {} MB",
        peak_rss(server.pid()) >> 20
    );
}

/// Requests `/healthz` over fresh connections until `done`, returning the slowest
/// answer and how many there were.
fn watch_health(addr: String, done: Arc<AtomicBool>) -> std::thread::JoinHandle<(Duration, usize)> {
    std::thread::spawn(move || {
        let (mut worst, mut n) = (Duration::ZERO, 0);
        while !done.load(Ordering::Relaxed) {
            let t = Instant::now();
            let (status, _, _) = http(&addr, "GET", "/healthz", "");
            assert_eq!(status, 200);
            worst = worst.max(t.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (worst, n)
    })
}

#[test]
fn heavy_ad_hoc_queries_stop_at_their_limits_while_healthz_answers() {
    let dir = scratch("limits-adhoc");
    let server = Server::start(
        &dir,
        "adhoc",
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--adhoc-timeout-secs",
            "3",
        ],
        &[],
    );
    let app = "CREATE STREAM s (deviceId INT, temperature DOUBLE, ts TIMESTAMP) WITH (connector = 'http');\n\
               CREATE SINK raw WITH (connector = 'archive', flush_interval = '1s');\n\
               INSERT INTO raw SELECT * FROM s;";
    assert_eq!(
        server
            .post("/applications?name=a", "text/plain", app)
            .status,
        201
    );
    let records = (0..1_000)
        .map(|i| {
            json!({"deviceId": i, "temperature": i as f64 / 2.0, "ts": 1_700_000_000_000i64 + i})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        server
            .post("/streams/s/records", "application/x-ndjson", &records)
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = query(server.addr(), "SELECT count(*) AS n FROM raw");
        if status == 200 && body.contains("\"n\":1000") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archive never held 1000 rows: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let done = Arc::new(AtomicBool::new(false));
    let health = watch_health(server.addr().to_string(), Arc::clone(&done));
    let started = Instant::now();
    // Two 4-way cross joins (10^12 rows each) at once: both stopped at 3 s.
    let joins: Vec<_> = (0..2)
        .map(|_| {
            let addr = server.addr().to_string();
            std::thread::spawn(move || {
                query(
                    &addr,
                    "SELECT sum(a.temperature + b.temperature + c.temperature + d.temperature) \
                     FROM raw a, raw b, raw c, raw d",
                )
            })
        })
        .collect();
    for j in joins {
        let (status, _, body) = j.join().unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("the query ran longer than 3 s and was stopped"),
            "{body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // unnest(range(0, 3e8)) would be a 2.4 GB list: refused before it is made.
    let (status, _, body) = query(server.addr(), "SELECT unnest(range(0, 300000000))");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("range would make a value of 2.2 GB for this record, more than the 16 MB one value may hold"), "{body}");
    // A large expansion of each record, streamed in pieces within the memory limit.
    let (status, _, body) = query(
        server.addr(),
        "SELECT count(*) AS n, max(length(y)) AS w FROM (SELECT unnest(range(0, 100000 + deviceId)) \
         AS x, repeat(CAST(deviceId AS TEXT), 50) AS y FROM raw WHERE deviceId < 20)",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"n\":2000190"), "{body}");
    // The work stopped with the replies: the server's CPU goes quiet.
    std::thread::sleep(Duration::from_millis(500));
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy = ticks() - before;
    done.store(true, Ordering::Relaxed);
    let (worst, answered) = health.join().unwrap();
    eprintln!("/healthz: {answered} answers, the slowest in {worst:?}; {busy} CPU ticks after");
    assert!(answered > 50, "{answered} health checks");
    assert!(
        worst < Duration::from_millis(100),
        "/healthz took {worst:?}"
    );
    assert!(
        busy < 30,
        "{busy} ticks of CPU in the second after the queries"
    );
    let peak = peak_rss(server.pid());
    assert!(peak < 1 << 30, "peak RSS {} MB", peak >> 20);
}

#[test]
fn a_full_ad_hoc_queue_answers_503_with_retry_after() {
    let dir = scratch("limits-busy");
    let server = Server::start(
        &dir,
        "busy",
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--adhoc-timeout-secs",
            "5",
            "--adhoc-concurrency",
            "1",
            "--adhoc-queue",
            "0",
        ],
        &[],
    );
    let start_slow = || {
        let addr = server.addr().to_string();
        std::thread::spawn(move || {
            query(
                &addr,
                "SELECT count(*) FROM generate_series(1, 100000000000) AS t(x) WHERE x % 7 = 3",
            )
        })
    };
    let mut slow = start_slow();
    // Once the slow one holds the only slot, the next is turned away at once. (When a
    // probe takes the slot first, the slow one is the one turned away: start it again.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, head, body) = loop {
        let r = query(server.addr(), "SELECT 1");
        if r.0 == 503 || Instant::now() > deadline {
            break r;
        }
        if slow.is_finished() {
            let (status, _, body) = slow.join().unwrap();
            assert_eq!(
                status, 503,
                "the slow query ended without a probe being refused: {body}"
            );
            slow = start_slow();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["kind"], "busy");
    let (status, _, body) = slow.join().unwrap();
    assert_eq!(status, 400, "{body}");
    // Its slot is free again.
    let (status, _, body) = query(server.addr(), "SELECT 1 AS one");
    assert_eq!(status, 200, "{body}");
}
