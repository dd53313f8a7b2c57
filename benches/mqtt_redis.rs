//! MQTT (Mosquitto) → Sluice → Redis, end to end, beside the broker's own ceiling.
//!
//! For QoS 0 and QoS 1, in one run and against the same broker:
//! 1. **bare**: a plain rumqttc subscriber (acknowledging on receipt) counts what the
//!    broker delivers while `sluice::simulate` publishes N readings as fast as it can;
//! 2. **sluice**: the same publish into Sluice (mqtt source, QoS 1 acknowledged after
//!    processing) → a query → the Redis sink (`HSET` per device + `INCRBY` counter in
//!    one pipeline per batch), timed until Redis holds all N;
//! 3. **latency**: publishing at half the bare rate for a few seconds, each reading's
//!    `ts` (its publish time, ms) goes through Sluice to `XADD`; the stream entry's id
//!    is Redis's own clock at the write, so id − ts is publish → Redis latency.
//!
//! Mosquitto and Redis are started on free ports (own config: 1000 QoS 1 messages in
//! flight per client, unlimited queue). Run: `cargo bench --bench mqtt_redis`
//! (`-- --messages 200000` to change N). Results go to stdout as a table and JSON.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sluice::runtime::{Manager, ManagerOptions};
use sluice::simulate::{Payload, SimulateOptions};

struct Service(Child, std::path::PathBuf);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_mosquitto(port: u16) -> Service {
    let dir = std::env::temp_dir().join(format!("sluice-bench-mosquitto-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 1000\npersistence false\n"
        ),
    )
    .unwrap();
    let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    wait_port(port);
    Service(child, dir)
}

fn start_redis(port: u16) -> Service {
    let dir = std::env::temp_dir().join(format!("sluice-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    wait_port(port);
    Service(child, dir)
}

fn publisher(url: &str, id: &str, qos: u8, count: u64, rate: u64) -> SimulateOptions {
    SimulateOptions {
        url: url.into(),
        client_id: id.into(),
        payload: Payload::Readings {
            devices: 5000,
            topic: "temp_readings".into(),
            batch: 1,
            seed: 7,
        },
        rate,
        count: Some(count),
        qos,
        ..Default::default()
    }
}

/// Messages per second a bare subscriber receives: first to last message.
async fn bare(broker_port: u16, url: &str, qos: u8, n: u64) -> f64 {
    let mut o = MqttOptions::new(format!("bare-{qos}"), "127.0.0.1", broker_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 1000);
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    client.subscribe("temp_readings", q).await.unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<(Instant, Instant)>();
    let c = Arc::clone(&count);
    let sub = tokio::spawn(async move {
        let mut first = None;
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = tx.take().unwrap().send((first.unwrap(), now));
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("bare subscriber: {e}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice::simulate::run(publisher(url, &format!("pub-bare-{qos}"), qos, n, 0))
        .await
        .unwrap();
    let (first, last) = tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .expect("the bare subscriber got everything")
        .unwrap();
    sub.abort();
    let _ = client.disconnect().await;
    (n - 1) as f64 / (last - first).as_secs_f64()
}

fn app(mqtt: &str, redis: &str, qos: u8, name: &str) -> String {
    format!(
        "CREATE STREAM s_{name} (deviceId BIGINT NOT NULL, temperature DOUBLE, humidity DOUBLE, ts BIGINT)
           WITH (connector = 'mqtt', url = '{mqtt}', topics = 'temp_readings', qos = '{qos}',
                 client_id = 'sluice-bench-{name}', clean_session = 'true');
         CREATE SINK r_{name} WITH (connector = 'redis', url = '{redis}',
           commands = 'HSET dev:{{deviceId}} temperature humidity ts; INCRBY received:{name} 1');
         CREATE QUERY q_{name} AS INSERT INTO r_{name} SELECT deviceId, temperature, humidity, ts FROM s_{name};"
    )
}

async fn redis_get(redis: &redis::Client, key: &str) -> u64 {
    let mut c = redis.get_multiplexed_async_connection().await.unwrap();
    let v: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    v.unwrap_or(0)
}

/// Readings per second through Sluice into Redis: from the first record decoded to
/// the counter in Redis reaching N.
async fn through_sluice(mqtt: &str, redis_url: &str, qos: u8, n: u64) -> f64 {
    let name = format!("tp{qos}");
    let m = Manager::new(ManagerOptions::default());
    m.apply(&app(mqtt, redis_url, qos, &name)).unwrap();
    let stream = format!("s_{name}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while m
        .stream_state(&stream)
        .and_then(|s| s.health.clone())
        .map(|h| h.status())
        != Some("connected")
    {
        assert!(Instant::now() < deadline, "sluice did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = redis::Client::open(redis_url).unwrap();
    let state = m.stream_state(&stream).unwrap();
    let publishing = tokio::spawn(sluice::simulate::run(publisher(
        mqtt,
        &format!("pub-sluice-{qos}"),
        qos,
        n,
        0,
    )));
    while state.records_in.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let first = Instant::now();
    let key = format!("received:{name}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = redis_get(&redis, &key).await;
        if got >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sluice wrote {got} of {n} to Redis"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = first.elapsed();
    publishing.await.unwrap().unwrap();
    m.shutdown(Duration::from_secs(5)).await;
    n as f64 / elapsed.as_secs_f64()
}

/// Publish → Redis latency (ms) at a fixed rate: p50, p99, max, and how many.
async fn latency(
    mqtt: &str,
    redis_url: &str,
    qos: u8,
    rate: u64,
    seconds: u64,
) -> (f64, f64, f64, usize) {
    let name = format!("lat{qos}");
    let m = Manager::new(ManagerOptions::default());
    m.apply(&format!(
        "CREATE STREAM s_{name} (deviceId BIGINT NOT NULL, ts BIGINT NOT NULL)
           WITH (connector = 'mqtt', url = '{mqtt}', topics = 'temp_readings', qos = '{qos}',
                 client_id = 'sluice-bench-{name}', clean_session = 'true');
         CREATE SINK r_{name} WITH (connector = 'redis', url = '{redis_url}',
           commands = 'XADD latency:{name} ts');
         CREATE QUERY q_{name} AS INSERT INTO r_{name} SELECT deviceId, ts FROM s_{name};"
    ))
    .unwrap();
    let stream = format!("s_{name}");
    while m
        .stream_state(&stream)
        .and_then(|s| s.health.clone())
        .map(|h| h.status())
        != Some("connected")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = rate * seconds;
    sluice::simulate::run(publisher(mqtt, &format!("pub-lat-{qos}"), qos, n, rate))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.shutdown(Duration::from_secs(5)).await;
    let redis = redis::Client::open(redis_url).unwrap();
    let mut c = redis.get_multiplexed_async_connection().await.unwrap();
    // Read back in pages: one XRANGE of hundreds of thousands of entries outlasts the
    // client's response timeout.
    let mut lat: Vec<f64> = Vec::new();
    let mut from = "-".to_string();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("latency:{name}"))
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        let Some((last, _)) = page.last() else {
            break;
        };
        from = format!("({last}");
        lat.extend(page.iter().filter_map(|(id, fields)| {
            let written: i64 = id.split('-').next()?.parse().ok()?;
            let ts: i64 = fields.iter().find(|(k, _)| k == "ts")?.1.parse().ok()?;
            Some((written - ts) as f64)
        }));
    }
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.99), *lat.last().unwrap(), lat.len())
}

fn main() {
    let mut n: u64 = 200_000;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--messages") {
        n = args[i + 1].parse().expect("--messages N");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mqtt_port, redis_port) = (free_port(), free_port());
    let _broker = start_mosquitto(mqtt_port);
    let _redis = start_redis(redis_port);
    let mqtt = format!("mqtt://127.0.0.1:{mqtt_port}");
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut report = Vec::new();
    runtime.block_on(async {
        for qos in [0u8, 1] {
            let bare_rate = bare(mqtt_port, &mqtt, qos, n).await;
            let sluice_rate = through_sluice(&mqtt, &redis_url, qos, n).await;
            eprintln!("qos {qos}: bare {bare_rate:.0} msg/s, sluice → redis {sluice_rate:.0} msg/s");
            let half = (bare_rate / 2.0) as u64;
            let (p50, p99, max, samples) = latency(&mqtt, &redis_url, qos, half, 10).await;
            println!(
                "qos {qos}: bare subscriber {bare_rate:>9.0} msg/s | sluice → redis {sluice_rate:>9.0} msg/s ({:.0}%) | \
                 at {half} msg/s: p50 {p50} ms, p99 {p99} ms, max {max} ms ({samples} samples)",
                100.0 * sluice_rate / bare_rate
            );
            report.push(serde_json::json!({
                "qos": qos, "messages": n,
                "bare_msgs_per_s": bare_rate.round(), "sluice_msgs_per_s": sluice_rate.round(),
                "ratio": (sluice_rate / bare_rate * 1000.0).round() / 1000.0,
                "latency_rate": half, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "samples": samples,
            }));
        }
    });
    println!("{}", serde_json::to_string(&report).unwrap());
}
