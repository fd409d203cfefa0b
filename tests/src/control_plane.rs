//! A real Kubernetes control plane for tests: etcd + kube-apiserver +
//! kube-controller-manager + kube-scheduler on a host-local address of the
//! plane's own, or an existing cluster.
//!
//! One control plane per test process ([`ControlPlane::shared`]), started on
//! first use. Under cargo-nextest (the test command) every test is its own
//! process and so gets its own plane; under `cargo test` the tests of one
//! binary share it. Set `ZMQ_PROXY_TEST_KUBECONFIG=/path/to/kubeconfig` to run
//! the same tests against an existing cluster instead.
//!
//! Ports cannot race: each plane leases an address of its own from
//! 10.252.0.0/16 ([`crate::loopback`]) and listens there on the well-known
//! ports (etcd 2379/2380, API server 6443); a component that still lost its
//! port (a wildcard listener of some other program) is started again on
//! other ports ([`with_port_retry`]).
//!
//! The API server authenticates with a static token file (an admin in
//! `system:masters`, the controller manager and the scheduler as their
//! `system:` users) and with client certificates of its CA (a real node's
//! kubelet and kube-proxy, [`crate::RealNode`]), authorizes with the Node
//! authorizer and RBAC (with the NodeRestriction admission plugin, as in a
//! real cluster), and signs ServiceAccount tokens so the TokenRequest API
//! works. The controller manager runs its
//! default controller set (garbage collector, deployment, replicaset,
//! endpoint(slice), serviceaccount, namespace, node lifecycle, ...) with
//! per-controller ServiceAccount credentials, and kube-scheduler binds pods
//! to nodes, as in a real cluster. Pods run on [`crate::RealNode`] (kubelet,
//! containerd, kube-proxy).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
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
use crate::loopback::{self, IpLease, Pool};
use crate::pki;
use crate::process::{remove_at_exit, Process, ProcessSpec};
use crate::startup::{self, StartupError, STARTUP_TIMEOUT};
use crate::tools;

/// Environment variable naming an existing cluster's kubeconfig.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "ZMQ_PROXY_TEST_KUBECONFIG";
/// Label on every namespace the harness creates.
pub const NAMESPACE_LABEL: &str = "zmq-proxy.io/test-harness";
/// The Service CIDR of the local plane (its first IP is the `kubernetes` Service).
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_IP: &str = "10.0.0.1";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running control plane (local) or a handle on an existing cluster.
pub struct ControlPlane {
    local: Option<Local>,
    kubeconfig: PathBuf,
    config: kube::Config,
    cluster: ClusterAccess,
    dir: PathBuf,
    names: AtomicU64,
    startup: Duration,
    pki: Option<pki::Pki>,
}

/// The processes of a local plane.
struct Local {
    /// The plane's own host-local address, held while it runs.
    _address: IpLease,
    etcd: Process,
    apiserver: Mutex<Option<Process>>,
    apiserver_spec: ProcessSpec,
    controller_manager: Process,
    scheduler: Process,
}

/// Ports a local plane tries first on its own address: the well-known ones,
/// below the ephemeral range, so no client socket of another process sits
/// on them.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// etcd's client port.
    pub etcd_client: u16,
    /// etcd's peer port.
    pub etcd_peer: u16,
    /// The API server's secure port.
    pub apiserver: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            etcd_client: 2379,
            etcd_peer: 2380,
            apiserver: 6443,
        }
    }
}

/// Static bearer tokens of the plane's users.
struct Tokens {
    admin: String,
    controller_manager: String,
    scheduler: String,
}

impl Tokens {
    fn generate() -> std::io::Result<Tokens> {
        Ok(Tokens {
            admin: random_token()?,
            controller_manager: random_token()?,
            scheduler: random_token()?,
        })
    }

    /// The API server's `--token-auth-file`: token,user,uid[,"groups"].
    fn file(&self) -> String {
        format!(
            "{},admin,admin-uid,\"system:masters\"\n{},system:kube-controller-manager,kube-controller-manager-uid\n{},system:kube-scheduler,kube-scheduler-uid\n",
            self.admin, self.controller_manager, self.scheduler
        )
    }
}

/// Why a component did not start.
#[derive(Debug)]
pub enum StartError {
    /// It exited because another process holds one of its ports.
    PortTaken(String),
    /// Anything else (the message carries its log tail).
    Other(anyhow::Error),
}

/// The line listeners log when their port is taken (Go's net package).
const PORT_TAKEN: &str = "address already in use";

/// How many port sets [`with_port_retry`] tries before it gives up.
const PORT_ATTEMPTS: usize = 5;

/// Runs `attempt` with the `preferred` ports, then, while it fails with
/// [`StartError::PortTaken`], with ports free on `ip` right now. A port
/// found free can still be taken before the component binds it; the retry
/// covers that too.
pub async fn with_port_retry<const N: usize, T>(
    what: &str,
    ip: Ipv4Addr,
    preferred: [u16; N],
    mut attempt: impl AsyncFnMut([u16; N]) -> Result<T, StartError>,
) -> Result<(T, [u16; N])> {
    let mut ports = preferred;
    for n in 1..=PORT_ATTEMPTS {
        match attempt(ports).await {
            Ok(value) => return Ok((value, ports)),
            Err(StartError::Other(e)) => return Err(e),
            Err(StartError::PortTaken(log)) => {
                tracing::warn!(
                    "{what} lost one of its ports {ports:?} on {ip} (attempt {n} of {PORT_ATTEMPTS}); retrying on others: {}",
                    log.lines().rev().find(|l| l.contains(PORT_TAKEN)).unwrap_or_default()
                );
                let mut next = [0; N];
                for p in &mut next {
                    *p = free_port_on(ip)?;
                }
                ports = next;
            }
        }
    }
    bail!("{what} could not get a port on {ip} in {PORT_ATTEMPTS} attempts")
}

/// Waits until `ready` says the process works; an exit whose log says the
/// port was taken is [`StartError::PortTaken`], so [`with_port_retry`]
/// tries other ports.
async fn await_start(
    process: &Process,
    dir: &Path,
    mut ready: impl AsyncFnMut() -> bool,
) -> Result<(), StartError> {
    let what = format!("{} ready", process.name());
    match startup::process_working(process, dir, &what, async || {
        startup::answer(ready().await, "not ready")
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(StartupError::Exited { log, .. }) if log.contains(PORT_TAKEN) => {
            Err(StartError::PortTaken(log))
        }
        Err(e) => Err(StartError::Other(e.into())),
    }
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

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
            pki: None,
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

    /// Starts etcd, kube-apiserver, kube-controller-manager and
    /// kube-scheduler on a host-local address of this plane's own and waits
    /// until they work. Everything is stopped when the process exits (see
    /// [`crate::process`]).
    pub async fn start_local() -> Result<ControlPlane> {
        Self::start_local_with(Ports::default()).await
    }

    /// [`ControlPlane::start_local`] with other preferred ports (tests of
    /// the port retry).
    pub async fn start_local_with(ports: Ports) -> Result<ControlPlane> {
        let started = Instant::now();
        let apiserver_bin = tools::kube_apiserver()?;
        let cm_bin = tools::kube_controller_manager()?;
        let scheduler_bin = tools::kube_scheduler()?;
        let etcd_bin = tools::etcd()?;
        let dir = scratch_dir()?;
        // An address of its own: no other test process listens there, so
        // the well-known ports are free unless something holds them on
        // every address (a wildcard listener); then `with_port_retry`
        // moves on.
        let address = loopback::lease_in(Pool::ControlPlanes)?;
        let ip = address.ip();
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let pki = tokio::task::spawn_blocking({
            let pki_dir = pki_dir.clone();
            move || pki::generate(&pki_dir, &ip.to_string(), SERVICE_IP)
        })
        .await??;

        // etcd fsyncs every write; on tmpfs that costs nothing.
        let etcd_data = fast_data_dir(&dir)?;
        let (etcd, [etcd_port, _]) = with_port_retry(
            "etcd",
            ip,
            [ports.etcd_client, ports.etcd_peer],
            async |[client, peer]| {
                let spec = ProcessSpec::new("etcd", &etcd_bin, dir.join("etcd.log"))
                    .args(etcd_args(&etcd_data, ip, client, peer));
                let etcd = Process::spawn(&spec).map_err(|e| StartError::Other(e.into()))?;
                let addr = format!("{ip}:{client}");
                await_start(&etcd, &dir, async || {
                    matches!(crate::http::get(&addr, "/health").await, Ok((200, body)) if body.contains("\"health\":\"true\""))
                })
                .await?;
                Ok(etcd)
            },
        )
        .await?;

        let tokens = Tokens::generate()?;
        let token_file = dir.join("tokens.csv");
        std::fs::write(&token_file, tokens.file())?;
        let ((apiserver, apiserver_spec, cluster, config), _) =
            with_port_retry("kube-apiserver", ip, [ports.apiserver], async |[port]| {
                let spec = ProcessSpec::new(
                    "kube-apiserver",
                    &apiserver_bin,
                    dir.join("kube-apiserver.log"),
                )
                .args(apiserver_args(&ApiserverFiles {
                    etcd: format!("{ip}:{etcd_port}"),
                    ip,
                    port,
                    pki: &pki,
                    token_file: &token_file,
                    cert_dir: &dir.join("apiserver-certs"),
                }));
                let apiserver = Process::spawn(&spec).map_err(|e| StartError::Other(e.into()))?;
                let cluster = ClusterAccess {
                    server: format!("https://{ip}:{port}"),
                    certificate_authority: Some(pki.ca_cert.display().to_string()),
                    ..Default::default()
                };
                let admin = dir.join("admin.kubeconfig");
                kubeconfig::write(&admin, &cluster, "admin", &tokens.admin, None)
                    .map_err(|e| StartError::Other(e.into()))?;
                let config = kubeconfig::load_config(&admin)
                    .await
                    .map_err(|e| StartError::Other(e.into()))?;
                let client =
                    Client::try_from(config.clone()).map_err(|e| StartError::Other(e.into()))?;
                await_start(&apiserver, &dir, async || {
                    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                        return false;
                    };
                    matches!(client.request_text(req).await, Ok(text) if text.trim() == "ok")
                })
                .await?;
                Ok((apiserver, spec, cluster, config))
            })
            .await?;
        let apiserver_ready = started.elapsed();

        let mut kubeconfigs = BTreeMap::new();
        for (user, token) in [
            ("system:kube-controller-manager", &tokens.controller_manager),
            ("system:kube-scheduler", &tokens.scheduler),
        ] {
            let path = dir.join(format!("{}.kubeconfig", user.trim_start_matches("system:")));
            kubeconfig::write(&path, &cluster, user, token, None)?;
            kubeconfigs.insert(user, path);
        }
        // Neither serves anything the tests need (secure port 0), so they
        // take no port that could clash.
        let controller_manager = Process::spawn(
            &ProcessSpec::new(
                "kube-controller-manager",
                &cm_bin,
                dir.join("kube-controller-manager.log"),
            )
            .args(controller_manager_args(
                &kubeconfigs["system:kube-controller-manager"],
                &pki,
            )),
        )?;
        let scheduler = Process::spawn(
            &ProcessSpec::new(
                "kube-scheduler",
                &scheduler_bin,
                dir.join("kube-scheduler.log"),
            )
            .args(scheduler_args(&kubeconfigs["system:kube-scheduler"])),
        )?;

        let mut cp = ControlPlane {
            local: None,
            kubeconfig: dir.join("admin.kubeconfig"),
            config,
            cluster,
            dir: dir.clone(),
            names: AtomicU64::new(0),
            startup: Duration::ZERO,
            pki: Some(pki.clone()),
        };
        cp.local = Some(Local {
            _address: address,
            etcd,
            apiserver: Mutex::new(Some(apiserver)),
            apiserver_spec,
            controller_manager,
            scheduler,
        });
        cp.wait_controllers().await?;
        cp.startup = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            server = %cp.cluster.server,
            "control plane ready in {:.1?} (API server ready after {:.1?})",
            cp.startup,
            apiserver_ready
        );
        Ok(cp)
    }

    /// The controller manager works once the ServiceAccount controller has
    /// created `default` in `default`; the scheduler once it holds no
    /// error. Either exiting fails the start with its log.
    async fn wait_controllers(&self) -> Result<()> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client()?, "default");
        let watched: Vec<&Process> = self
            .local
            .iter()
            .flat_map(|l| [&l.controller_manager, &l.scheduler])
            .collect();
        startup::until_working(
            &watched,
            &self.dir,
            &self.dir.join("kube-controller-manager.log"),
            "the default ServiceAccount (kube-controller-manager)",
            async || match sas.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not created yet".into()),
                Err(e) => Err(e.to_string()),
            },
        )
        .await?;
        Ok(())
    }

    /// A new admin client (created per call so it belongs to the caller's
    /// tokio runtime; each test has its own).
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).context("cannot build a kube client")
    }

    /// Admin access as a kube config (for clients of another runtime).
    pub fn config(&self) -> &kube::Config {
        &self.config
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

    /// The plane's certificates and keys (a local plane only): a real node
    /// gets its client certificates from this CA.
    pub fn pki(&self) -> Option<&pki::Pki> {
        self.pki.as_ref()
    }

    /// True for a plane this process started (false for an external cluster).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// How long the start took (cold or warm; for benchmarks).
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// PIDs of the plane's processes (etcd, API server, controller
    /// manager, scheduler).
    pub fn pids(&self) -> Vec<i32> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let mut pids = vec![
            local.etcd.pid(),
            local.controller_manager.pid(),
            local.scheduler.pid(),
        ];
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
        // Pods are rejected until the namespace's default ServiceAccount
        // exists: wait, so tests need not.
        let sas: Api<ServiceAccount> = Api::namespaced(self.client()?, &name);
        crate::wait::until(
            "the namespace's default ServiceAccount",
            STARTUP_TIMEOUT,
            || async { Ok(sas.get_opt("default").await?) },
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

    /// Stops the API server (SIGTERM, then SIGKILL after 5 s: it can take
    /// longer to drain its watches) for outage tests; etcd, the controller
    /// manager and the scheduler keep running.
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
    /// etcd's client address (ip:port).
    etcd: String,
    ip: Ipv4Addr,
    port: u16,
    pki: &'a pki::Pki,
    token_file: &'a Path,
    cert_dir: &'a Path,
}

fn etcd_args(data: &Path, ip: Ipv4Addr, client: u16, peer: u16) -> Vec<String> {
    vec![
        "--name=harness".into(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls=http://{ip}:{client}"),
        format!("--advertise-client-urls=http://{ip}:{client}"),
        format!("--listen-peer-urls=http://{ip}:{peer}"),
        format!("--initial-advertise-peer-urls=http://{ip}:{peer}"),
        format!("--initial-cluster=harness=http://{ip}:{peer}"),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(f: &ApiserverFiles<'_>) -> Vec<String> {
    vec![
        format!("--etcd-servers=http://{}", f.etcd),
        format!("--bind-address={}", f.ip),
        format!("--advertise-address={}", f.ip),
        format!("--secure-port={}", f.port),
        format!("--cert-dir={}", f.cert_dir.display()),
        format!("--tls-cert-file={}", f.pki.server_cert.display()),
        format!("--tls-private-key-file={}", f.pki.server_key.display()),
        format!("--client-ca-file={}", f.pki.ca_cert.display()),
        format!("--token-auth-file={}", f.token_file.display()),
        // Node: kubelets reach only their own node's objects, as in a real
        // cluster (RealNode's kubelet is `system:node:<name>`).
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        format!(
            "--kubelet-client-certificate={}",
            f.pki.kubelet_client_cert.display()
        ),
        format!(
            "--kubelet-client-key={}",
            f.pki.kubelet_client_key.display()
        ),
        "--kubelet-preferred-address-types=InternalIP".into(),
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
        // No serving needed; avoids the fixed port 10257.
        "--secure-port=0".into(),
        "--profiling=false".into(),
    ]
}

fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".into(),
        // No serving needed; avoids the fixed port 10259.
        "--secure-port=0".into(),
        "--profiling=false".into(),
    ]
}

/// A port free on `ip` right now.
fn free_port_on(ip: Ipv4Addr) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until the API server answers /readyz with `ok`, failing early if
/// etcd (`processes`) exits.
async fn wait_ready(client: &Client, processes: &[&Process], dir: &Path) -> Result<()> {
    startup::until_working(
        processes,
        dir,
        &dir.join("kube-apiserver.log"),
        "kube-apiserver ready",
        async || {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            match client.request_text(req).await {
                Ok(text) if text.trim() == "ok" => Ok(()),
                Ok(text) => Err(text),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    Ok(())
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
    fn apiserver_listens_on_the_planes_address_and_uses_rbac() {
        let dir = Path::new("/x");
        let pki = pki::Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("s.crt"),
            server_key: dir.join("s.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            kubelet_client_cert: dir.join("k.crt"),
            kubelet_client_key: dir.join("k.key"),
        };
        let args = apiserver_args(&ApiserverFiles {
            etcd: "10.252.0.3:1".into(),
            ip: Ipv4Addr::new(10, 252, 0, 3),
            port: 2,
            pki: &pki,
            token_file: Path::new("/x/t"),
            cert_dir: Path::new("/x/c"),
        });
        assert!(args.contains(&"--bind-address=10.252.0.3".to_string()));
        assert!(args.contains(&"--etcd-servers=http://10.252.0.3:1".to_string()));
        assert!(args.contains(&"--authorization-mode=Node,RBAC".to_string()));
        assert!(args.contains(&"--secure-port=2".to_string()));
        assert!(args
            .iter()
            .any(|a| a.starts_with("--service-account-signing-key-file=")));
    }

    #[tokio::test]
    async fn a_start_that_lost_its_port_is_retried_on_others() {
        let ip = Ipv4Addr::LOCALHOST;
        let mut tried = Vec::new();
        let (value, ports) = with_port_retry("x", ip, [1, 2], async |ports| {
            tried.push(ports);
            if tried.len() < 3 {
                Err(StartError::PortTaken(format!(
                    "listen {ports:?}: bind: {PORT_TAKEN}"
                )))
            } else {
                Ok("started")
            }
        })
        .await
        .unwrap();
        assert_eq!(value, "started");
        assert_eq!(tried.len(), 3);
        assert_eq!(tried[0], [1, 2]);
        assert_eq!(ports, tried[2]);
        assert!(ports.iter().all(|p| *p != 0 && *p != 1 && *p != 2));
    }

    #[tokio::test]
    async fn other_start_errors_are_not_retried_and_retries_end() {
        let ip = Ipv4Addr::LOCALHOST;
        let mut calls = 0;
        let err = with_port_retry("x", ip, [1], async |_| {
            calls += 1;
            Err::<(), _>(StartError::Other(anyhow!("boom")))
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(err.to_string().contains("boom"));

        let mut calls = 0;
        let err = with_port_retry("x", ip, [1], async |_| {
            calls += 1;
            Err::<(), _>(StartError::PortTaken(PORT_TAKEN.into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls, PORT_ATTEMPTS);
        assert!(err.to_string().contains("could not get a port"));
    }
}
