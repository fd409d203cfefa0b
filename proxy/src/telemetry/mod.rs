//! Telemetry: Prometheus metrics, the `/metrics` `/healthz` `/readyz` HTTP
//! endpoints, peer counts from the ZeroMQ socket monitor, and a rate limit
//! for logs about bad input.
//!
//! The forwarding loops never look a metric up by label: [`Metrics::socket`]
//! resolves every (socket, type) and (socket, reason) counter once at start,
//! so counting on the hot path is one atomic add.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::{DropReason, MessageType};
use crate::shutdown::Shutdown;

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

/// The process's metrics registry and metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    dropped: IntCounterVec,
    connected: IntGaugeVec,
    held: IntGaugeVec,
    timed_out: IntCounterVec,
}

/// Pre-resolved counters of one socket (hot path: one atomic add each).
#[derive(Clone)]
pub struct SocketCounters {
    in_messages: [IntCounter; 6],
    in_bytes: [IntCounter; 6],
    out_messages: [IntCounter; 6],
    out_bytes: [IntCounter; 6],
    dropped: [IntCounter; 10],
    /// Connected peers, kept by the socket monitor.
    pub connected: IntGauge,
    /// Messages held for a receiver on this socket that is not connected yet.
    pub held: IntGauge,
    /// Peers closed for silence after a heartbeat PING, or for a handshake
    /// not finished in time (native engine; libzmq does not report these).
    pub timed_out: IntCounter,
}

impl SocketCounters {
    /// Counts a valid message received.
    #[inline]
    pub fn received(&self, msg_type: MessageType, bytes: usize) {
        self.in_messages[msg_type.index()].inc();
        self.in_bytes[msg_type.index()].inc_by(bytes as u64);
    }

    /// Counts a message sent.
    #[inline]
    pub fn sent(&self, msg_type: MessageType, bytes: usize) {
        self.out_messages[msg_type.index()].inc();
        self.out_bytes[msg_type.index()].inc_by(bytes as u64);
    }

    /// Counts a dropped message.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason.index()].inc();
    }
}

/// Message and byte counts of one batch of a forwarding loop, added to the
/// shared counters once per batch: per message, two plain adds instead of
/// two atomic ones on cache lines the metrics endpoint also reads.
#[derive(Debug, Default)]
pub struct Tally {
    messages: [u64; 6],
    bytes: [u64; 6],
}

impl Tally {
    /// Counts one message.
    #[inline]
    pub fn add(&mut self, msg_type: MessageType, bytes: usize) {
        self.messages[msg_type.index()] += 1;
        self.bytes[msg_type.index()] += bytes as u64;
    }

    /// Adds the counts to `counters` as received, and starts over.
    pub fn flush_received(&mut self, counters: &SocketCounters) {
        self.flush(&counters.in_messages, &counters.in_bytes);
    }

    /// Adds the counts to `counters` as sent, and starts over.
    pub fn flush_sent(&mut self, counters: &SocketCounters) {
        self.flush(&counters.out_messages, &counters.out_bytes);
    }

    fn flush(&mut self, messages: &[IntCounter; 6], bytes: &[IntCounter; 6]) {
        for i in 0..6 {
            if self.messages[i] > 0 {
                messages[i].inc_by(self.messages[i]);
                bytes[i].inc_by(self.bytes[i]);
            }
        }
        *self = Tally::default();
    }
}

impl Metrics {
    /// Creates the registry with build info and process metrics.
    pub fn new() -> Result<Metrics, TelemetryError> {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_messages_total",
                "Messages received (in) and sent (out), per socket and message type",
            ),
            &["socket", "direction", "type"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_bytes_total",
                "Bytes (all frames) received and sent, per socket and message type",
            ),
            &["socket", "direction", "type"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_dropped_total",
                "Messages dropped, per socket they arrived on (or were sent to, for unroutable/hwm) and reason",
            ),
            &["socket", "reason"],
        )?;
        let connected = IntGaugeVec::new(
            Opts::new(
                "zmq_proxy_connected_peers",
                "Connected peers per socket (socket monitor)",
            ),
            &["socket"],
        )?;
        let held = IntGaugeVec::new(
            Opts::new(
                "zmq_proxy_held_messages",
                "Messages held for a receiver that is not connected (yet), per socket they wait to be sent on",
            ),
            &["socket"],
        )?;
        let timed_out = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_peers_timed_out_total",
                "Peers closed for not answering a heartbeat or not finishing the handshake in time, per socket (native engine)",
            ),
            &["socket"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("zmq_proxy_build_info", "Build information; always 1"),
            &["version", "libzmq", "protocol"],
        )?;
        let (major, minor, patch) = zmq::version();
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &format!("{major}.{minor}.{patch}"),
                "1.0",
            ])
            .set(1);
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        registry.register(Box::new(build))?;
        // Process metrics keep their conventional unprefixed names (process_*).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            messages,
            bytes,
            dropped,
            connected,
            held,
            timed_out,
        })
    }

    /// Resolves every counter of socket `name` (e.g. "frontend").
    pub fn socket(&self, name: &str) -> SocketCounters {
        let per_type = |family: &IntCounterVec, direction: &str| -> [IntCounter; 6] {
            MessageType::ALL.map(|t| family.with_label_values(&[name, direction, t.as_str()]))
        };
        SocketCounters {
            in_messages: per_type(&self.messages, "in"),
            in_bytes: per_type(&self.bytes, "in"),
            out_messages: per_type(&self.messages, "out"),
            out_bytes: per_type(&self.bytes, "out"),
            dropped: DropReason::ALL.map(|r| self.dropped.with_label_values(&[name, r.as_str()])),
            connected: self.connected.with_label_values(&[name]),
            held: self.held.with_label_values(&[name]),
            timed_out: self.timed_out.with_label_values(&[name]),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric names, which are constants here.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

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

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    health: Arc<Health>,
}

/// Binds the HTTP listener (port 0 = random) and returns its address and
/// the server future, which runs until `shutdown` reaches `Stopping`.
pub async fn serve_http(
    address: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    TelemetryError,
> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| TelemetryError::Listen { address, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| TelemetryError::Listen { address, source })?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(HttpState { metrics, health });
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.stopping().await })
            .await
    };
    Ok((local, server))
}

async fn metrics_handler(
    State(state): State<HttpState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz_handler(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "forwarding loop not running\n",
        )
    }
}

async fn readyz_handler(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Watches ZeroMQ socket monitor events and keeps the connected-peers gauges.
pub struct PeerMonitor {
    watched: Vec<(zmq::Socket, IntGauge)>,
}

impl PeerMonitor {
    /// An empty monitor.
    pub fn new() -> PeerMonitor {
        PeerMonitor {
            watched: Vec::new(),
        }
    }

    /// Starts monitoring `socket` (call before it binds or connects, from
    /// the thread that owns it); `gauge` counts its connected peers.
    pub fn watch(
        &mut self,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        name: &str,
        gauge: IntGauge,
    ) -> Result<(), TelemetryError> {
        let err = |source| TelemetryError::Monitor {
            socket: name.to_string(),
            source,
        };
        let endpoint = format!("inproc://monitor.{name}.{}", uuid::Uuid::new_v4());
        let events = zmq::SocketEvent::ACCEPTED.to_raw()
            | zmq::SocketEvent::CONNECTED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw();
        socket.monitor(&endpoint, events as i32).map_err(err)?;
        let pair = ctx.socket(zmq::PAIR).map_err(err)?;
        pair.connect(&endpoint).map_err(err)?;
        self.watched.push((pair, gauge));
        Ok(())
    }

    /// Runs the monitor on its own thread until `shutdown` stops.
    pub fn spawn(self, shutdown: Shutdown) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("zmq-monitor".into())
            .spawn(move || self.run(shutdown))
    }

    fn run(self, shutdown: Shutdown) {
        if self.watched.is_empty() {
            return;
        }
        let mut event = zmq::Message::new();
        while !shutdown.is_stopping() {
            let mut items: Vec<zmq::PollItem> = self
                .watched
                .iter()
                .map(|(s, _)| s.as_poll_item(zmq::POLLIN))
                .collect();
            if zmq::poll(&mut items, 100).is_err() {
                return;
            }
            let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            for ((pair, gauge), ready) in self.watched.iter().zip(readable) {
                if !ready {
                    continue;
                }
                while pair.recv(&mut event, zmq::DONTWAIT).is_ok() {
                    // Frame 1: u16 event + u32 value; frame 2: the endpoint.
                    if event.len() >= 2 {
                        match u16::from_le_bytes([event[0], event[1]]) {
                            e if e == zmq::SocketEvent::ACCEPTED.to_raw()
                                || e == zmq::SocketEvent::CONNECTED.to_raw() =>
                            {
                                gauge.inc()
                            }
                            e if e == zmq::SocketEvent::DISCONNECTED.to_raw() => gauge.dec(),
                            _ => {}
                        }
                    }
                    while event.get_more() {
                        if pair.recv(&mut event, zmq::DONTWAIT).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Default for PeerMonitor {
    fn default() -> Self {
        PeerMonitor::new()
    }
}

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

    #[test]
    fn a_tally_adds_its_batch_once_and_starts_over() {
        let m = Metrics::new().unwrap();
        let c = m.socket("backend");
        let mut t = Tally::default();
        t.add(MessageType::Cast, 100);
        t.add(MessageType::Cast, 20);
        t.add(MessageType::Reply, 7);
        t.flush_sent(&c);
        t.flush_sent(&c); // empty now: adds nothing
        let text = m.render();
        for line in [
            r#"zmq_proxy_messages_total{direction="out",socket="backend",type="cast"} 2"#,
            r#"zmq_proxy_bytes_total{direction="out",socket="backend",type="cast"} 120"#,
            r#"zmq_proxy_messages_total{direction="out",socket="backend",type="reply"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        t.add(MessageType::Call, 5);
        t.flush_received(&c);
        assert!(m.render().contains(
            r#"zmq_proxy_messages_total{direction="in",socket="backend",type="call"} 1"#
        ));
    }

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new().unwrap();
        let c = m.socket("frontend");
        c.received(MessageType::Call, 10);
        c.dropped(DropReason::BadType);
        let text = m.render();
        assert!(
            text.contains(
                r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="call"} 1"#
            ),
            "{text}"
        );
        assert!(text
            .contains(r#"zmq_proxy_bytes_total{direction="in",socket="frontend",type="call"} 10"#));
        assert!(text.contains(r#"zmq_proxy_dropped_total{reason="bad_type",socket="frontend"} 1"#));
        assert!(text.contains("zmq_proxy_build_info{"));
    }

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
