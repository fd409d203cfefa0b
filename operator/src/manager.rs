//! The operator's run loop: compete for leadership, and while leading run
//! one controller per watched namespace (or one for all), keep readiness and
//! the managed-objects gauge in step with the caches, and refresh API
//! discovery. Leadership lost (or discovery changing what must be watched)
//! stops the controllers and the loop competes again with fresh ones; a
//! shutdown request drains the controllers and releases the Lease for a
//! quick hand-over.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::controller::{self, Tuning};
use crate::discovery::{self, Capabilities};
use crate::leader::{LeaderElector, Timing};
use crate::metrics::Metrics;
use crate::reconcile::Guarded;

/// How the operator runs, as the binary's flags decided.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; empty (or only empty names) = all namespaces.
    pub namespaces: Vec<String>,
    /// This replica's name in the Lease and in events.
    pub identity: String,
    /// Leader election, or None for a single replica without it.
    pub election: Option<Election>,
    /// Interval of API discovery refreshes (new CRDs, upgrades).
    pub discovery_interval: Duration,
    /// Concurrency and debounce of every controller.
    pub tuning: Tuning,
}

/// Where the Lease lives and how long it is valid.
#[derive(Debug, Clone)]
pub struct Election {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Validity without renewal: bounds the hand-over after a crash.
    pub lease_duration: Duration,
}

/// Errors that end the operator.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The Lease could not be released at shutdown (the standby then takes
    /// over when it expires).
    #[error("releasing the lease: {0}")]
    Release(#[source] kube::Error),
}

/// Why [`lead`] returned.
enum Outcome {
    /// Shutdown was requested.
    Stopped,
    /// Leadership was lost, or the controllers must be rebuilt.
    Restart,
}

/// Resolves once `stop` turns true (or its sender is gone).
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> {
    let mut rx = stop.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Runs the operator until `stop` turns true: competes for leadership (unless
/// election is off) and leads while it holds it.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(), ManagerError> {
    let mut elector = settings.election.as_ref().map(|e| {
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &e.lease_namespace),
            e.lease_name.clone(),
            settings.identity.clone(),
            Timing::from_lease_duration(e.lease_duration),
        )
    });
    loop {
        if let Some(el) = elector.as_mut() {
            tracing::info!(identity = %el.identity(), "waiting for leadership");
            tokio::select! {
                _ = el.acquire() => {},
                _ = stopped(&stop) => return Ok(()),
            }
            tracing::info!(identity = %el.identity(), "became leader");
        }
        metrics.set_leader(true);
        let outcome = lead(&client, &settings, &metrics, elector.as_mut(), &stop).await;
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

async fn release(elector: Option<LeaderElector>) -> Result<(), ManagerError> {
    if let Some(mut el) = elector {
        el.release().await.map_err(ManagerError::Release)?;
        tracing::info!("lease released");
    }
    Ok(())
}

/// Runs the controllers while this process leads.
async fn lead(
    client: &Client,
    settings: &Settings,
    metrics: &Metrics,
    mut elector: Option<&mut LeaderElector>,
    stop: &watch::Receiver<bool>,
) -> Outcome {
    let caps = match discover_while_holding(client, elector.as_deref_mut(), stop).await {
        Ok(caps) => caps,
        Err(outcome) => return outcome,
    };
    tracing::info!(?caps, "API discovery");
    let ctx = Arc::new(Context::new(
        client.clone(),
        caps,
        metrics.clone(),
        settings.identity.clone(),
    ));

    // Leadership loss stops the controllers too.
    let (lost_tx, lost_rx) = watch::channel(false);
    let controllers = start_controllers(client, settings, &ctx, stop, &lost_rx);
    let cache_task = spawn_cache_watch(controllers.stores, metrics.clone(), ctx.clone());
    let discovery_task = spawn_discovery_refresh(
        client.clone(),
        ctx,
        settings.discovery_interval,
        controllers.triggers,
    );
    run_while_leading(controllers.streams, elector, lost_tx).await;
    discovery_task.abort();
    cache_task.abort();
    if *stop.borrow() {
        Outcome::Stopped
    } else {
        Outcome::Restart
    }
}

/// Discovers what the cluster serves, retrying, while renewing the Lease: an
/// API server that is down longer than the renew deadline costs the
/// leadership, not a second leader.
async fn discover_while_holding(
    client: &Client,
    elector: Option<&mut LeaderElector>,
    stop: &watch::Receiver<bool>,
) -> Result<Capabilities, Outcome> {
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
        match elector {
            Some(el) => el.hold().await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        caps = discover => Ok(caps),
        _ = renew => Err(Outcome::Restart),
        _ = stopped(stop) => Err(Outcome::Stopped),
    }
}

/// The running controllers of one leadership term.
struct Controllers {
    /// Their caches of ZmqProxies, one per controller.
    stores: Vec<Store<Guarded>>,
    /// Their result streams, to be driven.
    streams: Vec<BoxStream<'static, ()>>,
    /// A send re-triggers every object of that controller.
    triggers: Vec<mpsc::UnboundedSender<()>>,
}

/// The watched namespaces: None for all of them.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    let listed: Vec<String> = namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    if listed.is_empty() {
        vec![None]
    } else {
        listed.into_iter().map(Some).collect()
    }
}

/// One controller per scope, each stopping on shutdown or leadership loss.
fn start_controllers(
    client: &Client,
    settings: &Settings,
    ctx: &Arc<Context>,
    stop: &watch::Receiver<bool>,
    lost: &watch::Receiver<bool>,
) -> Controllers {
    let mut controllers = Controllers {
        stores: Vec::new(),
        streams: Vec::new(),
        triggers: Vec::new(),
    };
    for ns in scopes(&settings.namespaces) {
        let api: Api<Guarded> = match &ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (tx, rx) = mpsc::unbounded::<()>();
        controllers.triggers.push(tx);
        let mut stop = stop.clone();
        let mut lost = lost.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {},
                _ = lost.wait_for(|l| *l) => {},
            }
        };
        let tuning = Tuning {
            concurrency: settings.tuning.concurrency.max(1),
            debounce: settings.tuning.debounce,
        };
        let (store, stream) =
            controller::controller(api, ns.as_deref(), rx, shutdown, tuning, ctx.clone());
        controllers.stores.push(store);
        controllers.streams.push(stream.boxed());
    }
    controllers
}

/// Readiness and the managed-objects gauge follow the caches; bookkeeping of
/// deleted objects is dropped now and then.
fn spawn_cache_watch(
    stores: Vec<Store<Guarded>>,
    metrics: Metrics,
    ctx: Arc<Context>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for s in &stores {
            if !wait_until_synced(s).await {
                tracing::warn!("a controller stopped before its cache synced");
                return;
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
}

/// Waits until `store` has synced; false when its controller stopped first.
async fn wait_until_synced(store: &Store<Guarded>) -> bool {
    // kube-runtime's ready signal wakes only its latest waiter (one oneshot
    // receiver shared by every reader, and the controller itself waits on it
    // too): poll it again now and then instead of waiting once.
    loop {
        match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => continue,
        }
    }
}

/// Discovery refresh: a new CRD (ServiceMonitor, PodMonitor) re-triggers
/// every object.
fn spawn_discovery_refresh(
    client: Client,
    ctx: Arc<Context>,
    interval: Duration,
    triggers: Vec<mpsc::UnboundedSender<()>>,
) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_secs(1));
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
}

/// Drives the controllers until they end, or until leadership is lost (then
/// signals `lost` and lets them wind down).
async fn run_while_leading(
    streams: Vec<BoxStream<'static, ()>>,
    elector: Option<&mut LeaderElector>,
    lost: watch::Sender<bool>,
) {
    let hold = async {
        match elector {
            Some(el) => {
                el.hold().await;
                tracing::error!("leadership lost");
                let _ = lost.send(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_listed_namespace_means_all() {
        assert_eq!(scopes(&[]), [None]);
        assert_eq!(scopes(&[String::new()]), [None]);
        assert_eq!(
            scopes(&["a".into(), String::new(), "b".into()]),
            [Some("a".to_string()), Some("b".to_string())]
        );
    }
}
