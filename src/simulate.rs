//! `sluice simulate`: simulated devices that publish to a real MQTT broker (a front
//! door beside `run` and `serve`, upstream of everything else: it feeds the broker the
//! MQTT source reads). Benchmarks and tests call [`run`] in-process as a load generator.
//!
//! Two modes, one per seed:
//!
//! - **Readings** (seed 003, temp-sensor.js): the thermostat readings of the `simulator`
//!   source ([`Reading`]: the same readings for a seed), each stamped with `ts`, the
//!   publish time in epoch ms, so latency can be measured downstream. One reading per
//!   message, or `batch` of them as a JSON array. The topic is a template
//!   (`temp_readings`, `sensors/{deviceId}/data`).
//! - **Replay** (seed 004): the events of a JSON file, each with its `deviceId`
//!   replaced by the given one, published in a loop to `<prefix>/<deviceId>`.
//!
//! ```text
//!  publisher task ──publish──> rumqttc request channel ──> driver task: EventLoop::poll
//!  (pacer, generator)          (bounded: backpressure)       writes publishes, reads PubAcks,
//!                                                            counts both, reconnects
//! ```
//!
//! rumqttc's `AsyncClient::publish` only queues; nothing is sent until the event loop is
//! polled, so a separate task polls it for the whole run. "Published" counts what the
//! event loop wrote to the socket; "acked" counts PubAcks (QoS 1). At the end the run
//! waits (bounded) until every queued message is written and, at QoS 1, acknowledged,
//! then disconnects cleanly.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::sources::simulator::Reading;

/// Everything `sluice simulate` takes; [`Default`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Broker, `mqtt://host[:port]` (`tcp://` too; default `mqtt://127.0.0.1:1883`).
    pub url: String,
    /// Credentials, when the broker wants them (default none).
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT client id (default `sluice-sim-<pid>`). Two clients with one id knock each
    /// other off the broker, so parallel simulators need different ids.
    pub client_id: String,
    /// What to publish, and where.
    pub payload: Payload,
    /// Messages per second, all devices together; 0 = as fast as the broker takes them
    /// (default 0).
    pub rate: u64,
    /// Stop after this many messages (default: until the stop future completes).
    pub count: Option<u64>,
    /// 0 (at most once) or 1 (at least once, counted as acknowledged on PubAck)
    /// (default 0).
    pub qos: u8,
    /// Most QoS 1 messages sent but not yet acknowledged (default 1000). Wider windows
    /// hide the round trip; rumqttc stops taking publishes while the window is full.
    pub inflight: u16,
    /// How long the end of a run waits for unsent and unacknowledged messages
    /// (default 10 s).
    pub drain_timeout: Duration,
    /// How long a lost broker may stay unreachable before the run fails (default 30 s).
    pub reconnect_for: Duration,
    /// A progress line on stderr every second (default false; the CLI turns it on).
    pub progress: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            client_id: format!("sluice-sim-{}", std::process::id()),
            payload: Payload::default(),
            rate: 0,
            count: None,
            qos: 0,
            inflight: 1000,
            drain_timeout: Duration::from_secs(10),
            reconnect_for: Duration::from_secs(30),
            progress: false,
        }
    }
}

/// What each message carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Seed-003 thermostat readings.
    Readings {
        /// Distinct deviceIds, 1..=devices (default 5000).
        devices: u64,
        /// Topic template; `{deviceId}` is replaced by the message's device (default
        /// `temp_readings`). With `{deviceId}` in the topic, all readings of a message
        /// are that device's; without it each reading draws its own device, like a
        /// gateway forwarding many thermostats.
        topic: String,
        /// Readings per message: 1 = a JSON object, more = a JSON array (default 1).
        batch: usize,
        /// Random seed: the same seed gives the same readings (default 42).
        seed: u64,
    },
    /// Seed-004 replay of a file's events, in a loop.
    Replay {
        /// The events, JSON objects, in file order.
        events: Vec<Map<String, Value>>,
        /// Replaces every event's `deviceId`, and names the topic.
        device_id: String,
        /// Topic is `<topic_prefix>/<device_id>` (default `sensors`).
        topic_prefix: String,
    },
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Readings {
            devices: 5000,
            topic: "temp_readings".into(),
            batch: 1,
            seed: 42,
        }
    }
}

impl Payload {
    /// Replay mode over a file holding a JSON array of event objects.
    pub fn replay_file(path: &Path, device_id: &str, topic_prefix: &str) -> Result<Payload> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::external(format!("cannot read {}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            Error::user(format!(
                "{}: not JSON ({e}); --replay wants a JSON array of events",
                path.display()
            ))
        })?;
        let Value::Array(items) = value else {
            return Err(Error::user(format!(
                "{}: --replay wants a JSON array of events, the file holds a single value",
                path.display()
            )));
        };
        let events = items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                _ => Err(Error::user(format!(
                    "{}: event {} is not a JSON object",
                    path.display(),
                    i + 1
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Payload::Replay {
            events,
            device_id: device_id.into(),
            topic_prefix: topic_prefix.into(),
        })
    }
}

/// What a run did: printed by the CLI as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Messages written to the broker connection.
    pub published: u64,
    /// Messages the broker acknowledged (QoS 1); equal to `published` at QoS 0, which
    /// has no acknowledgements.
    pub acked: u64,
    /// From the connection's acceptance to the last acknowledgement, ms precision.
    pub seconds: f64,
    /// `published / seconds`, rounded.
    pub rate: u64,
}

/// Runs until `count` messages are published and acknowledged.
pub async fn run(options: SimulateOptions) -> Result<Summary> {
    run_until(options, std::future::pending()).await
}

/// Runs until `count` is reached or `stop` completes (the CLI passes Ctrl-C/SIGTERM),
/// then drains and disconnects. Errors: bad options are the user's; an unreachable
/// broker, or one lost for longer than `reconnect_for`, is external.
pub async fn run_until(
    options: SimulateOptions,
    stop: impl Future<Output = ()>,
) -> Result<Summary> {
    let mut messages = Messages::new(&options.payload)?;
    let qos = match options.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => return Err(Error::user(format!("--qos must be 0 or 1, got {q}"))),
    };
    if options.count == Some(0) {
        return Err(Error::user("--count must be at least 1"));
    }
    if options.inflight == 0 {
        return Err(Error::user("--inflight must be at least 1"));
    }
    let (host, port) = parse_url(&options.url)?;
    let mut mqtt = MqttOptions::new(options.client_id.clone(), host, port);
    if let Some(user) = &options.username {
        mqtt.set_credentials(user.clone(), options.password.clone().unwrap_or_default());
    }
    // Incoming packets are only acknowledgements; outgoing ones may be big batches, up
    // to MQTT's limit (rumqttc's default is 10 KiB).
    mqtt.set_max_packet_size(10 * 1024, 268_435_455);
    mqtt.set_inflight(options.inflight);
    // Queued publishes beyond the in-flight window: enough that the publisher rarely
    // waits on the driver task, few enough to bound memory (a message is ~150 bytes
    // unbatched). A full queue makes the publisher wait: that is the backpressure.
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);

    connect(&mut eventloop, &options).await?;
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut driver = Some(tokio::spawn(drive(
        eventloop,
        Arc::clone(&counters),
        options.reconnect_for,
        options.url.clone(),
    )));
    let progress = options
        .progress
        .then(|| tokio::spawn(report_progress(Arc::clone(&counters), started)));

    let publishing = publish(&client, &mut messages, &options, qos, &counters);
    tokio::pin!(publishing);
    tokio::pin!(stop);
    let outcome = tokio::select! {
        biased;
        // A broker lost for good ends the run with the driver's error, whatever the
        // publisher is doing (it may be waiting on a full queue that never drains).
        joined = driver.as_mut().expect("spawned above") => {
            driver = None;
            Err(joined_error(joined))
        }
        // Ctrl-C: stop publishing; what was queued still drains below.
        () = &mut stop => Ok(()),
        done = &mut publishing => done,
    };
    if let Some(p) = &progress {
        p.abort();
    }
    if let Err(e) = outcome {
        // A publish fails when the driver has ended and dropped the event loop: the
        // driver's error is the cause worth reporting.
        if let Some(d) = driver {
            let abort = d.abort_handle();
            return match tokio::time::timeout(Duration::from_secs(1), d).await {
                Ok(joined @ (Ok(Err(_)) | Err(_))) => Err(joined_error(joined)),
                Ok(Ok(Ok(()))) => Err(e),
                Err(_) => {
                    abort.abort();
                    Err(e)
                }
            };
        }
        return Err(e);
    }

    let acked = drain(&counters, &options, &mut driver).await?;
    let seconds = started.elapsed().as_secs_f64();
    let published = counters.written.load(Ordering::Relaxed);
    // Disconnect cleanly (the broker drops no will, logs no error); bounded, because a
    // broker that stopped reading must not hold the exit up.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
    if let Some(d) = driver {
        let abort = d.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), d)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    Ok(Summary {
        published,
        acked: if qos == QoS::AtMostOnce {
            published
        } else {
            acked
        },
        seconds: (seconds * 1000.0).round() / 1000.0,
        rate: if seconds > 0.0 {
            (published as f64 / seconds).round() as u64
        } else {
            0
        },
    })
}

/// Shared between the publisher and the driver task; plain counters, read at the end
/// and by the progress line.
#[derive(Debug, Default)]
struct Counters {
    /// Handed to the request channel by the publisher.
    queued: AtomicU64,
    /// Written to the connection by the event loop.
    written: AtomicU64,
    /// PubAcks received.
    acked: AtomicU64,
}

/// `mqtt://host[:port]` or `tcp://…` → (host, port). IPv6 hosts keep their brackets,
/// which is how rumqttc's address lookup wants them.
pub fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::user(format!(
            "--url '{url}': {why}; expected mqtt://host:port (for example mqtt://127.0.0.1:1883)"
        ))
    };
    // The MQTT connectors' parser, with simulate's own limits on top.
    let parsed = crate::sources::mqtt::parse_url(url).map_err(Error::user)?;
    if parsed.tls {
        return Err(bad("TLS is not supported by simulate yet"));
    }
    if parsed.username.is_some() {
        return Err(bad(
            "only host and port are allowed (credentials go in --username/--password)",
        ));
    }
    Ok((parsed.host, parsed.port))
}

/// Polls the event loop until the broker accepts the connection. Failing here is the
/// "broker unreachable" case: no retries, the user is told at once.
async fn connect(eventloop: &mut EventLoop, options: &SimulateOptions) -> Result<()> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                return Err(refused(&options.url, code));
            }
            Err(e) => {
                return Err(Error::external(format!(
                    "cannot connect to the MQTT broker at {}: {e} (is it running, and is --url right?)",
                    options.url
                )));
            }
        }
    }
}

/// A refusal over credentials or the client id is the user's to fix; the others are
/// the broker's state.
fn refused(url: &str, code: ConnectReturnCode) -> Error {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Error::user(format!(
                "the MQTT broker at {url} refused the connection ({code:?}): check --username and --password"
            ))
        }
        ConnectReturnCode::BadClientId => Error::user(format!(
            "the MQTT broker at {url} refused the client id: choose another --client-id"
        )),
        _ => Error::external(format!(
            "the MQTT broker at {url} refused the connection ({code:?})"
        )),
    }
}

/// The driver task: polls the event loop for the whole run, counting what it writes
/// and what the broker acknowledges. A lost connection is retried with backoff
/// (rumqttc reconnects on the next poll); after `reconnect_for` of failures the run
/// fails. Ends with `Ok` once the disconnect is written.
async fn drive(
    mut eventloop: EventLoop,
    counters: Arc<Counters>,
    reconnect_for: Duration,
    url: String,
) -> Result<()> {
    let mut down_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if down_since.take().is_some() {
                    // Clean session: messages in flight when the connection dropped
                    // are gone, and show as published but not acked.
                    tracing::warn!(%url, "reconnected to the MQTT broker");
                }
                backoff = Duration::from_millis(50);
            }
            Ok(_) => {}
            // The client was dropped: the run is over.
            Err(ConnectionError::RequestsDone) => return Ok(()),
            Err(ConnectionError::ConnectionRefused(code)) => return Err(refused(&url, code)),
            Err(e) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= reconnect_for {
                    return Err(Error::external(format!(
                        "lost the MQTT broker at {url} for over {} s: {e}",
                        reconnect_for.as_secs()
                    )));
                }
                tracing::warn!(%url, error = %e, retry_in = ?backoff, "MQTT broker connection failed");
                // Without a pause, poll would redial at once, in a tight loop.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn joined_error(joined: std::result::Result<Result<()>, tokio::task::JoinError>) -> Error {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => Error::internal("the MQTT event loop stopped while publishing"),
        Err(e) => Error::internal(format!("the MQTT event loop task failed: {e}")),
    }
}

/// Publishes until `count` (or for ever: the caller's `select!` stops it), paced by
/// the rate limiter. Each message is queued with `publish().await`, which waits while
/// the request channel is full.
async fn publish(
    client: &AsyncClient,
    messages: &mut Messages,
    options: &SimulateOptions,
    qos: QoS,
    counters: &Counters,
) -> Result<()> {
    let mut pacer = (options.rate > 0).then(|| Pacer::new(options.rate, Instant::now()));
    let mut remaining = options.count.unwrap_or(u64::MAX);
    while remaining > 0 {
        // Unpaced, hand out work in chunks between checks; paced, as many messages as
        // the bucket holds now, or sleep until the next token.
        let grant = match &mut pacer {
            None => remaining.min(1024),
            Some(p) => match p.take(Instant::now(), remaining.min(u32::MAX as u64)) {
                0 => {
                    tokio::time::sleep_until(p.next_token().into()).await;
                    continue;
                }
                n => n,
            },
        };
        for _ in 0..grant {
            let (topic, payload) = messages.next();
            client
                .publish(topic, qos, false, payload)
                .await
                .map_err(|e| Error::external(format!("the MQTT client stopped: {e}")))?;
            counters.queued.fetch_add(1, Ordering::Relaxed);
        }
        remaining -= grant;
    }
    Ok(())
}

/// Waits (bounded by `drain_timeout`) until everything queued is written and, at
/// QoS 1, acknowledged. Returns the acknowledgements counted.
async fn drain(
    counters: &Counters,
    options: &SimulateOptions,
    driver: &mut Option<tokio::task::JoinHandle<Result<()>>>,
) -> Result<u64> {
    let deadline = Instant::now() + options.drain_timeout;
    loop {
        let queued = counters.queued.load(Ordering::Relaxed);
        let written = counters.written.load(Ordering::Relaxed);
        let acked = counters.acked.load(Ordering::Relaxed);
        if written >= queued && (options.qos == 0 || acked >= written) {
            return Ok(acked);
        }
        if driver.as_ref().is_some_and(|d| d.is_finished()) {
            let d = driver.take().expect("checked");
            return Err(joined_error(d.await));
        }
        if Instant::now() >= deadline {
            // Messages lost with a dropped connection never complete; the summary
            // says how many were acknowledged.
            tracing::warn!(
                queued,
                written,
                acked,
                "gave up waiting for the broker after {} s",
                options.drain_timeout.as_secs()
            );
            return Ok(acked);
        }
        // Only at the end of a run, and bounded: a short poll is simpler than waking
        // this task from the driver's hot loop.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One line a second on stderr while running.
async fn report_progress(counters: Arc<Counters>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let written = counters.written.load(Ordering::Relaxed);
        let acked = counters.acked.load(Ordering::Relaxed);
        eprintln!(
            "simulate: {:.0} s, published {written} ({} msg/s), acked {acked}",
            started.elapsed().as_secs_f64(),
            written - last
        );
        last = written;
    }
}

/// Token bucket: `rate` tokens a second, at most `capacity` saved up. Computing tokens
/// from elapsed time (not sleeping a fixed interval per message) keeps the long-run
/// rate exact however late the timer wakes; the capacity bounds the catch-up burst
/// after a stall to a tenth of a second's worth.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// Starts with one token, so the first message goes at once and no more than one
    /// runs ahead of the schedule.
    pub fn new(rate: u64, now: Instant) -> Pacer {
        Pacer {
            rate: rate as f64,
            capacity: (rate as f64 / 10.0).max(1.0),
            tokens: 1.0,
            last: now,
        }
    }

    /// Takes up to `want` whole tokens available at `now`.
    pub fn take(&mut self, now: Instant, want: u64) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        let n = (self.tokens.floor() as u64).min(want);
        self.tokens -= n as f64;
        n
    }

    /// When the next whole token will be there.
    pub fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// Generates the messages of a run: (topic, payload).
enum Messages {
    Readings {
        rng: SmallRng,
        devices: u64,
        topic: Topic,
        batch: usize,
    },
    Replay {
        /// Each event serialized once, with the deviceId already replaced.
        payloads: Vec<Vec<u8>>,
        topic: String,
        next: usize,
    },
}

impl Messages {
    fn new(payload: &Payload) -> Result<Messages> {
        match payload {
            Payload::Readings {
                devices,
                topic,
                batch,
                seed,
            } => {
                if *devices == 0 {
                    return Err(Error::user("--devices must be at least 1"));
                }
                if *batch == 0 {
                    return Err(Error::user("--batch must be at least 1"));
                }
                Ok(Messages::Readings {
                    rng: SmallRng::seed_from_u64(*seed),
                    devices: *devices,
                    topic: Topic::parse(topic)?,
                    batch: *batch,
                })
            }
            Payload::Replay {
                events,
                device_id,
                topic_prefix,
            } => {
                if events.is_empty() {
                    return Err(Error::user("the --replay file has no events"));
                }
                if device_id.is_empty() || device_id.contains(['+', '#', '/']) {
                    return Err(Error::user(format!(
                        "--device-id '{device_id}' must be non-empty, without '/', '+' or '#' (it is a topic level)"
                    )));
                }
                let topic = format!("{topic_prefix}/{device_id}");
                if topic_prefix.contains(['+', '#']) {
                    return Err(Error::user(format!(
                        "--topic-prefix '{topic_prefix}': wildcards (+, #) cannot be published to"
                    )));
                }
                let payloads = events
                    .iter()
                    .map(|e| {
                        let mut e = e.clone();
                        let id = device_id_value(e.get("deviceId"), device_id);
                        e.insert("deviceId".into(), id);
                        serde_json::to_vec(&e).expect("a JSON map serializes")
                    })
                    .collect();
                Ok(Messages::Replay {
                    payloads,
                    topic,
                    next: 0,
                })
            }
        }
    }

    fn next(&mut self) -> (String, Vec<u8>) {
        match self {
            Messages::Readings {
                rng,
                devices,
                topic,
                batch,
            } => {
                let ts = now_ms();
                let mut out = Vec::with_capacity(*batch * 100 + 2);
                let first = Reading::draw(rng, *devices);
                // A per-device topic names one device, so its messages carry only
                // that device's readings.
                let device = topic.has_device.then_some(first.device);
                if *batch > 1 {
                    out.push(b'[');
                }
                first.write_json(ts, &mut out);
                for _ in 1..*batch {
                    out.push(b',');
                    let reading = match device {
                        Some(d) => Reading::draw_for(rng, d),
                        None => Reading::draw(rng, *devices),
                    };
                    reading.write_json(ts, &mut out);
                }
                if *batch > 1 {
                    out.push(b']');
                }
                (topic.render(device), out)
            }
            Messages::Replay {
                payloads,
                topic,
                next,
            } => {
                let payload = payloads[*next].clone();
                *next = (*next + 1) % payloads.len();
                (topic.clone(), payload)
            }
        }
    }
}

/// The replacement deviceId keeps the file's type when it can: a number where the
/// file has numbers (so an `INT` column still decodes), a string otherwise (as
/// seed 004's device, which takes its id from the command line, does).
fn device_id_value(original: Option<&Value>, id: &str) -> Value {
    match (original, id.parse::<i64>()) {
        (Some(Value::Number(_)), Ok(n)) => Value::from(n),
        _ => Value::from(id),
    }
}

/// A topic template: literal text with `{deviceId}` placeholders.
#[derive(Debug, Clone)]
struct Topic {
    parts: Vec<String>,
    has_device: bool,
}

impl Topic {
    fn parse(template: &str) -> Result<Topic> {
        let bad = |why: &str| Error::user(format!("--topic '{template}': {why}"));
        if template.is_empty() {
            return Err(bad("empty"));
        }
        if template.contains(['+', '#']) {
            return Err(bad("wildcards (+, #) cannot be published to"));
        }
        let parts: Vec<String> = template.split("{deviceId}").map(String::from).collect();
        if parts.iter().any(|p| p.contains(['{', '}'])) {
            return Err(bad("the only placeholder is {deviceId}"));
        }
        Ok(Topic {
            has_device: parts.len() > 1,
            parts,
        })
    }

    fn render(&self, device: Option<u64>) -> String {
        match device {
            None => self.parts.concat(),
            Some(d) => self.parts.join(&d.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_the_rate_however_late_it_is_asked() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        let mut granted = 0;
        // Uneven wake-ups (0.3 ms to 7 ms) over 10 s of fake time.
        let mut t = t0;
        let mut step = 300u64;
        while t < t0 + Duration::from_secs(10) {
            t += Duration::from_micros(step);
            step = (step * 7 + 1300) % 7000 + 300;
            granted += p.take(t, u64::MAX);
        }
        let elapsed = (t - t0).as_secs_f64();
        let expected = 1.0 + elapsed * 1000.0;
        assert!(
            (granted as f64 - expected).abs() <= 1.0,
            "granted {granted}, expected {expected}"
        );
    }

    #[test]
    fn pacer_bursts_at_most_a_tenth_of_a_second_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(5000, t0);
        assert_eq!(p.take(t0, u64::MAX), 1);
        assert_eq!(p.take(t0, u64::MAX), 0);
        assert_eq!(p.take(t0 + Duration::from_secs(5), u64::MAX), 500);
        // Then the steady rate again: 1 ms = 5 tokens.
        assert_eq!(p.take(t0 + Duration::from_millis(5001), u64::MAX), 5);
        assert_eq!(p.take(t0 + Duration::from_millis(5001), 3), 0);
        // A slow rate never bursts.
        let mut slow = Pacer::new(2, t0);
        assert_eq!(slow.take(t0 + Duration::from_secs(60), u64::MAX), 1);
        let next = slow.next_token();
        assert_eq!(
            next,
            t0 + Duration::from_secs(60) + Duration::from_millis(500)
        );
        assert_eq!(slow.take(next, u64::MAX), 1);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(parse_url("tcp://broker/").unwrap(), ("broker".into(), 1883));
        assert_eq!(
            parse_url("mqtt://[::1]:2000").unwrap(),
            ("[::1]".into(), 2000)
        );
        for bad in [
            "127.0.0.1:1883",
            "mqtts://h:8883",
            "mqtt://u:p@h:1",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://:1883",
            "mqtt://h/topic",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.is_user(), "{bad}: {e}");
        }
    }

    #[test]
    fn topic_templates() {
        let t = Topic::parse("sensors/{deviceId}/data").unwrap();
        assert_eq!(t.render(Some(17)), "sensors/17/data");
        let t = Topic::parse("temp_readings").unwrap();
        assert!(!t.has_device);
        assert_eq!(t.render(None), "temp_readings");
        for bad in ["", "a/+/b", "a/#", "a/{device}", "{deviceId"] {
            assert!(Topic::parse(bad).unwrap_err().is_user(), "{bad}");
        }
    }

    #[test]
    fn replayed_device_ids_keep_the_files_type() {
        assert_eq!(
            device_id_value(Some(&Value::from(3)), "42"),
            Value::from(42)
        );
        assert_eq!(
            device_id_value(Some(&Value::from("x")), "42"),
            Value::from("42")
        );
        assert_eq!(
            device_id_value(Some(&Value::from(3)), "dev-1"),
            Value::from("dev-1")
        );
        assert_eq!(device_id_value(None, "7"), Value::from("7"));
    }
}
