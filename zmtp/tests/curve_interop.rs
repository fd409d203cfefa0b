//! The CURVE codec against Debian's libzmq 4.3 (through the `zmq` crate):
//! our server with a libzmq DEALER client, our client with a libzmq ROUTER
//! server, and a wrong server key on either side.
//!
//! Our side is plain blocking std::net code driving the pure codec; every
//! wait is bounded by a socket timeout (a deadline), never a sleep.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use zmtp::curve::{AwaitingWelcome, HandshakeError, KeyPair, OsRng, Server, Session};
use zmtp::greeting::{self, Mechanism};
use zmtp::{Command, Decoder, Metadata, Progress, SocketType, GREETING_LEN};

/// How long any single read may wait before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// Receive timeout of the libzmq sockets, in milliseconds.
const ZMQ_DEADLINE_MS: i32 = 10_000;

/// A frame as read from the wire.
struct Frame {
    command: bool,
    more: bool,
    body: Vec<u8>,
}

/// Our end of a TCP connection: a stream and what was read past the last
/// frame.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; `false` at end of stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends our CURVE greeting and reads the peer's.
    fn greet(&mut self, as_server: bool) {
        self.send(&greeting::encode_with(Mechanism::Curve, as_server));
        loop {
            match greeting::parse_with(&self.buf, Mechanism::Curve).expect("peer greeting") {
                Progress::Done(g) => {
                    // libzmq 4.3 sends a zero as-server flag on both sides,
                    // CURVE server included; the codec does not check it.
                    assert!(!g.as_server, "libzmq's as-server flag");
                    self.buf.drain(..GREETING_LEN);
                    return;
                }
                Progress::NeedMore { .. } => {
                    assert!(self.fill().expect("read greeting"), "closed in greeting");
                }
            }
        }
    }

    /// The next frame; `None` if the peer closed the connection.
    fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((header, used)) = Decoder::new(1 << 20).decode(&self.buf).expect("frame") {
                let frame = Frame {
                    command: header.command(),
                    more: header.more(),
                    body: self.buf[header.body.clone()].to_vec(),
                };
                self.buf.drain(..used);
                return Some(frame);
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(err) => panic!("read: {err}"),
            }
        }
    }

    /// The next handshake command body.
    fn command(&mut self) -> Vec<u8> {
        let frame = self.frame().expect("peer closed during handshake");
        assert!(frame.command, "handshake frames are commands");
        frame.body
    }

    /// Opens MESSAGE frames until a whole message arrived; commands boxed
    /// in between are returned apart.
    fn message(&mut self, session: &mut Session) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut parts = Vec::new();
        let mut commands = Vec::new();
        loop {
            let mut frame = self.frame().expect("peer closed");
            // libzmq sends MESSAGE as a plain frame; the flags are boxed.
            assert!(!frame.command && !frame.more, "outer MESSAGE frame flags");
            let opened = session.open(&mut frame.body).expect("MESSAGE opens");
            let payload = frame.body[opened.payload].to_vec();
            if opened.command {
                commands.push(payload);
                continue;
            }
            parts.push(payload);
            if !opened.more {
                return (parts, commands);
            }
        }
    }
}

fn zmq_socket(ctx: &zmq::Context, kind: zmq::SocketType) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("socket");
    socket.set_linger(0).expect("linger");
    socket.set_rcvtimeo(ZMQ_DEADLINE_MS).expect("rcvtimeo");
    socket.set_sndtimeo(ZMQ_DEADLINE_MS).expect("sndtimeo");
    socket
}

#[test]
fn our_server_admits_a_libzmq_curve_dealer() {
    let server_keys = KeyPair::generate(&mut OsRng);
    let client_keys = zmq::CurveKeyPair::new().expect("keypair");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();

    let ctx = zmq::Context::new();
    let dealer = zmq_socket(&ctx, zmq::DEALER);
    dealer
        .set_curve_serverkey(&server_keys.public())
        .expect("serverkey");
    dealer
        .set_curve_publickey(&client_keys.public_key)
        .expect("publickey");
    dealer
        .set_curve_secretkey(&client_keys.secret_key)
        .expect("secretkey");
    dealer.set_identity(b"client-1").expect("routing id");
    // libzmq heartbeats: it must send its PINGs boxed too. A long timeout
    // keeps a slow test run from being dropped for a late PONG.
    dealer.set_heartbeat_ivl(50).expect("heartbeat ivl");
    dealer
        .set_heartbeat_timeout(ZMQ_DEADLINE_MS)
        .expect("heartbeat timeout");
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .expect("connect");
    // Queued until the handshake is done.
    dealer
        .send_multipart([&b"hello"[..], b"world"], 0)
        .expect("send");

    let (stream, _) = listener.accept().expect("accept");
    let mut wire = Wire::new(stream);
    wire.greet(true);

    let mut out = Vec::new();
    let hello = wire.command();
    let welcomed = Server::new(server_keys)
        .welcome(&hello, &mut OsRng, &mut out)
        .expect("HELLO accepted");
    wire.send(&out);
    out.clear();

    let initiate = wire.command();
    let pending = welcomed.initiate(&initiate).expect("INITIATE accepted");
    assert_eq!(pending.client_key(), &client_keys.public_key);
    let metadata = pending.metadata();
    assert_eq!(metadata.socket_type(), Some(&b"DEALER"[..]));
    assert_eq!(metadata.identity(), Some(&b"client-1"[..]));
    let peer = metadata
        .check_peer(SocketType::Router)
        .expect("compatible peer");
    assert_eq!(peer.identity, Some(&b"client-1"[..]));
    let ours = Metadata::basic(SocketType::Router, None).expect("metadata");
    let mut session = pending.accept(&ours, &mut out).expect("READY");
    wire.send(&out);
    out.clear();

    let (parts, mut commands) = wire.message(&mut session);
    assert_eq!(parts, [b"hello".to_vec(), b"world".to_vec()]);

    // A boxed PING gets a boxed PONG echoing its context: libzmq reads the
    // COMMAND flag inside the box.
    session
        .seal_command(
            &Command::Ping {
                ttl: 0,
                context: b"ctx-42",
            },
            &mut out,
        )
        .expect("seal PING");
    session.seal_frame(true, b"reply", &mut out).expect("seal");
    session.seal_frame(false, b"ok", &mut out).expect("seal");
    wire.send(&out);
    out.clear();

    let got = dealer
        .recv_multipart(0)
        .expect("libzmq received our message");
    assert_eq!(got, [b"reply".to_vec(), b"ok".to_vec()]);

    // The PONG came before or after: send one more message to flush it.
    dealer.send(&b"last"[..], 0).expect("send");
    let (parts, more_commands) = wire.message(&mut session);
    assert_eq!(parts, [b"last".to_vec()]);
    commands.extend(more_commands);
    // libzmq's PINGs (every 50 ms) may not have come yet: wait for one,
    // bounded by the read deadline.
    let is_ping = |body: &Vec<u8>| matches!(Command::parse(body), Ok(Command::Ping { .. }));
    while !commands.iter().any(is_ping) {
        let mut frame = wire.frame().expect("peer closed");
        let opened = session.open(&mut frame.body).expect("MESSAGE opens");
        assert!(opened.command, "only PINGs are expected now");
        commands.push(frame.body[opened.payload].to_vec());
    }
    let pongs: Vec<_> = commands
        .iter()
        .filter_map(|body| match Command::parse(body) {
            Ok(Command::Pong { context }) => Some(context.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(pongs, [b"ctx-42".to_vec()], "one PONG, for our PING");
    let Some(Ok(Command::Ping { ttl, context })) = commands
        .iter()
        .map(|body| Command::parse(body))
        .find(|c| matches!(c, Ok(Command::Ping { .. })))
    else {
        unreachable!("a PING was seen above");
    };
    assert_eq!(
        (ttl, context),
        (0, &b""[..]),
        "libzmq's PING: no TTL, no context"
    );
    // Our boxed PONG is accepted: the connection still carries messages.
    session
        .seal_command(&Command::pong_for(context), &mut out)
        .expect("seal PONG");
    session
        .seal_frame(false, b"after-pong", &mut out)
        .expect("seal");
    wire.send(&out);
    assert_eq!(
        dealer.recv_bytes(0).expect("libzmq received our message"),
        b"after-pong"
    );
}

#[test]
fn a_refused_libzmq_client_reports_the_zap_status_code() {
    let server_keys = KeyPair::generate(&mut OsRng);
    let client_keys = zmq::CurveKeyPair::new().expect("keypair");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();

    let ctx = zmq::Context::new();
    let dealer = zmq_socket(&ctx, zmq::DEALER);
    dealer
        .set_curve_serverkey(&server_keys.public())
        .expect("serverkey");
    dealer
        .set_curve_publickey(&client_keys.public_key)
        .expect("publickey");
    dealer
        .set_curve_secretkey(&client_keys.secret_key)
        .expect("secretkey");
    let auth_failed = zmq::SocketEvent::HANDSHAKE_FAILED_AUTH;
    dealer
        .monitor("inproc://dealer-events", i32::from(auth_failed.to_raw()))
        .expect("monitor");
    let events = zmq_socket(&ctx, zmq::PAIR);
    events
        .connect("inproc://dealer-events")
        .expect("monitor socket");
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .expect("connect");

    let (stream, _) = listener.accept().expect("accept");
    let mut wire = Wire::new(stream);
    wire.greet(true);
    let mut out = Vec::new();
    let welcomed = Server::new(server_keys)
        .welcome(&wire.command(), &mut OsRng, &mut out)
        .expect("HELLO accepted");
    wire.send(&out);
    out.clear();
    let pending = welcomed
        .initiate(&wire.command())
        .expect("INITIATE accepted");
    assert_eq!(pending.client_key(), &client_keys.public_key);
    // "400" is what libzmq's own ZAP refusal sends.
    pending.refuse(b"400", &mut out);
    wire.send(&out);

    let event = events.recv_multipart(0).expect("a monitor event");
    let (kind, value) = event[0].split_at(2);
    assert_eq!(u16::from_ne_bytes([kind[0], kind[1]]), auth_failed.to_raw());
    assert_eq!(
        u32::from_ne_bytes([value[0], value[1], value[2], value[3]]),
        400,
        "libzmq reports the status code"
    );
}

#[test]
fn our_client_talks_to_a_libzmq_curve_router() {
    let server_keys = zmq::CurveKeyPair::new().expect("keypair");
    let ctx = zmq::Context::new();
    let router = zmq_socket(&ctx, zmq::ROUTER);
    router.set_curve_server(true).expect("curve server");
    router
        .set_curve_secretkey(&server_keys.secret_key)
        .expect("secretkey");
    router.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = router
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8");
    let address = endpoint.trim_start_matches("tcp://");

    let client_keys = KeyPair::generate(&mut OsRng);
    let mut wire = Wire::new(TcpStream::connect(address).expect("connect"));
    wire.greet(false);

    let mut out = Vec::new();
    let awaiting =
        AwaitingWelcome::hello(client_keys, server_keys.public_key, &mut OsRng, &mut out)
            .expect("HELLO");
    wire.send(&out);
    out.clear();

    let welcome = wire.command();
    let ours = Metadata::basic(SocketType::Dealer, Some(b"native-1")).expect("metadata");
    let awaiting = awaiting
        .initiate(&welcome, &ours, &mut OsRng, &mut out)
        .expect("WELCOME accepted");
    wire.send(&out);
    out.clear();

    let ready = wire.command();
    let (mut session, theirs) = awaiting.ready(&ready).expect("READY accepted");
    let peer = theirs
        .metadata()
        .check_peer(SocketType::Dealer)
        .expect("compatible peer");
    assert_eq!(peer.socket_type, Some(SocketType::Router));

    session.seal_frame(true, b"ping", &mut out).expect("seal");
    session.seal_frame(false, b"me", &mut out).expect("seal");
    wire.send(&out);
    out.clear();

    let got = router
        .recv_multipart(0)
        .expect("libzmq received our message");
    assert_eq!(
        got,
        [b"native-1".to_vec(), b"ping".to_vec(), b"me".to_vec()]
    );

    router
        .send_multipart([&b"native-1"[..], b"pong", b""], 0)
        .expect("reply");
    let (parts, _) = wire.message(&mut session);
    assert_eq!(parts, [b"pong".to_vec(), Vec::new()]);
}

#[test]
fn a_libzmq_client_with_the_wrong_server_key_is_refused() {
    let server_keys = KeyPair::generate(&mut OsRng);
    let someone_else = KeyPair::generate(&mut OsRng);
    let client_keys = zmq::CurveKeyPair::new().expect("keypair");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();

    let ctx = zmq::Context::new();
    let dealer = zmq_socket(&ctx, zmq::DEALER);
    dealer
        .set_curve_serverkey(&someone_else.public())
        .expect("serverkey");
    dealer
        .set_curve_publickey(&client_keys.public_key)
        .expect("publickey");
    dealer
        .set_curve_secretkey(&client_keys.secret_key)
        .expect("secretkey");
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .expect("connect");

    let (stream, _) = listener.accept().expect("accept");
    let mut wire = Wire::new(stream);
    wire.greet(true);
    let hello = wire.command();
    let mut out = Vec::new();
    let err = Server::new(server_keys)
        .welcome(&hello, &mut OsRng, &mut out)
        .expect_err("HELLO to another key refused");
    assert_eq!(err, HandshakeError::WrongServerKey);
    assert!(out.is_empty(), "nothing to send: libzmq just closes");
}

#[test]
fn a_libzmq_router_closes_on_our_client_with_the_wrong_server_key() {
    let server_keys = zmq::CurveKeyPair::new().expect("keypair");
    let ctx = zmq::Context::new();
    let router = zmq_socket(&ctx, zmq::ROUTER);
    router.set_curve_server(true).expect("curve server");
    router
        .set_curve_secretkey(&server_keys.secret_key)
        .expect("secretkey");
    router.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = router
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8");

    let wrong = KeyPair::generate(&mut OsRng).public();
    let mut wire =
        Wire::new(TcpStream::connect(endpoint.trim_start_matches("tcp://")).expect("connect"));
    wire.greet(false);
    let mut out = Vec::new();
    let _awaiting =
        AwaitingWelcome::hello(KeyPair::generate(&mut OsRng), wrong, &mut OsRng, &mut out)
            .expect("HELLO");
    wire.send(&out);
    // No WELCOME: libzmq cannot open our HELLO and closes the connection.
    assert!(
        wire.frame().is_none(),
        "libzmq answered a HELLO to another key"
    );
}

#[test]
fn z85_agrees_with_libzmq() {
    let keys = zmq::CurveKeyPair::new().expect("keypair");
    let theirs = zmq::z85_encode(&keys.public_key).expect("z85");
    assert_eq!(zmtp::curve::z85::encode_key(&keys.public_key), theirs);
    assert_eq!(zmtp::curve::z85::decode_key(&theirs), Ok(keys.public_key));
    // A key pair read from libzmq's printable secret derives its public key.
    let secret = zmq::z85_encode(&keys.secret_key).expect("z85");
    let pair = KeyPair::from_z85_secret(&secret).expect("secret");
    assert_eq!(pair.public(), keys.public_key);
}
