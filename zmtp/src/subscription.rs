//! Prefix subscriptions in their two wire forms.
//!
//! ZMTP 3.1 peers send SUBSCRIBE and CANCEL commands; ZMTP 3.0 peers (and
//! libzmq towards a 3.0 peer) send an ordinary one-frame message whose first
//! byte is 1 (subscribe) or 0 (cancel), followed by the prefix. A PUB side
//! must accept both from any peer: recent libzmq (its `v3_1_encoder`) sends
//! commands to 3.1 peers and messages to 3.0 peers, and older 4.x releases
//! send the message form whatever the peer's version. A SUB side sends the
//! form its publisher's version expects.

use crate::command::Command;
use crate::frame::{encode_header, Flags};
use crate::greeting::Version;

/// A subscription change for one prefix (an empty prefix matches all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// Add one subscription to this prefix.
    Subscribe(&'a [u8]),
    /// Remove one subscription to this prefix.
    Cancel(&'a [u8]),
}

impl<'a> Subscription<'a> {
    /// The ZMTP 3.0 message form: `body` is the only frame of a message
    /// (no MORE before or after it; the caller checks that). A first byte
    /// other than 0 or 1, or an empty body, is not a subscription: libzmq's
    /// XPUB passes such messages up, its PUB drops them.
    pub fn from_message(body: &'a [u8]) -> Option<Subscription<'a>> {
        match body.split_first() {
            Some((1, prefix)) => Some(Subscription::Subscribe(prefix)),
            Some((0, prefix)) => Some(Subscription::Cancel(prefix)),
            _ => None,
        }
    }

    /// The ZMTP 3.1 command form: SUBSCRIBE or CANCEL; other commands are
    /// not subscriptions.
    pub fn from_command(command: &Command<'a>) -> Option<Subscription<'a>> {
        match *command {
            Command::Subscribe(prefix) => Some(Subscription::Subscribe(prefix)),
            Command::Cancel(prefix) => Some(Subscription::Cancel(prefix)),
            _ => None,
        }
    }

    /// The prefix subscribed to or cancelled.
    pub fn prefix(&self) -> &'a [u8] {
        match *self {
            Subscription::Subscribe(prefix) | Subscription::Cancel(prefix) => prefix,
        }
    }

    /// Appends the frame announcing this change to a peer that speaks
    /// `version`: a command for 3.1, a one-frame message for 3.0.
    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        match version {
            Version::V3_1 => {
                let command = match *self {
                    Subscription::Subscribe(prefix) => Command::Subscribe(prefix),
                    Subscription::Cancel(prefix) => Command::Cancel(prefix),
                };
                command.encode(out);
            }
            Version::V3_0 => {
                let prefix = self.prefix();
                let first = u8::from(matches!(self, Subscription::Subscribe(_)));
                out.extend_from_slice(
                    encode_header(Flags::message(false), 1 + prefix.len()).as_bytes(),
                );
                out.push(first);
                out.extend_from_slice(prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;

    #[test]
    fn the_3_0_message_form() {
        assert_eq!(
            Subscription::from_message(b"\x01topic"),
            Some(Subscription::Subscribe(b"topic"))
        );
        assert_eq!(
            Subscription::from_message(b"\x00topic"),
            Some(Subscription::Cancel(b"topic"))
        );
        assert_eq!(
            Subscription::from_message(b"\x01"),
            Some(Subscription::Subscribe(b""))
        );
        assert_eq!(Subscription::from_message(b""), None);
        assert_eq!(Subscription::from_message(b"\x02topic"), None);
    }

    #[test]
    fn the_3_1_command_form() {
        assert_eq!(
            Subscription::from_command(&Command::Subscribe(b"a")),
            Some(Subscription::Subscribe(b"a"))
        );
        assert_eq!(
            Subscription::from_command(&Command::Cancel(b"a")),
            Some(Subscription::Cancel(b"a"))
        );
        assert_eq!(
            Subscription::from_command(&Command::Pong { context: b"" }),
            None
        );
    }

    #[test]
    fn both_forms_encode_and_decode_back() {
        let decoder = Decoder::new(1024);
        for sub in [
            Subscription::Subscribe(b"topic.prio"),
            Subscription::Cancel(b""),
        ] {
            for version in [Version::V3_0, Version::V3_1] {
                let mut wire = Vec::new();
                sub.encode(version, &mut wire);
                let Ok(Some((frame, used))) = decoder.decode(&wire) else {
                    panic!("not a frame");
                };
                assert_eq!(used, wire.len());
                let body = &wire[frame.body.clone()];
                let back = if frame.command() {
                    assert_eq!(version, Version::V3_1);
                    Command::parse(body)
                        .ok()
                        .and_then(|c| Subscription::from_command(&c))
                } else {
                    assert_eq!(version, Version::V3_0);
                    assert!(!frame.more());
                    Subscription::from_message(body)
                };
                assert_eq!(back, Some(sub), "{version:?}");
            }
        }
        let mut wire = Vec::new();
        Subscription::Subscribe(b"ab").encode(Version::V3_1, &mut wire);
        assert_eq!(wire, b"\x04\x0c\x09SUBSCRIBEab");
        wire.clear();
        Subscription::Subscribe(b"ab").encode(Version::V3_0, &mut wire);
        assert_eq!(wire, b"\x00\x03\x01ab");
    }
}
