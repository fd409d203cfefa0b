//! `zmq-proxy-operator`: prints the CRD or RBAC (`crd`, `rbac`), or runs the
//! operator (`run`, the default): metrics server, leader election, one
//! controller per watched namespace (or one for all), discovery refresh,
//! and graceful shutdown on SIGTERM/SIGINT (controllers drain, then the
//! Lease is released for a quick hand-over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;

use zmq_proxy_operator::leader::{LeaderElector, Timing};
use zmq_proxy_operator::metrics::{self, Metrics};
use zmq_proxy_operator::reconcile::{self, Context, Guarded};
use zmq_proxy_operator::{crd, discovery, rbac};

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
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut elector = if args.no_leader_election {
        None
    } else {
        let ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let timing =
            Timing::from_lease_duration(Duration::from_secs(args.lease_duration_seconds.max(1)));
        Some(LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            args.lease_name.clone(),
            identity.clone(),
            timing,
        ))
    };

    loop {
        if let Some(el) = elector.as_mut() {
            tracing::info!(identity = %el.identity(), "waiting for leadership");
            tokio::select! {
                _ = el.acquire() => {},
                _ = stopped() => return Ok(()),
            }
            tracing::info!(identity = %el.identity(), "became leader");
        }
        metrics.set_leader(true);
        let outcome = lead(
            &client,
            &args,
            &metrics,
            &identity,
            elector.as_mut(),
            stop_rx.clone(),
        )
        .await;
        metrics.set_leader(false);
        match outcome {
            Outcome::Stopped => return release(elector).await,
            // Leadership lost (e.g. the API server was unreachable for longer
            // than the renew deadline) or the served slice version changed:
            // the controllers have stopped; compete again with fresh ones.
            Outcome::Restart => {
                tracing::warn!("controllers stopped; competing for leadership again")
            }
        }
    }
}

/// Why [`lead`] returned.
enum Outcome {
    /// Shutdown was requested.
    Stopped,
    /// Leadership was lost, or the controllers must be rebuilt.
    Restart,
}

/// Runs the controllers while this process leads.
async fn lead(
    client: &Client,
    args: &RunArgs,
    metrics: &Metrics,
    identity: &str,
    mut elector: Option<&mut LeaderElector>,
    stop_rx: watch::Receiver<bool>,
) -> Outcome {
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Keep renewing while discovery retries: an API server that is down
    // longer than the renew deadline costs the leadership, not a second leader.
    let discover = async {
        loop {
            match discovery::discover(client.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "API discovery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    };
    let renew = async {
        match elector.as_mut() {
            Some(el) => el.hold().await,
            None => std::future::pending::<()>().await,
        }
    };
    let caps = tokio::select! {
        caps = discover => caps,
        _ = renew => return Outcome::Restart,
        _ = stopped() => return Outcome::Stopped,
    };
    tracing::info!(?caps, "API discovery");
    let ctx = Arc::new(Context::new(
        client.clone(),
        caps.clone(),
        metrics.clone(),
        identity.to_string(),
    ));

    // Leadership loss stops the controllers too.
    let (lost_tx, lost_rx) = watch::channel(false);
    let namespaces: Vec<Option<String>> = {
        let listed: Vec<String> = args
            .namespaces
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        if listed.is_empty() {
            vec![None]
        } else {
            listed.into_iter().map(Some).collect()
        }
    };
    let mut triggers = Vec::new();
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for ns in &namespaces {
        let api: Api<Guarded> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (tx, rx) = mpsc::unbounded::<()>();
        triggers.push(tx);
        let mut stop = stop_rx.clone();
        let mut lost = lost_rx.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {},
                _ = lost.wait_for(|l| *l) => {},
            }
        };
        let tuning = reconcile::Tuning {
            concurrency: args.concurrency.max(1),
            debounce: Duration::from_millis(args.debounce_ms),
        };
        let (store, stream) =
            reconcile::controller(api, ns.as_deref(), rx, shutdown, tuning, ctx.clone());
        stores.push(store);
        streams.push(stream.boxed());
    }

    // Readiness and the managed-objects gauge follow the caches.
    let cache_task = {
        let metrics = metrics.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for s in &stores {
                // kube-runtime's ready signal wakes only its latest waiter
                // (one oneshot receiver shared by every reader, and the
                // controller itself waits on it too): poll it again now and
                // then instead of waiting once.
                loop {
                    match tokio::time::timeout(Duration::from_millis(250), s.wait_until_ready())
                        .await
                    {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => {
                            tracing::warn!("a controller stopped before its cache synced");
                            return;
                        }
                        Err(_) => continue,
                    }
                }
            }
            tracing::info!("caches synced");
            metrics.set_synced();
            let mut rounds: u64 = 0;
            loop {
                let n: usize = stores.iter().map(|s| s.len()).sum();
                metrics.managed.set(i64::try_from(n).unwrap_or(i64::MAX));
                if rounds.is_multiple_of(30) {
                    let present: Vec<_> = stores.iter().flat_map(|s| s.state()).collect();
                    ctx.forget_missing(&present);
                }
                rounds = rounds.wrapping_add(1);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    // Discovery refresh: a new CRD (ServiceMonitor, PodMonitor) re-triggers
    // every object.
    let discovery_task = {
        let ctx = ctx.clone();
        let client = client.clone();
        let interval = Duration::from_secs(args.discovery_interval_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match discovery::discover(client.clone()).await {
                    Ok(new) => {
                        if ctx.set_caps(new.clone()) {
                            tracing::info!(caps = ?new, "served APIs changed; reconciling everything");
                            for t in &triggers {
                                let _ = t.unbounded_send(());
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "API discovery refresh failed"),
                }
            }
        })
    };

    {
        let hold = async {
            match elector.as_mut() {
                Some(el) => {
                    el.hold().await;
                    tracing::error!("leadership lost");
                    let _ = lost_tx.send(true);
                }
                None => std::future::pending::<()>().await,
            }
        };
        let run_all = futures::stream::select_all(streams).for_each(|_| async {});
        let mut hold = std::pin::pin!(hold.fuse());
        let mut run_all = std::pin::pin!(run_all.fuse());
        futures::select! {
            _ = run_all => {},
            // Let the controllers wind down (their shutdown trigger fired).
            _ = hold => run_all.await,
        }
    }
    discovery_task.abort();
    cache_task.abort();
    if *stop_rx.borrow() {
        Outcome::Stopped
    } else {
        Outcome::Restart
    }
}

async fn release(elector: Option<LeaderElector>) -> anyhow::Result<()> {
    if let Some(mut el) = elector {
        el.release().await.context("releasing the lease")?;
        tracing::info!("lease released");
    }
    Ok(())
}
