//! The RPC library against real `zmq-proxy` processes (static matchmaker):
//! call, cast, fanout and notify round trips (routed and pub/sub), remote
//! errors, timeouts, acks with retry=0, duplicate suppression and
//! round-robin.

mod rpc_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use zmq_proxy::matchmaker::{Matchmaker, Target};
use zmq_proxy::protocol::{dealer_request, Delivery, MessageType};
use zmq_proxy::rpc::{
    ClientConfig, Incoming, RemoteError, Request, RpcClient, RpcError, RpcServer, SendOptions,
    ServerConfig,
};

use rpc_support::{connect as client, serve, static_matchmaker, Proxy, WAIT};

fn server_config(target: Target) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        shutdown_grace: Duration::from_millis(100),
        ..ServerConfig::new(target)
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        host: "127.0.0.1".into(),
        call_timeout: Duration::from_secs(10),
        discovery_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// A handler: `echo` returns its args plus the server identity, `fail`
/// raises, `sleep` sleeps `args.ms`; every request is reported on `seen`.
fn handler(
    name: &'static str,
    seen: mpsc::UnboundedSender<(String, Incoming)>,
) -> impl Fn(Incoming) -> futures::future::BoxFuture<'static, Result<Value, RemoteError>>
       + Send
       + Sync
       + 'static {
    move |inc: Incoming| {
        let seen = seen.clone();
        Box::pin(async move {
            let _ = seen.send((name.to_string(), inc.clone()));
            match inc.method() {
                Some("echo") => Ok(json!({"args": inc.args(), "server": name, "ctx": inc.context})),
                Some("fail") => Err(RemoteError::new("ValueError", "it failed on purpose")),
                Some("sleep") => {
                    let ms = inc.args()["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!("slept"))
                }
                _ => Ok(Value::Null),
            }
        })
    }
}

async fn start_server(
    mm: &Arc<dyn Matchmaker>,
    config: ServerConfig,
    name: &'static str,
    seen: &mpsc::UnboundedSender<(String, Incoming)>,
    proxies: usize,
) -> RpcServer {
    serve(mm, config, handler(name, seen.clone()), proxies).await
}

async fn recv_n(
    rx: &mut mpsc::UnboundedReceiver<(String, Incoming)>,
    n: usize,
) -> Vec<(String, Incoming)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(x)) => out.push(x),
            _ => panic!("only {} of {n} requests arrived", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cast_fanout_and_notify_round_trip_through_a_proxy() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = start_server(&mm, server_config(Target::server("svc", "a")), "a", &tx, 1).await;
    let b = start_server(&mm, server_config(Target::server("svc", "b")), "b", &tx, 1).await;
    let notifications = start_server(
        &mm,
        server_config(Target::topic("notifications.info")),
        "n",
        &tx,
        1,
    )
    .await;
    let c = client(&mm, client_config(), 1).await;

    // CALL to one named server, with context, namespace and version.
    let req = Request::new("echo", json!({"x": 1}))
        .with_context(json!({"user": "u1"}))
        .with_namespace("ns")
        .with_version("1.1");
    let reply = c
        .call(&Target::server("svc", "b"), &req)
        .await
        .expect("call");
    assert_eq!(
        reply,
        json!({"args": {"x": 1}, "server": "b", "ctx": {"user": "u1"}})
    );
    let (name, inc) = recv_n(&mut rx, 1).await.remove(0);
    assert_eq!(name, "b");
    assert_eq!(inc.msg_type, MessageType::Call);
    assert_eq!(inc.message["namespace"], "ns");
    assert_eq!(inc.message["version"], "1.1");
    assert!(
        inc.sender.starts_with("127.0.0.1/"),
        "client identity {}",
        inc.sender
    );

    // CAST to the topic.
    c.cast(
        &Target::topic("svc"),
        &Request::new("noop", json!({"k": "v"})),
    )
    .await
    .expect("cast");
    let (_, inc) = recv_n(&mut rx, 1).await.remove(0);
    assert_eq!(inc.msg_type, MessageType::Cast);
    assert_eq!(inc.args(), &json!({"k": "v"}));

    // FANOUT reaches both servers of the topic, once each.
    let copies = c
        .fanout("svc", &Request::new("noop", json!({})))
        .await
        .expect("fanout");
    assert_eq!(copies, 2);
    let mut got: Vec<String> = recv_n(&mut rx, 2)
        .await
        .into_iter()
        .map(|(n, i)| {
            assert_eq!(i.msg_type, MessageType::CastFanout);
            n
        })
        .collect();
    got.sort();
    assert_eq!(got, vec!["a", "b"]);

    // NOTIFY to `notifications.info`.
    let sent = c
        .notify(
            "notifications",
            "info",
            &json!({}),
            &json!({"event_type": "e", "payload": {"p": 1}}),
        )
        .await
        .expect("notify");
    assert_eq!(sent, 1);
    let (name, inc) = recv_n(&mut rx, 1).await.remove(0);
    assert_eq!((name.as_str(), inc.msg_type), ("n", MessageType::Notify));
    assert_eq!(inc.message["payload"], json!({"p": 1}));

    // Nothing else arrived.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err());
    c.close().await;
    for s in [a, b, notifications] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_notify_over_pub_sub() {
    let proxy = Proxy::start(&["--pubsub"]);
    assert!(proxy.addresses.publisher_port.is_some());
    let mm = static_matchmaker(&[&proxy]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pubsub = |t: Target| ServerConfig {
        pubsub: true,
        ..server_config(t)
    };
    let a = start_server(&mm, pubsub(Target::topic("svc")), "a", &tx, 1).await;
    let b = start_server(&mm, pubsub(Target::topic("svc")), "b", &tx, 1).await;
    let n = start_server(&mm, pubsub(Target::topic("alerts.error")), "n", &tx, 1).await;
    let c = client(
        &mm,
        ClientConfig {
            pubsub: true,
            ..client_config()
        },
        1,
    )
    .await;
    // SUB subscriptions take a moment to reach the PUB: repeat until both see one.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "fanout never reached both servers: {seen:?}"
        );
        assert_eq!(
            c.fanout("svc", &Request::new("noop", json!({})))
                .await
                .unwrap(),
            1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok((name, inc)) = rx.try_recv() {
            assert_eq!(inc.msg_type, MessageType::CastFanout);
            *seen.entry(name).or_default() += 1;
        }
    }
    assert!(!seen.contains_key("n"));
    loop {
        assert!(Instant::now() < deadline, "notification never arrived");
        c.notify("alerts", "error", &json!({}), &json!({"m": 1}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        if got
            .iter()
            .any(|(name, i)| name == "n" && i.msg_type == MessageType::Notify)
        {
            assert!(got.iter().all(|(name, _)| name == "n"), "{got:?}");
            break;
        }
    }
    c.close().await;
    for s in [a, b, n] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_errors_timeouts_and_missing_servers() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let (tx, _rx) = mpsc::unbounded_channel();
    let s = start_server(&mm, server_config(Target::topic("svc")), "s", &tx, 1).await;
    let c = client(&mm, client_config(), 1).await;
    let target = Target::topic("svc");

    match c.call(&target, &Request::new("fail", json!({}))).await {
        Err(RpcError::Remote(e)) => {
            assert_eq!(e.class, "ValueError");
            assert_eq!(e.message, "it failed on purpose");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    let started = Instant::now();
    let r = c
        .call_with(
            &target,
            &Request::new("sleep", json!({"ms": 2000})),
            SendOptions {
                timeout: Some(Duration::from_millis(300)),
                retries: None,
            },
        )
        .await;
    let took = started.elapsed();
    assert!(matches!(r, Err(RpcError::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // The slow call's late reply is ignored; the next call gets its own.
    let r = c
        .call(&target, &Request::new("echo", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(r["args"], json!({"n": 2}));

    let quick = RpcClient::connect(
        Arc::clone(&mm),
        ClientConfig {
            discovery_timeout: Duration::from_millis(200),
            ..client_config()
        },
    )
    .await
    .unwrap();
    let r = quick
        .call(&Target::topic("nobody"), &Request::new("echo", json!({})))
        .await;
    assert!(matches!(r, Err(RpcError::NoServers(_))), "{r:?}");
    quick.close().await;
    c.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_retry_zero_means_one_send_and_retries_grow() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    // An identity registered but never connected: nothing ever acks.
    let ghost = Target::topic("ghost");
    mm.register_server(&ghost, "127.0.0.1/ghost/none", Duration::from_secs(60))
        .await
        .unwrap();
    let c = client(
        &mm,
        ClientConfig {
            acks: true,
            ack_timeout: Duration::from_millis(100),
            ack_timeout_multiplier: 2,
            retries: 3,
            ..client_config()
        },
        1,
    )
    .await;
    let started = Instant::now();
    let r = c
        .cast_with(
            &ghost,
            &Request::new("x", json!({})),
            SendOptions {
                timeout: None,
                retries: Some(0),
            },
        )
        .await;
    assert!(matches!(r, Err(RpcError::NoAck { attempts: 1 })), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(c.stats().retries, 0);
    assert_eq!(c.stats().sent, 1);

    // Default 3 retries: 4 sends, waits 100+200+400+800 ms.
    let started = Instant::now();
    let r = c.cast(&ghost, &Request::new("x", json!({}))).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(RpcError::NoAck { attempts: 4 })), "{r:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert_eq!(c.stats().retries, 3);
    assert_eq!(c.stats().sent, 5);

    // A live server acks at once: no retry (after a first call, which may
    // need one while the server's connection to the proxy completes).
    let (tx, _rx) = mpsc::unbounded_channel();
    let s = start_server(
        &mm,
        ServerConfig {
            acks: true,
            ..server_config(Target::topic("svc"))
        },
        "s",
        &tx,
        1,
    )
    .await;
    assert_eq!(
        c.call(&Target::topic("svc"), &Request::new("echo", json!(0)))
            .await
            .unwrap()["args"],
        json!(0)
    );
    let retries = c.stats().retries;
    c.cast(&Target::topic("svc"), &Request::new("noop", json!({})))
        .await
        .expect("acked cast");
    assert_eq!(
        c.call(&Target::topic("svc"), &Request::new("echo", json!(1)))
            .await
            .unwrap()["args"],
        json!(1)
    );
    assert_eq!(c.stats().retries, retries);
    assert!(c.stats().acks >= 2);
    c.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_handled_once_and_answered_from_the_cache() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start_server(
        &mm,
        ServerConfig {
            acks: true,
            ..server_config(Target::topic("svc"))
        },
        "s",
        &tx,
        1,
    )
    .await;

    // A raw DEALER client sends the very same CALL frames three times.
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_identity(b"127.0.0.1/raw-client").unwrap();
    dealer.set_rcvtimeo(10_000).unwrap();
    dealer
        .connect(&proxy.addresses.frontend_endpoint())
        .unwrap();
    let payload = Request::new("echo", json!({"once": true})).encode();
    let frames = dealer_request(
        MessageType::Call,
        s.identity().as_bytes(),
        b"dup-id-1",
        &[&payload],
    );
    let mut acks = 0;
    let mut replies = Vec::new();
    for copy in 1..=3 {
        dealer.send_multipart(frames.iter(), 0).unwrap();
        // Every copy gets an ack and a reply: the first from the handler,
        // the others from the cache (the handler is quick, so the reply is
        // cached before the next copy arrives).
        let deadline = Instant::now() + WAIT;
        while acks < copy || replies.len() < copy {
            assert!(
                Instant::now() < deadline,
                "no answer: acks={acks} replies={}",
                replies.len()
            );
            let msg = dealer.recv_multipart(0).expect("answer within 10 s");
            let d = Delivery::parse(&msg).expect("valid delivery");
            assert_eq!(d.message_id, b"dup-id-1");
            assert_eq!(d.sender, s.identity().as_bytes());
            match d.msg_type {
                MessageType::Ack => acks += 1,
                MessageType::Reply => replies.push(d.payload[0].clone()),
                t => panic!("unexpected {t}"),
            }
        }
    }
    assert_eq!((acks, replies.len()), (3, 3));
    assert!(replies.windows(2).all(|w| w[0] == w[1]));
    // The handler ran once.
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(got[0].1.args(), &json!({"once": true}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "handler ran again for a duplicate");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_rotate_over_servers_and_follow_them_leaving() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let (tx, _rx) = mpsc::unbounded_channel();
    let a = start_server(&mm, server_config(Target::topic("svc")), "a", &tx, 1).await;
    let b = start_server(&mm, server_config(Target::topic("svc")), "b", &tx, 1).await;
    let c = client(&mm, client_config(), 1).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for i in 0..10 {
        let r = c
            .call(&Target::topic("svc"), &Request::new("echo", json!(i)))
            .await
            .unwrap();
        *count
            .entry(r["server"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(count.get("a"), Some(&5), "{count:?}");
    assert_eq!(count.get("b"), Some(&5), "{count:?}");
    // "a" leaves cleanly: every later call goes to "b", none is lost.
    a.stop().await;
    for i in 0..6 {
        let r = c
            .call(&Target::topic("svc"), &Request::new("echo", json!(i)))
            .await
            .unwrap();
        assert_eq!(r["server"], "b");
    }
    c.close().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_rechooses_the_server_when_the_chosen_one_left() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let target = Target::topic("svc");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start_server(
        &mm,
        ServerConfig {
            acks: true,
            ..server_config(target.clone())
        },
        "s",
        &tx,
        1,
    )
    .await;
    // A dead identity that sorts first, so round-robin picks it first.
    let ghost = "127.0.0.1/svc/!ghost";
    mm.register_server(&target, ghost, Duration::from_secs(60))
        .await
        .unwrap();
    let c = client(
        &mm,
        ClientConfig {
            acks: true,
            ack_timeout: Duration::from_millis(300),
            retries: 3,
            ..client_config()
        },
        1,
    )
    .await;
    let cast = tokio::spawn({
        let (c, target) = (c.clone(), target.clone());
        async move {
            c.cast(&target, &Request::new("noop", json!({"n": 1})))
                .await
        }
    });
    // The ghost leaves the matchmaker before the ack timeout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    mm.unregister_server(&target, ghost).await.unwrap();
    cast.await
        .unwrap()
        .expect("the retry went to the live server");
    assert_eq!(c.stats().retries, 1);
    let (name, inc) = recv_n(&mut rx, 1).await.remove(0);
    assert_eq!((name.as_str(), inc.args()), ("s", &json!({"n": 1})));
    c.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_unregisters_first_and_lets_running_handlers_reply() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let target = Target::topic("svc");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start_server(&mm, server_config(target.clone()), "s", &tx, 1).await;
    let c = client(&mm, client_config(), 1).await;
    let slow = tokio::spawn({
        let (c, target) = (c.clone(), target.clone());
        async move {
            c.call(&target, &Request::new("sleep", json!({"ms": 800})))
                .await
        }
    });
    recv_n(&mut rx, 1).await;
    let mut servers = mm.watch_servers(&target).await.unwrap();
    let stopping = tokio::spawn(s.stop());
    // Unregistered at once, long before the handler is done.
    tokio::time::timeout(
        Duration::from_millis(500),
        servers.wait_for(|l| l.is_empty()),
    )
    .await
    .expect("unregistered first")
    .unwrap();
    assert!(!slow.is_finished());
    assert_eq!(
        slow.await.unwrap().expect("reply of the running handler"),
        json!("slept")
    );
    stopping.await.unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_skip_a_listed_server_that_stopped_acking() {
    let proxy = Proxy::start(&[]);
    let mm = static_matchmaker(&[&proxy]);
    let target = Target::topic("svc");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start_server(
        &mm,
        ServerConfig {
            acks: true,
            ..server_config(target.clone())
        },
        "s",
        &tx,
        1,
    )
    .await;
    // A crashed server: still registered (until its TTL), never acks.
    mm.register_server(&target, "127.0.0.1/svc/!crashed", Duration::from_secs(60))
        .await
        .unwrap();
    let c = client(
        &mm,
        ClientConfig {
            acks: true,
            ack_timeout: Duration::from_millis(200),
            retries: 1,
            ..client_config()
        },
        1,
    )
    .await;
    // The first cast goes to the crashed server: its retries keep that
    // server (a re-send elsewhere could run the message twice) and fail.
    let r = c
        .cast(&target, &Request::new("noop", json!({"n": 0})))
        .await;
    assert!(matches!(r, Err(RpcError::NoAck { attempts: 2 })), "{r:?}");
    // Every later request goes to the live server, without a retry.
    let retries = c.stats().retries;
    for n in 1..=6 {
        c.cast(&target, &Request::new("noop", json!({"n": n})))
            .await
            .expect("acked by the live server");
    }
    assert_eq!(c.stats().retries, retries);
    let got = recv_n(&mut rx, 6).await;
    assert!(got.iter().all(|(name, _)| name == "s"));
    c.close().await;
    s.stop().await;
}
