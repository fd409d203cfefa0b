//! The `kubernetes` matchmaker: proxies as EndpointSlices, RPC servers as
//! Leases, both watched. This module is the I/O shell; what the objects look
//! like and how they are read lives in the pure [`endpoint_slice`] and
//! [`server_lease`] modules, the RBAC they need in [`rbac`].
//!
//! - Proxies: each proxy pod server-side-applies one EndpointSlice of its
//!   own, named after the pod and owned by it (so Kubernetes deletes it with
//!   the pod), labelled with the ZmqProxy's headless Service and our
//!   `managed-by`. `drain_proxy` marks its endpoint not ready, still serving
//!   and terminating; `unregister_proxy` deletes it. The TTL is not used:
//!   the owner reference does what a TTL does elsewhere.
//! - Discovery: one watcher per process over those slices keeps the list of
//!   ready proxies behind a `tokio::sync::watch` receiver: changes arrive as
//!   watch events (no polling), the watcher re-lists with backoff after
//!   errors or API-server restarts, and the last good list stays meanwhile.
//! - RPC servers: one Lease per (identity, target), see [`server_lease`] for
//!   why. One watcher per process over all server Leases of the namespace
//!   feeds every `watch_servers` receiver, and re-evaluates at the next
//!   expiry so a crashed server leaves without anybody writing.
//!
//! Every API call is bounded by a timeout and returns an error instead of
//! waiting for an unreachable API server; callers retry
//! ([`crate::matchmaker::maintain_proxy_registration`]). Watches never give
//! up: they retry with capped exponential backoff for as long as the
//! matchmaker lives.
//!
//! Identity comes from the downward API (`POD_NAME`, `POD_NAMESPACE`,
//! `POD_IP`, `POD_UID`) and `ZMQ_PROXY_SERVICE_NAME`; credentials from the
//! in-cluster ServiceAccount or `KUBECONFIG` (`kube::Client::try_default`).

pub mod endpoint_slice;
pub mod rbac;
pub mod server_lease;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::{watch, OnceCell};
use tokio::task::AbortHandle;

use self::endpoint_slice::EndpointState;
use self::server_lease::ServerRecord;
use super::{
    replace_if_changed, BoxFuture, Matchmaker, MatchmakerError, ProxyAddresses, Result, Target,
};
use crate::backoff::CappedBackoff;
// Every critical section is a few map operations that cannot leave the
// state half-updated, so a poisoned lock is still consistent.
use crate::lock::lock;

/// Field manager of every server-side apply this backend makes.
pub const FIELD_MANAGER: &str = "zmq-proxy";
/// Default bound on one API call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side timeout of one watch request; the watcher reconnects after
/// it, and a silently dead connection is noticed within it (plus margin).
const WATCH_TIMEOUT_SECS: u32 = 60;
/// Watch retry backoff: first delay and cap. Short, because clients want
/// the proxy list back quickly after an API-server restart.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pod this process runs in, from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `POD_NAME`: names the proxy's EndpointSlice.
    pub name: String,
    /// `POD_UID`: the owner reference that garbage-collects our objects with
    /// the pod. Without it nothing is owned.
    pub uid: Option<String>,
    /// `POD_IP`: the endpoint address; without it the advertised host must
    /// be an IP.
    pub ip: Option<String>,
}

/// Settings of the Kubernetes matchmaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Namespace of the slices and Leases (`POD_NAMESPACE`); default: the
    /// client's (in-cluster namespace or the kubeconfig context's).
    pub namespace: Option<String>,
    /// The ZmqProxy's headless Service (`ZMQ_PROXY_SERVICE_NAME`): proxies
    /// register under it and clients discover proxies by it.
    pub service_name: Option<String>,
    /// This process's pod, when it runs in one (`POD_NAME` set).
    pub pod: Option<PodIdentity>,
    /// Bound on each API call.
    pub request_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            service_name: None,
            pod: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl KubernetesConfig {
    /// Reads the downward-API variables and `ZMQ_PROXY_SERVICE_NAME`
    /// through `get` (e.g. `|k| std::env::var(k).ok()`); empty values count
    /// as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> KubernetesConfig {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        KubernetesConfig {
            namespace: var("POD_NAMESPACE"),
            service_name: var("ZMQ_PROXY_SERVICE_NAME"),
            pod: var("POD_NAME").map(|name| PodIdentity {
                name,
                uid: var("POD_UID"),
                ip: var("POD_IP"),
            }),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The Kubernetes matchmaker. Cheap to share behind an `Arc`; background
/// watches stop when it is dropped.
pub struct KubernetesMatchmaker {
    /// Client and namespace, made on first use when built by
    /// [`KubernetesMatchmaker::from_env`] (so construction is synchronous
    /// and cannot fail on missing credentials at start).
    conn: OnceCell<Conn>,
    config: KubernetesConfig,
    /// What our endpoint says; `Terminating` from `drain_proxy` until
    /// `unregister_proxy`, so that a late refresh cannot mark a draining
    /// proxy ready again.
    proxy_state: Mutex<EndpointState>,
    proxy_watch: Mutex<Option<WatchHandle<Vec<ProxyAddresses>>>>,
    server_watch: Mutex<Option<Arc<ServerWatch>>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A client and the namespace it works in.
#[derive(Clone)]
struct Conn {
    client: Client,
    namespace: String,
}

/// A started background watch: its output and whether its first full list
/// arrived.
struct WatchHandle<T> {
    tx: Arc<watch::Sender<T>>,
    synced: watch::Receiver<bool>,
}

impl<T> Clone for WatchHandle<T> {
    fn clone(&self) -> Self {
        WatchHandle {
            tx: self.tx.clone(),
            synced: self.synced.clone(),
        }
    }
}

/// State of the server-Lease watch shared with `watch_servers` callers.
struct ServerWatch {
    state: Mutex<ServerState>,
    synced: watch::Receiver<bool>,
    /// Wakes the watch task when a new target is subscribed.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ServerState {
    /// Lease name -> (record, resourceVersion).
    records: BTreeMap<String, (ServerRecord, Option<String>)>,
    targets: BTreeMap<Target, watch::Sender<Vec<String>>>,
}

impl ServerState {
    fn publish(&mut self, now: Timestamp) {
        self.targets.retain(|_, tx| tx.receiver_count() > 0);
        for (target, tx) in &self.targets {
            let live =
                server_lease::live_identities(self.records.values().map(|(r, _)| r), target, now);
            tx.send_if_modified(|v| replace_if_changed(v, live));
        }
    }
}

impl Drop for KubernetesMatchmaker {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Maps a kube error to ours: client errors (4xx but 408/429) are
/// configuration or permission problems, the rest means "try again".
fn api_error(what: &str, error: kube::Error) -> MatchmakerError {
    match &error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && status.code != 408 && status.code != 429 =>
        {
            MatchmakerError::Backend(format!("{what}: {error}").into())
        }
        _ => MatchmakerError::Unavailable(format!("{what}: {error}")),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

/// Capped exponential backoff for watch retries (kube's default starts at
/// 800 ms and grows to 30 s, too slow to find proxies again after an
/// API-server restart).
fn watch_backoff() -> CappedBackoff {
    CappedBackoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
}

impl KubernetesMatchmaker {
    /// A matchmaker using `client`. Makes no API call: the API server may be
    /// unreachable at start, and every method retries discovery until it
    /// succeeds.
    pub fn new(client: Client, config: KubernetesConfig) -> KubernetesMatchmaker {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let conn = OnceCell::new_with(Some(Conn { client, namespace }));
        KubernetesMatchmaker::with_conn(conn, config)
    }

    fn with_conn(conn: OnceCell<Conn>, config: KubernetesConfig) -> KubernetesMatchmaker {
        KubernetesMatchmaker {
            conn,
            config,
            proxy_state: Mutex::new(EndpointState::Ready),
            proxy_watch: Mutex::new(None),
            server_watch: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// A matchmaker configured from the environment ([`KubernetesConfig::from_env`])
    /// that finds credentials on first use: the in-cluster ServiceAccount or
    /// `KUBECONFIG` (as `kube::Client::try_default`). Missing credentials
    /// then fail each call (and its retries) rather than the start.
    pub fn from_env() -> KubernetesMatchmaker {
        KubernetesMatchmaker::with_config(KubernetesConfig::from_env(|k| std::env::var(k).ok()))
    }

    /// A matchmaker with `config` that finds credentials on first use, as
    /// [`KubernetesMatchmaker::from_env`] does.
    pub fn with_config(config: KubernetesConfig) -> KubernetesMatchmaker {
        KubernetesMatchmaker::with_conn(OnceCell::new(), config)
    }

    /// The namespace of our slices and Leases, once known.
    pub fn namespace(&self) -> Option<&str> {
        self.conn.get().map(|c| c.namespace.as_str())
    }

    async fn conn(&self) -> Result<&Conn> {
        self.conn
            .get_or_try_init(|| async {
                let inferred =
                    tokio::time::timeout(self.config.request_timeout, kube::Config::infer())
                        .await
                        .map_err(|_| {
                            MatchmakerError::Unavailable(
                                "reading Kubernetes credentials timed out".into(),
                            )
                        })?
                        .map_err(|e| {
                            MatchmakerError::InvalidConfig(format!(
                                "no Kubernetes credentials: {e}"
                            ))
                        })?;
                let namespace = self
                    .config
                    .namespace
                    .clone()
                    .unwrap_or_else(|| inferred.default_namespace.clone());
                let client = Client::try_from(inferred).map_err(|e| {
                    MatchmakerError::InvalidConfig(format!("cannot build a Kubernetes client: {e}"))
                })?;
                Ok(Conn { client, namespace })
            })
            .await
    }

    async fn timed<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<std::result::Result<T, kube::Error>> {
        tokio::time::timeout(self.config.request_timeout, call)
            .await
            .map_err(|_| {
                MatchmakerError::Unavailable(format!(
                    "{what}: no answer from the API server within {:?}",
                    self.config.request_timeout
                ))
            })
    }

    fn service_name(&self) -> Result<&str> {
        self.config.service_name.as_deref().ok_or_else(|| {
            MatchmakerError::InvalidConfig(
                "ZMQ_PROXY_SERVICE_NAME (the ZmqProxy's headless Service) is not set".into(),
            )
        })
    }

    async fn slice_api(&self) -> Result<Api<DynamicObject>> {
        let conn = self.conn().await?;
        Ok(slice_api(&conn.client, &conn.namespace))
    }

    async fn lease_api(&self) -> Result<Api<Lease>> {
        let conn = self.conn().await?;
        Ok(Api::namespaced(conn.client.clone(), &conn.namespace))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        lock(&self.tasks).push(handle.abort_handle());
    }

    async fn apply_slice(&self, proxy: &ProxyAddresses, state: EndpointState) -> Result<()> {
        let service = self.service_name()?;
        let pod = self.config.pod.as_ref().ok_or_else(|| {
            MatchmakerError::InvalidConfig(
                "POD_NAME is not set: a proxy registers as its pod".into(),
            )
        })?;
        let ip = pod.ip.as_deref().unwrap_or(&proxy.host);
        let address: IpAddr = ip.parse().map_err(|_| {
            MatchmakerError::InvalidConfig(format!(
                "endpoint address {ip:?} is not an IP (set POD_IP)"
            ))
        })?;
        let conn = self.conn().await?;
        let slice =
            endpoint_slice::desired_slice(service, &conn.namespace, pod, address, proxy, state);
        let body =
            endpoint_slice::to_json(&slice).map_err(|e| MatchmakerError::Backend(Box::new(e)))?;
        let api = slice_api(&conn.client, &conn.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.timed(
            "apply EndpointSlice",
            api.patch(&pod.name, &params, &Patch::Apply(&body)),
        )
        .await?
        .map_err(|e| api_error("apply EndpointSlice", e))?;
        Ok(())
    }

    /// Starts (once) the proxy watch and returns its handle.
    async fn proxy_watch(&self) -> Result<WatchHandle<Vec<ProxyAddresses>>> {
        if let Some(h) = lock(&self.proxy_watch).clone() {
            return Ok(h);
        }
        let selector = endpoint_slice::selector(self.service_name()?);
        let conn = self.conn().await?;
        let mut guard = lock(&self.proxy_watch);
        if let Some(h) = guard.clone() {
            return Ok(h);
        }
        let tx = Arc::new(watch::channel(Vec::new()).0);
        let (synced_tx, synced) = watch::channel(false);
        let api = slice_api(&conn.client, &conn.namespace);
        self.spawn(run_proxy_watch(api, selector, tx.clone(), synced_tx));
        let handle = WatchHandle { tx, synced };
        *guard = Some(handle.clone());
        Ok(handle)
    }

    /// Starts (once) the server-Lease watch.
    async fn server_watch(&self) -> Result<Arc<ServerWatch>> {
        let api = self.lease_api().await?;
        let mut guard = lock(&self.server_watch);
        if let Some(w) = guard.as_ref() {
            return Ok(w.clone());
        }
        let (synced_tx, synced) = watch::channel(false);
        let shared = Arc::new(ServerWatch {
            state: Mutex::new(ServerState::default()),
            synced,
            changed: tokio::sync::Notify::new(),
        });
        self.spawn(run_server_watch(api, Arc::downgrade(&shared), synced_tx));
        *guard = Some(shared.clone());
        Ok(shared)
    }

    /// Deletes the expired Leases of `target` (unless renewed meanwhile);
    /// failures are only logged.
    async fn delete_expired_leases(&self, api: &Api<Lease>, target: &Target) {
        let params = ListParams::default().labels(&server_lease::target_selector(target));
        let list = match self.timed("list server Leases", api.list(&params)).await {
            Ok(Ok(list)) => list,
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot list server Leases to clean up");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot list server Leases to clean up");
                return;
            }
        };
        let now = Timestamp::now();
        for lease in &list.items {
            if let Some((name, (record, rv))) = lease_entry(lease) {
                if !record.is_live(now) {
                    delete_expired_lease(api.clone(), name, rv).await;
                }
            }
        }
    }

    /// Waits until a watch has its first complete list, within the request timeout.
    async fn wait_synced(&self, mut synced: watch::Receiver<bool>, what: &str) -> Result<()> {
        let wait = synced.wait_for(|s| *s);
        match tokio::time::timeout(self.config.request_timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(MatchmakerError::Unavailable(format!(
                "{what} watch stopped"
            ))),
            Err(_) => Err(MatchmakerError::Unavailable(format!(
                "{what}: no list from the API server within {:?} (still retrying)",
                self.config.request_timeout
            ))),
        }
    }
}

/// EndpointSlices as JSON objects rather than typed ones, so that one
/// malformed slice (written by anybody with the rights) is skipped by
/// [`proxies_of`] instead of failing the watch's whole list.
fn slice_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "discovery.k8s.io".into(),
        version: "v1".into(),
        api_version: endpoint_slice::API_VERSION.into(),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Ready proxies of one slice object; malformed objects list none.
fn proxies_of(object: &DynamicObject) -> Vec<ProxyAddresses> {
    serde_json::to_value(object)
        .and_then(endpoint_slice::from_json)
        .map(|s| endpoint_slice::ready_proxies(&s))
        .unwrap_or_else(|error| {
            tracing::warn!(name = ?object.metadata.name, %error, "unreadable EndpointSlice ignored");
            Vec::new()
        })
}

fn flatten_sorted(by_slice: &BTreeMap<String, Vec<ProxyAddresses>>) -> Vec<ProxyAddresses> {
    let mut all: Vec<ProxyAddresses> = by_slice.values().flatten().cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// The proxy watch loop: a reflector over our slices. The list in `tx` is
/// replaced only by complete lists (after a re-list) or single events, so
/// errors and API-server outages leave the last good list in place.
async fn run_proxy_watch(
    api: Api<DynamicObject>,
    selector: String,
    tx: Arc<watch::Sender<Vec<ProxyAddresses>>>,
    synced: watch::Sender<bool>,
) {
    let config = watcher::Config::default()
        .labels(&selector)
        .timeout(WATCH_TIMEOUT_SECS);
    let mut stream = watcher::watcher(api, config)
        .backoff(watch_backoff())
        .boxed();
    let mut current: BTreeMap<String, Vec<ProxyAddresses>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Vec<ProxyAddresses>>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                relist = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                if let Some(r) = relist.as_mut() {
                    r.insert(o.metadata.name.clone().unwrap_or_default(), proxies_of(&o));
                }
                false
            }
            Ok(Event::InitDone) => {
                if let Some(r) = relist.take() {
                    current = r;
                }
                synced.send_replace(true);
                true
            }
            Ok(Event::Apply(o)) => {
                current.insert(o.metadata.name.clone().unwrap_or_default(), proxies_of(&o));
                true
            }
            Ok(Event::Delete(o)) => {
                current.remove(&o.metadata.name.clone().unwrap_or_default());
                true
            }
            Err(error) => {
                // One line per outage, not one per retry.
                if !failing {
                    tracing::warn!(%error, "EndpointSlice watch failed; keeping the last list and retrying");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!("EndpointSlice watch recovered");
            failing = false;
        }
        if changed {
            let list = flatten_sorted(&current);
            tx.send_if_modified(|v| replace_if_changed(v, list));
        }
    }
}

/// The server-Lease watch loop: keeps every server record of the namespace,
/// republishes each subscribed target on every event and at the next
/// expiry, and deletes Leases found expired (best effort; forbidden for
/// read-only clients, and then simply left to their owners or other readers).
async fn run_server_watch(
    api: Api<Lease>,
    shared: std::sync::Weak<ServerWatch>,
    synced: watch::Sender<bool>,
) {
    let config = watcher::Config::default()
        .labels(&server_lease::all_servers_selector())
        .timeout(WATCH_TIMEOUT_SECS);
    let mut stream = watcher::watcher(api.clone(), config)
        .backoff(watch_backoff())
        .boxed();
    let mut relist: Option<BTreeMap<String, (ServerRecord, Option<String>)>> = None;
    let mut failing = false;
    // Leases whose deletion was tried (name, resourceVersion): tried once.
    let mut deleted: std::collections::BTreeSet<(String, Option<String>)> = Default::default();
    loop {
        let Some(watch) = shared.upgrade() else {
            return;
        };
        let now = Timestamp::now();
        let next = {
            let state = lock(&watch.state);
            server_lease::next_expiry(state.records.values().map(|(r, _)| r), now)
        };
        let sleep_for = next
            .and_then(|n| Duration::try_from(n.duration_since(now)).ok())
            .unwrap_or(Duration::from_secs(3600))
            // Wake slightly after the deadline, so the record is expired then.
            + Duration::from_millis(5);
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => Some(e), None => return },
            _ = tokio::time::sleep(sleep_for) => None,
            _ = watch.changed.notified() => None,
        };
        let had_event = event.is_some();
        let mut state = lock(&watch.state);
        match event {
            Some(Ok(Event::Init)) => relist = Some(BTreeMap::new()),
            Some(Ok(Event::InitApply(lease))) => {
                if let (Some(r), Some(entry)) = (relist.as_mut(), lease_entry(&lease)) {
                    r.insert(entry.0, entry.1);
                }
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(r) = relist.take() {
                    state.records = r;
                }
                synced.send_replace(true);
            }
            Some(Ok(Event::Apply(lease))) => {
                if let Some((name, entry)) = lease_entry(&lease) {
                    state.records.insert(name, entry);
                }
            }
            Some(Ok(Event::Delete(lease))) => {
                state
                    .records
                    .remove(&lease.metadata.name.clone().unwrap_or_default());
            }
            Some(Err(error)) => {
                if !failing {
                    tracing::warn!(%error, "server Lease watch failed; keeping the last list and retrying");
                }
                failing = true;
                continue;
            }
            None => {}
        }
        if failing && had_event {
            tracing::info!("server Lease watch recovered");
            failing = false;
        }
        let now = Timestamp::now();
        state.publish(now);
        let expired: Vec<(String, Option<String>)> = state
            .records
            .iter()
            .filter(|(_, (r, _))| !r.is_live(now))
            .map(|(name, (_, rv))| (name.clone(), rv.clone()))
            .filter(|key| !deleted.contains(key))
            .collect();
        // Forget attempts on Leases that are gone, so the set stays small.
        deleted.retain(|(name, _)| state.records.contains_key(name));
        drop(state);
        for key in expired {
            deleted.insert(key.clone());
            tokio::spawn(delete_expired_lease(api.clone(), key.0, key.1));
        }
    }
}

fn lease_entry(lease: &Lease) -> Option<(String, (ServerRecord, Option<String>))> {
    let name = lease.metadata.name.clone()?;
    let record = ServerRecord::from_lease(lease)?;
    Some((name, (record, lease.metadata.resource_version.clone())))
}

/// Deletes an expired Lease unless it was renewed meanwhile (the
/// resourceVersion precondition fails then).
async fn delete_expired_lease(api: Api<Lease>, name: String, resource_version: Option<String>) {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version,
            uid: None,
        }),
        ..Default::default()
    };
    match tokio::time::timeout(DEFAULT_REQUEST_TIMEOUT, api.delete(&name, &params)).await {
        Ok(Ok(_)) => tracing::info!(lease = %name, "deleted expired server Lease"),
        Ok(Err(error)) => {
            tracing::debug!(lease = %name, %error, "expired server Lease not deleted")
        }
        Err(_) => tracing::debug!(lease = %name, "deleting expired server Lease timed out"),
    }
}

impl Matchmaker for KubernetesMatchmaker {
    fn backend(&self) -> &'static str {
        "kubernetes"
    }

    fn register_proxy<'a>(
        &'a self,
        proxy: &'a ProxyAddresses,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        // The TTL is not needed: the slice is owned by the pod.
        let _ = ttl;
        Box::pin(async move {
            let state = *lock(&self.proxy_state);
            self.apply_slice(proxy, state).await
        })
    }

    fn drain_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            *lock(&self.proxy_state) = EndpointState::Terminating;
            self.apply_slice(proxy, EndpointState::Terminating).await
        })
    }

    fn unregister_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        let _ = proxy;
        Box::pin(async move {
            // A later register_proxy is a new registration: ready again.
            *lock(&self.proxy_state) = EndpointState::Ready;
            let pod = self
                .config
                .pod
                .as_ref()
                .ok_or_else(|| MatchmakerError::InvalidConfig("POD_NAME is not set".into()))?;
            let api = self.slice_api().await?;
            match self
                .timed(
                    "delete EndpointSlice",
                    api.delete(&pod.name, &DeleteParams::default()),
                )
                .await?
            {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(api_error("delete EndpointSlice", e)),
            }
        })
    }

    fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>> {
        Box::pin(async move {
            let selector = endpoint_slice::selector(self.service_name()?);
            let api = self.slice_api().await?;
            let list = self
                .timed(
                    "list EndpointSlices",
                    api.list(&ListParams::default().labels(&selector)),
                )
                .await?
                .map_err(|e| api_error("list EndpointSlices", e))?;
            let by_slice: BTreeMap<String, Vec<ProxyAddresses>> = list
                .items
                .iter()
                .map(|o| (o.metadata.name.clone().unwrap_or_default(), proxies_of(o)))
                .collect();
            Ok(flatten_sorted(&by_slice))
        })
    }

    fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>> {
        Box::pin(async move {
            let handle = self.proxy_watch().await?;
            self.wait_synced(handle.synced.clone(), "EndpointSlice")
                .await?;
            Ok(handle.tx.subscribe())
        })
    }

    fn register_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api = self.lease_api().await?;
            let lease = server_lease::desired_lease(
                api.namespace().unwrap_or_default(),
                target,
                identity,
                ttl,
                Timestamp::now(),
                self.config.pod.as_ref(),
            );
            let name = server_lease::lease_name(target, identity);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            self.timed(
                "apply server Lease",
                api.patch(&name, &params, &Patch::Apply(&lease)),
            )
            .await?
            .map_err(|e| api_error("apply server Lease", e))?;
            // Registrants clean up after crashed peers of the same target
            // (best effort: readers ignore expired Leases anyway).
            self.delete_expired_leases(&api, target).await;
            Ok(())
        })
    }

    fn unregister_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = server_lease::lease_name(target, identity);
            let api = self.lease_api().await?;
            match self
                .timed(
                    "delete server Lease",
                    api.delete(&name, &DeleteParams::default()),
                )
                .await?
            {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(api_error("delete server Lease", e)),
            }
        })
    }

    fn servers<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let params = ListParams::default().labels(&server_lease::target_selector(target));
            let api = self.lease_api().await?;
            let list = self
                .timed("list server Leases", api.list(&params))
                .await?
                .map_err(|e| api_error("list server Leases", e))?;
            let records: Vec<ServerRecord> = list
                .items
                .iter()
                .filter_map(ServerRecord::from_lease)
                .collect();
            Ok(server_lease::live_identities(
                &records,
                target,
                Timestamp::now(),
            ))
        })
    }

    fn watch_servers<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>> {
        Box::pin(async move {
            let shared = self.server_watch().await?;
            self.wait_synced(shared.synced.clone(), "server Lease")
                .await?;
            let rx = {
                let mut state = lock(&shared.state);
                let live = server_lease::live_identities(
                    state.records.values().map(|(r, _)| r),
                    target,
                    Timestamp::now(),
                );
                let tx = state
                    .targets
                    .entry(target.clone())
                    .or_insert_with(|| watch::channel(live.clone()).0);
                tx.send_if_modified(|v| replace_if_changed(v, live));
                tx.subscribe()
            };
            // The task re-computes its next wake-up with the new target.
            shared.changed.notify_one();
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_downward_api_env() {
        let env: BTreeMap<&str, &str> = [
            ("POD_NAME", "zp-0"),
            ("POD_NAMESPACE", "ns"),
            ("POD_IP", "10.0.0.9"),
            ("POD_UID", "u"),
            ("ZMQ_PROXY_SERVICE_NAME", "zp"),
        ]
        .into();
        let c = KubernetesConfig::from_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(c.namespace.as_deref(), Some("ns"));
        assert_eq!(c.service_name.as_deref(), Some("zp"));
        assert_eq!(
            c.pod,
            Some(PodIdentity {
                name: "zp-0".into(),
                uid: Some("u".into()),
                ip: Some("10.0.0.9".into())
            })
        );
        let outside = KubernetesConfig::from_env(|k| (k == "POD_UID").then(|| "u".to_string()));
        assert_eq!(outside, KubernetesConfig::default());
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = watch_backoff();
        let first: Vec<Duration> = b.by_ref().take(7).collect();
        assert_eq!(first[0], WATCH_BACKOFF_MIN);
        assert_eq!(first[1], WATCH_BACKOFF_MIN * 2);
        assert_eq!(first[6], WATCH_BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_BACKOFF_MIN));
    }
}
