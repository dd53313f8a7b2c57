//! The `redis` sink against a real `redis-server` (one per test, see `services.rs`),
//! driven through the real runtime: SQL applied to a [`Manager`], records pushed into
//! an `http` stream with [`Manager::ingest`], and what landed in Redis read back key
//! by key. Covers every command kind, MULTI/EXEC, key escaping and hashing, `ONCE`
//! counters under a replayed window, nulls, user errors (a missing column, a key of
//! the wrong type) and an outage: Redis stopped mid-run, the sink retrying and
//! reporting it, nothing lost once Redis is back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;
use redis::FromRedisValue;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sluice::api::{ApiOptions, app};
use sluice::error::Position;
use sluice::runtime::{Manager, ManagerOptions};
use sluice::sinks::Sink;
use sluice::sinks::redis::RedisSink;
use sluice::sql::Options;
use tower::ServiceExt;

use crate::api::eventually;
use crate::services::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

/// A Redis server, a manager, and a connection to check with.
struct Setup {
    redis: RedisServer,
    manager: Arc<Manager>,
    conn: MultiplexedConnection,
}

/// A processing-time stream (no watermark: stateless queries emit at once).
const READINGS: &str = "CREATE STREAM r (seq INT NOT NULL, deviceId INT, temperature DOUBLE, \
     humidity DOUBLE, deviceIP TEXT, climate TEXT, room TEXT, ts TIMESTAMP) \
     WITH (connector = 'http');\n";

impl Setup {
    async fn new() -> Self {
        let redis = RedisServer::start();
        let conn = redis.connection().await;
        let manager = Manager::new(ManagerOptions {
            tick: Duration::from_millis(20),
            ..Default::default()
        });
        Setup {
            redis,
            manager,
            conn,
        }
    }

    /// `CREATE SINK name` for this server, with `commands` and extra options.
    fn sink_sql(&self, name: &str, commands: &str, extra: &str) -> String {
        format!(
            "CREATE SINK {name} WITH (connector = 'redis', url = '{}', commands = '{commands}'{extra});\n",
            self.redis.url()
        )
    }

    fn apply(&self, sql: &str) {
        self.manager
            .apply(sql)
            .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    }

    /// The readings stream, a sink with `commands`, and `INSERT INTO out SELECT * …`.
    fn pipeline(&self, commands: &str, extra: &str) {
        self.apply(&format!(
            "{READINGS}{}CREATE QUERY q AS INSERT INTO out SELECT * FROM r;",
            self.sink_sql("out", commands, extra)
        ));
    }

    async fn ingest(&self, stream: &str, records: &[Value]) {
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        let report = self
            .manager
            .ingest(stream, body.into_bytes())
            .await
            .expect("ingest");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert_eq!(report.accepted, records.len());
    }

    /// Waits until sink `name` has written `rows` rows (and never more).
    async fn wait_rows(&self, name: &str, rows: u64) {
        let state = eventually("the sink to start", WAIT, || async {
            self.manager.sink_state(name)
        })
        .await;
        eventually(&format!("{rows} rows written by sink {name}"), WAIT, || {
            let state = Arc::clone(&state);
            async move {
                let status = state.status.lock().unwrap().clone();
                assert!(!status.starts_with("failed"), "sink {name}: {status}");
                let written = state.rows.load(Ordering::Relaxed);
                assert!(
                    written <= rows,
                    "sink {name} wrote {written} rows, expected {rows}"
                );
                (written == rows).then_some(())
            }
        })
        .await;
    }

    /// Waits for sink `name` to fail, returning its status.
    async fn sink_failure(&self, name: &str) -> String {
        eventually(&format!("sink {name} to fail"), WAIT, || async {
            let state = self.manager.sink_state(name)?;
            let status = state.status.lock().unwrap().clone();
            status.starts_with("failed").then_some(status)
        })
        .await
    }

    /// Runs one Redis command (`args[0]` is the verb).
    async fn redis<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.conn.clone();
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.redis(&["GET", key]).await
    }

    async fn hash(&self, key: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self.redis(&["HGETALL", key]).await;
        pairs.sort();
        pairs
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.redis(&["KEYS", pattern]).await;
        keys.sort();
        keys
    }

    /// How often Redis ran `command` (from INFO commandstats).
    async fn calls(&self, command: &str) -> u64 {
        let info: String = self.redis(&["INFO", "commandstats"]).await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

fn reading(seq: i64, device: i64, temperature: f64, climate: &str, ts: i64) -> Value {
    json!({
        "seq": seq,
        "deviceId": device,
        "temperature": temperature,
        "humidity": 40.5,
        "deviceIP": format!("10.0.0.{device}"),
        "climate": climate,
        "ts": ts,
    })
}

/// The next `n` pub/sub messages, as (channel, payload).
async fn next_messages(pubsub: &mut redis::aio::PubSub, n: usize) -> Vec<(String, String)> {
    let mut messages = pubsub.on_message();
    let mut got = Vec::new();
    for _ in 0..n {
        let msg = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("a published message")
            .expect("subscription open");
        got.push((
            msg.get_channel_name().to_string(),
            msg.get_payload::<String>().unwrap(),
        ));
    }
    got
}

fn hash_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_with_ex_incrby_and_hincrby() {
    let s = Setup::new().await;
    s.pipeline(
        "SET latest:{deviceId} {temperature}@{ts} EX 100; SET plain {seq}; INCRBY count 1; \
         INCRBY climate:{climate} {deviceId}; HINCRBY per_device {deviceId} {seq}",
        "",
    );
    s.ingest(
        "r",
        &[
            reading(1, 1, 20.5, "cool", 1_767_262_500_000),
            reading(2, 2, 90.0, "hot", 1_767_262_501_250),
            reading(3, 1, 21.0, "cool", 1_767_262_502_000),
            reading(4, 3, 95.5, "hot", 1_767_262_503_000),
        ],
    )
    .await;
    s.wait_rows("out", 4).await;

    assert_eq!(
        s.get("latest:1").await.as_deref(),
        Some("21@2026-01-01T10:15:02Z")
    );
    assert_eq!(
        s.get("latest:2").await.as_deref(),
        Some("90@2026-01-01T10:15:01.250Z")
    );
    let ttl: i64 = s.redis(&["TTL", "latest:1"]).await;
    assert!((90..=100).contains(&ttl), "TTL of latest:1 is {ttl}");
    let ttl: i64 = s.redis(&["TTL", "plain"]).await;
    assert_eq!(ttl, -1, "SET without EX leaves no expiry");
    assert_eq!(s.get("plain").await.as_deref(), Some("4"));
    assert_eq!(s.get("count").await.as_deref(), Some("4"));
    assert_eq!(s.get("climate:cool").await.as_deref(), Some("2"));
    assert_eq!(s.get("climate:hot").await.as_deref(), Some("5"));
    assert_eq!(
        s.hash("per_device").await,
        hash_of(&[("1", "4"), ("2", "2"), ("3", "4")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hset_every_column_or_listed_columns_with_renamed_fields() {
    let s = Setup::new().await;
    s.pipeline(
        "HSET all:{deviceId}; \
         HSET some:{deviceId} temperature deviceIP timestamp={ts} label=t{temperature}/{climate}",
        "",
    );
    s.ingest("r", &[reading(7, 5, 33.25, "cool", 1_767_262_500_000)])
        .await;
    s.wait_rows("out", 1).await;

    assert_eq!(
        s.hash("all:5").await,
        hash_of(&[
            ("seq", "7"),
            ("deviceId", "5"),
            ("temperature", "33.25"),
            ("humidity", "40.5"),
            ("deviceIP", "10.0.0.5"),
            ("climate", "cool"),
            ("ts", "2026-01-01T10:15:00Z"),
        ]),
        "no list: every column (room is null, so it is left out)"
    );
    assert_eq!(
        s.hash("some:5").await,
        hash_of(&[
            ("temperature", "33.25"),
            ("deviceIP", "10.0.0.5"),
            ("timestamp", "2026-01-01T10:15:00Z"),
            ("label", "t33.25/cool"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zadd_keep_trims_to_the_newest() {
    let s = Setup::new().await;
    s.pipeline("ZADD SensorData {ts} {deviceId} KEEP 3", "");
    let base = 1_767_262_500_000;
    // Two batches: the trim must hold across pipelines, not only within one.
    s.ingest(
        "r",
        &[
            reading(1, 1, 20.0, "cool", base + 5_000),
            reading(2, 2, 20.0, "cool", base + 1_000),
            reading(3, 3, 20.0, "cool", base + 4_000),
        ],
    )
    .await;
    s.wait_rows("out", 3).await;
    s.ingest(
        "r",
        &[
            reading(4, 4, 20.0, "cool", base + 2_000),
            reading(5, 5, 20.0, "cool", base + 6_000),
            // Device 1 again, older: its score moves down.
            reading(6, 1, 20.0, "cool", base + 3_000),
        ],
    )
    .await;
    s.wait_rows("out", 6).await;

    let members: Vec<(String, i64)> = s
        .redis(&["ZRANGE", "SensorData", "0", "-1", "WITHSCORES"])
        .await;
    assert_eq!(
        members,
        vec![
            ("1".to_string(), base + 3_000),
            ("3".to_string(), base + 4_000),
            ("5".to_string(), base + 6_000),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_a_subscriber() {
    let s = Setup::new().await;
    let mut pubsub = s.redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("Warnings").await.unwrap();
    pubsub.subscribe("device:9").await.unwrap();
    s.pipeline(
        "PUBLISH Warnings {*}; PUBLISH device:{deviceId} {temperature}",
        "",
    );
    s.ingest(
        "r",
        &[
            reading(1, 9, 99.5, "hot", 1_767_262_500_000),
            json!({"seq": 2, "deviceId": 9}),
            json!({"seq": 3, "deviceId": 9, "temperature": 50}),
        ],
    )
    .await;
    let got = next_messages(&mut pubsub, 5).await;
    let row1: Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(got[0].0, "Warnings");
    assert_eq!(
        row1,
        json!({"seq": 1, "deviceId": 9, "temperature": 99.5, "humidity": 40.5,
               "deviceIP": "10.0.0.9", "climate": "hot", "ts": "2026-01-01T10:15:00Z"})
    );
    assert_eq!(got[1], ("device:9".to_string(), "99.5".to_string()));
    // Nulls are left out of {*}; a null message publishes nothing (row 2's
    // temperature), so the next message on device:9 is row 3's.
    assert_eq!(
        got[2],
        (
            "Warnings".to_string(),
            r#"{"seq":2,"deviceId":9}"#.to_string()
        )
    );
    assert_eq!(
        got[3],
        (
            "Warnings".to_string(),
            r#"{"seq":3,"deviceId":9,"temperature":50}"#.to_string()
        )
    );
    assert_eq!(got[4], ("device:9".to_string(), "50".to_string()));
}

/// Seed 003's warning, as the article's Lambda sent it: `PUBLISH Warnings {warning}`
/// with a `CASE` that is null unless the reading is hot publishes only hot readings,
/// and with `transaction` every command of a row, PUBLISH included, runs inside the
/// batch's MULTI/EXEC (seen by MONITOR, in the order Redis ran them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_of_a_null_is_skipped_and_runs_inside_the_multi() {
    let s = Setup::new().await;
    let mut pubsub = s.redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("Warnings").await.unwrap();
    let mut monitor = s.redis.client().get_async_monitor().await.unwrap();
    s.apply(&format!(
        "{READINGS}{}CREATE QUERY q AS INSERT INTO out \
         SELECT deviceId, temperature, climate, ts, \
                CASE WHEN temperature > 85 THEN concat(\'hot \', deviceId) END AS warning \
         FROM r;",
        s.sink_sql(
            "out",
            "INCRBY climate:{climate} 1; HSET {deviceId} temperature climate timestamp={ts}; \
             PUBLISH Warnings {warning}",
            ", transaction = \'true\'"
        )
    ));
    s.ingest(
        "r",
        &[
            reading(1, 1, 90.0, "hot", 1_767_262_500_000),
            reading(2, 2, 70.0, "warm", 1_767_262_501_000),
            reading(3, 3, 95.5, "hot", 1_767_262_502_000),
        ],
    )
    .await;
    s.wait_rows("out", 3).await;

    // What Redis ran for the sink's connection, from its MULTI to its EXEC.
    let mut lines = monitor.on_message::<String>();
    let mut client = None;
    let mut verbs = Vec::new();
    while verbs.last().is_none_or(|v| v != "EXEC") {
        let line = tokio::time::timeout(WAIT, lines.next())
            .await
            .expect("MONITOR output")
            .expect("MONITOR open");
        // `1767262500.123456 [0 127.0.0.1:50000] "VERB" "arg" …`
        let (Some(addr), Some(verb)) = (
            line.split(['[', ']']).nth(1),
            line.split('"').nth(1).map(str::to_ascii_uppercase),
        ) else {
            continue;
        };
        if verb == "MULTI" && client.is_none() {
            client = Some(addr.to_string());
        }
        if client.as_deref() == Some(addr) {
            verbs.push(verb);
        }
    }
    assert_eq!(
        verbs,
        [
            "MULTI", "INCRBY", "HSET", "PUBLISH", "INCRBY", "HSET", "INCRBY", "HSET", "PUBLISH",
            "EXEC"
        ],
        "row 2 is not hot: its PUBLISH is skipped, the others are inside the MULTI"
    );
    let got = next_messages(&mut pubsub, 2).await;
    assert_eq!(
        got,
        [
            ("Warnings".to_string(), "hot 1".to_string()),
            ("Warnings".to_string(), "hot 3".to_string())
        ]
    );
    let health = s.manager.sink_state("out").unwrap().health.clone().unwrap();
    assert_eq!(health.to_json()["skipped"], 1);
    assert_eq!(
        s.hash("2").await,
        hash_of(&[
            ("temperature", "70"),
            ("climate", "warm"),
            ("timestamp", "2026-01-01T10:15:01Z"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xadd_with_maxlen() {
    let s = Setup::new().await;
    s.pipeline(
        "XADD readings:{climate} MAXLEN 2 deviceId temperature; XADD everything * seq",
        "",
    );
    let rows: Vec<Value> = (1..=5)
        .map(|i| reading(i, i, 20.0 + i as f64, "cool", 1_767_262_500_000))
        .collect();
    s.ingest("r", &rows).await;
    s.wait_rows("out", 5).await;

    let len: u64 = s.redis(&["XLEN", "readings:cool"]).await;
    assert_eq!(len, 2, "MAXLEN 2 keeps the last two entries");
    let entries: Vec<(String, Vec<(String, String)>)> =
        s.redis(&["XRANGE", "readings:cool", "-", "+"]).await;
    let fields: Vec<Vec<(String, String)>> = entries.into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        fields,
        vec![
            vec![
                ("deviceId".to_string(), "4".to_string()),
                ("temperature".to_string(), "24".to_string())
            ],
            vec![
                ("deviceId".to_string(), "5".to_string()),
                ("temperature".to_string(), "25".to_string())
            ],
        ]
    );
    let len: u64 = s.redis(&["XLEN", "everything"]).await;
    assert_eq!(len, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_wraps_each_batch_in_multi_exec() {
    let s = Setup::new().await;
    // The seed article's data model, in one MULTI per batch.
    s.pipeline(
        "INCRBY climate:{climate} 1; \
         ZADD SensorData {ts} {deviceId} KEEP 10000; \
         HSET {deviceId} temperature humidity deviceIP climate timestamp={ts}",
        ", transaction = 'true'",
    );
    let exec_before = s.calls("exec").await;
    s.ingest(
        "r",
        &[
            reading(1, 1, 90.0, "hot", 1_767_262_500_000),
            reading(2, 2, 70.0, "warm", 1_767_262_501_000),
        ],
    )
    .await;
    s.wait_rows("out", 2).await;
    s.ingest("r", &[reading(3, 3, 91.0, "hot", 1_767_262_502_000)])
        .await;
    s.wait_rows("out", 3).await;

    assert_eq!(s.calls("multi").await, 2, "one MULTI per batch");
    assert_eq!(s.calls("exec").await - exec_before, 2, "one EXEC per batch");
    assert_eq!(s.get("climate:hot").await.as_deref(), Some("2"));
    assert_eq!(s.get("climate:warm").await.as_deref(), Some("1"));
    let card: u64 = s.redis(&["ZCARD", "SensorData"]).await;
    assert_eq!(card, 3);
    assert_eq!(
        s.hash("2").await,
        hash_of(&[
            ("temperature", "70"),
            ("humidity", "40.5"),
            ("deviceIP", "10.0.0.2"),
            ("climate", "warm"),
            ("timestamp", "2026-01-01T10:15:01Z"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_values_are_escaped_so_rows_cannot_collide() {
    let s = Setup::new().await;
    s.pipeline(
        "SET k:{climate}:{room} {seq}; SET d:{climate}-{room} {seq}",
        "",
    );
    s.ingest(
        "r",
        &[
            // Naively, both rows would write k:x:y:z (and d:a-b-c).
            json!({"seq": 1, "climate": "x:y", "room": "z"}),
            json!({"seq": 2, "climate": "x", "room": "y:z"}),
            json!({"seq": 3, "climate": "a-b", "room": "c"}),
            json!({"seq": 4, "climate": "a", "room": "b-c"}),
            json!({"seq": 5, "climate": "50% {hot}", "room": "r 1"}),
        ],
    )
    .await;
    s.wait_rows("out", 5).await;

    assert_eq!(
        s.keys("k:*").await,
        vec![
            "k:50%25%20%7Bhot%7D:r%201",
            "k:a-b:c",
            "k:a:b-c",
            "k:x%3Ay:z",
            "k:x:y%3Az"
        ]
    );
    assert_eq!(s.get("k:x%3Ay:z").await.as_deref(), Some("1"));
    assert_eq!(s.get("k:x:y%3Az").await.as_deref(), Some("2"));
    // `-` separates two placeholders in the d: key, so it is escaped in values.
    assert_eq!(s.get("d:a%2Db-c").await.as_deref(), Some("3"));
    assert_eq!(s.get("d:a-b%2Dc").await.as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_are_shortened_with_a_hash() {
    let s = Setup::new().await;
    s.pipeline("SET r:{room} {seq}", ", max_key_bytes = '64'");
    let long_a = "a".repeat(200);
    let long_b = format!("{}b", "a".repeat(199));
    s.ingest(
        "r",
        &[
            json!({"seq": 1, "room": long_a}),
            json!({"seq": 2, "room": long_b}),
            json!({"seq": 3, "room": "short"}),
            json!({"seq": 4, "room": long_a}),
        ],
    )
    .await;
    s.wait_rows("out", 4).await;

    let keys = s.keys("r:*").await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.contains(&"r:short".to_string()));
    let long: Vec<&String> = keys.iter().filter(|k| k.len() > 10).collect();
    for k in &long {
        assert_eq!(k.len(), 64, "{k}");
        assert!(k.starts_with(&format!("r:{}#", "a".repeat(29))), "{k}");
    }
    // The same long value maps to the same key: seq 4 overwrote seq 1.
    let mut values: Vec<String> = Vec::new();
    for k in long {
        values.push(s.get(k).await.unwrap());
    }
    values.sort();
    assert_eq!(values, vec!["2", "4"]);
}

/// Two copies of a windowed query over the same records: the second emits the same
/// windows again, as a replay after a restart would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_counters_ignore_a_replayed_window() {
    let s = Setup::new().await;
    let stream = |name: &str| {
        format!(
            "CREATE STREAM {name} (deviceId INT NOT NULL, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http');\n"
        )
    };
    let query = |name: &str, from: &str| {
        format!(
            "CREATE QUERY {name} AS INSERT INTO counts SELECT window_start, deviceId, \
             count(*) AS n FROM {from} GROUP BY TUMBLE(ts, INTERVAL '10' SECOND), deviceId;\n"
        )
    };
    s.apply(&format!(
        "{}{}{}{}{}",
        stream("a"),
        stream("b"),
        s.sink_sql(
            "counts",
            "INCRBY once:{deviceId} {n} ONCE {window_start}; \
             HINCRBY by_device {deviceId} {n} ONCE {window_start}; \
             INCRBY plain:{deviceId} {n}; \
             HSET w:{window_start}:{deviceId} n",
            ""
        ),
        query("qa", "a"),
        query("qb", "b"),
    ));
    let first_window = [
        json!({"deviceId": 1, "ts": 1_000}),
        json!({"deviceId": 1, "ts": 2_000}),
        json!({"deviceId": 2, "ts": 3_000}),
        // Moves the watermark past 10 s: the first window closes.
        json!({"deviceId": 3, "ts": 12_000}),
    ];
    s.ingest("a", &first_window).await;
    s.wait_rows("counts", 2).await;
    s.ingest("b", &first_window).await;
    s.wait_rows("counts", 4).await;

    assert_eq!(s.get("once:1").await.as_deref(), Some("2"));
    assert_eq!(s.get("once:2").await.as_deref(), Some("1"));
    assert_eq!(
        s.hash("by_device").await,
        hash_of(&[("1", "2"), ("2", "1")])
    );
    assert_eq!(
        s.get("plain:1").await.as_deref(),
        Some("4"),
        "plain INCRBY counts the replay again"
    );
    assert_eq!(
        s.hash("w:1970-01-01T00:00:00Z:1").await,
        hash_of(&[("n", "2")]),
        "HSET keyed by window overwrites on replay"
    );

    // A new window counts again: ONCE is per window, not forever.
    s.ingest(
        "a",
        &[
            json!({"deviceId": 1, "ts": 15_000}),
            json!({"deviceId": 1, "ts": 25_000}),
        ],
    )
    .await;
    s.wait_rows("counts", 6).await;
    // Window [10 s, 20 s) held device 3 (12 s) and device 1 (15 s) once each.
    assert_eq!(s.get("once:1").await.as_deref(), Some("3"));
    assert_eq!(s.get("once:3").await.as_deref(), Some("1"));
    let ttl: i64 = s.redis(&["TTL", "once:1:once:1970-01-01T00:00:00Z"]).await;
    assert!(
        (7 * 24 * 3600 - 60..=7 * 24 * 3600).contains(&ttl),
        "ONCE marker TTL is {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_skip_commands_that_need_a_value() {
    let s = Setup::new().await;
    s.pipeline(
        "SET n:{room} {temperature}; HSET h:{seq} room temperature; ZADD z {temperature} {seq}",
        "",
    );
    s.ingest(
        "r",
        &[
            json!({"seq": 1, "temperature": 5.5}),
            json!({"seq": 2, "room": "a"}),
        ],
    )
    .await;
    s.wait_rows("out", 2).await;

    // Row 1 has no room (no key): its SET is skipped. Row 2's null temperature is "".
    assert_eq!(s.keys("n:*").await, vec!["n:a"]);
    assert_eq!(s.get("n:a").await.as_deref(), Some(""));
    assert_eq!(s.hash("h:1").await, hash_of(&[("temperature", "5.5")]));
    assert_eq!(s.hash("h:2").await, hash_of(&[("room", "a")]));
    // Row 2 has no score: its ZADD is skipped.
    let members: Vec<String> = s.redis(&["ZRANGE", "z", "0", "-1"]).await;
    assert_eq!(members, vec!["1"]);
}

/// The sink on its own, to read its skip counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_commands_are_counted_with_the_reason() {
    let redis = RedisServer::start();
    let mut o = Options::new(Position::default());
    o.insert("url", redis.url(), Position::default()).unwrap();
    o.insert(
        "commands",
        "SET k:{name} {n}; INCRBY total {n}".into(),
        Position::default(),
    )
    .unwrap();
    let mut sink = RedisSink::from_options(o).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
        ],
    )
    .unwrap();
    sink.write(&batch).await.unwrap();

    let (skipped, reason) = sink.skipped();
    // Row 2: SET has a null key. Row 3: INCRBY has a null amount (its SET runs, "").
    assert_eq!(skipped, 2);
    assert_eq!(
        reason,
        Some(
            "command 2 (`INCRBY total {n}`) skipped a row: column 'n' is null where a value \
             is required"
        )
    );
    let mut c = redis.connection().await;
    let total: i64 = redis::cmd("GET")
        .arg("total")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(total, 3);
    let c_value: String = redis::cmd("GET")
        .arg("k:c")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(c_value, "");
    assert_eq!(sink.health().unwrap().status(), "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_column_fails_the_sink_naming_the_columns() {
    let s = Setup::new().await;
    s.pipeline("SET ok {seq}; SET k:{deviceid} {temperature}", "");
    s.ingest("r", &[reading(1, 1, 20.0, "cool", 0)]).await;
    let status = s.sink_failure("out").await;
    assert_eq!(
        status,
        "failed: redis sink: command 2 (`SET k:{deviceid} {temperature}`) names column \
         'deviceid', which the query does not output (column names are case-sensitive: did \
         you mean 'deviceId'?); its columns are: seq, deviceId, temperature, humidity, \
         deviceIP, climate, room, ts. Change the sink's commands or the query's SELECT list"
    );
    assert_eq!(
        s.get("ok").await,
        None,
        "nothing of the failed batch was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_fails_the_sink_without_retrying() {
    let s = Setup::new().await;
    let _: () = s.redis(&["SET", "h", "a string"]).await;
    s.pipeline("INCRBY n 1; HSET h temperature", "");
    s.ingest("r", &[reading(1, 1, 20.0, "cool", 0)]).await;
    let status = s.sink_failure("out").await;
    assert!(
        status.starts_with(
            "failed: redis sink: command 2 (`HSET h temperature`) failed in Redis at \
             127.0.0.1:"
        ) && status.contains("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "{status}"
    );
    let health = s.manager.sink_state("out").unwrap().health.clone().unwrap();
    assert_eq!(health.retries(), 0, "a WRONGTYPE is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sink_refuses_bad_commands_and_urls() {
    let s = Setup::new().await;
    let err = s
        .manager
        .apply(&s.sink_sql("bad", "SET a {b}; LPUSH l {x}", ""))
        .unwrap_err();
    assert!(err.is_user());
    assert!(
        err.to_string().contains(
            "command 2 (`LPUSH l {x}`) of the redis sink: unknown command 'LPUSH'; the redis \
             sink supports SET, INCRBY, HINCRBY, HSET, ZADD, PUBLISH, XADD"
        ),
        "{err}"
    );
    let err = s
        .manager
        .apply(
            "CREATE SINK bad WITH (connector = 'redis', url = 'nonsense', commands = 'SET a b');",
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("option 'url' of the redis sink is not a Redis URL"),
        "{err}"
    );
    // A sink for a Redis that is not running yet is fine: it connects on first write.
    s.manager
        .apply("CREATE SINK later WITH (connector = 'redis', url = 'redis://127.0.0.1:1', commands = 'SET a b');")
        .unwrap();
}

/// Redis goes away mid-run: the sink retries (and says so), the query waits, and once
/// Redis is back every row is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_blocks_the_sink_and_loses_nothing() {
    let mut s = Setup::new().await;
    // ONCE per row and HSET per row are exact even when a pipeline that was partly
    // applied is retried.
    s.pipeline(
        "INCRBY total {deviceId} ONCE {seq}; HSET row:{seq} temperature",
        "",
    );
    let router = app(Arc::clone(&s.manager), ApiOptions::default());
    let sink_json = || {
        let router = router.clone();
        async move {
            let resp = router
                .oneshot(Request::get("/sinks/out").body(Body::empty()).unwrap())
                .await
                .unwrap();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let batch = |from: i64| -> Vec<Value> {
        (from..from + 10)
            .map(|i| reading(i, 1, i as f64, "cool", 0))
            .collect()
    };
    s.ingest("r", &batch(0)).await;
    s.wait_rows("out", 10).await;
    assert_eq!(
        sink_json().await["writer"]["connection"]["status"],
        "connected"
    );

    s.redis.stop();
    let manager = Arc::clone(&s.manager);
    let feeder = tokio::spawn(async move {
        for b in 1..5 {
            let body: String = batch(b * 10).iter().map(|r| format!("{r}\n")).collect();
            let report = manager.ingest("r", body.into_bytes()).await.unwrap();
            assert_eq!(report.accepted, 10);
        }
    });
    let connection = eventually("the sink to report retrying", WAIT, || async {
        let c = sink_json().await["writer"]["connection"].clone();
        (c["status"] == "retrying" && c["retries"].as_u64() >= Some(2)).then_some(c)
    })
    .await;
    let last_error = connection["last_error"].as_str().unwrap();
    assert!(!last_error.is_empty(), "{connection}");
    // Nothing more was written while Redis was down: the query waits on the sink.
    let state = s.manager.sink_state("out").unwrap();
    assert_eq!(state.rows.load(Ordering::Relaxed), 10);

    s.redis.restart();
    s.wait_rows("out", 50).await;
    feeder.await.unwrap();
    let c = sink_json().await["writer"]["connection"].clone();
    assert_eq!(c["status"], "connected", "{c}");

    let mut conn = s.redis.connection().await;
    let total: i64 = redis::cmd("GET")
        .arg("total")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, 50, "every row counted exactly once");
    let rows: Vec<String> = redis::cmd("KEYS")
        .arg("row:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
    let t: String = redis::cmd("HGET")
        .arg("row:42")
        .arg("temperature")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(t, "42");
}

/// One timestamp, one form: the same reading's time in `{*}`, in an HSET field, in a
/// key, in an embedded table's item and in a WebSocket row is RFC 3339 in UTC with
/// `Z` (an input written with an offset is converted), and a whole DOUBLE is `88`;
/// with `timestamp_format = 'epoch_ms'` the sinks write epoch milliseconds instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_timestamp_form_everywhere() {
    let dir = crate::services::Scratch::new("render");
    let redis = RedisServer::start();
    let conn = redis.connection().await;
    let m = crate::support::manager(Some(dir.path()));
    let url = redis.url();
    m.apply(&format!(
        "CREATE STREAM r (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP)
           WITH (connector = 'http');
         CREATE SINK rd WITH (connector = 'redis', url = '{url}',
           commands = 'SET row:{{deviceId}} {{*}}; HSET h:{{deviceId}} temperature ts; SET at:{{ts}} {{deviceId}}');
         CREATE SINK rd_ms WITH (connector = 'redis', url = '{url}', timestamp_format = 'epoch_ms',
           commands = 'SET ms:row:{{deviceId}} {{*}}; HSET ms:h:{{deviceId}} ts; SET ms:at:{{ts}} {{deviceId}}');
         CREATE SINK t WITH (connector = 'table', table = 'readings', partition_key = 'deviceId');
         CREATE SINK t_ms WITH (connector = 'table', table = 'readings_ms', partition_key = 'deviceId',
           timestamp_format = 'epoch_ms');
         CREATE QUERY q1 AS INSERT INTO rd SELECT * FROM r;
         CREATE QUERY q2 AS INSERT INTO rd_ms SELECT * FROM r;
         CREATE QUERY q3 AS INSERT INTO t SELECT * FROM r;
         CREATE QUERY q4 AS INSERT INTO t_ms SELECT * FROM r;
         CREATE QUERY preview AS SELECT * FROM r;"
    ))
    .unwrap();
    let router = app(
        Arc::clone(&m),
        ApiOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = router.clone();
    tokio::spawn(async move { axum::serve(listener, served).await });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/queries/preview/ws"))
        .await
        .unwrap();

    // The same instant, once in UTC and once with an offset.
    let body = "{\"deviceId\": 7, \"temperature\": 88, \"ts\": \"2026-12-04T14:36:27.348Z\"}\n\
                {\"deviceId\": 8, \"temperature\": 21.5, \"ts\": \"2026-12-04T16:36:27.348+02:00\"}\n";
    let report = m.ingest("r", body.as_bytes().to_vec()).await.unwrap();
    assert_eq!(report.accepted, 2, "{:?}", report.rejected);
    const TS: &str = "2026-12-04T14:36:27.348Z";
    const MS: i64 = 1_796_394_987_348;

    // The WebSocket row.
    let msg = crate::api::next_json(&mut ws).await;
    assert_eq!(
        msg["rows"],
        json!([{"deviceId": 7, "temperature": 88, "ts": TS},
               {"deviceId": 8, "temperature": 21.5, "ts": TS}]),
        "{msg}"
    );
    for sink in ["rd", "rd_ms", "t", "t_ms"] {
        eventually(&format!("sink {sink} to write both rows"), WAIT, || async {
            let state = m.sink_state(sink)?;
            (state.rows.load(Ordering::Relaxed) == 2).then_some(())
        })
        .await;
    }
    let get = |key: String| {
        let mut c = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut c)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no key {key}"))
        }
    };

    // {*}, an HSET field and a key (unescaped: a time cannot fake a separator).
    assert_eq!(
        get("row:7".into()).await,
        format!(r#"{{"deviceId":7,"temperature":88,"ts":"{TS}"}}"#)
    );
    let h: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("h:8")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(
        h,
        [
            ("temperature".to_string(), "21.5".to_string()),
            ("ts".to_string(), TS.to_string())
        ]
    );
    assert_eq!(get(format!("at:{TS}")).await, "8");

    // The embedded table's items, over the API.
    let items = |table: &'static str| {
        let router = router.clone();
        async move {
            let resp = router
                .oneshot(
                    Request::get(format!("/tables/{table}/items?pk=7"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()["items"].clone()
        }
    };
    assert_eq!(
        items("readings").await,
        json!([{"deviceId": 7, "temperature": 88, "ts": TS}])
    );

    // epoch_ms: the same instant as milliseconds, in every place.
    assert_eq!(
        get("ms:row:7".into()).await,
        format!(r#"{{"deviceId":7,"temperature":88,"ts":{MS}}}"#)
    );
    let h: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("ms:h:8")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(h, [("ts".to_string(), MS.to_string())]);
    assert_eq!(get(format!("ms:at:{MS}")).await, "8");
    assert_eq!(
        items("readings_ms").await,
        json!([{"deviceId": 7, "temperature": 88, "ts": MS}])
    );
}
