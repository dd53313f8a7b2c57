//! `simulator` source: the thermostat readings of the ElastiCache time-series article
//! (seed 003), generated in-process so the demo needs no broker.
//!
//! Each record: `{"deviceId": 1..devices, "temperature": 1..110, "humidity": 1..100,
//! "deviceIP": "…", "ts": epoch ms}`. Event time advances by `1000 / rate` ms per record
//! from `start`; `jitter` moves each record back in event time by up to that much
//! (out-of-order data, within a bound a watermark delay can cover). The same `seed`
//! gives the same records.
//!
//! ```sql
//! CREATE STREAM readings (deviceId INT, temperature DOUBLE, humidity DOUBLE, deviceIP TEXT,
//!   ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
//! WITH (connector = 'simulator', devices = '5000', rate = '2000', jitter = '1s');
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::{Chunk, Input, Source};
use crate::error::{Error, Result};
use crate::sql::Options;

#[derive(Debug, Clone)]
pub struct Simulator {
    /// `devices`: number of distinct deviceIds (default 5000, as in the article).
    pub devices: u64,
    /// `rate`: records per second of event time, and of wall time when throttled
    /// (default 1000).
    pub rate: u64,
    /// `throttle`: pace to the wall clock (default true); false generates as fast as
    /// the query consumes, with the same event times.
    pub throttle: bool,
    /// `seed`: random seed (default 42).
    pub seed: u64,
    /// `jitter`: largest out-of-order shift of event time, ms (default 0).
    pub jitter_ms: i64,
    /// `limit`: stop after this many records (default: never).
    pub limit: Option<u64>,
    /// `start`: event time of the first record, epoch ms or RFC 3339 (default: now).
    pub start_ms: Option<i64>,
}

impl Simulator {
    pub fn from_options(mut o: Options) -> Result<Self> {
        let devices = o.take_u64("devices")?.unwrap_or(5000);
        let rate = o.take_u64("rate")?.unwrap_or(1000);
        let throttle = o.take_bool("throttle")?.unwrap_or(true);
        let seed = o.take_u64("seed")?.unwrap_or(42);
        let jitter_ms = o
            .take_duration("jitter")?
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let limit = o.take_u64("limit")?;
        let start_ms = match o.take("start") {
            None => None,
            Some(v) => Some(parse_time(&v.value).ok_or_else(|| {
                Error::user_at(
                    format!(
                        "option 'start' must be epoch milliseconds or an RFC 3339 time, got '{}'",
                        v.value
                    ),
                    v.position,
                )
            })?),
        };
        o.finish("source connector 'simulator'")?;
        if devices == 0 || rate == 0 {
            return Err(Error::user(
                "simulator: devices and rate must be at least 1",
            ));
        }
        Ok(Simulator {
            devices,
            rate,
            throttle,
            seed,
            jitter_ms,
            limit,
            start_ms,
        })
    }

    /// Writes records `from..to` as JSON lines (deterministic for a seed).
    pub fn generate(
        &self,
        rng: &mut SmallRng,
        start_ms: i64,
        from: u64,
        to: u64,
        out: &mut Vec<u8>,
    ) {
        for i in from..to {
            let reading = Reading::draw(rng, self.devices);
            let mut ts = start_ms + (i as i64 * 1000) / self.rate as i64;
            if self.jitter_ms > 0 {
                ts -= rng.random_range(0..=self.jitter_ms);
            }
            reading.write_json(ts, out);
            out.push(b'\n');
        }
    }
}

/// One thermostat reading of seed 003, without its time: shared by this source and
/// `sluice simulate` (which publishes readings to a broker), so both produce the same
/// readings for a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reading {
    /// 1..=devices.
    pub device: u64,
    /// 1..=110, as temp-sensor.js draws it.
    pub temperature: u32,
    /// 1..=100.
    pub humidity: u32,
}

impl Reading {
    /// Draws a device, then its temperature and humidity (three draws, in that order:
    /// the order is part of what a seed reproduces).
    pub fn draw(rng: &mut SmallRng, devices: u64) -> Reading {
        let device = rng.random_range(1..=devices);
        Reading::draw_for(rng, device)
    }

    /// Draws a temperature and humidity for a given device.
    pub fn draw_for(rng: &mut SmallRng, device: u64) -> Reading {
        let temperature: u32 = rng.random_range(1..=110);
        let humidity: u32 = rng.random_range(1..=100);
        Reading {
            device,
            temperature,
            humidity,
        }
    }

    /// Appends `{"deviceId":…,"temperature":…,"humidity":…,"deviceIP":"10.…","ts":…}`
    /// (no newline).
    pub fn write_json(&self, ts: i64, out: &mut Vec<u8>) {
        // A device keeps one address, as a real thermostat would.
        let ip = self.device.wrapping_mul(2_654_435_761) as u32;
        let _ = write!(
            out,
            "{{\"deviceId\":{},\"temperature\":{},\"humidity\":{},\"deviceIP\":\"10.{}.{}.{}\",\"ts\":{ts}}}",
            self.device,
            self.temperature,
            self.humidity,
            (ip >> 16) & 0xff,
            (ip >> 8) & 0xff,
            ip & 0xff,
        );
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Some(n);
    }
    let v = datafusion::common::ScalarValue::Utf8(Some(s.to_string()))
        .cast_to(&datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            None,
        ))
        .ok()?;
    match v {
        datafusion::common::ScalarValue::TimestampMillisecond(Some(ms), _) => Some(ms),
        _ => None,
    }
}

impl Source for Simulator {
    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let now =
                || crate::engine::watermark::Clock::now_ms(&crate::engine::watermark::SystemClock);
            let start_ms = self.start_ms.unwrap_or_else(now);
            let mut rng = SmallRng::seed_from_u64(self.seed);
            let limit = self.limit.unwrap_or(u64::MAX);
            let began = Instant::now();
            // Unthrottled: big chunks for throughput; throttled: ten sends a second.
            let per_chunk = if self.throttle {
                (self.rate / 10).max(1)
            } else {
                4096
            };
            let mut sent = 0u64;
            while sent < limit {
                let to = (sent + per_chunk).min(limit);
                if self.throttle {
                    let due = Duration::from_millis(sent * 1000 / self.rate);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let mut data = Vec::with_capacity((to - sent) as usize * 110);
                self.generate(&mut rng, start_ms, sent, to, &mut data);
                if out
                    .send(Input::from(Chunk::new(data, 0, now())))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                sent = to;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a: a stable fingerprint of generated bytes.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// The readings a seed gives are part of the source's contract (demos and tests
    /// rely on them); these fingerprints were taken before `Reading` was factored out
    /// for `sluice simulate` and must not change.
    #[test]
    fn a_seed_gives_the_same_records_as_before() {
        for (jitter_ms, len, hash) in [
            (0, 94389, 0x12c1_a407_90d4_86f8),
            (1500, 94402, 0x6a3d_d1aa_29ee_5470),
        ] {
            let s = Simulator {
                devices: 5000,
                rate: 1000,
                throttle: false,
                seed: 7,
                jitter_ms,
                limit: None,
                start_ms: None,
            };
            let mut rng = SmallRng::seed_from_u64(s.seed);
            let mut out = Vec::new();
            s.generate(&mut rng, 1_700_000_000_000, 0, 1000, &mut out);
            assert_eq!((out.len(), fnv(&out)), (len, hash), "jitter {jitter_ms}");
        }
        let mut rng = SmallRng::seed_from_u64(7);
        let mut first = Vec::new();
        Reading::draw(&mut rng, 5000).write_json(1_700_000_000_000, &mut first);
        assert_eq!(
            String::from_utf8(first).unwrap(),
            r#"{"deviceId":277,"temperature":19,"humidity":72,"deviceIP":"10.6.172.133","ts":1700000000000}"#
        );
    }
}
