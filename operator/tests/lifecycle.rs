//! A ZmqProxy's life on a real control plane with the real node running
//! the proxy pods as containers of the proxy image (the operator runs on
//! the host): apply -> children with the right content and owner ->
//! Ready once the proxies run and register -> a spec change rolls the pods,
//! a label change does not -> scale through the scale subresource -> delete
//! -> everything garbage-collected.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use zmq_proxy_operator::build::names::selector_string;
use zmq_proxy_operator::build::workload::CONFIG_HASH_ANNOTATION;
use zmq_proxy_operator::crd::ZmqProxy;

fn owned_by(meta: &kube::core::ObjectMeta, zp: &ZmqProxy) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == zp.metadata.uid.as_ref()
            && o.controller == Some(true)
            && o.kind == "ZmqProxy"
    })
}

async fn template_hash(deps: &Api<Deployment>, name: &str) -> Result<String> {
    let d = deps.get(name).await?;
    Ok(d.spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        .unwrap_or_default())
}

/// Pod names of the ZmqProxy `name` that run the current template and are ready.
async fn ready_pods(client: &Client, ns: &str, name: &str) -> Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector_string(name)))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect())
}

fn ready_true(zp: &ZmqProxy) -> bool {
    condition(zp, "Ready").is_some_and(|(s, _)| s == "True")
        && zp.status.as_ref().and_then(|s| s.observed_generation) == zp.metadata.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zmqproxy_lifecycle_apply_ready_roll_scale_delete() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-life").await?;
    on_real_node(cp, &ns, async |_, op| lifecycle(&client, &ns, op).await).await
}

async fn lifecycle(client: &Client, ns: &str, op: &Operator) -> Result<()> {
    let name = "alpha";
    let zp = create_zp(client, ns, name, json!({ "replicas": 2 })).await?;

    // Every child, with the right content and owner.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = harness::wait::until("the Deployment", SHORT, || async {
        Ok(deps.get_opt(name).await?)
    })
    .await?;
    assert!(
        owned_by(&d.metadata, &zp),
        "Deployment not owned: {:?}",
        d.metadata.owner_references
    );
    let pod_spec = d
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("pod spec")?;
    assert_eq!(pod_spec.service_account_name.as_deref(), Some(name));
    let env: Vec<String> = pod_spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    for var in [
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_IP",
        "POD_UID",
        "ZMQ_PROXY_BIND_ADDRESS",
        "ZMQ_PROXY_METRICS_ADDRESS",
    ] {
        assert!(env.iter().any(|e| e == var), "{var} missing from {env:?}");
    }
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    assert!(owned_by(&sa.metadata, &zp));
    let role = Api::<Role>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    assert!(owned_by(&role.metadata, &zp));
    assert_eq!(
        role.rules.unwrap_or_default()[0].resources.as_deref(),
        Some(&["endpointslices".to_string()][..])
    );
    let rb = Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    assert!(owned_by(&rb.metadata, &zp));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-config"))
        .await?;
    assert!(owned_by(&cm.metadata, &zp));
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("ZMQ_PROXY_MATCHMAKER")
            .map(String::as_str),
        Some("kubernetes")
    );
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    assert!(owned_by(&svc.metadata, &zp));
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("policy/v1 PodDisruptionBudget")?;
    assert!(owned_by(&pdb.metadata, &zp));
    assert_eq!(
        pdb.spec.and_then(|s| s.max_unavailable),
        Some(IntOrString::Int(1))
    );

    // Ready once the node runs both proxies and they register.
    let started = std::time::Instant::now();
    let zp = wait_zp(client, ns, name, "Ready=True", LONG, ready_true).await?;
    eprintln!(
        "figure: apply -> Ready (2 proxies running and registered): {:?}",
        started.elapsed()
    );
    let status = zp.status.clone().context("status")?;
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(
        status.endpoints.iter().filter(|e| e.ready).count(),
        2,
        "{:?}",
        status.endpoints
    );
    assert_eq!(status.selector, Some(selector_string(name)));
    assert_eq!(
        condition(&zp, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    assert_eq!(
        condition(&zp, "Progressing").map(|c| c.0),
        Some("False".into())
    );
    // An Event for the creation.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let evs = events.list(&ListParams::default()).await?;
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Created")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)),
        "no Created event"
    );
    // Metrics count the work.
    assert!(
        op.metric("zmq_proxy_operator_reconciles_total")
            .await?
            .unwrap_or(0.0)
            >= 1.0
    );
    harness::wait::until("managed_objects = 1", SHORT, || async {
        Ok((op.metric("zmq_proxy_operator_managed_objects").await? == Some(1.0)).then_some(()))
    })
    .await?;

    // A label-only change leaves the pods alone.
    let zps: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    let before_hash = template_hash(&deps, name).await?;
    let before_gen = deps.get(name).await?.metadata.generation;
    let before_pods = ready_pods(client, ns, name).await?;
    zps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "blue"}}})),
    )
    .await?;
    // A spec change that does not touch the pods (PDB) proves the operator
    // has reconciled after the label change before we compare.
    let zp = zps
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podDisruptionBudget": {"maxUnavailable": 2}}})),
        )
        .await?;
    let gen = zp.metadata.generation;
    wait_zp(client, ns, name, "the PDB change observed", SHORT, |z| {
        z.status.as_ref().and_then(|s| s.observed_generation) == gen
    })
    .await?;
    assert_eq!(template_hash(&deps, name).await?, before_hash);
    assert_eq!(
        deps.get(name).await?.metadata.generation,
        before_gen,
        "Deployment changed on a label change"
    );
    assert_eq!(ready_pods(client, ns, name).await?, before_pods);

    // A configuration change rolls every pod.
    zps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"socket": {"hwm": 5000}}})),
    )
    .await?;
    let new_hash = harness::wait::until("a new configuration hash", SHORT, || async {
        let h = template_hash(&deps, name).await?;
        Ok((h != before_hash).then_some(h))
    })
    .await?;
    let rolled = harness::wait::until("the pods to roll", LONG, || async {
        let now = ready_pods(client, ns, name).await?;
        Ok((now.len() == 2 && now.is_disjoint(&before_pods)).then_some(now))
    })
    .await?;
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let sets = rs
        .list(&ListParams::default().labels(&selector_string(name)))
        .await?;
    assert!(sets.items.len() >= 2, "a roll creates a new ReplicaSet");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-config"))
        .await?;
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("ZMQ_PROXY_HWM")
            .map(String::as_str),
        Some("5000")
    );
    eprintln!("rolled to {rolled:?} (hash {new_hash})");
    wait_zp(client, ns, name, "Ready after the roll", LONG, ready_true).await?;

    // Scale through the scale subresource (what `kubectl scale zp/alpha` does).
    let scale = zps.get_scale(name).await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(
        scale.status.as_ref().and_then(|s| s.selector.clone()),
        Some(selector_string(name))
    );
    zps.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    harness::wait::until("the Deployment to scale to 3", SHORT, || async {
        let d = deps.get(name).await?;
        Ok((d.spec.and_then(|s| s.replicas) == Some(3)).then_some(()))
    })
    .await?;
    let zp = wait_zp(client, ns, name, "3 ready replicas", LONG, |z| {
        ready_true(z)
            && z.status
                .as_ref()
                .is_some_and(|s| s.ready_replicas == 3 && s.replicas == 3)
    })
    .await?;
    assert_eq!(zp.spec.replicas, 3);
    assert_eq!(
        template_hash(&deps, name).await?,
        new_hash,
        "scaling must not roll"
    );

    // Delete: the garbage collector removes every child.
    zps.delete(name, &Default::default()).await?;
    wait_gone(&deps, name, LONG).await?;
    wait_gone(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        name,
        LONG,
    )
    .await?;
    wait_gone(&Api::<Role>::namespaced(client.clone(), ns), name, LONG).await?;
    wait_gone(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        name,
        LONG,
    )
    .await?;
    wait_gone(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &format!("{name}-config"),
        LONG,
    )
    .await?;
    wait_gone(&Api::<Service>::namespaced(client.clone(), ns), name, LONG).await?;
    harness::wait::until("every proxy pod gone", LONG, || async {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&selector_string(name)))
            .await?;
        Ok(pods.items.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}
