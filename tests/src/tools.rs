//! Where the harness finds its programs: the Kubernetes, etcd and Prometheus
//! binaries that tests/install.sh builds from Go modules into the cache,
//! helm, and the workspace's binaries.

use std::path::{Path, PathBuf};

/// Kubernetes version tests/install.sh builds (the cache is keyed by it).
pub const K8S_VERSION: &str = "1.37.2";
/// etcd version tests/install.sh builds.
pub const ETCD_VERSION: &str = "3.7.3";
/// CoreDNS version tests/install.sh builds (the real node's cluster DNS).
pub const COREDNS_VERSION: &str = "v1.15.0";
/// Prometheus module version tests/install.sh builds (Prometheus 3.x is
/// published as Go module versions v0.3xx.y).
pub const PROMETHEUS_VERSION: &str = "v0.316.0";

/// Errors locating a program.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not where the install step puts it.
    #[error("{name} not found (looked in {looked}); run `bash tests/install.sh`")]
    NotFound {
        /// The program.
        name: String,
        /// Where we looked.
        looked: String,
    },
}

/// The cache directory: `$ZMQ_PROXY_CACHE`, else `$HOME/.cache/zmq-proxy`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZMQ_PROXY_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("zmq-proxy")
}

/// Directory holding kube-apiserver, kube-controller-manager,
/// kube-scheduler, kubelet, kube-proxy and kubectl.
pub fn k8s_bin_dir() -> PathBuf {
    cache_dir().join(format!("k8s-{K8S_VERSION}")).join("bin")
}

/// Directory holding etcd.
pub fn etcd_bin_dir() -> PathBuf {
    cache_dir().join(format!("etcd-{ETCD_VERSION}")).join("bin")
}

/// Directory holding prometheus.
pub fn prometheus_bin_dir() -> PathBuf {
    cache_dir()
        .join(format!("prometheus-{PROMETHEUS_VERSION}"))
        .join("bin")
}

fn in_dirs(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, ToolError> {
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ToolError::NotFound {
        name: name.to_string(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// kube-apiserver from the cache (never a random one from PATH: the harness
/// passes flags of its own version).
pub fn kube_apiserver() -> Result<PathBuf, ToolError> {
    in_dirs("kube-apiserver", &[k8s_bin_dir()])
}

/// kube-controller-manager from the cache.
pub fn kube_controller_manager() -> Result<PathBuf, ToolError> {
    in_dirs("kube-controller-manager", &[k8s_bin_dir()])
}

/// kube-scheduler from the cache.
pub fn kube_scheduler() -> Result<PathBuf, ToolError> {
    in_dirs("kube-scheduler", &[k8s_bin_dir()])
}

/// kubelet from the cache (same version as the control plane).
pub fn kubelet() -> Result<PathBuf, ToolError> {
    in_dirs("kubelet", &[k8s_bin_dir()])
}

/// kube-proxy from the cache.
pub fn kube_proxy() -> Result<PathBuf, ToolError> {
    in_dirs("kube-proxy", &[k8s_bin_dir()])
}

/// CoreDNS from the cache.
pub fn coredns() -> Result<PathBuf, ToolError> {
    in_dirs(
        "coredns",
        &[cache_dir()
            .join(format!("coredns-{COREDNS_VERSION}"))
            .join("bin")],
    )
}

/// The sandbox image's docker-archive (tests/images.sh `pause`, keyed by
/// the Kubernetes version whose pause.c it compiles).
pub fn pause_image() -> Result<PathBuf, ToolError> {
    let dir = cache_dir().join(format!("pause-{K8S_VERSION}"));
    let path = dir.join("pause.tar");
    if path.is_file() {
        Ok(path)
    } else {
        Err(ToolError::NotFound {
            name: "pause.tar".into(),
            looked: dir.display().to_string(),
        })
    }
}

/// kubectl: the cached client of the plane's version first, then PATH.
pub fn kubectl() -> Result<PathBuf, ToolError> {
    let mut dirs = vec![k8s_bin_dir()];
    dirs.extend(path_dirs());
    in_dirs("kubectl", &dirs)
}

/// helm from the cache's venv, then PATH.
pub fn helm() -> Result<PathBuf, ToolError> {
    let mut dirs = vec![cache_dir().join("venv").join("bin")];
    dirs.extend(path_dirs());
    in_dirs("helm", &dirs)
}

/// etcd from the cache (Debian's 3.4 is older than Kubernetes supports).
pub fn etcd() -> Result<PathBuf, ToolError> {
    in_dirs("etcd", &[etcd_bin_dir()])
}

/// Prometheus from the cache (Debian's build has Kubernetes service
/// discovery compiled out).
pub fn prometheus() -> Result<PathBuf, ToolError> {
    in_dirs("prometheus", &[prometheus_bin_dir()])
}

/// promtool of the same Prometheus release (rule checks and rule unit tests).
pub fn promtool() -> Result<PathBuf, ToolError> {
    in_dirs("promtool", &[prometheus_bin_dir()])
}

/// Directory of the workspace's built binaries: `$ZMQ_PROXY_BIN_DIR`, else
/// the profile directory of the running test executable
/// (target/<profile>/deps/<test> -> target/<profile>), else target/debug.
pub fn workspace_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZMQ_PROXY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        if dir
            .as_ref()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "deps")
        {
            dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
        }
        if let Some(dir) = dir {
            return dir;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("debug")
}

/// The workspace's root directory (the checkout).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a workspace binary such as `zmq-proxy` (the test command builds
/// them before the tests run; this does not build).
pub fn workspace_binary(name: &str) -> PathBuf {
    workspace_bin_dir().join(name)
}
