//! Configuration: command-line flags, `ZMQ_PROXY_*` environment variables and
//! an oslo-style INI config file, resolved into one [`Settings`] value.
//!
//! Precedence: flag > environment > config file (`-c`) > default. The flags
//! are compatible with oslo's `oslo-messaging-zmq-proxy` (including its
//! two-letter `-lp`, which [`normalize_args`] rewrites before clap sees it).
//! Everything here is pure: [`Settings::from_args`] takes the argument list,
//! an environment lookup and a file reader, so it is unit-tested without a
//! process.
//!
//! Three steps, one file each:
//! - [`cli`]: the clap command line (flags and their environment variables);
//! - [`ini`]: oslo.config's INI dialect;
//! - [`resolution`]: merging both with the defaults into [`Settings`].
//!
//! This is the top layer of the crate: it may use the libraries' types
//! ([`Liveness`], [`SocketOptions`], transport URLs), and none of them uses it.

pub mod cli;
pub mod ini;
pub mod resolution;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use self::cli::{normalize_args, Cli};
pub use self::ini::Ini;
pub use self::resolution::matchmaker_from_url;
pub use crate::matchmaker::Liveness;
pub use crate::sockets::SocketOptions;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Command line or environment could not be parsed (includes `--help`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// File name.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A value (from any source) is invalid.
    #[error("invalid value for {key}: {value:?}: {reason}")]
    Invalid {
        /// Option name.
        key: String,
        /// Offending value.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `value` of option `key`.
    pub(crate) fn invalid(key: &str, value: &str, reason: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Which router topology the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterMode {
    /// Frontend ROUTER for clients, backend ROUTER for servers (default).
    DoubleRouter,
    /// One ROUTER for clients and servers.
    SingleRouter,
}

/// Which forwarding engine runs the router proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// libzmq's sockets: the fallback, and the oracle of the differential
    /// tests.
    Libzmq,
    /// ZMTP spoken by the proxy itself on one event-loop thread (default).
    Native,
}

/// Which matchmaker backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatchmakerKind {
    /// Fixed addresses / in-process registry (default).
    Static,
    /// Kubernetes EndpointSlices.
    Kubernetes,
    /// oslo's redis layout.
    Redis,
}

impl MatchmakerKind {
    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchmakerKind::Static => "static",
            MatchmakerKind::Kubernetes => "kubernetes",
            MatchmakerKind::Redis => "redis",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The CURVE key files (both given, or CURVE is off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurveFiles {
    /// The proxy's Z85 secret key.
    pub secret_key_file: PathBuf,
    /// The authorized peers' public keys and identities.
    pub authorized_keys: PathBuf,
}

/// Everything the proxy needs to start, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Host advertised in the matchmaker.
    pub host: String,
    /// IP the sockets bind to.
    pub bind_address: String,
    /// Frontend port (0 = random).
    pub frontend_port: u16,
    /// Backend port (0 = random), unused in single-router mode.
    pub backend_port: u16,
    /// Publisher port (0 = random).
    pub publisher_port: u16,
    /// Router topology.
    pub mode: RouterMode,
    /// Forwarding engine of the router proxy.
    pub engine: Engine,
    /// Run as a local publisher (SUB on every central PUB, re-published) instead of routing.
    pub local_publisher: bool,
    /// Publish fanout and notify on PUB instead of routing them.
    pub pubsub: bool,
    /// Acknowledge published fanout/notify to the sender.
    pub ack_pub_sub: bool,
    /// oslo transport URL, if given.
    pub url: Option<String>,
    /// Matchmaker backend.
    pub matchmaker: MatchmakerKind,
    /// Central publishers a local publisher subscribes to, besides those the matchmaker lists.
    pub connect_publishers: Vec<String>,
    /// Listen address of /metrics, /healthz, /readyz.
    pub metrics_address: SocketAddr,
    /// Longest drain after SIGTERM.
    pub grace_period: Duration,
    /// How long the proxy must be idle while draining before it exits early.
    pub drain_quiet: Duration,
    /// Socket options.
    pub sockets: SocketOptions,
    /// Matchmaker registration TTL and refresh.
    pub liveness: Liveness,
    /// Messages handled per socket per poll wake-up.
    pub batch: usize,
    /// How long a message waits for room at a receiver at its HWM before it is dropped.
    pub send_timeout: Duration,
    /// How long a message for a receiver that is not connected is held for
    /// it before it is dropped as unroutable (0 = at once).
    pub unroutable_wait: Duration,
    /// libzmq I/O threads.
    pub io_threads: i32,
    /// Log format.
    pub log_format: LogFormat,
    /// Debug logging.
    pub debug: bool,
    /// Log to this file instead of stderr.
    pub log_file: Option<PathBuf>,
    /// CURVE security on the proxy's sockets; `None` = plain (NULL).
    pub curve: Option<CurveFiles>,
}
