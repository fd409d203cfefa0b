//! The local-publisher DaemonSet doing its job on a real control plane: a
//! ZmqProxy with pub/sub and the local publisher on gets its DaemonSet pod
//! running on the real node as a container of the proxy image; that
//! process finds the central proxies through their EndpointSlices and
//! connects its SUB to every central PUB; and a fanout sent as a raw protocol-1.0 CAST_FANOUT to a
//! central frontend reaches a raw SUB connected to the local publisher.
//!
//! The local publisher is reached at its pod IP and the ZmqProxy's
//! `localPublisher.port`. Its DaemonSet's hostPort (the node's address in a
//! cluster) is not mapped here: the node's CNI chain has no `portmap`, which
//! would open the port on every address of this shared machine.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use common::*;
use harness::real_node::RealNode;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const NAME: &str = "fan";
/// Central proxies.
const REPLICAS: usize = 2;
/// A port no default uses, to show the spec's port is the one bound.
const LOCAL_PORT: u16 = 50014;
/// The proxies' metrics port (the spec's default).
fn metrics_port() -> i32 {
    zmq_proxy_operator::crd::Ports::default().metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_publisher_relays_fanout_from_the_central_proxies() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-lpub").await?;
    on_real_node(cp, &ns, async |node, _| relay(&client, &ns, node).await).await
}

/// The value of `zmq_proxy_connected_peers{socket="<socket>"}` at `metrics`.
async fn connected_peers(metrics: &str, socket: &str) -> Result<f64> {
    let (_, body) = http_get(metrics, "/metrics").await?;
    let sample = format!("zmq_proxy_connected_peers{{socket=\"{socket}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {sample:?} in the metrics"))
}

async fn relay(client: &Client, ns: &str, node: &RealNode) -> Result<()> {
    create_zp(
        client,
        ns,
        NAME,
        json!({
            "replicas": REPLICAS,
            "pubSub": { "enabled": true },
            "localPublisher": { "enabled": true, "port": LOCAL_PORT },
        }),
    )
    .await?;

    // The central proxies register; their EndpointSlices (as the status
    // reports them) name the PUB sockets.
    let zp = wait_zp(
        client,
        ns,
        NAME,
        "Ready with every proxy registered",
        LONG,
        |z| {
            condition(z, "Ready").is_some_and(|(s, _)| s == "True")
                && z.status.as_ref().is_some_and(|s| {
                    s.endpoints.iter().filter(|e| e.ready).count() == REPLICAS
                        && s.endpoints
                            .iter()
                            .all(|e| e.ports.contains_key("publisher"))
                })
        },
    )
    .await?;
    let endpoints = zp.status.map(|s| s.endpoints).unwrap_or_default();
    let central: BTreeSet<(String, i32, i32)> = endpoints
        .iter()
        .map(|e| {
            Ok((
                e.address.clone(),
                *e.ports.get("frontend").context("frontend port")?,
                *e.ports.get("publisher").context("publisher port")?,
            ))
        })
        .collect::<Result<_>>()?;
    println!("central proxies (address, frontend, publisher): {central:?}");

    // The DaemonSet pod runs on the node and is ready.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ds_name = format!("{NAME}-local-publisher");
    let node = node.node_name().to_string();
    let lp_pod = harness::wait::until(
        "the local-publisher pod ready on the node",
        LONG,
        || async {
            let Some(ds) = dss.get_opt(&ds_name).await? else {
                return Ok(None);
            };
            let selector = ds
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let ready = ds.status.map(|s| s.number_ready).unwrap_or(0);
            if ready < 1 || selector.is_empty() {
                return Ok(None);
            }
            let on_node: Vec<Pod> = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                })
                .collect();
            Ok(match on_node.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            })
        },
    )
    .await?;
    let lp_ip = lp_pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("the local publisher's pod IP")?;
    assert!(
        central.iter().all(|(ip, _, _)| *ip != lp_ip),
        "the local publisher has an address of its own"
    );
    let lp_metrics = format!("{lp_ip}:{}", metrics_port());

    // The local publisher's SUB is connected to every central PUB (found
    // through the EndpointSlices), and every central PUB sees it.
    harness::wait::until(
        "the local publisher connected to every central PUB",
        LONG,
        || async {
            let peers = connected_peers(&lp_metrics, "subscriber").await?;
            Ok((peers == REPLICAS as f64).then_some(()))
        },
    )
    .await?;
    for (ip, _, _) in &central {
        let metrics = format!("{ip}:{}", metrics_port());
        let peers = connected_peers(&metrics, "publisher").await?;
        assert!(peers >= 1.0, "central PUB at {ip} has {peers} subscribers");
    }
    let log = harness::real_node::container_log(client, ns, &lp_pod.name_any(), None).await?;
    for (ip, _, publisher) in &central {
        let endpoint = format!("tcp://{ip}:{publisher}");
        assert!(
            log.contains(&endpoint),
            "the local publisher's log names {endpoint}:\n{log}"
        );
    }

    // A raw SUB on the local publisher receives a fanout sent through each
    // central proxy.
    let lp_endpoint = format!("tcp://{lp_ip}:{LOCAL_PORT}");
    let central: Vec<(String, i32, i32)> = central.into_iter().collect();
    let received = tokio::task::spawn_blocking(move || fanout_through(&lp_endpoint, &central))
        .await
        .map_err(|e| anyhow!("fanout thread: {e}"))??;
    println!("{received}");
    Ok(())
}

/// Subscribes a raw SUB to the local publisher and, through each central
/// frontend in turn, sends CAST_FANOUTs (routing key = topic) until one
/// arrives on the SUB unchanged as `[topic, "1.0", "3", msg_id, payload]`.
/// The first sends may be lost while subscriptions travel two hops (SUB to
/// local PUB, local SUB to central PUB): that is ZeroMQ's slow joiner, not a
/// defect, hence the resending.
fn fanout_through(lp_endpoint: &str, central: &[(String, i32, i32)]) -> Result<String> {
    let ctx = zmq::Context::new();
    let topic = "lpub-test-topic";
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_subscribe(topic.as_bytes())?;
    sub.connect(lp_endpoint)?;
    let mut report = Vec::new();
    for (ip, frontend, _) in central {
        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        dealer.set_identity(format!("127.0.0.1/{}", uuid_like()).as_bytes())?;
        dealer.connect(&format!("tcp://{ip}:{frontend}"))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let mut sent = 0;
        let mut ids = Vec::new();
        let got = loop {
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "no fanout through {ip}:{frontend} reached the local publisher's SUB within 30 s ({sent} sent)"
                ));
            }
            let msg_id = format!("{}-{sent}", uuid_like());
            let payload =
                format!("[{{}}, {{\"method\": \"ping\", \"args\": {{\"via\": \"{ip}\"}}}}]");
            let frames: Vec<&[u8]> = vec![
                b"",
                b"1.0",
                b"3",
                topic.as_bytes(),
                msg_id.as_bytes(),
                payload.as_bytes(),
            ];
            dealer.send_multipart(frames, 0)?;
            ids.push(msg_id.clone());
            sent += 1;
            if sub.poll(zmq::POLLIN, 200)? > 0 {
                let m = sub.recv_multipart(0)?;
                break (m, msg_id, payload);
            }
        };
        let (frames, _, payload) = &got;
        // The SUB may receive an earlier copy than the last one sent; every
        // copy has the same shape.
        assert_eq!(frames.len(), 5, "{frames:?}");
        assert_eq!(frames[0], topic.as_bytes());
        assert_eq!(frames[1], b"1.0");
        assert_eq!(frames[2], b"3");
        assert!(
            ids.iter().any(|id| id.as_bytes() == frames[3].as_slice()),
            "message id is one that was sent"
        );
        assert_eq!(
            String::from_utf8_lossy(&frames[4]),
            payload.as_str(),
            "payload forwarded unchanged"
        );
        report.push(format!(
            "fanout via {ip}:{frontend} reached the local publisher's SUB after {:.2?} ({sent} sent)",
            started.elapsed()
        ));
        // Drain the copies still in flight before the next proxy's round.
        while sub.poll(zmq::POLLIN, 300)? > 0 {
            let _ = sub.recv_multipart(0)?;
        }
    }
    Ok(report.join("\n"))
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:032x}")
}
