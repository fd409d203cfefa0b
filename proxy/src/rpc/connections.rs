//! Keeps a socket connected to exactly the proxies the matchmaker lists.
//!
//! Clients connect their DEALER to every proxy's frontend, servers theirs to
//! every backend (and a SUB to every publisher). The task here follows
//! [`Matchmaker::watch_proxies`]: a proxy that appears is connected to, one
//! that leaves is disconnected, as soon as the receiver changes (push for
//! watch-based backends, the backend's poll period for Redis). Endpoints are
//! compared as sets, so backends that cannot pair a proxy's ports exactly
//! (oslo's Redis layout) still give the right connections.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::socket_thread::{Command, SocketThread};
use crate::matchmaker::{Matchmaker, ProxyAddresses};

/// Which endpoint of a proxy one socket connects to.
pub type EndpointOf = fn(&ProxyAddresses) -> Option<String>;

/// The frontend (client DEALERs).
pub fn frontend(p: &ProxyAddresses) -> Option<String> {
    Some(p.frontend_endpoint())
}

/// The backend, or the frontend in single-router mode (server DEALERs).
pub fn backend(p: &ProxyAddresses) -> Option<String> {
    Some(p.server_endpoint())
}

/// The PUB socket, if the proxy has one (server SUBs).
pub fn publisher(p: &ProxyAddresses) -> Option<String> {
    p.publisher_endpoint()
}

/// Connects and disconnects sockets of `thread` as the proxy list changes:
/// each `(socket index, endpoint function)` pair gets its own endpoint set.
/// Runs until `stop` turns true or the receiver closes.
pub async fn follow_proxies(
    matchmaker: Arc<dyn Matchmaker>,
    thread: Arc<SocketThread>,
    sockets: Vec<(usize, EndpointOf)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = loop {
        match matchmaker.watch_proxies().await {
            Ok(rx) => break rx,
            Err(error) => {
                tracing::warn!(%error, "cannot watch proxies yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let mut current: Vec<BTreeSet<String>> = vec![BTreeSet::new(); sockets.len()];
    loop {
        let proxies = rx.borrow_and_update().clone();
        for (k, (socket, endpoint_of)) in sockets.iter().enumerate() {
            let wanted: BTreeSet<String> = proxies.iter().filter_map(endpoint_of).collect();
            for endpoint in wanted.difference(&current[k]) {
                tracing::debug!(%endpoint, "connecting to proxy");
                let _ = thread.send(Command::Connect {
                    socket: *socket,
                    endpoint: endpoint.clone(),
                });
            }
            for endpoint in current[k].difference(&wanted) {
                tracing::debug!(%endpoint, "disconnecting from proxy");
                let _ = thread.send(Command::Disconnect {
                    socket: *socket,
                    endpoint: endpoint.clone(),
                });
            }
            current[k] = wanted;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
