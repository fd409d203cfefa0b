//! CURVE security of the proxy, on both engines, with real sockets: CURVE
//! peers (Rust `zmq` and pyzmq) exchange protocol-1.0 calls through a proxy
//! started with `--curve-secret-key-file` and `--curve-authorized-keys`;
//! unknown keys, a wrong server key and a stolen identity are refused and
//! counted while authorized traffic keeps flowing; the authorized keys
//! rotate by rewriting the file, without a restart; the Rust RPC library
//! calls through such a proxy with its CURVE client keys. The native
//! engine refuses at the handshake what the libzmq engine can only drop
//! per message (a stolen identity, a removed key): the `native_*` tests.

mod common;
mod rpc_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{delivery, expect, recv, request, send, Engine, Proxy, WAIT};

/// A CURVE key pair in Z85.
#[derive(Clone)]
struct Pair {
    public: String,
    secret: String,
}

impl Pair {
    fn new() -> Pair {
        let pair = zmq::CurveKeyPair::new().unwrap();
        Pair {
            public: zmq::z85_encode(&pair.public_key).unwrap(),
            secret: zmq::z85_encode(&pair.secret_key).unwrap(),
        }
    }
}

/// The proxy's key files in a directory of their own, removed when dropped.
struct KeyFiles {
    dir: PathBuf,
    proxy: Pair,
}

impl KeyFiles {
    fn new(authorized: &str) -> KeyFiles {
        let dir = std::env::temp_dir().join(format!("zmq-proxy-curve-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let proxy = Pair::new();
        let secret = dir.join("secret.key");
        std::fs::write(&secret, format!("{}\n", proxy.secret)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let files = KeyFiles { dir, proxy };
        files.authorize(authorized);
        files
    }

    fn secret(&self) -> PathBuf {
        self.dir.join("secret.key")
    }

    fn authorized(&self) -> PathBuf {
        self.dir.join("authorized.keys")
    }

    /// Replaces the authorized-keys file at once (write and rename, as a
    /// Secret volume does), so the proxy never reads half a file.
    fn authorize(&self, text: &str) {
        let tmp = self
            .dir
            .join(format!(".authorized-{}", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.authorized()).unwrap();
    }

    fn start_proxy(&self, engine: Engine, extra: &[&str]) -> Proxy {
        let secret = self.secret();
        let authorized = self.authorized();
        let mut args = vec![
            "--curve-secret-key-file",
            secret.to_str().unwrap(),
            "--curve-authorized-keys",
            authorized.to_str().unwrap(),
        ];
        args.extend(extra);
        Proxy::start_on(engine, &args)
    }
}

impl Drop for KeyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CURVE DEALER with `identity` and key pair `pair`, trusting `server`.
fn curve_dealer(
    ctx: &zmq::Context,
    identity: &str,
    pair: &Pair,
    server: &str,
    endpoint: &str,
) -> zmq::Socket {
    let s = unconnected_curve_dealer(ctx, Some(identity), pair, server);
    s.connect(endpoint).unwrap();
    s
}

/// [`curve_dealer`] before it connects (`identity` `None`: the proxy
/// makes one up).
fn unconnected_curve_dealer(
    ctx: &zmq::Context,
    identity: Option<&str>,
    pair: &Pair,
    server: &str,
) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    if let Some(identity) = identity {
        s.set_identity(identity.as_bytes()).unwrap();
    }
    s.set_linger(0).unwrap();
    s.set_reconnect_ivl(10).unwrap();
    s.set_reconnect_ivl_max(100).unwrap();
    s.set_curve_serverkey(&zmq::z85_decode(server).unwrap())
        .unwrap();
    s.set_curve_publickey(&zmq::z85_decode(&pair.public).unwrap())
        .unwrap();
    s.set_curve_secretkey(&zmq::z85_decode(&pair.secret).unwrap())
        .unwrap();
    s
}

/// The monitor of `socket` for `events` (set before it connects, so no
/// event is missed).
fn monitor(ctx: &zmq::Context, socket: &zmq::Socket, events: &[zmq::SocketEvent]) -> zmq::Socket {
    let mask = events
        .iter()
        .fold(0, |mask, event| mask | i32::from(event.to_raw()));
    let endpoint = format!("inproc://monitor-{}", uuid::Uuid::new_v4());
    socket.monitor(&endpoint, mask).unwrap();
    let events = ctx.socket(zmq::PAIR).unwrap();
    events.set_linger(0).unwrap();
    events.connect(&endpoint).unwrap();
    events
}

/// Waits for `event` on `monitor` (others are skipped); returns its value.
fn wait_event(monitor: &zmq::Socket, event: zmq::SocketEvent) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {event:?} event");
        if monitor.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() == 0 {
            continue;
        }
        let frames = monitor.recv_multipart(0).unwrap();
        let (kind, value) = frames[0].split_at(2);
        if u16::from_ne_bytes([kind[0], kind[1]]) == event.to_raw() {
            return u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
        }
    }
}

/// Whether `monitor` reports `event` within a short while.
fn sees_event(monitor: &zmq::Socket, event: zmq::SocketEvent, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || monitor.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() == 0 {
            return false;
        }
        let frames = monitor.recv_multipart(0).unwrap();
        if u16::from_ne_bytes([frames[0][0], frames[0][1]]) == event.to_raw() {
            return true;
        }
    }
}

const REFUSED_KEY_FRONTEND: &str =
    r#"zmq_proxy_curve_refused_total{reason="unknown_key",socket="frontend"}"#;
const REFUSED_HANDSHAKE_FRONTEND: &str =
    r#"zmq_proxy_curve_refused_total{reason="handshake",socket="frontend"}"#;
const REFUSED_IDENTITY_FRONTEND: &str =
    r#"zmq_proxy_curve_refused_total{reason="identity",socket="frontend"}"#;
const RELOADED: &str = r#"zmq_proxy_curve_reloads_total{result="ok"}"#;
const RELOAD_FAILED: &str = r#"zmq_proxy_curve_reloads_total{result="error"}"#;

/// Waits until `sample` is at least `value`.
fn wait_metric_at_least(proxy: &Proxy, sample: &str, value: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = proxy.metrics_text();
        if common::metric_value(&text, sample) >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {value}; metrics:\n{text}\nlog:\n{}",
            proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A call from `client` (identity `client_id`) to `server`, answered:
/// proves both are connected and their keys accepted. Retries while the
/// server is not routable yet.
fn round_trip(client: &zmq::Socket, client_id: &str, server: &zmq::Socket, server_id: &str) {
    let deadline = Instant::now() + WAIT;
    let id = uuid::Uuid::new_v4().to_string();
    loop {
        send(client, &request("1", server_id, &id, &[b"ping"]));
        if let Some(m) = recv(server, Duration::from_millis(200)) {
            if m[4] == id.as_bytes() {
                assert_eq!(m, delivery(client_id, "1", &id, &[b"ping"]));
                break;
            }
        }
        assert!(Instant::now() < deadline, "{server_id} never got a call");
    }
    // Duplicates of the retried call.
    while recv(server, Duration::from_millis(50)).is_some() {}
    send(server, &request("5", client_id, &id, &[b"pong"]));
    let reply = expect(client);
    assert_eq!(reply, delivery(server_id, "5", &id, &[b"pong"]));
}

/// Whether `server` gets nothing for a while (what a refused peer sent).
fn stays_quiet(server: &zmq::Socket) -> bool {
    recv(server, Duration::from_millis(300)).is_none()
}

per_engine!(
    authorized_peers_call_and_unknown_keys_are_refused_while_traffic_flows,
    super::authorized_peers_call_and_unknown_keys_are_refused_while_traffic_flows_on
);

fn authorized_peers_call_and_unknown_keys_are_refused_while_traffic_flows_on(engine: Engine) {
    let (client_pair, server_pair, stranger) = (Pair::new(), Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "# test peers\n{} node1/*\n{} node2/*\n",
        client_pair.public, server_pair.public
    ));
    let proxy = files.start_proxy(engine, &[]);
    let (fe, be) = (
        proxy.frontend.clone().unwrap(),
        proxy.backend.clone().unwrap(),
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/compute/s1", &server_pair, server_key, &be);
    let client = curve_dealer(&ctx, "node1/c1", &client_pair, server_key, &fe);
    round_trip(&client, "node1/c1", &server, "node2/compute/s1");

    let intruder = curve_dealer(&ctx, "node1/x", &stranger, server_key, &fe);
    send(
        &intruder,
        &request("1", "node2/compute/s1", "intrusion", &[b"x"]),
    );
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, 1.0);
    round_trip(&client, "node1/c1", &server, "node2/compute/s1");
    assert!(stays_quiet(&server), "the unknown key's call arrived");
    assert!(recv(&intruder, Duration::from_millis(10)).is_none());
    assert!(
        proxy
            .log_text()
            .contains("CURVE peer refused at the handshake"),
        "{}",
        proxy.log_text()
    );
    // The ZAP handler and the reload stop with the loops.
    let mut proxy = proxy;
    proxy.sigterm();
    let status = proxy
        .wait_exit(WAIT)
        .expect("the proxy exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", proxy.log_text());
}

per_engine!(
    a_client_with_a_wrong_server_key_gets_nothing_and_is_counted,
    super::a_client_with_a_wrong_server_key_gets_nothing_and_is_counted_on
);

fn a_client_with_a_wrong_server_key_gets_nothing_and_is_counted_on(engine: Engine) {
    let (client_pair, server_pair) = (Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!("{}\n{}\n", client_pair.public, server_pair.public));
    let proxy = files.start_proxy(engine, &[]);
    let (fe, be) = (
        proxy.frontend.clone().unwrap(),
        proxy.backend.clone().unwrap(),
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, &be);
    let client = curve_dealer(&ctx, "node1/c", &client_pair, server_key, &fe);
    round_trip(&client, "node1/c", &server, "node2/s");
    // An authorized key, but a server key that is not the proxy's: the
    // proxy cannot open its HELLO, so the handshake never ends.
    let fooled = curve_dealer(&ctx, "node1/f", &client_pair, &Pair::new().public, &fe);
    send(&fooled, &request("1", "node2/s", "fooled", &[b"x"]));
    round_trip(&client, "node1/c", &server, "node2/s");
    assert!(
        stays_quiet(&server),
        "a call through a wrong server key arrived"
    );
    assert!(recv(&fooled, Duration::from_millis(10)).is_none());
    // Counted (libzmq's monitor reports the failed handshake), and not as
    // a key refusal: the proxy never learnt the client's key.
    wait_metric_at_least(&proxy, REFUSED_HANDSHAKE_FRONTEND, 1.0);
    assert_eq!(proxy.metric(REFUSED_KEY_FRONTEND), 0.0);
}

per_engine!(
    a_stolen_identity_is_dropped_and_counted,
    super::a_stolen_identity_is_dropped_and_counted_on
);

fn a_stolen_identity_is_dropped_and_counted_on(engine: Engine) {
    let (alice, bob, server_pair) = (Pair::new(), Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/alice\n{} node1/bob* hex:00*\n{} node2/*\n",
        alice.public, bob.public, server_pair.public
    ));
    let proxy = files.start_proxy(engine, &[]);
    let (fe, be) = (
        proxy.frontend.clone().unwrap(),
        proxy.backend.clone().unwrap(),
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, &be);
    let bob_socket = curve_dealer(&ctx, "node1/bob", &bob, server_key, &fe);
    round_trip(&bob_socket, "node1/bob", &server, "node2/s");
    // Alice's key, an identity only Bob's key may use (not Bob's own
    // connection's, which ROUTER_HANDOVER would hand over: see the
    // limitation in proxy/src/curve/mod.rs).
    let thief = curve_dealer(&ctx, "node1/bob-stolen", &alice, server_key, &fe);
    send(&thief, &request("1", "node2/s", "stolen", &[b"x"]));
    wait_metric_at_least(&proxy, REFUSED_IDENTITY_FRONTEND, 1.0);
    assert!(stays_quiet(&server), "the thief's call arrived");
    round_trip(&bob_socket, "node1/bob", &server, "node2/s");
    assert_eq!(
        proxy.metric(REFUSED_KEY_FRONTEND),
        0.0,
        "refused for its identity, not its key"
    );
    let log = match engine {
        Engine::Libzmq => "message refused for its sender's CURVE key",
        Engine::Native => "CURVE peer refused at the handshake",
    };
    assert!(proxy.log_text().contains(log), "{}", proxy.log_text());
}

per_engine!(
    keys_rotate_by_rewriting_the_file_without_a_restart,
    super::keys_rotate_by_rewriting_the_file_without_a_restart_on
);

fn keys_rotate_by_rewriting_the_file_without_a_restart_on(engine: Engine) {
    let (old, new, server_pair) = (Pair::new(), Pair::new(), Pair::new());
    let server_line = format!("{} node2/*\n", server_pair.public);
    let files = KeyFiles::new(&format!("{} node1/*\n{server_line}", old.public));
    let proxy = files.start_proxy(engine, &[]);
    let (fe, be) = (
        proxy.frontend.clone().unwrap(),
        proxy.backend.clone().unwrap(),
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, &be);
    let old_client = curve_dealer(&ctx, "node1/old", &old, server_key, &fe);
    round_trip(&old_client, "node1/old", &server, "node2/s");

    // Not yet authorized.
    let early = curve_dealer(&ctx, "node1/new", &new, server_key, &fe);
    send(&early, &request("1", "node2/s", "early", &[b"x"]));
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, 1.0);
    drop(early);

    // Added: a new connection with the new key is accepted.
    files.authorize(&format!(
        "{} node1/*\n{} node1/*\n{server_line}",
        old.public, new.public
    ));
    wait_metric_at_least(&proxy, RELOADED, 1.0);
    let new_client = curve_dealer(&ctx, "node1/new", &new, server_key, &fe);
    round_trip(&new_client, "node1/new", &server, "node2/s");
    round_trip(&old_client, "node1/old", &server, "node2/s");

    // A broken file keeps the keys in force.
    files.authorize(&format!("{} node1/*\nnot a key\n", new.public));
    wait_metric_at_least(&proxy, RELOAD_FAILED, 1.0);
    round_trip(&old_client, "node1/old", &server, "node2/s");

    // Removed: the old key's connected peer is no longer heard, its new
    // connections are refused; the others keep working.
    let refused_before = proxy.metric(REFUSED_KEY_FRONTEND);
    files.authorize(&format!("{} node1/*\n{server_line}", new.public));
    wait_metric_at_least(&proxy, RELOADED, 2.0);
    send(&old_client, &request("1", "node2/s", "removed", &[b"x"]));
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, refused_before + 1.0);
    let refused_connected = proxy.metric(REFUSED_KEY_FRONTEND);
    let reconnect = curve_dealer(&ctx, "node1/old2", &old, server_key, &fe);
    send(&reconnect, &request("1", "node2/s", "removed2", &[b"x"]));
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, refused_connected + 1.0);
    round_trip(&new_client, "node1/new", &server, "node2/s");
    assert!(stays_quiet(&server), "a removed key's call arrived");
}

#[test]
fn a_local_publisher_refuses_curve_naming_it() {
    let files = KeyFiles::new("");
    let out = Command::new(env!("CARGO_BIN_EXE_zmq-proxy"))
        .args([
            "--engine",
            "native",
            "--local-publisher",
            "--metrics-address",
            "127.0.0.1:0",
            "-p",
            "0",
        ])
        .arg("--curve-secret-key-file")
        .arg(files.secret())
        .env("ZMQ_PROXY_CURVE_AUTHORIZED_KEYS", files.authorized())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local publisher"), "{stderr}");
}

per_engine!(
    pyzmq_curve_client_and_server_exchange_calls_through_the_proxy,
    super::pyzmq_curve_client_and_server_exchange_calls_through_the_proxy_on
);

fn pyzmq_curve_client_and_server_exchange_calls_through_the_proxy_on(engine: Engine) {
    let (client_pair, server_pair, stranger) = (Pair::new(), Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} py-node1/*\n{} py-node2/*\n",
        client_pair.public, server_pair.public
    ));
    let proxy = files.start_proxy(engine, &["--unroutable-wait-ms", "10000"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/curve/peers.py");
    let run = |client: &Pair, polls: &str| {
        Command::new(rpc_support::oslo_python())
            .arg(&script)
            .env("PROXY_PUBLIC", &files.proxy.public)
            .env("FRONTEND", proxy.frontend.as_ref().unwrap())
            .env("BACKEND", proxy.backend.as_ref().unwrap())
            .env("CLIENT_ID", "py-node1/client")
            .env("SERVER_ID", "py-node2/topic/server")
            .env("CLIENT_PUBLIC", &client.public)
            .env("CLIENT_SECRET", &client.secret)
            .env("SERVER_PUBLIC", &server_pair.public)
            .env("SERVER_SECRET", &server_pair.secret)
            .env("CALLS", "3")
            .env("POLLS", polls)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&client_pair, "300");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok 3"),
        "{stdout}{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log_text()
    );
    assert!(
        proxy.metric(r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="call"}"#)
            >= 3.0
    );
    assert_eq!(proxy.metric(REFUSED_KEY_FRONTEND), 0.0);
    // The same script with a key the proxy does not know gets no answer.
    let out = run(&stranger, "20");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, 1.0);
}

per_engine_async!(
    the_rpc_library_calls_through_a_curve_proxy_with_its_client_keys,
    super::the_rpc_library_calls_through_a_curve_proxy_with_its_client_keys_on
);

async fn the_rpc_library_calls_through_a_curve_proxy_with_its_client_keys_on(engine: &str) {
    use std::sync::Arc;
    use zmq_proxy::curve::{PublicKey, SecretKey};
    use zmq_proxy::matchmaker::Target;
    use zmq_proxy::rpc::{ClientConfig, CurveClient, Request, RpcClient};

    let (client_pair, server_pair) = (Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} 127.0.0.1/svc/*\n{} 127.0.0.1/*\n",
        server_pair.public, client_pair.public
    ));
    let (secret, authorized) = (files.secret(), files.authorized());
    let proxy = rpc_support::Proxy::start_on(
        engine,
        &[
            "--curve-secret-key-file",
            secret.to_str().unwrap(),
            "--curve-authorized-keys",
            authorized.to_str().unwrap(),
        ],
    );
    let mm = rpc_support::static_matchmaker(&[&proxy]);
    let keys = |pair: &Pair| {
        CurveClient::new(
            SecretKey::from_z85(&pair.secret).unwrap(),
            PublicKey::from_z85(&files.proxy.public).unwrap(),
        )
    };
    let (server, client) = curve_echo_pair(&mm, keys(&server_pair), keys(&client_pair), 1).await;
    let reply = client
        .call(
            &Target::server("svc", "a"),
            &Request::new("echo", serde_json::json!({"x": 1})),
        )
        .await
        .unwrap();
    assert_eq!(reply, serde_json::json!({"echo": {"x": 1}}));
    // Without keys, the same client is refused by the proxy.
    let plain = RpcClient::connect(
        Arc::clone(&mm),
        ClientConfig {
            host: "127.0.0.1".into(),
            call_timeout: Duration::from_millis(500),
            discovery_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let refused = plain
        .call(
            &Target::server("svc", "a"),
            &Request::new("echo", serde_json::json!({})),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    server.stop().await;
}

/// An echo server of `svc`/`a` and a client, each with its CURVE keys,
/// through the proxies `mm` lists; returned once both are connected to
/// `proxies` of them.
async fn curve_echo_pair(
    mm: &std::sync::Arc<dyn zmq_proxy::matchmaker::Matchmaker>,
    server_keys: zmq_proxy::rpc::CurveClient,
    client_keys: zmq_proxy::rpc::CurveClient,
    proxies: usize,
) -> (zmq_proxy::rpc::RpcServer, zmq_proxy::rpc::RpcClient) {
    use std::sync::Arc;
    use zmq_proxy::matchmaker::Target;
    use zmq_proxy::rpc::{ClientConfig, RpcClient, RpcServer, ServerConfig};

    let handler = |inc: zmq_proxy::rpc::Incoming| {
        Box::pin(async move { Ok(serde_json::json!({"echo": inc.args()})) })
            as futures::future::BoxFuture<'static, _>
    };
    let server = RpcServer::start(
        Arc::clone(mm),
        ServerConfig {
            host: "127.0.0.1".into(),
            shutdown_grace: Duration::from_millis(100),
            curve: Some(server_keys),
            ..ServerConfig::new(Target::server("svc", "a"))
        },
        handler,
    )
    .await
    .unwrap();
    assert!(server.wait_ready(proxies, WAIT).await, "server ready");
    let client = RpcClient::connect(
        Arc::clone(mm),
        ClientConfig {
            host: "127.0.0.1".into(),
            call_timeout: Duration::from_secs(10),
            discovery_timeout: Duration::from_secs(5),
            curve: Some(client_keys),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(
        client.wait_for_proxies(proxies, WAIT).await,
        "client sees the proxies"
    );
    (server, client)
}

/// A CURVE SUB subscribed to `prefix`.
fn curve_subscriber(
    ctx: &zmq::Context,
    prefix: &[u8],
    pair: &Pair,
    server: &str,
    endpoint: &str,
) -> zmq::Socket {
    let s = ctx.socket(zmq::SUB).unwrap();
    s.set_linger(0).unwrap();
    s.set_reconnect_ivl(10).unwrap();
    s.set_curve_serverkey(&zmq::z85_decode(server).unwrap())
        .unwrap();
    s.set_curve_publickey(&zmq::z85_decode(&pair.public).unwrap())
        .unwrap();
    s.set_curve_secretkey(&zmq::z85_decode(&pair.secret).unwrap())
        .unwrap();
    s.set_subscribe(prefix).unwrap();
    s.connect(endpoint).unwrap();
    s
}

per_engine!(
    the_publisher_serves_authorized_subscribers_only,
    super::the_publisher_serves_authorized_subscribers_only_on
);

fn the_publisher_serves_authorized_subscribers_only_on(engine: Engine) {
    let (client_pair, sub_pair, stranger) = (Pair::new(), Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{}\n",
        client_pair.public, sub_pair.public
    ));
    let proxy = files.start_proxy(engine, &["--pubsub"]);
    let (fe, publisher) = (
        proxy.frontend.clone().unwrap(),
        proxy.publisher.clone().unwrap(),
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let client = curve_dealer(&ctx, "node1/c", &client_pair, server_key, &fe);
    let sub = curve_subscriber(&ctx, b"compute", &sub_pair, server_key, &publisher);
    let intruder = curve_subscriber(&ctx, b"compute", &stranger, server_key, &publisher);
    // Subscriptions travel asynchronously: publish until the first arrives.
    let deadline = Instant::now() + WAIT;
    loop {
        send(&client, &request("3", "compute", "fanout", &[b"x"]));
        if let Some(m) = recv(&sub, Duration::from_millis(50)) {
            assert_eq!(
                m,
                common::frames(&[b"compute", b"1.0", b"3", b"fanout", b"x"])
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscription never took effect"
        );
    }
    wait_metric_at_least(
        &proxy,
        r#"zmq_proxy_curve_refused_total{reason="unknown_key",socket="publisher"}"#,
        1.0,
    );
    send(&client, &request("3", "compute", "after", &[b"y"]));
    assert!(recv(&sub, WAIT).is_some());
    assert!(
        recv(&intruder, Duration::from_millis(300)).is_none(),
        "an unknown key subscribed"
    );
}

#[test]
fn native_a_stolen_identity_is_refused_at_the_handshake_and_its_owner_keeps_its_traffic() {
    let (alice, bob, server_pair) = (Pair::new(), Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/alice\n{} node1/bob\n{} node2/*\n",
        alice.public, bob.public, server_pair.public
    ));
    let proxy = files.start_proxy(Engine::Native, &[]);
    let (fe, be) = (proxy.frontend(), proxy.backend());
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, be);
    let bob_socket = curve_dealer(&ctx, "node1/bob", &bob, server_key, fe);
    round_trip(&bob_socket, "node1/bob", &server, "node2/s");
    // Alice's key claiming Bob's very identity: with ROUTER_HANDOVER it
    // would take Bob's replies over; the native engine refuses it first.
    let thief = unconnected_curve_dealer(&ctx, Some("node1/bob"), &alice, server_key);
    let events = monitor(&ctx, &thief, &[zmq::SocketEvent::HANDSHAKE_FAILED_AUTH]);
    thief.connect(fe).unwrap();
    assert_eq!(
        wait_event(&events, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH),
        400,
        "libzmq reports the refusal's status"
    );
    wait_metric_at_least(&proxy, REFUSED_IDENTITY_FRONTEND, 1.0);
    // Bob still holds node1/bob: replies to it reach Bob, not the thief.
    round_trip(&bob_socket, "node1/bob", &server, "node2/s");
    send(&server, &request("5", "node1/bob", "for-bob", &[b"x"]));
    assert_eq!(
        expect(&bob_socket),
        delivery("node2/s", "5", "for-bob", &[b"x"])
    );
    assert!(recv(&thief, Duration::from_millis(300)).is_none());
    assert_eq!(proxy.metric(REFUSED_KEY_FRONTEND), 0.0);
    assert!(proxy
        .log_text()
        .contains("CURVE peer refused at the handshake"));
}

#[test]
fn native_unknown_keys_and_unlisted_identities_are_refused_at_the_handshake() {
    let (named, anonymous, stranger, server_pair) =
        (Pair::new(), Pair::new(), Pair::new(), Pair::new());
    // `named` may use node1/* only; `anonymous` any identity the proxy
    // makes up (libzmq's form: a zero byte first).
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{} hex:00*\n{} node2/*\n",
        named.public, anonymous.public, server_pair.public
    ));
    let proxy = files.start_proxy(Engine::Native, &[]);
    let (fe, be) = (proxy.frontend(), proxy.backend());
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, be);

    let unknown = unconnected_curve_dealer(&ctx, Some("node1/x"), &stranger, server_key);
    let events = monitor(&ctx, &unknown, &[zmq::SocketEvent::HANDSHAKE_FAILED_AUTH]);
    unknown.connect(fe).unwrap();
    assert_eq!(
        wait_event(&events, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH),
        400
    );
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, 1.0);

    // A key limited to named identities connecting without one.
    let nameless = unconnected_curve_dealer(&ctx, None, &named, server_key);
    let events = monitor(&ctx, &nameless, &[zmq::SocketEvent::HANDSHAKE_FAILED_AUTH]);
    nameless.connect(fe).unwrap();
    wait_event(&events, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH);
    wait_metric_at_least(&proxy, REFUSED_IDENTITY_FRONTEND, 1.0);

    // The anonymous key without an identity calls and gets its reply.
    let caller = unconnected_curve_dealer(&ctx, None, &anonymous, server_key);
    caller.connect(fe).unwrap();
    let deadline = Instant::now() + WAIT;
    let call = loop {
        send(&caller, &request("1", "node2/s", "anon", &[b"x"]));
        if let Some(m) = recv(&server, Duration::from_millis(200)) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the anonymous call never arrived"
        );
    };
    // The sender, as the server sees it: the identity the proxy made up.
    let sender = call[2].clone();
    assert_eq!(sender.first(), Some(&0), "a generated identity: {call:?}");
    let reply = common::frames(&[b"", b"1.0", b"5", &sender, b"anon", b"y"]);
    send(&server, &reply);
    assert_eq!(expect(&caller), delivery("node2/s", "5", "anon", &[b"y"]));
}

#[test]
fn native_a_removed_key_is_disconnected_at_the_reload() {
    let (old, new, server_pair) = (Pair::new(), Pair::new(), Pair::new());
    let server_line = format!("{} node2/*\n", server_pair.public);
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{} node1/*\n{server_line}",
        old.public, new.public
    ));
    let proxy = files.start_proxy(Engine::Native, &[]);
    let (fe, be) = (proxy.frontend(), proxy.backend());
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, be);
    let old_client = unconnected_curve_dealer(&ctx, Some("node1/old"), &old, server_key);
    let events = monitor(
        &ctx,
        &old_client,
        &[
            zmq::SocketEvent::DISCONNECTED,
            zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
        ],
    );
    old_client.connect(fe).unwrap();
    let new_client = curve_dealer(&ctx, "node1/new", &new, server_key, fe);
    round_trip(&old_client, "node1/old", &server, "node2/s");
    round_trip(&new_client, "node1/new", &server, "node2/s");

    files.authorize(&format!("{} node1/*\n{server_line}", new.public));
    // Closed at the reload, and refused when it reconnects.
    wait_event(&events, zmq::SocketEvent::DISCONNECTED);
    wait_event(&events, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH);
    wait_metric_at_least(&proxy, RELOADED, 1.0);
    wait_metric_at_least(&proxy, REFUSED_KEY_FRONTEND, 1.0);
    assert!(proxy
        .log_text()
        .contains("CURVE peer no longer authorized after a reload"));
    // Nothing reaches the removed key's peer any more; the others go on.
    send(&server, &request("5", "node1/old", "gone", &[b"x"]));
    assert!(recv(&old_client, Duration::from_millis(300)).is_none());
    round_trip(&new_client, "node1/new", &server, "node2/s");
}

#[test]
fn native_heartbeats_and_large_messages_travel_boxed() {
    let (client_pair, server_pair) = (Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{} node2/*\n",
        client_pair.public, server_pair.public
    ));
    let proxy = files.start_proxy(
        Engine::Native,
        &["--heartbeat-ivl-ms", "50", "--heartbeat-timeout-ms", "1000"],
    );
    let (fe, be) = (proxy.frontend(), proxy.backend());
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let server = curve_dealer(&ctx, "node2/s", &server_pair, server_key, be);
    // The client PINGs the proxy too, and gives up on it without a PONG.
    let client = unconnected_curve_dealer(&ctx, Some("node1/c"), &client_pair, server_key);
    client.set_heartbeat_ivl(50).unwrap();
    client.set_heartbeat_timeout(1000).unwrap();
    let events = monitor(&ctx, &client, &[zmq::SocketEvent::DISCONNECTED]);
    client.connect(fe).unwrap();
    round_trip(&client, "node1/c", &server, "node2/s");
    // Many heartbeat intervals, both ways, while no message flows.
    assert!(
        !sees_event(
            &events,
            zmq::SocketEvent::DISCONNECTED,
            Duration::from_millis(1500)
        ),
        "a PING or PONG did not open"
    );
    assert_eq!(
        proxy.metric(r#"zmq_proxy_peers_timed_out_total{socket="frontend"}"#)
            + proxy.metric(r#"zmq_proxy_peers_timed_out_total{socket="backend"}"#),
        0.0,
        "{}",
        proxy.log_text()
    );
    // Beyond the direct-write size of plain connections, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    send(&client, &request("1", "node2/s", "big", &[&big]));
    assert_eq!(expect(&server), delivery("node1/c", "1", "big", &[&big]));
    send(&server, &request("5", "node1/c", "big", &[&big, b"tail"]));
    assert_eq!(
        expect(&client),
        delivery("node2/s", "5", "big", &[&big, b"tail"])
    );
}

#[test]
fn native_a_removed_subscriber_key_is_disconnected_at_the_reload() {
    let (client_pair, sub_pair) = (Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{}\n",
        client_pair.public, sub_pair.public
    ));
    let proxy = files.start_proxy(Engine::Native, &["--pubsub"]);
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let client = curve_dealer(&ctx, "node1/c", &client_pair, server_key, proxy.frontend());
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_curve_serverkey(&zmq::z85_decode(server_key).unwrap())
        .unwrap();
    sub.set_curve_publickey(&zmq::z85_decode(&sub_pair.public).unwrap())
        .unwrap();
    sub.set_curve_secretkey(&zmq::z85_decode(&sub_pair.secret).unwrap())
        .unwrap();
    sub.set_subscribe(b"compute").unwrap();
    let events = monitor(
        &ctx,
        &sub,
        &[
            zmq::SocketEvent::DISCONNECTED,
            zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
        ],
    );
    sub.connect(proxy.publisher()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        send(&client, &request("3", "compute", "fanout", &[b"x"]));
        if recv(&sub, Duration::from_millis(50)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscription never took effect"
        );
    }
    files.authorize(&format!("{} node1/*\n", client_pair.public));
    wait_event(&events, zmq::SocketEvent::DISCONNECTED);
    wait_event(&events, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH);
    wait_metric_at_least(
        &proxy,
        r#"zmq_proxy_curve_refused_total{reason="unknown_key",socket="publisher"}"#,
        1.0,
    );
    while recv(&sub, Duration::from_millis(10)).is_some() {}
    send(&client, &request("3", "compute", "after", &[b"y"]));
    assert!(
        recv(&sub, Duration::from_millis(300)).is_none(),
        "a removed key's subscriber still receives"
    );
}

#[test]
fn native_a_sender_held_back_by_a_full_curve_receiver_resumes_without_loss() {
    let (client_pair, server_pair) = (Pair::new(), Pair::new());
    let files = KeyFiles::new(&format!(
        "{} node1/*\n{} node2/*\n",
        client_pair.public, server_pair.public
    ));
    // 4 KiB of output per receiver, and a wait long enough for the test to
    // read: a message that finds its receiver full is decoded again (its
    // boxes already opened) once there is room.
    let proxy = files.start_proxy(
        Engine::Native,
        &["--hwm", "4", "--send-timeout-ms", "60000"],
    );
    let ctx = zmq::Context::new();
    let server_key = &files.proxy.public;
    let client = curve_dealer(&ctx, "node1/c", &client_pair, server_key, proxy.frontend());
    let server = unconnected_curve_dealer(&ctx, Some("node2/s"), &server_pair, server_key);
    server.set_rcvhwm(1).unwrap();
    server.set_rcvbuf(4096).unwrap();
    server.connect(proxy.backend()).unwrap();
    round_trip(&client, "node1/c", &server, "node2/s");
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = 200;
    for i in 0..sent {
        send(
            &client,
            &request("2", "node2/s", &format!("cast-{i}"), &[&payload]),
        );
    }
    // The proxy stops taking casts while the server does not read.
    let in_sample = r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="cast"}"#;
    let mut last = -1.0;
    common::wait_until("the sender is held back", || {
        let now = proxy.metric(in_sample);
        let stalled = now == last && now < f64::from(sent);
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        stalled
    });
    for i in 0..sent {
        let m = recv(&server, WAIT).unwrap_or_else(|| panic!("cast {i} never arrived"));
        assert_eq!(m[4], format!("cast-{i}").as_bytes(), "in order");
        assert!(m[5] == payload, "cast {i} intact");
    }
    assert_eq!(
        proxy.metric(r#"zmq_proxy_dropped_total{reason="hwm",socket="backend"}"#),
        0.0
    );
}

/// Proxies with keys of their own, each listed with its key by the
/// matchmaker (as the Kubernetes backend lists them from their
/// EndpointSlices): an RPC client and server with only their own keys
/// connect to both, each connection with its proxy's key, and calls go
/// through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_peers_take_each_proxys_own_key_from_the_matchmaker() {
    use std::sync::Arc;
    use zmq_proxy::curve::{PublicKey, SecretKey};
    use zmq_proxy::matchmaker::in_process::StaticMatchmaker;
    use zmq_proxy::matchmaker::Target;
    use zmq_proxy::rpc::{CurveClient, Request};

    let (client_pair, server_pair) = (Pair::new(), Pair::new());
    let authorized = format!(
        "{} 127.0.0.1/svc/*\n{} 127.0.0.1/*\n",
        server_pair.public, client_pair.public
    );
    let files = [KeyFiles::new(&authorized), KeyFiles::new(&authorized)];
    assert_ne!(files[0].proxy.public, files[1].proxy.public);
    let proxies: Vec<rpc_support::Proxy> = files
        .iter()
        .map(|f| {
            let (secret, authorized) = (f.secret(), f.authorized());
            rpc_support::Proxy::start_on(
                "native",
                &[
                    "--curve-secret-key-file",
                    secret.to_str().unwrap(),
                    "--curve-authorized-keys",
                    authorized.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let listed = proxies.iter().zip(&files).map(|(p, f)| {
        let mut addresses = p.addresses.clone();
        addresses.curve_key = Some(PublicKey::from_z85(&f.proxy.public).unwrap());
        addresses
    });
    let mm: Arc<dyn zmq_proxy::matchmaker::Matchmaker> =
        Arc::new(StaticMatchmaker::with_proxies(listed));
    let keys =
        |pair: &Pair| CurveClient::with_matchmaker_keys(SecretKey::from_z85(&pair.secret).unwrap());
    let (server, client) = curve_echo_pair(&mm, keys(&server_pair), keys(&client_pair), 2).await;
    for i in 0..20 {
        let reply = client
            .call(
                &Target::server("svc", "a"),
                &Request::new("echo", serde_json::json!({"i": i})),
            )
            .await
            .unwrap();
        assert_eq!(reply, serde_json::json!({"echo": {"i": i}}));
    }
    // Round-robin over both: each proxy forwarded calls, and neither
    // refused a handshake (a connection with the other proxy's key would).
    for proxy in &proxies {
        let text = common::http_get(proxy.metrics(), "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let calls = common::metric_value(
            &text,
            r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="call"}"#,
        );
        assert!(calls >= 1.0, "calls through {:?}: {calls}", proxy.addresses);
        assert_eq!(
            common::metric_value(
                &text,
                r#"zmq_proxy_curve_refused_total{reason="handshake",socket="frontend"}"#
            ),
            0.0
        );
    }
    client.close().await;
    server.stop().await;
}
