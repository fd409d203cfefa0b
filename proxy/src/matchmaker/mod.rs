//! Service discovery: where the proxies are and which server identities serve
//! a target, with liveness.
//!
//! One object-safe async trait, [`Matchmaker`], with one backend per store:
//! [`in_process::StaticMatchmaker`] here (fixed addresses, or an in-process
//! registry: the embedded default), and Redis (oslo's layout) and Kubernetes
//! (EndpointSlices) behind the same trait. The trait's shape follows what
//! those stores can do:
//!
//! - registrations carry a TTL, and the registrant refreshes them
//!   ([`Liveness`], [`maintain_proxy_registration`]): a crashed registrant
//!   disappears when its TTL runs out (Redis EXPIRE; a Kubernetes backend may
//!   use owner references instead and ignore the TTL);
//! - readers either ask once (`proxies`, `servers`) or subscribe to changes
//!   (`watch_proxies`, `watch_servers`, a `tokio::sync::watch` receiver
//!   holding the whole current list), so watch-based stores push changes
//!   without polling and poll-based ones refresh the list behind the receiver;
//! - every method is async and fallible ([`MatchmakerError`]); the forwarding
//!   loops never call a matchmaker, so a store outage never stops forwarding.
//!
//! Methods return [`BoxFuture`] rather than using `async fn` so that
//! `Arc<dyn Matchmaker>` works (backends are chosen at run time by flag).

pub mod composite;
pub mod in_process;
pub mod kubernetes;
pub mod redis;
pub mod url;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::backoff::CappedBackoff;
use crate::curve::PublicKey;
use crate::shutdown::Shutdown;

/// Errors of matchmaker backends.
#[derive(Debug, thiserror::Error)]
pub enum MatchmakerError {
    /// The store could not be reached or answered with an error; retry later.
    #[error("matchmaker store unavailable: {0}")]
    Unavailable(String),
    /// The matchmaker URL or configuration is unusable.
    #[error("invalid matchmaker configuration: {0}")]
    InvalidConfig(String),
    /// This backend cannot do what was asked (e.g. a fixed list cannot be written).
    #[error("not supported by the {backend} matchmaker: {what}")]
    NotSupported {
        /// Backend name.
        backend: &'static str,
        /// The operation refused.
        what: &'static str,
    },
    /// Any other backend failure, with its source.
    #[error("matchmaker backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result type of matchmaker operations.
pub type Result<T> = std::result::Result<T, MatchmakerError>;

/// The addresses one proxy serves, as advertised to clients and servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyAddresses {
    /// Host name or IP clients connect to (oslo `rpc_zmq_host`).
    pub host: String,
    /// Frontend ROUTER port (clients; everyone in single-router mode).
    pub frontend_port: u16,
    /// Backend ROUTER port (servers); `None` in single-router mode.
    pub backend_port: Option<u16>,
    /// PUB port; `None` when the proxy publishes nothing.
    pub publisher_port: Option<u16>,
    /// The proxy's CURVE public key, when it runs CURVE and the backend
    /// carries keys (the Kubernetes backend does, in an annotation of the
    /// proxy's EndpointSlice; oslo's Redis layout has no place for one).
    /// RPC clients use it as the server key of their connection to this
    /// proxy, so each proxy may have its own key.
    pub curve_key: Option<PublicKey>,
}

impl ProxyAddresses {
    fn endpoint(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("tcp://[{}]:{port}", self.host)
        } else {
            format!("tcp://{}:{port}", self.host)
        }
    }

    /// ZeroMQ endpoint of the frontend, e.g. `tcp://10.0.0.5:50001`.
    pub fn frontend_endpoint(&self) -> String {
        self.endpoint(self.frontend_port)
    }

    /// Endpoint servers connect their DEALER to: the backend, or the frontend
    /// in single-router mode.
    pub fn server_endpoint(&self) -> String {
        self.endpoint(self.backend_port.unwrap_or(self.frontend_port))
    }

    /// Endpoint of the PUB socket, if any.
    pub fn publisher_endpoint(&self) -> Option<String> {
        self.publisher_port.map(|p| self.endpoint(p))
    }

    /// Member of oslo's redis `PUBLISHERS` set: `"{host}:{pub},{host}:{fe}"`.
    /// `None` without a publisher.
    pub fn oslo_publishers_member(&self) -> Option<String> {
        self.publisher_port
            .map(|p| format!("{h}:{p},{h}:{f}", h = self.host, f = self.frontend_port))
    }

    /// Member of oslo's redis `ROUTERS` set: `"{host}:{backend}"` (frontend in single-router mode).
    pub fn oslo_routers_member(&self) -> String {
        format!(
            "{}:{}",
            self.host,
            self.backend_port.unwrap_or(self.frontend_port)
        )
    }
}

/// An RPC target: the servers of a topic, or one named server of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Topic (oslo `target.topic`).
    pub topic: String,
    /// Server name (oslo `target.server`), for calls to one host.
    pub server: Option<String>,
}

impl Target {
    /// A target naming all servers of a topic.
    pub fn topic(topic: impl Into<String>) -> Target {
        Target {
            topic: topic.into(),
            server: None,
        }
    }

    /// A target naming one server of a topic.
    pub fn server(topic: impl Into<String>, server: impl Into<String>) -> Target {
        Target {
            topic: topic.into(),
            server: Some(server.into()),
        }
    }

    /// oslo's redis key: `DEALER/{topic}` or `DEALER/{topic}/{server}`.
    pub fn oslo_key(&self) -> String {
        match &self.server {
            Some(s) => format!("DEALER/{}/{}", self.topic, s),
            None => format!("DEALER/{}", self.topic),
        }
    }
}

/// How long a registration lives without refresh, and how often it is refreshed
/// (oslo `zmq_target_expire` / `zmq_target_update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// TTL of a registration.
    pub expire: Duration,
    /// Refresh period; shorter than `expire`.
    pub update: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            expire: Duration::from_secs(300),
            update: Duration::from_secs(180),
        }
    }
}

/// Service discovery for proxies and RPC servers. Object safe: use it as
/// `Arc<dyn Matchmaker>`.
///
/// Server identities are registered under the exact target given; an RPC
/// server serving `Target::server(t, s)` registers its identity under both
/// `Target::topic(t)` and `Target::server(t, s)`, as oslo does.
pub trait Matchmaker: Send + Sync + 'static {
    /// Backend name for logs and metrics (`static`, `redis`, `kubernetes`).
    fn backend(&self) -> &'static str;

    /// Registers (or refreshes) this proxy's addresses for `ttl`.
    fn register_proxy<'a>(
        &'a self,
        proxy: &'a ProxyAddresses,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// First step of a clean shutdown, so clients stop choosing the proxy
    /// while it still forwards what is in flight: backends with a draining
    /// state keep it listed as going away (EndpointSlice conditions
    /// ready=false, serving=true, terminating=true); the others remove the
    /// registration here already.
    fn drain_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        self.unregister_proxy(proxy)
    }

    /// Removes this proxy's registration (idempotent: after
    /// [`Matchmaker::drain_proxy`] removed it already, nothing happens).
    fn unregister_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>>;

    /// The live, ready proxies, sorted.
    fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>>;

    /// Subscribes to the list of live, ready proxies; the receiver holds the
    /// current list at once and is updated on every change.
    fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>>;

    /// Registers (or refreshes) a server identity serving `target` for `ttl`.
    fn register_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// Removes a server identity from `target`.
    fn unregister_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// The live server identities of `target`, sorted.
    fn servers<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Subscribes to the live server identities of `target`.
    fn watch_servers<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>>;
}

/// Keeps this proxy registered until shutdown begins: registers at once,
/// refreshes every `liveness.update`, and retries failures with capped
/// exponential backoff. `registered` tells readiness whether the last attempt
/// succeeded. Returns when `shutdown` starts draining; the caller then calls
/// [`Matchmaker::drain_proxy`] and [`Matchmaker::unregister_proxy`].
pub async fn maintain_proxy_registration(
    matchmaker: Arc<dyn Matchmaker>,
    proxy: ProxyAddresses,
    liveness: Liveness,
    registered: Arc<AtomicBool>,
    shutdown: Shutdown,
) {
    let mut backoff = CappedBackoff::registration();
    loop {
        let wait = match matchmaker.register_proxy(&proxy, liveness.expire).await {
            Ok(()) => {
                if !registered.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        backend = matchmaker.backend(),
                        ?proxy,
                        "registered in the matchmaker"
                    );
                }
                backoff.reset();
                liveness.update
            }
            Err(error) => {
                // Keep the last state: a refresh that fails leaves the old
                // registration alive until its TTL, and forwarding goes on.
                let wait = backoff.next_wait();
                tracing::warn!(backend = matchmaker.backend(), %error, retry_in = ?wait, "matchmaker registration failed");
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.draining() => return,
        }
    }
}

/// A proxy on 127.0.0.1 with consecutive ports from `port`, for the
/// backends' unit tests.
#[cfg(test)]
pub(crate) fn test_proxy(port: u16) -> ProxyAddresses {
    ProxyAddresses {
        host: "127.0.0.1".into(),
        frontend_port: port,
        backend_port: Some(port + 1),
        publisher_port: Some(port + 2),
        curve_key: None,
    }
}

/// Stores `value` in a watch channel's slot only when it differs, for
/// `watch::Sender::send_if_modified`: watchers wake on a change, not on
/// every refresh that found the same list.
pub(crate) fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oslo_members_and_endpoints() {
        let p = ProxyAddresses {
            host: "10.0.0.5".into(),
            frontend_port: 50001,
            backend_port: Some(50002),
            publisher_port: Some(50003),
            curve_key: None,
        };
        assert_eq!(
            p.oslo_publishers_member().as_deref(),
            Some("10.0.0.5:50003,10.0.0.5:50001")
        );
        assert_eq!(p.oslo_routers_member(), "10.0.0.5:50002");
        assert_eq!(p.frontend_endpoint(), "tcp://10.0.0.5:50001");
        assert_eq!(p.server_endpoint(), "tcp://10.0.0.5:50002");
        let single = ProxyAddresses {
            backend_port: None,
            publisher_port: None,
            ..p
        };
        assert_eq!(single.oslo_routers_member(), "10.0.0.5:50001");
        assert_eq!(single.server_endpoint(), "tcp://10.0.0.5:50001");
        assert_eq!(single.oslo_publishers_member(), None);
        let v6 = ProxyAddresses {
            host: "::1".into(),
            ..single
        };
        assert_eq!(v6.frontend_endpoint(), "tcp://[::1]:50001");
    }

    #[test]
    fn oslo_target_keys() {
        assert_eq!(Target::topic("compute").oslo_key(), "DEALER/compute");
        assert_eq!(
            Target::server("compute", "node1").oslo_key(),
            "DEALER/compute/node1"
        );
    }
}
