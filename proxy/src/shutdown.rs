//! The shutdown state shared by every loop and task of the process.
//!
//! One small type, cloned into each forwarding thread and async task, instead
//! of flags scattered around. Phases only move forward:
//! `Running` -> `Draining` (SIGTERM/SIGINT: not ready, deregistered, still
//! forwarding) -> `Stopping` (loops finish their batch and close their sockets).
//! Threads read the phase with one atomic load per poll wake-up; async tasks
//! await it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Forwarding, ready.
    Running = 0,
    /// Not ready, deregistering, still forwarding what arrives.
    Draining = 1,
    /// Loops exit and close their sockets.
    Stopping = 2,
}

/// Cloneable handle on the shutdown phase.
#[derive(Clone)]
pub struct Shutdown {
    phase: Arc<AtomicU8>,
    tx: Arc<watch::Sender<Phase>>,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A new handle in phase `Running`.
    pub fn new() -> Shutdown {
        Shutdown {
            phase: Arc::new(AtomicU8::new(Phase::Running as u8)),
            tx: Arc::new(watch::channel(Phase::Running).0),
            deadline: Arc::new(Mutex::new(None)),
        }
    }

    /// The current phase (one atomic load; safe on the hot path).
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    /// True once draining or stopping has begun.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// True once loops should exit.
    pub fn is_stopping(&self) -> bool {
        self.phase() >= Phase::Stopping
    }

    /// Moves to `phase` if that is later than the current one.
    pub fn advance(&self, phase: Phase) {
        let previous = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if previous < phase as u8 {
            self.tx.send_replace(phase);
        }
    }

    /// Begins draining.
    pub fn begin_drain(&self) {
        self.advance(Phase::Draining);
    }

    /// Begins draining and sets the time by which the process must be gone
    /// (sockets closing after it get no linger).
    pub fn begin_drain_within(&self, grace: Duration) {
        if let Ok(mut d) = self.deadline.lock() {
            d.get_or_insert(Instant::now() + grace);
        }
        self.begin_drain();
    }

    /// Time left until the drain deadline; `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = *self.deadline.lock().ok()?;
        deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Tells the loops to stop.
    pub fn stop(&self) {
        self.advance(Phase::Stopping);
    }

    /// Completes once draining (or stopping) has begun.
    pub async fn draining(&self) {
        self.wait_for(Phase::Draining).await
    }

    /// Completes once stopping has begun.
    pub async fn stopping(&self) {
        self.wait_for(Phase::Stopping).await
    }

    async fn wait_for(&self, phase: Phase) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so wait_for cannot fail here.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_wake_waiters() {
        let s = Shutdown::new();
        assert_eq!(s.phase(), Phase::Running);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.draining().await }
        });
        s.begin_drain();
        waiter.await.unwrap();
        s.stop();
        s.begin_drain();
        assert_eq!(s.phase(), Phase::Stopping);
        s.stopping().await;
        assert!(s.is_draining() && s.is_stopping());
        assert_eq!(s.remaining(), None);
        let t = Shutdown::new();
        t.begin_drain_within(Duration::from_secs(5));
        assert!(t.is_draining());
        assert!(t.remaining().unwrap() <= Duration::from_secs(5));
    }
}
