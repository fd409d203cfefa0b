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

/// A hand-written ZMTP 3.1 DEALER over plain TCP.
struct RawPeer {
    stream: TcpStream,
}

impl RawPeer {
    /// Connects, sends greeting and READY as `socket_type` with `identity`,
    /// and reads the proxy's greeting and READY (sent before it looks at
    /// ours).
    fn connect(endpoint: &str, socket_type: SocketType, identity: &[u8]) -> RawPeer {
        let addr = endpoint.trim_start_matches("tcp://");
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut peer = RawPeer { stream };
        let mut opening = zmtp::greeting::encode(false).to_vec();
        let metadata = Metadata::basic(socket_type, Some(identity)).expect("metadata");
        Command::Ready(metadata).encode(&mut opening);
        peer.stream.write_all(&opening).unwrap();
        let mut greeting = [0u8; 64];
        peer.stream.read_exact(&mut greeting).unwrap();
        assert!(matches!(
            zmtp::greeting::parse(&greeting),
            Ok(zmtp::Progress::Done(_))
        ));
        let ready = peer.read_command();
        assert!(matches!(Command::parse(&ready), Ok(Command::Ready(_))));
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
    let mut mute = TcpStream::connect(proxy.frontend().trim_start_matches("tcp://")).unwrap();
    mute.set_read_timeout(Some(WAIT)).unwrap();
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
