//! What SQL over HTTP may reach (issue 12, item 4), through the real binary: an
//! `endpoint` (S3 archive, kinesis source and sink, dynamodb sink), a Redis URL or an
//! MQTT URL outside the allow-lists of `sluice serve` answers 400 naming the option,
//! the host and the flag that would allow it, and a listener of the test standing at
//! that host sees no connection; an allowed endpoint gets the SQL's own credentials,
//! never the server's; with `SLUICE_ALLOW_ENDPOINT`, `--allow-redis` and
//! `--allow-mqtt` the same connectors carry data through moto, kinesis-local,
//! redis-server and Mosquitto; and two sinks may not write one archive prefix or one
//! embedded table, whether the SQL came over HTTP or from a file.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use serde_json::json;
use sluice::error::Error;
use sluice::runtime::{Connectors, Manager, ManagerOptions};
use sluice::sinks::SinkContext;
use sluice::sources::SourceContext;

use crate::kinesis::{KinesisLocal, create_stream, read_back};
use crate::mosquitto::Mosquitto;
use crate::moto::Moto;
use crate::service::{Response, Server, scratch};
use crate::services::{RedisServer, Scratch};

/// A listener of the test's own, standing where SQL must not reach: it keeps the
/// first bytes of every connection it accepts (an HTTP client's request head).
struct Trap {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (record, done) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // Counted at once, even if nothing is sent on it.
                let index = {
                    let mut seen = record.lock().unwrap();
                    seen.push(String::new());
                    seen.len() - 1
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while got.len() < 1 << 16 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                record.lock().unwrap()[index] = String::from_utf8_lossy(&got).into_owned();
            }
        });
        Trap { port, seen, stop }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What each connection so far sent first.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The server's own AWS identity, which must never reach a host SQL named.
const SERVER_AWS: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "AKIASERVERSOWNKEY000"),
    ("AWS_SECRET_ACCESS_KEY", "the-servers-secret"),
    ("AWS_SESSION_TOKEN", "the-servers-session-token"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Readings the whole time: a sink behind it writes as soon as its query runs.
const SIM: &str = "CREATE STREAM sim (deviceId INT NOT NULL, temperature DOUBLE, ts TIMESTAMP)\n\
     WITH (connector = 'simulator', devices = '3', rate = '20');\n";

fn submit(server: &Server, sql: &str) -> Response {
    server.post("/applications", "text/plain", sql)
}

/// A 400 that names the option, the host and the flag allowing it, at a position.
fn assert_refused(r: &Response, option: &str, target: &str, flag: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    let body = r.json();
    let e = body["error"].as_str().unwrap();
    assert!(
        e.contains(&format!("option '{option}' names {target}")),
        "{e}"
    );
    assert!(e.contains(&format!("{flag} {target}")), "{e}");
    assert!(body["position"]["line"].is_u64(), "{body}");
}

fn data_arg(dir: &Path) -> String {
    dir.join("data").to_str().unwrap().to_string()
}

/// Without `--allow-endpoint`, every AWS connector naming an endpoint is refused
/// before anything is created, and nothing ever connects to that host; the refusals
/// and overlapping archives come back as the API's errors.
#[test]
fn endpoints_outside_the_allow_list_are_refused_before_anything_connects() {
    let trap = Trap::start();
    let dir = scratch("reach-endpoints");
    let data = data_arg(&dir);
    let server = Server::start(&dir, "server", &["--data-dir", &data], &SERVER_AWS);
    let endpoint = format!("http://{}", trap.addr());
    let apps = [
        format!(
            "{SIM}CREATE SINK arch WITH (connector = 'archive', url = 's3://bucket/raw',\n\
               endpoint = '{endpoint}', flush_interval = '200ms');\n\
             CREATE QUERY q1 AS INSERT INTO arch SELECT * FROM sim;"
        ),
        format!(
            "{SIM}CREATE SINK ks WITH (connector = 'kinesis', stream = 'out',\n\
               partition_key = 'd{{deviceId}}', endpoint = '{endpoint}');\n\
             CREATE QUERY q2 AS INSERT INTO ks SELECT * FROM sim;"
        ),
        format!(
            "{SIM}CREATE SINK ddb WITH (connector = 'dynamodb', table = 'latest',\n\
               partition_key = 'deviceId', endpoint = '{endpoint}/');\n\
             CREATE QUERY q3 AS INSERT INTO ddb SELECT * FROM sim;"
        ),
        format!(
            "CREATE STREAM kin (id BIGINT) WITH (connector = 'kinesis', stream = 'in',\n\
               endpoint = '{endpoint}');\n\
             CREATE QUERY q4 AS SELECT id FROM kin;"
        ),
    ];
    for sql in &apps {
        assert_refused(
            &submit(&server, sql),
            "endpoint",
            &trap.addr(),
            "--allow-endpoint",
        );
    }
    // All or nothing: not even the stream was created.
    assert_eq!(server.get_json("/streams"), json!([]));
    assert_eq!(server.get_json("/sinks"), json!([]));
    // Accepted, the sinks would have written within this time.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        trap.seen(),
        Vec::<String>::new(),
        "something reached the trap"
    );

    // Two archives on one prefix: refused too, naming the other sink.
    let r = submit(
        &server,
        "CREATE SINK first WITH (connector = 'archive', path = 'shared');",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = submit(
        &server,
        "CREATE SINK second WITH (connector = 'archive', path = 'shared/deeper');",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("inside the archive at"), "{e}");
    assert!(e.contains("of sink 'first'"), "{e}");
}

/// An allowed endpoint is reached only with the SQL's own credentials: without them
/// (or with a profile, another of the server's identities) the statement is refused;
/// with them, what arrives is signed with them and carries none of the server's.
#[test]
fn an_allowed_endpoint_gets_the_sqls_own_credentials_never_the_servers() {
    let trap = Trap::start();
    let dir = scratch("reach-credentials");
    let data = data_arg(&dir);
    let server = Server::start(
        &dir,
        "server",
        &["--data-dir", &data, "--allow-endpoint", &trap.addr()],
        &SERVER_AWS,
    );
    let endpoint = format!("http://{}", trap.addr());
    let archive = |name: &str, creds: &str| {
        format!(
            "{SIM}CREATE SINK {name} WITH (connector = 'archive', url = 's3://bucket/{name}',\n\
               endpoint = '{endpoint}', flush_interval = '200ms'{creds});\n\
             CREATE QUERY {name}_q AS INSERT INTO {name} SELECT * FROM sim;"
        )
    };
    let kinesis = |name: &str, creds: &str| {
        format!(
            "{SIM}CREATE SINK {name} WITH (connector = 'kinesis', stream = 'out',\n\
               partition_key = 'd{{deviceId}}', endpoint = '{endpoint}'{creds});\n\
             CREATE QUERY {name}_q AS INSERT INTO {name} SELECT * FROM sim;"
        )
    };
    for sql in [archive("a1", ""), kinesis("k1", "")] {
        let r = submit(&server, &sql);
        assert_eq!(r.status, 400, "{}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            e.contains("needs the SQL's own access_key_id and secret_access_key"),
            "{e}"
        );
    }
    let r = submit(
        &server,
        "CREATE SINK k2 WITH (connector = 'kinesis', stream = 'out', partition_key = 'x', \
         profile = 'default');",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("option 'profile'"), "{}", r.body);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(trap.seen(), Vec::<String>::new());

    let own = |key: &str| format!(", access_key_id = '{key}', secret_access_key = 'sql-secret'");
    for sql in [
        archive("a3", &own("SQLKEYFORTHEARCHIVE0")),
        kinesis("k3", &own("SQLKEYFORTHEKINESIS0")),
    ] {
        let r = submit(&server, &sql);
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let requests = loop {
        let seen = trap.seen();
        let signed = |key: &str| {
            seen.iter()
                .any(|r| r.contains(&format!("Credential={key}/")))
        };
        if signed("SQLKEYFORTHEARCHIVE0") && signed("SQLKEYFORTHEKINESIS0") {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "no request signed with the SQL's keys: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in requests {
        let lower = r.to_ascii_lowercase();
        assert!(!r.contains("AKIASERVERSOWNKEY000"), "{r}");
        assert!(!lower.contains("the-servers-session-token"), "{r}");
        assert!(!lower.contains("x-amz-security-token"), "{r}");
    }
}

/// Every object under `prefix` of an S3 bucket on moto.
fn s3_keys(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, boto3\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                 aws_access_key_id='test', aws_secret_access_key='test')\n\
             r = s3.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3])\n\
             print(json.dumps([o['Key'] for o in r.get('Contents', [])]))",
            &moto.endpoint(),
            bucket,
            prefix,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// With the endpoints allowed (here through SLUICE_ALLOW_ENDPOINT), SQL over HTTP
/// reads a Kinesis stream and writes another, a DynamoDB table and an S3 archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_endpoints_carry_data_through_moto_and_kinesis_local() {
    let moto = Moto::start();
    moto.create_bucket("reach");
    let kinesis = KinesisLocal::start();
    let kc = kinesis.client().await;
    create_stream(&kc, "in", 1).await;
    create_stream(&kc, "out", 1).await;
    for i in 0..5 {
        kc.put_record()
            .stream_name("in")
            .partition_key(format!("d{i}"))
            .data(Blob::new(format!(r#"{{"id": {i}, "deviceId": "d{i}"}}"#)))
            .send()
            .await
            .expect("PutRecord");
    }
    let dc = crate::dynamodb::client(&moto).await;
    crate::dynamodb::create_table(&dc, "latest", "deviceId", None).await;

    let dir = scratch("reach-allowed-aws");
    let data = data_arg(&dir);
    let allow = format!("127.0.0.1:{},{}", moto.port, kinesis.addr());
    let mut env = SERVER_AWS.to_vec();
    env.push(("SLUICE_ALLOW_ENDPOINT", &allow));
    let server = Server::start(&dir, "server", &["--data-dir", &data], &env);
    let (k, m) = (kinesis.options(), moto.options());
    let r = submit(
        &server,
        &format!(
            "CREATE STREAM kin (id BIGINT NOT NULL, deviceId TEXT) WITH (connector = 'kinesis',\n\
               stream = 'in', start_position = 'TRIM_HORIZON', poll_interval = '50ms', {k});\n\
             CREATE SINK out WITH (connector = 'kinesis', stream = 'out',\n\
               partition_key = '{{deviceId}}', {k});\n\
             CREATE SINK latest WITH (connector = 'dynamodb', table = 'latest',\n\
               partition_key = 'deviceId', {m});\n\
             CREATE SINK arch WITH (connector = 'archive', url = 's3://reach/raw',\n\
               flush_interval = '200ms', {m});\n\
             CREATE QUERY to_kinesis AS INSERT INTO out SELECT id, deviceId FROM kin;\n\
             CREATE QUERY to_dynamodb AS INSERT INTO latest SELECT id, deviceId FROM kin;\n\
             CREATE QUERY to_s3 AS INSERT INTO arch SELECT id, deviceId FROM kin;"
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = read_back(&kc, "out").await.len();
        let items = crate::dynamodb::scan(&dc, "latest").await.len();
        let objects = s3_keys(&moto, "reach", "raw/").len();
        if out == 5 && items == 5 && objects > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kinesis out {out}/5, dynamodb items {items}/5, S3 objects {objects}:\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis and MQTT URLs are allowed one host at a time: outside the lists (or the
/// allowed host spelt another way) they are refused and nothing connects; inside,
/// readings go simulator → MQTT sink → Mosquitto → MQTT source → Redis sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_mqtt_urls_must_be_allowed() {
    let trap = Trap::start();
    let redis = RedisServer::start();
    let broker = Mosquitto::start();
    let redis_addr = redis.url().trim_start_matches("redis://").to_string();
    let broker_addr = format!("127.0.0.1:{}", broker.port());
    let dir = scratch("reach-redis-mqtt");
    let data = data_arg(&dir);
    let server = Server::start(
        &dir,
        "server",
        &[
            "--data-dir",
            &data,
            "--allow-redis",
            &redis_addr,
            "--allow-mqtt",
            &broker_addr,
        ],
        &[],
    );
    let t = trap.addr();
    let refused = [
        (
            format!(
                "{SIM}CREATE SINK r1 WITH (connector = 'redis', url = 'redis://{t}/0',\n\
                   commands = 'SET x {{temperature}}');\n\
                 CREATE QUERY q1 AS INSERT INTO r1 SELECT * FROM sim;"
            ),
            t.clone(),
            "--allow-redis",
        ),
        (
            format!(
                "{SIM}CREATE SINK m1 WITH (connector = 'mqtt', url = 'mqtt://{t}', topic = 'x');\n\
                 CREATE QUERY q2 AS INSERT INTO m1 SELECT * FROM sim;"
            ),
            t.clone(),
            "--allow-mqtt",
        ),
        (
            format!(
                "CREATE STREAM m2 (id INT) WITH (connector = 'mqtt', url = 'mqtt://{t}', topics = 'x');\n\
                 CREATE QUERY q3 AS SELECT id FROM m2;"
            ),
            t.clone(),
            "--allow-mqtt",
        ),
        (
            // The allowed Redis, by another name: compared as written, refused.
            format!(
                "{SIM}CREATE SINK r2 WITH (connector = 'redis',\n\
                   url = 'redis://localhost:{}', commands = 'SET x 1');",
                redis_addr.rsplit(':').next().unwrap()
            ),
            format!("localhost:{}", redis_addr.rsplit(':').next().unwrap()),
            "--allow-redis",
        ),
    ];
    for (sql, target, flag) in &refused {
        assert_refused(&submit(&server, sql), "url", target, flag);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        trap.seen(),
        Vec::<String>::new(),
        "something reached the trap"
    );

    let r = submit(
        &server,
        &format!(
            "{SIM}CREATE SINK up WITH (connector = 'mqtt', url = 'mqtt://{broker_addr}',\n\
               topic = 'reach/{{deviceId}}');\n\
             CREATE STREAM down (deviceId INT NOT NULL, temperature DOUBLE)\n\
               WITH (connector = 'mqtt', url = 'mqtt://{broker_addr}', topics = 'reach/#');\n\
             CREATE SINK latest WITH (connector = 'redis', url = 'redis://{redis_addr}',\n\
               commands = 'SET reach:{{deviceId}} {{temperature}}');\n\
             CREATE QUERY relay AS INSERT INTO latest SELECT deviceId, temperature FROM down;\n\
             CREATE QUERY publish AS INSERT INTO up SELECT * FROM sim;"
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("reach:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if keys.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys {keys:?}:\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A manager whose connectors are those of `sluice serve` over `data`.
fn served(data: &Path) -> Arc<Manager> {
    let root = Some(data.to_path_buf());
    Manager::new(ManagerOptions {
        connectors: Connectors {
            sources: SourceContext {
                file_root: root.clone(),
                data_dir: root.clone(),
                ..Default::default()
            },
            sinks: SinkContext {
                file_root: root.clone(),
                data_dir: root,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
}

fn conflict(result: sluice::error::Result<Vec<sluice::catalog::Change>>) -> String {
    match result {
        Err(e @ Error::Conflict { .. }) => e.to_string(),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Two sinks may not write one archive prefix (one inside the other, equal, or the
/// same directory spelt another way) or one embedded table, over HTTP or from files;
/// siblings, other stores, a sink replaced in place and a sink renamed within its
/// application are fine, and `sluice check` refuses overlapping files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_and_tables_of_two_sinks_may_not_overlap() {
    let dir = Scratch::new("reach-overlap");
    let m = served(dir.path());
    let archive =
        |name: &str, at: &str| format!("CREATE SINK {name} WITH (connector = 'archive', {at});");

    m.apply_untrusted(Some("a"), &archive("a", "path = 'archives/a'"))
        .unwrap();
    let e = conflict(m.apply_untrusted(Some("b"), &archive("b", "path = 'archives/a/b'")));
    assert!(
        e.starts_with("1:1: sink 'b' would write the archive at "),
        "{e}"
    );
    assert!(
        e.contains("inside the archive at") && e.contains("of sink 'a' (application 'a')"),
        "{e}"
    );
    assert!(e.contains("send every query INTO sink 'a'"), "{e}");
    let e = conflict(m.apply_untrusted(None, &archive("b", "path = 'archives'")));
    assert!(e.contains("containing the archive at"), "{e}");
    let e = conflict(m.apply_untrusted(None, &archive("b", "path = 'archives/./a/'")));
    assert!(e.contains("the same location as"), "{e}");
    // A sibling whose name merely starts alike is apart.
    m.apply_untrusted(None, &archive("ab", "path = 'archives/ab'"))
        .unwrap();
    // A path onto another sink's default directory, <data>/archive/<sink>.
    m.apply_untrusted(None, "CREATE SINK c WITH (connector = 'archive');")
        .unwrap();
    let e = conflict(m.apply_untrusted(None, &archive("d", "path = 'archive/c/x'")));
    assert!(e.contains("of sink 'c'"), "{e}");
    // Replaced in place (another flush interval): its own location is no clash.
    m.apply_untrusted(
        Some("a"),
        "CREATE OR REPLACE SINK a WITH (connector = 'archive', path = 'archives/a', \
         flush_interval = '5s');",
    )
    .unwrap();
    // Renamed within its application: the old name goes when the text is applied.
    m.replace_application("r", &archive("old", "path = 'renamed'"), false)
        .unwrap();
    m.replace_application("r", &archive("new", "path = 'renamed'"), false)
        .unwrap();
    assert!(m.catalog().sinks.contains_key("new") && !m.catalog().sinks.contains_key("old"));

    // From files too, and in object stores: the same bucket and endpoint is one store
    // whatever the scheme is called; another endpoint is another store.
    let s3 = |name: &str, url: &str, extra: &str| {
        format!(
            "CREATE SINK {name} WITH (connector = 'archive', url = '{url}', region = 'us-east-1', \
             access_key_id = 'k', secret_access_key = 's'{extra});"
        )
    };
    m.apply(&s3("s1", "s3://bkt/raw", "")).unwrap();
    let e = conflict(m.apply(&s3("s2", "s3a://bkt/raw/2026", "")));
    assert!(
        e.contains("inside the archive at s3://bkt/raw of sink 's1'"),
        "{e}"
    );
    m.apply(&s3("s3", "s3://bkt/rawer", "")).unwrap();
    m.apply(&s3(
        "s4",
        "s3://bkt/raw",
        ", endpoint = 'http://127.0.0.1:9'",
    ))
    .unwrap();

    // Embedded tables: one sink per table.
    let table = |name: &str| {
        format!(
            "CREATE SINK {name} WITH (connector = 'table', table = 'alerts', partition_key = 'id');"
        )
    };
    m.apply_untrusted(None, &table("t1")).unwrap();
    let e = conflict(m.apply_untrusted(None, &table("t2")));
    assert!(
        e.contains("sink 't2' would write the embedded table 'alerts', which sink 't1' writes"),
        "{e}"
    );

    // `sluice check` over two files, as `serve --queries` would load them.
    let one = dir.path().join("one.sql");
    let two = dir.path().join("two.sql");
    std::fs::write(&one, s3("x", "s3://bkt/p", "")).unwrap();
    std::fs::write(&two, format!("\n{}", s3("y", "s3://bkt/p/q", ""))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .args([&one, &two])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:1: sink 'y' would write the archive at s3://bkt/p/q, inside the archive at \
             s3://bkt/p of sink 'x'",
            two.display()
        )),
        "{stderr}"
    );
}

/// What came over HTTP is restored under the rules of HTTP: a Redis sink accepted
/// while its host was allowed is skipped (kept, with why) after a restart without
/// that allowance.
#[test]
fn a_restart_checks_what_came_over_http_against_the_lists_of_that_start() {
    let redis = RedisServer::start();
    let addr = redis.url().trim_start_matches("redis://").to_string();
    let dir = scratch("reach-restart");
    let data = data_arg(&dir);
    let mut first = Server::start(
        &dir,
        "first",
        &["--data-dir", &data, "--allow-redis", &addr],
        &[],
    );
    let r = submit(
        &first,
        &format!(
            "{SIM}CREATE SINK r1 WITH (connector = 'redis', url = '{}', commands = 'SET x {{temperature}}');\n\
             CREATE QUERY q1 AS INSERT INTO r1 SELECT * FROM sim;",
            redis.url()
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (status, _) = first.terminate();
    assert!(status.success());

    let second = Server::start(&dir, "second", &["--data-dir", &data], &[]);
    let apps = second.get_json("/applications");
    let skipped: Vec<(&str, &str)> = apps["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped, [("sink", "r1"), ("query", "q1")], "{apps}");
    assert!(
        apps["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("--allow-redis"),
        "{apps}"
    );
    // The stream, which reaches nothing, is back and running queries may use it.
    assert_eq!(second.get("/streams/sim").status, 200);
}
