//! A Rust RPC client and server speaking protocol 1.0 through the proxies,
//! with oslo.messaging-shaped json payloads, so Rust services and oslo
//! services can call each other (shared/design/protocol.md).
//!
//! - [`client::RpcClient`]: call (with timeout), cast, fanout, notify; one
//!   DEALER per client connected to every proxy's frontend; round-robin over
//!   a target's servers; acks with exponentially growing timeouts and
//!   retries that go out through another proxy.
//! - [`server::RpcServer`]: a DEALER to every proxy's backend (and a SUB to
//!   every publisher with pub/sub), matchmaker registration, async handlers,
//!   acks on receipt, duplicate suppression, clean shutdown.
//!
//! Parts: [`payload`] (json frames, pure), [`dedup`] (message-id TTL cache,
//! pure), [`routing`] (round-robin over live servers), [`connections`]
//! (follow the proxy list), [`socket_thread`] (the one thread owning each
//! client's or server's sockets).

pub mod client;
pub mod connections;
pub mod curve_keys;
pub mod dedup;
pub mod payload;
pub mod routing;
pub mod server;
pub mod socket_thread;

pub use client::{ClientConfig, ClientStats, RpcClient, SendOptions};
pub use curve_keys::CurveClient;
pub use payload::{RemoteError, Request};
pub use server::{Handler, Incoming, RpcServer, ServerConfig};

use crate::matchmaker::{MatchmakerError, Target};

/// Errors of the RPC client and server.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The server answered with a failure (oslo: a remote exception).
    #[error(transparent)]
    Remote(Box<RemoteError>),
    /// No reply within the call timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// Acks on: no ack after every retry.
    #[error("no ack after {attempts} attempts")]
    NoAck {
        /// Sends made (first one plus retries).
        attempts: u32,
    },
    /// The matchmaker lists no server for the target.
    #[error("no server registered for {0:?}")]
    NoServers(Target),
    /// A payload could not be decoded.
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
    /// The matchmaker failed.
    #[error(transparent)]
    Matchmaker(#[from] MatchmakerError),
    /// libzmq refused a socket operation.
    #[error("socket error: {0}")]
    Socket(String),
    /// The client or server was closed.
    #[error("closed")]
    Closed,
}

impl From<RemoteError> for RpcError {
    fn from(e: RemoteError) -> RpcError {
        RpcError::Remote(Box::new(e))
    }
}

/// A fresh message id: an ASCII uuid1, as oslo's clients choose them.
pub fn new_message_id() -> String {
    use std::sync::OnceLock;
    static NODE: OnceLock<[u8; 6]> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        let r = uuid::Uuid::new_v4();
        let b = r.as_bytes();
        // Multicast bit set: a random node id, as RFC 4122 asks.
        [b[0] | 0x01, b[1], b[2], b[3], b[4], b[5]]
    });
    uuid::Uuid::now_v1(node).to_string()
}

/// The host part of identities when none is configured: the machine's host name.
pub fn default_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Opens an RPC DEALER or SUB with the options every one gets: identity,
/// fast reconnect, CURVE client keys when the proxies require them, and
/// (DEALER) ZMQ_IMMEDIATE, so that nothing is queued to a proxy that is not
/// connected (architecture.md: without it, half the requests after a proxy
/// failure went to the dead pipe).
fn open_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    identity: &[u8],
    reconnect: std::time::Duration,
    curve: Option<&CurveClient>,
) -> Result<zmq::Socket, RpcError> {
    let err = |what: &'static str| move |e: zmq::Error| RpcError::Socket(format!("{what}: {e}"));
    let socket = ctx.socket(kind).map_err(err("socket"))?;
    if let Some(curve) = curve {
        curve.apply(&socket)?;
    }
    socket.set_identity(identity).map_err(err("ZMQ_IDENTITY"))?;
    let ms = i32::try_from(reconnect.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    socket
        .set_reconnect_ivl(ms)
        .map_err(err("ZMQ_RECONNECT_IVL"))?;
    socket
        .set_reconnect_ivl_max(ms.saturating_mul(10))
        .map_err(err("ZMQ_RECONNECT_IVL_MAX"))?;
    if kind == zmq::DEALER {
        socket.set_immediate(true).map_err(err("ZMQ_IMMEDIATE"))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_ids_are_ascii_uuid1() {
        let a = super::new_message_id();
        let b = super::new_message_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 1);
    }
}
