//! Connected-peer gauges kept from libzmq's socket monitor events, and
//! CURVE handshakes that failed before a key could be checked, on a thread
//! of their own (monitor sockets are ZeroMQ sockets too).

use prometheus::{IntCounter, IntGauge};

use super::TelemetryError;
use crate::shutdown::Shutdown;

/// Watches ZeroMQ socket monitor events and keeps the connected-peers gauges.
pub struct PeerMonitor {
    watched: Vec<Watched>,
}

/// One monitored socket: its monitor PAIR and what its events count.
struct Watched {
    pair: zmq::Socket,
    connected: IntGauge,
    /// Handshakes that failed on protocol grounds (CURVE sockets only).
    handshake_failed: Option<IntCounter>,
}

/// What one monitor event means for the counters.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected,
    Disconnected,
    HandshakeFailed,
    Other,
}

/// Reads the event number of a monitor message's first frame (u16 event,
/// u32 value, little-endian).
fn seen(frame: &[u8]) -> Seen {
    let [a, b, ..] = frame else {
        return Seen::Other;
    };
    match u16::from_le_bytes([*a, *b]) {
        e if e == zmq::SocketEvent::ACCEPTED.to_raw()
            || e == zmq::SocketEvent::CONNECTED.to_raw() =>
        {
            Seen::Connected
        }
        e if e == zmq::SocketEvent::DISCONNECTED.to_raw() => Seen::Disconnected,
        // A peer that failed the CURVE handshake before the ZAP handler
        // could judge its key: a wrong server key (its HELLO does not
        // open), a plain NULL peer (mechanism mismatch), a malformed
        // command. Refusals by the ZAP handler (HANDSHAKE_FAILED_AUTH) are
        // counted by the handler itself, with their reason.
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw() => Seen::HandshakeFailed,
        _ => Seen::Other,
    }
}

impl PeerMonitor {
    /// An empty monitor.
    pub fn new() -> PeerMonitor {
        PeerMonitor {
            watched: Vec::new(),
        }
    }

    /// Starts monitoring `socket` (call before it binds or connects, from
    /// the thread that owns it); `gauge` counts its connected peers, and
    /// `handshake_failed`, when given, the handshakes that failed on
    /// protocol grounds.
    pub fn watch(
        &mut self,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        name: &str,
        gauge: IntGauge,
        handshake_failed: Option<IntCounter>,
    ) -> Result<(), TelemetryError> {
        let err = |source| TelemetryError::Monitor {
            socket: name.to_string(),
            source,
        };
        let endpoint = format!("inproc://monitor.{name}.{}", uuid::Uuid::new_v4());
        let mut events = zmq::SocketEvent::ACCEPTED.to_raw()
            | zmq::SocketEvent::CONNECTED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw();
        if handshake_failed.is_some() {
            events |= zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw();
        }
        socket.monitor(&endpoint, i32::from(events)).map_err(err)?;
        let pair = ctx.socket(zmq::PAIR).map_err(err)?;
        pair.connect(&endpoint).map_err(err)?;
        self.watched.push(Watched {
            pair,
            connected: gauge,
            handshake_failed,
        });
        Ok(())
    }

    /// Runs the monitor on its own thread until `shutdown` stops.
    pub fn spawn(self, shutdown: Shutdown) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("zmq-monitor".into())
            .spawn(move || self.run(shutdown))
    }

    fn run(self, shutdown: Shutdown) {
        if self.watched.is_empty() {
            return;
        }
        let mut event = zmq::Message::new();
        while !shutdown.is_stopping() {
            let mut items: Vec<zmq::PollItem> = self
                .watched
                .iter()
                .map(|w| w.pair.as_poll_item(zmq::POLLIN))
                .collect();
            if zmq::poll(&mut items, 100).is_err() {
                return;
            }
            let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            for (w, ready) in self.watched.iter().zip(readable) {
                if !ready {
                    continue;
                }
                while w.pair.recv(&mut event, zmq::DONTWAIT).is_ok() {
                    // Frame 1: u16 event + u32 value; frame 2: the endpoint.
                    match seen(&event) {
                        Seen::Connected => w.connected.inc(),
                        Seen::Disconnected => w.connected.dec(),
                        Seen::HandshakeFailed => {
                            if let Some(c) = &w.handshake_failed {
                                c.inc();
                            }
                        }
                        Seen::Other => {}
                    }
                    while event.get_more() {
                        if w.pair.recv(&mut event, zmq::DONTWAIT).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Default for PeerMonitor {
    fn default() -> Self {
        PeerMonitor::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(e: zmq::SocketEvent) -> Vec<u8> {
        let mut frame = e.to_raw().to_le_bytes().to_vec();
        frame.extend(0u32.to_le_bytes());
        frame
    }

    #[test]
    fn events_are_read_from_the_first_two_bytes() {
        assert_eq!(seen(&event(zmq::SocketEvent::ACCEPTED)), Seen::Connected);
        assert_eq!(seen(&event(zmq::SocketEvent::CONNECTED)), Seen::Connected);
        assert_eq!(
            seen(&event(zmq::SocketEvent::DISCONNECTED)),
            Seen::Disconnected
        );
        assert_eq!(
            seen(&event(zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL)),
            Seen::HandshakeFailed
        );
        assert_eq!(
            seen(&event(zmq::SocketEvent::HANDSHAKE_FAILED_AUTH)),
            Seen::Other,
            "the ZAP handler counts its own refusals"
        );
        assert_eq!(seen(&[1]), Seen::Other, "short frame");
    }
}
