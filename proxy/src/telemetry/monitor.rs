//! Connected-peer gauges kept from libzmq's socket monitor events, on a
//! thread of their own (monitor sockets are ZeroMQ sockets too).

use prometheus::IntGauge;

use super::TelemetryError;
use crate::shutdown::Shutdown;

/// Watches ZeroMQ socket monitor events and keeps the connected-peers gauges.
pub struct PeerMonitor {
    watched: Vec<(zmq::Socket, IntGauge)>,
}

impl PeerMonitor {
    /// An empty monitor.
    pub fn new() -> PeerMonitor {
        PeerMonitor {
            watched: Vec::new(),
        }
    }

    /// Starts monitoring `socket` (call before it binds or connects, from
    /// the thread that owns it); `gauge` counts its connected peers.
    pub fn watch(
        &mut self,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        name: &str,
        gauge: IntGauge,
    ) -> Result<(), TelemetryError> {
        let err = |source| TelemetryError::Monitor {
            socket: name.to_string(),
            source,
        };
        let endpoint = format!("inproc://monitor.{name}.{}", uuid::Uuid::new_v4());
        let events = zmq::SocketEvent::ACCEPTED.to_raw()
            | zmq::SocketEvent::CONNECTED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw();
        socket.monitor(&endpoint, events as i32).map_err(err)?;
        let pair = ctx.socket(zmq::PAIR).map_err(err)?;
        pair.connect(&endpoint).map_err(err)?;
        self.watched.push((pair, gauge));
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
                .map(|(s, _)| s.as_poll_item(zmq::POLLIN))
                .collect();
            if zmq::poll(&mut items, 100).is_err() {
                return;
            }
            let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            for ((pair, gauge), ready) in self.watched.iter().zip(readable) {
                if !ready {
                    continue;
                }
                while pair.recv(&mut event, zmq::DONTWAIT).is_ok() {
                    // Frame 1: u16 event + u32 value; frame 2: the endpoint.
                    if event.len() >= 2 {
                        match u16::from_le_bytes([event[0], event[1]]) {
                            e if e == zmq::SocketEvent::ACCEPTED.to_raw()
                                || e == zmq::SocketEvent::CONNECTED.to_raw() =>
                            {
                                gauge.inc()
                            }
                            e if e == zmq::SocketEvent::DISCONNECTED.to_raw() => gauge.dec(),
                            _ => {}
                        }
                    }
                    while event.get_more() {
                        if pair.recv(&mut event, zmq::DONTWAIT).is_err() {
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
