//! `zmq-proxy-control-plane`: starts the tests' control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler; optionally the
//! real node) and keeps it up until SIGTERM/SIGINT.
//! tests/control-plane.sh drives it. Everything it started dies with it; a
//! real node is stopped (its pods deleted, containers gone) before it exits.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use harness::{ControlPlane, RealNode};
use tokio::signal::unix::{signal, SignalKind};

/// Starts a local Kubernetes control plane for tests.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Also run the real node (containerd, kubelet, kube-proxy, CoreDNS)
    /// with the images of tests/images.sh imported.
    #[arg(long)]
    node: bool,
    /// Write `KUBECONFIG=...` (shell syntax) here once ready.
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Write the plane's PIDs here once ready (one per line).
    #[arg(long)]
    pids_file: Option<PathBuf>,
    /// Panic once ready (tests that children die with a failing test).
    #[arg(long, hide = true)]
    panic_when_ready: bool,
    /// abort() once ready: no exit handlers run, only PR_SET_PDEATHSIG.
    #[arg(long, hide = true)]
    abort_when_ready: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    harness::init_logging();
    let args = Args::parse();
    let cp = ControlPlane::start_local().await?;
    let node = if args.node {
        let node = RealNode::start_with_workspace_images(&cp).await?;
        println!("real node ready in {:.1?}", node.startup_duration());
        Some(node)
    } else {
        None
    };
    let env = format!(
        "export KUBECONFIG={}\nexport ZMQ_PROXY_CONTROL_PLANE_DIR={}\n",
        cp.kubeconfig().display(),
        cp.dir().display()
    );
    if let Some(path) = &args.env_file {
        std::fs::write(path, &env).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.pids_file {
        let mut pids = cp.pids();
        pids.extend(node.iter().flat_map(RealNode::pids));
        let mut pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        pids.push(String::new());
        std::fs::write(path, pids.join("\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("control plane ready in {:.1?}", cp.startup_duration());
    print!("{env}");
    if args.panic_when_ready {
        panic!("--panic-when-ready");
    }
    if args.abort_when_ready {
        std::process::abort();
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(node) = node {
        node.stop().await?;
    }
    Ok(())
}
