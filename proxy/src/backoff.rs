//! Capped exponential backoff, the one retry schedule of the proxy: the
//! proxy's and the RPC server's matchmaker registrations, the local
//! publisher's watch of the proxy list, and the Kubernetes matchmaker's
//! watches (through kube's [`Backoff`] trait).

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// Waits that start at `initial`, double after every failure and stay at
/// `max`; [`CappedBackoff::reset`] after a success starts over.
#[derive(Debug, Clone)]
pub struct CappedBackoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl CappedBackoff {
    /// A schedule from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> CappedBackoff {
        CappedBackoff {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The schedule of matchmaker registrations and watches: 200 ms
    /// doubling up to 30 s, short enough to register soon after a store
    /// comes back, long enough not to hammer one that is down.
    pub fn registration() -> CappedBackoff {
        CappedBackoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }

    /// The wait after this failure; the next one is twice as long (capped).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// The wait the next failure would get, without counting one.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_wait())
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        CappedBackoff::reset(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_starts_over() {
        let ms = Duration::from_millis;
        let mut b = CappedBackoff::new(ms(200), ms(1000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(b.peek(), ms(1000));
        b.reset();
        assert_eq!(b.next_wait(), ms(200));
        let mut r = CappedBackoff::registration();
        assert_eq!(r.nth(20), Some(Duration::from_secs(30)));
    }
}
