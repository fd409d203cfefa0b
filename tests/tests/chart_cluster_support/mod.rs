//! Support for the chart's cluster test (`chart_cluster.rs`): paths,
//! running tools, the cluster queries the scenario asks, what
//! docs/metrics.md documents, a Prometheus server, and a minimal DEALER.

pub mod cluster;
pub mod docs;
pub mod prometheus;
pub mod zmtp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// The Helm release name.
pub const RELEASE: &str = "zp";
/// Deadline for anything the cluster does (2 shared cores).
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// The workspace root.
pub fn root() -> PathBuf {
    harness::tools::workspace_root()
}

/// The operator chart.
pub fn chart() -> PathBuf {
    root().join("charts/zmq-proxy-operator")
}

/// A file's text, with its path in the error.
pub fn read(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs a tool; Ok(stdout) or an error with its output.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
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

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn parse_objects(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(serde_json::to_value(v)?);
        }
    }
    Ok(out)
}
