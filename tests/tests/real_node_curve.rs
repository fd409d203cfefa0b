//! CURVE on a real node, the way a user deploys it: the chart installs the
//! operator (a container of the operator image), a ZmqProxy with
//! `security.curve` gets its keypair generated into a Secret by the
//! operator and its authorized keys from a Secret, and RPC servers and
//! clients run as pods of the proxy image (`zmq-proxy-rpc`) with their own
//! keys from a Secret, learning each proxy's public key from its
//! EndpointSlice. A client whose key is not authorized gets nothing and is
//! counted by the proxies.
//!
//! Needs root, `bash tests/install.sh` and `bash tests/images.sh build`.

mod real_node_support;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use harness::real_node::RealNode;
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use real_node_support::{kubectl, phase, restricted, wait_pod, with_node, PROXY_IMAGE, TIMEOUT};
use serde_json::json;
use zmq_proxy::matchmaker::kubernetes::endpoint_slice::CURVE_KEY_ANNOTATION;
use zmq_proxy::matchmaker::kubernetes::rbac;

/// The ZmqProxy (and so its headless Service).
const NAME: &str = "secure";
/// The RPC topic the pods serve and call.
const TOPIC: &str = "curve";
/// Unknown-key refusals on the proxies' frontends.
const REFUSED_UNKNOWN: &str =
    r#"zmq_proxy_curve_refused_total{reason="unknown_key",socket="frontend"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curve_zmqproxy_from_the_chart_serves_rpc_pods_keyed_from_secrets() -> Result<()> {
    with_node(async |cp, node| {
        let ns = cp.namespace("curve-node").await?;
        let result = scenario(cp, node, &ns).await;
        // Nothing of it may outlive the node: a Deployment left behind
        // would have its pods rescheduled onto another suite's node.
        let _ = Api::<Namespace>::all(cp.client()?)
            .delete(&ns, &DeleteParams::default())
            .await;
        result
    })
    .await
}

/// A CURVE key pair in Z85: (public, secret).
fn pair() -> Result<(String, String)> {
    let pair = zmq::CurveKeyPair::new()?;
    Ok((
        zmq::z85_encode(&pair.public_key)?,
        zmq::z85_encode(&pair.secret_key)?,
    ))
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A pod of the proxy image running `zmq-proxy-rpc` against the ZmqProxy
/// with key `key` of the `rpc-keys` Secret, as ServiceAccount `rpc`.
fn rpc_pod(name: &str, key: &str, restart: &str, command: &[&str]) -> Result<Pod> {
    let mut args = vec![
        "--kubernetes-service",
        NAME,
        "--host",
        "rpc",
        "--curve-secret-key-file",
    ];
    let key_path = format!("/keys/{key}");
    args.push(&key_path);
    args.extend_from_slice(command);
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "serviceAccountName": "rpc",
            "restartPolicy": restart,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 2,
            // The key files are group-readable for the image's group only.
            "securityContext": { "fsGroup": 65532 },
            "volumes": [{ "name": "keys", "secret": { "secretName": "rpc-keys", "defaultMode": 0o440 } }],
            "containers": [{
                "name": "rpc",
                "image": PROXY_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/usr/local/bin/zmq-proxy-rpc"],
                "args": args,
                "env": [{ "name": "RUST_LOG", "value": "warn" }],
                "volumeMounts": [{ "name": "keys", "mountPath": "/keys", "readOnly": true }],
                "securityContext": restricted(),
            }],
        },
    }))?)
}

fn finished(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// Runs a client pod to its end; its log.
async fn run_client(
    pods: &Api<Pod>,
    kc: &std::path::Path,
    ns: &str,
    name: &str,
    key: &str,
    call: &[&str],
) -> Result<String> {
    let mut command = vec!["call", "--topic", TOPIC, "--method", "echo"];
    command.extend_from_slice(call);
    pods.create(
        &PostParams::default(),
        &rpc_pod(name, key, "Never", &command)?,
    )
    .await?;
    let pod = wait_pod(pods, name, finished).await?;
    let log = kubectl(kc, &["-n", ns, "logs", name])?;
    ensure!(
        phase(&pod) == "Succeeded",
        "client pod {name} {}: {log}",
        phase(&pod)
    );
    Ok(log)
}

/// The sum of `sample` over the proxies at `ips` (their metrics port).
async fn proxies_metric(ips: &[String], sample: &str) -> Result<f64> {
    let mut sum = 0.0;
    for ip in ips {
        let (_, body) = harness::http::get(&format!("{ip}:9090"), "/metrics").await?;
        sum += body
            .lines()
            .find_map(|l| l.strip_prefix(sample))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(sum)
}

async fn scenario(cp: &ControlPlane, _node: &RealNode, ns: &str) -> Result<()> {
    let client = cp.client()?;
    let kc = cp.kubeconfig();

    // The operator, from the chart, as a container of the operator image.
    let values = cp.dir().join(format!("{ns}-values.json"));
    std::fs::write(
        &values,
        json!({
            "image": { "pullPolicy": "Never" },
            "replicaCount": 1,
            "rbac": { "scope": "namespaced", "namespaces": [ns] },
            "operator": { "logFormat": "text" },
        })
        .to_string(),
    )?;
    let chart = harness::tools::workspace_root().join("charts/zmq-proxy-operator");
    let t0 = Instant::now();
    let helm = std::process::Command::new(harness::tools::helm()?)
        .arg(format!("--kubeconfig={}", kc.display()))
        .args(["install", "zmq-proxy-operator"])
        .arg(&chart)
        .args(["--namespace", ns, "-f"])
        .arg(&values)
        .args(["--wait", "--timeout", "180s"])
        .output()
        .context("cannot run helm")?;
    if !helm.status.success() {
        bail!(
            "helm install failed: {}{}",
            String::from_utf8_lossy(&helm.stdout),
            String::from_utf8_lossy(&helm.stderr)
        );
    }
    println!("operator installed and ready in {:.1?}", t0.elapsed());

    // Keys: the RPC pods' own in one Secret, the proxies' authorized keys
    // in another. The server may use only its topic's identities.
    let (server_public, server_secret) = pair()?;
    let (client_public, client_secret) = pair()?;
    let (_, stranger_secret) = pair()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "rpc-keys",
                &[
                    ("server", &server_secret),
                    ("client", &client_secret),
                    ("stranger", &stranger_secret),
                ],
            ),
        )
        .await?;
    let authorized = format!("{server_public} rpc/{TOPIC}/*\n{client_public} rpc/*\n");
    secrets
        .create(
            &PostParams::default(),
            &secret("authorized", &[("authorized_keys", &authorized)]),
        )
        .await?;

    // The ZmqProxy: two proxies, CURVE on, keypair left to the operator.
    let manifest = format!(
        "apiVersion: zmqproxy.io/v1alpha1\nkind: ZmqProxy\nmetadata:\n  name: {NAME}\nspec:\n  replicas: 2\n  imagePullPolicy: Never\n  gracePeriodSeconds: 1\n  security:\n    curve:\n      enabled: true\n      authorizedKeys:\n        secret:\n          name: authorized\n"
    );
    let manifest_file = cp.dir().join(format!("{ns}-zmqproxy.yaml"));
    std::fs::write(&manifest_file, manifest)?;
    let t0 = Instant::now();
    kubectl(
        kc,
        &["-n", ns, "apply", "-f", &manifest_file.to_string_lossy()],
    )?;
    kubectl(
        kc,
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("zmqproxy/{NAME}"),
            "--timeout=180s",
        ],
    )?;
    println!("CURVE ZmqProxy Ready in {:.1?}", t0.elapsed());

    // One proxy key, in the operator's Secret, the status and every slice.
    let generated = secrets.get(&format!("{NAME}-curve")).await?;
    let data = generated.data.clone().unwrap_or_default();
    let public = data
        .get("public-key")
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .context("the operator's Secret has no public-key")?;
    ensure!(data.contains_key("secret-key"), "no secret-key: {data:?}");
    let owners = generated.metadata.owner_references.unwrap_or_default();
    ensure!(
        owners
            .iter()
            .any(|o| o.kind == "ZmqProxy" && o.name == NAME),
        "the key Secret is not owned by the ZmqProxy: {owners:?}"
    );
    let status_key = kubectl(
        kc,
        &[
            "-n",
            ns,
            "get",
            &format!("zmqproxy/{NAME}"),
            "-o",
            "jsonpath={.status.curvePublicKey}",
        ],
    )?;
    assert_eq!(status_key.trim(), public, "status.curvePublicKey");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let listed = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={NAME}")))
        .await?;
    let mut ips = Vec::new();
    for slice in &listed.items {
        let annotations: BTreeMap<String, String> =
            slice.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(CURVE_KEY_ANNOTATION),
            Some(&public),
            "slice {:?}",
            slice.metadata.name
        );
        ips.extend(
            slice
                .endpoints
                .iter()
                .filter_map(|e| e.addresses.first().cloned()),
        );
    }
    assert_eq!(ips.len(), 2, "two proxies registered: {ips:?}");

    // The RPC pods' ServiceAccount: the matchmaker's server and client Roles.
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "rpc" },
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let mut rules = rbac::rpc_server_rules();
    rules.extend(rbac::rpc_client_rules());
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rbac::role("rpc", Some(ns), rules))
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": { "name": "rpc" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rpc" },
        "subjects": [{ "kind": "ServiceAccount", "name": "rpc", "namespace": ns }],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;

    // The server pod: registered (its Lease) and connected.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    pods.create(
        &PostParams::default(),
        &rpc_pod(
            "rpc-server",
            "server",
            "Always",
            &["serve", "--topic", TOPIC],
        )?,
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    until("the RPC server pod's Lease", TIMEOUT, || async {
        let running = phase(&pods.get("rpc-server").await?) == "Running";
        let registered = !leases.list(&ListParams::default()).await?.items.is_empty();
        Ok((running && registered).then_some(()))
    })
    .await?;
    println!("RPC server pod registered in {:.1?}", t0.elapsed());

    // An authorized client pod: every call answered.
    let t0 = Instant::now();
    let log = run_client(
        &pods,
        kc,
        ns,
        "rpc-client",
        "client",
        &["--args", r#"{"n":7}"#, "--count", "4"],
    )
    .await?;
    let answers = log.lines().filter(|l| l.starts_with(r#"{"n":7}"#)).count();
    assert_eq!(answers, 4, "client log:\n{log}");
    assert!(!log.contains("error:"), "client log:\n{log}");
    println!(
        "authorized client pod: 4 calls answered, pod done in {:.1?}",
        t0.elapsed()
    );
    let served = kubectl(kc, &["-n", ns, "logs", "rpc-server"])?;
    assert!(
        served.matches(r#"{"n":7}"#).count() >= 4,
        "server log:\n{served}"
    );
    assert_eq!(proxies_metric(&ips, REFUSED_UNKNOWN).await?, 0.0);

    // A client whose key the proxies do not know: refused, counted.
    let log = run_client(
        &pods,
        kc,
        ns,
        "rpc-stranger",
        "stranger",
        &["--args", "{}", "--timeout", "3"],
    )
    .await?;
    assert!(log.contains("error:"), "stranger's log:\n{log}");
    let refused = proxies_metric(&ips, REFUSED_UNKNOWN).await?;
    assert!(refused >= 1.0, "unknown-key refusals: {refused}");
    println!("unknown client key refused by the proxies ({refused} handshakes counted)");
    Ok(())
}
