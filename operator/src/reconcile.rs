//! The reconciler: builds the desired children ([`crate::resources`]), applies
//! them with server-side apply under one field manager, deletes children the
//! spec no longer wants, reads the Deployment and EndpointSlices back and
//! writes the status ([`crate::status`]). Errors back off per object; an
//! object that does not even deserialize gets a Warning event and is left
//! alone, so the rest keep reconciling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::crd::{ZmqProxy, ZmqProxyStatus};
use crate::metrics::Metrics;
use crate::resources::{self, Capabilities, Desired, DynamicChild, MANAGER};
use crate::status::{self, Observed, DEGRADED};
use kube::core::error_boundary::DeserializeGuard;

/// The object type the controller watches: a ZmqProxy, or the metadata of
/// one that failed to deserialize.
pub type Guarded = DeserializeGuard<ZmqProxy>;

/// Reconciliation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The ZmqProxy lacks metadata the API server always sets.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
    /// A child could not be serialized.
    #[error("serializing a child: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the error metric.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "api_unreachable".into(),
            Error::Build(_) => "invalid_metadata".into(),
            Error::Serialize(_) => "serialize".into(),
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    /// Client for every request.
    pub client: Client,
    /// What discovery found; refreshed in the background.
    pub caps: RwLock<Capabilities>,
    /// Event publisher.
    pub recorder: Recorder,
    /// Telemetry.
    pub metrics: Metrics,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// Delay after the first failure; doubles per further failure.
    pub backoff_base: Duration,
    /// Upper bound of the backoff.
    pub backoff_max: Duration,
    /// Periodic resync of healthy objects.
    pub resync: Duration,
    /// Generation per object UID whose orphans this process already
    /// removed: orphans only appear when the spec shrinks, which bumps the
    /// generation, so the list calls are skipped until it changes.
    cleaned: Mutex<HashMap<String, i64>>,
}

impl Context {
    /// A context for `client`, reporting events as `instance`.
    pub fn new(client: Client, caps: Capabilities, metrics: Metrics, instance: String) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            caps: RwLock::new(caps),
            metrics,
            failures: Mutex::new(HashMap::new()),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            resync: Duration::from_secs(300),
            cleaned: Mutex::new(HashMap::new()),
        }
    }

    fn caps(&self) -> Capabilities {
        match self.caps.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the capabilities; true when they changed.
    pub fn set_caps(&self, caps: Capabilities) -> bool {
        let mut guard = match self.caps.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *guard != caps;
        *guard = caps;
        if changed {
            self.cleaned().clear();
        }
        changed
    }

    fn cleaned(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        match self.cleaned.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forgets per-object bookkeeping (backoff counters, cleanup marks) of
    /// objects no longer in the caches; deletions never reach the
    /// reconciler, so without this the maps would only grow.
    pub fn forget_missing(&self, present: &[Arc<Guarded>]) {
        let uids: std::collections::HashSet<String> =
            present.iter().filter_map(|o| o.uid()).collect();
        let refs: std::collections::HashSet<ObjectRef<Guarded>> = present
            .iter()
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect();
        self.cleaned().retain(|uid, _| uids.contains(uid));
        self.failures().retain(|r, _| refs.contains(r));
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Guarded>, u32>> {
        match self.failures.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Backoff after `failures` consecutive failures: base * 2^(n-1), capped.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

fn object_reference(meta: &kube::core::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(ZmqProxy::api_version(&()).into_owned()),
        kind: Some(ZmqProxy::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

async fn publish(
    ctx: &Context,
    meta: &kube::core::ObjectMeta,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &object_reference(meta)).await {
        // Events are best effort: never fail a reconcile for one.
        tracing::debug!(error = %e, "publishing an event failed");
    }
}

/// Entry point for the controller: metrics and events around [`apply_all`].
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let zp = match &obj.0 {
        Ok(zp) => zp,
        Err(invalid) => {
            tracing::warn!(name = ?invalid.metadata.name, error = %invalid.error, "ZmqProxy does not deserialize");
            ctx.metrics
                .errors
                .with_label_values(&["invalid_object"])
                .inc();
            publish(
                &ctx,
                &invalid.metadata,
                EventType::Warning,
                "InvalidObject",
                "Reconcile",
                format!("cannot read the object: {}", invalid.error),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    if zp.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children through owner references.
        return Ok(Action::await_change());
    }
    let result = reconcile_proxy(zp, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&ObjectRef::from_obj(obj.as_ref()));
        }
        Err(e) => {
            ctx.metrics
                .errors
                .with_label_values(&[e.reason().as_str()])
                .inc();
            publish(
                &ctx,
                &zp.metadata,
                EventType::Warning,
                "ReconcileFailed",
                "Reconcile",
                e.to_string(),
            )
            .await;
        }
    }
    result
}

/// Error policy: exponential backoff per object.
pub fn error_policy(obj: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(obj.as_ref());
    let n = {
        let mut failures = ctx.failures();
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n, ctx.backoff_base, ctx.backoff_max);
    tracing::warn!(object = %key, failures = n, retry_in = ?delay, error = %err, "reconcile failed");
    Action::requeue(delay)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn apply_typed<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(obj))
        .await?)
}

fn api_resource(child: &DynamicChild) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&child.group, &child.version, &child.kind),
        &child.plural,
    )
}

async fn apply_dynamic(client: &Client, ns: &str, child: &DynamicChild) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(child));
    let name = child.object["metadata"]["name"]
        .as_str()
        .unwrap_or_default();
    api.patch(name, &apply_params(), &Patch::Apply(&child.object))
        .await?;
    Ok(())
}

/// Deletes the children of kind `ar` labelled for `zp` and controlled by it,
/// except those named in `keep`.
async fn delete_orphans(
    client: &Client,
    zp: &ZmqProxy,
    ar: &ApiResource,
    keep: &[String],
) -> Result<(), Error> {
    let ns = zp.namespace().unwrap_or_default();
    let uid = zp.uid().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
    let lp = ListParams::default().labels(&resources::instance_selector(&zp.name_any()));
    let list = match api.list_metadata(&lp).await {
        Ok(list) => list,
        // A kind that stopped being served has nothing left to delete.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for child in list.items {
        let owned = child
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        let name = child.metadata.name.clone().unwrap_or_default();
        if owned && !keep.contains(&name) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: child.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(kind = %ar.kind, %name, "deleted a child no longer wanted"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// discovery.k8s.io/v1 EndpointSlices, read as JSON by [`status::endpoints_from_slices`].
fn slice_ar() -> ApiResource {
    ar("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
}

async fn cleanup(
    client: &Client,
    zp: &ZmqProxy,
    desired: &Desired,
    caps: &Capabilities,
) -> Result<(), Error> {
    let name = zp.name_any();
    let mut jobs = Vec::new();
    if desired.daemon_set.is_none() {
        jobs.push((ar("apps", "v1", "DaemonSet", "daemonsets"), vec![]));
    }
    if desired.metrics_service.is_none() {
        jobs.push((
            ar("", "v1", "Service", "services"),
            vec![resources::child_name(&name)],
        ));
    }
    if desired.pdb.is_none() {
        jobs.push((
            ar(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            vec![],
        ));
    }
    if desired.service_monitor.is_none() && caps.service_monitor {
        jobs.push((
            ar(
                "monitoring.coreos.com",
                "v1",
                "ServiceMonitor",
                "servicemonitors",
            ),
            vec![],
        ));
    }
    if desired.pod_monitor.is_none() && caps.pod_monitor {
        jobs.push((
            ar("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors"),
            vec![],
        ));
    }
    try_join_all(
        jobs.iter()
            .map(|(ar, keep)| delete_orphans(client, zp, ar, keep)),
    )
    .await?;
    Ok(())
}

async fn read_endpoints(
    client: &Client,
    zp: &ZmqProxy,
) -> Result<Vec<crate::crd::ProxyEndpoint>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &zp.namespace().unwrap_or_default(),
        &slice_ar(),
    );
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={}",
        resources::child_name(&zp.name_any())
    ));
    let slices = api.list(&lp).await?;
    let values: Vec<serde_json::Value> = slices.items.into_iter().map(|o| o.data).collect();
    Ok(status::endpoints_from_slices(&values))
}

async fn write_status(client: &Client, zp: &ZmqProxy, new: &ZmqProxyStatus) -> Result<(), Error> {
    if zp.status.as_ref() == Some(new) {
        return Ok(());
    }
    let api: Api<ZmqProxy> = Api::namespaced(client.clone(), &zp.namespace().unwrap_or_default());
    api.patch_status(
        &zp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await?;
    Ok(())
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn reconcile_proxy(zp: &ZmqProxy, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = zp.namespace().unwrap_or_default();
    let first = zp
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_none();
    let changed = zp.status.as_ref().and_then(|s| s.observed_generation) != zp.metadata.generation;

    let caps = ctx.caps();
    let desired = resources::build(zp, &caps)?;

    // Identity and configuration first, so the pods find them when they
    // start. The RoleBinding waits for its Role: the API server's escalation
    // check resolves the Role when the binding is written.
    futures::try_join!(
        apply_typed::<ServiceAccount>(client, &ns, &desired.service_account),
        apply_typed::<Role>(client, &ns, &desired.role),
        apply_typed::<ConfigMap>(client, &ns, &desired.config_map),
        apply_typed::<Service>(client, &ns, &desired.service),
    )?;
    apply_typed::<RoleBinding>(client, &ns, &desired.role_binding).await?;
    let metrics_service = async {
        match &desired.metrics_service {
            Some(s) => apply_typed::<Service>(client, &ns, s).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let daemon_set = async {
        match &desired.daemon_set {
            Some(ds) => apply_typed::<DaemonSet>(client, &ns, ds).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let dynamics = [&desired.pdb, &desired.service_monitor, &desired.pod_monitor];
    let dynamic = try_join_all(
        dynamics
            .into_iter()
            .flatten()
            .map(|c| apply_dynamic(client, &ns, c)),
    );
    let uid = zp.uid().unwrap_or_default();
    let generation = zp.metadata.generation.unwrap_or(0);
    let clean_needed = ctx.cleaned().get(&uid) != Some(&generation);
    let orphans = async {
        if clean_needed {
            cleanup(client, zp, &desired, &caps).await?;
            ctx.cleaned().insert(uid.clone(), generation);
        }
        Ok::<(), Error>(())
    };
    let (deployment, _, _, _, _) = futures::try_join!(
        apply_typed::<Deployment>(client, &ns, &desired.deployment),
        metrics_service,
        daemon_set,
        dynamic,
        orphans,
    )?;

    if first {
        publish(
            ctx,
            &zp.metadata,
            EventType::Normal,
            "Created",
            "Apply",
            "created the proxy children".into(),
        )
        .await;
    } else if changed {
        publish(
            ctx,
            &zp.metadata,
            EventType::Normal,
            "Updated",
            "Apply",
            "applied the changed spec".into(),
        )
        .await;
    }
    let was_missing = zp
        .status
        .as_ref()
        .and_then(|s| status::condition(s, DEGRADED))
        .is_some_and(|c| c.reason == "MonitoringApiMissing");
    if !desired.missing.is_empty() && (!was_missing || changed) {
        publish(
            ctx,
            &zp.metadata,
            EventType::Warning,
            "MonitoringApiMissing",
            "Apply",
            "monitoring.coreos.com/v1 is not served: ServiceMonitor/PodMonitor not created".into(),
        )
        .await;
    }

    let obs = Observed {
        deployment: Some(deployment),
        endpoints: read_endpoints(client, zp).await?,
        missing_apis: desired.missing.clone(),
        ..Default::default()
    };
    let new = status::compute(zp, &obs, now());
    write_status(client, zp, &new).await?;
    Ok(Action::requeue(ctx.resync))
}

/// Backoff of the controller's merged watch streams. kube-runtime applies
/// one backoff to the main watch and every Owns()/watches() stream together,
/// so after an API-server restart each of the nine watches' "resource
/// version too old" errors escalates the shared delay (client-go's 0.8 s to
/// 30 s), pausing *all* triggers for minutes. Each watcher re-lists on its own
/// anyway; a short, capped delay only guards against a hot loop while the
/// server is down.
#[derive(Debug, Default)]
pub struct TriggerBackoff {
    failures: u32,
}

impl TriggerBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = backoff(self.failures.saturating_add(1), Self::BASE, Self::MAX);
        self.failures = self.failures.saturating_add(1);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Watch configuration of the owned children: only ours, to keep memory
/// and traffic independent of the rest of the cluster.
fn owned_config() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic()
}

/// Throughput knobs of a controller.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Reconciles running at once. Bounded because every in-flight
    /// reconcile holds connections and response bodies: unbounded, 500
    /// objects at once cost hundreds of TLS connections' worth of memory.
    pub concurrency: u16,
    /// Trigger debounce: applying nine children makes nine watch events for
    /// the same parent; waiting this long folds them into one reconcile.
    pub debounce: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            concurrency: 16,
            debounce: Duration::from_millis(100),
        }
    }
}

/// One controller over `api` (a namespace, or all), wired to every child
/// kind, to the proxies' EndpointSlices and to `reconcile_all` (discovery
/// changes). Returns its store and its result stream.
pub fn controller(
    api: Api<Guarded>,
    namespace: Option<&str>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    tuning: Tuning,
    ctx: Arc<Context>,
) -> (Store<Guarded>, impl Stream<Item = ()>) {
    let client = ctx.client.clone();
    fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let slices: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &slice_ar()),
        None => Api::all_with(client.clone(), &slice_ar()),
    };
    let c = Controller::new(api, watcher::Config::default().any_semantic())
        .owns(scoped::<Deployment>(&client, namespace), owned_config())
        .owns(scoped::<Service>(&client, namespace), owned_config())
        .owns(scoped::<ConfigMap>(&client, namespace), owned_config())
        .owns(scoped::<ServiceAccount>(&client, namespace), owned_config())
        .owns(scoped::<Role>(&client, namespace), owned_config())
        .owns(scoped::<RoleBinding>(&client, namespace), owned_config())
        .owns(scoped::<DaemonSet>(&client, namespace), owned_config())
        .watches_with(
            slices,
            slice_ar(),
            watcher::Config::default()
                .labels("kubernetes.io/service-name")
                .any_semantic(),
            |slice: DynamicObject| {
                let svc = slice.labels().get("kubernetes.io/service-name").cloned();
                let ns = slice.namespace();
                svc.zip(ns)
                    .map(|(svc, ns)| ObjectRef::<Guarded>::new(&svc).within(&ns))
            },
        )
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(tuning.concurrency)
                .debounce(tuning.debounce),
        )
        .trigger_backoff(TriggerBackoff::default())
        .reconcile_all_on(reconcile_all)
        .graceful_shutdown_on(shutdown);
    let store = c.store();
    let stream = c.run(reconcile, error_policy, ctx).map(|res| {
        if let Err(e) = res {
            tracing::debug!(error = %e, "controller event");
        }
    });
    (store, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(300);
        assert_eq!(backoff(1, base, max), Duration::from_millis(500));
        assert_eq!(backoff(2, base, max), Duration::from_secs(1));
        assert_eq!(backoff(5, base, max), Duration::from_secs(8));
        assert_eq!(backoff(30, base, max), max);
        assert_eq!(backoff(u32::MAX, base, max), max);
    }

    #[test]
    fn trigger_backoff_is_short_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = TriggerBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(7).collect();
        assert_eq!(first[0], Duration::from_millis(100));
        assert_eq!(first[6], Duration::from_secs(2));
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }
}
