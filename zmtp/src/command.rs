//! ZMTP commands: the body of a frame with the COMMAND flag.
//!
//! A command body is a name (one length byte, then the name) followed by
//! data. The ones a NULL-mechanism ZMTP 3.1 peer exchanges are READY (with
//! metadata properties) and ERROR during the handshake, then SUBSCRIBE and
//! CANCEL (3.1 subscriptions), PING and PONG (heartbeats). Parsing borrows
//! from the frame body; encoding appends a whole command frame (header and
//! body) to an output buffer, since commands are small and rare.
//!
//! Command contents are read as leniently as libzmq reads them, so that
//! whatever a libzmq peer accepts we accept too: unknown commands are
//! returned as [`Command::Other`] for the engine to ignore, property names
//! are not checked against RFC 37's character set, a READY without
//! `Socket-Type` passes [`Metadata::check_peer`], and a PING context longer
//! than RFC 37's 16 bytes is kept (the PONG echoes at most 16 bytes, as
//! libzmq's does).

use thiserror::Error;

use crate::frame::{encode_header, Flags};
use crate::socket_type::SocketType;

/// Longest PING context RFC 37 allows, and the most a PONG echoes.
pub const MAX_PING_CONTEXT: usize = 16;
/// Longest identity RFC 37 allows (libzmq refuses longer ones at setsockopt).
pub const MAX_IDENTITY: usize = 255;
/// Largest property value RFC 37 allows: 2^31 - 1 bytes.
pub const MAX_PROPERTY_VALUE: usize = i32::MAX as usize;

/// A parsed command, borrowing from the frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// READY: the NULL handshake, with the sender's metadata.
    Ready(Metadata<'a>),
    /// ERROR: the peer refuses the handshake; the reason is for logs only.
    Error {
        /// The reason, at most 255 bytes.
        reason: &'a [u8],
    },
    /// SUBSCRIBE (ZMTP 3.1): add a prefix subscription.
    Subscribe(&'a [u8]),
    /// CANCEL (ZMTP 3.1): remove one prefix subscription.
    Cancel(&'a [u8]),
    /// PING (ZMTP 3.1): answer with a PONG echoing the context.
    Ping {
        /// The sender's time-to-live hint in tenths of a second (0: none).
        ttl: u16,
        /// Opaque bytes to echo.
        context: &'a [u8],
    },
    /// PONG (ZMTP 3.1): the answer to our PING.
    Pong {
        /// The context of the PING answered.
        context: &'a [u8],
    },
    /// Any other command, e.g. a security mechanism's or a future one.
    Other {
        /// The command name.
        name: &'a [u8],
        /// The bytes after the name.
        data: &'a [u8],
    },
}

/// Why a command body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// A command frame with an empty body.
    #[error("empty command frame")]
    Empty,
    /// The name length byte is zero (RFC 37: 1 to 255 characters).
    #[error("command name is empty")]
    EmptyName,
    /// The name is longer than the body.
    #[error("command name of {len} bytes overruns the {available} bytes after its length byte")]
    NameOverrun {
        /// The announced name length.
        len: usize,
        /// Bytes available for it.
        available: usize,
    },
    /// A malformed READY property.
    #[error("READY property #{index}: {problem}")]
    Property {
        /// Zero-based position of the property in the READY body.
        index: usize,
        /// What is wrong with it.
        problem: PropertyProblem,
    },
    /// An ERROR command whose reason overruns the body.
    #[error("ERROR reason of {len} bytes overruns the {available} bytes after its length byte")]
    ErrorReasonOverrun {
        /// The announced reason length.
        len: usize,
        /// Bytes available for it.
        available: usize,
    },
    /// An ERROR command without even the reason length byte.
    #[error("ERROR command without a reason length")]
    ErrorWithoutReason,
    /// A PING shorter than its two-byte TTL.
    #[error("PING carries {len} bytes after its name; the TTL alone needs 2")]
    ShortPing {
        /// Bytes after the name.
        len: usize,
    },
}

/// What is wrong with one READY property.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PropertyProblem {
    /// The name length byte is zero.
    #[error("empty name")]
    EmptyName,
    /// The name is longer than what remains of the body.
    #[error("name of {len} bytes overruns the {available} bytes left")]
    NameOverrun {
        /// Announced name length.
        len: usize,
        /// Bytes left.
        available: usize,
    },
    /// Fewer than four bytes left for the value length.
    #[error("value length cut short: {available} of 4 bytes left")]
    ValueLengthCut {
        /// Bytes left.
        available: usize,
    },
    /// The value is longer than what remains of the body.
    #[error("value of {len} bytes overruns the {available} bytes left")]
    ValueOverrun {
        /// Announced value length.
        len: u32,
        /// Bytes left.
        available: usize,
    },
    /// A value length of 2^31 or more (RFC 37: at most 2^31 - 1).
    #[error("value length {len} exceeds 2^31 - 1")]
    ValueTooLong {
        /// Announced value length.
        len: u32,
    },
    /// An identity longer than 255 bytes was given to encode.
    #[error("identity of {len} bytes cannot be sent (at most 255)")]
    IdentityTooLong {
        /// The identity's length.
        len: usize,
    },
    /// A name longer than 255 bytes was given to encode.
    #[error("name of {len} bytes cannot be encoded (at most 255)")]
    NameTooLong {
        /// The name's length.
        len: usize,
    },
}

/// One READY property: a name and an opaque value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

impl<'a> Property<'a> {
    /// A property to send; refuses what cannot be encoded (an empty name,
    /// a name over 255 bytes, a value of 2^31 bytes or more).
    pub fn new(name: &'a [u8], value: &'a [u8]) -> Result<Property<'a>, PropertyProblem> {
        if name.is_empty() {
            return Err(PropertyProblem::EmptyName);
        }
        if name.len() > usize::from(u8::MAX) {
            return Err(PropertyProblem::NameTooLong { len: name.len() });
        }
        if value.len() > MAX_PROPERTY_VALUE {
            return Err(PropertyProblem::ValueTooLong {
                len: u32::try_from(value.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(Property { name, value })
    }

    /// The property name as sent (compare it case-insensitively).
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    fn encoded_len(&self) -> usize {
        1 + self.name.len() + 4 + self.value.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        // Property::new and parse both bound name (255) and value (2^31 - 1)
        // lengths, so these conversions do not truncate.
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name);
        out.extend_from_slice(&(self.value.len() as u32).to_be_bytes());
        out.extend_from_slice(self.value);
    }
}

/// The properties of a READY command, in the order received. Names are
/// case-insensitive (RFC 37); duplicates are kept and the first one wins
/// in [`Metadata::get`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata<'a> {
    properties: Vec<Property<'a>>,
}

impl<'a> Metadata<'a> {
    /// What a libzmq 4.3 socket of type `socket_type` sends: `Socket-Type`,
    /// then `Identity` for REQ, DEALER and ROUTER (empty when `identity` is
    /// `None`). An identity over 255 bytes is refused.
    pub fn basic(
        socket_type: SocketType,
        identity: Option<&'a [u8]>,
    ) -> Result<Metadata<'a>, PropertyProblem> {
        let mut properties = vec![Property::new(
            b"Socket-Type",
            socket_type.name().as_bytes(),
        )?];
        if socket_type.sends_identity() {
            let identity = identity.unwrap_or_default();
            if identity.len() > MAX_IDENTITY {
                return Err(PropertyProblem::IdentityTooLong {
                    len: identity.len(),
                });
            }
            properties.push(Property::new(b"Identity", identity)?);
        }
        Ok(Metadata { properties })
    }

    /// Metadata made of the given properties, in order.
    pub fn from_properties(properties: Vec<Property<'a>>) -> Metadata<'a> {
        Metadata { properties }
    }

    /// Parses the metadata part of a READY body (after the name). Every
    /// byte must belong to a property; as in libzmq, a trailing partial
    /// property is an error rather than ignored.
    pub fn parse(mut data: &'a [u8]) -> Result<Metadata<'a>, CommandError> {
        let mut properties = Vec::new();
        while !data.is_empty() {
            let index = properties.len();
            let fail = |problem| CommandError::Property { index, problem };
            let (property, rest) = parse_property(data).map_err(fail)?;
            properties.push(property);
            data = rest;
        }
        Ok(Metadata { properties })
    }

    /// The first value of the property called `name` (ASCII case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.properties
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// The `Socket-Type` value, if sent.
    pub fn socket_type(&self) -> Option<&'a [u8]> {
        self.get(b"Socket-Type")
    }

    /// The `Identity` value, if sent (it may be empty).
    pub fn identity(&self) -> Option<&'a [u8]> {
        self.get(b"Identity")
    }

    /// All properties in the order received.
    pub fn properties(&self) -> &[Property<'a>] {
        &self.properties
    }

    /// Checks a peer's READY against our socket type: a `Socket-Type`, if
    /// sent, must be known and compatible with `ours`, and an identity at
    /// most 255 bytes. On success, the peer's type and its identity (`None`
    /// when absent or empty: the ROUTER then generates one).
    ///
    /// A READY without `Socket-Type` is accepted, as libzmq accepts it (RFC
    /// 37 says a sender SHOULD send one; every libzmq and pyzmq peer does).
    pub fn check_peer(&self, ours: SocketType) -> Result<Peer<'a>, PeerError> {
        let socket_type = match self.socket_type() {
            None => None,
            Some(name) => {
                let peer =
                    SocketType::from_name(name).ok_or_else(|| PeerError::UnknownSocketType {
                        name: String::from_utf8_lossy(name).into_owned(),
                    })?;
                if !ours.accepts(peer) {
                    return Err(PeerError::Incompatible { ours, peer });
                }
                Some(peer)
            }
        };
        let identity = self.identity().filter(|id| !id.is_empty());
        if let Some(id) = identity {
            if id.len() > MAX_IDENTITY {
                return Err(PeerError::IdentityTooLong { len: id.len() });
            }
        }
        Ok(Peer {
            socket_type,
            identity,
        })
    }

    fn encoded_len(&self) -> usize {
        self.properties.iter().map(Property::encoded_len).sum()
    }

    /// Appends the properties in READY's wire form (name length, name,
    /// value length, value), as CURVE's INITIATE and READY boxes carry them.
    pub(crate) fn encode_properties(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        for property in &self.properties {
            property.encode(out);
        }
    }
}

/// What a valid peer READY told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    /// The peer's socket type; `None` if it did not say.
    pub socket_type: Option<SocketType>,
    /// The peer's identity; `None` if it sent none or an empty one.
    pub identity: Option<&'a [u8]>,
}

/// Why a peer's READY is refused. RFC 37 says to answer with an ERROR
/// command (see [`PeerError::reason`]) and close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerError {
    /// A `Socket-Type` this crate does not know.
    #[error("peer Socket-Type {name:?} is not a known socket type")]
    UnknownSocketType {
        /// The value sent, non-UTF-8 bytes replaced.
        name: String,
    },
    /// A known type that cannot talk to ours.
    #[error("peer socket type {peer} cannot connect to our {ours}")]
    Incompatible {
        /// Our socket type.
        ours: SocketType,
        /// The peer's.
        peer: SocketType,
    },
    /// An identity longer than 255 bytes.
    #[error("peer identity of {len} bytes exceeds 255")]
    IdentityTooLong {
        /// Its length.
        len: usize,
    },
}

impl PeerError {
    /// The reason to put in the ERROR command sent before closing.
    pub fn reason(&self) -> &'static [u8] {
        match self {
            PeerError::UnknownSocketType { .. } => b"invalid socket type",
            PeerError::Incompatible { .. } => b"incompatible socket type",
            PeerError::IdentityTooLong { .. } => b"invalid identity",
        }
    }
}

/// Splits one property off the front of `data`.
fn parse_property(data: &[u8]) -> Result<(Property<'_>, &[u8]), PropertyProblem> {
    let (&name_len, rest) = data.split_first().ok_or(PropertyProblem::NameOverrun {
        len: 0,
        available: 0,
    })?;
    let name_len = usize::from(name_len);
    if name_len == 0 {
        return Err(PropertyProblem::EmptyName);
    }
    if rest.len() < name_len {
        return Err(PropertyProblem::NameOverrun {
            len: name_len,
            available: rest.len(),
        });
    }
    let (name, rest) = rest.split_at(name_len);
    if rest.len() < 4 {
        return Err(PropertyProblem::ValueLengthCut {
            available: rest.len(),
        });
    }
    let (len_bytes, rest) = rest.split_at(4);
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    // u32 always fits usize on the 64-bit targets this crate is built for;
    // if it did not, the value could not be in the buffer either.
    let value_len = usize::try_from(len).unwrap_or(usize::MAX);
    if value_len > MAX_PROPERTY_VALUE {
        return Err(PropertyProblem::ValueTooLong { len });
    }
    if rest.len() < value_len {
        return Err(PropertyProblem::ValueOverrun {
            len,
            available: rest.len(),
        });
    }
    let (value, rest) = rest.split_at(value_len);
    Ok((Property { name, value }, rest))
}

impl<'a> Command<'a> {
    /// Parses a command frame's body.
    pub fn parse(body: &'a [u8]) -> Result<Command<'a>, CommandError> {
        let (&name_len, rest) = body.split_first().ok_or(CommandError::Empty)?;
        let name_len = usize::from(name_len);
        if name_len == 0 {
            return Err(CommandError::EmptyName);
        }
        if rest.len() < name_len {
            return Err(CommandError::NameOverrun {
                len: name_len,
                available: rest.len(),
            });
        }
        let (name, data) = rest.split_at(name_len);
        Ok(match name {
            b"READY" => Command::Ready(Metadata::parse(data)?),
            b"ERROR" => {
                let (&len, reason) = data.split_first().ok_or(CommandError::ErrorWithoutReason)?;
                let len = usize::from(len);
                // libzmq ignores bytes after the reason; so do we.
                let reason = reason.get(..len).ok_or(CommandError::ErrorReasonOverrun {
                    len,
                    available: reason.len(),
                })?;
                Command::Error { reason }
            }
            b"SUBSCRIBE" => Command::Subscribe(data),
            b"CANCEL" => Command::Cancel(data),
            b"PING" => {
                let Some((ttl, context)) = data.split_first_chunk::<2>() else {
                    return Err(CommandError::ShortPing { len: data.len() });
                };
                Command::Ping {
                    ttl: u16::from_be_bytes(*ttl),
                    context,
                }
            }
            b"PONG" => Command::Pong { context: data },
            _ => Command::Other { name, data },
        })
    }

    /// The PONG answering a PING with this context: the context echoed,
    /// cut to 16 bytes as libzmq does.
    pub fn pong_for(context: &'a [u8]) -> Command<'a> {
        Command::Pong {
            context: &context[..context.len().min(MAX_PING_CONTEXT)],
        }
    }

    /// The command's name on the wire.
    pub fn name(&self) -> &'a [u8] {
        match self {
            Command::Ready(_) => b"READY",
            Command::Error { .. } => b"ERROR",
            Command::Subscribe(_) => b"SUBSCRIBE",
            Command::Cancel(_) => b"CANCEL",
            Command::Ping { .. } => b"PING",
            Command::Pong { .. } => b"PONG",
            Command::Other { name, .. } => name,
        }
    }

    /// Appends the whole command frame (header and body) to `out`.
    ///
    /// An ERROR reason is cut to 255 bytes and an `Other` name to 255 bytes
    /// (both are length-prefixed by one byte); an empty `Other` name is sent
    /// as is, since only a peer's parser can refuse it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let body_len = self.body_len();
        out.reserve(crate::frame::MAX_HEADER_LEN + body_len);
        out.extend_from_slice(encode_header(Flags::COMMAND, body_len).as_bytes());
        self.encode_body(out);
    }

    /// Appends the command body alone (name and data, no frame header) to
    /// `out`, with the cuts of [`Command::encode`]. CURVE sends commands
    /// after the handshake inside MESSAGE boxes (see [`crate::curve`]),
    /// where only the body is boxed.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let name = self.cut_name();
        // name.len() <= 255 by the cut.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        match self {
            Command::Ready(metadata) => metadata.encode_properties(out),
            Command::Error { reason } => {
                let reason = &reason[..reason.len().min(usize::from(u8::MAX))];
                out.push(reason.len() as u8);
                out.extend_from_slice(reason);
            }
            Command::Subscribe(topic) | Command::Cancel(topic) => out.extend_from_slice(topic),
            Command::Ping { ttl, context } => {
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(context);
            }
            Command::Pong { context } => out.extend_from_slice(context),
            Command::Other { data, .. } => out.extend_from_slice(data),
        }
    }

    /// The name as sent: cut to the 255 bytes its length byte can say.
    fn cut_name(&self) -> &'a [u8] {
        let name = self.name();
        &name[..name.len().min(usize::from(u8::MAX))]
    }

    /// Length of the body [`Command::encode_body`] appends.
    fn body_len(&self) -> usize {
        let data_len = match self {
            Command::Ready(metadata) => metadata.encoded_len(),
            Command::Error { reason } => 1 + reason.len().min(usize::from(u8::MAX)),
            Command::Subscribe(topic) | Command::Cancel(topic) => topic.len(),
            Command::Ping { context, .. } => 2 + context.len(),
            Command::Pong { context } => context.len(),
            Command::Other { data, .. } => data.len(),
        };
        1 + self.cut_name().len() + data_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;

    /// Encodes `command`, decodes the frame and parses the body again.
    fn round_trip(command: &Command<'_>) -> Vec<u8> {
        let mut wire = Vec::new();
        command.encode(&mut wire);
        let Ok(Some((frame, used))) = Decoder::new(1 << 20).decode(&wire) else {
            panic!("encoded command is not one frame");
        };
        assert_eq!(used, wire.len());
        assert!(frame.command());
        assert_eq!(
            Command::parse(&wire[frame.body.clone()]).as_ref(),
            Ok(command)
        );
        wire
    }

    #[test]
    fn ready_of_a_dealer_is_rfc_37s_worked_example() {
        let metadata = Metadata::basic(SocketType::Dealer, None).expect("valid");
        let wire = round_trip(&Command::Ready(metadata));
        let mut expected = vec![0x04, 41, 5];
        expected.extend_from_slice(b"READY");
        expected.push(11);
        expected.extend_from_slice(b"Socket-Type");
        expected.extend_from_slice(&[0, 0, 0, 6]);
        expected.extend_from_slice(b"DEALER");
        expected.push(8);
        expected.extend_from_slice(b"Identity");
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(wire, expected);
    }

    #[test]
    fn ready_properties_are_case_insensitive_and_others_kept() {
        let body = ready_body(&[
            (b"socket-type", b"DEALER"),
            (b"IDENTITY", b"host/1234"),
            (b"X-Custom", b"\x00\xff"),
        ]);
        let Ok(Command::Ready(metadata)) = Command::parse(&body) else {
            panic!("READY refused");
        };
        assert_eq!(metadata.socket_type(), Some(&b"DEALER"[..]));
        assert_eq!(metadata.identity(), Some(&b"host/1234"[..]));
        assert_eq!(metadata.get(b"x-custom"), Some(&b"\x00\xff"[..]));
        assert_eq!(metadata.properties().len(), 3);
        assert_eq!(
            metadata.check_peer(SocketType::Router),
            Ok(Peer {
                socket_type: Some(SocketType::Dealer),
                identity: Some(b"host/1234")
            })
        );
    }

    #[test]
    fn an_empty_identity_means_none() {
        let body = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"")]);
        let Ok(Command::Ready(metadata)) = Command::parse(&body) else {
            panic!("READY refused");
        };
        assert_eq!(metadata.identity(), Some(&b""[..]));
        let peer = metadata.check_peer(SocketType::Router).expect("valid peer");
        assert_eq!(peer.identity, None);
        // No Identity at all (a SUB) is the same.
        let body = ready_body(&[(b"Socket-Type", b"SUB")]);
        let Ok(Command::Ready(metadata)) = Command::parse(&body) else {
            panic!("READY refused");
        };
        assert_eq!(
            metadata.check_peer(SocketType::Pub).map(|p| p.identity),
            Ok(None)
        );
    }

    #[test]
    fn the_wrong_socket_type_is_refused() {
        let check = |socket_type: &[u8], ours| {
            let body = ready_body(&[(b"Socket-Type", socket_type)]);
            let Ok(Command::Ready(metadata)) = Command::parse(&body) else {
                panic!("READY refused");
            };
            metadata.check_peer(ours).map(|peer| peer.socket_type)
        };
        assert_eq!(
            check(b"PUB", SocketType::Router),
            Err(PeerError::Incompatible {
                ours: SocketType::Router,
                peer: SocketType::Pub
            })
        );
        assert!(matches!(
            check(b"BANANA", SocketType::Router),
            Err(PeerError::UnknownSocketType { .. })
        ));
        // No Socket-Type at all is accepted, as libzmq accepts it.
        let missing = Metadata::parse(b"").expect("empty metadata is valid");
        assert_eq!(
            missing.check_peer(SocketType::Router),
            Ok(Peer {
                socket_type: None,
                identity: None
            })
        );
        let err = check(b"SUB", SocketType::Router).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer socket type SUB cannot connect to our ROUTER"
        );
        assert_eq!(err.reason(), b"incompatible socket type");
        assert!(check(b"SUB", SocketType::Pub).is_ok());
        assert!(check(b"XSUB", SocketType::Pub).is_ok());
        assert!(check(b"PUB", SocketType::Sub).is_ok());
    }

    #[test]
    fn an_identity_over_255_bytes_is_refused() {
        let long = [b'x'; 256];
        let body = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", &long)]);
        let Ok(Command::Ready(metadata)) = Command::parse(&body) else {
            panic!("READY refused");
        };
        assert_eq!(
            metadata.check_peer(SocketType::Router),
            Err(PeerError::IdentityTooLong { len: 256 })
        );
    }

    #[test]
    fn malformed_ready_properties_are_refused() {
        let good = ready_body(&[(b"Socket-Type", b"DEALER")]);
        // Every truncation of a valid READY (past the name) is malformed.
        for cut in 7..good.len() {
            assert!(
                matches!(
                    Command::parse(&good[..cut]),
                    Err(CommandError::Property { index: 0, .. })
                ),
                "cut at {cut}"
            );
        }
        let cases: [(&[u8], PropertyProblem); 4] = [
            (b"\x00", PropertyProblem::EmptyName),
            (
                b"\x05ab",
                PropertyProblem::NameOverrun {
                    len: 5,
                    available: 2,
                },
            ),
            (
                b"\x01a\x00\x00",
                PropertyProblem::ValueLengthCut { available: 2 },
            ),
            (
                b"\x01a\x00\x00\x00\x09abc",
                PropertyProblem::ValueOverrun {
                    len: 9,
                    available: 3,
                },
            ),
        ];
        for (metadata, problem) in cases {
            let mut body = b"\x05READY".to_vec();
            body.extend_from_slice(metadata);
            assert_eq!(
                Command::parse(&body),
                Err(CommandError::Property { index: 0, problem })
            );
        }
        let mut huge = b"\x05READY\x01a".to_vec();
        huge.extend_from_slice(&0x8000_0000u32.to_be_bytes());
        assert_eq!(
            Command::parse(&huge),
            Err(CommandError::Property {
                index: 0,
                problem: PropertyProblem::ValueTooLong { len: 0x8000_0000 }
            })
        );
        // The index says which property is bad.
        let mut second = ready_body(&[(b"Socket-Type", b"DEALER")]);
        second.push(0);
        let err = Command::parse(&second).unwrap_err();
        assert_eq!(
            err,
            CommandError::Property {
                index: 1,
                problem: PropertyProblem::EmptyName
            }
        );
        assert_eq!(err.to_string(), "READY property #1: empty name");
    }

    #[test]
    fn ping_with_context_and_its_pong() {
        let ping = Command::Ping {
            ttl: 300,
            context: b"ctx-1234",
        };
        let wire = round_trip(&ping);
        assert_eq!(&wire[..9], b"\x04\x0f\x04PING\x01\x2c");
        let Command::Ping { context, .. } = ping else {
            unreachable!()
        };
        assert_eq!(
            round_trip(&Command::pong_for(context)),
            b"\x04\x0d\x04PONGctx-1234"
        );
        // libzmq's PING: TTL and no context.
        assert_eq!(
            Command::parse(b"\x04PING\x00\x00"),
            Ok(Command::Ping {
                ttl: 0,
                context: b""
            })
        );
        assert_eq!(
            Command::parse(b"\x04PING\x00"),
            Err(CommandError::ShortPing { len: 1 })
        );
        // Longer contexts are accepted; the PONG echoes 16 bytes.
        let long = [7u8; 20];
        assert_eq!(
            Command::pong_for(&long),
            Command::Pong {
                context: &long[..16]
            }
        );
    }

    #[test]
    fn subscribe_cancel_error_and_unknown_commands() {
        round_trip(&Command::Subscribe(b"topic."));
        round_trip(&Command::Subscribe(b""));
        round_trip(&Command::Cancel(b"topic."));
        round_trip(&Command::Error {
            reason: b"invalid socket type",
        });
        round_trip(&Command::Other {
            name: b"JOIN",
            data: b"group",
        });
        assert_eq!(
            Command::parse(b"\x09SUBSCRIBEabc"),
            Ok(Command::Subscribe(b"abc"))
        );
        assert_eq!(
            Command::parse(b"\x05ERROR\x09too short"),
            Ok(Command::Error {
                reason: b"too short"
            })
        );
        assert_eq!(
            Command::parse(b"\x05ERROR\x0atoo short"),
            Err(CommandError::ErrorReasonOverrun {
                len: 10,
                available: 9
            })
        );
        assert_eq!(
            Command::parse(b"\x05ERROR"),
            Err(CommandError::ErrorWithoutReason)
        );
    }

    #[test]
    fn malformed_command_names_are_refused() {
        assert_eq!(Command::parse(b""), Err(CommandError::Empty));
        assert_eq!(Command::parse(b"\x00READY"), Err(CommandError::EmptyName));
        assert_eq!(
            Command::parse(b"\x06READY"),
            Err(CommandError::NameOverrun {
                len: 6,
                available: 5
            })
        );
    }

    #[test]
    fn a_ready_over_255_bytes_uses_the_long_form() {
        let value = [b'v'; 300];
        let Ok(property) = Property::new(b"X-Big", &value) else {
            panic!("valid property refused");
        };
        let wire = round_trip(&Command::Ready(Metadata::from_properties(vec![property])));
        assert_eq!(wire[0], 0x06);
    }

    #[test]
    fn properties_that_cannot_be_encoded_are_refused() {
        assert_eq!(Property::new(b"", b"v"), Err(PropertyProblem::EmptyName));
        assert_eq!(
            Property::new(&[b'n'; 256], b"v"),
            Err(PropertyProblem::NameTooLong { len: 256 })
        );
        assert_eq!(
            Metadata::basic(SocketType::Dealer, Some(&[1u8; 256])),
            Err(PropertyProblem::IdentityTooLong { len: 256 })
        );
    }

    fn ready_body(properties: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = b"\x05READY".to_vec();
        for (name, value) in properties {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        body
    }
}
