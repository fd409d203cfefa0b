//! Forwarding loops on threads of their own. ZeroMQ sockets (and the native
//! engine's poll) belong to one thread, so every loop (libzmq router, native
//! router, local publishers) runs on a dedicated, named thread, marked
//! running in the health checks by a [`LoopGuard`] for as long as it lives.

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
