//! Test support: the real `zmq-proxy` binary as a child process (through
//! the harness's one launcher), raw
//! DEALER/SUB peers speaking protocol 1.0, and a tiny HTTP client for
//! /metrics, /healthz and /readyz.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::process::ExitInfo;
use harness::proxy::LocalProxy;

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

/// A running proxy (the harness's [`LocalProxy`]), stopped (SIGKILL) when
/// dropped, with the endpoints of its listening line and /metrics helpers.
pub struct Proxy {
    inner: LocalProxy,
    pub frontend: Option<String>,
    pub backend: Option<String>,
    pub publisher: Option<String>,
    pub metrics: String,
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
        let inner = LocalProxy::start(Path::new(env!("CARGO_BIN_EXE_zmq-proxy")), args, WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        let l = inner.listening().clone();
        Proxy {
            frontend: l.frontend,
            backend: l.backend,
            publisher: l.publisher,
            metrics: l.metrics,
            inner,
        }
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid()
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
        self.inner.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitInfo> {
        self.inner.wait_exit(timeout)
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
        self.inner.log_text()
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
