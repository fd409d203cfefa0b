//! The node agent runs pods as local processes: env, IP, probes, readiness,
//! restarts, ServiceAccount access and graceful termination, as a kubelet
//! would.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::wait::until;
use harness::{ControlPlane, NodeAgent};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::ByteString;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::{Api, Client, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(60);
const IMAGE_REPO: &str = "harness.test/test-pod";

fn images() -> HashMap<String, PathBuf> {
    HashMap::from([(
        IMAGE_REPO.to_string(),
        PathBuf::from(env!("CARGO_BIN_EXE_harness-test-pod")),
    )])
}

fn pod_from(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("valid Pod")
}

/// A pod of the test image with the downward-API env every test pod needs.
fn test_pod(name: &str, extra_env: serde_json::Value, extra: serde_json::Value) -> Pod {
    let mut env = serde_json::json!([
        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
        { "name": "POD_UID", "valueFrom": { "fieldRef": { "fieldPath": "metadata.uid" } } },
        { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
    ]);
    if let (Some(list), Some(more)) = (env.as_array_mut(), extra_env.as_array()) {
        list.extend(more.iter().cloned());
    }
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": format!("{IMAGE_REPO}:1.0"),
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "env": env,
                "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 1 },
            }]
        }
    });
    if let Some(obj) = extra.as_object() {
        for (k, v) in obj {
            pod["spec"]["containers"][0][k] = v.clone();
        }
    }
    pod_from(pod)
}

async fn wait_ready(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    until(&format!("pod {name} to be Ready"), TIMEOUT, || async {
        let p = pods.get(name).await?;
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(ready.then_some(p))
    })
    .await
}

async fn http_get(ip: &str, port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// EndpointSlices (discovery.k8s.io/v1) of `ns`, as JSON.
async fn endpoint_slices(client: &Client, ns: &str) -> Result<Vec<DynamicObject>> {
    let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    Ok(api.list(&ListParams::default()).await?.items)
}

fn container_pid(pod: &Pod) -> Option<i32> {
    let id = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()?;
    id.strip_prefix("harness://")?.parse().ok()
}

/// Lets the pod's ServiceAccount read its own pod.
async fn allow_pod_reads(client: &Client, ns: &str) -> Result<()> {
    let role = Role {
        metadata: ObjectMeta {
            name: Some("pod-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("pod-reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "pod-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "default".into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

#[tokio::test]
async fn pod_runs_as_a_process_with_its_env_and_ip_and_becomes_ready() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-env").await?;
    let client = cp.client()?;
    allow_pod_reads(&client, &ns).await?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("greeting".to_string(), "hello".to_string()),
            ("color".to_string(), "blue".to_string()),
        ])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("creds".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;

    let agent = NodeAgent::start(cp, images()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = test_pod(
        "envpod",
        serde_json::json!([
            { "name": "SA_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.serviceAccountName" } } },
            { "name": "GREETING", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "greeting" } } },
            { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
            { "name": "LISTEN", "value": "$(POD_IP):8080" },
            { "name": "ESCAPED", "value": "$$(POD_IP)" },
            { "name": "CONFIG_FILE", "value": "/etc/testpod/greeting" },
            { "name": "KUBE_CHECK", "value": "1" },
        ]),
        serde_json::json!({
            "envFrom": [{ "configMapRef": { "name": "settings" }, "prefix": "CFG_" }],
            "args": ["--listen", "$(LISTEN)"],
            "volumeMounts": [{ "name": "settings", "mountPath": "/etc/testpod" }],
            "livenessProbe": { "httpGet": { "path": "/healthz", "port": 8080 } },
        }),
    );
    let mut pod = pod;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({
            "name": "settings", "configMap": { "name": "settings" }
        }))?]);
    }
    pods.create(&PostParams::default(), &pod).await?;

    let result = async {
        let running = wait_ready(&pods, "envpod").await?;
        let status = running.status.clone().context("status")?;
        let ip = status.pod_ip.clone().context("podIP")?;
        assert!(ip.starts_with("10.253."), "pod IP {ip}");
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(
            running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(agent.node_name())
        );
        // kube-scheduler placed it, as in a cluster (the agent binds nothing).
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let scheduled = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.reporting_controller.as_deref() == Some("default-scheduler")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("envpod")
            });
        assert!(scheduled, "no Scheduled event from default-scheduler");
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            let c = status.conditions.iter().flatten().find(|c| c.type_ == kind);
            assert_eq!(
                c.map(|c| c.status.as_str()),
                Some("True"),
                "condition {kind}"
            );
        }
        let cs = status
            .container_statuses
            .iter()
            .flatten()
            .next()
            .context("container status")?;
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.restart_count, 0);
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());

        // The process itself answers on the pod IP with its environment.
        let env = http_get(&ip, 8080, "/env").await?;
        let uid = running.metadata.uid.clone().context("uid")?;
        for expected in [
            "POD_NAME=envpod".to_string(),
            format!("POD_NAMESPACE={ns}"),
            format!("POD_UID={uid}"),
            format!("POD_IP={ip}"),
            "SA_NAME=default".to_string(),
            "GREETING=hello".to_string(),
            "PASSWORD=s3cret".to_string(),
            "CFG_greeting=hello".to_string(),
            "CFG_color=blue".to_string(),
            format!("LISTEN={ip}:8080"),
            "ESCAPED=$(POD_IP)".to_string(),
            "HOSTNAME=envpod".to_string(),
        ] {
            assert!(
                env.lines().any(|l| l == expected),
                "missing {expected} in:\n{env}"
            );
        }
        // A mount path in env is rewritten to the volume's files.
        let config_file = env
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_FILE="))
            .context("CONFIG_FILE")?;
        assert_ne!(config_file, "/etc/testpod/greeting");
        assert_eq!(std::fs::read_to_string(config_file)?, "hello");
        // No host environment leaks in.
        assert!(
            !env.lines().any(|l| l.starts_with("CARGO_")),
            "host env leaked:\n{env}"
        );

        let log_has = |needle: String| {
            let log = agent.pod_log(&ns, "envpod");
            log.contains(&needle)
                .then_some(())
                .context(format!("pod log lacks {needle:?}:\n{log}"))
        };
        log_has(format!("args --listen {ip}:8080"))?;
        // The ServiceAccount kubeconfig works (RBAC allows reading the pod).
        until(
            "the pod to read itself through KUBECONFIG",
            TIMEOUT,
            || async { Ok(log_has("kube check: ok, read pod envpod".into()).ok()) },
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        println!("{}", agent.pod_log(&ns, "envpod"));
    }
    result
}

#[tokio::test]
async fn deleting_a_pod_sigterms_its_process_and_removes_the_pod() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-term").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &test_pod("polite", serde_json::json!([]), serde_json::json!({})),
    )
    .await?;
    let running = wait_ready(&pods, "polite").await?;
    let pid = container_pid(&running).context("container pid")?;
    assert!(harness::process::pid_alive(pid));

    let started = Instant::now();
    pods.delete("polite", &DeleteParams::default()).await?;
    until("the pod object to be gone", TIMEOUT, || async {
        Ok(pods.get_opt("polite").await?.is_none().then_some(()))
    })
    .await?;
    let took = started.elapsed();
    let log = agent.pod_log(&ns, "polite");
    assert!(
        log.contains("received SIGTERM"),
        "no SIGTERM in the pod log:\n{log}"
    );
    assert!(!harness::process::pid_alive(pid), "process {pid} survived");
    // It exited on SIGTERM, so the 5 s grace period was not needed.
    assert!(took < Duration::from_secs(5), "deletion took {took:?}");
    Ok(())
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-kill").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut pod = test_pod(
        "stubborn",
        serde_json::json!([{ "name": "IGNORE_SIGTERM", "value": "1" }]),
        serde_json::json!({}),
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(2);
    }
    pods.create(&PostParams::default(), &pod).await?;
    let running = wait_ready(&pods, "stubborn").await?;
    let pid = container_pid(&running).context("container pid")?;

    let started = Instant::now();
    pods.delete("stubborn", &DeleteParams::default()).await?;
    until("the pod object to be gone", TIMEOUT, || async {
        Ok(pods.get_opt("stubborn").await?.is_none().then_some(()))
    })
    .await?;
    let took = started.elapsed();
    let log = agent.pod_log(&ns, "stubborn");
    assert!(log.contains("ignoring SIGTERM"), "pod log:\n{log}");
    assert!(
        !harness::process::pid_alive(pid),
        "process {pid} survived SIGKILL"
    );
    assert!(
        took >= Duration::from_secs(2),
        "SIGKILL came before the grace period: {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_crashing_container_is_restarted_and_counted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-crash").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &test_pod(
            "crashy",
            serde_json::json!([{ "name": "EXIT_AFTER_MS", "value": "300" }]),
            serde_json::json!({}),
        ),
    )
    .await?;
    let pod = until("two restarts", TIMEOUT, || async {
        let p = pods.get("crashy").await?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        Ok((restarts >= 2).then_some(p))
    })
    .await;
    let pod = match pod {
        Ok(p) => p,
        Err(e) => {
            println!("{}", agent.pod_log(&ns, "crashy"));
            return Err(e);
        }
    };
    let cs = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .context("status")?;
    let last = cs
        .last_state
        .and_then(|s| s.terminated)
        .context("lastState.terminated")?;
    assert_eq!(last.exit_code, 3);
    let log = agent.pod_log(&ns, "crashy");
    assert!(log.matches("exiting with code 3").count() >= 2, "{log}");
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-live").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // /healthz fails while this file exists; the readiness probe uses
    // /env, so only liveness fails.
    let flag = cp.dir().join(format!("{ns}-unhealthy"));
    std::fs::write(&flag, "x")?;
    let pod = test_pod(
        "sick",
        serde_json::json!([{ "name": "UNHEALTHY_FILE", "value": flag.display().to_string() }]),
        serde_json::json!({
            "readinessProbe": { "httpGet": { "path": "/env", "port": 8080 }, "periodSeconds": 1 },
            "livenessProbe": { "httpGet": { "path": "/healthz", "port": 8080 }, "periodSeconds": 1, "failureThreshold": 2 },
        }),
    );
    pods.create(&PostParams::default(), &pod).await?;
    let restarted = until("a liveness restart", TIMEOUT, || async {
        let p = pods.get("sick").await?;
        let restarts = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        Ok((restarts >= 1).then_some(()))
    })
    .await;
    if restarted.is_err() {
        println!("{}", agent.pod_log(&ns, "sick"));
    }
    restarted?;
    std::fs::remove_file(&flag)?;
    let log = agent.pod_log(&ns, "sick");
    assert!(
        log.contains("received SIGTERM"),
        "the liveness kill should be a SIGTERM:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn deployment_pods_run_and_become_service_endpoints() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-deploy").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let template = test_pod("web", serde_json::json!([]), serde_json::json!({}));
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": template.spec }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "web" },
        "spec": { "clusterIP": "None", "selector": { "app": "web" }, "ports": [{ "name": "http", "port": 8080 }] }
    }))?;
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let available = until("2 available replicas", TIMEOUT, || async {
        let d = deployments.get("web").await?;
        Ok((d.status.and_then(|s| s.available_replicas) == Some(2)).then_some(()))
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if available.is_err() {
        for p in pods.list(&ListParams::default()).await?.items {
            println!(
                "{}",
                agent.pod_log(&ns, &p.metadata.name.unwrap_or_default())
            );
        }
    }
    available?;
    let ips: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.status.and_then(|s| s.pod_ip))
        .collect();
    assert_eq!(ips.len(), 2);
    assert_ne!(ips[0], ips[1], "each pod needs its own IP");

    // The EndpointSlice controller lists both pods as ready endpoints.
    // (core/v1 Endpoints reject loopback addresses, so the endpoints
    // controller cannot write them for these pods; EndpointSlices accept them.)
    let mut want = ips.clone();
    want.sort();
    until(
        "both pod IPs as ready EndpointSlice endpoints",
        TIMEOUT,
        || async {
            let mut ready = Vec::new();
            for slice in endpoint_slices(&client, &ns).await? {
                if slice
                    .labels()
                    .get("kubernetes.io/service-name")
                    .map(String::as_str)
                    != Some("web")
                {
                    continue;
                }
                for ep in slice.data["endpoints"].as_array().into_iter().flatten() {
                    if ep["conditions"]["ready"] == serde_json::json!(true) {
                        ready.extend(
                            ep["addresses"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|a| a.as_str().map(String::from)),
                        );
                    }
                }
            }
            ready.sort();
            Ok((ready == want).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_daemonset_runs_one_pod_on_the_agent_node() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("agent-ds").await?;
    let client = cp.client()?;
    let agent = NodeAgent::start(cp, images()).await?;
    let template = test_pod("local", serde_json::json!([]), serde_json::json!({}));
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "local" },
        "spec": {
            "selector": { "matchLabels": { "app": "local" } },
            "template": { "metadata": { "labels": { "app": "local" } }, "spec": template.spec }
        }
    }))?;
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), &ns);
    daemonsets.create(&PostParams::default(), &ds).await?;
    let node = agent.node_name().to_string();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = until(
        "the DaemonSet pod on the agent's node to be ready",
        TIMEOUT,
        || async {
            let d = daemonsets.get("local").await?;
            let ready = d.status.map(|s| s.number_ready).unwrap_or(0);
            if ready < 1 {
                return Ok(None);
            }
            let on_node: Vec<Pod> = pods
                .list(&ListParams::default().labels("app=local"))
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                })
                .collect();
            Ok((on_node.len() == 1).then_some(()))
        },
    )
    .await;
    if ready.is_err() {
        for p in pods.list(&ListParams::default()).await?.items {
            println!(
                "{}",
                agent.pod_log(&ns, &p.metadata.name.unwrap_or_default())
            );
        }
    }
    ready
}
