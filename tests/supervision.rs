//! A stream whose run fails says so and comes back: its queries are `failed` with
//! the reason (never `running` or `finished`), its open windows are not emitted as if
//! the input had ended, and when trying again may help (a file, a broker, a store) it
//! starts again with backoff, counted in `restarts` — through the real manager.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::runtime::manager::QueryStatus;

use crate::services::Scratch;
use crate::support::{manager, read_lines, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_source_fails_is_failed_then_starts_again_with_backoff() {
    let dir = Scratch::new("supervision");
    let input = dir.path().join("late.jsonl");
    let output = dir.path().join("out.jsonl");
    let m = manager(None);
    m.apply(&format!(
        "CREATE STREAM r (id INT, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
           WITH (connector = 'file', path = '{}');\n\
         CREATE SINK out WITH (connector = 'file', path = '{}');\n\
         CREATE QUERY q AS INSERT INTO out SELECT id FROM r;\n\
         CREATE QUERY w AS SELECT window_start, count(*) AS n FROM r \
           GROUP BY TUMBLE(ts, INTERVAL '10' SECOND);",
        input.display(),
        output.display()
    ))
    .unwrap();
    // The file is not there yet: the source fails; the queries say why.
    let q = m.query_state("q").unwrap();
    wait_for("q to fail", Duration::from_secs(10), || {
        matches!(q.status(), QueryStatus::Failed(_))
    })
    .await;
    let QueryStatus::Failed(why) = q.status() else {
        unreachable!()
    };
    assert!(
        why.contains("stream 'r' failed: its source failed: cannot open"),
        "{why}"
    );
    assert_eq!(m.query_state("w").unwrap().status(), q.status());
    let stream = m.stream_state("r").unwrap();
    let status = stream.status.lock().unwrap().clone();
    assert!(
        status.contains("starting again in 1000 ms (attempt 1)"),
        "{status}"
    );

    // Once it is there, the next attempt reads it to the end.
    std::fs::write(
        &input,
        "{\"id\": 1, \"ts\": 1000}\n{\"id\": 2, \"ts\": 2000}\n",
    )
    .unwrap();
    wait_for("q to finish", Duration::from_secs(20), || {
        q.status() == QueryStatus::Finished
    })
    .await;
    let w = m.query_state("w").unwrap();
    wait_for("w to finish", Duration::from_secs(5), || {
        w.status() == QueryStatus::Finished
    })
    .await;
    let stream = m.stream_state("r").unwrap();
    assert!(
        stream.restarts.load(Ordering::Relaxed) >= 1,
        "{:?}",
        stream.status
    );
    m.shutdown(Duration::from_secs(5)).await;
    let rows = read_lines(&output);
    assert_eq!(
        rows,
        vec![serde_json::json!({"id": 1}), serde_json::json!({"id": 2})]
    );
}
