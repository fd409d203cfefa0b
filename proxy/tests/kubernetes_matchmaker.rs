//! The Kubernetes matchmaker against a real control plane (the harness's
//! kube-apiserver + controller manager, or the cluster named by
//! `ZMQ_PROXY_TEST_KUBECONFIG`): proxy EndpointSlices written by the real
//! binary with only the Role the operator grants (taken from the operator
//! crate), garbage collection with the pod, SIGTERM order, watch-based
//! discovery and its delay, RPC through proxies found in Kubernetes, and RPC
//! server Leases.

mod k8s_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures::{StreamExt, TryStreamExt};
use harness::wait::until;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_support::{labels, Cluster, ProxyProcess, SERVICE, TIMEOUT};
use kube::api::{DynamicObject, ListParams, WatchEvent, WatchParams};

use kube::{Api, Client};
use zmq_proxy::matchmaker::kubernetes::endpoint_slice;
use zmq_proxy::matchmaker::kubernetes::{
    rbac, KubernetesConfig, KubernetesMatchmaker, PodIdentity,
};
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};

fn parse(o: &DynamicObject) -> Result<k8s_openapi::api::discovery::v1::EndpointSlice> {
    Ok(endpoint_slice::from_json(serde_json::to_value(o)?)?)
}

#[tokio::test]
async fn proxy_registers_its_slice_and_sigterm_drains_then_removes_it() -> Result<()> {
    let cluster = Cluster::new("kmm-sigterm").await?;
    let (_, kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let pod = cluster.pod("proxy-a").await?;
    // Idle for 3 s before it leaves, so the draining state lasts long
    // enough to see clients move away while the proxy still runs.
    let proxy = ProxyProcess::start_with_env(
        &cluster,
        &pod,
        &kubeconfig,
        &[("ZMQ_PROXY_DRAIN_QUIET_MS", "3000")],
    )
    .await?;
    let api = k8s_support::slices(&cluster.admin, &cluster.ns);
    // What a client sees: the matchmaker's proxy list, as RPC clients use it.
    let reader = KubernetesMatchmaker::new(
        cluster.admin.clone(),
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            service_name: Some(SERVICE.into()),
            ..Default::default()
        },
    );
    let mut chosen = reader.watch_proxies().await?;

    let slice = until("the proxy's EndpointSlice", TIMEOUT, || async {
        Ok(api.get_opt("proxy-a").await?)
    })
    .await?;
    let l = labels(&slice.metadata);
    assert_eq!(
        l.get("kubernetes.io/service-name").map(String::as_str),
        Some(SERVICE)
    );
    assert_eq!(
        l.get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("zmq-proxy.zmqproxy.io")
    );
    let owners = slice.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "Pod");
    assert_eq!(owners[0].name, "proxy-a");
    assert_eq!(Some(&owners[0].uid), pod.metadata.uid.as_ref());
    let managers: Vec<String> = slice
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "zmq-proxy"),
        "field managers: {managers:?}"
    );
    let typed = parse(&slice)?;
    assert_eq!(typed.address_type, "IPv4");
    assert_eq!(
        endpoint_slice::ready_proxies(&typed),
        vec![ProxyAddresses {
            host: proxy.ip.clone(),
            frontend_port: proxy.frontend,
            backend_port: Some(proxy.backend),
            publisher_port: proxy.publisher,
            curve_key: None,
        }]
    );
    let conditions = typed.endpoints[0].conditions.clone().unwrap_or_default();
    assert_eq!(conditions.ready, Some(true));
    until("/readyz 200 once registered", TIMEOUT, || async {
        Ok((proxy.readyz() == Some(200)).then_some(()))
    })
    .await?;
    let registered = ProxyAddresses {
        host: proxy.ip.clone(),
        frontend_port: proxy.frontend,
        backend_port: Some(proxy.backend),
        publisher_port: proxy.publisher,
        curve_key: None,
    };
    tokio::time::timeout(TIMEOUT, chosen.wait_for(|l| l.contains(&registered)))
        .await
        .map_err(|_| anyhow!("clients never saw the registered proxy"))??;

    // Record every change from now on, then SIGTERM.
    let rv = slice.metadata.resource_version.clone().unwrap_or_default();
    let mut events = api
        .watch(&WatchParams::default().fields("metadata.name=proxy-a"), &rv)
        .await?
        .boxed();
    proxy.process.signal(libc::SIGTERM);
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.try_next())
            .await
            .map_err(|_| anyhow!("no deletion within {TIMEOUT:?}; saw {seen:?}"))??
            .ok_or_else(|| anyhow!("watch ended; saw {seen:?}"))?;
        match event {
            WatchEvent::Modified(o) => {
                let c = parse(&o)?.endpoints[0]
                    .conditions
                    .clone()
                    .unwrap_or_default();
                seen.push(format!(
                    "modified ready={:?} serving={:?} terminating={:?}",
                    c.ready, c.serving, c.terminating
                ));
                if c.terminating == Some(true) {
                    // Clients stop choosing the draining proxy while it
                    // still runs (its slice is not deleted yet).
                    tokio::time::timeout(TIMEOUT, chosen.wait_for(|l| !l.contains(&registered)))
                        .await
                        .map_err(|_| anyhow!("clients kept choosing the draining proxy"))??;
                    assert!(
                        proxy.process.exited().is_none(),
                        "the proxy left before clients saw it draining"
                    );
                    assert!(api.get_opt("proxy-a").await?.is_some());
                }
            }
            WatchEvent::Deleted(_) => {
                seen.push("deleted".into());
                break;
            }
            other => seen.push(format!("{other:?}")),
        }
    }
    println!("after SIGTERM: {seen:?}");
    // Draining: not ready for new clients, still serving what reaches it,
    // terminating, as the API server stores it.
    assert_eq!(
        seen[0], "modified ready=Some(false) serving=Some(true) terminating=Some(true)",
        "first change after SIGTERM must mark the endpoint draining: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("deleted"));
    let exit = proxy
        .process
        .wait_timeout(TIMEOUT)
        .await
        .ok_or_else(|| anyhow!("proxy did not exit after SIGTERM"))?;
    assert!(
        exit.success(),
        "proxy exit: {exit}; log:\n{}",
        proxy.log_text()
    );
    Ok(())
}

#[tokio::test]
async fn slice_is_garbage_collected_with_its_pod() -> Result<()> {
    let cluster = Cluster::new("kmm-gc").await?;
    let (_, kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let pod = cluster.pod("proxy-gc").await?;
    let proxy = ProxyProcess::start(&cluster, &pod, &kubeconfig).await?;
    let api = k8s_support::slices(&cluster.admin, &cluster.ns);
    until("the proxy's EndpointSlice", TIMEOUT, || async {
        Ok(api.get_opt("proxy-gc").await?)
    })
    .await?;
    // As if the pod crashed for good: the process never deregisters.
    proxy.process.signal(libc::SIGKILL);
    proxy.process.wait_timeout(TIMEOUT).await;
    let started = Instant::now();
    cluster.delete_pod("proxy-gc").await?;
    until(
        "the garbage collector to delete the slice",
        TIMEOUT,
        || async { Ok(api.get_opt("proxy-gc").await?.is_none().then_some(())) },
    )
    .await?;
    println!(
        "slice garbage-collected {:?} after its pod was deleted",
        started.elapsed()
    );
    Ok(())
}

/// A proxy registered through the library, as pod `name` at `ip`.
async fn library_proxy(
    cluster: &Cluster,
    client: Client,
    name: &str,
    ip: &str,
) -> Result<(KubernetesMatchmaker, ProxyAddresses)> {
    let pod = cluster.pod(name).await?;
    let mm = KubernetesMatchmaker::new(
        client,
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            service_name: Some(SERVICE.into()),
            pod: Some(PodIdentity {
                name: name.into(),
                uid: pod.metadata.uid.clone(),
                ip: Some(ip.into()),
            }),
            ..Default::default()
        },
    );
    let addresses = ProxyAddresses {
        host: ip.into(),
        frontend_port: 50001,
        backend_port: Some(50002),
        publisher_port: None,
        curve_key: None,
    };
    Ok((mm, addresses))
}

/// Waits until the watched list satisfies `f`; returns how long it took.
async fn changed_within(
    rx: &mut tokio::sync::watch::Receiver<Vec<ProxyAddresses>>,
    what: &str,
    f: impl Fn(&[ProxyAddresses]) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| f(v)))
        .await
        .map_err(|_| anyhow!("watch never showed {what}"))??;
    Ok(started.elapsed())
}

#[tokio::test]
async fn watching_client_sees_proxies_come_and_go_without_polling() -> Result<()> {
    let cluster = Cluster::new("kmm-watch").await?;
    let (proxy_client, _) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let (client, _) = cluster
        .service_account("rpc-client", rbac::rpc_client_rules())
        .await?;
    let watcher = KubernetesMatchmaker::new(
        client,
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            service_name: Some(SERVICE.into()),
            ..Default::default()
        },
    );
    let (first, first_addr) =
        library_proxy(&cluster, proxy_client.clone(), "proxy-1", "10.253.255.201").await?;
    let (second, second_addr) =
        library_proxy(&cluster, proxy_client, "proxy-2", "10.253.255.202").await?;
    let ttl = Duration::from_secs(300);
    first.register_proxy(&first_addr, ttl).await?;

    let mut rx = watcher.watch_proxies().await?;
    assert_eq!(*rx.borrow_and_update(), vec![first_addr.clone()]);
    assert_eq!(watcher.proxies().await?, vec![first_addr.clone()]);

    // Discovery delay: from the start of the registering call to the
    // watcher's list changing (includes the apply's round trip).
    let mut delays = Vec::new();
    let t = Instant::now();
    second.register_proxy(&second_addr, ttl).await?;
    changed_within(&mut rx, "the second proxy", |v| v.contains(&second_addr)).await?;
    delays.push(("appear", t.elapsed()));

    let t = Instant::now();
    first.drain_proxy(&first_addr).await?;
    changed_within(&mut rx, "the first proxy draining", |v| {
        !v.contains(&first_addr)
    })
    .await?;
    delays.push(("drain (not ready)", t.elapsed()));
    assert_eq!(*rx.borrow(), vec![second_addr.clone()]);

    let t = Instant::now();
    second.unregister_proxy(&second_addr).await?;
    changed_within(&mut rx, "the second proxy leaving", |v| v.is_empty()).await?;
    delays.push(("leave (deleted)", t.elapsed()));

    let t = Instant::now();
    second.register_proxy(&second_addr, ttl).await?;
    changed_within(&mut rx, "the second proxy returning", |v| {
        v == [second_addr.clone()]
    })
    .await?;
    delays.push(("return", t.elapsed()));
    first.unregister_proxy(&first_addr).await?;

    for (what, d) in &delays {
        println!("discovery delay ({what}): {:.1} ms", d.as_secs_f64() * 1e3);
    }
    // "Within a second" is the requirement; allow slack for a loaded machine
    // (figures above are the measurement).
    for (what, d) in &delays {
        assert!(*d < Duration::from_secs(5), "{what} took {d:?}");
    }
    Ok(())
}

#[tokio::test]
async fn server_leases_register_expire_and_are_cleaned_up() -> Result<()> {
    let cluster = Cluster::new("kmm-lease").await?;
    let (server_client, _) = cluster
        .service_account("rpc-server", rbac::rpc_server_rules())
        .await?;
    let (client, _) = cluster
        .service_account("rpc-client", rbac::rpc_client_rules())
        .await?;
    let config = |pod: Option<PodIdentity>| KubernetesConfig {
        namespace: Some(cluster.ns.clone()),
        service_name: Some(SERVICE.into()),
        pod,
        ..Default::default()
    };
    let server_pod = cluster.pod("server-0").await?;
    let in_pod = KubernetesMatchmaker::new(
        server_client.clone(),
        config(Some(PodIdentity {
            name: "server-0".into(),
            uid: server_pod.metadata.uid.clone(),
            ip: None,
        })),
    );
    let outside = KubernetesMatchmaker::new(server_client, config(None));
    let reader = KubernetesMatchmaker::new(client, config(None));
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.ns);

    let topic = Target::topic("compute");
    let on_host = Target::server("compute", "node-1");
    let long = Duration::from_secs(300);
    let short = Duration::from_secs(3);
    let a = "127.0.0.1/compute/node-1/aaaa";
    let b = "127.0.0.1/compute/bbbb";
    in_pod.register_server(&topic, a, long).await?;
    in_pod.register_server(&on_host, a, long).await?;

    let mut rx = reader.watch_servers(&topic).await?;
    assert_eq!(*rx.borrow_and_update(), vec![a.to_string()]);
    assert_eq!(reader.servers(&on_host).await?, vec![a.to_string()]);

    // A server outside any pod, with a short TTL, that then crashes.
    let t = Instant::now();
    outside.register_server(&topic, b, short).await?;
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| v.len() == 2)).await??;
    println!("server Lease seen by the watcher after {:?}", t.elapsed());
    assert_eq!(*rx.borrow(), vec![b.to_string(), a.to_string()], "sorted");
    drop(outside);
    let crashed = Instant::now();
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| *v == [a.to_string()])).await??;
    let expired_after = crashed.elapsed();
    println!("crashed server left the watched list after {expired_after:?} (TTL {short:?})");
    assert!(
        expired_after >= short - Duration::from_millis(500),
        "expired too early: {expired_after:?}"
    );
    assert_eq!(reader.servers(&topic).await?, vec![a.to_string()]);
    // The reader (allowed to delete) removes the expired Lease.
    let name_b = zmq_proxy::matchmaker::kubernetes::server_lease::lease_name(&topic, b);
    until("the expired Lease deleted by a reader", TIMEOUT, || async {
        Ok(leases.get_opt(&name_b).await?.is_none().then_some(()))
    })
    .await?;

    // Clean shutdown: unregister removes it at once.
    in_pod
        .register_server(&topic, "127.0.0.1/compute/cccc", long)
        .await?;
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| v.len() == 2)).await??;
    in_pod
        .unregister_server(&topic, "127.0.0.1/compute/cccc")
        .await?;
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| *v == [a.to_string()])).await??;

    // The pod goes: its Leases go with it (garbage collector).
    let selector = zmq_proxy::matchmaker::kubernetes::server_lease::all_servers_selector();
    assert_eq!(
        leases
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .len(),
        2
    );
    cluster.delete_pod("server-0").await?;
    until("the pod's Leases garbage-collected", TIMEOUT, || async {
        Ok(leases
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    tokio::time::timeout(TIMEOUT, rx.wait_for(|v| v.is_empty())).await??;
    Ok(())
}

#[tokio::test]
async fn proxy_role_cannot_touch_leases_or_pods() -> Result<()> {
    // The operator's Role is exactly what registration needs: check a few
    // things it must not allow, so the tests above prove least privilege.
    let cluster = Cluster::new("kmm-rbac").await?;
    let (client, _) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cluster.ns);
    let err = leases
        .list(&ListParams::default())
        .await
        .err()
        .ok_or_else(|| anyhow!("listing Leases allowed"))?;
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &cluster.ns);
    let err = pods
        .list(&ListParams::default())
        .await
        .err()
        .ok_or_else(|| anyhow!("listing Pods allowed"))?;
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    Ok(())
}

fn k8s_matchmaker(client: Client, ns: &str) -> Arc<dyn Matchmaker> {
    Arc::new(KubernetesMatchmaker::new(
        client,
        KubernetesConfig {
            namespace: Some(ns.into()),
            service_name: Some(SERVICE.into()),
            ..Default::default()
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_through_proxies_found_in_kubernetes_follows_them_coming_and_going() -> Result<()> {
    use zmq_proxy::rpc::{
        ClientConfig, Incoming, RemoteError, Request, RpcClient, RpcServer, ServerConfig,
    };

    let cluster = Cluster::new("kmm-rpc").await?;
    let (_, proxy_kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let (server_client, _) = cluster
        .service_account("rpc-server", rbac::rpc_server_rules())
        .await?;
    let (client_client, _) = cluster
        .service_account("rpc-client", rbac::rpc_client_rules())
        .await?;
    let pod_a = cluster.pod("proxy-a").await?;
    let pod_b = cluster.pod("proxy-b").await?;
    let a = ProxyProcess::start(&cluster, &pod_a, &proxy_kubeconfig).await?;

    let target = Target::topic("k8s-e2e");
    let server = RpcServer::start(
        k8s_matchmaker(server_client, &cluster.ns),
        ServerConfig {
            host: "127.0.0.1".into(),
            acks: true,
            shutdown_grace: Duration::from_millis(200),
            ..ServerConfig::new(target.clone())
        },
        |inc: Incoming| async move { Ok::<_, RemoteError>(inc.args().clone()) },
    )
    .await?;
    assert!(
        server.wait_ready(1, TIMEOUT).await,
        "server registered and connected"
    );
    let client = RpcClient::connect(
        k8s_matchmaker(client_client, &cluster.ns),
        ClientConfig {
            host: "127.0.0.1".into(),
            acks: true,
            ack_timeout: Duration::from_secs(1),
            retries: 3,
            call_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
    )
    .await?;
    assert!(client.wait_for_proxies(1, TIMEOUT).await);

    // Calls run the whole time; every one must succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = tokio::spawn({
        let client = client.clone();
        let target = target.clone();
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                match client
                    .call(&target, &Request::new("echo", serde_json::json!({"i": i})))
                    .await
                {
                    Ok(v) if v["i"] == i => ok += 1,
                    other => failed.push(format!("call {i}: {other:?}")),
                }
            }
            (ok, failed)
        }
    });

    // A second proxy appears: client and server connect to it.
    let t = Instant::now();
    let b = ProxyProcess::start(&cluster, &pod_b, &proxy_kubeconfig).await?;
    assert!(
        client.wait_for_proxies(2, TIMEOUT).await,
        "client connects to the second proxy"
    );
    assert!(
        server.wait_ready(2, TIMEOUT).await,
        "server connects to the second proxy"
    );
    println!(
        "second proxy started and connected by client and server in {:?}",
        t.elapsed()
    );
    let stats_before = client.stats();
    until("calls through both proxies", TIMEOUT, || async {
        Ok((client.stats().replies >= stats_before.replies + 50).then_some(()))
    })
    .await?;

    // The first leaves (SIGTERM: not ready, deregistered, drained, gone).
    a.terminate_cleanly().await?;
    let after_exit = client.stats();
    until("calls through the remaining proxy", TIMEOUT, || async {
        Ok((client.stats().replies >= after_exit.replies + 50).then_some(()))
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = calls.await?;
    let stats = client.stats();
    println!(
        "{ok} calls ok, {} failed; client sent {}, retries {} ({} after proxy-a exited)",
        failed.len(),
        stats.sent,
        stats.retries,
        stats.retries - after_exit.retries
    );
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    client.close().await;
    server.stop().await;
    b.process.signal(libc::SIGTERM);
    b.process.wait_timeout(TIMEOUT).await;
    Ok(())
}

/// A CURVE proxy publishes its public key in its EndpointSlice; an RPC
/// server and client that have only their own keys read it from there and
/// call through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curve_proxy_publishes_its_key_and_rpc_peers_use_it() -> Result<()> {
    use zmq_proxy::curve::{PublicKey, SecretKey};
    use zmq_proxy::rpc::{
        ClientConfig, CurveClient, Incoming, RemoteError, Request, RpcClient, RpcServer,
        ServerConfig,
    };

    let pair = || -> Result<(String, String)> {
        let pair = zmq::CurveKeyPair::new()?;
        Ok((
            zmq::z85_encode(&pair.public_key)?,
            zmq::z85_encode(&pair.secret_key)?,
        ))
    };
    let (proxy_public, proxy_secret) = pair()?;
    let (server_public, server_secret) = pair()?;
    let (client_public, client_secret) = pair()?;

    let cluster = Cluster::new("kmm-curve").await?;
    let dir = cluster.cp.dir().join(format!("{}-curve", cluster.ns));
    std::fs::create_dir_all(&dir)?;
    let (secret_file, authorized_file) = (dir.join("secret-key"), dir.join("authorized_keys"));
    std::fs::write(&secret_file, format!("{proxy_secret}\n"))?;
    std::fs::write(
        &authorized_file,
        format!("{server_public} 127.0.0.1/curve/*\n{client_public} 127.0.0.1/*\n"),
    )?;
    let (_, proxy_kubeconfig) = cluster
        .service_account("proxy", zmq_proxy_operator::resources::proxy_role_rules())
        .await?;
    let (server_client, _) = cluster
        .service_account("rpc-server", rbac::rpc_server_rules())
        .await?;
    let (client_client, _) = cluster
        .service_account("rpc-client", rbac::rpc_client_rules())
        .await?;
    let pod = cluster.pod("proxy-a").await?;
    let proxy = ProxyProcess::start_with_env(
        &cluster,
        &pod,
        &proxy_kubeconfig,
        &[
            (
                "ZMQ_PROXY_CURVE_SECRET_KEY_FILE",
                &secret_file.to_string_lossy(),
            ),
            (
                "ZMQ_PROXY_CURVE_AUTHORIZED_KEYS",
                &authorized_file.to_string_lossy(),
            ),
        ],
    )
    .await?;

    // The slice carries the key; readers turn it into the proxy's key.
    let api = k8s_support::slices(&cluster.admin, &cluster.ns);
    let slice = until("the proxy's EndpointSlice", TIMEOUT, || async {
        Ok(api.get_opt("proxy-a").await?)
    })
    .await?;
    let annotations = slice.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(endpoint_slice::CURVE_KEY_ANNOTATION),
        Some(&proxy_public),
        "{annotations:?}"
    );
    let listed = endpoint_slice::ready_proxies(&parse(&slice)?);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].curve_key,
        Some(PublicKey::from_z85(&proxy_public)?)
    );

    let keys = |secret: &str| -> Result<CurveClient> {
        Ok(CurveClient::with_matchmaker_keys(SecretKey::from_z85(
            secret,
        )?))
    };
    let target = Target::topic("curve");
    let server = RpcServer::start(
        k8s_matchmaker(server_client, &cluster.ns),
        ServerConfig {
            host: "127.0.0.1".into(),
            shutdown_grace: Duration::from_millis(200),
            curve: Some(keys(&server_secret)?),
            ..ServerConfig::new(target.clone())
        },
        |inc: Incoming| async move { Ok::<_, RemoteError>(inc.args().clone()) },
    )
    .await?;
    assert!(
        server.wait_ready(1, TIMEOUT).await,
        "server registered and connected"
    );
    let client = RpcClient::connect(
        k8s_matchmaker(client_client, &cluster.ns),
        ClientConfig {
            host: "127.0.0.1".into(),
            call_timeout: Duration::from_secs(10),
            curve: Some(keys(&client_secret)?),
            ..ClientConfig::default()
        },
    )
    .await?;
    assert!(client.wait_for_proxies(1, TIMEOUT).await);
    let reply = client
        .call(
            &target,
            &Request::new("echo", serde_json::json!({"curve": true})),
        )
        .await?;
    assert_eq!(reply, serde_json::json!({"curve": true}));
    client.close().await;
    server.stop().await;
    proxy.terminate_cleanly().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn registrant_deletes_expired_leases_of_its_target() -> Result<()> {
    // No watcher runs here: the only one to clean up is the next registrant.
    let cluster = Cluster::new("kmm-sweep").await?;
    let (server_client, _) = cluster
        .service_account("rpc-server", rbac::rpc_server_rules())
        .await?;
    let mm = KubernetesMatchmaker::new(
        server_client,
        KubernetesConfig {
            namespace: Some(cluster.ns.clone()),
            ..Default::default()
        },
    );
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.ns);
    let target = Target::topic("sweep");
    let crashed = "127.0.0.1/sweep/crashed";
    mm.register_server(&target, crashed, Duration::from_secs(1))
        .await?;
    let name = zmq_proxy::matchmaker::kubernetes::server_lease::lease_name(&target, crashed);
    assert!(leases.get_opt(&name).await?.is_some());
    until("the crashed server's Lease to expire", TIMEOUT, || async {
        Ok(mm.servers(&target).await?.is_empty().then_some(()))
    })
    .await?;
    assert!(
        leases.get_opt(&name).await?.is_some(),
        "expired, but nobody deleted it yet"
    );
    mm.register_server(&target, "127.0.0.1/sweep/next", Duration::from_secs(60))
        .await?;
    assert!(
        leases.get_opt(&name).await?.is_none(),
        "the next registrant deletes it"
    );
    assert_eq!(mm.servers(&target).await?, ["127.0.0.1/sweep/next"]);
    Ok(())
}

#[test]
fn operator_grants_proxies_exactly_the_matchmaker_rules() {
    // The tests above run proxies with the operator's Role; this keeps the
    // matchmaker's published rules (proxy/rbac/) the same.
    assert_eq!(
        zmq_proxy_operator::resources::proxy_role_rules(),
        rbac::proxy_rules()
    );
}
