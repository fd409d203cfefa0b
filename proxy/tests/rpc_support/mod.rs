//! Test support for the RPC and Redis tests: the real `zmq-proxy` binary and
//! a real `redis-server` as child processes (random ports, stopped by PID
//! when dropped), a raw Redis client, and a static matchmaker listing proxies.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use harness::process::ExitInfo;
use harness::proxy::{port_of, LocalProxy};

use serde_json::Value;
use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};
use zmq_proxy::rpc::{
    ClientConfig, Handler, Incoming, RemoteError, RpcClient, RpcServer, ServerConfig,
};

/// Default wait for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(15);

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

/// A running `zmq-proxy` (the harness's [`LocalProxy`]), SIGKILLed when
/// dropped, with its addresses as the matchmaker lists them.
pub struct Proxy {
    inner: LocalProxy,
    /// Parsed from the listening line.
    pub addresses: ProxyAddresses,
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
        let inner = LocalProxy::start(Path::new(env!("CARGO_BIN_EXE_zmq-proxy")), args, WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        let l = inner.listening();
        let port = |endpoint: &Option<String>| endpoint.as_deref().and_then(port_of);
        let addresses = ProxyAddresses {
            host: "127.0.0.1".into(),
            frontend_port: port(&l.frontend).expect("frontend in listening line"),
            backend_port: port(&l.backend),
            publisher_port: port(&l.publisher),
            curve_key: None,
        };
        Proxy { inner, addresses }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.inner.pid()
    }

    /// SIGTERM (clean shutdown).
    pub fn sigterm(&self) {
        self.inner.signal(libc::SIGTERM);
    }

    /// SIGKILL (crash); returns once the process is gone.
    pub fn sigkill(&mut self) {
        self.inner.signal(libc::SIGKILL);
        let _ = self.inner.wait_exit(WAIT);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitInfo> {
        self.inner.wait_exit(timeout)
    }

    /// The proxy's log so far.
    /// Address of its metrics listener (host:port).
    #[allow(dead_code)] // Only some suites read metrics.
    pub fn metrics(&self) -> &str {
        &self.inner.listening().metrics
    }

    pub fn log_text(&self) -> String {
        self.inner.log_text()
    }
}

/// A server config on 127.0.0.1 that stops at once (no drain grace).
pub fn server_config(target: Target) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        shutdown_grace: Duration::ZERO,
        ..ServerConfig::new(target)
    }
}

/// A client config on 127.0.0.1 with a 5 s call timeout.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        host: "127.0.0.1".into(),
        call_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// A handler answering every request with its args.
pub fn echo_args() -> impl Handler {
    |inc: Incoming| async move { Ok::<Value, RemoteError>(inc.args().clone()) }
}

/// Starts an RPC server and waits until it is ready on `proxies` proxies.
pub async fn serve(
    mm: &Arc<dyn Matchmaker>,
    config: ServerConfig,
    handler: impl Handler,
    proxies: usize,
) -> RpcServer {
    let server = RpcServer::start(Arc::clone(mm), config, handler)
        .await
        .expect("server starts");
    assert!(
        server.wait_ready(proxies, WAIT).await,
        "server ready on {proxies} proxies"
    );
    server
}

/// Connects an RPC client and waits until it sees `proxies` proxies.
pub async fn connect(mm: &Arc<dyn Matchmaker>, config: ClientConfig, proxies: usize) -> RpcClient {
    let client = RpcClient::connect(Arc::clone(mm), config)
        .await
        .expect("client connects");
    assert!(
        client.wait_for_proxies(proxies, WAIT).await,
        "client sees {proxies} proxies"
    );
    client
}

/// The python of a venv with unmodified oslo.messaging 8.1.4 and pyzmq
/// (`tests/oslo/install.sh`, run once per test process; the script itself
/// serializes parallel installs).
pub fn oslo_python() -> PathBuf {
    static INSTALL: Once = Once::new();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oslo-venv");
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oslo/install.sh");
    INSTALL.call_once(|| {
        let out = Command::new("sh")
            .arg(install)
            .arg(&venv)
            .output()
            .expect("run install.sh");
        assert!(
            out.status.success(),
            "installing oslo.messaging 8.1.4 failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    venv.join("bin/python")
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
