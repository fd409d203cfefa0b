//! What the scenario asks the API server: ZmqProxies, ready pods, the
//! endpoints behind a Service, and the cleanup of an external cluster.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use harness::ControlPlane;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, ResourceExt};

use super::{run, RELEASE, TIMEOUT};

/// The ZmqProxy API of namespace `ns`.
pub fn zmqproxy_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("zmqproxy.io", "v1alpha1", "ZmqProxy"),
        "zmqproxies",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Ready and not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready pods matching `selector`: name -> pod IP.
pub async fn ready_pods(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(is_ready)
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.name_any(), ip))
        })
        .collect())
}

/// Ready `ip:port` (port named `metrics`) of the EndpointSlices of Service
/// `service`.
pub async fn service_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
) -> Result<BTreeSet<String>> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut out = BTreeSet::new();
    for slice in api.list(&lp).await?.items {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for e in &slice.endpoints {
            // An absent `ready` means ready (discovery.k8s.io/v1 semantics).
            if e.conditions.as_ref().and_then(|c| c.ready) != Some(false) {
                for ip in &e.addresses {
                    out.insert(format!("{ip}:{port}"));
                }
            }
        }
    }
    Ok(out)
}

/// Waits until ZmqProxy `name` is Ready with `replicas` ready replicas.
pub async fn wait_zmqproxy_ready(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: u32,
) -> Result<()> {
    let zps = zmqproxy_api(client, ns);
    harness::wait::until(
        &format!("ZmqProxy {ns}/{name} Ready with {replicas} ready replicas"),
        TIMEOUT,
        || async {
            let zp = zps.get(name).await?;
            let status = &zp.data["status"];
            let ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok((ready && status["readyReplicas"] == replicas).then_some(()))
        },
    )
    .await
}

/// Leaves an external cluster as it was (the local plane dies with the
/// test anyway): the release, Prometheus's cluster-wide RBAC, the
/// namespaces. Best effort: a failed step must not hide the test's result.
pub async fn cleanup(cp: &ControlPlane, client: &Client, release_ns: &str, namespaces: &[&str]) {
    if let (Ok(helm), Some(kubeconfig)) = (harness::tools::helm(), cp.kubeconfig().to_str()) {
        let _ = run(
            &helm,
            &[
                "uninstall",
                RELEASE,
                "--namespace",
                release_ns,
                "--kubeconfig",
                kubeconfig,
            ],
        );
    }
    let name = format!("prometheus-{release_ns}");
    let dp = kube::api::DeleteParams::default();
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&name, &dp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&name, &dp)
        .await;
    for ns in namespaces {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(ns, &dp)
            .await;
    }
}
