//! Duplicate suppression for RPC servers: message ids seen within a TTL, and
//! the reply sent for each, so a retried request is answered again instead
//! of being handled twice.
//!
//! Clients with acks on re-send the very same frames (same message id) when
//! an ack is late, possibly through another proxy; the server must run the
//! handler once and answer every copy with the cached ack and reply (oslo's
//! `TTLCache`, `rpc_message_ttl` = 300 s). Pure: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What to do with a received message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: handle it.
    New,
    /// A copy: do not handle; re-send the cached reply frames if any.
    Duplicate(Option<Vec<Vec<u8>>>),
}

/// Message ids seen within the TTL, with their replies once known.
#[derive(Debug)]
pub struct Dedup {
    ttl: Duration,
    entries: HashMap<Vec<u8>, Option<Vec<Vec<u8>>>>,
    order: VecDeque<(Instant, Vec<u8>)>,
}

impl Dedup {
    /// An empty cache keeping ids for `ttl`.
    pub fn new(ttl: Duration) -> Dedup {
        Dedup {
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` as seen at `now` and says whether it is new.
    pub fn check(&mut self, id: &[u8], now: Instant) -> Seen {
        self.expire(now);
        if let Some(reply) = self.entries.get(id) {
            return Seen::Duplicate(reply.clone());
        }
        self.entries.insert(id.to_vec(), None);
        self.order.push_back((now + self.ttl, id.to_vec()));
        Seen::New
    }

    /// Remembers the reply frames sent for `id` (CALL only).
    pub fn set_reply(&mut self, id: &[u8], reply: Vec<Vec<u8>>) {
        if let Some(slot) = self.entries.get_mut(id) {
            *slot = Some(reply);
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_ttl_get_the_cached_reply() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10));
        assert_eq!(d.check(b"a", t0), Seen::New);
        assert_eq!(d.check(b"a", t0), Seen::Duplicate(None));
        d.set_reply(b"a", vec![b"r".to_vec()]);
        assert_eq!(
            d.check(b"a", t0 + Duration::from_secs(9)),
            Seen::Duplicate(Some(vec![b"r".to_vec()]))
        );
        assert_eq!(d.check(b"b", t0 + Duration::from_secs(5)), Seen::New);
        // After the TTL, "a" is forgotten; "b" is not yet.
        assert_eq!(d.check(b"a", t0 + Duration::from_secs(10)), Seen::New);
        assert_eq!(
            d.check(b"b", t0 + Duration::from_secs(14)),
            Seen::Duplicate(None)
        );
        assert_eq!(d.len(), 2);
        d.set_reply(b"unknown", vec![]);
        assert_eq!(d.len(), 2);
    }
}
