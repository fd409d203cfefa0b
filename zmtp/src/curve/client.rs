//! The client side of the CURVE handshake: HELLO out; WELCOME in, INITIATE
//! out; READY in.
//!
//! The byte layouts are the server's (see [`super::server`]); the client
//! follows libzmq 4.3's `curve_client.cpp`: HELLO uses short nonce 1 and
//! INITIATE 2, so MESSAGE boxes start at 3; an ERROR instead of WELCOME or
//! READY ends the handshake with [`HandshakeError::Refused`].

use crypto_box::{PublicKey, SalsaBox, SecretKey};

use super::boxes::{counter_nonce, open, random_nonce, seal, Reader, Session, TAG_LEN};
use super::{
    ephemeral, random, unexpected, CryptoRngCore, HandshakeError, KeyPair, PeerMetadata, KEY_LEN,
};
use crate::command::Metadata;
use crate::frame::{encode_header, Flags};

/// Short nonce of HELLO.
const HELLO_NONCE: u64 = 1;
/// Short nonce of INITIATE; MESSAGE boxes follow from 3.
const INITIATE_NONCE: u64 = 2;
/// Length of a HELLO body.
const HELLO_LEN: usize = 200;
/// Exact length of a WELCOME body.
const WELCOME_LEN: usize = 168;
/// Smallest READY body: an empty metadata box.
const MIN_READY_LEN: usize = 6 + 8 + TAG_LEN;

/// A CURVE client connection that sent HELLO and waits for WELCOME.
#[derive(Clone)]
pub struct AwaitingWelcome {
    keys: KeyPair,
    server_key: [u8; KEY_LEN],
    ephemeral_secret: SecretKey,
}

impl std::fmt::Debug for AwaitingWelcome {
    // Secrets must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingWelcome")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl AwaitingWelcome {
    /// Starts a handshake with our long-term `keys` towards the server
    /// whose public key is `server_key`: appends the HELLO frame to `out`.
    pub fn hello(
        keys: KeyPair,
        server_key: [u8; KEY_LEN],
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<AwaitingWelcome, HandshakeError> {
        let (ephemeral_secret, ephemeral_public) = ephemeral(rng);
        let start = out.len();
        out.extend_from_slice(encode_header(Flags::COMMAND, HELLO_LEN).as_bytes());
        out.extend_from_slice(b"\x05HELLO\x01\x00");
        // Anti-amplification padding: HELLO is as long as WELCOME's answer
        // plus a margin, so the server never sends more than it received.
        out.resize(out.len() + 72, 0);
        out.extend_from_slice(ephemeral_public.as_bytes());
        out.extend_from_slice(&HELLO_NONCE.to_be_bytes());
        let to_server = SalsaBox::new(&PublicKey::from_bytes(server_key), &ephemeral_secret);
        if seal(
            &to_server,
            &counter_nonce(b"CurveZMQHELLO---", HELLO_NONCE.to_be_bytes()),
            &[0u8; 64],
            out,
        )
        .is_err()
        {
            out.truncate(start);
            return Err(HandshakeError::Seal { what: "HELLO" });
        }
        Ok(AwaitingWelcome {
            keys,
            server_key,
            ephemeral_secret,
        })
    }

    /// Opens the server's WELCOME body and appends our INITIATE frame,
    /// carrying our long-term key, its vouch and `ours` (usually
    /// [`Metadata::basic`]).
    pub fn initiate(
        self,
        welcome: &[u8],
        ours: &Metadata<'_>,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<AwaitingReady, HandshakeError> {
        let len = welcome.len();
        let mut reader = Reader::new(welcome);
        if reader.take::<8>() != Some(b"\x07WELCOME") {
            return Err(unexpected("WELCOME", welcome));
        }
        let malformed = || HandshakeError::Malformed {
            command: "WELCOME",
            len,
        };
        if len != WELCOME_LEN {
            return Err(malformed());
        }
        let welcome_random = *reader.take::<16>().ok_or_else(malformed)?;
        let server_key = PublicKey::from_bytes(self.server_key);
        let plain = open(
            &SalsaBox::new(&server_key, &self.ephemeral_secret),
            &random_nonce(b"WELCOME-", welcome_random),
            reader.rest(),
        )
        .map_err(|_| HandshakeError::Crypto { what: "WELCOME" })?;
        let mut inner = Reader::new(&plain);
        let server_ephemeral =
            PublicKey::from_bytes(*inner.take::<KEY_LEN>().ok_or_else(malformed)?);
        // The cookie (its nonce and box) goes back to the server untouched.
        let cookie = inner.rest();

        let vouch_random: [u8; 16] = random(rng);
        let mut vouch_plain = Vec::with_capacity(2 * KEY_LEN);
        vouch_plain.extend_from_slice(self.ephemeral_secret.public_key().as_bytes());
        vouch_plain.extend_from_slice(&self.server_key);
        let mut plain = Vec::new();
        plain.extend_from_slice(&self.keys.public());
        plain.extend_from_slice(&vouch_random);
        seal(
            &SalsaBox::new(&server_ephemeral, self.keys.secret()),
            &random_nonce(b"VOUCH---", vouch_random),
            &vouch_plain,
            &mut plain,
        )
        .map_err(|_| HandshakeError::Seal { what: "vouch" })?;
        ours.encode_properties(&mut plain);

        let cipher = SalsaBox::new(&server_ephemeral, &self.ephemeral_secret);
        let body_len = 9 + cookie.len() + 8 + TAG_LEN + plain.len();
        let start = out.len();
        out.extend_from_slice(encode_header(Flags::COMMAND, body_len).as_bytes());
        out.extend_from_slice(b"\x08INITIATE");
        out.extend_from_slice(cookie);
        out.extend_from_slice(&INITIATE_NONCE.to_be_bytes());
        if seal(
            &cipher,
            &counter_nonce(b"CurveZMQINITIATE", INITIATE_NONCE.to_be_bytes()),
            &plain,
            out,
        )
        .is_err()
        {
            out.truncate(start);
            return Err(HandshakeError::Seal { what: "INITIATE" });
        }
        Ok(AwaitingReady { cipher })
    }
}

/// A CURVE client connection that sent INITIATE and waits for READY.
pub struct AwaitingReady {
    cipher: SalsaBox,
}

impl std::fmt::Debug for AwaitingReady {
    // The shared key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingReady").finish_non_exhaustive()
    }
}

impl AwaitingReady {
    /// Opens the server's READY body: the connection's [`Session`] and the
    /// server's metadata.
    pub fn ready(self, ready: &[u8]) -> Result<(Session, PeerMetadata), HandshakeError> {
        let len = ready.len();
        let mut reader = Reader::new(ready);
        if reader.take::<6>() != Some(b"\x05READY") {
            return Err(unexpected("READY", ready));
        }
        let malformed = || HandshakeError::Malformed {
            command: "READY",
            len,
        };
        if len < MIN_READY_LEN {
            return Err(malformed());
        }
        let short = *reader.take::<8>().ok_or_else(malformed)?;
        let plain = open(
            &self.cipher,
            &counter_nonce(b"CurveZMQREADY---", short),
            reader.rest(),
        )
        .map_err(|_| HandshakeError::Crypto { what: "READY" })?;
        let metadata = PeerMetadata::new(plain)?;
        let session = Session::client(self.cipher, INITIATE_NONCE + 1, u64::from_be_bytes(short));
        Ok((session, metadata))
    }
}
