//! CurveZMQ (RFC 26, ZMTP-CURVE): the CURVE security mechanism as libzmq
//! 4.3 speaks it, without I/O.
//!
//! A CURVE connection opens with greetings naming CURVE
//! ([`crate::greeting::encode_with`]), then four handshake commands, each
//! one frame:
//! - the client's HELLO proves it knows the server's long-term public key
//!   (a box of zeros from its ephemeral key to that key);
//! - the server's WELCOME carries the server's ephemeral public key and a
//!   cookie: the client's ephemeral public key and the server's ephemeral
//!   secret key, sealed under a key only this connection knows, so the
//!   server could in principle forget them until INITIATE;
//! - the client's INITIATE returns the cookie and, boxed between the
//!   ephemeral keys, its long-term public key, a vouch (its ephemeral key
//!   and the server's key, boxed from its long-term key: the proof it holds
//!   that key) and its metadata (`Socket-Type`, `Identity`);
//! - the server's READY carries the server's metadata, boxed; or, when the
//!   caller refuses the client, a plain ERROR.
//!
//! After that every frame, commands such as PING and SUBSCRIBE included,
//! travels inside a MESSAGE box with a strictly increasing nonce
//! ([`Session`]).
//!
//! [`server`] and [`client`] are the two state machines, one type per
//! state, so a step out of order does not compile. What needs randomness
//! (ephemeral keys, cookie key, random nonces) takes the generator as an
//! argument: the engine passes [`OsRng`]. [`z85`] reads and writes keys in
//! their printable form.
//!
//! Every step takes the body of one received command frame (the bytes
//! after the frame header) and appends whole frames, headers included, to
//! an output buffer:
//!
//! ```
//! use zmtp::curve::{AwaitingWelcome, KeyPair, OsRng, Server};
//! use zmtp::{Decoder, Metadata, SocketType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The body of the one frame in `wire`.
//! let body = |wire: &[u8]| -> Vec<u8> {
//!     match Decoder::new(1 << 20).decode(wire) {
//!         Ok(Some((frame, _))) => wire[frame.body].to_vec(),
//!         _ => Vec::new(),
//!     }
//! };
//! let server_keys = KeyPair::generate(&mut OsRng);
//! let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
//!
//! let client = AwaitingWelcome::hello(
//!     KeyPair::generate(&mut OsRng),
//!     server_keys.public(),
//!     &mut OsRng,
//!     &mut to_server,
//! )?;
//! let server = Server::new(server_keys).welcome(&body(&to_server), &mut OsRng, &mut to_client)?;
//! let ours = Metadata::basic(SocketType::Dealer, Some(b"me"))?;
//! to_server.clear();
//! let client = client.initiate(&body(&to_client), &ours, &mut OsRng, &mut to_server)?;
//!
//! let pending = server.initiate(&body(&to_server))?;
//! // Authorize here: pending.client_key(), pending.metadata().identity().
//! assert_eq!(pending.metadata().identity(), Some(&b"me"[..]));
//! to_client.clear();
//! let mut server_session =
//!     pending.accept(&Metadata::basic(SocketType::Router, None)?, &mut to_client)?;
//! let (mut client_session, _server_metadata) = client.ready(&body(&to_client))?;
//!
//! let mut wire = Vec::new();
//! client_session.seal_frame(false, b"hello", &mut wire)?;
//! let mut received = body(&wire);
//! let opened = server_session.open(&mut received)?;
//! assert_eq!(&received[opened.payload], b"hello");
//! # Ok(())
//! # }
//! ```

pub mod boxes;
pub mod client;
pub mod server;
pub mod z85;

pub use boxes::{MessageError, Opened, Session};
pub use client::{AwaitingReady, AwaitingWelcome};
pub use rand_core::{CryptoRngCore, OsRng};
pub use server::{Pending, Server, Welcomed};

use crypto_box::{PublicKey, SecretKey};
use thiserror::Error;

use crate::command::{Command, CommandError, Metadata};

/// Length of a CURVE key, public or secret.
pub const KEY_LEN: usize = 32;

/// A long-term CURVE key pair: the server's identity, or a client's.
///
/// The secret stays inside: only the public half can be read back.
#[derive(Clone)]
pub struct KeyPair {
    secret: SecretKey,
    public: [u8; KEY_LEN],
}

impl KeyPair {
    /// The key pair of a 32-byte secret key (the public key is derived, as
    /// `zmq_curve_public` does).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> KeyPair {
        let secret = SecretKey::from_bytes(secret);
        let public = secret.public_key().to_bytes();
        KeyPair { secret, public }
    }

    /// The key pair of a 40-character Z85 secret key, the form libzmq's
    /// `zmq_curve_keypair` prints and `ZMQ_CURVE_SECRETKEY` takes.
    pub fn from_z85_secret(secret: &str) -> Result<KeyPair, z85::Z85Error> {
        z85::decode_key(secret).map(KeyPair::from_secret)
    }

    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> KeyPair {
        KeyPair::from_secret(random(rng))
    }

    /// The public key, the one peers are configured with.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

impl std::fmt::Debug for KeyPair {
    // The secret key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &z85::encode_key(&self.public))
            .finish_non_exhaustive()
    }
}

/// Why a CURVE handshake failed. Every variant is fatal for the connection;
/// libzmq just closes it in all but [`HandshakeError::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// A command other than the one this step expects.
    #[error("expected a {expected} command, got {got:?}")]
    UnexpectedCommand {
        /// The command this step needs.
        expected: &'static str,
        /// What arrived (its name, or a description of the bytes).
        got: String,
    },
    /// The expected command with the wrong size.
    #[error("{command} command of {len} bytes is malformed")]
    Malformed {
        /// The command's name.
        command: &'static str,
        /// Its body length.
        len: usize,
    },
    /// A HELLO for a CurveZMQ version other than 1.0.
    #[error("HELLO asks for CurveZMQ version {major}.{minor}; only 1.0 exists")]
    Version {
        /// Version major sent.
        major: u8,
        /// Version minor sent.
        minor: u8,
    },
    /// The HELLO box does not open with our secret key: the client was
    /// configured with another server public key.
    #[error("cannot open HELLO: the client uses another server key (or the bytes were altered)")]
    WrongServerKey,
    /// A box that does not open: altered bytes, or keys that do not match.
    #[error("cannot open the {what} box: wrong key or altered bytes")]
    Crypto {
        /// Which box.
        what: &'static str,
    },
    /// An INITIATE whose cookie or vouch names other keys than this
    /// connection's.
    #[error("INITIATE {what} does not match this connection's keys")]
    KeyMismatch {
        /// "cookie" or "vouch".
        what: &'static str,
    },
    /// Metadata inside INITIATE or READY that does not parse.
    #[error("peer metadata: {0}")]
    Metadata(#[from] CommandError),
    /// The peer answered with ERROR.
    #[error("peer refused the handshake: {reason}")]
    Refused {
        /// The reason, non-UTF-8 bytes replaced.
        reason: String,
    },
    /// The cipher refused to seal (only for sizes beyond what a frame holds).
    #[error("cannot seal the {what} box")]
    Seal {
        /// Which box.
        what: &'static str,
    },
}

/// The metadata a peer sent inside a box, owned and already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMetadata {
    bytes: Vec<u8>,
}

impl PeerMetadata {
    /// Validates `bytes` as READY-style properties.
    fn new(bytes: Vec<u8>) -> Result<PeerMetadata, HandshakeError> {
        Metadata::parse(&bytes)?;
        Ok(PeerMetadata { bytes })
    }

    /// The properties (`Socket-Type`, `Identity`, ...).
    pub fn metadata(&self) -> Metadata<'_> {
        // `new` parsed these very bytes successfully, so the default (no
        // properties) is never returned.
        Metadata::parse(&self.bytes).unwrap_or_default()
    }
}

/// The error for a body that is not the expected command; an ERROR from
/// the peer says why it gave up.
fn unexpected(expected: &'static str, body: &[u8]) -> HandshakeError {
    match Command::parse(body) {
        Ok(Command::Error { reason }) => HandshakeError::Refused {
            reason: String::from_utf8_lossy(reason).into_owned(),
        },
        Ok(command) => HandshakeError::UnexpectedCommand {
            expected,
            got: String::from_utf8_lossy(command.name()).into_owned(),
        },
        Err(err) => HandshakeError::UnexpectedCommand {
            expected,
            got: err.to_string(),
        },
    }
}

/// `N` random bytes.
fn random<const N: usize>(rng: &mut impl CryptoRngCore) -> [u8; N] {
    let mut bytes = [0u8; N];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// An ephemeral (per-connection) key pair.
fn ephemeral(rng: &mut impl CryptoRngCore) -> (SecretKey, PublicKey) {
    let secret = SecretKey::from_bytes(random(rng));
    let public = secret.public_key();
    (secret, public)
}
