//! What the real-node suites share: running a scenario on the machine's one
//! node (stopped whatever happens, its logs shown when the scenario fails),
//! the restricted security context, pod waits and kubectl.

#![allow(dead_code)] // Each real-node suite uses a part of it.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use harness::real_node::RealNode;
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;

/// The proxy image as tests/images.sh tags it.
pub const PROXY_IMAGE: &str = "ghcr.io/zmq-proxy/zmq-proxy:0.1.0";
/// Bound on every wait of a real-node scenario.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the real node on the shared control plane, runs `scenario`, and
/// stops the node whatever happens: a failed assertion must not leave
/// containers behind (the next node would reclaim them, but slower). On
/// failure the node's logs are printed.
pub async fn with_node(
    scenario: impl AsyncFnOnce(&'static ControlPlane, &RealNode) -> Result<()>,
) -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let node = RealNode::start_with_workspace_images(cp).await?;
    println!(
        "real node {} ready in {:.1?} (control plane {:.1?})",
        node.node_name(),
        node.startup_duration(),
        cp.startup_duration()
    );
    let result = AssertUnwindSafe(scenario(cp, &node)).catch_unwind().await;
    if !matches!(result, Ok(Ok(()))) {
        node.print_diagnostics(&[]).await;
    }
    node.stop().await?;
    match result {
        Ok(outcome) => outcome,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The security context the operator gives proxy containers
/// (operator/src/build/workload.rs), minus `runAsUser`: the image's own
/// numeric USER is what runAsNonRoot has to accept.
pub fn restricted() -> serde_json::Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's phase (Pending, Running, Succeeded, Failed).
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub async fn wait_pod(pods: &Api<Pod>, name: &str, ok: fn(&Pod) -> bool) -> Result<Pod> {
    until(&format!("pod {name}"), TIMEOUT, || async {
        let p = pods.get(name).await?;
        Ok(ok(&p).then_some(p))
    })
    .await
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(harness::tools::kubectl()?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .context("cannot run kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
