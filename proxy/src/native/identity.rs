//! ROUTER identities: which connection a routing key names.
//!
//! A peer's identity is the `Identity` property of its READY, or, when it
//! sends none (or an empty one), one generated here the way libzmq's ROUTER
//! does: a zero byte then a 32-bit counter, so a generated identity can never
//! equal a protocol-1.0 identity (those are printable `{host}/...` strings).
//!
//! Two connections may claim the same identity (a peer reconnecting before
//! its old connection is known dead). libzmq's ROUTER by default ignores the
//! newcomer until the holder leaves; with ROUTER_HANDOVER, which the libzmq
//! engine of this proxy sets, the newcomer takes the identity over. Both are
//! [`Duplicates`] policies here. Pure: connections are plain indices.

use std::collections::HashMap;

/// What to do when a connection claims an identity another one holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// libzmq's default: the newcomer waits, unread, until the holder leaves.
    Ignore,
    /// ROUTER_HANDOVER: the newcomer takes the identity; the old connection
    /// stays open but is no longer routed to.
    Handover,
}

/// The outcome of [`PeerTable::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The connection now holds the identity.
    Holder,
    /// The connection holds it, taken from `previous` (handover).
    TookOver {
        /// The connection that held it before.
        previous: usize,
    },
    /// Another connection holds it; this one waits for it (ignore policy).
    Waiting,
}

/// Identities of one ROUTER's connections.
#[derive(Debug)]
pub struct PeerTable {
    holders: HashMap<Vec<u8>, usize>,
    /// Connections waiting for an identity held by another, in arrival order.
    waiting: Vec<(Vec<u8>, usize)>,
    policy: Duplicates,
}

impl PeerTable {
    /// An empty table with the given duplicate policy.
    pub fn new(policy: Duplicates) -> PeerTable {
        PeerTable {
            holders: HashMap::new(),
            waiting: Vec::new(),
            policy,
        }
    }

    /// The connection routed to for `identity`.
    #[inline]
    pub fn get(&self, identity: &[u8]) -> Option<usize> {
        self.holders.get(identity).copied()
    }

    /// Connection `conn` (finished its handshake) claims `identity`.
    pub fn claim(&mut self, identity: &[u8], conn: usize) -> Claim {
        match self.holders.get_mut(identity) {
            None => {
                self.holders.insert(identity.to_vec(), conn);
                Claim::Holder
            }
            Some(holder) => match self.policy {
                Duplicates::Handover => {
                    let previous = std::mem::replace(holder, conn);
                    Claim::TookOver { previous }
                }
                Duplicates::Ignore => {
                    self.waiting.push((identity.to_vec(), conn));
                    Claim::Waiting
                }
            },
        }
    }

    /// Connection `conn`, known by `identity`, is gone. Returns the waiting
    /// connection that now holds the identity, if any.
    pub fn release(&mut self, identity: &[u8], conn: usize) -> Option<usize> {
        if let Some(pos) = self
            .waiting
            .iter()
            .position(|(id, c)| *c == conn && id == identity)
        {
            self.waiting.remove(pos);
            return None;
        }
        if self.holders.get(identity) != Some(&conn) {
            // Handed over earlier: the identity is someone else's now.
            return None;
        }
        self.holders.remove(identity);
        let pos = self.waiting.iter().position(|(id, _)| id == identity)?;
        let (id, next) = self.waiting.remove(pos);
        self.holders.insert(id, next);
        Some(next)
    }
}

/// Generates identities for peers that send none, as libzmq does: `0x00`
/// then a big-endian 32-bit counter (starting at a random value, so two
/// proxy runs do not hand out the same ones).
#[derive(Debug)]
pub struct Generated {
    next: u32,
}

impl Generated {
    /// A generator starting at `seed`.
    pub fn new(seed: u32) -> Generated {
        Generated { next: seed }
    }

    /// The next identity not held in `table`.
    pub fn next(&mut self, table: &PeerTable) -> [u8; 5] {
        loop {
            let n = self.next;
            self.next = self.next.wrapping_add(1);
            let mut id = [0u8; 5];
            id[1..].copy_from_slice(&n.to_be_bytes());
            if table.get(&id).is_none() {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_keeps_the_holder_and_promotes_the_waiter_when_it_leaves() {
        let mut t = PeerTable::new(Duplicates::Ignore);
        assert_eq!(t.claim(b"a", 1), Claim::Holder);
        assert_eq!(t.claim(b"a", 2), Claim::Waiting);
        assert_eq!(t.get(b"a"), Some(1));
        assert_eq!(t.release(b"a", 1), Some(2));
        assert_eq!(t.get(b"a"), Some(2));
        assert_eq!(t.release(b"a", 2), None);
        assert_eq!(t.get(b"a"), None);
    }

    #[test]
    fn a_waiter_that_leaves_first_is_forgotten() {
        let mut t = PeerTable::new(Duplicates::Ignore);
        t.claim(b"a", 1);
        t.claim(b"a", 2);
        assert_eq!(t.release(b"a", 2), None);
        assert_eq!(t.release(b"a", 1), None);
        assert_eq!(t.get(b"a"), None);
    }

    #[test]
    fn handover_gives_the_identity_to_the_newcomer() {
        let mut t = PeerTable::new(Duplicates::Handover);
        t.claim(b"a", 1);
        assert_eq!(t.claim(b"a", 2), Claim::TookOver { previous: 1 });
        assert_eq!(t.get(b"a"), Some(2));
        // The old connection leaving does not take the identity with it.
        assert_eq!(t.release(b"a", 1), None);
        assert_eq!(t.get(b"a"), Some(2));
    }

    #[test]
    fn generated_identities_are_libzmq_shaped_and_unique() {
        let mut t = PeerTable::new(Duplicates::Ignore);
        let mut g = Generated::new(u32::MAX);
        let first = g.next(&t);
        assert_eq!(first, [0, 0xFF, 0xFF, 0xFF, 0xFF]);
        t.claim(&[0, 0, 0, 0, 0], 7);
        // The counter wraps and skips identities in use.
        assert_eq!(g.next(&t), [0, 0, 0, 0, 1]);
    }
}
