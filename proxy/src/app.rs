//! The proxy process: wires settings, sockets, forwarding loops, telemetry,
//! the matchmaker and shutdown together, and runs until a signal.
//!
//! Order matters and is the contract with Kubernetes: bind every socket and
//! the HTTP listener, print the listening line, start the loops, register,
//! and only then report ready. On SIGTERM/SIGINT: `/readyz` turns 503 at
//! once, the matchmaker entry is drained and removed, the loops keep
//! forwarding until traffic is quiet or the grace period ends, then sockets
//! close with a linger bounded by what is left of the grace period.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::CappedBackoff;
use crate::config::{Engine, RouterMode, Settings, SocketOptions};
use crate::curve::{IdentityCheck, Refusal, SecretKey, SharedKeys, ZapHandler};
use crate::loop_thread::ForwardingLoop;
use crate::matchmaker::{self, Matchmaker, ProxyAddresses};
use crate::native::router::{out_limit_for_hwm, DEFAULT_MAX_MESSAGE};
use crate::native::{
    CurveServer, Duplicates, Heartbeat, Keepalive, Listener, NativeConfig, NativeRouter, Publisher,
    PublisherConfig, Relay, RelayConfig, Timeouts,
};
use crate::publisher::LocalPublisher;
use crate::router::{CurveIdentities, RouterConfig, RouterLoop};
use crate::shutdown::Shutdown;
use crate::sockets::{
    bind, make_curve_server, new_socket, proxy_identity, ProxySocket, SocketError,
};
use crate::telemetry::{serve_http, Health, Metrics, PeerMonitor, TelemetryError};

mod matchmaker_setup;

/// Time the deregistration gets even when the grace period is over.
const DEREGISTER_AT_LEAST: Duration = Duration::from_secs(2);

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A socket could not be created or bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Metrics, HTTP or socket monitor setup failed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// A thread could not be started or the signal handler installed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A CURVE key file cannot be used.
    #[error(transparent)]
    Curve(#[from] crate::curve::FileError),
    /// The ZAP handler cannot bind.
    #[error("the CURVE ZAP handler cannot bind: {0}")]
    Zap(zmq::Error),
    /// A forwarding loop stopped on its own.
    #[error("a forwarding loop stopped unexpectedly")]
    LoopDied,
}

/// The endpoints the proxy bound, as printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// Frontend ROUTER endpoint (not in local-publisher mode).
    pub frontend: Option<String>,
    /// Backend ROUTER endpoint (double-router mode).
    pub backend: Option<String>,
    /// PUB endpoint (pub/sub on, or local publisher).
    pub publisher: Option<String>,
    /// HTTP address of /metrics, /healthz, /readyz.
    pub metrics: SocketAddr,
}

impl Listening {
    /// The one parseable line tests and scripts read:
    /// `zmq-proxy listening frontend=tcp://... backend=... publisher=... metrics=http://...`.
    pub fn line(&self) -> String {
        let mut line = String::from("zmq-proxy listening");
        for (key, value) in [
            ("frontend", &self.frontend),
            ("backend", &self.backend),
            ("publisher", &self.publisher),
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        line.push_str(&format!(" metrics=http://{}", self.metrics));
        line
    }
}

fn port_of(endpoint: &Option<(String, u16)>) -> Option<u16> {
    endpoint.as_ref().map(|(_, p)| *p)
}

/// Runs the proxy until SIGTERM/SIGINT and a completed drain.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let shutdown = Shutdown::new();
    let metrics = Metrics::new()?;
    let health = Health::new(shutdown.clone());
    let activity = Arc::new(AtomicU64::new(0));
    let ctx = zmq::Context::new();
    if let Err(error) = ctx.set_io_threads(settings.io_threads) {
        tracing::warn!(%error, "cannot set libzmq I/O threads");
    }
    let matchmaker: Arc<dyn Matchmaker> = match matchmaker_setup::from_settings(&settings) {
        Ok(m) => m,
        Err(error) => {
            // Forwarding does not need a matchmaker; running unregistered
            // beats not running.
            tracing::error!(%error, "matchmaker unavailable; falling back to the static matchmaker");
            Arc::new(matchmaker::in_process::StaticMatchmaker::new())
        }
    };
    let mut monitor = PeerMonitor::new();
    let mut threads = Vec::new();
    let opts = &settings.sockets;
    let addr = settings.bind_address.as_str();
    let spawn_err = |source| AppError::Io {
        what: "start a forwarding thread",
        source,
    };

    let native = settings.engine == Engine::Native;
    let (listening_sockets, registration) = if settings.local_publisher && native {
        let (publ, pub_ep, pub_port) = native_publisher(&settings, &metrics)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let fixed: BTreeSet<String> = settings.connect_publishers.iter().cloned().collect();
        // The receiver is in the loop; a send can only fail once it stopped.
        let _ = tx.send(fixed.clone());
        spawn_upstream_watch(Arc::clone(&matchmaker), fixed, tx, shutdown.clone());
        let relay = Relay::new(
            publ,
            metrics.socket("subscriber"),
            rx,
            RelayConfig {
                max_message: DEFAULT_MAX_MESSAGE,
                timeouts: timeouts(opts),
                linger_ms: opts.linger_ms,
            },
            shutdown.clone(),
            Arc::clone(&activity),
        );
        threads.push(relay.spawn(health.loop_guard()).map_err(spawn_err)?);
        health.registered.store(true, Ordering::SeqCst);
        ((None, None, Some((pub_ep, pub_port))), None)
    } else if settings.local_publisher {
        let mut open = SocketOpener::new(&ctx, &settings, &metrics, &mut monitor);
        let sub = open.socket(zmq::SUB, "subscriber", None)?;
        let (publ, pub_ep) = open.bound(zmq::PUB, "publisher", None, settings.publisher_port)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let fixed: BTreeSet<String> = settings.connect_publishers.iter().cloned().collect();
        // The receiver is in the loop; a send can only fail once it stopped.
        let _ = tx.send(fixed.clone());
        spawn_upstream_watch(Arc::clone(&matchmaker), fixed, tx, shutdown.clone());
        let lp = LocalPublisher::new(
            sub,
            publ,
            rx,
            settings.batch,
            opts.linger_ms,
            shutdown.clone(),
            Arc::clone(&activity),
        );
        threads.push(lp.spawn(health.loop_guard()).map_err(spawn_err)?);
        health.registered.store(true, Ordering::SeqCst);
        ((None, None, Some(pub_ep)), None)
    } else if native {
        let (curve, curve_key) = match &settings.curve {
            Some(files) => {
                let (secret, keys) = load_curve(files, &metrics, &shutdown)?;
                let server = CurveServer::new(&secret, keys, metrics.clone());
                (Some(server), Some(secret.public()))
            }
            None => (None, None),
        };
        let io_err = |what| move |source| AppError::Io { what, source };
        let fe_id = proxy_identity(&settings.host);
        let be_id = proxy_identity(&settings.host);
        let (front, fe_ep, fe_port) = Listener::bind(
            addr,
            settings.frontend_port,
            "frontend",
            metrics.socket("frontend"),
        )
        .map_err(io_err("bind the frontend"))?;
        let (back, be_ep) = if settings.mode == RouterMode::DoubleRouter {
            let (back, ep, port) = Listener::bind(
                addr,
                settings.backend_port,
                "backend",
                metrics.socket("backend"),
            )
            .map_err(io_err("bind the backend"))?;
            (Some(back), Some((ep, port)))
        } else {
            (None, None)
        };
        let (publ, pub_ep) = if settings.pubsub {
            let (publ, ep, port) = native_publisher(&settings, &metrics)?;
            let publ = match &curve {
                Some(curve) => publ.with_curve(curve.clone()),
                None => publ,
            };
            (Some(publ), Some((ep, port)))
        } else {
            (None, None)
        };
        let proxy = ProxyAddresses {
            host: settings.host.clone(),
            frontend_port: fe_port,
            backend_port: port_of(&be_ep),
            publisher_port: port_of(&pub_ep),
            curve_key,
        };
        let router = NativeRouter::new(
            front,
            back,
            publ,
            NativeConfig {
                pubsub: settings.pubsub,
                ack_pub_sub: settings.ack_pub_sub && settings.pubsub,
                frontend_identity: fe_id,
                backend_identity: be_id,
                send_timeout: settings.send_timeout,
                unroutable_wait: settings.unroutable_wait,
                out_limit: out_limit_for_hwm(opts.hwm),
                max_message: DEFAULT_MAX_MESSAGE,
                // As the libzmq engine, whose ROUTERs set ROUTER_HANDOVER
                // (sockets.rs): a reconnecting peer replaces its stale
                // connection.
                duplicates: Duplicates::Handover,
                linger_ms: opts.linger_ms,
                keepalive: keepalive(opts),
                heartbeat: timeouts(opts).heartbeat,
                handshake_timeout: timeouts(opts).handshake,
            },
            shutdown.clone(),
            Arc::clone(&activity),
        );
        let router = match curve {
            Some(curve) => router.with_curve(curve),
            None => router,
        };
        threads.push(router.spawn(health.loop_guard()).map_err(spawn_err)?);
        ((Some((fe_ep, fe_port)), be_ep, pub_ep), Some(proxy))
    } else {
        let curve = match &settings.curve {
            Some(files) => Some(start_curve(files, &ctx, &metrics, &shutdown, &mut threads)?),
            None => None,
        };
        let fe_id = proxy_identity(&settings.host);
        let mut open = SocketOpener::new(&ctx, &settings, &metrics, &mut monitor);
        open.curve = curve.as_ref().map(|(secret, _)| secret);
        let (front, fe_ep) = open.bound(
            zmq::ROUTER,
            "frontend",
            Some(&fe_id),
            settings.frontend_port,
        )?;
        let (back, be_ep) = if settings.mode == RouterMode::DoubleRouter {
            let be_id = proxy_identity(&settings.host);
            let (back, ep) =
                open.bound(zmq::ROUTER, "backend", Some(&be_id), settings.backend_port)?;
            (Some(back), Some(ep))
        } else {
            (None, None)
        };
        let (publ, pub_ep) = if settings.pubsub {
            let (publ, ep) = open.bound(zmq::PUB, "publisher", None, settings.publisher_port)?;
            (Some(publ), Some(ep))
        } else {
            (None, None)
        };
        let proxy = ProxyAddresses {
            host: settings.host.clone(),
            frontend_port: fe_ep.1,
            backend_port: port_of(&be_ep),
            publisher_port: port_of(&pub_ep),
            curve_key: curve.as_ref().map(|(secret, _)| secret.public()),
        };
        let router = RouterLoop::new(
            front,
            back,
            publ,
            RouterConfig {
                pubsub: settings.pubsub,
                ack_pub_sub: settings.ack_pub_sub && settings.pubsub,
                batch: settings.batch,
                frontend_identity: fe_id,
                linger_ms: opts.linger_ms,
                send_timeout: settings.send_timeout,
                unroutable_wait: settings.unroutable_wait,
            },
            shutdown.clone(),
            Arc::clone(&activity),
        );
        let router = match curve {
            Some((_, keys)) => router.with_curve(CurveIdentities {
                check: IdentityCheck::new(keys),
                metrics: metrics.clone(),
            }),
            None => router,
        };
        threads.push(router.spawn(health.loop_guard()).map_err(spawn_err)?);
        ((Some(fe_ep), be_ep, pub_ep), Some(proxy))
    };
    threads.push(
        monitor
            .spawn(shutdown.clone())
            .map_err(|source| AppError::Io {
                what: "start the socket monitor",
                source,
            })?,
    );

    let (metrics_addr, http) = serve_http(
        settings.metrics_address,
        metrics.clone(),
        Arc::clone(&health),
        shutdown.clone(),
    )
    .await?;
    let http = tokio::spawn(http);
    let (fe, be, publ) = listening_sockets;
    let listening = Listening {
        frontend: fe.map(|(e, _)| e),
        backend: be.map(|(e, _)| e),
        publisher: publ.map(|(e, _)| e),
        metrics: metrics_addr,
    };
    println!("{}", listening.line());
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    tracing::info!(
        frontend = ?listening.frontend,
        backend = ?listening.backend,
        publisher = ?listening.publisher,
        metrics = %listening.metrics,
        host = %settings.host,
        matchmaker = matchmaker.backend(),
        "zmq-proxy listening"
    );
    health.set_bound();

    let registration_task = registration.clone().map(|proxy| {
        tokio::spawn(matchmaker::maintain_proxy_registration(
            Arc::clone(&matchmaker),
            proxy,
            settings.liveness,
            Arc::clone(&health.registered),
            shutdown.clone(),
        ))
    });

    let outcome = wait_for_signal_or_failure(&health).await;
    let started = Instant::now();
    shutdown.begin_drain_within(settings.grace_period);
    tracing::info!(grace = ?settings.grace_period, "draining: not ready, deregistering, still forwarding");

    if let Some(task) = registration_task {
        let _ = task.await;
    }
    // Clients stop choosing the proxy first (EndpointSlice: ready=false,
    // serving=true, terminating=true, as for a terminating pod; Redis: the
    // registration goes), while it still forwards what is in flight; the
    // registration itself goes once traffic is quiet.
    if let Some(proxy) = &registration {
        let remaining = shutdown.remaining().unwrap_or_default();
        match tokio::time::timeout(remaining, matchmaker.drain_proxy(proxy)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot mark the proxy as draining"),
            Err(_) => tracing::warn!(
                "marking the proxy as draining did not finish within the grace period"
            ),
        }
    }
    if outcome.is_ok() {
        wait_until_quiet(&activity, settings.drain_quiet, &shutdown).await;
    }
    if let Some(proxy) = &registration {
        // Past the grace period too, if need be: the pod's termination grace
        // has a margin for this (operator: TERMINATION_MARGIN_SECONDS).
        let budget = shutdown
            .remaining()
            .unwrap_or_default()
            .max(DEREGISTER_AT_LEAST);
        match tokio::time::timeout(budget, matchmaker.unregister_proxy(proxy)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot deregister the proxy"),
            Err(_) => tracing::warn!(?budget, "deregistration did not finish in time"),
        }
    }
    shutdown.stop();
    // Closing sockets ends in zmq_ctx_term, which waits for libzmq to let
    // go of every pipe; bound that wait so a stuck close cannot keep the
    // process past its grace period (exiting main ends the thread).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let joiner = std::thread::Builder::new()
        .name("zmq-close".into())
        .spawn(move || {
            for t in threads {
                let _ = t.join();
            }
            drop(ctx);
            let _ = done_tx.send(());
        });
    if joiner.is_ok() {
        let wait = shutdown.remaining().unwrap_or_default() + Duration::from_secs(1);
        if tokio::time::timeout(wait, done_rx).await.is_err() {
            tracing::warn!(?wait, "sockets did not close in time; exiting anyway");
        }
    }
    let _ = http.await;
    tracing::info!(drained_in = ?started.elapsed(), forwarded = activity.load(Ordering::Relaxed), "stopped");
    outcome
}

/// A bound endpoint and its port.
type Endpoint = (String, u16);

/// TCP keepalive of the native engine's accepted connections, from the
/// libzmq socket options.
fn keepalive(opts: &SocketOptions) -> Keepalive {
    Keepalive {
        mode: opts.tcp_keepalive,
        idle: opts.tcp_keepalive_idle,
        interval: opts.tcp_keepalive_intvl,
        count: opts.tcp_keepalive_cnt,
    }
}

/// Heartbeats and the handshake deadline of the native engine's
/// connections, from the libzmq socket options.
fn timeouts(opts: &SocketOptions) -> Timeouts {
    Timeouts {
        heartbeat: Heartbeat::from_millis(opts.heartbeat_ivl_ms, opts.heartbeat_timeout_ms),
        handshake: u64::try_from(opts.handshake_ivl_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis),
    }
}

/// Reads the CURVE key files and starts the authorized-keys reload;
/// returns the secret key and the shared key set (both engines).
fn load_curve(
    files: &crate::config::CurveFiles,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<(SecretKey, SharedKeys), AppError> {
    let secret = crate::curve::load_secret_key(&files.secret_key_file)?;
    let public = secret.public();
    let (authorized, text) = crate::curve::load_authorized_keys(&files.authorized_keys)?;
    tracing::info!(public_key = %public, authorized = authorized.len(), "CURVE on: frontend, backend and publisher are CURVE servers");
    let keys = SharedKeys::new(authorized);
    tokio::spawn(crate::curve::watch_authorized_keys(
        files.authorized_keys.clone(),
        text,
        keys.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Ok((secret, keys))
}

/// The libzmq engine's CURVE: [`load_curve`], then the ZAP handler, bound
/// before any socket binds (see [`crate::curve::zap`]); returns the secret
/// key for the sockets and the shared key set for the router's identity
/// check.
fn start_curve(
    files: &crate::config::CurveFiles,
    ctx: &zmq::Context,
    metrics: &Metrics,
    shutdown: &Shutdown,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<(SecretKey, SharedKeys), AppError> {
    let (secret, keys) = load_curve(files, metrics, shutdown)?;
    let zap = ZapHandler::bind(ctx, keys.clone(), metrics.clone(), shutdown.clone())
        .map_err(AppError::Zap)?;
    threads.push(zap.spawn().map_err(|source| AppError::Io {
        what: "start the ZAP handler",
        source,
    })?);
    Ok((secret, keys))
}

/// A bound native PUB (the native engine's central PUB, or its local
/// publisher's), with the router's per-receiver output bound.
fn native_publisher(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(Publisher, String, u16), AppError> {
    let opts = &settings.sockets;
    Publisher::bind(
        &settings.bind_address,
        settings.publisher_port,
        metrics.socket("publisher"),
        PublisherConfig {
            out_limit: out_limit_for_hwm(opts.hwm),
            max_message: DEFAULT_MAX_MESSAGE,
            keepalive: keepalive(opts),
            timeouts: timeouts(opts),
        },
    )
    .map_err(|source| AppError::Io {
        what: "bind the publisher",
        source,
    })
}

/// Opens every libzmq-engine socket the same way: created with the proxy's
/// socket options, watched by the peer monitor (its `connected` gauge), and
/// bound to the proxy's address when it listens.
struct SocketOpener<'a> {
    ctx: &'a zmq::Context,
    settings: &'a Settings,
    metrics: &'a Metrics,
    monitor: &'a mut PeerMonitor,
    /// The secret key that makes the bound sockets CURVE servers.
    curve: Option<&'a SecretKey>,
}

impl<'a> SocketOpener<'a> {
    fn new(
        ctx: &'a zmq::Context,
        settings: &'a Settings,
        metrics: &'a Metrics,
        monitor: &'a mut PeerMonitor,
    ) -> SocketOpener<'a> {
        SocketOpener {
            ctx,
            settings,
            metrics,
            monitor,
            curve: None,
        }
    }

    /// A configured, monitored socket named `name` (its metrics label).
    fn socket(
        &mut self,
        kind: zmq::SocketType,
        name: &'static str,
        identity: Option<&[u8]>,
    ) -> Result<ProxySocket, AppError> {
        let socket = new_socket(self.ctx, kind, &self.settings.sockets, identity)?;
        let counters = self.metrics.socket(name);
        // Only CURVE sockets have handshakes that can fail on the proxy's
        // side for a reason worth counting (a wrong server key, say).
        let handshake_failed = self.curve.map(|_| {
            self.metrics
                .curve_refused_counter(name, Refusal::Handshake.as_str())
        });
        self.monitor.watch(
            self.ctx,
            &socket,
            name,
            counters.connected.clone(),
            handshake_failed,
        )?;
        Ok(ProxySocket::new(socket, name, counters))
    }

    /// [`SocketOpener::socket`], bound to `port` of the bind address.
    fn bound(
        &mut self,
        kind: zmq::SocketType,
        name: &'static str,
        identity: Option<&[u8]>,
        port: u16,
    ) -> Result<(ProxySocket, Endpoint), AppError> {
        let socket = self.socket(kind, name, identity)?;
        if let Some(secret) = self.curve {
            make_curve_server(socket.socket(), secret.as_bytes(), name)?;
        }
        let endpoint = bind(socket.socket(), &self.settings.bind_address, port)?;
        Ok((socket, endpoint))
    }
}

/// Waits for SIGTERM or SIGINT (Ok) or for a forwarding loop to die (Err).
async fn wait_for_signal_or_failure(health: &Health) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|source| AppError::Io {
        what: "SIGTERM handler",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| AppError::Io {
        what: "SIGINT handler",
        source,
    })?;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT received"); return Ok(()) }
            _ = check.tick() => {
                if !health.is_alive() {
                    tracing::error!("a forwarding loop stopped; shutting down");
                    return Err(AppError::LoopDied);
                }
            }
        }
    }
}

/// Returns once no message was handled for `quiet`, or when the drain deadline passes.
async fn wait_until_quiet(activity: &AtomicU64, quiet: Duration, shutdown: &Shutdown) {
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    loop {
        let remaining = shutdown.remaining().unwrap_or_default();
        if remaining.is_zero() {
            tracing::warn!("grace period over while traffic was still flowing");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
        let now = activity.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            tracing::info!(quiet = ?quiet, "traffic quiet; stopping");
            return;
        }
    }
}

/// Feeds the local publisher the central publishers to subscribe to: the
/// fixed list plus every publisher the matchmaker lists, as it changes.
fn spawn_upstream_watch(
    matchmaker: Arc<dyn Matchmaker>,
    fixed: BTreeSet<String>,
    tx: std::sync::mpsc::Sender<BTreeSet<String>>,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let mut backoff = CappedBackoff::registration();
        loop {
            let mut rx = match matchmaker.watch_proxies().await {
                Ok(rx) => rx,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch proxies; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = shutdown.stopping() => return,
                    }
                    continue;
                }
            };
            loop {
                let mut wanted = fixed.clone();
                wanted.extend(
                    rx.borrow_and_update()
                        .iter()
                        .filter_map(|p| p.publisher_endpoint()),
                );
                if tx.send(wanted).is_err() {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = shutdown.stopping() => return,
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_parseable() {
        let l = Listening {
            frontend: Some("tcp://127.0.0.1:1".into()),
            backend: None,
            publisher: Some("tcp://127.0.0.1:3".into()),
            metrics: "127.0.0.1:9".parse().unwrap(),
        };
        assert_eq!(l.line(), "zmq-proxy listening frontend=tcp://127.0.0.1:1 publisher=tcp://127.0.0.1:3 metrics=http://127.0.0.1:9");
    }

    /// Every suite starts the proxy through the harness's launcher, which
    /// reads this line back: the two must agree.
    #[test]
    fn the_test_launcher_reads_the_line_back() {
        let l = Listening {
            frontend: Some("tcp://10.0.0.1:50001".into()),
            backend: Some("tcp://10.0.0.1:50002".into()),
            publisher: None,
            metrics: "10.0.0.1:9090".parse().unwrap(),
        };
        let parsed = harness::proxy::Listening::parse(&l.line()).unwrap();
        assert_eq!(parsed.frontend, l.frontend);
        assert_eq!(parsed.backend, l.backend);
        assert_eq!(parsed.publisher, l.publisher);
        assert_eq!(parsed.metrics, l.metrics.to_string());
    }
}
