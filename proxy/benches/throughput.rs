//! Throughput benchmark (a benchmark: it prints figures, it asserts nothing).
//!
//! On one load, four ways: through this proxy (the `zmq-proxy` binary,
//! double router) with its native engine and with its libzmq engine,
//! through libzmq's own `zmq_proxy` (ROUTER frontend, DEALER backend; this
//! bench binary re-run as a child) and direct client -> server:
//! - protocol-1.0 RPC round trips per second, with p50/p99 latency;
//! - one-way casts per second;
//! - and publisher fan-out to 1, 4, 16 subscribers through this proxy;
//! - section `curve`: RPC round trips through each engine with CURVE
//!   (every client and the server a CURVE client, keys authorized) against
//!   the same engine with NULL.
//!
//! Every forwarder is its own process, as in production, so the figures
//! include its CPU time per round trip (or per cast) during the measured
//! window, summed over its threads from `/proc/PID/task/*/schedstat` (user
//! plus system, in ns), its peak RSS (`VmHWM`) and the messages lost.
//!
//! Load: 8 DEALER clients, 64 requests in flight each; payloads 16 B,
//! 256 B, 4 KiB, 64 KiB. Clients run on one thread (polling all 8 sockets),
//! the server on another. Each case runs `ZMQ_PROXY_BENCH_ROUNDS` times
//! (default 3), all setups interleaved, and the median is printed;
//! `ZMQ_PROXY_BENCH_SECS` sets the measured time per run (default 0.5).
//! Longer runs: `ZMQ_PROXY_BENCH_SECS=3 ZMQ_PROXY_BENCH_ROUNDS=5`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zmq_proxy::config::SocketOptions;
use zmq_proxy::sockets::MIN_CLOSE_LINGER_MS;

const CLIENTS: usize = 8;
const IN_FLIGHT: usize = 64;
const PAYLOADS: [usize; 4] = [16, 256, 4096, 65536];
const SERVER_ID: &[u8] = b"bench/compute/00000000-0000-4000-8000-000000000000";
const WARMUP: Duration = Duration::from_millis(200);
/// How long the end of a run waits for messages still on their way.
const DRAIN: Duration = Duration::from_secs(5);
/// Set in the child that runs libzmq's `zmq_proxy`.
const CHILD_ENV: &str = "ZMQ_PROXY_BENCH_CHILD";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Native,
    Ours,
    Libzmq,
    Direct,
    /// The libzmq engine with CURVE on.
    Curve,
    /// The native engine with CURVE on.
    NativeCurve,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Native => "zmq-proxy native",
            Via::Ours => "zmq-proxy libzmq",
            Via::Libzmq => "libzmq zmq_proxy",
            Via::Direct => "direct",
            Via::Curve => "zmq-proxy libzmq CURVE",
            Via::NativeCurve => "zmq-proxy native CURVE",
        }
    }

    /// This proxy with either engine (protocol-1.0 envelopes on the server).
    fn is_zmq_proxy(self) -> bool {
        matches!(
            self,
            Via::Ours | Via::Native | Via::Curve | Via::NativeCurve
        )
    }
}

/// A running forwarder process (or none, for direct): where clients and
/// servers connect.
struct Setup {
    client_endpoint: String,
    server_endpoint: String,
    publisher_endpoint: Option<String>,
    child: Option<Child>,
}

impl Setup {
    /// CPU time the forwarder has used so far (zero for direct).
    fn cpu(&self) -> Duration {
        self.child
            .as_ref()
            .map_or(Duration::ZERO, |c| process_cpu(c.id()))
    }

    /// Stops the forwarder; returns its peak RSS in KiB (0 for direct).
    fn finish(mut self) -> u64 {
        let Some(mut child) = self.child.take() else {
            return 0;
        };
        let rss = peak_rss_kib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        rss
    }
}

/// CPU time (user + system) of every live thread of process `pid`.
fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Peak resident memory of process `pid` in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts `command` and reads its `zmq-proxy listening key=endpoint...`
/// line.
fn spawn_forwarder(mut command: Command) -> Setup {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn forwarder");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("zmq-proxy listening") => break line,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the forwarder never printed its listening line");
            }
        }
    };
    let endpoint = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(String::from)
    };
    Setup {
        client_endpoint: endpoint("frontend").expect("frontend endpoint"),
        server_endpoint: endpoint("backend").expect("backend endpoint"),
        publisher_endpoint: endpoint("publisher"),
        child: Some(child),
    }
}

/// The `zmq-proxy` binary with `engine`, double router, pub/sub if asked.
fn zmq_proxy(engine: &str, pubsub: bool) -> Setup {
    let hwm = env_or("ZMQ_PROXY_BENCH_HWM", SocketOptions::default().hwm).to_string();
    let send_timeout = env_or("ZMQ_PROXY_BENCH_SEND_TIMEOUT_MS", 1000u64).to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_zmq-proxy"));
    command
        .args(["--engine", engine, "-H", "127.0.0.1"])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(["-f", "0", "-b", "0", "-p", "0", "--linger-ms", "100"])
        .args(["--hwm", &hwm, "--send-timeout-ms", &send_timeout])
        .env("RUST_LOG", "warn");
    if pubsub {
        command.arg("--pubsub");
    }
    spawn_forwarder(command)
}

/// Key pairs of the CURVE setup: the proxy's, and the one every bench
/// client and the server share (authorized for any identity).
struct BenchKeys {
    proxy: zmq::CurveKeyPair,
    peer: zmq::CurveKeyPair,
    dir: std::path::PathBuf,
}

fn bench_keys() -> &'static BenchKeys {
    static KEYS: std::sync::OnceLock<BenchKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let z85 = |k: &[u8]| zmq::z85_encode(k).expect("z85");
        let proxy = zmq::CurveKeyPair::new().expect("CURVE key pair");
        let peer = zmq::CurveKeyPair::new().expect("CURVE key pair");
        let dir =
            std::env::temp_dir().join(format!("zmq-proxy-bench-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        std::fs::write(dir.join("secret"), z85(&proxy.secret_key)).expect("secret key");
        std::fs::write(
            dir.join("authorized"),
            format!("{}\n", z85(&peer.public_key)),
        )
        .expect("authorized keys");
        BenchKeys { proxy, peer, dir }
    })
}

/// Makes `s` a CURVE client of the bench proxy when `via` is
/// [`Via::Curve`] or [`Via::NativeCurve`].
fn curve_client(via: Via, s: &zmq::Socket) {
    if matches!(via, Via::Curve | Via::NativeCurve) {
        let keys = bench_keys();
        s.set_curve_serverkey(&keys.proxy.public_key)
            .expect("server key");
        s.set_curve_publickey(&keys.peer.public_key)
            .expect("public key");
        s.set_curve_secretkey(&keys.peer.secret_key)
            .expect("secret key");
    }
}

/// `engine` with CURVE (see [`bench_keys`]).
fn zmq_proxy_curve(engine: &str) -> Setup {
    let dir = &bench_keys().dir;
    let hwm = env_or("ZMQ_PROXY_BENCH_HWM", SocketOptions::default().hwm).to_string();
    let send_timeout = env_or("ZMQ_PROXY_BENCH_SEND_TIMEOUT_MS", 1000u64).to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_zmq-proxy"));
    command
        .args(["--engine", engine, "-H", "127.0.0.1"])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(["-f", "0", "-b", "0", "-p", "0", "--linger-ms", "100"])
        .args(["--hwm", &hwm, "--send-timeout-ms", &send_timeout])
        .arg("--curve-secret-key-file")
        .arg(dir.join("secret"))
        .arg("--curve-authorized-keys")
        .arg(dir.join("authorized"))
        .env("RUST_LOG", "warn");
    spawn_forwarder(command)
}

/// libzmq's `zmq_proxy`, in a child running this bench binary.
fn libzmq() -> Setup {
    let mut command = Command::new(std::env::current_exe().expect("bench binary"));
    command.env(CHILD_ENV, "zmq_proxy");
    spawn_forwarder(command)
}

/// The child's side of [`libzmq`]: binds, prints where, forwards forever.
fn run_zmq_proxy_child() {
    let ctx = zmq::Context::new();
    let fe = ctx.socket(zmq::ROUTER).expect("router");
    let be = ctx.socket(zmq::DEALER).expect("dealer");
    fe.bind("tcp://127.0.0.1:*").expect("bind");
    be.bind("tcp://127.0.0.1:*").expect("bind");
    let ep = |s: &zmq::Socket| s.get_last_endpoint().expect("endpoint").expect("utf8");
    println!(
        "zmq-proxy listening frontend={} backend={}",
        ep(&fe),
        ep(&be)
    );
    let _ = std::io::stdout().flush();
    let _ = zmq::proxy(&fe, &be);
}

fn direct() -> Setup {
    // The server binds; clients connect to it.
    Setup {
        client_endpoint: String::new(),
        server_endpoint: String::new(),
        publisher_endpoint: None,
        child: None,
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
        Via::Ours | Via::Native | Via::Curve | Via::NativeCurve => {
            let s = ctx.socket(zmq::DEALER).expect("dealer");
            s.set_identity(SERVER_ID).expect("identity");
            curve_client(via, &s);
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

fn clients(via: Via, endpoint: &str) -> Clients {
    let ctx = zmq::Context::new();
    let sockets = (0..CLIENTS)
        .map(|i| {
            let s = ctx.socket(zmq::DEALER).expect("dealer");
            s.set_identity(format!("bench/client-{i}-{}", uuid::Uuid::new_v4()).as_bytes())
                .expect("identity");
            s.set_linger(MIN_CLOSE_LINGER_MS).expect("linger");
            s.set_sndhwm(0).expect("hwm");
            s.set_rcvhwm(0).expect("hwm");
            curve_client(via, &s);
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

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    /// Round trips (RPC) or casts received per second.
    per_sec: f64,
    /// RPC latency percentiles (0 for casts).
    p50_us: f64,
    p99_us: f64,
    /// The forwarder's CPU time per round trip or cast, in µs.
    cpu_us: f64,
    /// The forwarder's peak RSS in KiB.
    rss_kib: u64,
    /// Calls without a reply, or casts not received, at the end.
    lost: u64,
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
        Via::Native => zmq_proxy("native", false),
        Via::Ours => zmq_proxy("libzmq", false),
        Via::Curve => zmq_proxy_curve("libzmq"),
        Via::NativeCurve => zmq_proxy_curve("native"),
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
    /// Stops the forwarder, then the server; returns the forwarder's peak
    /// RSS in KiB.
    fn finish(self) -> u64 {
        let rss = self.setup.finish();
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.server.join();
        rss
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

fn rpc(via: Via, payload_len: usize) -> Run {
    let running = start(via);
    let c = clients(via, &running.client_endpoint);
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
    let (mut cpu_start, mut cpu_end) = (None, None);
    let end = start + WARMUP + measure;
    let mut outstanding = CLIENTS * IN_FLIGHT;
    let mut frames: Vec<zmq::Message> = Vec::with_capacity(8);
    while outstanding > 0 {
        let now = Instant::now();
        if now > end {
            cpu_end.get_or_insert_with(|| running.setup.cpu());
            if now > end + DRAIN {
                break;
            }
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
                    if window_start.is_none() {
                        window_start = Some(now);
                        cpu_start = Some(running.setup.cpu());
                    }
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
    let cpu_end = cpu_end.unwrap_or_else(|| running.setup.cpu());
    let elapsed = window_start
        .map(|w| end.min(Instant::now()).duration_since(w))
        .unwrap_or(measure);
    drop(c);
    let rss_kib = running.finish();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        if latencies_us.is_empty() {
            0.0
        } else {
            latencies_us[((latencies_us.len() - 1) as f64 * p) as usize] as f64
        }
    };
    let cpu = cpu_end.saturating_sub(cpu_start.unwrap_or(cpu_end));
    Run {
        per_sec: window_count as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us: cpu.as_secs_f64() * 1e6 / window_count.max(1) as f64,
        rss_kib,
        lost: outstanding as u64,
    }
}

/// Casts: the clients send as fast as they can (blocking at their HWM); the
/// rate is what the server receives during the measured window.
fn casts(via: Via, payload_len: usize) -> Run {
    let running = start(via);
    let c = clients(via, &running.client_endpoint);
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
            (c, seq)
        }
    });
    std::thread::sleep(WARMUP);
    let (before, cpu_before) = (running.casts.load(Ordering::Relaxed), running.setup.cpu());
    let t0 = Instant::now();
    std::thread::sleep(measure);
    let (after, cpu_after) = (running.casts.load(Ordering::Relaxed), running.setup.cpu());
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (c, sent) = sender.join().expect("sender");
    // Whatever is on its way arrives, unless it was dropped.
    let deadline = Instant::now() + DRAIN;
    while running.casts.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let received = running.casts.load(Ordering::Relaxed);
    drop(c);
    let rss_kib = running.finish();
    let casts = after - before;
    Run {
        per_sec: casts as f64 / elapsed.as_secs_f64(),
        p50_us: 0.0,
        p99_us: 0.0,
        cpu_us: cpu_after.saturating_sub(cpu_before).as_secs_f64() * 1e6 / casts.max(1) as f64,
        rss_kib,
        lost: sent.saturating_sub(received),
    }
}

fn fanout_request(seq: u64, payload: &[u8]) -> [zmq::Message; 6] {
    let [d, v, t, _, id, p] = request(b"3", seq, payload);
    [d, v, t, zmq::Message::from(&b"bench"[..]), id, p]
}

/// Fan-out through this proxy's PUB (pub/sub on) with `engine`: returns
/// (published/s, deliveries/s).
fn fanout(engine: &str, subscribers: usize, payload_len: usize) -> (f64, f64) {
    let setup = zmq_proxy(engine, true);
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
    let c = clients(Via::Ours, &setup.client_endpoint);
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
    let _ = setup.finish();
    ((p1 - p0) as f64 / elapsed, (d1 - d0) as f64 / elapsed)
}

fn size(n: usize) -> String {
    if n >= 1024 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// Prints one case: a line per setup, then the ratios. `runs` are in the
/// order of `VIAS`.
fn report(len: usize, runs: &[Run], rpc: bool) {
    for (v, r) in VIAS.iter().zip(runs) {
        let latency = if rpc {
            format!("  p50 {:>6.0} us  p99 {:>6.0} us", r.p50_us, r.p99_us)
        } else {
            String::new()
        };
        let forwarder = if *v == Via::Direct {
            String::new()
        } else {
            format!(
                "  cpu {:>5.2} us/op  peak rss {:>7} KiB",
                r.cpu_us, r.rss_kib
            )
        };
        println!(
            "  {:>6}  {:<17} {:>10.0}/s{latency}{forwarder}  lost {}",
            size(len),
            v.name(),
            r.per_sec,
            r.lost
        );
    }
    let [native, ours, zmq_proxy, direct] = runs else {
        return;
    };
    println!(
        "  {:>6}  native/zmq_proxy {:.2}x  native/direct {:.2}x  native/libzmq-engine {:.2}x  libzmq-engine/zmq_proxy {:.2}x  cpu native/zmq_proxy {:.2}",
        size(len),
        native.per_sec / zmq_proxy.per_sec,
        native.per_sec / direct.per_sec,
        native.per_sec / ours.per_sec,
        ours.per_sec / zmq_proxy.per_sec,
        native.cpu_us / zmq_proxy.cpu_us,
    );
}

/// The setups, in the order figures are printed and ratios taken.
const VIAS: [Via; 4] = [Via::Native, Via::Ours, Via::Libzmq, Via::Direct];

fn main() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("zmq_proxy") {
        run_zmq_proxy_child();
        return;
    }
    // `cargo bench` passes --bench; a filter argument picks sections (rpc, cast, fanout).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |section: &str| filter.is_empty() || filter.iter().any(|f| section.contains(f.as_str()));
    let (major, minor, patch) = zmq::version();
    println!(
        "zmq-proxy throughput: libzmq {major}.{minor}.{patch}, {CLIENTS} DEALER clients x {IN_FLIGHT} in flight, median of {} interleaved runs of {:.1} s; forwarders are processes, cpu = their user+system time per op",
        rounds(),
        secs().as_secs_f64(),
    );
    // Profiling aid: ZMQ_PROXY_BENCH_ONLY=native|ours|libzmq|direct runs one
    // setup once per size (no ratios), for the sections asked for.
    if let Ok(only) = std::env::var("ZMQ_PROXY_BENCH_ONLY") {
        let Some(&via) = VIAS
            .iter()
            .find(|v| format!("{v:?}").eq_ignore_ascii_case(&only))
        else {
            eprintln!(
                "ZMQ_PROXY_BENCH_ONLY: expected native, ours, libzmq or direct, got {only:?}"
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
                println!(
                    "  {:>6}  {} casts {:>10.0}/s",
                    size(len),
                    via.name(),
                    r.per_sec
                );
            }
        }
        return;
    }
    if wanted("rpc") {
        println!("\nRPC round trips (CALL -> REPLY), per second, p50/p99 latency");
        for len in payloads() {
            let runs = interleaved(&VIAS, |v| rpc(v, len), |r: &Run| r.per_sec);
            report(len, &runs, true);
        }
    }
    if wanted("cast") {
        println!("\nOne-way casts, received per second");
        for len in payloads() {
            let runs = interleaved(&VIAS, |v| casts(v, len), |r: &Run| r.per_sec);
            report(len, &runs, false);
        }
    }
    if wanted("curve") {
        println!("\nRPC round trips through each engine, NULL against CURVE");
        let vias = [Via::Native, Via::NativeCurve, Via::Ours, Via::Curve];
        for len in payloads() {
            let runs = interleaved(&vias, |v| rpc(v, len), |r: &Run| r.per_sec);
            for (via, r) in vias.iter().zip(&runs) {
                println!(
                    "  {:>6}  {:<24} {:>9.0}/s  p50 {:>6.0} us  p99 {:>6.0} us  cpu {:>5.1} us/rt  lost {}",
                    size(len),
                    via.name(),
                    r.per_sec,
                    r.p50_us,
                    r.p99_us,
                    r.cpu_us,
                    r.lost
                );
            }
            for (engine, null, curve) in [("native", 0, 1), ("libzmq", 2, 3)] {
                println!(
                    "  {:>6}  {engine:<6} CURVE/NULL: {:.2}x round trips/s, {:.2}x proxy cpu per round trip",
                    size(len),
                    runs[curve].per_sec / runs[null].per_sec,
                    runs[curve].cpu_us / runs[null].cpu_us
                );
            }
        }
        let _ = std::fs::remove_dir_all(&bench_keys().dir);
    }
    if wanted("fanout") {
        println!("\nPublisher fan-out through zmq-proxy (pub/sub on): publications/s in, deliveries/s out");
        for len in payloads() {
            for subs in [1, 4, 16] {
                for engine in ["native", "libzmq"] {
                    let (p, d) = median_by(
                        (0..rounds()).map(|_| fanout(engine, subs, len)).collect(),
                        |r| r.1,
                    );
                    println!(
                        "  {:>6}  {engine:<6} {:>2} subscribers  {:>10.0} published/s  {:>10.0} delivered/s",
                        size(len),
                        subs,
                        p,
                        d
                    );
                }
            }
        }
    }
}
