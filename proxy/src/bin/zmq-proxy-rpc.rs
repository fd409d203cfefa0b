//! `zmq-proxy-rpc`: the RPC library from a shell (and in the proxy image,
//! for clients and servers as pods): serve, call, cast, fanout, notify.
//!
//! ```text
//! cargo run -p zmq-proxy --bin zmq-proxy-rpc -- serve  --topic demo
//! cargo run -p zmq-proxy --bin zmq-proxy-rpc -- call   --topic demo --method echo --args '{"x": 1}'
//! cargo run -p zmq-proxy --bin zmq-proxy-rpc -- cast   --topic demo --method echo
//! cargo run -p zmq-proxy --bin zmq-proxy-rpc -- fanout --topic demo --method echo
//! cargo run -p zmq-proxy --bin zmq-proxy-rpc -- notify --topic notifications --priority info --message '{"event_type": "x"}'
//! ```
//! Proxies come from `--proxy host:frontend[:backend[:publisher]]` (static
//! matchmaker; default the proxy defaults 127.0.0.1:50001:50002:50003),
//! from Redis with `--url zmq+redis://host:port`, or from Kubernetes with
//! `--kubernetes-service NAME` (a ZmqProxy's headless Service; in a pod, the
//! ServiceAccount needs the matchmaker's RPC client or server Role).
//! With CURVE proxies, `--curve-secret-key-file` gives this side's key;
//! each proxy's public key comes from the matchmaker (Kubernetes publishes
//! it) unless `--curve-server-key` pins one. Servers are found through
//! the matchmaker's registry: the static matchmaker's lives in the process,
//! so a `serve` and a `call` in two processes need a shared one (`--url`
//! with the Redis the proxies and servers register in); with `--proxy`
//! alone, `call` answers "no server registered". The server answers
//! `echo` (returns its args), `fail` (raises ValueError) and `sleep`
//! (`{"ms": N}`), and prints every request it gets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use zmq_proxy::curve::{PublicKey, SecretKey};
use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
use zmq_proxy::matchmaker::kubernetes::{KubernetesConfig, KubernetesMatchmaker};
use zmq_proxy::matchmaker::redis::RedisMatchmaker;
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};
use zmq_proxy::rpc::{
    ClientConfig, CurveClient, Incoming, RemoteError, Request, RpcClient, RpcServer, SendOptions,
    ServerConfig,
};

#[derive(Parser)]
#[command(about = "Call, cast, fanout, notify and serve through zmq-proxy")]
struct Cli {
    /// Proxy `host:frontend[:backend[:publisher]]` (static matchmaker); repeatable.
    #[arg(long = "proxy")]
    proxies: Vec<String>,
    /// oslo transport URL of a Redis matchmaker, e.g. zmq+redis://127.0.0.1:6379.
    #[arg(short = 'u', long, conflicts_with = "kubernetes_service")]
    url: Option<String>,
    /// Find proxies (and register servers) in Kubernetes, under this
    /// ZmqProxy's headless Service; credentials in-cluster or from KUBECONFIG.
    #[arg(long, conflicts_with = "proxies")]
    kubernetes_service: Option<String>,
    /// Namespace of --kubernetes-service (default: the pod's, or the
    /// kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// CURVE: file with this client's or server's Z85 secret key (its
    /// public key must be in the proxies' authorized keys).
    #[arg(long, env = "ZMQ_PROXY_RPC_CURVE_SECRET_KEY_FILE")]
    curve_secret_key_file: Option<PathBuf>,
    /// CURVE: the proxies' Z85 public key, pinned for all proxies; default:
    /// each proxy's key as the matchmaker lists it.
    #[arg(long, requires = "curve_secret_key_file")]
    curve_server_key: Option<String>,
    /// Host part of our identities (oslo rpc_zmq_host).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Acks and retries (oslo rpc_use_acks).
    #[arg(long)]
    acks: bool,
    /// Fanout/notify over the proxies' PUB sockets (oslo use_pub_sub).
    #[arg(long)]
    pubsub: bool,
    /// First ack timeout in seconds.
    #[arg(long, default_value_t = 15.0)]
    ack_timeout: f64,
    /// Retries with acks on (0 = none).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    #[command(subcommand)]
    command: Cmd,
}

/// Where a request goes: a topic, optionally one server of it.
#[derive(Args)]
struct TargetArgs {
    #[arg(long)]
    topic: String,
    /// One server of the topic (oslo `server=`); default: round-robin.
    #[arg(long)]
    server: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match &self.server {
            Some(s) => Target::server(&self.topic, s),
            None => Target::topic(&self.topic),
        }
    }
}

/// A method and its keyword arguments.
#[derive(Args)]
struct MethodArgs {
    #[arg(long)]
    method: String,
    /// Keyword arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
}

impl MethodArgs {
    fn request(&self) -> anyhow::Result<Request> {
        Ok(Request::new(&self.method, json_arg(&self.args)?))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a target until Ctrl-C.
    Serve {
        #[command(flatten)]
        to: TargetArgs,
    },
    /// Call a method and print the result.
    Call {
        #[command(flatten)]
        to: TargetArgs,
        #[command(flatten)]
        method: MethodArgs,
        /// Seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Number of calls.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Cast a method (no reply).
    Cast {
        #[command(flatten)]
        to: TargetArgs,
        #[command(flatten)]
        method: MethodArgs,
    },
    /// Cast to every server of a topic.
    Fanout {
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        method: MethodArgs,
    },
    /// Send a notification to `{topic}.{priority}`.
    Notify {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "info")]
        priority: String,
        #[arg(long, default_value = "{}")]
        message: String,
    },
}

fn parse_proxy(s: &str) -> anyhow::Result<ProxyAddresses> {
    let parts: Vec<&str> = s.split(':').collect();
    let port = |i: usize| -> anyhow::Result<Option<u16>> {
        parts
            .get(i)
            .map(|p| p.parse::<u16>().with_context(|| format!("port in {s:?}")))
            .transpose()
    };
    let Some(frontend_port) = port(1)? else {
        bail!("--proxy wants host:frontend[:backend[:publisher]], got {s:?}");
    };
    Ok(ProxyAddresses {
        host: parts[0].to_string(),
        frontend_port,
        backend_port: port(2)?,
        publisher_port: port(3)?,
        curve_key: None,
    })
}

/// The matchmaker the flags name: Redis, Kubernetes, or a static list.
fn matchmaker(cli: &Cli) -> anyhow::Result<Arc<dyn Matchmaker>> {
    if let Some(url) = &cli.url {
        return Ok(Arc::new(RedisMatchmaker::from_url(url)?));
    }
    if let Some(service) = &cli.kubernetes_service {
        return Ok(Arc::new(KubernetesMatchmaker::with_config(
            KubernetesConfig {
                namespace: cli.namespace.clone(),
                service_name: Some(service.clone()),
                ..KubernetesConfig::default()
            },
        )));
    }
    let list = if cli.proxies.is_empty() {
        vec!["127.0.0.1:50001:50002:50003".to_string()]
    } else {
        cli.proxies.clone()
    };
    let proxies = list
        .iter()
        .map(|p| parse_proxy(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(StaticMatchmaker::with_proxies(proxies)))
}

/// The CURVE keys the flags name, if any.
fn curve(cli: &Cli) -> anyhow::Result<Option<CurveClient>> {
    let Some(path) = &cli.curve_secret_key_file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = SecretKey::from_z85(&text).with_context(|| format!("{}", path.display()))?;
    Ok(Some(match &cli.curve_server_key {
        Some(z85) => CurveClient::new(
            secret,
            PublicKey::from_z85(z85).context("--curve-server-key")?,
        ),
        None => CurveClient::with_matchmaker_keys(secret),
    }))
}

fn json_arg(s: &str) -> anyhow::Result<Value> {
    serde_json::from_str(s).with_context(|| format!("not JSON: {s}"))
}

async fn handle(inc: Incoming) -> Result<Value, RemoteError> {
    println!(
        "{} {} from {}: {}",
        inc.msg_type, inc.message_id, inc.sender, inc.message
    );
    match inc.method() {
        Some("fail") => Err(RemoteError::new("ValueError", "failed on request")),
        Some("sleep") => {
            let ms = inc.args()["ms"].as_u64().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept_ms": ms}))
        }
        _ => Ok(inc.args().clone()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let matchmaker = matchmaker(&cli)?;
    let curve = curve(&cli)?;
    let client_config = ClientConfig {
        host: cli.host.clone(),
        acks: cli.acks,
        pubsub: cli.pubsub,
        ack_timeout: Duration::from_secs_f64(cli.ack_timeout),
        retries: cli.retries,
        curve: curve.clone(),
        ..ClientConfig::default()
    };
    // Every command but serve is a client that needs a proxy first.
    let client = async || -> anyhow::Result<RpcClient> {
        let client = RpcClient::connect(Arc::clone(&matchmaker), client_config.clone()).await?;
        client.wait_for_proxies(1, Duration::from_secs(5)).await;
        Ok(client)
    };
    match &cli.command {
        Cmd::Serve { to } => {
            let config = ServerConfig {
                host: cli.host.clone(),
                acks: cli.acks,
                pubsub: cli.pubsub,
                curve: curve.clone(),
                ..ServerConfig::new(to.target())
            };
            let server = RpcServer::start(Arc::clone(&matchmaker), config, handle).await?;
            println!("serving as {} (Ctrl-C stops)", server.identity());
            tokio::signal::ctrl_c().await?;
            server.stop().await;
        }
        Cmd::Call {
            to,
            method,
            timeout,
            count,
        } => {
            let client = client().await?;
            let request = method.request()?;
            let options = SendOptions {
                timeout: Some(Duration::from_secs_f64(*timeout)),
                retries: None,
            };
            for _ in 0..*count {
                let started = std::time::Instant::now();
                match client.call_with(&to.target(), &request, options).await {
                    Ok(v) => println!("{v} ({:.1?})", started.elapsed()),
                    Err(e) => println!("error: {e} ({:.1?})", started.elapsed()),
                }
            }
            println!("{:?}", client.stats());
            client.close().await;
        }
        Cmd::Cast { to, method } => {
            let client = client().await?;
            client.cast(&to.target(), &method.request()?).await?;
            println!("cast sent{}", if cli.acks { " and acked" } else { "" });
            client.close().await;
        }
        Cmd::Fanout { topic, method } => {
            let client = client().await?;
            let n = client.fanout(topic, &method.request()?).await?;
            println!("fanout sent as {n} message(s)");
            client.close().await;
        }
        Cmd::Notify {
            topic,
            priority,
            message,
        } => {
            let client = client().await?;
            let n = client
                .notify(topic, priority, &json!({}), &json_arg(message)?)
                .await?;
            println!("notification sent as {n} message(s)");
            client.close().await;
        }
    }
    Ok(())
}
