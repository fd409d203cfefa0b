//! The native engine (issue 13): the proxy's ROUTER sockets spoken in ZMTP
//! directly, without libzmq, on one mio event-loop thread.
//!
//! libzmq costs the proxy a `zmq_msg_t`, a pipe hand-off between threads and
//! a map lookup per frame; here a message is read in large chunks into the
//! sender's buffer, decoded in place ([`zmtp`]), validated and routed by the
//! same pure decision as the libzmq engine ([`crate::protocol::decide`]),
//! and written to its receiver with the envelope frames rewritten and the
//! payload untouched.
//!
//! Modules, one concept each:
//! - [`handshake`]: greeting and READY of an accepted connection (pure);
//! - [`curve`]: the CURVE server handshake, authorization at the
//!   handshake and the sealing of output (pure but for the random source);
//! - [`heartbeat`]: PING to quiet peers, closing dead ones (pure);
//! - [`identity`]: routing identities, generated ones and duplicates (pure);
//! - [`keepalive`]: TCP keepalive with libzmq's option semantics;
//! - [`outbox`]: a connection's bounded output and vectored writes;
//! - [`connection`]: one peer's socket, buffers and handshake state;
//! - [`subscriptions`]: one subscriber's counted prefixes and matching (pure);
//! - [`publisher`]: the PUB listener, fanning messages out to subscribers;
//! - [`router`]: the event loop of the double- and single-router proxy
//!   (with the central PUB when pub/sub is on);
//! - [`relay`]: the local publisher's event loop, SUB connections to the
//!   central publishers re-published on its own PUB.

pub mod connection;
pub mod curve;
pub mod handshake;
pub mod heartbeat;
pub mod identity;
pub mod keepalive;
pub mod outbox;
pub mod publisher;
pub mod relay;
pub mod router;
pub mod subscriptions;

pub use curve::CurveServer;
pub use heartbeat::Heartbeat;
pub use identity::Duplicates;
pub use keepalive::Keepalive;
pub use publisher::{Publisher, PublisherConfig, Timeouts};
pub use relay::{Relay, RelayConfig};
pub use router::{Listener, NativeConfig, NativeRouter};
