//! The 64-byte ZMTP greeting that opens every connection (RFC 23 and 37).
//!
//! Layout: signature `0xFF`, 8 padding bytes, `0x7F`; version major and
//! minor; a 20-byte NUL-padded mechanism name; the as-server flag; 31 bytes of
//! filler.
//!
//! The engine sends [`encode`]'s 64 bytes as soon as the connection is up and
//! does not wait for the peer's greeting first: libzmq sends its greeting in
//! pieces (signature, then the major version once it has seen our signature,
//! then the rest once it has seen our major version), so waiting for a whole
//! greeting before sending ours would deadlock against it. Received bytes are
//! handed to [`parse`] as they accumulate; it rejects a non-ZMTP or pre-3.0
//! peer as soon as the deciding byte arrives (byte 0, 9 or 10), which is when
//! libzmq itself decides.
//!
//! The security mechanism is the caller's choice: [`encode`] and [`parse`]
//! speak NULL, [`encode_with`] and [`parse_with`] the given [`Mechanism`]
//! (CURVE, see [`crate::curve`]). As in libzmq, both sides must be
//! configured with the same mechanism; a greeting naming another one is
//! refused, never negotiated.

use thiserror::Error;

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

/// Offset of the major version byte: the first byte after the signature.
const MAJOR: usize = 10;
/// Offset of the minor version byte.
const MINOR: usize = 11;
/// Offset and length of the mechanism name.
const MECHANISM: std::ops::Range<usize> = 12..32;
/// Offset of the as-server flag.
const AS_SERVER: usize = 32;

/// The NULL mechanism as it stands in a greeting: the name, NUL-padded.
const NULL_MECHANISM: [u8; 20] = *b"NULL\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// The CURVE mechanism as it stands in a greeting.
const CURVE_MECHANISM: [u8; 20] = *b"CURVE\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The security mechanism a connection is configured for. Both peers must
/// name the same one in their greetings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mechanism {
    /// No security (RFC 37's NULL): the default.
    #[default]
    Null,
    /// CurveZMQ (RFC 26): the handshake and message boxes of
    /// [`crate::curve`]. The server sets the as-server flag.
    Curve,
}

impl Mechanism {
    /// The 20-byte, NUL-padded name field of a greeting.
    fn field(self) -> [u8; 20] {
        match self {
            Mechanism::Null => NULL_MECHANISM,
            Mechanism::Curve => CURVE_MECHANISM,
        }
    }
}

/// The protocol spoken on a connection once both greetings are known.
///
/// Framing is the same in both; what differs is how subscriptions travel
/// (3.0: a message whose first byte is 1 or 0; 3.1: SUBSCRIBE/CANCEL
/// commands) and whether PING/PONG may be sent (3.1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// ZMTP 3.0 (RFC 23), libzmq 4.0 and 4.1.
    V3_0,
    /// ZMTP 3.1 (RFC 37), libzmq 4.2 and later; also used towards any
    /// higher version, which RFC 37 requires a peer to accept.
    V3_1,
}

/// A peer's parsed greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Version major as the peer sent it (3 or more).
    pub major: u8,
    /// Version minor as the peer sent it.
    pub minor: u8,
    /// The peer's as-server flag. RFC 37 wants it zero under NULL and RFC 26
    /// set by a CURVE server, but libzmq 4.3 sends zero in every case
    /// (seen in tests/curve_interop.rs) and ignores it; so do we, but it is
    /// kept for logging.
    pub as_server: bool,
}

impl Greeting {
    /// The version both sides speak: ours is 3.1, so a 3.0 peer gets 3.0 and
    /// anyone newer gets 3.1.
    pub fn version(&self) -> Version {
        if self.major == 3 && self.minor == 0 {
            Version::V3_0
        } else {
            Version::V3_1
        }
    }
}

/// What [`parse`] made of the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing is wrong yet; at least `needed` more bytes are required.
    NeedMore {
        /// Bytes still missing before the greeting is complete.
        needed: usize,
    },
    /// The greeting is complete and acceptable; exactly [`GREETING_LEN`]
    /// bytes belong to it and anything after them is the first frame.
    Done(Greeting),
}

/// Why a peer's greeting was refused. Every variant is fatal for the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GreetingError {
    /// The very first byte is not the signature's 0xFF.
    #[error(
        "first byte {byte:#04x} is not the ZMTP signature 0xff: a ZMTP 1.0 peer or not ZMTP at all"
    )]
    NotZmtp {
        /// The byte received.
        byte: u8,
    },
    /// Byte 9 is not the signature's 0x7F (libzmq reads a clear low bit there
    /// as a ZMTP 1.0 identity frame).
    #[error("signature byte 9 is {byte:#04x}, not 0x7f: a ZMTP 1.0 peer or not ZMTP at all")]
    BadSignature {
        /// The byte received.
        byte: u8,
    },
    /// The peer speaks ZMTP 1.0 or 2.0 (major version below 3).
    #[error("peer speaks ZMTP major version {major} (ZMTP 1.0/2.0, libzmq < 4.0); 3.0 or later is required")]
    UnsupportedVersion {
        /// The major version byte received.
        major: u8,
    },
    /// The peer wants a security mechanism other than the configured one
    /// (NULL unless [`parse_with`] was given another).
    #[error(
        "peer asks for security mechanism {name:?}, not the one this connection is configured for"
    )]
    Mechanism {
        /// The mechanism name, NULs trimmed, non-UTF-8 bytes replaced.
        name: String,
    },
}

/// Our greeting: version 3.1, mechanism NULL, the given as-server flag.
///
/// The padding is zero, as RFC 37 asks of a peer that sends its whole
/// greeting at once (libzmq puts its identity length there for ZMTP 1.0
/// detection, which we do not do).
pub fn encode(as_server: bool) -> [u8; GREETING_LEN] {
    encode_with(Mechanism::Null, as_server)
}

/// Our greeting for `mechanism`: as [`encode`], with that mechanism's name.
/// Under CURVE the server must set `as_server` (RFC 26).
pub fn encode_with(mechanism: Mechanism, as_server: bool) -> [u8; GREETING_LEN] {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[MAJOR] = 3;
    greeting[MINOR] = 1;
    greeting[MECHANISM].copy_from_slice(&mechanism.field());
    greeting[AS_SERVER] = u8::from(as_server);
    greeting
}

/// Parses the peer's greeting from the bytes received so far.
///
/// `received` may be shorter or longer than a greeting; only its first
/// [`GREETING_LEN`] bytes are read. Call again with more bytes after
/// [`Progress::NeedMore`]. The padding (bytes 1-8) and filler are not
/// checked: RFC 37 forbids giving the padding any meaning, and libzmq fills
/// it with its identity length.
pub fn parse(received: &[u8]) -> Result<Progress, GreetingError> {
    parse_with(received, Mechanism::Null)
}

/// Parses the peer's greeting as [`parse`] does, expecting `mechanism`.
/// The as-server flag is reported, not checked, as libzmq does not check it.
pub fn parse_with(received: &[u8], mechanism: Mechanism) -> Result<Progress, GreetingError> {
    let got = received.len().min(GREETING_LEN);
    let bytes = &received[..got];
    if let Some(&byte) = bytes.first() {
        if byte != 0xFF {
            return Err(GreetingError::NotZmtp { byte });
        }
    }
    if let Some(&byte) = bytes.get(9) {
        if byte != 0x7F {
            return Err(GreetingError::BadSignature { byte });
        }
    }
    if let Some(&major) = bytes.get(MAJOR) {
        if major < 3 {
            return Err(GreetingError::UnsupportedVersion { major });
        }
    }
    if let Some(field) = bytes.get(MECHANISM) {
        // All 20 bytes are compared, as libzmq does: "NULL" followed by
        // anything but NULs is some other mechanism.
        if field != mechanism.field() {
            return Err(GreetingError::Mechanism {
                name: mechanism_name(field),
            });
        }
    }
    if got < GREETING_LEN {
        return Ok(Progress::NeedMore {
            needed: GREETING_LEN - got,
        });
    }
    Ok(Progress::Done(Greeting {
        major: bytes[MAJOR],
        minor: bytes[MINOR],
        as_server: bytes[AS_SERVER] != 0,
    }))
}

/// A printable form of a mechanism field for error messages.
fn mechanism_name(field: &[u8]) -> String {
    let end = field
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(major: u8, minor: u8) -> [u8; GREETING_LEN] {
        let mut g = encode(false);
        g[MAJOR] = major;
        g[MINOR] = minor;
        g
    }

    #[test]
    fn ours_is_3_1_null_and_parses_back() {
        let ours = encode(false);
        assert_eq!(ours[..12], [0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1]);
        assert_eq!(&ours[12..16], b"NULL");
        assert!(ours[16..].iter().all(|&b| b == 0));
        assert_eq!(
            parse(&ours),
            Ok(Progress::Done(Greeting {
                major: 3,
                minor: 1,
                as_server: false
            }))
        );
        assert_eq!(encode(true)[AS_SERVER], 1);
    }

    #[test]
    fn a_3_0_greeting_negotiates_3_0() {
        let Ok(Progress::Done(g)) = parse(&greeting(3, 0)) else {
            panic!("3.0 greeting refused");
        };
        assert_eq!(g.version(), Version::V3_0);
    }

    #[test]
    fn higher_versions_are_accepted_as_3_1() {
        for (major, minor) in [(3, 1), (3, 2), (4, 0), (255, 255)] {
            let Ok(Progress::Done(g)) = parse(&greeting(major, minor)) else {
                panic!("{major}.{minor} refused");
            };
            assert_eq!(g.version(), Version::V3_1, "{major}.{minor}");
        }
    }

    #[test]
    fn versions_below_3_are_refused_as_soon_as_the_major_byte_arrives() {
        for major in [0, 1, 2] {
            let g = greeting(major, 0);
            assert_eq!(
                parse(&g[..11]),
                Err(GreetingError::UnsupportedVersion { major })
            );
        }
    }

    #[test]
    fn every_prefix_of_a_good_greeting_needs_exactly_the_rest() {
        let g = encode(false);
        for len in 0..GREETING_LEN {
            assert_eq!(
                parse(&g[..len]),
                Ok(Progress::NeedMore {
                    needed: GREETING_LEN - len
                })
            );
        }
    }

    #[test]
    fn bytes_after_the_greeting_are_not_read() {
        let mut stream = encode(false).to_vec();
        stream.extend_from_slice(&[0x04, 0x00, 0xEE]);
        assert!(matches!(parse(&stream), Ok(Progress::Done(_))));
    }

    #[test]
    fn padding_and_filler_are_not_significant() {
        let mut g = encode(false);
        // libzmq puts its identity length + 1 (big-endian u64) in the padding.
        g[1..9].copy_from_slice(&4u64.to_be_bytes());
        g[40] = 0xAA;
        assert!(matches!(parse(&g), Ok(Progress::Done(_))));
    }

    #[test]
    fn non_zmtp_bytes_are_refused_at_the_first_byte() {
        assert_eq!(parse(b"G"), Err(GreetingError::NotZmtp { byte: b'G' }));
        let mut g = encode(false);
        g[9] = 0x7E;
        assert_eq!(
            parse(&g[..10]),
            Err(GreetingError::BadSignature { byte: 0x7E })
        );
    }

    #[test]
    fn other_mechanisms_are_refused_by_name() {
        let mut g = encode(false);
        g[MECHANISM].copy_from_slice(b"CURVE\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        let err = parse(&g).unwrap_err();
        assert_eq!(
            err,
            GreetingError::Mechanism {
                name: "CURVE".into()
            }
        );
        assert!(err.to_string().contains("\"CURVE\""));
        // A partial mechanism field is not judged yet.
        assert!(matches!(parse(&g[..20]), Ok(Progress::NeedMore { .. })));
    }

    #[test]
    fn curve_is_accepted_only_when_configured() {
        let server = encode_with(Mechanism::Curve, true);
        assert_eq!(&server[12..17], b"CURVE");
        assert!(server[17..32].iter().all(|&b| b == 0));
        assert_eq!(server[AS_SERVER], 1);
        assert_eq!(
            parse_with(&server, Mechanism::Curve),
            Ok(Progress::Done(Greeting {
                major: 3,
                minor: 1,
                as_server: true
            }))
        );
        // A NULL peer is refused by a CURVE connection, by name.
        assert_eq!(
            parse_with(&encode(false), Mechanism::Curve),
            Err(GreetingError::Mechanism {
                name: "NULL".into()
            })
        );
        assert_eq!(encode_with(Mechanism::Null, false), encode(false));
    }
}
