//! End to end: the system installed the way users install it, carrying a
//! steady mixed load through faults and bad input, losing nothing.
//!
//! Each test: a real control plane (kube-apiserver, controller manager and
//! scheduler), the real node (kubelet, containerd, kube-proxy, CoreDNS)
//! running the operator and proxy pods as containers of the project's
//! images, the chart installed with `helm install --wait`, a ZmqProxy with 3 replicas
//! applied with `kubectl apply` and awaited with `kubectl wait`; then RPC
//! servers (2 topics x several servers, plus notification listeners) and
//! clients that find the proxies through the EndpointSlices (Kubernetes
//! matchmaker, ServiceAccounts with the documented matchmaker Roles) send
//! calls, casts, fanouts and notifies (acks on, 500 ms ack timeout) while
//! the scenarios run. Every scenario prints a table and asserts: no call or
//! cast lost, no handler run twice; the bad-input scenarios also assert
//! that not even a fanout or notify copy was lost. Each test ends with
//! `kubectl delete` of the ZmqProxy and checks that every child and every
//! registration (EndpointSlices, Leases) is gone.
//!
//! The three tests split the scenarios into processes, each with its own
//! control plane; they take turns on the machine's one node:
//! - proxy faults: a proxy pod deleted, a proxy container SIGKILLed through
//!   the runtime, a rolling update, scaling 3 -> 5 -> 2;
//! - control-plane faults: the API server stopped for 30 s, the operator's
//!   leader container SIGKILLed;
//! - bad input: random and malformed frames on the proxy ports, invalid
//!   ZmqProxy objects.
//!
//! `ZMQ_PROXY_E2E_LONG=1` runs the long version (more load, 30 s of traffic
//! before and after each fault, faults repeated); see README.md.
//!
//! Needs root, helm, kubectl, the control-plane and node binaries (`bash
//! tests/install.sh`), the workspace binaries (`cargo build --workspace
//! --bins`: the RPC services run on the host) and the images (`bash
//! tests/images.sh build`).

mod e2e_support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use e2e_support::bad_input::{self, Rng};
use e2e_support::cluster::{self, Cluster, NAME};
use e2e_support::counting;
use e2e_support::load::{LoadSettings, Traffic};
use e2e_support::report::{self, Report};

/// Proxies the ZmqProxy starts with.
const FLEET: usize = 3;
/// Bound on every recovery wait.
const RECOVERY: Duration = Duration::from_secs(120);

/// Installs everything and starts the traffic; on failure, shows the pods' logs.
async fn setup() -> Result<(Cluster, Traffic)> {
    counting::init();
    let cp = ControlPlane::shared().await?;
    let cluster = Cluster::install(cp).await?;
    let started = async {
        let fleet = cluster.apply_and_wait(FLEET).await?;
        eprintln!("proxies: {fleet:?}");
        let settings = LoadSettings::from_env();
        eprintln!("load: {settings:?}");
        Traffic::start(cp, &cluster.client, &cluster.ns, NAME, FLEET, settings).await
    }
    .await;
    match started {
        Ok(traffic) => Ok((cluster, traffic)),
        Err(e) => {
            cluster.dump_logs().await;
            let _ = cluster.uninstall().await;
            Err(e)
        }
    }
}

/// Stops the traffic, deletes the ZmqProxy with kubectl and checks that
/// everything it made and every registration is gone; prints the summary.
async fn teardown(
    cluster: Cluster,
    traffic: Traffic,
    title: &str,
    reports: &[Report],
    result: Result<()>,
) -> Result<()> {
    let result = match result {
        Ok(()) => delete_everything(&cluster, traffic).await,
        Err(e) => {
            traffic.stop().await;
            Err(e)
        }
    };
    println!("{}", report::summary(title, reports));
    if result.is_err() {
        cluster.dump_logs().await;
    }
    let uninstalled = cluster.uninstall().await;
    result?;
    uninstalled
}

/// The RPC services stop (their Leases go), then `kubectl delete` of the
/// ZmqProxy removes the rest.
async fn delete_everything(cluster: &Cluster, traffic: Traffic) -> Result<()> {
    let zp = cluster.zmqproxies().get(NAME).await?;
    let uid = cluster::uid_of(&zp)?;
    let before = cluster.leftovers(&uid).await?;
    traffic.stop().await;
    for kind in ["EndpointSlice/", "Lease/", "Deployment/", "Pod/"] {
        ensure!(
            before.iter().any(|o| o.starts_with(kind)),
            "no {kind} before the delete? {before:?}"
        );
    }
    let out = cluster
        .kubectl(
            &["delete", "zmqproxy", NAME, "--wait=true", "--timeout=60s"],
            None,
        )
        .await?;
    eprintln!(
        "kubectl delete: {} ({} objects before)",
        out.trim(),
        before.len()
    );
    let started = std::time::Instant::now();
    harness::wait::until(
        "every child and registration of the ZmqProxy gone",
        RECOVERY,
        || async {
            let left = cluster.leftovers(&uid).await?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("left: {left:?}")
            }
        },
    )
    .await?;
    println!(
        "=== RPC services stopped and kubectl delete zmqproxy/{NAME}: all {} objects (children, EndpointSlices, Leases) gone {:.1} s after the delete returned ===\n  before: {}",
        before.len(),
        started.elapsed().as_secs_f64(),
        before.join(", ")
    );
    Ok(())
}

/// Sleeps for the traffic window (a deliberate length of traffic, not a
/// wait for a condition).
async fn window(traffic: &Traffic) {
    tokio::time::sleep(traffic.settings().window).await;
}

fn repeats(traffic: &Traffic) -> usize {
    if traffic.settings().long {
        3
    } else {
        1
    }
}

/// Ends a run: prints its table, then asserts its invariants.
async fn conclude(
    run: e2e_support::load::Run,
    traffic: &Traffic,
    undisturbed: bool,
    reports: &mut Vec<Report>,
) -> Result<()> {
    let report = run.finish(traffic).await?;
    println!("{report}");
    let checked = report.check(undisturbed);
    reports.push(report);
    checked
}

async fn steady(traffic: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let run = traffic.start_run("steady load, no fault");
    window(traffic).await;
    window(traffic).await;
    conclude(run, traffic, true, reports).await
}

async fn proxy_pod_deleted(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("proxy pod deleted (graceful)");
    window(t).await;
    for _ in 0..repeats(t) {
        let victim = c
            .proxy_pods()
            .await?
            .first()
            .map(|p| p.name_any())
            .context("no proxy pod")?;
        c.kubectl(&["delete", "pod", &victim, "--wait=false"], None)
            .await?;
        let before = run.completed();
        run.note(format!("kubectl delete pod {victim}"));
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), &c.ns);
        harness::wait::until(&format!("{victim} gone"), RECOVERY, || async {
            Ok(pods.get_opt(&victim).await?.is_none().then_some(()))
        })
        .await?;
        run.note(format!("{victim} gone (drained, deregistered)"));
        let fleet = c.wait_fleet(FLEET, RECOVERY).await?;
        run.note(format!(
            "{FLEET} proxies ready and registered again: {:?}; {} messages completed meanwhile",
            fleet.keys().collect::<Vec<_>>(),
            run.completed() - before
        ));
        window(t).await;
    }
    conclude(run, t, false, reports).await
}

async fn proxy_sigkilled(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("proxy container SIGKILLed");
    window(t).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), &c.ns);
    for _ in 0..repeats(t) {
        let victim = c
            .proxy_pods()
            .await?
            .into_iter()
            .next()
            .context("no proxy pod")?;
        let name = victim.name_any();
        let restarts = cluster::restarts_of(&victim);
        let id = c.sigkill_pod(&c.ns, &name).await?;
        let before = run.completed();
        run.note(format!(
            "ctr tasks kill -s SIGKILL {} (the proxy container of pod {name})",
            short(&id)
        ));
        harness::wait::until(&format!("{name} restarted and ready"), RECOVERY, || async {
            let p = pods.get(&name).await?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok((cluster::restarts_of(&p) > restarts
                && ready
                && cluster::container_id_of(&p).is_some_and(|new| new != id))
            .then_some(()))
        })
        .await?;
        c.wait_fleet(FLEET, RECOVERY).await?;
        run.note(format!(
            "{name}'s container restarted by the kubelet, ready and registered; {} messages completed meanwhile",
            run.completed() - before
        ));
        window(t).await;
    }
    conclude(run, t, false, reports).await
}

async fn rolling_update(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("rolling update (spec change)");
    window(t).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    for round in 0..repeats(t) {
        let old: Vec<String> = c.proxy_pods().await?.iter().map(|p| p.name_any()).collect();
        let generation = deployments.get(NAME).await?.metadata.generation;
        // A configuration change (the drain period) rolls the pods.
        let grace = cluster::GRACE_SECONDS - 1 - (round as i32 % 2);
        let patch = format!(r#"{{"spec":{{"gracePeriodSeconds":{grace}}}}}"#);
        c.kubectl(
            &["patch", "zmqproxy", NAME, "--type", "merge", "-p", &patch],
            None,
        )
        .await?;
        let before = run.completed();
        run.note(format!("kubectl patch zmqproxy {NAME} {patch}"));
        harness::wait::until(
            "the operator to change the Deployment",
            RECOVERY,
            || async {
                Ok((deployments.get(NAME).await?.metadata.generation > generation).then_some(()))
            },
        )
        .await?;
        let out = c
            .kubectl(
                &[
                    "rollout",
                    "status",
                    &format!("deployment/{NAME}"),
                    "--timeout=180s",
                ],
                None,
            )
            .await?;
        run.note(format!(
            "kubectl rollout status: {}",
            out.lines().last().unwrap_or_default()
        ));
        let fleet = c.wait_fleet(FLEET, RECOVERY).await?;
        ensure!(
            fleet.keys().all(|p| !old.contains(p)),
            "old pods {old:?} still serving after the roll: {fleet:?}"
        );
        run.note(format!(
            "every pod replaced: {:?} -> {:?}; {} messages completed meanwhile",
            old,
            fleet.keys().collect::<Vec<_>>(),
            run.completed() - before
        ));
        window(t).await;
    }
    conclude(run, t, false, reports).await
}

async fn scaling(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("scaling 3 -> 5 -> 2");
    window(t).await;
    for n in [5usize, 2] {
        c.kubectl(
            &[
                "scale",
                &format!("zmqproxy/{NAME}"),
                &format!("--replicas={n}"),
            ],
            None,
        )
        .await?;
        let before = run.completed();
        run.note(format!("kubectl scale zmqproxy/{NAME} --replicas={n}"));
        let fleet = c.wait_fleet(n, RECOVERY).await?;
        run.note(format!(
            "{n} proxies ready and registered: {:?}; {} messages completed meanwhile",
            fleet.keys().collect::<Vec<_>>(),
            run.completed() - before
        ));
        window(t).await;
    }
    conclude(run, t, false, reports).await
}

async fn apiserver_outage(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut run = t.start_run("API server stopped 30 s");
    window(t).await;
    if !c.cp.is_local() {
        // An existing cluster (ZMQ_PROXY_TEST_KUBECONFIG): its API server
        // is not ours to stop; the traffic is still checked.
        run.note("not a local control plane: API server left running");
        window(t).await;
        return conclude(run, t, false, reports).await;
    }
    c.cp.stop_apiserver().await?;
    let before = run.completed();
    run.note("kube-apiserver stopped");
    // The outage itself: a fixed length of time, by definition.
    tokio::time::sleep(OUTAGE).await;
    let during = run.completed() - before;
    c.cp.start_apiserver().await?;
    run.note(format!(
        "kube-apiserver started again after {OUTAGE:?}; {during} messages completed while it was down"
    ));
    ensure!(
        during > 0,
        "no message completed while the API server was down"
    );
    let fleet = c.wait_fleet(FLEET, RECOVERY).await?;
    run.note(format!(
        "ZmqProxy Ready, {} proxies registered: {:?}",
        fleet.len(),
        fleet.keys().collect::<Vec<_>>()
    ));
    window(t).await;
    conclude(run, t, false, reports).await
}

async fn operator_killed(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("operator leader container SIGKILLed");
    window(t).await;
    let operators = c.operator_pods().await?;
    let (leader, _) = harness::wait::until("an operator pod leading", RECOVERY, || async {
        Ok(c.operator_leader()
            .await?
            .filter(|(h, _)| operators.contains_key(h)))
    })
    .await?;
    let id = c.sigkill_pod(&c.release_ns, &leader).await?;
    let killed_at = Timestamp::now();
    let killed = std::time::Instant::now();
    run.note(format!(
        "ctr tasks kill -s SIGKILL {} (operator pod {leader}, the leader)",
        short(&id)
    ));
    // Only a live process renews the Lease: a renewal after the kill is
    // the new leader (the standby, or the killed pod's restarted process,
    // which may reclaim its own Lease at once).
    let new_leader = harness::wait::until("a new leader", RECOVERY, || async {
        Ok(c.operator_leader()
            .await?
            .filter(|(_, renewed)| *renewed > killed_at)
            .map(|(h, _)| h))
    })
    .await?;
    run.note(format!(
        "Lease renewed by {new_leader} {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    ));
    // The new leader reconciles: a scale goes through.
    c.kubectl(
        &[
            "scale",
            &format!("zmqproxy/{NAME}"),
            &format!("--replicas={}", FLEET + 1),
        ],
        None,
    )
    .await?;
    run.note(format!(
        "kubectl scale zmqproxy/{NAME} --replicas={}",
        FLEET + 1
    ));
    let scaled = std::time::Instant::now();
    let fleet = c.wait_fleet(FLEET + 1, RECOVERY).await?;
    run.note(format!(
        "{} proxies ready and registered {:.1} s after the scale: {:?}",
        fleet.len(),
        scaled.elapsed().as_secs_f64(),
        fleet.keys().collect::<Vec<_>>()
    ));
    if scaled.elapsed() > Duration::from_secs(10) {
        let events = c
            .kubectl_output(
                &["get", "events", "--sort-by=.lastTimestamp", "-o", "custom-columns=LAST:.lastTimestamp,FIRST:.firstTimestamp,REASON:.reason,OBJ:.involvedObject.name,FROM:.source.component,MSG:.message"],
                None,
            )
            .await?;
        eprintln!(
            "slow scale after the operator kill (at {killed_at}); events:\n{}",
            events.stdout
        );
        for pod in c.operator_pods().await?.keys() {
            eprintln!(
                "slow scale after the operator kill; log of {pod}:\n{}",
                c.pod_log_tail(&c.release_ns, pod, 60).await
            );
        }
    }
    harness::wait::until("both operator pods ready again", RECOVERY, || async {
        let pods = c.operator_pods().await?;
        let ready = pods
            .values()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        Ok((ready == 2).then_some(()))
    })
    .await?;
    run.note("both operator pods ready");
    window(t).await;
    conclude(run, t, false, reports).await
}

/// A container ID as `crictl ps` shows it (13 hex digits).
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// A tool's message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Pod name -> (uid, restarts) of the proxies.
async fn proxy_identities(c: &Cluster) -> Result<BTreeMap<String, (String, i32)>> {
    Ok(c.proxy_pods()
        .await?
        .into_iter()
        .map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            (p.name_any(), (uid, cluster::restarts_of(&p)))
        })
        .collect())
}

/// Drop reasons of bad envelopes (as opposed to unroutable or HWM).
const ENVELOPE_REASONS: [&str; 5] = [
    "too_few_frames",
    "missing_delimiter",
    "unknown_version",
    "bad_type",
    "empty_routing_key",
];

async fn garbage(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("random and malformed frames");
    window(t).await;
    let pods_before = proxy_identities(c).await?;
    let fleet = c.wait_fleet(FLEET, RECOVERY).await?;
    let ips: Vec<String> = fleet.values().cloned().collect();
    let mut drops_before = BTreeMap::new();
    for ip in &ips {
        drops_before.insert(ip.clone(), bad_input::dropped(&format!("{ip}:9090")).await?);
    }
    let rounds = if t.settings().long { 40 } else { 4 };
    let mut rng = Rng::from_time();
    let addrs: Vec<String> = ips
        .iter()
        .flat_map(|ip| [50001, 50002, 9090].map(|port| format!("{ip}:{port}")))
        .collect();
    let tcp = bad_input::random_tcp(&addrs, rounds, &mut rng).await;
    run.note(format!(
        "random bytes: {} connections, {} bytes to {} ports",
        tcp.connections,
        tcp.bytes,
        addrs.len()
    ));
    let endpoints: Vec<String> = ips
        .iter()
        .flat_map(|ip| [50001, 50002].map(|port| format!("tcp://{ip}:{port}")))
        .collect();
    let server = t
        .a_server_identity("compute")
        .context("no compute server")?;
    let zmq_sent = tokio::task::spawn_blocking(move || {
        bad_input::malformed_messages(&endpoints, &server, rounds, &mut rng)
    })
    .await??;
    run.note(format!(
        "malformed ZeroMQ messages: {} to {} frontends and backends",
        zmq_sent.messages,
        ips.len() * 2
    ));
    // Each DEALER talks to one proxy: every proxy must count its bad
    // envelopes (at least 8 per round and socket are envelope violations).
    let mut counted = Vec::new();
    for ip in &ips {
        let addr = format!("{ip}:9090");
        let before = &drops_before[ip];
        let after = harness::wait::until(
            &format!("drops counted by {ip}"),
            Duration::from_secs(20),
            || async {
                let after = bad_input::dropped(&addr).await?;
                let grew: f64 = ENVELOPE_REASONS
                    .iter()
                    .map(|r| after.get(*r).unwrap_or(&0.0) - before.get(*r).unwrap_or(&0.0))
                    .sum();
                Ok((grew >= (2 * 8 * rounds) as f64).then_some(after))
            },
        )
        .await?;
        let diff: BTreeMap<&String, f64> = after
            .iter()
            .map(|(r, v)| (r, v - before.get(r).unwrap_or(&0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        counted.push(format!("{ip}: {diff:?}"));
    }
    run.note(format!("dropped and counted: {}", counted.join("; ")));
    c.wait_fleet(FLEET, RECOVERY).await?;
    let pods_after = proxy_identities(c).await?;
    ensure!(
        pods_before == pods_after,
        "proxy pods changed or restarted: {pods_before:?} -> {pods_after:?}"
    );
    run.note("same proxy pods, no restart, all registered");
    window(t).await;
    conclude(run, t, true, reports).await
}

async fn invalid_zmqproxy(c: &Cluster, t: &Traffic, reports: &mut Vec<Report>) -> Result<()> {
    let mut run = t.start_run("invalid ZmqProxy applied");
    window(t).await;
    let pods_before = proxy_identities(c).await?;
    let zps = c.zmqproxies();
    let generation = zps.get(NAME).await?.metadata.generation;

    // Schema violations: the API server rejects them.
    let bad_schema = "apiVersion: zmqproxy.io/v1alpha1\nkind: ZmqProxy\nmetadata:\n  name: bad-schema\nspec:\n  replicas: -1\n  mode: TripleRouter\n  ports:\n    frontend: 70000\n";
    let out = c
        .kubectl_output(&["apply", "-f", "-"], Some(bad_schema))
        .await?;
    ensure!(
        !out.success && out.stderr.contains("spec.replicas") && out.stderr.contains("spec.mode"),
        "invalid ZmqProxy not rejected: {}{}",
        out.stdout,
        out.stderr
    );
    ensure!(
        zps.get_opt("bad-schema").await?.is_none(),
        "bad-schema exists"
    );
    run.note(format!(
        "kubectl apply (replicas -1, mode TripleRouter, port 70000) rejected: {}",
        one_line(&out.stderr)
    ));
    let out = c
        .kubectl_output(
            &[
                "patch",
                "zmqproxy",
                NAME,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"replicas":"three"}}"#,
            ],
            None,
        )
        .await?;
    ensure!(
        !out.success,
        "a string for replicas was accepted: {}",
        out.stdout
    );
    run.note(format!(
        "kubectl patch replicas=\"three\" rejected: {}",
        one_line(&out.stderr)
    ));

    // A cross-field (CEL) rule: rejected with the rule's message.
    let bad_rule = "apiVersion: zmqproxy.io/v1alpha1\nkind: ZmqProxy\nmetadata:\n  name: bad-refresh\nspec:\n  replicas: 1\n  matchmaker:\n    targetExpireSeconds: 300\n    targetUpdateSeconds: 600\n";
    let out = c
        .kubectl_output(&["apply", "-f", "-"], Some(bad_rule))
        .await?;
    ensure!(
        !out.success
            && out
                .stderr
                .contains("matchmaker.targetUpdateSeconds must be below targetExpireSeconds"),
        "bad-refresh not rejected by its CEL rule: {}{}",
        out.stdout,
        out.stderr
    );
    ensure!(
        zps.get_opt("bad-refresh").await?.is_none(),
        "bad-refresh exists"
    );
    run.note(format!(
        "kubectl apply (update 600 s > expire 300 s) rejected: {}",
        one_line(&out.stderr)
    ));

    // The running fleet did not notice.
    c.wait_fleet(FLEET, RECOVERY).await?;
    let zp = zps.get(NAME).await?;
    ensure!(
        zp.metadata.generation == generation,
        "{NAME} changed: generation {generation:?} -> {:?}",
        zp.metadata.generation
    );
    let pods_after = proxy_identities(c).await?;
    ensure!(
        pods_before == pods_after,
        "proxy pods changed or restarted: {pods_before:?} -> {pods_after:?}"
    );
    run.note(format!(
        "{NAME} untouched: same generation, same pods, Ready"
    ));
    window(t).await;
    conclude(run, t, true, reports).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_proxy_faults_lose_no_acked_message() -> Result<()> {
    let (cluster, traffic) = setup().await?;
    let mut reports = Vec::new();
    let result = async {
        steady(&traffic, &mut reports).await?;
        proxy_pod_deleted(&cluster, &traffic, &mut reports).await?;
        proxy_sigkilled(&cluster, &traffic, &mut reports).await?;
        rolling_update(&cluster, &traffic, &mut reports).await?;
        scaling(&cluster, &traffic, &mut reports).await
    }
    .await;
    teardown(cluster, traffic, "proxy faults", &reports, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_control_plane_faults_lose_no_acked_message() -> Result<()> {
    let (cluster, traffic) = setup().await?;
    let mut reports = Vec::new();
    let result = async {
        apiserver_outage(&cluster, &traffic, &mut reports).await?;
        operator_killed(&cluster, &traffic, &mut reports).await
    }
    .await;
    teardown(cluster, traffic, "control-plane faults", &reports, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_bad_input_disturbs_nothing() -> Result<()> {
    let (cluster, traffic) = setup().await?;
    let mut reports = Vec::new();
    let result = async {
        steady(&traffic, &mut reports).await?;
        garbage(&cluster, &traffic, &mut reports).await?;
        invalid_zmqproxy(&cluster, &traffic, &mut reports).await
    }
    .await;
    teardown(cluster, traffic, "bad input", &reports, result).await
}
