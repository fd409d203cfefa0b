//! A real Kubernetes control plane for tests: etcd + kube-apiserver +
//! kube-controller-manager on loopback, or an existing cluster.
//!
//! One control plane per test process ([`ControlPlane::shared`]), started on
//! first use. Under cargo-nextest (the test command) every test is its own
//! process and so gets its own plane; under `cargo test` the tests of one
//! binary share it. Set `ZMQ_PROXY_TEST_KUBECONFIG=/path/to/kubeconfig` to run
//! the same tests against an existing cluster instead.
//!
//! The API server authenticates with a static token file (an admin in
//! `system:masters`, the controller manager as `system:kube-controller-manager`),
//! authorizes with RBAC only, and signs ServiceAccount tokens so the
//! TokenRequest API works. The controller manager runs its default controller
//! set (garbage collector, deployment, replicaset, endpoint(slice),
//! serviceaccount + token, namespace, node lifecycle, ...) with per-controller
//! ServiceAccount credentials, as in a real cluster. There is no scheduler
//! and no kubelet: [`crate::NodeAgent`] plays both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

use crate::kubeconfig::{self, ClusterAccess};
use crate::net::free_port;
use crate::pki;
use crate::process::{remove_at_exit, Process, ProcessSpec};
use crate::tools;

/// Environment variable naming an existing cluster's kubeconfig.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "ZMQ_PROXY_TEST_KUBECONFIG";
/// Label on every namespace the harness creates.
pub const NAMESPACE_LABEL: &str = "zmq-proxy.io/test-harness";
/// The Service CIDR of the local plane (its first IP is the `kubernetes` Service).
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_IP: &str = "10.0.0.1";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Startup deadline per component (generous: tests share 2 cores with builds).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running control plane (local) or a handle on an existing cluster.
pub struct ControlPlane {
    local: Option<Local>,
    kubeconfig: PathBuf,
    config: kube::Config,
    cluster: ClusterAccess,
    dir: PathBuf,
    names: AtomicU64,
    startup: Duration,
}

/// The processes of a local plane.
struct Local {
    etcd: Process,
    apiserver: Mutex<Option<Process>>,
    apiserver_spec: ProcessSpec,
    controller_manager: Process,
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

/// Which thread (= which test, under `cargo test`) created each namespace,
/// so that node agents of parallel tests in one process bind only their own
/// test's pods (see [`crate::NodeAgent::start`]).
static NAMESPACE_OWNERS: Mutex<BTreeMap<String, std::thread::ThreadId>> =
    Mutex::new(BTreeMap::new());

/// The thread that created namespace `ns` through [`ControlPlane::namespace`].
pub fn namespace_owner(ns: &str) -> Option<std::thread::ThreadId> {
    NAMESPACE_OWNERS.lock().ok()?.get(ns).copied()
}

impl ControlPlane {
    /// The control plane of this test process, started on first use (or the
    /// cluster named by `ZMQ_PROXY_TEST_KUBECONFIG`).
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_try_init(|| async {
                crate::init_logging();
                match std::env::var_os(EXTERNAL_KUBECONFIG_ENV) {
                    Some(path) if !path.is_empty() => {
                        ControlPlane::external(Path::new(&path)).await
                    }
                    _ => ControlPlane::start_local().await,
                }
            })
            .await
    }

    /// Uses an existing cluster through `kubeconfig` (admin rights expected).
    pub async fn external(kubeconfig: &Path) -> Result<ControlPlane> {
        let started = Instant::now();
        let config = kubeconfig::load_config(kubeconfig).await?;
        let cluster = kubeconfig::cluster_of(kubeconfig)?;
        let dir = scratch_dir()?;
        let cp = ControlPlane {
            local: None,
            kubeconfig: kubeconfig.to_path_buf(),
            config,
            cluster,
            dir,
            names: AtomicU64::new(0),
            startup: Duration::ZERO,
        };
        cp.client()?
            .apiserver_version()
            .await
            .with_context(|| format!("cannot reach the cluster of {}", kubeconfig.display()))?;
        let cp = ControlPlane {
            startup: started.elapsed(),
            ..cp
        };
        tracing::info!(kubeconfig = %kubeconfig.display(), "using an existing cluster");
        Ok(cp)
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until
    /// they work. Everything is stopped when the process exits (see
    /// [`crate::process`]).
    pub async fn start_local() -> Result<ControlPlane> {
        let started = Instant::now();
        let apiserver_bin = tools::kube_apiserver()?;
        let cm_bin = tools::kube_controller_manager()?;
        let etcd_bin = tools::etcd()?;
        let dir = scratch_dir()?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let pki = tokio::task::spawn_blocking({
            let pki_dir = pki_dir.clone();
            move || pki::generate(&pki_dir, SERVICE_IP)
        })
        .await??;

        // etcd fsyncs every write; on tmpfs that costs nothing.
        let etcd_data = fast_data_dir(&dir)?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_spec = ProcessSpec::new("etcd", &etcd_bin, dir.join("etcd.log")).args(etcd_args(
            &etcd_data,
            etcd_client,
            etcd_peer,
        ));
        let etcd = Process::spawn(&etcd_spec)?;

        let admin_token = random_token()?;
        let cm_token = random_token()?;
        let token_file = dir.join("tokens.csv");
        std::fs::write(
            &token_file,
            format!(
                "{admin_token},admin,admin-uid,\"system:masters\"\n{cm_token},system:kube-controller-manager,kube-controller-manager-uid\n"
            ),
        )?;
        let port = free_port()?;
        let apiserver_spec = ProcessSpec::new(
            "kube-apiserver",
            &apiserver_bin,
            dir.join("kube-apiserver.log"),
        )
        .args(apiserver_args(&ApiserverFiles {
            etcd_port: etcd_client,
            port,
            pki: &pki,
            token_file: &token_file,
            cert_dir: &dir.join("apiserver-certs"),
        }));
        let apiserver = Process::spawn(&apiserver_spec)?;

        let cluster = ClusterAccess {
            server: format!("https://127.0.0.1:{port}"),
            certificate_authority: Some(pki.ca_cert.display().to_string()),
            ..Default::default()
        };
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        kubeconfig::write(&admin_kubeconfig, &cluster, "admin", &admin_token, None)?;
        let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
        kubeconfig::write(
            &cm_kubeconfig,
            &cluster,
            "system:kube-controller-manager",
            &cm_token,
            None,
        )?;
        let config = kubeconfig::load_config(&admin_kubeconfig).await?;

        let mut cp = ControlPlane {
            local: None,
            kubeconfig: admin_kubeconfig,
            config,
            cluster,
            dir: dir.clone(),
            names: AtomicU64::new(0),
            startup: Duration::ZERO,
        };
        // The controller manager retries until the API server answers, so it
        // starts now rather than after /readyz: that saves a second or two.
        let cm_spec = ProcessSpec::new(
            "kube-controller-manager",
            &cm_bin,
            dir.join("kube-controller-manager.log"),
        )
        .args(controller_manager_args(&cm_kubeconfig, &pki));
        let controller_manager = Process::spawn(&cm_spec)?;
        wait_ready(
            &cp.client()?,
            &[&etcd, &apiserver, &controller_manager],
            &dir,
        )
        .await?;
        let apiserver_ready = started.elapsed();
        cp.local = Some(Local {
            etcd,
            apiserver: Mutex::new(Some(apiserver)),
            apiserver_spec,
            controller_manager,
        });
        cp.wait_controllers().await?;
        cp.startup = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            "control plane ready in {:.1?} (API server ready after {:.1?})",
            cp.startup,
            apiserver_ready
        );
        Ok(cp)
    }

    /// The controller manager works once the ServiceAccount controller has
    /// created `default` in `default` (and the token controller its secret).
    async fn wait_controllers(&self) -> Result<()> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client()?, "default");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(local) = &self.local {
                if let Some(info) = local.controller_manager.exited() {
                    bail!(
                        "kube-controller-manager exited ({info}); log tail:\n{}",
                        log_tail(&self.dir.join("kube-controller-manager.log"))
                    );
                }
            }
            if let Ok(Some(sa)) = sas.get_opt("default").await {
                if !sa.secrets.unwrap_or_default().is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-controller-manager did not create the default ServiceAccount within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    log_tail(&self.dir.join("kube-controller-manager.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new admin client (created per call so it belongs to the caller's
    /// tokio runtime; each test has its own).
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).context("cannot build a kube client")
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// How to reach and trust the API server.
    pub fn cluster(&self) -> &ClusterAccess {
        &self.cluster
    }

    /// Scratch directory of this plane (logs, PKI, pod directories).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True for a plane this process started (false for an external cluster).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// How long the start took (cold or warm; for benchmarks).
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// PIDs of the plane's processes (etcd, API server, controller manager).
    pub fn pids(&self) -> Vec<i32> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let mut pids = vec![local.etcd.pid(), local.controller_manager.pid()];
        if let Ok(guard) = local.apiserver.lock() {
            pids.extend(guard.as_ref().map(Process::pid));
        }
        pids
    }

    /// A unique DNS-label name starting with `prefix`.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("-{}-{n}-{:04x}", std::process::id() % 100_000, random_u16());
        let mut prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        prefix.truncate(63 - suffix.len());
        format!("{}{suffix}", prefix.trim_end_matches('-'))
    }

    /// Creates a fresh namespace named after `prefix` (labelled
    /// `zmq-proxy.io/test-harness=true`) and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = self.unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client()?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("cannot create namespace {name}"))?;
        if let Ok(mut owners) = NAMESPACE_OWNERS.lock() {
            owners.insert(name.clone(), std::thread::current().id());
        }
        // Pods are rejected until the namespace's default ServiceAccount
        // exists (and, on 1.20, its token secret): wait, so tests need not.
        let sas: Api<ServiceAccount> = Api::namespaced(self.client()?, &name);
        let needs_secret = self.is_local();
        crate::wait::until(
            "the namespace's default ServiceAccount",
            STARTUP_TIMEOUT,
            || async {
                Ok(sas.get_opt("default").await?.filter(|sa| {
                    !needs_secret || sa.secrets.as_ref().is_some_and(|s| !s.is_empty())
                }))
            },
        )
        .await?;
        Ok(name)
    }

    /// A client and kubeconfig acting as ServiceAccount `ns/sa` (created if
    /// missing), with a token from the TokenRequest API (valid one hour).
    pub async fn service_account_client(&self, ns: &str, sa: &str) -> Result<(Client, PathBuf)> {
        let token = self.service_account_token(ns, sa, None).await?;
        let path = self.dir.join(format!("sa-{ns}-{sa}.kubeconfig"));
        kubeconfig::write(
            &path,
            &self.cluster,
            &format!("system:serviceaccount:{ns}:{sa}"),
            &token,
            Some(ns),
        )?;
        let config = kubeconfig::load_config(&path).await?;
        Ok((Client::try_from(config)?, path))
    }

    /// A token for ServiceAccount `ns/sa` (created if missing), optionally
    /// bound to an object (a pod) so it dies with it.
    pub async fn service_account_token(
        &self,
        ns: &str,
        sa: &str,
        bound: Option<k8s_openapi::api::authentication::v1::BoundObjectReference>,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client()?, ns);
        if api.get_opt(sa).await?.is_none() {
            let obj = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create ServiceAccount {ns}/{sa}"))
                }
            }
        }
        request_token(&api, sa, bound).await
    }

    /// Stops the API server (SIGTERM, then SIGKILL after 5 s: kube-apiserver 1.20 can take
    /// 15 s and more to drain its watches) for outage
    /// tests; etcd and the controller manager keep running.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let local = self
            .local
            .as_ref()
            .ok_or_else(|| anyhow!("stop_apiserver needs the local control plane"))?;
        let process = local
            .apiserver
            .lock()
            .map_err(|_| anyhow!("apiserver lock poisoned"))?
            .take();
        if let Some(p) = process {
            let info = p.terminate(Duration::from_secs(5)).await;
            tracing::info!("kube-apiserver stopped ({info})");
        }
        Ok(())
    }

    /// Starts the API server again (same port, certificates and data) and
    /// waits until it is ready.
    pub async fn start_apiserver(&self) -> Result<()> {
        let local = self
            .local
            .as_ref()
            .ok_or_else(|| anyhow!("start_apiserver needs the local control plane"))?;
        {
            let mut guard = local
                .apiserver
                .lock()
                .map_err(|_| anyhow!("apiserver lock poisoned"))?;
            if guard.as_ref().is_some_and(|p| p.exited().is_none()) {
                return Ok(());
            }
            *guard = Some(Process::spawn(&local.apiserver_spec)?);
        }
        let pid = self.pids();
        tracing::info!(?pid, "kube-apiserver restarted");
        wait_ready(&self.client()?, &[&local.etcd], &self.dir).await
    }
}

/// A one-hour token for ServiceAccount `sa` from the TokenRequest API,
/// optionally bound to an object (a pod) so it dies with it.
pub async fn request_token(
    api: &Api<ServiceAccount>,
    sa: &str,
    bound: Option<k8s_openapi::api::authentication::v1::BoundObjectReference>,
) -> Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: bound,
        },
        ..Default::default()
    };
    let answer = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {sa} failed"))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest for ServiceAccount {sa} returned no token"))
}

/// File arguments of the API server.
struct ApiserverFiles<'a> {
    etcd_port: u16,
    port: u16,
    pki: &'a pki::Pki,
    token_file: &'a Path,
    cert_dir: &'a Path,
}

fn etcd_args(data: &Path, client: u16, peer: u16) -> Vec<String> {
    vec![
        "--name=harness".into(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=harness=http://127.0.0.1:{peer}"),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(f: &ApiserverFiles<'_>) -> Vec<String> {
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", f.etcd_port),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", f.port),
        // 1.20 still opens an unauthenticated port 8080 by default.
        "--insecure-port=0".into(),
        format!("--cert-dir={}", f.cert_dir.display()),
        format!("--tls-cert-file={}", f.pki.server_cert.display()),
        format!("--tls-private-key-file={}", f.pki.server_key.display()),
        format!("--client-ca-file={}", f.pki.ca_cert.display()),
        format!("--token-auth-file={}", f.token_file.display()),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-issuer={ISSUER}"),
        format!("--api-audiences={ISSUER}"),
        format!(
            "--service-account-signing-key-file={}",
            f.pki.sa_key.display()
        ),
        format!("--service-account-key-file={}", f.pki.sa_pub.display()),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ]
}

fn controller_manager_args(kubeconfig: &Path, pki: &pki::Pki) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--use-service-account-credentials=true".into(),
        format!(
            "--service-account-private-key-file={}",
            pki.sa_key.display()
        ),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        "--controllers=*".into(),
        "--leader-elect=false".into(),
        // No serving needed; avoids fixed ports 10252/10257.
        "--port=0".into(),
        "--secure-port=0".into(),
        "--profiling=false".into(),
    ]
}

/// Polls /readyz until it answers `ok`, failing early if a process exits.
async fn wait_ready(client: &Client, processes: &[&Process], dir: &Path) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last;
    loop {
        for p in processes {
            if let Some(info) = p.exited() {
                bail!(
                    "{} exited during startup ({info}); log tail:\n{}",
                    p.name(),
                    log_tail(&dir.join(format!("{}.log", p.name())))
                );
            }
        }
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(req).await {
            Ok(text) if text.trim() == "ok" => return Ok(()),
            Ok(text) => last = text,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver not ready within {STARTUP_TIMEOUT:?} (last answer: {last}); log tail:\n{}",
                log_tail(&dir.join("kube-apiserver.log"))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A fresh directory /tmp/zmq-proxy-harness/<pid>-<n>, deleted at exit;
/// leftovers of dead processes are removed first.
fn scratch_dir() -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let root = std::env::temp_dir().join("zmq-proxy-harness");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    remove_stale(&root);
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_at_exit(dir.clone());
    Ok(dir)
}

/// etcd's data directory: in /dev/shm when it has room (etcd preallocates a
/// 64 MB WAL), else in the scratch dir.
fn fast_data_dir(scratch: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm/zmq-proxy-harness");
    if free_bytes(Path::new("/dev/shm")).is_some_and(|b| b > 1 << 30)
        && std::fs::create_dir_all(shm).is_ok()
    {
        remove_stale(shm);
        let dir = shm.join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        remove_at_exit(dir.clone());
        return Ok(dir);
    }
    Ok(scratch.join("etcd"))
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.to_str()?).ok()?;
    // SAFETY: statvfs fills the zeroed struct we own.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Removes `<pid>-<n>` entries of `root` whose process is gone (kept
/// while `ZMQ_PROXY_TEST_KEEP` is set: someone wants to read them).
fn remove_stale(root: &Path) {
    if std::env::var_os("ZMQ_PROXY_TEST_KEEP").is_some() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !crate::process::pid_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

fn random_token() -> std::io::Result<String> {
    Ok(random_bytes::<16>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn random_u16() -> u16 {
    random_bytes::<2>().map(u16::from_le_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_disables_the_insecure_port_and_uses_rbac() {
        let dir = Path::new("/x");
        let pki = pki::Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("s.crt"),
            server_key: dir.join("s.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        let args = apiserver_args(&ApiserverFiles {
            etcd_port: 1,
            port: 2,
            pki: &pki,
            token_file: Path::new("/x/t"),
            cert_dir: Path::new("/x/c"),
        });
        assert!(args.contains(&"--insecure-port=0".to_string()));
        assert!(args.contains(&"--authorization-mode=RBAC".to_string()));
        assert!(args.contains(&"--secure-port=2".to_string()));
        assert!(args
            .iter()
            .any(|a| a.starts_with("--service-account-signing-key-file=")));
    }
}
