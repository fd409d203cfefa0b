//! The ZMTP handshake of a connection under the NULL mechanism, as a
//! ROUTER (the router proxy), a PUB (the native publisher) or a SUB (the
//! local publisher's upstreams): our greeting and READY go out at once
//! ([`opening`], [`opening_as`]), then the peer's greeting and READY are
//! read from the receive buffer as they arrive ([`Handshake::advance`],
//! [`Handshake::advance_as`]).
//!
//! Sending our READY before the peer's greeting is in is allowed (the
//! streams are independent) and saves a round trip; a peer that turns out
//! not to speak ZMTP 3 has then received bytes it ignores before we close.
//! Pure: the engine passes the bytes it has, and gets back how many belong
//! to the handshake.

use thiserror::Error;
use zmtp::{
    greeting, Command, CommandError, DecodeError, Decoder, GreetingError, Metadata, PeerError,
    Progress, SocketType, Version,
};

/// Our opening bytes: greeting (3.1, NULL) then READY with `Socket-Type`
/// ROUTER and our identity.
pub fn opening(identity: &[u8]) -> Vec<u8> {
    let mut out = greeting::encode(false).to_vec();
    // An identity over 255 bytes cannot be sent; the proxy's own are about
    // 60. Sending an empty one then is what libzmq does for no identity.
    let metadata = Metadata::basic(SocketType::Router, Some(identity))
        .or_else(|_| Metadata::basic(SocketType::Router, None));
    if let Ok(metadata) = metadata {
        Command::Ready(metadata).encode(&mut out);
    }
    out
}

/// Our opening bytes as a socket of type `ours` without an identity (PUB
/// and SUB send only `Socket-Type`, as libzmq's do).
pub fn opening_as(ours: SocketType) -> Vec<u8> {
    let mut out = greeting::encode(false).to_vec();
    if let Ok(metadata) = Metadata::basic(ours, None) {
        Command::Ready(metadata).encode(&mut out);
    }
    out
}

/// Why a handshake failed; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Not a ZMTP 3 greeting, or another mechanism.
    #[error(transparent)]
    Greeting(#[from] GreetingError),
    /// A malformed frame where READY was expected.
    #[error(transparent)]
    Frame(#[from] DecodeError),
    /// A malformed command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A READY we refuse (wrong socket type, identity too long).
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The first frame after the greeting is not READY.
    #[error("expected READY after the greeting, got {0}")]
    NotReady(String),
}

impl HandshakeError {
    /// The reason of the ERROR command to send before closing, when RFC 37
    /// asks for one (a READY refused on its content).
    pub fn error_reason(&self) -> Option<&'static [u8]> {
        match self {
            HandshakeError::Peer(e) => Some(e.reason()),
            _ => None,
        }
    }
}

/// What [`Handshake::advance`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed; `consumed` of those given belong to the
    /// handshake and can be dropped.
    NeedMore {
        /// Bytes used up.
        consumed: usize,
    },
    /// The handshake is complete.
    Done {
        /// Bytes used up; anything after them is the first message frame.
        consumed: usize,
        /// The peer's identity from READY (`None`: absent or empty).
        identity: Option<Vec<u8>>,
        /// The protocol version spoken.
        version: Version,
    },
}

/// Handshake progress of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Waiting for the peer's greeting.
    Greeting,
    /// Greeting done; waiting for the peer's READY.
    Ready(Version),
}

impl Handshake {
    /// Reads what it can of `received` (the bytes after those consumed so
    /// far) and moves on, as a ROUTER.
    pub fn advance(&mut self, received: &[u8], decoder: &Decoder) -> Result<Step, HandshakeError> {
        self.advance_as(received, decoder, SocketType::Router)
    }

    /// As [`Handshake::advance`], for a socket of type `ours`: the peer's
    /// READY is checked against it (a PUB takes SUB and XSUB peers, a SUB
    /// takes PUB and XPUB).
    pub fn advance_as(
        &mut self,
        received: &[u8],
        decoder: &Decoder,
        ours: SocketType,
    ) -> Result<Step, HandshakeError> {
        let mut consumed = 0;
        if *self == Handshake::Greeting {
            match greeting::parse(received)? {
                Progress::NeedMore { .. } => return Ok(Step::NeedMore { consumed: 0 }),
                Progress::Done(g) => {
                    consumed = greeting::GREETING_LEN;
                    *self = Handshake::Ready(g.version());
                }
            }
        }
        let Handshake::Ready(version) = *self else {
            return Ok(Step::NeedMore { consumed });
        };
        let rest = &received[consumed..];
        let Some((frame, used)) = decoder.decode(rest)? else {
            return Ok(Step::NeedMore { consumed });
        };
        let body = &rest[frame.body.clone()];
        if !frame.command() {
            return Err(HandshakeError::NotReady("a message frame".into()));
        }
        match Command::parse(body)? {
            Command::Ready(metadata) => {
                let peer = metadata.check_peer(ours)?;
                Ok(Step::Done {
                    consumed: consumed + used,
                    identity: peer.identity.map(<[u8]>::to_vec),
                    version,
                })
            }
            other => Err(HandshakeError::NotReady(
                String::from_utf8_lossy(other.name()).into_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_opening(socket_type: SocketType, identity: Option<&[u8]>) -> Vec<u8> {
        let mut out = greeting::encode(false).to_vec();
        let metadata = Metadata::basic(socket_type, identity).expect("valid metadata");
        Command::Ready(metadata).encode(&mut out);
        out
    }

    #[test]
    fn a_dealer_opening_fed_byte_by_byte_yields_its_identity() {
        let mut wire = peer_opening(SocketType::Dealer, Some(b"host/1"));
        wire.extend_from_slice(b"\x00\x00");
        let decoder = Decoder::new(1 << 20);
        let mut h = Handshake::Greeting;
        let mut buf = Vec::new();
        let mut at = 0;
        for &b in &wire {
            buf.push(b);
            match h.advance(&buf[at..], &decoder).expect("valid") {
                Step::NeedMore { consumed } => at += consumed,
                Step::Done {
                    consumed,
                    identity,
                    version,
                } => {
                    assert_eq!(identity.as_deref(), Some(&b"host/1"[..]));
                    assert_eq!(version, Version::V3_1);
                    assert_eq!(at + consumed, wire.len() - 2);
                    return;
                }
            }
        }
        panic!("handshake never completed");
    }

    #[test]
    fn an_empty_identity_is_none_and_a_pub_is_refused_with_an_error_reason() {
        let decoder = Decoder::new(1 << 20);
        let wire = peer_opening(SocketType::Dealer, None);
        let step = Handshake::Greeting.advance(&wire, &decoder);
        assert!(matches!(step, Ok(Step::Done { identity: None, .. })));
        let wire = peer_opening(SocketType::Pub, None);
        let err = Handshake::Greeting
            .advance(&wire, &decoder)
            .expect_err("PUB refused");
        assert_eq!(err.error_reason(), Some(&b"incompatible socket type"[..]));
    }

    #[test]
    fn a_pub_takes_sub_and_xsub_and_refuses_a_dealer() {
        let decoder = Decoder::new(1 << 20);
        for (peer, ok) in [
            (SocketType::Sub, true),
            (SocketType::XSub, true),
            (SocketType::Dealer, false),
            (SocketType::Pub, false),
        ] {
            let wire = peer_opening(peer, None);
            let step = Handshake::Greeting.advance_as(&wire, &decoder, SocketType::Pub);
            assert_eq!(step.is_ok(), ok, "{peer}");
        }
        // Our PUB opening is what a SUB accepts.
        let ours = opening_as(SocketType::Pub);
        let step = Handshake::Greeting.advance_as(&ours, &decoder, SocketType::Sub);
        assert!(matches!(step, Ok(Step::Done { identity: None, .. })));
    }

    #[test]
    fn our_opening_is_a_greeting_and_a_router_ready() {
        let ours = opening(b"h/zmq-proxy/1");
        let decoder = Decoder::new(1 << 20);
        // A ROUTER peer accepts a ROUTER: our opening parses as theirs would.
        let step = Handshake::Greeting.advance(&ours, &decoder);
        assert!(
            matches!(step, Ok(Step::Done { identity: Some(id), .. }) if id == b"h/zmq-proxy/1")
        );
        assert!(Handshake::Greeting
            .advance(b"GET / HTTP/1.1", &decoder)
            .is_err());
    }
}
