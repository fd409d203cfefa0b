//! The Kubernetes matchmaker with a Redis URL, as the operator runs proxies
//! when a ZmqProxy names a Redis Secret: the real `zmq-proxy` binary with
//! `ZMQ_PROXY_MATCHMAKER=kubernetes` and `ZMQ_PROXY_URL=zmq+redis://...`
//! against the harness's control plane and a real `redis-server`. It writes
//! its EndpointSlice and oslo's Redis records (with liveness keys and TTLs);
//! a Redis outage neither makes it unready nor stops forwarding, and it
//! writes Redis again when Redis is back; SIGTERM removes both.

mod k8s_support;
mod rpc_support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use harness::wait::until;
use k8s_support::{Cluster, ProxyProcess, Traffic, TIMEOUT};
use kube::api::DynamicObject;
use kube::Api;
use rpc_support::Redis;
use zmq_proxy::matchmaker::kubernetes::endpoint_slice;
use zmq_proxy::matchmaker::ProxyAddresses;

/// Registration TTL and refresh given to the proxy: short, so that the
/// test sees several refreshes (and failed Redis writes) in seconds.
const EXPIRE_SECS: i64 = 30;
const UPDATE: &str = "1";

/// The ready proxies the slice named `name` lists (empty when it is gone).
async fn slice_proxies(api: &Api<DynamicObject>, name: &str) -> Result<Vec<ProxyAddresses>> {
    Ok(match api.get_opt(name).await? {
        Some(o) => {
            endpoint_slice::ready_proxies(&endpoint_slice::from_json(serde_json::to_value(&o)?)?)
        }
        None => Vec::new(),
    })
}

/// oslo's records of `proxy`: `(PUBLISHERS member, ROUTERS member)`.
fn oslo_members(proxy: &ProxyProcess) -> (String, String) {
    let publisher = proxy.publisher.unwrap_or(proxy.frontend);
    (
        format!("{ip}:{publisher},{ip}:{}", proxy.frontend, ip = proxy.ip),
        format!("{}:{}", proxy.ip, proxy.backend),
    )
}

/// Waits until Redis holds exactly the proxy's oslo records, each member
/// with its liveness key, all with a fresh TTL.
async fn wait_for_oslo_records(redis: &Redis, proxy: &ProxyProcess, what: &str) -> Result<()> {
    let (publisher, router) = oslo_members(proxy);
    let mut expected = vec![
        "PUBLISHERS".to_string(),
        "ROUTERS".to_string(),
        publisher.clone(),
        router.clone(),
    ];
    expected.sort();
    until(what, TIMEOUT, || {
        let expected = expected.clone();
        async move {
            let keys = redis.keys();
            ensure!(keys == expected, "keys {keys:?}, want {expected:?}");
            Ok(Some(()))
        }
    })
    .await?;
    assert_eq!(redis.smembers("PUBLISHERS"), vec![publisher.clone()]);
    assert_eq!(redis.smembers("ROUTERS"), vec![router.clone()]);
    for member in [&publisher, &router] {
        assert_eq!(
            redis.smembers(member),
            vec![" ".to_string()],
            "liveness key {member}"
        );
    }
    for key in &expected {
        let ttl = redis.ttl(key);
        assert!(
            (EXPIRE_SECS - 5..=EXPIRE_SECS).contains(&ttl),
            "TTL of {key} is {ttl}"
        );
    }
    Ok(())
}

/// Starts the proxy pod `name` with the Kubernetes matchmaker, `redis_url`
/// and pub/sub on (so the PUBLISHERS member names a real PUB port).
async fn start_proxy(cluster: &Cluster, name: &str, redis_url: &str) -> Result<ProxyProcess> {
    let (_, kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let pod = cluster.pod(name).await?;
    let expire = EXPIRE_SECS.to_string();
    ProxyProcess::start_with_env(
        cluster,
        &pod,
        &kubeconfig,
        &[
            ("ZMQ_PROXY_URL", redis_url),
            ("ZMQ_PROXY_PUBSUB", "true"),
            ("ZMQ_PROXY_TARGET_EXPIRE", &expire),
            ("ZMQ_PROXY_TARGET_UPDATE", UPDATE),
        ],
    )
    .await
}

fn addresses(proxy: &ProxyProcess) -> ProxyAddresses {
    ProxyAddresses {
        host: proxy.ip.clone(),
        frontend_port: proxy.frontend,
        backend_port: Some(proxy.backend),
        publisher_port: proxy.publisher,
        curve_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_in_kubernetes_and_redis_survives_a_redis_outage_and_sigterm_removes_both(
) -> Result<()> {
    let mut redis = Redis::start();
    let cluster = Cluster::new("cmm-both").await?;
    let proxy = start_proxy(&cluster, "proxy-both", &redis.url()).await?;
    assert!(proxy.publisher.is_some(), "pub/sub on: a PUB socket");
    let api = k8s_support::slices(&cluster.admin, &cluster.ns);

    // Both registrations, and ready.
    until("the proxy's EndpointSlice", TIMEOUT, || async {
        let listed = slice_proxies(&api, "proxy-both").await?;
        Ok((listed == vec![addresses(&proxy)]).then_some(()))
    })
    .await?;
    wait_for_oslo_records(&redis, &proxy, "oslo's records in Redis").await?;
    until("/readyz 200", TIMEOUT, || async {
        Ok((proxy.readyz() == Some(200)).then_some(()))
    })
    .await?;
    let log = proxy.log_text();
    assert!(
        log.contains("matchmaker: kubernetes (primary") && log.contains("kubernetes+redis"),
        "the start-up log names both backends:\n{log}"
    );

    // Redis goes away: refreshes fail on Redis only; the proxy stays ready,
    // registered in Kubernetes, and forwards.
    redis.kill();
    let outage = Instant::now();
    let traffic = Traffic::start(&proxy.frontend_endpoint(), &proxy.backend_endpoint())?;
    until("a failed Redis write in the log", TIMEOUT, || async {
        Ok(proxy
            .log_text()
            .contains("secondary matchmaker write failed")
            .then_some(()))
    })
    .await?;
    // Several refresh periods without Redis: readiness never drops.
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(4) {
        assert_eq!(proxy.readyz(), Some(200), "ready while Redis is down");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        slice_proxies(&api, "proxy-both").await?,
        vec![addresses(&proxy)],
        "still listed ready in Kubernetes"
    );
    let before = traffic.count();
    until("more replies through the proxy", TIMEOUT, || async {
        Ok((traffic.count() > before + 10).then_some(()))
    })
    .await?;
    let figures = traffic.finish();
    println!(
        "Redis down {:.1?}: {checks} /readyz checks all 200, {} of {} calls answered, longest gap {:?}",
        outage.elapsed(),
        figures.replies,
        figures.sent,
        figures.longest_gap
    );
    let warnings = proxy
        .log_text()
        .matches("secondary matchmaker write failed")
        .count();
    assert!(
        warnings <= 2,
        "failures are logged rate-bounded, not once per refresh: {warnings} lines"
    );

    // Redis is back, empty: the proxy writes its records again.
    redis.restart();
    let back = Instant::now();
    wait_for_oslo_records(
        &redis,
        &proxy,
        "oslo's records written again after the outage",
    )
    .await?;
    println!(
        "records back in Redis {:.2?} after it restarted",
        back.elapsed()
    );
    assert_eq!(proxy.readyz(), Some(200));

    // SIGTERM: both registrations go, and the process exits cleanly.
    proxy.terminate_cleanly().await?;
    assert_eq!(
        redis.keys(),
        Vec::<String>::new(),
        "SIGTERM removed every Redis record"
    );
    assert!(
        api.get_opt("proxy-both").await?.is_none(),
        "SIGTERM deleted the EndpointSlice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_does_not_delay_readiness_and_is_written_once_it_runs() -> Result<()> {
    // A port with nothing listening yet (the server starts later on it).
    let mut redis = Redis::start();
    redis.kill();
    let cluster = Cluster::new("cmm-late").await?;
    let proxy = start_proxy(&cluster, "proxy-late", &redis.url()).await?;
    let api = k8s_support::slices(&cluster.admin, &cluster.ns);
    until("/readyz 200 without Redis", TIMEOUT, || async {
        Ok((proxy.readyz() == Some(200)).then_some(()))
    })
    .await?;
    assert_eq!(
        slice_proxies(&api, "proxy-late").await?,
        vec![addresses(&proxy)]
    );
    let traffic = Traffic::start(&proxy.frontend_endpoint(), &proxy.backend_endpoint())?;

    redis.restart();
    let started = Instant::now();
    wait_for_oslo_records(&redis, &proxy, "oslo's records once Redis runs").await?;
    println!(
        "records in Redis {:.2?} after it started",
        started.elapsed()
    );
    assert_eq!(proxy.readyz(), Some(200));
    let figures = traffic.finish();
    assert!(figures.replies > 0, "{figures:?}");

    proxy.terminate_cleanly().await?;
    assert_eq!(redis.keys(), Vec::<String>::new());
    assert!(api.get_opt("proxy-late").await?.is_none());
    Ok(())
}
