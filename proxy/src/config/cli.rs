//! The command line: clap's view of the flags and their `ZMQ_PROXY_*`
//! environment variables, plus the two rewrites clap needs to read oslo's
//! flags and to stay independent of the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::Parser;

use super::{Engine, LogFormat, MatchmakerKind, RouterMode};

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
    // This text is the flag's --help line, where the brackets name INI
    // sections as users write them; they are not links.
    #[allow(rustdoc::broken_intra_doc_links)]
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
    /// Forwarding engine: native (default; ZMTP spoken by the proxy itself,
    /// --hwm counted as KiB per receiver) or libzmq (the fallback).
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
    /// CURVE: the proxy's Z85 secret key (40 characters; its public key is
    /// derived); with --curve-authorized-keys, makes the frontend, backend
    /// and publisher CURVE servers (both engines; not with --local-publisher).
    /// Read at start only.
    #[arg(long, env = "ZMQ_PROXY_CURVE_SECRET_KEY_FILE")]
    pub curve_secret_key_file: Option<PathBuf>,
    /// CURVE: the peers' Z85 public keys allowed to connect, one per line,
    /// each optionally followed by the identities (`x`) or identity
    /// prefixes (`x*`) it may use; re-read when it changes.
    #[arg(long, env = "ZMQ_PROXY_CURVE_AUTHORIZED_KEYS")]
    pub curve_authorized_keys: Option<PathBuf>,
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

/// Environment variables clap would read, turned into flags placed before
/// the real arguments (so real flags, parsed later, win). This keeps
/// [`Settings::from_args`] independent of the process environment.
pub(super) fn with_env_as_flags<E: Fn(&str) -> Option<String>>(
    args: &[String],
    env: &E,
) -> Vec<String> {
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
