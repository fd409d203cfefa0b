//! Two operator processes on one Lease: exactly one leads; SIGKILL the
//! leader and the other takes over (bounded by the lease duration);
//! SIGTERM a leader and the Lease is released for an immediate hand-over.
//! Hand-over times are printed as figures.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

const LEASE_SECONDS: u64 = 4;

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("zmq-proxy-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn is_leader(op: &Operator) -> Option<bool> {
    op.metric("zmq_proxy_operator_is_leader")
        .await
        .ok()
        .flatten()
        .map(|v| v == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_and_quick_hand_over() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-leader").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let start = |id: &str| {
        let mut o = OperatorOptions::new(cp, &ns);
        o.identity = id.to_string();
        o.lease_seconds = LEASE_SECONDS;
        Operator::start(cp, &o)
    };

    let a = start("op-a")?;
    let first = harness::wait::until("a leader", SHORT, || async { holder(&leases).await }).await?;
    ensure!(first == "op-a", "unexpected holder {first}");
    let b = start("op-b")?;
    // b runs and serves, but as a standby.
    harness::wait::until("b's metrics", SHORT, || async { Ok(is_leader(&b).await) }).await?;
    ensure!(is_leader(&b).await == Some(false), "b leads next to a");
    ensure!(
        is_leader(&a).await == Some(true),
        "a does not report leadership"
    );
    let (code, _) = b.http_get("/readyz").await?;
    ensure!(code == 200, "a standby must be ready (got {code})");
    create_zp(&client, &ns, "one", json!({ "replicas": 0 })).await?;
    harness::wait::until("the first object reconciled", SHORT, || async {
        Ok(deps.get_opt("one").await?)
    })
    .await?;

    // SIGKILL the leader: b takes over once the lease expires.
    let killed = Instant::now();
    a.process.signal(9);
    a.process.wait().await;
    harness::wait::until("b to take the lease", SHORT, || async {
        Ok(holder(&leases).await?.filter(|h| h == "op-b"))
    })
    .await?;
    let took_over = killed.elapsed();
    create_zp(&client, &ns, "two", json!({ "replicas": 0 })).await?;
    harness::wait::until("b to reconcile", SHORT, || async {
        Ok(deps.get_opt("two").await?)
    })
    .await?;
    let serving = killed.elapsed();
    eprintln!(
        "figure: hand-over after SIGKILL of the leader (lease {LEASE_SECONDS}s): lease taken after {took_over:?}, new object reconciled {serving:?} after the kill"
    );

    // SIGTERM the leader: it releases the lease; a new standby takes over at once.
    let c = start("op-c")?;
    harness::wait::until("c's metrics", SHORT, || async { Ok(is_leader(&c).await) }).await?;
    ensure!(is_leader(&c).await == Some(false));
    let termed = Instant::now();
    let exit = b.process.terminate(Duration::from_secs(20)).await;
    ensure!(exit.code == Some(0), "b did not exit cleanly: {exit}");
    // Released on the way out, not left to expire.
    let after = holder(&leases).await?;
    ensure!(
        after.as_deref() != Some("op-b"),
        "b exited still holding the lease"
    );
    harness::wait::until("c to take the lease", SHORT, || async {
        Ok(holder(&leases).await?.filter(|h| h == "op-c"))
    })
    .await?;
    let graceful = termed.elapsed();
    create_zp(&client, &ns, "three", json!({ "replicas": 0 })).await?;
    harness::wait::until("c to reconcile", SHORT, || async {
        Ok(deps.get_opt("three").await?)
    })
    .await?;
    eprintln!(
        "figure: hand-over after SIGTERM (lease released): {graceful:?} (b's shutdown included)"
    );
    c.process.terminate(Duration::from_secs(10)).await;
    Ok(())
}
