//! The Helm chart installed the way users install it, on the real control
//! plane and the real node: `helm install` (namespaced scope), the operator
//! pods run as containers of the operator image (built by tests/images.sh,
//! imported into the node's containerd) with exactly the chart's
//! ServiceAccount and RBAC (checked with `kubectl auth can-i`), elect one
//! leader and reconcile examples/zmqproxy-basic.yaml into running,
//! registered proxy containers. A real Prometheus (built from Go modules by
//! tests/install.sh) discovers the pods through `kubernetes_sd_configs` with
//! exactly the scrape configuration of docs/metrics.md,
//! scrapes proxies and operators, evaluates the chart's alert rules and
//! answers every dashboard query; raw ZMTP traffic into one proxy moves its
//! counters under the documented labels. Then both operators are Ready
//! behind their metrics Service and `helm test` passes (its pod asks the
//! Service by its cluster DNS name), `helm upgrade` to cluster scope reaches
//! a namespace the values never named, and `helm uninstall` cleans up.
//!
//! Needs root, helm, kubectl and prometheus (`bash tests/install.sh`) and
//! the images (`bash tests/images.sh build`).

mod chart_cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use chart_cluster_support::cluster::{
    cleanup, ready_pods, service_endpoints, wait_zmqproxy_ready, zmqproxy_api,
};
use chart_cluster_support::prometheus::{check_prometheus, start_prometheus};
use chart_cluster_support::{chart, run, RELEASE, TIMEOUT};
use harness::http::get as http_get;
use harness::real_node::RealNode;
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Label selector of the operator pods (`zp` is [`RELEASE`]).
const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/instance=zp,app.kubernetes.io/component=operator";

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
    let node = RealNode::start_with_workspace_images(cp).await?;
    let result = scenario(cp, &client, &release_ns, &watch_ns, &other_ns).await;
    if let Err(e) = &result {
        eprintln!("scenario failed: {e:#}");
        node.print_diagnostics(&[&release_ns, &watch_ns, &other_ns])
            .await;
        eprintln!(
            "--- kube-apiserver.log tail:\n{}",
            harness::startup::log_tail(&cp.dir().join("kube-apiserver.log"))
        );
    }
    // Namespaces go before the node: a Deployment left behind would have
    // its pods rescheduled onto another suite's node.
    cleanup(
        cp,
        &client,
        &release_ns,
        &[&release_ns, &watch_ns, &other_ns],
    )
    .await;
    // The scenario's error first: a failed stop is usually its consequence.
    let stopped = node.stop().await;
    result?;
    stopped
}

/// The release under test: the plane, the tools and the three namespaces
/// (the operator's home, the one the values name, one they never name).
struct Release<'a> {
    cp: &'a ControlPlane,
    client: &'a Client,
    helm: PathBuf,
    kubectl: PathBuf,
    kubeconfig: String,
    release_ns: &'a str,
    watch_ns: &'a str,
    other_ns: &'a str,
}

/// Pod name -> pod IP.
type Pods = BTreeMap<String, String>;

async fn scenario(
    cp: &ControlPlane,
    client: &Client,
    release_ns: &str,
    watch_ns: &str,
    other_ns: &str,
) -> Result<()> {
    let r = Release {
        cp,
        client,
        helm: harness::tools::helm()?,
        kubectl: harness::tools::kubectl()?,
        kubeconfig: cp
            .kubeconfig()
            .to_str()
            .context("kubeconfig path")?
            .to_string(),
        release_ns,
        watch_ns,
        other_ns,
    };
    r.install_namespaced()?;
    r.crds_upgrade_server_side()?;
    r.namespaced_rbac_is_exact().await?;
    let operators = r.operators_elect_a_leader().await?;
    let proxies = r.example_becomes_ready().await?;
    r.prometheus_scrapes(&operators, &proxies).await?;
    r.operators_ready_behind_their_service(&operators).await?;
    r.upgrade_to_cluster_scope().await?;
    r.uninstall_keeps_zmqproxies().await
}

impl Release<'_> {
    /// kubectl with the plane's kubeconfig.
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--kubeconfig", &self.kubeconfig];
        all.extend(args);
        run(&self.kubectl, &all)
    }

    /// helm with the release's namespace and the plane's kubeconfig.
    fn helm(&self, args: &[&str]) -> Result<String> {
        let mut all = args.to_vec();
        all.extend([
            "--namespace",
            self.release_ns,
            "--kubeconfig",
            &self.kubeconfig,
        ]);
        run(&self.helm, &all)
    }

    /// 1. helm install, namespaced scope: the operator may touch only the
    ///    watched namespace (and its Lease at home).
    fn install_namespaced(&self) -> Result<()> {
        let values = json!({
            "rbac": {"scope": "namespaced", "namespaces": [self.watch_ns]},
            "leaderElection": {"leaseDurationSeconds": 4},
            "operator": {"logFormat": "text"},
            "probes": {"readiness": {"periodSeconds": 1}},
        });
        let values_file = self
            .cp
            .dir()
            .join(format!("chart-values-{}.json", self.release_ns));
        std::fs::write(&values_file, values.to_string())?;
        let chart_dir = chart();
        self.helm(&[
            "install",
            RELEASE,
            chart_dir.to_str().context("chart path")?,
            "-f",
            values_file.to_str().context("values path")?,
        ])?;
        Ok(())
    }

    /// 2. The documented CRD upgrade path works on the CRD Helm installed:
    ///    server-side apply takes the object over from Helm's field manager.
    fn crds_upgrade_server_side(&self) -> Result<()> {
        let crds_dir = chart().join("crds");
        let out = self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds_dir.to_str().context("crds path")?,
        ])?;
        ensure!(
            out.contains("zmqproxies.zmqproxy.io serverside-applied"),
            "kubectl apply --server-side: {out}"
        );
        Ok(())
    }

    /// 3. Namespaced scope grants exactly the watched namespace (and the
    ///    Lease at home), checked with `kubectl auth can-i`; the
    ///    PodDisruptionBudget is policy/v1.
    async fn namespaced_rbac_is_exact(&self) -> Result<()> {
        let sa = format!(
            "system:serviceaccount:{}:{RELEASE}-zmq-proxy-operator",
            self.release_ns
        );
        let can = |verb: &str, resource: &str, ns: &str| {
            let out = Command::new(&self.kubectl)
                .args([
                    "--kubeconfig",
                    &self.kubeconfig,
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
        let (watch_ns, release_ns, other_ns) = (self.watch_ns, self.release_ns, self.other_ns);
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
        // Secrets: get (a named CURVE key) and create (the generated one)
        // in the watched namespace only; never list or watch, which would
        // cache every Secret.
        ensure!(
            can("get", "secrets", watch_ns) && can("create", "secrets", watch_ns),
            "operator cannot get and create Secrets in {watch_ns}"
        );
        for verb in ["list", "watch", "update", "delete"] {
            ensure!(
                !can(verb, "secrets", watch_ns),
                "the operator can {verb} Secrets"
            );
        }
        ensure!(
            !can("get", "secrets", other_ns),
            "namespaced scope reads Secrets in {other_ns}"
        );
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), release_ns);
        ensure!(
            pdbs.get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
                .await?
                .is_some(),
            "no policy/v1 PodDisruptionBudget"
        );
        Ok(())
    }

    /// 4. Two operator pods run; one of them takes the Lease.
    async fn operators_elect_a_leader(&self) -> Result<Pods> {
        let operators = until("two running operator pods", TIMEOUT, || async {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.release_ns);
            let running: Pods = pods
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await?
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| Some((p.name_any(), p.status?.pod_ip?)))
                .collect();
            Ok((running.len() == 2).then_some(running))
        })
        .await?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), self.release_ns);
        let holder = until("the Lease held by an operator pod", TIMEOUT, || async {
            let lease = leases.get_opt("zmq-proxy-operator").await?;
            Ok(lease
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| operators.contains_key(h)))
        })
        .await?;
        eprintln!("operators {operators:?}, leader {holder}");
        Ok(operators)
    }

    /// 5. An example from the chart, applied with kubectl, reconciled into
    ///    ready proxies by the operator running on the chart's RBAC alone,
    ///    with the operator's field manager; returns the proxy pods.
    async fn example_becomes_ready(&self) -> Result<Pods> {
        let example = chart().join("examples/zmqproxy-basic.yaml");
        self.kubectl(&[
            "apply",
            "-n",
            self.watch_ns,
            "-f",
            example.to_str().context("path")?,
        ])?;
        wait_zmqproxy_ready(self.client, self.watch_ns, "basic", 2).await?;
        let proxies = ready_pods(
            self.client,
            self.watch_ns,
            "app.kubernetes.io/instance=basic,app.kubernetes.io/component=proxy",
        )
        .await?;
        ensure!(proxies.len() == 2, "proxy pods: {proxies:?}");
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), self.watch_ns);
        let managers: BTreeSet<String> = deployments
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
        Ok(proxies)
    }

    /// 6. Prometheus discovers and scrapes every pod with the documented
    ///    configuration (see `chart_cluster_support::prometheus`).
    async fn prometheus_scrapes(&self, operators: &Pods, proxies: &Pods) -> Result<()> {
        let prom = start_prometheus(self.cp, self.client, self.release_ns, self.watch_ns).await?;
        let result = check_prometheus(&prom, operators, proxies, self.watch_ns).await;
        if result.is_err() {
            eprintln!("--- prometheus log:\n{}", prom.log_tail());
        }
        result
    }

    /// 7. Both operator pods are Ready (a standby at once, the leader once
    ///    its caches synced), the metrics Service routes to both, each
    ///    answers /healthz, and `helm test` passes: its pod (the operator
    ///    image's `check`) reaches the Service by name through cluster DNS
    ///    and kube-proxy.
    async fn operators_ready_behind_their_service(&self, operators: &Pods) -> Result<()> {
        let ready = until("two ready operator pods", TIMEOUT, || async {
            let pods = ready_pods(self.client, self.release_ns, OPERATOR_SELECTOR).await?;
            if pods.len() == 2 {
                return Ok(Some(pods));
            }
            // Say why: what each operator answers on /readyz.
            let all: Api<Pod> = Api::namespaced(self.client.clone(), self.release_ns);
            let mut answers = Vec::new();
            for p in all
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
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
            ready == *operators,
            "ready operators {ready:?} vs running {operators:?}"
        );
        // EndpointSlices rather than Endpoints: slices are what Services
        // route by since 1.19 (and Endpoints is deprecated since 1.33).
        let service = format!("{RELEASE}-zmq-proxy-operator-metrics");
        let addrs = until("the metrics Service's EndpointSlices", TIMEOUT, || async {
            let slices = service_endpoints(self.client, self.release_ns, &service).await?;
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
        let expected: BTreeSet<String> =
            operators.values().map(|ip| format!("{ip}:8080")).collect();
        ensure!(
            addrs == expected,
            "Service endpoints {addrs:?} are not the operator pods {expected:?}"
        );
        // No `--logs`: the chart's hook-delete-policy removes a passed test
        // pod before helm could read its log.
        let out = self.helm(&["test", RELEASE, "--timeout", "120s"])?;
        let phase = out
            .lines()
            .find_map(|l| l.strip_prefix("Phase:"))
            .map(str::trim);
        ensure!(phase == Some("Succeeded"), "helm test: {out}");
        Ok(())
    }

    /// 8. helm upgrade to cluster scope: a ClusterRole replaces the Roles,
    ///    the operators roll and watch every namespace, so a ZmqProxy in a
    ///    namespace the values never named is reconciled too.
    async fn upgrade_to_cluster_scope(&self) -> Result<()> {
        let chart_dir = chart();
        self.helm(&[
            "upgrade",
            RELEASE,
            chart_dir.to_str().context("chart path")?,
            "--reuse-values",
            "--set",
            "rbac.scope=cluster",
        ])?;
        let roles: Api<Role> = Api::namespaced(self.client.clone(), self.watch_ns);
        ensure!(
            roles
                .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
                .await?
                .is_none(),
            "the namespaced Role is gone after the upgrade"
        );
        let example = chart().join("examples/zmqproxy-single-router.yaml");
        self.kubectl(&[
            "apply",
            "-n",
            self.other_ns,
            "-f",
            example.to_str().context("path")?,
        ])?;
        wait_zmqproxy_ready(self.client, self.other_ns, "single", 2).await
    }

    /// 9. `helm uninstall` removes what the chart made and leaves the CRD and
    ///    the ZmqProxies (documented): the proxies keep running unmanaged.
    async fn uninstall_keeps_zmqproxies(&self) -> Result<()> {
        self.helm(&["uninstall", RELEASE])?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), self.release_ns);
        until("the operator Deployment gone", TIMEOUT, || async {
            Ok(deployments
                .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
                .await?
                .is_none()
                .then_some(()))
        })
        .await?;
        ensure!(
            Api::<ClusterRole>::all(self.client.clone())
                .get_opt(&format!("{RELEASE}-zmq-proxy-operator"))
                .await?
                .is_none(),
            "helm uninstall left the ClusterRole"
        );
        ensure!(
            zmqproxy_api(self.client, self.watch_ns)
                .get_opt("basic")
                .await?
                .is_some(),
            "helm uninstall must not delete users' ZmqProxies"
        );
        Ok(())
    }
}
