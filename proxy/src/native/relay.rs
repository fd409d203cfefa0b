//! The native local publisher: one mio thread holding a SUB connection to
//! each central publisher and a native [`Publisher`] re-publishing every
//! complete message unchanged (one per node, so fanout crosses the network
//! once per node). The libzmq engine's counterpart is
//! [`crate::publisher::LocalPublisher`].
//!
//! The set of central publishers arrives whole on a channel (fixed ones and
//! the matchmaker's, as they change): new endpoints are connected, removed
//! ones dropped. A connection that fails or closes is tried again after a
//! back-off that starts at libzmq's reconnect interval (100 ms) and doubles
//! up to [`RECONNECT_MAX`]. Each connection does the ZMTP handshake as a
//! SUB and subscribes to everything, in the form its publisher's version
//! expects (3.1: a SUBSCRIBE command; 3.0: the message form). A message cut
//! by a disconnect is dropped whole and counted (`truncated` on the
//! `subscriber` socket), as in the router.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use zmtp::{Command, Decoder, Limits, Push, SocketType, Subscription, Version};

use super::connection::{free_slot, tune, Connection, Next, Phase, Side};
use super::handshake::{opening_as, Step};
use super::heartbeat::{ping, pong, Due, Liveness};
use super::keepalive::Keepalive;
use super::publisher::{Publisher, Timeouts};
use crate::loop_thread::ForwardingLoop;
use crate::protocol::{DropReason, Publication};
use crate::shutdown::Shutdown;
use crate::telemetry::{LogLimiter, SocketCounters, Tally};

/// Longest poll; the shutdown phase and the upstream set are re-checked
/// this often.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// First wait before a reconnect (libzmq's default `ZMQ_RECONNECT_IVL`).
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between reconnects: a central proxy gone for long costs
/// an attempt every 2 s, not ten a second, and one that comes back is
/// picked up within 2 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Reads per upstream per turn before others get theirs.
const READS_PER_TURN: usize = 8;
/// Most frames in one message.
const MAX_FRAMES: usize = 4096;
/// First token of the local PUB; upstream `i` has token `i`.
const PUBLISHER_TOKENS: usize = 1 << (usize::BITS - 2);

/// The next wait after one of `previous` (doubling, capped).
pub fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(RECONNECT_FIRST, RECONNECT_MAX)
}

/// Behaviour of the native local publisher's SUB side and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Largest message accepted from a central publisher; larger ones are
    /// dropped whole (`too_large`).
    pub max_message: usize,
    /// Heartbeats and the handshake deadline of the upstream connections.
    pub timeouts: Timeouts,
    /// Linger of the PUB's queues at close in ms (-1: until the drain
    /// deadline).
    pub linger_ms: i32,
}

/// The native local-publisher loop and what it owns.
pub struct Relay {
    publisher: Publisher,
    subscriber: SocketCounters,
    upstreams: mpsc::Receiver<BTreeSet<String>>,
    config: RelayConfig,
    shutdown: Shutdown,
    activity: Arc<AtomicU64>,
}

/// One central publisher and where its connection stands.
struct Upstream {
    endpoint: String,
    /// The wait before the next reconnect, should this connection end.
    backoff: Duration,
    state: State,
}

enum State {
    /// Not connected: try at this time.
    Waiting(Instant),
    /// TCP connect in progress (`connected` false) or done, handshake and
    /// messages as in any [`Connection`] (its `side` is unused here).
    Open {
        conn: Box<Connection>,
        connected: bool,
    },
}

impl Relay {
    /// A loop over a bound native PUB. `subscriber` are the metrics of the
    /// SUB side (received messages, connected publishers, drops).
    pub fn new(
        publisher: Publisher,
        subscriber: SocketCounters,
        upstreams: mpsc::Receiver<BTreeSet<String>>,
        config: RelayConfig,
        shutdown: Shutdown,
        activity: Arc<AtomicU64>,
    ) -> Relay {
        Relay {
            publisher,
            subscriber,
            upstreams,
            config,
            shutdown,
            activity,
        }
    }

    /// Relays until the shutdown phase reaches `Stopping`, then gives the
    /// PUB's outputs the linger to drain.
    fn relay(self) -> io::Result<()> {
        let Relay {
            mut publisher,
            subscriber,
            upstreams,
            config:
                RelayConfig {
                    max_message,
                    timeouts,
                    linger_ms,
                },
            shutdown,
            activity,
        } = self;
        let poll = Poll::new()?;
        publisher.register(poll.registry(), Token(PUBLISHER_TOKENS))?;
        let mut relay = Loop {
            poll,
            publisher,
            counters: subscriber,
            decoder: Decoder::new(max_message),
            limits: Limits {
                max_frames: MAX_FRAMES,
                max_bytes: max_message,
            },
            opening: opening_as(SocketType::Sub),
            ups: Vec::new(),
            free: Vec::new(),
            by_endpoint: BTreeMap::new(),
            to_service: Vec::new(),
            again: Vec::new(),
            closing: Vec::new(),
            received: Tally::default(),
            limiter: LogLimiter::new(20, Duration::from_secs(10)),
            handled: 0,
            timeouts,
            next_liveness_check: Instant::now(),
            ping: ping(),
        };
        tracing::info!(engine = "native", "local publisher started");
        let mut events = Events::with_capacity(1024);
        while !shutdown.is_stopping() {
            if let Some(wanted) = upstreams.try_iter().last() {
                relay.set_upstreams(wanted);
            }
            let now = Instant::now();
            relay.connect_due(now);
            let timeout = relay.timeout(now);
            if let Err(error) = relay.poll.poll(&mut events, Some(timeout)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            relay.turn(&events);
            if relay.handled > 0 {
                activity.fetch_add(relay.handled, Ordering::Relaxed);
                relay.handled = 0;
            }
        }
        let linger = if linger_ms >= 0 {
            Duration::from_millis(linger_ms as u64)
        } else {
            shutdown.remaining().unwrap_or_default()
        };
        let deadline = Instant::now() + linger.max(Duration::from_millis(100));
        while relay.publisher.drain() > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let _ = relay
                .poll
                .poll(&mut events, Some((deadline - now).min(POLL_TIMEOUT)));
        }
        tracing::info!(engine = "native", "local publisher stopped");
        Ok(())
    }
}

/// The loop's state.
struct Loop {
    poll: Poll,
    publisher: Publisher,
    /// Metrics of the SUB side.
    counters: SocketCounters,
    decoder: Decoder,
    limits: Limits,
    opening: Vec<u8>,
    ups: Vec<Option<Upstream>>,
    free: Vec<usize>,
    by_endpoint: BTreeMap<String, usize>,
    to_service: Vec<usize>,
    again: Vec<usize>,
    closing: Vec<usize>,
    received: Tally,
    limiter: LogLimiter,
    handled: u64,
    timeouts: Timeouts,
    /// When heartbeats and handshake deadlines are next looked at.
    next_liveness_check: Instant,
    ping: Vec<u8>,
}

impl Loop {
    fn timeout(&self, now: Instant) -> Duration {
        if !self.again.is_empty() || !self.to_service.is_empty() || self.publisher.pending() {
            return Duration::ZERO;
        }
        let mut at = (now + POLL_TIMEOUT)
            .min(self.next_liveness_check)
            .min(self.publisher.deadline());
        for up in self.ups.iter().flatten() {
            if let State::Waiting(when) = up.state {
                at = at.min(when);
            }
        }
        at.saturating_duration_since(now)
    }

    /// Connects new endpoints and drops the ones no longer wanted.
    fn set_upstreams(&mut self, wanted: BTreeSet<String>) {
        let gone: Vec<String> = self
            .by_endpoint
            .keys()
            .filter(|e| !wanted.contains(*e))
            .cloned()
            .collect();
        for endpoint in gone {
            if let Some(idx) = self.by_endpoint.remove(&endpoint) {
                if let Some(up) = self.ups.get_mut(idx).and_then(Option::take) {
                    self.shut(up.state);
                }
                self.free.push(idx);
                tracing::info!(%endpoint, "unsubscribed from central publisher");
            }
        }
        let now = Instant::now();
        for endpoint in wanted {
            if self.by_endpoint.contains_key(&endpoint) {
                continue;
            }
            let idx = free_slot(&mut self.ups, &mut self.free);
            tracing::info!(%endpoint, "subscribing to central publisher");
            self.ups[idx] = Some(Upstream {
                endpoint: endpoint.clone(),
                backoff: RECONNECT_FIRST,
                state: State::Waiting(now),
            });
            self.by_endpoint.insert(endpoint, idx);
        }
    }

    /// Starts a connection for every upstream whose wait is over.
    fn connect_due(&mut self, now: Instant) {
        for idx in 0..self.ups.len() {
            let Some(up) = self.ups.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if !matches!(up.state, State::Waiting(at) if at <= now) {
                continue;
            }
            match start_connect(&up.endpoint) {
                Ok(mut stream) => {
                    if let Err(error) = self.poll.registry().register(
                        &mut stream,
                        Token(idx),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(%error, "cannot register an upstream connection");
                        up.state = State::Waiting(now + up.backoff);
                        up.backoff = next_backoff(up.backoff);
                        continue;
                    }
                    let mut conn = Connection::new(stream, Side::Frontend, self.limits);
                    // Nothing was read yet: wait for the connect to finish.
                    conn.readable = false;
                    up.state = State::Open {
                        conn: Box::new(conn),
                        connected: false,
                    };
                }
                Err(error) => {
                    tracing::debug!(endpoint = %up.endpoint, %error, "connect failed");
                    up.state = State::Waiting(now + up.backoff);
                    up.backoff = next_backoff(up.backoff);
                }
            }
        }
    }

    fn turn(&mut self, events: &Events) {
        for event in events {
            if self.publisher.owns(event.token()) {
                self.publisher.handle(self.poll.registry(), event);
                continue;
            }
            self.upstream_event(event);
        }
        let mut list = std::mem::take(&mut self.to_service);
        list.append(&mut self.again);
        list.sort_unstable();
        list.dedup();
        for &idx in &list {
            self.service(idx);
        }
        list.clear();
        self.to_service = list;
        let now = Instant::now();
        if now >= self.next_liveness_check {
            self.check_liveness(now);
        }
        self.close_pending();
        self.received.flush_received(&self.counters);
        self.publisher.end_turn(self.poll.registry());
    }

    fn upstream_event(&mut self, event: &Event) {
        let idx = event.token().0;
        let Some(up) = self.ups.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let State::Open { conn, connected } = &mut up.state else {
            return;
        };
        if !*connected {
            if event.is_error() || event.is_read_closed() || event.is_write_closed() {
                self.closing.push(idx);
                return;
            }
            if !event.is_writable() {
                return;
            }
            match connect_result(&conn.stream) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::debug!(endpoint = %up.endpoint, %error, "connect failed");
                    self.closing.push(idx);
                    return;
                }
            }
            *connected = true;
            // The handshake deadline and the heartbeat count from here, not
            // from the start of a slow TCP connect.
            let now = Instant::now();
            conn.accepted = now;
            conn.liveness = Liveness::new(now);
            // Counted at connect and close, as the socket monitor's
            // CONNECTED and DISCONNECTED are for the libzmq SUB.
            self.counters.connected.inc();
            conn.outbox.push(&self.opening);
            conn.readable = true;
            self.to_service.push(idx);
        }
        if event.is_writable() && !conn.outbox.is_empty() {
            if let Err(error) = conn.outbox.flush(&mut &conn.stream) {
                tracing::debug!(%error, "upstream write failed");
                self.closing.push(idx);
                return;
            }
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        if readable && !conn.readable {
            conn.readable = true;
            self.to_service.push(idx);
        }
    }

    /// Reads and relays one upstream's messages, a few reads at most.
    fn service(&mut self, idx: usize) {
        let Some(mut up) = self.ups.get_mut(idx).and_then(Option::take) else {
            return;
        };
        if let State::Open {
            conn,
            connected: true,
        } = &mut up.state
        {
            let mut reads = 0;
            loop {
                let need = match self.process(conn, &mut up.backoff) {
                    None => break,
                    Some(n) => n,
                };
                if conn.eof {
                    conn.closing = true;
                    break;
                }
                if !conn.readable {
                    break;
                }
                if reads == READS_PER_TURN {
                    self.again.push(idx);
                    break;
                }
                reads += 1;
                if let Err(error) = conn.read_some(need) {
                    tracing::debug!(%error, "upstream read failed");
                }
            }
            if !conn.outbox.is_empty() {
                if let Err(error) = conn.outbox.flush(&mut &conn.stream) {
                    tracing::debug!(%error, "upstream write failed");
                    conn.closing = true;
                }
            }
            if conn.closing {
                self.closing.push(idx);
            }
        }
        self.ups[idx] = Some(up);
    }

    /// Handles every complete frame buffered on `conn`. `Some(n)`: the next
    /// frame needs `n` bytes from the message start (0: unknown); `None`:
    /// the connection is closing.
    fn process(&mut self, conn: &mut Connection, backoff: &mut Duration) -> Option<usize> {
        loop {
            if conn.closing {
                return None;
            }
            if let Phase::Handshaking(mut handshake) = conn.phase {
                match handshake.advance_as(conn.unread(), &self.decoder, SocketType::Sub) {
                    Ok(Step::NeedMore { consumed }) => {
                        conn.handshake_consumed(consumed);
                        conn.phase = Phase::Handshaking(handshake);
                        return Some(0);
                    }
                    Ok(Step::Done {
                        consumed, version, ..
                    }) => {
                        conn.handshake_consumed(consumed);
                        conn.phase = Phase::Active;
                        conn.answers_ping = version >= Version::V3_1;
                        // Everything, in the form this publisher reads.
                        let mut subscribe = Vec::new();
                        Subscription::Subscribe(b"").encode(version, &mut subscribe);
                        conn.outbox.push(&subscribe);
                        // A completed handshake: the next failure starts
                        // the back-off over.
                        *backoff = RECONNECT_FIRST;
                        continue;
                    }
                    Err(error) => {
                        if self.may_log() {
                            tracing::warn!(socket = "subscriber", %error, "central publisher refused");
                        }
                        conn.closing = true;
                        return None;
                    }
                }
            }
            let frame = match conn.next_frame(&self.decoder) {
                Next::Frame(frame) => frame,
                Next::Need(need) => return Some(need),
                Next::Bad(error) => {
                    if self.may_log() {
                        tracing::warn!(socket = "subscriber", %error, "bad frame; connection closed");
                    }
                    conn.closing = true;
                    return None;
                }
            };
            match conn.assembler.push(&frame) {
                Push::Partial => {}
                Push::Command => {
                    let body = conn.buf.get(frame.body.clone()).unwrap_or_default();
                    // PING is the only command a SUB answers.
                    if let Ok(Command::Ping { context, .. }) = Command::parse(body) {
                        conn.outbox.push(&pong(context));
                    }
                    if !conn.assembler.in_progress() {
                        conn.msg_start = conn.decoded;
                    }
                }
                Push::Dropped(_) => {
                    self.counters.dropped(DropReason::TooLarge);
                    conn.msg_start = conn.decoded;
                }
                Push::Complete => {
                    self.relay(conn);
                    self.handled += 1;
                    conn.msg_start = conn.decoded;
                }
            }
        }
    }

    /// Re-publishes the complete message on `conn`, unchanged, if it is a
    /// valid publication (as the libzmq local publisher checks).
    fn relay(&mut self, conn: &Connection) {
        let frames: Vec<&[u8]> = conn
            .assembler
            .frames()
            .iter()
            .map(|range| conn.buf.get(range.clone()).unwrap_or_default())
            .collect();
        match Publication::parse(&frames) {
            Ok(publication) => {
                let msg_type = publication.msg_type;
                let bytes = frames.iter().map(|f| f.len()).sum();
                self.received.add(msg_type, bytes);
                self.publisher.publish(&frames, msg_type);
            }
            Err(reason) => {
                self.counters.dropped(reason);
                if self.may_log() {
                    tracing::warn!(%reason, frames = frames.len(), "invalid publication dropped");
                }
            }
        }
    }

    /// Pings quiet central publishers, closes those silent past the
    /// heartbeat timeout and those whose handshake is overdue (counted on
    /// `subscriber`; they are reconnected as after any close).
    fn check_liveness(&mut self, now: Instant) {
        self.next_liveness_check = now + self.timeouts.check_every();
        for idx in 0..self.ups.len() {
            let Some(up) = self.ups.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            let State::Open {
                conn,
                connected: true,
            } = &mut up.state
            else {
                continue;
            };
            if conn.closing {
                continue;
            }
            match self.timeouts.due(conn, now) {
                Due::Nothing => {}
                Due::Ping => {
                    conn.outbox.push(&self.ping);
                    if let Err(error) = conn.outbox.flush(&mut &conn.stream) {
                        tracing::debug!(%error, "upstream write failed");
                        conn.closing = true;
                        self.closing.push(idx);
                    }
                }
                Due::Dead => {
                    conn.closing = true;
                    self.closing.push(idx);
                    self.counters.timed_out.inc();
                    tracing::warn!(endpoint = %up.endpoint, "central publisher silent past the heartbeat timeout or handshake deadline; connection closed");
                }
            }
        }
    }

    /// Closes the upstreams that ended and schedules their reconnects.
    fn close_pending(&mut self) {
        let now = Instant::now();
        for idx in std::mem::take(&mut self.closing) {
            let Some(up) = self.ups.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if matches!(up.state, State::Waiting(_)) {
                continue;
            }
            let state = std::mem::replace(&mut up.state, State::Waiting(now + up.backoff));
            tracing::info!(endpoint = %up.endpoint, retry_in = ?up.backoff, "central publisher connection closed");
            up.backoff = next_backoff(up.backoff);
            self.shut(state);
        }
    }

    /// Ends a connection: deregisters it and counts the disconnect and any
    /// message it cut.
    fn shut(&mut self, state: State) {
        let State::Open {
            mut conn,
            connected,
        } = state
        else {
            return;
        };
        if let Err(error) = self.poll.registry().deregister(&mut conn.stream) {
            tracing::debug!(%error, "cannot deregister an upstream connection");
        }
        if connected {
            self.counters.connected.dec();
        }
        if conn.assembler.cut().is_some() {
            self.counters.dropped(DropReason::Truncated);
        }
    }

    fn may_log(&mut self) -> bool {
        let (allowed, suppressed) = self.limiter.check(Instant::now());
        if suppressed > 0 {
            tracing::warn!(suppressed, "log lines about the local publisher suppressed");
        }
        allowed
    }
}

/// Starts a non-blocking connect to `tcp://host:port`.
fn start_connect(endpoint: &str) -> io::Result<TcpStream> {
    let addr = resolve(endpoint)?;
    let stream = TcpStream::connect(addr)?;
    // Keepalive stays the OS default on these outbound connections, as
    // before: heartbeats find a dead central publisher.
    tune(&stream, &Keepalive::default());
    Ok(stream)
}

/// The address of a `tcp://host:port` endpoint. A host name is resolved
/// here, blocking the loop for the lookup (the matchmaker lists IPs).
pub fn resolve(endpoint: &str) -> io::Result<SocketAddr> {
    let rest = endpoint.strip_prefix("tcp://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a tcp:// endpoint: {endpoint}"),
        )
    })?;
    rest.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))
}

/// Whether a non-blocking connect has finished: `Ok(true)` connected,
/// `Ok(false)` still in progress, `Err` failed.
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

impl ForwardingLoop for Relay {
    const THREAD: &'static str = "native-local-pub";

    fn run(self) -> std::io::Result<()> {
        self.relay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_libzmqs_interval_up_to_the_cap() {
        let mut wait = RECONNECT_FIRST;
        let mut seen = vec![wait];
        for _ in 0..8 {
            wait = next_backoff(wait);
            seen.push(wait);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[4], Duration::from_millis(1600));
        assert!(seen[5..].iter().all(|&w| w == RECONNECT_MAX));
    }

    #[test]
    fn endpoints_resolve_only_as_tcp() {
        assert_eq!(
            resolve("tcp://127.0.0.1:5555").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 5555)))
        );
        assert!(resolve("ipc:///tmp/x").is_err());
        assert!(resolve("tcp://127.0.0.1").is_err());
    }
}
