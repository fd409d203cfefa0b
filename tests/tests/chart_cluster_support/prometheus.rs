//! A real Prometheus (built by tests/install.sh) discovering the chart's
//! pods through `kubernetes_sd_configs` with the documented configuration
//! and the chart's alert rules, and what the scenario checks in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use harness::http::get as http_get;
use harness::process::{Process, ProcessSpec};
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{json, Value};

use super::docs::{documented_label_values, documented_metrics, documented_scrape_config};
use super::{chart, parse_objects, read, root, run, zmtp, RELEASE, TIMEOUT};

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
pub struct Prometheus {
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
    pub async fn api(&self, path: &str) -> Result<Value> {
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
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self
            .api(&format!("query?query={}", percent_encode(promql)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The last 30 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Starts Prometheus with its own ServiceAccount (allowed to list and
/// watch pods cluster-wide), the documented scrape configuration pointed at
/// this API server and the release and watched namespaces, and the
/// chart's alert rules.
pub async fn start_prometheus(
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

/// A label of a query result's series.
fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

/// Everything the scenario checks in Prometheus, in order; `operators` and
/// `proxies` map pod names to pod IPs.
pub async fn check_prometheus(
    prom: &Prometheus,
    operators: &BTreeMap<String, String>,
    proxies: &BTreeMap<String, String>,
    watch_ns: &str,
) -> Result<()> {
    every_pod_scraped(prom, operators, proxies).await?;
    proxy_metrics_documented(prom, proxies, watch_ns).await?;
    operator_metrics(prom).await?;
    every_name_documented(prom).await?;
    alert_rules_quiet(prom).await?;
    traffic_moves_counters(prom, proxies, watch_ns).await?;
    dashboard_queries_answer(prom, watch_ns).await
}

/// One healthy target per pod: the documented relabelling merges the
/// per-port targets of a pod into one.
async fn every_pod_scraped(
    prom: &Prometheus,
    operators: &BTreeMap<String, String>,
    proxies: &BTreeMap<String, String>,
) -> Result<()> {
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
    Ok(())
}

/// The proxies' metrics carry the documented labels and label values.
async fn proxy_metrics_documented(
    prom: &Prometheus,
    proxies: &BTreeMap<String, String>,
    watch_ns: &str,
) -> Result<()> {
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
    Ok(())
}

/// Two operator replicas scraped, exactly one leader, which reconciled.
async fn operator_metrics(prom: &Prometheus) -> Result<()> {
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
    Ok(())
}

/// Every scraped name is documented with its labels, and the reverse.
async fn every_name_documented(prom: &Prometheus) -> Result<()> {
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
    // reconcile error counter appears with the first error, the CURVE
    // counters with the first refusal or reload (documented; the example
    // runs without CURVE).
    let after_first_event = [
        "zmq_proxy_operator_reconcile_errors_total",
        "zmq_proxy_curve_refused_total",
        "zmq_proxy_curve_reloads_total",
    ];
    for f in doc.keys() {
        if !families.contains(f) && !after_first_event.contains(&f.as_str()) {
            problems.push(format!("{f} documented but not scraped"));
        }
    }
    problems.sort();
    problems.dedup();
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The chart's alert rules load and evaluate; none fires.
async fn alert_rules_quiet(prom: &Prometheus) -> Result<()> {
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
    Ok(())
}

/// Raw traffic into one proxy moves its counters under the documented labels.
async fn traffic_moves_counters(
    prom: &Prometheus,
    proxies: &BTreeMap<String, String>,
    watch_ns: &str,
) -> Result<()> {
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
    Ok(())
}

/// Every dashboard query runs; the panels about present series answer.
async fn dashboard_queries_answer(prom: &Prometheus, watch_ns: &str) -> Result<()> {
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
