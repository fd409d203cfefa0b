//! ZMTP 3.x frames: decoding in place over a receive buffer, and encoding of
//! headers for vectored writes.
//!
//! A frame is a flags byte (MORE 0x01, LONG 0x02, COMMAND 0x04; the other
//! bits are reserved), a size (one byte, or eight bytes big-endian when LONG
//! is set) and that many body bytes. The decoder never copies a body: it
//! returns where the body lies in the buffer it was given, so the engine can
//! forward payload bytes straight from its read buffer. The encoder produces
//! only the header, so the engine can write header and payload as two
//! slices of one `writev`.

use std::ops::Range;

use thiserror::Error;

/// Flag bit: more frames of the same message follow.
pub const MORE: u8 = 0x01;
/// Flag bit: the size is eight bytes instead of one.
pub const LONG: u8 = 0x02;
/// Flag bit: the frame is a command, not part of a message.
pub const COMMAND: u8 = 0x04;
/// The bits RFC 37 reserves; they must be zero.
const RESERVED: u8 = !(MORE | LONG | COMMAND);

/// Longest header: flags byte plus an eight-byte size.
pub const MAX_HEADER_LEN: usize = 9;
/// Largest body a short (one-byte size) header can carry.
pub const MAX_SHORT_BODY: usize = u8::MAX as usize;

/// A validated flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// Flags of a command frame (short or long form is chosen by the encoder).
    pub const COMMAND: Flags = Flags(COMMAND);

    /// Flags of a message frame; `more` says whether frames follow.
    pub fn message(more: bool) -> Flags {
        Flags(if more { MORE } else { 0 })
    }

    /// Validates a received flags byte: reserved bits must be clear, and a
    /// command cannot be continued (RFC 37: MORE "SHALL be zero on command
    /// frames").
    pub fn from_byte(byte: u8) -> Result<Flags, DecodeError> {
        if byte & RESERVED != 0 {
            return Err(DecodeError::ReservedFlags { flags: byte });
        }
        if byte & COMMAND != 0 && byte & MORE != 0 {
            return Err(DecodeError::CommandWithMore { flags: byte });
        }
        Ok(Flags(byte))
    }

    /// The raw byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// More frames of this message follow.
    pub fn more(self) -> bool {
        self.0 & MORE != 0
    }

    /// The size was (or is to be) sent in the eight-byte form.
    pub fn long(self) -> bool {
        self.0 & LONG != 0
    }

    /// A command frame.
    pub fn command(self) -> bool {
        self.0 & COMMAND != 0
    }
}

/// Why a byte stream is not a valid frame sequence. Fatal for the
/// connection: after a bad header the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A flags byte with reserved bits set.
    #[error("frame flags {flags:#04x} set reserved bits (only MORE 0x01, LONG 0x02 and COMMAND 0x04 are defined)")]
    ReservedFlags {
        /// The flags byte received.
        flags: u8,
    },
    /// A command frame with MORE set.
    #[error("frame flags {flags:#04x} mark a command with MORE; commands are single frames")]
    CommandWithMore {
        /// The flags byte received.
        flags: u8,
    },
    /// A body larger than the decoder's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body size.
        len: u64,
        /// The decoder's limit.
        max: usize,
    },
}

/// A frame header as read from the wire: enough to know how many bytes the
/// whole frame needs before its body has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's flags.
    pub flags: Flags,
    /// Bytes taken by the header itself: 2 (short) or 9 (long).
    pub header_len: usize,
    /// Bytes in the body.
    pub body_len: usize,
}

impl Header {
    /// Header plus body. For a header from [`Decoder::header`] this is
    /// exact (the limit keeps it below `usize::MAX`); it saturates for a
    /// hand-built one rather than overflow.
    pub fn frame_len(&self) -> usize {
        self.header_len.saturating_add(self.body_len)
    }
}

/// A complete frame found in a buffer: its flags and where its body lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame's flags.
    pub flags: Flags,
    /// The body's position in the buffer given to [`Decoder::decode`].
    pub body: Range<usize>,
}

impl FrameHeader {
    /// More frames of this message follow.
    pub fn more(&self) -> bool {
        self.flags.more()
    }

    /// A command frame.
    pub fn command(&self) -> bool {
        self.flags.command()
    }

    /// The body within the buffer the frame was decoded from.
    ///
    /// Returns `None` if `buf` is not long enough, i.e. is not that buffer.
    pub fn body<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        buf.get(self.body.clone())
    }

    /// The same frame seen from a buffer in which the decoded slice starts at
    /// `offset` (the engine decodes `&buf[pos..]` and keeps positions in
    /// `buf`).
    pub fn offset(&self, offset: usize) -> FrameHeader {
        FrameHeader {
            flags: self.flags,
            body: self.body.start + offset..self.body.end + offset,
        }
    }
}

/// Frame decoder with a body size limit. Stateless apart from the limit:
/// each call looks at a buffer that starts at a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    max_body_len: usize,
}

impl Decoder {
    /// A decoder refusing bodies larger than `max_body_len` bytes (libzmq's
    /// `ZMQ_MAXMSGSIZE`, but per frame). The limit is capped so that header
    /// plus body always fits a `usize`.
    pub fn new(max_body_len: usize) -> Decoder {
        Decoder {
            max_body_len: max_body_len.min(usize::MAX - MAX_HEADER_LEN),
        }
    }

    /// The body size limit.
    pub fn max_body_len(&self) -> usize {
        self.max_body_len
    }

    /// Reads the header at the start of `buf`.
    ///
    /// `Ok(None)` means the header itself is incomplete. A header is checked
    /// as soon as it is complete, before its body arrives, so an oversized
    /// or malformed frame is refused without buffering it.
    pub fn header(&self, buf: &[u8]) -> Result<Option<Header>, DecodeError> {
        let Some(&flags) = buf.first() else {
            return Ok(None);
        };
        let flags = Flags::from_byte(flags)?;
        let (header_len, len) = if flags.long() {
            let Some(size) = buf.get(1..MAX_HEADER_LEN) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(size);
            (MAX_HEADER_LEN, u64::from_be_bytes(be))
        } else {
            let Some(&size) = buf.get(1) else {
                return Ok(None);
            };
            (2, u64::from(size))
        };
        let body_len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.max_body_len)
            .ok_or(DecodeError::TooLarge {
                len,
                max: self.max_body_len,
            })?;
        Ok(Some(Header {
            flags,
            header_len,
            body_len,
        }))
    }

    /// Decodes the frame at the start of `buf`.
    ///
    /// Returns the frame and the number of bytes it takes (header and body),
    /// or `Ok(None)` if `buf` does not hold the whole frame yet. Nothing is
    /// copied: the body is `&buf[frame.body]`. The short and long size forms
    /// are both accepted for any size.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, DecodeError> {
        let Some(header) = self.header(buf)? else {
            return Ok(None);
        };
        let consumed = header.frame_len();
        if buf.len() < consumed {
            return Ok(None);
        }
        Ok(Some((
            FrameHeader {
                flags: header.flags,
                body: header.header_len..consumed,
            },
            consumed,
        )))
    }
}

/// Size form of an encoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeForm {
    /// One-byte size: bodies of at most 255 bytes.
    Short,
    /// Eight-byte size: any body.
    Long,
}

impl SizeForm {
    /// The form a sender should use (RFC 37): short up to 255 bytes.
    pub fn for_len(body_len: usize) -> SizeForm {
        if body_len <= MAX_SHORT_BODY {
            SizeForm::Short
        } else {
            SizeForm::Long
        }
    }
}

/// An encoded frame header, kept on the stack: 2 or 9 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl EncodedHeader {
    /// The header bytes, to be written just before the body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Encodes the header of a frame with `flags` and a body of `body_len`
/// bytes, in the short form for bodies up to 255 bytes and the long form
/// above. Any LONG bit in `flags` is replaced by the form chosen here.
pub fn encode_header(flags: Flags, body_len: usize) -> EncodedHeader {
    match u8::try_from(body_len) {
        Ok(size) => short_header(flags, size),
        Err(_) => long_header(flags, body_len),
    }
}

/// Encodes a header in the given size form; `None` if `form` is
/// [`SizeForm::Short`] and the body is longer than 255 bytes. Peers must
/// accept the long form for small bodies too, which tests use.
pub fn encode_header_in(form: SizeForm, flags: Flags, body_len: usize) -> Option<EncodedHeader> {
    match form {
        SizeForm::Short => u8::try_from(body_len)
            .ok()
            .map(|size| short_header(flags, size)),
        SizeForm::Long => Some(long_header(flags, body_len)),
    }
}

fn short_header(flags: Flags, size: u8) -> EncodedHeader {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = flags.bits() & !LONG;
    bytes[1] = size;
    EncodedHeader { bytes, len: 2 }
}

fn long_header(flags: Flags, body_len: usize) -> EncodedHeader {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = flags.bits() | LONG;
    // usize is at most 64 bits on every target Rust supports here.
    bytes[1..].copy_from_slice(&(body_len as u64).to_be_bytes());
    EncodedHeader {
        bytes,
        len: MAX_HEADER_LEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    fn frame(flags: Flags, body: &[u8]) -> Vec<u8> {
        let mut out = encode_header(flags, body.len()).as_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn decode_one(buf: &[u8]) -> (FrameHeader, usize) {
        match Decoder::new(BIG).decode(buf) {
            Ok(Some(found)) => found,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn sizes_0_255_256_and_64k_round_trip_in_the_expected_form() {
        for (len, header_len) in [(0, 2), (1, 2), (255, 2), (256, 9), (65536, 9)] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = frame(Flags::message(false), &body);
            assert_eq!(wire.len(), header_len + len, "len {len}");
            let (f, consumed) = decode_one(&wire);
            assert_eq!(consumed, wire.len());
            assert_eq!(f.body(&wire), Some(&body[..]));
            assert_eq!(f.flags.long(), header_len == 9);
            assert!(!f.more() && !f.command());
            // One byte short of the end is not a frame yet.
            assert_eq!(Decoder::new(BIG).decode(&wire[..wire.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn small_bodies_in_the_long_form_are_accepted() {
        for len in [0usize, 1, 5, 255] {
            let body = vec![7u8; len];
            let Some(header) = encode_header_in(SizeForm::Long, Flags::message(true), len) else {
                panic!("long form refused");
            };
            let mut wire = header.as_bytes().to_vec();
            assert_eq!(wire[0], MORE | LONG);
            wire.extend_from_slice(&body);
            let (f, consumed) = decode_one(&wire);
            assert_eq!((consumed, f.body.clone()), (9 + len, 9..9 + len));
            assert!(f.more() && f.flags.long());
        }
    }

    #[test]
    fn short_form_refuses_bodies_over_255() {
        assert_eq!(encode_header_in(SizeForm::Short, Flags::COMMAND, 256), None);
        assert_eq!(
            encode_header_in(SizeForm::Short, Flags::COMMAND, 255).map(|h| h.as_bytes().to_vec()),
            Some(vec![COMMAND, 255])
        );
    }

    #[test]
    fn reserved_flag_bits_are_refused() {
        for bit in 3..8 {
            let flags = 1u8 << bit;
            assert_eq!(
                Decoder::new(BIG).decode(&[flags, 0]),
                Err(DecodeError::ReservedFlags { flags })
            );
        }
        // Refused on the flags byte alone, before the size arrives.
        assert_eq!(
            Decoder::new(BIG).header(&[0x81]),
            Err(DecodeError::ReservedFlags { flags: 0x81 })
        );
    }

    #[test]
    fn a_command_with_more_is_refused() {
        assert_eq!(
            Decoder::new(BIG).decode(&[COMMAND | MORE, 0]),
            Err(DecodeError::CommandWithMore { flags: 0x05 })
        );
    }

    #[test]
    fn oversized_bodies_are_refused_from_the_header_alone() {
        let decoder = Decoder::new(100);
        assert_eq!(
            decoder.header(&[0, 101]),
            Err(DecodeError::TooLarge { len: 101, max: 100 })
        );
        let mut long = vec![LONG];
        long.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            decoder.header(&long),
            Err(DecodeError::TooLarge { len: u64::MAX, .. })
        ));
        assert!(matches!(decoder.decode(&[0, 100]), Ok(None)));
        let err = decoder.header(&[0, 101]).unwrap_err().to_string();
        assert!(err.contains("101") && err.contains("100"), "{err}");
    }

    #[test]
    fn incomplete_headers_need_more() {
        let decoder = Decoder::new(BIG);
        assert_eq!(decoder.header(&[]), Ok(None));
        assert_eq!(decoder.header(&[0]), Ok(None));
        assert_eq!(decoder.header(&[LONG, 0, 0, 0, 0, 0, 0, 1]), Ok(None));
        assert_eq!(
            decoder.header(&[LONG, 0, 0, 0, 0, 0, 0, 1, 0]),
            Ok(Some(Header {
                flags: Flags(LONG),
                header_len: 9,
                body_len: 256
            }))
        );
    }

    #[test]
    fn frames_decode_one_after_another_without_copying() {
        let mut wire = frame(Flags::message(true), b"id");
        wire.extend(frame(Flags::message(true), b""));
        wire.extend(frame(Flags::COMMAND, b"\x04PING\x00\x00"));
        wire.extend(frame(Flags::message(false), b"payload"));
        let decoder = Decoder::new(BIG);
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Ok(Some((f, used))) = decoder.decode(&wire[pos..]) {
            let f = f.offset(pos);
            seen.push((f.flags.bits(), f.body(&wire).map(<[u8]>::to_vec)));
            pos += used;
        }
        assert_eq!(pos, wire.len());
        assert_eq!(
            seen,
            vec![
                (MORE, Some(b"id".to_vec())),
                (MORE, Some(Vec::new())),
                (COMMAND, Some(b"\x04PING\x00\x00".to_vec())),
                (0, Some(b"payload".to_vec())),
            ]
        );
    }

    #[test]
    fn decoding_a_stream_cut_at_every_offset_gives_the_same_frames() {
        let mut wire = Vec::new();
        for (i, len) in [0usize, 255, 256, 3, 65536, 1].into_iter().enumerate() {
            let body = vec![i as u8; len];
            wire.extend(frame(Flags::message(i % 2 == 0), &body));
        }
        wire.extend(frame(Flags::COMMAND, b"\x04PONG"));
        let whole = decode_all(&[&wire]);
        assert_eq!(whole.len(), 7);
        // Every single cut point, then byte-by-byte feeding.
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(decode_all(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytes), whole);
    }

    /// Feeds chunks to a growing buffer the way the engine will (append,
    /// decode what is complete, drop the consumed prefix) and collects
    /// (flags, body) pairs.
    fn decode_all(chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
        let decoder = Decoder::new(BIG);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match decoder.decode(&buf[pos..]) {
                    Ok(Some((f, used))) => {
                        let f = f.offset(pos);
                        out.push((f.flags.bits() & !LONG, buf[f.body].to_vec()));
                        pos += used;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("valid stream refused: {e}"),
                }
            }
            buf.drain(..pos);
        }
        assert!(buf.is_empty(), "bytes left over");
        out
    }
}
