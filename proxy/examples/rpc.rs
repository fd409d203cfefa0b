//! `rpc`: try the RPC library against running proxies from a shell.
//!
//! ```text
//! cargo run -p zmq-proxy --example rpc -- serve  --topic demo
//! cargo run -p zmq-proxy --example rpc -- call   --topic demo --method echo --args '{"x": 1}'
//! cargo run -p zmq-proxy --example rpc -- cast   --topic demo --method echo
//! cargo run -p zmq-proxy --example rpc -- fanout --topic demo --method echo
//! cargo run -p zmq-proxy --example rpc -- notify --topic notifications --priority info --message '{"event_type": "x"}'
//! ```
//! Proxies come from `--proxy host:frontend[:backend[:publisher]]` (static
//! matchmaker; default the proxy defaults 127.0.0.1:50001:50002:50003) or
//! from Redis with `--url zmq+redis://host:port`. Servers are found through
//! the matchmaker's registry: the static matchmaker's lives in the process,
//! so a `serve` and a `call` in two processes need a shared one (`--url`
//! with the Redis the proxies and servers register in); with `--proxy`
//! alone, `call` answers "no server registered". The server answers
//! `echo` (returns its args), `fail` (raises ValueError) and `sleep`
//! (`{"ms": N}`), and prints every request it gets.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
use zmq_proxy::matchmaker::redis::RedisMatchmaker;
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};
use zmq_proxy::rpc::{
    ClientConfig, Incoming, RemoteError, Request, RpcClient, RpcServer, SendOptions, ServerConfig,
};

#[derive(Parser)]
#[command(about = "Call, cast, fanout, notify and serve through zmq-proxy")]
struct Cli {
    /// Proxy `host:frontend[:backend[:publisher]]` (static matchmaker); repeatable.
    #[arg(long = "proxy")]
    proxies: Vec<String>,
    /// oslo transport URL of a Redis matchmaker, e.g. zmq+redis://127.0.0.1:6379.
    #[arg(short = 'u', long)]
    url: Option<String>,
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

#[derive(Subcommand)]
enum Cmd {
    /// Serve a target until Ctrl-C.
    Serve {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        server: Option<String>,
    },
    /// Call a method and print the result.
    Call {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        method: String,
        /// Keyword arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Number of calls.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Cast a method (no reply).
    Cast {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        method: String,
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// Cast to every server of a topic.
    Fanout {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        method: String,
        #[arg(long, default_value = "{}")]
        args: String,
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
    })
}

fn target(topic: &str, server: &Option<String>) -> Target {
    match server {
        Some(s) => Target::server(topic, s),
        None => Target::topic(topic),
    }
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
    let matchmaker: Arc<dyn Matchmaker> = match &cli.url {
        Some(url) => Arc::new(RedisMatchmaker::from_url(url)?),
        None => {
            let list = if cli.proxies.is_empty() {
                vec!["127.0.0.1:50001:50002:50003".to_string()]
            } else {
                cli.proxies.clone()
            };
            let proxies = list
                .iter()
                .map(|p| parse_proxy(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Arc::new(StaticMatchmaker::with_proxies(proxies))
        }
    };
    let client_config = ClientConfig {
        host: cli.host.clone(),
        acks: cli.acks,
        pubsub: cli.pubsub,
        ack_timeout: Duration::from_secs_f64(cli.ack_timeout),
        retries: cli.retries,
        ..ClientConfig::default()
    };
    match &cli.command {
        Cmd::Serve { topic, server } => {
            let config = ServerConfig {
                host: cli.host.clone(),
                acks: cli.acks,
                pubsub: cli.pubsub,
                ..ServerConfig::new(target(topic, server))
            };
            let server = RpcServer::start(matchmaker, config, handle).await?;
            println!("serving as {} (Ctrl-C stops)", server.identity());
            tokio::signal::ctrl_c().await?;
            server.stop().await;
        }
        Cmd::Call {
            topic,
            server,
            method,
            args,
            timeout,
            count,
        } => {
            let client = RpcClient::connect(matchmaker, client_config).await?;
            client.wait_for_proxies(1, Duration::from_secs(5)).await;
            let request = Request::new(method, json_arg(args)?);
            let options = SendOptions {
                timeout: Some(Duration::from_secs_f64(*timeout)),
                retries: None,
            };
            for _ in 0..*count {
                let started = std::time::Instant::now();
                let result = client
                    .call_with(&target(topic, server), &request, options)
                    .await;
                match result {
                    Ok(v) => println!("{v} ({:.1?})", started.elapsed()),
                    Err(e) => println!("error: {e} ({:.1?})", started.elapsed()),
                }
            }
            println!("{:?}", client.stats());
            client.close().await;
        }
        Cmd::Cast {
            topic,
            server,
            method,
            args,
        } => {
            let client = RpcClient::connect(matchmaker, client_config).await?;
            client.wait_for_proxies(1, Duration::from_secs(5)).await;
            client
                .cast(
                    &target(topic, server),
                    &Request::new(method, json_arg(args)?),
                )
                .await?;
            println!("cast sent{}", if cli.acks { " and acked" } else { "" });
            client.close().await;
        }
        Cmd::Fanout {
            topic,
            method,
            args,
        } => {
            let client = RpcClient::connect(matchmaker, client_config).await?;
            client.wait_for_proxies(1, Duration::from_secs(5)).await;
            let n = client
                .fanout(topic, &Request::new(method, json_arg(args)?))
                .await?;
            println!("fanout sent as {n} message(s)");
            client.close().await;
        }
        Cmd::Notify {
            topic,
            priority,
            message,
        } => {
            let client = RpcClient::connect(matchmaker, client_config).await?;
            client.wait_for_proxies(1, Duration::from_secs(5)).await;
            let n = client
                .notify(topic, priority, &json!({}), &json_arg(message)?)
                .await?;
            println!("notification sent as {n} message(s)");
            client.close().await;
        }
    }
    Ok(())
}
