//! One pod on the agent's node: its worker task runs the containers as
//! processes, probes them, restarts them with backoff, reports status, and on
//! deletion SIGTERMs them, waits the grace period, SIGKILLs, and deletes the
//! pod object with grace 0 — the kubelet's job, in miniature.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::BoundObjectReference;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodStatus, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::env;
use super::expand::expand;
use super::mounts::{self, Mount};
use super::probe::{self, Outcome};
use super::sources::Sources;
use super::status;
use super::volumes::{self, VolumeContext, Volumes};
use super::AgentContext;
use crate::kubeconfig;
use crate::loopback::IpLease;
use crate::process::{Process, ProcessSpec};

/// What the watcher tells a pod worker.
#[derive(Debug)]
pub enum PodEvent {
    /// The pod object changed (deletionTimestamp is what matters).
    Updated(Box<Pod>),
    /// The pod object is gone.
    Deleted,
}

/// Tick of the worker's local loop (process exits, due probes, restarts).
/// The API side is watch-driven; this only paces local work.
const TICK: Duration = Duration::from_millis(100);
/// First restart delay after a crash; doubles up to [`MAX_BACKOFF`]. Shorter
/// than the kubelet's 10 s / 5 min so crash tests finish quickly.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A container that ran this long before crashing restarts without backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// Readiness and startup probes that have not passed yet are retried this
/// often instead of every periodSeconds, so pods become Ready promptly.
const UNREADY_PROBE_INTERVAL: Duration = Duration::from_millis(500);

fn now() -> Time {
    Time(Timestamp::now())
}

/// The directory of pod `ns/name` under the agent's directory.
pub fn pod_dir(agent_dir: &Path, ns: &str, name: &str) -> PathBuf {
    agent_dir.join("pods").join(ns).join(name)
}

#[derive(Debug)]
struct ProbeState {
    probe: Probe,
    timing: probe::Timing,
    next: Instant,
    successes: u32,
    failures: u32,
    passed: bool,
}

impl ProbeState {
    fn new(probe: &Option<Probe>, started: Instant) -> Option<ProbeState> {
        let probe = probe.clone()?;
        let timing = probe::timing(&probe);
        Some(ProbeState {
            probe,
            timing,
            next: started + timing.initial_delay,
            successes: 0,
            failures: 0,
            passed: false,
        })
    }

    /// Records an outcome; returns true when the passed/failed verdict flips.
    fn record(&mut self, ok: bool, fast_until_passed: bool) -> bool {
        let before = self.passed;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.timing.success_threshold {
                self.passed = true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.timing.failure_threshold {
                self.passed = false;
            }
        }
        let interval = if fast_until_passed && !self.passed {
            UNREADY_PROBE_INTERVAL.min(self.timing.period)
        } else {
            self.timing.period
        };
        self.next = Instant::now() + interval;
        before != self.passed
    }
}

struct ContainerRun {
    spec: Container,
    process: Option<Arc<Process>>,
    status: ContainerStatus,
    runs: u32,
    started_at: Option<Instant>,
    next_start: Option<Instant>,
    backoff: Duration,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    startup: Option<ProbeState>,
    warned: Vec<String>,
}

impl ContainerRun {
    fn new(spec: Container) -> Self {
        let status = ContainerStatus {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(waiting("ContainerCreating", None)),
            ..Default::default()
        };
        ContainerRun {
            spec,
            process: None,
            status,
            runs: 0,
            started_at: None,
            next_start: Some(Instant::now()),
            backoff: FIRST_BACKOFF,
            readiness: None,
            liveness: None,
            startup: None,
            warned: Vec::new(),
        }
    }
}

/// The status of a pod status's Ready condition, if it has one.
fn ready_of(status: Option<&PodStatus>) -> Option<&str> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

/// The worker of one pod.
pub struct PodWorker {
    ctx: Arc<AgentContext>,
    pod: Pod,
    ns: String,
    name: String,
    dir: PathBuf,
    ip: IpLease,
    start_time: Time,
    containers: Vec<ContainerRun>,
    volumes: Option<Volumes>,
    token: Option<String>,
    kubeconfig: Option<PathBuf>,
    last_status: Option<PodStatus>,
    status_dirty: bool,
    deleting: bool,
    /// The grace-0 delete failed (API outage); retry at this time.
    retry_delete: Option<Instant>,
}

impl PodWorker {
    /// Prepares the worker of `pod` (already bound to this node).
    pub fn new(ctx: Arc<AgentContext>, pod: Pod, ip: IpLease) -> std::io::Result<Self> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let dir = pod_dir(&ctx.dir, &ns, &name);
        std::fs::create_dir_all(&dir)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers: Vec<ContainerRun> =
            spec.containers.into_iter().map(ContainerRun::new).collect();
        let warnings = unsupported_features(&pod);
        for w in &warnings {
            tracing::warn!(pod = %format!("{ns}/{name}"), "node agent: {w}");
        }
        if let Some(first) = containers.first_mut() {
            first.warned.extend(warnings);
        }
        Ok(PodWorker {
            ctx,
            ns,
            name,
            dir,
            ip,
            start_time: now(),
            containers,
            volumes: None,
            token: None,
            kubeconfig: None,
            last_status: None,
            status_dirty: true,
            deleting: false,
            retry_delete: None,
            pod,
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn pod_ip(&self) -> Ipv4Addr {
        self.ip.ip()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Runs until the pod is deleted or the agent stops.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<PodEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tracing::info!(pod = %self.key(), ip = %self.pod_ip(), "starting pod");
        self.setup_service_account().await;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(PodEvent::Updated(pod)) => {
                        let deleting = pod.metadata.deletion_timestamp.is_some();
                        // The node lifecycle controller marks pods not ready
                        // when this node's heartbeat went stale (an API-server
                        // outage); like a kubelet, re-assert our own view.
                        if ready_of(pod.status.as_ref()) != ready_of(self.last_status.as_ref()) {
                            self.status_dirty = true;
                        }
                        self.pod = *pod;
                        if deleting && !self.deleting {
                            self.deleting = true;
                            let grace = self.grace();
                            tracing::info!(pod = %self.key(), "pod deleted; stopping containers (grace {grace:?})");
                            self.stop_containers(grace).await;
                            self.delete_pod().await;
                        }
                    }
                    Some(PodEvent::Deleted) | None => {
                        // Gone without a graceful deletion (force delete).
                        self.stop_containers(self.grace()).await;
                        break;
                    }
                },
                _ = shutdown.changed() => {
                    tracing::info!(pod = %self.key(), "node agent stopping; stopping containers");
                    self.stop_containers(self.grace()).await;
                    break;
                }
                _ = ticker.tick() => {
                    if !self.deleting {
                        self.step().await;
                    } else if self.retry_delete.is_some_and(|t| Instant::now() >= t) {
                        self.delete_pod().await;
                    }
                }
            }
        }
        tracing::info!(pod = %self.key(), "pod finished");
    }

    async fn setup_service_account(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.automount_service_account_token == Some(false) {
            return;
        }
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let bound = BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            uid: self.pod.metadata.uid.clone(),
        };
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.ctx.client.clone(), &self.ns);
        match crate::control_plane::request_token(&api, &sa, Some(bound)).await {
            Ok(token) => {
                let sa_dir = self.dir.join("serviceaccount");
                let kc = self.dir.join("kubeconfig");
                let written = std::fs::create_dir_all(&sa_dir)
                    .and_then(|_| std::fs::write(sa_dir.join("token"), &token))
                    .and_then(|_| std::fs::write(sa_dir.join("namespace"), &self.ns));
                if let Err(e) = written {
                    tracing::warn!(pod = %self.key(), "cannot write the ServiceAccount token: {e}");
                }
                if let Some(ca) = &self.ctx.cluster.certificate_authority {
                    let _ = std::fs::copy(ca, sa_dir.join("ca.crt"));
                }
                let user = format!("system:serviceaccount:{}:{sa}", self.ns);
                match kubeconfig::write(&kc, &self.ctx.cluster, &user, &token, Some(&self.ns)) {
                    Ok(()) => self.kubeconfig = Some(kc),
                    Err(e) => {
                        tracing::warn!(pod = %self.key(), "cannot write the pod kubeconfig: {e}")
                    }
                }
                self.token = Some(token);
            }
            Err(e) => tracing::warn!(pod = %self.key(), "no ServiceAccount token for {sa}: {e:#}"),
        }
    }

    /// One pass over the containers: exits, restarts, probes, status.
    async fn step(&mut self) {
        let policy = self.restart_policy();
        for i in 0..self.containers.len() {
            self.check_exit(i, &policy);
            let due = self.containers[i].process.is_none()
                && self.containers[i]
                    .next_start
                    .is_some_and(|t| Instant::now() >= t);
            if due {
                self.start_container(i).await;
            }
            if self.containers[i].process.is_some() {
                self.probe_container(i).await;
            }
        }
        self.report_status().await;
    }

    fn check_exit(&mut self, i: usize, policy: &str) {
        let c = &mut self.containers[i];
        let Some(info) = c.process.as_ref().and_then(|p| p.exited()) else {
            return;
        };
        c.process = None;
        let code = info.container_exit_code();
        let ran = c.started_at.map(|t| t.elapsed()).unwrap_or_default();
        let started_at = match c.status.state.as_ref().and_then(|s| s.running.as_ref()) {
            Some(r) => r.started_at.clone(),
            None => None,
        };
        let terminated = ContainerStateTerminated {
            exit_code: code,
            signal: info.signal,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.to_string()),
            started_at,
            finished_at: Some(now()),
            ..Default::default()
        };
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, "container exited ({info})");
        c.status.ready = false;
        c.status.started = Some(false);
        c.readiness = None;
        c.liveness = None;
        c.startup = None;
        if status::will_restart(policy, code) {
            if ran >= BACKOFF_RESET {
                c.backoff = FIRST_BACKOFF;
            }
            c.next_start = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            c.status.last_state = Some(ContainerState {
                terminated: Some(terminated),
                ..Default::default()
            });
            c.status.state = Some(waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off restarting failed container {}",
                    c.spec.name
                )),
            ));
        } else {
            c.next_start = None;
            c.status.state = Some(ContainerState {
                terminated: Some(terminated),
                ..Default::default()
            });
        }
        self.status_dirty = true;
    }

    async fn start_container(&mut self, i: usize) {
        match self.prepare(i).await {
            Ok(spec) => match Process::spawn(&spec) {
                Ok(p) => {
                    let p = Arc::new(p);
                    self.ctx.register(&p);
                    let started = Instant::now();
                    let c = &mut self.containers[i];
                    tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, pid = p.pid(), "container started: {} {:?}", spec.program.display(), spec.args);
                    if c.runs > 0 {
                        c.status.restart_count += 1;
                    }
                    c.runs += 1;
                    c.process = Some(p);
                    c.started_at = Some(started);
                    c.next_start = None;
                    c.status.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now()),
                        }),
                        ..Default::default()
                    });
                    c.status.container_id = Some(format!(
                        "harness://{}",
                        c.process.as_ref().map(|p| p.pid()).unwrap_or(0)
                    ));
                    c.readiness = ProbeState::new(&c.spec.readiness_probe, started);
                    c.liveness = ProbeState::new(&c.spec.liveness_probe, started);
                    c.startup = ProbeState::new(&c.spec.startup_probe, started);
                    c.status.started = Some(c.startup.is_none());
                    c.status.ready = c.startup.is_none() && c.readiness.is_none();
                }
                Err(e) => self.container_error(i, "RunContainerError", e.to_string(), true),
            },
            Err(StartError::Image(msg)) => self.container_error(i, "ErrImagePull", msg, false),
            Err(StartError::Config(msg)) => {
                self.container_error(i, "CreateContainerConfigError", msg, true)
            }
        }
        self.status_dirty = true;
    }

    fn container_error(&mut self, i: usize, reason: &str, msg: String, retry: bool) {
        let key = self.key();
        let c = &mut self.containers[i];
        if !c.warned.contains(&msg) {
            tracing::warn!(pod = %key, container = %c.spec.name, "{reason}: {msg}");
            c.warned.push(msg.clone());
        }
        c.status.state = Some(waiting(reason, Some(msg)));
        c.next_start = retry.then(|| Instant::now() + Duration::from_secs(2));
    }

    /// Env, command, volumes and binary of container `i`.
    async fn prepare(&mut self, i: usize) -> Result<ProcessSpec, StartError> {
        let spec = self.containers[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let repo = image_repository(&image);
        let binary = self.ctx.images.get(repo).cloned().ok_or_else(|| {
            StartError::Image(format!(
                "node agent: no local binary mapped for image repository {repo:?} (image {image:?}); mapped: {:?}",
                self.ctx.images.keys().collect::<Vec<_>>()
            ))
        })?;
        let mut sources = Sources::new(self.ctx.client.clone(), &self.ns);
        let pod_ip = self.pod_ip().to_string();
        let host_ip = self.ctx.host_ip.clone();
        if self.volumes.is_none() {
            let vctx = VolumeContext {
                token: self.token.as_deref(),
                pod_ip: &pod_ip,
                host_ip: &host_ip,
            };
            let vols = volumes::materialize(&self.pod, &self.dir, &mut sources, &vctx)
                .await
                .map_err(|e| StartError::Config(e.to_string()))?;
            for w in &vols.warnings {
                tracing::warn!(pod = %self.key(), "node agent: {w}");
            }
            self.volumes = Some(vols);
        }
        let resolved = env::resolve(&self.pod, &spec, &pod_ip, &host_ip, &mut sources)
            .await
            .map_err(|e| StartError::Config(e.to_string()))?;
        let mut warnings = resolved.warnings.clone();
        let mounts: Vec<Mount> = match &self.volumes {
            Some(v) => volumes::container_mounts(&spec, v, &mut warnings),
            None => Vec::new(),
        };
        for w in warnings {
            if !self.containers[i].warned.contains(&w) {
                tracing::warn!(pod = %self.key(), container = %spec.name, "node agent: {w}");
                self.containers[i].warned.push(w);
            }
        }

        let mut vars: Vec<(String, String)> = vec![("HOSTNAME".into(), self.name.clone())];
        if let Some(kc) = &self.kubeconfig {
            vars.push(("KUBECONFIG".into(), kc.display().to_string()));
        }
        for (n, m) in mounts.iter().enumerate() {
            vars.push((
                format!("HARNESS_MOUNT_{n}"),
                format!("{}={}", m.mount_path, m.host),
            ));
        }
        for (k, v) in &resolved.vars {
            vars.retain(|(name, _)| name != k);
            vars.push((k.clone(), mounts::rewrite(v, &mounts)));
        }
        let lookup = |n: &str| resolved.get(n);
        let command: Vec<String> = spec
            .command
            .iter()
            .flatten()
            .map(|s| expand(s, lookup))
            .collect();
        let args: Vec<String> = spec
            .args
            .iter()
            .flatten()
            .map(|s| expand(s, lookup))
            .collect();
        let (program, mut argv) = program_and_args(&binary, &command, args);
        argv = argv.iter().map(|a| mounts::rewrite(a, &mounts)).collect();

        Ok(ProcessSpec {
            name: format!("{}/{}/{}", self.ns, self.name, spec.name),
            program,
            args: argv,
            env: vars,
            clear_env: true,
            cwd: Some(self.dir.clone()),
            log: self.dir.join(format!("{}.log", spec.name)),
            death_signal: libc::SIGKILL,
        })
    }

    async fn probe_container(&mut self, i: usize) {
        let ip = self.pod_ip();
        let key = self.key();
        let mut kill = None;
        {
            let c = &mut self.containers[i];
            let now = Instant::now();
            let started = c.startup.as_ref().is_none_or(|s| s.passed);
            if let Some(s) = c.startup.as_mut().filter(|s| !s.passed && now >= s.next) {
                let out = probe::run(&s.probe, &c.spec, ip).await;
                note_unsupported(&key, &c.spec.name, &out, &mut c.warned);
                if s.record(out.passed(), true) {
                    c.status.started = Some(true);
                    self.status_dirty = true;
                } else if !out.passed() && s.failures >= s.timing.failure_threshold {
                    kill = Some(format!("startup probe failed: {out:?}"));
                }
            }
            if started {
                if c.status.started != Some(true) {
                    c.status.started = Some(true);
                    self.status_dirty = true;
                }
                if let Some(r) = c.readiness.as_mut().filter(|r| now >= r.next) {
                    let out = probe::run(&r.probe, &c.spec, ip).await;
                    note_unsupported(&key, &c.spec.name, &out, &mut c.warned);
                    if let Outcome::Failure(why) = &out {
                        tracing::debug!(pod = %key, container = %c.spec.name, "readiness probe failed: {why}");
                    }
                    r.record(out.passed(), true);
                }
                let ready = c.readiness.as_ref().is_none_or(|r| r.passed);
                if c.status.ready != ready {
                    tracing::info!(pod = %key, container = %c.spec.name, ready, "readiness changed");
                    c.status.ready = ready;
                    self.status_dirty = true;
                }
                if let Some(l) = c.liveness.as_mut().filter(|l| now >= l.next) {
                    let out = probe::run(&l.probe, &c.spec, ip).await;
                    note_unsupported(&key, &c.spec.name, &out, &mut c.warned);
                    l.record(out.passed(), false);
                    if !out.passed() && l.failures >= l.timing.failure_threshold {
                        kill = Some(format!("liveness probe failed: {out:?}"));
                    }
                }
            }
        }
        if let Some(why) = kill {
            let grace = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            tracing::warn!(pod = %key, container = %self.containers[i].spec.name, "{why}; restarting the container");
            if let Some(p) = self.containers[i].process.clone() {
                p.terminate(Duration::from_secs(grace.max(0) as u64)).await;
            }
        }
    }

    async fn report_status(&mut self) {
        if !self.status_dirty {
            return;
        }
        let statuses: Vec<ContainerStatus> =
            self.containers.iter().map(|c| c.status.clone()).collect();
        let status = status::pod_status(
            statuses,
            &self.restart_policy(),
            &self.pod_ip().to_string(),
            &self.ctx.host_ip,
            &self.start_time,
            self.last_status.as_ref(),
            &now(),
        );
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                self.status_dirty = false;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => self.status_dirty = false,
            // A status the API server refuses is a bug of the agent: say so.
            Err(kube::Error::Api(e)) if e.code == 422 => {
                tracing::warn!(pod = %self.key(), "status refused: {}", e.message)
            }
            // Retried on the next tick (e.g. during an API server outage).
            Err(e) => tracing::debug!(pod = %self.key(), "status update failed: {e}"),
        }
    }

    /// SIGTERM every container, wait up to `grace`, SIGKILL the rest.
    async fn stop_containers(&mut self, grace: Duration) {
        let running: Vec<Arc<Process>> = self
            .containers
            .iter()
            .filter_map(|c| c.process.clone())
            .collect();
        for p in &running {
            p.signal(libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for p in &running {
            if tokio::time::timeout_at(deadline, p.wait()).await.is_err() {
                tracing::warn!(pod = %self.key(), pid = p.pid(), "container still running after the {grace:?} grace period; SIGKILL");
                p.signal(libc::SIGKILL);
                p.wait().await;
            }
        }
        for c in &mut self.containers {
            if let Some(p) = c.process.take() {
                if let Some(info) = p.exited() {
                    tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, "container stopped ({info})");
                }
            }
            c.next_start = None;
        }
    }

    /// Lets the pod go: delete with grace 0 (only this incarnation, by UID).
    async fn delete_pod(&mut self) {
        self.retry_delete = None;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %self.key(), "cannot delete the pod (retrying): {e}");
                self.retry_delete = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// Why a container could not start.
enum StartError {
    /// No binary for the image (not retried).
    Image(String),
    /// A referenced object is missing or unreadable (retried).
    Config(String),
}

fn note_unsupported(pod: &str, container: &str, out: &Outcome, warned: &mut Vec<String>) {
    if let Outcome::Unsupported(what) = out {
        let msg = format!("{what} are not supported by the node agent; treated as passing");
        if !warned.contains(&msg) {
            tracing::warn!(pod, container, "{msg}");
            warned.push(msg);
        }
    }
}

/// The repository part of an image reference (without tag or digest).
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' starts the tag (a ':' before it is a registry port).
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// The program to run and its arguments. The mapped binary stands in for the
/// image's entrypoint; a `command` whose first word names the binary (or any
/// path with its file name) is replaced by it, as is any command[0] that
/// does not exist on this host; an absolute command[0] that exists (a shell)
/// runs as is.
pub fn program_and_args(
    binary: &Path,
    command: &[String],
    args: Vec<String>,
) -> (PathBuf, Vec<String>) {
    let Some((first, rest)) = command.split_first() else {
        return (binary.to_path_buf(), args);
    };
    let same_name = Path::new(first).file_name() == binary.file_name();
    let program = if !same_name && first.starts_with('/') && Path::new(first).exists() {
        PathBuf::from(first)
    } else {
        binary.to_path_buf()
    };
    let mut argv: Vec<String> = rest.to_vec();
    argv.extend(args);
    (program, argv)
}

/// Pod features the agent ignores, to be logged.
fn unsupported_features(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else { return out };
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        out.push("initContainers are not supported; skipped".into());
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        out.push("ephemeralContainers are not supported; skipped".into());
    }
    if spec.readiness_gates.as_ref().is_some_and(|g| !g.is_empty()) {
        out.push("readinessGates are ignored".into());
    }
    if spec.host_network == Some(true) {
        out.push("hostNetwork is ignored (processes always share the host network)".into());
    }
    for c in &spec.containers {
        if c.lifecycle.is_some() {
            out.push(format!(
                "container {}: lifecycle hooks are not supported",
                c.name
            ));
        }
        if c.working_dir.is_some() {
            out.push(format!(
                "container {}: workingDir is ignored (the pod directory is used)",
                c.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repositories() {
        assert_eq!(
            image_repository("ghcr.io/zmq-proxy/zmq-proxy:0.1.0"),
            "ghcr.io/zmq-proxy/zmq-proxy"
        );
        assert_eq!(image_repository("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(image_repository("localhost:5000/x:tag"), "localhost:5000/x");
        assert_eq!(image_repository("x@sha256:abc"), "x");
        assert_eq!(image_repository("busybox"), "busybox");
    }

    #[test]
    fn command_maps_to_the_binary() {
        let bin = Path::new("/w/target/debug/zmq-proxy");
        let (p, a) = program_and_args(bin, &[], vec!["-f".into(), "1".into()]);
        assert_eq!(
            (p.as_path(), a),
            (bin, vec!["-f".to_string(), "1".to_string()])
        );
        let (p, a) = program_and_args(
            bin,
            &["/usr/local/bin/zmq-proxy".into(), "--x".into()],
            vec!["y".into()],
        );
        assert_eq!(
            (p.as_path(), a),
            (bin, vec!["--x".to_string(), "y".to_string()])
        );
        let (p, _) = program_and_args(bin, &["/bin/sh".into(), "-c".into()], vec![]);
        assert_eq!(p, PathBuf::from("/bin/sh"));
        let (p, _) = program_and_args(bin, &["/nonexistent/entry".into()], vec![]);
        assert_eq!(p.as_path(), bin);
    }
}
