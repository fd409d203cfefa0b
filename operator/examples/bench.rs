//! Benchmark (prints figures, asserts nothing): on the test control plane,
//! with the real operator binary,
//! 1. the time from creating a ZmqProxy to its status being written — the
//!    operator writes status only after every child has been applied — over
//!    20 objects created one after another (median, p90, max), plus the
//!    operator's own reconcile-duration histogram;
//! 2. the operator's resident memory while it manages 500 ZmqProxy objects.
//!
//! Run: `cargo build --release -p zmq-proxy-operator && cargo run --release
//! -p zmq-proxy-operator --example bench` (OPERATOR_BIN overrides the binary).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use harness::process::{Process, ProcessSpec};
use harness::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use zmq_proxy_operator::crd::ZmqProxy;

fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let release = target.join("release/zmq-proxy-operator");
    if release.exists() {
        release
    } else {
        target.join("debug/zmq-proxy-operator")
    }
}

fn rss_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn zp(ns: &str, name: &str, spec: serde_json::Value) -> Result<ZmqProxy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "zmqproxy.io/v1alpha1", "kind": "ZmqProxy",
        "metadata": { "name": name, "namespace": ns }, "spec": spec,
    }))?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    let crd_text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/zmqproxy.yaml"),
    )?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_text)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "zmqproxies.zmqproxy.io",
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    harness::wait::until("CRD established", Duration::from_secs(60), || async {
        let c = crds.get("zmqproxies.zmqproxy.io").await?;
        Ok(c.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(()))
    })
    .await?;
    let ns = cp.namespace("bench").await?;

    let bin = operator_bin();
    println!("operator binary: {}", bin.display());
    let port = harness::net::free_port()?;
    let mut spec =
        ProcessSpec::new("operator", &bin, cp.dir().join("bench-operator.log")).args(["run"]);
    spec.env = vec![
        ("KUBECONFIG".into(), cp.kubeconfig().display().to_string()),
        ("WATCH_NAMESPACES".into(), ns.clone()),
        ("METRICS_ADDRESS".into(), format!("127.0.0.1:{port}")),
        ("LEASE_NAMESPACE".into(), ns.clone()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let op = Process::spawn(&spec)?;

    // Status-written times, from a watch (no polling).
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = seen.clone();
        let api: Api<ZmqProxy> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(ev)) = stream.next().await {
                let objs: Vec<ZmqProxy> = match ev {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                    _ => vec![],
                };
                for o in objs {
                    let done = o
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .is_some();
                    if done {
                        if let Ok(mut s) = seen.lock() {
                            s.entry(o.name_any()).or_insert_with(Instant::now);
                        }
                    }
                }
            }
        });
    }
    let api: Api<ZmqProxy> = Api::namespaced(client.clone(), &ns);

    // Warm-up: the operator must be leading with synced caches.
    api.create(
        &PostParams::default(),
        &zp(&ns, "warmup", json!({ "replicas": 0 }))?,
    )
    .await?;
    harness::wait::until("warm-up reconciled", Duration::from_secs(60), || async {
        Ok(seen.lock().ok().and_then(|s| s.get("warmup").copied()))
    })
    .await?;

    let mut latencies = Vec::new();
    for i in 0..20 {
        let name = format!("lat-{i}");
        let t0 = Instant::now();
        api.create(
            &PostParams::default(),
            &zp(&ns, &name, json!({ "replicas": 2 }))?,
        )
        .await?;
        let t1 = harness::wait::until("status written", Duration::from_secs(60), || async {
            Ok(seen.lock().ok().and_then(|s| s.get(&name).copied()))
        })
        .await?;
        latencies.push(t1.duration_since(t0));
    }
    latencies.sort();
    println!(
        "apply -> all children applied and status written, 20 objects: median {:?}, p90 {:?}, min {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies[0],
        latencies[latencies.len() - 1]
    );
    println!(
        "(measured through a watch on the ZmqProxy; resolution ~ one watch event; no node is running, pods stay Pending)"
    );

    // 500 objects.
    let t0 = Instant::now();
    let names: Vec<String> = (0..500).map(|i| format!("many-{i}")).collect();
    for chunk in names.chunks(25) {
        let creates = chunk.iter().map(|n| {
            let api = api.clone();
            let obj = zp(&ns, n, json!({ "replicas": 0 }));
            async move {
                api.create(&PostParams::default(), &obj?)
                    .await
                    .context("create")
            }
        });
        for r in futures::future::join_all(creates).await {
            r?;
        }
    }
    let created = t0.elapsed();
    harness::wait::until(
        "500 objects reconciled",
        Duration::from_secs(900),
        || async {
            let n = seen
                .lock()
                .map(|s| s.keys().filter(|k| k.starts_with("many-")).count())
                .unwrap_or(0);
            Ok((n == 500).then_some(()))
        },
    )
    .await?;
    let converged = t0.elapsed();
    // Let the steady state settle (resyncs of children via watches).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(op.pid(), "VmRSS:").unwrap_or(0);
    let hwm = rss_kib(op.pid(), "VmHWM:").unwrap_or(0);
    println!(
        "500 ZmqProxy objects (+21 others): created in {created:?}, all reconciled after {converged:?}; operator RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    if let Ok((_, body)) = harness::http::get(&format!("127.0.0.1:{port}"), "/metrics").await {
        for line in body.lines().filter(|l| {
            l.starts_with("zmq_proxy_operator_reconcile_duration_seconds_sum")
                || l.starts_with("zmq_proxy_operator_reconcile_duration_seconds_count")
                || l.starts_with("zmq_proxy_operator_reconcile_errors_total")
                || l.starts_with("zmq_proxy_operator_managed_objects")
        }) {
            println!("{line}");
        }
    }
    op.terminate(Duration::from_secs(10)).await;
    Ok(())
}
