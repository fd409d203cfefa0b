//! The router forwarding loops: double router (frontend ROUTER for clients,
//! backend ROUTER for servers) and single router (one ROUTER for both).
//!
//! A loop owns its sockets on one dedicated thread (ZeroMQ sockets are not
//! thread-safe). Per poll wake-up it drains up to `batch` messages from each
//! readable socket; each message is received whole into reusable
//! [`Frame`]s, validated and routed ([`crate::protocol::decide`], shared
//! with the native engine), rewritten by permuting
//! the frames ([`rewrite_for_route`]) and sent on without copying a byte.
//! Invalid, unroutable and high-water-mark messages are dropped whole and
//! counted. With pub/sub on, fanout and notify from clients go to the PUB
//! socket instead ([`crate::publisher::publish`]), optionally acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::curve::IdentityCheck;
use crate::frame::Frame;
use crate::hold::HoldQueue;
use crate::loop_thread::ForwardingLoop;
use crate::protocol::{decide, rewrite_for_route, Decision, DropReason, MessageType};
use crate::shutdown::Shutdown;
use crate::sockets::{message_bytes, recv_message, send_message, set_close_linger, ProxySocket};
use crate::telemetry::{LogLimiter, Metrics, Tally};

/// How long a poll waits before the loop re-checks the shutdown phase.
const POLL_TIMEOUT_MS: i64 = 100;

/// How often held messages (see [`HoldQueue`]) are retried.
const HOLD_RETRY: Duration = Duration::from_millis(10);

/// Most messages held per direction; beyond, unroutable ones are dropped at
/// once. Bounds the memory a flood for an absent receiver can take.
const HOLD_LIMIT: usize = 10_000;

/// Behaviour of a router loop.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Publish fanout/notify arriving from clients instead of routing them.
    pub pubsub: bool,
    /// Acknowledge published fanout/notify to their sender.
    pub ack_pub_sub: bool,
    /// Messages handled per socket per poll wake-up.
    pub batch: usize,
    /// Identity of the frontend ROUTER (sender id of the proxy's own acks).
    pub frontend_identity: Vec<u8>,
    /// Linger at close in ms (-1 = until the drain deadline).
    pub linger_ms: i32,
    /// How long a message refused at the receiver's high-water mark is held
    /// (and its source socket not read, which pushes back on the senders)
    /// before it is dropped. A receiver that timed out is then treated as
    /// congested for as long again: messages for it are dropped at once.
    pub send_timeout: Duration,
    /// How long a message for a receiver that is not connected (yet) is held
    /// for it (see [`HoldQueue`]) before it is dropped as unroutable.
    pub unroutable_wait: Duration,
}

/// A router loop and the sockets it owns.
pub struct RouterLoop {
    frontend: ProxySocket,
    backend: Option<ProxySocket>,
    publisher: Option<ProxySocket>,
    config: RouterConfig,
    shutdown: Shutdown,
    activity: Arc<AtomicU64>,
    curve: Option<CurveIdentities>,
}

/// The CURVE identity check of a loop (see [`crate::curve::identity`]) and
/// where its refusals are counted.
pub struct CurveIdentities {
    /// The check, with its snapshot of the authorized keys.
    pub check: IdentityCheck,
    /// Where `zmq_proxy_curve_refused_total` lives.
    pub metrics: Metrics,
}

/// The metadata property libzmq fills with the ZAP handler's User-Id.
const USER_ID: &std::ffi::CStr = c"User-Id";

impl RouterLoop {
    /// A loop over bound sockets: `backend` is `None` in single-router mode;
    /// `publisher` is the central PUB (used when pub/sub is on). `activity`
    /// counts handled messages, so the drain can tell when traffic stopped.
    pub fn new(
        frontend: ProxySocket,
        backend: Option<ProxySocket>,
        publisher: Option<ProxySocket>,
        config: RouterConfig,
        shutdown: Shutdown,
        activity: Arc<AtomicU64>,
    ) -> RouterLoop {
        RouterLoop {
            frontend,
            backend,
            publisher,
            config,
            shutdown,
            activity,
            curve: None,
        }
    }

    /// Checks every message received on the ROUTERs against the sender's
    /// CURVE key, dropping and counting those it refuses.
    pub fn with_curve(mut self, curve: CurveIdentities) -> RouterLoop {
        self.curve = Some(curve);
        self
    }

    /// Forwards until the shutdown phase reaches `Stopping`, then closes the
    /// sockets with a bounded linger.
    fn forward(self) {
        let RouterLoop {
            frontend,
            backend,
            publisher,
            config,
            shutdown,
            activity,
            curve,
        } = self;
        let mut forwarder = Forwarder {
            config: &config,
            publisher: publisher.as_ref(),
            frames: Vec::with_capacity(16),
            received: Tally::default(),
            routed: Tally::default(),
            limiter: LogLimiter::new(20, Duration::from_secs(10)),
            pending: None,
            congested: HashMap::new(),
            held: [HoldQueue::new(HOLD_LIMIT), HoldQueue::new(HOLD_LIMIT)],
            next_hold_retry: Instant::now(),
            curve,
        };
        tracing::info!(
            mode = if backend.is_some() {
                "double-router"
            } else {
                "single-router"
            },
            pubsub = config.pubsub,
            ack_pub_sub = config.ack_pub_sub,
            "router loop started"
        );
        let double = backend.is_some();
        while !shutdown.is_stopping() {
            let wait = Wait::plan(
                forwarder.pending.as_ref(),
                double,
                config.send_timeout,
                forwarder.holding().then_some(forwarder.next_hold_retry),
                Instant::now(),
            );
            let (front_ready, back_ready, dest_writable) = {
                let mut items = [
                    frontend.socket().as_poll_item(wait.frontend),
                    match &backend {
                        Some(b) => b.socket().as_poll_item(wait.backend),
                        None => frontend.socket().as_poll_item(zmq::PollEvents::empty()),
                    },
                ];
                let n = if double { 2 } else { 1 };
                match zmq::poll(&mut items[..n], wait.timeout_ms) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(error) => {
                        tracing::error!(%error, "poll failed; router loop stops");
                        break;
                    }
                }
                let dest_writable = match forwarder.pending.as_ref() {
                    Some(p) if p.from == Direction::FromFrontend && double => {
                        items[1].is_writable()
                    }
                    Some(_) => items[0].is_writable(),
                    None => false,
                };
                (
                    items[0].is_readable(),
                    n == 2 && items[1].is_readable(),
                    dest_writable,
                )
            };
            let mut handled = 0u64;
            // Held messages first: a receiver that just connected gets them
            // before anything newer for it.
            if forwarder.holding() && Instant::now() >= forwarder.next_hold_retry {
                handled += forwarder.retry_held([backend.as_ref().unwrap_or(&frontend), &frontend]);
            }
            if let Some(from) = forwarder.pending.as_ref().map(|p| p.from) {
                let to = from.destination(&frontend, backend.as_ref());
                handled += forwarder.retry_pending(to, dest_writable);
            }
            let blocked = forwarder.pending.as_ref().map(|p| p.from);
            match &backend {
                Some(back) => {
                    if front_ready && blocked != Some(Direction::FromFrontend) {
                        handled += forwarder.drain(&frontend, back, Direction::FromFrontend);
                    }
                    if back_ready && blocked != Some(Direction::FromBackend) {
                        handled += forwarder.drain(back, &frontend, Direction::FromBackend);
                    }
                }
                None => {
                    if front_ready && blocked.is_none() {
                        handled += forwarder.drain(&frontend, &frontend, Direction::FromFrontend);
                    }
                }
            }
            if handled > 0 {
                activity.fetch_add(handled, Ordering::Relaxed);
            }
        }
        if let Some(p) = forwarder.pending.take() {
            let to = p.from.destination(&frontend, backend.as_ref());
            to.counters.dropped(DropReason::HighWaterMark);
        }
        forwarder.drop_held([backend.as_ref().unwrap_or(&frontend), &frontend]);
        for s in std::iter::once(&frontend)
            .chain(backend.as_ref())
            .chain(publisher.as_ref())
        {
            set_close_linger(s.socket(), config.linger_ms, &shutdown);
        }
        tracing::info!("router loop stopped");
    }
}

/// Per-loop forwarding state, separate from the sockets so both sockets can
/// be borrowed while it is mutated.
struct Forwarder<'a> {
    config: &'a RouterConfig,
    publisher: Option<&'a ProxySocket>,
    frames: Vec<Frame>,
    /// Messages received and routed in the current batch (see [`Tally`]).
    received: Tally,
    routed: Tally,
    limiter: LogLimiter,
    /// A routed message refused at its receiver's high-water mark.
    pending: Option<Pending>,
    /// Receivers whose wait timed out, and until when they count as congested.
    congested: HashMap<Vec<u8>, Instant>,
    /// Messages for receivers that are not connected yet, per direction
    /// ([`Direction::index`]), and when they are retried next.
    held: [HoldQueue<Routed>; 2],
    next_hold_retry: Instant,
    /// The CURVE identity check, when the sockets are CURVE servers.
    curve: Option<CurveIdentities>,
}

/// A rewritten message that could not be sent yet, with what its counters
/// need once it is.
struct Routed {
    frames: Vec<Frame>,
    msg_type: MessageType,
    bytes: usize,
}

impl Routed {
    /// Sends it on `to` and counts it sent there.
    fn send(&mut self, to: &ProxySocket) -> Result<(), DropReason> {
        send_message(to, &mut self.frames)?;
        to.counters.sent(self.msg_type, self.bytes);
        Ok(())
    }
}

/// Which way a message travels: from the frontend (clients; everyone in
/// single-router mode) to the backend, or from the backend back to the
/// frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Received on the frontend; sent on the backend (the frontend in
    /// single-router mode).
    FromFrontend,
    /// Received on the backend; sent on the frontend.
    FromBackend,
}

impl Direction {
    /// The index of this direction's held queue in [`Forwarder::held`].
    fn index(self) -> usize {
        match self {
            Direction::FromFrontend => 0,
            Direction::FromBackend => 1,
        }
    }

    /// The socket a message going this way is sent on.
    fn destination<'s>(
        self,
        frontend: &'s ProxySocket,
        backend: Option<&'s ProxySocket>,
    ) -> &'s ProxySocket {
        match self {
            Direction::FromFrontend => backend.unwrap_or(frontend),
            Direction::FromBackend => frontend,
        }
    }

    /// Whether the message came from the frontend, as the protocol's
    /// decision wants it (clients publish; servers only route).
    fn is_from_frontend(self) -> bool {
        self == Direction::FromFrontend
    }
}

/// A message waiting for room at its receiver.
struct Pending {
    message: Routed,
    from: Direction,
    since: Instant,
    /// The destination reported room (POLLOUT) but still refused this
    /// message: its room is at another peer. Until the next retry, sleep
    /// briefly instead of waiting for POLLOUT, which would spin.
    backoff: bool,
}

/// What one poll of a router loop waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    frontend: zmq::PollEvents,
    backend: zmq::PollEvents,
    timeout_ms: i64,
}

impl Wait {
    /// Plans the next poll. Without a pending message: input on every
    /// socket. With one: its source is not read (backpressure), and the
    /// loop wakes as soon as its destination has room (POLLOUT: on a ROUTER
    /// with ROUTER_MANDATORY, when any peer's pipe is below its high-water
    /// mark), as libzmq's own blocking send would, or at the send deadline.
    /// After POLLOUT misled a retry (`backoff`), it sleeps 1 ms instead.
    /// `retry_at`: when held messages are due for a retry, if any.
    fn plan(
        pending: Option<&Pending>,
        double: bool,
        send_timeout: Duration,
        retry_at: Option<Instant>,
        now: Instant,
    ) -> Wait {
        let mut wait = Wait::plan_io(pending, double, send_timeout, now);
        if let Some(at) = retry_at {
            wait.timeout_ms = wait.timeout_ms.min(ms_until(at, now));
        }
        wait
    }

    fn plan_io(
        pending: Option<&Pending>,
        double: bool,
        send_timeout: Duration,
        now: Instant,
    ) -> Wait {
        let Some(p) = pending else {
            return Wait {
                frontend: zmq::POLLIN,
                backend: if double {
                    zmq::POLLIN
                } else {
                    zmq::PollEvents::empty()
                },
                timeout_ms: POLL_TIMEOUT_MS,
            };
        };
        let room = if p.backoff {
            zmq::PollEvents::empty()
        } else {
            zmq::POLLOUT
        };
        let timeout_ms = if p.backoff {
            1
        } else {
            ms_until(p.since + send_timeout, now)
        };
        let (frontend, backend) = match (double, p.from) {
            // Single router: the frontend is both source and destination.
            (false, _) => (room, zmq::PollEvents::empty()),
            (true, Direction::FromFrontend) => (zmq::PollEvents::empty(), zmq::POLLIN | room),
            (true, Direction::FromBackend) => (zmq::POLLIN | room, zmq::PollEvents::empty()),
        };
        Wait {
            frontend,
            backend,
            timeout_ms,
        }
    }
}

/// Milliseconds from `now` to `at`, rounded up, at least 1 (poll(0) would
/// spin) and at most the usual poll timeout (the shutdown phase is re-checked).
fn ms_until(at: Instant, now: Instant) -> i64 {
    let left = at.saturating_duration_since(now);
    (left.as_micros().div_ceil(1000) as i64).clamp(1, POLL_TIMEOUT_MS)
}

impl Forwarder<'_> {
    /// Handles up to `batch` messages waiting on `from`; returns how many.
    /// Stops early when a message has to wait for room at its receiver.
    fn drain(&mut self, from: &ProxySocket, to: &ProxySocket, direction: Direction) -> u64 {
        let mut handled = 0;
        while handled < self.config.batch as u64 && self.pending.is_none() {
            match recv_message(from, &mut self.frames) {
                Ok(Some(bytes)) => {
                    handled += 1;
                    self.handle(from, to, direction, bytes);
                }
                Ok(None) => break,
                Err(error) => {
                    if self.may_log() {
                        tracing::error!(socket = from.name, %error, "receive failed");
                    }
                    self.frames.clear();
                    break;
                }
            }
        }
        self.received.flush_received(&from.counters);
        self.routed.flush_sent(&to.counters);
        handled
    }

    #[inline]
    fn handle(&mut self, from: &ProxySocket, to: &ProxySocket, direction: Direction, bytes: usize) {
        if self.curve.is_some() && self.refused_by_curve(from) {
            self.frames.clear();
            return;
        }
        let publishing = self.config.pubsub && self.publisher.is_some();
        let decision = match decide(&self.frames, direction.is_from_frontend(), publishing) {
            Ok(decision) => decision,
            Err(reason) => {
                from.counters.dropped(reason);
                self.log_invalid(from.name, reason);
                self.frames.clear();
                return;
            }
        };
        let msg_type = decision.msg_type();
        self.received.add(msg_type, bytes);
        if let (Decision::Publish(_), Some(publisher)) = (decision, self.publisher) {
            self.publish(from, publisher, msg_type);
            return;
        }
        rewrite_for_route(&mut self.frames);
        let held = &self.held[direction.index()];
        if !held.is_empty() && self.frames.first().is_some_and(|f| held.holds(f)) {
            // Messages for this receiver wait already: queue behind them.
            self.hold(to, direction, msg_type, bytes);
            return;
        }
        match send_message(to, &mut self.frames) {
            Ok(()) => self.routed.add(msg_type, bytes),
            Err(DropReason::Unroutable) if !self.config.unroutable_wait.is_zero() => {
                self.hold(to, direction, msg_type, bytes);
            }
            Err(DropReason::HighWaterMark)
                if !self.config.send_timeout.is_zero() && !self.is_congested() =>
            {
                // Hold the message (it is intact) and stop reading its source.
                self.pending = Some(Pending {
                    message: self.take_routed(msg_type, bytes),
                    from: direction,
                    since: Instant::now(),
                    backoff: false,
                });
            }
            Err(reason) => {
                to.counters.dropped(reason);
                if self.may_log() {
                    tracing::warn!(socket = to.name, %reason, r#type = %msg_type, "message dropped on send");
                }
                self.frames.clear();
            }
        }
    }

    /// Whether messages wait for receivers that are not connected yet.
    fn holding(&self) -> bool {
        self.held.iter().any(|h| !h.is_empty())
    }

    /// Holds the (rewritten) message in `self.frames` for its receiver, or
    /// drops it as unroutable when the queue is full.
    fn hold(
        &mut self,
        to: &ProxySocket,
        direction: Direction,
        msg_type: MessageType,
        bytes: usize,
    ) {
        let message = self.take_routed(msg_type, bytes);
        let Some(receiver) = message.frames.first().map(|f| f.to_vec()) else {
            return;
        };
        let queue = &mut self.held[direction.index()];
        let was_empty = queue.is_empty();
        let deadline = Instant::now() + self.config.unroutable_wait;
        match queue.push(&receiver, deadline, message) {
            Ok(()) => {
                to.counters.held.set(queue.len() as i64);
                if was_empty {
                    // The first retry comes after a full interval, not at
                    // once (the receiver was absent a moment ago).
                    self.next_hold_retry = Instant::now() + HOLD_RETRY;
                }
            }
            Err(_) => {
                to.counters.dropped(DropReason::Unroutable);
                if self.may_log() {
                    tracing::warn!(socket = to.name, r#type = %msg_type, limit = HOLD_LIMIT, "message for an absent receiver dropped: too many held");
                }
            }
        }
    }

    /// Moves the (rewritten) message in `self.frames` out, to wait.
    fn take_routed(&mut self, msg_type: MessageType, bytes: usize) -> Routed {
        Routed {
            frames: std::mem::replace(&mut self.frames, Vec::with_capacity(16)),
            msg_type,
            bytes,
        }
    }

    /// Retries the held messages on `to` (indexed by [`direction`]);
    /// returns how many were sent.
    fn retry_held(&mut self, to: [&ProxySocket; 2]) -> u64 {
        let now = Instant::now();
        let mut sent = 0;
        let mut expired = 0u64;
        for (queue, to) in self.held.iter_mut().zip(to) {
            if queue.is_empty() {
                continue;
            }
            sent += queue.retry(
                now,
                |m| m.send(to),
                |_, reason| {
                    to.counters.dropped(reason);
                    expired += 1;
                },
            );
            to.counters.held.set(queue.len() as i64);
        }
        if expired > 0 && self.may_log() {
            tracing::warn!(
                expired,
                wait_ms = self.config.unroutable_wait.as_millis() as u64,
                "held messages dropped: their receivers did not connect in time"
            );
        }
        self.next_hold_retry = now + HOLD_RETRY;
        sent as u64
    }

    /// At shutdown: counts every held message as unroutable.
    fn drop_held(&mut self, to: [&ProxySocket; 2]) {
        for (queue, to) in self.held.iter_mut().zip(to) {
            queue.drop_all(|_| to.counters.dropped(DropReason::Unroutable));
            to.counters.held.set(0);
        }
    }

    /// Whether the receiver of the message in `self.frames` timed out recently.
    fn is_congested(&mut self) -> bool {
        if self.congested.is_empty() {
            return false;
        }
        let now = Instant::now();
        self.congested.retain(|_, until| *until > now);
        self.frames
            .first()
            .is_some_and(|key| self.congested.contains_key(&key[..]))
    }

    /// Retries the pending message; drops it once it waited `send_timeout`.
    /// `writable`: the poll reported room at `to`. Returns 1 if it was sent.
    fn retry_pending(&mut self, to: &ProxySocket, writable: bool) -> u64 {
        let Some(mut p) = self.pending.take() else {
            return 0;
        };
        match p.message.send(to) {
            Ok(()) => 1,
            Err(DropReason::HighWaterMark) if p.since.elapsed() < self.config.send_timeout => {
                p.backoff = writable;
                self.pending = Some(p);
                0
            }
            Err(reason) => {
                to.counters.dropped(reason);
                if reason == DropReason::HighWaterMark {
                    if let Some(key) = p.message.frames.first() {
                        self.congested
                            .insert(key.to_vec(), Instant::now() + self.config.send_timeout);
                    }
                }
                if self.may_log() {
                    tracing::warn!(socket = to.name, %reason, r#type = %p.message.msg_type, "message dropped on send");
                }
                0
            }
        }
    }

    fn publish(&mut self, frontend: &ProxySocket, publisher: &ProxySocket, msg_type: MessageType) {
        let ack_to = crate::publisher::publish(
            publisher,
            &mut self.frames,
            msg_type,
            self.config.ack_pub_sub,
        );
        if let Some(mut ack) = ack_to.map(|(client, msg_id)| {
            crate::protocol::proxy_ack(client, &self.config.frontend_identity, &msg_id)
                .into_iter()
                .collect::<Vec<_>>()
        }) {
            let bytes = message_bytes(&ack);
            match send_message(frontend, &mut ack) {
                Ok(()) => frontend.counters.sent(MessageType::Ack, bytes),
                Err(reason) => frontend.counters.dropped(reason),
            }
        }
    }

    /// Whether the sender's CURVE key may not send this message (counted
    /// and logged here). The routing id is the ROUTER's first frame; the
    /// key is on the frames the peer sent.
    fn refused_by_curve(&mut self, from: &ProxySocket) -> bool {
        let Some(curve) = self.curve.as_mut() else {
            return false;
        };
        let identity = self.frames.first().map(|f| &f[..]).unwrap_or_default();
        let user_id = self.frames.get(1).and_then(|f| f.property(USER_ID));
        let Err(reason) = curve.check.check(identity, user_id) else {
            return false;
        };
        curve
            .metrics
            .count_curve_refused(from.name, reason.as_str());
        let key = user_id.map(|k| String::from_utf8_lossy(k).into_owned());
        let sender = String::from_utf8_lossy(&identity[..identity.len().min(80)]).into_owned();
        if self.may_log() {
            tracing::warn!(socket = from.name, reason = reason.as_str(), ?key, %sender, "message refused for its sender's CURVE key");
        }
        true
    }

    fn may_log(&mut self) -> bool {
        let (allowed, suppressed) = self.limiter.check(Instant::now());
        if suppressed > 0 {
            tracing::warn!(suppressed, "log lines about dropped messages suppressed");
        }
        allowed
    }

    fn log_invalid(&mut self, socket: &str, reason: DropReason) {
        if !self.may_log() {
            return;
        }
        let frames = self.frames.len();
        let sender = self
            .frames
            .first()
            .map(|f| String::from_utf8_lossy(&f[..f.len().min(80)]).into_owned());
        if reason == DropReason::UnknownVersion {
            let version = self
                .frames
                .get(2)
                .map(|f| String::from_utf8_lossy(&f[..f.len().min(16)]).into_owned());
            tracing::warn!(socket, %reason, frames, ?sender, ?version, "message with an unknown protocol version dropped");
        } else {
            tracing::warn!(socket, %reason, frames, ?sender, "invalid message dropped");
        }
    }
}

impl ForwardingLoop for RouterLoop {
    const THREAD: &'static str = "zmq-router";

    fn run(self) -> std::io::Result<()> {
        self.forward();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a pending message came from, short so that each plan fits a line.
    const FRONT: Direction = Direction::FromFrontend;
    const BACK: Direction = Direction::FromBackend;

    fn pending(from: Direction, backoff: bool, since: Instant) -> Pending {
        Pending {
            message: Routed {
                frames: Vec::new(),
                msg_type: MessageType::Cast,
                bytes: 0,
            },
            from,
            since,
            backoff,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn without_a_pending_message_every_socket_is_read() {
        let now = Instant::now();
        let double = Wait::plan(None, true, SECOND, None, now);
        assert_eq!(
            (double.frontend, double.backend),
            (zmq::POLLIN, zmq::POLLIN)
        );
        assert_eq!(double.timeout_ms, POLL_TIMEOUT_MS);
        let single = Wait::plan(None, false, SECOND, None, now);
        assert_eq!(single.frontend, zmq::POLLIN);
        assert!(single.backend.is_empty());
    }

    #[test]
    fn a_pending_message_stops_its_source_and_waits_for_room_at_its_destination() {
        let now = Instant::now();
        let from_front = Wait::plan(Some(&pending(FRONT, false, now)), true, SECOND, None, now);
        assert!(from_front.frontend.is_empty(), "the source is not read");
        assert_eq!(from_front.backend, zmq::POLLIN | zmq::POLLOUT);
        let from_back = Wait::plan(Some(&pending(BACK, false, now)), true, SECOND, None, now);
        assert_eq!(from_back.frontend, zmq::POLLIN | zmq::POLLOUT);
        assert!(from_back.backend.is_empty());
        let single = Wait::plan(Some(&pending(FRONT, false, now)), false, SECOND, None, now);
        assert_eq!(
            single.frontend,
            zmq::POLLOUT,
            "one socket: only room is awaited"
        );
        assert!(single.backend.is_empty());
    }

    #[test]
    fn after_a_misleading_pollout_the_loop_sleeps_instead_of_spinning() {
        let now = Instant::now();
        let w = Wait::plan(Some(&pending(FRONT, true, now)), true, SECOND, None, now);
        assert_eq!(w.backend, zmq::POLLIN, "replies still flow");
        assert_eq!(w.timeout_ms, 1);
    }

    #[test]
    fn held_messages_cap_the_wait_at_their_next_retry() {
        let now = Instant::now();
        let idle = Wait::plan(
            None,
            true,
            SECOND,
            Some(now + Duration::from_millis(7)),
            now,
        );
        assert_eq!((idle.frontend, idle.timeout_ms), (zmq::POLLIN, 7));
        let due = Wait::plan(None, true, SECOND, Some(now), now);
        assert_eq!(
            due.timeout_ms, 1,
            "a retry that is due never makes poll spin"
        );
        let far = Wait::plan(None, true, SECOND, Some(now + SECOND), now);
        assert_eq!(far.timeout_ms, POLL_TIMEOUT_MS);
    }

    #[test]
    fn the_wait_ends_at_the_send_deadline_and_never_polls_with_zero() {
        let now = Instant::now();
        let fresh = Wait::plan(Some(&pending(FRONT, false, now)), true, SECOND, None, now);
        assert_eq!(
            fresh.timeout_ms, POLL_TIMEOUT_MS,
            "capped: shutdown is re-checked"
        );
        let p = pending(FRONT, false, now);
        let near = Wait::plan(
            Some(&p),
            true,
            SECOND,
            None,
            now + Duration::from_micros(997_500),
        );
        assert_eq!(near.timeout_ms, 3, "2.5 ms left rounds up");
        let late = Wait::plan(Some(&p), true, SECOND, None, now + 2 * SECOND);
        assert_eq!(
            late.timeout_ms, 1,
            "past the deadline: the next retry drops it"
        );
    }
}
