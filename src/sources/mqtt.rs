//! `mqtt` source: messages from an MQTT broker (first stage of the data flow; the IoT
//! Core rule's `FROM 'topic/…'` of the seeds, self-hosted).
//!
//! ```sql
//! CREATE STREAM readings (
//!   deviceId INT, temperature DOUBLE, ts TIMESTAMP,
//!   topic TEXT METADATA,                -- the message's topic; also qos, retain
//!   WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
//! ) WITH (
//!   connector = 'mqtt', url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
//!   topics = 'sensors/+/data, temp_readings', qos = '1', client_id = 'sluice-readings'
//! );
//! ```
//!
//! Delivery: with QoS 1 and a `client_id`, the session is persistent (clean session
//! off) and acknowledgements are manual: a message is acknowledged only after the
//! stream's queries have processed it, so the broker keeps (and after a restart
//! redelivers) every message Sluice had not finished. A message is one JSON object,
//! an array of them or NDJSON; messages are gathered into chunks of up to
//! [`MAX_LINES`] records while more are waiting, so a busy topic decodes in batches
//! and a quiet one adds no delay. The event loop runs in its own task, reconnecting
//! with backoff; the connection's state shows in the stream's API view.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use futures::future::BoxFuture;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport};
use tokio::sync::{mpsc, oneshot};

use super::{Chunk, IngestReport, Input, Source, SourceContext, resolve_path};
use crate::clock::now_ms;
use crate::decode::{ChunkMeta, MetaValues, append_records};
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::health::{Backoff, Health};
use crate::reach::{Deferred, Reach, Service};
use crate::sql::Options;

/// What `METADATA` columns of an MQTT stream may read.
pub const METADATA: [(&str, DataType); 3] = [
    ("topic", DataType::Utf8),
    ("qos", DataType::Int64),
    ("retain", DataType::Boolean),
];

/// Records per chunk at most (a decode batch), and bytes per chunk at most.
pub const MAX_LINES: usize = 8192;
const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Messages buffered between the event loop and the chunk builder.
const MESSAGE_BUFFER: usize = 4096;

/// How to reach a broker: shared by the `mqtt` source and sink.
#[derive(Debug, Clone)]
pub struct MqttConnect {
    pub host: String,
    pub port: u16,
    pub tls: Option<MqttTls>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: Duration,
    /// Largest packet accepted from the broker; a bigger one breaks the connection
    /// (rumqttc's rule), so it is kept well above `max_payload_bytes`.
    pub max_packet_bytes: usize,
    /// Why SQL from the network may not use this broker: raised by the source or
    /// sink once it has read all its options.
    pub refused: Deferred,
}

/// `mqtts://`: the CA to trust (system roots when absent) and an optional client
/// certificate, all PEM files.
#[derive(Debug, Clone)]
pub struct MqttTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl MqttConnect {
    /// Takes `url`, `username`, `password`, `client_id`, `clean_session`,
    /// `keep_alive`, `ca`, `client_cert`, `client_key`. `role` names the connector in
    /// errors and in the default client id.
    pub fn from_options(
        o: &mut Options,
        file_root: Option<&PathBuf>,
        reach: &Reach,
        role: &str,
        max_packet_bytes: usize,
    ) -> Result<Self> {
        let at = o.position;
        let url = o.take("url").ok_or_else(|| {
            Error::user_at(
                format!(
                    "the {role} needs option 'url', like 'mqtt://127.0.0.1:1883' (or \
                     '${{MQTT_URL:-mqtt://127.0.0.1:1883}}' to read the environment)"
                ),
                at,
            )
        })?;
        let parsed = parse_url(&url.value).map_err(|e| Error::user_at(e, url.position))?;
        // The host as rumqttc will be given it, so what is checked is what connects.
        let default_port = if parsed.tls { 8883 } else { 1883 };
        let mut refused = Deferred::default();
        refused.keep(reach.check(
            Service::Mqtt,
            "url",
            &parsed.host,
            parsed.port,
            default_port,
            url.position,
        ))?;
        let username = o.take_string("username").or(parsed.username);
        let password = o.take_string("password").or(parsed.password);
        let explicit_id = o.take_string("client_id");
        let clean = o.take_bool("clean_session")?;
        // A fixed client id means a session the broker keeps across restarts, unless
        // asked otherwise; without one, every run is a new client.
        let clean_session = clean.unwrap_or(explicit_id.is_none());
        if !clean_session && explicit_id.is_none() {
            return Err(Error::user_at(
                "clean_session = 'false' needs a fixed client_id (the broker keeps the session by id)",
                at,
            ));
        }
        let client_id = explicit_id.unwrap_or_else(|| {
            format!(
                "sluice-{role}-{}-{:x}",
                std::process::id(),
                rand::random::<u32>()
            )
            .replace(' ', "-")
        });
        let keep_alive = o
            .take_duration("keep_alive")?
            .unwrap_or(Duration::from_secs(30));
        let mut file = |key: &'static str| -> Result<Option<PathBuf>> {
            o.take_string(key)
                .map(|p| resolve_path(&p, file_root))
                .transpose()
        };
        let ca = file("ca")?;
        let client_cert = file("client_cert")?;
        let client_key = file("client_key")?;
        if client_cert.is_some() != client_key.is_some() {
            return Err(Error::user_at("client_cert and client_key go together", at));
        }
        let tls = if parsed.tls {
            Some(MqttTls {
                ca,
                client_cert,
                client_key,
            })
        } else {
            if ca.is_some() || client_cert.is_some() {
                return Err(Error::user_at(
                    "ca, client_cert and client_key need an mqtts:// url",
                    url.position,
                ));
            }
            None
        };
        Ok(MqttConnect {
            host: parsed.host,
            port: parsed.port,
            tls,
            username,
            password,
            client_id,
            clean_session,
            keep_alive,
            max_packet_bytes,
            refused,
        })
    }

    /// rumqttc's options; reads the TLS files (failures are the operator's to fix).
    pub fn mqtt_options(&self) -> Result<MqttOptions> {
        let mut m = MqttOptions::new(&self.client_id, &self.host, self.port);
        m.set_keep_alive(self.keep_alive);
        m.set_clean_session(self.clean_session);
        m.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        if let Some(user) = &self.username {
            m.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            m.set_transport(Transport::tls_with_config(tls.client_config()?.into()));
        }
        Ok(m)
    }

    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

impl MqttTls {
    fn client_config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| Error::external(format!("cannot read '{}': {e}", p.display())))
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(p) => {
                for cert in CertificateDer::pem_slice_iter(&read(p)?) {
                    let cert = cert.map_err(|e| {
                        Error::external(format!("'{}' is not a PEM certificate: {e}", p.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        Error::external(format!("bad CA certificate '{}': {e}", p.display()))
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(c)?)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| {
                        Error::external(format!("'{}' is not a PEM certificate: {e}", c.display()))
                    })?;
                let key = PrivateKeyDer::from_pem_slice(&read(k)?).map_err(|e| {
                    Error::external(format!("'{}' is not a PEM private key: {e}", k.display()))
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| Error::external(format!("client certificate: {e}")))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

pub(crate) struct ParsedUrl {
    pub(crate) tls: bool,
    /// An IPv6 address keeps its brackets: rumqttc joins host and port with a colon.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (ports 1883 and 8883 by
/// default). Shared with `sluice simulate`.
pub(crate) fn parse_url(url: &str) -> std::result::Result<ParsedUrl, String> {
    let bad = |why: &str| format!("invalid MQTT url '{url}': {why}");
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("tcp://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("ssl://") {
        (true, r)
    } else {
        return Err(bad("it must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(a.to_string()), None),
        },
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        // [IPv6]:port
        let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None if p.is_empty() => default_port,
            None => return Err(bad("expected ':' and a port after ']'")),
        };
        (format!("[{h}]"), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() || host == "[]" || host.contains(['/', '?']) {
        return Err(bad("no host (a topic or query does not belong in the url)"));
    }
    if port == 0 {
        return Err(bad("port 0 is not a broker's port"));
    }
    Ok(ParsedUrl {
        tls,
        host,
        port,
        username,
        password,
    })
}

pub(crate) fn parse_qos(o: &mut Options) -> Result<QoS> {
    match o.take("qos") {
        None => Ok(QoS::AtLeastOnce),
        Some(v) => match v.value.trim() {
            "0" => Ok(QoS::AtMostOnce),
            "1" => Ok(QoS::AtLeastOnce),
            other => Err(Error::user_at(
                format!(
                    "option 'qos' must be 0 or 1, got '{other}' (QoS 2 is not supported: \
                     QoS 1 with idempotent sinks gives the same result)"
                ),
                v.position,
            )),
        },
    }
}

#[derive(Debug)]
pub struct MqttSource {
    connect: MqttConnect,
    /// `topics`: topic filters, comma-separated (`+` and `#` wildcards).
    filters: Vec<String>,
    /// `qos`: 0 or 1 (default 1).
    qos: QoS,
    /// `max_payload_bytes`: larger messages go to the error output (default 1 MiB).
    max_payload_bytes: usize,
    health: Arc<Health>,
}

impl MqttSource {
    pub fn from_options(mut o: Options, ctx: &SourceContext) -> Result<Self> {
        let at = o.position;
        let max_payload_bytes = o
            .take_u64("max_payload_bytes")?
            .map(|v| v as usize)
            .unwrap_or(1 << 20);
        // Packets up to 4x the payload limit (at least 16 MiB) are read and then
        // refused as records; only bigger ones break the connection.
        let max_packet = (max_payload_bytes.saturating_mul(4)).max(16 << 20);
        let connect = MqttConnect::from_options(
            &mut o,
            ctx.file_root.as_ref(),
            &ctx.reach,
            "source",
            max_packet,
        )?;
        let topics = o.take("topics").ok_or_else(|| {
            Error::user_at(
                "the mqtt source needs option 'topics': one or more topic filters, comma-separated \
                 (e.g. 'sensors/+/data, temp_readings')",
                at,
            )
        })?;
        let filters: Vec<String> = topics
            .value
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        for f in &filters {
            if !valid_filter(f) {
                return Err(Error::user_at(
                    format!(
                        "invalid topic filter '{f}': '#' may only be the last level and '+' must fill a \
                         whole level"
                    ),
                    topics.position,
                ));
            }
        }
        if filters.is_empty() {
            return Err(Error::user_at(
                "option 'topics' names no topic",
                topics.position,
            ));
        }
        let qos = parse_qos(&mut o)?;
        o.finish("source connector 'mqtt'")?;
        connect.refused.raise()?;
        Ok(MqttSource {
            connect,
            filters,
            qos,
            max_payload_bytes,
            health: Arc::new(Health::new()),
        })
    }
}

/// MQTT filter rules: `#` alone as the last level, `+` alone in its level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
            && (!l.contains('+') || *l == "+")
    })
}

/// Messages of one chunk waiting for it to be processed before they are acknowledged.
struct PendingAck {
    report: oneshot::Receiver<IngestReport>,
    messages: Vec<Publish>,
}

impl Source for MqttSource {
    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }

    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let mut options = self.connect.mqtt_options()?;
            let manual_acks = self.qos == QoS::AtLeastOnce;
            options.set_manual_acks(manual_acks);
            let (client, mut eventloop) = AsyncClient::new(options, 1024);
            let (msg_tx, mut msg_rx) = mpsc::channel::<Publish>(MESSAGE_BUFFER);

            // The event loop: connects, reconnects with backoff, subscribes when the
            // broker has no session for us, forwards messages.
            let health = Arc::clone(&self.health);
            let subscriber = client.clone();
            let filters: Vec<SubscribeFilter> = self
                .filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), self.qos))
                .collect();
            let target = self.connect.describe();
            let poller = tokio::spawn(async move {
                let mut backoff = Backoff::new(Duration::from_secs(10));
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if msg_tx.send(p).await.is_err() {
                                return;
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(c))) => {
                            health.connected();
                            backoff.reset();
                            tracing::info!(broker = %target, session_present = c.session_present, "mqtt connected");
                            if !c.session_present {
                                let client = subscriber.clone();
                                let filters = filters.clone();
                                // Not awaited here: the request channel is drained by
                                // this very loop.
                                tokio::spawn(async move {
                                    let _ = client.subscribe_many(filters).await;
                                });
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(s))) => {
                            let refused = s
                                .return_codes
                                .iter()
                                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                            if refused {
                                health.retrying("the broker refused a topic subscription");
                                tracing::error!(broker = %target, "subscription refused: {s:?}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            health.retrying(&e);
                            let delay = backoff.next_delay();
                            tracing::warn!(broker = %target, "mqtt: {e}; retrying in {delay:?}");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            });

            // Acknowledgements, in order, once each chunk's report comes back. A chunk
            // the stream never answered (shutdown) or failed to decode as a whole is not
            // acknowledged: the broker will deliver it again.
            let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<PendingAck>();
            let acker_client = client.clone();
            let acker = tokio::spawn(async move {
                while let Some(p) = ack_rx.recv().await {
                    match p.report.await {
                        Ok(r) if r.failed.is_none() => {
                            for m in &p.messages {
                                if acker_client.ack(m).await.is_err() {
                                    return;
                                }
                            }
                        }
                        _ => return,
                    }
                }
            });

            let result = self.gather(&mut msg_rx, &out, &ack_tx, manual_acks).await;
            drop(ack_tx);
            // Let acknowledgements of processed chunks go out before disconnecting.
            let _ = tokio::time::timeout(Duration::from_secs(2), acker).await;
            let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            poller.abort();
            result
        })
    }
}

impl MqttSource {
    /// Builds chunks from waiting messages until the stream goes away.
    async fn gather(
        &self,
        msg_rx: &mut mpsc::Receiver<Publish>,
        out: &mpsc::Sender<Input>,
        ack_tx: &mpsc::UnboundedSender<PendingAck>,
        manual_acks: bool,
    ) -> Result<()> {
        let mut topics: Vec<Arc<str>> = Vec::new();
        loop {
            let first = tokio::select! {
                m = msg_rx.recv() => m,
                _ = out.closed() => None,
            };
            let Some(first) = first else {
                return Ok(());
            };
            let arrival_ms = now_ms();
            let mut chunk = Chunk::new(Vec::with_capacity(first.payload.len() * 16), 0, arrival_ms);
            let (mut topic_col, mut qos_col, mut retain_col) = (Vec::new(), Vec::new(), Vec::new());
            let mut acks: Vec<Publish> = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                if m.payload.len() > self.max_payload_bytes {
                    chunk.rejected.push(RecordError {
                        kind: RecordErrorKind::Oversized,
                        reason: format!(
                            "message of {} bytes on topic '{}' exceeds max_payload_bytes ({})",
                            m.payload.len(),
                            m.topic,
                            self.max_payload_bytes
                        ),
                        payload: String::from_utf8_lossy(&m.payload).into_owned(),
                        arrival_ms,
                    });
                } else {
                    let n = append_records(&m.payload, &mut chunk.data);
                    if n > 0 {
                        // Consecutive messages usually share a topic: reuse its string.
                        let topic = match topics.iter().find(|t| t.as_ref() == m.topic) {
                            Some(t) => Arc::clone(t),
                            None => {
                                if topics.len() > 64 {
                                    topics.clear();
                                }
                                let t: Arc<str> = Arc::from(m.topic.as_str());
                                topics.push(Arc::clone(&t));
                                t
                            }
                        };
                        let qos = m.qos as i64;
                        for _ in 0..n {
                            topic_col.push(Arc::clone(&topic));
                            qos_col.push(qos);
                            retain_col.push(m.retain);
                        }
                    }
                }
                if manual_acks && m.qos != QoS::AtMostOnce {
                    acks.push(m);
                }
                if topic_col.len() < MAX_LINES && chunk.data.len() < MAX_CHUNK_BYTES {
                    next = msg_rx.try_recv().ok();
                }
            }
            chunk.meta = Some(Box::new(ChunkMeta {
                columns: vec![
                    ("topic", MetaValues::Text(topic_col)),
                    ("qos", MetaValues::Int(qos_col)),
                    ("retain", MetaValues::Bool(retain_col)),
                ],
            }));
            let input = if acks.is_empty() {
                Input::from(chunk)
            } else {
                let (tx, rx) = oneshot::channel();
                if ack_tx
                    .send(PendingAck {
                        report: rx,
                        messages: acks,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                Input {
                    chunk,
                    ack: Some(tx),
                }
            };
            if out.send(input).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1883));
        let u = parse_url("mqtts://user:p%w@broker.example").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example", 8883)
        );
        assert_eq!(u.username.as_deref(), Some("user"));
        assert_eq!(u.password.as_deref(), Some("p%w"));
        let u = parse_url("mqtt://[::1]:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 1884));
        assert!(parse_url("mqtt://h:0").is_err());
        assert!(parse_url("mqtt://h/topic").is_err());
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://host:port").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn filters() {
        for ok in ["a/b", "a/+/c", "#", "a/#", "+", "+/+"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["a/#/c", "a/b#", "a+/b", "#/a"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
