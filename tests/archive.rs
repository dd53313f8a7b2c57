//! The `archive` sink and ad hoc SQL against real stores: the local filesystem and an
//! S3 server (moto), with every Parquet file checked by an independent reader
//! (pyarrow): row counts, values, partitions and compression. A replay rewrites the
//! same objects; rows without a partition time land under `_errors/` with the reason;
//! a server killed while it writes leaves no object a reader cannot read; ad hoc SQL
//! over several partitions reads only the ones its filter names; `POST /query` answers
//! in JSON, CSV and Arrow IPC and refuses anything but a read.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sluice::adhoc::{self, Limits};
use sluice::runtime::Manager;
use tower::ServiceExt;

use crate::moto::Moto;
use crate::service::{Server, scratch};
use crate::services::{Scratch, free_port};
use crate::support::{manager, run_to_end, sluice_query, sluice_query_env};

/// 2026-11-21T12:00:00Z, ms.
const T0: i64 = 1_795_262_400_000;

/// `n` readings 3.6 s apart (1,000 per hour) from 12:00; every `null_every`-th has no
/// `ts` (0: none).
fn write_readings(path: &Path, n: i64, null_every: i64) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        let mut r = json!({
            "deviceId": format!("dev-{}", i % 17),
            "temperature": 20.0 + (i % 23) as f64 * 0.5,
            "seq": i,
        });
        if null_every == 0 || i % null_every != null_every - 1 {
            let ts = chrono_iso(T0 + i * 3_600);
            r["ts"] = json!(ts);
        }
        text.push_str(&r.to_string());
        text.push('\n');
        rows.push(r);
    }
    std::fs::write(path, text).unwrap();
    rows
}

fn chrono_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

/// Runs a Python snippet (pyarrow), returning what it printed as JSON.
fn python(script: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (run .ci/install-deps for pyarrow)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every `.parquet` file under a directory, read whole by pyarrow, one file at a time
/// (no dataset discovery: each object must stand on its own).
const READ_LOCAL: &str = r#"
import glob, json, os, sys
import pyarrow.parquet as pq
root = sys.argv[1]
files = []
for f in sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)):
    pf = pq.ParquetFile(f)
    t = pf.read()
    files.append({
        "path": os.path.relpath(f, root),
        "rows": t.num_rows,
        "codec": pf.metadata.row_group(0).column(0).compression,
        "schema": [f"{c.name}:{c.type}" for c in t.schema],
        "data": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                 for r in t.to_pylist()],
    })
print(json.dumps(files))
"#;

async fn finish(m: &Arc<Manager>, queries: &[&str]) {
    for q in queries {
        run_to_end(m, q).await;
    }
    // Stopping flushes the sinks (the archive writes what it buffered).
    m.shutdown(Duration::from_secs(10)).await;
}

fn by_seq(rows: &[Value]) -> std::collections::BTreeMap<i64, &Value> {
    rows.iter()
        .map(|r| (r["seq"].as_i64().unwrap(), r))
        .collect()
}

/// Checks pyarrow's reading of the archive against the input: every row with a
/// time once, in the partition of its hour, with its values.
fn check_files(files: &Value, input: &[Value]) -> BTreeSet<String> {
    let want = by_seq(input);
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for f in files.as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        names.insert(path.to_string());
        assert_eq!(f["codec"], "ZSTD", "{path}");
        assert_eq!(
            f["schema"],
            json!([
                "deviceId:string",
                "temperature:double",
                "seq:int64",
                "ts:timestamp[ms]"
            ]),
            "{path}: the query's schema"
        );
        for row in f["data"].as_array().unwrap() {
            let seq = row["seq"].as_i64().unwrap();
            assert!(seen.insert(seq), "seq {seq} twice");
            let w = want[&seq];
            assert_eq!(row["deviceId"], w["deviceId"]);
            assert_eq!(row["temperature"], w["temperature"]);
            let ts = row["ts"].as_str().unwrap();
            assert!(
                w["ts"].as_str().unwrap().starts_with(&ts[..19]),
                "{row} vs {w}"
            );
            let hour = &ts[11..13];
            assert!(
                path.starts_with(&format!("dt=2026-11-21/hour={hour}/")),
                "{path} holds a row of hour {hour}"
            );
        }
    }
    let with_time: BTreeSet<i64> = input
        .iter()
        .filter(|r| r.get("ts").is_some())
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, with_time, "every row with a time, once");
    names
}

fn app(input: &Path, sink_options: &str) -> String {
    format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, seq BIGINT, ts TIMESTAMP)
           WITH (connector = 'file', path = '{}');
         CREATE SINK arch WITH (connector = 'archive', flush_size_mb = '256',
           flush_interval = '1h'{sink_options});
         CREATE QUERY q AS INSERT INTO arch SELECT deviceId, temperature, seq, ts FROM r;",
        input.display()
    )
}

fn sources(m: &Manager) -> adhoc::Sources {
    m.adhoc_sources()
}

async fn sql(m: &Manager, q: &str) -> Vec<Value> {
    let out = adhoc::run(q, None, &sources(m), &Limits::default())
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    let doc: Value =
        serde_json::from_slice(&out.encode(adhoc::OutputFormat::Json).unwrap()).unwrap();
    doc["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_parquet_archive_is_partitioned_read_by_pyarrow_replayed_in_place_and_queryable() {
    let dir = Scratch::new("archive-local");
    let input = dir.path().join("in.jsonl");
    // 3 hours of readings; every 500th has no time.
    let rows = write_readings(&input, 3_000, 500);
    let archive = dir.path().join("archive").join("arch");

    let m = manager(Some(dir.path()));
    m.apply(&app(&input, "")).unwrap();
    // Nothing flushed yet (an hour's interval): an empty table of the query's schema.
    let empty = sql(&m, "SELECT count(*) AS n, max(ts) AS t FROM arch").await;
    assert_eq!(empty, [json!({"n": 0})]);
    run_to_end(&m, "q").await;
    let health = m.sink_state("arch").unwrap().health.clone().unwrap();
    finish(&m, &[]).await;
    let health = health.to_json();
    assert_eq!(
        health["skipped"], 6,
        "rows sent to _errors/ are counted: {health}"
    );
    let files = python(READ_LOCAL, &[archive.to_str().unwrap()]);
    let names = check_files(&files, &rows);
    let hours: BTreeSet<&str> = names.iter().map(|n| &n[..22]).collect();
    assert_eq!(
        hours.into_iter().collect::<Vec<_>>(),
        [
            "dt=2026-11-21/hour=12/",
            "dt=2026-11-21/hour=13/",
            "dt=2026-11-21/hour=14/"
        ]
    );

    // Rows without a partition time: under _errors/, with the reason and the row.
    let mut errors = Vec::new();
    for e in walk(&archive.join("_errors")) {
        assert!(e.to_str().unwrap().ends_with(".ndjson"), "{}", e.display());
        for line in std::fs::read_to_string(&e).unwrap().lines() {
            errors.push(serde_json::from_str::<Value>(line).unwrap());
        }
    }
    let mut error_seqs: Vec<i64> = errors
        .iter()
        .map(|e| {
            assert!(e["reason"].as_str().unwrap().contains("is null"), "{e}");
            e["record"]["seq"].as_i64().unwrap()
        })
        .collect();
    error_seqs.sort();
    assert_eq!(error_seqs, [499, 999, 1499, 1999, 2499, 2999]);

    // The same input again: the same objects, rewritten; nothing added.
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, "")).unwrap();
    finish(&m, &["q"]).await;
    let again = python(READ_LOCAL, &[archive.to_str().unwrap()]);
    assert_eq!(check_files(&again, &rows), names, "a replay adds no object");

    // Ad hoc SQL: partition columns, every row once, and a filter on the hour reads
    // only that hour's objects.
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, "")).unwrap();
    let counts = sql(
        &m,
        "SELECT dt, hour, count(*) AS n, count(DISTINCT seq) AS d FROM arch GROUP BY dt, hour ORDER BY hour",
    )
    .await;
    assert_eq!(
        counts,
        [
            json!({"dt": "2026-11-21", "hour": "12", "n": 998, "d": 998}),
            json!({"dt": "2026-11-21", "hour": "13", "n": 998, "d": 998}),
            json!({"dt": "2026-11-21", "hour": "14", "n": 998, "d": 998}),
        ]
    );
    let plan = sql(
        &m,
        "EXPLAIN SELECT avg(temperature) FROM arch WHERE hour = '13'",
    )
    .await;
    let physical = plan
        .iter()
        .find(|r| r["plan_type"] == "physical_plan")
        .unwrap()["plan"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(physical.contains("hour=13/"), "{physical}");
    assert!(
        !physical.contains("hour=12/") && !physical.contains("hour=14/"),
        "other hours pruned: {physical}"
    );
    let avg = sql(
        &m,
        "SELECT round(avg(temperature), 6) AS a FROM arch WHERE hour = '13'",
    )
    .await;
    let hot: Vec<f64> = rows
        .iter()
        .filter(|r| {
            r.get("ts")
                .is_some_and(|t| t.as_str().unwrap()[11..13] == *"13")
        })
        .map(|r| r["temperature"].as_f64().unwrap())
        .collect();
    let want = (hot.iter().sum::<f64>() / hot.len() as f64 * 1e6).round() / 1e6;
    assert_eq!(avg[0]["a"].as_f64().unwrap(), want);
    m.shutdown(Duration::from_secs(5)).await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_json_lines_archive_holds_every_row_and_is_queryable() {
    let dir = Scratch::new("archive-gzip");
    let input = dir.path().join("in.jsonl");
    let rows = write_readings(&input, 2_000, 0);
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, ", format = 'json', compression = 'gzip'"))
        .unwrap();
    finish(&m, &["q"]).await;
    let archive = dir.path().join("archive").join("arch");
    let read = python(
        r#"
import glob, gzip, json, os, sys
out = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "**", "*"), recursive=True)):
    if os.path.isfile(f):
        with gzip.open(f, "rt") as g:
            out.append({"path": os.path.relpath(f, sys.argv[1]), "rows": [json.loads(l) for l in g]})
print(json.dumps(out))
"#,
        &[archive.to_str().unwrap()],
    );
    let mut seqs = Vec::new();
    for f in read.as_array().unwrap() {
        assert!(f["path"].as_str().unwrap().ends_with(".jsonl.gz"), "{f}");
        for r in f["rows"].as_array().unwrap() {
            let seq = r["seq"].as_i64().unwrap();
            assert_eq!(r["deviceId"], rows[seq as usize]["deviceId"]);
            seqs.push(seq);
        }
    }
    seqs.sort();
    assert_eq!(seqs, (0..2_000).collect::<Vec<_>>());
    // Ad hoc SQL reads gzip JSON lines too, typed by the writing query.
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, ", format = 'json', compression = 'gzip'"))
        .unwrap();
    let rows = sql(
        &m,
        "SELECT count(*) AS n, count(DISTINCT seq) AS d, min(ts) AS first FROM arch",
    )
    .await;
    assert_eq!(
        rows,
        [json!({"n": 2000, "d": 2000, "first": "2026-11-21T12:00:00Z"})]
    );
    m.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_archive_on_moto_is_read_by_pyarrow_and_by_ad_hoc_sql() {
    let moto = Moto::start();
    moto.create_bucket("sensor-archive");
    let dir = Scratch::new("archive-s3");
    let input = dir.path().join("in.jsonl");
    let rows = write_readings(&input, 3_000, 0);
    let opts = format!(", url = 's3://sensor-archive/raw/v1', {}", moto.options());
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, &opts)).unwrap();
    finish(&m, &["q"]).await;
    assert!(
        !dir.path().join("archive").exists(),
        "an S3 archive writes nothing locally"
    );
    let files = python(
        r#"
import json, sys
import pyarrow.fs as fs, pyarrow.parquet as pq
s3 = fs.S3FileSystem(endpoint_override=sys.argv[1], scheme="http", region="us-east-1",
                     access_key="test", secret_key="test")
out = []
for info in s3.get_file_info(fs.FileSelector("sensor-archive/raw/v1", recursive=True)):
    if info.type != fs.FileType.File:
        continue
    pf = pq.ParquetFile(s3.open_input_file(info.path))
    t = pf.read()
    out.append({
        "path": info.path[len("sensor-archive/raw/v1/"):],
        "rows": t.num_rows,
        "codec": pf.metadata.row_group(0).column(0).compression,
        "schema": [f"{c.name}:{c.type}" for c in t.schema],
        "data": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                 for r in t.to_pylist()],
    })
print(json.dumps(out))
"#,
        &[&format!("127.0.0.1:{}", moto.port)],
    );
    let names = check_files(&files, &rows);
    assert_eq!(names.len(), 3, "one object per hour: {names:?}");

    let m = manager(Some(dir.path()));
    m.apply(&app(&input, &opts)).unwrap();
    let n = sql(
        &m,
        "SELECT count(*) AS n, sum(seq) AS s FROM arch WHERE hour >= '13'",
    )
    .await;
    assert_eq!(n, [json!({"n": 2000, "s": (1000..3000).sum::<i64>()})]);
    m.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_killed_server_leaves_no_partial_object_and_sluice_query_reads_the_rest() {
    let dir = scratch("archive-kill");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    // Fast readings, small buffers: objects are written all the time, so the kills
    // land while one is being written.
    std::fs::write(
        queries.join("a.sql"),
        "CREATE STREAM sim (deviceId INT NOT NULL, temperature DOUBLE, humidity DOUBLE,
            deviceIP TEXT, ts TIMESTAMP)
         WITH (connector = 'simulator', devices = '1000', rate = '200000');
         CREATE SINK arch WITH (connector = 'archive', flush_size_mb = '1',
            flush_interval = '200ms', partition_format = 'dt=%Y-%m-%d/minute=%H%M');
         CREATE QUERY q AS INSERT INTO arch SELECT * FROM sim;",
    )
    .unwrap();
    let data = dir.join("data");
    let archive = data.join("archive").join("arch");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--queries",
        queries.to_str().unwrap(),
    ];
    for round in 0..3 {
        let server = Server::start(&dir, &format!("kill{round}"), &args, &[]);
        let want = walk(&archive).len() + 3;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while walk(&archive).len() < want {
            assert!(std::time::Instant::now() < deadline, "no objects written");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(137 * round as u64));
        drop(server); // SIGKILL
    }
    let files = python(READ_LOCAL, &[archive.to_str().unwrap()]);
    let total: i64 = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_i64().unwrap())
        .sum();
    assert!(total > 0);
    // Whatever a kill left behind (a staging file) is not an object readers see.
    for f in walk(&archive) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(".parquet") || name.contains(".parquet#"),
            "{name}"
        );
    }
    let rows = sluice_query(&data, "SELECT count(*) AS n FROM arch").unwrap();
    assert_eq!(rows[0]["n"], total, "sluice query reads what pyarrow reads");
    // An error from the CLI: position and exit code 1.
    let (code, err) = sluice_query(&data, "SELECT nope FROM arch").unwrap_err();
    assert_eq!(code, Some(1));
    assert!(err.contains("1:8: ") && err.contains("nope"), "{err}");
}

async fn post_query(
    router: &axum::Router,
    body: Value,
    accept: Option<&str>,
) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::post("/query").header("content-type", "application/json");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, ct, bytes.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_query_answers_json_csv_and_arrow_within_its_limits_and_only_reads() {
    let dir = Scratch::new("archive-api");
    let input = dir.path().join("in.jsonl");
    write_readings(&input, 3_000, 0);
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "{};
         CREATE STREAM r2 (deviceId TEXT, temperature DOUBLE, seq BIGINT)
           WITH (connector = 'file', path = '{}');
         CREATE SINK hot WITH (connector = 'table', table = 'hot', partition_key = 'deviceId');
         CREATE QUERY q2 AS INSERT INTO hot SELECT deviceId, temperature, seq FROM r2
           WHERE temperature > 30;",
        app(&input, ""),
        input.display()
    ))
    .unwrap();
    finish(&m, &["q", "q2"]).await;

    let m = manager(Some(dir.path()));
    m.apply(&app(&input, "")).unwrap();
    let router = sluice::api::app(
        Arc::clone(&m),
        sluice::api::ApiOptions {
            data_dir: Some(dir.path().to_path_buf()),
            adhoc: Limits {
                timeout: Duration::from_secs(2),
                memory_bytes: 8 << 20,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let list = router
        .clone()
        .oneshot(Request::get("/tables").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(
        &axum::body::to_bytes(list.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        list,
        json!([{"name": "arch", "kind": "archive"}, {"name": "hot", "kind": "table"}])
    );

    // JSON, with the limit and the truncation flag.
    let (status, ct, body) = post_query(
        &router,
        json!({"sql": "SELECT seq, ts FROM arch ORDER BY seq", "limit": 5}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, "application/json");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["row_count"], 5);
    assert_eq!(doc["truncated"], true);
    assert_eq!(
        doc["rows"][4],
        json!({"seq": 4, "ts": "2026-11-21T12:00:14.400Z"})
    );
    assert_eq!(
        doc["columns"][1],
        json!({"name": "ts", "type": "Timestamp(ms)"})
    );

    // CSV through the Accept header.
    let (status, ct, body) = post_query(
        &router,
        json!({"sql": "SELECT hour, count(*) AS n FROM arch GROUP BY hour ORDER BY hour"}),
        Some("text/csv"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/csv"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "hour,n\n12,1000\n13,1000\n14,1000\n"
    );

    // Arrow IPC, read back with arrow's reader.
    let (status, ct, body) = post_query(
        &router,
        json!({"sql": "SELECT deviceId, max(temperature) AS t FROM hot GROUP BY deviceId", "format": "arrow"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, "application/vnd.apache.arrow.stream");
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 17, "one row per device of the embedded table");

    // Only reads; errors carry positions and a 4xx.
    for bad in [
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO arch VALUES (1)",
        "COPY arch TO '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE arch",
        "SELECT 1; SELECT 2",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let (status, _, body) = post_query(&router, json!({"sql": bad}), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert!(!e["error"].as_str().unwrap().is_empty(), "{bad}: {e}");
    }
    let (status, _, body) =
        post_query(&router, json!({"sql": "SELECT * FROM '/etc/passwd'"}), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("unknown table '/etc/passwd'; tables: arch, hot"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = post_query(
        &router,
        json!({"sql": "SELECT seq\nFROM arch WHERE nope > 1"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["position"], json!({"line": 2, "column": 17}), "{e}");

    // A query over its memory (8 MB here) fails instead of growing; one over its time
    // is stopped.
    let (status, _, body) = post_query(
        &router,
        json!({"sql": "SELECT x FROM generate_series(1, 20000000) AS t(x) ORDER BY x DESC", "limit": 1}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("esources exhausted"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = post_query(
        &router,
        json!({"sql": "SELECT count(*) FROM generate_series(1, 100000000000)"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("longer than 2 s"));
    let (status, _, _) = post_query(
        &router,
        json!({"sql": "SELECT 1", "limit": 1_000_000}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    m.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_archive_reads_back_with_the_query_types() {
    let dir = Scratch::new("archive-json");
    let input = dir.path().join("in.jsonl");
    write_readings(&input, 1_500, 0);
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, ", format = 'json'")).unwrap();
    finish(&m, &["q"]).await;
    let m = manager(Some(dir.path()));
    m.apply(&app(&input, ", format = 'json'")).unwrap();
    let out = adhoc::run(
        "SELECT hour, count(*) AS n, min(ts) AS first, max(seq) AS last FROM arch GROUP BY hour ORDER BY hour",
        None,
        &sources(&m),
        &Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        out.schema.field_with_name("first").unwrap().data_type(),
        &datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            None
        )
    );
    let doc: Value =
        serde_json::from_slice(&out.encode(adhoc::OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(
        doc["rows"],
        json!([
            {"hour": "12", "n": 1000, "first": "2026-11-21T12:00:00Z", "last": 999},
            {"hour": "13", "n": 500, "first": "2026-11-21T13:00:00Z", "last": 1499},
        ])
    );
    m.shutdown(Duration::from_secs(5)).await;
}

/// A JSON-lines archive written with `timestamp_format = 'epoch_ms'` holds numbers,
/// which ad hoc SQL still reads as times (of a microsecond column too); and every ad
/// hoc output writes a time and a float the one way (`…Z`, `20`), the table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_ms_json_archive_reads_back_as_times_in_every_output() {
    let dir = Scratch::new("archive-epoch");
    let input = dir.path().join("in.jsonl");
    write_readings(&input, 10, 0);
    let app = format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, seq BIGINT, ts TIMESTAMP(6))
           WITH (connector = 'file', path = '{}');
         CREATE SINK arch WITH (connector = 'archive', format = 'json',
           timestamp_format = 'epoch_ms');
         CREATE QUERY q AS INSERT INTO arch SELECT deviceId, temperature, seq, ts FROM r;",
        input.display()
    );
    let m = manager(Some(dir.path()));
    m.apply(&app).unwrap();
    finish(&m, &["q"]).await;
    let objects = walk(&dir.path().join("archive").join("arch"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let first = std::fs::read_to_string(&objects[0]).unwrap();
    assert_eq!(
        first.lines().next().unwrap(),
        format!(r#"{{"deviceId":"dev-0","temperature":20,"seq":0,"ts":{T0}}}"#)
    );

    let m = manager(Some(dir.path()));
    m.apply(&app).unwrap();
    let q = "SELECT seq, temperature, ts FROM arch WHERE seq < 2 ORDER BY seq";
    let out = adhoc::run(q, None, &sources(&m), &Limits::default())
        .await
        .unwrap();
    let text = |f| String::from_utf8(out.encode(f).unwrap()).unwrap();
    let doc: Value = serde_json::from_str(&text(adhoc::OutputFormat::Json)).unwrap();
    assert_eq!(
        doc["rows"],
        json!([
            {"seq": 0, "temperature": 20, "ts": "2026-11-21T12:00:00Z"},
            {"seq": 1, "temperature": 20.5, "ts": "2026-11-21T12:00:03.600Z"},
        ])
    );
    assert_eq!(
        text(adhoc::OutputFormat::Csv),
        "seq,temperature,ts\n0,20,2026-11-21T12:00:00Z\n1,20.5,2026-11-21T12:00:03.600Z\n"
    );
    let table = text(adhoc::OutputFormat::Table);
    assert!(
        table.contains("| 1   | 20.5        | 2026-11-21T12:00:03.600Z |"),
        "{table}"
    );
    m.shutdown(Duration::from_secs(5)).await;
}

/// Ad hoc SQL finds an archive and an embedded table by their names as written, upper
/// case included, and its errors are Sluice's: positioned, with the name in another
/// case as a hint, never DataFusion's advice about its configuration (#11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_hoc_sql_finds_archives_and_tables_by_their_exact_names() {
    let dir = Scratch::new("archive-names");
    let input = dir.path().join("in.jsonl");
    let readings = write_readings(&input, 300, 0);
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, seq BIGINT, ts TIMESTAMP)
           WITH (connector = 'file', path = '{}');
         CREATE SINK RawArchive WITH (connector = 'archive', format = 'json', flush_interval = '1h');
         CREATE SINK \"Hot Items\" WITH (connector = 'table', table = 'HotItems',
           partition_key = 'deviceId');
         CREATE QUERY q AS INSERT INTO RawArchive SELECT deviceId, temperature, seq, ts FROM r;
         -- A stream of its own: a second query attached to a running file stream
         -- misses what the first already read.
         CREATE STREAM r2 (deviceId TEXT, temperature DOUBLE)
           WITH (connector = 'file', path = '{}');
         CREATE QUERY hot AS INSERT INTO \"Hot Items\" SELECT deviceId, temperature FROM r2
           WHERE temperature > 30;",
        input.display(),
        input.display()
    ))
    .unwrap();
    finish(&m, &["q", "hot"]).await;

    assert_eq!(
        sql(&m, "SELECT count(*) AS n FROM RawArchive").await,
        [json!({"n": 300})]
    );
    let hot: BTreeSet<&str> = readings
        .iter()
        .filter(|r| r["temperature"].as_f64().is_some_and(|t| t > 30.0))
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        sql(&m, "SELECT count(*) AS n FROM \"HotItems\"").await,
        [json!({"n": hot.len()})]
    );
    for (q, want) in [
        (
            "SELECT * FROM rawarchive",
            "1:15: unknown table 'rawarchive'; did you mean 'RawArchive'? Names are case-sensitive",
        ),
        (
            "SELECT * FROM hotitems",
            "1:15: unknown table 'hotitems'; did you mean 'HotItems'? Names are case-sensitive",
        ),
        (
            "SELECT *\nFROM nothing",
            "2:6: unknown table 'nothing'; tables: HotItems, RawArchive",
        ),
        (
            "SELECT deviceid FROM RawArchive",
            "1:8: unknown column 'deviceid'; did you mean 'deviceId'? Names are case-sensitive. \
             Columns: deviceId, temperature, seq, ts, dt, hour",
        ),
        (
            "SELECT seq FROM RawArchive a, RawArchive b",
            "1:8: column 'seq' is ambiguous: more than one table read has it; qualify it with \
             the table's name or alias",
        ),
        (
            "SELECT seq FROM RawArchive WHERE seq > 'many'",
            "1:40: 'many' cannot be read as BIGINT",
        ),
    ] {
        let err = adhoc::run(q, None, &sources(&m), &Limits::default())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, want, "{q}");
    }
}
/// Azure Blob Storage's emulator (Azurite, from npm) on a free port, with a container.
struct Azurite {
    child: std::process::Child,
    url: String,
}

impl Azurite {
    fn start(dir: &Path, container: &str) -> Azurite {
        let port = free_port();
        let child = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--location",
                dir.to_str().unwrap(),
                "--silent",
                "--skipApiVersionCheck",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("azurite-blob (run .ci/install-deps for azurite)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let url = format!("http://127.0.0.1:{port}");
        python(&format!("{AZURE_CONN}\n{AZURE_CREATE}"), &[&url, container]);
        Azurite { child, url }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's well-known development account (public, documented by Microsoft).
const AZURE_CONN: &str = r#"
def conn(url):
    return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"BlobEndpoint={url}/devstoreaccount1;")
"#;

const AZURE_CREATE: &str = r#"
import json, sys
from azure.storage.blob import BlobServiceClient
BlobServiceClient.from_connection_string(conn(sys.argv[1])).create_container(sys.argv[2])
print(json.dumps("ok"))
"#;

#[test]
fn azure_archive_on_azurite_is_read_by_pyarrow_and_sluice_query() {
    let dir = scratch("archive-azure");
    let az = Azurite::start(&dir.join("azurite"), "archive");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    std::fs::write(
        queries.join("a.sql"),
        "CREATE STREAM sim (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP)
         WITH (connector = 'simulator', devices = '50', rate = '2000', limit = '4000',
               start = '2026-11-21T12:59:59Z');
         CREATE SINK arch WITH (connector = 'archive', url = 'az://archive/readings',
            flush_interval = '500ms');
         CREATE QUERY q AS INSERT INTO arch SELECT * FROM sim;",
    )
    .unwrap();
    let data = dir.join("data");
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", az.url.as_str()),
    ];
    let mut server = Server::start(
        &dir,
        "azure",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--queries",
            queries.to_str().unwrap(),
        ],
        &env,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.get_json("/queries/q")["status"] != "finished" {
        assert!(std::time::Instant::now() < deadline, "query never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "{}", server.stderr_text());
    assert!(!data.join("archive").exists(), "nothing written locally");

    // pyarrow reads every blob the sink wrote, downloaded with Azure's own client.
    let script = format!(
        "{AZURE_CONN}\n{}",
        r#"
import io, json, sys
import pyarrow.parquet as pq
from azure.storage.blob import BlobServiceClient
c = BlobServiceClient.from_connection_string(conn(sys.argv[1])).get_container_client("archive")
out = []
for b in c.list_blobs(name_starts_with="readings/"):
    t = pq.read_table(io.BytesIO(c.download_blob(b.name).readall()))
    out.append({"name": b.name, "rows": t.num_rows,
                "hours": sorted({v.hour for v in t.column("ts").to_pylist()})})
print(json.dumps(out))
"#
    );
    let blobs = python(&script, &[&az.url]);
    let mut total = 0;
    for b in blobs.as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        assert!(name.ends_with(".parquet"), "{name}");
        let hour: u64 = name["readings/dt=2026-11-21/hour=".len()..][..2]
            .parse()
            .unwrap();
        assert_eq!(b["hours"], json!([hour]), "{name}: rows of its own hour");
        total += b["rows"].as_i64().unwrap();
    }
    assert_eq!(total, 4_000, "every reading archived: {blobs}");
    let rows = sluice_query_env(
        &data,
        "SELECT hour, count(*) AS n FROM arch GROUP BY hour ORDER BY hour",
        &env,
    )
    .unwrap();
    let n: i64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(n, 4_000);
    assert_eq!(rows[0]["hour"], "12");
    assert_eq!(rows[1]["hour"], "13");
}
