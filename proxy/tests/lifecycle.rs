//! Process lifecycle: restart on the same ports, and SIGTERM while traffic flows.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "127.0.0.1/client-lifecycle";
const SERVER: &str = "127.0.0.1/compute/server-lifecycle";

fn restart(engine: Engine) {
    let mut first = Proxy::start_on(engine, &[]);
    let (fe_port, be_port) = (Proxy::port(first.frontend()), Proxy::port(first.backend()));
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, first.frontend());
    let server = dealer(&ctx, SERVER, first.backend());
    wait_routable(&client, SERVER, &server);
    send(&client, &request("1", SERVER, "before", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "before", &[b"p"]));

    first.sigterm();
    let status = first.wait_exit(WAIT).expect("first proxy exits");
    assert!(status.success(), "{status:?}");

    let second = Proxy::start_on(engine, &["-f", &fe_port, "-b", &be_port]);
    assert_eq!(second.frontend(), format!("tcp://127.0.0.1:{fe_port}"));
    // Same peer sockets, no reconnect by the test: libzmq reconnects them.
    wait_routable(&client, SERVER, &server);
    wait_routable(&server, CLIENT, &client);
    send(&client, &request("1", SERVER, "after", &[b"p"]));
    assert_eq!(expect(&server), delivery(CLIENT, "1", "after", &[b"p"]));
    send(&server, &request("5", CLIENT, "after", &[b"r"]));
    assert_eq!(expect(&client), delivery(SERVER, "5", "after", &[b"r"]));
}
per_engine!(
    peers_reconnect_by_themselves_when_the_proxy_restarts_on_the_same_ports,
    super::restart
);

fn sigterm_drain(engine: Engine) {
    let grace = 8;
    let mut proxy = Proxy::start_on(
        engine,
        &[
            "--grace-period",
            &grace.to_string(),
            "--drain-quiet-ms",
            "500",
        ],
    );
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, CLIENT, proxy.frontend());
    let server = dealer(&ctx, SERVER, proxy.backend());
    wait_routable(&client, SERVER, &server);
    assert_eq!(proxy.get("/readyz").map(|r| r.0), Some(200));

    // A sender thread paces casts until told to stop; the test thread receives.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = std::thread::spawn({
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                send(
                    &client,
                    &request("2", SERVER, &format!("m{i}"), &[b"payload"]),
                );
                i += 1;
                sent.store(i, Ordering::SeqCst);
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            client
        }
    });
    let mut received = 0u64;
    // Receives until the deadline (or `want` messages), checking order.
    let receive_until = |received: &mut u64, deadline: Instant, want: Option<u64>| {
        while Instant::now() < deadline && want.is_none_or(|w| *received < w) {
            if let Some(m) = recv(&server, Duration::from_millis(20)) {
                assert_eq!(
                    m[4],
                    format!("m{received}").into_bytes(),
                    "in order, none lost"
                );
                *received += 1;
            }
        }
    };
    receive_until(
        &mut received,
        Instant::now() + Duration::from_millis(300),
        None,
    );
    assert!(received > 0, "traffic flows before the signal");

    proxy.sigterm();
    let signalled = Instant::now();
    // Readiness goes false while the process still runs and forwards.
    let mut saw_not_ready = false;
    while signalled.elapsed() < Duration::from_secs(2) {
        receive_until(
            &mut received,
            Instant::now() + Duration::from_millis(10),
            None,
        );
        if proxy.get("/readyz").map(|r| r.0) == Some(503) {
            saw_not_ready = true;
            break;
        }
    }
    assert!(saw_not_ready, "/readyz never turned 503");
    assert!(
        proxy.wait_exit(Duration::ZERO).is_none(),
        "still running after turning not ready"
    );
    let at_not_ready = received;
    receive_until(
        &mut received,
        Instant::now() + Duration::from_millis(300),
        None,
    );
    assert!(received > at_not_ready, "still forwarding while draining");

    stop.store(true, Ordering::SeqCst);
    let client = sender.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    receive_until(&mut received, Instant::now() + WAIT, Some(total));
    assert_eq!(
        received, total,
        "every message accepted before and during the drain was delivered"
    );

    let status = proxy
        .wait_exit(Duration::from_secs(grace + 2))
        .expect("exits within the grace period");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(grace + 1),
        "took {:?}",
        signalled.elapsed()
    );
    drop(client);
}
per_engine!(
    sigterm_while_traffic_flows_turns_not_ready_first_delivers_everything_and_exits_zero,
    super::sigterm_drain
);
