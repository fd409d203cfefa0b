//! Differential test of the two engines: the same scripted traffic (many
//! peers, random sizes, reconnects, unroutable and invalid messages)
//! through a libzmq-engine proxy and a native-engine proxy. Per (sender,
//! receiver), both deliver exactly the scripted sequence, and their drop
//! counters agree.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const CLIENTS: usize = 4;
const SERVERS: usize = 3;
const PHASES: usize = 3;
const PER_PHASE: usize = 60;

/// A tiny deterministic generator (xorshift64), so both runs see the same script.
struct Script(u64);

impl Script {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Sizes that cross the short/long header boundary and the direct-write
    /// threshold, and some random ones.
    fn size(&mut self) -> usize {
        const EDGES: [usize; 7] = [0, 1, 255, 256, 16 * 1024, 65536, 100_000];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len())],
            _ => self.below(4096),
        }
    }
}

fn client_id(i: usize) -> String {
    format!("127.0.0.1/diff-client-{i}")
}

fn server_id(i: usize) -> String {
    format!("127.0.0.1/compute/diff-server-{i}")
}

fn payload(id: &str, len: usize) -> Vec<u8> {
    id.bytes().cycle().take(len).collect()
}

/// Per (sender, receiver): message ids in delivery order.
type Sequences = BTreeMap<(String, String), Vec<String>>;

/// Receives `count` non-probe messages on `socket` (identity `me`), checking
/// each payload, into `seen`.
fn collect(socket: &zmq::Socket, me: &str, count: usize, seen: &mut Sequences) {
    let mut got = 0;
    while got < count {
        let m = expect(socket);
        let id = String::from_utf8_lossy(&m[4]).into_owned();
        if id == "probe" {
            continue;
        }
        let sender = String::from_utf8_lossy(&m[2]).into_owned();
        let len: usize = id
            .rsplit('-')
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        assert_eq!(m[5], payload(&id, len), "payload of {id}");
        seen.entry((sender, me.to_string())).or_default().push(id);
        got += 1;
    }
}

/// Runs the script through a proxy with `engine`: (delivered sequences,
/// unroutable drops, bad-type drops).
fn run(engine: Engine, seed: u64) -> (Sequences, f64, f64) {
    let proxy = Proxy::start_on(engine, &["--unroutable-wait-ms", "300"]);
    let ctx = zmq::Context::new();
    let mut clients: Vec<zmq::Socket> = (0..CLIENTS)
        .map(|i| dealer(&ctx, &client_id(i), proxy.frontend()))
        .collect();
    let servers: Vec<zmq::Socket> = (0..SERVERS)
        .map(|i| dealer(&ctx, &server_id(i), proxy.backend()))
        .collect();
    let all_routable = |clients: &[zmq::Socket]| {
        for (c, client) in clients.iter().enumerate() {
            for (s, server) in servers.iter().enumerate() {
                wait_routable(client, &server_id(s), server);
                wait_routable(server, &client_id(c), client);
            }
        }
    };
    all_routable(&clients);
    let mut script = Script(seed);
    let mut seen = Sequences::new();
    let (mut unknown, mut invalid) = (0.0, 0.0);
    for phase in 0..PHASES {
        let mut to_server = [0usize; SERVERS];
        let mut to_client = [0usize; CLIENTS];
        for i in 0..PER_PHASE {
            let (c, s) = (script.below(CLIENTS), script.below(SERVERS));
            let len = script.size();
            let id = format!("p{phase}-m{i}-{len}");
            let t = if script.below(2) == 0 { "1" } else { "2" };
            send(
                &clients[c],
                &request(t, &server_id(s), &id, &[&payload(&id, len)]),
            );
            to_server[s] += 1;
            match script.below(10) {
                0 => {
                    send(
                        &clients[c],
                        &request("2", "127.0.0.1/compute/nobody", &id, &[b"x"]),
                    );
                    unknown += 1.0;
                }
                1 => {
                    send(
                        &clients[c],
                        &frames(&[b"", b"1.0", b"9", server_id(s).as_bytes(), b"bad"]),
                    );
                    invalid += 1.0;
                }
                _ => {}
            }
            // The server answers some at once, interleaving both directions.
            if script.below(3) == 0 {
                let rid = format!("r{phase}-m{i}-{}", len / 2);
                send(
                    &servers[s],
                    &request("5", &client_id(c), &rid, &[&payload(&rid, len / 2)]),
                );
                to_client[c] += 1;
            }
        }
        for (s, server) in servers.iter().enumerate() {
            collect(server, &server_id(s), to_server[s], &mut seen);
        }
        for (c, client) in clients.iter().enumerate() {
            collect(client, &client_id(c), to_client[c], &mut seen);
        }
        // A client reconnects under its identity before the next phase.
        let c = phase % CLIENTS;
        clients[c] = dealer(&ctx, &client_id(c), proxy.frontend());
        for (s, server) in servers.iter().enumerate() {
            wait_routable(&clients[c], &server_id(s), server);
            wait_routable(server, &client_id(c), &clients[c]);
        }
    }
    let unroutable = r#"zmq_proxy_dropped_total{reason="unroutable",socket="backend"}"#;
    proxy.wait_metric(unroutable, unknown);
    let bad_type = r#"zmq_proxy_dropped_total{reason="bad_type",socket="frontend"}"#;
    proxy.wait_metric(bad_type, invalid);
    assert!(recv(&servers[0], Duration::from_millis(100)).is_none_or(|m| m[4] == b"probe"));
    (seen, proxy.metric(unroutable), proxy.metric(bad_type))
}

#[test]
fn both_engines_deliver_the_same_sequences_and_count_the_same_drops() {
    for seed in [0x9E37_79B9_7F4A_7C15u64, 42] {
        let reference = run(Engine::Libzmq, seed);
        let native = run(Engine::Native, seed);
        assert_eq!(reference.1, native.1, "unroutable drops, seed {seed}");
        assert_eq!(reference.2, native.2, "bad-type drops, seed {seed}");
        assert_eq!(
            reference.0.keys().collect::<Vec<_>>(),
            native.0.keys().collect::<Vec<_>>()
        );
        for (pair, sequence) in &reference.0 {
            assert_eq!(Some(sequence), native.0.get(pair), "{pair:?}, seed {seed}");
        }
        // And both are the script's own order: ids rise within a phase.
        for sequence in native.0.values() {
            let order: Vec<(usize, usize)> = sequence
                .iter()
                .map(|id| {
                    let mut parts = id[1..].split('-');
                    let phase = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let i = parts.next().and_then(|m| m[1..].parse().ok()).unwrap_or(0);
                    (phase, i)
                })
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted);
        }
    }
}
