//! Capped exponential backoff, the one schedule the operator retries by: per
//! object after a failed reconcile ([`crate::context::Context`]) and for the
//! controller's merged watch streams ([`TriggerBackoff`]).

use std::time::Duration;

/// Delay after `failures` consecutive failures: `base * 2^(failures-1)`,
/// never above `max`. Zero failures count as one.
pub fn capped(failures: u32, base: Duration, max: Duration) -> Duration {
    // 2^20 times any useful base is far above any useful cap; the bound keeps
    // the shift in range.
    let exp = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

/// Backoff of the controller's merged watch streams. kube-runtime applies
/// one backoff to the main watch and every Owns()/watches() stream together,
/// so after an API-server restart each of the nine watches' "resource
/// version too old" errors escalates the shared delay (client-go's 0.8 s to
/// 30 s), pausing *all* triggers for minutes. Each watcher re-lists on its own
/// anyway; a short, capped delay only guards against a hot loop while the
/// server is down.
#[derive(Debug, Default)]
pub struct TriggerBackoff {
    failures: u32,
}

impl TriggerBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(capped(self.failures, Self::BASE, Self::MAX))
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(300);
        assert_eq!(capped(1, base, max), Duration::from_millis(500));
        assert_eq!(capped(2, base, max), Duration::from_secs(1));
        assert_eq!(capped(5, base, max), Duration::from_secs(8));
        assert_eq!(capped(30, base, max), max);
        assert_eq!(capped(u32::MAX, base, max), max);
    }

    #[test]
    fn trigger_backoff_is_short_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = TriggerBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(7).collect();
        assert_eq!(first[0], Duration::from_millis(100));
        assert_eq!(first[6], Duration::from_secs(2));
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }
}
