//! What the connector tests share about Sluice itself (test support): an in-process
//! manager, the JSON lines a `file` sink wrote, a stream's record count, waiting for a
//! condition or for a query to finish, and `sluice query` on a data directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::runtime::{Connectors, Manager, ManagerOptions};
use sluice::sinks::SinkContext;
use sluice::sources::SourceContext;

/// A manager ticking every 20 ms, with a data directory for connectors that keep
/// state (checkpoints, embedded tables) when one is given.
pub fn manager(data_dir: Option<&Path>) -> Arc<Manager> {
    let data_dir = data_dir.map(Path::to_path_buf);
    Manager::new(ManagerOptions {
        tick: Duration::from_millis(20),
        connectors: Connectors {
            sources: SourceContext {
                data_dir: data_dir.clone(),
                ..Default::default()
            },
            sinks: SinkContext {
                data_dir,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
}

/// The rows a `file` sink wrote (none when it wrote nothing yet).
pub fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records a stream has decoded so far.
pub fn records_in(m: &Manager, stream: &str) -> u64 {
    m.stream_state(stream)
        .map(|s| s.records_in.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// Waits until `f` holds, failing the test after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sluice query --format json SQL` on a data directory: the answer's rows, or the
/// exit code and stderr when it failed.
pub fn sluice_query(data_dir: &Path, sql: &str) -> Result<Value, (Option<i32>, String)> {
    sluice_query_env(data_dir, sql, &[])
}

/// [`sluice_query`] with environment variables (a store's settings).
pub fn sluice_query_env(
    data_dir: &Path,
    sql: &str,
    env: &[(&str, &str)],
) -> Result<Value, (Option<i32>, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .envs(env.iter().copied())
        .args([
            "query",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--format",
            "json",
            sql,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(doc["rows"].clone())
}

/// Waits until the query has finished (its input ended), failing the test if it
/// failed or is still running after a minute, with the health of every connector.
pub async fn run_to_end(m: &Manager, query: &str) {
    // A bound, not an expectation: generous for a query writing through retries to a
    // Python emulator while the whole suite shares two cores.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = m.query_state(query).expect("query exists");
        let status = format!("{:?}", q.status()).to_lowercase();
        if status.contains("finished") {
            return;
        }
        assert!(
            !status.contains("failed"),
            "query {query} failed: {:?}",
            q.status()
        );
        if Instant::now() > deadline {
            // Say where it is stuck: the sinks' and streams' connection health.
            let catalog = m.catalog();
            let sinks: Vec<String> = catalog
                .sinks
                .keys()
                .filter_map(|n| m.sink_state(n).and_then(|s| s.health.clone()))
                .map(|h| h.to_json().to_string())
                .collect();
            let streams: Vec<String> = catalog
                .streams
                .keys()
                .filter_map(|n| m.stream_state(n).and_then(|s| s.health.clone()))
                .map(|h| h.to_json().to_string())
                .collect();
            panic!("query {query} still {status}; sinks {sinks:?}; streams {streams:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
