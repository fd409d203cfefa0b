//! NaCl boxes as CurveZMQ uses them, and the MESSAGE boxes of an
//! established connection.
//!
//! Every box is a Poly1305 tag followed by the XSalsa20 ciphertext (NaCl's
//! `crypto_box` output without its 16 leading zero bytes), under a 24-byte
//! nonce made of a fixed prefix naming the command (so a box cannot be
//! replayed as another command) and either a 16-byte random part or an
//! 8-byte big-endian counter, the "short nonce" sent beside the box.
//!
//! [`Session`] is what both sides keep after the handshake: the key shared
//! by the two ephemeral key pairs, our next short nonce and the peer's last
//! one. A MESSAGE body is `\x07MESSAGE`, the short nonce, then the box of one
//! flags byte (0x01 MORE, 0x02 COMMAND) and the frame's payload. libzmq 4.3
//! boxes commands (PING, PONG, SUBSCRIBE, ...) the same way, with the
//! COMMAND flag inside, and sends the MESSAGE itself as a plain frame with
//! no flags: the outer frame tells nothing.

use std::ops::Range;

use crypto_box::aead::consts::{U16, U24};
use crypto_box::aead::{AeadCore, AeadInPlace};
use crypto_box::{Nonce, SalsaBox};
use thiserror::Error;

use crate::command::Command;
use crate::frame::{encode_header, Flags};

/// Length of a Poly1305 tag: what a box adds to its plaintext.
pub(crate) const TAG_LEN: usize = 16;

/// Name of the MESSAGE command, with its length byte.
const MESSAGE: &[u8; 8] = b"\x07MESSAGE";
/// Flag inside a MESSAGE box: more frames follow.
const BOX_MORE: u8 = 0x01;
/// Flag inside a MESSAGE box: the payload is a command body.
const BOX_COMMAND: u8 = 0x02;
/// Smallest MESSAGE body: name, short nonce, tag, flags byte.
const MIN_MESSAGE: usize = MESSAGE.len() + 8 + TAG_LEN + 1;

/// Nonce prefix of the client's MESSAGE boxes.
pub(crate) const CLIENT_MESSAGE: &[u8; 16] = b"CurveZMQMESSAGEC";
/// Nonce prefix of the server's MESSAGE boxes.
pub(crate) const SERVER_MESSAGE: &[u8; 16] = b"CurveZMQMESSAGES";

/// A full nonce from a 16-byte prefix and an 8-byte short nonce.
pub(crate) fn counter_nonce(prefix: &[u8; 16], short: [u8; 8]) -> Nonce {
    let mut nonce = [0u8; 24];
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(&short);
    Nonce::from(nonce)
}

/// A full nonce from an 8-byte prefix and a 16-byte random part.
pub(crate) fn random_nonce(prefix: &[u8; 8], random: [u8; 16]) -> Nonce {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(&random);
    Nonce::from(nonce)
}

/// Appends the box of `plaintext` (tag, then ciphertext) to `out`.
pub(crate) fn seal<C: AeadInPlace + AeadCore<NonceSize = U24, TagSize = U16>>(
    cipher: &C,
    nonce: &Nonce,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), crypto_box::aead::Error> {
    let tag_at = out.len();
    out.resize(tag_at + TAG_LEN, 0);
    out.extend_from_slice(plaintext);
    let text_at = tag_at + TAG_LEN;
    match cipher.encrypt_in_place_detached(nonce, b"", &mut out[text_at..]) {
        Ok(tag) => {
            out[tag_at..text_at].copy_from_slice(&tag);
            Ok(())
        }
        Err(err) => {
            out.truncate(tag_at);
            Err(err)
        }
    }
}

/// Opens a box (tag, then ciphertext) into a new plaintext.
pub(crate) fn open<C: AeadInPlace + AeadCore<NonceSize = U24, TagSize = U16>>(
    cipher: &C,
    nonce: &Nonce,
    sealed: &[u8],
) -> Result<Vec<u8>, crypto_box::aead::Error> {
    let (tag, text) = sealed
        .split_first_chunk::<TAG_LEN>()
        .ok_or(crypto_box::aead::Error)?;
    let mut plaintext = text.to_vec();
    cipher.decrypt_in_place_detached(nonce, b"", &mut plaintext, &(*tag).into())?;
    Ok(plaintext)
}

/// Reads a command body front to back in fixed-size pieces, so that
/// layouts are checked by the type system instead of by offsets.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader over `body`.
    pub(crate) fn new(body: &'a [u8]) -> Reader<'a> {
        Reader(body)
    }

    /// The next `N` bytes; `None` if fewer remain.
    pub(crate) fn take<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (piece, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(piece)
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Why a MESSAGE could not be sealed or opened. Fatal for the connection,
/// as in libzmq.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// A frame that is not a MESSAGE: after the handshake nothing else may
    /// arrive in the clear.
    #[error("expected a MESSAGE, got {len} bytes starting {start:02x?}")]
    NotMessage {
        /// The body length.
        len: usize,
        /// Its first (at most 8) bytes.
        start: Vec<u8>,
    },
    /// A MESSAGE too short for its nonce, tag and flags byte.
    #[error("MESSAGE of {len} bytes is shorter than the {MIN_MESSAGE} bytes of an empty one")]
    TooShort {
        /// The body length.
        len: usize,
    },
    /// A short nonce not above the last one: a replayed or reordered box.
    #[error("MESSAGE nonce {nonce} does not exceed the last one, {last}: replay refused")]
    Replay {
        /// The nonce received.
        nonce: u64,
        /// The highest nonce accepted so far.
        last: u64,
    },
    /// The box does not open: altered bytes or another connection's key.
    #[error("cannot open the MESSAGE box: wrong key or altered bytes")]
    Crypto,
    /// Our short nonce reached 2^64 - 1; the connection must be closed
    /// rather than reuse a nonce.
    #[error("our MESSAGE nonces are exhausted")]
    NonceExhausted,
    /// The cipher refused to seal (only for sizes beyond what a frame holds).
    #[error("cannot seal the MESSAGE box")]
    Seal,
}

/// A MESSAGE opened in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// More frames of the same message follow.
    pub more: bool,
    /// The payload is a command body (PING, SUBSCRIBE, ...), to be parsed
    /// with [`Command::parse`].
    pub command: bool,
    /// Where the payload lies in the body given to [`Session::open`].
    pub payload: Range<usize>,
}

impl Opened {
    /// What [`Session::open`] returned for `body`, read again from a body
    /// it already decrypted in place: an engine that decodes a buffered
    /// message a second time (it waited for room at its receiver) must not
    /// open its boxes twice, as the bytes are no longer ciphertext and the
    /// nonce would count as a replay. `None` for a body too short to have
    /// been opened.
    pub fn reread(body: &[u8]) -> Option<Opened> {
        let text_at = MESSAGE.len() + 8 + TAG_LEN;
        let flags = *body.get(text_at)?;
        Some(Opened {
            more: flags & BOX_MORE != 0,
            command: flags & BOX_COMMAND != 0,
            payload: text_at + 1..body.len(),
        })
    }
}

/// The encryption state of an established CURVE connection.
pub struct Session {
    cipher: SalsaBox,
    /// Nonce prefix of the boxes we send.
    ours: &'static [u8; 16],
    /// Nonce prefix of the boxes we receive.
    theirs: &'static [u8; 16],
    /// The short nonce of our next box.
    next: u64,
    /// The highest short nonce received so far (handshake included).
    last: u64,
}

impl std::fmt::Debug for Session {
    // The shared key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("next", &self.next)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The server's session: `next` is our next short nonce (after READY's),
    /// `last` the client's INITIATE nonce.
    pub(crate) fn server(cipher: SalsaBox, next: u64, last: u64) -> Session {
        Session {
            cipher,
            ours: SERVER_MESSAGE,
            theirs: CLIENT_MESSAGE,
            next,
            last,
        }
    }

    /// The client's session: `next` is our next short nonce (after
    /// INITIATE's), `last` the server's READY nonce.
    pub(crate) fn client(cipher: SalsaBox, next: u64, last: u64) -> Session {
        Session {
            cipher,
            ours: CLIENT_MESSAGE,
            theirs: SERVER_MESSAGE,
            next,
            last,
        }
    }

    /// Appends the MESSAGE frame carrying one message frame; `more` says
    /// whether frames of the same message follow.
    pub fn seal_frame(
        &mut self,
        more: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MessageError> {
        self.seal(if more { BOX_MORE } else { 0 }, payload, out)
    }

    /// Appends the MESSAGE frame carrying a command (PING, PONG,
    /// SUBSCRIBE, ...).
    pub fn seal_command(
        &mut self,
        command: &Command<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), MessageError> {
        let mut body = Vec::new();
        command.encode_body(&mut body);
        self.seal(BOX_COMMAND, &body, out)
    }

    fn seal(&mut self, flags: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), MessageError> {
        let short = self.next;
        let next = short.checked_add(1).ok_or(MessageError::NonceExhausted)?;
        let start = out.len();
        let body_len = MIN_MESSAGE + payload.len();
        out.reserve(crate::frame::MAX_HEADER_LEN + body_len);
        // A plain frame with no flags, as libzmq sends it: MORE and COMMAND
        // travel inside the box.
        out.extend_from_slice(encode_header(Flags::message(false), body_len).as_bytes());
        out.extend_from_slice(MESSAGE);
        out.extend_from_slice(&short.to_be_bytes());
        let mut plaintext = Vec::with_capacity(1 + payload.len());
        plaintext.push(flags);
        plaintext.extend_from_slice(payload);
        let nonce = counter_nonce(self.ours, short.to_be_bytes());
        if seal(&self.cipher, &nonce, &plaintext, out).is_err() {
            out.truncate(start);
            return Err(MessageError::Seal);
        }
        self.next = next;
        Ok(())
    }

    /// Opens a received MESSAGE body (the frame body, whatever the frame's
    /// flags) in place: on success the payload lies decrypted at
    /// [`Opened::payload`] in `body`. The nonce must exceed every nonce
    /// seen before; it is recorded only once the box has opened, so forged
    /// boxes cannot move it.
    pub fn open(&mut self, body: &mut [u8]) -> Result<Opened, MessageError> {
        let len = body.len();
        let mut reader = Reader::new(body);
        if reader.take::<8>() != Some(MESSAGE) {
            return Err(MessageError::NotMessage {
                len,
                start: body[..len.min(8)].to_vec(),
            });
        }
        if len < MIN_MESSAGE {
            return Err(MessageError::TooShort { len });
        }
        let short = reader
            .take::<8>()
            .copied()
            .ok_or(MessageError::TooShort { len })?;
        let tag = reader
            .take::<TAG_LEN>()
            .copied()
            .ok_or(MessageError::TooShort { len })?;
        let nonce = u64::from_be_bytes(short);
        if nonce <= self.last {
            return Err(MessageError::Replay {
                nonce,
                last: self.last,
            });
        }
        let text_at = MESSAGE.len() + 8 + TAG_LEN;
        let text = &mut body[text_at..];
        self.cipher
            .decrypt_in_place_detached(&counter_nonce(self.theirs, short), b"", text, &tag.into())
            .map_err(|_| MessageError::Crypto)?;
        self.last = nonce;
        let flags = text[0];
        Ok(Opened {
            more: flags & BOX_MORE != 0,
            command: flags & BOX_COMMAND != 0,
            payload: text_at + 1..len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::{KeyPair, OsRng};
    use crate::frame::Decoder;
    use crypto_box::{PublicKey, SecretKey};

    /// The key two long-term key pairs share, from `ours`' side.
    fn shared(ours: &KeyPair, theirs: &KeyPair) -> SalsaBox {
        SalsaBox::new(
            &PublicKey::from_bytes(theirs.public()),
            &SecretKey::from_bytes(ours.secret().to_bytes()),
        )
    }

    /// A server and a client session sharing one key, as after a handshake
    /// where the client used nonces 1 and 2 and the server 1.
    fn pair() -> (Session, Session) {
        let server = KeyPair::generate(&mut OsRng);
        let client = KeyPair::generate(&mut OsRng);
        (
            Session::server(shared(&server, &client), 2, 2),
            Session::client(shared(&client, &server), 3, 1),
        )
    }

    /// Splits the frames of `wire` into (command flag, more flag, body).
    fn frames(wire: &[u8]) -> Vec<(bool, bool, Vec<u8>)> {
        let mut rest = wire;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let Ok(Some((header, used))) = Decoder::new(1 << 24).decode(rest) else {
                panic!("not a frame");
            };
            out.push((
                header.command(),
                header.more(),
                rest[header.body.clone()].to_vec(),
            ));
            rest = &rest[used..];
        }
        out
    }

    fn open(session: &mut Session, body: &[u8]) -> Result<(Opened, Vec<u8>), MessageError> {
        let mut body = body.to_vec();
        let opened = session.open(&mut body)?;
        let payload = body[opened.payload.clone()].to_vec();
        Ok((opened, payload))
    }

    #[test]
    fn frames_and_commands_round_trip_both_ways() {
        let (mut server, mut client) = pair();
        let mut wire = Vec::new();
        client.seal_frame(true, b"topic", &mut wire).expect("seal");
        client.seal_frame(false, b"", &mut wire).expect("seal");
        client
            .seal_command(&Command::Subscribe(b"news."), &mut wire)
            .expect("seal");
        let got = frames(&wire);
        assert_eq!(got.len(), 3);
        // Outer frames are plain, with no flags, as libzmq sends them.
        assert!(got.iter().all(|(command, more, _)| !command && !more));
        // Client nonces continue after INITIATE's 2.
        assert_eq!(got[0].2[8..16], 3u64.to_be_bytes());
        assert_eq!(got[0].2.len(), MIN_MESSAGE + 5);

        let (first, payload) = open(&mut server, &got[0].2).expect("opens");
        assert!(first.more && !first.command);
        assert_eq!(payload, b"topic");
        let (second, payload) = open(&mut server, &got[1].2).expect("opens");
        assert!(!second.more && !second.command);
        assert!(payload.is_empty());
        let (third, payload) = open(&mut server, &got[2].2).expect("opens");
        assert!(third.command);
        assert_eq!(Command::parse(&payload), Ok(Command::Subscribe(b"news.")));

        let mut wire = Vec::new();
        let big = vec![0xA5; 70_000];
        server.seal_frame(false, &big, &mut wire).expect("seal");
        let got = frames(&wire);
        // Server nonces continue after READY's 1.
        assert_eq!(got[0].2[8..16], 2u64.to_be_bytes());
        let (_, payload) = open(&mut client, &got[0].2).expect("opens");
        assert_eq!(payload, big);
    }

    #[test]
    fn an_opened_body_reads_again_without_opening() {
        let (mut server, mut client) = pair();
        let mut wire = Vec::new();
        client
            .seal_frame(true, b"payload", &mut wire)
            .expect("seal");
        client
            .seal_command(&Command::Subscribe(b"x"), &mut wire)
            .expect("seal");
        for (i, (_, _, mut body)) in frames(&wire).into_iter().enumerate() {
            let opened = server.open(&mut body).expect("opens");
            assert_eq!(Opened::reread(&body), Some(opened.clone()), "frame {i}");
            assert_eq!(opened.command, i == 1);
        }
        assert_eq!(Opened::reread(b"\x07MESSAGE"), None);
    }

    #[test]
    fn a_replayed_or_old_nonce_is_refused() {
        let (mut server, mut client) = pair();
        let mut wire = Vec::new();
        client.seal_frame(false, b"once", &mut wire).expect("seal");
        let body = frames(&wire).remove(0).2;
        assert!(open(&mut server, &body).is_ok());
        assert_eq!(
            open(&mut server, &body),
            Err(MessageError::Replay { nonce: 3, last: 3 })
        );
        // Nonce 2 was INITIATE's: a MESSAGE cannot reuse it either.
        let (mut server, mut client) = pair();
        client.next = 2;
        let mut wire = Vec::new();
        client.seal_frame(false, b"x", &mut wire).expect("seal");
        assert_eq!(
            open(&mut server, &frames(&wire)[0].2),
            Err(MessageError::Replay { nonce: 2, last: 2 })
        );
    }

    #[test]
    fn an_altered_box_is_refused_and_does_not_move_the_nonce() {
        let (mut server, mut client) = pair();
        let mut wire = Vec::new();
        client
            .seal_frame(false, b"payload", &mut wire)
            .expect("seal");
        let good = frames(&wire).remove(0).2;
        for at in [8, 15, 16, 31, 32, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let err = open(&mut server, &bad).expect_err("altered box opened");
            // A changed nonce may be a lower one, refused before opening.
            assert!(
                matches!(err, MessageError::Crypto | MessageError::Replay { .. }),
                "byte {at}: {err:?}"
            );
        }
        // A forged nonce did not advance the peer's: the real box opens.
        let mut forged = good.clone();
        forged[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(open(&mut server, &forged), Err(MessageError::Crypto));
        assert!(open(&mut server, &good).is_ok());
    }

    #[test]
    fn another_connections_key_cannot_open() {
        let (_, mut client) = pair();
        let (mut other_server, _) = pair();
        let mut wire = Vec::new();
        client
            .seal_frame(false, b"secret", &mut wire)
            .expect("seal");
        assert_eq!(
            open(&mut other_server, &frames(&wire)[0].2),
            Err(MessageError::Crypto)
        );
    }

    #[test]
    fn a_box_from_our_own_direction_cannot_open() {
        // Server and client prefixes differ: a box reflected back to its
        // sender does not open.
        let server_keys = KeyPair::generate(&mut OsRng);
        let client_keys = KeyPair::generate(&mut OsRng);
        let mut server = Session::server(shared(&server_keys, &client_keys), 2, 0);
        let mut twin = Session::server(shared(&server_keys, &client_keys), 2, 0);
        let mut wire = Vec::new();
        twin.seal_frame(false, b"echo", &mut wire).expect("seal");
        assert_eq!(
            open(&mut server, &frames(&wire)[0].2),
            Err(MessageError::Crypto)
        );
    }

    #[test]
    fn non_messages_and_short_messages_are_refused() {
        let (mut server, _) = pair();
        assert!(matches!(
            open(&mut server, b"\x04PING\x00\x00"),
            Err(MessageError::NotMessage { len: 7, .. })
        ));
        let mut short = b"\x07MESSAGE".to_vec();
        short.extend_from_slice(&[0; 24]);
        assert_eq!(
            open(&mut server, &short),
            Err(MessageError::TooShort { len: 32 })
        );
    }

    #[test]
    fn nonces_do_not_wrap() {
        let (_, mut client) = pair();
        client.next = u64::MAX;
        let mut wire = vec![1, 2, 3];
        assert_eq!(
            client.seal_frame(false, b"x", &mut wire),
            Err(MessageError::NonceExhausted)
        );
        assert_eq!(wire, [1, 2, 3], "nothing appended");
    }
}
