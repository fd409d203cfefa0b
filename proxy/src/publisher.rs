//! Publishing: the central PUB path of a router loop (fanout and notify with
//! pub/sub on) and the local-publisher loop, a SUB subscribed to everything
//! on every central PUB, re-publishing each message unchanged on its own PUB
//! (one per node, so fanout crosses the network once per node).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::Frame;
use crate::loop_thread::ForwardingLoop;
use crate::protocol::{rewrite_for_publish, MessageType, Publication};
use crate::shutdown::Shutdown;
use crate::sockets::{message_bytes, recv_message, send_message, set_close_linger, ProxySocket};
use crate::telemetry::LogLimiter;

/// Publishes a validated envelope of type `msg_type` on the central PUB as
/// `[topic, "1.0", type, msg_id, payload...]`. With `ack`, returns the
/// sender's identity frame and the message id for the proxy's ACK.
pub fn publish(
    publisher: &ProxySocket,
    frames: &mut Vec<Frame>,
    msg_type: MessageType,
    ack: bool,
) -> Option<(Frame, Vec<u8>)> {
    let sender = rewrite_for_publish(frames)?;
    let ack_to = if ack {
        frames.get(3).map(|id| (sender, id.to_vec()))
    } else {
        None
    };
    let bytes = message_bytes(frames);
    match send_message(publisher, frames) {
        Ok(()) => publisher.counters.sent(msg_type, bytes),
        Err(reason) => {
            publisher.counters.dropped(reason);
            frames.clear();
        }
    }
    ack_to
}

/// The local-publisher loop and its sockets.
pub struct LocalPublisher {
    subscriber: ProxySocket,
    publisher: ProxySocket,
    upstreams: mpsc::Receiver<BTreeSet<String>>,
    batch: usize,
    linger_ms: i32,
    shutdown: Shutdown,
    activity: Arc<AtomicU64>,
}

impl LocalPublisher {
    /// A loop over a SUB (not yet connected) and a bound PUB. The set of
    /// central publisher endpoints to subscribe to arrives on `upstreams`
    /// (whole sets; the loop connects and disconnects the difference).
    pub fn new(
        subscriber: ProxySocket,
        publisher: ProxySocket,
        upstreams: mpsc::Receiver<BTreeSet<String>>,
        batch: usize,
        linger_ms: i32,
        shutdown: Shutdown,
        activity: Arc<AtomicU64>,
    ) -> LocalPublisher {
        LocalPublisher {
            subscriber,
            publisher,
            upstreams,
            batch,
            linger_ms,
            shutdown,
            activity,
        }
    }

    /// Relays until the shutdown phase reaches `Stopping`.
    fn relay(self) {
        let mut limiter = LogLimiter::new(20, Duration::from_secs(10));
        if let Err(error) = self.subscriber.socket().set_subscribe(b"") {
            tracing::error!(%error, "cannot subscribe; local publisher stops");
            return;
        }
        let mut connected: BTreeSet<String> = BTreeSet::new();
        let mut frames: Vec<Frame> = Vec::with_capacity(16);
        while !self.shutdown.is_stopping() {
            if let Some(wanted) = self.upstreams.try_iter().last() {
                self.reconnect(&mut connected, wanted);
            }
            let readable = {
                let mut items = [self.subscriber.socket().as_poll_item(zmq::POLLIN)];
                match zmq::poll(&mut items, 100) {
                    Ok(_) => items[0].is_readable(),
                    Err(zmq::Error::EINTR) => continue,
                    Err(error) => {
                        tracing::error!(%error, "poll failed; local publisher stops");
                        break;
                    }
                }
            };
            if !readable {
                continue;
            }
            let mut handled = 0u64;
            while handled < self.batch as u64 {
                let bytes = match recv_message(&self.subscriber, &mut frames) {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(%error, "receive failed");
                        frames.clear();
                        break;
                    }
                };
                handled += 1;
                let msg_type = match Publication::parse(&frames) {
                    Ok(p) => p.msg_type,
                    Err(reason) => {
                        self.subscriber.counters.dropped(reason);
                        if limiter.check(Instant::now()).0 {
                            tracing::warn!(%reason, frames = frames.len(), "invalid publication dropped");
                        }
                        frames.clear();
                        continue;
                    }
                };
                self.subscriber.counters.received(msg_type, bytes);
                // Sent or refused, the frames are reused by the next receive.
                match send_message(&self.publisher, &mut frames) {
                    Ok(()) => self.publisher.counters.sent(msg_type, bytes),
                    Err(reason) => self.publisher.counters.dropped(reason),
                }
            }
            self.activity.fetch_add(handled, Ordering::Relaxed);
        }
        set_close_linger(self.subscriber.socket(), 0, &self.shutdown);
        set_close_linger(self.publisher.socket(), self.linger_ms, &self.shutdown);
        tracing::info!("local publisher stopped");
    }

    fn reconnect(&self, connected: &mut BTreeSet<String>, wanted: BTreeSet<String>) {
        for gone in connected.difference(&wanted) {
            match self.subscriber.socket().disconnect(gone) {
                Ok(()) => tracing::info!(endpoint = %gone, "unsubscribed from central publisher"),
                Err(error) => tracing::warn!(endpoint = %gone, %error, "disconnect failed"),
            }
        }
        let mut now_connected: BTreeSet<String> =
            connected.intersection(&wanted).cloned().collect();
        for new in wanted.difference(connected) {
            match self.subscriber.socket().connect(new) {
                Ok(()) => {
                    tracing::info!(endpoint = %new, "subscribed to central publisher");
                    now_connected.insert(new.clone());
                }
                Err(error) => tracing::warn!(endpoint = %new, %error, "connect failed"),
            }
        }
        *connected = now_connected;
    }
}

impl ForwardingLoop for LocalPublisher {
    const THREAD: &'static str = "zmq-local-pub";

    fn run(self) -> std::io::Result<()> {
        self.relay();
        Ok(())
    }
}
