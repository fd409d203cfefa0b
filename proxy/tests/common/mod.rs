//! Test support: the real `zmq-proxy` binary as a child process, raw
//! DEALER/SUB peers speaking protocol 1.0, and a tiny HTTP client for
//! /metrics, /healthz and /readyz.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default wait for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// The proxy's forwarding engines, for tests that run against each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Libzmq,
    Native,
}

impl Engine {
    /// The `--engine` value.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Libzmq => "libzmq",
            Engine::Native => "native",
        }
    }
}

/// Runs a test body once per engine: `per_engine!(name, body_fn);` defines
/// the tests `name::libzmq` and `name::native`, each calling
/// `body_fn(Engine)` (filter with `native` to run one engine).
#[macro_export]
macro_rules! per_engine {
    ($name:ident, $body:path) => {
        mod $name {
            #[test]
            fn libzmq() {
                $body($crate::common::Engine::Libzmq)
            }

            #[test]
            fn native() {
                $body($crate::common::Engine::Native)
            }
        }
    };
}

/// A running proxy, stopped (SIGKILL) when dropped.
pub struct Proxy {
    child: Child,
    pub frontend: Option<String>,
    pub backend: Option<String>,
    pub publisher: Option<String>,
    pub metrics: String,
    pub log: PathBuf,
}

impl Proxy {
    /// Starts the proxy with `engine`, as [`Proxy::start`] otherwise.
    pub fn start_on(engine: Engine, args: &[&str]) -> Proxy {
        let mut all = vec!["--engine", engine.name()];
        all.extend(args);
        Proxy::start(&all)
    }

    /// Starts the proxy on 127.0.0.1 with random ports (unless `args` sets them).
    pub fn start(args: &[&str]) -> Proxy {
        let log = std::env::temp_dir().join(format!(
            "zmq-proxy-test-{}-{}.log",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut all: Vec<&str> = vec![
            "-H",
            "127.0.0.1",
            "--bind-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1:0",
        ];
        for (flag, long) in [
            ("-f", "--frontend-port"),
            ("-b", "--backend-port"),
            ("-p", "--publisher-port"),
        ] {
            if !args.contains(&flag) && !args.contains(&long) {
                all.extend([flag, "0"]);
            }
        }
        all.extend(args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_zmq-proxy"))
            .args(&all)
            .env_remove("RUST_LOG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn zmq-proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no listening line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        assert!(
            line.starts_with("zmq-proxy listening "),
            "unexpected line {line:?}"
        );
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        let metrics = field("metrics").expect("metrics address");
        Proxy {
            frontend: field("frontend"),
            backend: field("backend"),
            publisher: field("publisher"),
            metrics: metrics.trim_start_matches("http://").to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn frontend(&self) -> &str {
        self.frontend.as_deref().expect("frontend")
    }

    pub fn backend(&self) -> &str {
        self.backend.as_deref().expect("backend")
    }

    pub fn publisher(&self) -> &str {
        self.publisher.as_deref().expect("publisher")
    }

    pub fn port(endpoint: &str) -> String {
        endpoint.rsplit(':').next().expect("port").to_string()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) with a child PID we own.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// HTTP GET on the metrics listener: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics, path)
    }

    /// The whole /metrics text.
    pub fn metrics_text(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Value of one sample, e.g. `zmq_proxy_dropped_total{reason="bad_type",socket="frontend"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics_text(), sample)
    }

    /// Waits until `sample` equals `value`; panics with the metrics text otherwise.
    pub fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics_text();
            if metric_value(&text, sample) == value {
                return;
            }
            if Instant::now() > deadline {
                panic!("{sample} never became {value}; metrics:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("proxy log kept at {}", self.log.display());
        }
    }
}

/// Parses one sample's value out of a Prometheus text exposition (0 if absent).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Minimal HTTP/1.0 GET.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A DEALER with `identity`, connected to `endpoint`, quick to reconnect.
pub fn dealer(ctx: &zmq::Context, identity: &str, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_identity(identity.as_bytes()).unwrap();
    s.set_linger(0).unwrap();
    s.set_reconnect_ivl(10).unwrap();
    s.set_reconnect_ivl_max(100).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// A SUB subscribed to `prefix`, connected to `endpoint`.
pub fn subscriber(ctx: &zmq::Context, prefix: &[u8], endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::SUB).unwrap();
    s.set_linger(0).unwrap();
    s.set_reconnect_ivl(10).unwrap();
    s.set_subscribe(prefix).unwrap();
    s.connect(endpoint).unwrap();
    s
}

pub type Frames = Vec<Vec<u8>>;

pub fn frames(list: &[&[u8]]) -> Frames {
    list.iter().map(|f| f.to_vec()).collect()
}

pub fn send(s: &zmq::Socket, frames: &Frames) {
    s.send_multipart(frames.iter(), 0).unwrap();
}

/// Receives one message within `timeout`.
pub fn recv(s: &zmq::Socket, timeout: Duration) -> Option<Frames> {
    if s.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
        return None;
    }
    s.recv_multipart(0).ok()
}

/// Receives one message or panics.
pub fn expect(s: &zmq::Socket) -> Frames {
    recv(s, WAIT).expect("message expected")
}

/// The DEALER-side request: `["", "1.0", type, key, id, payload...]`.
pub fn request(t: &str, key: &str, id: &str, payload: &[&[u8]]) -> Frames {
    let mut f = frames(&[b"", b"1.0", t.as_bytes(), key.as_bytes(), id.as_bytes()]);
    f.extend(payload.iter().map(|p| p.to_vec()));
    f
}

/// What the receiving DEALER gets: `["", "1.0", sender, type, id, payload...]`.
pub fn delivery(sender: &str, t: &str, id: &str, payload: &[&[u8]]) -> Frames {
    let mut f = frames(&[b"", b"1.0", sender.as_bytes(), t.as_bytes(), id.as_bytes()]);
    f.extend(payload.iter().map(|p| p.to_vec()));
    f
}

/// Sends probes from `from` to identity `to` until one arrives on
/// `receiver`: proves both peers are connected and routable. Drains extra probes.
pub fn wait_routable(from: &zmq::Socket, to: &str, receiver: &zmq::Socket) {
    let deadline = Instant::now() + WAIT;
    loop {
        send(from, &request("2", to, "probe", &[]));
        if let Some(m) = recv(receiver, Duration::from_millis(50)) {
            assert_eq!(m[4], b"probe", "unexpected message while probing: {m:?}");
            while recv(receiver, Duration::from_millis(100)).is_some() {}
            return;
        }
        assert!(Instant::now() < deadline, "{to} never became routable");
    }
}

/// Polls `f` until it returns true or the deadline passes.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
