//! The `mqtt` source and sink against a real Mosquitto (one per test, on a free port):
//! exact counts for QoS 1, metadata columns and `topic(n)`, JSON arrays per message,
//! bad and oversized messages on the error output with their payloads, a restart of
//! Sluice with a persistent session losing nothing, a broker outage survived with the
//! connection's state visible, and republishing results with a topic template.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use sluice::runtime::Manager;

use crate::mosquitto::Mosquitto;
use crate::support::{manager, read_lines, records_in, wait_for};

fn scratch(name: &str) -> PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sluice-mqtt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Messages a test client received: topic and payload.
type Received = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A test client: publishes and counts the broker's acknowledgements, or collects
/// what it receives on its subscriptions.
struct Client {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(broker: &Mosquitto, id: &str, subscribe: Option<&str>) -> Client {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(500);
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let received: Received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, r) = (Arc::clone(&acked), Arc::clone(&received));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        r.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_)))
                    | Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(t) = ready.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        if let Some(topic) = subscribe {
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), ready_rx)
            .await
            .expect("test client connects")
            .unwrap();
        if subscribe.is_some() {
            // ConnAck came first; give the SubAck its moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Client {
            client,
            acked,
            received,
            task,
        }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    async fn wait_acked(&self, n: u64) {
        let acked = Arc::clone(&self.acked);
        wait_for(
            "the broker's acknowledgements",
            Duration::from_secs(20),
            || acked.load(Ordering::Relaxed) >= n,
        )
        .await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn connection_status(m: &Manager, stream: &str) -> String {
    m.stream_state(stream)
        .and_then(|s| s.health.clone())
        .map(|h| h.status().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_counts_are_exact_with_metadata_arrays_and_bad_messages() {
    let broker = Mosquitto::start();
    let dir = scratch("exact");
    let m = manager(None);
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{out}');
         CREATE SINK errs WITH (connector = 'file', path = '{errs}');
         CREATE STREAM s (
           id BIGINT NOT NULL, v DOUBLE,
           topic TEXT METADATA, q INT METADATA FROM 'qos', r BOOLEAN METADATA FROM 'retain'
         ) WITH (connector = 'mqtt', url = '{url}', topics = 'dev/+/data, other/#', qos = '1',
                 client_id = 'exact-test', max_payload_bytes = '400', errors = 'errs');
         CREATE QUERY q AS INSERT INTO out
           SELECT id, v, topic, topic(2) AS device, q, r FROM s;",
        out = dir.join("out.jsonl").display(),
        errs = dir.join("errors.jsonl").display(),
        url = broker.url(),
    ))
    .unwrap();
    wait_for("the source connects", Duration::from_secs(10), || {
        connection_status(&m, "s") == "connected"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let publisher = Client::connect(&broker, "pub-exact", None).await;
    let mut sent = 0u64;
    for i in 0..2000 {
        let payload = format!("{{\"id\": {i}, \"v\": {}.5}}", i % 100);
        publisher
            .publish(&format!("dev/d{}/data", i % 7), payload)
            .await;
        sent += 1;
    }
    // Arrays of five records per message, pretty-printed over several lines.
    for k in 0..100 {
        let records: Vec<Value> = (0..5)
            .map(|j| serde_json::json!({"id": 2000 + k * 5 + j, "v": 1.0}))
            .collect();
        publisher
            .publish(
                "other/batch",
                serde_json::to_string_pretty(&records).unwrap(),
            )
            .await;
        sent += 1;
    }
    publisher.publish("dev/bad/data", "not json {").await;
    publisher
        .publish(
            "dev/big/data",
            format!("{{\"id\": 1, \"pad\": \"{}\"}}", "x".repeat(500)),
        )
        .await;
    publisher
        .publish("unsubscribed/topic", "{\"id\": 99999}")
        .await;
    publisher.wait_acked(sent + 3).await;

    wait_for("2,500 records in", Duration::from_secs(20), || {
        records_in(&m, "s") >= 2500
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(records_in(&m, "s"), 2500);
    m.shutdown(Duration::from_secs(5)).await;

    let rows = read_lines(&dir.join("out.jsonl"));
    assert_eq!(rows.len(), 2500);
    let ids: BTreeSet<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..2500).collect());
    let r7 = rows.iter().find(|r| r["id"] == 7).unwrap();
    assert_eq!(r7["topic"], "dev/d0/data");
    assert_eq!(r7["device"], "d0");
    assert_eq!(r7["q"], 1);
    assert_eq!(r7["r"], false);
    assert_eq!(r7["v"], 7.5);
    let b = rows.iter().find(|r| r["id"] == 2003).unwrap();
    assert_eq!(
        (b["topic"].as_str(), b["device"].as_str()),
        (Some("other/batch"), Some("batch"))
    );

    let errors = read_lines(&dir.join("errors.jsonl"));
    let kinds: BTreeMap<String, String> = errors
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["payload"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(kinds["malformed"], "not json {");
    assert!(
        kinds["oversized"].starts_with("{\"id\": 1, \"pad\": \"xxx"),
        "{kinds:?}"
    );
    let reason = errors.iter().find(|e| e["kind"] == "oversized").unwrap()["reason"].clone();
    assert!(
        reason.as_str().unwrap().contains("dev/big/data"),
        "{reason}"
    );
}

/// Sluice stops in the middle of a QoS 1 backlog and starts again with the same
/// client id: the broker keeps the session and redelivers what was not acknowledged,
/// so every reading arrives (at least once). Acknowledging on receipt instead of after
/// processing loses the thousands buffered at the stop: this test catches that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_persistent_session_loses_no_qos1_message() {
    let broker = Mosquitto::start();
    let dir = scratch("restart");
    let app = |file: &str| {
        format!(
            "CREATE SINK out WITH (connector = 'file', path = '{}');
             CREATE STREAM s (id BIGINT NOT NULL) WITH (connector = 'mqtt', url = '{}',
               topics = 'readings', qos = '1', client_id = 'restart-test');
             CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
            dir.join(file).display(),
            broker.url()
        )
    };
    // The first run only creates the session (and its subscription) at the broker.
    let setup = manager(None);
    setup.apply(&app("setup.jsonl")).unwrap();
    wait_for("the source connects", Duration::from_secs(10), || {
        connection_status(&setup, "s") == "connected"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    setup.shutdown(Duration::from_secs(5)).await;

    // While Sluice is down, a backlog builds up at the broker.
    const N: u64 = 50_000;
    let publisher = Client::connect(&broker, "pub-restart", None).await;
    for i in 0..N {
        publisher
            .publish("readings", format!("{{\"id\": {i}}}"))
            .await;
    }
    publisher.wait_acked(N).await;

    // The second run stops in the middle of the backlog.
    let second = manager(None);
    second.apply(&app("second.jsonl")).unwrap();
    wait_for(
        "the second run to get going",
        Duration::from_secs(20),
        || records_in(&second, "s") >= 2000,
    )
    .await;
    second.shutdown(Duration::from_secs(5)).await;
    let got_second = read_lines(&dir.join("second.jsonl")).len();
    assert!(
        (got_second as u64) < N,
        "the second run got all {got_second} before stopping"
    );

    // The third run gets the rest.
    let third = manager(None);
    third.apply(&app("third.jsonl")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records_in(&third, "s") + (got_second as u64) < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    third.shutdown(Duration::from_secs(5)).await;
    let mut ids = BTreeSet::new();
    let mut total = 0;
    for f in ["setup.jsonl", "second.jsonl", "third.jsonl"] {
        for r in read_lines(&dir.join(f)) {
            ids.insert(r["id"].as_i64().unwrap());
            total += 1;
        }
    }
    let missing = (0..N as i64).filter(|i| !ids.contains(i)).count();
    assert_eq!(
        missing, 0,
        "{missing} readings lost across the restart ({got_second} before it)"
    );
    // At least once: what was in flight at the stop may come twice, nothing more.
    assert!(
        total - (N as usize) < 10_000,
        "{total} rows for {N} readings"
    );
}

/// The broker goes away and comes back empty (no persistence): the source reports
/// `retrying` meanwhile, reconnects, subscribes again, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_survives_a_broker_outage_and_says_so() {
    let mut broker = Mosquitto::start();
    let dir = scratch("outage");
    let m = manager(None);
    m.apply(&format!(
        "CREATE SINK out WITH (connector = 'file', path = '{}');
         CREATE STREAM s (id BIGINT NOT NULL) WITH (connector = 'mqtt', url = '{}',
           topics = 'readings', qos = '1', client_id = 'outage-test');
         CREATE QUERY q AS INSERT INTO out SELECT id FROM s;",
        dir.join("out.jsonl").display(),
        broker.url()
    ))
    .unwrap();
    wait_for("the source connects", Duration::from_secs(10), || {
        connection_status(&m, "s") == "connected"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let p = Client::connect(&broker, "pub-outage-1", None).await;
        for i in 0..100 {
            p.publish("readings", format!("{{\"id\": {i}}}")).await;
        }
        p.wait_acked(100).await;
    }
    wait_for("100 records", Duration::from_secs(10), || {
        records_in(&m, "s") == 100
    })
    .await;

    broker.stop();
    wait_for("the outage to show", Duration::from_secs(10), || {
        connection_status(&m, "s") == "retrying"
    })
    .await;
    let health = m.stream_state("s").unwrap().health.clone().unwrap();
    assert!(health.retries() >= 1);
    assert!(health.to_json()["last_error"].is_string());

    broker.restart();
    wait_for("the source reconnects", Duration::from_secs(20), || {
        connection_status(&m, "s") == "connected"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = Client::connect(&broker, "pub-outage-2", None).await;
    for i in 100..200 {
        p.publish("readings", format!("{{\"id\": {i}}}")).await;
    }
    p.wait_acked(100).await;
    wait_for("200 records", Duration::from_secs(10), || {
        records_in(&m, "s") == 200
    })
    .await;
    m.shutdown(Duration::from_secs(5)).await;
    let ids: BTreeSet<i64> = read_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..200).collect());
}

/// Results republished with a topic template, QoS 1 and retain: a subscriber gets
/// exactly the rows the query emits, each on its device's topic, values with a `/`
/// escaped so they stay one topic level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_republishes_rows_on_templated_topics() {
    let broker = Mosquitto::start();
    let m = manager(None);
    m.apply(&format!(
        "CREATE STREAM s (device TEXT NOT NULL, temperature DOUBLE) WITH (connector = 'http');
         CREATE SINK alerts WITH (connector = 'mqtt', url = '{}', topic = 'alerts/{{device}}/hot',
           qos = '1', retain = 'true');
         CREATE QUERY hot AS INSERT INTO alerts
           SELECT device, temperature FROM s WHERE temperature > 85;",
        broker.url()
    ))
    .unwrap();
    let sub = Client::connect(&broker, "sub-alerts", Some("alerts/#")).await;
    let mut body = String::new();
    for i in 0..300 {
        body.push_str(&format!(
            "{{\"device\": \"d{}\", \"temperature\": {}}}\n",
            i % 10,
            i % 110
        ));
    }
    body.push_str("{\"device\": \"a/b\", \"temperature\": 99}\n");
    let report = m.ingest("s", body.into_bytes()).await.unwrap();
    assert_eq!(report.accepted, 301);
    // temperature = i % 110 > 85 for i in 86..110 and 196..220: 48 rows, plus a/b.
    let received = Arc::clone(&sub.received);
    wait_for("49 alerts", Duration::from_secs(10), || {
        received.lock().unwrap().len() >= 49
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = sub.received.lock().unwrap().clone();
    assert_eq!(got.len(), 49);
    for (topic, payload) in &got {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let device = v["device"].as_str().unwrap().replace('/', "%2F");
        assert_eq!(topic, &format!("alerts/{device}/hot"));
        assert!(v["temperature"].as_f64().unwrap() > 85.0);
    }
    assert!(got.iter().any(|(t, _)| t == "alerts/a%2Fb/hot"));
    m.shutdown(Duration::from_secs(5)).await;
}

/// Runs openssl; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM, signed
/// by that CA; and a second CA that signed nothing here.
pub fn certificates(dir: &Path) {
    let days = ["-days", "2"];
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=sluice test {ca}"),
                days[0],
                days[1],
            ],
        );
    }
    // Extensions make them X.509 v3 certificates, which rustls requires.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &*format!("{name}.pem"),
            days[0],
            days[1],
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(["-extfile".to_string(), format!("{name}.ext")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &args);
    }
    // Mosquitto started as root drops to its own user, which must read the key.
    use std::os::unix::fs::PermissionsExt;
    for key in ["server.key", "client.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// `mqtts://` with the broker's CA and a client certificate (mutual TLS, as AWS IoT
/// Core requires): records flow; with a CA that did not sign the broker's certificate
/// the connection is refused and the stream says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate() {
    let dir = scratch("tls");
    certificates(&dir);
    let tls_port = crate::services::free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\n",
        d = dir.display()
    ));
    let m = manager(None);
    let app = |stream: &str, ca: &str| {
        format!(
            "CREATE STREAM {stream} (id BIGINT NOT NULL) WITH (connector = 'mqtt',
               url = 'mqtts://127.0.0.1:{tls_port}', topics = 'secure', qos = '1',
               ca = '{d}/{ca}', client_cert = '{d}/client.pem', client_key = '{d}/client.key');
             CREATE QUERY q_{stream} AS SELECT id FROM {stream};",
            d = dir.display()
        )
    };
    m.apply(&app("good", "ca.pem")).unwrap();
    m.apply(&app("wrong_ca", "other-ca.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection_status(&m, "good") != "connected" {
        let health = m.stream_state("good").and_then(|s| s.health.clone());
        assert!(
            Instant::now() < deadline,
            "no TLS connection: {:?}, stream {:?}",
            health.map(|h| h.to_json()),
            m.stream_state("good")
                .map(|s| s.status.lock().unwrap().clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = Client::connect(&broker, "pub-tls", None).await;
    for i in 0..50 {
        p.publish("secure", format!("{{\"id\": {i}}}")).await;
    }
    p.wait_acked(50).await;
    wait_for("50 records over TLS", Duration::from_secs(10), || {
        records_in(&m, "good") == 50
    })
    .await;
    wait_for(
        "the wrong CA to be refused",
        Duration::from_secs(10),
        || connection_status(&m, "wrong_ca") == "retrying",
    )
    .await;
    let health = m.stream_state("wrong_ca").unwrap().health.clone().unwrap();
    let error = health.to_json()["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("TLS") || error.contains("certificate"),
        "{error}"
    );
    assert_eq!(records_in(&m, "wrong_ca"), 0);
    m.shutdown(Duration::from_secs(5)).await;
}
