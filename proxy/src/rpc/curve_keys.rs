//! CURVE client keys of an RPC client or server: its own key pair and the
//! proxies' public key, for proxies started with `--curve-secret-key-file`.
//! Every socket of the client or server uses them (the proxies share one
//! key, or the deployment gives each client the key of its proxies).

use super::RpcError;
use crate::curve::{PublicKey, SecretKey};

/// The keys a CURVE client socket needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurveClient {
    /// This client's or server's secret key.
    pub secret_key: SecretKey,
    /// Its public key (derived from the secret key), which must be listed
    /// in the proxies' authorized keys.
    pub public_key: PublicKey,
    /// The proxies' public key.
    pub server_key: PublicKey,
}

impl CurveClient {
    /// Keys from this side's secret key and the proxies' public key.
    pub fn new(secret_key: SecretKey, server_key: PublicKey) -> CurveClient {
        CurveClient {
            public_key: secret_key.public(),
            secret_key,
            server_key,
        }
    }

    /// Makes `socket` a CURVE client (before it connects).
    pub(super) fn apply(&self, socket: &zmq::Socket) -> Result<(), RpcError> {
        let err =
            |what: &'static str| move |e: zmq::Error| RpcError::Socket(format!("{what}: {e}"));
        socket
            .set_curve_serverkey(&self.server_key.0)
            .map_err(err("ZMQ_CURVE_SERVERKEY"))?;
        socket
            .set_curve_publickey(&self.public_key.0)
            .map_err(err("ZMQ_CURVE_PUBLICKEY"))?;
        socket
            .set_curve_secretkey(self.secret_key.as_bytes())
            .map_err(err("ZMQ_CURVE_SECRETKEY"))
    }
}
