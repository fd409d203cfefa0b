//! The real `zmq-proxy` binary as a test child: the one launcher every suite
//! uses (the proxy crate's own suites, the Kubernetes matchmaker suites).
//!
//! The proxy prints one line once its sockets are bound:
//! `zmq-proxy listening frontend=tcp://... backend=... publisher=... metrics=http://...`
//! ([`Listening::parse`]; the proxy's `app::Listening::line` writes it, and a
//! unit test there parses it back with this function). [`ProxyChild::start`]
//! runs the binary through [`Process`] (so it dies with the test, see
//! [`crate::process`]) with stdout and stderr in one log file, and waits for
//! that line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::process::{ExitInfo, Process, ProcessError, ProcessSpec};

/// The first words of the listening line.
pub const LISTENING_PREFIX: &str = "zmq-proxy listening";

/// What the proxy bound, from its listening line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// Frontend ROUTER endpoint (absent in local-publisher mode).
    pub frontend: Option<String>,
    /// Backend ROUTER endpoint (double-router mode).
    pub backend: Option<String>,
    /// PUB endpoint (pub/sub on, or local publisher).
    pub publisher: Option<String>,
    /// `host:port` of /metrics, /healthz and /readyz (no scheme).
    pub metrics: String,
}

/// Why a proxy did not come up.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] ProcessError),
    /// It exited before printing its listening line.
    #[error("zmq-proxy exited ({exit}) before listening; log:\n{log}")]
    Exited {
        /// How it ended.
        exit: ExitInfo,
        /// Its log.
        log: String,
    },
    /// No listening line within the deadline.
    #[error("no listening line within {timeout:?}; log:\n{log}")]
    Timeout {
        /// The deadline.
        timeout: Duration,
        /// Its log so far.
        log: String,
    },
    /// The line was there but not in the expected form.
    #[error("unexpected listening line {0:?}")]
    Malformed(String),
}

impl Listening {
    /// Parses a listening line; `None` unless it starts with
    /// [`LISTENING_PREFIX`] and names the metrics address.
    pub fn parse(line: &str) -> Option<Listening> {
        let rest = line.strip_prefix(LISTENING_PREFIX)?;
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Listening {
            frontend: field("frontend"),
            backend: field("backend"),
            publisher: field("publisher"),
            metrics: field("metrics")?.trim_start_matches("http://").to_string(),
        })
    }
}

/// The port of an endpoint such as `tcp://127.0.0.1:50001`.
pub fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit(':').next()?.parse().ok()
}

/// A running proxy; SIGKILLed (its process group) when dropped.
#[derive(Debug)]
pub struct ProxyChild {
    /// The process, for signals and exit status.
    pub process: Process,
    /// What it bound.
    pub listening: Listening,
    /// stdout and stderr.
    pub log: PathBuf,
}

impl ProxyChild {
    /// Starts `spec` (a `zmq-proxy` command line) and waits up to `timeout`
    /// for its listening line. Blocks; a few hundred milliseconds at most
    /// on a healthy machine, so async callers may call it too.
    pub fn start(spec: &ProcessSpec, timeout: Duration) -> Result<ProxyChild, LaunchError> {
        let process = Process::spawn(spec)?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = read_log(&spec.log);
            if let Some(line) = text.lines().find(|l| l.starts_with(LISTENING_PREFIX)) {
                let listening =
                    Listening::parse(line).ok_or_else(|| LaunchError::Malformed(line.into()))?;
                return Ok(ProxyChild {
                    process,
                    listening,
                    log: spec.log.clone(),
                });
            }
            if let Some(exit) = process.exited() {
                return Err(LaunchError::Exited {
                    exit,
                    log: read_log(&spec.log),
                });
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::Timeout { timeout, log: text });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

/// A proxy on 127.0.0.1 for the proxy crate's suites: random ports unless
/// the arguments set them, its log in the temporary directory, removed when
/// a passing test drops it and kept (and named) when a test fails.
#[derive(Debug)]
pub struct LocalProxy {
    child: ProxyChild,
}

impl LocalProxy {
    /// Starts `program` (the `zmq-proxy` binary) with loopback defaults plus
    /// `args`, and waits up to `timeout` for it to listen.
    pub fn start(
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<LocalProxy, LaunchError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let log = std::env::temp_dir().join(format!(
            "zmq-proxy-test-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // A stale log of a reused PID would hold an old listening line.
        let _ = std::fs::remove_file(&log);
        let mut spec = ProcessSpec::new("zmq-proxy", program, &log).args(loopback_args(args));
        spec.env = vec![("RUST_LOG".into(), "info".into())];
        Ok(LocalProxy {
            child: ProxyChild::start(&spec, timeout)?,
        })
    }

    /// What it bound.
    pub fn listening(&self) -> &Listening {
        &self.child.listening
    }

    /// The process ID.
    pub fn pid(&self) -> i32 {
        self.child.process.pid()
    }

    /// Sends `signal` (SIGTERM for a drain, SIGKILL for a crash).
    pub fn signal(&self, signal: i32) {
        self.child.process.signal(signal);
    }

    /// Blocks up to `timeout` for the exit; `None` while it runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitInfo> {
        self.child.process.wait_blocking(timeout)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}

impl Drop for LocalProxy {
    fn drop(&mut self) {
        self.child.process.signal(libc::SIGKILL);
        if std::thread::panicking() {
            eprintln!("proxy log kept at {}", self.child.log.display());
        } else {
            let _ = std::fs::remove_file(&self.child.log);
        }
    }
}

/// The arguments of a proxy on 127.0.0.1: advertised and bound there, the
/// HTTP listener on a random port, and each ROUTER/PUB port random unless
/// `args` sets it (clap refuses a flag given twice), then `args`.
pub fn loopback_args(args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "-H",
        "127.0.0.1",
        "--bind-address",
        "127.0.0.1",
        "--metrics-address",
        "127.0.0.1:0",
    ];
    for (short, long) in [
        ("-f", "--frontend-port"),
        ("-b", "--backend-port"),
        ("-p", "--publisher-port"),
    ] {
        if !args.contains(&short) && !args.contains(&long) {
            all.extend([short, "0"]);
        }
    }
    all.extend(args);
    all.into_iter().map(str::to_string).collect()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field_and_strips_the_metrics_scheme() {
        let l = Listening::parse(
            "zmq-proxy listening frontend=tcp://127.0.0.1:1 backend=tcp://127.0.0.1:2 \
             publisher=tcp://127.0.0.1:3 metrics=http://127.0.0.1:4",
        )
        .unwrap();
        assert_eq!(l.frontend.as_deref(), Some("tcp://127.0.0.1:1"));
        assert_eq!(l.backend.as_deref(), Some("tcp://127.0.0.1:2"));
        assert_eq!(l.publisher.as_deref(), Some("tcp://127.0.0.1:3"));
        assert_eq!(l.metrics, "127.0.0.1:4");
        assert_eq!(port_of(l.backend.as_deref().unwrap()), Some(2));
    }

    #[test]
    fn optional_fields_may_be_absent_but_metrics_may_not() {
        let l = Listening::parse("zmq-proxy listening publisher=tcp://[::1]:9 metrics=http://h:4")
            .unwrap();
        assert_eq!((l.frontend, l.backend), (None, None));
        assert_eq!(port_of(l.publisher.as_deref().unwrap()), Some(9));
        assert!(Listening::parse("zmq-proxy listening frontend=tcp://h:1").is_none());
        assert!(Listening::parse("something else metrics=http://h:4").is_none());
    }

    #[test]
    fn loopback_defaults_leave_ports_the_caller_sets() {
        let args = loopback_args(&["--backend-port", "7", "--pubsub"]);
        let joined = args.join(" ");
        assert!(
            joined.contains("-f 0") && joined.contains("-p 0"),
            "{joined}"
        );
        assert!(!joined.contains("-b 0"), "{joined}");
        assert!(joined.ends_with("--backend-port 7 --pubsub"), "{joined}");
    }

    #[test]
    fn a_key_is_matched_whole() {
        // "frontendx=" is not "frontend=".
        let l = Listening::parse("zmq-proxy listening frontendx=a metrics=http://h:4").unwrap();
        assert_eq!(l.frontend, None);
    }
}
