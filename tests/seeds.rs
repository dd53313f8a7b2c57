//! The canned applications of `queries/` end to end, as shipped: the real binary
//! (`sluice serve --queries`) with MQTT_URL and REDIS_URL pointing at this test's own
//! Mosquitto and redis-server, readings published over MQTT with QoS 1, and Redis
//! checked key by key against what the seed articles' Lambdas would have written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::mosquitto::Mosquitto;
use crate::service::{Server, scratch};
use crate::services::RedisServer;
use crate::support::sluice_query;

fn copy_app(dir: &Path, files: &[&str]) -> std::path::PathBuf {
    let apps = dir.join("queries");
    std::fs::create_dir_all(&apps).unwrap();
    for f in files {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("queries")
            .join(f);
        std::fs::copy(&from, apps.join(f)).unwrap();
    }
    apps
}

fn wait_connected(server: &Server, streams: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for s in streams {
        loop {
            let v = server.get_json(&format!("/streams/{s}"));
            if v["source"]["connection"]["status"] == "connected" {
                break;
            }
            assert!(Instant::now() < deadline, "stream {s} never connected: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The subscription follows the connection by a round trip.
    std::thread::sleep(Duration::from_millis(300));
}

/// Publishes payloads on a topic with QoS 1 and waits for every acknowledgement.
async fn publish_all(broker: &Mosquitto, topic: &str, payloads: &[String]) {
    let mut o = MqttOptions::new("seed-publisher", "127.0.0.1", broker.port());
    o.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(o, payloads.len() + 10);
    for p in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, p.clone().into_bytes())
            .await
            .unwrap();
    }
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked < payloads.len() {
        assert!(
            Instant::now() < deadline,
            "{acked} of {} acknowledged",
            payloads.len()
        );
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await
        {
            acked += 1;
        }
    }
}

fn climate(t: f64) -> &'static str {
    if t > 85.0 {
        "hot"
    } else if t > 75.0 {
        "warm"
    } else if t > 65.0 {
        "cool"
    } else {
        "cold"
    }
}

fn rfc3339(ms: i64) -> String {
    // RFC 3339 to the second, UTC (the sink adds fractions only when there are any).
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A canned application running in the real binary against this test's own broker
/// and Redis, its stream connected.
struct Seed {
    broker: Mosquitto,
    redis: RedisServer,
    server: Server,
    /// The server's data directory.
    data: std::path::PathBuf,
}

impl Seed {
    fn start(name: &str, apps: &[&str], stream: &str) -> Seed {
        let broker = Mosquitto::start();
        let redis = RedisServer::start();
        let dir = scratch(name);
        let apps = copy_app(&dir, apps);
        let data = dir.join("data");
        let server = Server::start(
            &dir,
            name,
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--queries",
                apps.to_str().unwrap(),
            ],
            &[("MQTT_URL", &broker.url()), ("REDIS_URL", &redis.url())],
        );
        wait_connected(&server, &[stream]);
        Seed {
            broker,
            redis,
            server,
            data,
        }
    }
}

/// Seed 003: climate counters, the SensorData sorted set, one hash per device, and
/// a Warnings message per hot reading, checked key by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed003_climate_data_model_key_by_key() {
    let Seed {
        broker,
        redis,
        server,
        ..
    } = Seed::start("seed003", &["seed003_climate.sql"], "temp_readings");

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("Warnings").await.unwrap();

    // 600 readings from 40 devices; temperatures sweep 1..=110 so every climate
    // occurs; every third reading has no ts (the article's readings have none).
    let base = 1_790_000_000_000i64;
    let mut readings = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..600i64 {
        let device = i % 40 + 1;
        let t = (i * 7 % 110 + 1) as f64;
        let mut r = json!({"deviceId": device, "temperature": t, "humidity": (i % 100) as f64,
                           "deviceIP": format!("10.0.{}.{}", device, i % 250)});
        if i % 3 != 0 {
            r["ts"] = json!(base + i * 1000);
        }
        payloads.push(r.to_string());
        readings.push(r);
    }
    publish_all(&broker, "temp_readings", &payloads).await;

    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &readings {
        *expected
            .entry(climate(r["temperature"].as_f64().unwrap()))
            .or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&[
                "climate:hot",
                "climate:warm",
                "climate:cool",
                "climate:cold",
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
        let total: i64 = counts.iter().flatten().sum();
        if total >= 600 {
            assert_eq!(
                counts,
                ["hot", "warm", "cool", "cold"]
                    .map(|c| expected.get(c).copied())
                    .to_vec()
            );
            break;
        }
        assert!(Instant::now() < deadline, "climate counters at {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Per device, the last reading wins: its hash, and its score in SensorData.
    let mut last: BTreeMap<i64, &Value> = BTreeMap::new();
    for r in &readings {
        last.insert(r["deviceId"].as_i64().unwrap(), r);
    }
    let members: i64 = redis::cmd("ZCARD")
        .arg("SensorData")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, 40);
    for (device, r) in &last {
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(device.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        let t = r["temperature"].as_f64().unwrap();
        assert_eq!(
            hash["temperature"].parse::<f64>().unwrap(),
            t,
            "device {device}: {hash:?}"
        );
        assert_eq!(
            hash["humidity"].parse::<f64>().unwrap(),
            r["humidity"].as_f64().unwrap()
        );
        assert_eq!(hash["deviceIP"], r["deviceIP"].as_str().unwrap());
        assert_eq!(hash["climate"], climate(t));
        let score: f64 = redis::cmd("ZSCORE")
            .arg("SensorData")
            .arg(device.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        match r["ts"].as_i64() {
            Some(ts) => {
                assert_eq!(score as i64, ts, "device {device}");
                assert!(hash["timestamp"].starts_with(&rfc3339(ts)), "{hash:?}");
            }
            // No ts: the arrival time, which is recent.
            None => assert!((score as i64) > base, "device {device}: {score}"),
        }
    }

    // One Warnings message per hot reading, carrying the reading.
    let hot = expected["hot"] as usize;
    let mut messages = pubsub.on_message();
    let mut warnings = Vec::new();
    while warnings.len() < hot {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .expect("a Warnings message")
        .unwrap();
        let v: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
        warnings.push(v);
    }
    assert!(
        warnings
            .iter()
            .all(|w| w["temperature"].as_f64().unwrap() > 85.0)
    );
    let status = server.get_json("/queries/climate");
    assert_eq!(status["status"], "running", "{status}");
}

/// Seed 000: the message count (exact, once per window), the latest message, and a
/// `sensors` notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed000_count_latest_and_notification() {
    let Seed {
        broker,
        redis,
        mut server,
        data,
    } = Seed::start(
        "seed000",
        &["seed000_sensor_count.sql", "seed000_sensor_raw_archive.sql"],
        "sensor_messages",
    );
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("sensors").await.unwrap();

    let payloads: Vec<String> = (0..250)
        .map(|i| json!({"deviceId": format!("s{}", i % 5), "temperature": i as f64}).to_string())
        .collect();
    publish_all(&broker, "topic/sensors", &payloads).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: Option<i64> = redis::cmd("GET")
            .arg("sensorCount")
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == Some(250) {
            break;
        }
        assert!(Instant::now() < deadline, "sensorCount at {n:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latest: String = redis::cmd("GET")
        .arg("sensorLatest")
        .query_async(&mut conn)
        .await
        .unwrap();
    let latest: Value = serde_json::from_str(&latest).unwrap();
    assert_eq!(latest, json!({"deviceId": "s4", "temperature": 249}));
    let mut messages = pubsub.on_message();
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut messages),
    )
    .await
    .expect("a sensors notification")
    .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "updated");
    // Quiet for two more seconds: the count stays exact.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n: i64 = redis::cmd("GET")
        .arg("sensorCount")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 250);

    // The Firehose half: stopping writes the archive's buffer (60 s interval), and
    // every message is in it, queryable with `sluice query` on the data directory.
    let (status, _) = server.terminate();
    assert!(status.success(), "{}", server.stderr_text());
    let rows = sluice_query(
        &data,
        "SELECT count(*) AS n, count(DISTINCT \"deviceId\") AS devices, \
         sum(temperature) AS t, count(received_at) AS stamped FROM sensor_archive",
    )
    .unwrap();
    assert_eq!(
        rows,
        json!([{"n": 250, "devices": 5, "t": (0..250).sum::<i64>(), "stamped": 250}])
    );
}
