//! Interop with unmodified oslo.messaging 8.1.4 (ZeroMQ driver, Redis
//! matchmaker) through our proxy: a Rust client calls an oslo server, and an
//! oslo client calls a Rust server, with and without acks, including remote
//! errors. oslo.messaging comes from PyPI into a venv under the target dir
//! (`tests/oslo/install.sh`, which applies its Python 3.11 fixes at install
//! time); the Python side is `tests/oslo/oslo_rpc.py`. Each test runs once
//! per forwarding engine.

mod rpc_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::{json, Value};
use zmq_proxy::matchmaker::redis::{RedisConfig, RedisMatchmaker};
use zmq_proxy::matchmaker::{Matchmaker, Target};
use zmq_proxy::protocol::MessageType;
use zmq_proxy::rpc::{
    ClientConfig, Incoming, RemoteError, Request, RpcError, RpcServer, ServerConfig,
};

use rpc_support::{client_config, connect, oslo_python, serve, server_config, Proxy, Redis, WAIT};

fn oslo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oslo")
}

/// A Python child process, SIGTERMed (then killed) when dropped.
struct Py {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Py {
    fn start(args: &[&str], acks: bool) -> Py {
        Py::start_with(args, acks, false)
    }

    fn start_with(args: &[&str], acks: bool, pubsub: bool) -> Py {
        let mut child = Command::new(oslo_python())
            .arg(oslo_dir().join("oslo_rpc.py"))
            .args(args)
            .env("OSLO_ACKS", if acks { "true" } else { "false" })
            .env("OSLO_PUBSUB", if pubsub { "true" } else { "false" })
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Py { child, lines }
    }

    /// Waits for a stdout line satisfying `pred`; panics with everything seen otherwise.
    fn expect_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if !l.starts_with("stderr: ") && pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("expected line not seen; output:\n{}", seen.join("\n"));
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oslo_call(url: &str, topic: &str, method: &str, args: Value, acks: bool) -> Value {
    let py = Py::start(&["call", url, topic, method, &args.to_string(), "20"], acks);
    let line = py.expect_line(Duration::from_secs(60), |l| l.starts_with('{'));
    serde_json::from_str(&line).expect("json line")
}

per_engine_async!(
    rust_and_oslo_call_each_other_through_the_proxy,
    super::rust_and_oslo_calls
);
async fn rust_and_oslo_calls(engine: &str) {
    let _ = oslo_python();
    let redis = Redis::start();
    let url = redis.url();
    let oslo_url = format!("{url}/");
    let proxy = Proxy::start_on(engine, &["-u", &url]);
    let mm: Arc<dyn Matchmaker> = Arc::new(
        RedisMatchmaker::new(RedisConfig {
            poll_period: Duration::from_millis(200),
            ..RedisConfig::from_url(&url).unwrap()
        })
        .unwrap(),
    );

    // oslo server (acks on), called by a Rust client with acks on.
    let oslo_server = Py::start(&["serve", &oslo_url, "oslo_topic"], true);
    oslo_server.expect_line(Duration::from_secs(60), |l| l == "ready");
    let client = connect(
        &mm,
        ClientConfig {
            acks: true,
            ack_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(20),
            ..client_config()
        },
        1,
    )
    .await;
    let target = Target::topic("oslo_topic");
    let reply = client
        .call(
            &target,
            &Request::new("echo", json!({"x": 1})).with_context(json!({"user": "rust"})),
        )
        .await
        .expect("rust -> oslo call");
    assert_eq!(
        reply,
        json!({"args": {"x": 1}, "server": "oslo", "ctxt": {"user": "rust"}})
    );
    match client.call(&target, &Request::new("fail", json!({}))).await {
        Err(RpcError::Remote(e)) => {
            assert_eq!(
                (e.class.as_str(), e.module.as_str()),
                ("ValueError", "builtins")
            );
            assert_eq!(e.message, "oslo failed on purpose");
            assert!(!e.tb.is_empty(), "oslo sends its traceback");
        }
        other => panic!("expected oslo's ValueError, got {other:?}"),
    }
    client
        .cast(&target, &Request::new("echo", json!({})))
        .await
        .expect("oslo server acks a cast");
    assert_eq!(
        client.stats().retries,
        0,
        "oslo acked every message in time"
    );
    // A server-specific target reaches it too (DEALER/oslo_topic/oslo-server).
    let reply = client
        .call(
            &Target::server("oslo_topic", "oslo-server"),
            &Request::new("echo", json!({"y": 2})),
        )
        .await
        .expect("call to oslo's server target");
    assert_eq!(reply["args"], json!({"y": 2}));

    // Rust servers, called by oslo clients. Acks must be on or off on both
    // sides alike: an oslo client without acks fails on an unexpected ACK
    // (it has no ack future to resolve), as it does with an oslo server.
    let handler = |inc: Incoming| async move {
        match inc.method() {
            Some("echo") => Ok(json!({"args": inc.args(), "server": "rust", "ctxt": inc.context})),
            _ => Err(RemoteError::new("KeyError", "no such method")),
        }
    };
    let mut servers = Vec::new();
    for acks in [false, true] {
        let target = Target::topic(format!("rust_acks_{acks}"));
        let server = serve(
            &mm,
            ServerConfig {
                acks,
                ..server_config(target)
            },
            handler,
            1,
        )
        .await;
        servers.push(server);
    }
    for acks in [false, true] {
        let topic = format!("rust_acks_{acks}");
        let r = oslo_call(&oslo_url, &topic, "echo", json!({"z": 3}), acks);
        assert_eq!(
            r,
            json!({"ok": {"args": {"z": 3}, "server": "rust", "ctxt": {"caller": "oslo"}}}),
            "oslo -> rust (acks {acks})"
        );
        let r = oslo_call(&oslo_url, &topic, "nope", json!({}), acks);
        assert_eq!(r["error"], "KeyError", "{r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap_or("")
                .contains("no such method"),
            "{r}"
        );
    }

    client.close().await;
    for server in servers {
        server.stop().await;
    }
    drop(oslo_server);
    drop(proxy);
}

per_engine_async!(
    casts_and_fanouts_cross_between_rust_and_oslo_over_pub_sub,
    super::casts_and_fanouts
);
async fn casts_and_fanouts(engine: &str) {
    let _ = oslo_python();
    let redis = Redis::start();
    let url = redis.url();
    let oslo_url = format!("{url}/");
    let proxy = Proxy::start_on(engine, &["-u", &url, "--pubsub"]);
    assert!(proxy.addresses.publisher_port.is_some());
    let mm: Arc<dyn Matchmaker> = Arc::new(
        RedisMatchmaker::new(RedisConfig {
            poll_period: Duration::from_millis(200),
            ..RedisConfig::from_url(&url).unwrap()
        })
        .unwrap(),
    );

    // Rust -> oslo: a routed cast, then fanouts over PUB/SUB (repeated until
    // oslo's SUB subscription has reached the proxy's PUB).
    let oslo_server = Py::start_with(&["serve", &oslo_url, "oslo_fan"], false, true);
    oslo_server.expect_line(Duration::from_secs(60), |l| l == "ready");
    let client = connect(
        &mm,
        ClientConfig {
            pubsub: true,
            ..client_config()
        },
        1,
    )
    .await;
    client
        .cast(
            &Target::topic("oslo_fan"),
            &Request::new("note", json!({"kind": "cast"})),
        )
        .await
        .unwrap();
    oslo_server.expect_line(WAIT, |l| l == r#"note {"kind": "cast"}"#);
    let fanouts = tokio::spawn({
        let client = client.clone();
        async move {
            for i in 0..100 {
                let _ = client
                    .fanout(
                        "oslo_fan",
                        &Request::new("note", json!({"kind": "fanout", "i": i})),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || {
        let l = oslo_server.expect_line(WAIT, |l| l.starts_with(r#"note {"i": "#));
        (oslo_server, l)
    })
    .await
    .unwrap()
    .1;
    assert!(line.contains(r#""kind": "fanout""#), "{line}");
    fanouts.abort();

    // oslo -> Rust: a cast and a fanout (oslo publishes through the proxy).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Incoming>();
    let handler = move |inc: Incoming| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(inc);
            Ok::<Value, RemoteError>(Value::Null)
        }
    };
    let server = RpcServer::start(
        Arc::clone(&mm),
        ServerConfig {
            host: "127.0.0.1".into(),
            pubsub: true,
            shutdown_grace: Duration::ZERO,
            ..ServerConfig::new(Target::topic("rust_fan"))
        },
        handler,
    )
    .await
    .unwrap();
    assert!(server.wait_ready(1, WAIT).await);
    let py = Py::start_with(
        &["cast", &oslo_url, "rust_fan", "note", r#"{"from": "oslo"}"#],
        false,
        true,
    );
    py.expect_line(Duration::from_secs(60), |l| l == "sent");
    let inc = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (inc.msg_type, inc.method()),
        (MessageType::Cast, Some("note"))
    );
    assert_eq!(inc.args(), &json!({"from": "oslo"}));
    assert_eq!(inc.context, json!({"caller": "oslo"}));
    let py = Py::start_with(
        &["fanout", &oslo_url, "rust_fan", "note", r#"{"fan": true}"#],
        false,
        true,
    );
    py.expect_line(Duration::from_secs(60), |l| l == "sent");
    let inc = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc.msg_type, MessageType::CastFanout);
    assert_eq!(inc.args(), &json!({"fan": true}));

    client.close().await;
    server.stop().await;
    drop(proxy);
}
