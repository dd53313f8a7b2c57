//! A stream whose run fails says so and comes back: its queries are `failed` with
//! the reason (never `running` or `finished`), its open windows are not emitted as if
//! the input had ended, and when trying again may help (a file, a broker, a store) it
//! starts again with backoff, counted in `restarts`; and queries applied together on
//! one short input all start before it is read — through the real manager.

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

/// Queries of one application on one short input start in the same run, before the
/// source reads: each sees every record (started one by one, the second could join
/// after a small file had been read to its end, and see nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_applied_together_on_one_file_all_see_every_record() {
    let dir = Scratch::new("supervision_together");
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..200).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    for round in 0..5 {
        let m = manager(None);
        let outs: Vec<_> = (0..3)
            .map(|i| dir.path().join(format!("out-{round}-{i}.jsonl")))
            .collect();
        let mut sql = format!(
            "CREATE STREAM r (id INT) WITH (connector = 'file', path = '{}');\n",
            input.display()
        );
        for (i, out) in outs.iter().enumerate() {
            sql.push_str(&format!(
                "CREATE SINK s{i} WITH (connector = 'file', path = '{}');\n\
                 CREATE QUERY q{i} AS INSERT INTO s{i} SELECT id FROM r;\n",
                out.display()
            ));
        }
        m.apply(&sql).unwrap();
        for i in 0..3 {
            let q = m.query_state(&format!("q{i}")).unwrap();
            wait_for("the query to finish", Duration::from_secs(20), || {
                q.status() == QueryStatus::Finished
            })
            .await;
        }
        m.shutdown(Duration::from_secs(5)).await;
        for out in &outs {
            assert_eq!(
                read_lines(out).len(),
                200,
                "round {round}: {}",
                out.display()
            );
        }
    }
}
