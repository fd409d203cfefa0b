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
use super::CurveClient;
use crate::curve::PublicKey;
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

/// One connection a socket should have: an endpoint, and the CURVE server
/// key it is made with (none for a plain socket).
type Connection = (String, Option<PublicKey>);

/// The connections one socket should have to `proxies`.
fn wanted(
    proxies: &[ProxyAddresses],
    endpoint_of: EndpointOf,
    curve: Option<&CurveClient>,
) -> BTreeSet<Connection> {
    let mut set = BTreeSet::new();
    for proxy in proxies {
        let Some(endpoint) = endpoint_of(proxy) else {
            continue;
        };
        let key = match curve {
            None => None,
            Some(curve) => match curve.server_key_for(proxy) {
                Some(key) => Some(key),
                None => {
                    tracing::warn!(
                        %endpoint,
                        "no CURVE key for this proxy (none pinned, none in the matchmaker); not connecting"
                    );
                    continue;
                }
            },
        };
        set.insert((endpoint, key));
    }
    set
}

/// Connects and disconnects sockets of `thread` as the proxy list changes:
/// each `(socket index, endpoint function)` pair gets its own connection
/// set. Runs until `stop` turns true or the receiver closes.
pub async fn follow_proxies(
    matchmaker: Arc<dyn Matchmaker>,
    thread: Arc<SocketThread>,
    sockets: Vec<(usize, EndpointOf)>,
    curve: Option<CurveClient>,
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
    let mut current: Vec<BTreeSet<Connection>> = vec![BTreeSet::new(); sockets.len()];
    loop {
        let proxies = rx.borrow_and_update().clone();
        for (k, (socket, endpoint_of)) in sockets.iter().enumerate() {
            let wanted = wanted(&proxies, *endpoint_of, curve.as_ref());
            // Disconnect first: libzmq disconnects by endpoint, so a proxy
            // that comes back with a new key must lose its old connection
            // before it gets the new one.
            for (endpoint, _) in current[k].difference(&wanted) {
                tracing::debug!(%endpoint, "disconnecting from proxy");
                let _ = thread.send(Command::Disconnect {
                    socket: *socket,
                    endpoint: endpoint.clone(),
                });
            }
            for (endpoint, server_key) in wanted.difference(&current[k]) {
                tracing::debug!(%endpoint, "connecting to proxy");
                let _ = thread.send(Command::Connect {
                    socket: *socket,
                    endpoint: endpoint.clone(),
                    server_key: *server_key,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::SecretKey;

    fn proxy(host: &str, key: Option<PublicKey>) -> ProxyAddresses {
        ProxyAddresses {
            host: host.into(),
            frontend_port: 50001,
            backend_port: Some(50002),
            publisher_port: None,
            curve_key: key,
        }
    }

    fn secret() -> SecretKey {
        // RFC 26's example client secret key.
        SecretKey::from_z85("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs").unwrap()
    }

    fn key(byte: u8) -> PublicKey {
        PublicKey([byte; 32])
    }

    #[test]
    fn plain_sockets_connect_to_every_endpoint_without_keys() {
        let proxies = [proxy("a", Some(key(1))), proxy("b", None)];
        let set = wanted(&proxies, frontend, None);
        let expected = BTreeSet::from([
            ("tcp://a:50001".to_string(), None),
            ("tcp://b:50001".to_string(), None),
        ]);
        assert_eq!(set, expected);
        assert!(wanted(&proxies, publisher, None).is_empty());
    }

    #[test]
    fn curve_uses_each_proxys_key_and_skips_proxies_without_one() {
        let client = CurveClient::with_matchmaker_keys(secret());
        let proxies = [proxy("a", Some(key(1))), proxy("b", None)];
        let set = wanted(&proxies, backend, Some(&client));
        assert_eq!(
            set,
            BTreeSet::from([("tcp://a:50002".to_string(), Some(key(1)))])
        );
    }

    #[test]
    fn a_pinned_key_wins_over_the_matchmakers() {
        let client = CurveClient::new(secret(), key(9));
        let proxies = [proxy("a", Some(key(1))), proxy("b", None)];
        let set = wanted(&proxies, frontend, Some(&client));
        let expected = BTreeSet::from([
            ("tcp://a:50001".to_string(), Some(key(9))),
            ("tcp://b:50001".to_string(), Some(key(9))),
        ]);
        assert_eq!(set, expected);
    }
}
