//! Throughput benchmark (a benchmark: it prints figures, it asserts nothing).
//!
//! On one load, four ways: through this proxy (double router, in-process
//! thread) with its libzmq engine and with its native engine, through
//! libzmq's own `zmq_proxy` (ROUTER frontend, DEALER backend) and direct
//! client -> server:
//! - protocol-1.0 RPC round trips per second, with p50/p99 latency;
//! - one-way casts per second;
//! - and publisher fan-out to 1, 4, 16 subscribers through this proxy.
//!
//! Load: 8 DEALER clients, 64 requests in flight each; payloads 16 B, 256 B,
//! 4 KiB. Clients run on one thread (polling all 8 sockets), the server on
//! another, the proxy on a third, so all setups use the same threads.
//! Each case runs `ZMQ_PROXY_BENCH_ROUNDS` times (default 3), all
//! setups interleaved, and the median is printed; `ZMQ_PROXY_BENCH_SECS` sets
//! the measured time per run (default 0.5). Longer runs:
//! `ZMQ_PROXY_BENCH_SECS=3 ZMQ_PROXY_BENCH_ROUNDS=5`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zmq_proxy::config::SocketOptions;
use zmq_proxy::native::router::{out_limit_for_hwm, DEFAULT_MAX_MESSAGE};
use zmq_proxy::native::{Duplicates, Keepalive, Listener, NativeConfig, NativeRouter};
use zmq_proxy::router::{RouterConfig, RouterLoop};
use zmq_proxy::shutdown::Shutdown;
use zmq_proxy::sockets::{bind, new_socket, ProxySocket, MIN_CLOSE_LINGER_MS};
use zmq_proxy::telemetry::Metrics;

const CLIENTS: usize = 8;
const IN_FLIGHT: usize = 64;
const PAYLOADS: [usize; 3] = [16, 256, 4096];
const SERVER_ID: &[u8] = b"bench/compute/00000000-0000-4000-8000-000000000000";
const WARMUP: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Ours,
    Native,
    Libzmq,
    Direct,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Ours => "zmq-proxy",
            Via::Native => "zmq-proxy native",
            Via::Libzmq => "libzmq zmq_proxy",
            Via::Direct => "direct",
        }
    }
}

impl Via {
    /// This proxy with either engine (protocol-1.0 envelopes on the server).
    fn is_zmq_proxy(self) -> bool {
        matches!(self, Via::Ours | Via::Native)
    }
}

/// A running forwarder (or none, for direct): where clients and servers connect.
struct Setup {
    client_endpoint: String,
    server_endpoint: String,
    publisher_endpoint: Option<String>,
    stop: Box<dyn FnOnce()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Setup {
    fn finish(mut self) {
        (self.stop)();
        if let Some(t) = self.thread.take() {
            // libzmq's context termination occasionally hangs on close
            // (seen with PUB and 4 KiB messages); do not let one stuck
            // close stall the whole benchmark.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = t.join();
                let _ = tx.send(());
            });
            if rx.recv_timeout(Duration::from_secs(2)).is_err() {
                eprintln!("warning: forwarder thread did not finish closing; left behind");
            }
        }
    }
}

fn ours(pubsub: bool) -> Setup {
    let ctx = zmq::Context::new();
    let io_threads = env_or("ZMQ_PROXY_BENCH_IO_THREADS", 1);
    ctx.set_io_threads(io_threads).expect("io threads");
    let opts = SocketOptions {
        linger_ms: 0,
        hwm: env_or("ZMQ_PROXY_BENCH_HWM", SocketOptions::default().hwm),
        ..SocketOptions::default()
    };
    let metrics = Metrics::new().expect("metrics");
    let fe = new_socket(&ctx, zmq::ROUTER, &opts, Some(b"bench/zmq-proxy/fe")).expect("frontend");
    let be = new_socket(&ctx, zmq::ROUTER, &opts, Some(b"bench/zmq-proxy/be")).expect("backend");
    if std::env::var_os("ZMQ_PROXY_BENCH_AFFINITY").is_some() {
        fe.set_affinity(1).expect("affinity");
        be.set_affinity(2).expect("affinity");
    }
    let (fe_ep, _) = bind(&fe, "127.0.0.1", 0).expect("bind");
    let (be_ep, _) = bind(&be, "127.0.0.1", 0).expect("bind");
    let (publisher, pub_ep) = if pubsub {
        let p = new_socket(&ctx, zmq::PUB, &opts, None).expect("pub");
        let (ep, _) = bind(&p, "127.0.0.1", 0).expect("bind");
        (
            Some(ProxySocket::new(
                p,
                "publisher",
                metrics.socket("publisher"),
            )),
            Some(ep),
        )
    } else {
        (None, None)
    };
    let shutdown = Shutdown::new();
    let router = RouterLoop::new(
        ProxySocket::new(fe, "frontend", metrics.socket("frontend")),
        Some(ProxySocket::new(be, "backend", metrics.socket("backend"))),
        publisher,
        RouterConfig {
            pubsub,
            ack_pub_sub: false,
            batch: batch(),
            frontend_identity: b"bench/zmq-proxy/fe".to_vec(),
            linger_ms: 0,
            send_timeout: Duration::from_millis(env_or("ZMQ_PROXY_BENCH_SEND_TIMEOUT_MS", 1000)),
            unroutable_wait: Duration::from_secs(2),
        },
        shutdown.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let thread = spawn_named("bench-ours", move || router.run());
    Setup {
        client_endpoint: fe_ep,
        server_endpoint: be_ep,
        publisher_endpoint: pub_ep,
        stop: Box::new(move || {
            shutdown.stop();
            if std::env::var_os("ZMQ_PROXY_BENCH_DEBUG").is_some() {
                for line in metrics
                    .render()
                    .lines()
                    .filter(|l| l.starts_with("zmq_proxy_") && !l.ends_with(" 0"))
                {
                    eprintln!("    {line}");
                }
            }
        }),
        thread: Some(thread),
    }
}

/// This proxy's router with the native engine (`--engine native`).
fn native() -> Setup {
    let metrics = Metrics::new().expect("metrics");
    let (fe, fe_ep, _) =
        Listener::bind("127.0.0.1", 0, "frontend", metrics.socket("frontend")).expect("bind");
    let (be, be_ep, _) =
        Listener::bind("127.0.0.1", 0, "backend", metrics.socket("backend")).expect("bind");
    let shutdown = Shutdown::new();
    let router = NativeRouter::new(
        fe,
        Some(be),
        None,
        NativeConfig {
            pubsub: false,
            ack_pub_sub: false,
            frontend_identity: b"bench/zmq-proxy/fe".to_vec(),
            backend_identity: b"bench/zmq-proxy/be".to_vec(),
            send_timeout: Duration::from_millis(env_or("ZMQ_PROXY_BENCH_SEND_TIMEOUT_MS", 1000)),
            unroutable_wait: Duration::from_secs(2),
            out_limit: out_limit_for_hwm(env_or(
                "ZMQ_PROXY_BENCH_HWM",
                SocketOptions::default().hwm,
            )),
            max_message: DEFAULT_MAX_MESSAGE,
            duplicates: Duplicates::Handover,
            linger_ms: 0,
            keepalive: Keepalive::default(),
            heartbeat: None,
            handshake_timeout: None,
        },
        shutdown.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let thread = spawn_named("bench-native", move || {
        if let Err(error) = router.run() {
            eprintln!("native router failed: {error}");
        }
    });
    Setup {
        client_endpoint: fe_ep,
        server_endpoint: be_ep,
        publisher_endpoint: None,
        stop: Box::new(move || {
            shutdown.stop();
            if std::env::var_os("ZMQ_PROXY_BENCH_DEBUG").is_some() {
                for line in metrics
                    .render()
                    .lines()
                    .filter(|l| l.starts_with("zmq_proxy_") && !l.ends_with(" 0"))
                {
                    eprintln!("    {line}");
                }
            }
        }),
        thread: Some(thread),
    }
}

fn libzmq() -> Setup {
    let (tx, rx) = std::sync::mpsc::channel();
    let control_ep = format!("inproc://bench-control-{}", uuid::Uuid::new_v4());
    let ctx = zmq::Context::new();
    let thread = spawn_named("bench-libzmq", {
        let ctx = ctx.clone();
        let control_ep = control_ep.clone();
        move || {
            let mut fe = ctx.socket(zmq::ROUTER).expect("router");
            let mut be = ctx.socket(zmq::DEALER).expect("dealer");
            let mut control = ctx.socket(zmq::PAIR).expect("pair");
            for s in [&fe, &be] {
                s.set_linger(MIN_CLOSE_LINGER_MS).expect("linger");
            }
            fe.bind("tcp://127.0.0.1:*").expect("bind");
            be.bind("tcp://127.0.0.1:*").expect("bind");
            control.bind(&control_ep).expect("bind");
            let ep = |s: &zmq::Socket| s.get_last_endpoint().expect("endpoint").expect("utf8");
            tx.send((ep(&fe), ep(&be))).expect("send endpoints");
            let _ = zmq::proxy_steerable(&mut fe, &mut be, &mut control);
        }
    });
    let (fe_ep, be_ep) = rx.recv().expect("endpoints");
    Setup {
        client_endpoint: fe_ep,
        server_endpoint: be_ep,
        publisher_endpoint: None,
        stop: Box::new(move || {
            let c = ctx.socket(zmq::PAIR).expect("pair");
            c.connect(&control_ep).expect("connect");
            c.send("TERMINATE", 0).expect("terminate");
        }),
        thread: Some(thread),
    }
}

fn direct() -> Setup {
    // The server binds; clients connect to it.
    Setup {
        client_endpoint: String::new(),
        server_endpoint: String::new(),
        publisher_endpoint: None,
        stop: Box::new(|| {}),
        thread: None,
    }
}

/// Spawns a named thread (names show in `top -H` and `perf report --sort comm`).
fn spawn_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn thread")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch() -> usize {
    env_or("ZMQ_PROXY_BENCH_BATCH", 256)
}

/// Payload sizes: all of [`PAYLOADS`], or `ZMQ_PROXY_BENCH_SIZES` (e.g. "16,256").
fn payloads() -> Vec<usize> {
    match std::env::var("ZMQ_PROXY_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => PAYLOADS.to_vec(),
    }
}

fn secs() -> Duration {
    Duration::from_secs_f64(env_or("ZMQ_PROXY_BENCH_SECS", 0.5))
}

/// Rounds per case: all setups run interleaved this many times and
/// the median is printed, which tames load from other processes.
fn rounds() -> usize {
    env_or("ZMQ_PROXY_BENCH_ROUNDS", 3usize).max(1)
}

/// The run with the median rate among `runs`.
fn median_by<T>(mut runs: Vec<T>, rate: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// Runs `case` for every setup, interleaved, `rounds()` times; returns the
/// median run per setup.
fn interleaved<T>(
    vias: &[Via],
    case: impl Fn(Via) -> T,
    rate: impl Fn(&T) -> f64 + Copy,
) -> Vec<T> {
    let mut runs: Vec<Vec<T>> = vias.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds() {
        for (i, &v) in vias.iter().enumerate() {
            runs[i].push(case(v));
        }
    }
    runs.into_iter().map(|r| median_by(r, rate)).collect()
}

/// The RPC server: answers CALLs (REPLY with the payload) and counts CASTs.
/// Ours: a DEALER with the server identity on the proxy backend, receiving
/// `["", "1.0", client, type, id, payload]`. libzmq/direct: a ROUTER,
/// receiving `[envelope..., "", "1.0", type, server, id, payload]`.
fn server(
    via: Via,
    server_endpoint: &str,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<String>,
    casts: Arc<AtomicU64>,
) {
    let ctx = zmq::Context::new();
    let s = match via {
        Via::Ours | Via::Native => {
            let s = ctx.socket(zmq::DEALER).expect("dealer");
            s.set_identity(SERVER_ID).expect("identity");
            s.connect(server_endpoint).expect("connect");
            s
        }
        Via::Libzmq => {
            let s = ctx.socket(zmq::ROUTER).expect("router");
            s.connect(server_endpoint).expect("connect");
            s
        }
        Via::Direct => {
            let s = ctx.socket(zmq::ROUTER).expect("router");
            s.bind("tcp://127.0.0.1:*").expect("bind");
            s
        }
    };
    s.set_linger(MIN_CLOSE_LINGER_MS).expect("linger");
    s.set_sndhwm(0).expect("hwm");
    s.set_rcvhwm(0).expect("hwm");
    let endpoint = s.get_last_endpoint().expect("endpoint").unwrap_or_default();
    let _ = ready.send(endpoint);
    let mut frames: Vec<zmq::Message> = Vec::with_capacity(12);
    let reply_type = zmq::Message::from(&b"5"[..]);
    while !stop.load(Ordering::Relaxed) {
        if s.poll(zmq::POLLIN, 50).unwrap_or(0) == 0 {
            continue;
        }
        let mut n = 0;
        loop {
            frames.clear();
            let mut m = zmq::Message::new();
            if s.recv(&mut m, zmq::DONTWAIT).is_err() {
                break;
            }
            let mut more = m.get_more();
            frames.push(m);
            while more {
                let mut m = zmq::Message::new();
                if s.recv(&mut m, 0).is_err() {
                    break;
                }
                more = m.get_more();
                frames.push(m);
            }
            // Index of the empty delimiter, then the type frame.
            let Some(d) = frames.iter().position(|f| f.is_empty()) else {
                continue;
            };
            let type_at = if via.is_zmq_proxy() { d + 3 } else { d + 2 };
            n += 1;
            if frames.get(type_at).map(|f| &f[..]) == Some(b"2") {
                casts.fetch_add(1, Ordering::Relaxed);
                if n >= 256 {
                    break;
                }
                continue;
            }
            // REPLY: ours ["", "1.0", "5", client, id, p]; router ["", "1.0", server, "5", id, p].
            if via.is_zmq_proxy() {
                frames.swap(d + 2, d + 3);
                frames[d + 2] = zmq::Message::from(&reply_type[..]);
            } else {
                frames.swap(d + 2, d + 3);
                frames[d + 3] = zmq::Message::from(&reply_type[..]);
            }
            let last = frames.len() - 1;
            for (i, f) in frames.drain(..).enumerate() {
                let _ = s.send(f, if i < last { zmq::SNDMORE } else { 0 });
            }
            if n >= 256 {
                break;
            }
        }
    }
}

struct Clients {
    _ctx: zmq::Context,
    sockets: Vec<zmq::Socket>,
}

fn clients(endpoint: &str) -> Clients {
    let ctx = zmq::Context::new();
    let sockets = (0..CLIENTS)
        .map(|i| {
            let s = ctx.socket(zmq::DEALER).expect("dealer");
            s.set_identity(format!("bench/client-{i}-{}", uuid::Uuid::new_v4()).as_bytes())
                .expect("identity");
            s.set_linger(MIN_CLOSE_LINGER_MS).expect("linger");
            s.set_sndhwm(0).expect("hwm");
            s.set_rcvhwm(0).expect("hwm");
            s.connect(endpoint).expect("connect");
            s
        })
        .collect();
    Clients { _ctx: ctx, sockets }
}

fn request(t: &[u8], seq: u64, payload: &[u8]) -> [zmq::Message; 6] {
    [
        zmq::Message::new(),
        zmq::Message::from(&b"1.0"[..]),
        zmq::Message::from(t),
        zmq::Message::from(SERVER_ID),
        zmq::Message::from(format!("{seq:036}").as_bytes()),
        zmq::Message::from(payload),
    ]
}

fn send_all(s: &zmq::Socket, frames: [zmq::Message; 6]) {
    for (i, f) in frames.into_iter().enumerate() {
        let _ = s.send(f, if i < 5 { zmq::SNDMORE } else { 0 });
    }
}

struct RpcResult {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

struct Running {
    setup: Setup,
    stop: Arc<AtomicBool>,
    casts: Arc<AtomicU64>,
    server: std::thread::JoinHandle<()>,
    client_endpoint: String,
}

fn start(via: Via) -> Running {
    let setup = match via {
        Via::Ours => ours(false),
        Via::Native => native(),
        Via::Libzmq => libzmq(),
        Via::Direct => direct(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let casts = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let server_endpoint = setup.server_endpoint.clone();
    let server = spawn_named("bench-server", {
        let (stop, casts) = (Arc::clone(&stop), Arc::clone(&casts));
        move || server(via, &server_endpoint, stop, tx, casts)
    });
    let bound = rx.recv().expect("server ready");
    let client_endpoint = if via == Via::Direct {
        bound
    } else {
        setup.client_endpoint.clone()
    };
    Running {
        setup,
        stop,
        casts,
        server,
        client_endpoint,
    }
}

impl Running {
    fn finish(self) {
        // The forwarder first: libzmq's proxy may be blocked sending to the
        // server, and only the running server lets it reach TERMINATE.
        self.setup.finish();
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.server.join();
    }
}

/// Waits until a CALL gets its REPLY (the server is connected and routable).
fn wait_ready(c: &Clients) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send_all(&c.sockets[0], request(b"1", u64::MAX / 2, b"ping"));
        if c.sockets[0].poll(zmq::POLLIN, 50).unwrap_or(0) > 0 {
            while c.sockets[0].recv_multipart(zmq::DONTWAIT).is_ok() {}
            for s in &c.sockets[1..] {
                send_all(s, request(b"1", u64::MAX / 2, b"ping"));
            }
            for s in &c.sockets[1..] {
                let _ = s.poll(zmq::POLLIN, 1000);
                while s.recv_multipart(zmq::DONTWAIT).is_ok() {}
            }
            return;
        }
        assert!(Instant::now() < deadline, "server never answered");
    }
}

fn rpc(via: Via, payload_len: usize) -> RpcResult {
    let running = start(via);
    let c = clients(&running.client_endpoint);
    wait_ready(&c);
    let payload = vec![0x5au8; payload_len];
    let measure = secs();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(4_000_000);
    let mut latencies_us: Vec<u32> = Vec::with_capacity(4_000_000);
    let start = Instant::now();
    for s in &c.sockets {
        for _ in 0..IN_FLIGHT {
            sent_at.push(Instant::now());
            send_all(s, request(b"1", (sent_at.len() - 1) as u64, &payload));
        }
    }
    let (mut window_start, mut window_count) = (None, 0u64);
    let end = start + WARMUP + measure;
    let mut outstanding = CLIENTS * IN_FLIGHT;
    let mut frames: Vec<zmq::Message> = Vec::with_capacity(8);
    while outstanding > 0 {
        let now = Instant::now();
        if now > end + Duration::from_secs(5) {
            break;
        }
        let mut items: Vec<zmq::PollItem> = c
            .sockets
            .iter()
            .map(|s| s.as_poll_item(zmq::POLLIN))
            .collect();
        if zmq::poll(&mut items, 100).unwrap_or(0) == 0 {
            continue;
        }
        let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        for (s, r) in c.sockets.iter().zip(readable) {
            if !r {
                continue;
            }
            loop {
                frames.clear();
                let mut m = zmq::Message::new();
                if s.recv(&mut m, zmq::DONTWAIT).is_err() {
                    break;
                }
                let mut more = m.get_more();
                frames.push(m);
                while more {
                    let mut m = zmq::Message::new();
                    if s.recv(&mut m, 0).is_err() {
                        break;
                    }
                    more = m.get_more();
                    frames.push(m);
                }
                let Some(seq) = frames
                    .get(frames.len().wrapping_sub(2))
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .and_then(|t| t.parse::<usize>().ok())
                else {
                    continue;
                };
                let now = Instant::now();
                outstanding -= 1;
                if now >= start + WARMUP && now < end {
                    window_start.get_or_insert(now);
                    window_count += 1;
                    if let Some(t) = sent_at.get(seq) {
                        latencies_us.push(now.duration_since(*t).as_micros() as u32);
                    }
                }
                if now < end {
                    sent_at.push(Instant::now());
                    send_all(s, request(b"1", (sent_at.len() - 1) as u64, &payload));
                    outstanding += 1;
                }
            }
        }
    }
    let elapsed = window_start
        .map(|w| end.min(Instant::now()).duration_since(w))
        .unwrap_or(measure);
    drop(c);
    running.finish();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        if latencies_us.is_empty() {
            0.0
        } else {
            latencies_us[((latencies_us.len() - 1) as f64 * p) as usize] as f64
        }
    };
    RpcResult {
        per_sec: window_count as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// Casts: the clients send as fast as they can (blocking at their HWM); the
/// rate is what the server receives during the measured window.
fn casts(via: Via, payload_len: usize) -> f64 {
    eprintln!("casts via {via:?}, {payload_len} B");
    let running = start(via);
    let c = clients(&running.client_endpoint);
    wait_ready(&c);
    for s in &c.sockets {
        s.set_sndhwm(1000).expect("hwm");
    }
    let payload = vec![0x5au8; payload_len];
    let measure = secs();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_named("bench-sender", {
        let stop = Arc::clone(&stop);
        move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for s in &c.sockets {
                    send_all(s, request(b"2", seq, &payload));
                    seq += 1;
                }
            }
            c
        }
    });
    std::thread::sleep(WARMUP);
    let before = running.casts.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(measure);
    let after = running.casts.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    eprintln!("  stopping sender");
    let c = sender.join().expect("sender");
    drop(c);
    eprintln!("  stopping server and forwarder");
    running.finish();
    (after - before) as f64 / elapsed.as_secs_f64()
}

fn fanout_request(seq: u64, payload: &[u8]) -> [zmq::Message; 6] {
    let [d, v, t, _, id, p] = request(b"3", seq, payload);
    [d, v, t, zmq::Message::from(&b"bench"[..]), id, p]
}

/// Fan-out through this proxy's PUB (pub/sub on): returns (published/s, deliveries/s).
fn fanout(subscribers: usize, payload_len: usize) -> (f64, f64) {
    let setup = ours(true);
    let pub_ep = setup.publisher_endpoint.clone().expect("publisher");
    let ctx = zmq::Context::new();
    let subs: Vec<zmq::Socket> = (0..subscribers)
        .map(|_| {
            let s = ctx.socket(zmq::SUB).expect("sub");
            s.set_rcvhwm(0).expect("hwm");
            s.set_linger(MIN_CLOSE_LINGER_MS).expect("linger");
            s.set_subscribe(b"bench").expect("subscribe");
            s.connect(&pub_ep).expect("connect");
            s
        })
        .collect();
    let c = clients(&setup.client_endpoint);
    // Publish until every subscriber has seen a message (subscriptions are asynchronous).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![false; subscribers];
    while seen.iter().any(|s| !s) && Instant::now() < deadline {
        send_all(&c.sockets[0], fanout_request(0, b"ping"));
        std::thread::sleep(Duration::from_millis(5));
        for (i, s) in subs.iter().enumerate() {
            while s.recv_multipart(zmq::DONTWAIT).is_ok() {
                seen[i] = true;
            }
        }
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = spawn_named("bench-receiver", {
        let (delivered, stop) = (Arc::clone(&delivered), Arc::clone(&stop));
        move || {
            let mut m = zmq::Message::new();
            while !stop.load(Ordering::Relaxed) {
                let mut items: Vec<zmq::PollItem> =
                    subs.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
                if zmq::poll(&mut items, 50).unwrap_or(0) == 0 {
                    continue;
                }
                let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
                for (s, r) in subs.iter().zip(readable) {
                    if !r {
                        continue;
                    }
                    let mut n = 0;
                    while n < 256 && s.recv(&mut m, zmq::DONTWAIT).is_ok() {
                        while m.get_more() {
                            if s.recv(&mut m, 0).is_err() {
                                break;
                            }
                        }
                        n += 1;
                    }
                    delivered.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    });
    let payload = vec![0x5au8; payload_len];
    let published = Arc::new(AtomicU64::new(0));
    let send_stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_named("bench-sender", {
        let (published, send_stop, delivered) = (
            Arc::clone(&published),
            Arc::clone(&send_stop),
            Arc::clone(&delivered),
        );
        move || {
            let mut seq = 0u64;
            let window = (CLIENTS * IN_FLIGHT) as u64;
            while !send_stop.load(Ordering::Relaxed) {
                for s in &c.sockets {
                    send_all(s, fanout_request(seq, &payload));
                    seq += 1;
                }
                published.store(seq, Ordering::Relaxed);
                // Keep at most 8 x 64 publications in flight per subscriber,
                // as for RPC, so queues stay short and nothing is dropped.
                while !send_stop.load(Ordering::Relaxed)
                    && (seq * subscribers as u64).saturating_sub(delivered.load(Ordering::Relaxed))
                        > window * subscribers as u64
                {
                    std::thread::yield_now();
                }
            }
            c
        }
    });
    std::thread::sleep(WARMUP);
    let (p0, d0) = (
        published.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    std::thread::sleep(secs());
    let (p1, d1) = (
        published.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    send_stop.store(true, Ordering::SeqCst);
    let c = sender.join().expect("sender");
    stop.store(true, Ordering::SeqCst);
    let _ = receiver.join();
    drop(c);
    setup.finish();
    ((p1 - p0) as f64 / elapsed, (d1 - d0) as f64 / elapsed)
}

fn size(n: usize) -> String {
    if n >= 1024 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// Prints the ratios of one case; `rates` in the order of `vias` in `main`:
/// libzmq engine, native engine, libzmq's zmq_proxy, direct.
fn ratios(len: usize, rates: &[f64]) {
    let [ours, native, zmq_proxy, direct] = rates else {
        return;
    };
    println!(
        "  {:>6}  ratio ours/zmq_proxy {:.2}x  ours/direct {:.2}x",
        size(len),
        ours / zmq_proxy,
        ours / direct
    );
    println!(
        "  {:>6}  ratio native/zmq_proxy {:.2}x  native/direct {:.2}x  native/libzmq-engine {:.2}x",
        size(len),
        native / zmq_proxy,
        native / direct,
        native / ours
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks sections (rpc, cast, fanout).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |section: &str| filter.is_empty() || filter.iter().any(|f| section.contains(f.as_str()));
    let (major, minor, patch) = zmq::version();
    println!(
        "zmq-proxy throughput: libzmq {major}.{minor}.{patch}, {CLIENTS} DEALER clients x {IN_FLIGHT} in flight, median of {} interleaved runs of {:.1} s, batch {}",
        rounds(),
        secs().as_secs_f64(),
        batch()
    );
    let vias = [Via::Ours, Via::Native, Via::Libzmq, Via::Direct];
    // Profiling aid: ZMQ_PROXY_BENCH_ONLY=ours|libzmq|direct runs one setup
    // once per size (no ratios), for the sections asked for.
    if let Ok(only) = std::env::var("ZMQ_PROXY_BENCH_ONLY") {
        let Some(&via) = vias
            .iter()
            .find(|v| format!("{v:?}").eq_ignore_ascii_case(&only))
        else {
            eprintln!(
                "ZMQ_PROXY_BENCH_ONLY: expected ours, native, libzmq or direct, got {only:?}"
            );
            std::process::exit(2);
        };
        for len in payloads() {
            if wanted("rpc") {
                let r = rpc(via, len);
                println!(
                    "  {:>6}  {} rpc {:>10.0}/s",
                    size(len),
                    via.name(),
                    r.per_sec
                );
            }
            if wanted("cast") {
                let r = casts(via, len);
                println!("  {:>6}  {} casts {:>10.0}/s", size(len), via.name(), r);
            }
        }
        return;
    }
    if wanted("rpc") {
        println!("\nRPC round trips (CALL -> REPLY), per second, p50/p99 latency");
        for len in payloads() {
            let results = interleaved(&vias, |v| rpc(v, len), |r: &RpcResult| r.per_sec);
            for (v, r) in vias.iter().zip(&results) {
                println!(
                    "  {:>6}  {:<17} {:>10.0}/s  p50 {:>6.0} us  p99 {:>6.0} us",
                    size(len),
                    v.name(),
                    r.per_sec,
                    r.p50_us,
                    r.p99_us
                );
            }
            ratios(len, &results.iter().map(|r| r.per_sec).collect::<Vec<_>>());
        }
    }
    if wanted("cast") {
        println!("\nOne-way casts, received per second");
        for len in payloads() {
            let results = interleaved(&vias, |v| casts(v, len), |r: &f64| *r);
            for (v, r) in vias.iter().zip(&results) {
                println!("  {:>6}  {:<17} {:>10.0}/s", size(len), v.name(), r);
            }
            ratios(len, &results);
        }
    }
    if wanted("fanout") {
        println!("\nPublisher fan-out through zmq-proxy (pub/sub on): publications/s in, deliveries/s out");
        for len in payloads() {
            for subs in [1, 4, 16] {
                let (p, d) = median_by((0..rounds()).map(|_| fanout(subs, len)).collect(), |r| r.1);
                println!(
                    "  {:>6}  {:>2} subscribers  {:>10.0} published/s  {:>10.0} delivered/s",
                    size(len),
                    subs,
                    p,
                    d
                );
            }
        }
    }
}
