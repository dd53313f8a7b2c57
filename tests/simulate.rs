//! `sluice simulate` against a real Mosquitto (one per test): what a subscriber
//! receives, message for message, from the library function and from the binary.
//!
//! Readings are checked against the shared generator: the same seed gives the same
//! readings, so each received message must equal, byte for byte, the reading the
//! generator draws at that position (with the `ts` the message carries).

use std::process::Command;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use sluice::simulate::{self, Payload, SimulateOptions, Summary};
use sluice::sources::simulator::Reading;
use tokio::sync::mpsc;

use crate::mosquitto::Mosquitto;

/// A subscriber on its own connection, collecting every publish it receives.
struct Subscriber {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes at QoS 1 (so the broker queues rather than drops for a busy
    /// subscriber) and returns once the broker has acknowledged the subscription:
    /// anything published after that is received.
    async fn start(broker: &Mosquitto, filter: &str) -> Subscriber {
        let mut opts = MqttOptions::new("test-subscriber", "127.0.0.1", broker.port());
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                    return;
                }
            }
        })
        .await
        .expect("no SubAck within 5 s");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Keeps the client alive (dropping it ends the event loop).
            let _client = client;
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
            }
        });
        Subscriber { rx, task }
    }

    /// Receives `n` messages, then listens a little longer so that extra messages
    /// (duplicates) would be caught too; fails after 30 s without them.
    async fn collect(&mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => got.push(m),
                _ => panic!("received {} of {n} messages", got.len()),
            }
        }
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await
        {
            got.push(m);
        }
        got
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options(broker: &Mosquitto) -> SimulateOptions {
    SimulateOptions {
        url: broker.url(),
        client_id: "test-simulator".into(),
        ..Default::default()
    }
}

fn readings(devices: u64, topic: &str, batch: usize, seed: u64) -> Payload {
    Payload::Readings {
        devices,
        topic: topic.into(),
        batch,
        seed,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The JSON the shared generator writes for `reading` at `ts`.
fn expected_json(reading: Reading, ts: i64) -> String {
    let mut out = Vec::new();
    reading.write_json(ts, &mut out);
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_delivers_exactly_count_readings_each_the_seeds_next() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(&broker, "#").await;
    let before = now_ms();
    let summary = simulate::run(SimulateOptions {
        payload: readings(5000, "temp_readings", 1, 9),
        count: Some(2000),
        qos: 1,
        ..options(&broker)
    })
    .await
    .unwrap();
    let after = now_ms();
    assert_eq!((summary.published, summary.acked), (2000, 2000));

    let got = sub.collect(2000).await;
    assert_eq!(got.len(), 2000, "duplicates received");
    // One publisher, one topic, QoS 1: the broker keeps the order.
    let mut rng = SmallRng::seed_from_u64(9);
    let mut distinct = std::collections::HashSet::new();
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, "temp_readings");
        let text = std::str::from_utf8(payload).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        let ts = v["ts"].as_i64().unwrap();
        assert!(
            (before..=after).contains(&ts),
            "ts {ts} not the publish time"
        );
        assert_eq!(
            text,
            expected_json(Reading::draw(&mut rng, 5000), ts),
            "message {i}"
        );
        distinct.insert(text.to_string());
    }
    // Random readings of 5,000 devices: 2,000 of them are practically never equal.
    assert!(distinct.len() > 1990, "{} distinct", distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_messages_are_json_arrays_of_readings() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(&broker, "#").await;
    let summary = simulate::run(SimulateOptions {
        payload: readings(5000, "batches", 5, 3),
        count: Some(40),
        qos: 1,
        ..options(&broker)
    })
    .await
    .unwrap();
    assert_eq!((summary.published, summary.acked), (40, 40));

    let got = sub.collect(40).await;
    assert_eq!(got.len(), 40);
    let mut rng = SmallRng::seed_from_u64(3);
    for (_, payload) in &got {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let items = v.as_array().expect("a JSON array");
        assert_eq!(items.len(), 5);
        let ts = items[0]["ts"].as_i64().unwrap();
        let expected: Vec<String> = (0..5)
            .map(|_| expected_json(Reading::draw(&mut rng, 5000), ts))
            .collect();
        assert_eq!(
            std::str::from_utf8(payload).unwrap(),
            format!("[{}]", expected.join(","))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_topics_carry_only_that_devices_readings() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(&broker, "sensors/+/data").await;
    let summary = simulate::run(SimulateOptions {
        payload: readings(20, "sensors/{deviceId}/data", 3, 5),
        count: Some(200),
        qos: 1,
        ..options(&broker)
    })
    .await
    .unwrap();
    assert_eq!((summary.published, summary.acked), (200, 200));

    let got = sub.collect(200).await;
    assert_eq!(got.len(), 200);
    let mut devices = std::collections::BTreeSet::new();
    for (topic, payload) in &got {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 3);
        let device = items[0]["deviceId"].as_u64().unwrap();
        assert!((1..=20).contains(&device));
        assert_eq!(topic, &format!("sensors/{device}/data"));
        for r in items {
            assert_eq!(r["deviceId"].as_u64(), Some(device), "{topic}: {v}");
        }
        devices.insert(device);
    }
    // 200 draws over 20 devices reach (nearly) all of them.
    assert!(devices.len() >= 15, "{devices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_the_files_events_in_a_loop_with_the_device_id() {
    let broker = Mosquitto::start();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("simulated_events.json");
    let events: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(events.len() >= 3);
    let mut sub = Subscriber::start(&broker, "#").await;
    let count = events.len() * 2 + 3;
    let summary = simulate::run(SimulateOptions {
        payload: Payload::replay_file(&file, "42", "sensors").unwrap(),
        count: Some(count as u64),
        qos: 1,
        ..options(&broker)
    })
    .await
    .unwrap();
    assert_eq!(summary.published, count as u64);
    assert_eq!(summary.acked, count as u64);

    let got = sub.collect(count).await;
    assert_eq!(got.len(), count);
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, "sensors/42");
        let mut expected = events[i % events.len()].clone();
        // The file's deviceIds are numbers, so the replacement is one too.
        expected["deviceId"] = Value::from(42);
        let v: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v, expected, "message {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_publishing_and_stop_drains_what_was_sent() {
    let broker = Mosquitto::start();
    // 1,000 messages at 2,000/s take half a second: the bucket starts with one token,
    // so they cannot go faster than 999 / 2000 s.
    let summary = simulate::run(SimulateOptions {
        rate: 2000,
        count: Some(1000),
        ..options(&broker)
    })
    .await
    .unwrap();
    assert_eq!(summary.published, 1000);
    assert!(
        (0.49..1.5).contains(&summary.seconds),
        "{summary:?}: not paced at 2000/s"
    );

    // No count: run until stopped, then wait for every acknowledgement.
    let mut sub = Subscriber::start(&broker, "#").await;
    let summary = simulate::run_until(
        SimulateOptions {
            rate: 1000,
            qos: 1,
            ..options(&broker)
        },
        tokio::time::sleep(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    assert_eq!(summary.acked, summary.published, "{summary:?}");
    assert!(
        (300..=502).contains(&summary.published),
        "{summary:?}: 0.5 s at 1000/s"
    );
    let got = sub.collect(summary.published as usize).await;
    assert_eq!(got.len() as u64, summary.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived_and_one_lost_for_good_fails_the_run() {
    let mut broker = Mosquitto::start();
    let opts = SimulateOptions {
        rate: 2000,
        count: Some(3000),
        qos: 1,
        drain_timeout: Duration::from_secs(2),
        ..options(&broker)
    };
    let run = tokio::spawn(simulate::run(opts.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.stop();
        std::thread::sleep(Duration::from_millis(500));
        broker.restart();
        broker
    })
    .await
    .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect("a restart is not a failure");
    // Messages in flight when the broker died are lost (clean session); the rest,
    // before and after the restart, are acknowledged.
    assert!(summary.acked <= summary.published, "{summary:?}");
    assert!(summary.published <= 3000, "{summary:?}");
    assert!(summary.acked >= 1500, "{summary:?}");

    let mut broker = broker;
    let run = tokio::spawn(simulate::run(SimulateOptions {
        count: None,
        reconnect_for: Duration::from_secs(1),
        ..opts
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    broker.stop();
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run gives up")
        .unwrap()
        .unwrap_err();
    assert!(!err.is_user(), "{err}");
    assert!(err.to_string().contains("lost the MQTT broker"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_the_users_and_are_refused_before_connecting() {
    // Nothing listens on this URL: options are checked first.
    let nowhere = SimulateOptions {
        url: "mqtt://127.0.0.1:1".into(),
        ..Default::default()
    };
    for (opts, says) in [
        (
            SimulateOptions {
                payload: readings(10, "a/+/b", 1, 1),
                ..nowhere.clone()
            },
            "wildcards",
        ),
        (
            SimulateOptions {
                payload: readings(10, "a/{device}", 1, 1),
                ..nowhere.clone()
            },
            "{deviceId}",
        ),
        (
            SimulateOptions {
                payload: readings(10, "t", 0, 1),
                ..nowhere.clone()
            },
            "--batch",
        ),
        (
            SimulateOptions {
                qos: 2,
                ..nowhere.clone()
            },
            "--qos",
        ),
    ] {
        let e = simulate::run(opts).await.unwrap_err();
        assert!(e.is_user(), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = simulate::run(nowhere).await.unwrap_err();
    assert!(!e.is_user());
    assert!(
        e.to_string().contains("cannot connect to the MQTT broker"),
        "{e}"
    );
}

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_publishes_and_prints_a_one_line_summary() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(&broker, "#").await;
    let url = broker.url();
    let out = tokio::task::spawn_blocking(move || {
        sluice()
            .args(["simulate", "--count", "500", "--qos", "1", "--batch", "2"])
            .args(["--topic", "bin/{deviceId}", "--quiet"])
            .env("MQTT_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["published", "acked", "seconds", "rate"]);
    let summary = Summary {
        published: v["published"].as_u64().unwrap(),
        acked: v["acked"].as_u64().unwrap(),
        seconds: v["seconds"].as_f64().unwrap(),
        rate: v["rate"].as_u64().unwrap(),
    };
    assert_eq!((summary.published, summary.acked), (500, 500));
    assert!(summary.seconds > 0.0 && summary.rate > 0, "{summary:?}");

    let got = sub.collect(500).await;
    assert_eq!(got.len(), 500);
    for (topic, payload) in &got {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(topic, &format!("bin/{}", items[1]["deviceId"]));
    }
}

#[test]
fn the_binary_exits_2_when_the_broker_is_unreachable_and_1_on_bad_options() {
    // A port that was just free and nothing listens on.
    let mut broker = Mosquitto::start();
    broker.stop();
    let out = sluice()
        .args(["simulate", "--count", "1", "--url", &broker.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the MQTT broker at mqtt://127.0.0.1:"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = sluice()
        .args(["simulate", "--count", "1", "--topic", "a/#"])
        .args(["--url", &broker.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--topic 'a/#'"), "{stderr}");
}
