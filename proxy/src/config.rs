//! Configuration: command-line flags, `ZMQ_PROXY_*` environment variables and
//! an oslo-style INI config file, resolved into one [`Settings`] value.
//!
//! Precedence: flag > environment > config file (`-c`) > default. The flags
//! are compatible with oslo's `oslo-messaging-zmq-proxy` (including its
//! two-letter `-lp`, which [`normalize_args`] rewrites before clap sees it).
//! Everything here is pure: [`Settings::from_args`] takes the argument list,
//! an environment lookup and a file reader, so it is unit-tested without a
//! process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;

use crate::matchmaker::Liveness;

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
    /// libzmq's ROUTER sockets (default).
    Libzmq,
    /// ZMTP spoken by the proxy itself (issue 13); router proxy only.
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

/// ZeroMQ socket options applied to every proxy socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Send and receive high-water mark in messages per peer; 0 = unlimited
    /// (oslo's choice). Default 1000: a bounded queue, so a flood pushes back
    /// on its senders instead of growing the proxy's memory.
    pub hwm: i32,
    /// Linger at close in ms; -1 = until the grace period ends.
    pub linger_ms: i32,
    /// ZMQ_TCP_KEEPALIVE: -1 OS default, 0 off, 1 on.
    pub tcp_keepalive: i32,
    /// ZMQ_TCP_KEEPALIVE_IDLE seconds, -1 OS default.
    pub tcp_keepalive_idle: i32,
    /// ZMQ_TCP_KEEPALIVE_INTVL seconds, -1 OS default.
    pub tcp_keepalive_intvl: i32,
    /// ZMQ_TCP_KEEPALIVE_CNT, -1 OS default.
    pub tcp_keepalive_cnt: i32,
    /// ZMQ_IMMEDIATE on the proxy's sockets (off on bound sockets, as oslo).
    pub immediate: bool,
    /// ZMQ_HEARTBEAT_IVL in ms: a PING to every peer quiet this long, so a
    /// peer that vanished without a FIN (a node lost, a partition) is found
    /// and its connection and buffers freed; 0 = off.
    pub heartbeat_ivl_ms: i32,
    /// ZMQ_HEARTBEAT_TIMEOUT in ms: a peer that sends nothing this long
    /// after a PING is closed.
    pub heartbeat_timeout_ms: i32,
    /// ZMQ_HANDSHAKE_IVL in ms: a connection that has not finished its
    /// greeting and READY this long after it was accepted is closed, so
    /// silent connections cannot pile up; 0 = no limit.
    pub handshake_ivl_ms: i32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            hwm: 1000,
            linger_ms: -1,
            tcp_keepalive: -1,
            tcp_keepalive_idle: -1,
            tcp_keepalive_intvl: -1,
            tcp_keepalive_cnt: -1,
            immediate: false,
            // Dead peers are found within 40 s; a live one costs a 10-byte
            // PING and PONG per 10 quiet seconds.
            heartbeat_ivl_ms: 10_000,
            heartbeat_timeout_ms: 30_000,
            // libzmq's default.
            handshake_ivl_ms: 30_000,
        }
    }
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
}

/// The command line; every field optional so that unset flags fall through
/// to the environment, the config file and the defaults.
#[derive(Debug, Parser)]
#[command(
    name = "zmq-proxy",
    version,
    about = "ZeroMQ proxy for oslo.messaging protocol 1.0 (router and publisher proxies)"
)]
pub struct Cli {
    /// oslo-style INI configuration file ([zmq_proxy_opts], [oslo_messaging_zmq]).
    #[arg(short = 'c', long = "config-file", env = "ZMQ_PROXY_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Log to this file instead of stderr.
    #[arg(short = 'l', long = "log-file", env = "ZMQ_PROXY_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Host name/IP advertised in the matchmaker (oslo rpc_zmq_host); default: hostname.
    #[arg(short = 'H', long, env = "ZMQ_PROXY_HOST")]
    pub host: Option<String>,
    /// IP the sockets bind to; default 0.0.0.0.
    #[arg(long, env = "ZMQ_PROXY_BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// Frontend ROUTER port; default 50001, 0 = random.
    #[arg(short = 'f', long, env = "ZMQ_PROXY_FRONTEND_PORT")]
    pub frontend_port: Option<u16>,
    /// Backend ROUTER port; default 50002, 0 = random.
    #[arg(short = 'b', long, env = "ZMQ_PROXY_BACKEND_PORT")]
    pub backend_port: Option<u16>,
    /// Publisher port; default 50003, 0 = random.
    #[arg(short = 'p', long, env = "ZMQ_PROXY_PUBLISHER_PORT")]
    pub publisher_port: Option<u16>,
    /// Router topology.
    #[arg(long, value_enum, env = "ZMQ_PROXY_MODE")]
    pub mode: Option<RouterMode>,
    /// Forwarding engine of the router proxy: libzmq (default) or native
    /// (ZMTP spoken by the proxy itself, --hwm counted as KiB per receiver).
    /// The central PUB and the local publisher stay on libzmq either way.
    #[arg(long, value_enum, env = "ZMQ_PROXY_ENGINE")]
    pub engine: Option<Engine>,
    /// Publish fanout/notify on PUB (oslo use_pub_sub).
    #[arg(long, env = "ZMQ_PROXY_PUBSUB", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub pubsub: Option<bool>,
    /// Route fanout/notify like other messages (overrides --pubsub).
    #[arg(long)]
    pub no_pubsub: bool,
    /// Acknowledge published fanout/notify messages.
    #[arg(short = 'a', long, env = "ZMQ_PROXY_ACK_PUB_SUB", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ack_pub_sub: Option<bool>,
    /// Run as local publisher (`-lp` as in oslo).
    #[arg(long, env = "ZMQ_PROXY_LOCAL_PUBLISHER", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub local_publisher: Option<bool>,
    /// oslo transport URL, e.g. zmq+redis://host:6379 (chooses the matchmaker).
    #[arg(short = 'u', long, env = "ZMQ_PROXY_URL")]
    pub url: Option<String>,
    /// Matchmaker backend; default static (or as the URL says).
    #[arg(long, value_enum, env = "ZMQ_PROXY_MATCHMAKER")]
    pub matchmaker: Option<MatchmakerKind>,
    /// Central publisher endpoint a local publisher subscribes to (repeatable; env: comma-separated).
    #[arg(
        long = "connect-publisher",
        env = "ZMQ_PROXY_CONNECT_PUBLISHERS",
        value_delimiter = ','
    )]
    pub connect_publishers: Vec<String>,
    /// Listen address for /metrics, /healthz, /readyz; default 0.0.0.0:9090 (port 0 = random).
    #[arg(long, env = "ZMQ_PROXY_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,
    /// Drain time after SIGTERM in seconds; default 10.
    #[arg(long, env = "ZMQ_PROXY_GRACE_PERIOD")]
    pub grace_period: Option<f64>,
    /// Idle time (ms) after which a draining proxy exits before the grace period ends; default 1000.
    #[arg(long, env = "ZMQ_PROXY_DRAIN_QUIET_MS")]
    pub drain_quiet_ms: Option<u64>,
    /// Send/receive high-water mark (messages per peer); default 1000, 0 = unlimited.
    #[arg(long, env = "ZMQ_PROXY_HWM")]
    pub hwm: Option<i32>,
    /// Linger at close (ms), -1 = until the grace period ends; at least 100
    /// (a linger of 0 can make libzmq 4.3.4 abort, see sockets.rs).
    #[arg(long, env = "ZMQ_PROXY_LINGER_MS", allow_negative_numbers = true)]
    pub linger_ms: Option<i32>,
    /// ZMQ_TCP_KEEPALIVE (-1 OS default, 0 off, 1 on).
    #[arg(long, env = "ZMQ_PROXY_TCP_KEEPALIVE", allow_negative_numbers = true)]
    pub tcp_keepalive: Option<i32>,
    /// ZMQ_TCP_KEEPALIVE_IDLE seconds.
    #[arg(
        long,
        env = "ZMQ_PROXY_TCP_KEEPALIVE_IDLE",
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_idle: Option<i32>,
    /// ZMQ_TCP_KEEPALIVE_INTVL seconds.
    #[arg(
        long,
        env = "ZMQ_PROXY_TCP_KEEPALIVE_INTVL",
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_intvl: Option<i32>,
    /// ZMQ_TCP_KEEPALIVE_CNT.
    #[arg(
        long,
        env = "ZMQ_PROXY_TCP_KEEPALIVE_CNT",
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_cnt: Option<i32>,
    /// ZMQ_IMMEDIATE on the proxy's sockets.
    #[arg(long, env = "ZMQ_PROXY_IMMEDIATE", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub immediate: Option<bool>,
    /// ZMQ_HEARTBEAT_IVL (ms): PING peers quiet this long; 0 = off; default 10000.
    #[arg(long, env = "ZMQ_PROXY_HEARTBEAT_IVL_MS")]
    pub heartbeat_ivl_ms: Option<u32>,
    /// ZMQ_HEARTBEAT_TIMEOUT (ms): close a peer silent this long after a PING; default 30000.
    #[arg(long, env = "ZMQ_PROXY_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<u32>,
    /// ZMQ_HANDSHAKE_IVL (ms): close a connection whose handshake is not done by then; 0 = no limit; default 30000.
    #[arg(long, env = "ZMQ_PROXY_HANDSHAKE_IVL_MS")]
    pub handshake_ivl_ms: Option<u32>,
    /// Registration TTL in seconds (oslo zmq_target_expire); default 300.
    #[arg(long, env = "ZMQ_PROXY_TARGET_EXPIRE")]
    pub target_expire: Option<u64>,
    /// Registration refresh in seconds (oslo zmq_target_update); default 180.
    #[arg(long, env = "ZMQ_PROXY_TARGET_UPDATE")]
    pub target_update: Option<u64>,
    /// How long (ms) a message may wait for room at a receiver at its
    /// high-water mark (its source is not read meanwhile) before it is
    /// dropped; default 1000, 0 = drop at once.
    #[arg(long, env = "ZMQ_PROXY_SEND_TIMEOUT_MS")]
    pub send_timeout_ms: Option<u64>,
    /// How long (ms) a message for a receiver that is not connected (yet) is
    /// held for it before it is dropped as unroutable: a proxy that just
    /// started is found by clients before servers have connected to it;
    /// default 2000, 0 = drop at once.
    #[arg(long, env = "ZMQ_PROXY_UNROUTABLE_WAIT_MS")]
    pub unroutable_wait_ms: Option<u64>,
    /// Messages handled per socket per poll wake-up; default 256.
    #[arg(long, env = "ZMQ_PROXY_BATCH")]
    pub batch: Option<usize>,
    /// libzmq I/O threads; default 1.
    #[arg(long, env = "ZMQ_PROXY_IO_THREADS")]
    pub io_threads: Option<i32>,
    /// Log format.
    #[arg(long, value_enum, env = "ZMQ_PROXY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Debug logging (RUST_LOG, when set, wins).
    #[arg(short = 'd', long)]
    pub debug: bool,
}

/// Rewrites oslo's two-letter short flag `-lp` (argparse accepts it; clap
/// would read it as `-l p`, a log file named "p") to `--local-publisher`.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            if a == "-lp" {
                "--local-publisher".to_string()
            } else {
                a
            }
        })
        .collect()
}

/// A parsed INI file: section -> key -> value (keys lower-case).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ini {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ini {
    /// Parses oslo.config's INI dialect: `[section]`, `key = value` or
    /// `key: value`, `#`/`;` comments. Unknown sections and keys are kept and ignored.
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        let mut section = "DEFAULT".to_string();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                continue;
            }
            let split = line.find(['=', ':']);
            if let Some(pos) = split {
                let key = line[..pos].trim().to_ascii_lowercase();
                let value = line[pos + 1..].trim().to_string();
                ini.sections
                    .entry(section.clone())
                    .or_default()
                    .insert(key, value);
            }
        }
        ini
    }

    /// Value of `key` in `section`, falling back to `[DEFAULT]` as oslo does.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .or_else(|| self.sections.get("DEFAULT").and_then(|s| s.get(key)))
            .map(String::as_str)
    }
}

const PROXY_SECTION: &str = "zmq_proxy_opts";
const DRIVER_SECTION: &str = "oslo_messaging_zmq";

fn invalid(key: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A millisecond flag kept as libzmq's `int` option (at most `i32::MAX`).
fn millis_flag(key: &str, value: Option<u32>, default: i32) -> Result<i32, ConfigError> {
    match value {
        None => Ok(default),
        Some(ms) => {
            i32::try_from(ms).map_err(|_| invalid(key, &ms.to_string(), "at most 2147483647"))
        }
    }
}

fn ini_parse<T: std::str::FromStr>(
    ini: &Ini,
    section: &str,
    key: &str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match ini.get(section, key) {
        None => Ok(None),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| invalid(&format!("[{section}] {key}"), v, e)),
    }
}

fn ini_bool(ini: &Ini, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
    match ini.get(section, key) {
        None => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(Some(true)),
            "false" | "no" | "off" | "0" => Ok(Some(false)),
            _ => Err(invalid(&format!("[{section}] {key}"), v, "not a boolean")),
        },
    }
}

/// The matchmaker an oslo transport URL names: `zmq+redis://`, `zmq+sentinel://`
/// -> redis, `zmq+kubernetes://` -> kubernetes, `zmq+dummy://`/`zmq+static://`
/// -> static; plain `zmq://` names none.
pub fn matchmaker_from_url(url: &str) -> Result<Option<MatchmakerKind>, ConfigError> {
    let scheme = url
        .split("://")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !url.contains("://") || !(scheme == "zmq" || scheme.starts_with("zmq+")) {
        return Err(invalid(
            "url",
            url,
            "expected zmq://... or zmq+<matchmaker>://...",
        ));
    }
    match scheme.strip_prefix("zmq+") {
        None => Ok(None),
        Some("redis") | Some("sentinel") => Ok(Some(MatchmakerKind::Redis)),
        Some("kubernetes") => Ok(Some(MatchmakerKind::Kubernetes)),
        Some("dummy") | Some("static") => Ok(Some(MatchmakerKind::Static)),
        Some(other) => Err(invalid("url", url, format!("unknown matchmaker {other:?}"))),
    }
}

impl Settings {
    /// Resolves settings from `args` (including the program name), an
    /// environment lookup and a file reader (for `-c`).
    pub fn from_args<I, E, R>(args: I, env: E, read_file: R) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
        R: Fn(&std::path::Path) -> std::io::Result<String>,
    {
        // clap reads the real process environment for `env = ...`; to keep
        // this function pure, parse flags without env first, then fill the
        // gaps from `env` through a second parse of synthesized flags.
        let args = normalize_args(args);
        let cli = Cli::try_parse_from(with_env_as_flags(&args, &env))?;
        let ini = match &cli.config_file {
            Some(path) => Some(Ini::parse(&read_file(path).map_err(|source| {
                ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        Settings::resolve(cli, ini.as_ref().unwrap_or(&Ini::default()), &env)
    }

    /// Combines a parsed command line (flags and env already merged by clap)
    /// with the config file and the defaults.
    pub fn resolve<E: Fn(&str) -> Option<String>>(
        cli: Cli,
        ini: &Ini,
        env: &E,
    ) -> Result<Settings, ConfigError> {
        let host = match cli
            .host
            .or_else(|| ini.get(PROXY_SECTION, "host").map(str::to_string))
        {
            Some(h) => h,
            None => env("HOSTNAME").unwrap_or_else(|| "localhost".to_string()),
        };
        let ini_fe: Option<u16> = ini_parse(ini, PROXY_SECTION, "frontend_port")?;
        let ini_be: Option<u16> = ini_parse(ini, PROXY_SECTION, "backend_port")?;
        // oslo picks the single router when the config gives a frontend port
        // and no backend port.
        let ini_mode = match (ini_fe, ini_be) {
            (Some(fe), None | Some(0)) if fe != 0 => Some(RouterMode::SingleRouter),
            _ => match ini_bool(ini, DRIVER_SECTION, "use_router_proxy")? {
                Some(false) => Some(RouterMode::SingleRouter),
                _ => None,
            },
        };
        let url = cli
            .url
            .or_else(|| ini.get(PROXY_SECTION, "url").map(str::to_string));
        let url_matchmaker = match &url {
            Some(u) => matchmaker_from_url(u)?,
            None => None,
        };
        let ini_matchmaker = match ini.get(DRIVER_SECTION, "rpc_zmq_matchmaker") {
            None => None,
            Some("redis") | Some("sentinel") => Some(MatchmakerKind::Redis),
            Some("dummy") | Some("static") => Some(MatchmakerKind::Static),
            Some("kubernetes") => Some(MatchmakerKind::Kubernetes),
            Some(other) => {
                return Err(invalid(
                    "[oslo_messaging_zmq] rpc_zmq_matchmaker",
                    other,
                    "unknown",
                ))
            }
        };
        let pubsub = if cli.no_pubsub {
            false
        } else {
            cli.pubsub
                .or(ini_bool(ini, DRIVER_SECTION, "use_pub_sub")?)
                .unwrap_or(false)
        };
        let grace = cli.grace_period.unwrap_or(10.0);
        if !(grace.is_finite() && grace >= 0.0) {
            return Err(invalid("grace-period", &grace.to_string(), "must be >= 0"));
        }
        let defaults = SocketOptions::default();
        let sockets = SocketOptions {
            hwm: cli.hwm.unwrap_or(defaults.hwm),
            linger_ms: cli.linger_ms.unwrap_or(defaults.linger_ms),
            tcp_keepalive: cli
                .tcp_keepalive
                .or(ini_parse(ini, DRIVER_SECTION, "zmq_tcp_keepalive")?)
                .unwrap_or(defaults.tcp_keepalive),
            tcp_keepalive_idle: cli
                .tcp_keepalive_idle
                .or(ini_parse(ini, DRIVER_SECTION, "zmq_tcp_keepalive_idle")?)
                .unwrap_or(defaults.tcp_keepalive_idle),
            tcp_keepalive_intvl: cli
                .tcp_keepalive_intvl
                .or(ini_parse(
                    ini,
                    DRIVER_SECTION,
                    "zmq_tcp_keepalive_interval",
                )?)
                .unwrap_or(defaults.tcp_keepalive_intvl),
            tcp_keepalive_cnt: cli
                .tcp_keepalive_cnt
                .or(ini_parse(ini, DRIVER_SECTION, "zmq_tcp_keepalive_cnt")?)
                .unwrap_or(defaults.tcp_keepalive_cnt),
            immediate: cli.immediate.unwrap_or(defaults.immediate),
            heartbeat_ivl_ms: millis_flag(
                "heartbeat-ivl-ms",
                cli.heartbeat_ivl_ms,
                defaults.heartbeat_ivl_ms,
            )?,
            heartbeat_timeout_ms: millis_flag(
                "heartbeat-timeout-ms",
                cli.heartbeat_timeout_ms,
                defaults.heartbeat_timeout_ms,
            )?,
            handshake_ivl_ms: millis_flag(
                "handshake-ivl-ms",
                cli.handshake_ivl_ms,
                defaults.handshake_ivl_ms,
            )?,
        };
        let expire = cli
            .target_expire
            .or(ini_parse(ini, DRIVER_SECTION, "zmq_target_expire")?)
            .unwrap_or(300);
        let update = cli
            .target_update
            .or(ini_parse(ini, DRIVER_SECTION, "zmq_target_update")?)
            .unwrap_or(180);
        if update == 0 || update >= expire {
            return Err(invalid(
                "target-update",
                &update.to_string(),
                format!("must be > 0 and below target-expire ({expire})"),
            ));
        }
        let batch = cli.batch.unwrap_or(256);
        if batch == 0 {
            return Err(invalid("batch", "0", "must be at least 1"));
        }
        Ok(Settings {
            host,
            bind_address: cli
                .bind_address
                .or_else(|| {
                    ini.get(DRIVER_SECTION, "rpc_zmq_bind_address")
                        .map(str::to_string)
                })
                .filter(|a| a != "*")
                .unwrap_or_else(|| "0.0.0.0".to_string()),
            frontend_port: cli.frontend_port.or(ini_fe).unwrap_or(50001),
            backend_port: cli.backend_port.or(ini_be).unwrap_or(50002),
            publisher_port: cli
                .publisher_port
                .or(ini_parse(ini, PROXY_SECTION, "publisher_port")?)
                .unwrap_or(50003),
            mode: cli.mode.or(ini_mode).unwrap_or(RouterMode::DoubleRouter),
            engine: cli.engine.unwrap_or(Engine::Libzmq),
            local_publisher: cli
                .local_publisher
                .or(ini_bool(ini, PROXY_SECTION, "local_publisher")?)
                .unwrap_or(false),
            pubsub,
            ack_pub_sub: cli
                .ack_pub_sub
                .or(ini_bool(ini, PROXY_SECTION, "ack_pub_sub")?)
                .unwrap_or(false),
            url,
            matchmaker: cli
                .matchmaker
                .or(url_matchmaker)
                .or(ini_matchmaker)
                .unwrap_or(MatchmakerKind::Static),
            connect_publishers: cli
                .connect_publishers
                .into_iter()
                .filter(|e| !e.is_empty())
                .collect(),
            metrics_address: cli
                .metrics_address
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090))),
            grace_period: Duration::from_secs_f64(grace),
            drain_quiet: Duration::from_millis(cli.drain_quiet_ms.unwrap_or(1000)),
            sockets,
            liveness: Liveness {
                expire: Duration::from_secs(expire),
                update: Duration::from_secs(update),
            },
            batch,
            send_timeout: Duration::from_millis(cli.send_timeout_ms.unwrap_or(1000)),
            unroutable_wait: Duration::from_millis(cli.unroutable_wait_ms.unwrap_or(2000)),
            io_threads: cli.io_threads.unwrap_or(1).max(1),
            log_format: cli.log_format.unwrap_or(LogFormat::Text),
            debug: cli.debug || ini_bool(ini, "DEFAULT", "debug")?.unwrap_or(false),
            log_file: cli
                .log_file
                .or_else(|| ini.get("DEFAULT", "log_file").map(PathBuf::from)),
        })
    }
}

/// Environment variables clap would read, turned into flags placed before
/// the real arguments (so real flags, parsed later, win). This keeps
/// [`Settings::from_args`] independent of the process environment.
fn with_env_as_flags<E: Fn(&str) -> Option<String>>(args: &[String], env: &E) -> Vec<String> {
    use clap::CommandFactory;
    let mut out: Vec<String> = args.iter().take(1).cloned().collect();
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let Some(value) = var.to_str().and_then(env) else {
            continue;
        };
        let given_on_cli = args.iter().skip(1).any(|a| {
            a == &format!("--{long}")
                || a.starts_with(&format!("--{long}="))
                || arg
                    .get_short()
                    .is_some_and(|s| a.starts_with(&format!("-{s}")))
        });
        // Repeatable flags from the command line replace the env list rather than extend it.
        if given_on_cli {
            continue;
        }
        if arg.get_value_delimiter().is_some() {
            for v in value.split(',').filter(|v| !v.is_empty()) {
                out.push(format!("--{long}={v}"));
            }
        } else {
            out.push(format!("--{long}={value}"));
        }
    }
    out.extend(args.iter().skip(1).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str], env: &[(&str, &str)], file: &str) -> Result<Settings, ConfigError> {
        let args: Vec<String> = std::iter::once("zmq-proxy")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = file.to_string();
        Settings::from_args(args, |k| env.get(k).cloned(), move |_| Ok(file.clone()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = settings(&[], &[("HOSTNAME", "node1")], "").unwrap();
        assert_eq!(s.host, "node1");
        assert_eq!(s.bind_address, "0.0.0.0");
        assert_eq!(
            (s.frontend_port, s.backend_port, s.publisher_port),
            (50001, 50002, 50003)
        );
        assert_eq!(s.mode, RouterMode::DoubleRouter);
        assert_eq!(s.engine, Engine::Libzmq);
        assert!(!s.pubsub && !s.ack_pub_sub && !s.local_publisher);
        assert_eq!(s.matchmaker, MatchmakerKind::Static);
        assert_eq!(s.metrics_address, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.grace_period, Duration::from_secs(10));
        assert_eq!(s.liveness, Liveness::default());
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn oslo_flags_including_lp() {
        let s = settings(
            &[
                "-H",
                "h1",
                "-f",
                "0",
                "-b",
                "7002",
                "-p",
                "7003",
                "-lp",
                "-a",
                "-u",
                "zmq+redis://r:6379",
                "-d",
            ],
            &[],
            "",
        )
        .unwrap();
        assert_eq!(s.host, "h1");
        assert_eq!(
            (s.frontend_port, s.backend_port, s.publisher_port),
            (0, 7002, 7003)
        );
        assert!(s.local_publisher && s.ack_pub_sub && s.debug);
        assert_eq!(s.log_file, None);
        assert_eq!(s.matchmaker, MatchmakerKind::Redis);
        let s = settings(&["-l", "/tmp/x.log"], &[], "").unwrap();
        assert_eq!(s.log_file, Some(PathBuf::from("/tmp/x.log")));
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = "[zmq_proxy_opts]\nhost = filehost\nfrontend_port = 6001\nbackend_port = 6002\n\
                    [oslo_messaging_zmq]\nuse_pub_sub = true\nzmq_target_expire = 60\nzmq_target_update = 20\n";
        let s = settings(
            &["-c", "/etc/x.conf", "-H", "flaghost"],
            &[
                ("ZMQ_PROXY_HOST", "envhost"),
                ("ZMQ_PROXY_FRONTEND_PORT", "7001"),
            ],
            file,
        )
        .unwrap();
        assert_eq!(s.host, "flaghost");
        assert_eq!(s.frontend_port, 7001);
        assert_eq!(s.backend_port, 6002);
        assert!(s.pubsub);
        assert_eq!(s.liveness.expire, Duration::from_secs(60));
        let s = settings(
            &["-c", "x", "--no-pubsub"],
            &[("ZMQ_PROXY_PUBSUB", "true")],
            file,
        )
        .unwrap();
        assert!(!s.pubsub);
        let s = settings(&["-c", "x"], &[("ZMQ_PROXY_PUBSUB", "false")], file).unwrap();
        assert!(!s.pubsub, "env false beats file true");
    }

    #[test]
    fn env_values_and_lists() {
        let s = settings(
            &[],
            &[
                ("ZMQ_PROXY_MODE", "single-router"),
                ("ZMQ_PROXY_PUBSUB", "1"),
                ("ZMQ_PROXY_ACK_PUB_SUB", "true"),
                ("ZMQ_PROXY_METRICS_ADDRESS", "127.0.0.1:0"),
                ("ZMQ_PROXY_CONNECT_PUBLISHERS", "tcp://a:1,tcp://b:2"),
                ("ZMQ_PROXY_LINGER_MS", "-1"),
                ("ZMQ_PROXY_GRACE_PERIOD", "2.5"),
                ("ZMQ_PROXY_LOG_FORMAT", "json"),
                ("ZMQ_PROXY_MATCHMAKER", "kubernetes"),
            ],
            "",
        )
        .unwrap();
        assert_eq!(s.mode, RouterMode::SingleRouter);
        assert!(s.pubsub && s.ack_pub_sub);
        assert_eq!(s.connect_publishers, vec!["tcp://a:1", "tcp://b:2"]);
        assert_eq!(s.grace_period, Duration::from_millis(2500));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.matchmaker, MatchmakerKind::Kubernetes);
        let s = settings(
            &["--connect-publisher", "tcp://c:3"],
            &[("ZMQ_PROXY_CONNECT_PUBLISHERS", "tcp://a:1")],
            "",
        )
        .unwrap();
        assert_eq!(s.connect_publishers, vec!["tcp://c:3"]);
    }

    #[test]
    fn heartbeats_default_on_and_can_be_tuned_or_turned_off() {
        let s = settings(&[], &[], "").unwrap();
        assert_eq!(
            (s.sockets.heartbeat_ivl_ms, s.sockets.heartbeat_timeout_ms),
            (10_000, 30_000)
        );
        let s = settings(
            &["--heartbeat-ivl-ms", "0"],
            &[("ZMQ_PROXY_HEARTBEAT_TIMEOUT_MS", "500")],
            "",
        )
        .unwrap();
        assert_eq!(
            (s.sockets.heartbeat_ivl_ms, s.sockets.heartbeat_timeout_ms),
            (0, 500)
        );
        assert!(settings(&["--heartbeat-ivl-ms", "3000000000"], &[], "").is_err());
        assert!(settings(&["--heartbeat-ivl-ms", "-5"], &[], "").is_err());
        assert_eq!(s.sockets.handshake_ivl_ms, 30_000);
        let s = settings(&["--handshake-ivl-ms", "250"], &[], "").unwrap();
        assert_eq!(s.sockets.handshake_ivl_ms, 250);
    }

    #[test]
    fn the_engine_comes_from_the_flag_or_the_environment() {
        let s = settings(&["--engine", "native"], &[], "").unwrap();
        assert_eq!(s.engine, Engine::Native);
        let s = settings(&[], &[("ZMQ_PROXY_ENGINE", "native")], "").unwrap();
        assert_eq!(s.engine, Engine::Native);
        let s = settings(
            &["--engine", "libzmq"],
            &[("ZMQ_PROXY_ENGINE", "native")],
            "",
        )
        .unwrap();
        assert_eq!(s.engine, Engine::Libzmq);
        assert!(settings(&["--engine", "turbo"], &[], "").is_err());
    }

    #[test]
    fn oslo_single_router_rule_from_the_config_file() {
        let s = settings(
            &["-c", "x"],
            &[],
            "[zmq_proxy_opts]\nfrontend_port = 6001\n",
        )
        .unwrap();
        assert_eq!(s.mode, RouterMode::SingleRouter);
        let s = settings(
            &["-c", "x", "--mode", "double-router"],
            &[],
            "[zmq_proxy_opts]\nfrontend_port = 6001\n",
        )
        .unwrap();
        assert_eq!(s.mode, RouterMode::DoubleRouter);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(settings(&["-f", "70000"], &[], "").is_err());
        assert!(settings(&["-u", "http://x"], &[], "").is_err());
        assert!(settings(&["-u", "zmq+nope://x"], &[], "").is_err());
        assert!(settings(&["--target-expire", "10", "--target-update", "20"], &[], "").is_err());
        assert!(settings(&["-c", "x"], &[], "[zmq_proxy_opts]\nfrontend_port = abc\n").is_err());
        assert!(settings(&["--batch", "0"], &[], "").is_err());
    }

    #[test]
    fn url_schemes() {
        assert_eq!(matchmaker_from_url("zmq://h:1/").unwrap(), None);
        assert_eq!(
            matchmaker_from_url("zmq+sentinel://h:1").unwrap(),
            Some(MatchmakerKind::Redis)
        );
        assert_eq!(
            matchmaker_from_url("zmq+dummy://").unwrap(),
            Some(MatchmakerKind::Static)
        );
    }

    #[test]
    fn ini_dialect() {
        let ini = Ini::parse("# c\n[DEFAULT]\ndebug = true\n[a]\nKey: v \n; x\n");
        assert_eq!(ini.get("a", "key"), Some("v"));
        assert_eq!(ini.get("a", "debug"), Some("true"));
        assert_eq!(ini.get("b", "key"), None);
    }
}
