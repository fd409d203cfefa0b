//! ZeroMQ socket types as named in the READY command's `Socket-Type`
//! property, and which pairs may talk to each other.
//!
//! The set is libzmq 4.3's stable sockets (the ones oslo.messaging peers and
//! our RPC library use); the draft thread-safe types of RFC 37 (CLIENT,
//! SERVER, RADIO, ...) are unknown here and so refused. The compatibility
//! table is RFC 37's, which is also what libzmq's `check_socket_type`
//! enforces.

/// A socket type that can appear in a `Socket-Type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// `PAIR`
    Pair,
    /// `PUB`
    Pub,
    /// `SUB`
    Sub,
    /// `REQ`
    Req,
    /// `REP`
    Rep,
    /// `DEALER`
    Dealer,
    /// `ROUTER`
    Router,
    /// `PULL`
    Pull,
    /// `PUSH`
    Push,
    /// `XPUB`
    XPub,
    /// `XSUB`
    XSub,
}

impl SocketType {
    /// Every known type, for tests and tables.
    pub const ALL: [SocketType; 11] = [
        SocketType::Pair,
        SocketType::Pub,
        SocketType::Sub,
        SocketType::Req,
        SocketType::Rep,
        SocketType::Dealer,
        SocketType::Router,
        SocketType::Pull,
        SocketType::Push,
        SocketType::XPub,
        SocketType::XSub,
    ];

    /// The name sent on the wire.
    pub fn name(self) -> &'static str {
        match self {
            SocketType::Pair => "PAIR",
            SocketType::Pub => "PUB",
            SocketType::Sub => "SUB",
            SocketType::Req => "REQ",
            SocketType::Rep => "REP",
            SocketType::Dealer => "DEALER",
            SocketType::Router => "ROUTER",
            SocketType::Pull => "PULL",
            SocketType::Push => "PUSH",
            SocketType::XPub => "XPUB",
            SocketType::XSub => "XSUB",
        }
    }

    /// The type a wire name stands for. Case-sensitive, as in libzmq: the
    /// grammar lists upper-case names only.
    pub fn from_name(name: &[u8]) -> Option<SocketType> {
        SocketType::ALL
            .into_iter()
            .find(|t| t.name().as_bytes() == name)
    }

    /// Whether a socket of this type accepts a peer of type `peer`
    /// (RFC 37's table; it is symmetric).
    pub fn accepts(self, peer: SocketType) -> bool {
        use SocketType::*;
        match self {
            Req => matches!(peer, Rep | Router),
            Rep => matches!(peer, Req | Dealer),
            Dealer => matches!(peer, Rep | Dealer | Router),
            Router => matches!(peer, Req | Dealer | Router),
            Pub | XPub => matches!(peer, Sub | XSub),
            Sub | XSub => matches!(peer, Pub | XPub),
            Push => peer == Pull,
            Pull => peer == Push,
            Pair => peer == Pair,
        }
    }

    /// Whether this type sends an `Identity` property (libzmq 4.3 sends one,
    /// possibly empty, from REQ, DEALER and ROUTER).
    pub fn sends_identity(self) -> bool {
        matches!(
            self,
            SocketType::Req | SocketType::Dealer | SocketType::Router
        )
    }
}

impl std::fmt::Display for SocketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::SocketType::{self, *};

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for t in SocketType::ALL {
            assert_eq!(SocketType::from_name(t.name().as_bytes()), Some(t));
        }
        assert_eq!(SocketType::from_name(b"dealer"), None);
        assert_eq!(SocketType::from_name(b"CLIENT"), None);
        assert_eq!(SocketType::from_name(b""), None);
    }

    #[test]
    fn the_table_is_rfc_37s_and_symmetric() {
        let allowed = [
            (Req, Rep),
            (Req, Router),
            (Rep, Dealer),
            (Dealer, Dealer),
            (Dealer, Router),
            (Router, Router),
            (Pub, Sub),
            (Pub, XSub),
            (XPub, Sub),
            (XPub, XSub),
            (Push, Pull),
            (Pair, Pair),
        ];
        for a in SocketType::ALL {
            for b in SocketType::ALL {
                let expected = allowed.contains(&(a, b)) || allowed.contains(&(b, a));
                assert_eq!(a.accepts(b), expected, "{a} with {b}");
            }
        }
    }

    #[test]
    fn the_proxys_sockets_refuse_the_wrong_peers() {
        assert!(!Router.accepts(Pub));
        assert!(!Router.accepts(Sub));
        assert!(!Router.accepts(Rep));
        assert!(!Pub.accepts(Dealer));
        assert!(!Pub.accepts(Pub));
        assert!(!Sub.accepts(Sub));
    }
}
