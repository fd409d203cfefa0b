//! The per-message identity check of the libzmq engine's ROUTERs: the
//! routing id libzmq puts in front of a message (the peer's identity) must
//! be one the sender's key may use, and the key must still be listed.
//!
//! libzmq attaches the ZAP handler's User-Id (the key in Z85, see
//! [`super::zap`]) to every frame it receives from a CURVE peer, except the
//! routing-id frame the ROUTER makes up itself; the check so reads it from
//! the second frame.

use std::sync::Arc;

use super::{AuthorizedKeys, PublicKey, Refusal, SharedKeys, Verdict};

/// One loop's snapshot of the authorized keys, refreshed when a reload
/// swapped them (one atomic load per turn, no lock).
#[derive(Debug)]
pub struct Authorizer {
    shared: SharedKeys,
    keys: Arc<AuthorizedKeys>,
    generation: u64,
}

impl Authorizer {
    /// A view of the current and future sets of `shared`.
    pub fn new(shared: SharedKeys) -> Authorizer {
        let generation = shared.generation();
        let keys = shared.current();
        Authorizer {
            shared,
            keys,
            generation,
        }
    }

    /// Takes the new set if the file was reloaded; `true` then, so the loop
    /// checks its connected peers again.
    pub fn refresh(&mut self) -> bool {
        let generation = self.shared.generation();
        if generation == self.generation {
            return false;
        }
        self.keys = self.shared.current();
        self.generation = generation;
        true
    }

    /// Whether `key` may connect as `identity` (`None`: any identity, for
    /// a subscriber, whose identity routes nothing).
    pub fn admit(&self, key: &PublicKey, identity: Option<&[u8]>) -> Result<(), Refusal> {
        let verdict = match identity {
            Some(identity) => self.keys.check(key, identity),
            None if self.keys.contains(key) => Verdict::Allowed,
            None => Verdict::UnknownKey,
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::UnknownKey => Err(Refusal::UnknownKey),
            Verdict::Identity => Err(Refusal::Identity),
        }
    }
}

/// The per-message check of the libzmq engine's router loop.
#[derive(Debug)]
pub struct IdentityCheck {
    authorizer: Authorizer,
}

impl IdentityCheck {
    /// A check against the current and future sets of `shared`.
    pub fn new(shared: SharedKeys) -> IdentityCheck {
        IdentityCheck {
            authorizer: Authorizer::new(shared),
        }
    }

    /// Whether a message with routing id `identity`, whose frames carry
    /// `user_id` (the sender's key in Z85), may pass.
    pub fn check(&mut self, identity: &[u8], user_id: Option<&[u8]>) -> Result<(), Refusal> {
        self.authorizer.refresh();
        let key = user_id
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|z85| PublicKey::from_z85(z85).ok())
            .ok_or(Refusal::UnknownKey)?;
        self.authorizer.admit(&key, Some(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const B: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";

    #[test]
    fn identities_keys_and_a_reload() {
        let shared =
            SharedKeys::new(AuthorizedKeys::parse(&format!("{A} node1/*\n{B} node2/*\n")).unwrap());
        let mut check = IdentityCheck::new(shared.clone());
        assert_eq!(check.check(b"node1/x", Some(A.as_bytes())), Ok(()));
        assert_eq!(
            check.check(b"node2/x", Some(A.as_bytes())),
            Err(Refusal::Identity),
            "B's identity sent with A's key"
        );
        assert_eq!(check.check(b"node1/x", None), Err(Refusal::UnknownKey));
        assert_eq!(
            check.check(b"node1/x", Some(b"junk")),
            Err(Refusal::UnknownKey)
        );
        shared.replace(AuthorizedKeys::parse(&format!("{B} node2/*\n")).unwrap());
        assert_eq!(
            check.check(b"node1/x", Some(A.as_bytes())),
            Err(Refusal::UnknownKey),
            "A was removed: its connected peer's messages are refused"
        );
        assert_eq!(check.check(b"node2/y", Some(B.as_bytes())), Ok(()));
    }
}
