//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz` (Kubernetes probes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::{Health, Metrics, TelemetryError};
use crate::shutdown::Shutdown;

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
