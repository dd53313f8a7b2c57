//! Alert tables: the `dynamodb` sink against a real DynamoDB emulator (moto's server,
//! one per test, on a free port) and the embedded `table` sink with its HTTP endpoint,
//! checked item by item; a replay rewriting the same items; the embedded table across
//! a restart and a torn write; and the seed-004 canned application end to end through
//! the real binary; and the `dynamodb` sink through a fault-injecting proxy
//! (`faults.rs`) that throttles calls and leaves items unprocessed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use sluice::api::{ApiOptions, app};
use sluice::aws::AwsConnect;
use sluice::tables;
use tower::ServiceExt;

use crate::faults::{Fault, FaultProxy, Rule};
use crate::mosquitto::Mosquitto;
use crate::moto::Moto;
use crate::service::{Server, scratch};
use crate::services::Scratch;
use crate::support::{manager, run_to_end};

/// A DynamoDB client for moto.
pub(crate) async fn client(moto: &Moto) -> Client {
    let c = AwsConnect {
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..Default::default()
    };
    Client::new(&c.sdk_config().await)
}

pub(crate) async fn create_table(
    client: &Client,
    name: &str,
    pk: &str,
    sk: Option<(&str, ScalarAttributeType)>,
) {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(pk)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(pk)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        );
    if let Some((sk, t)) = sk {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(sk)
                    .attribute_type(t)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(sk)
                    .key_type(KeyType::Range)
                    .build()
                    .unwrap(),
            );
    }
    req.send().await.expect("CreateTable");
}

/// Every item of a table, following pages.
pub(crate) async fn scan(client: &Client, table: &str) -> Vec<HashMap<String, AttributeValue>> {
    let mut items = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("Scan");
        items.extend(out.items().iter().cloned());
        match out.last_evaluated_key() {
            Some(k) => start = Some(k.clone()),
            None => return items,
        }
    }
}

/// Readings of 30 devices, temperatures sweeping 0..50: the seed's data.
fn readings() -> Vec<Value> {
    (0..900i64)
        .map(|i| {
            json!({"deviceId": format!("dev-{}", i % 30), "temperature": (i * 7 % 50) as f64 + 0.5,
                   "humidity": (i % 100) as f64, "ts": 1_790_000_000_000i64 + i * 1000, "seq": i})
        })
        .collect()
}

fn write_readings(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn s(v: &AttributeValue) -> &str {
    v.as_s().unwrap()
}

/// A whole-second epoch ms as the sinks write a time: `2026-…T…Z`, no fraction.
fn rfc3339(ms: i64) -> String {
    assert_eq!(ms % 1000, 0);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn n(v: &AttributeValue) -> f64 {
    v.as_n().unwrap().parse().unwrap()
}

/// The last hot reading of each device: what the seed's Lambda leaves in the table.
fn expected_latest(rows: &[Value]) -> BTreeMap<String, &Value> {
    let mut latest = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r["temperature"].as_f64().unwrap() > 30.0)
    {
        latest.insert(r["deviceId"].as_str().unwrap().to_string(), r);
    }
    latest
}

/// The seed-004 table in DynamoDB (moto): each device's latest warning, item by item;
/// a table with a sort key and a TTL attribute holds every warning; running the same
/// input again leaves both tables as they were (idempotent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sink_writes_warning_events_item_by_item() {
    let moto = Moto::start();
    let client = client(&moto).await;
    create_table(&client, "warning_events", "deviceId", None).await;
    create_table(
        &client,
        "warning_history",
        "deviceId",
        Some(("seq", ScalarAttributeType::N)),
    )
    .await;
    let dir = Scratch::new("dynamodb");
    let input = dir.path().join("in.jsonl");
    let rows = readings();
    write_readings(&input, &rows);
    // One file stream per query: a file stream starts with its first query and may
    // end before the second is attached, which would then see nothing.
    let app = format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, humidity DOUBLE, ts TIMESTAMP, seq BIGINT)
           WITH (connector = 'file', path = '{input}');
         CREATE STREAM r2 (deviceId TEXT, temperature DOUBLE, seq BIGINT)
           WITH (connector = 'file', path = '{input}');
         CREATE SINK latest WITH (connector = 'dynamodb', table = 'warning_events',
           partition_key = 'deviceId', {opts});
         CREATE SINK history WITH (connector = 'dynamodb', table = 'warning_history',
           partition_key = 'deviceId', sort_key = 'seq', attributes = 'temperature AS t',
           ttl_attribute = 'expires_at', ttl = '1h', {opts});
         CREATE QUERY q1 AS INSERT INTO latest
           SELECT deviceId, temperature, humidity, ts FROM r WHERE temperature > 30;
         CREATE QUERY q2 AS INSERT INTO history
           SELECT deviceId, seq, temperature FROM r2 WHERE temperature > 30;",
        input = input.display(),
        opts = moto.options()
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    for run in 0..2 {
        let m = manager(Some(dir.path()));
        m.apply(&app).unwrap();
        run_to_end(&m, "q1").await;
        run_to_end(&m, "q2").await;
        // The sinks write after the queries hand results over: wait for the items.
        let want = (
            expected_latest(&rows).len(),
            rows.iter()
                .filter(|r| r["temperature"].as_f64().unwrap() > 30.0)
                .count(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = (
                scan(&client, "warning_events").await.len(),
                scan(&client, "warning_history").await.len(),
            );
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "items {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m.shutdown(Duration::from_secs(5)).await;

        let latest = expected_latest(&rows);
        let items = scan(&client, "warning_events").await;
        assert_eq!(
            items.len(),
            latest.len(),
            "run {run}: one item per hot device"
        );
        for item in &items {
            let r = latest[s(&item["deviceId"])];
            assert_eq!(n(&item["temperature"]), r["temperature"].as_f64().unwrap());
            assert_eq!(n(&item["humidity"]), r["humidity"].as_f64().unwrap());
            // Numbers stay N, a whole DOUBLE without `.0`; times are RFC 3339 text.
            assert!(!item["humidity"].as_n().unwrap().contains('.'), "{item:?}");
            assert_eq!(s(&item["ts"]), rfc3339(r["ts"].as_i64().unwrap()));
            assert_eq!(item.len(), 4, "exactly the query's columns: {item:?}");
        }

        let hot: Vec<&Value> = rows
            .iter()
            .filter(|r| r["temperature"].as_f64().unwrap() > 30.0)
            .collect();
        let items = scan(&client, "warning_history").await;
        assert_eq!(
            items.len(),
            hot.len(),
            "run {run}: one item per hot reading"
        );
        let by_key: HashMap<(String, i64), &HashMap<String, AttributeValue>> = items
            .iter()
            .map(|i| ((s(&i["deviceId"]).to_string(), n(&i["seq"]) as i64), i))
            .collect();
        for r in hot {
            let key = (
                r["deviceId"].as_str().unwrap().to_string(),
                r["seq"].as_i64().unwrap(),
            );
            let item = by_key[&key];
            assert_eq!(n(&item["t"]), r["temperature"].as_f64().unwrap());
            let expires = n(&item["expires_at"]);
            assert!(
                (now_s + 3500.0..now_s + 3700.0 + 120.0).contains(&expires),
                "{item:?}"
            );
            assert_eq!(item.len(), 4, "keys, t and expires_at only: {item:?}");
        }
    }
}

/// The embedded table: items item by item through `tables` and through
/// `GET /tables/{name}/items` (partition, sort-key range, limit, errors), the same
/// after a restart, and intact after a torn write at the end of its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_table_serves_items_over_http_and_survives_restarts() {
    let dir = Scratch::new("table");
    let input = dir.path().join("in.jsonl");
    let rows = readings();
    write_readings(&input, &rows);
    let m = manager(Some(dir.path()));
    // One file stream per query: a file stream starts with its first query and may
    // end before the second is attached, which would then see nothing.
    m.apply(&format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, humidity DOUBLE, ts TIMESTAMP, seq BIGINT)
           WITH (connector = 'file', path = '{0}');
         CREATE STREAM r2 (deviceId TEXT, temperature DOUBLE, seq BIGINT)
           WITH (connector = 'file', path = '{0}');
         CREATE SINK latest WITH (connector = 'table', table = 'warning_events', partition_key = 'deviceId');
         CREATE SINK history WITH (connector = 'table', table = 'warning_history',
           partition_key = 'deviceId', sort_key = 'seq');
         CREATE QUERY q1 AS INSERT INTO latest
           SELECT deviceId, temperature, humidity, ts FROM r WHERE temperature > 30;
         CREATE QUERY q2 AS INSERT INTO history
           SELECT deviceId, seq, temperature FROM r2 WHERE temperature > 30;",
        input.display()
    ))
    .unwrap();
    run_to_end(&m, "q1").await;
    run_to_end(&m, "q2").await;
    // The sinks write after the queries hand results over: wait for the last items.
    let hot = rows
        .iter()
        .filter(|r| r["temperature"].as_f64().unwrap() > 30.0)
        .count();
    let want = expected_latest(&rows).len();
    let (latest_table, history) = (
        tables::open(dir.path(), "warning_events").unwrap(),
        tables::open(dir.path(), "warning_history").unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while (latest_table.len().unwrap(), history.len().unwrap()) != (want, hot) {
        assert!(
            Instant::now() < deadline,
            "items {:?}, want {:?}; sinks: {:?}",
            (latest_table.len().unwrap(), history.len().unwrap()),
            (want, hot),
            ["latest", "history"].map(|s| m.sink_state(s).map(|s| (
                s.rows.load(std::sync::atomic::Ordering::Relaxed),
                s.status.lock().unwrap().clone(),
                s.health.as_ref().map(|h| h.to_json())
            )))
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let router = app(
        Arc::clone(&m),
        ApiOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    );
    let get = |uri: String| {
        let router = router.clone();
        async move {
            let resp = router
                .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };

    let latest = expected_latest(&rows);
    let check_latest = |items: &[Value]| {
        assert_eq!(items.len(), latest.len());
        for item in items {
            let r = latest[item["deviceId"].as_str().unwrap()];
            assert_eq!(item["temperature"], r["temperature"]);
            // A whole DOUBLE is a whole number, as the seeds' JavaScript wrote it.
            let humidity = r["humidity"].as_f64().unwrap();
            assert_eq!(item["humidity"], json!(humidity as i64), "{item}");
            assert_eq!(item["ts"], rfc3339(r["ts"].as_i64().unwrap()), "{item}");
            assert_eq!(item.as_object().unwrap().len(), 4, "{item}");
        }
    };
    let (status, all) = get("/tables/warning_events/items".into()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["partition_key"], "deviceId");
    check_latest(all["items"].as_array().unwrap());
    // Key order: dev-0, dev-1, dev-10, …
    let keys: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["deviceId"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let (status, one) = get("/tables/warning_events/items?pk=dev-7".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        one["items"],
        json!([latest["dev-7"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| ["deviceId", "temperature"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                ("humidity".to_string(), one["items"][0]["humidity"].clone()),
                ("ts".to_string(), one["items"][0]["ts"].clone())
            ])
            .collect::<serde_json::Map<_, _>>()])
    );

    // Sort-key range (inclusive) and limit, in sort-key order.
    let hot7: Vec<i64> = rows
        .iter()
        .filter(|r| r["deviceId"] == "dev-7" && r["temperature"].as_f64().unwrap() > 30.0)
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let (from, to) = (hot7[2], hot7[8]);
    let (status, range) = get(format!(
        "/tables/warning_history/items?pk=dev-7&sk_from={from}&sk_to={to}"
    ))
    .await;
    assert_eq!(status, 200, "{range}");
    let seqs: Vec<i64> = range["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, hot7[2..=8].to_vec());
    let (_, limited) = get(format!(
        "/tables/warning_history/items?pk=dev-7&sk_from={from}&limit=3"
    ))
    .await;
    let seqs: Vec<i64> = limited["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, hot7[2..5].to_vec());

    // Errors: unknown table 404, bad parameters 400, with the API's error shape.
    let (status, body) = get("/tables/nope/items".into()).await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    for bad in [
        "limit=0",
        "limit=x",
        "limit=10001",
        "colour=red",
        "pk=a&pk=b",
        "pk=%zz",
    ] {
        let (status, body) = get(format!("/tables/warning_history/items?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["kind"], "invalid");
        assert!(body.get("position").is_none());
    }
    let (status, _) = get("/tables/warning_events/items?sk_from=1".into()).await;
    assert_eq!(status, 400, "no sort key on warning_events");

    // Arrow batches of every item, one column per attribute.
    let table = tables::open(dir.path(), "warning_history").unwrap();
    let batches = table.to_record_batches().unwrap();
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, table.len().unwrap());
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for c in ["deviceId", "seq", "temperature"] {
        assert!(names.contains(&c), "{names:?}");
    }
    m.shutdown(Duration::from_secs(5)).await;

    // A restart: what is on disk, read afresh, holds the same items.
    let reread = tables::read_from_disk(dir.path(), "warning_events").unwrap();
    let items: Vec<Value> = reread
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect();
    check_latest(&items);

    // A crash in the middle of an append leaves a torn last line: it is dropped,
    // the rest stays.
    let log = dir.path().join("tables").join("warning_events.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"deviceId\": \"dev-7\", \"temperat").unwrap();
    drop(f);
    let reread = tables::read_from_disk(dir.path(), "warning_events").unwrap();
    let items: Vec<Value> = reread
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect();
    check_latest(&items);
    assert!(
        std::fs::read_to_string(&log).unwrap().ends_with('\n'),
        "the torn line is cut off"
    );
}

/// `queries/seed004_warning_events.sql` as shipped, in the real binary: readings over
/// MQTT on `sensors/<device>`, each device's latest warning in the embedded table,
/// read over HTTP, and the same after the server is killed and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed004_warning_events_end_to_end() {
    let broker = Mosquitto::start();
    let dir = scratch("seed004");
    let apps = dir.join("queries");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/seed004_warning_events.sql"),
        apps.join("seed004_warning_events.sql"),
    )
    .unwrap();
    let data = dir.join("data");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--queries",
        apps.to_str().unwrap(),
    ];
    let env = [("MQTT_URL", broker.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&dir, "seed004", &args, &env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.get_json("/streams/device_status")["source"]["connection"]["status"] != "connected"
    {
        assert!(Instant::now() < deadline, "the MQTT source never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    // The seed's devices publish on sensors/<deviceId>; some readings carry no
    // deviceId (the topic names the device).
    let rows: Vec<Value> = (0..300i64)
        .map(|i| {
            let mut r = json!({"temperature": (i * 7 % 50) as f64, "humidity": 40.0, "seq": i});
            if i % 4 != 0 {
                r["deviceId"] = json!(format!("d{}", i % 12));
            }
            r
        })
        .collect();
    let mut o = rumqttc::MqttOptions::new("seed004-pub", "127.0.0.1", broker.port());
    o.set_inflight(100);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1000);
    for (i, r) in rows.iter().enumerate() {
        client
            .publish(
                format!("sensors/d{}", i % 12),
                rumqttc::QoS::AtLeastOnce,
                false,
                r.to_string(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < rows.len() {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await
        {
            acked += 1;
        }
    }
    let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r["temperature"].as_f64().unwrap() > 30.0 {
            latest.insert(format!("d{}", i % 12), r);
        }
    }
    let check = |server: &Server| {
        let body = server.get_json("/tables/warning_events/items");
        let items = body["items"].as_array().unwrap();
        if items.len() != latest.len() {
            return Err(format!("{} items", items.len()));
        }
        for item in items {
            let r = latest[item["deviceId"].as_str().unwrap()];
            if item["temperature"].as_f64() != r["temperature"].as_f64() {
                return Err(format!("{item} is not the latest warning {r}"));
            }
            assert_eq!(item["humidity"], 40, "a whole DOUBLE without .0: {item}");
            assert!(item["ts"].as_str().unwrap().ends_with('Z'), "{item}");
        }
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = check(&server) {
        assert!(Instant::now() < deadline, "warning_events: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let one = server.get_json("/tables/warning_events/items?pk=d5");
    assert_eq!(
        one["items"][0]["temperature"].as_f64(),
        latest["d5"]["temperature"].as_f64()
    );
    drop(server);

    // Killed and started again: the table is read back from its log.
    let server = Server::start(&dir, "seed004-again", &args, &env);
    check(&server).unwrap();
}

/// A write DynamoDB refuses as invalid (here a string key for a numeric key
/// attribute) is not retried forever: the sink fails, naming the table and
/// DynamoDB's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sink_fails_on_an_invalid_item_with_the_reason() {
    let moto = Moto::start();
    let client = client(&moto).await;
    client
        .create_table()
        .table_name("numbered")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("deviceId")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("deviceId")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("CreateTable");
    let dir = Scratch::new("dynamodb-invalid");
    let input = dir.path().join("in.jsonl");
    write_readings(&input, &readings());
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE) WITH (connector = 'file', path = '{}');
         CREATE SINK bad WITH (connector = 'dynamodb', table = 'numbered', partition_key = 'deviceId', {});
         CREATE QUERY q AS INSERT INTO bad SELECT deviceId, temperature FROM r;",
        input.display(),
        moto.options()
    ))
    .unwrap();
    let status = || {
        m.sink_state("bad")
            .map(|s| s.status.lock().unwrap().clone())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status().starts_with("failed") {
        assert!(Instant::now() < deadline, "sink status: {}", status());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = status();
    assert!(
        s.contains("'numbered'") && s.contains("ValidationException"),
        "{s}"
    );
    assert!(scan(&client, "numbered").await.is_empty());
    m.shutdown(Duration::from_secs(5)).await;
}

/// BatchWriteItem through a proxy that throttles some calls as a whole
/// (ProvisionedThroughputExceeded) and returns every third item in
/// `UnprocessedItems` without passing it to moto: the table ends with every item,
/// checked one by one, and the sink's health counts the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sink_resends_unprocessed_and_throttled_writes() {
    let moto = Moto::start();
    let client = client(&moto).await;
    create_table(
        &client,
        "readings",
        "deviceId",
        Some(("seq", ScalarAttributeType::N)),
    )
    .await;
    let proxy = FaultProxy::start(
        ([127, 0, 0, 1], moto.port).into(),
        vec![
            Rule::new(
                "DynamoDB_20120810.BatchWriteItem",
                Fault::Throttle,
                6,
                |i| i % 4 == 1,
            ),
            Rule::new(
                "DynamoDB_20120810.BatchWriteItem",
                Fault::LeaveUnprocessed(3),
                200,
                |_| true,
            ),
        ],
    )
    .await;
    let dir = Scratch::new("dynamodb-faults");
    let input = dir.path().join("in.jsonl");
    let rows = readings();
    write_readings(&input, &rows);
    let m = manager(Some(dir.path()));
    m.apply(&format!(
        "CREATE STREAM r (deviceId TEXT, temperature DOUBLE, humidity DOUBLE, seq BIGINT)
           WITH (connector = 'file', path = '{}');
         CREATE SINK t WITH (connector = 'dynamodb', table = 'readings',
           partition_key = 'deviceId', sort_key = 'seq', endpoint = '{}',
           region = 'us-east-1', access_key_id = 'test', secret_access_key = 'test');
         CREATE QUERY q AS INSERT INTO t SELECT deviceId, seq, temperature, humidity FROM r;",
        input.display(),
        proxy.endpoint()
    ))
    .unwrap();
    run_to_end(&m, "q").await;
    // `write` returns when DynamoDB holds every item of the batch.
    let deadline = Instant::now() + Duration::from_secs(60);
    while m
        .sink_state("t")
        .map_or(0, |s| s.rows.load(std::sync::atomic::Ordering::Relaxed))
        < rows.len() as u64
    {
        assert!(Instant::now() < deadline, "the sink did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = m
        .sink_state("t")
        .and_then(|s| s.health.clone())
        .map(|h| h.to_json())
        .unwrap();
    m.shutdown(Duration::from_secs(5)).await;

    let items = scan(&client, "readings").await;
    assert_eq!(items.len(), rows.len(), "one item per reading");
    let by_key: HashMap<(String, i64), &HashMap<String, AttributeValue>> = items
        .iter()
        .map(|i| ((s(&i["deviceId"]).to_string(), n(&i["seq"]) as i64), i))
        .collect();
    for r in &rows {
        let key = (
            r["deviceId"].as_str().unwrap().to_string(),
            r["seq"].as_i64().unwrap(),
        );
        let item = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("item {key:?} missing"));
        assert_eq!(n(&item["temperature"]), r["temperature"].as_f64().unwrap());
        assert_eq!(n(&item["humidity"]), r["humidity"].as_f64().unwrap());
        assert_eq!(item.len(), 4, "{item:?}");
    }

    assert_eq!(proxy.budgets_left(), [0, 0], "every fault injected");
    let calls = proxy.calls_of("BatchWriteItem");
    let throttled = calls.iter().filter(|c| c.throttled).count() as u64;
    let partial = calls.iter().filter(|c| c.refused > 0).count() as u64;
    let unprocessed: usize = calls.iter().map(|c| c.refused).sum();
    assert_eq!((throttled, unprocessed), (6, 200));
    assert!(
        health["retries"].as_u64().unwrap() >= throttled + partial,
        "a retry per throttled or partly processed call: {health}"
    );
    eprintln!(
        "BatchWriteItem: {} calls, {throttled} throttled, {partial} with {unprocessed} \
         items unprocessed; health: {health}",
        calls.len()
    );
}
