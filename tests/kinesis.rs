//! The `kinesis` source and sink against a real Kinesis emulator (kinesis-local, the
//! npm build of kinesis-mock; one per test, on a free port): every record of a
//! multi-shard stream exactly once with its metadata, NDJSON records, a restart that
//! resumes from the checkpoints without loss, gap or re-read, a split and a merge
//! during consumption keeping each partition key's order, and the sink's records
//! with their partition keys; and, through a fault-injecting proxy (`faults.rs`),
//! GetRecords throttling (every record once, backoff, 5 calls/s per shard) and
//! partially failed PutRecords calls (every row in the stream once). Enhanced fan-out
//! runs against the emulator's TLS port (HTTP/2, with a certificate from a test CA):
//! every shard subscribed, a restart from checkpoints, a split, and subscriptions
//! broken by an emulator restart and taken up again, each record exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use serde_json::Value;
use sluice::aws::AwsConnect;
use sluice::runtime::Manager;

use crate::faults::{Fault, FaultProxy, Rule};
use crate::services::{Scratch, free_port};
use crate::support::{manager, read_lines, records_in, wait_for};

/// A kinesis-local server of its own, plain HTTP on a free port (and TLS, with
/// HTTP/2 for SubscribeToShard, on another).
pub struct KinesisLocal {
    port: u16,
    tls_port: u16,
    cert: PathBuf,
    log_level: String,
    child: Child,
    scratch: Scratch,
}

impl KinesisLocal {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on a given port (for a test that points Sluice at it before it runs).
    pub fn start_on(port: u16) -> Self {
        let cert = kinesis_local_dir().join("server.json");
        assert!(
            cert.is_file(),
            "kinesis-local is not installed ({} missing): run .ci/install-deps",
            cert.display()
        );
        Self::start_with(port, &cert, "WARN")
    }

    /// Starts with the TLS key and certificate of `cert` (kinesis-local's
    /// `{"server": {"key": PEM, "cert": PEM}}`): the one kinesis-local ships has no
    /// subject name and is X.509 v1, which rustls refuses whatever it trusts. At
    /// `log_level` DEBUG the log names every request it processes ([`Self::log`]).
    pub fn start_with(port: u16, cert: &std::path::Path, log_level: &str) -> Self {
        let scratch = Scratch::new("kinesis-local");
        let tls_port = free_port();
        let child = Self::spawn(port, tls_port, cert, log_level, scratch.path());
        KinesisLocal {
            port,
            tls_port,
            cert: cert.to_path_buf(),
            log_level: log_level.to_string(),
            child,
            scratch,
        }
    }

    fn spawn(
        port: u16,
        tls_port: u16,
        cert: &std::path::Path,
        log_level: &str,
        dir: &std::path::Path,
    ) -> Child {
        // Appended to: a restarted emulator adds to the log of the first.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("kinesis.log"))
            .unwrap();
        let child = Command::new("kinesis-local")
            .env("KINESIS_MOCK_CERT_PATH", cert)
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            // Streams and reshards take effect at once (the defaults wait 500 ms).
            .env("CREATE_STREAM_DURATION", "0ms")
            .env("SPLIT_SHARD_DURATION", "0ms")
            .env("MERGE_SHARDS_DURATION", "0ms")
            .env("SHARD_LIMIT", "100")
            .env("LOG_LEVEL", log_level)
            // Streams, records and consumers are saved in the scratch directory
            // every 100 ms and loaded at start, so [`Self::restart`] keeps them.
            .env("SHOULD_PERSIST_DATA", "true")
            .env("LOAD_DATA_IF_EXISTS", "true")
            .env("PERSIST_PATH", dir.join("data"))
            .env("PERSIST_INTERVAL", "100ms")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start kinesis-local (run .ci/install-deps)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "kinesis-local did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("kinesis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Kills the emulator and starts it again on the same ports, with what it had
    /// saved (wait a few hundred milliseconds after the last change before calling).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(
            self.port,
            self.tls_port,
            &self.cert,
            &self.log_level,
            self.scratch.path(),
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the emulator logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("kinesis.log")).unwrap_or_default()
    }

    /// The TLS port, where HTTP/2 (SubscribeToShard's event streams) is served.
    pub fn https_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    /// Where a [`FaultProxy`] in front of it forwards to.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The connector options that reach this emulator.
    pub fn options(&self) -> String {
        format!(
            "endpoint = '{}', region = 'us-east-1', access_key_id = 'test', secret_access_key = 'test'",
            self.endpoint()
        )
    }

    pub async fn client(&self) -> Client {
        let c = AwsConnect {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            ..Default::default()
        };
        Client::new(&c.sdk_config().await)
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kinesis_local_dir() -> PathBuf {
    let root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    PathBuf::from(root).join("kinesis-local")
}

/// Creates a stream and waits until it is active.
pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    wait_active(client, name).await;
}

async fn wait_active(client: &Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("DescribeStreamSummary");
        if d.stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            return;
        }
        assert!(Instant::now() < deadline, "stream {name} not active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What PutRecords said about one record.
#[derive(Debug, Clone)]
struct Put {
    key: String,
    shard: String,
    sequence: String,
}

/// Puts `records` (partition key, data), 500 per call, and returns where each went.
async fn put_records(client: &Client, stream: &str, records: &[(String, String)]) -> Vec<Put> {
    let mut out = Vec::new();
    for chunk in records.chunks(500) {
        let mut req = client.put_records().stream_name(stream);
        for (k, d) in chunk {
            req = req.records(
                PutRecordsRequestEntry::builder()
                    .partition_key(k)
                    .data(Blob::new(d.as_bytes().to_vec()))
                    .build()
                    .unwrap(),
            );
        }
        let resp = req.send().await.expect("PutRecords");
        assert_eq!(resp.failed_record_count(), Some(0));
        for ((k, _), r) in chunk.iter().zip(resp.records()) {
            out.push(Put {
                key: k.clone(),
                shard: r.shard_id().unwrap().to_string(),
                sequence: r.sequence_number().unwrap().to_string(),
            });
        }
    }
    out
}

/// Every reading of `range` exactly once, and within a key (one shard, `readings`
/// keys by `id % 17`) in the order they were put.
fn assert_each_once_in_key_order(ids: &[i64], range: std::ops::Range<i64>) {
    assert_eq!(ids.len(), range.clone().count(), "each reading once");
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        range.collect::<BTreeSet<_>>()
    );
    let mut last: HashMap<i64, i64> = HashMap::new();
    for &id in ids {
        let prev = last.insert(id % 17, id);
        assert!(prev.is_none_or(|p| p < id), "reading {id} after {prev:?}");
    }
}

/// Splits the stream's first shard at the middle of its hash range, waits until the
/// stream is active again, and returns the shard that was split.
async fn split_first_shard(client: &Client, stream: &str) -> aws_sdk_kinesis::types::Shard {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let first = shards.shards()[0].clone();
    let range = first.hash_key_range().unwrap();
    let lo: u128 = range.starting_hash_key().parse().unwrap();
    let hi: u128 = range.ending_hash_key().parse().unwrap();
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(first.shard_id())
        .new_starting_hash_key(((lo + hi) / 2).to_string())
        .send()
        .await
        .expect("SplitShard");
    wait_active(client, stream).await;
    first
}

fn readings(range: std::ops::Range<i64>) -> Vec<(String, String)> {
    range
        .map(|i| {
            (
                format!("dev-{}", i % 17),
                format!(
                    "{{\"id\": {i}, \"deviceId\": \"dev-{}\", \"seq\": {}}}",
                    i % 17,
                    i / 17
                ),
            )
        })
        .collect()
}

/// Four shards, records spread over them by key, one record carrying NDJSON: each
/// reading arrives once, with the shard, sequence number and partition key Kinesis
/// gave it and an arrival time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_stream_delivers_every_record_once_with_metadata() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "multi", 4).await;
    let mut records = readings(0..1000);
    // One Kinesis record with three readings, as NDJSON.
    records.push((
        "batch".to_string(),
        "{\"id\": 1000}\n{\"id\": 1001}\n{\"id\": 1002}\n".to_string(),
    ));
    let before = chrono_ms();
    let puts = put_records(&client, "multi", &records).await;
    let shards: BTreeSet<&str> = puts.iter().map(|p| p.shard.as_str()).collect();
    assert_eq!(shards.len(), 4, "the keys must spread over all four shards");

    let dir = Scratch::new("kinesis-multi");
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{out}');
         CREATE STREAM s (
           id BIGINT NOT NULL,
           shard_id TEXT METADATA, sequence_number TEXT METADATA, partition_key TEXT METADATA,
           arrived TIMESTAMP METADATA FROM 'approximate_arrival_time'
         ) WITH (connector = 'kinesis', stream = 'multi', start_position = 'TRIM_HORIZON',
                 poll_interval = '50ms', {opts});
         CREATE QUERY q AS INSERT INTO out
           SELECT id, shard_id, sequence_number, partition_key,
                  CAST(arrived AS BIGINT) AS arrived_ms FROM s;",
        out = dir.path().join("out.jsonl").display(),
        opts = kinesis.options(),
    ))
    .unwrap();
    wait_for("1003 readings", Duration::from_secs(30), || {
        records_in(&m, "s") >= 1003
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.shutdown(Duration::from_secs(5)).await;

    let rows = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(rows.len(), 1003, "each reading exactly once");
    let by_id: BTreeMap<i64, &Value> = rows
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        (0..1003).collect::<Vec<_>>()
    );
    for (i, put) in puts.iter().enumerate() {
        let ids: Vec<i64> = if i < 1000 {
            vec![i as i64]
        } else {
            vec![1000, 1001, 1002]
        };
        for id in ids {
            let r = by_id[&id];
            assert_eq!(r["shard_id"], put.shard.as_str(), "reading {id}");
            assert_eq!(r["sequence_number"], put.sequence.as_str(), "reading {id}");
            assert_eq!(r["partition_key"], put.key.as_str(), "reading {id}");
            let arrived = r["arrived_ms"].as_i64().unwrap();
            assert!(
                (before - 5_000..chrono_ms() + 5_000).contains(&arrived),
                "arrival time {arrived} of reading {id}"
            );
        }
    }
    // A checkpoint per shard, at the shard's last sequence number.
    let cp: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("kinesis").join("s.json")).unwrap())
            .unwrap();
    for shard in shards {
        let last = puts
            .iter()
            .filter(|p| p.shard == shard)
            .map(|p| p.sequence.clone())
            .max_by(|a, b| (a.len(), a).cmp(&(b.len(), b)))
            .unwrap();
        assert_eq!(cp["shards"][shard]["sequence"], last.as_str(), "{cp}");
    }
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sluice stops while records keep coming and more arrive while it is down; the next
/// run resumes each shard after its checkpoint: every reading arrives, none of those
/// the first run had processed is read again, and a LATEST stream of the first run
/// does not skip what arrived while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_checkpoints_without_loss_gap_or_reread() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "restart", 3).await;
    let dir = Scratch::new("kinesis-restart");
    let app = |file: &str| {
        format!(
            "CREATE SINK out WITH (connector = 'file', path = '{}');
             CREATE STREAM s (id BIGINT NOT NULL) WITH (connector = 'kinesis', stream = 'restart',
               start_position = 'LATEST', poll_interval = '50ms', max_records = '100', {});
             CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
            dir.path().join(file).display(),
            kinesis.options()
        )
    };
    let first = manager(Some(dir.path()));
    first.apply(&app("first.jsonl")).unwrap();
    // LATEST: wait until every shard has its starting point before putting.
    wait_for("the shard readers", Duration::from_secs(20), || {
        std::fs::read(dir.path().join("kinesis").join("s.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["shards"].as_object().is_some_and(|s| s.len() == 3))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    put_records(&client, "restart", &readings(0..600)).await;
    wait_for("the first 600", Duration::from_secs(30), || {
        records_in(&first, "s") >= 600
    })
    .await;
    // Acknowledgements (and with them the checkpoints) follow processing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown(Duration::from_secs(5)).await;
    let got_first: BTreeSet<i64> = read_lines(&dir.path().join("first.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got_first, (0..600).collect());

    // While Sluice is down.
    put_records(&client, "restart", &readings(600..1500)).await;
    let second = manager(Some(dir.path()));
    second.apply(&app("second.jsonl")).unwrap();
    put_records(&client, "restart", &readings(1500..2000)).await;
    wait_for("the other 1400", Duration::from_secs(30), || {
        records_in(&second, "s") >= 1400
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.shutdown(Duration::from_secs(5)).await;
    let rows = read_lines(&dir.path().join("second.jsonl"));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let reread = ids.iter().filter(|i| **i < 600).count();
    assert_eq!(
        reread, 0,
        "the second run read {reread} readings the first had processed"
    );
    assert_each_once_in_key_order(&ids, 600..2000);
}

/// A split and a merge while records flow: every reading arrives once, and each
/// partition key's readings stay in order, because a child shard starts only after
/// its parents are drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_during_consumption_loses_nothing_and_keeps_key_order() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "reshard", 2).await;
    let dir = Scratch::new("kinesis-reshard");
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL, deviceId TEXT, shard_id TEXT METADATA)
           WITH (connector = 'kinesis', stream = 'reshard', start_position = 'TRIM_HORIZON',
                 poll_interval = '50ms', shard_discovery_interval = '200ms',
                 max_records = '25', {});
         CREATE QUERY q AS INSERT INTO out SELECT id, deviceId, shard_id FROM s;",
        dir.path().join("out.jsonl").display(),
        kinesis.options()
    ))
    .unwrap();
    put_records(&client, "reshard", &readings(0..500)).await;
    // 25 records per call, at most 5 calls a second: the parents still have a backlog
    // when their children appear, so a child that did not wait for its parent would
    // deliver a key's later readings before its earlier ones.
    wait_for("the first readings", Duration::from_secs(30), || {
        records_in(&m, "s") >= 1
    })
    .await;

    let first = split_first_shard(&client, "reshard").await;
    put_records(&client, "reshard", &readings(500..1000)).await;

    // Merge the two children of the split back together.
    let shards = client
        .list_shards()
        .stream_name("reshard")
        .send()
        .await
        .unwrap();
    let mut open: Vec<_> = shards
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
                && s.parent_shard_id() == Some(first.shard_id())
        })
        .collect();
    open.sort_by_key(|s| {
        s.hash_key_range()
            .unwrap()
            .starting_hash_key()
            .parse::<u128>()
            .unwrap()
    });
    assert_eq!(open.len(), 2, "the split's children: {shards:?}");
    client
        .merge_shards()
        .stream_name("reshard")
        .shard_to_merge(open[0].shard_id())
        .adjacent_shard_to_merge(open[1].shard_id())
        .send()
        .await
        .expect("MergeShards");
    wait_active(&client, "reshard").await;
    put_records(&client, "reshard", &readings(1000..1500)).await;

    wait_for("all 1500", Duration::from_secs(40), || {
        records_in(&m, "s") >= 1500
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.shutdown(Duration::from_secs(5)).await;
    let rows = read_lines(&dir.path().join("out.jsonl"));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_each_once_in_key_order(&ids, 0..1500);
    let shards_seen: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["shard_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        shards_seen.len(),
        5,
        "2 original, 2 from the split, 1 from the merge: {shards_seen:?}"
    );
}

/// The sink: rows as JSON records, partition keys from the template, spread over the
/// shards; a row over Kinesis's 1 MiB limit is skipped and counted, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_puts_each_row_as_a_record_with_its_partition_key() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "sunk", 2).await;
    let dir = Scratch::new("kinesis-sink");
    let input = dir.path().join("in.jsonl");
    let mut lines = String::new();
    for i in 0..1200 {
        lines.push_str(&format!(
            "{{\"id\": {i}, \"deviceId\": \"d{}\", \"temperature\": {}}}\n",
            i % 9,
            20 + i % 20
        ));
    }
    lines.push_str(&format!(
        "{{\"id\": 5000, \"deviceId\": \"big\", \"temperature\": 99, \"pad\": \"{}\"}}\n",
        "x".repeat(1 << 20)
    ));
    std::fs::write(&input, lines).unwrap();
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK k WITH (connector = 'kinesis', stream = 'sunk', partition_key = 'dev-{{deviceId}}', {});
         CREATE STREAM s (id BIGINT NOT NULL, deviceId TEXT, temperature DOUBLE, pad TEXT)
           WITH (connector = 'file', path = '{}', max_record_bytes = '4000000');
         CREATE QUERY q AS INSERT INTO k SELECT id, deviceId, temperature, pad FROM s;",
        kinesis.options(),
        input.display()
    ))
    .unwrap();
    wait_for("the sink to finish", Duration::from_secs(30), || {
        m.sink_state("k")
            .and_then(|s| s.health.clone())
            .is_some_and(|h| h.to_json()["skipped"] == 1)
    })
    .await;
    // Read every shard from the start.
    let mut got: BTreeMap<i64, (String, Value)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 1200 {
        assert!(
            Instant::now() < deadline,
            "only {} records in the stream",
            got.len()
        );
        got.clear();
        let shards = client
            .list_shards()
            .stream_name("sunk")
            .send()
            .await
            .unwrap();
        for s in shards.shards() {
            let mut it = client
                .get_shard_iterator()
                .stream_name("sunk")
                .shard_id(s.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .map(str::to_string);
            while let Some(i) = it.take() {
                let r = client.get_records().shard_iterator(i).send().await.unwrap();
                if r.records().is_empty() {
                    break;
                }
                for rec in r.records() {
                    let v: Value = serde_json::from_slice(rec.data().as_ref()).unwrap();
                    got.insert(
                        v["id"].as_i64().unwrap(),
                        (rec.partition_key().to_string(), v),
                    );
                }
                it = r.next_shard_iterator().map(str::to_string);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.shutdown(Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1200);
    for (id, (key, v)) in &got {
        assert_eq!(key, &format!("dev-d{}", id % 9));
        assert_eq!(v["deviceId"], format!("d{}", id % 9));
        assert_eq!(v["temperature"].as_f64(), Some((20 + id % 20) as f64));
    }
    assert!(
        !got.contains_key(&5000),
        "the oversized row must not be sent"
    );
}

fn source_health(m: &Manager, stream: &str) -> Value {
    m.stream_state(stream)
        .and_then(|s| s.health.clone())
        .map(|h| h.to_json())
        .unwrap_or(Value::Null)
}

/// Kinesis unreachable, then reachable without the stream, then with it: the source
/// retries with backoff (its health says why, and the attempts slow down), and reads
/// everything once the stream exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_backs_off_while_kinesis_or_the_stream_is_missing() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = Scratch::new("kinesis-outage");
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL) WITH (connector = 'kinesis', stream = 'late',
           start_position = 'TRIM_HORIZON', poll_interval = '50ms', endpoint = '{endpoint}',
           region = 'us-east-1', access_key_id = 'test', secret_access_key = 'test');
         CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
        dir.path().join("out.jsonl").display(),
    ))
    .unwrap();
    // Nothing listens: connection errors, retried with growing delays (100 ms, 200 ms,
    // 400 ms, 800 ms…), so after 2 s there are a handful of attempts, not hundreds.
    wait_for("the first retry", Duration::from_secs(20), || {
        source_health(&m, "s")["status"] == "retrying"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = source_health(&m, "s");
    let retries = h["retries"].as_u64().unwrap();
    assert!((2..=8).contains(&retries), "{h}");
    assert!(
        h["last_error"].as_str().unwrap().contains("ListShards"),
        "{h}"
    );

    // Kinesis comes up, without the stream yet: the error names it.
    let kinesis = KinesisLocal::start_on(port);
    let client = kinesis.client().await;
    wait_for(
        "the missing stream reported",
        Duration::from_secs(30),
        || {
            source_health(&m, "s")["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("ResourceNotFound"))
        },
    )
    .await;
    create_stream(&client, "late", 2).await;
    put_records(&client, "late", &readings(0..300)).await;
    wait_for("all 300", Duration::from_secs(30), || {
        records_in(&m, "s") >= 300
    })
    .await;
    assert_eq!(source_health(&m, "s")["status"], "connected");
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.shutdown(Duration::from_secs(5)).await;
    let ids: BTreeSet<i64> = read_lines(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..300).collect());
}

/// Connector options that reach Kinesis through `endpoint` (a fault proxy).
fn options_via(endpoint: &str) -> String {
    format!(
        "endpoint = '{endpoint}', region = 'us-east-1', access_key_id = 'test', \
         secret_access_key = 'test'"
    )
}

/// Every shard's records, read from the start straight from the emulator, in order.
pub(crate) async fn read_back(client: &Client, stream: &str) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    for s in shards.shards() {
        let mut it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_string);
        while let Some(i) = it.take() {
            let r = client.get_records().shard_iterator(i).send().await.unwrap();
            if r.records().is_empty() {
                break;
            }
            for rec in r.records() {
                let v: Value = serde_json::from_slice(rec.data().as_ref()).unwrap();
                got.push((rec.partition_key().to_string(), v));
            }
            it = r.next_shard_iterator().map(str::to_string);
        }
    }
    got
}

/// GetRecords answered with ProvisionedThroughputExceeded: the first five calls on
/// each shard in a row, then every third call, 40 in all. Every reading still arrives
/// exactly once; the delay after each throttled call doubles (200 ms spacing, then
/// 400, 800, 1600 ms); no shard is called more than 5 times in any second, throttled
/// calls included; the stream's health counts the retries and names the throttling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getrecords_throttling_delivers_every_record_once_with_backoff() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "throttled", 2).await;
    let puts = put_records(&client, "throttled", &readings(0..1500)).await;
    let shards: BTreeSet<String> = puts.iter().map(|p| p.shard.clone()).collect();
    assert_eq!(shards.len(), 2);
    let proxy = FaultProxy::start(
        kinesis.addr(),
        vec![Rule::new(
            "Kinesis_20131202.GetRecords",
            Fault::Throttle,
            40,
            |i| i < 5 || i % 3 == 1,
        )],
    )
    .await;

    let dir = Scratch::new("kinesis-throttled");
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL) WITH (connector = 'kinesis', stream = 'throttled',
           start_position = 'TRIM_HORIZON', poll_interval = '50ms', max_records = '100', {});
         CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
        dir.path().join("out.jsonl").display(),
        options_via(&proxy.endpoint()),
    ))
    .unwrap();
    wait_for(
        "all 1500 and every throttle injected",
        Duration::from_secs(60),
        || records_in(&m, "s") >= 1500 && proxy.budgets_left() == [0],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = source_health(&m, "s");
    m.shutdown(Duration::from_secs(5)).await;

    let ids: Vec<i64> = read_lines(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1500, "each reading exactly once");
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        (0..1500).collect()
    );

    let calls = proxy.calls_of("GetRecords");
    let throttled = calls.iter().filter(|c| c.throttled).count() as u64;
    assert_eq!(throttled, 40);
    assert!(
        health["retries"].as_u64().unwrap() >= throttled,
        "every throttled call is a retry in the health: {health}"
    );
    assert!(
        health["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ProvisionedThroughputExceeded")),
        "{health}"
    );
    assert_eq!(health["status"], "connected", "{health}");
    for shard in &shards {
        let mine: Vec<&crate::faults::Call> = calls
            .iter()
            .filter(|c| c.shard.as_deref() == Some(shard))
            .collect();
        assert!(mine.len() > 10, "{shard}: {} calls", mine.len());
        let gap = |i: usize| mine[i + 1].at.duration_since(mine[i].at).as_millis();
        // The first five calls were throttled: 200 ms (the 5 calls/s spacing, longer
        // than the first 100 ms backoff), then 200, 400, 800 and 1600 ms.
        let gaps: Vec<u128> = (0..5).map(gap).collect();
        // Times are taken where the proxy reads a request, so a busy machine can
        // move one by some tens of milliseconds.
        for (g, want) in gaps.iter().zip([200, 200, 400, 800, 1600]) {
            assert!(*g + 50 >= want, "{shard}: gaps after throttling {gaps:?}");
        }
        // At most 5 calls a second: 11 calls in a row span at least 2 s. (Without the
        // spacing after a throttled call, every third gap is ~100 ms: ~1.7 s.)
        for w in mine.windows(11) {
            let span = w[10].at.duration_since(w[0].at).as_millis();
            assert!(
                span + 100 >= 2000,
                "{shard}: 11 GetRecords calls within {span} ms"
            );
        }
    }
    eprintln!(
        "GetRecords: {} calls, {throttled} throttled; health: {health}",
        calls.len()
    );
}

/// PutRecords answered with some records failed (ProvisionedThroughputExceeded per
/// record, kept from the emulator by the proxy, 250 in all, some of them again on
/// their retry) and two calls throttled as a whole: the stream ends up with every
/// row exactly once, with its partition key, read straight from the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partially_failed_putrecords_end_with_every_row_once() {
    let kinesis = KinesisLocal::start();
    let client = kinesis.client().await;
    create_stream(&client, "refusing", 2).await;
    let proxy = FaultProxy::start(
        kinesis.addr(),
        vec![
            Rule::new("Kinesis_20131202.PutRecords", Fault::Throttle, 2, |i| {
                i % 4 == 1
            }),
            Rule::new(
                "Kinesis_20131202.PutRecords",
                Fault::RefuseRecords(4),
                250,
                |_| true,
            ),
        ],
    )
    .await;
    let dir = Scratch::new("kinesis-refusing");
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..1200)
        .map(|i| format!("{{\"id\": {i}, \"deviceId\": \"d{}\"}}\n", i % 9))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK k WITH (connector = 'kinesis', stream = 'refusing',
           partition_key = 'dev-{{deviceId}}', {});
         CREATE STREAM s (id BIGINT NOT NULL, deviceId TEXT)
           WITH (connector = 'file', path = '{}');
         CREATE QUERY q AS INSERT INTO k SELECT id, deviceId FROM s;",
        options_via(&proxy.endpoint()),
        input.display()
    ))
    .unwrap();
    // `write` returns only when Kinesis has every record of the batch.
    wait_for(
        "the sink to write 1200 rows",
        Duration::from_secs(60),
        || {
            m.sink_state("k")
                .is_some_and(|s| s.rows.load(std::sync::atomic::Ordering::Relaxed) >= 1200)
        },
    )
    .await;
    let health = m
        .sink_state("k")
        .and_then(|s| s.health.clone())
        .map(|h| h.to_json())
        .unwrap();
    m.shutdown(Duration::from_secs(5)).await;

    let got = read_back(&client, "refusing").await;
    let ids: Vec<i64> = got.iter().map(|(_, v)| v["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1200, "each row exactly once in the stream");
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        (0..1200).collect()
    );
    for (key, v) in &got {
        assert_eq!(key, &format!("dev-d{}", v["id"].as_i64().unwrap() % 9));
    }

    assert_eq!(proxy.budgets_left(), [0, 0], "every fault injected");
    let calls = proxy.calls_of("PutRecords");
    let partial = calls.iter().filter(|c| c.refused > 0).count() as u64;
    let refused: usize = calls.iter().map(|c| c.refused).sum();
    assert_eq!(refused, 250);
    assert!(
        health["retries"].as_u64().unwrap() >= partial + 2,
        "a retry per partially failed or throttled call: {health}"
    );
    eprintln!(
        "PutRecords: {} calls, {partial} partially failed ({refused} records refused), \
         2 throttled; health: {health}",
        calls.len()
    );
}

/// A kinesis-local whose TLS port presents a certificate for 127.0.0.1 signed by a
/// test CA, logging every request; returns the emulator and the CA's PEM path
/// (under `dir`).
fn kinesis_local_with_tls(dir: &std::path::Path) -> (KinesisLocal, PathBuf) {
    crate::mqtt::certificates(dir);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let json =
        serde_json::json!({"server": {"key": read("server.key"), "cert": read("server.pem")}});
    let cert = dir.join("kinesis-server.json");
    std::fs::write(&cert, json.to_string()).unwrap();
    (
        KinesisLocal::start_with(free_port(), &cert, "DEBUG"),
        dir.join("ca.pem"),
    )
}

/// Enhanced fan-out against kinesis-local over TLS and HTTP/2: the consumer is
/// registered and reused, three shards are subscribed, every reading arrives once with
/// its shard and sequence number, checkpoints are written, and a restart resumes
/// each shard after its checkpoint without loss or re-read, keeping key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efo_subscribes_to_every_shard_and_resumes_from_checkpoints() {
    let dir = Scratch::new("kinesis-efo");
    let (kinesis, ca) = kinesis_local_with_tls(dir.path());
    let client = kinesis.client().await;
    create_stream(&client, "fanout", 3).await;
    let puts = put_records(&client, "fanout", &readings(0..600)).await;
    let shards: BTreeSet<&str> = puts.iter().map(|p| p.shard.as_str()).collect();
    assert_eq!(shards.len(), 3);
    let app = |file: &str| {
        format!(
            "CREATE SINK out WITH (connector = 'file', path = '{}');
             CREATE STREAM s (id BIGINT NOT NULL, shard_id TEXT METADATA,
                              sequence_number TEXT METADATA)
               WITH (connector = 'kinesis', stream = 'fanout', consumer_type = 'efo',
                     consumer_name = 'sluice-efo', start_position = 'TRIM_HORIZON',
                     shard_discovery_interval = '500ms', endpoint = '{}', ca = '{}',
                     region = 'us-east-1', access_key_id = 'test', secret_access_key = 'test');
             CREATE QUERY q AS INSERT INTO out SELECT id, shard_id, sequence_number FROM s;",
            dir.path().join(file).display(),
            kinesis.https_endpoint(),
            ca.display()
        )
    };
    let first = manager(Some(dir.path()));
    first.apply(&app("first.jsonl")).unwrap();
    wait_for("the first 600 over EFO", Duration::from_secs(60), || {
        records_in(&first, "s") >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = source_health(&first, "s");
    first.shutdown(Duration::from_secs(5)).await;
    let rows = read_lines(&dir.path().join("first.jsonl"));
    assert_eq!(rows.len(), 600, "each reading once: {health}");
    for r in &rows {
        let put = &puts[r["id"].as_i64().unwrap() as usize];
        assert_eq!(r["shard_id"], put.shard.as_str());
        assert_eq!(r["sequence_number"], put.sequence.as_str());
    }
    let consumers = client
        .list_stream_consumers()
        .stream_arn(stream_arn(&client, "fanout").await)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|c| c.consumer_name())
        .collect();
    assert_eq!(names, ["sluice-efo"]);
    let cp: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("kinesis").join("sluice-efo.json")).unwrap(),
    )
    .unwrap();
    for shard in &shards {
        let last = puts
            .iter()
            .filter(|p| p.shard == *shard)
            .map(|p| p.sequence.clone())
            .max_by(|a, b| (a.len(), a).cmp(&(b.len(), b)))
            .unwrap();
        assert_eq!(cp["shards"][shard]["sequence"], last.as_str(), "{cp}");
    }

    // While Sluice is down, and after it is back.
    put_records(&client, "fanout", &readings(600..900)).await;
    let second = manager(Some(dir.path()));
    second.apply(&app("second.jsonl")).unwrap();
    put_records(&client, "fanout", &readings(900..1200)).await;
    wait_for("the other 600 over EFO", Duration::from_secs(60), || {
        records_in(&second, "s") >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.shutdown(Duration::from_secs(5)).await;
    let ids: Vec<i64> = read_lines(&dir.path().join("second.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids.iter().filter(|i| **i < 600).count(),
        0,
        "nothing the first run processed is read again"
    );
    assert_each_once_in_key_order(&ids, 600..1200);
    // The consumer of the first run was reused, not registered again.
    let consumers = client
        .list_stream_consumers()
        .stream_arn(stream_arn(&client, "fanout").await)
        .send()
        .await
        .unwrap();
    assert_eq!(consumers.consumers().len(), 1);
    assert_read_through_efo(&kinesis);
}

async fn stream_arn(client: &Client, name: &str) -> String {
    client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .unwrap()
        .stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_string()
}

/// A split while the stream is read through enhanced fan-out: the parent's
/// subscription ends once it is drained, its children are subscribed after it, and
/// every reading arrives once with each partition key's readings in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efo_follows_a_split_without_loss_keeping_key_order() {
    let dir = Scratch::new("kinesis-efo-split");
    let (kinesis, ca) = kinesis_local_with_tls(dir.path());
    let client = kinesis.client().await;
    create_stream(&client, "efosplit", 2).await;
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL, shard_id TEXT METADATA)
           WITH (connector = 'kinesis', stream = 'efosplit', consumer_type = 'efo',
                 start_position = 'TRIM_HORIZON', shard_discovery_interval = '200ms',
                 endpoint = '{}', ca = '{}', region = 'us-east-1',
                 access_key_id = 'test', secret_access_key = 'test');
         CREATE QUERY q AS INSERT INTO out SELECT id, shard_id FROM s;",
        dir.path().join("out.jsonl").display(),
        kinesis.https_endpoint(),
        ca.display()
    ))
    .unwrap();
    put_records(&client, "efosplit", &readings(0..300)).await;
    wait_for("the first readings", Duration::from_secs(60), || {
        records_in(&m, "s") >= 1
    })
    .await;
    split_first_shard(&client, "efosplit").await;
    put_records(&client, "efosplit", &readings(300..600)).await;
    wait_for("all 600", Duration::from_secs(60), || {
        records_in(&m, "s") >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.shutdown(Duration::from_secs(5)).await;
    let rows = read_lines(&dir.path().join("out.jsonl"));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_each_once_in_key_order(&ids, 0..600);
    let shards_seen: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["shard_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        shards_seen.len(),
        4,
        "2 original, 2 from the split: {shards_seen:?}"
    );
    assert_read_through_efo(&kinesis);
}

/// The records came through SubscribeToShard, not GetRecords (these tests' own
/// client never reads records).
fn assert_read_through_efo(kinesis: &KinesisLocal) {
    let log = kinesis.log();
    let count = |op: &str| log.matches(&format!("Processing {op} request")).count();
    assert!(count("SubscribeToShard") >= 1, "no SubscribeToShard call");
    assert_eq!(count("GetRecords"), 0, "GetRecords called in EFO mode");
    eprintln!(
        "EFO: {} SubscribeToShard, {} RegisterStreamConsumer, {} DescribeStreamConsumer calls",
        count("SubscribeToShard"),
        count("RegisterStreamConsumer"),
        count("DescribeStreamConsumer")
    );
}

/// The emulator is killed and started again (with its saved streams and consumer)
/// while Sluice is subscribed: the subscriptions break, the source retries with
/// backoff (its health says so), subscribes again after the last record it handed
/// on, and every reading, before and after, arrives exactly once, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efo_subscribes_again_after_the_connection_breaks() {
    let dir = Scratch::new("kinesis-efo-restart");
    let (mut kinesis, ca) = kinesis_local_with_tls(dir.path());
    let client = kinesis.client().await;
    create_stream(&client, "efoagain", 2).await;
    put_records(&client, "efoagain", &readings(0..300)).await;
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL)
           WITH (connector = 'kinesis', stream = 'efoagain', consumer_type = 'efo',
                 start_position = 'TRIM_HORIZON', endpoint = '{}', ca = '{}',
                 region = 'us-east-1', access_key_id = 'test', secret_access_key = 'test');
         CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
        dir.path().join("out.jsonl").display(),
        kinesis.https_endpoint(),
        ca.display()
    ))
    .unwrap();
    wait_for("the first 300", Duration::from_secs(60), || {
        records_in(&m, "s") >= 300
    })
    .await;
    // Let the emulator save the consumer and the records.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = source_health(&m, "s")["retries"].as_u64().unwrap();
    kinesis.restart();
    put_records(&client, "efoagain", &readings(300..600)).await;
    wait_for("all 600", Duration::from_secs(60), || {
        records_in(&m, "s") >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = source_health(&m, "s");
    m.shutdown(Duration::from_secs(5)).await;

    let ids: Vec<i64> = read_lines(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_each_once_in_key_order(&ids, 0..600);
    assert!(
        health["retries"].as_u64().unwrap() > before,
        "the broken subscriptions show as retries: {health}"
    );
    assert_eq!(health["status"], "connected", "{health}");
    let subscribes = kinesis
        .log()
        .matches("Processing SubscribeToShard request")
        .count();
    assert!(subscribes >= 4, "2 shards, subscribed twice: {subscribes}");
    assert_read_through_efo(&kinesis);
    eprintln!("after the restart: {health}; {subscribes} SubscribeToShard calls");
}
