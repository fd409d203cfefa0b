//! Optional children follow the spec and the cluster: the local-publisher
//! DaemonSet and the metrics Service come and go with the spec (orphan
//! cleanup); a ServiceMonitor asked for on a cluster without the
//! monitoring.coreos.com API is a Degraded condition and a Warning event,
//! not a crash loop; once that API appears, discovery notices and the
//! ServiceMonitor is created.

mod common;

use anyhow::Result;
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use zmq_proxy_operator::crd::ZmqProxy;

/// A minimal stand-in for prometheus-operator's ServiceMonitor CRD.
fn monitor_crd(kind: &str, plural: &str) -> Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.monitoring.coreos.com") },
        "spec": {
            "group": "monitoring.coreos.com",
            "names": { "kind": kind, "plural": plural, "singular": kind.to_lowercase() },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true
                }}
            }]
        }
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optional_children_follow_spec_and_served_apis() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-optional").await?;
    let mut opts = OperatorOptions::new(cp, &ns);
    opts.discovery_seconds = 2;
    let op = Operator::start(cp, &opts)?;
    let result = with_log(optional(&client, &ns).await, &op);
    op.process
        .terminate(std::time::Duration::from_secs(10))
        .await;
    result
}

async fn optional(client: &kube::Client, ns: &str) -> Result<()> {
    let name = "beta";
    create_zp(
        client,
        ns,
        name,
        json!({ "replicas": 1, "localPublisher": { "enabled": true },
                "monitoring": { "serviceMonitor": true } }),
    )
    .await?;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let ds_name = format!("{name}-local-publisher");
    harness::wait::until("the DaemonSet", SHORT, || async {
        Ok(dss.get_opt(&ds_name).await?)
    })
    .await?;
    harness::wait::until("the metrics Service", SHORT, || async {
        Ok(svcs.get_opt(&format!("{name}-metrics")).await?)
    })
    .await?;

    // monitoring.coreos.com is not served: condition + warning event.
    let zp = wait_zp(client, ns, name, "MonitoringApiMissing", SHORT, |z| {
        condition(z, "Degraded") == Some(("True".into(), "MonitoringApiMissing".into()))
    })
    .await?;
    assert!(zp.status.is_some());
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    harness::wait::until("a MonitoringApiMissing warning", SHORT, || async {
        let evs = events.list(&ListParams::default()).await?;
        Ok(evs
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("MonitoringApiMissing")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(()))
    })
    .await?;

    // The API appears: discovery notices and the ServiceMonitor is created.
    install_crd_object(client, &monitor_crd("ServiceMonitor", "servicemonitors")?).await?;
    let sm_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &sm_ar);
    let sm = harness::wait::until("the ServiceMonitor", SHORT, || async {
        Ok(sms.get_opt(name).await?)
    })
    .await?;
    assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "metrics");
    wait_zp(client, ns, name, "Degraded=False", SHORT, |z| {
        condition(z, "Degraded").is_some_and(|c| c.0 == "False")
    })
    .await?;

    // The spec shrinks: the DaemonSet, metrics Service and ServiceMonitor go.
    let zps: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    zps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"localPublisher": {"enabled": false}, "monitoring": {"serviceMonitor": false}}})),
    )
    .await?;
    wait_gone(&dss, &ds_name, SHORT).await?;
    wait_gone(&svcs, &format!("{name}-metrics"), SHORT).await?;
    wait_gone(&sms, name, SHORT).await?;
    // The main Service stays.
    assert!(svcs.get_opt(name).await?.is_some());
    Ok(())
}
