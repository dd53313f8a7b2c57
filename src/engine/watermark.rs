//! Watermarks: how far event time has certainly progressed on a stream (engine; fed
//! by the stream's decode stage, read by every query on the stream).
//!
//! Watermark = max event time seen − the declared delay, taken as the minimum over the
//! source's partitions (a lagging Kinesis shard holds everyone back, so its records are
//! not declared late). A partition silent for longer than the idle timeout stops holding
//! the others back; when every partition is silent, the watermark advances with the
//! wall clock from where it stood, so the last window of a quiet stream still closes.
//! The watermark never moves backwards.
//!
//! Wall-clock reads go through [`Clock`] so tests can drive idleness by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch, from wherever time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::clock::now_ms()
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Partition {
    /// Largest event time seen on this partition.
    max_event: Option<i64>,
    /// Wall-clock time of the partition's last record.
    last_seen: i64,
}

/// Tracks one stream's watermark across its source partitions.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    delay_ms: i64,
    idle_timeout_ms: Option<i64>,
    partitions: Vec<Partition>,
    current: Option<i64>,
}

impl WatermarkTracker {
    /// `partitions` is how many independent inputs the source has (at least 1).
    pub fn new(delay_ms: i64, idle_timeout_ms: Option<i64>, partitions: usize, now: i64) -> Self {
        WatermarkTracker {
            delay_ms,
            idle_timeout_ms,
            partitions: vec![
                Partition {
                    max_event: None,
                    last_seen: now,
                };
                partitions.max(1)
            ],
            current: None,
        }
    }

    /// Grows the partition list when a source discovers more partitions (new shards).
    pub fn ensure_partitions(&mut self, n: usize, now: i64) {
        while self.partitions.len() < n {
            self.partitions.push(Partition {
                max_event: None,
                last_seen: now,
            });
        }
    }

    /// Records that `partition` delivered records up to `max_event` at wall time `now`.
    pub fn observe(&mut self, partition: usize, max_event: Option<i64>, now: i64) {
        self.ensure_partitions(partition + 1, now);
        let p = &mut self.partitions[partition];
        p.last_seen = now;
        if let Some(t) = max_event {
            p.max_event = Some(p.max_event.map_or(t, |m| m.max(t)));
        }
    }

    /// The current watermark (`None` until the first record), recomputed at `now`.
    pub fn watermark(&mut self, now: i64) -> Option<i64> {
        let idle = |p: &Partition| self.idle_timeout_ms.is_some_and(|t| now - p.last_seen > t);
        let active_min = self
            .partitions
            .iter()
            .filter(|p| !idle(p))
            .map(|p| p.max_event)
            .try_fold(None::<i64>, |acc, m| {
                // An active partition that has seen nothing yet holds the watermark.
                m.map(|m| Some(acc.map_or(m, |a: i64| a.min(m))))
            });
        let candidate = match active_min {
            // Some partition is active and has data: the usual rule.
            Some(Some(min)) => Some(min - self.delay_ms),
            // An active partition has not delivered anything yet: wait for it.
            None => None,
            // Every partition is idle: advance with the wall clock past the timeout.
            Some(None) => {
                let timeout = self.idle_timeout_ms.unwrap_or(0);
                let last_seen = self
                    .partitions
                    .iter()
                    .map(|p| p.last_seen)
                    .max()
                    .unwrap_or(now);
                self.partitions
                    .iter()
                    .filter_map(|p| p.max_event)
                    .max()
                    .map(|m| m - self.delay_ms + (now - last_seen - timeout).max(0))
            }
        };
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |cur| cur.max(c)));
        }
        self.current
    }

    /// The last computed watermark without recomputing.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Ends the stream: every window may close.
    pub fn finish(&mut self) -> i64 {
        self.current = Some(i64::MAX);
        i64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_partitions_minus_delay() {
        let mut w = WatermarkTracker::new(5, None, 2, 0);
        w.observe(0, Some(100), 0);
        assert_eq!(w.watermark(0), None, "partition 1 has not spoken yet");
        w.observe(1, Some(50), 0);
        assert_eq!(w.watermark(0), Some(45));
        w.observe(1, Some(200), 0);
        assert_eq!(w.watermark(0), Some(95));
        w.observe(0, Some(90), 0);
        assert_eq!(w.watermark(0), Some(95), "never backwards");
    }

    #[test]
    fn idle_partitions_stop_holding_back_then_the_clock_takes_over() {
        let mut w = WatermarkTracker::new(0, Some(1_000), 2, 0);
        w.observe(0, Some(10_000), 0);
        w.observe(1, Some(5_000), 0);
        assert_eq!(w.watermark(500), Some(5_000));
        w.observe(0, Some(11_000), 900);
        // partition 1 silent for 1.2 s: excluded
        assert_eq!(w.watermark(1_200), Some(11_000));
        // both silent: 11_000 + (now - last_seen - timeout)
        assert_eq!(w.watermark(1_900), Some(11_000));
        assert_eq!(w.watermark(2_400), Some(11_500));
    }
}
