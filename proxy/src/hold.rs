//! Holding messages for a receiver that is not connected yet.
//!
//! A ROUTER with ROUTER_MANDATORY refuses a message for an identity it has no
//! connection from (EHOSTUNREACH). Often that receiver is only late: a proxy
//! just scaled up or restarted is found by clients before the servers behind
//! it have connected, and a server reconnecting after a blip is back within
//! moments. Dropping such a message costs an oslo client its whole ack or
//! call timeout. A [`HoldQueue`] keeps them, per receiver and in arrival
//! order, for a bounded time and up to a bounded count; the loop retries them
//! as a group per receiver and drops (and counts) what is still unroutable at
//! its deadline.
//!
//! Pure: the caller passes the clock and the send attempt, so the policy is
//! tested without sockets.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::protocol::DropReason;

/// Messages waiting for their receivers, keyed by receiver identity.
#[derive(Debug)]
pub struct HoldQueue<T> {
    receivers: HashMap<Vec<u8>, VecDeque<(Instant, T)>>,
    len: usize,
    limit: usize,
}

impl<T> HoldQueue<T> {
    /// An empty queue that holds at most `limit` messages in all.
    pub fn new(limit: usize) -> HoldQueue<T> {
        HoldQueue {
            receivers: HashMap::new(),
            len: 0,
            limit,
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether messages for `receiver` are held: a new one for it must queue
    /// behind them rather than overtake them.
    #[inline]
    pub fn holds(&self, receiver: &[u8]) -> bool {
        self.receivers.contains_key(receiver)
    }

    /// Holds `message` for `receiver` until `deadline`; hands it back when
    /// the queue is full.
    pub fn push(&mut self, receiver: &[u8], deadline: Instant, message: T) -> Result<(), T> {
        if self.len >= self.limit {
            return Err(message);
        }
        self.receivers
            .entry(receiver.to_vec())
            .or_default()
            .push_back((deadline, message));
        self.len += 1;
        Ok(())
    }

    /// Tries every receiver's messages, oldest first, with `send`:
    /// - `Ok` sends it; the next one is tried;
    /// - `Err(Unroutable | HighWaterMark)`: the receiver is still absent or
    ///   full; the message stays (and so do the younger ones behind it)
    ///   unless its deadline passed, then it goes to `dropped`, and the next
    ///   one is tried;
    /// - any other error: it goes to `dropped`, and the next one is tried.
    ///
    /// Returns how many were sent.
    pub fn retry(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&mut T) -> Result<(), DropReason>,
        mut dropped: impl FnMut(T, DropReason),
    ) -> usize {
        let mut sent = 0;
        self.receivers.retain(|_, queue| {
            while let Some((deadline, message)) = queue.front_mut() {
                let deadline = *deadline;
                match send(message) {
                    Ok(()) => sent += 1,
                    Err(DropReason::Unroutable | DropReason::HighWaterMark) if deadline > now => {
                        break
                    }
                    Err(reason) => {
                        if let Some((_, message)) = queue.pop_front() {
                            dropped(message, reason);
                        }
                        continue;
                    }
                }
                queue.pop_front();
            }
            !queue.is_empty()
        });
        self.len = self.receivers.values().map(VecDeque::len).sum();
        sent
    }

    /// Empties the queue, handing every message to `dropped` (at shutdown).
    pub fn drop_all(&mut self, mut dropped: impl FnMut(T)) {
        for (_, queue) in self.receivers.drain() {
            for (_, message) in queue {
                dropped(message);
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64, t0: Instant) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn held_messages_go_out_in_order_once_their_receiver_is_there() {
        let t0 = Instant::now();
        let mut q = HoldQueue::new(10);
        for m in ["a1", "a2", "a3"] {
            q.push(b"a", at(100, t0), m).unwrap();
        }
        q.push(b"b", at(100, t0), "b1").unwrap();
        assert!(q.holds(b"a") && q.holds(b"b") && !q.holds(b"c"));
        let mut out = Vec::new();
        // Only "a" is connected.
        let sent = q.retry(
            at(10, t0),
            |m| {
                if m.starts_with('a') {
                    out.push(*m);
                    Ok(())
                } else {
                    Err(DropReason::Unroutable)
                }
            },
            |m, r| panic!("{m} dropped: {r}"),
        );
        assert_eq!((sent, out, q.len()), (3, vec!["a1", "a2", "a3"], 1));
        assert!(!q.holds(b"a"), "an emptied receiver is forgotten");
    }

    #[test]
    fn a_refusal_keeps_the_younger_messages_behind_it() {
        let t0 = Instant::now();
        let mut q = HoldQueue::new(10);
        q.push(b"a", at(100, t0), 1).unwrap();
        q.push(b"a", at(100, t0), 2).unwrap();
        let mut tries = 0;
        let sent = q.retry(
            at(10, t0),
            |_| {
                tries += 1;
                Err(DropReason::HighWaterMark)
            },
            |m, r| panic!("{m} dropped: {r}"),
        );
        assert_eq!((sent, tries, q.len()), (0, 1, 2), "one try per receiver");
    }

    #[test]
    fn messages_past_their_deadline_are_dropped_with_the_last_reason() {
        let t0 = Instant::now();
        let mut q = HoldQueue::new(10);
        q.push(b"a", at(50, t0), "old").unwrap();
        q.push(b"a", at(150, t0), "young").unwrap();
        let mut dropped = Vec::new();
        q.retry(
            at(100, t0),
            |_| Err(DropReason::Unroutable),
            |m, r| dropped.push((m, r)),
        );
        assert_eq!(dropped, vec![("old", DropReason::Unroutable)]);
        assert_eq!(q.len(), 1);
        // Any other failure drops at once, deadline or not.
        q.retry(
            at(100, t0),
            |_| Err(DropReason::SendFailed),
            |m, r| dropped.push((m, r)),
        );
        assert_eq!(dropped[1], ("young", DropReason::SendFailed));
        assert!(q.is_empty());
    }

    #[test]
    fn the_limit_hands_messages_back_and_drop_all_empties() {
        let t0 = Instant::now();
        let mut q = HoldQueue::new(2);
        q.push(b"a", t0, 1).unwrap();
        q.push(b"b", t0, 2).unwrap();
        assert_eq!(q.push(b"a", t0, 3), Err(3));
        let mut all = Vec::new();
        q.drop_all(|m| all.push(m));
        all.sort();
        assert_eq!((all, q.len(), q.holds(b"a")), (vec![1, 2], 0, false));
    }
}
