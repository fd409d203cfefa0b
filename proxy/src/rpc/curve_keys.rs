//! CURVE client keys of an RPC client or server, for proxies started with
//! `--curve-secret-key-file`: its own key pair, and the proxies' public
//! keys: each proxy's own, as the matchmaker lists it (the Kubernetes
//! backend publishes it from the proxy's EndpointSlice), or one key pinned
//! in the configuration for all proxies.

use super::RpcError;
use crate::curve::{PublicKey, SecretKey};
use crate::matchmaker::ProxyAddresses;

/// The keys a CURVE client socket needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurveClient {
    /// This client's or server's secret key.
    pub secret_key: SecretKey,
    /// Its public key (derived from the secret key), which must be listed
    /// in the proxies' authorized keys.
    pub public_key: PublicKey,
    /// The proxies' public key, pinned: used for every proxy whatever the
    /// matchmaker lists. `None`: each proxy's key from the matchmaker
    /// ([`ProxyAddresses::curve_key`]). Pinning trusts only this
    /// configuration; the matchmaker's keys are as trustworthy as the
    /// right to write the matchmaker's records (EndpointSlices).
    pub server_key: Option<PublicKey>,
}

impl CurveClient {
    /// Keys from this side's secret key and the proxies' public key,
    /// pinned for all proxies.
    pub fn new(secret_key: SecretKey, server_key: PublicKey) -> CurveClient {
        CurveClient {
            public_key: secret_key.public(),
            secret_key,
            server_key: Some(server_key),
        }
    }

    /// Keys from this side's secret key; each proxy's key comes from the
    /// matchmaker.
    pub fn with_matchmaker_keys(secret_key: SecretKey) -> CurveClient {
        CurveClient {
            public_key: secret_key.public(),
            secret_key,
            server_key: None,
        }
    }

    /// The server key of a connection to `proxy`: the pinned key, else the
    /// proxy's own; `None` when there is neither (no CURVE connection to
    /// that proxy can succeed).
    pub fn server_key_for(&self, proxy: &ProxyAddresses) -> Option<PublicKey> {
        self.server_key.or(proxy.curve_key)
    }

    /// Makes `socket` a CURVE client (before it connects); the server key
    /// is set per connection ([`super::socket_thread::Command::Connect`]).
    pub(super) fn apply(&self, socket: &zmq::Socket) -> Result<(), RpcError> {
        let err =
            |what: &'static str| move |e: zmq::Error| RpcError::Socket(format!("{what}: {e}"));
        socket
            .set_curve_publickey(&self.public_key.0)
            .map_err(err("ZMQ_CURVE_PUBLICKEY"))?;
        socket
            .set_curve_secretkey(self.secret_key.as_bytes())
            .map_err(err("ZMQ_CURVE_SECRETKEY"))
    }
}
