//! Operator telemetry: Prometheus metrics and the HTTP endpoints /metrics,
//! /healthz (the process runs) and /readyz (standby, or leader with synced
//! caches).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the operator exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciliations started.
    pub reconciles: IntCounter,
    /// Failed reconciliations by reason.
    pub errors: IntCounterVec,
    /// Reconciliation duration.
    pub duration: Histogram,
    /// ZmqProxy objects in the caches.
    pub managed: IntGauge,
    /// 1 while this process holds the Lease.
    pub is_leader: IntGauge,
    ready: Arc<AtomicBool>,
    leading: Arc<AtomicBool>,
}

/// Errors creating the metrics (a duplicate registration is a programming error).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers the metrics (plus process metrics).
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "zmq_proxy_operator_reconciles_total",
            "Reconciliations started",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_operator_reconcile_errors_total",
                "Failed reconciliations by reason",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "zmq_proxy_operator_reconcile_duration_seconds",
                "Reconciliation duration",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let managed = IntGauge::new(
            "zmq_proxy_operator_managed_objects",
            "ZmqProxy objects watched",
        )?;
        let is_leader = IntGauge::new(
            "zmq_proxy_operator_is_leader",
            "1 while this replica holds the Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(managed.clone()))?;
        registry.register(Box::new(is_leader.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            managed,
            is_leader,
            ready: Arc::new(AtomicBool::new(false)),
            leading: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Records leadership; a new leader is not ready until its caches sync.
    pub fn set_leader(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        self.is_leader.set(i64::from(leading));
        if !leading {
            self.ready.store(false, Ordering::SeqCst);
        }
    }

    /// Records that every controller cache has synced.
    pub fn set_synced(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Ready: a standby replica always (it is healthy and waiting); the
    /// leader once its caches hold the cluster state.
    pub fn is_ready(&self) -> bool {
        !self.leading.load(Ordering::SeqCst) || self.ready.load(Ordering::SeqCst)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

async fn metrics(State(m): State<Metrics>) -> String {
    m.render()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Metrics>) -> (StatusCode, &'static str) {
    if m.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// The HTTP router serving the three endpoints.
pub fn router(m: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(m)
}

/// Serves [`router`] on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, m: Metrics) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(m)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_leadership_and_sync() {
        let m = Metrics::new().unwrap();
        assert!(m.is_ready(), "a standby is ready");
        m.set_leader(true);
        assert!(!m.is_ready(), "a new leader waits for its caches");
        m.set_synced();
        assert!(m.is_ready());
        m.reconciles.inc();
        m.errors.with_label_values(&["api"]).inc();
        let text = m.render();
        assert!(text.contains("zmq_proxy_operator_reconciles_total 1"));
        assert!(text.contains("zmq_proxy_operator_reconcile_errors_total{reason=\"api\"} 1"));
        assert!(text.contains("zmq_proxy_operator_is_leader 1"));
    }
}
