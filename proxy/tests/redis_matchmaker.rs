//! The Redis matchmaker against a real `redis-server` (started by the test
//! on a free port, no persistence) and real `zmq-proxy` processes: oslo's
//! keys, members and TTLs exactly, refresh, removal on SIGTERM, expiry after
//! SIGKILL, RPC server records, and a Redis restart that neither stops
//! forwarding nor loses registrations.

mod rpc_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zmq_proxy::matchmaker::redis::{RedisConfig, RedisMatchmaker};
use zmq_proxy::matchmaker::{Matchmaker, ProxyAddresses, Target};
use zmq_proxy::rpc::{Incoming, RemoteError, Request, RpcServer, ServerConfig};

use rpc_support::{
    client_config, connect, echo_args, serve, server_config, wait_for, Proxy, Redis, WAIT,
};

fn matchmaker(redis: &Redis, poll: Duration, warmup: Duration) -> Arc<dyn Matchmaker> {
    Arc::new(
        RedisMatchmaker::new(RedisConfig {
            poll_period: poll,
            warmup,
            ..RedisConfig::from_url(&redis.url()).unwrap()
        })
        .unwrap(),
    )
}

fn members_of(p: &ProxyAddresses) -> (String, String) {
    let publisher = format!(
        "127.0.0.1:{},127.0.0.1:{}",
        p.publisher_port.unwrap_or(p.frontend_port),
        p.frontend_port
    );
    let router = format!("127.0.0.1:{}", p.backend_port.unwrap_or(p.frontend_port));
    (publisher, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_writes_oslo_keys_with_ttls_refreshes_them_and_removes_them_on_sigterm() {
    let redis = Redis::start();
    let url = redis.url();
    let mut proxy = Proxy::start(&[
        "--pubsub",
        "-u",
        &url,
        "--target-expire",
        "30",
        "--target-update",
        "1",
    ]);
    let (publisher, router) = members_of(&proxy.addresses);
    assert!(proxy.addresses.publisher_port.is_some());

    let keys = wait_for(WAIT, || {
        let k = redis.keys();
        (k.len() == 4).then_some(k)
    })
    .await
    .unwrap_or_else(|| panic!("keys: {:?}", redis.keys()));
    let mut expected = vec![
        "PUBLISHERS".to_string(),
        "ROUTERS".to_string(),
        publisher.clone(),
        router.clone(),
    ];
    expected.sort();
    assert_eq!(keys, expected, "exactly oslo's keys");
    assert_eq!(redis.smembers("PUBLISHERS"), vec![publisher.clone()]);
    assert_eq!(redis.smembers("ROUTERS"), vec![router.clone()]);
    assert_eq!(
        redis.smembers(&publisher),
        vec![" ".to_string()],
        "liveness key holds \" \""
    );
    assert_eq!(redis.smembers(&router), vec![" ".to_string()]);
    for k in &keys {
        let ttl = redis.ttl(k);
        assert!((25..=30).contains(&ttl), "TTL of {k} is {ttl}");
    }

    // Refresh: once a TTL has dropped below 30, a later refresh puts it back.
    wait_for(WAIT, || (redis.ttl("ROUTERS") < 30).then_some(()))
        .await
        .expect("TTL counts down");
    wait_for(WAIT, || {
        (redis.ttl("ROUTERS") == 30 && redis.ttl(&router) == 30).then_some(())
    })
    .await
    .expect("refresh extends the TTL");

    // Our reader sees the proxy.
    let mm = matchmaker(&redis, Duration::from_millis(200), Duration::ZERO);
    assert_eq!(mm.proxies().await.unwrap(), vec![proxy.addresses.clone()]);

    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        redis.keys(),
        Vec::<String>::new(),
        "SIGTERM removes every record"
    );
    assert!(mm.proxies().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_killed_proxy_expire_and_readers_drop_it() {
    let redis = Redis::start();
    let url = redis.url();
    // Pub/sub off: the PUBLISHERS member names the frontend twice.
    let mut proxy = Proxy::start(&["-u", &url, "--target-expire", "2", "--target-update", "1"]);
    let (publisher, _) = members_of(&proxy.addresses);
    assert_eq!(
        publisher,
        format!("127.0.0.1:{0},127.0.0.1:{0}", proxy.addresses.frontend_port)
    );
    let mm = matchmaker(&redis, Duration::from_millis(100), Duration::ZERO);
    let mut rx = mm.watch_proxies().await.unwrap();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.len() == 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().clone(), vec![proxy.addresses.clone()]);
    // Refreshes keep a 2 s registration alive well past 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mm.proxies().await.unwrap().len(), 1);

    proxy.sigkill();
    let gone = Instant::now();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.is_empty()))
        .await
        .unwrap()
        .unwrap();
    println!(
        "killed proxy left the watched list after {:.2?}",
        gone.elapsed()
    );

    // A member whose liveness key is gone is not listed even if the set lives on.
    let mut c = redis.conn().unwrap();
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg("ROUTERS")
        .arg("127.0.0.1:9")
        .ignore()
        .cmd("SADD")
        .arg("PUBLISHERS")
        .arg("127.0.0.1:8,127.0.0.1:7")
        .ignore()
        .cmd("SADD")
        .arg("127.0.0.1:8,127.0.0.1:7")
        .arg(" ")
        .ignore()
        .query(&mut c)
        .unwrap();
    assert!(
        mm.proxies().await.unwrap().is_empty(),
        "router without liveness key ignored"
    );
    let _: () = redis::cmd("SADD")
        .arg("127.0.0.1:9")
        .arg(" ")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        mm.proxies().await.unwrap(),
        vec![ProxyAddresses {
            host: "127.0.0.1".into(),
            frontend_port: 7,
            backend_port: Some(9),
            publisher_port: Some(8),
            curve_key: None,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_servers_register_oslo_dealer_records_and_remove_them_on_stop() {
    let redis = Redis::start();
    let mm = matchmaker(&redis, Duration::from_millis(200), Duration::ZERO);
    let handler = |_: Incoming| async { Ok::<Value, RemoteError>(Value::Null) };
    let server = RpcServer::start(
        Arc::clone(&mm),
        ServerConfig {
            host: "127.0.0.1".into(),
            shutdown_grace: Duration::ZERO,
            liveness: zmq_proxy::matchmaker::Liveness {
                expire: Duration::from_secs(300),
                update: Duration::from_secs(180),
            },
            ..ServerConfig::new(Target::server("compute", "node1"))
        },
        handler,
    )
    .await
    .unwrap();
    // Unreachable without a proxy: not registered yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redis.keys(), Vec::<String>::new());
    let url = redis.url();
    let _proxy = Proxy::start(&["-u", &url]);
    assert!(
        server.wait_ready(1, WAIT).await,
        "registers once a proxy is reachable"
    );
    let dealer_keys = || {
        redis
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("DEALER/") || k.contains("/compute/"))
            .collect::<Vec<_>>()
    };
    let id = server.identity().to_string();
    assert!(id.starts_with("127.0.0.1/compute/node1/"));
    let mut expected = vec![
        "DEALER/compute".to_string(),
        "DEALER/compute/node1".to_string(),
        id.clone(),
    ];
    expected.sort();
    assert_eq!(dealer_keys(), expected);
    assert_eq!(redis.smembers("DEALER/compute"), vec![id.clone()]);
    assert_eq!(redis.smembers("DEALER/compute/node1"), vec![id.clone()]);
    assert_eq!(redis.smembers(&id), vec![" ".to_string()]);
    for k in &expected {
        assert!(
            (295..=300).contains(&redis.ttl(k)),
            "TTL of {k}: {}",
            redis.ttl(k)
        );
    }
    assert_eq!(
        mm.servers(&Target::topic("compute")).await.unwrap(),
        vec![id.clone()]
    );
    assert_eq!(
        mm.servers(&Target::server("compute", "node1"))
            .await
            .unwrap(),
        vec![id.clone()]
    );
    assert!(mm
        .servers(&Target::server("compute", "node2"))
        .await
        .unwrap()
        .is_empty());
    server.stop().await;
    assert_eq!(dealer_keys(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_registration_and_no_call() {
    let mut redis = Redis::start();
    let url = redis.url();
    // Refresh period far beyond the test: records come back by replay, not by refresh.
    let proxy = Proxy::start(&["-u", &url, "--target-update", "120"]);
    let mm = matchmaker(&redis, Duration::from_millis(200), Duration::from_secs(2));
    let target = Target::topic("svc");
    let server = serve(&mm, server_config(target.clone()), echo_args(), 1).await;
    let client = connect(&mm, client_config(), 1).await;
    let before = redis.keys();
    // PUBLISHERS, ROUTERS, DEALER/svc and three liveness keys.
    assert_eq!(before.len(), 6, "{before:?}");
    let mut n = 0u64;
    let mut longest = Duration::ZERO;
    let mut call = || {
        n += 1;
        let (client, target) = (client.clone(), target.clone());
        let i = n;
        async move {
            let t = Instant::now();
            let r = client.call(&target, &Request::new("echo", json!(i))).await;
            assert_eq!(r.unwrap_or_else(|e| panic!("call {i}: {e}")), json!(i));
            t.elapsed()
        }
    };
    for _ in 0..20 {
        longest = longest.max(call().await);
    }
    redis.kill();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(1) {
        longest = longest.max(call().await);
    }
    redis.restart();
    assert!(redis.keys().is_empty(), "a restarted redis is empty");
    let restarted = Instant::now();
    loop {
        longest = longest.max(call().await);
        if redis.keys() == before {
            break;
        }
        assert!(
            restarted.elapsed() < WAIT,
            "records not back: {:?}",
            redis.keys()
        );
    }
    let back_after = restarted.elapsed();
    for _ in 0..20 {
        longest = longest.max(call().await);
    }
    println!("redis restart: {n} calls, all answered; records back {back_after:.2?} after restart; longest call {longest:.2?}");
    client.close().await;
    server.stop().await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_proxies_appearing_and_leaving_in_redis() {
    let redis = Redis::start();
    let url = redis.url();
    let poll = Duration::from_millis(200);
    let mm = matchmaker(&redis, poll, Duration::ZERO);
    let mut first = Proxy::start(&["-u", &url]);
    let target = Target::topic("svc");
    let server = serve(&mm, server_config(target.clone()), echo_args(), 1).await;
    let client = connect(&mm, client_config(), 1).await;
    assert_eq!(
        client
            .call(&target, &Request::new("echo", json!(1)))
            .await
            .unwrap(),
        json!(1)
    );

    // A second proxy appears: client and server connect to it.
    let appeared = Instant::now();
    let second = Proxy::start(&["-u", &url]);
    assert!(client.wait_for_proxies(2, WAIT).await);
    assert!(server.wait_ready(2, WAIT).await);
    let join_delay = appeared.elapsed();

    // The first leaves (SIGTERM unregisters it): both let it go, and calls
    // keep working through the second.
    let mut rx = mm.watch_proxies().await.unwrap();
    first.sigterm();
    let left = Instant::now();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|l| l == std::slice::from_ref(&second.addresses)),
    )
    .await
    .unwrap()
    .unwrap();
    let leave_delay = left.elapsed();
    assert!(first.wait_exit(WAIT).is_some_and(|s| s.success()));
    for i in 0..10 {
        assert_eq!(
            client
                .call(&target, &Request::new("echo", json!(i)))
                .await
                .unwrap(),
            json!(i)
        );
    }
    println!(
        "redis discovery (poll {poll:?}): second proxy connected {join_delay:.2?} after its start; \
         first left the lists {leave_delay:.2?} after SIGTERM"
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_servers_with_passwords_get_every_record_and_one_outage_is_invisible() {
    let mut a = Redis::start_with_password(Some("s3cret"));
    let b = Redis::start_with_password(Some("other"));
    let url = format!("zmq+redis://{},{}", a.host(), b.host());
    let proxy = Proxy::start(&["-u", &url]);
    let (publisher, router) = members_of(&proxy.addresses);
    for r in [&a, &b] {
        wait_for(WAIT, || {
            (r.smembers("ROUTERS") == [router.clone()]).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("redis {} has no record: {:?}", r.port, r.keys()));
        assert_eq!(r.smembers("PUBLISHERS"), vec![publisher.clone()]);
    }
    // Without the password a client is refused.
    let anonymous =
        RedisMatchmaker::from_url(&format!("zmq+redis://127.0.0.1:{}", a.port)).unwrap();
    assert!(anonymous.proxies().await.is_err());

    let mm = matchmaker_url(&url);
    assert_eq!(mm.proxies().await.unwrap(), vec![proxy.addresses.clone()]);
    // One server down: reads fall back to the other, writes still succeed.
    a.kill();
    assert_eq!(mm.proxies().await.unwrap(), vec![proxy.addresses.clone()]);
    mm.register_server(&Target::topic("t"), "h/t/x", Duration::from_secs(30))
        .await
        .expect("a write succeeds while one redis is up");
    assert_eq!(b.smembers("DEALER/t"), vec!["h/t/x".to_string()]);
    // Back, empty: our records are written to it again.
    a.restart();
    wait_for(WAIT, || {
        (a.smembers("ROUTERS") == [router.clone()]
            && a.smembers("DEALER/t") == ["h/t/x".to_string()])
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("records not replayed: {:?}", a.keys()));
}

fn matchmaker_url(url: &str) -> Arc<dyn Matchmaker> {
    Arc::new(
        RedisMatchmaker::new(RedisConfig {
            poll_period: Duration::from_millis(200),
            warmup: Duration::ZERO,
            ..RedisConfig::from_url(url).unwrap()
        })
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_router_proxies_are_found_and_used_through_redis() {
    let redis = Redis::start();
    let url = redis.url();
    let proxy = Proxy::start(&["-u", &url, "--mode", "single-router"]);
    assert_eq!(proxy.addresses.backend_port, None);
    let fe = format!("127.0.0.1:{}", proxy.addresses.frontend_port);
    wait_for(WAIT, || {
        (redis.smembers("ROUTERS") == [fe.clone()]).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("ROUTERS names the frontend: {:?}", redis.keys()));
    let mm = matchmaker(&redis, Duration::from_millis(200), Duration::ZERO);
    assert_eq!(mm.proxies().await.unwrap(), vec![proxy.addresses.clone()]);
    let target = Target::topic("single");
    let server = serve(&mm, server_config(target.clone()), echo_args(), 1).await;
    let client = connect(&mm, client_config(), 1).await;
    for i in 0..5 {
        assert_eq!(
            client
                .call(&target, &Request::new("echo", json!(i)))
                .await
                .unwrap(),
            json!(i)
        );
    }
    client.close().await;
    server.stop().await;
}

/// The proxy's Redis commands, as `redis-cli monitor` shows them, are the
/// ones oslo.messaging 8.1.4's proxy sends (captured from
/// `oslo-messaging-zmq-proxy --url zmq+redis://...`), plus the removal on
/// SIGTERM that oslo's `RouterUpdater.cleanup` would send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_sends_oslos_exact_command_sequence() {
    let redis = Redis::start();
    let mut monitor = KillOnDrop(
        std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli monitor"),
    );
    let stdout = monitor.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // redis-cli prints OK once it monitors.
    assert_eq!(rx.recv_timeout(WAIT).as_deref(), Ok("OK"));
    let url = redis.url();
    let mut proxy = Proxy::start(&["--pubsub", "-u", &url, "--target-expire", "300"]);
    let (p, r) = members_of(&proxy.addresses);
    wait_for(WAIT, || (redis.keys().len() == 4).then_some(()))
        .await
        .expect("registered");
    proxy.sigterm();
    assert!(proxy.wait_exit(WAIT).is_some_and(|s| s.success()));
    let q = |s: &str| format!("\"{s}\"");
    let expected: Vec<String> = [
        vec!["SADD", "PUBLISHERS", &p],
        vec!["EXPIRE", "PUBLISHERS", "300"],
        vec!["SADD", &p, " "],
        vec!["EXPIRE", &p, "300"],
        vec!["SADD", "ROUTERS", &r],
        vec!["EXPIRE", "ROUTERS", "300"],
        vec!["SADD", &r, " "],
        vec!["EXPIRE", &r, "300"],
        vec!["SREM", "PUBLISHERS", &p],
        vec!["SREM", &p, " "],
        vec!["SREM", "ROUTERS", &r],
        vec!["SREM", &r, " "],
    ]
    .iter()
    .map(|c| c.iter().map(|a| q(a)).collect::<Vec<_>>().join(" "))
    .collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < expected.len() && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        // `1700000000.123456 [0 127.0.0.1:5555] "SADD" ...`; our own reads
        // and keepalives are not part of the comparison.
        let Some((_, command)) = line.split_once("] ") else {
            continue;
        };
        if command.starts_with("\"SADD\"")
            || command.starts_with("\"EXPIRE\"")
            || command.starts_with("\"SREM\"")
        {
            seen.push(command.to_string());
        }
    }
    drop(monitor);
    assert_eq!(seen, expected);
}

/// A helper process killed (by PID) when the test ends, also on panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
