//! The metric families of the process and the counters of one socket,
//! resolved once so that counting on the hot path is one atomic add.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::TelemetryError;
use crate::protocol::{DropReason, MessageType};

/// The process's metrics registry and metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    dropped: IntCounterVec,
    connected: IntGaugeVec,
    held: IntGaugeVec,
    timed_out: IntCounterVec,
    curve_refused: IntCounterVec,
    curve_reloads: IntCounterVec,
}

/// Pre-resolved counters of one socket (hot path: one atomic add each).
#[derive(Clone)]
pub struct SocketCounters {
    in_messages: [IntCounter; MessageType::COUNT],
    in_bytes: [IntCounter; MessageType::COUNT],
    out_messages: [IntCounter; MessageType::COUNT],
    out_bytes: [IntCounter; MessageType::COUNT],
    dropped: [IntCounter; DropReason::COUNT],
    /// Connected peers, kept by the socket monitor.
    pub connected: IntGauge,
    /// Messages held for a receiver on this socket that is not connected yet.
    pub held: IntGauge,
    /// Peers closed for silence after a heartbeat PING, or for a handshake
    /// not finished in time (native engine; libzmq does not report these).
    pub timed_out: IntCounter,
}

impl SocketCounters {
    /// Counts a valid message received.
    #[inline]
    pub fn received(&self, msg_type: MessageType, bytes: usize) {
        self.in_messages[msg_type.index()].inc();
        self.in_bytes[msg_type.index()].inc_by(bytes as u64);
    }

    /// Counts a message sent.
    #[inline]
    pub fn sent(&self, msg_type: MessageType, bytes: usize) {
        self.out_messages[msg_type.index()].inc();
        self.out_bytes[msg_type.index()].inc_by(bytes as u64);
    }

    /// Counts a dropped message.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason.index()].inc();
    }
}

/// Message and byte counts of one batch of a forwarding loop, added to the
/// shared counters once per batch: per message, two plain adds instead of
/// two atomic ones on cache lines the metrics endpoint also reads.
#[derive(Debug, Default)]
pub struct Tally {
    messages: [u64; MessageType::COUNT],
    bytes: [u64; MessageType::COUNT],
}

impl Tally {
    /// Counts one message.
    #[inline]
    pub fn add(&mut self, msg_type: MessageType, bytes: usize) {
        self.messages[msg_type.index()] += 1;
        self.bytes[msg_type.index()] += bytes as u64;
    }

    /// Adds the counts to `counters` as received, and starts over.
    pub fn flush_received(&mut self, counters: &SocketCounters) {
        self.flush(&counters.in_messages, &counters.in_bytes);
    }

    /// Adds the counts to `counters` as sent, and starts over.
    pub fn flush_sent(&mut self, counters: &SocketCounters) {
        self.flush(&counters.out_messages, &counters.out_bytes);
    }

    fn flush(
        &mut self,
        messages: &[IntCounter; MessageType::COUNT],
        bytes: &[IntCounter; MessageType::COUNT],
    ) {
        for i in 0..6 {
            if self.messages[i] > 0 {
                messages[i].inc_by(self.messages[i]);
                bytes[i].inc_by(self.bytes[i]);
            }
        }
        *self = Tally::default();
    }
}

impl Metrics {
    /// Creates the registry with build info and process metrics.
    pub fn new() -> Result<Metrics, TelemetryError> {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_messages_total",
                "Messages received (in) and sent (out), per socket and message type",
            ),
            &["socket", "direction", "type"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_bytes_total",
                "Bytes (all frames) received and sent, per socket and message type",
            ),
            &["socket", "direction", "type"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_dropped_total",
                "Messages dropped, per socket they arrived on (or were sent to, for unroutable/hwm) and reason",
            ),
            &["socket", "reason"],
        )?;
        let connected = IntGaugeVec::new(
            Opts::new(
                "zmq_proxy_connected_peers",
                "Connected peers per socket (socket monitor)",
            ),
            &["socket"],
        )?;
        let held = IntGaugeVec::new(
            Opts::new(
                "zmq_proxy_held_messages",
                "Messages held for a receiver that is not connected (yet), per socket they wait to be sent on",
            ),
            &["socket"],
        )?;
        let timed_out = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_peers_timed_out_total",
                "Peers closed for not answering a heartbeat or not finishing the handshake in time, per socket (native engine)",
            ),
            &["socket"],
        )?;
        let curve_refused = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_curve_refused_total",
                "CURVE peers refused at the handshake (unknown_key: a key not authorized; handshake: failed before its key could be checked, e.g. a wrong server key or a plain peer) and messages dropped for their sender's key (unknown_key: removed since it connected; identity: an identity the key may not use), per socket",
            ),
            &["socket", "reason"],
        )?;
        let curve_reloads = IntCounterVec::new(
            Opts::new(
                "zmq_proxy_curve_reloads_total",
                "Changes of the authorized CURVE keys file: put in force (ok) or refused, the previous keys staying in force (error)",
            ),
            &["result"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("zmq_proxy_build_info", "Build information; always 1"),
            &["version", "libzmq", "protocol"],
        )?;
        let (major, minor, patch) = zmq::version();
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &format!("{major}.{minor}.{patch}"),
                "1.0",
            ])
            .set(1);
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        registry.register(Box::new(curve_refused.clone()))?;
        registry.register(Box::new(curve_reloads.clone()))?;
        registry.register(Box::new(build))?;
        // Process metrics keep their conventional unprefixed names (process_*).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            messages,
            bytes,
            dropped,
            connected,
            held,
            timed_out,
            curve_refused,
            curve_reloads,
        })
    }

    /// Counts a CURVE peer or message refused on `socket` for `reason`
    /// (rare: resolved per call).
    pub fn count_curve_refused(&self, socket: &str, reason: &str) {
        self.curve_refused
            .with_label_values(&[socket, reason])
            .inc();
    }

    /// The CURVE refusal counter of one socket and reason, resolved once
    /// (for the socket monitor, which counts failed handshakes).
    pub fn curve_refused_counter(&self, socket: &str, reason: &str) -> IntCounter {
        self.curve_refused.with_label_values(&[socket, reason])
    }

    /// Counts a change of the authorized-keys file (`result`: ok, error).
    pub fn count_curve_reload(&self, result: &str) {
        self.curve_reloads.with_label_values(&[result]).inc();
    }

    /// Resolves every counter of socket `name` (e.g. "frontend").
    pub fn socket(&self, name: &str) -> SocketCounters {
        let per_type =
            |family: &IntCounterVec, direction: &str| -> [IntCounter; MessageType::COUNT] {
                MessageType::ALL.map(|t| family.with_label_values(&[name, direction, t.as_str()]))
            };
        SocketCounters {
            in_messages: per_type(&self.messages, "in"),
            in_bytes: per_type(&self.bytes, "in"),
            out_messages: per_type(&self.messages, "out"),
            out_bytes: per_type(&self.bytes, "out"),
            dropped: DropReason::ALL.map(|r| self.dropped.with_label_values(&[name, r.as_str()])),
            connected: self.connected.with_label_values(&[name]),
            held: self.held.with_label_values(&[name]),
            timed_out: self.timed_out.with_label_values(&[name]),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric names, which are constants here.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_its_batch_once_and_starts_over() {
        let m = Metrics::new().unwrap();
        let c = m.socket("backend");
        let mut t = Tally::default();
        t.add(MessageType::Cast, 100);
        t.add(MessageType::Cast, 20);
        t.add(MessageType::Reply, 7);
        t.flush_sent(&c);
        t.flush_sent(&c); // empty now: adds nothing
        let text = m.render();
        for line in [
            r#"zmq_proxy_messages_total{direction="out",socket="backend",type="cast"} 2"#,
            r#"zmq_proxy_bytes_total{direction="out",socket="backend",type="cast"} 120"#,
            r#"zmq_proxy_messages_total{direction="out",socket="backend",type="reply"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        t.add(MessageType::Call, 5);
        t.flush_received(&c);
        assert!(m.render().contains(
            r#"zmq_proxy_messages_total{direction="in",socket="backend",type="call"} 1"#
        ));
    }

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new().unwrap();
        let c = m.socket("frontend");
        c.received(MessageType::Call, 10);
        c.dropped(DropReason::BadType);
        let text = m.render();
        assert!(
            text.contains(
                r#"zmq_proxy_messages_total{direction="in",socket="frontend",type="call"} 1"#
            ),
            "{text}"
        );
        assert!(text
            .contains(r#"zmq_proxy_bytes_total{direction="in",socket="frontend",type="call"} 10"#));
        assert!(text.contains(r#"zmq_proxy_dropped_total{reason="bad_type",socket="frontend"} 1"#));
        assert!(text.contains("zmq_proxy_build_info{"));
    }
}
