//! The Helm chart installed the way users install it, on the real control
//! plane: `helm install` (namespaced scope), the operator pods run through
//! the node agent (the operator image mapped to the workspace's binary) with
//! exactly the chart's ServiceAccount and RBAC (checked with `kubectl auth
//! can-i`), elect one leader and reconcile examples/zmqproxy-basic.yaml into
//! running, registered proxies. A real Prometheus (built from Go modules by
//! tests/install.sh) discovers the pods through `kubernetes_sd_configs` with
//! exactly the scrape configuration of docs/metrics.md,
//! scrapes proxies and operators, evaluates the chart's alert rules and
//! answers every dashboard query; raw ZMTP traffic into one proxy moves its
//! counters under the documented labels. Then both operators are Ready
//! behind their metrics Service, `helm upgrade` to cluster scope reaches a
//! namespace the values never named, and `helm uninstall` cleans up.
//!
//! Needs helm, kubectl and prometheus (`bash tests/install.sh`) and the
//! workspace binaries (`cargo build --workspace --bins` first).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use harness::process::{Process, ProcessSpec};
use harness::wait::until;
use harness::{ControlPlane, NodeAgent};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{json, Value};

const RELEASE: &str = "zp";
const TIMEOUT: Duration = Duration::from_secs(180);
const PROXY_REPO: &str = "ghcr.io/zmq-proxy/zmq-proxy";
const OPERATOR_REPO: &str = "ghcr.io/zmq-proxy/zmq-proxy-operator";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn chart() -> PathBuf {
    root().join("charts/zmq-proxy-operator")
}

fn read(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs a tool; Ok(stdout) or an error with its output.
fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_objects(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(serde_json::to_value(v)?);
        }
    }
    Ok(out)
}

use harness::http::get as http_get;

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server started by the test, stopped (by PID) when dropped.
struct Prometheus {
    process: Process,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.terminate_blocking(Duration::from_secs(5));
    }
}

impl Prometheus {
    /// GET /api/v1/<path>; the `data` of a successful answer.
    async fn api(&self, path: &str) -> Result<Value> {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/{path}")).await?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("HTTP {code}: {body}"))?;
        ensure!(
            code == 200 && v["status"] == "success",
            "GET /api/v1/{path}: HTTP {code}: {body}"
        );
        Ok(v["data"].clone())
    }

    /// An instant query; its result vector.
    async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self
            .api(&format!("query?query={}", percent_encode(promql)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn zmqproxy_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("zmqproxy.io", "v1alpha1", "ZmqProxy"),
        "zmqproxies",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready pods matching `selector`: name -> pod IP.
async fn ready_pods(client: &Client, ns: &str, selector: &str) -> Result<BTreeMap<String, String>> {
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
async fn service_endpoints(client: &Client, ns: &str, service: &str) -> Result<BTreeSet<String>> {
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

/// docs/metrics.md: metric -> documented labels.
fn documented_metrics() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for line in read(root().join("docs/metrics.md"))?.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`zmq_proxy") {
            continue;
        }
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| l.starts_with('`'))
            .filter_map(|l| {
                l.trim_matches('`')
                    .split_whitespace()
                    .next()
                    .map(|s| s.trim_matches('`').to_string())
            })
            .collect();
        out.insert(cells[1].trim_matches('`').to_string(), labels);
    }
    Ok(out)
}

/// The documented label values (the "Label values" table).
fn documented_label_values() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let doc = read(root().join("docs/metrics.md"))?;
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 4 && ["`socket`", "`direction`", "`type`", "`reason`"].contains(&cells[1])
        {
            let values: BTreeSet<String> = cells[2]
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, v)| v.to_string())
                .collect();
            out.insert(cells[1].trim_matches('`').to_string(), values);
        }
    }
    Ok(out)
}

/// The scrape configuration documented in docs/metrics.md (the yaml block
/// that starts with `scrape_configs:`).
fn documented_scrape_config() -> Result<Value> {
    let doc = read(root().join("docs/metrics.md"))?;
    let start = doc
        .find("```yaml\nscrape_configs:")
        .context("scrape config block in docs/metrics.md")?;
    let block = &doc[start + "```yaml\n".len()..];
    let block = &block[..block.find("```").context("end of block")?];
    let v: serde_yaml::Value = serde_yaml::from_str(block)?;
    Ok(serde_json::to_value(v)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_runs_the_operator_which_reconciles_an_example_and_prometheus_scrapes_everything(
) -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    let release_ns = cp.namespace("chart-op").await?;
    let watch_ns = cp.namespace("chart-zp").await?;
    // Named nowhere in the values: reached only after the upgrade to
    // cluster scope.
    let other_ns = cp.namespace("chart-any").await?;
    let images = HashMap::from([
        (
            PROXY_REPO.to_string(),
            harness::workspace_binary("zmq-proxy"),
        ),
        (
            OPERATOR_REPO.to_string(),
            harness::workspace_binary("zmq-proxy-operator"),
        ),
    ]);
    for bin in images.values() {
        ensure!(
            bin.exists(),
            "{} missing: build the workspace binaries first",
            bin.display()
        );
    }
    let agent = NodeAgent::start(cp, images).await?;
    let result = scenario(cp, &client, &release_ns, &watch_ns, &other_ns).await;
    if let Err(e) = &result {
        eprintln!("scenario failed: {e:#}");
        for ns in [&release_ns, &watch_ns, &other_ns] {
            if let Ok(pods) = Api::<Pod>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
            {
                for pod in pods.items {
                    eprintln!(
                        "--- pod {ns}/{}:\n{}",
                        pod.name_any(),
                        agent.pod_log(ns, &pod.name_any())
                    );
                }
            }
        }
        let log = cp.dir().join("kube-apiserver.log");
        eprintln!(
            "--- kube-apiserver log tail:\n{}",
            harness::control_plane::log_tail(&log)
        );
    }
    // The scenario's error first: a failed stop is usually its consequence.
    let stopped = agent.stop().await;
    cleanup(
        cp,
        &client,
        &release_ns,
        &[&release_ns, &watch_ns, &other_ns],
    )
    .await;
    result?;
    stopped
}

/// Leaves an external cluster as it was (the local plane dies with the
/// test anyway): the release, Prometheus's cluster-wide RBAC, the
/// namespaces. Best effort: a failed step must not hide the test's result.
async fn cleanup(cp: &ControlPlane, client: &Client, release_ns: &str, namespaces: &[&str]) {
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

async fn scenario(
    cp: &ControlPlane,
    client: &Client,
    release_ns: &str,
    watch_ns: &str,
    other_ns: &str,
) -> Result<()> {
    let helm = harness::tools::helm()?;
    let kubectl = harness::tools::kubectl()?;
    let kubeconfig = cp
        .kubeconfig()
        .to_str()
        .context("kubeconfig path")?
        .to_string();

    // 1. helm install, namespaced scope: the operator may touch only watch_ns
    //    (and its Lease in release_ns).
    let values = json!({
        "rbac": {"scope": "namespaced", "namespaces": [watch_ns]},
        "leaderElection": {"leaseDurationSeconds": 4},
        "operator": {"logFormat": "text"},
        "probes": {"readiness": {"periodSeconds": 1}},
    });
    let values_file = cp.dir().join(format!("chart-values-{release_ns}.json"));
    std::fs::write(&values_file, values.to_string())?;
    let chart_dir = chart();
    run(
        &helm,
        &[
            "install",
            RELEASE,
            chart_dir.to_str().context("chart path")?,
            "--namespace",
            release_ns,
            "--kubeconfig",
            &kubeconfig,
            "-f",
            values_file.to_str().context("values path")?,
        ],
    )?;

    // 1b. The documented CRD upgrade path works on the CRD Helm installed:
    //     server-side apply takes the object over from Helm's field manager.
    let crds_dir = chart().join("crds");
    let out = run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds_dir.to_str().context("crds path")?,
        ],
    )?;
    ensure!(
        out.contains("zmqproxies.zmqproxy.io serverside-applied"),
        "kubectl apply --server-side: {out}"
    );

    // 1c. Namespaced scope grants exactly the watched namespace (and the
    //     Lease at home); the PodDisruptionBudget is policy/v1.
    let sa = format!("system:serviceaccount:{release_ns}:{RELEASE}-zmq-proxy-operator");
    let can = |verb: &str, resource: &str, ns: &str| {
        let out = Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &kubeconfig,
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                ns,
                "--as",
                &sa,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        out == "yes"
    };
    ensure!(
        can("watch", "zmqproxies.zmqproxy.io", watch_ns),
        "operator cannot watch ZmqProxies in {watch_ns}"
    );
    ensure!(
        can("create", "deployments.apps", watch_ns),
        "operator cannot create Deployments in {watch_ns}"
    );
    ensure!(
        can("update", "leases.coordination.k8s.io", release_ns),
        "operator cannot renew its Lease"
    );
    ensure!(
        !can("list", "zmqproxies.zmqproxy.io", other_ns),
        "namespaced scope reaches {other_ns}"
    );
    ensure!(
        !can("create", "deployments.apps", release_ns),
        "namespaced scope writes Deployments at home"
    );
    ensure!(
        !can("list", "secrets", watch_ns),
        "the operator can read Secrets"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), release_ns);
    ensure!(
        pdbs.get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
            .await?
            .is_some(),
        "no policy/v1 PodDisruptionBudget"
    );

    // 2. Two operator pods run; one of them takes the Lease.
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator");
    let operators = until("two running operator pods", TIMEOUT, || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), release_ns);
        let running: BTreeMap<String, String> = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| Some((p.name_any(), p.status?.pod_ip?)))
            .collect();
        Ok((running.len() == 2).then_some(running))
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), release_ns);
    let holder = until("the Lease held by an operator pod", TIMEOUT, || async {
        let lease = leases.get_opt("zmq-proxy-operator").await?;
        Ok(lease
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| operators.contains_key(h)))
    })
    .await?;
    eprintln!("operators {operators:?}, leader {holder}");

    // 4. An example from the chart, applied with kubectl, reconciled into
    //    ready proxies by the operator running on the chart's RBAC alone.
    let example = chart().join("examples/zmqproxy-basic.yaml");
    run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "-n",
            watch_ns,
            "-f",
            example.to_str().context("path")?,
        ],
    )?;
    let zps = zmqproxy_api(client, watch_ns);
    until(
        "ZmqProxy basic Ready with 2 ready replicas",
        TIMEOUT,
        || async {
            let zp = zps.get("basic").await?;
            let status = &zp.data["status"];
            let ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok((ready && status["readyReplicas"] == 2).then_some(()))
        },
    )
    .await?;
    let proxies = ready_pods(
        client,
        watch_ns,
        "app.kubernetes.io/instance=basic,app.kubernetes.io/component=proxy",
    )
    .await?;
    ensure!(proxies.len() == 2, "proxy pods: {proxies:?}");
    let deployment: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), watch_ns);
    let managers: BTreeSet<String> = deployment
        .get("basic")
        .await?
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    ensure!(
        managers.contains("zmq-proxy-operator"),
        "Deployment basic managed by {managers:?}"
    );

    // 5. Prometheus: its own ServiceAccount allowed to list/watch pods,
    //    Kubernetes service discovery against this API server with the
    //    documented relabelling, the chart's alert rules.
    let prom = start_prometheus(cp, client, release_ns, watch_ns).await?;
    let result = check_prometheus(&prom, &operators, &proxies, watch_ns).await;
    if result.is_err() {
        eprintln!("--- prometheus log:\n{}", prom.log_tail());
    }
    result?;
    drop(prom);

    // 6. Both operator pods are Ready (a standby at once, the leader once
    //    its caches synced), the metrics Service routes to both, and each
    //    answers /healthz: what `helm test` checks through the Service (this
    //    plane has no cluster DNS or Service proxy, so the test pod itself
    //    cannot run).
    let ready = until("two ready operator pods", TIMEOUT, || async {
        let pods = ready_pods(client, release_ns, &selector).await?;
        if pods.len() == 2 {
            return Ok(Some(pods));
        }
        // Say why: what each operator answers on /readyz.
        let all: Api<Pod> = Api::namespaced(client.clone(), release_ns);
        let mut answers = Vec::new();
        for p in all
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
        {
            if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                let answer = http_get(&format!("{ip}:8080"), "/readyz").await;
                answers.push(format!("{} {ip}: {answer:?}", p.name_any()));
            }
        }
        bail!("ready: {pods:?}; /readyz: {answers:?}")
    })
    .await?;
    ensure!(
        ready == operators,
        "ready operators {ready:?} vs running {operators:?}"
    );
    // EndpointSlices rather than Endpoints: the Endpoints API refuses the
    // loopback pod IPs of this plane (the EndpointSlice API accepts them),
    // and slices are what Services route by since 1.19.
    let service = format!("{RELEASE}-zmq-proxy-operator-metrics");
    let addrs = until("the metrics Service's EndpointSlices", TIMEOUT, || async {
        let slices = service_endpoints(client, release_ns, &service).await?;
        if slices.len() == 2 {
            return Ok(Some(slices));
        }
        bail!("ready endpoints {slices:?}")
    })
    .await?;
    for a in &addrs {
        let (code, body) = http_get(a, "/healthz").await?;
        ensure!(code == 200, "/healthz on {a}: {code} {body}");
    }
    let expected: BTreeSet<String> = operators.values().map(|ip| format!("{ip}:8080")).collect();
    ensure!(
        addrs == expected,
        "Service endpoints {addrs:?} are not the operator pods {expected:?}"
    );

    // 7. helm upgrade to cluster scope: a ClusterRole replaces the Roles,
    //    the operators roll and watch every namespace, so a ZmqProxy in a
    //    namespace the values never named is reconciled too.
    run(
        &helm,
        &[
            "upgrade",
            RELEASE,
            chart_dir.to_str().context("chart path")?,
            "--namespace",
            release_ns,
            "--kubeconfig",
            &kubeconfig,
            "--reuse-values",
            "--set",
            "rbac.scope=cluster",
        ],
    )?;
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), watch_ns);
    ensure!(
        roles
            .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
            .await?
            .is_none(),
        "the namespaced Role is gone after the upgrade"
    );
    let example = chart().join("examples/zmqproxy-single-router.yaml");
    run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "-n",
            other_ns,
            "-f",
            example.to_str().context("path")?,
        ],
    )?;
    let zps = zmqproxy_api(client, other_ns);
    until(
        "ZmqProxy single Ready after the upgrade",
        TIMEOUT,
        || async {
            let zp = zps.get("single").await?;
            let status = &zp.data["status"];
            let ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok((ready && status["readyReplicas"] == 2).then_some(()))
        },
    )
    .await?;

    // `helm uninstall` removes what the chart made and leaves the CRD and
    // the ZmqProxies (documented): the proxies keep running unmanaged.
    run(
        &helm,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            release_ns,
            "--kubeconfig",
            &kubeconfig,
        ],
    )?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), release_ns);
    until("the operator Deployment gone", TIMEOUT, || async {
        Ok(deployments
            .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    ensure!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
            .await?
            .is_none(),
        "helm uninstall left the ClusterRole"
    );
    ensure!(
        zmqproxy_api(client, watch_ns)
            .get_opt("basic")
            .await?
            .is_some(),
        "helm uninstall must not delete users' ZmqProxies"
    );
    Ok(())
}

async fn start_prometheus(
    cp: &ControlPlane,
    client: &Client,
    release_ns: &str,
    watch_ns: &str,
) -> Result<Prometheus> {
    let name = format!("prometheus-{release_ns}");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": release_ns}]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let token = cp
        .service_account_token(release_ns, "prometheus", None)
        .await?;

    let dir = cp.dir().join(&name);
    std::fs::create_dir_all(dir.join("data"))?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let cluster = cp.cluster();
    let ca_file = match (
        &cluster.certificate_authority,
        &cluster.certificate_authority_data,
    ) {
        (Some(f), _) => PathBuf::from(f),
        (None, Some(data)) => {
            let pem = base64_decode(data)?;
            let f = dir.join("ca.crt");
            std::fs::write(&f, pem)?;
            f
        }
        (None, None) => bail!("the cluster has no CA to trust"),
    };

    let mut scrape = documented_scrape_config()?;
    let job = scrape["scrape_configs"][0]
        .as_object_mut()
        .context("documented job")?;
    job.insert("scrape_interval".into(), json!("1s"));
    job.insert("scrape_timeout".into(), json!("1s"));
    let sd = job["kubernetes_sd_configs"][0]
        .as_object_mut()
        .context("kubernetes_sd_configs")?;
    sd.insert("api_server".into(), json!(cluster.server));
    sd.insert("tls_config".into(), json!({"ca_file": ca_file}));
    sd.insert(
        "authorization".into(),
        json!({"credentials_file": token_file}),
    );
    sd.insert(
        "namespaces".into(),
        json!({"names": [release_ns, watch_ns]}),
    );
    // The chart's alert rules, as the PrometheusRule would carry them.
    let rendered = run(
        &harness::tools::helm()?,
        &[
            "template",
            RELEASE,
            chart().to_str().context("chart")?,
            "--kube-version",
            harness::tools::K8S_VERSION,
            "--namespace",
            release_ns,
            "--set",
            "monitoring.prometheusRule.enabled=true",
        ],
    )?;
    let rule = parse_objects(&rendered)?
        .into_iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .context("rendered PrometheusRule")?;
    let rules_file = dir.join("rules.json");
    std::fs::write(&rules_file, rule["spec"].to_string())?;

    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules_file],
        "scrape_configs": scrape["scrape_configs"],
    });
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, serde_yaml::to_string(&config)?)?;
    let port = harness::net::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("prometheus.log");
    let spec = ProcessSpec::new("prometheus", harness::tools::prometheus()?, &log).args([
        format!("--config.file={}", config_file.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={addr}"),
    ]);
    let process = Process::spawn(&spec)?;
    let prom = Prometheus { process, addr, log };
    until("Prometheus ready", Duration::from_secs(60), || async {
        if let Some(exit) = prom.process.exited() {
            bail!("prometheus exited ({exit}):\n{}", prom.log_tail());
        }
        Ok(matches!(http_get(&prom.addr, "/-/ready").await, Ok((200, _))).then_some(()))
    })
    .await?;
    Ok(prom)
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .ok_or_else(|| anyhow!("bad base64"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

async fn check_prometheus(
    prom: &Prometheus,
    operators: &BTreeMap<String, String>,
    proxies: &BTreeMap<String, String>,
    watch_ns: &str,
) -> Result<()> {
    // One healthy target per pod: the documented relabelling merges the
    // per-port targets of a pod into one.
    let expected_targets: BTreeSet<String> =
        operators.keys().chain(proxies.keys()).cloned().collect();
    until("every pod scraped and up", TIMEOUT, || async {
        let data = prom.api("targets?state=active").await?;
        let targets = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let pods: Vec<String> = targets
            .iter()
            .map(|t| t["labels"]["pod"].as_str().unwrap_or_default().to_string())
            .collect();
        let up = targets.iter().all(|t| t["health"] == "up");
        let distinct: BTreeSet<String> = pods.iter().cloned().collect();
        if pods.len() != distinct.len() {
            bail!("duplicate targets per pod: {pods:?}");
        }
        Ok((up && distinct == expected_targets).then_some(()))
    })
    .await?;

    // The proxies' metrics, with the documented labels and label values.
    let version = read(root().join("Cargo.toml"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .map(|v| v.trim_end_matches('"').to_string())
        })
        .context("workspace version")?;
    let build = prom.query("zmq_proxy_build_info").await?;
    let build_pods: BTreeSet<String> = build.iter().map(|s| label(s, "pod").to_string()).collect();
    ensure!(
        build_pods == proxies.keys().cloned().collect(),
        "zmq_proxy_build_info pods {build_pods:?} vs {proxies:?}"
    );
    for s in &build {
        ensure!(
            label(s, "namespace") == watch_ns && label(s, "container") == "zmq-proxy",
            "target labels: {s}"
        );
        ensure!(
            label(s, "version") == version && label(s, "protocol") == "1.0",
            "build labels: {s}"
        );
        ensure!(
            label(s, "libzmq").split('.').count() == 3,
            "libzmq version: {s}"
        );
        let ip = &proxies[label(s, "pod")];
        ensure!(
            label(s, "instance") == format!("{ip}:9090"),
            "instance is the pod's metrics port: {s}"
        );
    }
    let values = documented_label_values()?;
    for (metric, label_name) in [
        ("zmq_proxy_messages_total", "socket"),
        ("zmq_proxy_messages_total", "direction"),
        ("zmq_proxy_messages_total", "type"),
        ("zmq_proxy_bytes_total", "type"),
        ("zmq_proxy_dropped_total", "reason"),
        ("zmq_proxy_connected_peers", "socket"),
    ] {
        let series = prom
            .query(&format!("{metric}{{namespace=\"{watch_ns}\"}}"))
            .await?;
        let seen: BTreeSet<String> = series
            .iter()
            .map(|s| label(s, label_name).to_string())
            .collect();
        let documented = &values[label_name];
        ensure!(
            !seen.is_empty() && seen.is_subset(documented),
            "{metric} {label_name} values {seen:?} not within {documented:?}"
        );
        if label_name != "socket" {
            ensure!(
                seen == *documented,
                "{metric}: every {label_name} is pre-created: {seen:?} vs {documented:?}"
            );
        }
        let pods: BTreeSet<String> = series.iter().map(|s| label(s, "pod").to_string()).collect();
        ensure!(pods.len() == 2, "{metric} from both proxies: {pods:?}");
    }
    // Double-router mode: both ROUTERs exist.
    let sockets: BTreeSet<String> = prom
        .query("zmq_proxy_connected_peers")
        .await?
        .iter()
        .map(|s| label(s, "socket").to_string())
        .collect();
    ensure!(
        sockets.contains("frontend") && sockets.contains("backend"),
        "sockets {sockets:?}"
    );

    // The operators: two replicas scraped, exactly one leader, which reconciled.
    let leaders = prom.query("zmq_proxy_operator_is_leader").await?;
    ensure!(leaders.len() == 2, "is_leader series: {leaders:?}");
    let sum: f64 = leaders
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .sum();
    ensure!(sum == 1.0, "leaders: {leaders:?}");
    let reconciles = prom
        .query("sum(zmq_proxy_operator_reconciles_total)")
        .await?;
    let n: f64 = reconciles
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
        .unwrap_or(0.0);
    ensure!(n >= 1.0, "reconciles: {reconciles:?}");
    for s in &leaders {
        ensure!(
            label(s, "container") == "operator",
            "operator target labels: {s}"
        );
    }

    // Every zmq_proxy metric name Prometheus holds is documented, with only
    // documented labels (plus the target labels), and every documented
    // metric is there.
    let doc = documented_metrics()?;
    let names: BTreeSet<String> = serde_json::from_value(prom.api("label/__name__/values").await?)?;
    let ours: BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("zmq_proxy"))
        .cloned()
        .collect();
    let family = |n: &str| -> Option<String> {
        if doc.contains_key(n) {
            return Some(n.to_string());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|s| {
            n.strip_suffix(s)
                .filter(|b| doc.contains_key(*b))
                .map(String::from)
        })
    };
    let target_labels: BTreeSet<&str> = [
        "__name__",
        "instance",
        "job",
        "namespace",
        "pod",
        "container",
    ]
    .into();
    let mut problems = Vec::new();
    let mut families = BTreeSet::new();
    for n in &ours {
        let Some(f) = family(n) else {
            problems.push(format!("{n} scraped but not in docs/metrics.md"));
            continue;
        };
        families.insert(f.clone());
        for s in prom.query(n).await? {
            for (l, _) in s["metric"].as_object().cloned().unwrap_or_default() {
                if !target_labels.contains(l.as_str()) && !doc[&f].contains(&l) {
                    problems.push(format!("{n}: label {l} not documented"));
                }
            }
        }
    }
    // A labelled counter exists once its first label value was seen: the
    // reconcile error counter appears with the first error (documented).
    let after_first_event = ["zmq_proxy_operator_reconcile_errors_total"];
    for f in doc.keys() {
        if !families.contains(f) && !after_first_event.contains(&f.as_str()) {
            problems.push(format!("{f} documented but not scraped"));
        }
    }
    problems.sort();
    problems.dedup();
    ensure!(problems.is_empty(), "{}", problems.join("\n"));

    // The chart's alert rules load and evaluate cleanly; nothing fires on a
    // healthy install.
    until("the chart's rules evaluated", TIMEOUT, || async {
        let data = prom.api("rules").await?;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        ensure!(rules.len() >= 6, "rules loaded: {rules:?}");
        for r in &rules {
            ensure!(
                r["health"] != "err",
                "rule {} failed: {}",
                r["name"],
                r["lastError"]
            );
            ensure!(
                r["state"] == "inactive",
                "alert {} is {} on a healthy install",
                r["name"],
                r["state"]
            );
        }
        Ok(rules.iter().all(|r| r["health"] == "ok").then_some(()))
    })
    .await?;

    // Traffic moves the counters, under the documented labels: a DEALER
    // sends one protocol-1.0 CALL for a server nobody runs (received on the
    // frontend, unroutable on the backend) and one malformed message.
    let (pod, ip) = proxies.iter().next().context("a proxy")?;
    let mut dealer = zmtp::Dealer::connect(&format!("{ip}:50001")).await?;
    dealer
        .send(&[
            b"",
            b"1.0",
            b"1",
            b"nowhere/compute/0f7c0d42-7a3c-4f0e-9a8e-2b7c1c0d1e2f",
            b"6b1c2a44-aaaa-11ee-8c90-0242ac120002",
            b"[{}, {\"method\": \"ping\"}]",
        ])
        .await?;
    dealer.send(&[b"not an envelope"]).await?;
    let expectations = [
        format!("zmq_proxy_messages_total{{pod=\"{pod}\",socket=\"frontend\",direction=\"in\",type=\"call\"}}"),
        format!("zmq_proxy_dropped_total{{pod=\"{pod}\",socket=\"backend\",reason=\"unroutable\"}}"),
        format!("zmq_proxy_dropped_total{{pod=\"{pod}\",socket=\"frontend\",reason=\"too_few_frames\"}}"),
        format!("zmq_proxy_connected_peers{{pod=\"{pod}\",socket=\"frontend\"}}"),
    ];
    for q in &expectations {
        until(&format!("{q} == 1"), TIMEOUT, || async {
            let r = prom.query(q).await?;
            let v: Option<f64> = r.first().and_then(|s| s["value"][1].as_str()?.parse().ok());
            Ok((v == Some(1.0)).then_some(()))
        })
        .await?;
    }
    let calls = prom
        .query(&format!(
            "sum(zmq_proxy_messages_total{{namespace=\"{watch_ns}\",type=\"call\",direction=\"in\"}})"
        ))
        .await?;
    ensure!(
        calls.first().and_then(|s| s["value"][1].as_str()) == Some("1"),
        "exactly one call through all proxies: {calls:?}"
    );
    drop(dealer);

    // Every dashboard query runs; the ones about present series answer.
    let dash: Value =
        serde_json::from_str(&read(chart().join("files/dashboards/zmq-proxy.json"))?)?;
    for panel in dash["panels"].as_array().context("panels")? {
        for t in panel["targets"].as_array().context("targets")? {
            let expr = t["expr"].as_str().context("expr")?;
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$namespace", watch_ns)
                .replace("$pod", ".*");
            let result = prom
                .query(&q)
                .await
                .with_context(|| format!("dashboard panel {}: {q}", panel["title"]))?;
            let must_answer = [
                "Proxies up",
                "Build",
                "Connected peers",
                "Proxy memory (RSS)",
                "Operator memory (RSS)",
            ];
            if must_answer.contains(&panel["title"].as_str().unwrap_or_default()) {
                ensure!(
                    !result.is_empty(),
                    "dashboard panel {} returned nothing for {q}",
                    panel["title"]
                );
            }
        }
    }
    Ok(())
}

/// Just enough ZMTP 3.0 (NULL mechanism) to be a DEALER: the test crate
/// does not link libzmq, and a proxy only needs a peer that speaks the wire
/// protocol.
mod zmtp {
    use anyhow::{ensure, Result};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A connected DEALER.
    pub struct Dealer(TcpStream);

    impl Dealer {
        /// Connects and completes the handshake (greeting, READY).
        pub async fn connect(addr: &str) -> Result<Dealer> {
            let mut s = TcpStream::connect(addr).await?;
            let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
            let mut mechanism = b"NULL".to_vec();
            mechanism.resize(20, 0);
            greeting.extend(mechanism);
            greeting.push(0); // as-server: no
            greeting.extend([0u8; 31]);
            s.write_all(&greeting).await?;
            let mut ready = vec![5];
            ready.extend(b"READY");
            ready.push(11);
            ready.extend(b"Socket-Type");
            ready.extend(6u32.to_be_bytes());
            ready.extend(b"DEALER");
            s.write_all(&[0x04, ready.len() as u8]).await?;
            s.write_all(&ready).await?;
            let mut theirs = [0u8; 64];
            s.read_exact(&mut theirs).await?;
            ensure!(
                theirs[0] == 0xFF && theirs[9] == 0x7F && theirs[10] == 3,
                "not a ZMTP 3 peer"
            );
            // Their READY command.
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await?;
            ensure!(
                head[0] & 0x04 != 0,
                "expected a command, got flags {:#x}",
                head[0]
            );
            let size = if head[0] & 0x02 != 0 {
                let mut rest = [0u8; 7];
                s.read_exact(&mut rest).await?;
                let mut all = [0u8; 8];
                all[0] = head[1];
                all[1..].copy_from_slice(&rest);
                usize::try_from(u64::from_be_bytes(all))?
            } else {
                usize::from(head[1])
            };
            let mut body = vec![0u8; size];
            s.read_exact(&mut body).await?;
            ensure!(body.get(1..6) == Some(&b"READY"[..]), "expected READY");
            Ok(Dealer(s))
        }

        /// Sends one multipart message (short frames only).
        pub async fn send(&mut self, frames: &[&[u8]]) -> Result<()> {
            let mut out = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                ensure!(f.len() < 256, "long frames are not needed here");
                out.push(if i + 1 < frames.len() { 0x01 } else { 0x00 });
                out.push(f.len() as u8);
                out.extend_from_slice(f);
            }
            self.0.write_all(&out).await?;
            Ok(())
        }
    }
}
