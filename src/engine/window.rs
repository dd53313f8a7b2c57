//! Window specifications and the arithmetic that assigns event times to windows
//! (engine; used by the window aggregates and by the lateness check at query input).
//!
//! All times are milliseconds since the Unix epoch. Tumbling and hopping windows are
//! aligned to the epoch: a tumbling window of size `s` is `[k·s, (k+1)·s)`, a hopping
//! window of slide `h` starts at every multiple of `h` and lasts `size`. A window is
//! closed, and emitted, once the watermark reaches its end.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// `TUMBLE(ts, size)`
    Tumble { size: i64 },
    /// `HOP(ts, slide, size)`
    Hop { slide: i64, size: i64 },
    /// `SESSION(ts, gap)`: per group key, events closer than `gap` share a window
    /// `[first, last + gap)`.
    Session { gap: i64 },
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumble { size } => write!(f, "TUMBLE({size} ms)"),
            WindowSpec::Hop { slide, size } => write!(f, "HOP(slide {slide} ms, size {size} ms)"),
            WindowSpec::Session { gap } => write!(f, "SESSION(gap {gap} ms)"),
        }
    }
}

/// Start of the aligned window of length `step` holding `t` (works for negative `t`).
#[inline]
pub fn align(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

/// What lateness means for a record at `t` under watermark `wm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lateness {
    /// Every window the record belongs to is still open.
    OnTime,
    /// Some of its windows closed (hopping windows only): it still counts in the others.
    Partly,
    /// All of its windows closed: it cannot count anywhere.
    Late,
}

impl WindowSpec {
    /// Whether a record at event time `t` arrives too late under watermark `wm`.
    #[inline]
    pub fn lateness(&self, t: i64, wm: i64) -> Lateness {
        match *self {
            WindowSpec::Tumble { size } => {
                if align(t, size) + size <= wm {
                    Lateness::Late
                } else {
                    Lateness::OnTime
                }
            }
            WindowSpec::Hop { slide, size } => {
                let last_end = align(t, slide) + size;
                if last_end <= wm {
                    return Lateness::Late;
                }
                if first_hop_start(t, slide, size) + size <= wm {
                    Lateness::Partly
                } else {
                    Lateness::OnTime
                }
            }
            // The record's own session [t, t + gap) closes at t + gap: arriving after
            // that it could only reopen a session that was already emitted.
            WindowSpec::Session { gap } => {
                if t.saturating_add(gap) <= wm {
                    Lateness::Late
                } else {
                    Lateness::OnTime
                }
            }
        }
    }

    /// The number of hopping lanes (windows per record, at most); 1 otherwise.
    pub fn lanes(&self) -> i64 {
        match *self {
            WindowSpec::Hop { slide, size } => (size + slide - 1) / slide,
            _ => 1,
        }
    }

    /// The time a window `[start, …)` ends.
    pub fn end_of(&self, start: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => start + size,
            WindowSpec::Session { gap } => start + gap,
        }
    }
}

/// Earliest hopping window start whose window still contains `t`: the smallest
/// multiple of `slide` greater than `t - size`.
#[inline]
pub fn first_hop_start(t: i64, slide: i64, size: i64) -> i64 {
    align(t - size, slide) + slide
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_to_the_epoch() {
        assert_eq!(align(12_345, 1_000), 12_000);
        assert_eq!(align(-1, 1_000), -1_000);
        assert_eq!(align(0, 1_000), 0);
    }

    #[test]
    fn lateness_by_window_kind() {
        let t = WindowSpec::Tumble { size: 10 };
        assert_eq!(t.lateness(12, 19), Lateness::OnTime);
        assert_eq!(t.lateness(12, 20), Lateness::Late);
        // windows of 10 every 5 holding 12: [5,15) and [10,20)
        let h = WindowSpec::Hop { slide: 5, size: 10 };
        assert_eq!(first_hop_start(12, 5, 10), 5);
        assert_eq!(h.lateness(12, 14), Lateness::OnTime);
        assert_eq!(h.lateness(12, 15), Lateness::Partly);
        assert_eq!(h.lateness(12, 20), Lateness::Late);
        assert_eq!(h.lanes(), 2);
        assert_eq!(WindowSpec::Hop { slide: 3, size: 10 }.lanes(), 4);
        let s = WindowSpec::Session { gap: 5 };
        assert_eq!(s.lateness(12, 16), Lateness::OnTime);
        assert_eq!(s.lateness(12, 17), Lateness::Late);
    }
}
