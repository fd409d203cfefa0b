//! The in-process ZAP handler (ZeroMQ RFC 27) of the libzmq engine: libzmq
//! asks it, on `inproc://zeromq.zap.01` of the proxy's context, about every
//! CURVE handshake of a socket with a ZAP domain; it answers 200 for a key
//! in the current authorized set (User-Id = the key in Z85, which libzmq
//! then attaches to every message of that peer, see [`super::identity`])
//! and 400 otherwise, so libzmq closes the connection.
//!
//! The handler must be bound before any CURVE socket binds: a socket with
//! a ZAP domain and no handler lets every key in (libzmq's
//! ZMQ_ZAP_ENFORCE_DOMAIN is off by default).

use std::time::{Duration, Instant};

use super::{AuthorizedKeys, PublicKey, Refusal, SharedKeys};
use crate::shutdown::Shutdown;
use crate::telemetry::{LogLimiter, Metrics};

/// Where libzmq looks for the ZAP handler (RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// How long a poll waits before the handler re-checks the shutdown phase.
const POLL_TIMEOUT_MS: i64 = 100;

/// The answer to one ZAP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZapAnswer {
    /// The request id to echo.
    pub request_id: Vec<u8>,
    /// 200 (allowed), 400 (refused) or 500 (a request that makes no sense).
    pub status: u16,
    /// Human-readable reason.
    pub text: &'static str,
    /// The key in Z85 when allowed, else empty.
    pub user_id: String,
    /// The ZAP domain (the proxy socket's name), for counting.
    pub domain: String,
    /// The refused key, for the log.
    pub key: Option<PublicKey>,
}

impl ZapAnswer {
    /// The reply frames.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            self.request_id.clone(),
            self.status.to_string().into_bytes(),
            self.text.as_bytes().to_vec(),
            self.user_id.clone().into_bytes(),
            Vec::new(),
        ]
    }

    /// Why the peer was refused, if it was for its key.
    pub fn refusal(&self) -> Option<Refusal> {
        (self.status == 400).then_some(Refusal::UnknownKey)
    }
}

/// Answers one ZAP request (its frames) from `keys`.
pub fn answer(request: &[Vec<u8>], keys: &AuthorizedKeys) -> ZapAnswer {
    let frame = |i: usize| request.get(i).map(Vec::as_slice).unwrap_or_default();
    let mut reply = ZapAnswer {
        request_id: frame(1).to_vec(),
        status: 500,
        text: "malformed ZAP request",
        user_id: String::new(),
        domain: String::from_utf8_lossy(frame(2)).into_owned(),
        key: None,
    };
    if frame(0) != b"1.0" || request.len() < 7 {
        return reply;
    }
    if frame(5) != b"CURVE" {
        reply.status = 400;
        reply.text = "CURVE required";
        return reply;
    }
    let Ok(raw) = <[u8; super::keys::KEY_LEN]>::try_from(frame(6)) else {
        return reply;
    };
    let key = PublicKey(raw);
    if keys.contains(&key) {
        reply.status = 200;
        reply.text = "OK";
        reply.user_id = key.to_z85();
    } else {
        reply.status = 400;
        reply.text = "unknown key";
        reply.key = Some(key);
    }
    reply
}

/// The ZAP handler and its socket, bound and ready to run.
pub struct ZapHandler {
    socket: zmq::Socket,
    keys: SharedKeys,
    metrics: Metrics,
    shutdown: Shutdown,
}

impl ZapHandler {
    /// Binds the handler in `ctx`; call before binding any CURVE socket.
    pub fn bind(
        ctx: &zmq::Context,
        keys: SharedKeys,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<ZapHandler, zmq::Error> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        Ok(ZapHandler {
            socket,
            keys,
            metrics,
            shutdown,
        })
    }

    /// Runs the handler on its own thread until the shutdown phase reaches
    /// `Stopping` (sockets still draining before then may still accept
    /// handshakes).
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("zmq-zap".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut limiter = LogLimiter::new(20, Duration::from_secs(10));
        while !self.shutdown.is_stopping() {
            match self.socket.poll(zmq::POLLIN, POLL_TIMEOUT_MS) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "ZAP handler cannot poll; stopping");
                    return;
                }
            }
            let request = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(request) => request,
                Err(zmq::Error::EAGAIN) => continue,
                Err(error) => {
                    tracing::error!(%error, "ZAP handler cannot receive; stopping");
                    return;
                }
            };
            let reply = answer(&request, &self.keys.current());
            if let Some(reason) = reply.refusal() {
                self.metrics
                    .count_curve_refused(&reply.domain, reason.as_str());
                let (allowed, suppressed) = limiter.check(Instant::now());
                if suppressed > 0 {
                    tracing::warn!(suppressed, "log lines about refused CURVE peers suppressed");
                }
                if allowed {
                    let address = String::from_utf8_lossy(
                        request.get(3).map(Vec::as_slice).unwrap_or_default(),
                    )
                    .into_owned();
                    let key = reply.key.map(|k| k.to_z85());
                    tracing::warn!(socket = %reply.domain, %address, ?key, reason = reply.text, "CURVE peer refused at the handshake");
                }
            } else if reply.status != 200 {
                tracing::warn!(socket = %reply.domain, status = reply.status, reason = reply.text, "ZAP request refused");
            }
            if let Err(error) = self.socket.send_multipart(reply.frames(), 0) {
                tracing::error!(%error, "ZAP handler cannot reply");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    fn request(mechanism: &[u8], key: &[u8]) -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"frontend".to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            mechanism.to_vec(),
            key.to_vec(),
        ]
    }

    #[test]
    fn listed_keys_pass_with_their_z85_as_user_id_and_others_are_refused() {
        let keys = AuthorizedKeys::parse(&format!("{A} node1/*\n")).unwrap();
        let a = PublicKey::from_z85(A).unwrap();
        let ok = answer(&request(b"CURVE", &a.0), &keys);
        assert_eq!((ok.status, ok.user_id.as_str()), (200, A));
        assert_eq!(ok.refusal(), None);
        assert_eq!(
            ok.frames(),
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                b"200".to_vec(),
                b"OK".to_vec(),
                A.as_bytes().to_vec(),
                Vec::new()
            ]
        );
        let no = answer(&request(b"CURVE", &[1; 32]), &keys);
        assert_eq!((no.status, no.user_id.as_str()), (400, ""));
        assert_eq!(no.refusal(), Some(Refusal::UnknownKey));
        assert_eq!(no.domain, "frontend");
        assert_eq!(answer(&request(b"NULL", b""), &keys).status, 400);
        assert_eq!(answer(&request(b"CURVE", b"short"), &keys).status, 500);
        assert_eq!(answer(&[b"0.9".to_vec()], &keys).status, 500);
    }
}
