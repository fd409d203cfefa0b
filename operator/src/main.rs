//! `zmq-proxy-operator`: prints the CRD or RBAC (`crd`, `rbac`), or runs the
//! operator (`run`, the default). This file only turns flags into
//! [`manager::Settings`], starts the metrics server and turns SIGTERM/SIGINT
//! into a shutdown request; [`manager::run`] does the rest (leader election,
//! controllers, discovery refresh, draining and releasing the Lease).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Client;
use tokio::sync::watch;

use zmq_proxy_operator::controller::Tuning;
use zmq_proxy_operator::manager::{self, Election, Settings};
use zmq_proxy_operator::metrics::{self, Metrics};
use zmq_proxy_operator::{check, crd, rbac};

#[derive(Parser, Debug)]
#[command(
    name = "zmq-proxy-operator",
    version,
    about = "Reconciles ZmqProxy resources into proxy Deployments"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ZmqProxy CustomResourceDefinition as YAML.
    Crd,
    /// Print the operator's RBAC rules as YAML.
    Rbac,
    /// Run the operator (the default).
    Run,
    /// GET an http:// URL until it answers 2xx (what the chart's `helm
    /// test` pod runs); exits non-zero if it never does.
    Check {
        /// The URL, e.g. http://zp-zmq-proxy-operator-metrics.ns.svc:8080/healthz.
        url: String,
        /// Attempts before giving up.
        #[arg(long, default_value_t = 10)]
        attempts: u32,
        /// Seconds between attempts.
        #[arg(long, default_value_t = 2)]
        delay_seconds: u64,
        /// Seconds one attempt may take.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespaces to watch, comma-separated; empty = all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Run without leader election (a single replica).
    #[arg(long, env = "LEADER_ELECTION_DISABLED")]
    no_leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "zmq-proxy-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a Lease stays valid without renewal; bounds the hand-over
    /// after a crash (a clean shutdown hands over at once).
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Identity in the Lease (default: POD_NAME, else hostname + pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between API discovery refreshes (new CRDs, upgrades).
    #[arg(long, env = "DISCOVERY_INTERVAL_SECONDS", default_value_t = 30)]
    discovery_interval_seconds: u64,
    /// Reconciles running at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Milliseconds a trigger waits for more triggers of the same object.
    #[arg(long, env = "DEBOUNCE_MS", default_value_t = 100)]
    debounce_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd::crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Some(Command::Rbac) => {
            print!(
                "{}",
                rbac::rules_yaml().context("rendering the RBAC rules")?
            );
            Ok(())
        }
        Some(Command::Check {
            url,
            attempts,
            delay_seconds,
            timeout_seconds,
        }) => {
            let code = check::check(
                &url,
                attempts,
                Duration::from_secs(delay_seconds),
                Duration::from_secs(timeout_seconds),
            )
            .await
            .with_context(|| format!("GET {url}"))?;
            println!("{url}: HTTP {code}");
            Ok(())
        }
        Some(Command::Run) | None => run(cli.run).await,
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

impl RunArgs {
    /// The manager's settings these flags (and the pod's env) describe.
    fn settings(&self) -> Settings {
        let election = (!self.no_leader_election).then(|| Election {
            lease_name: self.lease_name.clone(),
            lease_namespace: self
                .lease_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
        });
        Settings {
            namespaces: self.namespaces.clone(),
            identity: self.identity.clone().unwrap_or_else(default_identity),
            election,
            discovery_interval: Duration::from_secs(self.discovery_interval_seconds.max(1)),
            tuning: Tuning {
                concurrency: self.concurrency.max(1),
                debounce: Duration::from_millis(self.debounce_ms),
            },
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Metrics::new().context("creating metrics")?;
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics listener on {}", args.metrics_address))?;
    let router = metrics::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    // Shutdown fans out through a watch channel: every controller and the
    // lease loop see it.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    manager::run(client, args.settings(), metrics, stop_rx)
        .await
        .context("running the operator")
}
