//! The installed system, driven the way users drive it: the chart installed
//! with the real `helm`, the ZmqProxy applied, scaled, patched and deleted
//! with the real `kubectl` (matching the API server), the operator and
//! proxy pods run as containers of the project's images by the real node
//! (kubelet, containerd). Plus what the scenarios need to look at: proxy
//! pods, their registrations (EndpointSlices, read through the Kubernetes
//! matchmaker as a client would), containers (killed through the runtime,
//! as a crash would), pod logs (through the API server and the kubelet),
//! the operator's leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use harness::real_node::{self, RealNode};
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, Resource, ResourceExt};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use zmq_proxy::matchmaker::kubernetes::{KubernetesConfig, KubernetesMatchmaker};
use zmq_proxy::matchmaker::Matchmaker;

/// Helm release of the operator chart.
pub const RELEASE: &str = "zp";
/// The ZmqProxy (and its headless Service, the proxies' service name).
pub const NAME: &str = "e2e";
/// Label selector of the proxy pods.
pub const PROXY_SELECTOR: &str = "app.kubernetes.io/instance=e2e,app.kubernetes.io/component=proxy";
/// Label selector of the operator pods.
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/instance=zp,app.kubernetes.io/component=operator";
/// Seconds a proxy drains after SIGTERM (short: the test waits for it).
pub const GRACE_SECONDS: i32 = 3;

fn root() -> PathBuf {
    harness::tools::workspace_root()
}

/// A tool's outcome.
pub struct Output {
    /// Exit status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `program args` (stdin fed from `input`) without blocking the runtime.
async fn run_tool(program: &PathBuf, args: &[&str], input: Option<&str>) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The runtime's ID of a pod's (first) container: its `containerID`
/// without the `containerd://` prefix. A restart gives a new one.
pub fn container_id_of(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_deref()?
        .strip_prefix("containerd://")
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// Restarts of a pod's (first) container.
pub fn restarts_of(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// The system under test.
pub struct Cluster {
    /// The control plane.
    pub cp: &'static ControlPlane,
    /// Admin client.
    pub client: Client,
    /// Namespace of the helm release (the operator).
    pub release_ns: String,
    /// Namespace of the ZmqProxy, its proxies and the RPC services.
    pub ns: String,
    node: Option<RealNode>,
    kubectl: PathBuf,
    helm: PathBuf,
    kubeconfig: String,
    /// Reads the proxies' registrations as an RPC client would.
    observer: KubernetesMatchmaker,
}

impl Cluster {
    /// Namespaces, the real node with our images (waiting while another
    /// process runs the machine's one node), and the chart installed with
    /// `helm install --wait`: the operator (two replicas, leader election)
    /// watches the scenario's namespace.
    pub async fn install(cp: &'static ControlPlane) -> Result<Cluster> {
        let client = cp.client()?;
        let release_ns = cp.namespace("e2e-operator").await?;
        let ns = cp.namespace("e2e").await?;
        let kubectl = harness::tools::kubectl()?;
        let helm = harness::tools::helm()?;
        let kubeconfig = cp
            .kubeconfig()
            .to_str()
            .context("kubeconfig path")?
            .to_string();
        let observer = KubernetesMatchmaker::new(
            client.clone(),
            KubernetesConfig {
                namespace: Some(ns.clone()),
                service_name: Some(NAME.into()),
                ..Default::default()
            },
        );
        let node = RealNode::start_with_workspace_images(cp).await?;
        let cluster = Cluster {
            cp,
            client,
            release_ns,
            ns,
            node: Some(node),
            kubectl,
            helm,
            kubeconfig,
            observer,
        };
        match cluster.install_chart().await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                cluster.dump_logs().await;
                let _ = cluster.uninstall().await;
                Err(e)
            }
        }
    }

    /// `helm install --wait` of the operator chart.
    async fn install_chart(&self) -> Result<()> {
        let values = json!({
            "rbac": {"scope": "namespaced", "namespaces": [self.ns]},
            // Quick hand-over when the leader is killed.
            "leaderElection": {"leaseDurationSeconds": 4},
            "operator": {"logFormat": "text"},
            "probes": {"readiness": {"periodSeconds": 1}},
        });
        let values_file = self
            .cp
            .dir()
            .join(format!("e2e-values-{}.json", self.release_ns));
        std::fs::write(&values_file, values.to_string())?;
        let chart = root().join("charts/zmq-proxy-operator");
        let out = self
            .helm(&[
                "install",
                RELEASE,
                chart.to_str().context("chart path")?,
                "--namespace",
                &self.release_ns,
                "-f",
                values_file.to_str().context("values path")?,
                "--wait",
                "--timeout",
                "180s",
            ])
            .await?;
        let status: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("STATUS:") || l.starts_with("NAMESPACE:"))
            .collect();
        eprintln!("helm install {RELEASE}: {}", status.join(", "));
        Ok(())
    }

    async fn helm(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--kubeconfig", &self.kubeconfig];
        all.extend_from_slice(args);
        let out = run_tool(&self.helm, &all, None).await?;
        ensure!(
            out.success,
            "helm {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// Runs `kubectl -n <ns> args` (stdin from `input`), whatever its exit.
    pub async fn kubectl_output(&self, args: &[&str], input: Option<&str>) -> Result<Output> {
        let mut all = vec!["--kubeconfig", &self.kubeconfig, "-n", &self.ns];
        all.extend_from_slice(args);
        run_tool(&self.kubectl, &all, input).await
    }

    /// Runs `kubectl -n <ns> args`; its stdout, or an error with its output.
    pub async fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let out = self.kubectl_output(args, input).await?;
        ensure!(
            out.success,
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// The ZmqProxy manifest the scenarios start from.
    pub fn manifest(replicas: i32) -> String {
        format!(
            "apiVersion: zmqproxy.io/v1alpha1\nkind: ZmqProxy\nmetadata:\n  name: {NAME}\nspec:\n  replicas: {replicas}\n  gracePeriodSeconds: {GRACE_SECONDS}\n"
        )
    }

    /// `kubectl apply` of the ZmqProxy, then `kubectl wait` for Ready and
    /// every proxy registered.
    pub async fn apply_and_wait(&self, replicas: usize) -> Result<BTreeMap<String, String>> {
        let out = self
            .kubectl(
                &["apply", "-f", "-"],
                Some(&Self::manifest(replicas as i32)),
            )
            .await?;
        eprintln!("kubectl apply: {}", out.trim());
        let out = self
            .kubectl(
                &[
                    "wait",
                    "--for=condition=Ready",
                    &format!("zmqproxy/{NAME}"),
                    "--timeout=180s",
                ],
                None,
            )
            .await?;
        eprintln!("kubectl wait: {}", out.trim());
        let fleet = self.wait_fleet(replicas, Duration::from_secs(120)).await?;
        eprintln!(
            "kubectl get zp:\n{}",
            self.kubectl(&["get", "zp", "-o", "wide"], None).await?
        );
        Ok(fleet)
    }

    /// The ZmqProxy API.
    pub fn zmqproxies(&self) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("zmqproxy.io", "v1alpha1", "ZmqProxy"),
            "zmqproxies",
        );
        Api::namespaced_with(self.client.clone(), &self.ns, &ar)
    }

    /// Proxy pods (terminating ones included).
    pub async fn proxy_pods(&self) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(PROXY_SELECTOR))
            .await?
            .items)
    }

    /// Hosts of the proxies registered ready (their EndpointSlices).
    pub async fn registered_proxies(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .observer
            .proxies()
            .await?
            .into_iter()
            .map(|p| p.host)
            .collect())
    }

    /// Waits until the fleet is exactly `replicas` proxies: the ZmqProxy's
    /// status is current and Ready with that many ready replicas, that many
    /// pods exist (none terminating), all ready and all registered, and
    /// nothing else is registered. Returns pod name -> IP.
    pub async fn wait_fleet(
        &self,
        replicas: usize,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        let zps = self.zmqproxies();
        harness::wait::until(
            &format!("{replicas} ready, registered proxies"),
            timeout,
            || async {
                let zp = zps.get(NAME).await?;
                let status = &zp.data["status"];
                let current = status["observedGeneration"].as_i64() == zp.metadata.generation;
                let ready = status["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let pods = self.proxy_pods().await?;
                let fleet: BTreeMap<String, String> = pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                    .filter_map(|p| {
                        Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?))
                    })
                    .collect();
                let registered = self.registered_proxies().await?;
                let ips: BTreeSet<String> = fleet.values().cloned().collect();
                let done = current
                    && ready
                    && status["readyReplicas"].as_u64() == Some(replicas as u64)
                    && pods.len() == replicas
                    && fleet.len() == replicas
                    && registered == ips;
                if done {
                    Ok(Some(fleet))
                } else {
                    bail!(
                        "status current {current}, Ready {ready}, readyReplicas {}, pods {}, ready pods {fleet:?}, registered {registered:?}",
                        status["readyReplicas"],
                        pods.len()
                    )
                }
            },
        )
        .await
    }

    /// SIGKILLs the (first) container of pod `ns/name` through the runtime
    /// (`ctr tasks kill`), as a crash would; returns the container's ID.
    pub async fn sigkill_pod(&self, ns: &str, name: &str) -> Result<String> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(name)
            .await?;
        let id = container_id_of(&pod)
            .with_context(|| format!("no container ID reported for {ns}/{name}"))?;
        let node = self.node.as_ref().context("the node is stopped")?;
        node.ctr(&["tasks", "kill", "-s", "SIGKILL", &id])?;
        Ok(id)
    }

    /// The operator pod holding the leader Lease, and when it last renewed it.
    pub async fn operator_leader(&self) -> Result<Option<(String, Timestamp)>> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.release_ns)
            .get_opt("zmq-proxy-operator")
            .await?;
        Ok(lease.and_then(|l| {
            let spec = l.spec?;
            Some((spec.holder_identity?, spec.renew_time?.0))
        }))
    }

    /// Operator pods, by name.
    pub async fn operator_pods(&self) -> Result<BTreeMap<String, Pod>> {
        Ok(
            Api::<Pod>::namespaced(self.client.clone(), &self.release_ns)
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await?
                .items
                .into_iter()
                .map(|p| (p.name_any(), p))
                .collect(),
        )
    }

    /// Every object in the ZmqProxy's namespace that belongs to it: owned
    /// by it (or by one of its children), labelled as its instance, or
    /// registering one of its proxies; and every Lease (RPC servers'
    /// registrations). Returns "Kind/name" lines.
    pub async fn leftovers(&self, uid: &str) -> Result<Vec<String>> {
        let ns = &self.ns;
        let c = &self.client;
        let mut out = Vec::new();
        let mine = |meta: &kube::core::ObjectMeta| {
            meta.owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|r| r.uid == uid))
                || meta.labels.as_ref().is_some_and(|l| {
                    l.get("app.kubernetes.io/instance").map(String::as_str) == Some(NAME)
                })
        };
        macro_rules! typed {
            ($kind:ty) => {
                for o in Api::<$kind>::namespaced(c.clone(), ns)
                    .list(&ListParams::default())
                    .await?
                    .items
                {
                    if mine(o.meta()) {
                        out.push(format!(
                            "{}/{}",
                            <$kind as k8s_openapi::Resource>::KIND,
                            o.name_any()
                        ));
                    }
                }
            };
        }
        typed!(Deployment);
        typed!(ReplicaSet);
        typed!(DaemonSet);
        typed!(Pod);
        typed!(Service);
        typed!(ServiceAccount);
        typed!(ConfigMap);
        typed!(Role);
        typed!(RoleBinding);
        for lease in Api::<Lease>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
        {
            out.push(format!("Lease/{}", lease.name_any()));
        }
        for (group, versions, kind, plural) in [
            (
                "discovery.k8s.io",
                &["v1"][..],
                "EndpointSlice",
                "endpointslices",
            ),
            (
                "policy",
                &["v1"][..],
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
        ] {
            for o in self.list_dynamic(group, versions, kind, plural).await? {
                let registers_ours = o
                    .labels()
                    .get("kubernetes.io/service-name")
                    .is_some_and(|s| s == NAME);
                if mine(&o.metadata) || registers_ours {
                    out.push(format!("{kind}/{}", o.name_any()));
                }
            }
        }
        Ok(out)
    }

    /// Lists a kind in the first served version of `versions`.
    async fn list_dynamic(
        &self,
        group: &str,
        versions: &[&str],
        kind: &str,
        plural: &str,
    ) -> Result<Vec<DynamicObject>> {
        let mut last = None;
        for v in versions {
            let ar =
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, v, kind), plural);
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
            match api.list(&ListParams::default()).await {
                Ok(list) => return Ok(list.items),
                Err(kube::Error::Api(e)) if e.code == 404 => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        bail!("{kind} not served in {group} {versions:?}: {last:?}")
    }

    /// The last `n` lines pod `ns/pod`'s (current) container wrote, or
    /// why there are none.
    pub async fn pod_log_tail(&self, ns: &str, pod: &str, n: i64) -> String {
        real_node::container_log(&self.client, ns, pod, Some(n))
            .await
            .unwrap_or_else(|e| format!("(no log: {e:#})"))
    }

    /// Pod logs (tails) of both namespaces, and the node's own logs, for a
    /// failed scenario.
    pub async fn dump_logs(&self) {
        if let Some(node) = &self.node {
            node.print_diagnostics(&[&self.release_ns, &self.ns]).await;
        }
    }

    /// `helm uninstall`, then the node stopped (its pods deleted, their
    /// containers gone, the machine's node lock released).
    pub async fn uninstall(mut self) -> Result<()> {
        let result = self
            .helm(&["uninstall", RELEASE, "--namespace", &self.release_ns])
            .await
            .map(|_| ());
        if let Some(node) = self.node.take() {
            node.stop().await?;
        }
        result
    }
}

/// A ZmqProxy's uid.
pub fn uid_of(zp: &DynamicObject) -> Result<String> {
    zp.metadata.uid.clone().context("ZmqProxy without uid")
}
