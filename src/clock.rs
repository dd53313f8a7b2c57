//! The wall clock, in epoch milliseconds: arrival times (sources), retry times
//! (health), and the engine's `SystemClock` all read it here. Tests and benchmarks
//! that need control over time use the engine's `ManualClock` instead.

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
