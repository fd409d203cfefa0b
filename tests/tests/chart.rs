//! The Helm chart (charts/zmq-proxy-operator), its documentation and the
//! container images, checked without a cluster: `helm lint --strict`,
//! `helm template` over a matrix of values with assertions on the rendered
//! objects, every values.schema.json rule against a bad value, the chart's
//! copies of generated files (CRD, RBAC rules) against their sources,
//! `promtool check rules` on the alerts, docs/metrics.md against the metrics
//! in the code, and the Dockerfiles against the workspace.
//!
//! Needs helm and promtool (`bash tests/install.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::{json, Value};

const RELEASE: &str = "zp";
const NAMESPACE: &str = "zmq-system";

fn root() -> PathBuf {
    harness::tools::workspace_root()
}

fn chart() -> PathBuf {
    root().join("charts/zmq-proxy-operator")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn helm_bin() -> PathBuf {
    harness::tools::helm().expect("helm (run `bash tests/install.sh`)")
}

/// A values file in the temp dir, removed when dropped.
struct ValuesFile(PathBuf);

impl ValuesFile {
    fn new(values: &Value) -> ValuesFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "zmq-proxy-chart-values-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        // JSON is YAML, and unlike serde_yaml output it cannot be re-read by
        // helm's YAML 1.1 parser as something else ("yes" -> true).
        std::fs::write(
            &path,
            serde_json::to_string(values).expect("values serialize"),
        )
        .expect("write values");
        ValuesFile(path)
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `helm template` with `values` for the Kubernetes the suites run
/// on (helm's offline default is older than the chart's `kubeVersion`);
/// Ok(stdout) or Err(stderr).
fn template(values: &Value, extra: &[&str]) -> Result<String, String> {
    let file = ValuesFile::new(values);
    let out = Command::new(helm_bin())
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--kube-version", harness::tools::K8S_VERSION])
        .args(["--namespace", NAMESPACE, "--include-crds", "-f"])
        .arg(&file.0)
        .args(extra)
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every object of a multi-document YAML stream, as JSON values.
fn parse_objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML converts to JSON"))
        .collect()
}

/// The chart rendered with `values`; panics with helm's error.
fn render(values: Value) -> Rendered {
    match template(&values, &[]) {
        Ok(out) => Rendered(parse_objects(&out)),
        Err(e) => panic!("helm template failed for {values}: {e}"),
    }
}

struct Rendered(Vec<Value>);

impl Rendered {
    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in &self.0 {
            *m.entry(o["kind"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        m
    }
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }
    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {kind}, kinds: {:?}",
            self.kinds()
        );
        all[0]
    }
    fn count(&self, kind: &str) -> usize {
        self.all(kind).len()
    }
    fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }
    /// The operator container's env as name -> value (valueFrom as its fieldPath).
    fn env(&self) -> BTreeMap<String, String> {
        self.container()["env"]
            .as_array()
            .expect("env list")
            .iter()
            .map(|e| {
                let v = match e.get("value") {
                    Some(v) => v.as_str().unwrap_or_default().to_string(),
                    None => format!(
                        "fieldRef:{}",
                        e["valueFrom"]["fieldRef"]["fieldPath"]
                            .as_str()
                            .unwrap_or("?")
                    ),
                };
                (e["name"].as_str().unwrap_or_default().to_string(), v)
            })
            .collect()
    }
}

fn workspace_version() -> String {
    let manifest: toml_lite::Doc = toml_lite::parse(&read(root().join("Cargo.toml")));
    manifest
        .get("workspace.package", "version")
        .expect("workspace version")
}

/// The rules of operator/rbac/rules.yaml.
fn operator_rules() -> Value {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&read(root().join("operator/rbac/rules.yaml"))).expect("rules parse");
    serde_json::to_value(v).expect("to json")
}

// ---------------------------------------------------------------------------
// Copies of generated files

#[test]
fn chart_crds_are_the_generated_crds() {
    let top = read(root().join("crds/zmqproxy.yaml"));
    let ours = read(chart().join("crds/zmqproxy.yaml"));
    assert!(
        top == ours,
        "charts/zmq-proxy-operator/crds/zmqproxy.yaml differs from crds/zmqproxy.yaml: \
         cp crds/zmqproxy.yaml charts/zmq-proxy-operator/crds/"
    );
    let entries: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .expect("crds dir")
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "the chart's crds/ holds exactly the generated CRD"
    );
}

#[test]
fn chart_rbac_rules_are_the_operators_rules() {
    assert!(
        read(root().join("operator/rbac/rules.yaml")) == read(chart().join("files/rbac-rules.yaml")),
        "charts/zmq-proxy-operator/files/rbac-rules.yaml is stale: cp operator/rbac/rules.yaml charts/zmq-proxy-operator/files/rbac-rules.yaml"
    );
}

#[test]
fn chart_version_and_images_follow_the_workspace() {
    let chart_yaml: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&read(chart().join("Chart.yaml"))).unwrap(),
    )
    .unwrap();
    let version = workspace_version();
    assert_eq!(
        chart_yaml["appVersion"],
        version.as_str(),
        "appVersion = the crates' version (the image tag)"
    );
    let r = render(json!({}));
    assert_eq!(
        r.container()["image"],
        format!("ghcr.io/zmq-proxy/zmq-proxy-operator:{version}"),
        "contracts.md image name"
    );
    let r = render(json!({"image": {"tag": "9.9.9", "repository": "example.org/op"}}));
    assert_eq!(r.container()["image"], "example.org/op:9.9.9");
}

// ---------------------------------------------------------------------------
// helm lint and the rendering matrix

fn matrix() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "namespaced",
            json!({"rbac": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}}),
        ),
        (
            "monitoring",
            json!({"monitoring": {
                "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus"}},
                "podMonitor": {"enabled": true},
                "proxyPodMonitor": {"enabled": true},
                "prometheusRule": {"enabled": true},
                "grafanaDashboard": {"enabled": true}
            }}),
        ),
        (
            "networkpolicy",
            json!({"networkPolicy": {"enabled": true,
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                "egress": {"enabled": true}}}),
        ),
        (
            "single",
            json!({"replicaCount": 1, "leaderElection": {"enabled": false}, "tests": {"enabled": false}}),
        ),
    ]
}

#[test]
fn helm_lint_strict_passes_for_every_values_set() {
    for (name, values) in matrix() {
        let file = ValuesFile::new(&values);
        let out = Command::new(helm_bin())
            .args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(chart())
            .arg("-f")
            .arg(&file.0)
            .output()
            .expect("run helm lint");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "helm lint --strict ({name}) failed:\n{text}"
        );
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint ({name}):\n{text}"
        );
    }
}

fn assert_hardened(container: &Value, pod: &Value) {
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}

#[test]
fn defaults_render_a_cluster_wide_operator_with_two_replicas() {
    let r = render(json!({}));
    let kinds = r.kinds();
    let expected: BTreeMap<String, usize> = [
        ("CustomResourceDefinition", 1),
        ("ServiceAccount", 1),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 1),
        ("Deployment", 1),
        ("PodDisruptionBudget", 1),
        ("Pod", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, expected);

    let d = r.one("Deployment");
    assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "zp-zmq-proxy-operator");
    let c = r.container();
    assert_hardened(c, pod);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(
        c["ports"][0],
        json!({"name": "metrics", "containerPort": 8080, "protocol": "TCP"})
    );
    assert!(
        c.get("args").is_none(),
        "no args: the image's default command runs"
    );
    let env = r.env();
    assert_eq!(
        env["WATCH_NAMESPACES"], "",
        "cluster scope watches every namespace"
    );
    assert_eq!(env["LEADER_ELECTION_DISABLED"], "false");
    assert_eq!(env["LEASE_NAMESPACE"], NAMESPACE);
    assert_eq!(env["LEASE_NAME"], "zmq-proxy-operator");
    assert_eq!(env["LEASE_DURATION_SECONDS"], "15");
    assert_eq!(env["METRICS_ADDRESS"], "$(POD_IP):8080");
    assert_eq!(env["POD_IP"], "fieldRef:status.podIP");
    assert_eq!(env["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(env["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    // $(POD_IP) only expands when POD_IP is defined before it.
    let names: Vec<_> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("POD_IP") < pos("METRICS_ADDRESS"));
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");

    // RBAC: exactly the operator's generated rules, bound to its ServiceAccount.
    let rules = operator_rules();
    let cr = r.one("ClusterRole");
    assert_eq!(cr["rules"], rules["operatorRules"]);
    let crb = r.one("ClusterRoleBinding");
    assert_eq!(crb["roleRef"]["name"], cr["metadata"]["name"]);
    assert_eq!(
        crb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "zp-zmq-proxy-operator", "namespace": NAMESPACE}])
    );
    let lease_role = r.one("Role");
    assert_eq!(lease_role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(lease_role["rules"], rules["leaderElectionRules"]);

    let svc = r.one("Service");
    assert_eq!(svc["metadata"]["name"], "zp-zmq-proxy-operator-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );

    // helm test: /healthz through the metrics Service.
    let test = r.one("Pod");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let args = test["spec"]["containers"][0]["args"].as_array().unwrap();
    assert_eq!(
        args.last().unwrap(),
        &json!(format!(
            "http://zp-zmq-proxy-operator-metrics.{NAMESPACE}.svc:8080/healthz"
        ))
    );
}

#[test]
fn pdb_is_policy_v1_and_no_template_needs_a_beta_api() {
    // Every supported Kubernetes serves policy/v1 (since 1.21); the
    // v1beta1 fallbacks of the 1.20 days are gone.
    let r = render(json!({}));
    // Older clusters are refused by name: the CRD's rules are CEL.
    let old = template(&json!({}), &["--kube-version", "1.33.9"])
        .expect_err("rendered for Kubernetes 1.33");
    assert!(old.contains("kubeVersion: >=1.34.0-0"), "{old}");
    assert_eq!(r.one("PodDisruptionBudget")["apiVersion"], "policy/v1");
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = read(&path);
            assert!(
                !text.contains("policy/v1beta1") && !text.contains("discovery.k8s.io/v1beta1"),
                "{} still names a beta API",
                path.display()
            );
        }
    }
}

#[test]
fn namespaced_scope_renders_roles_in_each_namespace_and_limits_the_watch() {
    let r = render(json!({"rbac": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}}));
    assert_eq!(r.count("ClusterRole"), 0);
    assert_eq!(r.count("ClusterRoleBinding"), 0);
    let rules = operator_rules();
    let roles = r.all("Role");
    let by_ns: BTreeMap<String, &Value> = roles
        .iter()
        .filter(|x| x["metadata"]["name"] == "zp-zmq-proxy-operator")
        .map(|x| (x["metadata"]["namespace"].as_str().unwrap().to_string(), *x))
        .collect();
    assert_eq!(
        by_ns.keys().cloned().collect::<Vec<_>>(),
        ["team-a", "team-b"]
    );
    for role in by_ns.values() {
        assert_eq!(role["rules"], rules["operatorRules"]);
    }
    let bindings = r.all("RoleBinding");
    for ns in ["team-a", "team-b"] {
        let b = bindings
            .iter()
            .find(|b| b["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("RoleBinding in {ns}"));
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["subjects"][0]["namespace"], NAMESPACE);
    }
    // The Lease Role stays in the release namespace.
    assert!(roles
        .iter()
        .any(|x| x["metadata"]["namespace"] == NAMESPACE
            && x["rules"] == rules["leaderElectionRules"]));
    assert_eq!(r.env()["WATCH_NAMESPACES"], "team-a,team-b");

    // Without a list: the release namespace only.
    let r = render(json!({"rbac": {"scope": "namespaced"}}));
    assert_eq!(r.env()["WATCH_NAMESPACES"], NAMESPACE);
    assert!(r
        .all("Role")
        .iter()
        .all(|x| x["metadata"]["namespace"] == NAMESPACE));
    assert_eq!(r.count("Role"), 2);
    assert_eq!(r.count("ClusterRole"), 0);

    // rbac.create=false: no RBAC objects, the watch scope is unchanged.
    let r = render(json!({"rbac": {"create": false, "scope": "namespaced", "namespaces": ["x"]}}));
    assert_eq!(
        r.count("Role")
            + r.count("ClusterRole")
            + r.count("RoleBinding")
            + r.count("ClusterRoleBinding"),
        0
    );
    assert_eq!(r.env()["WATCH_NAMESPACES"], "x");
}

#[test]
fn single_replica_without_leader_election_has_no_lease_role_and_no_pdb() {
    let r = render(json!({"replicaCount": 1, "leaderElection": {"enabled": false}}));
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 1);
    assert_eq!(r.env()["LEADER_ELECTION_DISABLED"], "true");
    assert!(!r.env().contains_key("LEASE_NAME"));
    assert_eq!(r.count("Role"), 0);
    assert_eq!(
        r.count("PodDisruptionBudget"),
        0,
        "a PDB on one replica would block node drains"
    );
    let err = template(&json!({"leaderElection": {"enabled": false}}), &[]).unwrap_err();
    assert!(err.contains("needs leaderElection.enabled"), "{err}");
}

#[test]
fn operator_settings_reach_the_container() {
    let r = render(json!({
        "operator": {"logLevel": "debug", "logFormat": "text", "metricsPort": 9443,
                     "extraArgs": ["--discovery-interval-seconds=5"],
                     "extraEnv": [{"name": "EXTRA", "value": "1"}]},
        "leaderElection": {"leaseName": "my-lease", "leaseDurationSeconds": 7},
        "metricsService": {"port": 80},
        "scrapeAnnotations": false,
        "podAntiAffinityPreset": "hard",
        "resources": {"limits": {"memory": "1Gi"}},
        "podLabels": {"team": "x"}
    }));
    let env = r.env();
    assert_eq!(env["RUST_LOG"], "debug,kube_runtime=warn");
    assert_eq!(env["LOG_FORMAT"], "text");
    assert_eq!(env["METRICS_ADDRESS"], "$(POD_IP):9443");
    assert_eq!(env["LEASE_NAME"], "my-lease");
    assert_eq!(env["LEASE_DURATION_SECONDS"], "7");
    assert_eq!(env["EXTRA"], "1");
    let c = r.container();
    assert_eq!(c["args"], json!(["--discovery-interval-seconds=5"]));
    assert_eq!(c["ports"][0]["containerPort"], 9443);
    // helm merges maps with the defaults: the requests stay.
    assert_eq!(c["resources"]["limits"], json!({"memory": "1Gi"}));
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    let d = r.one("Deployment");
    assert!(d["spec"]["template"]["metadata"]["annotations"]
        .get("prometheus.io/scrape")
        .is_none());
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["team"], "x");
    assert!(d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .is_array());
    let svc = r.one("Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    let test = r.one("Pod");
    assert!(test["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .ends_with(":80/healthz"));
}

#[test]
fn monitoring_renders_monitors_alerts_and_dashboard() {
    let r = render(json!({"monitoring": {
        "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus"}},
        "podMonitor": {"enabled": true, "interval": "10s"},
        "proxyPodMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true},
        "grafanaDashboard": {"enabled": true, "namespace": "grafana"}
    }}));
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        r.one("Deployment")["spec"]["selector"]["matchLabels"]
    );
    let pms = r.all("PodMonitor");
    assert_eq!(pms.len(), 2);
    let op = pms
        .iter()
        .find(|p| p["metadata"]["name"] == "zp-zmq-proxy-operator")
        .expect("operator PodMonitor");
    assert_eq!(op["spec"]["podMetricsEndpoints"][0]["interval"], "10s");
    let proxies = pms
        .iter()
        .find(|p| p["metadata"]["name"] == "zp-zmq-proxy-operator-proxies")
        .expect("proxy PodMonitor");
    assert_eq!(
        proxies["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "zmq-proxy"
    );
    assert_eq!(
        proxies["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "zmq-proxy-operator"
    );
    assert_eq!(proxies["spec"]["namespaceSelector"], json!({"any": true}));
    assert_eq!(proxies["spec"]["podMetricsEndpoints"][0]["port"], "metrics");

    let rule = r.one("PrometheusRule");
    let alerts: BTreeSet<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["alert"].as_str().map(String::from))
        .collect();
    for required in [
        "ZmqProxyDown",
        "ZmqProxyDropsRising",
        "ZmqProxyUnroutableRising",
        "ZmqProxyOperatorReconcileErrors",
    ] {
        assert!(
            alerts.contains(required),
            "{required} missing from {alerts:?}"
        );
    }
    promtool_check_rules(&rule["spec"]);

    let cm = r.one("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "grafana");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value = serde_json::from_str(cm["data"]["zmq-proxy.json"].as_str().unwrap())
        .expect("dashboard JSON");
    assert_eq!(dash["uid"], "zmq-proxy");

    // In namespaced scope the proxy PodMonitor looks only where the operator works.
    let r = render(json!({"rbac": {"scope": "namespaced", "namespaces": ["a"]},
                          "monitoring": {"proxyPodMonitor": {"enabled": true}}}));
    assert_eq!(
        r.one("PodMonitor")["spec"]["namespaceSelector"],
        json!({"matchNames": ["a"]})
    );

    // Thresholds and selectors are values.
    let r = render(
        json!({"monitoring": {"prometheusRule": {"enabled": true, "proxySelector": "job=\"zp\"",
        "dropsPerSecond": 0.5, "downFor": "1m", "severity": "critical",
        "additionalRules": [{"alert": "Mine", "expr": "vector(1)"}]}}}),
    );
    let rules = &r.one("PrometheusRule")["spec"]["groups"][0]["rules"];
    let by_name = |n: &str| {
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["alert"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("ZmqProxyDown")["expr"], "up{job=\"zp\"} == 0");
    assert_eq!(by_name("ZmqProxyDown")["for"], "1m");
    assert_eq!(by_name("ZmqProxyDown")["labels"]["severity"], "critical");
    assert!(by_name("ZmqProxyDropsRising")["expr"]
        .as_str()
        .unwrap()
        .ends_with("> 0.5"));
    assert_eq!(by_name("Mine")["expr"], "vector(1)");
    promtool_check_rules(&r.one("PrometheusRule")["spec"]);

    // Off by default.
    let r = render(json!({}));
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert_eq!(r.count(kind), 0, "{kind} is optional");
    }
}

/// `promtool check rules` on a PrometheusRule spec ({groups: [...]}).
fn promtool_check_rules(spec: &Value) {
    let file = ValuesFile::new(spec);
    let promtool = harness::tools::promtool().expect("promtool (run `bash tests/install.sh`)");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file.0)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn network_policy_admits_only_the_metrics_port() {
    let r = render(json!({"networkPolicy": {"enabled": true,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}));
    let np = r.one("NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        r.one("Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}])
    );
    assert!(np["spec"].get("egress").is_none());

    let r = render(
        json!({"networkPolicy": {"enabled": true, "egress": {"enabled": true, "apiServerPorts": [6443],
        "apiServerTo": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}}}),
    );
    let np = r.one("NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["spec"]["ingress"][0].get("from"),
        None,
        "no metricsFrom: any source, metrics port only"
    );
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0]["ports"][0]["port"], 53);
    assert_eq!(
        egress[1],
        json!({"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]})
    );
}

#[test]
fn proxies_value_creates_zmqproxy_objects() {
    let r = render(json!({"proxies": [
        {"name": "a", "spec": {"replicas": 3, "pubSub": {"enabled": true}}},
        {"name": "b", "namespace": "other", "labels": {"team": "x"}}
    ]}));
    let zps = r.all("ZmqProxy");
    assert_eq!(zps.len(), 2);
    assert_eq!(zps[0]["apiVersion"], "zmqproxy.io/v1alpha1");
    assert_eq!(zps[0]["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        zps[0]["spec"],
        json!({"replicas": 3, "pubSub": {"enabled": true}})
    );
    assert_eq!(zps[1]["metadata"]["namespace"], "other");
    assert_eq!(zps[1]["metadata"]["labels"]["team"], "x");
    assert_eq!(zps[1]["spec"], json!({}));
}

/// Every example manifest is a ZmqProxy (or a Secret it needs) whose spec
/// passes the chart's schema for `proxies[].spec` (closed, mirrored from the
/// CRD) and renders unchanged.
#[test]
fn examples_are_valid_zmqproxy_manifests() {
    let dir = chart().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples: {files:?}");
    let mut names = BTreeSet::new();
    for f in files {
        let objects = parse_objects(&read(&f));
        let zps: Vec<_> = objects.iter().filter(|o| o["kind"] == "ZmqProxy").collect();
        assert_eq!(zps.len(), 1, "{} holds one ZmqProxy", f.display());
        for o in &objects {
            assert!(
                o["kind"] == "ZmqProxy" || o["kind"] == "Secret",
                "{}: unexpected {}",
                f.display(),
                o["kind"]
            );
            assert!(
                o["metadata"].get("namespace").is_none(),
                "{}: examples take -n",
                f.display()
            );
        }
        let zp = zps[0];
        assert_eq!(zp["apiVersion"], "zmqproxy.io/v1alpha1");
        let name = zp["metadata"]["name"].as_str().unwrap().to_string();
        assert!(names.insert(name.clone()), "duplicate example name {name}");
        let r = match template(
            &json!({"proxies": [{"name": name, "spec": zp["spec"]}]}),
            &[],
        ) {
            Ok(out) => Rendered(parse_objects(&out)),
            Err(e) => panic!("{}: spec rejected by the schema: {e}", f.display()),
        };
        assert_eq!(r.one("ZmqProxy")["spec"], zp["spec"]);
    }
}

// ---------------------------------------------------------------------------
// values.schema.json

#[test]
fn schema_rejects_every_kind_of_bad_value() {
    // Each case must fail `helm template`; the error names the offending key.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"replicas": 2}), "replicas"),
        (json!({"replicaCount": "two"}), "replicaCount"),
        (json!({"replicaCount": 0}), "replicaCount"),
        (
            json!({"image": {"repository": "x", "registry": "y"}}),
            "registry",
        ),
        (json!({"image": {"pullPolicy": "Sometimes"}}), "pullPolicy"),
        (json!({"image": {"repository": ""}}), "repository"),
        (json!({"image": {"tag": 1}}), "tag"),
        (json!({"imagePullSecrets": ["regcred"]}), "imagePullSecrets"),
        (json!({"operator": {"logLevel": "verbose"}}), "logLevel"),
        (json!({"operator": {"logFormat": "xml"}}), "logFormat"),
        (json!({"operator": {"metricsPort": 70000}}), "metricsPort"),
        (json!({"operator": {"extraArgs": "--x"}}), "extraArgs"),
        (
            json!({"operator": {"extraEnv": [{"value": "no name"}]}}),
            "name",
        ),
        (json!({"operator": {"verbose": true}}), "verbose"),
        (json!({"leaderElection": {"enabled": "yes"}}), "enabled"),
        (
            json!({"leaderElection": {"leaseName": "Not_Valid"}}),
            "leaseName",
        ),
        (
            json!({"leaderElection": {"leaseDurationSeconds": 1}}),
            "leaseDurationSeconds",
        ),
        (json!({"rbac": {"scope": "everything"}}), "scope"),
        (json!({"rbac": {"namespaces": ["Bad_NS"]}}), "namespaces"),
        (json!({"rbac": {"namespaces": "a,b"}}), "namespaces"),
        (json!({"rbac": {"namespaces": ["a", "a"]}}), "namespaces"),
        (json!({"rbac": {"clusterWide": true}}), "clusterWide"),
        (
            json!({"serviceAccount": {"annotations": {"a": 1}}}),
            "annotations",
        ),
        (json!({"podAnnotations": ["a"]}), "podAnnotations"),
        (json!({"scrapeAnnotations": "true"}), "scrapeAnnotations"),
        (
            json!({"podSecurityContext": {"runAsUser": -1}}),
            "runAsUser",
        ),
        (json!({"securityContext": {"runAsRoot": true}}), "runAsRoot"),
        (
            json!({"securityContext": {"capabilities": {"drop": "ALL"}}}),
            "drop",
        ),
        (
            json!({"securityContext": {"seccompProfile": {"type": "Off"}}}),
            "type",
        ),
        (json!({"resources": {"limit": {"cpu": 1}}}), "limit"),
        (
            json!({"probes": {"liveness": {"periodSeconds": 0}}}),
            "periodSeconds",
        ),
        (json!({"probes": {"startup": {}}}), "startup"),
        (json!({"nodeSelector": {"disk": true}}), "disk"),
        (json!({"tolerations": [{"operator": "Maybe"}]}), "operator"),
        (json!({"affinity": {"nodeAffinty": {}}}), "nodeAffinty"),
        (
            json!({"podAntiAffinityPreset": "always"}),
            "podAntiAffinityPreset",
        ),
        (
            json!({"topologySpreadConstraints": [{"maxSkew": 1}]}),
            "topologyKey",
        ),
        (
            json!({"terminationGracePeriodSeconds": -5}),
            "terminationGracePeriodSeconds",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": 1}}),
            "minAvailable",
        ),
        (
            json!({"podDisruptionBudget": {"maxUnavailable": 0}}),
            "maxUnavailable",
        ),
        (json!({"metricsService": {"type": "ExternalName"}}), "type"),
        (json!({"metricsService": {"port": "http"}}), "port"),
        (
            json!({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}}),
            "interval",
        ),
        (
            json!({"monitoring": {"podMonitor": {"enabled": 1}}}),
            "enabled",
        ),
        (
            json!({"monitoring": {"proxyPodMonitor": {"path": "/m"}}}),
            "path",
        ),
        (
            json!({"monitoring": {"prometheusRule": {"dropsPerSecond": -1}}}),
            "dropsPerSecond",
        ),
        (
            json!({"monitoring": {"prometheusRule": {"downFor": "soon"}}}),
            "downFor",
        ),
        (
            json!({"monitoring": {"prometheusRule": {"severity": "page"}}}),
            "severity",
        ),
        (
            json!({"monitoring": {"prometheusRule": {"additionalRules": [{"alert": "X"}]}}}),
            "expr",
        ),
        (
            json!({"monitoring": {"prometheusRule": {"additionalRules": [{"expr": "1", "severity": "x"}]}}}),
            "severity",
        ),
        (
            json!({"monitoring": {"grafanaDashboard": {"folder": "x"}}}),
            "folder",
        ),
        (json!({"monitoring": {"alertmanager": {}}}), "alertmanager"),
        (
            json!({"networkPolicy": {"enabled": true, "metricsFrom": [{"pods": {}}]}}),
            "pods",
        ),
        (
            json!({"networkPolicy": {"egress": {"apiServerPorts": []}}}),
            "apiServerPorts",
        ),
        (
            json!({"networkPolicy": {"egress": {"apiServerPorts": [0]}}}),
            "apiServerPorts",
        ),
        (json!({"proxies": [{"spec": {}}]}), "name"),
        (json!({"proxies": [{"name": "Bad Name"}]}), "name"),
        (
            json!({"proxies": [{"name": "a", "replicas": 2}]}),
            "replicas",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"mode": "TripleRouter"}}]}),
            "mode",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"replicas": -1}}]}),
            "replicas",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"ports": {"frontend": 70000}}}]}),
            "frontend",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"ports": {"admin": 1}}}]}),
            "admin",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"pubsub": {"enabled": true}}}]}),
            "pubsub",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"security": {"curve": {"keySecret": {"key": "k"}}}}}]}),
            "name",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"security": {"curve": {"authorizedKeys": {"file": "x"}}}}}]}),
            "file",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"matchmaker": {"redisUrlSecret": {"name": "s"}}}}]}),
            "key",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"monitoring": {"interval": "often"}}}]}),
            "interval",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"socket": {"tcpKeepalive": "On"}}}]}),
            "tcpKeepalive",
        ),
        (
            json!({"proxies": [{"name": "a", "spec": {"logging": {"level": "loud"}}}]}),
            "level",
        ),
        // The curl image is gone: the test pod runs the operator image.
        (
            json!({"tests": {"image": {"repository": "curlimages/curl"}}}),
            "image",
        ),
        (json!({"tests": {"timeout": 5}}), "timeout"),
    ];
    let mut failures = Vec::new();
    for (values, key) in &cases {
        match template(values, &[]) {
            Ok(_) => failures.push(format!("accepted: {values}")),
            Err(e) if !e.contains("values don't meet the specifications of the schema") => {
                failures.push(format!("{values}: failed, but not by the schema: {e}"))
            }
            Err(e) if !e.contains(key) => {
                failures.push(format!("{values}: error does not name {key}: {e}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad values not rejected as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Loads values.schema.json.
fn schema() -> Value {
    serde_json::from_str(&read(chart().join("values.schema.json")))
        .expect("values.schema.json parses")
}

/// Resolves a local `$ref`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/definitions/").expect("local refs only");
            resolve(root, &root["definitions"][name])
        }
        None => node,
    }
}

#[test]
fn schema_closes_every_object() {
    // Every object declares additionalProperties: false (chart-owned), a
    // schema (maps), or true only for the Kubernetes types left to the API
    // server (their description says so).
    fn walk(node: &Value, path: &str, open: &mut Vec<String>) {
        if node.get("type").is_some_and(|t| {
            t == "object" || t.as_array().is_some_and(|a| a.contains(&json!("object")))
        }) {
            match node.get("additionalProperties") {
                Some(Value::Bool(false)) | Some(Value::Object(_)) => {}
                Some(Value::Bool(true))
                    if node["description"].as_str().is_some_and(|d| {
                        d.contains("a Kubernetes type, validated by the API server")
                    }) => {}
                other => open.push(format!("{path}: additionalProperties = {other:?}")),
            }
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), open);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = node.get(key).filter(|v| v.is_object()) {
                walk(v, &format!("{path}[{key}]"), open);
            }
        }
        if let Some(defs) = node.get("definitions").and_then(Value::as_object) {
            for (k, v) in defs {
                walk(v, &format!("#{k}"), open);
            }
        }
    }
    let mut open = Vec::new();
    walk(&schema(), "", &mut open);
    assert!(open.is_empty(), "objects not closed:\n{}", open.join("\n"));
}

#[test]
fn schema_for_proxy_specs_mirrors_the_crd() {
    let crd_yaml: serde_yaml::Value =
        serde_yaml::Deserializer::from_str(&read(root().join("crds/zmqproxy.yaml")))
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|v| !v.is_null())
            .unwrap();
    let crd = serde_json::to_value(crd_yaml).unwrap();
    let crd_spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let schema = schema();
    let ours = resolve(&schema, &schema["definitions"]["zmqProxySpec"]);
    let mut diffs = Vec::new();
    fn compare(root: &Value, crd: &Value, ours: &Value, path: &str, diffs: &mut Vec<String>) {
        let ours = resolve(root, ours);
        let crd_type = crd["type"].as_str().unwrap_or_default();
        let our_types: Vec<&str> = match &ours["type"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !our_types.contains(&crd_type) {
            diffs.push(format!("{path}: type {crd_type} vs {our_types:?}"));
        }
        for k in ["pattern", "minLength", "maxLength"] {
            if crd.get(k) != ours.get(k) {
                diffs.push(format!("{path}: {k} {:?} vs {:?}", crd.get(k), ours.get(k)));
            }
        }
        for k in ["minimum", "maximum"] {
            if crd.get(k).and_then(Value::as_f64) != ours.get(k).and_then(Value::as_f64) {
                diffs.push(format!("{path}: {k} {:?} vs {:?}", crd.get(k), ours.get(k)));
            }
        }
        if let Some(e) = crd.get("enum").and_then(Value::as_array) {
            let theirs: Vec<_> = ours["enum"]
                .as_array()
                .map(|a| a.iter().filter(|v| !v.is_null()).cloned().collect())
                .unwrap_or_default();
            if *e != theirs {
                diffs.push(format!("{path}: enum {e:?} vs {theirs:?}"));
            }
        }
        let crd_props = crd.get("properties").and_then(Value::as_object);
        let our_props = ours.get("properties").and_then(Value::as_object);
        match (crd_props, our_props) {
            (Some(c), Some(o)) => {
                let ck: BTreeSet<_> = c.keys().collect();
                let ok: BTreeSet<_> = o.keys().collect();
                if ck != ok {
                    diffs.push(format!("{path}: CRD keys {ck:?} vs chart keys {ok:?}"));
                }
                // Kubernetes types (referenced definitions) are the API server's business.
                for (k, cv) in c {
                    if let Some(ov) = o.get(k) {
                        if ov.get("$ref").is_none() {
                            compare(root, cv, ov, &format!("{path}.{k}"), diffs);
                        }
                    }
                }
            }
            (None, None) => {}
            (c, o) => diffs.push(format!(
                "{path}: properties {} vs {}",
                c.is_some(),
                o.is_some()
            )),
        }
    }
    compare(&schema, crd_spec, ours, "spec", &mut diffs);
    assert!(
        diffs.is_empty(),
        "values.schema.json definitions.zmqProxySpec differs from crds/zmqproxy.yaml:\n{}",
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Documentation

/// Paths of the keys in values.yaml, with whether a `# --` comment documents
/// them, in file order (indentation gives the nesting; list items are not keys).
fn values_keys() -> Vec<(String, bool)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    let mut documented = false;
    for line in read(chart().join("values.yaml")).lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("# -- ") {
            documented = true;
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            if trimmed.is_empty() {
                documented = false;
            }
            continue;
        }
        if trimmed.starts_with('-') {
            documented = false;
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            documented = false;
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        stack.push((indent, key.to_string()));
        out.push((path, documented));
        documented = false;
    }
    out
}

/// Chart-owned value paths the schema declares: down through objects with
/// properties, stopping at Kubernetes types ($ref), maps and lists.
fn schema_value_paths() -> BTreeSet<String> {
    fn walk(root: &Value, node: &Value, path: &str, out: &mut BTreeSet<String>) {
        if !path.is_empty() {
            out.insert(path.to_string());
        }
        if node.get("$ref").is_some() {
            return;
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(root, resolve_monitor(root, v), &p, out);
            }
        }
    }
    // Monitors share one definition of chart-owned fields; follow it.
    fn resolve_monitor<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
        if v.get("$ref").and_then(Value::as_str) == Some("#/definitions/monitor") {
            &root["definitions"]["monitor"]
        } else {
            v
        }
    }
    let s = schema();
    let mut out = BTreeSet::new();
    walk(&s, &s, "", &mut out);
    out
}

#[test]
fn every_value_is_documented_in_values_yaml_the_readme_and_the_schema() {
    let keys = values_keys();
    let schema_paths = schema_value_paths();
    let readme = read(chart().join("README.md"));
    let mut problems = Vec::new();
    let documented: BTreeSet<String> = keys
        .iter()
        .filter(|(_, d)| *d)
        .map(|(p, _)| p.clone())
        .collect();
    for (path, doc) in &keys {
        let parent_is_doc_leaf = documented
            .iter()
            .any(|d| path.starts_with(&format!("{d}.")));
        let is_section = keys.iter().any(|(p, _)| p.starts_with(&format!("{path}.")));
        if !doc && !is_section && !parent_is_doc_leaf {
            problems.push(format!("values.yaml: `{path}` has no `# --` comment"));
        }
        if *doc && !readme.contains(&format!("| `{path}` |")) {
            problems.push(format!("README.md: no row for `{path}`"));
        }
        if !parent_is_doc_leaf && !schema_paths.contains(path) {
            problems.push(format!("values.schema.json: `{path}` not declared"));
        }
    }
    let key_paths: BTreeSet<String> = keys.iter().map(|(p, _)| p.clone()).collect();
    for p in &schema_paths {
        if !key_paths.contains(p) {
            problems.push(format!(
                "values.yaml: schema declares `{p}` but values.yaml has no default for it"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Metric families defined in a source tree: name -> label names, read from
/// the constructor calls (`new("name", ...` followed by an optional
/// `&["label", ...]` before the call's `)?;`).
fn metrics_in_source(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut files = vec![dir.to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = read(&p);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"zmq_proxy_") {
            // A metric name is the first argument of a constructor (`::new(`).
            let is_constructor_arg = rest[..i].trim_end().ends_with("new(");
            let after = &rest[i + 1..];
            let end = after.find('"').unwrap();
            let name = &after[..end];
            let tail = &after[end..];
            rest = tail;
            // Only metric names: lowercase words, used as a constructor argument.
            if !is_constructor_arg || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let call = match tail.find(")?;") {
                Some(e) if e < 600 => &tail[..e],
                _ => "",
            };
            let labels: BTreeSet<String> = match call.find("&[") {
                Some(j) => {
                    let list = &call[j + 2..];
                    let list = &list[..list.find(']').unwrap_or(0)];
                    list.split(',')
                        .map(|s| s.trim().trim_matches('"').to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                None => BTreeSet::new(),
            };
            out.entry(name.to_string())
                .or_insert_with(BTreeSet::new)
                .extend(labels);
        }
    }
    out
}

/// docs/metrics.md tables: metric -> label names (from the `labels` column).
fn metrics_in_doc() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for line in read(root().join("docs/metrics.md")).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim())
            .filter(|l| l.starts_with('`'))
            .map(|l| {
                l.trim_matches('`')
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('`')
                    .to_string()
            })
            .collect();
        out.insert(name, labels);
    }
    out
}

#[test]
fn metrics_doc_lists_every_metric_in_the_code() {
    let doc = metrics_in_doc();
    let mut problems = Vec::new();
    let mut seen = 0;
    for crate_dir in ["proxy/src", "operator/src"] {
        for (name, labels) in metrics_in_source(&root().join(crate_dir)) {
            seen += 1;
            match doc.get(&name) {
                None => problems.push(format!("{name} ({crate_dir}) is not in docs/metrics.md")),
                Some(documented) => {
                    let documented: BTreeSet<String> =
                        documented.iter().filter(|l| *l != "le").cloned().collect();
                    if documented != labels {
                        problems.push(format!(
                            "{name}: labels in code {labels:?}, in docs/metrics.md {documented:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        seen >= 10,
        "found only {seen} metrics in the code: the scanner is broken"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Metric names a PromQL expression uses (identifiers followed by `{`, `[`,
/// `)` or space that look like metric names).
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if !in_string
            && (c.is_ascii_alphabetic() || c == '_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == '_'
                    || bytes[i - 1] == '$'))
        {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if word.starts_with("zmq_proxy") || word.starts_with("process_") || word == "up" {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}

fn documented_family(name: &str, doc: &BTreeMap<String, BTreeSet<String>>) -> bool {
    if name == "up" || doc.contains_key(name) {
        return true;
    }
    let histogram = ["_bucket", "_sum", "_count"]
        .iter()
        .any(|s| name.strip_suffix(s).is_some_and(|b| doc.contains_key(b)));
    let process = name.starts_with("process_")
        && read(root().join("docs/metrics.md")).contains(&format!("`{name}`"));
    histogram || process
}

#[test]
fn dashboard_and_alerts_use_only_documented_metrics() {
    let doc = metrics_in_doc();
    let dash: Value = serde_json::from_str(&read(chart().join("files/dashboards/zmq-proxy.json")))
        .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 10);
    let r = render(json!({"monitoring": {"prometheusRule": {"enabled": true}}}));
    for rule in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
    {
        exprs.push(rule["expr"].as_str().unwrap().to_string());
    }
    let mut problems = Vec::new();
    for e in &exprs {
        let names = metric_names_in(e);
        if names.is_empty() {
            problems.push(format!("no metric in {e}"));
        }
        for n in names {
            if !documented_family(&n, &doc) {
                problems.push(format!("{n} (in {e}) is not in docs/metrics.md"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Dockerfiles

#[test]
fn dockerfiles_take_host_built_stripped_binaries_onto_the_debootstrap_base() {
    // The runtime stage is the whole file: cargo builds on the host (the
    // `image` profile), the Dockerfile copies the result onto the base that
    // tests/images.sh makes with debootstrap. The tests build these files.
    let images_sh = read(root().join("tests/images.sh"));
    let base = images_sh
        .lines()
        .find_map(|l| l.strip_prefix("BASE_IMAGE="))
        .expect("tests/images.sh names the base image");
    for (dir, bin, package) in [
        ("proxy", "zmq-proxy", "zmq-proxy"),
        ("operator", "zmq-proxy-operator", "zmq-proxy-operator"),
    ] {
        let text = read(root().join(dir).join("Dockerfile"));
        let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(
            froms,
            ["FROM ${BASE}"],
            "{dir}/Dockerfile: one runtime stage"
        );
        assert!(
            text.lines().any(|l| l == format!("ARG BASE={base}")),
            "{dir}: FROM the base tests/images.sh makes"
        );
        assert!(
            text.contains(&format!(
                "cargo build --profile image --locked -p {package} --bin {bin}"
            )),
            "{dir}: documents how its binary is built"
        );
        assert!(
            text.contains(&format!("COPY target/image/{bin} /usr/local/bin/{bin}")),
            "{dir}: copies the image-profile binary"
        );
        let manifest = read(root().join(dir).join("Cargo.toml"));
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "{dir}/Cargo.toml declares the binary {bin}"
        );
        let user = text
            .lines()
            .rfind(|l| l.starts_with("USER "))
            .expect("USER");
        assert_eq!(
            user, "USER 65532:65532",
            "{dir}: numeric non-root user (runAsNonRoot can check it)"
        );
        assert!(text
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("ENTRYPOINT") || l.starts_with("CMD")));
        // The build context is the repository root: only the binaries go in.
        let ignore = read(root().join(dir).join("Dockerfile.dockerignore"));
        assert!(
            ignore.lines().any(|l| l == "*"),
            "{dir}: context excludes all"
        );
        assert!(ignore.lines().any(|l| l == format!("!target/image/{bin}")));
    }
    // The proxy image also carries the RPC CLI (clients and servers as pods
    // of the same image), and its base carries libzmq5.
    let proxy = read(root().join("proxy/Dockerfile"));
    assert!(proxy.contains("COPY target/image/zmq-proxy-rpc /usr/local/bin/zmq-proxy-rpc"));
    assert!(proxy.contains("--bin zmq-proxy-rpc"));
    assert!(images_sh
        .lines()
        .any(|l| l.starts_with("BASE_PACKAGES=") && l.contains("libzmq5")));
    // The image profile strips the binaries.
    let manifest = read(root().join("Cargo.toml"));
    let cargo = toml_lite::parse(&manifest);
    assert_eq!(
        cargo.get("profile.image", "inherits").as_deref(),
        Some("release")
    );
    let image_profile = manifest
        .split("[profile.image]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or_default();
    assert!(image_profile.contains("strip = true"), "{image_profile}");
    assert!(image_profile.contains("debug = false"), "{image_profile}");
}

/// Just enough TOML to read `[section] key = "value"` lines of Cargo.toml
/// (no TOML crate in the workspace).
mod toml_lite {
    /// A parsed file: (section, key, value) triples.
    pub struct Doc(Vec<(String, String, String)>);

    /// Parses the simple `key = "value"` lines under `[section]` headers.
    pub fn parse(text: &str) -> Doc {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                if v.starts_with('"') && v.ends_with('"') && v.len() >= 2 {
                    out.push((
                        section.clone(),
                        k.trim().to_string(),
                        v[1..v.len() - 1].to_string(),
                    ));
                }
            }
        }
        Doc(out)
    }

    impl Doc {
        /// The value of `key` in `section`.
        pub fn get(&self, section: &str, key: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(s, k, _)| s == section && k == key)
                .map(|(_, _, v)| v.clone())
        }
    }
}

// ---------------------------------------------------------------------------
// Alerts fire on the conditions they describe (promtool test rules)

/// The alert's annotations with the template expressions promtool expands
/// (`{{ $labels.x }}`, `{{ $value | humanize }}`) substituted here.
fn expand(template: &str, labels: &BTreeMap<&str, &str>, value: &str) -> String {
    let mut out = template.replace("{{ $value | humanize }}", value);
    for (k, v) in labels {
        out = out.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    out
}

#[test]
fn alerts_fire_on_the_conditions_they_describe_and_stay_quiet_otherwise() {
    let r = render(json!({"monitoring": {"prometheusRule": {"enabled": true}}}));
    let spec = r.one("PrometheusRule")["spec"].clone();
    let rules = spec["groups"][0]["rules"].as_array().unwrap().clone();
    let annotations = |alert: &str, labels: &BTreeMap<&str, &str>, value: &str| -> Value {
        let rule = rules.iter().find(|x| x["alert"] == alert).unwrap();
        let mut out = serde_json::Map::new();
        for (k, v) in rule["annotations"].as_object().unwrap() {
            out.insert(k.clone(), json!(expand(v.as_str().unwrap(), labels, value)));
        }
        Value::Object(out)
    };
    let proxy: BTreeMap<&'static str, &'static str> = [
        ("namespace", "a"),
        ("pod", "p1"),
        ("instance", "10.0.0.5:9090"),
        ("container", "zmq-proxy"),
        ("job", "k"),
    ]
    .into();
    let operator: BTreeMap<&'static str, &'static str> = [
        ("namespace", "op"),
        ("pod", "o1"),
        ("container", "operator"),
        ("job", "k"),
    ]
    .into();
    fn with(
        base: &BTreeMap<&'static str, &'static str>,
        extra: &[(&'static str, &'static str)],
    ) -> BTreeMap<&'static str, &'static str> {
        let mut m = base.clone();
        m.extend(extra.iter().copied());
        m
    }
    let labels_json = |m: &BTreeMap<&str, &str>| json!(m);
    let down = proxy.clone();
    let drops: BTreeMap<&'static str, &'static str> =
        [("namespace", "a"), ("pod", "p1"), ("reason", "bad_type")]
            .into_iter()
            .collect::<BTreeMap<_, _>>();
    let unroutable = [("namespace", "a"), ("pod", "p1")]
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    let errors = [("namespace", "op"), ("pod", "o1"), ("reason", "api_500")]
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    let series = |name: &str, labels: &BTreeMap<&str, &str>| {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    let sev = |m: &BTreeMap<&'static str, &'static str>| {
        labels_json(&with(m, &[("severity", "warning")]))
    };
    let quiet: Vec<Value> = rules
        .iter()
        .filter_map(|x| x["alert"].as_str())
        .map(|a| json!({"eval_time": "20m", "alertname": a, "exp_alerts": []}))
        .collect();
    let test = json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": [
            {
                // A proxy that stops answering, drops malformed input and
                // unroutable messages at 2/s; an operator that is up, fails
                // every reconcile and does not lead.
                "interval": "1m",
                "input_series": [
                    {"series": series("up", &proxy), "values": "0x30"},
                    {"series": series("zmq_proxy_dropped_total", &with(&proxy, &[("socket", "frontend"), ("reason", "bad_type")])), "values": "0+120x30"},
                    {"series": series("zmq_proxy_dropped_total", &with(&proxy, &[("socket", "backend"), ("reason", "unroutable")])), "values": "0+120x30"},
                    {"series": series("up", &operator), "values": "1x30"},
                    {"series": series("zmq_proxy_operator_is_leader", &operator), "values": "0x30"},
                    {"series": series("zmq_proxy_operator_reconcile_errors_total", &with(&operator, &[("reason", "api_500")])), "values": "0+60x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "ZmqProxyDown", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "ZmqProxyDown", "exp_alerts": [
                        {"exp_labels": sev(&down), "exp_annotations": annotations("ZmqProxyDown", &down, "0")}]},
                    {"eval_time": "15m", "alertname": "ZmqProxyDropsRising", "exp_alerts": [
                        {"exp_labels": sev(&drops), "exp_annotations": annotations("ZmqProxyDropsRising", &drops, "2")}]},
                    {"eval_time": "15m", "alertname": "ZmqProxyUnroutableRising", "exp_alerts": [
                        {"exp_labels": sev(&unroutable), "exp_annotations": annotations("ZmqProxyUnroutableRising", &unroutable, "2")}]},
                    {"eval_time": "10m", "alertname": "ZmqProxyOperatorReconcileErrors", "exp_alerts": []},
                    {"eval_time": "20m", "alertname": "ZmqProxyOperatorReconcileErrors", "exp_alerts": [
                        {"exp_labels": sev(&errors), "exp_annotations": annotations("ZmqProxyOperatorReconcileErrors", &errors, "1")}]},
                    {"eval_time": "10m", "alertname": "ZmqProxyOperatorDown", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "ZmqProxyOperatorNoLeader", "exp_alerts": [
                        {"exp_labels": {"severity": "warning"}, "exp_annotations": annotations("ZmqProxyOperatorNoLeader", &BTreeMap::new(), "")}]},
                ]
            },
            {
                // A healthy install: nothing fires.
                "interval": "1m",
                "input_series": [
                    {"series": series("up", &proxy), "values": "1x30"},
                    {"series": series("zmq_proxy_dropped_total", &with(&proxy, &[("socket", "frontend"), ("reason", "bad_type")])), "values": "0x30"},
                    {"series": series("up", &operator), "values": "1x30"},
                    {"series": series("zmq_proxy_operator_is_leader", &operator), "values": "1x30"},
                ],
                "alert_rule_test": quiet
            }
        ]
    });
    let dir = std::env::temp_dir().join(format!("zmq-proxy-chart-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.json"), spec.to_string()).unwrap();
    std::fs::write(dir.join("test.json"), test.to_string()).unwrap();
    let promtool = harness::tools::promtool().expect("promtool (run `bash tests/install.sh`)");
    let out = Command::new(promtool)
        .args(["test", "rules", "test.json"])
        .current_dir(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
