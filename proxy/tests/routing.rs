//! Every message type through the real proxy binary, double- and
//! single-router, pub/sub off and on, ack-pub-sub, and the local publisher.

mod common;

use std::time::Duration;

use common::*;

const CLIENT: &str = "127.0.0.1/6a1d2f0e-0000-4000-8000-000000000001";
const SERVER: &str = "127.0.0.1/compute/6a1d2f0e-0000-4000-8000-000000000002";

/// Client and server peers wired through `proxy` (server on the backend, or
/// the frontend in single-router mode), proven routable both ways.
fn peers(ctx: &zmq::Context, proxy: &Proxy) -> (zmq::Socket, zmq::Socket) {
    let client = dealer(ctx, CLIENT, proxy.frontend());
    let server = dealer(
        ctx,
        SERVER,
        proxy.backend.as_deref().unwrap_or(proxy.frontend()),
    );
    wait_routable(&client, SERVER, &server);
    wait_routable(&server, CLIENT, &client);
    (client, server)
}

/// CALL/REPLY, CAST, ACK, and routed FANOUT/NOTIFY, frames checked exactly.
fn every_routed_type(proxy: &Proxy) {
    let ctx = zmq::Context::new();
    let (client, server) = peers(&ctx, proxy);
    let id = "0b5e8f1c-8d3a-11ef-9a4b-0242ac120002";

    // CALL with two payload frames, then ACK and REPLY back.
    send(
        &client,
        &request("1", SERVER, id, &[b"{\"ctx\":1}", b"second"]),
    );
    assert_eq!(
        expect(&server),
        delivery(CLIENT, "1", id, &[b"{\"ctx\":1}", b"second"])
    );
    send(&server, &request("6", CLIENT, id, &[]));
    assert_eq!(expect(&client), delivery(SERVER, "6", id, &[]));
    send(&server, &request("5", CLIENT, id, &[b"[\"result\", null]"]));
    assert_eq!(
        expect(&client),
        delivery(SERVER, "5", id, &[b"[\"result\", null]"])
    );

    // CAST, and FANOUT/NOTIFY sent per server identity (pub/sub off).
    for t in ["2", "3", "4"] {
        send(&client, &request(t, SERVER, id, &[b"payload"]));
        assert_eq!(expect(&server), delivery(CLIENT, t, id, &[b"payload"]));
    }

    // Many trailing frames, binary and empty ones, are forwarded untouched.
    let payload: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; i as usize * 7]).collect();
    let refs: Vec<&[u8]> = payload.iter().map(|p| p.as_slice()).collect();
    send(&client, &request("2", SERVER, id, &refs));
    assert_eq!(expect(&server), delivery(CLIENT, "2", id, &refs));
    // The loop reuses its frames: a short message after a long one carries
    // nothing of it.
    send(&client, &request("2", SERVER, id, &[b"short"]));
    assert_eq!(expect(&server), delivery(CLIENT, "2", id, &[b"short"]));

    proxy.wait_metric(
        r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="call"}"#,
        1.0,
    );
    let server_socket = if proxy.backend.is_some() {
        "backend"
    } else {
        "frontend"
    };
    proxy.wait_metric(
        &format!(
            r#"zmq_proxy_messages_total{{direction="out",socket="{server_socket}",type="call"}}"#
        ),
        1.0,
    );
    proxy.wait_metric(
        r#"zmq_proxy_messages_total{direction="out",socket="frontend",type="reply"}"#,
        1.0,
    );
}

fn double_router(engine: Engine) {
    every_routed_type(&Proxy::start_on(engine, &[]));
}
per_engine!(
    double_router_carries_every_message_type,
    super::double_router
);

fn single_router(engine: Engine) {
    let proxy = Proxy::start_on(engine, &["--mode", "single-router"]);
    assert!(proxy.backend.is_none());
    every_routed_type(&proxy);
}
per_engine!(
    single_router_carries_every_message_type,
    super::single_router
);

/// Fanout and notify published on PUB, prefix matching, no ack unless asked.
fn pubsub(proxy: &Proxy, acks: bool) {
    let ctx = zmq::Context::new();
    let (client, _server) = peers(&ctx, proxy);
    let compute = subscriber(&ctx, b"compute", proxy.publisher());
    let other = subscriber(&ctx, b"network", proxy.publisher());
    // Subscriptions travel asynchronously: publish until the first arrives.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        send(&client, &request("3", "compute", "warmup", &[]));
        if let Some(m) = recv(&compute, Duration::from_millis(50)) {
            assert_eq!(m, frames(&[b"compute", b"1.0", b"3", b"warmup"]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscription never took effect"
        );
    }
    while recv(&compute, Duration::from_millis(100)).is_some() {}
    while recv(&client, Duration::from_millis(50)).is_some() {}

    send(
        &client,
        &request("3", "compute", "id-fanout", &[b"p1", b"p2"]),
    );
    assert_eq!(
        expect(&compute),
        frames(&[b"compute", b"1.0", b"3", b"id-fanout", b"p1", b"p2"])
    );
    send(&client, &request("4", "compute.info", "id-notify", &[b"n"]));
    assert_eq!(
        expect(&compute),
        frames(&[b"compute.info", b"1.0", b"4", b"id-notify", b"n"])
    );

    // The "network" subscriber saw none of it, but gets its own topic.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        send(&client, &request("3", "network", "id-net", &[]));
        if let Some(m) = recv(&other, Duration::from_millis(200)) {
            assert_eq!(m, frames(&[b"network", b"1.0", b"3", b"id-net"]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "network subscription never took effect"
        );
    }

    if acks {
        // The proxy acks each publication it accepted, in order, as
        // `["", "1.0", proxy_frontend_id, "6", msg_id]`.
        for id in ["id-fanout", "id-notify", "id-net"] {
            let ack = expect(&client);
            assert_eq!(ack.len(), 5, "{ack:?}");
            assert_eq!(&ack[..2], &frames(&[b"", b"1.0"])[..]);
            let proxy_id = String::from_utf8(ack[2].clone()).unwrap();
            assert!(proxy_id.starts_with("127.0.0.1/zmq-proxy/"), "{proxy_id}");
            assert_eq!(&ack[3..], &frames(&[b"6", id.as_bytes()])[..]);
        }
    } else {
        // CALL still routed, and no ACK precedes its REPLY path.
        send(&client, &request("1", SERVER, "id-call", &[]));
        assert_eq!(expect(&_server), delivery(CLIENT, "1", "id-call", &[]));
        send(&_server, &request("5", CLIENT, "id-call", &[]));
        assert_eq!(expect(&client), delivery(SERVER, "5", "id-call", &[]));
    }
    proxy.wait_metric(
        r#"zmq_proxy_messages_total{direction="out",socket="publisher",type="notify"}"#,
        1.0,
    );
}

fn pubsub_double(engine: Engine) {
    pubsub(&Proxy::start_on(engine, &["--pubsub"]), false);
}
per_engine!(
    pubsub_publishes_fanout_and_notify_by_topic_prefix,
    super::pubsub_double
);

fn pubsub_single(engine: Engine) {
    pubsub(
        &Proxy::start_on(engine, &["--pubsub", "--mode", "single-router"]),
        false,
    );
}
per_engine!(pubsub_in_single_router_mode, super::pubsub_single);

fn ack_pub_sub(engine: Engine) {
    let proxy = Proxy::start_on(engine, &["--pubsub", "-a"]);
    pubsub(&proxy, true);
    assert!(
        proxy.metric(r#"zmq_proxy_messages_total{direction="out",socket="frontend",type="ack"}"#)
            >= 3.0
    );
}
per_engine!(
    ack_pub_sub_acknowledges_with_the_proxy_frontend_identity,
    super::ack_pub_sub
);

/// The central proxy and the local publisher both run on `engine`.
fn local_publisher(engine: Engine) {
    let central = Proxy::start_on(engine, &["--pubsub"]);
    let local = Proxy::start_on(engine, &["-lp", "--connect-publisher", central.publisher()]);
    assert!(local.frontend.is_none() && local.backend.is_none());
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, central.frontend());
    let sub = subscriber(&ctx, b"compute", local.publisher());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        send(&client, &request("3", "compute", "id-relay", &[b"x", b"y"]));
        if let Some(m) = recv(&sub, Duration::from_millis(50)) {
            assert_eq!(
                m,
                frames(&[b"compute", b"1.0", b"3", b"id-relay", b"x", b"y"])
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "relay never delivered"
        );
    }
    local.wait_metric(r#"zmq_proxy_connected_peers{socket="subscriber"}"#, 1.0);
    assert!(
        local.metric(
            r#"zmq_proxy_messages_total{direction="out",socket="publisher",type="fanout"}"#
        ) >= 1.0
    );
}
per_engine!(
    local_publisher_relays_a_central_publisher_unchanged,
    super::local_publisher
);

fn connected_peers(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let a = dealer(&ctx, "a", proxy.frontend());
    let b = dealer(&ctx, "b", proxy.frontend());
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="frontend"}"#, 2.0);
    drop(a);
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="frontend"}"#, 1.0);
    drop(b);
    proxy.wait_metric(r#"zmq_proxy_connected_peers{socket="frontend"}"#, 0.0);
    assert_eq!(proxy.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(proxy.get("/readyz").map(|r| r.0), Some(200));
}
per_engine!(
    connected_peers_follow_the_socket_monitor,
    super::connected_peers
);
