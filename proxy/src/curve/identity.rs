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

/// The check of one forwarding loop, with its snapshot of the key set.
#[derive(Debug)]
pub struct IdentityCheck {
    shared: SharedKeys,
    keys: Arc<AuthorizedKeys>,
    generation: u64,
}

impl IdentityCheck {
    /// A check against the current and future sets of `shared`.
    pub fn new(shared: SharedKeys) -> IdentityCheck {
        let generation = shared.generation();
        let keys = shared.current();
        IdentityCheck {
            shared,
            keys,
            generation,
        }
    }

    /// Whether a message with routing id `identity`, whose frames carry
    /// `user_id` (the sender's key in Z85), may pass.
    pub fn check(&mut self, identity: &[u8], user_id: Option<&[u8]>) -> Result<(), Refusal> {
        let generation = self.shared.generation();
        if generation != self.generation {
            self.keys = self.shared.current();
            self.generation = generation;
        }
        let key = user_id
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|z85| PublicKey::from_z85(z85).ok())
            .ok_or(Refusal::UnknownKey)?;
        match self.keys.check(&key, identity) {
            Verdict::Allowed => Ok(()),
            Verdict::UnknownKey => Err(Refusal::UnknownKey),
            Verdict::Identity => Err(Refusal::Identity),
        }
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
