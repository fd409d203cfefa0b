//! The harness's control plane behaves like a real cluster: controllers
//! turn Deployments into ReplicaSets and Pods, the garbage collector follows
//! owner references, RBAC confines ServiceAccounts, and the API server can be
//! stopped and restarted with its data intact, and a plane started where
//! its ports are taken moves to others.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use harness::control_plane::Ports;
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": image }] }
            }
        }
    }))
    .expect("valid Deployment")
}

#[tokio::test]
async fn control_plane_runs_the_release_the_install_step_built() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    // The start time is a figure for the record (cold vs warm), not an
    // assertion: these machines are shared.
    println!(
        "control plane (local: {}) ready in {:.1?}",
        cp.is_local(),
        cp.startup_duration()
    );
    let version = cp.client()?.apiserver_version().await?;
    println!("API server version {}", version.git_version);
    if cp.is_local() {
        assert_eq!(
            version.git_version,
            format!("v{}", harness::tools::K8S_VERSION)
        );
        let server = &cp.cluster().server;
        assert!(
            server.starts_with("https://10.252."),
            "the plane listens on an address of its own, not {server}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_plane_whose_ports_are_taken_starts_on_others() -> Result<()> {
    if std::env::var_os(harness::control_plane::EXTERNAL_KUBECONFIG_ENV).is_some() {
        println!("existing cluster: no local plane to start; nothing to test");
        return Ok(());
    }
    // Wildcard listeners hold these ports on every address, the plane's
    // own included, as a program of the machine's might.
    let squatters: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))
        .collect::<std::io::Result<_>>()?;
    let taken: Vec<u16> = squatters
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let cp = ControlPlane::start_local_with(Ports {
        etcd_client: taken[0],
        etcd_peer: taken[1],
        apiserver: taken[2],
    })
    .await?;
    let port: u16 = cp
        .cluster()
        .server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {}", cp.cluster().server))?;
    // It was asked for taken[2]: any other port means a start lost its
    // port and was retried.
    assert!(!taken.contains(&port), "API server on a taken port {port}");
    let ns = cp.namespace("ports").await?;
    // The plane serves: a write reads back.
    let cms: Api<ConfigMap> = Api::namespaced(cp.client()?, &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "probe" }, "data": { "k": "v" }
    }))?;
    cms.create(&PostParams::default(), &cm).await?;
    let back = cms.get("probe").await?;
    assert_eq!(
        back.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
    drop(squatters);
    Ok(())
}

#[tokio::test]
async fn deployment_becomes_replicaset_and_pods() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("deploy").await?;
    let client = cp.client()?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments
        .create(
            &PostParams::default(),
            &deployment("web", 3, "example.invalid/web:1"),
        )
        .await?;
    let uid = d.uid().expect("uid");

    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rs = until("a ReplicaSet owned by the Deployment", TIMEOUT, || async {
        let list = replicasets.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        }))
    })
    .await?;
    assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(3));

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let rs_uid = rs.uid().expect("uid");
    let owned = until("3 pods owned by the ReplicaSet", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let owned: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.owner_references().iter().any(|o| o.uid == rs_uid))
            .collect();
        Ok((owned.len() == 3).then_some(owned))
    })
    .await?;
    for p in &owned {
        let image = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        assert_eq!(image.as_deref(), Some("example.invalid/web:1"));
    }
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client()?, &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.uid().expect("uid"),
        ..Default::default()
    };
    for name in ["child-a", "child-b"] {
        cms.create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    owner_references: Some(vec![owner_ref.clone()]),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    }
    // An unowned neighbour must survive.
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("bystander".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;

    cms.delete("owner", &DeleteParams::background()).await?;
    until(
        "the garbage collector to delete both dependents",
        TIMEOUT,
        || async {
            let a = cms.get_opt("child-a").await?;
            let b = cms.get_opt("child-b").await?;
            Ok((a.is_none() && b.is_none()).then_some(()))
        },
    )
    .await?;
    assert!(cms.get_opt("bystander").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn rbac_confines_a_service_account() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("rbac").await?;
    let other = cp.namespace("rbac-other").await?;
    let admin = cp.client()?;
    let role = Role {
        metadata: ObjectMeta {
            name: Some("read-configmaps".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "read-configmaps".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;

    let (sa, kubeconfig) = cp.service_account_client(&ns, "reader").await?;
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), &ns);
    // RBAC changes reach the authorizer through an informer: wait for 200.
    until("the Role to take effect", TIMEOUT, || async {
        Ok(cms.list(&ListParams::default()).await.ok())
    })
    .await?;

    let status = |r: Result<_, kube::Error>| match r {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("unexpected error: {e}"),
    };
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns);
    assert_eq!(
        status(secrets.list(&ListParams::default()).await.map(|_| ())),
        403,
        "secrets must be forbidden"
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(sa.clone(), &other);
    assert_eq!(
        status(elsewhere.list(&ListParams::default()).await.map(|_| ())),
        403,
        "other namespace must be forbidden"
    );
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("nope".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        status(cms.create(&PostParams::default(), &cm).await.map(|_| ())),
        403,
        "create must be forbidden"
    );
    assert_eq!(
        status(cms.list(&ListParams::default()).await.map(|_| ())),
        200
    );

    // The kubeconfig works for kubectl too.
    let kubectl = harness::tools::kubectl()?;
    let ok = tokio::process::Command::new(&kubectl)
        .args([
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "get",
            "configmaps",
            "-n",
            &ns,
        ])
        .output()
        .await?;
    assert!(
        ok.status.success(),
        "kubectl get configmaps: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = tokio::process::Command::new(&kubectl)
        .args([
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "get",
            "secrets",
            "-n",
            &ns,
        ])
        .output()
        .await?;
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));
    Ok(())
}

#[tokio::test]
async fn api_server_restarts_with_its_data() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    if !cp.is_local() {
        println!("existing cluster: the API server cannot be restarted; nothing to test");
        return Ok(());
    }
    let ns = cp.namespace("restart").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client()?, &ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("survivor".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    cp.stop_apiserver().await?;
    assert!(
        cms.get("survivor").await.is_err(),
        "the API server should be down"
    );
    cp.start_apiserver().await?;
    let back = cms.get("survivor").await?;
    assert_eq!(
        back.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
    Ok(())
}
