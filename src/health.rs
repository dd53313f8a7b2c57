//! Connector health: what a network source or sink reports about its connection, for
//! the API and /metrics (shared by sources/ and sinks/; read by the runtime and api).
//!
//! A connector that talks to a broker or a store (MQTT, Redis, Kinesis…) keeps one
//! [`Health`] and updates it as it connects, fails and retries, so an operator can see
//! "retrying: connection refused (attempt 7)" instead of a query that silently stalls.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::clock::now_ms;

/// Connection state of one connector, updated by the connector, read by the API.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
    /// Connection attempts or writes that failed and were retried.
    retries: AtomicU64,
    /// Records (or commands) a sink left out because a value it needs was null.
    skipped: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct HealthState {
    /// `idle`, `connecting`, `connected`, `retrying`.
    status: &'static str,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
    last_skip: Option<String>,
}

impl Health {
    pub fn new() -> Self {
        let h = Health::default();
        h.set_status("connecting");
        h
    }

    /// For a sink that opens nothing until its first write (a local table, an
    /// archive): `idle` until then, rather than a `connecting` that never ends while
    /// no rows come.
    pub fn idle() -> Self {
        let h = Health::default();
        h.set_status("idle");
        h
    }

    fn set_status(&self, status: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            s.status = status;
        }
    }

    /// The connection works (a connect, or a write, succeeded).
    pub fn connected(&self) {
        self.set_status("connected");
    }

    /// An attempt failed and will be retried; `error` says why, for the operator.
    pub fn retrying(&self, error: impl std::fmt::Display) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.status = "retrying";
            s.last_error = Some(error.to_string());
            s.last_error_ms = Some(now_ms());
        }
    }

    /// A sink left `n` commands out; `reason` says why the last one was.
    pub fn skipped(&self, n: u64, reason: Option<String>) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.last_skip = reason;
        }
    }

    pub fn status(&self) -> &'static str {
        self.state.lock().map(|s| s.status).unwrap_or("unknown")
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The API's view: `{status, retries, last_error, last_error_ms, skipped, last_skip}`.
    pub fn to_json(&self) -> Value {
        let s = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        json!({
            "status": s.status,
            "retries": self.retries(),
            "last_error": s.last_error,
            "last_error_ms": s.last_error_ms,
            "skipped": self.skipped.load(Ordering::Relaxed),
            "last_skip": s.last_skip,
        })
    }
}

/// Exponential backoff with a cap, for reconnect and retry loops: 100 ms, 200 ms, …,
/// up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub fn new(max: std::time::Duration) -> Self {
        Backoff {
            next: std::time::Duration::from_millis(100),
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the one after it.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = std::time::Duration::from_millis(100);
    }
}
