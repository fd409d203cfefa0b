//! Invalid and undeliverable input: each case dropped whole, counted in
//! /metrics by reason, and the next valid message still goes through.

mod common;

use std::time::Duration;

use common::*;

const CLIENT: &str = "127.0.0.1/client-invalid";
const SERVER: &str = "127.0.0.1/compute/server-invalid";

fn invalid_messages(engine: Engine) {
    let proxy = Proxy::start_on(engine, &[]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let server = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &server);
    wait_routable(&server, CLIENT, &client);

    let cases: Vec<(&str, Frames)> = vec![
        ("too_few_frames", frames(&[b""])),
        (
            "too_few_frames",
            frames(&[b"", b"1.0", b"1", SERVER.as_bytes()]),
        ),
        (
            "missing_delimiter",
            frames(&[b"x", b"1.0", b"1", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "unknown_version",
            frames(&[b"", b"2.0", b"1", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "unknown_version",
            frames(&[b"", b"", b"1", SERVER.as_bytes(), b"id"]),
        ),
        (
            "bad_type",
            frames(&[b"", b"1.0", b"0", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "bad_type",
            frames(&[b"", b"1.0", b"7", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "bad_type",
            frames(&[b"", b"1.0", b"11", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "bad_type",
            frames(&[b"", b"1.0", b"call", SERVER.as_bytes(), b"id", b"p"]),
        ),
        (
            "empty_routing_key",
            frames(&[b"", b"1.0", b"2", b"", b"id", b"p"]),
        ),
    ];
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (i, (reason, bad)) in cases.iter().enumerate() {
        send(&client, bad);
        *expected.entry(reason).or_default() += 1.0;
        let id = format!("valid-after-{i}");
        send(&client, &request("2", SERVER, &id, &[b"ok"]));
        // The valid message arrives whole and nothing of the invalid one does.
        assert_eq!(
            expect(&server),
            delivery(CLIENT, "2", &id, &[b"ok"]),
            "after case {i} ({reason})"
        );
        proxy.wait_metric(
            &format!(r#"zmq_proxy_dropped_total{{reason="{reason}",socket="frontend"}}"#),
            expected[reason],
        );
    }
    assert!(
        recv(&server, Duration::from_millis(200)).is_none(),
        "nothing else was forwarded"
    );

    // Invalid input on the backend is handled the same way.
    send(
        &server,
        &frames(&[b"", b"1.0", b"9", CLIENT.as_bytes(), b"id"]),
    );
    send(&server, &request("5", CLIENT, "reply-after", &[b"r"]));
    assert_eq!(
        expect(&client),
        delivery(SERVER, "5", "reply-after", &[b"r"])
    );
    proxy.wait_metric(
        r#"zmq_proxy_dropped_total{reason="bad_type",socket="backend"}"#,
        1.0,
    );
    assert!(proxy.log_text().contains("invalid message dropped"));
    assert_eq!(proxy.get("/healthz").map(|r| r.0), Some(200));
}
per_engine!(
    each_invalid_message_is_dropped_counted_and_the_stream_continues,
    super::invalid_messages
);

fn unknown_identity(engine: Engine) {
    let proxy = Proxy::start_on(engine, &["--unroutable-wait-ms", "300"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let server = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &server);
    let before = proxy.metric(r#"zmq_proxy_dropped_total{reason="unroutable",socket="backend"}"#);
    send(
        &client,
        &request("1", "127.0.0.1/compute/gone", "id-lost", &[b"p"]),
    );
    // Holding it for its receiver does not hold up anyone else.
    send(&client, &request("1", SERVER, "id-ok", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "id-ok", &[b"p"]));
    proxy.wait_metric(
        r#"zmq_proxy_dropped_total{reason="unroutable",socket="backend"}"#,
        before + 1.0,
    );
    proxy.wait_metric(r#"zmq_proxy_held_messages{socket="backend"}"#, 0.0);

    // A reply for a client that left is unroutable on the frontend.
    send(
        &server,
        &request("5", "127.0.0.1/client-gone", "id-lost", &[b"r"]),
    );
    proxy.wait_metric(
        r#"zmq_proxy_dropped_total{reason="unroutable",socket="frontend"}"#,
        1.0,
    );
    assert!(proxy.log_text().contains("did not connect in time"));
}
per_engine!(
    a_message_for_an_unknown_identity_is_held_then_counted_as_unroutable,
    super::unknown_identity
);

fn late_receiver(engine: Engine) {
    // A proxy just scaled up is found by clients before the servers behind
    // it have connected. (A wait longer than the default 2 s, so a slow
    // machine cannot expire the messages between the steps below.)
    let proxy = Proxy::start_on(engine, &["--unroutable-wait-ms", "8000"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let early = dealer(&ctx, "127.0.0.1/compute/early", proxy.backend());
    wait_routable(&client, "127.0.0.1/compute/early", &early);
    for id in ["late-1", "late-2"] {
        send(&client, &request("1", SERVER, id, &[b"p"]));
    }
    proxy.wait_metric(r#"zmq_proxy_held_messages{socket="backend"}"#, 2.0);
    // A reply for a client that has not connected yet waits as well.
    let late_client = "127.0.0.1/client-late";
    send(&early, &request("5", late_client, "late-reply", &[b"r"]));
    proxy.wait_metric(r#"zmq_proxy_held_messages{socket="frontend"}"#, 1.0);

    let server = dealer(&ctx, SERVER, proxy.backend());
    assert_eq!(expect(&server), delivery(CLIENT, "1", "late-1", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "late-2", &[b"p"]));
    send(&client, &request("1", SERVER, "after", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "after", &[b"p"]));
    let client2 = dealer(&ctx, late_client, proxy.frontend());
    assert_eq!(
        expect(&client2),
        delivery("127.0.0.1/compute/early", "5", "late-reply", &[b"r"])
    );

    proxy.wait_metric(r#"zmq_proxy_held_messages{socket="backend"}"#, 0.0);
    proxy.wait_metric(r#"zmq_proxy_held_messages{socket="frontend"}"#, 0.0);
    for socket in ["backend", "frontend"] {
        let sample = format!(r#"zmq_proxy_dropped_total{{reason="unroutable",socket="{socket}"}}"#);
        assert_eq!(proxy.metric(&sample), 0.0, "{sample}");
    }
}
per_engine!(
    messages_for_a_receiver_that_connects_late_are_held_and_delivered_in_order,
    super::late_receiver
);

fn hwm_drops(engine: Engine) {
    let proxy = Proxy::start_on(engine, &["--hwm", "4", "--send-timeout-ms", "100"]);
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let slow = ctx.socket(zmq::DEALER).unwrap();
    slow.set_identity(SERVER.as_bytes()).unwrap();
    slow.set_rcvhwm(1).unwrap();
    slow.set_rcvbuf(4096).unwrap();
    slow.set_linger(0).unwrap();
    slow.connect(proxy.backend()).unwrap();
    wait_routable(&client, SERVER, &slow);
    let before_in =
        proxy.metric(r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="cast"}"#);

    // Flood a server that does not read: TCP buffers fill, then the pipe.
    let payload = vec![7u8; 64 * 1024];
    let sent = 600;
    for i in 0..sent {
        send(
            &client,
            &request("2", SERVER, &format!("flood-{i:04}"), &[&payload, b"tail"]),
        );
    }
    let in_sample = r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="cast"}"#;
    proxy.wait_metric(in_sample, before_in + sent as f64);
    let hwm = proxy.metric(r#"zmq_proxy_dropped_total{reason="hwm",socket="backend"}"#);
    assert!(hwm > 0.0, "expected drops at the high-water mark");

    // Every message the server gets is whole, in order, and delivered + dropped = sent.
    let mut received = 0;
    let mut last = String::new();
    while let Some(m) = recv(&slow, Duration::from_millis(500)) {
        if m[4] == b"probe" {
            continue;
        }
        assert_eq!(m.len(), 7, "whole message");
        assert_eq!(
            &m[..4],
            &frames(&[b"", b"1.0", CLIENT.as_bytes(), b"2"])[..]
        );
        assert_eq!(m[5].len(), payload.len());
        assert_eq!(m[6], b"tail");
        let id = String::from_utf8(m[4].clone()).unwrap();
        assert!(id > last, "in order");
        last = id;
        received += 1;
    }
    assert_eq!(
        received as f64 + hwm,
        sent as f64,
        "delivered {received} + dropped {hwm} = sent {sent}"
    );
    // The stream is still in sync: a new message goes through.
    send(&client, &request("2", SERVER, "after-flood", &[b"x"]));
    assert_eq!(expect(&slow), delivery(CLIENT, "2", "after-flood", &[b"x"]));
}
per_engine!(
    drops_at_the_high_water_mark_are_counted_and_never_split_a_message,
    super::hwm_drops
);

/// Floods a server that starts reading 500 ms late through a proxy with
/// `--hwm 4` and the given send timeout; returns (in-order messages
/// received, messages dropped at the HWM).
fn late_reader_flood(engine: Engine, send_timeout_ms: &str) -> (usize, f64) {
    let proxy = Proxy::start_on(
        engine,
        &["--hwm", "4", "--send-timeout-ms", send_timeout_ms],
    );
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let server = ctx.socket(zmq::DEALER).unwrap();
    server.set_identity(SERVER.as_bytes()).unwrap();
    server.set_rcvhwm(4).unwrap();
    server.set_rcvbuf(4096).unwrap();
    server.set_linger(0).unwrap();
    server.connect(proxy.backend()).unwrap();
    wait_routable(&client, SERVER, &server);
    let in_sample = r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="cast"}"#;
    let before = proxy.metric(in_sample);

    let payload = vec![1u8; 16 * 1024];
    let sent = 400;
    let sender = std::thread::spawn(move || {
        for i in 0..sent {
            send(
                &client,
                &request("2", SERVER, &format!("bp-{i:04}"), &[&payload]),
            );
        }
        client
    });
    // Let queues fill up to the high-water marks before reading.
    std::thread::sleep(Duration::from_millis(500));
    let mut received = 0;
    let mut last = String::new();
    // Without waiting, lost messages never come: stop after a quiet spell.
    // With waiting, everything comes, however slow the machine.
    let quiet = if send_timeout_ms == "0" {
        Duration::from_millis(1500)
    } else {
        WAIT
    };
    while received < sent {
        let Some(m) = recv(&server, quiet) else { break };
        let id = String::from_utf8(m[4].clone()).unwrap();
        assert!(id > last, "in order");
        last = id;
        received += 1;
    }
    let _client = sender.join().unwrap();
    proxy.wait_metric(in_sample, before + sent as f64);
    let dropped = proxy.metric(r#"zmq_proxy_dropped_total{reason="hwm",socket="backend"}"#);
    assert_eq!(
        received as f64 + dropped,
        sent as f64,
        "every message delivered or counted"
    );
    (received, dropped)
}

fn push_back(engine: Engine) {
    // Without waiting (timeout 0) the late reader loses messages at the HWM...
    let (_, dropped) = late_reader_flood(engine, "0");
    assert!(dropped > 0.0, "the flood does reach the high-water mark");
    // ...with a wait longer than the reader's delay, the proxy holds the
    // refused message and stops reading the frontend: nothing is lost.
    let (received, dropped) = late_reader_flood(engine, "5000");
    assert_eq!((received, dropped), (400, 0.0));
}
per_engine!(
    a_receiver_at_its_high_water_mark_pushes_back_instead_of_losing_messages,
    super::push_back
);
