//! `zmq-proxy-node-agent`: the harness's node agent as a program, for people
//! exploring a test control plane (see tests/control-plane.sh): it registers
//! a Node and runs the pods kube-scheduler binds to it as local processes
//! until Ctrl-C.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use harness::kubeconfig;
use harness::NodeAgent;

/// Runs pods as local processes (image repository -> binary).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Kubeconfig with admin rights.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// `repository=/path/to/binary`, repeatable (e.g.
    /// ghcr.io/zmq-proxy/zmq-proxy=target/debug/zmq-proxy).
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// Directory for pod files and logs.
    #[arg(long, default_value_os_t = std::env::temp_dir().join(format!("zmq-proxy-node-agent-{}", std::process::id())))]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    harness::init_logging();
    let args = Args::parse();
    let images = harness::node_agent::parse_image_map(args.images.iter().map(String::as_str))
        .map_err(|e| anyhow!(e))?;
    let config = kubeconfig::load_config(&args.kubeconfig).await?;
    let cluster = kubeconfig::cluster_of(&args.kubeconfig)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let agent = NodeAgent::start_with(config, cluster, &args.dir, images, false).await?;
    println!(
        "node {} running; pod logs under {}",
        agent.node_name(),
        args.dir.display()
    );
    tokio::signal::ctrl_c().await?;
    agent.stop().await
}
