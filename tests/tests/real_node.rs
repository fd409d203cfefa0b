//! A real node: kubelet, containerd and the project's own images. The proxy
//! runs as a container of `ghcr.io/zmq-proxy/zmq-proxy` (built from
//! proxy/Dockerfile by tests/images.sh) under the restricted security
//! context the operator gives it, which the runtime enforces; it becomes
//! Ready through its probes, RPC goes through it from the host by pod IP
//! and by ClusterIP Service, and the Service's name resolves inside the pod
//! (cluster DNS).
//!
//! Needs root, `bash tests/install.sh` and `bash tests/images.sh build`.

mod real_node_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::real_node::{self, RealNode};
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::PostParams;
use kube::Api;
use real_node_support::{
    kubectl, pod_ready, restricted, wait_pod, with_node, PROXY_IMAGE, TIMEOUT,
};
use serde_json::json;
use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};
use zmq_proxy::rpc::{
    ClientConfig, Incoming, RemoteError, Request, RpcClient, RpcServer, SendOptions, ServerConfig,
};

fn proxy_pod(name: &str) -> Result<Pod> {
    let probe =
        |path: &str| json!({ "httpGet": { "path": path, "port": "metrics" }, "periodSeconds": 1 });
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "terminationGracePeriodSeconds": 15,
            "enableServiceLinks": false,
            "containers": [{
                "name": "zmq-proxy",
                "image": PROXY_IMAGE,
                "imagePullPolicy": "Never",
                "env": [{ "name": "ZMQ_PROXY_HOST", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }],
                "ports": [
                    { "name": "frontend", "containerPort": 50001 },
                    { "name": "backend", "containerPort": 50002 },
                    { "name": "publisher", "containerPort": 50003 },
                    { "name": "metrics", "containerPort": 9090 },
                ],
                "readinessProbe": probe("/readyz"),
                "livenessProbe": probe("/healthz"),
                "securityContext": restricted(),
            }],
        },
    }))?)
}

async fn echo(inc: Incoming) -> Result<serde_json::Value, RemoteError> {
    Ok(inc.args().clone())
}

fn matchmaker(host: &str) -> Arc<dyn Matchmaker> {
    Arc::new(StaticMatchmaker::with_proxies(vec![ProxyAddresses {
        host: host.to_string(),
        frontend_port: 50001,
        backend_port: Some(50002),
        publisher_port: Some(50003),
        curve_key: None,
    }]))
}

/// One `echo` call on `topic` through the proxies `matchmaker` lists.
async fn call(
    matchmaker: &Arc<dyn Matchmaker>,
    topic: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value> {
    let client = RpcClient::connect(matchmaker.clone(), ClientConfig::default()).await?;
    client.wait_for_proxies(1, Duration::from_secs(10)).await;
    // Short: the caller retries until the path works.
    let options = SendOptions {
        timeout: Some(Duration::from_secs(5)),
        retries: None,
    };
    let result = client
        .call_with(&Target::topic(topic), &Request::new("echo", args), options)
        .await;
    client.close().await;
    Ok(result?)
}

/// An RPC server and a client on this host, both reaching the proxy at
/// `proxy_host` (the static matchmaker is in-process: they share it, so
/// the client knows the server); returns the echoed arguments and how long
/// the first answer took.
async fn round_trip(
    proxy_host: &str,
    args: serde_json::Value,
) -> Result<(serde_json::Value, Duration)> {
    let mm = matchmaker(proxy_host);
    let topic = "host-echo";
    let server =
        RpcServer::start(mm.clone(), ServerConfig::new(Target::topic(topic)), echo).await?;
    let t0 = Instant::now();
    let answer = until(
        &format!("an RPC round trip through {proxy_host}"),
        TIMEOUT,
        || async { Ok(call(&mm, topic, args.clone()).await.ok()) },
    )
    .await;
    server.stop().await;
    Ok((answer?, t0.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_image_runs_restricted_on_a_real_node_and_forwards_rpc() -> Result<()> {
    with_node(scenario).await
}

async fn scenario(cp: &ControlPlane, node: &RealNode) -> Result<()> {
    let client = cp.client()?;
    let kc = cp.kubeconfig();

    // The node is Ready and runs containerd.
    let n = Api::<Node>::all(client.clone())
        .get(node.node_name())
        .await?;
    assert!(real_node::node_ready(&n));
    let runtime = n
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.container_runtime_version.clone())
        .unwrap_or_default();
    assert!(runtime.starts_with("containerd://"), "{runtime}");

    let ns = cp.namespace("real-node").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // The proxy pod: restricted, Ready through its own probes.
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &proxy_pod("proxy")?)
        .await?;
    let proxy = wait_pod(&pods, "proxy", pod_ready).await?;
    println!("proxy pod Ready {:.1?} after creation", t0.elapsed());
    let ip = proxy
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("proxy pod without an IP")?;
    assert!(ip.starts_with("10.254.0."), "pod IP {ip}");

    // The runtime enforces the security context: UID of the image's USER,
    // no capabilities, seccomp filter on, root filesystem read-only.
    let exec = |cmd: &[&str]| {
        let mut args = vec!["-n", &ns, "exec", "proxy", "--"];
        args.extend_from_slice(cmd);
        kubectl(kc, &args)
    };
    assert_eq!(exec(&["id", "-u"])?.trim(), "65532");
    let status = exec(&["cat", "/proc/self/status"])?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm"), "0000000000000000", "{status}");
    assert_eq!(field("Seccomp"), "2", "seccomp filter mode: {status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
    let write = exec(&["touch", "/usr/local/bin/x"]);
    assert!(
        write
            .as_ref()
            .is_err_and(|e| e.to_string().contains("Read-only file system")),
        "{write:?}"
    );

    // RPC from the host through the pod IP.
    let (answer, took) = round_trip(&ip, json!({"n": 1})).await?;
    assert_eq!(answer, json!({"n": 1}));
    println!("RPC through the pod IP answered in {took:.1?}");

    // A ClusterIP Service in front of the proxy: kube-proxy translates it.
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "proxy" },
        "spec": {
            "selector": { "app": "proxy" },
            "ports": [
                { "name": "frontend", "port": 50001 },
                { "name": "backend", "port": 50002 },
                { "name": "publisher", "port": 50003 },
                { "name": "metrics", "port": 9090 },
            ],
        },
    }))?;
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service without a ClusterIP")?;
    // kube-proxy programs the Service within its sync period; until then a
    // SYN to the ClusterIP is lost and TCP backs off for seconds. The
    // proxy's /readyz through the ClusterIP says the rules are in.
    let t0 = Instant::now();
    let metrics = format!("{cluster_ip}:9090");
    until(
        "the Service to reach the proxy's /readyz",
        TIMEOUT,
        || async {
            Ok(matches!(harness::http::get(&metrics, "/readyz").await, Ok((200, _))).then_some(()))
        },
    )
    .await?;
    println!(
        "ClusterIP {cluster_ip} answered /readyz {:.1?} after the Service was created",
        t0.elapsed()
    );
    let (answer, took) = round_trip(&cluster_ip, json!({"via": "service"})).await?;
    assert_eq!(answer, json!({"via": "service"}));
    println!("RPC through the ClusterIP {cluster_ip} answered in {took:.1?}");

    // Cluster DNS inside the pod: the Service's name resolves to its
    // ClusterIP (CoreDNS behind the kube-dns Service, through kube-proxy).
    let name = format!("proxy.{ns}.svc.cluster.local");
    let hosts = until(
        "the Service name to resolve in the pod",
        TIMEOUT,
        || async { Ok(exec(&["getent", "hosts", &name]).ok()) },
    )
    .await?;
    assert!(hosts.starts_with(&format!("{cluster_ip} ")), "{hosts}");
    Ok(())
}
