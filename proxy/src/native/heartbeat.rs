//! Finding dead peers: ZMTP heartbeats (RFC 37 PING/PONG) with libzmq's
//! option semantics. (The deadline for unfinished handshakes, libzmq's
//! `ZMQ_HANDSHAKE_IVL`, is checked by the loop at the same time.)
//!
//! A peer that vanishes without closing its connection (its node lost, a
//! partition, a process frozen) would otherwise hold its connection, its
//! identity and its queued output until TCP gives up, which can take hours.
//! As libzmq with `ZMQ_HEARTBEAT_IVL`, a peer quiet for an interval gets a
//! PING; one that then sends nothing at all (no PONG, no message) for the
//! timeout is closed. Any received byte counts as a sign of life, as in
//! libzmq, so a busy peer costs nothing. Pure: the loop passes the times.

use std::time::{Duration, Instant};

use zmtp::Command;

/// A PING command frame with no context, as libzmq sends.
pub fn ping() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    Command::Ping {
        ttl: 0,
        context: b"",
    }
    .encode(&mut out);
    out
}

/// The PONG command frame answering a PING with `context` (every native
/// socket answers PING the same way).
pub fn pong(context: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + context.len());
    Command::pong_for(context).encode(&mut out);
    out
}

/// Heartbeat settings; an interval of zero turns heartbeats off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Quiet time after which a peer gets a PING.
    pub interval: Duration,
    /// Silence after a PING after which the peer is closed.
    pub timeout: Duration,
}

/// A connection's heartbeat state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// When bytes last arrived (or the connection was accepted).
    pub last_heard: Instant,
    /// When the unanswered PING was sent, if one is.
    pub ping_sent: Option<Instant>,
}

/// What a connection needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// Send a PING.
    Ping,
    /// Silent past the timeout: close it.
    Dead,
}

impl Liveness {
    /// A connection heard from at `now`.
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            last_heard: now,
            ping_sent: None,
        }
    }

    /// Bytes arrived at `now`: the peer is alive.
    #[inline]
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
    }
}

impl Heartbeat {
    /// From libzmq's millisecond options: `ivl_ms` <= 0 is off, and a
    /// timeout <= 0 means the interval (as `ZMQ_HEARTBEAT_TIMEOUT`).
    pub fn from_millis(ivl_ms: i32, timeout_ms: i32) -> Option<Heartbeat> {
        let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        if ivl_ms <= 0 {
            return None;
        }
        let interval = ms(ivl_ms);
        let timeout = if timeout_ms <= 0 {
            interval
        } else {
            ms(timeout_ms)
        };
        Some(Heartbeat { interval, timeout })
    }

    /// How often the loop should look: often enough that a PING or a close
    /// is at most a quarter interval (or timeout) late, and not more often
    /// than every 10 ms.
    pub fn check_every(&self) -> Duration {
        (self.interval.min(self.timeout) / 4).max(Duration::from_millis(10))
    }

    /// What `state` needs at `now`. A PING is recorded as sent when this
    /// says [`Due::Ping`].
    pub fn due(&self, state: &mut Liveness, now: Instant) -> Due {
        match state.ping_sent {
            Some(sent) if now.saturating_duration_since(sent) >= self.timeout => Due::Dead,
            Some(_) => Due::Nothing,
            None if now.saturating_duration_since(state.last_heard) >= self.interval => {
                state.ping_sent = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_turns_heartbeats_off_and_the_timeout_defaults_to_the_interval() {
        assert_eq!(Heartbeat::from_millis(0, 500), None);
        assert_eq!(Heartbeat::from_millis(-1, 500), None);
        assert_eq!(
            Heartbeat::from_millis(100, 0),
            Some(Heartbeat {
                interval: ms(100),
                timeout: ms(100)
            })
        );
        assert_eq!(
            Heartbeat::from_millis(100, 300).map(|h| h.timeout),
            Some(ms(300))
        );
    }

    #[test]
    fn a_quiet_peer_is_pinged_once_then_closed_after_the_timeout() {
        let hb = Heartbeat {
            interval: ms(100),
            timeout: ms(300),
        };
        let t0 = Instant::now();
        let mut s = Liveness::new(t0);
        assert_eq!(hb.due(&mut s, t0 + ms(99)), Due::Nothing);
        assert_eq!(hb.due(&mut s, t0 + ms(100)), Due::Ping);
        // One PING outstanding at a time, however long the silence.
        assert_eq!(hb.due(&mut s, t0 + ms(250)), Due::Nothing);
        assert_eq!(hb.due(&mut s, t0 + ms(399)), Due::Nothing);
        assert_eq!(hb.due(&mut s, t0 + ms(400)), Due::Dead);
    }

    #[test]
    fn anything_heard_answers_the_ping() {
        let hb = Heartbeat {
            interval: ms(100),
            timeout: ms(100),
        };
        let t0 = Instant::now();
        let mut s = Liveness::new(t0);
        assert_eq!(hb.due(&mut s, t0 + ms(150)), Due::Ping);
        s.heard(t0 + ms(200));
        assert_eq!(hb.due(&mut s, t0 + ms(260)), Due::Nothing);
        assert_eq!(hb.due(&mut s, t0 + ms(299)), Due::Nothing);
        assert_eq!(hb.due(&mut s, t0 + ms(300)), Due::Ping);
    }

    #[test]
    fn a_busy_peer_is_never_pinged() {
        let hb = Heartbeat {
            interval: ms(100),
            timeout: ms(100),
        };
        let t0 = Instant::now();
        let mut s = Liveness::new(t0);
        for i in 1..50 {
            s.heard(t0 + ms(i * 50));
            assert_eq!(hb.due(&mut s, t0 + ms(i * 50 + 99)), Due::Nothing);
        }
    }

    #[test]
    fn checks_are_a_quarter_of_the_shorter_period_and_not_too_often() {
        let hb = |i, t| Heartbeat {
            interval: ms(i),
            timeout: ms(t),
        };
        assert_eq!(hb(10_000, 30_000).check_every(), ms(2_500));
        assert_eq!(hb(1_000, 400).check_every(), ms(100));
        assert_eq!(hb(20, 20).check_every(), ms(10));
    }
}
