//! Test harness for a real Kubernetes control plane, on one machine.
//!
//! - [`ControlPlane`]: etcd + kube-apiserver + kube-controller-manager started
//!   once per test process on loopback (or an existing cluster named by
//!   `ZMQ_PROXY_TEST_KUBECONFIG`), with admin and ServiceAccount clients.
//! - [`RealNode`]: a real node for the plane: containerd, kubelet,
//!   kube-proxy and a CNI bridge; pods are containers of the project's
//!   images (one per machine).
//! - [`workspace_binary`]: where the test command put the workspace's binaries.
//!
//! Every process the harness starts is forked from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so it dies with the test process even when a test
//! panics and statics are never dropped (see [`process`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod control_plane;
pub mod http;
pub mod kubeconfig;
pub mod loopback;
pub mod net;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod real_node;
pub mod startup;
pub mod tools;
pub mod wait;

pub use control_plane::ControlPlane;
pub use real_node::RealNode;
pub use tools::workspace_binary;

/// Installs a tracing subscriber writing to the test's captured output
/// (idempotent; `RUST_LOG` overrides the default `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // kube's client logs every non-2xx answer at ERROR, including the 500s
    // of /readyz while the API server starts; callers get those errors anyway.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off"));
    // A second call (another test in the same process) finds a subscriber
    // already set; that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
