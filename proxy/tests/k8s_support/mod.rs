//! Support for the Kubernetes matchmaker tests: a namespace on the harness's
//! control plane with the Roles the operator grants, Pod objects for the
//! proxies to belong to (no kubelet runs them: the test starts the real
//! `zmq-proxy` binary itself, with the pod's downward-API environment), and
//! raw protocol-1.0 peers to send traffic through a proxy.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use harness::loopback::{self, IpLease};
use harness::process::{Process, ProcessSpec};
use harness::proxy::{port_of, ProxyChild};
use harness::wait::until;
use harness::ControlPlane;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use zmq_proxy::matchmaker::kubernetes::endpoint_slice;

/// Generous deadline for anything the control plane does (2 shared cores).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The headless Service name the proxies register under.
pub const SERVICE: &str = "zp-test";

/// A fresh namespace on the shared control plane.
pub struct Cluster {
    pub cp: &'static ControlPlane,
    pub ns: String,
    pub admin: Client,
}

impl Cluster {
    pub async fn new(prefix: &str) -> Result<Cluster> {
        let cp = ControlPlane::shared().await?;
        let ns = cp.namespace(prefix).await?;
        Ok(Cluster {
            cp,
            ns,
            admin: cp.client()?,
        })
    }

    /// ServiceAccount `sa` bound to a Role with exactly `rules`; returns its
    /// client and kubeconfig.
    pub async fn service_account(
        &self,
        sa: &str,
        rules: Vec<PolicyRule>,
    ) -> Result<(Client, PathBuf)> {
        let roles: Api<Role> = Api::namespaced(self.admin.clone(), &self.ns);
        roles
            .create(
                &PostParams::default(),
                &zmq_proxy::matchmaker::kubernetes::rbac::role(sa, Some(&self.ns), rules),
            )
            .await
            .context("create Role")?;
        let bindings: Api<RoleBinding> = Api::namespaced(self.admin.clone(), &self.ns);
        bindings
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: ObjectMeta {
                        name: Some(sa.into()),
                        ..Default::default()
                    },
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: sa.into(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: sa.into(),
                        namespace: Some(self.ns.clone()),
                        ..Default::default()
                    }]),
                },
            )
            .await
            .context("create RoleBinding")?;
        self.cp.service_account_client(&self.ns, sa).await
    }

    /// Creates a Pod object named `name` (never scheduled: nothing runs it
    /// but the test). Retries while the namespace's default ServiceAccount,
    /// which admission requires, is not created yet.
    pub async fn pod(&self, name: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.ns);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": SERVICE}},
            "spec": {
                // No scheduler binds it, so no node runs it: the test runs the
                // proxy process for it.
                "schedulerName": "zmq-proxy-test-unscheduled",
                "automountServiceAccountToken": false,
                "containers": [{"name": "proxy", "image": "ghcr.io/zmq-proxy/zmq-proxy:test"}]
            }
        }))?;
        until(&format!("Pod {name} created"), TIMEOUT, || async {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(p) => Ok(Some(p)),
                Err(e) => Err(anyhow!(e)),
            }
        })
        .await
    }

    /// Deletes a Pod at once (no kubelet to confirm a graceful deletion).
    pub async fn delete_pod(&self, name: &str) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.ns);
        pods.delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }
}

/// A pod's downward-API view of itself.
pub fn pod_env(ns: &str, pod: &Pod, ip: &str) -> Vec<(String, String)> {
    vec![
        (
            "POD_NAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("POD_NAMESPACE".into(), ns.into()),
        (
            "POD_UID".into(),
            pod.metadata.uid.clone().unwrap_or_default(),
        ),
        ("POD_IP".into(), ip.into()),
        ("ZMQ_PROXY_SERVICE_NAME".into(), SERVICE.into()),
    ]
}

/// The real `zmq-proxy` binary, run as a pod would run it (the operator's
/// environment), stopped with the test.
pub struct ProxyProcess {
    pub process: Process,
    pub ip: String,
    pub frontend: u16,
    pub backend: u16,
    pub publisher: Option<u16>,
    pub metrics: String,
    pub log: PathBuf,
    _ip: IpLease,
}

impl ProxyProcess {
    pub async fn start(
        cluster: &Cluster,
        pod: &Pod,
        kubeconfig: &std::path::Path,
    ) -> Result<ProxyProcess> {
        ProxyProcess::start_with_env(cluster, pod, kubeconfig, &[]).await
    }

    /// Like [`ProxyProcess::start`], with `extra` environment variables
    /// added last (they override the defaults above).
    pub async fn start_with_env(
        cluster: &Cluster,
        pod: &Pod,
        kubeconfig: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Result<ProxyProcess> {
        let lease = loopback::lease()?;
        let ip = lease.ip().to_string();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let log = cluster.cp.dir().join(format!("{}-{name}.log", cluster.ns));
        let mut spec = ProcessSpec::new(
            format!("zmq-proxy {name}"),
            env!("CARGO_BIN_EXE_zmq-proxy"),
            &log,
        );
        spec.env = pod_env(&cluster.ns, pod, &ip);
        spec.env.extend(
            [
                ("KUBECONFIG", kubeconfig.display().to_string()),
                ("ZMQ_PROXY_MATCHMAKER", "kubernetes".into()),
                ("ZMQ_PROXY_HOST", ip.clone()),
                ("ZMQ_PROXY_BIND_ADDRESS", ip.clone()),
                ("ZMQ_PROXY_FRONTEND_PORT", "0".into()),
                ("ZMQ_PROXY_BACKEND_PORT", "0".into()),
                ("ZMQ_PROXY_PUBLISHER_PORT", "0".into()),
                ("ZMQ_PROXY_METRICS_ADDRESS", format!("{ip}:0")),
                ("ZMQ_PROXY_GRACE_PERIOD", "10".into()),
                ("RUST_LOG", "info,zmq_proxy=debug".into()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        spec.env.retain(|(k, _)| !extra.iter().any(|(x, _)| x == k));
        spec.env
            .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        spec.clear_env = true;
        let child = ProxyChild::start(&spec, TIMEOUT)?;
        let port = |endpoint: &Option<String>| -> Result<u16> {
            endpoint
                .as_deref()
                .and_then(port_of)
                .ok_or_else(|| anyhow!("no port in {endpoint:?}"))
        };
        let l = &child.listening;
        Ok(ProxyProcess {
            ip,
            frontend: port(&l.frontend)?,
            backend: port(&l.backend)?,
            publisher: l
                .publisher
                .is_some()
                .then(|| port(&l.publisher))
                .transpose()?,
            metrics: l.metrics.clone(),
            log,
            process: child.process,
            _ip: lease,
        })
    }

    /// HTTP status of /readyz (None when not answering).
    pub fn readyz(&self) -> Option<u16> {
        http_status(&self.metrics, "/readyz")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and fails unless the proxy exits 0 within [`TIMEOUT`].
    pub async fn terminate_cleanly(&self) -> Result<()> {
        self.process.signal(libc::SIGTERM);
        let exit = self
            .process
            .wait_timeout(TIMEOUT)
            .await
            .ok_or_else(|| anyhow!("proxy did not exit after SIGTERM"))?;
        if !exit.success() {
            bail!("exit {exit}; log:\n{}", self.log_text());
        }
        Ok(())
    }

    pub fn frontend_endpoint(&self) -> String {
        format!("tcp://{}:{}", self.ip, self.frontend)
    }

    pub fn backend_endpoint(&self) -> String {
        format!("tcp://{}:{}", self.ip, self.backend)
    }
}

/// Status code of `GET path` on `addr` (HTTP/1.0, 2 s timeouts).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Labels of an object as a map (empty when unset).
pub fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Calls through one proxy with raw protocol-1.0 DEALERs, in a thread of its
/// own, until stopped: figures of what got through.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<TrafficFigures>>,
    pub replies: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a [`Traffic`] run saw.
#[derive(Debug, Clone, Copy)]
pub struct TrafficFigures {
    pub sent: u64,
    pub replies: u64,
    pub longest_gap: Duration,
}

impl Traffic {
    /// A server DEALER on the backend and a client DEALER on the frontend;
    /// the client calls every 20 ms, the server echoes. Returns once the
    /// first reply arrived (the proxy routes to the server).
    pub fn start(frontend: &str, backend: &str) -> Result<Traffic> {
        let ctx = zmq::Context::new();
        let server_id = format!("127.0.0.1/k8s-test/{}", uuid::Uuid::new_v4());
        let client_id = format!("127.0.0.1/{}", uuid::Uuid::new_v4());
        let server = ctx.socket(zmq::DEALER)?;
        server.set_identity(server_id.as_bytes())?;
        server.set_linger(0)?;
        server.connect(backend)?;
        let client = ctx.socket(zmq::DEALER)?;
        client.set_identity(client_id.as_bytes())?;
        client.set_linger(0)?;
        client.connect(frontend)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let replies = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            let replies = replies.clone();
            move || {
                let _ctx = ctx;
                let mut figures = TrafficFigures {
                    sent: 0,
                    replies: 0,
                    longest_gap: Duration::ZERO,
                };
                let mut last_reply: Option<Instant> = None;
                let mut first_tx = Some(first_tx);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Pacing, not waiting: a few hundred calls a second are
                    // plenty to see a stall, and leave the shared CPUs alone.
                    std::thread::sleep(Duration::from_millis(2));
                    let id = uuid::Uuid::new_v4().to_string();
                    let frames: Vec<&[u8]> = vec![
                        b"",
                        b"1.0",
                        b"1",
                        server_id.as_bytes(),
                        id.as_bytes(),
                        b"[{}, {}]",
                    ];
                    if client.send_multipart(frames, zmq::DONTWAIT).is_ok() {
                        figures.sent += 1;
                    }
                    // Serve whatever arrived: echo as a REPLY.
                    if server.poll(zmq::POLLIN, 20).unwrap_or(0) > 0 {
                        while let Ok(m) = server.recv_multipart(zmq::DONTWAIT) {
                            if m.len() >= 6 {
                                let reply: Vec<&[u8]> =
                                    vec![b"", b"1.0", b"5", &m[2], &m[4], b"[{}, null]"];
                                let _ = server.send_multipart(reply, zmq::DONTWAIT);
                            }
                        }
                    }
                    if client.poll(zmq::POLLIN, 20).unwrap_or(0) > 0 {
                        while let Ok(m) = client.recv_multipart(zmq::DONTWAIT) {
                            if m.len() >= 6 && m[3] == b"5" {
                                let now = Instant::now();
                                if let Some(prev) = last_reply {
                                    figures.longest_gap = figures.longest_gap.max(now - prev);
                                }
                                last_reply = Some(now);
                                figures.replies += 1;
                                replies.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if let Some(tx) = first_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                    }
                }
                figures
            }
        });
        let traffic = Traffic {
            stop,
            thread: Some(thread),
            replies,
        };
        first_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow!("no reply through the proxy within 20 s"))?;
        Ok(traffic)
    }

    /// Replies so far.
    pub fn count(&self) -> u64 {
        self.replies.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops and returns the figures.
    pub fn finish(mut self) -> TrafficFigures {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(TrafficFigures {
                sent: 0,
                replies: 0,
                longest_gap: Duration::MAX,
            })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The EndpointSlice API (`discovery.k8s.io/v1`), as JSON objects.
pub fn slices(client: &kube::Client, ns: &str) -> kube::Api<kube::api::DynamicObject> {
    let resource = kube::core::ApiResource {
        group: "discovery.k8s.io".into(),
        version: "v1".into(),
        api_version: endpoint_slice::API_VERSION.into(),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    };
    kube::Api::namespaced_with(client.clone(), ns, &resource)
}
