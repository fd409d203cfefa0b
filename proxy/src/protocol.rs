//! Wire protocol 1.0 of oslo.messaging's ZeroMQ driver: frame layout,
//! validation and the proxy's routing rewrite.
//!
//! Everything here is pure: functions take frame lists and return decisions or
//! permuted lists, so the forwarding loops (`router`, `publisher`) and the RPC
//! library share one definition of the protocol and it can be property-tested
//! without sockets. Functions are generic over the frame type `T: Deref<Target
//! = [u8]>`, which both [`crate::frame::Frame`] (the hot path: frames are
//! moved, never copied) and `Vec<u8>` (tests, RPC library) satisfy.
//!
//! Layout, as a proxy ROUTER receives it (see shared/design/protocol.md):
//! `[sender_id, "", "1.0", type, routing_key, message_id, payload...]`, routed
//! on as `[routing_key, "", "1.0", sender_id, type, message_id, payload...]`.

use std::fmt;
use std::ops::Deref;

/// The only protocol version this proxy speaks (frame 2 of an envelope).
pub const PROTOCOL_VERSION: &[u8] = b"1.0";

/// Minimum number of frames of a valid envelope on a proxy ROUTER.
pub const MIN_ENVELOPE_FRAMES: usize = 6;

/// Index of each fixed frame in an envelope received on a proxy ROUTER.
pub mod index {
    /// Identity of the sending peer, added by the ROUTER socket.
    pub const SENDER: usize = 0;
    /// Empty delimiter frame.
    pub const DELIMITER: usize = 1;
    /// Protocol version, `1.0`.
    pub const VERSION: usize = 2;
    /// Message type, ASCII decimal 1..6.
    pub const TYPE: usize = 3;
    /// Identity of the receiver (server id, client id or pub/sub topic).
    pub const ROUTING_KEY: usize = 4;
    /// Client-chosen message id (an ASCII uuid1 in oslo).
    pub const MESSAGE_ID: usize = 5;
    /// First payload frame, if any.
    pub const PAYLOAD: usize = 6;
}

/// Message types of protocol 1.0 (frame `type`, ASCII decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    /// RPC call: the server answers with a REPLY.
    Call = 1,
    /// One-way RPC to one server.
    Cast = 2,
    /// One-way RPC to every server of a topic.
    CastFanout = 3,
    /// Notification (topic `{topic}.{priority}`).
    Notify = 4,
    /// Answer to a CALL: `dumps([body, failure])`.
    Reply = 5,
    /// Receipt acknowledgement (acks on), no payload.
    Ack = 6,
}

impl MessageType {
    /// How many types there are: the length of per-type arrays.
    pub const COUNT: usize = MessageType::ALL.len();

    /// Every type, in wire order; index `t as usize - 1`.
    pub const ALL: [MessageType; 6] = [
        MessageType::Call,
        MessageType::Cast,
        MessageType::CastFanout,
        MessageType::Notify,
        MessageType::Reply,
        MessageType::Ack,
    ];

    /// Parses the `type` frame (exactly one ASCII digit 1..6).
    pub fn from_frame(frame: &[u8]) -> Option<MessageType> {
        match frame {
            b"1" => Some(MessageType::Call),
            b"2" => Some(MessageType::Cast),
            b"3" => Some(MessageType::CastFanout),
            b"4" => Some(MessageType::Notify),
            b"5" => Some(MessageType::Reply),
            b"6" => Some(MessageType::Ack),
            _ => None,
        }
    }

    /// The wire form of the `type` frame.
    pub fn as_frame(self) -> &'static [u8] {
        match self {
            MessageType::Call => b"1",
            MessageType::Cast => b"2",
            MessageType::CastFanout => b"3",
            MessageType::Notify => b"4",
            MessageType::Reply => b"5",
            MessageType::Ack => b"6",
        }
    }

    /// Lower-case name, used as a metrics label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Call => "call",
            MessageType::Cast => "cast",
            MessageType::CastFanout => "fanout",
            MessageType::Notify => "notify",
            MessageType::Reply => "reply",
            MessageType::Ack => "ack",
        }
    }

    /// Dense index `0..COUNT`, for per-type arrays of pre-resolved counters.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Fanout and notify may travel over PUB/SUB when pub/sub is on.
    pub fn is_pub_sub(self) -> bool {
        matches!(self, MessageType::CastFanout | MessageType::Notify)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the proxy dropped a message. Validation reasons come from [`Envelope::parse`];
/// the last three happen when sending. Each is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Fewer than six frames.
    TooFewFrames,
    /// Frame 1 is not empty.
    MissingDelimiter,
    /// Frame 2 is not `1.0` (the rolling-upgrade hook: logged as a warning).
    UnknownVersion,
    /// Frame 3 is not an ASCII digit 1..6.
    BadType,
    /// The routing key is empty: no ROUTER peer can have an empty identity.
    EmptyRoutingKey,
    /// No connected peer has the routing key as identity (ROUTER_MANDATORY).
    Unroutable,
    /// The receiving peer's queue is at its high-water mark.
    HighWaterMark,
    /// Any other send failure (e.g. the context is terminating).
    SendFailed,
    /// The sender's connection ended in the middle of the message (native
    /// engine: libzmq discards such a message without telling).
    Truncated,
    /// The message is larger than the native engine accepts.
    TooLarge,
}

impl DropReason {
    /// How many reasons there are: the length of per-reason arrays.
    pub const COUNT: usize = DropReason::ALL.len();

    /// Every reason, in label order.
    pub const ALL: [DropReason; 10] = [
        DropReason::TooFewFrames,
        DropReason::MissingDelimiter,
        DropReason::UnknownVersion,
        DropReason::BadType,
        DropReason::EmptyRoutingKey,
        DropReason::Unroutable,
        DropReason::HighWaterMark,
        DropReason::SendFailed,
        DropReason::Truncated,
        DropReason::TooLarge,
    ];

    /// Metrics label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooFewFrames => "too_few_frames",
            DropReason::MissingDelimiter => "missing_delimiter",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::BadType => "bad_type",
            DropReason::EmptyRoutingKey => "empty_routing_key",
            DropReason::Unroutable => "unroutable",
            DropReason::HighWaterMark => "hwm",
            DropReason::SendFailed => "send_failed",
            DropReason::Truncated => "truncated",
            DropReason::TooLarge => "too_large",
        }
    }

    /// Dense index into [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated envelope as received on a proxy ROUTER; borrows the frames.
///
/// The forwarding loops call [`Envelope::check`] instead: the same
/// validation, without looking at the frames only [`Envelope::parse`] hands
/// out (with libzmq frames, every look is a call into the library).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Identity of the sending peer (the true ROUTER-envelope identity).
    pub sender: &'a [u8],
    /// Message type.
    pub msg_type: MessageType,
    /// Receiver identity, or the topic for pub/sub.
    pub routing_key: &'a [u8],
    /// Message id.
    pub message_id: &'a [u8],
    /// Number of payload frames after the message id (0 for ACK).
    pub payload_frames: usize,
}

impl<'a> Envelope<'a> {
    /// Validates `frames` as a protocol-1.0 envelope received on a ROUTER.
    /// Never panics, whatever the input.
    pub fn parse<T: Deref<Target = [u8]>>(frames: &'a [T]) -> Result<Envelope<'a>, DropReason> {
        let msg_type = Envelope::check(frames)?;
        Ok(Envelope {
            sender: &frames[index::SENDER],
            msg_type,
            routing_key: &frames[index::ROUTING_KEY],
            message_id: &frames[index::MESSAGE_ID],
            payload_frames: frames.len() - MIN_ENVELOPE_FRAMES,
        })
    }
}

impl Envelope<'_> {
    /// Validates `frames` as [`Envelope::parse`] does and returns only the
    /// message type. Never panics, whatever the input.
    pub fn check<T: Deref<Target = [u8]>>(frames: &[T]) -> Result<MessageType, DropReason> {
        if frames.len() < MIN_ENVELOPE_FRAMES {
            return Err(DropReason::TooFewFrames);
        }
        if !frames[index::DELIMITER].is_empty() {
            return Err(DropReason::MissingDelimiter);
        }
        if &*frames[index::VERSION] != PROTOCOL_VERSION {
            return Err(DropReason::UnknownVersion);
        }
        let msg_type = MessageType::from_frame(&frames[index::TYPE]).ok_or(DropReason::BadType)?;
        if frames[index::ROUTING_KEY].is_empty() {
            return Err(DropReason::EmptyRoutingKey);
        }
        Ok(msg_type)
    }
}

/// What a proxy ROUTER does with a message it received: the routing
/// decision both engines (libzmq's [`crate::router`] and
/// [`crate::native`]) take, so they cannot disagree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Rewrite with [`rewrite_for_route`] and send to the routing key.
    Route(MessageType),
    /// Publish on the central PUB with [`rewrite_for_publish`].
    Publish(MessageType),
}

impl Decision {
    /// The message type, whatever is done with it.
    pub fn msg_type(self) -> MessageType {
        match self {
            Decision::Route(t) | Decision::Publish(t) => t,
        }
    }
}

/// Validates an envelope received on a proxy ROUTER and decides its fate:
/// fanout and notify from clients (`from_frontend`) are published when the
/// proxy publishes (`publishing`: pub/sub on and a PUB socket present);
/// everything else is routed. Never panics, whatever the input.
pub fn decide<T: Deref<Target = [u8]>>(
    frames: &[T],
    from_frontend: bool,
    publishing: bool,
) -> Result<Decision, DropReason> {
    let msg_type = Envelope::check(frames)?;
    if from_frontend && publishing && msg_type.is_pub_sub() {
        Ok(Decision::Publish(msg_type))
    } else {
        Ok(Decision::Route(msg_type))
    }
}

/// The routing rewrite, in place and without copying a frame:
/// `[sender, "", ver, type, key, id, rest...]` becomes
/// `[key, "", ver, sender, type, id, rest...]`.
///
/// The caller must have validated the frames with [`Envelope::parse`]; on a
/// shorter list this does nothing rather than panic.
pub fn rewrite_for_route<T>(frames: &mut [T]) {
    if frames.len() < MIN_ENVELOPE_FRAMES {
        return;
    }
    // [s, d, v, t, k, i] -> [k, d, v, t, s, i] -> [k, d, v, s, t, i]
    frames.swap(index::SENDER, index::ROUTING_KEY);
    frames.swap(index::TYPE, index::ROUTING_KEY);
}

/// Turns a validated envelope into a PUB message, in place:
/// `[sender, "", ver, type, topic, id, rest...]` becomes
/// `[topic, ver, type, id, rest...]`. Returns the sender identity frame,
/// which the PUB message does not carry (the proxy ack needs it).
///
/// Returns `None` (and leaves `frames` unchanged) on a list shorter than an envelope.
pub fn rewrite_for_publish<T>(frames: &mut Vec<T>) -> Option<T> {
    if frames.len() < MIN_ENVELOPE_FRAMES {
        return None;
    }
    // [s, d, v, t, k, i, ..] -> [k, d, v, t, s, i, ..]
    frames.swap(index::SENDER, index::ROUTING_KEY);
    // -> [k, v, d, t, s, i] -> [k, v, t, d, s, i] -> [k, v, t, i, s, d]
    frames.swap(1, 2);
    frames.swap(2, 3);
    frames.swap(3, 5);
    // Frames 4 and 5 are now the sender and the delimiter.
    let mut removed = frames.drain(4..6);
    let sender = removed.next();
    drop(removed);
    sender
}

/// The frames of the proxy's own ACK for a fanout/notify it published
/// (ack-pub-sub), as sent on the frontend ROUTER:
/// `[client_id, "", "1.0", proxy_frontend_id, "6", message_id]`.
pub fn proxy_ack<T: for<'b> From<&'b [u8]>>(
    client_id: T,
    proxy_id: &[u8],
    message_id: &[u8],
) -> [T; 6] {
    [
        client_id,
        T::from(&b""[..]),
        T::from(PROTOCOL_VERSION),
        T::from(proxy_id),
        T::from(MessageType::Ack.as_frame()),
        T::from(message_id),
    ]
}

// ---------------------------------------------------------------------------
// Peer side: what DEALER and SUB sockets of clients and servers send and get.
// ---------------------------------------------------------------------------

/// Frames a client or server DEALER sends to a proxy (its own identity is
/// added by the proxy's ROUTER): `["", "1.0", type, routing_key, message_id, payload...]`.
pub fn dealer_request(
    msg_type: MessageType,
    routing_key: &[u8],
    message_id: &[u8],
    payload: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(5 + payload.len());
    frames.push(Vec::new());
    frames.push(PROTOCOL_VERSION.to_vec());
    frames.push(msg_type.as_frame().to_vec());
    frames.push(routing_key.to_vec());
    frames.push(message_id.to_vec());
    frames.extend(payload.iter().map(|p| p.to_vec()));
    frames
}

/// A message as a DEALER receives it from a proxy:
/// `["", "1.0", sender_id, type, message_id, payload...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a, T> {
    /// Identity of the peer that sent it (client or server DEALER, or the proxy for its own acks).
    pub sender: &'a [u8],
    /// Message type.
    pub msg_type: MessageType,
    /// Message id.
    pub message_id: &'a [u8],
    /// Payload frames (none for ACK).
    pub payload: &'a [T],
}

impl<'a, T: Deref<Target = [u8]>> Delivery<'a, T> {
    /// Validates frames received on a DEALER from a proxy. Never panics.
    pub fn parse(frames: &'a [T]) -> Result<Delivery<'a, T>, DropReason> {
        if frames.len() < 5 {
            return Err(DropReason::TooFewFrames);
        }
        if !frames[0].is_empty() {
            return Err(DropReason::MissingDelimiter);
        }
        if &*frames[1] != PROTOCOL_VERSION {
            return Err(DropReason::UnknownVersion);
        }
        let msg_type = MessageType::from_frame(&frames[3]).ok_or(DropReason::BadType)?;
        Ok(Delivery {
            sender: &frames[2],
            msg_type,
            message_id: &frames[4],
            payload: &frames[5..],
        })
    }
}

/// Frames the proxy publishes on PUB for fanout/notify (pub/sub on):
/// `[topic, "1.0", type, message_id, payload...]`; SUB matching is by prefix of `topic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication<'a, T> {
    /// Topic (`{topic}` for fanout, `{topic}.{priority}` for notify).
    pub topic: &'a [u8],
    /// Message type (fanout or notify in practice).
    pub msg_type: MessageType,
    /// Message id.
    pub message_id: &'a [u8],
    /// Payload frames.
    pub payload: &'a [T],
}

impl<'a, T: Deref<Target = [u8]>> Publication<'a, T> {
    /// Validates frames received on a SUB. Never panics.
    pub fn parse(frames: &'a [T]) -> Result<Publication<'a, T>, DropReason> {
        if frames.len() < 4 {
            return Err(DropReason::TooFewFrames);
        }
        if &*frames[1] != PROTOCOL_VERSION {
            return Err(DropReason::UnknownVersion);
        }
        let msg_type = MessageType::from_frame(&frames[2]).ok_or(DropReason::BadType)?;
        Ok(Publication {
            topic: &frames[0],
            msg_type,
            message_id: &frames[3],
            payload: &frames[4..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|f| f.to_vec()).collect()
    }

    #[test]
    fn call_is_routed_exactly_as_the_protocol_says() {
        let mut m = frames(&[
            b"client/1",
            b"",
            b"1.0",
            b"1",
            b"host/topic/2",
            b"id",
            b"payload",
        ]);
        let env = Envelope::parse(&m).unwrap();
        assert_eq!(env.msg_type, MessageType::Call);
        assert_eq!(env.sender, b"client/1");
        assert_eq!(env.routing_key, b"host/topic/2");
        assert_eq!(env.payload_frames, 1);
        rewrite_for_route(&mut m);
        assert_eq!(
            m,
            frames(&[
                b"host/topic/2",
                b"",
                b"1.0",
                b"client/1",
                b"1",
                b"id",
                b"payload"
            ])
        );
        // What the server's DEALER then sees (the ROUTER strips the routing key).
        let d = Delivery::parse(&m[1..]).unwrap();
        assert_eq!(d.sender, b"client/1");
        assert_eq!(d.msg_type, MessageType::Call);
        assert_eq!(d.payload.len(), 1);
    }

    #[test]
    fn ack_without_payload_is_valid() {
        let mut m = frames(&[b"srv", b"", b"1.0", b"6", b"cli", b"id"]);
        assert_eq!(Envelope::parse(&m).unwrap().payload_frames, 0);
        rewrite_for_route(&mut m);
        assert_eq!(m, frames(&[b"cli", b"", b"1.0", b"srv", b"6", b"id"]));
    }

    #[test]
    fn invalid_envelopes_have_a_reason() {
        let cases: Vec<(Vec<Vec<u8>>, DropReason)> = vec![
            (
                frames(&[b"s", b"", b"1.0", b"1", b"k"]),
                DropReason::TooFewFrames,
            ),
            (
                frames(&[b"s", b"x", b"1.0", b"1", b"k", b"i"]),
                DropReason::MissingDelimiter,
            ),
            (
                frames(&[b"s", b"", b"2.0", b"1", b"k", b"i"]),
                DropReason::UnknownVersion,
            ),
            (
                frames(&[b"s", b"", b"1.0", b"7", b"k", b"i"]),
                DropReason::BadType,
            ),
            (
                frames(&[b"s", b"", b"1.0", b"0", b"k", b"i"]),
                DropReason::BadType,
            ),
            (
                frames(&[b"s", b"", b"1.0", b"12", b"k", b"i"]),
                DropReason::BadType,
            ),
            (
                frames(&[b"s", b"", b"1.0", b"", b"k", b"i"]),
                DropReason::BadType,
            ),
            (
                frames(&[b"s", b"", b"1.0", b"1", b"", b"i"]),
                DropReason::EmptyRoutingKey,
            ),
        ];
        for (m, reason) in cases {
            assert_eq!(Envelope::parse(&m), Err(reason), "{m:?}");
        }
    }

    #[test]
    fn publish_rewrite_matches_the_protocol() {
        let mut m = frames(&[b"cli", b"", b"1.0", b"3", b"topic", b"id", b"p1", b"p2"]);
        let sender = rewrite_for_publish(&mut m);
        assert_eq!(sender, Some(b"cli".to_vec()));
        assert_eq!(m, frames(&[b"topic", b"1.0", b"3", b"id", b"p1", b"p2"]));
        let p = Publication::parse(&m).unwrap();
        assert_eq!(p.topic, b"topic");
        assert_eq!(p.msg_type, MessageType::CastFanout);
        assert_eq!(p.payload.len(), 2);
    }

    #[test]
    fn proxy_ack_layout() {
        let ack: [Vec<u8>; 6] = proxy_ack(b"cli".to_vec(), b"h/zmq-proxy/u", b"id");
        assert_eq!(
            ack.to_vec(),
            frames(&[b"cli", b"", b"1.0", b"h/zmq-proxy/u", b"6", b"id"])
        );
    }

    #[test]
    fn dealer_request_layout_parses_as_envelope_once_the_router_adds_the_sender() {
        let req = dealer_request(MessageType::Cast, b"srv", b"id", &[b"a", b"b"]);
        let mut m = vec![b"cli".to_vec()];
        m.extend(req);
        let e = Envelope::parse(&m).unwrap();
        assert_eq!(
            (e.msg_type, e.routing_key, e.payload_frames),
            (MessageType::Cast, &b"srv"[..], 2)
        );
    }

    #[test]
    fn types_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_frame(t.as_frame()), Some(t));
            assert_eq!(MessageType::ALL[t.index()], t);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"1.0".to_vec()),
            (1u8..=9).prop_map(|d| vec![b'0' + d]),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn valid_envelope() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (
            proptest::collection::vec(any::<u8>(), 1..32),
            1u8..=6,
            proptest::collection::vec(any::<u8>(), 1..32),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..5),
        )
            .prop_map(|(sender, t, key, id, payload)| {
                let mut m = vec![sender, Vec::new(), b"1.0".to_vec(), vec![b'0' + t], key, id];
                m.extend(payload);
                m
            })
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(m in proptest::collection::vec(frame(), 0..10)) {
            let parsed = Envelope::parse(&m);
            let _ = Delivery::parse(&m);
            let _ = Publication::parse(&m);
            let mut routed = m.clone();
            rewrite_for_route(&mut routed);
            let mut published = m.clone();
            let _ = rewrite_for_publish(&mut published);
            // Anything accepted has the documented shape.
            if let Ok(env) = parsed {
                prop_assert!(m.len() >= MIN_ENVELOPE_FRAMES);
                prop_assert!(m[1].is_empty());
                prop_assert_eq!(env.payload_frames, m.len() - MIN_ENVELOPE_FRAMES);
            }
        }

        #[test]
        fn valid_envelopes_round_trip_exactly(m in valid_envelope()) {
            let env = Envelope::parse(&m).unwrap();
            let mut routed = m.clone();
            rewrite_for_route(&mut routed);
            // Frames are only permuted: same multiset, same payload order.
            prop_assert_eq!(routed.len(), m.len());
            prop_assert_eq!(&routed[0], &m[4]);
            prop_assert_eq!(&routed[3], &m[0]);
            prop_assert_eq!(&routed[4], &m[3]);
            prop_assert_eq!(&routed[5..], &m[5..]);
            // The receiver sees a valid delivery naming the true sender.
            let d = Delivery::parse(&routed[1..]).unwrap();
            prop_assert_eq!(d.sender, env.sender);
            prop_assert_eq!(d.msg_type, env.msg_type);
            prop_assert_eq!(d.message_id, env.message_id);
            // Rewriting back (the reply direction swaps the same two frames) restores the input.
            let mut back = routed.clone();
            back.swap(3, 4);
            back.swap(0, 4);
            prop_assert_eq!(&back, &m);
            // Publishing keeps topic, version, type, id and payload.
            let mut published = m.clone();
            let sender = rewrite_for_publish(&mut published).unwrap();
            prop_assert_eq!(&sender, &m[0]);
            let p = Publication::parse(&published).unwrap();
            prop_assert_eq!(p.topic, env.routing_key);
            prop_assert_eq!(p.message_id, env.message_id);
            prop_assert_eq!(p.payload, &m[6..]);
        }
    }
}
