//! What `/healthz` and `/readyz` report: every forwarding loop running
//! (alive), and bound, registered and not draining (ready).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::shutdown::Shutdown;

/// What `/healthz` and `/readyz` report.
pub struct Health {
    loops_expected: AtomicUsize,
    loops_running: AtomicUsize,
    bound: AtomicBool,
    /// Whether the matchmaker registration is in place (set true at start
    /// by callers whose matchmaker needs no registration for readiness).
    pub registered: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Health {
    /// A health state that is neither alive nor ready yet.
    pub fn new(shutdown: Shutdown) -> Arc<Health> {
        Arc::new(Health {
            loops_expected: AtomicUsize::new(0),
            loops_running: AtomicUsize::new(0),
            bound: AtomicBool::new(false),
            registered: Arc::new(AtomicBool::new(false)),
            shutdown,
        })
    }

    /// Marks the sockets bound.
    pub fn set_bound(&self) {
        self.bound.store(true, Ordering::SeqCst);
    }

    /// Declares a loop that will run; the returned guard marks it running
    /// until dropped (also when the loop's thread panics).
    pub fn loop_guard(self: &Arc<Self>) -> LoopGuard {
        self.loops_expected.fetch_add(1, Ordering::SeqCst);
        self.loops_running.fetch_add(1, Ordering::SeqCst);
        LoopGuard {
            health: Arc::clone(self),
        }
    }

    /// Alive: every forwarding loop is running.
    pub fn is_alive(&self) -> bool {
        let expected = self.loops_expected.load(Ordering::SeqCst);
        expected > 0 && self.loops_running.load(Ordering::SeqCst) == expected
    }

    /// Ready: alive, bound, registered, and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.is_alive()
            && self.bound.load(Ordering::SeqCst)
            && self.registered.load(Ordering::SeqCst)
            && !self.shutdown.is_draining()
    }
}

/// Marks a forwarding loop as running while it lives.
pub struct LoopGuard {
    health: Arc<Health>,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.health.loops_running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_loops_binding_registration_and_shutdown() {
        let s = Shutdown::new();
        let h = Health::new(s.clone());
        assert!(!h.is_alive() && !h.is_ready());
        let g = h.loop_guard();
        h.set_bound();
        assert!(h.is_alive() && !h.is_ready());
        h.registered.store(true, Ordering::SeqCst);
        assert!(h.is_ready());
        s.begin_drain();
        assert!(h.is_alive() && !h.is_ready());
        drop(g);
        assert!(!h.is_alive());
    }
}
