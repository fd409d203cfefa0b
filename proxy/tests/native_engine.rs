//! Edge cases of the wire protocol through the proxy, with real libzmq
//! peers and, where libzmq cannot be made to misbehave, a hand-written ZMTP
//! peer. Most run against both engines (the libzmq one is the reference);
//! those about what only the native engine counts run against it alone.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use zmtp::{encode_header, Command, Flags, Metadata, SizeForm, SocketType};

const CLIENT: &str = "127.0.0.1/client-edge";
const SERVER: &str = "127.0.0.1/compute/server-edge";

/// Client on the frontend, server on the backend, routable both ways.
fn pair(ctx: &zmq::Context, proxy: &Proxy) -> (zmq::Socket, zmq::Socket) {
    let client = dealer(ctx, CLIENT, proxy.frontend());
    let server = dealer(ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &server);
    wait_routable(&server, CLIENT, &client);
    (client, server)
}

fn frame_sizes(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let (client, server) = pair(&ctx, &proxy);
    let bodies: Vec<Vec<u8>> = [0usize, 1, 255, 256, 65536]
        .iter()
        .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect();
    // Each size alone, as the last frame and before another frame...
    for (i, body) in bodies.iter().enumerate() {
        let id = format!("size-{i}");
        send(&client, &request("2", SERVER, &id, &[body]));
        assert_eq!(expect(&server), delivery(CLIENT, "2", &id, &[body]));
        send(&server, &request("5", CLIENT, &id, &[body, b"tail"]));
        assert_eq!(
            expect(&client),
            delivery(SERVER, "5", &id, &[body, b"tail"])
        );
    }
    // ...and all in one message.
    let all: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    send(&client, &request("1", SERVER, "all", &all));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "all", &all));
}
per_engine!(
    frames_of_0_255_256_and_64k_bytes_pass_unchanged,
    super::frame_sizes
);

fn unknown_key(engine: Engine) {
    let proxy = Proxy::start_on(engine, &["--unroutable-wait-ms", "0"]);
    let ctx = zmq::Context::new();
    let (client, server) = pair(&ctx, &proxy);
    // Probes sent before the server was connected count too.
    let sample = r#"zmq_proxy_dropped_total{reason="unroutable",socket="backend"}"#;
    let before = proxy.metric(sample);
    send(
        &client,
        &request("1", "127.0.0.1/compute/nobody", "lost", &[b"p"]),
    );
    send(&client, &request("1", SERVER, "found", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "found", &[b"p"]));
    proxy.wait_metric(sample, before + 1.0);
    assert!(recv(&server, Duration::from_millis(100)).is_none());
}
per_engine!(
    an_unknown_routing_key_is_dropped_and_counted,
    super::unknown_key
);

fn same_identity(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let (client, first) = pair(&ctx, &proxy);
    // The peer goes away and comes back under the same identity.
    drop(first);
    let second = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &second);
    send(&client, &request("1", SERVER, "to-second", &[b"p"]));
    assert_eq!(expect(&second), delivery(CLIENT, "1", "to-second", &[b"p"]));
    send(&second, &request("5", CLIENT, "to-second", &[b"r"]));
    assert_eq!(expect(&client), delivery(SERVER, "5", "to-second", &[b"r"]));

    // A third connects while the second is still there: with either engine
    // it takes the identity over (libzmq's ROUTER_HANDOVER, which the
    // libzmq engine sets; the native engine does the same).
    let third = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &third);
    send(&client, &request("1", SERVER, "to-third", &[b"p"]));
    assert_eq!(expect(&third), delivery(CLIENT, "1", "to-third", &[b"p"]));
    while let Some(m) = recv(&second, Duration::from_millis(100)) {
        assert_eq!(m[4], b"probe", "only probes reach the old connection");
    }
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="backend"}"#, 2.0);
}
per_engine!(
    the_same_identity_reconnecting_gets_its_messages,
    super::same_identity
);

fn heartbeats(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let client = ctx.socket(zmq::DEALER).unwrap();
    client.set_identity(CLIENT.as_bytes()).unwrap();
    client.set_linger(0).unwrap();
    // libzmq PINGs every 50 ms and drops the connection when nothing (no
    // PONG, no message) came back within 200 ms.
    client.set_heartbeat_ivl(50).unwrap();
    client.set_heartbeat_timeout(200).unwrap();
    client
        .monitor(
            "inproc://heartbeat-monitor",
            zmq::SocketEvent::DISCONNECTED as i32,
        )
        .unwrap();
    let events = ctx.socket(zmq::PAIR).unwrap();
    events.connect("inproc://heartbeat-monitor").unwrap();
    client.connect(proxy.frontend()).unwrap();
    let server = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &server);
    // Idle for many heartbeat timeouts: only PONGs keep it connected.
    assert!(
        recv(&events, Duration::from_millis(1500)).is_none(),
        "libzmq dropped the connection: no PONG"
    );
    send(&client, &request("2", SERVER, "after-idle", &[b"p"]));
    assert_eq!(
        expect(&server),
        delivery(CLIENT, "2", "after-idle", &[b"p"])
    );
    assert_eq!(
        proxy.metric(r#"zmq_proxy_connected_peers{socket="frontend"}"#),
        1.0
    );
}
per_engine!(
    a_libzmq_peer_with_heartbeats_gets_pongs_and_stays_connected,
    super::heartbeats
);

/// A TCP connection to `endpoint` (`tcp://host:port`) for a raw peer:
/// reads time out, writes go out at once.
fn dial(endpoint: &str) -> TcpStream {
    let addr = endpoint.trim_start_matches("tcp://");
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A hand-written ZMTP 3.x peer over plain TCP.
struct RawPeer {
    stream: TcpStream,
}

impl RawPeer {
    /// Connects, sends greeting and READY as `socket_type` with `identity`,
    /// and reads the proxy's greeting and READY (sent before it looks at
    /// ours, whatever its socket type).
    fn connect(endpoint: &str, socket_type: SocketType, identity: &[u8]) -> RawPeer {
        RawPeer::handshake(dial(endpoint), 1, socket_type, Some(identity), None)
    }

    /// Over `stream`: sends a ZMTP 3.`minor` greeting and READY as
    /// `socket_type` (with `identity`, if any), then reads the other side's
    /// greeting and READY and checks that it is an `expect` socket, if
    /// given.
    fn handshake(
        stream: TcpStream,
        minor: u8,
        socket_type: SocketType,
        identity: Option<&[u8]>,
        expect: Option<&[u8]>,
    ) -> RawPeer {
        let mut peer = RawPeer { stream };
        let mut opening = raw_greeting(minor);
        let metadata = Metadata::basic(socket_type, identity).expect("metadata");
        Command::Ready(metadata).encode(&mut opening);
        peer.send(&opening);
        let mut greeting = [0u8; 64];
        peer.stream.read_exact(&mut greeting).unwrap();
        assert!(matches!(
            zmtp::greeting::parse(&greeting),
            Ok(zmtp::Progress::Done(_))
        ));
        let ready = peer.read_command();
        let Ok(Command::Ready(metadata)) = Command::parse(&ready) else {
            panic!("no READY: {ready:?}");
        };
        if let Some(expect) = expect {
            assert_eq!(metadata.socket_type(), Some(expect));
        }
        peer
    }

    /// Reads one frame: (flags, body).
    fn read_frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head)?;
        let len = if head[0] & 0x02 != 0 {
            let mut rest = [0u8; 7];
            self.stream.read_exact(&mut rest)?;
            let mut be = [0u8; 8];
            be[0] = head[1];
            be[1..].copy_from_slice(&rest);
            u64::from_be_bytes(be) as usize
        } else {
            usize::from(head[1])
        };
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    /// Reads frames until a command; returns its body.
    fn read_command(&mut self) -> Vec<u8> {
        loop {
            let (flags, body) = self.read_frame().expect("frame");
            if flags & 0x04 != 0 {
                return body;
            }
        }
    }

    /// Frames of one message, each header in `form`.
    fn message(frames: &[&[u8]], form: SizeForm) -> Vec<u8> {
        let mut wire = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let flags = Flags::message(i + 1 < frames.len());
            let header = zmtp::frame::encode_header_in(form, flags, f.len())
                .unwrap_or_else(|| encode_header(flags, f.len()));
            wire.extend_from_slice(header.as_bytes());
            wire.extend_from_slice(f);
        }
        wire
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends PING with `context` and waits for its PONG: everything sent
    /// before it has been read by the proxy.
    fn ping(&mut self, context: &[u8]) {
        let mut ping = Vec::new();
        Command::Ping { ttl: 0, context }.encode(&mut ping);
        self.send(&ping);
        let pong = self.read_command();
        assert_eq!(Command::parse(&pong), Ok(Command::Pong { context }));
    }

    /// Closes with a TCP reset (SO_LINGER 0), as a crashed host's kernel does.
    fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a descriptor this struct owns, with a
        // pointer to a live `linger` and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
}

fn long_form_and_ping(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let server = dealer(&ctx, SERVER, proxy.backend());
    let mut raw = RawPeer::connect(proxy.frontend(), SocketType::Dealer, b"raw-client");
    // PING with a context is answered with a PONG echoing it.
    raw.ping(b"ctx-1234");
    // Small frames in the 8-byte size form are accepted.
    let deadline = Instant::now() + WAIT;
    loop {
        let msg = RawPeer::message(
            &[b"", b"1.0", b"2", SERVER.as_bytes(), b"long-form", b"p"],
            SizeForm::Long,
        );
        raw.send(&msg);
        if let Some(m) = recv(&server, Duration::from_millis(50)) {
            assert_eq!(m, delivery("raw-client", "2", "long-form", &[b"p"]));
            break;
        }
        assert!(Instant::now() < deadline, "server never routable");
    }
}
per_engine!(
    long_size_form_frames_and_ping_with_context_from_a_raw_peer,
    super::long_form_and_ping
);

fn empty_identity(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let server = dealer(&ctx, SERVER, proxy.backend());
    // DEALERs without an identity send READY with an empty Identity: the
    // proxy generates one per connection, as libzmq's ROUTER does.
    let anonymous = |n: &str| -> (zmq::Socket, Vec<u8>) {
        let s = ctx.socket(zmq::DEALER).unwrap();
        s.set_linger(0).unwrap();
        s.connect(proxy.frontend()).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            send(&s, &request("2", SERVER, n, &[]));
            if let Some(m) = recv(&server, Duration::from_millis(50)) {
                assert_eq!(m[4], n.as_bytes());
                while recv(&server, Duration::from_millis(100)).is_some() {}
                return (s, m[2].clone());
            }
            assert!(Instant::now() < deadline, "server never routable");
        }
    };
    let (first, first_id) = anonymous("first");
    let (second, second_id) = anonymous("second");
    assert!(
        !first_id.is_empty(),
        "the proxy routed with an empty identity"
    );
    assert_ne!(first_id, second_id, "two anonymous peers share an identity");
    // The server answers each under its generated identity.
    for (id, tag) in [
        (&first_id, &b"to-first"[..]),
        (&second_id, &b"to-second"[..]),
    ] {
        let mut reply = frames(&[b"", b"1.0", b"5", id, tag]);
        reply.push(b"r".to_vec());
        send(&server, &reply);
    }
    let got = expect(&first);
    assert_eq!(
        (&got[2], &got[4]),
        (&SERVER.as_bytes().to_vec(), &b"to-first".to_vec())
    );
    let got = expect(&second);
    assert_eq!(got[4], b"to-second");
    assert!(recv(&first, Duration::from_millis(100)).is_none());
}
per_engine!(
    peers_with_an_empty_identity_get_distinct_generated_ones,
    super::empty_identity
);

/// A TCP relay between peers and the proxy that forwards each direction in
/// random pieces (cutting frames, headers and greetings at any offset) and
/// cuts its first connection for good after `cut_at` bytes towards the
/// proxy.
struct ChoppingRelay {
    endpoint: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// xorshift64*: reproducible from the printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl ChoppingRelay {
    fn start(target: &str, seed: u64, cut_at: usize) -> ChoppingRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("tcp://").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&cut);
        std::thread::spawn(move || {
            for (n, peer) in listener.incoming().enumerate() {
                let Ok(peer) = peer else { return };
                let Ok(proxy) = TcpStream::connect(&target) else {
                    return;
                };
                peer.set_nodelay(true).unwrap();
                proxy.set_nodelay(true).unwrap();
                // Only the first connection is cut; later ones are whole.
                let limit = if n == 0 { cut_at } else { usize::MAX };
                let seed = seed.wrapping_add(n as u64 * 2 + 1);
                let (up_in, up_out) = (peer.try_clone().unwrap(), proxy.try_clone().unwrap());
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    chop(up_in, up_out, seed, limit);
                    if limit != usize::MAX {
                        done.store(true, Ordering::SeqCst);
                    }
                });
                std::thread::spawn(move || chop(proxy, peer, seed ^ 0xABCD, usize::MAX));
            }
        });
        ChoppingRelay { endpoint, cut }
    }
}

/// Copies `from` to `to` in pieces of 1 to 64 bytes until either side
/// ends or `limit` bytes are through; then shuts both down.
fn chop(mut from: TcpStream, mut to: TcpStream, mut seed: u64, limit: usize) {
    let mut buf = [0u8; 4096];
    let mut through = 0usize;
    'copy: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            let piece = (1 + (next_random(&mut seed) % 64) as usize)
                .min(n - at)
                .min(limit - through);
            if to.write_all(&buf[at..at + piece]).is_err() {
                break 'copy;
            }
            at += piece;
            through += piece;
            if through >= limit {
                break 'copy;
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn chopped_stream(engine: Engine) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = seed;
    // Past the greeting and READY, within the first few messages.
    let cut_at = 200 + (next_random(&mut rng) % 4000) as usize;
    eprintln!("seed {seed}, cut after {cut_at} bytes");
    let proxy = Proxy::start_on(engine, &[]);
    let relay = ChoppingRelay::start(proxy.frontend(), seed, cut_at);
    let ctx = zmq::Context::new();
    let server = dealer(&ctx, SERVER, proxy.backend());
    let client = dealer(&ctx, CLIENT, &relay.endpoint);
    let payload = |i: usize| -> Vec<u8> {
        let len = (i * 7919) % 700;
        (0..len).map(|b| (b + i) as u8).collect()
    };
    let total = 300;
    let mut received = Vec::new();
    for i in 0..total {
        send(
            &client,
            &request("2", SERVER, &format!("m{i:04}"), &[&payload(i)]),
        );
        if i == 20 {
            // Let the cut happen while messages are in flight.
            std::thread::sleep(Duration::from_millis(50));
        }
        while let Some(m) = recv(&server, Duration::ZERO) {
            received.push(m);
        }
    }
    // The client reconnects through the relay: probes get through behind
    // whatever it still had queued.
    let deadline = Instant::now() + WAIT;
    'probe: loop {
        assert!(
            Instant::now() < deadline,
            "no probe got through (seed {seed})"
        );
        send(&client, &request("2", SERVER, "probe", &[]));
        while let Some(m) = recv(&server, Duration::from_millis(50)) {
            if m[4] == b"probe" {
                break 'probe;
            }
            received.push(m);
        }
    }
    assert!(
        relay.cut.load(std::sync::atomic::Ordering::SeqCst),
        "the relay never cut the stream (seed {seed})"
    );
    let mut last = None;
    for m in received.iter().filter(|m| m[4] != b"probe") {
        let id = String::from_utf8(m[4].clone()).unwrap();
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(
            *m,
            delivery(CLIENT, "2", &id, &[&payload(i)]),
            "message {i} corrupted (seed {seed})"
        );
        assert!(
            last < Some(i),
            "out of order or repeated: {i} (seed {seed})"
        );
        last = Some(i);
    }
    let truncated =
        proxy.metric(r#"zmq_proxy_dropped_total{reason="truncated",socket="frontend"}"#);
    eprintln!(
        "{} of {total} delivered; truncated: {truncated}",
        received.len()
    );
    if engine == Engine::Native {
        // One connection was cut: at most the message it was in is lost
        // whole (none if the cut fell between two messages).
        assert!(truncated <= 1.0, "truncated {truncated} (seed {seed})");
    }
    // Traffic both ways is whole after the cut.
    send(&server, &request("5", CLIENT, "after", &[b"r"]));
    assert_eq!(expect(&client), delivery(SERVER, "5", "after", &[b"r"]));
}
per_engine!(
    a_stream_chopped_and_cut_at_random_offsets_delivers_only_whole_messages,
    super::chopped_stream
);

/// Waits until the proxy closes `raw`'s connection (FIN or reset).
fn wait_closed(raw: &mut RawPeer) {
    let mut rest = Vec::new();
    match raw.stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the proxy never closed the connection: {e}"),
    }
}

fn dead_peers(engine: Engine) {
    let proxy = Proxy::start_on(
        engine,
        &[
            "--heartbeat-ivl-ms",
            "100",
            "--heartbeat-timeout-ms",
            "300",
            "--handshake-ivl-ms",
            "300",
        ],
    );
    let ctx = zmq::Context::new();
    let (client, server) = pair(&ctx, &proxy);
    let frontend = r#"zmq_proxy_connected_peers{socket="frontend"}"#;
    // A peer that finishes its handshake, then never answers: PINGed,
    // then closed.
    let mut silent = RawPeer::connect(proxy.frontend(), SocketType::Dealer, b"raw-silent");
    proxy.wait_metric(frontend, 2.0);
    let ping = silent.read_command();
    assert!(
        matches!(Command::parse(&ping), Ok(Command::Ping { .. })),
        "expected a PING, got {ping:?}"
    );
    wait_closed(&mut silent);
    // A connection that never even sends a greeting: closed at the
    // handshake deadline.
    let mut mute = dial(proxy.frontend());
    let mut greeting = [0u8; 10];
    mute.read_exact(&mut greeting).unwrap();
    let mut mute = RawPeer { stream: mute };
    wait_closed(&mut mute);
    proxy.wait_metric(frontend, 1.0);
    // The libzmq peers answered every PING: after many intervals of
    // silence they are connected and routable.
    std::thread::sleep(Duration::from_millis(1000));
    send(&client, &request("2", SERVER, "after-pings", &[b"p"]));
    assert_eq!(
        expect(&server),
        delivery(CLIENT, "2", "after-pings", &[b"p"])
    );
    assert_eq!(proxy.metric(frontend), 1.0);
    assert_eq!(
        proxy.metric(r#"zmq_proxy_connected_peers{socket="backend"}"#),
        1.0
    );
    if engine == Engine::Native {
        assert_eq!(
            proxy.metric(r#"zmq_proxy_peers_timed_out_total{socket="frontend"}"#),
            2.0
        );
    }
}
per_engine!(
    a_silent_peer_is_pinged_and_closed_and_live_ones_stay,
    super::dead_peers
);

#[test]
fn a_connection_reset_mid_message_desynchronises_no_one_and_is_counted() {
    let proxy = Proxy::start_on(Engine::Native, &[]);
    let ctx = zmq::Context::new();
    let (client, server) = pair(&ctx, &proxy);
    let mut raw = RawPeer::connect(proxy.frontend(), SocketType::Dealer, b"raw-reset");
    // Half a message: three whole frames and part of the fourth...
    let msg = RawPeer::message(
        &[b"", b"1.0", b"2", SERVER.as_bytes(), b"never", b"payload"],
        SizeForm::Short,
    );
    let cut = msg.len() - 12;
    // Headers of two bytes: "", "1.0", "2".
    let first_frames = 2 + (2 + 3) + (2 + 1);
    raw.send(&msg[..first_frames]);
    // ...a PING in between (allowed between frames) proves the proxy read it...
    raw.ping(b"sync");
    raw.send(&msg[first_frames..cut]);
    // ...while the others talk; then the connection is reset.
    send(&client, &request("2", SERVER, "before-reset", &[b"p"]));
    raw.reset();
    send(&client, &request("2", SERVER, "after-reset", &[b"p"]));
    assert_eq!(
        expect(&server),
        delivery(CLIENT, "2", "before-reset", &[b"p"])
    );
    assert_eq!(
        expect(&server),
        delivery(CLIENT, "2", "after-reset", &[b"p"])
    );
    send(&server, &request("5", CLIENT, "reply", &[b"r"]));
    assert_eq!(expect(&client), delivery(SERVER, "5", "reply", &[b"r"]));
    proxy.wait_metric(
        r#"zmq_proxy_dropped_total{reason="truncated",socket="frontend"}"#,
        1.0,
    );
    assert!(recv(&server, Duration::from_millis(100)).is_none());
}

#[test]
fn the_wrong_socket_type_gets_an_error_and_is_closed() {
    let proxy = Proxy::start_on(Engine::Native, &[]);
    let mut raw = RawPeer::connect(proxy.frontend(), SocketType::Pub, b"");
    // The proxy's READY came first, then the ERROR, then the end.
    let error = raw.read_command();
    assert_eq!(
        Command::parse(&error),
        Ok(Command::Error {
            reason: b"incompatible socket type"
        })
    );
    let mut rest = Vec::new();
    assert_eq!(raw.stream.read_to_end(&mut rest).ok(), Some(0));
}

/// Peak resident memory of process `pid` in KiB (VmHWM).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_for_a_receiver_that_never_reads_keeps_memory_bounded() {
    // 64 KiB of output per receiver; 64 MiB of messages for one that
    // never reads.
    let proxy = Proxy::start_on(Engine::Native, &["--hwm", "64", "--send-timeout-ms", "100"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let stuck = ctx.socket(zmq::DEALER).unwrap();
    stuck.set_identity(SERVER.as_bytes()).unwrap();
    stuck.set_rcvhwm(1).unwrap();
    stuck.set_rcvbuf(4096).unwrap();
    stuck.set_linger(0).unwrap();
    stuck.connect(proxy.backend()).unwrap();
    wait_routable(&client, SERVER, &stuck);
    let before = peak_rss_kib(proxy.pid());
    let payload = vec![3u8; 64 * 1024];
    let sent = 1000;
    for i in 0..sent {
        send(
            &client,
            &request("2", SERVER, &format!("flood-{i}"), &[&payload]),
        );
    }
    let in_sample = r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="cast"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.metric(in_sample) < f64::from(sent) {
        assert!(Instant::now() < deadline, "the flood was never read whole");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = peak_rss_kib(proxy.pid());
    eprintln!("proxy peak RSS: {before} KiB before the flood, {peak} KiB after");
    assert!(
        peak < before + 32 * 1024,
        "peak RSS grew from {before} to {peak} KiB for a 64 MiB flood"
    );
    assert!(proxy.metric(r#"zmq_proxy_dropped_total{reason="hwm",socket="backend"}"#) > 0.0);
}

// --- publisher ---

/// A ZMTP 3.`minor` greeting (NULL mechanism, not as server), for raw
/// peers of either version.
fn raw_greeting(minor: u8) -> Vec<u8> {
    let mut greeting = zmtp::greeting::encode(false).to_vec();
    // Byte 10 is the major version, 11 the minor.
    greeting[11] = minor;
    greeting
}

impl RawPeer {
    /// Connects to a PUB as a SUB with ZMTP 3.`minor` and reads the PUB's
    /// greeting and READY.
    fn subscriber(endpoint: &str, minor: u8) -> RawPeer {
        RawPeer::handshake(dial(endpoint), minor, SocketType::Sub, None, Some(b"PUB"))
    }

    /// Subscribes to (or, with `subscribe` false, cancels) `prefix` in the
    /// 3.1 command form, or the 3.0 message form with `message_form`.
    fn subscription(&mut self, subscribe: bool, prefix: &[u8], message_form: bool) {
        let change = if subscribe {
            zmtp::Subscription::Subscribe(prefix)
        } else {
            zmtp::Subscription::Cancel(prefix)
        };
        let version = if message_form {
            zmtp::Version::V3_0
        } else {
            zmtp::Version::V3_1
        };
        let mut wire = Vec::new();
        change.encode(version, &mut wire);
        self.send(&wire);
    }

    /// Reads one whole message, skipping commands.
    fn read_message(&mut self) -> Frames {
        let mut frames = Vec::new();
        loop {
            let (flags, body) = self.read_frame().expect("frame");
            if flags & 0x04 != 0 {
                continue;
            }
            frames.push(body);
            if flags & 0x01 == 0 {
                return frames;
            }
        }
    }
}

/// What a SUB receives for a fanout published with `topic` and `id`.
fn publication(topic: &str, id: &str, payload: &[&[u8]]) -> Frames {
    let mut f = frames(&[topic.as_bytes(), b"1.0", b"3", id.as_bytes()]);
    f.extend(payload.iter().map(|p| p.to_vec()));
    f
}

/// Publishes fanouts to `topic` through `client` until `receive` returns
/// one (a subscription travels asynchronously), then returns it.
fn publish_until(
    client: &zmq::Socket,
    topic: &str,
    mut receive: impl FnMut() -> Option<Frames>,
) -> Frames {
    let deadline = Instant::now() + WAIT;
    loop {
        send(client, &request("3", topic, "warmup", &[b"w"]));
        if let Some(m) = receive() {
            return m;
        }
        assert!(Instant::now() < deadline, "{topic} never delivered");
    }
}

#[test]
fn raw_subscribers_in_the_3_1_command_and_3_0_message_forms_get_only_their_prefixes() {
    let proxy = Proxy::start_on(Engine::Native, &["--pubsub"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let mut v31 = RawPeer::subscriber(proxy.publisher(), 1);
    v31.subscription(true, b"compute", false);
    // The PONG comes after the subscription is applied: same connection,
    // handled in order.
    v31.ping(b"sub-31");
    let mut v30 = RawPeer::subscriber(proxy.publisher(), 0);
    v30.subscription(true, b"network", true);
    v30.ping(b"sub-30");
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#, 2.0);
    for (topic, id) in [
        ("compute.host1", "id-1"),
        ("network", "id-2"),
        ("other", "id-3"),
        ("compute", "id-4"),
        ("network.end", "id-5"),
    ] {
        send(&client, &request("3", topic, id, &[b"p", b""]));
    }
    assert_eq!(
        v31.read_message(),
        publication("compute.host1", "id-1", &[b"p", b""])
    );
    assert_eq!(
        v31.read_message(),
        publication("compute", "id-4", &[b"p", b""])
    );
    assert_eq!(
        v30.read_message(),
        publication("network", "id-2", &[b"p", b""])
    );
    assert_eq!(
        v30.read_message(),
        publication("network.end", "id-5", &[b"p", b""])
    );
    proxy.wait_metric(
        r#"zmq_proxy_messages_total{direction="out",socket="publisher",type="fanout"}"#,
        5.0,
    );
}

#[test]
fn a_cancel_stops_delivery_and_a_duplicate_subscribe_needs_two_cancels() {
    let proxy = Proxy::start_on(Engine::Native, &["--pubsub"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let mut sub = RawPeer::subscriber(proxy.publisher(), 1);
    sub.subscription(true, b"a", false);
    sub.subscription(true, b"a", true);
    sub.subscription(true, b"z", false);
    sub.ping(b"1");
    send(&client, &request("3", "a", "twice", &[]));
    assert_eq!(sub.read_message(), publication("a", "twice", &[]));
    // One cancel (message form) leaves one subscription.
    sub.subscription(false, b"a", true);
    sub.ping(b"2");
    send(&client, &request("3", "a.b", "once", &[]));
    assert_eq!(sub.read_message(), publication("a.b", "once", &[]));
    // The second (command form) ends it; a cancel too many is ignored.
    sub.subscription(false, b"a", false);
    sub.subscription(false, b"a", false);
    sub.ping(b"3");
    send(&client, &request("3", "a", "none", &[]));
    send(&client, &request("3", "z", "marker", &[]));
    assert_eq!(sub.read_message(), publication("z", "marker", &[]));
}

#[test]
fn a_libzmq_xsub_peer_subscribes_and_receives() {
    let proxy = Proxy::start_on(Engine::Native, &["--pubsub"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let xsub = ctx.socket(zmq::XSUB).unwrap();
    xsub.set_linger(0).unwrap();
    xsub.connect(proxy.publisher()).unwrap();
    xsub.send(&b"\x01compute"[..], 0).unwrap();
    let first = publish_until(&client, "compute", || {
        recv(&xsub, Duration::from_millis(50))
    });
    assert_eq!(first, publication("compute", "warmup", &[b"w"]));
    while recv(&xsub, Duration::from_millis(100)).is_some() {}
    send(&client, &request("3", "network", "skip", &[]));
    send(&client, &request("3", "compute.x", "take", &[b"p"]));
    assert_eq!(expect(&xsub), publication("compute.x", "take", &[b"p"]));
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#, 1.0);
    drop(xsub);
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#, 0.0);
}

#[test]
fn a_subscriber_that_never_reads_stalls_no_one_and_its_drops_are_counted() {
    // 64 KiB of output per subscriber; 64 MiB published to one that never
    // reads.
    let proxy = Proxy::start_on(Engine::Native, &["--pubsub", "--hwm", "64"]);
    let ctx = zmq::Context::new();
    let (client, server) = pair(&ctx, &proxy);
    let mut stuck = RawPeer::subscriber(proxy.publisher(), 1);
    stuck.subscription(true, b"", false);
    stuck.ping(b"stuck");
    let reader = subscriber(&ctx, b"compute", proxy.publisher());
    publish_until(&client, "compute", || {
        recv(&reader, Duration::from_millis(50))
    });
    let before = peak_rss_kib(proxy.pid());
    let payload = vec![5u8; 64 * 1024];
    let sent = 1000;
    // The reading subscriber drains in the background.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = std::thread::spawn({
        let done = std::sync::Arc::clone(&done);
        move || {
            let mut got = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(m) = recv(&reader, Duration::from_millis(20)) {
                    got += 1;
                    if m[3] == b"marker" {
                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            got
        }
    });
    for i in 0..sent {
        send(
            &client,
            &request("3", "compute", &format!("flood-{i}"), &[&payload]),
        );
    }
    let in_sample = r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="fanout"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.metric(in_sample) < f64::from(sent) {
        assert!(Instant::now() < deadline, "the flood was never read whole");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The router still routes at once.
    send(&client, &request("1", SERVER, "during", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "during", &[b"p"]));
    // The reading subscriber still gets what is published after the flood
    // (a marker, sent until its own output has room again: a PUB drops
    // for a full subscriber, and this one may still be catching up).
    let deadline = Instant::now() + WAIT;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the reading subscriber never got the marker"
        );
        send(&client, &request("3", "compute", "marker", &[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = drain.join().expect("drain thread");
    let peak = peak_rss_kib(proxy.pid());
    eprintln!(
        "proxy peak RSS: {before} KiB before the flood, {peak} KiB after; the reader got {got}"
    );
    assert!(
        peak < before + 32 * 1024,
        "peak RSS grew from {before} to {peak} KiB for a 64 MiB flood"
    );
    let drops = proxy.metric(r#"zmq_proxy_dropped_total{reason="hwm",socket="publisher"}"#);
    assert!(drops > 0.0, "no drop counted for the stuck subscriber");
    // The stuck one was served up to its bound, then dropped: most of the
    // flood was dropped for it.
    assert!(drops >= f64::from(sent) / 2.0, "only {drops} drops counted");
}

/// A fake central PUB on a std listener: accepts the local publisher,
/// speaks ZMTP 3.`minor` as a PUB, and checks its subscription's form.
fn fake_central_accept(listener: &std::net::TcpListener, minor: u8) -> RawPeer {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the local publisher never connected"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut peer = RawPeer::handshake(stream, minor, SocketType::Pub, None, Some(b"SUB"));
    // Everything, in the form this version reads.
    let (flags, body) = peer.read_frame().expect("subscription");
    if minor == 0 {
        assert_eq!((flags, body), (0, b"\x01".to_vec()));
    } else {
        assert_eq!((flags, body), (0x04, b"\x09SUBSCRIBE".to_vec()));
    }
    peer
}

#[test]
fn the_native_local_publisher_subscribes_in_each_versions_form_and_drops_cut_messages() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let local = Proxy::start_on(Engine::Native, &["-lp", "--connect-publisher", &endpoint]);
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, b"", local.publisher());
    local.wait_metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#, 1.0);
    for (round, minor) in [0u8, 1].into_iter().enumerate() {
        let mut central = fake_central_accept(&listener, minor);
        local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 1.0);
        let id = format!("whole-{minor}");
        let whole = publication("compute", &id, &[b"x", b""]);
        let refs: Vec<&[u8]> = whole.iter().map(Vec::as_slice).collect();
        // The local SUB subscription may not have reached the local PUB yet:
        // resend until one arrives.
        let deadline = Instant::now() + WAIT;
        let got = loop {
            central.send(&RawPeer::message(&refs, SizeForm::Short));
            if let Some(m) = recv(&sub, Duration::from_millis(50)) {
                break m;
            }
            assert!(Instant::now() < deadline, "relay never delivered");
        };
        assert_eq!(got, whole);
        while recv(&sub, Duration::from_millis(100)).is_some() {}
        // Half a message, then the connection ends.
        let cut = RawPeer::message(
            &[b"compute", b"1.0", b"3", b"cut", b"payload"],
            SizeForm::Short,
        );
        central.send(&cut[..cut.len() - 4]);
        drop(central);
        local.wait_metric(
            r#"zmq_proxy_dropped_total{reason="truncated",socket="subscriber"}"#,
            (round + 1) as f64,
        );
        local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 0.0);
        assert!(recv(&sub, Duration::from_millis(100)).is_none());
    }
}

#[test]
fn the_native_local_publisher_relays_unchanged_and_reconnects_after_the_central_restarts() {
    let central = Proxy::start_on(Engine::Native, &["--pubsub"]);
    let port = Proxy::port(central.publisher());
    let local = Proxy::start_on(
        Engine::Native,
        &["-lp", "--connect-publisher", central.publisher()],
    );
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, b"compute", local.publisher());
    let client = dealer(&ctx, CLIENT, central.frontend());
    publish_until(&client, "compute", || recv(&sub, Duration::from_millis(50)));
    while recv(&sub, Duration::from_millis(100)).is_some() {}
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let payload: [&[u8]; 3] = [b"", &big, b"\x00\x01\xff"];
    send(&client, &request("3", "compute.x", "relayed", &payload));
    assert_eq!(expect(&sub), publication("compute.x", "relayed", &payload));
    local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 1.0);

    // The central proxy goes away and comes back on the same port.
    drop(central);
    drop(client);
    local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 0.0);
    let central = Proxy::start_on(Engine::Native, &["--pubsub", "-p", &port]);
    assert_eq!(Proxy::port(central.publisher()), port);
    let client = dealer(&ctx, CLIENT, central.frontend());
    local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 1.0);
    let again = publish_until(&client, "compute", || recv(&sub, Duration::from_millis(50)));
    assert_eq!(again, publication("compute", "warmup", &[b"w"]));
    assert!(
        local.metric(
            r#"zmq_proxy_messages_total{direction="in",socket="subscriber",type="fanout"}"#
        ) >= 3.0
    );
}

#[test]
fn a_silent_subscriber_is_pinged_and_closed_and_a_libzmq_one_stays() {
    let proxy = Proxy::start_on(
        Engine::Native,
        &[
            "--pubsub",
            "--heartbeat-ivl-ms",
            "100",
            "--heartbeat-timeout-ms",
            "300",
        ],
    );
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    // libzmq answers PINGs (and sends its own, with the same options).
    let live = ctx.socket(zmq::SUB).unwrap();
    live.set_linger(0).unwrap();
    live.set_heartbeat_ivl(100).unwrap();
    live.set_heartbeat_timeout(300).unwrap();
    live.set_subscribe(b"compute").unwrap();
    live.connect(proxy.publisher()).unwrap();
    publish_until(&client, "compute", || {
        recv(&live, Duration::from_millis(50))
    });
    let mut silent = RawPeer::subscriber(proxy.publisher(), 1);
    let ping = silent.read_command();
    assert!(
        matches!(Command::parse(&ping), Ok(Command::Ping { .. })),
        "expected a PING, got {ping:?}"
    );
    wait_closed(&mut silent);
    proxy.wait_metric(
        r#"zmq_proxy_peers_timed_out_total{socket="publisher"}"#,
        1.0,
    );
    std::thread::sleep(Duration::from_millis(1000));
    while recv(&live, Duration::from_millis(50)).is_some() {}
    send(&client, &request("3", "compute", "after-pings", &[]));
    assert_eq!(expect(&live), publication("compute", "after-pings", &[]));
    assert_eq!(
        proxy.metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#),
        1.0
    );
}

#[test]
fn a_dealer_on_the_publisher_gets_an_error_and_is_closed() {
    let proxy = Proxy::start_on(Engine::Native, &["--pubsub"]);
    let mut raw = RawPeer::connect(proxy.publisher(), SocketType::Dealer, b"not-a-sub");
    let error = raw.read_command();
    assert_eq!(
        Command::parse(&error),
        Ok(Command::Error {
            reason: b"incompatible socket type"
        })
    );
    wait_closed(&mut raw);
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="publisher"}"#, 0.0);
}
