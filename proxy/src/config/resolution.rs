//! Resolution: the parsed command line, the config file and the defaults
//! merged into [`Settings`], with every value checked once here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::cli::{normalize_args, with_env_as_flags, Cli};
use super::ini::{Ini, DRIVER_SECTION, PROXY_SECTION};
use super::{
    ConfigError, CurveFiles, Engine, LogFormat, MatchmakerKind, RouterMode, Settings, SocketOptions,
};
use crate::matchmaker::url::{TransportUrl, UrlError, UrlScheme};
use crate::matchmaker::Liveness;

/// A millisecond flag kept as libzmq's `int` option (at most `i32::MAX`).
fn millis_flag(key: &str, value: Option<u32>, default: i32) -> Result<i32, ConfigError> {
    match value {
        None => Ok(default),
        Some(ms) => i32::try_from(ms)
            .map_err(|_| ConfigError::invalid(key, &ms.to_string(), "at most 2147483647")),
    }
}

/// The matchmaker an oslo transport URL names: `zmq+redis://`, `zmq+sentinel://`
/// -> redis, `zmq+kubernetes://` -> kubernetes, `zmq+dummy://`/`zmq+static://`
/// -> static; plain `zmq://` names none.
pub fn matchmaker_from_url(url: &str) -> Result<Option<MatchmakerKind>, ConfigError> {
    let scheme = TransportUrl::parse(url)
        .map_err(|e| ConfigError::invalid("url", url, e))?
        .scheme();
    match scheme {
        UrlScheme::Zmq => Ok(None),
        UrlScheme::ZmqRedis | UrlScheme::ZmqSentinel => Ok(Some(MatchmakerKind::Redis)),
        UrlScheme::ZmqKubernetes => Ok(Some(MatchmakerKind::Kubernetes)),
        UrlScheme::ZmqStatic => Ok(Some(MatchmakerKind::Static)),
        // The Redis backend takes a bare `redis://`; a transport URL is zmq.
        UrlScheme::Redis => Err(ConfigError::invalid("url", url, UrlError::NotTransportUrl)),
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
        let ini_fe: Option<u16> = ini.parse_value(PROXY_SECTION, "frontend_port")?;
        let ini_be: Option<u16> = ini.parse_value(PROXY_SECTION, "backend_port")?;
        // oslo picks the single router when the config gives a frontend port
        // and no backend port.
        let ini_mode = match (ini_fe, ini_be) {
            (Some(fe), None | Some(0)) if fe != 0 => Some(RouterMode::SingleRouter),
            _ => match ini.bool(DRIVER_SECTION, "use_router_proxy")? {
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
                return Err(ConfigError::invalid(
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
                .or(ini.bool(DRIVER_SECTION, "use_pub_sub")?)
                .unwrap_or(false)
        };
        let grace = cli.grace_period.unwrap_or(10.0);
        if !(grace.is_finite() && grace >= 0.0) {
            return Err(ConfigError::invalid(
                "grace-period",
                &grace.to_string(),
                "must be >= 0",
            ));
        }
        let defaults = SocketOptions::default();
        let sockets = SocketOptions {
            hwm: cli.hwm.unwrap_or(defaults.hwm),
            linger_ms: cli.linger_ms.unwrap_or(defaults.linger_ms),
            tcp_keepalive: cli
                .tcp_keepalive
                .or(ini.parse_value(DRIVER_SECTION, "zmq_tcp_keepalive")?)
                .unwrap_or(defaults.tcp_keepalive),
            tcp_keepalive_idle: cli
                .tcp_keepalive_idle
                .or(ini.parse_value(DRIVER_SECTION, "zmq_tcp_keepalive_idle")?)
                .unwrap_or(defaults.tcp_keepalive_idle),
            tcp_keepalive_intvl: cli
                .tcp_keepalive_intvl
                .or(ini.parse_value(DRIVER_SECTION, "zmq_tcp_keepalive_interval")?)
                .unwrap_or(defaults.tcp_keepalive_intvl),
            tcp_keepalive_cnt: cli
                .tcp_keepalive_cnt
                .or(ini.parse_value(DRIVER_SECTION, "zmq_tcp_keepalive_cnt")?)
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
            .or(ini.parse_value(DRIVER_SECTION, "zmq_target_expire")?)
            .unwrap_or(300);
        let update = cli
            .target_update
            .or(ini.parse_value(DRIVER_SECTION, "zmq_target_update")?)
            .unwrap_or(180);
        if update == 0 || update >= expire {
            return Err(ConfigError::invalid(
                "target-update",
                &update.to_string(),
                format!("must be > 0 and below target-expire ({expire})"),
            ));
        }
        let engine = cli.engine.unwrap_or(Engine::Native);
        let local_publisher = cli
            .local_publisher
            .or(ini.bool(PROXY_SECTION, "local_publisher")?)
            .unwrap_or(false);
        let curve = curve_files(
            cli.curve_secret_key_file.or_else(|| {
                ini.get(PROXY_SECTION, "curve_secret_key_file")
                    .map(PathBuf::from)
            }),
            cli.curve_authorized_keys.or_else(|| {
                ini.get(PROXY_SECTION, "curve_authorized_keys")
                    .map(PathBuf::from)
            }),
            local_publisher,
        )?;
        let batch = cli.batch.unwrap_or(256);
        if batch == 0 {
            return Err(ConfigError::invalid("batch", "0", "must be at least 1"));
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
                .or(ini.parse_value(PROXY_SECTION, "publisher_port")?)
                .unwrap_or(50003),
            mode: cli.mode.or(ini_mode).unwrap_or(RouterMode::DoubleRouter),
            engine,
            local_publisher,
            pubsub,
            ack_pub_sub: cli
                .ack_pub_sub
                .or(ini.bool(PROXY_SECTION, "ack_pub_sub")?)
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
            debug: cli.debug || ini.bool("DEFAULT", "debug")?.unwrap_or(false),
            log_file: cli
                .log_file
                .or_else(|| ini.get("DEFAULT", "log_file").map(PathBuf::from)),
            curve,
        })
    }
}

/// The CURVE files, when both are given and the proxy can use them.
fn curve_files(
    secret_key_file: Option<PathBuf>,
    authorized_keys: Option<PathBuf>,
    local_publisher: bool,
) -> Result<Option<CurveFiles>, ConfigError> {
    let (secret_key_file, authorized_keys) = match (secret_key_file, authorized_keys) {
        (None, None) => return Ok(None),
        (Some(secret), Some(authorized)) => (secret, authorized),
        (Some(secret), None) => {
            return Err(ConfigError::invalid(
                "curve-secret-key-file",
                &secret.display().to_string(),
                "CURVE also needs --curve-authorized-keys (ZMQ_PROXY_CURVE_AUTHORIZED_KEYS)",
            ))
        }
        (None, Some(authorized)) => {
            return Err(ConfigError::invalid(
                "curve-authorized-keys",
                &authorized.display().to_string(),
                "CURVE also needs --curve-secret-key-file (ZMQ_PROXY_CURVE_SECRET_KEY_FILE)",
            ))
        }
    };
    let refuse = |reason: &str| {
        Err(ConfigError::invalid(
            "curve-secret-key-file",
            &secret_key_file.display().to_string(),
            reason,
        ))
    };
    if local_publisher {
        return refuse("a local publisher cannot use CURVE yet (its SUB would need client keys)");
    }
    Ok(Some(CurveFiles {
        secret_key_file,
        authorized_keys,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        assert_eq!(s.engine, Engine::Native);
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
        let s = settings(&[], &[("ZMQ_PROXY_ENGINE", "libzmq")], "").unwrap();
        assert_eq!(s.engine, Engine::Libzmq);
        let s = settings(
            &["--engine", "native"],
            &[("ZMQ_PROXY_ENGINE", "libzmq")],
            "",
        )
        .unwrap();
        assert_eq!(s.engine, Engine::Native);
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
    fn curve_needs_both_files_and_runs_on_both_engines_but_not_the_local_publisher() {
        let s = settings(&[], &[], "").unwrap();
        assert_eq!(s.curve, None, "plain (NULL) by default");
        let s = settings(
            &["--engine", "libzmq", "--curve-secret-key-file", "/k/secret"],
            &[("ZMQ_PROXY_CURVE_AUTHORIZED_KEYS", "/k/authorized")],
            "",
        )
        .unwrap();
        assert_eq!(
            s.curve,
            Some(CurveFiles {
                secret_key_file: PathBuf::from("/k/secret"),
                authorized_keys: PathBuf::from("/k/authorized"),
            })
        );
        let s = settings(
            &["-c", "x"],
            &[("ZMQ_PROXY_ENGINE", "libzmq")],
            "[zmq_proxy_opts]\ncurve_secret_key_file = /s\ncurve_authorized_keys = /a\n",
        )
        .unwrap();
        assert!(s.curve.is_some(), "from the config file");
        let one = settings(
            &["--engine", "libzmq", "--curve-secret-key-file", "/s"],
            &[],
            "",
        );
        assert!(
            one.unwrap_err()
                .to_string()
                .contains("--curve-authorized-keys"),
            "only one of the two"
        );
        let one = settings(
            &["--engine", "libzmq", "--curve-authorized-keys", "/a"],
            &[],
            "",
        );
        assert!(one
            .unwrap_err()
            .to_string()
            .contains("--curve-secret-key-file"));
        let native = settings(
            &[
                "--curve-secret-key-file",
                "/s",
                "--curve-authorized-keys",
                "/a",
            ],
            &[],
            "",
        );
        assert!(
            native.is_ok_and(|s| s.engine == Engine::Native && s.curve.is_some()),
            "the native engine (the default) serves CURVE"
        );
        let lp = settings(
            &[
                "--engine",
                "libzmq",
                "-lp",
                "--curve-secret-key-file",
                "/s",
                "--curve-authorized-keys",
                "/a",
            ],
            &[],
            "",
        );
        assert!(lp.is_err());
        for engine in ["native", "libzmq"] {
            let lp = settings(
                &[
                    "--engine",
                    engine,
                    "-lp",
                    "--curve-secret-key-file",
                    "/s",
                    "--curve-authorized-keys",
                    "/a",
                ],
                &[],
                "",
            );
            assert!(
                lp.unwrap_err().to_string().contains("local publisher"),
                "{engine}: the local publisher's SUB has no client keys"
            );
        }
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
}
