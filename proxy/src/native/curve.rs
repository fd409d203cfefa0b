//! CURVE (ZeroMQ RFC 26) on the native engine's listeners: the frontend,
//! backend and central PUB are CURVE servers when the key files are
//! configured, and authorize each peer *at the handshake*, which the
//! libzmq engine cannot (its ZAP handler is asked before the peer's
//! identity is known, see [`crate::curve`]).
//!
//! A connection opens with a CURVE greeting, then HELLO, WELCOME and
//! INITIATE ([`CurveHandshake`], over [`zmtp::curve::Server`]). INITIATE
//! proves the client's long-term key and carries its metadata; the loop
//! then asks the authorized keys ([`Authorizer::admit`]) about that key and
//! the identity the connection will be routed by, and answers READY (the
//! connection is [`Established`]) or ERROR "400", which a libzmq client
//! reports as `ZMQ_EVENT_HANDSHAKE_FAILED_AUTH` with status 400, as when a
//! ZAP handler refuses. Afterwards every frame, commands included, travels
//! boxed: frames are opened in place in the receive buffer
//! ([`super::connection::Connection::next_frame`]) and sealed per
//! connection on output ([`seal_frames`], [`seal_wire`]).
//!
//! The rules:
//! - a ROUTER peer is checked under the identity it will be routed by: its
//!   `Identity` property, or, when it sends none, the one the proxy
//!   generates for it (libzmq's form, a zero byte and a counter), as the
//!   libzmq engine's per-message check sees it. So a key listed without
//!   identities, with `*`, or with `hex:00*` may connect anonymously; a key
//!   restricted to named identities must claim one of them;
//! - a subscriber of the PUB is checked by its key only: a PUB routes
//!   nothing by identity;
//! - after a reload of the authorized keys, connected peers are checked
//!   again and those no longer allowed are closed and counted (their key
//!   removed: `unknown_key`; their identity no longer given to their key:
//!   `identity`), so they neither send nor receive another message.

use thiserror::Error;
use zmtp::curve::{
    HandshakeError as CurveError, KeyPair, MessageError, OsRng, Pending, Server, Session, Welcomed,
};
use zmtp::{
    greeting, Command, DecodeError, Decoder, GreetingError, Mechanism, Progress, Version,
    GREETING_LEN,
};

use crate::curve::{Authorizer, PublicKey, Refusal, SecretKey, SharedKeys};
use crate::telemetry::Metrics;

/// The reason sent in the ERROR that refuses a client: libzmq's status for
/// a ZAP denial, which its clients report as an authentication failure.
pub const REFUSED: &[u8] = b"400";

/// What a native listener needs to be a CURVE server: the proxy's key
/// pair, the authorized keys (swapped on reload) and the metrics that
/// count refusals.
#[derive(Clone)]
pub struct CurveServer {
    keys: KeyPair,
    authorized: SharedKeys,
    metrics: Metrics,
}

impl std::fmt::Debug for CurveServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // KeyPair's Debug shows the public key only.
        f.debug_struct("CurveServer")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl CurveServer {
    /// A server with the proxy's `secret` key.
    pub fn new(secret: &SecretKey, authorized: SharedKeys, metrics: Metrics) -> CurveServer {
        CurveServer {
            keys: KeyPair::from_secret(*secret.as_bytes()),
            authorized,
            metrics,
        }
    }

    /// The greeting a CURVE server opens with.
    pub fn greeting() -> [u8; GREETING_LEN] {
        greeting::encode_with(Mechanism::Curve, true)
    }

    /// The handshake of a newly accepted connection.
    pub fn handshake(&self) -> CurveHandshake {
        CurveHandshake::Greeting(Server::new(self.keys.clone()))
    }

    /// A loop's view of the authorized keys.
    pub fn authorizer(&self) -> Authorizer {
        Authorizer::new(self.authorized.clone())
    }

    /// Counts a refused peer on `socket`.
    pub fn count_refused(&self, socket: &str, refusal: Refusal) {
        self.metrics.count_curve_refused(socket, refusal.as_str());
    }
}

/// A loop's CURVE server and its view of the authorized keys.
#[derive(Debug)]
pub struct CurveLoop {
    /// Keys and metrics.
    pub server: CurveServer,
    /// The loop's snapshot of the authorized keys.
    pub authorizer: Authorizer,
}

impl CurveLoop {
    /// A loop's state for `server`.
    pub fn new(server: CurveServer) -> CurveLoop {
        CurveLoop {
            authorizer: server.authorizer(),
            server,
        }
    }
}

/// The CURVE state of a connection.
#[derive(Debug)]
pub enum CurveConn {
    /// Greeting, HELLO and INITIATE not all in yet.
    Handshake(CurveHandshake),
    /// Admitted: frames travel boxed.
    Established(Established),
}

/// An admitted CURVE peer.
#[derive(Debug)]
pub struct Established {
    /// The boxes of this connection.
    pub session: Session,
    /// The client's long-term key, checked again after a reload.
    pub key: PublicKey,
}

/// Where a server's handshake stands.
#[derive(Debug)]
pub enum CurveHandshake {
    /// Waiting for the client's greeting.
    Greeting(Server),
    /// Waiting for HELLO.
    Hello(Server, Version),
    /// WELCOME sent; waiting for INITIATE.
    Initiate(Box<Welcomed>, Version),
    /// INITIATE read, or the handshake failed: nothing more to read.
    Over,
}

/// What [`CurveHandshake::advance`] found.
#[derive(Debug)]
pub enum CurveStep {
    /// More bytes are needed; `consumed` of those given are done with.
    NeedMore {
        /// Bytes used up.
        consumed: usize,
    },
    /// INITIATE is in: the caller admits or refuses the client.
    Initiated {
        /// Bytes used up; anything after them is the first MESSAGE.
        consumed: usize,
        /// The proven client key and its metadata.
        pending: Box<Pending>,
        /// The protocol version spoken.
        version: Version,
    },
}

/// Why a CURVE handshake failed; the connection is closed (without an
/// ERROR: libzmq closes silently too, except when authorization fails).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CurveHandshakeError {
    /// Not a ZMTP 3 greeting, or not CURVE.
    #[error(transparent)]
    Greeting(#[from] GreetingError),
    /// Not a ZMTP frame.
    #[error(transparent)]
    Frame(#[from] DecodeError),
    /// A message frame where a handshake command belongs.
    #[error("expected the {0} command, got a message frame")]
    NotCommand(&'static str),
    /// HELLO or INITIATE refused by the codec (wrong server key, altered
    /// boxes, ...).
    #[error(transparent)]
    Curve(#[from] CurveError),
}

impl CurveHandshake {
    /// Reads what it can of `received` (the bytes after those consumed so
    /// far) and moves on, appending WELCOME to `out` when HELLO is in.
    pub fn advance(
        &mut self,
        received: &[u8],
        decoder: &Decoder,
        out: &mut Vec<u8>,
    ) -> Result<CurveStep, CurveHandshakeError> {
        let mut consumed = 0;
        loop {
            let rest = &received[consumed..];
            match std::mem::replace(self, CurveHandshake::Over) {
                CurveHandshake::Greeting(server) => {
                    match greeting::parse_with(rest, Mechanism::Curve)? {
                        Progress::NeedMore { .. } => {
                            *self = CurveHandshake::Greeting(server);
                            return Ok(CurveStep::NeedMore { consumed });
                        }
                        Progress::Done(g) => {
                            consumed += GREETING_LEN;
                            *self = CurveHandshake::Hello(server, g.version());
                        }
                    }
                }
                CurveHandshake::Hello(server, version) => {
                    let Some((body, used)) = command(rest, decoder, "HELLO")? else {
                        *self = CurveHandshake::Hello(server, version);
                        return Ok(CurveStep::NeedMore { consumed });
                    };
                    let welcomed = server.welcome(body, &mut OsRng, out)?;
                    consumed += used;
                    *self = CurveHandshake::Initiate(Box::new(welcomed), version);
                }
                CurveHandshake::Initiate(welcomed, version) => {
                    let Some((body, used)) = command(rest, decoder, "INITIATE")? else {
                        *self = CurveHandshake::Initiate(welcomed, version);
                        return Ok(CurveStep::NeedMore { consumed });
                    };
                    let pending = welcomed.initiate(body)?;
                    return Ok(CurveStep::Initiated {
                        consumed: consumed + used,
                        pending: Box::new(pending),
                        version,
                    });
                }
                CurveHandshake::Over => return Ok(CurveStep::NeedMore { consumed }),
            }
        }
    }
}

/// The body of the command frame at the start of `bytes` and the bytes it
/// takes, if it is all there.
fn command<'b>(
    bytes: &'b [u8],
    decoder: &Decoder,
    expected: &'static str,
) -> Result<Option<(&'b [u8], usize)>, CurveHandshakeError> {
    let Some((frame, used)) = decoder.decode(bytes)? else {
        return Ok(None);
    };
    if !frame.command() {
        return Err(CurveHandshakeError::NotCommand(expected));
    }
    Ok(Some((&bytes[frame.body], used)))
}

/// Appends `frames` (one message) to `out`, each frame in its own MESSAGE
/// box: CURVE's counterpart of encoding them.
pub fn seal_frames(
    session: &mut Session,
    frames: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        session.seal_frame(i < last, frame, out)?;
    }
    Ok(())
}

/// Appends the frames of `wire` (plain ZMTP frames, as a held message
/// keeps them) to `out`, sealed; commands keep their COMMAND flag inside
/// the box.
pub fn seal_wire(
    session: &mut Session,
    wire: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let decoder = Decoder::new(usize::MAX);
    let mut rest = wire;
    // The wire was encoded by this proxy: every frame decodes.
    while let Ok(Some((frame, used))) = decoder.decode(rest) {
        let body = &rest[frame.body.clone()];
        if frame.command() {
            match Command::parse(body) {
                Ok(command) => session.seal_command(&command, out)?,
                Err(_) => return Err(MessageError::Seal),
            }
        } else {
            session.seal_frame(frame.more(), body, out)?;
        }
        rest = &rest[used..];
    }
    Ok(())
}

/// A plain command frame, for a NULL connection.
pub fn plain_command(command: &Command<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    command.encode(&mut out);
    out
}

/// A server and a client session after a whole handshake, for tests of
/// the boxed paths.
#[cfg(test)]
pub(crate) fn session_pair() -> (Session, Session) {
    use zmtp::curve::AwaitingWelcome;
    use zmtp::{Metadata, SocketType};
    let body = |wire: &[u8]| match Decoder::new(1 << 20).decode(wire) {
        Ok(Some((frame, _))) => wire[frame.body].to_vec(),
        other => panic!("no frame: {other:?}"),
    };
    {
        let server_keys = KeyPair::generate(&mut OsRng);
        let mut hello = Vec::new();
        let client = AwaitingWelcome::hello(
            KeyPair::generate(&mut OsRng),
            server_keys.public(),
            &mut OsRng,
            &mut hello,
        )
        .expect("hello");
        let mut welcome = Vec::new();
        let welcomed = Server::new(server_keys)
            .welcome(&body(&hello), &mut OsRng, &mut welcome)
            .expect("welcome");
        let ours = Metadata::basic(SocketType::Dealer, None).expect("metadata");
        let mut initiate = Vec::new();
        let client = client
            .initiate(&body(&welcome), &ours, &mut OsRng, &mut initiate)
            .expect("initiate");
        let mut ready = Vec::new();
        let theirs = Metadata::basic(SocketType::Router, None).expect("metadata");
        let server = welcomed
            .initiate(&body(&initiate))
            .expect("pending")
            .accept(&theirs, &mut ready)
            .expect("ready");
        let (client, _) = client.ready(&body(&ready)).expect("session");
        (server, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::AuthorizedKeys;
    use zmtp::curve::AwaitingWelcome;
    use zmtp::{encode_header, Flags, Metadata, SocketType};

    /// The body of the first frame of `wire`.
    fn body(wire: &[u8]) -> Vec<u8> {
        match Decoder::new(1 << 20).decode(wire) {
            Ok(Some((frame, _))) => wire[frame.body].to_vec(),
            other => panic!("no frame: {other:?}"),
        }
    }

    #[test]
    fn a_handshake_fed_in_pieces_yields_the_client_key_and_identity() {
        let server_keys = KeyPair::generate(&mut OsRng);
        let client_keys = KeyPair::generate(&mut OsRng);
        let decoder = Decoder::new(1 << 20);
        let mut handshake = CurveHandshake::Greeting(Server::new(server_keys.clone()));
        let mut wire = greeting::encode_with(Mechanism::Curve, false).to_vec();
        let client = AwaitingWelcome::hello(
            client_keys.clone(),
            server_keys.public(),
            &mut OsRng,
            &mut wire,
        )
        .expect("hello");
        let mut welcome = Vec::new();
        // Greeting and HELLO, a byte at a time.
        let mut at = 0;
        for end in 1..=wire.len() {
            match handshake
                .advance(&wire[at..end], &decoder, &mut welcome)
                .expect("valid")
            {
                CurveStep::NeedMore { consumed } => at += consumed,
                CurveStep::Initiated { .. } => panic!("no INITIATE yet"),
            }
        }
        assert_eq!(at, wire.len());
        let metadata = Metadata::basic(SocketType::Dealer, Some(b"node1/a")).expect("metadata");
        let mut initiate = Vec::new();
        client
            .initiate(&body(&welcome), &metadata, &mut OsRng, &mut initiate)
            .expect("initiate");
        match handshake
            .advance(&initiate, &decoder, &mut welcome)
            .expect("valid")
        {
            CurveStep::Initiated {
                consumed,
                pending,
                version,
            } => {
                assert_eq!(consumed, initiate.len());
                assert_eq!(version, Version::V3_1);
                assert_eq!(pending.client_key(), &client_keys.public());
                assert_eq!(pending.metadata().identity(), Some(&b"node1/a"[..]));
            }
            CurveStep::NeedMore { .. } => panic!("INITIATE was all there"),
        }
    }

    #[test]
    fn a_null_greeting_and_a_wrong_server_key_fail() {
        let decoder = Decoder::new(1 << 20);
        let server_keys = KeyPair::generate(&mut OsRng);
        let mut handshake = CurveHandshake::Greeting(Server::new(server_keys));
        let null = greeting::encode(false);
        assert!(matches!(
            handshake.advance(&null, &decoder, &mut Vec::new()),
            Err(CurveHandshakeError::Greeting(_))
        ));
        let mut handshake = CurveHandshake::Greeting(Server::new(KeyPair::generate(&mut OsRng)));
        let mut wire = greeting::encode_with(Mechanism::Curve, false).to_vec();
        let other_server = KeyPair::generate(&mut OsRng);
        AwaitingWelcome::hello(
            KeyPair::generate(&mut OsRng),
            other_server.public(),
            &mut OsRng,
            &mut wire,
        )
        .expect("hello");
        assert_eq!(
            handshake
                .advance(&wire, &decoder, &mut Vec::new())
                .map(|_| ()),
            Err(CurveHandshakeError::Curve(CurveError::WrongServerKey))
        );
    }

    const A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const B: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";

    #[test]
    fn admission_by_key_and_identity_follows_reloads() {
        let key = |z85| PublicKey::from_z85(z85).expect("key");
        let shared =
            SharedKeys::new(AuthorizedKeys::parse(&format!("{A} node1/*\n{B}\n")).expect("parses"));
        let mut authorizer = Authorizer::new(shared.clone());
        assert!(!authorizer.refresh());
        assert_eq!(authorizer.admit(&key(A), Some(b"node1/x")), Ok(()));
        assert_eq!(
            authorizer.admit(&key(A), Some(b"node2/x")),
            Err(Refusal::Identity)
        );
        // A generated identity (no Identity property) is not node1's.
        assert_eq!(
            authorizer.admit(&key(A), Some(&[0, 0, 0, 0, 1])),
            Err(Refusal::Identity)
        );
        assert_eq!(authorizer.admit(&key(B), Some(&[0, 0, 0, 0, 1])), Ok(()));
        // A subscriber: the key alone.
        assert_eq!(authorizer.admit(&key(A), None), Ok(()));
        shared.replace(AuthorizedKeys::parse(&format!("{B}\n")).expect("parses"));
        assert!(authorizer.refresh());
        assert_eq!(authorizer.admit(&key(A), None), Err(Refusal::UnknownKey));
        assert_eq!(
            authorizer.admit(&key(A), Some(b"node1/x")),
            Err(Refusal::UnknownKey)
        );
    }

    #[test]
    fn held_wire_is_sealed_frame_by_frame_with_its_flags() {
        let (mut server, mut client) = session_pair();
        let mut wire = Vec::new();
        for (i, f) in [&b""[..], b"1.0", b"payload"].iter().enumerate() {
            wire.extend_from_slice(encode_header(Flags::message(i < 2), f.len()).as_bytes());
            wire.extend_from_slice(f);
        }
        wire.extend(plain_command(&Command::Ping {
            ttl: 0,
            context: b"",
        }));
        let mut sealed = Vec::new();
        seal_wire(&mut server, &wire, &mut sealed).expect("sealed");
        let decoder = Decoder::new(1 << 20);
        let mut rest = &sealed[..];
        let mut got = Vec::new();
        while let Ok(Some((frame, used))) = decoder.decode(rest) {
            let mut body = rest[frame.body].to_vec();
            let opened = client.open(&mut body).expect("opens");
            got.push((opened.more, opened.command, body[opened.payload].to_vec()));
            rest = &rest[used..];
        }
        assert_eq!(
            got,
            vec![
                (true, false, b"".to_vec()),
                (true, false, b"1.0".to_vec()),
                (false, false, b"payload".to_vec()),
                (false, true, b"\x04PING\x00\x00".to_vec()),
            ]
        );
    }
}
