//! A pure ZMTP 3.0/3.1 codec: the byte-level core of the proxy's native
//! forwarding engine (issue 13).
//!
//! Nothing here does I/O, allocates per frame or copies payload bytes. The
//! engine reads from its sockets into a buffer and asks this crate what the
//! bytes mean:
//! - [`greeting`]: the 64-byte greeting, ours to send and the peer's to parse
//!   incrementally;
//! - [`frame`]: frame headers decoded in place (body positions, not copies)
//!   and encoded for vectored writes;
//! - [`command`]: READY (with metadata and the peer check), ERROR, SUBSCRIBE,
//!   CANCEL, PING and PONG;
//! - [`subscription`]: prefix subscriptions in the 3.1 command form and the
//!   3.0 message form;
//! - [`socket_type`]: socket type names and which pairs may connect;
//! - [`message`]: frames grouped into whole messages, with cut and oversized
//!   messages reported for dropping;
//! - [`curve`]: the CURVE security mechanism (RFC 26): server and client
//!   handshakes, MESSAGE boxes, Z85 keys.
//!
//! The NULL and CURVE security mechanisms are supported, and only ZMTP 3.0
//! and later peers (libzmq 4.0 and later).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod command;
pub mod curve;
pub mod frame;
pub mod greeting;
pub mod message;
pub mod socket_type;
pub mod subscription;

pub use command::{Command, CommandError, Metadata, Peer, PeerError, Property, PropertyProblem};
pub use frame::{
    encode_header, DecodeError, Decoder, EncodedHeader, Flags, FrameHeader, Header, SizeForm,
};
pub use greeting::{Greeting, GreetingError, Mechanism, Progress, Version, GREETING_LEN};
pub use message::{Assembler, DropReason, Dropped, Limits, Push};
pub use socket_type::SocketType;
pub use subscription::Subscription;
