//! Test support for the RPC and Redis tests: the real `zmq-proxy` binary and
//! a real `redis-server` as child processes (random ports, stopped by PID
//! when dropped), a raw Redis client, and a static matchmaker listing proxies.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses};

/// Default wait for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(15);

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child PID this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `zmq-proxy`, SIGKILLed when dropped.
pub struct Proxy {
    child: Child,
    /// Parsed from the listening line.
    pub addresses: ProxyAddresses,
    /// stderr log file.
    pub log: PathBuf,
}

impl Proxy {
    /// Starts the proxy with forwarding engine `engine` ("native" or
    /// "libzmq"), as [`Proxy::start`] otherwise.
    #[allow(dead_code)] // Not every suite compares engines.
    pub fn start_on(engine: &str, args: &[&str]) -> Proxy {
        let mut all = vec!["--engine", engine];
        all.extend(args);
        Proxy::start(&all)
    }

    /// Starts the proxy on 127.0.0.1 with random ports plus `args`.
    pub fn start(args: &[&str]) -> Proxy {
        let log = std::env::temp_dir().join(format!(
            "zmq-proxy-rpc-test-{}-{}.log",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut all = vec![
            "-H",
            "127.0.0.1",
            "--bind-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1:0",
            "-f",
            "0",
            "-b",
            "0",
            "-p",
            "0",
        ];
        all.extend(args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_zmq-proxy"))
            .args(&all)
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
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no listening line; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let port = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|ep| ep.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        };
        let addresses = ProxyAddresses {
            host: "127.0.0.1".into(),
            frontend_port: port("frontend").expect("frontend in listening line"),
            backend_port: port("backend"),
            publisher_port: port("publisher"),
        };
        Proxy {
            child,
            addresses,
            log,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (clean shutdown).
    pub fn sigterm(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// SIGKILL (crash).
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    /// The proxy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A static matchmaker listing `proxies` (fixed, never expiring).
pub fn static_matchmaker(proxies: &[&Proxy]) -> Arc<dyn Matchmaker> {
    Arc::new(StaticMatchmaker::with_proxies(
        proxies.iter().map(|p| p.addresses.clone()),
    ))
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A throwaway `redis-server` (no persistence), killed when dropped.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `requirepass`, if any.
    pub password: Option<String>,
}

impl Redis {
    /// Starts redis-server on a free port and waits until it answers.
    pub fn start() -> Redis {
        Redis::start_with_password(None)
    }

    /// Starts redis-server requiring `password` (AUTH), if given.
    pub fn start_with_password(password: Option<&str>) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            password: password.map(str::to_string),
        };
        r.restart();
        r
    }

    /// `zmq+redis://[:password@]127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("zmq+redis://{}", self.host())
    }

    /// `[:password@]127.0.0.1:{port}`, one host of a transport URL.
    pub fn host(&self) -> String {
        match &self.password {
            Some(p) => format!(":{p}@127.0.0.1:{}", self.port),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL: an outage, not a clean stop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port, empty, and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        let mut args = vec![
            "--port".to_string(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
        ];
        if let Some(p) = &self.password {
            args.extend(["--requirepass".into(), p.clone()]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.conn().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw synchronous connection, if the server answers.
    pub fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}/0", self.host())).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// SMEMBERS, sorted (empty if unreachable).
    pub fn smembers(&self, key: &str) -> Vec<String> {
        let Some(mut c) = self.conn() else {
            return Vec::new();
        };
        let mut v: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query(&mut c)
            .unwrap_or_default();
        v.sort();
        v
    }

    /// TTL in seconds (-2 missing, -1 no expiry).
    pub fn ttl(&self, key: &str) -> i64 {
        let Some(mut c) = self.conn() else { return -3 };
        redis::cmd("TTL").arg(key).query(&mut c).unwrap_or(-3)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let Some(mut c) = self.conn() else {
            return Vec::new();
        };
        let mut v: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut c)
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs an async test body once per engine: `per_engine_async!(name,
/// body_fn);` defines the tokio tests `name::libzmq` and `name::native`,
/// each awaiting `body_fn("libzmq")` or `body_fn("native")`.
#[macro_export]
macro_rules! per_engine_async {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn libzmq() {
                $body("libzmq").await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                $body("native").await
            }
        }
    };
}
