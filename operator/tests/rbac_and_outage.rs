//! The operator with only the RBAC the chart grants (rules from
//! `zmq_proxy_operator::rbac`, the same the chart renders), authenticated as
//! a ServiceAccount with a TokenRequest token: it reconciles every kind of
//! child, writes status and events, without one 403. Then the API server
//! restarts under it: the operator keeps running and reconciles what was
//! created after the restart.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use zmq_proxy_operator::rbac;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_rbac_suffices_and_operator_survives_apiserver_restart() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let op_ns = cp.namespace("op-system").await?;
    let ns = cp.namespace("op-rbac").await?;

    // The chart's cluster mode: ClusterRole + binding for the operator's
    // ServiceAccount, and the leader-election Role in its own namespace.
    let sa = "zmq-proxy-operator";
    let (_, kubeconfig) = cp.service_account_client(&op_ns, sa).await?;
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: sa.into(),
        namespace: Some(op_ns.clone()),
        ..Default::default()
    };
    let cr_name = cp.unique_name("zmq-proxy-operator");
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &rbac::cluster_role(&cr_name))
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(cr_name.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: cr_name.clone(),
                },
                subjects: Some(vec![subject.clone()]),
            },
        )
        .await?;
    let role = rbac::role("leader-election", &op_ns, rbac::leader_election_rules());
    Api::namespaced(client.clone(), &op_ns)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), &op_ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("leader-election".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "leader-election".into(),
                },
                subjects: Some(vec![subject]),
            },
        )
        .await?;

    let mut opts = OperatorOptions::new(cp, &ns);
    opts.kubeconfig = kubeconfig;
    opts.namespaces = vec![]; // all namespaces, as the ClusterRole allows
    opts.lease_namespace = op_ns.clone();
    let op = Operator::start(cp, &opts)?;
    let result = with_log(scenario(cp, &client, &ns, &op).await, &op);
    op.process.terminate(Duration::from_secs(10)).await;
    // Cluster-scoped objects outlive the namespaces: remove them.
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&cr_name, &Default::default())
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&cr_name, &Default::default())
        .await;
    result
}

async fn scenario(cp: &ControlPlane, client: &kube::Client, ns: &str, op: &Operator) -> Result<()> {
    // Every kind of child: PDB, DaemonSet and metrics Service included.
    create_zp(
        client,
        ns,
        "gamma",
        json!({ "replicas": 1, "localPublisher": { "enabled": true },
                "monitoring": { "serviceMonitor": true } }),
    )
    .await?;
    wait_zp(client, ns, "gamma", "status written", SHORT, |z| {
        z.status.as_ref().and_then(|s| s.observed_generation) == z.metadata.generation
    })
    .await?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    ensure!(deps.get_opt("gamma").await?.is_some(), "no Deployment");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    ensure!(
        dss.get_opt("gamma-local-publisher").await?.is_some(),
        "no DaemonSet"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    harness::wait::until(
        "events written with the operator's rights",
        SHORT,
        || async {
            let evs = events.list(&ListParams::default()).await?;
            Ok(evs
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Created"))
                .then_some(()))
        },
    )
    .await?;
    // Shrinking the spec exercises list + delete.
    let zps: Api<zmq_proxy_operator::crd::ZmqProxy> = Api::namespaced(client.clone(), ns);
    zps.patch(
        "gamma",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"localPublisher": {"enabled": false}}})),
    )
    .await?;
    wait_gone(&dss, "gamma-local-publisher", SHORT).await?;
    let log = op.log_text();
    let lower = log.to_lowercase();
    ensure!(
        !lower.contains("forbidden"),
        "permission errors in the operator log:\n{log}"
    );

    // API server restart.
    cp.stop_apiserver().await?;
    // Make sure the operator noticed the outage before the server returns:
    // its readiness endpoint stays served (the process is alive).
    let (code, _) = op.http_get("/healthz").await?;
    ensure!(code == 200, "operator unhealthy during the outage");
    cp.start_apiserver().await?;
    ensure!(
        op.process.exited().is_none(),
        "operator exited during the outage"
    );
    create_zp(client, ns, "delta", json!({ "replicas": 0 })).await?;
    harness::wait::until(
        "an object created after the restart reconciled",
        LONG,
        || async { Ok(deps.get_opt("delta").await?) },
    )
    .await?;
    // Edits to existing objects are picked up too (the watches resumed).
    zps.patch(
        "gamma",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await?;
    harness::wait::until(
        "the scale change applied after the restart",
        SHORT,
        || async {
            let d = deps.get("gamma").await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(2)).then_some(()))
        },
    )
    .await?;
    ensure!(
        op.process.exited().is_none(),
        "operator exited after the outage"
    );
    Ok(())
}
