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
use super::{
    ephemeral, random, unexpected, CryptoRngCore, HandshakeError, KeyPair, PeerMetadata, KEY_LEN,
};
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
    /// as libzmq sends when ZAP denies; the caller then closes. A libzmq
    /// client reports a reason of `300`, `400` or `500` (a ZAP status
    /// code; libzmq's own refusals send `400`) as the monitor event
    /// `ZMQ_EVENT_HANDSHAKE_FAILED_AUTH` with that code, and any other
    /// reason silently.
    pub fn refuse(self, reason: &[u8], out: &mut Vec<u8>) {
        Command::Error { reason }.encode(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::{AwaitingWelcome, OsRng};
    use crate::frame::Decoder;
    use crate::socket_type::SocketType;

    /// The body of the single command frame in `wire`.
    fn body(wire: &[u8]) -> Vec<u8> {
        let Ok(Some((header, used))) = Decoder::new(1 << 20).decode(wire) else {
            panic!("not a frame");
        };
        assert_eq!(used, wire.len(), "exactly one frame");
        assert!(header.command(), "handshake frames are commands");
        wire[header.body].to_vec()
    }

    struct Keys {
        server: KeyPair,
        client: KeyPair,
    }

    fn keys() -> Keys {
        Keys {
            server: KeyPair::generate(&mut OsRng),
            client: KeyPair::generate(&mut OsRng),
        }
    }

    /// Runs HELLO and WELCOME; returns the client's INITIATE body.
    fn to_initiate(keys: &Keys) -> (Welcomed, Vec<u8>, crate::curve::AwaitingReady) {
        let mut out = Vec::new();
        let client = AwaitingWelcome::hello(
            keys.client.clone(),
            keys.server.public(),
            &mut OsRng,
            &mut out,
        )
        .expect("HELLO");
        let hello = body(&out);
        assert_eq!(hello.len(), HELLO_LEN);
        out.clear();
        let welcomed = Server::new(keys.server.clone())
            .welcome(&hello, &mut OsRng, &mut out)
            .expect("HELLO accepted");
        let welcome = body(&out);
        assert_eq!(welcome.len(), WELCOME_LEN);
        out.clear();
        let ours = Metadata::basic(SocketType::Dealer, Some(b"client-7")).expect("metadata");
        let client = client
            .initiate(&welcome, &ours, &mut OsRng, &mut out)
            .expect("WELCOME accepted");
        (welcomed, body(&out), client)
    }

    #[test]
    fn client_and_server_complete_the_handshake_in_memory() {
        let keys = keys();
        let (welcomed, initiate, client) = to_initiate(&keys);
        // INITIATE = 257 bytes + metadata (Socket-Type DEALER, Identity).
        assert_eq!(initiate.len(), MIN_INITIATE_LEN + 22 + 21);
        let pending = welcomed.initiate(&initiate).expect("INITIATE accepted");
        assert_eq!(pending.client_key(), &keys.client.public());
        assert_eq!(pending.metadata().identity(), Some(&b"client-7"[..]));
        assert_eq!(pending.metadata().socket_type(), Some(&b"DEALER"[..]));

        let mut out = Vec::new();
        let ours = Metadata::basic(SocketType::Router, None).expect("metadata");
        let mut server = pending.accept(&ours, &mut out).expect("READY");
        let (mut client, theirs) = client.ready(&body(&out)).expect("READY accepted");
        assert_eq!(theirs.metadata().socket_type(), Some(&b"ROUTER"[..]));

        let mut wire = Vec::new();
        client.seal_frame(false, b"up", &mut wire).expect("seal");
        let Ok(Some((header, _))) = Decoder::new(1 << 20).decode(&wire) else {
            panic!("not a frame");
        };
        let mut up = wire[header.body].to_vec();
        let opened = server.open(&mut up).expect("opens");
        assert_eq!(&up[opened.payload], b"up");
    }

    #[test]
    fn a_client_with_another_server_key_is_refused_at_hello() {
        let keys = keys();
        let mut out = Vec::new();
        AwaitingWelcome::hello(
            keys.client.clone(),
            KeyPair::generate(&mut OsRng).public(),
            &mut OsRng,
            &mut out,
        )
        .expect("HELLO");
        let hello = body(&out);
        let mut welcome = Vec::new();
        let err = Server::new(keys.server)
            .welcome(&hello, &mut OsRng, &mut welcome)
            .expect_err("HELLO to another key accepted");
        assert_eq!(err, HandshakeError::WrongServerKey);
        assert!(welcome.is_empty());
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let keys = keys();
        let mut out = Vec::new();
        AwaitingWelcome::hello(keys.client, keys.server.public(), &mut OsRng, &mut out)
            .expect("HELLO");
        let hello = body(&out);
        let server = || Server::new(keys.server.clone());
        let welcome = |body: &[u8]| {
            server()
                .welcome(body, &mut OsRng, &mut Vec::new())
                .map(|_| ())
        };
        assert_eq!(
            welcome(&hello[..199]),
            Err(HandshakeError::Malformed {
                command: "HELLO",
                len: 199
            })
        );
        let mut v2 = hello.clone();
        v2[6] = 2;
        assert_eq!(
            welcome(&v2),
            Err(HandshakeError::Version { major: 2, minor: 0 })
        );
        assert!(matches!(
            welcome(b"\x05READY"),
            Err(HandshakeError::UnexpectedCommand {
                expected: "HELLO",
                ..
            })
        ));
        let mut altered = hello.clone();
        altered[150] ^= 1;
        assert_eq!(welcome(&altered), Err(HandshakeError::WrongServerKey));
    }

    #[test]
    fn an_altered_initiate_is_refused() {
        let keys = keys();
        let (welcomed, initiate, _) = to_initiate(&keys);
        // Cookie nonce, cookie, short nonce, box, metadata inside the box.
        for (at, expected) in [
            (9, HandshakeError::Crypto { what: "cookie" }),
            (60, HandshakeError::Crypto { what: "cookie" }),
            (105, HandshakeError::Crypto { what: "INITIATE" }),
            (200, HandshakeError::Crypto { what: "INITIATE" }),
            (
                initiate.len() - 1,
                HandshakeError::Crypto { what: "INITIATE" },
            ),
        ] {
            let mut bad = initiate.clone();
            bad[at] ^= 1;
            assert_eq!(
                welcomed.clone().initiate(&bad).map(|_| ()),
                Err(expected),
                "byte {at}"
            );
        }
        assert_eq!(
            welcomed.clone().initiate(&initiate[..256]).map(|_| ()),
            Err(HandshakeError::Malformed {
                command: "INITIATE",
                len: 256
            })
        );
        assert!(welcomed.initiate(&initiate).is_ok());
    }

    #[test]
    fn an_initiate_is_bound_to_its_connection() {
        // Another connection's INITIATE carries another cookie key's cookie.
        let keys = keys();
        let (welcomed, _, _) = to_initiate(&keys);
        let (_, other_initiate, _) = to_initiate(&keys);
        assert_eq!(
            welcomed.initiate(&other_initiate).map(|_| ()),
            Err(HandshakeError::Crypto { what: "cookie" })
        );
    }

    #[test]
    fn a_refused_client_gets_an_error_it_reports() {
        let keys = keys();
        let (welcomed, initiate, client) = to_initiate(&keys);
        let pending = welcomed.initiate(&initiate).expect("INITIATE accepted");
        let mut out = Vec::new();
        pending.refuse(b"client key not authorized", &mut out);
        let error = body(&out);
        assert_eq!(&error[..7], b"\x05ERROR\x19");
        assert_eq!(
            client.ready(&error).map(|_| ()),
            Err(HandshakeError::Refused {
                reason: "client key not authorized".into()
            })
        );
    }

    #[test]
    fn an_altered_ready_or_welcome_is_refused_by_the_client() {
        let keys = keys();
        let (welcomed, initiate, client) = to_initiate(&keys);
        let mut out = Vec::new();
        let ours = Metadata::basic(SocketType::Router, None).expect("metadata");
        welcomed
            .initiate(&initiate)
            .expect("INITIATE accepted")
            .accept(&ours, &mut out)
            .expect("READY");
        let mut ready = body(&out);
        let last = ready.len() - 1;
        ready[last] ^= 1;
        assert_eq!(
            client.ready(&ready).map(|_| ()),
            Err(HandshakeError::Crypto { what: "READY" })
        );

        let mut out = Vec::new();
        let client = AwaitingWelcome::hello(
            keys.client.clone(),
            keys.server.public(),
            &mut OsRng,
            &mut out,
        )
        .expect("HELLO");
        let hello = body(&out);
        out.clear();
        // A WELCOME from a server with another long-term key.
        let impostor = Server::new(KeyPair::generate(&mut OsRng));
        assert!(impostor.welcome(&hello, &mut OsRng, &mut out).is_err());
        out.clear();
        Server::new(keys.server)
            .welcome(&hello, &mut OsRng, &mut out)
            .expect("HELLO accepted");
        let mut welcome = body(&out);
        welcome[100] ^= 1;
        assert_eq!(
            client
                .initiate(&welcome, &Metadata::default(), &mut OsRng, &mut Vec::new())
                .map(|_| ()),
            Err(HandshakeError::Crypto { what: "WELCOME" })
        );
    }

    #[test]
    fn a_vouch_from_another_long_term_key_is_refused() {
        // A client that claims key C but vouches with another key's secret
        // cannot be built from the public API; forge its INITIATE by hand.
        let keys = keys();
        let (welcomed, _, _) = to_initiate(&keys);
        let mut plain = Vec::new();
        plain.extend_from_slice(&keys.client.public());
        let vouch_random = [7u8; 16];
        plain.extend_from_slice(&vouch_random);
        let liar = KeyPair::generate(&mut OsRng);
        let server_ephemeral = welcomed.ephemeral_secret.public_key();
        let mut vouch_plain = welcomed.client_ephemeral.as_bytes().to_vec();
        vouch_plain.extend_from_slice(&keys.server.public());
        seal(
            &SalsaBox::new(&server_ephemeral, liar.secret()),
            &random_nonce(b"VOUCH---", vouch_random),
            &vouch_plain,
            &mut plain,
        )
        .expect("seal");
        // The rest of INITIATE is genuine: we know the cookie key here.
        let cookie_random = [9u8; 16];
        let mut cookie_plain = welcomed.client_ephemeral.as_bytes().to_vec();
        cookie_plain.extend_from_slice(&welcomed.ephemeral_secret.to_bytes());
        let mut initiate = b"\x08INITIATE".to_vec();
        initiate.extend_from_slice(&cookie_random);
        seal(
            &XSalsa20Poly1305::new(&welcomed.cookie_key.into()),
            &random_nonce(b"COOKIE--", cookie_random),
            &cookie_plain,
            &mut initiate,
        )
        .expect("seal");
        initiate.extend_from_slice(&2u64.to_be_bytes());
        // Sealed from C' to S': only the server's test has C''s secret, so
        // seal from S' to C', the same shared key.
        seal(
            &SalsaBox::new(&welcomed.client_ephemeral, &welcomed.ephemeral_secret),
            &counter_nonce(b"CurveZMQINITIATE", 2u64.to_be_bytes()),
            &plain,
            &mut initiate,
        )
        .expect("seal");
        assert_eq!(
            welcomed.initiate(&initiate).map(|_| ()),
            Err(HandshakeError::Crypto { what: "vouch" })
        );
    }
}
