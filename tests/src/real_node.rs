//! A real Kubernetes node on this machine, for a [`ControlPlane`]: pods are
//! containers.
//!
//! - containerd (Debian's 1.6, its CRI plugin configured here) runs
//!   containers with Debian's runc, cgroupfs driver on cgroup v1;
//! - a CNI bridge ([`BRIDGE`], Debian's `containernetworking-plugins`) gives
//!   pods addresses in [`POD_CIDR`], reachable from the host;
//! - the kubelet of the plane's version registers Node [`NODE_NAME`] with a
//!   client certificate of the plane's CA as `system:node:<name>` (Node
//!   authorizer, NodeRestriction), on the bridge's address;
//! - kube-proxy (iptables) makes ClusterIP Services work, the `kubernetes`
//!   Service included, so pods use in-cluster config;
//! - CoreDNS (its `kubernetes` plugin) answers cluster names as the
//!   `kube-dns` Service ([`CLUSTER_DNS`]). It runs on the host, on the
//!   node's address, as `system:coredns` with read access to Services and
//!   EndpointSlices: the Service has no selector, its EndpointSlice names
//!   the host. It has no upstream: names outside the cluster do not
//!   resolve, so no query leaves the host.
//!
//! Images come from docker-archives (no registry is reachable):
//! tests/images.sh builds the sandbox image into the cache and the
//! project's images into `<target>/images/`; [`RealNode::start`] imports them
//! into containerd's `k8s.io` namespace, and pods use them with a pull
//! policy that never pulls.
//!
//! One node per machine: kube-proxy owns the host's `KUBE-*` iptables chains
//! and the kubelet the `kubepods` cgroups, so a second node would fight the
//! first. [`RealNode::start`] holds an exclusive lock ([`LOCK_FILE`]) until
//! [`RealNode::stop`] or process exit; other test processes wait for it.
//! The node's state lives in fixed directories ([`STATE_DIR`], [`RUN_DIR`]):
//! a node whose test process was killed leaves containers behind (their
//! shims outlive containerd), and the next node's containerd finds them
//! there and its kubelet stops them, since no pod of the new plane owns
//! them.
//!
//! Traffic stays on this host: pods get a default route to the bridge only,
//! the bridge does no masquerading, and a FORWARD rule drops anything from
//! the pod range that would leave by another interface. The Service range is
//! routed to the bridge, so a Service address kube-proxy does not (yet)
//! translate is never sent to the machine's gateway.
//!
//! Needs root (containers, network namespaces, iptables).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::control_plane::ControlPlane;
use crate::kubeconfig;
use crate::pki;
use crate::process::{Process, ProcessSpec};
use crate::startup::{answer, process_working};
use crate::tools;

/// The Node's name (fixed: one node per machine).
pub const NODE_NAME: &str = "zmq-proxy-node";
/// Pod addresses. Not in the harness's host-local 10.252.0.0/15 (those are
/// routed to `lo`) nor in the Service range 10.0.0.0/24.
pub const POD_CIDR: &str = "10.254.0.0/24";
/// The bridge's own address: the pods' gateway, and the node's InternalIP
/// (the kubelet wants an address of a host interface).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
/// The bridge pods are attached to.
pub const BRIDGE: &str = "zpbr0";
/// The Service range of the harness's plane (see control_plane.rs).
const SERVICE_CIDR: &str = "10.0.0.0/24";
/// The cluster DNS Service address the kubelet writes into pods.
pub const CLUSTER_DNS: &str = "10.0.0.10";
/// The sandbox image (tests/images.sh `pause`).
pub const PAUSE_IMAGE: &str = "localhost/zmq-proxy/pause:3.10";
/// containerd's root and the kubelet's root directory live here.
pub const STATE_DIR: &str = "/var/lib/zmq-proxy-node";
/// containerd's state and socket.
pub const RUN_DIR: &str = "/run/zmq-proxy-node";
/// The machine-wide lock a running node holds.
pub const LOCK_FILE: &str = "/tmp/zmq-proxy-harness/real-node.lock";
/// How long [`RealNode::start`] waits for another node to stop.
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);
/// The iptables rule that keeps pod traffic on this host.
const FORWARD_GUARD: [&str; 7] = ["FORWARD", "-s", POD_CIDR, "!", "-o", BRIDGE, "-j"];

/// A running node: containerd, kubelet, kube-proxy, CoreDNS, and the lock.
pub struct RealNode {
    containerd: Process,
    kubelet: Process,
    kube_proxy: Process,
    coredns: Process,
    client: Client,
    dir: PathBuf,
    socket: PathBuf,
    startup: Duration,
    _lock: File,
}

/// The images of this checkout that tests/images.sh `build` saved, as
/// docker-archives: `<target>/images/*.tar` (`$ZMQ_PROXY_IMAGE_DIR`
/// overrides the directory).
pub fn workspace_images() -> Result<Vec<PathBuf>> {
    let dir = std::env::var_os("ZMQ_PROXY_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let bin = tools::workspace_bin_dir();
            bin.parent().unwrap_or(&bin).join("images")
        });
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no images in {} (run `bash tests/images.sh build`)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    if archives.is_empty() {
        bail!(
            "no image archives in {} (run `bash tests/images.sh build`)",
            dir.display()
        );
    }
    Ok(archives)
}

/// What pod `ns/pod`'s current container wrote (its last `tail` lines, or
/// all), read through the API server and the kubelet as `kubectl logs` is.
pub async fn container_log(
    client: &Client,
    ns: &str,
    pod: &str,
    tail: Option<i64>,
) -> Result<String> {
    let params = LogParams {
        tail_lines: tail,
        ..LogParams::default()
    };
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &params)
        .await?)
}

impl RealNode {
    /// [`RealNode::start`] with this checkout's images
    /// ([`workspace_images`]).
    pub async fn start_with_workspace_images(cp: &ControlPlane) -> Result<RealNode> {
        RealNode::start(cp, &workspace_images()?).await
    }

    /// Starts the node for `cp` with the sandbox image and `images`
    /// (docker-archives) imported, and waits until the Node is Ready and
    /// kube-proxy has programmed the Services. Waits first while another
    /// process runs a node.
    pub async fn start(cp: &ControlPlane, images: &[PathBuf]) -> Result<RealNode> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("a real node needs root (containers, network namespaces, iptables)");
        }
        let pki = cp
            .pki()
            .ok_or_else(|| anyhow!("a real node needs the local control plane (its CA)"))?;
        let containerd_bin = system_tool("containerd")?;
        let kubelet_bin = tools::kubelet()?;
        let kube_proxy_bin = tools::kube_proxy()?;
        let coredns_bin = tools::coredns()?;
        let pause = tools::pause_image()?;
        let lock = lock_machine().await?;
        let started = Instant::now();
        let dir = cp.dir().join("node");
        let certs = dir.join("pki");
        std::fs::create_dir_all(&certs)?;
        for d in [STATE_DIR, RUN_DIR] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {d}"))?;
        }

        let cluster = cp.cluster().clone();
        let (kubelet_cert, proxy_cert, dns_cert) = tokio::task::spawn_blocking({
            let pki = pki.clone();
            let certs = certs.clone();
            move || -> Result<_, pki::PkiError> {
                Ok((
                    pki::client_cert(
                        &pki,
                        &certs,
                        "kubelet",
                        &format!("system:node:{NODE_NAME}"),
                        "system:nodes",
                    )?,
                    pki::client_cert(
                        &pki,
                        &certs,
                        "kube-proxy",
                        "system:kube-proxy",
                        "system:node-proxier",
                    )?,
                    pki::client_cert(&pki, &certs, "coredns", "system:coredns", "")?,
                ))
            }
        })
        .await??;
        let kubelet_kc = dir.join("kubelet.kubeconfig");
        kubeconfig::write_cert(
            &kubelet_kc,
            &cluster,
            &format!("system:node:{NODE_NAME}"),
            &kubelet_cert.cert,
            &kubelet_cert.key,
        )?;
        let proxy_kc = dir.join("kube-proxy.kubeconfig");
        kubeconfig::write_cert(
            &proxy_kc,
            &cluster,
            "system:kube-proxy",
            &proxy_cert.cert,
            &proxy_cert.key,
        )?;

        let dns_kc = dir.join("coredns.kubeconfig");
        kubeconfig::write_cert(
            &dns_kc,
            &cluster,
            "system:coredns",
            &dns_cert.cert,
            &dns_cert.key,
        )?;

        network_up(&dir)?;

        let socket = Path::new(RUN_DIR).join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(&dir.join("cni"), &socket))?;
        let containerd = Process::spawn(
            &ProcessSpec::new("containerd", &containerd_bin, dir.join("containerd.log"))
                .args(["--config".to_string(), config.display().to_string()]),
        )?;
        let ctr = Ctr {
            socket: socket.clone(),
        };
        process_working(&containerd, &dir, "containerd answering", async || {
            ctr.run(&["version"])
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
        .await?;
        let t_import = Instant::now();
        for archive in std::iter::once(&pause).chain(images) {
            let archive = archive.display().to_string();
            ctr.run(&["images", "import", &archive])
                .with_context(|| format!("cannot import {archive}"))?;
        }
        tracing::info!("images imported in {:.1?}", t_import.elapsed());

        let kubelet_config = dir.join("kubelet.json");
        std::fs::write(
            &kubelet_config,
            kubelet_config_json(&pki.ca_cert, &socket).to_string(),
        )?;
        let kubelet = Process::spawn(
            &ProcessSpec::new("kubelet", &kubelet_bin, dir.join("kubelet.log")).args(vec![
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubelet_kc.display()),
                format!("--root-dir={STATE_DIR}/kubelet"),
                format!("--cert-dir={}", certs.join("kubelet-serving").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".to_string(),
            ]),
        )?;
        let client = cp.client()?;
        let nodes: Api<Node> = Api::all(client.clone());
        process_working(&kubelet, &dir, "the Node Ready", async || {
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| node_ready(&n));
            answer(ready, "Node not Ready")
        })
        .await?;

        let kube_proxy = Process::spawn(
            &ProcessSpec::new("kube-proxy", &kube_proxy_bin, dir.join("kube-proxy.log")).args(
                vec![
                    format!("--kubeconfig={}", proxy_kc.display()),
                    format!("--hostname-override={NODE_NAME}"),
                    "--proxy-mode=iptables".to_string(),
                    format!("--cluster-cidr={POD_CIDR}"),
                    format!("--bind-address={NODE_IP}"),
                    format!("--healthz-bind-address={NODE_IP}:10256"),
                    format!("--metrics-bind-address={NODE_IP}:10249"),
                    // NodePorts only on the node's own address, never on
                    // the machine's real interfaces.
                    format!("--nodeport-addresses={NODE_IP}/32"),
                    // Leave the machine's conntrack sysctls alone.
                    "--conntrack-max-per-core=0".to_string(),
                    "--conntrack-tcp-timeout-established=0".to_string(),
                    "--conntrack-tcp-timeout-close-wait=0".to_string(),
                    "--v=1".to_string(),
                ],
            ),
        )?;
        // kube-proxy's /healthz answers 200 once its first sync programmed
        // the rules (the `kubernetes` Service among them).
        let healthz = format!("{NODE_IP}:10256");
        process_working(&kube_proxy, &dir, "kube-proxy synced", async || {
            let synced = matches!(crate::http::get(&healthz, "/healthz").await, Ok((200, _)));
            answer(synced, "/healthz not 200")
        })
        .await?;

        apply_dns_objects(&client).await?;
        let corefile = dir.join("Corefile");
        std::fs::write(&corefile, corefile_text(&dns_kc))?;
        let coredns = Process::spawn(
            &ProcessSpec::new("coredns", &coredns_bin, dir.join("coredns.log"))
                .args(["-conf".to_string(), corefile.display().to_string()]),
        )?;
        // /ready answers 200 once the kubernetes plugin has synced.
        let ready = format!("{NODE_IP}:{DNS_READY_PORT}");
        process_working(&coredns, &dir, "CoreDNS ready", async || {
            let ok = matches!(crate::http::get(&ready, "/ready").await, Ok((200, _)));
            answer(ok, "/ready not 200")
        })
        .await?;

        let startup = started.elapsed();
        tracing::info!(node = NODE_NAME, "real node ready in {startup:.1?}");
        Ok(RealNode {
            containerd,
            kubelet,
            kube_proxy,
            coredns,
            client,
            dir,
            socket,
            startup,
            _lock: lock,
        })
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        NODE_NAME
    }

    /// From the lock taken to the node Ready and Services programmed.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// Directory of the node's configuration and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// For a failed test: the last lines of every pod's container in
    /// `namespaces`, then the tails of the node's own logs (kubelet,
    /// containerd, kube-proxy, CoreDNS), on stderr.
    pub async fn print_diagnostics(&self, namespaces: &[&str]) {
        for ns in namespaces {
            let pods = Api::<Pod>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            for pod in pods {
                let name = pod.metadata.name.unwrap_or_default();
                let log = container_log(&self.client, ns, &name, Some(60))
                    .await
                    .unwrap_or_else(|e| format!("(no log: {e:#})"));
                eprintln!("--- pod {ns}/{name} (last 60 lines):\n{log}");
            }
        }
        for log in [
            "kubelet.log",
            "containerd.log",
            "kube-proxy.log",
            "coredns.log",
        ] {
            eprintln!(
                "--- {log} ---\n{}",
                crate::startup::log_tail(&self.dir.join(log))
            );
        }
    }

    /// PIDs of containerd, the kubelet, kube-proxy and CoreDNS.
    pub fn pids(&self) -> Vec<i32> {
        vec![
            self.containerd.pid(),
            self.kubelet.pid(),
            self.kube_proxy.pid(),
            self.coredns.pid(),
        ]
    }

    /// Runs `ctr` (namespace `k8s.io`) against the node's containerd and
    /// returns its output: for tests that act on containers directly
    /// (killing one as a crash would).
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        Ctr {
            socket: self.socket.clone(),
        }
        .run(args)
    }

    /// Cordons the node and taints it `NoExecute` (controllers stop placing
    /// pods here, DaemonSets included), deletes its pods and waits until
    /// their containers are gone, then stops CoreDNS, kube-proxy, the
    /// kubelet and containerd (by PID) and removes kube-proxy's rules, the
    /// bridge and the routes it added.
    pub async fn stop(self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let fence = serde_json::json!({
            "spec": {
                "unschedulable": true,
                "taints": [{ "key": "zmq-proxy.io/node-stopping", "effect": "NoExecute" }],
            },
        });
        if let Err(e) = nodes
            .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&fence))
            .await
        {
            tracing::warn!("cannot cordon {NODE_NAME}: {e}");
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={NODE_NAME}"));
        let ctr = Ctr {
            socket: self.socket.clone(),
        };
        // The kubelet stops each deleted pod's containers and tears its
        // sandbox down (CNI DEL). Deleting again each round catches pods a
        // controller created before the taint took effect.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(list) = pods.list(&on_node).await {
                for pod in list {
                    let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
                        continue;
                    };
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(1))
                        .await;
                }
            }
            let idle = ctr.running_tasks().is_ok_and(|t| t.is_empty());
            if idle || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let grace = Duration::from_secs(10);
        self.coredns.terminate(grace).await;
        self.kube_proxy.terminate(grace).await;
        self.kubelet.terminate(grace).await;
        // Containers the kubelet did not stop in time: SIGKILL through the
        // runtime and delete the tasks, so their shims exit too.
        for task in ctr.tasks(|_| true).unwrap_or_default() {
            let _ = ctr.run(&["tasks", "kill", "-s", "SIGKILL", &task]);
            let _ = ctr.run(&["tasks", "delete", "--force", &task]);
        }
        self.containerd.terminate(grace).await;
        if let Ok(bin) = tools::kube_proxy() {
            let _ = Command::new(bin).arg("--cleanup").output();
        }
        network_down();
        tracing::info!(node = NODE_NAME, "real node stopped");
        Ok(())
    }
}

/// `ctr` against the node's containerd, namespace `k8s.io` (the CRI's).
struct Ctr {
    socket: PathBuf,
}

impl Ctr {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .context("cannot run ctr (Debian package containerd)")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// IDs of running tasks (containers and sandboxes).
    fn running_tasks(&self) -> Result<Vec<String>> {
        self.tasks(|status| status == "RUNNING")
    }

    /// IDs of tasks whose status (RUNNING, STOPPED, ...) passes `keep`.
    fn tasks(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        // Columns: TASK PID STATUS.
        Ok(self
            .run(&["tasks", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() >= 3 && keep(cols[2])).then(|| cols[0].to_string())
            })
            .collect())
    }
}

/// CoreDNS's readiness port on the node's address. The node's fixed ports
/// (this, 53, the kubelet's 10250, kube-proxy's 10249 and 10256) are on the bridge
/// address only we use; only a wildcard listener elsewhere on the machine
/// could take one, and none of the suites binds these ports.
const DNS_READY_PORT: u16 = 8181;
/// The objects' field manager.
const FIELD_MANAGER: &str = "zmq-proxy-real-node";

fn corefile_text(kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    ready {NODE_IP}:{DNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kc}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loadbalance
}}
"#,
        kc = kubeconfig.display()
    )
}

/// What CoreDNS needs in the cluster: read access for `system:coredns`,
/// and the `kube-dns` Service at [`CLUSTER_DNS`] whose EndpointSlice
/// points at the host. Server-side apply: the same objects every time.
async fn apply_dns_objects(client: &Client) -> Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": "zmq-proxy:coredns" },
        "rules": [
            { "apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
        ],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .patch("zmq-proxy:coredns", &pp, &Patch::Apply(&role))
        .await
        .context("cannot apply CoreDNS's ClusterRole")?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": "zmq-proxy:coredns" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "zmq-proxy:coredns" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns" }],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch("zmq-proxy:coredns", &pp, &Patch::Apply(&binding))
        .await
        .context("cannot apply CoreDNS's ClusterRoleBinding")?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "kube-dns", "namespace": "kube-system", "labels": { "k8s-app": "kube-dns" } },
        "spec": {
            "clusterIP": CLUSTER_DNS,
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP" },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
            ],
        },
    }))?;
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns", &pp, &Patch::Apply(&service))
        .await
        .context("cannot apply the kube-dns Service")?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-host",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": FIELD_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [NODE_IP.to_string()], "conditions": { "ready": true }, "nodeName": NODE_NAME }],
        "ports": [
            { "name": "dns", "port": 53, "protocol": "UDP" },
            { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
        ],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns-host", &pp, &Patch::Apply(&slice))
        .await
        .context("cannot apply the kube-dns EndpointSlice")?;
    Ok(())
}

/// True when the Node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A program of a Debian package, from the usual directories.
fn system_tool(name: &str) -> Result<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{name} not found (run `bash tests/install.sh`)"))
}

/// Takes the machine-wide node lock, waiting while another process holds it.
async fn lock_machine() -> Result<File> {
    let path = Path::new(LOCK_FILE);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {LOCK_FILE}"))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut told = false;
    loop {
        // SAFETY: flock on a descriptor we own; the kernel drops the lock
        // when the file is closed or the process dies.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if Instant::now() > deadline {
            bail!("another real node held {LOCK_FILE} for {LOCK_TIMEOUT:?} (`bash tests/control-plane.sh down` stops one started by hand)");
        }
        if !told {
            tracing::info!("waiting for the real node another process runs ({LOCK_FILE})");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge with the gateway address, the Service route, the forward
/// guard and the CNI configuration. Idempotent: a crashed node's leftovers
/// are taken over.
fn network_up(dir: &Path) -> Result<()> {
    if run("ip", &["link", "show", BRIDGE]).is_err() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    run(
        "ip",
        &["addr", "replace", &format!("{NODE_IP}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    run("ip", &["route", "replace", SERVICE_CIDR, "dev", BRIDGE])?;
    let mut guard: Vec<&str> = FORWARD_GUARD.to_vec();
    guard.push("DROP");
    let mut check = vec!["-C"];
    check.extend(&guard);
    if run("iptables", &check).is_err() {
        let mut insert = vec!["-I"];
        insert.extend(&guard);
        run("iptables", &insert)?;
    }
    // Pod -> Service -> pod on the same bridge is routed by the host after
    // kube-proxy's DNAT; the guard above keeps forwarding to the bridge.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("cannot enable IPv4 forwarding")?;
    // Bridged traffic must pass iptables for Service replies to be
    // translated back.
    let _ = std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1");
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni)?;
    std::fs::write(cni.join("10-zmq-proxy.conflist"), cni_config().to_string())?;
    Ok(())
}

/// Undoes [`network_up`] (best effort: the node is going away).
fn network_down() {
    let _ = run("ip", &["route", "del", SERVICE_CIDR, "dev", BRIDGE]);
    let mut delete = vec!["-D"];
    delete.extend(FORWARD_GUARD);
    delete.push("DROP");
    let _ = run("iptables", &delete);
    let _ = run("ip", &["link", "del", BRIDGE]);
}

/// The CNI network: a bridge without masquerading, host-local addresses.
fn cni_config() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "zmq-proxy-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            // A pod reaching itself through its Service comes back over
            // the bridge port it left by.
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_CIDR, "gateway": NODE_IP.to_string() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": format!("{STATE_DIR}/cni-ipam"),
            },
        }],
    })
}

fn containerd_config(cni_dir: &Path, socket: &Path) -> String {
    format!(
        r#"version = 2
root = "{STATE_DIR}/containerd"
state = "{RUN_DIR}/containerd"
# Snapshotters this machine cannot use; without them containerd logs less.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Network namespaces under our state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # The kubelet asks for negative OOM scores (-998 for sandboxes); lowering
  # a score needs CAP_SYS_RESOURCE, which CI sandboxes may not grant (runc
  # then fails with "can't get final child's PID from pipe"). Keep scores
  # at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        socket = socket.display(),
        cni = cni_dir.display(),
    )
}

fn kubelet_config_json(client_ca: &Path, socket: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "cgroupDriver": "cgroupfs",
        // This machine has cgroup v1; kubelets of 1.35+ refuse it otherwise.
        "failCgroupV1": false,
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        // The API server's client certificate (logs, exec) is signed by the
        // plane's CA; nobody else gets in.
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": false },
            "x509": { "clientCAFile": client_ca.display().to_string() },
        },
        "authorization": { "mode": "AlwaysAllow" },
        "clusterDNS": [CLUSTER_DNS],
        "clusterDomain": "cluster.local",
        // No host resolvers in pods: their DNS stays in the cluster.
        "resolvConf": "",
        // Imported images cannot be pulled again: never collect them, and
        // do not evict pods over a machine whose disk is merely busy.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "failSwapOn": false,
        "podCIDR": POD_CIDR,
        "serializeImagePulls": false,
        "maxPods": 110,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_range_stays_clear_of_the_harness_ranges() {
        for other in ["10.252.", "10.253.", "10.0.0."] {
            assert!(!POD_CIDR.starts_with(other));
        }
        assert!(NODE_IP.to_string().starts_with("10.254.0."));
    }

    #[test]
    fn kubelet_runs_on_cgroup_v1_with_the_runtime_socket() {
        let c = kubelet_config_json(Path::new("/ca.crt"), Path::new("/run/x.sock"));
        assert_eq!(c["failCgroupV1"], false);
        assert_eq!(c["cgroupDriver"], "cgroupfs");
        assert_eq!(c["containerRuntimeEndpoint"], "unix:///run/x.sock");
        assert_eq!(c["authentication"]["anonymous"]["enabled"], false);
    }

    #[test]
    fn bridge_does_not_masquerade() {
        let c = cni_config();
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        assert_eq!(c["plugins"][0]["bridge"], BRIDGE);
    }
}
