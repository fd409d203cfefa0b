//! One subscriber's prefix subscriptions, as a native PUB keeps them
//! (pure: the publisher feeds it the changes it decoded and asks it about
//! topics).
//!
//! Subscriptions are counted per prefix: a prefix subscribed twice needs
//! two cancels before messages stop, which is how libzmq's SUB side counts
//! them (it only tells its publisher about the first subscribe and the last
//! cancel, so a libzmq peer never sends a duplicate; a raw peer may). A
//! cancel of a prefix not subscribed is ignored. A message matches when its
//! first frame starts with any subscribed prefix (the empty prefix matches
//! everything).

use std::collections::BTreeMap;

use zmtp::Subscription;

/// Most distinct prefixes one subscriber may hold: a peer cannot make the
/// proxy store an unbounded table (oslo subscribes to a handful of topics).
pub const MAX_PREFIXES: usize = 10_000;

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed (a count went up or down).
    Changed,
    /// A cancel of a prefix that was not subscribed: nothing to do.
    NotSubscribed,
    /// A new prefix past [`MAX_PREFIXES`]: refused.
    Full,
}

/// The prefixes one subscriber holds, with how many times each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    counts: BTreeMap<Vec<u8>, u32>,
}

impl Subscriptions {
    /// Applies a subscribe or cancel.
    pub fn apply(&mut self, change: Subscription<'_>) -> Applied {
        match change {
            Subscription::Subscribe(prefix) => {
                if let Some(count) = self.counts.get_mut(prefix) {
                    *count = count.saturating_add(1);
                    return Applied::Changed;
                }
                if self.counts.len() >= MAX_PREFIXES {
                    return Applied::Full;
                }
                self.counts.insert(prefix.to_vec(), 1);
                Applied::Changed
            }
            Subscription::Cancel(prefix) => match self.counts.get_mut(prefix) {
                None => Applied::NotSubscribed,
                Some(count) if *count > 1 => {
                    *count -= 1;
                    Applied::Changed
                }
                Some(_) => {
                    self.counts.remove(prefix);
                    Applied::Changed
                }
            },
        }
    }

    /// Whether a message whose first frame is `topic` is wanted.
    pub fn matches(&self, topic: &[u8]) -> bool {
        if self.counts.is_empty() {
            return false;
        }
        // Whichever is fewer: the table's entries, or the topic's prefixes
        // (each one map lookup). oslo peers hold a few short prefixes.
        if self.counts.len() <= topic.len() + 1 {
            self.counts.keys().any(|prefix| topic.starts_with(prefix))
        } else {
            (0..=topic.len()).any(|n| self.counts.contains_key(&topic[..n]))
        }
    }

    /// Distinct prefixes held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_matches_until_subscribed_and_empty_matches_all() {
        let mut s = Subscriptions::default();
        assert!(!s.matches(b"compute"));
        assert!(!s.matches(b""));
        assert_eq!(s.apply(Subscription::Subscribe(b"")), Applied::Changed);
        assert!(s.matches(b"compute"));
        assert!(s.matches(b""));
    }

    #[test]
    fn prefixes_match_by_prefix_only() {
        let mut s = Subscriptions::default();
        s.apply(Subscription::Subscribe(b"compute"));
        assert!(s.matches(b"compute"));
        assert!(s.matches(b"compute.info"));
        assert!(!s.matches(b"comput"));
        assert!(!s.matches(b"network"));
        assert!(!s.matches(b"xcompute"));
    }

    #[test]
    fn a_duplicate_subscribe_needs_two_cancels() {
        let mut s = Subscriptions::default();
        s.apply(Subscription::Subscribe(b"a"));
        s.apply(Subscription::Subscribe(b"a"));
        assert_eq!(s.apply(Subscription::Cancel(b"a")), Applied::Changed);
        assert!(s.matches(b"abc"), "one subscription is left");
        assert_eq!(s.apply(Subscription::Cancel(b"a")), Applied::Changed);
        assert!(!s.matches(b"abc"));
        assert!(s.is_empty());
        assert_eq!(s.apply(Subscription::Cancel(b"a")), Applied::NotSubscribed);
    }

    #[test]
    fn both_lookup_strategies_agree() {
        // Few entries and a long topic, then many entries and a short one.
        let mut few = Subscriptions::default();
        few.apply(Subscription::Subscribe(b"ab"));
        let mut many = Subscriptions::default();
        for p in [&b"x"[..], b"y", b"z", b"ab", b"abc", b"q", b"r"] {
            many.apply(Subscription::Subscribe(p));
        }
        for topic in [&b"ab"[..], b"abd", b"a", b"", b"b"] {
            assert_eq!(few.matches(topic), topic.starts_with(b"ab"), "{topic:?}");
            assert_eq!(many.matches(topic), topic.starts_with(b"ab"), "{topic:?}");
        }
        assert!(many.matches(b"x"));
    }

    #[test]
    fn the_table_is_bounded_but_known_prefixes_still_count() {
        let mut s = Subscriptions::default();
        for i in 0..MAX_PREFIXES {
            assert_eq!(
                s.apply(Subscription::Subscribe(i.to_string().as_bytes())),
                Applied::Changed
            );
        }
        assert_eq!(s.apply(Subscription::Subscribe(b"new")), Applied::Full);
        assert_eq!(s.apply(Subscription::Subscribe(b"7")), Applied::Changed);
        assert_eq!(s.len(), MAX_PREFIXES);
    }
}
