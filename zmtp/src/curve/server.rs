//! The server side of the CURVE handshake: HELLO in, WELCOME out;
//! INITIATE in, the client's key and metadata to the caller; READY or ERROR
//! out.
//!
//! Layouts and checks follow libzmq 4.3's `curve_server.cpp`, byte for
//! byte, so libzmq, pyzmq and oslo.messaging clients connect:
//! - HELLO, exactly 200 bytes: `\x05HELLO`, version 1.0, 72 zero bytes of
//!   anti-amplification padding (not checked, as in libzmq), the client's
//!   ephemeral key C', short nonce, Box[64 zeros](C'->S) under
//!   `CurveZMQHELLO---`;
//! - WELCOME, 168 bytes: `\x07WELCOME`, 16 random nonce bytes,
//!   Box[S' + cookie nonce + cookie](S->C') under `WELCOME-`, the cookie
//!   being SecretBox[C' + s'](cookie key) under `COOKIE--`;
//! - INITIATE, at least 257 bytes: `\x08INITIATE`, the cookie (nonce and
//!   box), short nonce, Box[C + vouch nonce + vouch + metadata](C'->S')
//!   under `CurveZMQINITIATE`, the vouch being Box[C' + S](C->S') under
//!   `VOUCH---`;
//! - READY: `\x05READY`, short nonce 1, Box[metadata](S'->C') under
//!   `CurveZMQREADY---`.
//!
//! Where libzmq asks ZAP whether to admit the client, [`Pending`] hands the
//! client's long-term key and metadata to the caller, who answers with
//! [`Pending::accept`] or [`Pending::refuse`].

use crypto_box::{PublicKey, SalsaBox, SecretKey};
use crypto_secretbox::{KeyInit, XSalsa20Poly1305};

use super::boxes::{counter_nonce, open, random_nonce, seal, Reader, Session, TAG_LEN};
use super::{ephemeral, random, CryptoRngCore, HandshakeError, KeyPair, PeerMetadata, KEY_LEN};
use crate::command::{Command, Metadata};
use crate::frame::{encode_header, Flags};

/// Exact length of a HELLO body.
const HELLO_LEN: usize = 200;
/// Length of a WELCOME body.
const WELCOME_LEN: usize = 168;
/// Smallest INITIATE body: no metadata at all.
const MIN_INITIATE_LEN: usize = 257;
/// Our first short nonce, READY's; MESSAGE boxes follow from 2.
const READY_NONCE: u64 = 1;

/// A CURVE server connection waiting for the client's HELLO.
#[derive(Debug, Clone)]
pub struct Server {
    keys: KeyPair,
}

impl Server {
    /// A connection served with our long-term `keys`.
    pub fn new(keys: KeyPair) -> Server {
        Server { keys }
    }

    /// Checks the client's HELLO body and appends our WELCOME frame to
    /// `out`. [`HandshakeError::WrongServerKey`] means the client was given
    /// another server public key; libzmq closes the connection without a
    /// word then, and so should the caller.
    pub fn welcome(
        self,
        hello: &[u8],
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<Welcomed, HandshakeError> {
        let len = hello.len();
        let mut reader = Reader::new(hello);
        if reader.take::<6>() != Some(b"\x05HELLO") {
            return Err(unexpected("HELLO", hello));
        }
        if len != HELLO_LEN {
            return Err(HandshakeError::Malformed {
                command: "HELLO",
                len,
            });
        }
        let malformed = || HandshakeError::Malformed {
            command: "HELLO",
            len,
        };
        let &[major, minor] = reader.take::<2>().ok_or_else(malformed)?;
        if (major, minor) != (1, 0) {
            return Err(HandshakeError::Version { major, minor });
        }
        reader.take::<72>().ok_or_else(malformed)?;
        let client_ephemeral =
            PublicKey::from_bytes(*reader.take::<KEY_LEN>().ok_or_else(malformed)?);
        let short = *reader.take::<8>().ok_or_else(malformed)?;
        let signature = reader.rest();
        let to_us = SalsaBox::new(&client_ephemeral, self.keys.secret());
        open(
            &to_us,
            &counter_nonce(b"CurveZMQHELLO---", short),
            signature,
        )
        .map_err(|_| HandshakeError::WrongServerKey)?;

        let (ephemeral_secret, ephemeral_public) = ephemeral(rng);
        let cookie_key: [u8; 32] = random(rng);
        let cookie_random: [u8; 16] = random(rng);
        let mut cookie_plain = Vec::with_capacity(2 * KEY_LEN);
        cookie_plain.extend_from_slice(client_ephemeral.as_bytes());
        cookie_plain.extend_from_slice(&ephemeral_secret.to_bytes());
        let mut cookie = Vec::with_capacity(TAG_LEN + 2 * KEY_LEN);
        seal(
            &XSalsa20Poly1305::new(&cookie_key.into()),
            &random_nonce(b"COOKIE--", cookie_random),
            &cookie_plain,
            &mut cookie,
        )
        .map_err(|_| HandshakeError::Seal { what: "cookie" })?;

        let mut welcome_plain = Vec::with_capacity(128);
        welcome_plain.extend_from_slice(ephemeral_public.as_bytes());
        welcome_plain.extend_from_slice(&cookie_random);
        welcome_plain.extend_from_slice(&cookie);
        let welcome_random: [u8; 16] = random(rng);
        let start = out.len();
        out.extend_from_slice(encode_header(Flags::COMMAND, WELCOME_LEN).as_bytes());
        out.extend_from_slice(b"\x07WELCOME");
        out.extend_from_slice(&welcome_random);
        if seal(
            &to_us,
            &random_nonce(b"WELCOME-", welcome_random),
            &welcome_plain,
            out,
        )
        .is_err()
        {
            out.truncate(start);
            return Err(HandshakeError::Seal { what: "WELCOME" });
        }
        Ok(Welcomed {
            server_public: self.keys.public(),
            client_ephemeral,
            ephemeral_secret,
            cookie_key,
        })
    }
}

/// A CURVE server connection that sent WELCOME and waits for INITIATE.
#[derive(Clone)]
pub struct Welcomed {
    server_public: [u8; KEY_LEN],
    client_ephemeral: PublicKey,
    ephemeral_secret: SecretKey,
    cookie_key: [u8; 32],
}

impl std::fmt::Debug for Welcomed {
    // Secrets must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Welcomed").finish_non_exhaustive()
    }
}

impl Welcomed {
    /// Checks the client's INITIATE body: our cookie, the client's
    /// long-term key and its vouch, the metadata. On success the caller
    /// decides from [`Pending::client_key`] and [`Pending::metadata`].
    pub fn initiate(self, initiate: &[u8]) -> Result<Pending, HandshakeError> {
        let len = initiate.len();
        let mut reader = Reader::new(initiate);
        if reader.take::<9>() != Some(b"\x08INITIATE") {
            return Err(unexpected("INITIATE", initiate));
        }
        let malformed = || HandshakeError::Malformed {
            command: "INITIATE",
            len,
        };
        if len < MIN_INITIATE_LEN {
            return Err(malformed());
        }
        let cookie_random = *reader.take::<16>().ok_or_else(malformed)?;
        let cookie = reader.take::<80>().ok_or_else(malformed)?;
        let short = *reader.take::<8>().ok_or_else(malformed)?;
        let sealed = reader.rest();

        let cookie_plain = open(
            &XSalsa20Poly1305::new(&self.cookie_key.into()),
            &random_nonce(b"COOKIE--", cookie_random),
            cookie,
        )
        .map_err(|_| HandshakeError::Crypto { what: "cookie" })?;
        let ephemeral_secret = self.ephemeral_secret.to_bytes();
        if cookie_plain[..KEY_LEN] != self.client_ephemeral.as_bytes()[..]
            || cookie_plain[KEY_LEN..] != ephemeral_secret[..]
        {
            return Err(HandshakeError::KeyMismatch { what: "cookie" });
        }

        let cipher = SalsaBox::new(&self.client_ephemeral, &self.ephemeral_secret);
        let plain = open(&cipher, &counter_nonce(b"CurveZMQINITIATE", short), sealed)
            .map_err(|_| HandshakeError::Crypto { what: "INITIATE" })?;
        let mut inner = Reader::new(&plain);
        let client_key = *inner.take::<KEY_LEN>().ok_or_else(malformed)?;
        let vouch_random = *inner.take::<16>().ok_or_else(malformed)?;
        let vouch = inner.take::<80>().ok_or_else(malformed)?;
        let metadata = inner.rest().to_vec();

        let vouch_plain = open(
            &SalsaBox::new(&PublicKey::from_bytes(client_key), &self.ephemeral_secret),
            &random_nonce(b"VOUCH---", vouch_random),
            vouch,
        )
        .map_err(|_| HandshakeError::Crypto { what: "vouch" })?;
        // libzmq checks only C'; RFC 26 asks for S too, and every libzmq
        // client puts it there.
        if vouch_plain[..KEY_LEN] != self.client_ephemeral.as_bytes()[..]
            || vouch_plain[KEY_LEN..] != self.server_public[..]
        {
            return Err(HandshakeError::KeyMismatch { what: "vouch" });
        }
        Ok(Pending {
            client_key,
            metadata: PeerMetadata::new(metadata)?,
            cipher,
            client_nonce: u64::from_be_bytes(short),
        })
    }
}

/// A client that completed INITIATE, waiting for the caller's verdict.
pub struct Pending {
    client_key: [u8; KEY_LEN],
    metadata: PeerMetadata,
    cipher: SalsaBox,
    client_nonce: u64,
}

impl std::fmt::Debug for Pending {
    // The shared key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("client_key", &super::z85::encode_key(&self.client_key))
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The client's long-term public key, proven by its vouch: what to
    /// authorize.
    pub fn client_key(&self) -> &[u8; KEY_LEN] {
        &self.client_key
    }

    /// The client's metadata (`Socket-Type`, `Identity`, ...), to check
    /// with [`Metadata::check_peer`].
    pub fn metadata(&self) -> Metadata<'_> {
        self.metadata.metadata()
    }

    /// Admits the client: appends our READY frame with `ours` (usually
    /// [`Metadata::basic`]) and returns the connection's [`Session`].
    pub fn accept(self, ours: &Metadata<'_>, out: &mut Vec<u8>) -> Result<Session, HandshakeError> {
        let mut plain = Vec::new();
        ours.encode_properties(&mut plain);
        let body_len = 6 + 8 + TAG_LEN + plain.len();
        let start = out.len();
        out.extend_from_slice(encode_header(Flags::COMMAND, body_len).as_bytes());
        out.extend_from_slice(b"\x05READY");
        out.extend_from_slice(&READY_NONCE.to_be_bytes());
        if seal(
            &self.cipher,
            &counter_nonce(b"CurveZMQREADY---", READY_NONCE.to_be_bytes()),
            &plain,
            out,
        )
        .is_err()
        {
            out.truncate(start);
            return Err(HandshakeError::Seal { what: "READY" });
        }
        Ok(Session::server(
            self.cipher,
            READY_NONCE + 1,
            self.client_nonce,
        ))
    }

    /// Refuses the client: appends a plain ERROR frame (cut to 255 bytes),
    /// as libzmq sends when ZAP denies; the caller then closes.
    pub fn refuse(self, reason: &[u8], out: &mut Vec<u8>) {
        Command::Error { reason }.encode(out);
    }
}

/// The error for a body that is not the expected command; an ERROR from
/// the peer says why it gave up.
pub(crate) fn unexpected(expected: &'static str, body: &[u8]) -> HandshakeError {
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
