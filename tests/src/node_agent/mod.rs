//! The node agent: a kubelet stand-in that runs pods as local processes.
//!
//! It registers a Ready Node (with capacity, renewing its Lease so the node
//! lifecycle controller keeps it Ready); kube-scheduler binds pods to it as
//! to any node, and it runs every pod bound to it in a [`pod::PodWorker`]:
//! each container becomes a process of the binary its image repository maps
//! to. The pod loop is driven by a kube-runtime watcher, not by polling.
//!
//! What a container process sees:
//! - its own pod IP, 10.253.x.y ([`crate::loopback`]), in `status.podIP` and in env
//!   through the downward API; the host IP is 127.0.0.1;
//! - the pod's env ([`env`]), `$(VAR)`-expanded command and args, `HOSTNAME`;
//! - `KUBECONFIG` = a kubeconfig acting as the pod's ServiceAccount (token
//!   from the TokenRequest API, bound to the pod), unless the pod disables
//!   token automounting;
//! - volumes written to `<pod dir>/volumes/<name>`, with mount paths in
//!   arguments and env values rewritten to them ([`mounts`]);
//! - the pod directory as working directory, stdout+stderr in
//!   `<pod dir>/<container>.log` ([`NodeAgent::pod_log`]).
//!
//! Unsupported pod features are logged as warnings (initContainers, exec
//! probes, lifecycle hooks, most volume types, ...).
//!
//! Under cargo-nextest every test has its own process, plane and agent, so
//! every pod of a test lands on its own agent. Under `cargo test` the
//! tests of one binary share the plane and run one at a time
//! (tests/run.sh), so there is one agent at a time too.

pub mod env;
pub mod expand;
pub mod fieldref;
pub mod mounts;
pub mod pod;
pub mod probe;
pub mod sources;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::control_plane::ControlPlane;
use crate::kubeconfig::ClusterAccess;
use crate::process::Process;
use pod::{PodEvent, PodWorker};

/// Field manager of the agent's server-side applies.
const MANAGER: &str = "zmq-proxy-node-agent";
/// Label on the agent's Node.
pub const NODE_LABEL: &str = "zmq-proxy.io/node-agent";
/// Lease renewal period (the node lifecycle controller's grace is 40 s).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How long `Drop` waits for SIGTERMed pod processes before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// What every pod worker shares.
pub struct AgentContext {
    /// Admin client (the kubelet's rights and more).
    pub client: Client,
    /// How pods' kubeconfigs reach the API server.
    pub cluster: ClusterAccess,
    /// Node name.
    pub node: String,
    /// The node's IP (hostIP of every pod).
    pub host_ip: String,
    /// Image repository -> local binary.
    pub images: HashMap<String, PathBuf>,
    /// The agent's directory (pod directories below `pods/`).
    pub dir: PathBuf,
    processes: Mutex<Vec<Weak<Process>>>,
}

impl AgentContext {
    /// Remembers a container process so `Drop` can stop it.
    pub fn register(&self, p: &Arc<Process>) {
        if let Ok(mut list) = self.processes.lock() {
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(p));
        }
    }

    fn live_processes(&self) -> Vec<Arc<Process>> {
        self.processes
            .lock()
            .map(|l| l.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

/// A running node agent; dropping it (or [`NodeAgent::stop`]) stops every
/// pod process.
pub struct NodeAgent {
    ctx: Arc<AgentContext>,
    /// For deleting the Node when dropped (a client of its own, see Drop).
    config: kube::Config,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl NodeAgent {
    /// Starts an agent; `images` maps image repositories (the part before
    /// ':') to local binaries.
    pub async fn start(cp: &ControlPlane, images: HashMap<String, PathBuf>) -> Result<NodeAgent> {
        Self::start_with(
            cp.config().clone(),
            cp.cluster().clone(),
            cp.dir(),
            images,
            !cp.is_local(),
        )
        .await
    }

    /// The general form: any cluster (`config`: admin access). `taint` marks
    /// the Node NoSchedule so a real cluster's scheduler leaves it alone.
    pub async fn start_with(
        config: kube::Config,
        cluster: ClusterAccess,
        base_dir: &Path,
        images: HashMap<String, PathBuf>,
        taint: bool,
    ) -> Result<NodeAgent> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = Client::try_from(config.clone()).context("cannot build a kube client")?;
        let node = format!("harness-node-{}-{seq}", std::process::id());
        let dir = base_dir.join(format!("agent-{node}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for (repo, bin) in &images {
            if !bin.exists() {
                tracing::warn!(
                    "node agent: image {repo} maps to {}, which does not exist (built?)",
                    bin.display()
                );
            }
        }
        let ctx = Arc::new(AgentContext {
            client: client.clone(),
            cluster,
            node: node.clone(),
            host_ip: "127.0.0.1".into(),
            images,
            dir,
            processes: Mutex::new(Vec::new()),
        });
        register_node(&client, &node, taint).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(heartbeat(client.clone(), node.clone(), shutdown_rx.clone())),
            tokio::spawn(dispatcher(ctx.clone(), shutdown_rx)),
        ];
        tracing::info!(%node, "node agent started");
        Ok(NodeAgent {
            ctx,
            config,
            shutdown,
            tasks,
            stopped: false,
        })
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.ctx.node
    }

    /// The directory of pod `ns/name` (logs, volumes, kubeconfig).
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        pod::pod_dir(&self.ctx.dir, ns, name)
    }

    /// Everything the pod's containers wrote to stdout/stderr, each
    /// container's log under a header (empty if the pod never ran here).
    pub fn pod_log(&self, ns: &str, name: &str) -> String {
        let dir = self.pod_dir(ns, name);
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        let mut out = String::new();
        for log in logs {
            let container = log
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push_str(&format!("==> {ns}/{name} container {container} <==\n"));
            out.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
        }
        out
    }

    /// Stops every pod process (SIGTERM, the pod's grace period, SIGKILL)
    /// and deletes the Node.
    pub async fn stop(mut self) -> Result<()> {
        self.stopped = true;
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        match nodes.delete(&self.ctx.node, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).context("cannot delete the agent's Node"),
        }
        Ok(())
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let live = self.ctx.live_processes();
        for p in &live {
            p.signal(libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + DROP_GRACE;
        for p in &live {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if p.wait_blocking(left).is_none() {
                p.signal(libc::SIGKILL);
                p.wait_blocking(Duration::from_secs(5));
            }
        }
        delete_node_blocking(self.config.clone(), self.ctx.node.clone());
    }
}

/// Deletes the Node from a thread and runtime of its own: Drop cannot
/// await, and the test's runtime (often current-thread) is blocked in this
/// very call. A Node left behind would look Ready for the node-monitor
/// grace period, and the scheduler would keep placing the next test's pods
/// on it. Best effort, bounded by a timeout: the plane may be gone already.
fn delete_node_blocking(config: kube::Config, node: String) {
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let nodes: Api<Node> = Api::all(Client::try_from(config).ok()?);
            tokio::time::timeout(
                Duration::from_secs(5),
                nodes.delete(&node, &Default::default()),
            )
            .await
            .ok()?
            .ok()
        })
    });
    let _ = worker.join();
}

async fn register_node(client: &Client, node: &str, taint: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut spec = serde_json::json!({});
    if taint {
        spec["taints"] =
            serde_json::json!([{ "key": NODE_LABEL, "value": "true", "effect": "NoSchedule" }]);
    }
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                NODE_LABEL: "true",
            },
        },
        "spec": spec,
    });
    nodes
        .patch(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("cannot register Node {node}"))?;
    patch_node_status(&nodes, node).await
}

fn node_status() -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let capacity = serde_json::json!({ "cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi" });
    serde_json::json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "zmq-proxy test node agent is ready",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            { "type": "InternalIP", "address": "127.0.0.1" },
            { "type": "Hostname", "address": "localhost" },
        ],
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "bootID": "", "containerRuntimeVersion": "harness://processes",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": format!("v{}-harness", crate::tools::K8S_VERSION),
            "machineID": "", "operatingSystem": "linux", "osImage": "zmq-proxy test node agent", "systemUUID": "",
        },
    })
}

async fn patch_node_status(nodes: &Api<Node>, node: &str) -> Result<()> {
    let patch = serde_json::json!({ "status": node_status() });
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot set the status of Node {node}"))?;
    Ok(())
}

/// Retry delays of the agent's watches: 200 ms doubling to 5 s. kube's
/// default grows to 30 s during an API-server outage, and pods created just
/// after one then waited up to 30 s to be bound and started (a scheduler and
/// kubelet are back within a second or two).
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> WatchBackoff {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(current)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Renews the node Lease (and refreshes the Ready condition now and then).
async fn heartbeat(client: Client, node: String, mut shutdown: watch::Receiver<bool>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut ticks = 0u32;
    let mut failing = false;
    loop {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": node },
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 40,
                "renewTime": MicroTime(Timestamp::now()),
            },
        });
        let renewed = leases
            .patch(
                &node,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await;
        if let Err(e) = &renewed {
            tracing::debug!(%node, "lease renewal failed: {e}");
        }
        // Back after failures (an API-server outage): the node lifecycle
        // controller may have set Ready Unknown; say Ready at once, as a
        // kubelet does, rather than at the next periodic refresh.
        let recovered = failing && renewed.is_ok();
        failing = renewed.is_err();
        ticks += 1;
        if ticks.is_multiple_of(6) || recovered {
            if let Err(e) = patch_node_status(&nodes, &node).await {
                tracing::debug!(%node, "node status refresh failed: {e:#}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEW) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The kubelet part: one worker per pod bound to this node.
async fn dispatcher(ctx: Arc<AgentContext>, shutdown: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut stream = watcher::watcher(pods, cfg)
        .backoff(WatchBackoff::new())
        .boxed();
    let mut workers: HashMap<String, (String, mpsc::UnboundedSender<PodEvent>, JoinHandle<()>)> =
        HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut shutdown_rx = shutdown.clone();
    loop {
        let event = tokio::select! {
            ev = stream.try_next() => ev,
            _ = shutdown_rx.changed() => break,
        };
        workers.retain(|_, (_, _, handle)| !handle.is_finished());
        match event {
            Ok(Some(Event::Init)) => seen.clear(),
            Ok(Some(Event::InitApply(p))) => {
                seen.insert(key(&p));
                on_pod(&ctx, &mut workers, p, &shutdown);
            }
            Ok(Some(Event::InitDone)) => {
                // Pods deleted while the watch was down.
                for (k, (_, tx, _)) in &workers {
                    if !seen.contains(k) {
                        let _ = tx.send(PodEvent::Deleted);
                    }
                }
            }
            Ok(Some(Event::Apply(p))) => on_pod(&ctx, &mut workers, p, &shutdown),
            Ok(Some(Event::Delete(p))) => {
                if let Some((uid, tx, _)) = workers.get(&key(&p)) {
                    if p.metadata.uid.as_deref() == Some(uid.as_str()) {
                        let _ = tx.send(PodEvent::Deleted);
                    }
                }
            }
            Ok(None) => break,
            Err(e) => tracing::debug!("node agent pod watch: {e}"),
        }
    }
    // Shutdown: every worker stops its containers; wait for them.
    for (_, (_, _, handle)) in workers {
        let _ = handle.await;
    }
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

type Workers = HashMap<String, (String, mpsc::UnboundedSender<PodEvent>, JoinHandle<()>)>;

fn on_pod(
    ctx: &Arc<AgentContext>,
    workers: &mut Workers,
    p: Pod,
    shutdown: &watch::Receiver<bool>,
) {
    let k = key(&p);
    let uid = p.metadata.uid.clone().unwrap_or_default();
    if let Some((worker_uid, tx, _)) = workers.get(&k) {
        if *worker_uid == uid {
            let _ = tx.send(PodEvent::Updated(Box::new(p)));
            return;
        }
        // Same name, new pod (the old worker is finishing).
        let _ = tx.send(PodEvent::Deleted);
    }
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return;
    }
    if p.metadata.deletion_timestamp.is_some() {
        // Deleted before we ever ran it (or by a previous agent): let it go.
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let name = p.name_any();
        tokio::spawn(async move {
            let _ = api
                .delete(&name, &kube::api::DeleteParams::default().grace_period(0))
                .await;
        });
        return;
    }
    let lease = match crate::loopback::lease() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(pod = %k, "no pod IP: {e}");
            return;
        }
    };
    let worker = match PodWorker::new(ctx.clone(), p, lease) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(pod = %k, "cannot prepare the pod directory: {e}");
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(worker.run(rx, shutdown.clone()));
    workers.insert(k, (uid, tx, handle));
}

/// Parses `repo=path` image mappings (for the binary and scripts).
pub fn parse_image_map<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut map = BTreeMap::new();
    for item in items {
        let (repo, path) = item
            .split_once('=')
            .ok_or_else(|| format!("image mapping {item:?} is not repo=path"))?;
        map.insert(repo.to_string(), PathBuf::from(path));
    }
    Ok(map.into_iter().collect())
}
