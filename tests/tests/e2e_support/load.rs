//! The traffic of the scenarios, as users' services would send it: RPC
//! servers (two topics, several servers each, plus notification listeners)
//! and clients built on `zmq_proxy::rpc`, each with its own Kubernetes
//! matchmaker (so they find the proxies through the EndpointSlices and the
//! servers through their Leases) acting as a ServiceAccount that holds only
//! the documented matchmaker Role; workers sending a steady mix of calls,
//! casts, fanouts and notifies, acks on with short ack timeouts.
//!
//! Bookkeeping: every message carries a unique op number; the handlers count
//! runs per op (call, cast) and per (op, server) (fanout, notify), so a
//! [`Run`] can tell what was delivered, lost or run twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::ControlPlane;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use zmq_proxy::matchmaker::kubernetes::{rbac, KubernetesConfig, KubernetesMatchmaker};
use zmq_proxy::matchmaker::{Matchmaker, Target};
use zmq_proxy::protocol::MessageType;
use zmq_proxy::rpc::{
    ClientConfig, Incoming, RemoteError, Request, RpcClient, RpcServer, ServerConfig,
};

use super::counting;
use super::report::{KindFigures, Report};

/// The RPC topics served.
pub const TOPICS: [&str; 2] = ["compute", "scheduler"];
/// Notifications go to `{NOTIFY_TOPIC}.{NOTIFY_PRIORITY}`.
pub const NOTIFY_TOPIC: &str = "notifications";
/// Priority of the notifications.
pub const NOTIFY_PRIORITY: &str = "info";

/// Kinds of message, in the order of the report's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// CALL (acked, replied).
    Call,
    /// CAST (acked).
    Cast,
    /// CAST_FANOUT (one copy per server of the topic, no ack).
    Fanout,
    /// NOTIFY (one copy per listener, no ack).
    Notify,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [Kind::Call, Kind::Cast, Kind::Fanout, Kind::Notify];

    /// Row label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Cast => "cast",
            Kind::Fanout => "fanout",
            Kind::Notify => "notify",
        }
    }

    /// Whether the client waits for an ack (and retries): these must never be lost.
    pub fn acked(self) -> bool {
        matches!(self, Kind::Call | Kind::Cast)
    }
}

/// The mix each worker cycles through: 4 calls, 4 casts, a fanout, a notify.
const PATTERN: [Kind; 10] = [
    Kind::Call,
    Kind::Cast,
    Kind::Call,
    Kind::Fanout,
    Kind::Cast,
    Kind::Call,
    Kind::Notify,
    Kind::Cast,
    Kind::Call,
    Kind::Cast,
];

/// How much traffic, how long: short for CI, long with `ZMQ_PROXY_E2E_LONG=1`.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Concurrent senders.
    pub workers: usize,
    /// Pause between two messages of one worker.
    pub interval: Duration,
    /// RPC servers per topic.
    pub servers_per_topic: usize,
    /// Notification listeners.
    pub listeners: usize,
    /// Client processes (RpcClients with their own matchmaker).
    pub clients: usize,
    /// Traffic before the fault and after recovery, in each scenario.
    pub window: Duration,
    /// Whether this is the long version.
    pub long: bool,
}

impl LoadSettings {
    /// The settings `ZMQ_PROXY_E2E_LONG` selects.
    pub fn from_env() -> LoadSettings {
        let long = std::env::var("ZMQ_PROXY_E2E_LONG")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        if long {
            LoadSettings {
                workers: 12,
                interval: Duration::from_millis(4),
                servers_per_topic: 4,
                listeners: 3,
                clients: 4,
                window: Duration::from_secs(30),
                long,
            }
        } else {
            LoadSettings {
                workers: 4,
                interval: Duration::from_millis(20),
                servers_per_topic: 3,
                listeners: 2,
                clients: 2,
                window: Duration::from_secs(3),
                long,
            }
        }
    }
}

/// Handler runs, per op (call, cast) and per op and server (fanout, notify).
#[derive(Default)]
pub struct Book {
    direct: Mutex<HashMap<u64, u32>>,
    copies: Mutex<HashMap<u64, HashMap<String, u32>>>,
}

impl Book {
    fn ran_direct(&self, op: u64) {
        *self
            .direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
    }

    fn ran_copy(&self, op: u64, server: &str) {
        *self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default()
            .entry(server.to_string())
            .or_default() += 1;
    }

    fn direct_runs(&self, op: u64) -> u32 {
        self.direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// (servers that ran it, runs beyond the first on any server).
    fn copy_runs(&self, op: u64) -> (u64, u64) {
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        copies.get(&op).map_or((0, 0), |by| {
            (
                by.len() as u64,
                by.values().map(|n| u64::from(n.saturating_sub(1))).sum(),
            )
        })
    }
}

fn op_of(inc: &Incoming) -> Option<u64> {
    match inc.msg_type {
        MessageType::Notify => inc.message["payload"]["op"].as_u64(),
        _ => inc.args()["op"].as_u64(),
    }
}

/// The handler of server `name`: counts the run and answers with the op.
fn handler(
    book: Arc<Book>,
    name: String,
) -> impl Fn(Incoming) -> futures::future::BoxFuture<'static, Result<Value, RemoteError>>
       + Send
       + Sync
       + 'static {
    move |inc: Incoming| {
        let book = Arc::clone(&book);
        let name = name.clone();
        Box::pin(async move {
            let Some(op) = op_of(&inc) else {
                return Err(RemoteError::new("ValueError", "no op in the message"));
            };
            match inc.msg_type {
                MessageType::Call | MessageType::Cast => book.ran_direct(op),
                _ => book.ran_copy(op, &name),
            }
            Ok(json!({"op": op, "by": name}))
        })
    }
}

/// The RPC services of a scenario: servers, listeners and clients.
pub struct Traffic {
    settings: LoadSettings,
    servers: Vec<RpcServer>,
    clients: Vec<RpcClient>,
    book: Arc<Book>,
    next_op: Arc<AtomicU64>,
}

/// A Role from the matchmaker's documented rules, bound to ServiceAccount `sa`.
async fn grant(
    admin: &Client,
    ns: &str,
    sa: &str,
    rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
) -> Result<()> {
    let name = format!("zmq-proxy-matchmaker-{sa}");
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &rbac::role(&name, Some(ns), rules))
        .await
        .with_context(|| format!("creating Role {name}"))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .with_context(|| format!("creating RoleBinding {name}"))?;
    Ok(())
}

fn matchmaker(client: &Client, ns: &str, service: &str) -> Arc<KubernetesMatchmaker> {
    Arc::new(KubernetesMatchmaker::new(
        client.clone(),
        KubernetesConfig {
            namespace: Some(ns.to_string()),
            service_name: Some(service.to_string()),
            ..Default::default()
        },
    ))
}

/// Setup waits (discovery, registration).
const SETUP: Duration = Duration::from_secs(90);

impl Traffic {
    /// Starts the servers, listeners and clients in namespace `ns`, finding
    /// the proxies of the ZmqProxy `service`; returns once every server and
    /// client is connected to `proxies` proxies, every client sees every
    /// server, and a call per topic went through.
    pub async fn start(
        cp: &ControlPlane,
        admin: &Client,
        ns: &str,
        service: &str,
        proxies: usize,
        settings: LoadSettings,
    ) -> Result<Traffic> {
        grant(admin, ns, "rpc-server", rbac::rpc_server_rules()).await?;
        grant(admin, ns, "rpc-client", rbac::rpc_client_rules()).await?;
        let (server_client, _) = cp.service_account_client(ns, "rpc-server").await?;
        let (client_client, _) = cp.service_account_client(ns, "rpc-client").await?;
        let book = Arc::new(Book::default());

        let mut targets: Vec<(Target, String)> = Vec::new();
        for topic in TOPICS {
            for k in 0..settings.servers_per_topic {
                let name = format!("{topic}-{k}");
                targets.push((Target::server(topic, name.clone()), name));
            }
        }
        for k in 0..settings.listeners {
            targets.push((
                Target::topic(format!("{NOTIFY_TOPIC}.{NOTIFY_PRIORITY}")),
                format!("listener-{k}"),
            ));
        }
        let mut servers = Vec::new();
        for (target, name) in targets {
            let mm: Arc<dyn Matchmaker> = matchmaker(&server_client, ns, service);
            let server = RpcServer::start(
                mm,
                ServerConfig {
                    host: "e2e".into(),
                    acks: true,
                    ..ServerConfig::new(target)
                },
                handler(Arc::clone(&book), name.clone()),
            )
            .await
            .with_context(|| format!("starting RPC server {name}"))?;
            servers.push(server);
        }
        for s in &servers {
            if !s.wait_ready(proxies, SETUP).await {
                bail!(
                    "RPC server {} not registered and connected to {proxies} proxies within {SETUP:?}",
                    s.identity()
                );
            }
        }

        let mut clients = Vec::new();
        let mut client_mms = Vec::new();
        for _ in 0..settings.clients {
            let mm = matchmaker(&client_client, ns, service);
            let client = RpcClient::connect(
                Arc::clone(&mm) as Arc<dyn Matchmaker>,
                ClientConfig {
                    host: "e2e-client".into(),
                    acks: true,
                    ack_timeout: Duration::from_millis(500),
                    ack_timeout_multiplier: 2,
                    // 0.5 + 1 + 2 + 4 + 8 + 16 s: longer than any fault here.
                    retries: 5,
                    call_timeout: Duration::from_secs(45),
                    discovery_timeout: Duration::from_secs(20),
                    ..ClientConfig::default()
                },
            )
            .await?;
            if !client.wait_for_proxies(proxies, SETUP).await {
                bail!("RPC client not connected to {proxies} proxies within {SETUP:?}");
            }
            clients.push(client);
            client_mms.push(mm);
        }
        // Every client sees every server, so fanouts reach all of them.
        let mut expected = vec![(
            Target::topic(format!("{NOTIFY_TOPIC}.{NOTIFY_PRIORITY}")),
            settings.listeners,
        )];
        for topic in TOPICS {
            expected.push((Target::topic(topic), settings.servers_per_topic));
        }
        for mm in &client_mms {
            for (target, n) in &expected {
                harness::wait::until(
                    &format!("{n} servers of {target:?} visible to a client"),
                    SETUP,
                    || async { Ok((mm.servers(target).await?.len() == *n).then_some(())) },
                )
                .await?;
            }
        }
        let traffic = Traffic {
            settings,
            servers,
            clients,
            book,
            next_op: Arc::new(AtomicU64::new(1)),
        };
        // Warm-up: one call per topic and client went all the way.
        for client in &traffic.clients {
            for topic in TOPICS {
                let op = traffic.next_op.fetch_add(1, Ordering::Relaxed);
                let reply = client
                    .call(
                        &Target::topic(topic),
                        &Request::new("work", json!({"op": op})),
                    )
                    .await
                    .with_context(|| format!("warm-up call to {topic}"))?;
                if reply["op"] != op {
                    bail!("warm-up call {op} got {reply}");
                }
            }
        }
        Ok(traffic)
    }

    /// The settings in use.
    pub fn settings(&self) -> &LoadSettings {
        &self.settings
    }

    /// Identity of one RPC server of `topic` (for hand-made messages).
    pub fn a_server_identity(&self, topic: &str) -> Option<String> {
        self.servers
            .iter()
            .map(|s| s.identity().to_string())
            .find(|id| id.starts_with(&format!("e2e/{topic}/")))
    }

    fn retries(&self) -> u64 {
        self.clients.iter().map(|c| c.stats().retries).sum()
    }

    /// Starts the workers of scenario `name`.
    pub fn start_run(&self, name: &str) -> Run {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let tasks = (0..self.settings.workers)
            .map(|w| {
                tokio::spawn(worker(
                    w,
                    self.clients[w % self.clients.len()].clone(),
                    Arc::clone(&stop),
                    Arc::clone(&completed),
                    Arc::clone(&self.next_op),
                    self.settings.interval,
                ))
            })
            .collect();
        Run {
            name: name.to_string(),
            stop,
            completed,
            tasks,
            started: Instant::now(),
            retries_before: self.retries(),
            duplicates_before: counting::duplicates_suppressed(),
            notes: Vec::new(),
        }
    }

    /// Stops every client and server (servers unregister: their Leases go).
    pub async fn stop(self) {
        for c in self.clients {
            c.close().await;
        }
        for s in self.servers {
            s.stop().await;
        }
    }
}

/// One message as its sender saw it.
struct OpRecord {
    op: u64,
    kind: Kind,
    /// Copies sent (1 for call and cast), or why it failed.
    result: Result<u64, String>,
    latency: Duration,
}

async fn worker(
    w: usize,
    client: RpcClient,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    next_op: Arc<AtomicU64>,
    interval: Duration,
) -> Vec<OpRecord> {
    let mut records = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = w;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let op = next_op.fetch_add(1, Ordering::Relaxed);
        let kind = PATTERN[i % PATTERN.len()];
        i += 1;
        let topic = TOPICS[(op % TOPICS.len() as u64) as usize];
        let started = Instant::now();
        let result = match kind {
            Kind::Call => client
                .call(
                    &Target::topic(topic),
                    &Request::new("work", json!({"op": op})),
                )
                .await
                .map_err(|e| format!("call {op}: {e}"))
                .and_then(|reply| {
                    if reply["op"] == op {
                        Ok(1)
                    } else {
                        Err(format!("call {op} answered with {reply}"))
                    }
                }),
            Kind::Cast => client
                .cast(
                    &Target::topic(topic),
                    &Request::new("work", json!({"op": op})),
                )
                .await
                .map(|()| 1)
                .map_err(|e| format!("cast {op}: {e}")),
            Kind::Fanout => client
                .fanout(topic, &Request::new("fanout", json!({"op": op})))
                .await
                .map(|n| n as u64)
                .map_err(|e| format!("fanout {op}: {e}")),
            Kind::Notify => client
                .notify(
                    NOTIFY_TOPIC,
                    NOTIFY_PRIORITY,
                    &json!({"request_id": format!("req-{op}")}),
                    &json!({"event_type": "e2e.tick", "payload": {"op": op}}),
                )
                .await
                .map(|n| n as u64)
                .map_err(|e| format!("notify {op}: {e}")),
        };
        if result.is_ok() {
            completed.fetch_add(1, Ordering::Relaxed);
        }
        records.push(OpRecord {
            op,
            kind,
            result,
            latency: started.elapsed(),
        });
    }
    records
}

/// The traffic of one scenario, running.
pub struct Run {
    name: String,
    stop: Arc<AtomicBool>,
    /// Messages that completed successfully so far.
    completed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<OpRecord>>>,
    started: Instant,
    retries_before: u64,
    duplicates_before: u64,
    notes: Vec<String>,
}

/// How long delivered-but-unfinished handlers get after the workers stop.
const SETTLE: Duration = Duration::from_secs(5);

impl Run {
    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Messages completed successfully so far (progress during a fault).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Adds a line to the report (what happened when).
    pub fn note(&mut self, line: impl Into<String>) {
        let line = format!("[{:6.1}s] {}", self.elapsed().as_secs_f64(), line.into());
        eprintln!("{}: {line}", self.name);
        self.notes.push(line);
    }

    /// Stops the workers, lets acked messages finish, and counts.
    pub async fn finish(self, traffic: &Traffic) -> Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        for t in self.tasks {
            records.extend(t.await.context("worker panicked")?);
        }
        let duration = self.started.elapsed();
        let book = &traffic.book;
        // Everything acked (or sent, for fanout/notify) gets a moment to run.
        let _ = harness::wait::until("handlers to finish", SETTLE, || async {
            let done = records.iter().all(|r| match (&r.result, r.kind) {
                (Err(_), _) => true,
                (Ok(_), Kind::Call) => true,
                (Ok(_), Kind::Cast) => book.direct_runs(r.op) >= 1,
                (Ok(n), _) => book.copy_runs(r.op).0 >= *n,
            });
            Ok(done.then_some(()))
        })
        .await;

        let mut figures: HashMap<Kind, KindFigures> = HashMap::new();
        let mut errors = Vec::new();
        for r in &records {
            let f = figures.entry(r.kind).or_default();
            f.messages += 1;
            f.longest = f.longest.max(r.latency);
            match (&r.result, r.kind.acked()) {
                (Err(e), _) => {
                    f.copies += 1;
                    f.lost += 1;
                    errors.push(e.clone());
                }
                (Ok(_), true) => {
                    f.copies += 1;
                    let runs = book.direct_runs(r.op);
                    if runs >= 1 {
                        f.delivered += 1;
                    } else {
                        f.lost += 1;
                        errors.push(format!(
                            "{} {} acked but never handled",
                            r.kind.name(),
                            r.op
                        ));
                    }
                    f.duplicates_executed += u64::from(runs.saturating_sub(1));
                }
                (Ok(n), false) => {
                    let (servers, extra) = book.copy_runs(r.op);
                    f.copies += n;
                    f.delivered += servers.min(*n);
                    f.lost += n.saturating_sub(servers);
                    f.duplicates_executed += extra;
                }
            }
        }
        errors.sort();
        Ok(Report {
            name: self.name,
            duration,
            kinds: Kind::ALL
                .iter()
                .map(|k| (*k, figures.remove(k).unwrap_or_default()))
                .collect(),
            retried: traffic.retries().saturating_sub(self.retries_before),
            duplicates_suppressed: counting::duplicates_suppressed()
                .saturating_sub(self.duplicates_before),
            errors,
            notes: self.notes,
        })
    }
}
