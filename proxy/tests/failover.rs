//! Failover: three proxies, acks on, a steady stream of calls and casts
//! from several tasks, and one proxy SIGKILLed mid-stream. Every call must
//! return its own answer and every cast's handler must run exactly once.
//! Prints the number of calls, casts and retries and the longest stall (a
//! figure, not an assertion).

mod rpc_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zmq_proxy::matchmaker::Target;
use zmq_proxy::rpc::{ClientConfig, Incoming, RemoteError, Request, ServerConfig};

use rpc_support::{client_config, connect, serve, server_config, static_matchmaker, Proxy, WAIT};

const WORKERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_stream_loses_no_call_and_duplicates_no_cast() {
    let mut proxies = [Proxy::start(&[]), Proxy::start(&[]), Proxy::start(&[])];
    let mm = static_matchmaker(&proxies.iter().collect::<Vec<_>>());
    let target = Target::topic("failover");

    // Handler runs per cast id, across both servers.
    let casts_handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let handled = Arc::clone(&casts_handled);
        let handler = move |inc: Incoming| {
            let handled = Arc::clone(&handled);
            async move {
                match inc.method() {
                    Some("cast") => {
                        let id = inc.args()["id"].as_u64().unwrap_or(u64::MAX);
                        *handled.lock().unwrap().entry(id).or_default() += 1;
                        Ok(Value::Null)
                    }
                    Some("double") => Ok(json!(inc.args()["n"].as_u64().unwrap_or(0) * 2)),
                    _ => Err(RemoteError::new("NotFound", "no such method")),
                }
            }
        };
        let server = serve(
            &mm,
            ServerConfig {
                acks: true,
                shutdown_grace: Duration::from_millis(100),
                ..server_config(target.clone())
            },
            handler,
            3,
        )
        .await;
        servers.push(server);
    }
    let client = connect(
        &mm,
        ClientConfig {
            acks: true,
            ack_timeout: Duration::from_millis(250),
            ack_timeout_multiplier: 2,
            retries: 5,
            call_timeout: Duration::from_secs(20),
            ..client_config()
        },
        3,
    )
    .await;
    // Warm up: every proxy has seen both servers and the client.
    for n in 0..12 {
        assert_eq!(
            client
                .call(&target, &Request::new("double", json!({"n": n})))
                .await
                .unwrap(),
            json!(n * 2)
        );
    }
    let warmup_retries = client.stats().retries;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let client = client.clone();
        let target = target.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut casts = Vec::new();
            let mut longest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = (w as u64) << 32 | i;
                i += 1;
                let t = Instant::now();
                if i.is_multiple_of(2) {
                    let r = client
                        .call(&target, &Request::new("double", json!({"n": id})))
                        .await
                        .unwrap_or_else(|e| panic!("call {id} failed: {e}"));
                    assert_eq!(r, json!(id * 2), "call {id} got another call's answer");
                    calls += 1;
                } else {
                    client
                        .cast(&target, &Request::new("cast", json!({"id": id})))
                        .await
                        .unwrap_or_else(|e| panic!("cast {id} not acked: {e}"));
                    casts.push(id);
                }
                longest = longest.max(t.elapsed());
            }
            (calls, casts, longest)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = started.elapsed();
    proxies[1].sigkill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut calls = 0;
    let mut casts = Vec::new();
    let mut longest = Duration::ZERO;
    for t in tasks {
        let (c, k, l) = t.await.expect("worker");
        calls += c;
        casts.extend(k);
        longest = longest.max(l);
    }
    let elapsed = started.elapsed();
    // Acked casts have been received; give the handlers a moment to finish.
    let handled = rpc_support::wait_for(WAIT, || {
        let h = casts_handled.lock().unwrap();
        casts.iter().all(|id| h.contains_key(id)).then(|| h.clone())
    })
    .await
    .expect("every acked cast was handled");
    let twice: Vec<_> = handled.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "casts handled more than once: {twice:?}");
    assert_eq!(handled.len(), casts.len(), "handled casts nobody sent?");
    let stats = client.stats();
    println!(
        "failover: {calls} calls + {} casts in {elapsed:.2?} ({WORKERS} workers), proxy 2 of 3 SIGKILLed at {killed_at:.2?}; \
         retries {} (warm-up {warmup_retries}), acks {}, replies {}, longest stall {longest:.2?}",
        casts.len(),
        stats.retries - warmup_retries,
        stats.acks,
        stats.replies
    );
    assert!(calls > 0 && !casts.is_empty());
    client.close().await;
    for s in servers {
        s.stop().await;
    }
}
