//! Bad input for the proxies, sent while the traffic flows:
//! - raw TCP: random bytes, and a ZMTP greeting followed by garbage, on every
//!   port of every proxy (frontend, backend, metrics);
//! - ZeroMQ messages that break protocol 1.0: too few frames, no delimiter,
//!   unknown version, bad or non-numeric type, empty routing key, unknown
//!   routing key, random multi-frame messages, a 1 MiB frame, and valid
//!   envelopes to a real RPC server carrying undecodable payloads.
//!
//! Also the proxies' drop counters (`zmq_proxy_dropped_total`) read from
//! their /metrics, to see the bad envelopes were counted, not forwarded.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small deterministic generator (xorshift64*): reproducible from the
/// printed seed, no extra dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the clock and PID; the seed is printed.
    pub fn from_time() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) | 1;
        eprintln!("bad input: random seed {seed}");
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// TCP connections opened with garbage.
    pub connections: u64,
    /// Garbage bytes written.
    pub bytes: u64,
    /// Malformed ZeroMQ messages sent.
    pub messages: u64,
}

/// Opens `rounds` connections to each of `addrs` (`ip:port`) and writes
/// random bytes (every other time after a valid ZMTP 3 greeting signature).
pub async fn random_tcp(addrs: &[String], rounds: usize, rng: &mut Rng) -> Sent {
    let mut sent = Sent::default();
    for _ in 0..rounds {
        for addr in addrs {
            let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            else {
                continue;
            };
            sent.connections += 1;
            let mut data = Vec::new();
            if rng.below(2) == 0 {
                // ZMTP 3.x greeting: signature, version 3.0, then junk for
                // the mechanism and handshake.
                data.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0]);
            }
            let len = 1 + rng.below(4096) as usize;
            data.extend(rng.bytes(len));
            // The proxy may hang up at any byte: that is its right.
            if s.write_all(&data).await.is_ok() {
                sent.bytes += data.len() as u64;
            }
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
        }
    }
    sent
}

fn message_id(rng: &mut Rng) -> Vec<u8> {
    // Shaped like a uuid1 but never one a client chose.
    let hex: String = (0..32).map(|_| format!("{:x}", rng.below(16))).collect();
    format!(
        "{}-{}-1{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
    .into_bytes()
}

/// Protocol-1.0 violations as a DEALER sends them (the ROUTER prepends the
/// sender), plus valid envelopes to `server` (a real RPC server identity)
/// whose payloads do not decode.
fn malformed(rng: &mut Rng, server: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let id = message_id(rng);
    let junk = rng.bytes(64);
    let v = |frames: &[&[u8]]| frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>();
    let mut out = vec![
        v(&[b"hello"]),
        v(&[b"", b"1.0", b"1"]),
        v(&[b"x", b"1.0", b"1", server, &id, b"[{}, {}]"]),
        v(&[b"", b"2.0", b"1", server, &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"9", server, &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"call", server, &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"", server, &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"1", b"", &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"2", b"nobody/compute/0000", &id, b"[{}, {}]"]),
        v(&[b"", b"1.0", b"5", b"nobody/client", &id, b"[null, null]"]),
        v(&[b"", b"1.0", b"6", b"nobody/client", &id]),
        v(&[&junk]),
        v(&[b"", &junk, &junk, &junk, &junk, &junk, &junk]),
    ];
    // Valid envelopes, undecodable payloads: the server must answer (or
    // drop) them without running a handler.
    for t in [b"1", b"2"] {
        out.push(v(&[b"", b"1.0", t, server, &message_id(rng), &junk]));
        out.push(v(&[b"", b"1.0", t, server, &message_id(rng), b"[not json"]));
        out.push(v(&[b"", b"1.0", t, server, &message_id(rng)]));
    }
    // Random multi-frame messages and one big frame.
    for _ in 0..8 {
        let n = 1 + rng.below(9) as usize;
        out.push(
            (0..n)
                .map(|_| {
                    let len = rng.below(200) as usize;
                    rng.bytes(len)
                })
                .collect(),
        );
    }
    out.push(vec![b"".to_vec(), b"1.0".to_vec(), rng.bytes(1 << 20)]);
    out
}

/// Sends [`malformed`] messages, `rounds` times, from a DEALER connected to
/// each endpoint (`tcp://ip:port`). Blocking: run it off the runtime.
pub fn malformed_messages(
    endpoints: &[String],
    server: &str,
    rounds: usize,
    rng: &mut Rng,
) -> Result<Sent> {
    let ctx = zmq::Context::new();
    let mut sent = Sent::default();
    for endpoint in endpoints {
        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_identity(format!("e2e-garbage/{}", rng.next()).as_bytes())?;
        dealer.set_linger(2000)?;
        dealer.set_sndtimeo(2000)?;
        dealer.set_rcvtimeo(0)?;
        dealer
            .connect(endpoint)
            .with_context(|| format!("connect {endpoint}"))?;
        for _ in 0..rounds {
            for msg in malformed(rng, server.as_bytes()) {
                dealer
                    .send_multipart(msg, 0)
                    .with_context(|| format!("send to {endpoint}"))?;
                sent.messages += 1;
            }
            // Whatever comes back (acks, error replies) is read and ignored.
            while dealer.recv_multipart(zmq::DONTWAIT).is_ok() {}
        }
        // Let libzmq flush before the socket closes (linger bounds it).
        std::thread::sleep(Duration::from_millis(200));
        while dealer.recv_multipart(zmq::DONTWAIT).is_ok() {}
    }
    Ok(sent)
}

/// A minimal HTTP/1.0 GET: (status, body).
pub use harness::http::get as http_get;

/// `zmq_proxy_dropped_total` of one proxy (`ip:port` of /metrics), summed
/// per reason.
pub async fn dropped(metrics_addr: &str) -> Result<BTreeMap<String, f64>> {
    let (code, body) = http_get(metrics_addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics on {metrics_addr}: HTTP {code}");
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("zmq_proxy_dropped_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason=\""))
            .map(|r| r.trim_end_matches('"').to_string())
            .unwrap_or_default();
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(reason).or_default() += value;
    }
    Ok(out)
}
