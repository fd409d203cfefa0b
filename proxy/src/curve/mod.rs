//! CURVE security (ZeroMQ RFC 26): the proxy's frontend, backend and
//! publisher sockets are CURVE servers; a peer must hold a key listed in
//! the authorized-keys file, and may send only as the identities that file
//! gives its key.
//!
//! This module is the key files, the key set shared by both engines and
//! the libzmq engine's enforcement (ZAP, per-message check). The native
//! engine speaks CURVE itself and enforces both rules at the handshake
//! ([`crate::native::curve`]), and closes peers a reload no longer allows.
//!
//! - [`keys`]: Z85 keys and the public key of the proxy's secret key (pure);
//! - [`authorized`]: the authorized-keys file (pure);
//! - [`zap`]: the in-process ZAP handler (RFC 27) libzmq asks at each
//!   handshake: unknown keys are refused there;
//! - [`identity`]: the per-message check of a ROUTER's routing id against
//!   the key that sent it;
//! - [`files`]: reading the key files at start, and the authorized-keys
//!   file again whenever it changes.
//!
//! The current set is shared as [`SharedKeys`]: a reload swaps it whole,
//! so the ZAP handler and the forwarding loop each see one file, never a
//! mix. Already connected peers are not asked again by libzmq (ZAP runs at
//! the handshake only), so a reload never drops a peer whose key stays; a
//! peer whose key was removed keeps its connection, but every message it
//! sends on a ROUTER is then dropped by [`identity`] and counted.
//!
//! Limits of the libzmq engine (libzmq 4.3.4):
//! - ZAP is asked before libzmq reads the peer's READY, so it sees the key
//!   but not the identity the peer will claim (the request's "identity"
//!   frame is the proxy socket's own routing id). A peer cannot be refused
//!   at the handshake for its identity, only per message. Consequence: an
//!   authorized key may connect under an identity it is not allowed
//!   (ROUTER_HANDOVER lets it take that identity over from its rightful
//!   owner); what it sends is dropped, but messages routed to that identity
//!   go to it until the rightful peer reconnects. The native engine, which
//!   reads INITIATE's metadata itself, refuses such a peer at the
//!   handshake, before it can take the identity over.
//!   Nothing in libzmq 4.3.4's stable API closes one peer of a ROUTER:
//!   `zmq_disconnect_peer` is draft API and for SERVER sockets only,
//!   ZMQ_ROUTER_NOTIFY only reports connections, and the fd a message came
//!   from (ZMQ_SRCFD) belongs to libzmq's I/O thread, which may have closed
//!   it and handed the number to another peer's connection by the time the
//!   loop would shut it down.
//! - A SUB of the publisher sends nothing but subscriptions, so a removed
//!   key's subscriber keeps receiving until it reconnects (the native
//!   engine closes it at the reload).
//! - A new secret key needs a restart: libzmq reads ZMQ_CURVE_SECRETKEY
//!   when a socket binds and keeps it (the native engine too, for now:
//!   it reads the file once, at start).

pub mod authorized;
pub mod files;
pub mod identity;
pub mod keys;
pub mod zap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use self::authorized::{AuthorizedKeys, AuthorizedKeysError, IdentityPattern, Verdict};
pub use self::files::{load_authorized_keys, load_secret_key, watch_authorized_keys, FileError};
pub use self::identity::{Authorizer, IdentityCheck};
pub use self::keys::{KeyError, PublicKey, SecretKey};
pub use self::zap::ZapHandler;

/// Why a peer or a message was refused; the `reason` label of
/// `zmq_proxy_curve_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A handshake with a key not in the file, or a message from a
    /// connected peer whose key was removed since.
    UnknownKey,
    /// A message whose routing id its key may not use.
    Identity,
    /// A handshake that failed before the peer's key could be checked: a
    /// wrong server key (its HELLO does not open), a plain NULL peer, a
    /// malformed CURVE command.
    Handshake,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::Identity => "identity",
            Refusal::Handshake => "handshake",
        }
    }
}

/// The current authorized keys, shared by the ZAP handler, the forwarding
/// loop and the reloader.
#[derive(Debug, Clone, Default)]
pub struct SharedKeys {
    current: Arc<Mutex<Arc<AuthorizedKeys>>>,
    /// Bumped at every swap, so a loop can keep its snapshot and look at one
    /// atomic per message instead of taking the lock.
    generation: Arc<AtomicU64>,
}

impl SharedKeys {
    /// Shares `keys`.
    pub fn new(keys: AuthorizedKeys) -> SharedKeys {
        SharedKeys {
            current: Arc::new(Mutex::new(Arc::new(keys))),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<AuthorizedKeys> {
        Arc::clone(&crate::lock::lock(&self.current))
    }

    /// Replaces the set for everyone.
    pub fn replace(&self, keys: AuthorizedKeys) {
        *crate::lock::lock(&self.current) = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every [`SharedKeys::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
