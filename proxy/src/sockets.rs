//! Creating, configuring and binding the proxy's ZeroMQ sockets.
//!
//! Socket options live here so that every loop gets the same treatment:
//! high-water marks, keepalive, immediate, ROUTER_MANDATORY (so unroutable
//! messages are reported instead of silently dropped) and ROUTER_HANDOVER (a
//! peer reconnecting under its identity replaces its stale connection).

use crate::frame::{Frame, HandledSocket};

/// ZeroMQ socket options applied to every proxy socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Send and receive high-water mark in messages per peer; 0 = unlimited
    /// (oslo's choice). Default 1000: a bounded queue, so a flood pushes back
    /// on its senders instead of growing the proxy's memory.
    pub hwm: i32,
    /// Linger at close in ms; -1 = until the grace period ends.
    pub linger_ms: i32,
    /// ZMQ_TCP_KEEPALIVE: -1 OS default, 0 off, 1 on.
    pub tcp_keepalive: i32,
    /// ZMQ_TCP_KEEPALIVE_IDLE seconds, -1 OS default.
    pub tcp_keepalive_idle: i32,
    /// ZMQ_TCP_KEEPALIVE_INTVL seconds, -1 OS default.
    pub tcp_keepalive_intvl: i32,
    /// ZMQ_TCP_KEEPALIVE_CNT, -1 OS default.
    pub tcp_keepalive_cnt: i32,
    /// ZMQ_IMMEDIATE on the proxy's sockets (off on bound sockets, as oslo).
    pub immediate: bool,
    /// ZMQ_HEARTBEAT_IVL in ms: a PING to every peer quiet this long, so a
    /// peer that vanished without a FIN (a node lost, a partition) is found
    /// and its connection and buffers freed; 0 = off.
    pub heartbeat_ivl_ms: i32,
    /// ZMQ_HEARTBEAT_TIMEOUT in ms: a peer that sends nothing this long
    /// after a PING is closed.
    pub heartbeat_timeout_ms: i32,
    /// ZMQ_HANDSHAKE_IVL in ms: a connection that has not finished its
    /// greeting and READY this long after it was accepted is closed, so
    /// silent connections cannot pile up; 0 = no limit.
    pub handshake_ivl_ms: i32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            hwm: 1000,
            linger_ms: -1,
            tcp_keepalive: -1,
            tcp_keepalive_idle: -1,
            tcp_keepalive_intvl: -1,
            tcp_keepalive_cnt: -1,
            immediate: false,
            // Dead peers are found within 40 s; a live one costs a 10-byte
            // PING and PONG per 10 quiet seconds.
            heartbeat_ivl_ms: 10_000,
            heartbeat_timeout_ms: 30_000,
            // libzmq's default.
            handshake_ivl_ms: 30_000,
        }
    }
}

/// Errors creating or binding a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// libzmq refused an option or the socket.
    #[error("{what}: {source}")]
    Zmq {
        /// What was being done.
        what: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// libzmq reported an endpoint it bound that cannot be parsed.
    #[error("cannot read the bound endpoint of {0}")]
    Endpoint(String),
}

fn zmq_err(what: impl Into<String>) -> impl FnOnce(zmq::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Zmq { what, source }
}

/// Creates a socket of `kind` with `options` applied, and `identity` if given.
pub fn new_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    options: &SocketOptions,
    identity: Option<&[u8]>,
) -> Result<zmq::Socket, SocketError> {
    let s = ctx
        .socket(kind)
        .map_err(zmq_err(format!("create {kind:?} socket")))?;
    s.set_sndhwm(options.hwm).map_err(zmq_err("ZMQ_SNDHWM"))?;
    s.set_rcvhwm(options.hwm).map_err(zmq_err("ZMQ_RCVHWM"))?;
    s.set_tcp_keepalive(options.tcp_keepalive)
        .map_err(zmq_err("ZMQ_TCP_KEEPALIVE"))?;
    s.set_tcp_keepalive_idle(options.tcp_keepalive_idle)
        .map_err(zmq_err("ZMQ_TCP_KEEPALIVE_IDLE"))?;
    s.set_tcp_keepalive_intvl(options.tcp_keepalive_intvl)
        .map_err(zmq_err("ZMQ_TCP_KEEPALIVE_INTVL"))?;
    s.set_tcp_keepalive_cnt(options.tcp_keepalive_cnt)
        .map_err(zmq_err("ZMQ_TCP_KEEPALIVE_CNT"))?;
    if options.immediate {
        s.set_immediate(true).map_err(zmq_err("ZMQ_IMMEDIATE"))?;
    }
    s.set_handshake_ivl(options.handshake_ivl_ms)
        .map_err(zmq_err("ZMQ_HANDSHAKE_IVL"))?;
    if options.heartbeat_ivl_ms > 0 {
        s.set_heartbeat_ivl(options.heartbeat_ivl_ms)
            .map_err(zmq_err("ZMQ_HEARTBEAT_IVL"))?;
        s.set_heartbeat_timeout(options.heartbeat_timeout_ms)
            .map_err(zmq_err("ZMQ_HEARTBEAT_TIMEOUT"))?;
    }
    if let Some(id) = identity {
        s.set_identity(id).map_err(zmq_err("ZMQ_IDENTITY"))?;
    }
    if kind == zmq::ROUTER {
        s.set_router_mandatory(true)
            .map_err(zmq_err("ZMQ_ROUTER_MANDATORY"))?;
        s.set_router_handover(true)
            .map_err(zmq_err("ZMQ_ROUTER_HANDOVER"))?;
    }
    Ok(s)
}

/// Makes `socket` a CURVE server with the proxy's secret key, whose
/// handshakes libzmq submits to the ZAP handler under `domain` (the
/// socket's name, so refusals are counted per socket). Must come before
/// the bind.
pub fn make_curve_server(
    socket: &zmq::Socket,
    secret_key: &[u8],
    domain: &str,
) -> Result<(), SocketError> {
    socket
        .set_curve_server(true)
        .map_err(zmq_err("ZMQ_CURVE_SERVER"))?;
    socket
        .set_curve_secretkey(secret_key)
        .map_err(zmq_err("ZMQ_CURVE_SECRETKEY"))?;
    socket
        .set_zap_domain(domain)
        .map_err(zmq_err("ZMQ_ZAP_DOMAIN"))
}

/// Binds `socket` on `tcp://{address}:{port}` (port 0 = a random free port)
/// and returns the endpoint actually bound and its port.
pub fn bind(socket: &zmq::Socket, address: &str, port: u16) -> Result<(String, u16), SocketError> {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let requested = if port == 0 {
        format!("tcp://{host}:*")
    } else {
        format!("tcp://{host}:{port}")
    };
    socket
        .bind(&requested)
        .map_err(zmq_err(format!("bind {requested}")))?;
    let endpoint = socket
        .get_last_endpoint()
        .map_err(zmq_err("ZMQ_LAST_ENDPOINT"))?
        .map_err(|_| SocketError::Endpoint(requested.clone()))?;
    let bound_port = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| SocketError::Endpoint(endpoint.clone()))?;
    Ok((endpoint, bound_port))
}

/// A ROUTER identity as the protocol wants it: `{host}/zmq-proxy/{uuid4}`.
pub fn proxy_identity(host: &str) -> Vec<u8> {
    format!("{host}/zmq-proxy/{}", uuid::Uuid::new_v4()).into_bytes()
}

/// A socket of a forwarding loop with its name and pre-resolved counters.
pub struct ProxySocket {
    /// The ZeroMQ socket (owned by the loop's thread), with the raw handle
    /// [`Frame`] sends and receives use.
    socket: HandledSocket,
    /// Metrics label, e.g. "frontend".
    pub name: &'static str,
    /// Counters of this socket.
    pub counters: crate::telemetry::SocketCounters,
}

impl ProxySocket {
    /// Wraps a configured, bound or connected socket.
    pub fn new(
        socket: zmq::Socket,
        name: &'static str,
        counters: crate::telemetry::SocketCounters,
    ) -> ProxySocket {
        ProxySocket {
            socket: HandledSocket::new(socket),
            name,
            counters,
        }
    }

    /// The ZeroMQ socket.
    pub fn socket(&self) -> &zmq::Socket {
        self.socket.socket()
    }
}

/// Receives one whole multipart message into `frames` without blocking,
/// reusing the frames already there (libzmq releases their old content).
/// Returns its size in bytes (all frames), or `None` when nothing is
/// waiting. libzmq delivers multipart messages atomically, so once the first
/// frame is in, the rest are too and reading them cannot block. After an
/// error `frames` holds a partial message and must be cleared.
#[inline]
pub fn recv_message(
    socket: &ProxySocket,
    frames: &mut Vec<Frame>,
) -> Result<Option<usize>, zmq::Error> {
    if frames.is_empty() {
        frames.push(Frame::new());
    }
    let raw = socket.socket.raw();
    let mut bytes = match frames[0].recv(&raw, zmq::DONTWAIT) {
        Ok(size) => size,
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut received = 1;
    let mut more = frames[0].more();
    while more {
        if received == frames.len() {
            frames.push(Frame::new());
        }
        let frame = &mut frames[received];
        bytes += frame.recv(&raw, 0)?;
        more = frame.more();
        received += 1;
    }
    frames.truncate(received);
    Ok(Some(bytes))
}

/// Sends every frame of `frames` without blocking. Payloads are handed to
/// libzmq, never copied; on success `frames` holds as many empty frames,
/// ready for the next [`recv_message`].
///
/// Refusals are atomic: on a ROUTER with ROUTER_MANDATORY, libzmq checks the
/// peer and its high-water mark on the first frame only (EHOSTUNREACH ->
/// [`DropReason::Unroutable`], EAGAIN -> [`DropReason::HighWaterMark`]; both
/// leave `frames` untouched, so the message can be retried) and never fails
/// a later frame of the same message (the HWM counts whole messages; a pipe
/// that dies mid-message is rolled back inside libzmq). PUB drops whole
/// messages silently. So a failure never leaves a message half-sent. Any
/// other error clears `frames`.
///
/// [`DropReason::Unroutable`]: crate::protocol::DropReason::Unroutable
/// [`DropReason::HighWaterMark`]: crate::protocol::DropReason::HighWaterMark
#[inline]
pub fn send_message(
    socket: &ProxySocket,
    frames: &mut Vec<Frame>,
) -> Result<(), crate::protocol::DropReason> {
    use crate::protocol::DropReason;
    let Some((first, rest)) = frames.split_first_mut() else {
        return Ok(());
    };
    let raw = socket.socket.raw();
    let more = if rest.is_empty() { 0 } else { zmq::SNDMORE };
    if let Err(e) = first.send(&raw, more | zmq::DONTWAIT) {
        return Err(match e {
            zmq::Error::EHOSTUNREACH => DropReason::Unroutable,
            zmq::Error::EAGAIN => DropReason::HighWaterMark,
            _ => {
                frames.clear();
                DropReason::SendFailed
            }
        });
    }
    let last = rest.len().saturating_sub(1);
    for (i, frame) in rest.iter_mut().enumerate() {
        let flags = if i < last {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        if frame.send(&raw, flags).is_err() {
            // Unreachable on ROUTER and PUB (see above).
            frames.clear();
            return Err(DropReason::SendFailed);
        }
    }
    Ok(())
}

/// Sum of the frame sizes (the bytes metric).
#[inline]
pub fn message_bytes(frames: &[Frame]) -> usize {
    frames.iter().map(Frame::size).sum()
}

/// The shortest linger a socket is closed with, whatever was configured.
///
/// libzmq 4.3.4 aborts the process (`session_base.cpp:260`, libzmq issue
/// #3442) when a socket closed with linger 0 still had a multipart message
/// half written to a peer and that peer's connection then fails: the
/// session tries to discard the rest of the message from a pipe that no
/// longer gives it up. Seen here once in about 120 fan-out teardowns of the
/// benchmark, on the proxy's PUB. With a linger the pipe stays readable
/// while it drains, so the half message can be finished or discarded.
pub const MIN_CLOSE_LINGER_MS: i32 = 100;

/// Sets the linger of a socket about to close: the configured value, or
/// (for -1) what is left of the drain deadline, so queued frames get out
/// without outliving the grace period; never below [`MIN_CLOSE_LINGER_MS`].
pub fn set_close_linger(
    socket: &zmq::Socket,
    linger_ms: i32,
    shutdown: &crate::shutdown::Shutdown,
) {
    if let Err(error) = socket.set_linger(close_linger(linger_ms, shutdown.remaining())) {
        tracing::debug!(%error, "cannot set linger");
    }
}

/// The linger for [`set_close_linger`], given what is left of the drain.
fn close_linger(linger_ms: i32, remaining: Option<std::time::Duration>) -> i32 {
    let linger = if linger_ms >= 0 {
        linger_ms
    } else {
        remaining
            .map(|d| d.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(0)
    };
    linger.max(MIN_CLOSE_LINGER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_a_random_port_and_reports_it() {
        let ctx = zmq::Context::new();
        let s = new_socket(
            &ctx,
            zmq::ROUTER,
            &SocketOptions::default(),
            Some(b"h/zmq-proxy/x"),
        )
        .unwrap();
        let (endpoint, port) = bind(&s, "127.0.0.1", 0).unwrap();
        assert_ne!(port, 0);
        assert_eq!(endpoint, format!("tcp://127.0.0.1:{port}"));
        let other = new_socket(&ctx, zmq::ROUTER, &SocketOptions::default(), None).unwrap();
        assert!(
            bind(&other, "127.0.0.1", port).is_err(),
            "the port is taken"
        );
    }

    #[test]
    fn close_linger_follows_the_drain_but_never_drops_to_zero() {
        use std::time::Duration;
        assert_eq!(close_linger(2000, None), 2000, "configured");
        assert_eq!(close_linger(-1, Some(Duration::from_millis(3500))), 3500);
        assert_eq!(
            close_linger(-1, None),
            MIN_CLOSE_LINGER_MS,
            "deadline passed"
        );
        assert_eq!(close_linger(0, None), MIN_CLOSE_LINGER_MS, "configured 0");
    }

    #[test]
    fn identity_layout() {
        let id = String::from_utf8(proxy_identity("h1")).unwrap();
        assert!(
            id.starts_with("h1/zmq-proxy/") && id.len() == "h1/zmq-proxy/".len() + 36,
            "{id}"
        );
    }
}
