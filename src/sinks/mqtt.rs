//! `mqtt` sink: republishes query results to an MQTT broker (last stage of the data
//! flow; IoT Core's republish action), one JSON object per row.
//!
//! ```sql
//! CREATE SINK alerts WITH (
//!   connector = 'mqtt', url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
//!   topic = 'alerts/{deviceId}/temperature', qos = '1', retain = 'true'
//! );
//! ```
//!
//! Messages and topic values are written by [`crate::render`] (`timestamp_format`
//! chooses RFC 3339 or epoch ms). `{column}` in the topic is replaced by the row's
//! value; characters that would change the topic's structure (`/`, `+`, `#`, and `%`
//! itself) are percent-encoded, so a value can never publish into another device's
//! topic. With QoS 1, `flush` waits for the
//! broker's acknowledgement of every message (bounded), and rumqttc resends what was
//! not acknowledged when it reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

use super::template::Template;
use super::{Sink, SinkContext, take_timestamp_format};
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::render::{TimestampFormat, json_lines};
use crate::sources::mqtt::{MqttConnect, parse_qos};
use crate::sql::Options;

/// A topic template, and no wildcard in its literal text (one cannot publish to it).
fn parse_topic(t: &str) -> std::result::Result<Template, String> {
    let template = Template::parse(t, "topic")?;
    if template.literal().contains(['+', '#']) {
        return Err(format!(
            "topic '{t}' contains a wildcard ('+' or '#'), which cannot be published to"
        ));
    }
    Ok(template)
}

/// Percent-encodes what would change a topic's levels.
fn escape_level(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
}

pub struct MqttSink {
    connect: MqttConnect,
    topic: Template,
    qos: QoS,
    retain: bool,
    /// `timestamp_format`: how times are written in messages and topics.
    timestamps: TimestampFormat,
    health: Arc<Health>,
    conn: Option<Connection>,
    buf: Vec<u8>,
}

struct Connection {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
    published: u64,
    acked: Arc<AtomicU64>,
}

impl MqttSink {
    pub fn from_options(mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let at = o.position;
        let connect = MqttConnect::from_options(
            &mut o,
            ctx.file_root.as_ref(),
            &ctx.reach,
            "sink",
            16 << 20,
        )?;
        let topic = o.take("topic").ok_or_else(|| {
            Error::user_at(
                "the mqtt sink needs option 'topic', e.g. 'alerts/{deviceId}'",
                at,
            )
        })?;
        let template = parse_topic(&topic.value).map_err(|e| Error::user_at(e, topic.position))?;
        let qos = parse_qos(&mut o)?;
        let retain = o.take_bool("retain")?.unwrap_or(false);
        let timestamps = take_timestamp_format(&mut o)?;
        o.finish("sink connector 'mqtt'")?;
        connect.refused.raise()?;
        Ok(MqttSink {
            connect,
            topic: template,
            qos,
            retain,
            timestamps,
            health: Arc::new(Health::new()),
            conn: None,
            buf: Vec::new(),
        })
    }

    fn connection(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            let options = self.connect.mqtt_options()?;
            let (client, mut eventloop) = AsyncClient::new(options, 1024);
            let acked = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&acked);
            let health = Arc::clone(&self.health);
            let target = self.connect.describe();
            let poller = tokio::spawn(async move {
                let mut backoff = Backoff::new(Duration::from_secs(10));
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            health.connected();
                            backoff.reset();
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            health.retrying(&e);
                            let delay = backoff.next_delay();
                            tracing::warn!(broker = %target, "mqtt sink: {e}; retrying in {delay:?}");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            });
            self.conn = Some(Connection {
                client,
                poller,
                published: 0,
                acked,
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

impl MqttSink {
    /// Each row's topic, from the template (a null value is an empty level).
    fn topics(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        self.topic
            .check_columns(&batch.schema(), "mqtt sink topic")?;
        let topics = self
            .topic
            .render(batch, self.timestamps, Some(""), escape_level)?;
        Ok(topics.into_iter().map(Option::unwrap_or_default).collect())
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(c) = &self.conn {
            c.poller.abort();
        }
    }
}

impl Sink for MqttSink {
    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }

    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if batch.num_rows() == 0 {
                return Ok(());
            }
            let topics = self.topics(batch)?;
            // One JSON object per row: the JSON-lines encoding, split at its newlines.
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            json_lines(batch, self.timestamps, &mut buf)?;
            let (qos, retain) = (self.qos, self.retain);
            let conn = self.connection()?;
            let mut lines = buf.split(|&b| b == b'\n');
            for topic in topics {
                let payload = lines.next().unwrap_or_default().to_vec();
                // Waits while rumqttc's request queue is full: backpressure.
                conn.client
                    .publish(topic, qos, retain, payload)
                    .await
                    .map_err(|e| Error::external(format!("mqtt sink: {e}")))?;
                if qos == QoS::AtLeastOnce {
                    conn.published += 1;
                }
            }
            self.buf = buf;
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(conn) = &self.conn else {
                return Ok(());
            };
            // QoS 1: wait for the broker to have every message (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while conn.acked.load(Ordering::Relaxed) < conn.published {
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::external(format!(
                        "mqtt sink: the broker acknowledged {} of {} messages within 10 s",
                        conn.acked.load(Ordering::Relaxed),
                        conn.published
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = conn.client.disconnect().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::template::Part;
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("alerts/{deviceId}/t").unwrap().parts,
            vec![
                Part::Text("alerts/".into()),
                Part::Column("deviceId".into()),
                Part::Text("/t".into())
            ]
        );
        assert!(parse_topic("a/{x").is_err());
        assert!(parse_topic("a/#").is_err());
        let mut s = String::new();
        escape_level("a/b+c#d%", &mut s);
        assert_eq!(s, "a%2Fb%2Bc%23d%25");
    }
}
