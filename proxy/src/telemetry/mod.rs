//! Telemetry: Prometheus metrics, the `/metrics` `/healthz` `/readyz` HTTP
//! endpoints, peer counts from the ZeroMQ socket monitor, and a rate limit
//! for logs about bad input; one file each:
//! - [`metrics`]: the metric families and the hot path's pre-resolved
//!   counters ([`SocketCounters`], [`Tally`]);
//! - [`health`]: what `/healthz` and `/readyz` report ([`Health`], [`LoopGuard`]);
//! - [`http`]: the HTTP endpoints;
//! - [`monitor`]: connected-peer gauges from libzmq's socket monitor;
//! - [`log_limiter`]: a bound on log lines about bad input.
//!
//! The forwarding loops never look a metric up by label: [`Metrics::socket`]
//! resolves every (socket, type) and (socket, reason) counter once at start,
//! so counting on the hot path is one atomic add.

pub mod health;
pub mod http;
pub mod log_limiter;
pub mod metrics;
pub mod monitor;

use std::net::SocketAddr;

pub use self::health::{Health, LoopGuard};
pub use self::http::serve_http;
pub use self::log_limiter::LogLimiter;
pub use self::metrics::{Metrics, SocketCounters, Tally};
pub use self::monitor::PeerMonitor;

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A metric could not be registered.
    #[error("metrics registry: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// Address asked for.
        address: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A socket monitor could not be set up.
    #[error("socket monitor for {socket}: {source}")]
    Monitor {
        /// Socket name.
        socket: String,
        /// Underlying error.
        source: zmq::Error,
    },
}
