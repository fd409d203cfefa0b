//! Forwarding loops on threads of their own. ZeroMQ sockets (and the native
//! engine's poll) belong to one thread, so every loop (libzmq router, native
//! router, local publishers) runs on a dedicated, named thread, marked
//! running in the health checks by a [`LoopGuard`] for as long as it lives.
//! Each loop type implements [`ForwardingLoop`], whose `spawn` is the one
//! way they start.

use std::io;
use std::thread::JoinHandle;

use crate::telemetry::LoopGuard;

/// Runs `body` on a new thread named `name` (as `top` and debuggers show
/// it), holding `guard` until `body` returns or panics: either way the loop
/// then counts as stopped and `/healthz` fails.
pub fn spawn_loop<F>(name: &str, guard: LoopGuard, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _guard = guard;
            body()
        })
}

/// A forwarding loop: owns its sockets, runs on a thread of its own until
/// the shutdown phase reaches `Stopping`.
pub trait ForwardingLoop: Send + Sized + 'static {
    /// The thread's name.
    const THREAD: &'static str;

    /// Runs the loop to its end on the calling thread.
    fn run(self) -> io::Result<()>;

    /// Starts the loop on its own thread (see [`spawn_loop`]); a loop that
    /// fails is logged, and the health checks see it stopped.
    fn spawn(self, guard: LoopGuard) -> io::Result<JoinHandle<()>> {
        spawn_loop(Self::THREAD, guard, move || {
            if let Err(error) = self.run() {
                tracing::error!(%error, thread = Self::THREAD, "forwarding loop failed");
            }
        })
    }
}
