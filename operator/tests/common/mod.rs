//! Shared pieces of the operator's end-to-end tests: installing the CRD from
//! crds/, starting the real `zmq-proxy-operator` binary against the test
//! control plane, and waiting for cluster state with deadlines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::process::{Process, ProcessSpec};
use harness::real_node::RealNode;
use harness::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use zmq_proxy_operator::crd::ZmqProxy;

/// Generous deadline for anything that involves the controller manager and
/// processes on a loaded 2-core machine.
pub const LONG: Duration = Duration::from_secs(120);
/// Deadline for things the operator alone does.
pub const SHORT: Duration = Duration::from_secs(30);

/// Creates (or updates) the ZmqProxy CRD from crds/zmqproxy.yaml and waits
/// until it is Established.
pub async fn install_crd(client: &Client) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/zmqproxy.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).context("parsing the CRD")?;
    install_crd_object(client, &crd).await
}

/// Applies `crd` and waits for Established.
pub async fn install_crd_object(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    harness::wait::until("the CRD to be established", LONG, || async {
        let crd = api.get(&name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(established.then_some(()))
    })
    .await?;
    // Established can precede the first successful request by a moment on
    // a loaded API server: wait until the resource answers a list.
    let version = crd
        .spec
        .versions
        .first()
        .map(|v| v.name.clone())
        .unwrap_or_default();
    let ar = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind),
        &crd.spec.names.plural,
    );
    let objects: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    harness::wait::until("the custom resource to be served", LONG, || async {
        Ok(objects
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
}

/// How to start one operator process.
pub struct OperatorOptions {
    /// Kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// WATCH_NAMESPACES (empty = all).
    pub namespaces: Vec<String>,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Identity in the Lease.
    pub identity: String,
    /// Lease duration.
    pub lease_seconds: u64,
    /// Discovery refresh interval.
    pub discovery_seconds: u64,
}

impl OperatorOptions {
    /// Defaults for watching `ns` with the admin kubeconfig.
    pub fn new(cp: &ControlPlane, ns: &str) -> Self {
        OperatorOptions {
            kubeconfig: cp.kubeconfig().to_path_buf(),
            namespaces: vec![ns.to_string()],
            lease_namespace: ns.to_string(),
            identity: format!("operator-{}", cp.unique_name("id")),
            lease_seconds: 15,
            discovery_seconds: 30,
        }
    }
}

/// A running operator process and its metrics address.
pub struct Operator {
    /// The process (SIGKILLed on drop).
    pub process: Process,
    /// host:port of /metrics, /healthz, /readyz.
    pub metrics: String,
    /// Its log file.
    pub log: PathBuf,
    /// Its Lease identity.
    pub identity: String,
}

impl Operator {
    /// Starts the workspace's zmq-proxy-operator binary.
    pub fn start(cp: &ControlPlane, opts: &OperatorOptions) -> Result<Operator> {
        let port = harness::net::free_port()?;
        let metrics = format!("127.0.0.1:{port}");
        let log = cp.dir().join(format!("{}.log", opts.identity));
        let mut spec = ProcessSpec::new(
            opts.identity.clone(),
            harness::workspace_binary("zmq-proxy-operator"),
            log.clone(),
        )
        .args(["run"]);
        spec.env = vec![
            ("KUBECONFIG".into(), opts.kubeconfig.display().to_string()),
            ("WATCH_NAMESPACES".into(), opts.namespaces.join(",")),
            ("METRICS_ADDRESS".into(), metrics.clone()),
            ("LEASE_NAMESPACE".into(), opts.lease_namespace.clone()),
            (
                "LEASE_DURATION_SECONDS".into(),
                opts.lease_seconds.to_string(),
            ),
            (
                "DISCOVERY_INTERVAL_SECONDS".into(),
                opts.discovery_seconds.to_string(),
            ),
            ("POD_NAME".into(), opts.identity.clone()),
            (
                "RUST_LOG".into(),
                "info,zmq_proxy_operator=debug,kube_runtime=debug".into(),
            ),
        ];
        let process = Process::spawn(&spec).context("starting zmq-proxy-operator")?;
        Ok(Operator {
            process,
            metrics,
            log,
            identity: opts.identity.clone(),
        })
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET http://<metrics>/<path>: status code and body.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.metrics, path).await
    }

    /// The value of an unlabelled metric, if exported.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (_, body) = self.http_get("/metrics").await?;
        Ok(body.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.strip_prefix(' ')?;
            value.trim().parse().ok()
        }))
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub use harness::http::get as http_get;

/// Creates a ZmqProxy from a JSON spec.
pub async fn create_zp(client: &Client, ns: &str, name: &str, spec: Value) -> Result<ZmqProxy> {
    let api: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    let obj: ZmqProxy = serde_json::from_value(json!({
        "apiVersion": "zmqproxy.io/v1alpha1",
        "kind": "ZmqProxy",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Creates a ZmqProxy from raw JSON (bypassing Rust types, to send what a
/// user could send); returns the API error on rejection.
pub async fn create_raw(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<(), kube::Error> {
    let ar = kube::core::ApiResource::erase::<ZmqProxy>(&());
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zmqproxy.io/v1alpha1",
        "kind": "ZmqProxy",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &obj).await.map(|_| ())
}

/// The condition `type_` of a ZmqProxy as (status, reason).
pub fn condition(zp: &ZmqProxy, type_: &str) -> Option<(String, String)> {
    zp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until the ZmqProxy satisfies `check`, returning it.
pub async fn wait_zp(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ZmqProxy) -> bool,
) -> Result<ZmqProxy> {
    let api: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    let check = &check;
    let api = &api;
    harness::wait::until(what, timeout, || async move {
        let zp = api.get(name).await?;
        Ok(check(&zp).then_some(zp))
    })
    .await
}

/// Waits until `get` finds nothing (404).
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    harness::wait::until(&format!("{name} to be deleted"), timeout, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// Runs `scenario` with the machine's real node (this checkout's images,
/// so the proxy pods the operator makes are containers; waits while
/// another process runs the node) and one operator process watching `ns`.
/// The operator's log tail joins a failure, as do the pods' and the node's
/// logs; the operator and the node are stopped whatever happens.
pub async fn on_real_node(
    cp: &ControlPlane,
    ns: &str,
    scenario: impl AsyncFnOnce(&RealNode, &Operator) -> Result<()>,
) -> Result<()> {
    let node = RealNode::start_with_workspace_images(cp).await?;
    let result = async {
        let op = Operator::start(cp, &OperatorOptions::new(cp, ns))?;
        let result = with_log(scenario(&node, &op).await, &op);
        op.process.terminate(Duration::from_secs(10)).await;
        result
    }
    .await;
    if result.is_err() {
        node.print_diagnostics(&[ns]).await;
    }
    node.stop().await?;
    result
}

/// Fails with the operator's log tail attached, for diagnosis.
pub fn with_log<T>(r: Result<T>, op: &Operator) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            let log = op.log_text();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("eof in poll"))
                .rev()
                .take(150)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{e:#}\n--- operator log tail ---\n{}", tail.join("\n"))
        }
    }
}
