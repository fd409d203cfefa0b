//! The Kubernetes matchmaker across an API-server restart: forwarding never
//! depends on the API server, matchmaker calls fail fast instead of hanging,
//! watchers keep their last list, and registration and discovery come back
//! by themselves. A test binary of its own: stopping the API server would
//! disturb other tests sharing its control plane.

mod k8s_support;

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use harness::wait::until;
use k8s_support::{Cluster, ProxyProcess, Traffic, SERVICE, TIMEOUT};
use zmq_proxy::matchmaker::kubernetes::{rbac, KubernetesConfig, KubernetesMatchmaker};
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};

fn hosts(list: &[ProxyAddresses]) -> Vec<String> {
    list.iter().map(|p| p.host.clone()).collect()
}

#[tokio::test]
async fn apiserver_restart_does_not_stop_forwarding_and_registration_recovers() -> Result<()> {
    let cluster = Cluster::new("kmm-outage").await?;
    if !cluster.cp.is_local() {
        println!("existing cluster: the API server cannot be restarted; nothing to test");
        return Ok(());
    }
    let (_, kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let (client, _) = cluster
        .service_account("rpc-client", rbac::rpc_client_rules())
        .await?;
    let request_timeout = Duration::from_secs(3);
    let watcher = KubernetesMatchmaker::new(
        client,
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            service_name: Some(SERVICE.into()),
            request_timeout,
            ..Default::default()
        },
    );
    let pod_a = cluster.pod("proxy-a").await?;
    // Created now: no Pod can be created while the API server is down.
    let pod_b = cluster.pod("proxy-b").await?;
    let a = ProxyProcess::start(&cluster, &pod_a, &kubeconfig).await?;
    let mut rx = watcher.watch_proxies().await?;
    let (server_client, _) = cluster
        .service_account("rpc-server", rbac::rpc_server_rules())
        .await?;
    let registrant = KubernetesMatchmaker::new(
        server_client,
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            request_timeout,
            ..Default::default()
        },
    );
    let target = Target::topic("outage");
    registrant
        .register_server(&target, "127.0.0.1/outage/before", Duration::from_secs(300))
        .await?;
    let mut servers_rx = watcher.watch_servers(&target).await?;
    assert_eq!(*servers_rx.borrow_and_update(), ["127.0.0.1/outage/before"]);
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| hosts(v) == [a.ip.clone()]))
        .await
        .map_err(|_| anyhow!("proxy-a never listed"))??;
    let traffic = Traffic::start(&a.frontend_endpoint(), &a.backend_endpoint())?;

    cluster.cp.stop_apiserver().await?;
    let stopped = Instant::now();
    let during = traffic.count();
    until(
        "calls through the proxy while the API server is down",
        TIMEOUT,
        || async { Ok((traffic.count() >= during + 50).then_some(())) },
    )
    .await?;
    // Calls fail (fast) instead of hanging, and the watched lists stay.
    let t = Instant::now();
    assert!(registrant
        .register_server(&target, "127.0.0.1/outage/after", Duration::from_secs(300))
        .await
        .is_err());
    assert_eq!(*servers_rx.borrow(), ["127.0.0.1/outage/before"]);
    assert!(
        watcher.proxies().await.is_err(),
        "API server should be down"
    );
    assert!(
        t.elapsed() < request_timeout + Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(hosts(&rx.borrow()), [a.ip.as_str()], "last good list kept");
    // A proxy starting now forwards at once but is not ready: unregistered.
    let b = ProxyProcess::start(&cluster, &pod_b, &kubeconfig).await?;
    let b_traffic = Traffic::start(&b.frontend_endpoint(), &b.backend_endpoint())?;
    assert_ne!(b.readyz(), Some(200), "proxy-b cannot be registered yet");
    let through_b = b_traffic.count();
    until(
        "calls through the unregistered proxy-b",
        TIMEOUT,
        || async { Ok((b_traffic.count() >= through_b + 20).then_some(())) },
    )
    .await?;
    let during_outage = traffic.count() - during;

    let restart = Instant::now();
    cluster.cp.start_apiserver().await?;
    let outage = stopped.elapsed();
    let apiserver_start = restart.elapsed();
    let back = Instant::now();
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| hosts(v).contains(&b.ip)))
        .await
        .map_err(|_| {
            anyhow!(
                "proxy-b never listed after the restart; log:\n{}",
                b.log_text()
            )
        })??;
    let recovered = back.elapsed();
    // The server-Lease watch is back too.
    registrant
        .register_server(&target, "127.0.0.1/outage/after", Duration::from_secs(300))
        .await?;
    tokio::time::timeout(TIMEOUT, servers_rx.wait_for(|v| v.len() == 2))
        .await
        .map_err(|_| anyhow!("server Lease watch did not recover"))??;
    until("proxy-b ready once registered", TIMEOUT, || async {
        Ok((b.readyz() == Some(200)).then_some(()))
    })
    .await?;
    assert_eq!(hosts(&rx.borrow()), [a.ip.clone(), b.ip.clone()]);

    // The watch works again: proxy-a leaves on SIGTERM.
    a.process.signal(libc::SIGTERM);
    let t = Instant::now();
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| hosts(v) == [b.ip.clone()]))
        .await
        .map_err(|_| anyhow!("proxy-a never left the watched list"))??;
    let leave = t.elapsed();
    let figures = traffic.finish();
    let b_figures = b_traffic.finish();
    println!(
        "API server down {outage:.1?}: {during_outage} calls through proxy-a meanwhile; \
         proxy-a overall {} calls, {} replies, longest gap between replies {:.1?}; \
         proxy-b {} replies; API server start took {apiserver_start:.1?}, proxy-b listed {recovered:.1?} after it was ready; \
         proxy-a left the list {leave:.1?} after SIGTERM",
        figures.sent, figures.replies, figures.longest_gap, b_figures.replies
    );
    assert!(a
        .process
        .wait_timeout(TIMEOUT)
        .await
        .is_some_and(|e| e.success()));
    b.terminate_cleanly().await?;
    Ok(())
}
