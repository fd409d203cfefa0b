//! Wiring of one kube-runtime controller: which objects trigger a reconcile
//! of which ZmqProxy (the ZmqProxies themselves, every child kind, the
//! proxies' EndpointSlices, discovery changes), how many run at once, and
//! how the merged watch streams back off.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::{DynamicObject, NamespaceResourceScope};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::backoff::TriggerBackoff;
use crate::build::names::managed_selector;
use crate::context::Context;
use crate::kinds::ENDPOINT_SLICE;
use crate::reconcile::{error_policy, reconcile, Guarded};

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

/// Watch configuration of the owned children: only ours, to keep memory
/// and traffic independent of the rest of the cluster.
fn owned_config() -> watcher::Config {
    watcher::Config::default()
        .labels(&managed_selector())
        .any_semantic()
}

/// An Api over one namespace, or all of them.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The ZmqProxy a proxy's EndpointSlice belongs to: the headless Service it
/// names shares the ZmqProxy's name.
fn slice_owner(slice: DynamicObject) -> Option<ObjectRef<Guarded>> {
    let svc = slice.labels().get("kubernetes.io/service-name").cloned();
    let ns = slice.namespace();
    svc.zip(ns)
        .map(|(svc, ns)| ObjectRef::<Guarded>::new(&svc).within(&ns))
}

/// One controller over `api` (a namespace, or all), wired to every child
/// kind, to the proxies' EndpointSlices and to `reconcile_all` (discovery
/// changes). Returns its store and its result stream.
pub fn controller(
    api: Api<Guarded>,
    namespace: Option<&str>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    tuning: Tuning,
    ctx: Arc<Context>,
) -> (Store<Guarded>, impl Stream<Item = ()>) {
    let client = ctx.client.clone();
    let slices_ar = ENDPOINT_SLICE.api_resource();
    let slices: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &slices_ar),
        None => Api::all_with(client.clone(), &slices_ar),
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
            slices_ar,
            watcher::Config::default()
                .labels("kubernetes.io/service-name")
                .any_semantic(),
            slice_owner,
        )
        .with_config(
            controller::Config::default()
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
