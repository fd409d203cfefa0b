//! Interop vectors: bytes exactly as libzmq 4.3 puts them on the wire,
//! written out by hand and run through the crate.
//!
//! No libzmq is linked here (this crate has no zmq dependency); the bytes
//! were derived from libzmq 4.3's source and RFC 37's worked example:
//! - greeting: `zmtp_engine.cpp` `plug_internal` sends 0xFF, the routing id
//!   length + 1 as a big-endian u64 in the padding, 0x7F; then, once it has
//!   10 bytes of ours, the major version 3; then, once it has 11, minor 1,
//!   "NULL" padded to 20 bytes, as-server 0 and 31 zero bytes of filler.
//! - READY: `mechanism.cpp` `add_basic_properties` writes `Socket-Type`, and
//!   `Identity` (possibly empty) for REQ, DEALER and ROUTER, each as a name
//!   length byte, the name, a big-endian u32 value length and the value;
//!   `null_mechanism.cpp` prefixes "\x05READY" and sends it as a command.
//! - PING: `zmtp_engine.cpp` `produce_ping_message` sends "\x04PING" and the
//!   TTL (ZMQ_HEARTBEAT_TTL in tenths of a second, 0 by default), no context.
//! - SUBSCRIBE: `v3_1_encoder.cpp` turns a subscription into a command frame
//!   "\x09SUBSCRIBE" + prefix towards a 3.1 peer; `v2_encoder.cpp` sends the
//!   message 0x01 + prefix towards a 3.0 peer.
//! - frames: `v2_encoder.cpp`/`v3_1_encoder.cpp` use the one-byte size up to
//!   255 bytes and the eight-byte size above.
//!
//! Every vector was then checked against a capture: a throwaway C program
//! (not in the repo) connected libzmq 4.3.4 DEALER, ROUTER and SUB sockets
//! to a raw TCP listener that sent this crate's greeting and READY, and
//! dumped what libzmq sent back. The bytes matched, and libzmq completed
//! the handshake with our greeting and READY. Two captured SUB streams are
//! kept verbatim below. The engine's tests against live libzmq sockets
//! belong to the proxy crate, not here.

use zmtp::{
    greeting, Assembler, Command, Decoder, Limits, Peer, Progress, Push, SocketType, Subscription,
    Version,
};

/// The greeting of a libzmq 4.3 socket whose routing id is `id_len` bytes,
/// in the three pieces libzmq sends it in.
fn libzmq_greeting(id_len: u8) -> [Vec<u8>; 3] {
    let signature = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, id_len + 1, 0x7F];
    let major = vec![0x03];
    let mut rest = vec![0x01];
    rest.extend_from_slice(b"NULL");
    rest.extend_from_slice(&[0; 16]); // mechanism padding
    rest.push(0x00); // as-server
    rest.extend_from_slice(&[0; 31]); // filler
    [signature, major, rest]
}

/// READY of a libzmq 4.3 DEALER with routing id "client-1".
const DEALER_READY: &[u8] = b"\x04\x31\
\x05READY\
\x0bSocket-Type\x00\x00\x00\x06DEALER\
\x08Identity\x00\x00\x00\x08client-1";

/// READY of a libzmq 4.3 ROUTER without a routing id (RFC 37's worked
/// example has the same bytes for a DEALER).
const ROUTER_READY: &[u8] = b"\x04\x29\
\x05READY\
\x0bSocket-Type\x00\x00\x00\x06ROUTER\
\x08Identity\x00\x00\x00\x00";

/// READY of a libzmq 4.3 SUB.
const SUB_READY: &[u8] = b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03SUB";

/// A libzmq heartbeat PING with ZMQ_HEARTBEAT_TTL unset.
const PING: &[u8] = b"\x04\x07\x04PING\x00\x00";

/// An oslo.messaging CALL as a DEALER sends it: empty delimiter, "1.0",
/// type "1", routing key, message id, then a 300-byte payload (long form).
fn dealer_call() -> Vec<u8> {
    let mut wire = Vec::new();
    wire.extend_from_slice(b"\x01\x00");
    wire.extend_from_slice(b"\x01\x031.0");
    wire.extend_from_slice(b"\x01\x011");
    wire.extend_from_slice(b"\x01\x0dhost/t/uuid-1");
    wire.extend_from_slice(b"\x01\x24");
    wire.extend_from_slice(b"6f1c3c2e-0000-11ee-8000-000000000001");
    wire.extend_from_slice(b"\x02\x00\x00\x00\x00\x00\x00\x01\x2c");
    wire.extend_from_slice(&[b'p'; 300]);
    wire
}

#[test]
fn a_libzmq_greeting_in_its_three_pieces() {
    let [signature, major, rest] = libzmq_greeting(8);
    let mut received = signature.clone();
    assert_eq!(
        greeting::parse(&received),
        Ok(Progress::NeedMore { needed: 54 })
    );
    received.extend_from_slice(&major);
    assert_eq!(
        greeting::parse(&received),
        Ok(Progress::NeedMore { needed: 53 })
    );
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), greeting::GREETING_LEN);
    let Ok(Progress::Done(peer)) = greeting::parse(&received) else {
        panic!("libzmq greeting refused");
    };
    assert_eq!(peer.version(), Version::V3_1);
    assert!(!peer.as_server);
}

#[test]
fn a_libzmq_4_0_greeting_is_3_0() {
    let [signature, major, mut rest] = libzmq_greeting(0);
    rest[0] = 0x00; // libzmq 4.0 announces minor 0
    let received = [signature, major, rest].concat();
    let Ok(Progress::Done(peer)) = greeting::parse(&received) else {
        panic!("3.0 greeting refused");
    };
    assert_eq!(peer.version(), Version::V3_0);
}

#[test]
fn libzmq_ready_commands_parse_and_pass_the_peer_check() {
    let decoder = Decoder::new(1 << 20);
    let cases: [(&[u8], SocketType, Peer<'_>); 3] = [
        (
            DEALER_READY,
            SocketType::Router,
            Peer {
                socket_type: Some(SocketType::Dealer),
                identity: Some(b"client-1"),
            },
        ),
        (
            ROUTER_READY,
            SocketType::Dealer,
            Peer {
                socket_type: Some(SocketType::Router),
                identity: None,
            },
        ),
        (
            SUB_READY,
            SocketType::Pub,
            Peer {
                socket_type: Some(SocketType::Sub),
                identity: None,
            },
        ),
    ];
    for (wire, ours, expected) in cases {
        let Ok(Some((frame, used))) = decoder.decode(wire) else {
            panic!("READY is not one frame");
        };
        assert_eq!(used, wire.len());
        assert!(frame.command());
        let Ok(Command::Ready(metadata)) = Command::parse(&wire[frame.body]) else {
            panic!("READY refused");
        };
        assert_eq!(metadata.check_peer(ours), Ok(expected));
    }
}

#[test]
fn our_ready_matches_libzmqs_byte_for_byte() {
    let ours = |socket_type, identity| {
        let mut wire = Vec::new();
        let metadata = zmtp::Metadata::basic(socket_type, identity).expect("valid");
        Command::Ready(metadata).encode(&mut wire);
        wire
    };
    assert_eq!(
        ours(SocketType::Dealer, Some(&b"client-1"[..])),
        DEALER_READY
    );
    assert_eq!(ours(SocketType::Router, None), ROUTER_READY);
    assert_eq!(ours(SocketType::Sub, None), SUB_READY);
}

#[test]
fn libzmq_ping_and_subscriptions() {
    let decoder = Decoder::new(1 << 20);
    let parse = |wire: &'static [u8]| {
        let Ok(Some((frame, _))) = decoder.decode(wire) else {
            panic!("not a frame");
        };
        (frame.command(), &wire[frame.body])
    };
    let (command, body) = parse(PING);
    assert!(command);
    assert_eq!(
        Command::parse(body),
        Ok(Command::Ping {
            ttl: 0,
            context: b""
        })
    );
    // SUB to a 3.1 publisher: command form.
    let (command, body) = parse(b"\x04\x0f\x09SUBSCRIBEtopic");
    assert!(command);
    let sub = Command::parse(body).ok();
    assert_eq!(
        sub.as_ref().and_then(Subscription::from_command),
        Some(Subscription::Subscribe(b"topic"))
    );
    // SUB to a 3.0 publisher, or an older libzmq: message form.
    let (command, body) = parse(b"\x00\x06\x01topic");
    assert!(!command);
    assert_eq!(
        Subscription::from_message(body),
        Some(Subscription::Subscribe(b"topic"))
    );
    // Subscribe-to-everything, as oslo's L-PUBLISHER does.
    let (_, body) = parse(b"\x04\x0a\x09SUBSCRIBE");
    let all = Command::parse(body).ok();
    assert_eq!(
        all.as_ref().and_then(Subscription::from_command),
        Some(Subscription::Subscribe(b""))
    );
}

/// A whole DEALER connection as the proxy's ROUTER will receive it:
/// greeting, READY, a heartbeat between two frames, one CALL.
#[test]
fn a_dealer_connection_end_to_end() {
    let call = dealer_call();
    let mut stream = libzmq_greeting(8).concat();
    stream.extend_from_slice(DEALER_READY);
    // libzmq may put a PING between two frames of a message.
    stream.extend_from_slice(&call[..2]);
    stream.extend_from_slice(PING);
    stream.extend_from_slice(&call[2..]);

    let Ok(Progress::Done(_)) = greeting::parse(&stream) else {
        panic!("greeting refused");
    };
    let decoder = Decoder::new(1 << 20);
    let mut assembler = Assembler::new(Limits {
        max_frames: 64,
        max_bytes: 1 << 20,
    });
    let mut pos = greeting::GREETING_LEN;
    let mut commands = Vec::new();
    let mut messages = Vec::new();
    while let Ok(Some((frame, used))) = decoder.decode(&stream[pos..]) {
        let frame = frame.offset(pos);
        match assembler.push(&frame) {
            Push::Command => commands.push(Command::parse(&stream[frame.body]).map(|c| c.name())),
            Push::Complete => messages.push(
                assembler
                    .frames()
                    .iter()
                    .map(|body| &stream[body.clone()])
                    .collect::<Vec<_>>(),
            ),
            Push::Partial => {}
            Push::Dropped(dropped) => panic!("dropped {dropped:?}"),
        }
        pos += used;
    }
    assert_eq!(pos, stream.len());
    assert_eq!(commands, vec![Ok(&b"READY"[..]), Ok(&b"PING"[..])]);
    assert_eq!(messages.len(), 1);
    let frames = &messages[0];
    assert_eq!(frames.len(), 6);
    assert_eq!(frames[0], b"");
    assert_eq!(frames[1], b"1.0");
    assert_eq!(frames[3], b"host/t/uuid-1");
    assert_eq!(frames[5].len(), 300);
}

/// Parses a hex dump.
fn hex(dump: &str) -> Vec<u8> {
    dump.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("test vector is hex"))
        .collect()
}

/// The greeting libzmq 4.3.4 sent in the captures (no routing id set).
const CAPTURED_GREETING: &str = "
    ff 00 00 00 00 00 00 00 01 7f 03 01 4e 55 4c 4c 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// Reads a captured SUB stream and returns (commands, one-frame messages).
fn read_sub_stream(stream: &[u8]) -> (Vec<Command<'_>>, Vec<&[u8]>) {
    let Ok(Progress::Done(_)) = greeting::parse(stream) else {
        panic!("captured greeting refused");
    };
    let decoder = Decoder::new(1 << 20);
    let mut pos = greeting::GREETING_LEN;
    let mut commands = Vec::new();
    let mut messages = Vec::new();
    while let Ok(Some((frame, used))) = decoder.decode(&stream[pos..]) {
        let body = &stream[pos + frame.body.start..pos + frame.body.end];
        if frame.command() {
            commands.push(Command::parse(body).expect("captured command parses"));
        } else {
            assert!(!frame.more());
            messages.push(body);
        }
        pos += used;
    }
    assert_eq!(pos, stream.len(), "captured stream decodes to the end");
    (commands, messages)
}

/// libzmq 4.3.4 SUB, after `SUBSCRIBE "topic"` and `SUBSCRIBE ""`, towards
/// a peer that announced 3.1: command form; heartbeat PING on.
#[test]
fn captured_sub_stream_towards_a_3_1_publisher() {
    let mut stream = hex(CAPTURED_GREETING);
    stream.extend(hex("
        04 19 05 52 45 41 44 59 0b 53 6f 63 6b 65 74 2d 54 79 70 65 00 00 00 03 53 55 42 04 07 04 50 49
        4e 47 00 00 04 0f 09 53 55 42 53 43 52 49 42 45 74 6f 70 69 63 04 0a 09 53 55 42 53 43 52 49 42
        45"));
    let (commands, messages) = read_sub_stream(&stream);
    assert!(messages.is_empty());
    assert!(matches!(&commands[0], Command::Ready(m) if m.check_peer(SocketType::Pub).is_ok()));
    assert_eq!(
        commands[1],
        Command::Ping {
            ttl: 0,
            context: b""
        }
    );
    let subs: Vec<_> = commands
        .iter()
        .filter_map(Subscription::from_command)
        .collect();
    assert_eq!(
        subs,
        vec![
            Subscription::Subscribe(b"topic"),
            Subscription::Subscribe(b"")
        ]
    );
}

/// The same SUB towards a peer that announced 3.0: message form, and
/// libzmq still sends PINGs (so the engine must take them from any peer).
#[test]
fn captured_sub_stream_towards_a_3_0_publisher() {
    let mut stream = hex(CAPTURED_GREETING);
    stream.extend(hex("
        04 19 05 52 45 41 44 59 0b 53 6f 63 6b 65 74 2d 54 79 70 65 00 00 00 03 53 55 42 00 06 01 74 6f
        70 69 63 00 01 01 04 07 04 50 49 4e 47 00 00"));
    let (commands, messages) = read_sub_stream(&stream);
    assert_eq!(commands.len(), 2);
    assert_eq!(
        commands[1],
        Command::Ping {
            ttl: 0,
            context: b""
        }
    );
    let subs: Vec<_> = messages
        .into_iter()
        .filter_map(Subscription::from_message)
        .collect();
    assert_eq!(
        subs,
        vec![
            Subscription::Subscribe(b"topic"),
            Subscription::Subscribe(b"")
        ]
    );
}
