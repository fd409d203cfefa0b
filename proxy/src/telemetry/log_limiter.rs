//! A bound on log lines about bad input, so that a flood of it cannot flood
//! the log.

use std::time::{Duration, Instant};

/// Allows at most `burst` log lines per `period` and counts the rest, so a
/// flood of bad input cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines per `period`.
    pub fn new(burst: u32, period: Duration) -> LogLimiter {
        LogLimiter {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`; when a new window opens,
    /// also returns how many lines the previous windows suppressed.
    pub fn check(&mut self, now: Instant) -> (bool, u64) {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.duration_since(start) >= self.period,
        };
        let mut reported = 0;
        if new_window {
            self.window_start = Some(now);
            self.in_window = 0;
            reported = std::mem::take(&mut self.suppressed);
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_bounds_lines_per_window() {
        let mut l = LogLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), (true, 0));
        assert_eq!(l.check(t0), (true, 0));
        assert_eq!(l.check(t0), (false, 0));
        assert_eq!(l.check(t0 + Duration::from_millis(10)), (false, 0));
        assert_eq!(l.check(t0 + Duration::from_secs(2)), (true, 2));
    }
}
