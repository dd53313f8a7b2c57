//! The `sluice` binary end to end: `check` exit codes and positioned errors, and `run`
//! over real files and the simulator, through the real runtime (tasks, channels,
//! sources, sinks).

use std::path::PathBuf;
use std::process::Command;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A fresh directory under the target dir, removed and recreated per test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_accepts_the_canned_applications() {
    let queries = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&queries)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let out = sluice().arg("check").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        files.len()
    );
}

#[test]
fn check_reports_positioned_errors_with_exit_code_1() {
    let dir = scratch("check_errors");
    let app = dir.join("bad.sql");
    std::fs::write(
        &app,
        "CREATE STREAM r (x INT, ts TIMESTAMP) WITH (connector = 'simulator');\nSELECT y FROM r;\n",
    )
    .unwrap();
    let out = sluice().arg("check").arg(&app).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.sql:2:8: unknown column 'y'; columns: x, ts, arrival_time"),
        "{stderr}"
    );
}

#[test]
fn run_reads_a_file_to_its_end_and_writes_windows_and_errors() {
    let dir = scratch("run_file");
    let input = dir.join("readings.jsonl");
    let mut lines = String::new();
    // 3 devices × 30 s, one reading per second; plus one malformed line.
    for s in 0..30 {
        for d in 1..=3 {
            lines.push_str(&format!(
                "{{\"deviceId\": {d}, \"temperature\": {}, \"ts\": {}}}\n",
                40 + d * 10 + s % 3,
                s * 1000
            ));
        }
        if s == 7 {
            lines.push_str("{\"deviceId\": oops}\n");
        }
    }
    std::fs::write(&input, lines).unwrap();
    let out_path = dir.join("out.jsonl");
    let err_path = dir.join("errors.jsonl");
    let app = dir.join("app.sql");
    std::fs::write(
        &app,
        format!(
            "CREATE SINK out WITH (connector = 'file', path = '{}');\n\
             CREATE SINK bad WITH (connector = 'file', path = '{}');\n\
             CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP,\n\
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
               WITH (connector = 'file', path = '{}', errors = 'bad');\n\
             INSERT INTO out SELECT window_start, deviceId, count(*) AS n, max(temperature) AS hi\n\
             FROM r WHERE temperature > 55 GROUP BY TUMBLE(ts, INTERVAL '10' SECOND), deviceId ORDER BY deviceId;\n",
            out_path.display(),
            err_path.display(),
            input.display()
        ),
    )
    .unwrap();
    let status = sluice().arg("run").arg(&app).status().unwrap();
    assert!(status.success());
    let out = std::fs::read_to_string(&out_path).unwrap();
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Devices 2 (60..62) and 3 (70..72) pass the filter; 3 windows each.
    assert_eq!(rows.len(), 6, "{out}");
    for r in &rows {
        assert_eq!(r["n"], 10, "{r}");
        assert!(r["deviceId"] == 2 || r["deviceId"] == 3);
    }
    assert_eq!(rows[0]["window_start"], "1970-01-01T00:00:00Z");
    assert_eq!(rows[5]["window_start"], "1970-01-01T00:00:20Z");
    let errors = std::fs::read_to_string(&err_path).unwrap();
    let errors: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "malformed");
    assert_eq!(errors[0]["payload"], "{\"deviceId\": oops}");
    assert_eq!(errors[0]["stream"], "r");
}

#[test]
fn run_the_simulator_counts_every_reading_exactly_once() {
    let dir = scratch("run_simulator");
    let app = dir.join("sim.sql");
    // 20,000 readings at a nominal 1,000/s of event time (20 s), up to 500 ms out of
    // order; a 1 s watermark delay covers that, so none is late and the windows'
    // counts add up to exactly the limit.
    std::fs::write(
        &app,
        "CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, humidity DOUBLE, deviceIP TEXT, ts TIMESTAMP,\n\
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
           WITH (connector = 'simulator', devices = '50', rate = '1000', throttle = 'false', jitter = '500ms',\n\
                 limit = '20000', start = '2026-01-01T00:00:00Z');\n\
         CREATE SINK console WITH (connector = 'stdout');\n\
         INSERT INTO console SELECT window_start, count(*) AS n, count(DISTINCT deviceId) AS devices\n\
         FROM r GROUP BY TUMBLE(ts, INTERVAL '5' SECOND);\n",
    )
    .unwrap();
    // Several runs: the first records a source sends once raced the query's
    // attachment to its stream and were lost (regression).
    for _ in 0..5 {
        let out = sluice().arg("run").arg(&app).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let total: i64 = rows.iter().map(|r| r["n"].as_i64().unwrap()).sum();
        assert_eq!(total, 20_000, "{stdout}");
        // Jitter moves the first readings into the window before 00:00:00.
        assert!(rows.len() >= 4 && rows.len() <= 5, "{stdout}");
        assert!(rows.iter().all(|r| r["devices"].as_i64().unwrap() <= 50));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("\"kind\":\"late\""));
    }
}
