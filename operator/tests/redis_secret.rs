//! A ZmqProxy naming a Redis URL Secret, end to end: the operator passes the
//! Secret's URL to the proxy pods, which then register in Kubernetes (the
//! ZmqProxy's status lists them from their EndpointSlices) and also in
//! oslo's Redis layout, with the ZmqProxy's TTL, in a real `redis-server`;
//! scaled to zero, the pods are SIGTERMed and remove their Redis records.
//!
//! The proxies are containers of the proxy image on the real node; Redis
//! runs on the host, listening on the node's address (the pods' gateway),
//! which is where they reach it.

mod common;

use std::process::Command;

use anyhow::{anyhow, ensure, Context, Result};
use common::*;
use harness::process::{Process, ProcessSpec};
use harness::real_node::NODE_IP;
use harness::ControlPlane;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use zmq_proxy_operator::crd::ZmqProxy;

const NAME: &str = "oslo";
const EXPIRE: i64 = 60;

/// A throwaway `redis-server` on a free port of the node's address, with a
/// password (as a Redis reachable from pods would have; it also keeps
/// Redis's protected mode, which refuses unauthenticated peers that are not
/// on loopback, out of the way), killed with the test.
struct Redis {
    _process: Process,
    port: u16,
}

/// The password of the test's Redis: in the URL Secret, as users put it.
const PASSWORD: &str = "s3cret-for-the-test";

impl Redis {
    async fn start(cp: &ControlPlane) -> Result<Redis> {
        let port = harness::net::free_port()?;
        let spec = ProcessSpec::new(
            "redis-server",
            "redis-server",
            cp.dir().join(format!("redis-{port}.log")),
        )
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            &NODE_IP.to_string(),
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let process = Process::spawn(&spec).context("starting redis-server")?;
        let redis = Redis {
            _process: process,
            port,
        };
        harness::wait::until("redis-server to answer", SHORT, || async {
            Ok((redis.cli(&["PING"])? == vec!["PONG"]).then_some(()))
        })
        .await?;
        Ok(redis)
    }

    /// Runs one redis-cli command; the reply's lines.
    fn cli(&self, args: &[&str]) -> Result<Vec<String>> {
        let out = Command::new("redis-cli")
            .args([
                "--no-auth-warning",
                "-a",
                PASSWORD,
                "-h",
                &NODE_IP.to_string(),
                "-p",
                &self.port.to_string(),
                "--raw",
            ])
            .args(args)
            .output()
            .context("running redis-cli")?;
        ensure!(out.status.success(), "redis-cli {args:?}: {:?}", out);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        // An empty reply prints one empty line.
        lines.retain(|l| !l.is_empty());
        lines.sort();
        Ok(lines)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxies_register_in_kubernetes_and_in_the_secrets_redis() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-redis").await?;
    // Redis after the node: it listens on the address the node's bridge
    // brings up (and stops before the node takes it down).
    on_real_node(cp, &ns, async |_, _| {
        let redis = Redis::start(cp).await?;
        scenario(&client, &ns, &redis).await
    })
    .await
}

async fn scenario(client: &kube::Client, ns: &str, redis: &Redis) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "redis" },
        "stringData": { "url": format!("zmq+redis://:{PASSWORD}@{NODE_IP}:{}", redis.port) },
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    create_zp(
        client,
        ns,
        NAME,
        json!({
            "replicas": 1,
            "pubSub": { "enabled": true },
            "matchmaker": {
                "redisUrlSecret": { "name": "redis", "key": "url" },
                "targetExpireSeconds": EXPIRE,
                "targetUpdateSeconds": 5,
            },
        }),
    )
    .await?;

    // Registered in Kubernetes: the status lists the proxy from its slice.
    let zp = wait_zp(
        client,
        ns,
        NAME,
        "Ready with the proxy registered",
        LONG,
        |z| {
            condition(z, "Ready").is_some_and(|(s, _)| s == "True")
                && z.status
                    .as_ref()
                    .is_some_and(|s| s.endpoints.iter().filter(|e| e.ready).count() == 1)
        },
    )
    .await?;
    let endpoint = zp
        .status
        .and_then(|s| s.endpoints.into_iter().next())
        .ok_or_else(|| anyhow!("no endpoint"))?;
    let port = |name: &str| -> Result<i32> {
        endpoint
            .ports
            .get(name)
            .copied()
            .with_context(|| format!("{name} port"))
    };
    let ip = endpoint.address.clone();
    let publisher = format!("{ip}:{},{ip}:{}", port("publisher")?, port("frontend")?);
    let router = format!("{ip}:{}", port("backend")?);

    // And in Redis, in oslo's layout, with the ZmqProxy's TTL.
    let mut keys = vec![
        "PUBLISHERS".to_string(),
        "ROUTERS".to_string(),
        publisher.clone(),
        router.clone(),
    ];
    keys.sort();
    harness::wait::until("oslo's records in Redis", LONG, || async {
        Ok((redis.cli(&["KEYS", "*"])? == keys).then_some(()))
    })
    .await?;
    assert_eq!(
        redis.cli(&["SMEMBERS", "PUBLISHERS"])?,
        vec![publisher.clone()]
    );
    assert_eq!(redis.cli(&["SMEMBERS", "ROUTERS"])?, vec![router.clone()]);
    for key in &keys {
        let ttl: i64 = redis
            .cli(&["TTL", key])?
            .first()
            .context("TTL reply")?
            .parse()?;
        assert!(
            (EXPIRE - 10..=EXPIRE).contains(&ttl),
            "TTL of {key} is {ttl}"
        );
    }
    println!("registered in Kubernetes and Redis: {publisher} / {router}");

    // Scaled to zero, the pod is deleted and SIGTERMed; it removes its
    // Redis records on the way out.
    let zps: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    zps.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 0 } })),
    )
    .await?;
    harness::wait::until("the Redis records removed", LONG, || async {
        Ok(redis.cli(&["KEYS", "*"])?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}
