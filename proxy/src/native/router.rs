//! The native router loop: the double router (frontend ROUTER for clients,
//! backend ROUTER for servers) or the single router, on one mio thread.
//!
//! One turn of the loop: poll; accept; flush outputs that became writable;
//! wake senders whose receiver has room again; read every readable
//! connection in chunks of [`super::connection::READ_CHUNK`] (a few per turn, for fairness) and
//! forward each complete message; retry held messages; flush every output
//! that got data. Forwarding copies small messages into the receiver's
//! [`Outbox`] (one write per receiver per turn) and writes large ones
//! straight from the sender's buffer with a vectored write.
//!
//! The promises are the libzmq engine's ([`crate::router`]), with the
//! high-water mark in bytes: a receiver whose output holds
//! [`NativeConfig::out_limit`] bytes or more is full; the sender's
//! connection is then not read (only that connection: libzmq's loop stops
//! the whole socket) for up to `send_timeout`, after which the message is
//! dropped and counted and the receiver counts as congested for as long
//! again. Messages for a receiver that is not connected are held for
//! `unroutable_wait` ([`HoldQueue`]).
//!
//! With pub/sub on, the central PUB is a native [`Publisher`] driven by
//! this loop: fanout and notify are encoded once, from the sender's buffer
//! into one buffer all matching subscribers share, and the ACK
//! (ack-pub-sub) goes back as with the libzmq engine.
//!
//! With CURVE ([`NativeRouter::with_curve`]), connections open with the
//! CURVE handshake and are admitted or refused after INITIATE
//! ([`super::curve`]); their frames are opened in place on input, so the
//! forwarding above reads plaintext, and sealed per receiver on output
//! (never written straight from the sender's buffer).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use zmtp::curve::MessageError;
use zmtp::{
    encode_header, Command, Decoder, DropReason as CutReason, Flags, Limits, Metadata, Push,
    SocketType, Version,
};

use super::connection::{free_slot, tune, Blocked, Connection, Next, Phase, Side};
use super::curve::{
    seal_frames, seal_wire, CurveConn, CurveLoop, CurveServer, CurveStep, Established, REFUSED,
};
use super::handshake::{opening, Step};
use super::heartbeat::{ping, pong, Due, Heartbeat};
use super::identity::{Claim, Duplicates, Generated, PeerTable};
use super::keepalive::Keepalive;
use super::outbox::{write_parts, Outbox};
use super::publisher::Publisher;
use crate::curve::{PublicKey, Refusal};
use crate::hold::HoldQueue;
use crate::loop_thread::ForwardingLoop;
use crate::protocol::{
    decide, proxy_ack, rewrite_for_publish, rewrite_for_route, Decision, DropReason, MessageType,
};
use crate::shutdown::Shutdown;
use crate::telemetry::{LogLimiter, SocketCounters, Tally};

/// Longest poll; the shutdown phase is re-checked this often.
/// How often liveness is looked at when neither heartbeats nor a handshake
/// deadline ask for more.
const LIVENESS_CHECK_OFF: Duration = Duration::from_secs(1);
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often held messages are retried (and expired).
const HOLD_RETRY: Duration = Duration::from_millis(10);
/// Most messages held per direction (as the libzmq engine).
const HOLD_LIMIT: usize = 10_000;
/// Reads per connection per turn before others get theirs.
const READS_PER_TURN: usize = 8;
/// Messages at least this large are written straight from the sender's
/// buffer when the receiver has nothing queued; smaller ones are copied and
/// leave with the others in one write.
const DIRECT_WRITE_MIN: usize = 16 * 1024;
/// Most frames in one message.
const MAX_FRAMES: usize = 4096;

/// Output bytes per receiver that one message of the `--hwm` setting
/// stands for: libzmq's high-water mark counts messages, the native engine
/// bounds bytes, and oslo's RPC messages are mostly well under 1 KiB.
pub const HWM_BYTES_PER_MESSAGE: usize = 1024;

/// Largest message the native engine accepts by default (libzmq's is
/// unlimited; a bound keeps one peer from making the proxy buffer anything).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The per-receiver output bound for a `--hwm` of `hwm` messages (0:
/// unlimited, as in libzmq).
pub fn out_limit_for_hwm(hwm: i32) -> usize {
    match usize::try_from(hwm) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(n) => n.saturating_mul(HWM_BYTES_PER_MESSAGE),
    }
}

/// Behaviour of the native router loop.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// Publish fanout/notify from clients on the central PUB.
    pub pubsub: bool,
    /// Acknowledge published fanout/notify to their sender.
    pub ack_pub_sub: bool,
    /// Identity of the frontend ROUTER (sent in READY; sender of the
    /// proxy's own acks).
    pub frontend_identity: Vec<u8>,
    /// Identity of the backend ROUTER (sent in READY).
    pub backend_identity: Vec<u8>,
    /// How long a sender waits for room at a full receiver before its
    /// message is dropped (0: dropped at once).
    pub send_timeout: Duration,
    /// How long a message for a receiver that is not connected is held.
    pub unroutable_wait: Duration,
    /// Output bytes per receiver at which it counts as full (the HWM).
    pub out_limit: usize,
    /// Largest message accepted (all frames); larger ones are dropped whole.
    pub max_message: usize,
    /// What a second connection with a held identity gets.
    pub duplicates: Duplicates,
    /// Linger at close in ms (-1: until the drain deadline).
    pub linger_ms: i32,
    /// TCP keepalive of accepted connections.
    pub keepalive: Keepalive,
    /// PINGs to quiet peers and the silence that closes them (`None`: off).
    pub heartbeat: Option<Heartbeat>,
    /// How long a connection may take to finish its greeting and READY
    /// (`None`: no limit), so connections that never speak ZMTP cannot hold
    /// descriptors forever.
    pub handshake_timeout: Option<Duration>,
}

/// A bound listener of the native engine and the metrics of its ROUTER.
pub struct Listener {
    listener: TcpListener,
    name: &'static str,
    counters: SocketCounters,
}

impl Listener {
    /// Binds `address:port` (port 0: any free port). Returns the listener
    /// and its endpoint as libzmq prints it (`tcp://ip:port`).
    pub fn bind(
        address: &str,
        port: u16,
        name: &'static str,
        counters: SocketCounters,
    ) -> io::Result<(Listener, String, u16)> {
        let addr: SocketAddr = (address, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        Ok((
            Listener {
                listener,
                name,
                counters,
            },
            format!("tcp://{bound}"),
            bound.port(),
        ))
    }
}

/// The native router loop and what it owns.
pub struct NativeRouter {
    frontend: Listener,
    backend: Option<Listener>,
    publisher: Option<Publisher>,
    config: NativeConfig,
    curve: Option<CurveServer>,
    shutdown: Shutdown,
    activity: Arc<AtomicU64>,
}

impl NativeRouter {
    /// A loop over bound listeners: `backend` is `None` in single-router
    /// mode; `publisher` is the central PUB when pub/sub is on.
    /// `activity` counts handled messages, for the drain.
    pub fn new(
        frontend: Listener,
        backend: Option<Listener>,
        publisher: Option<Publisher>,
        config: NativeConfig,
        shutdown: Shutdown,
        activity: Arc<AtomicU64>,
    ) -> NativeRouter {
        NativeRouter {
            frontend,
            backend,
            publisher,
            config,
            curve: None,
            shutdown,
            activity,
        }
    }

    /// Makes the frontend and backend CURVE servers (the central PUB is
    /// made one by [`Publisher::with_curve`]).
    pub fn with_curve(mut self, curve: CurveServer) -> NativeRouter {
        self.curve = Some(curve);
        self
    }

    /// Forwards until the shutdown phase reaches `Stopping`, then gives the
    /// outputs the linger to drain.
    fn forward(self) -> io::Result<()> {
        let NativeRouter {
            frontend,
            backend,
            mut publisher,
            config,
            curve,
            shutdown,
            activity,
        } = self;
        let poll = Poll::new()?;
        if let Some(p) = publisher.as_mut() {
            p.register(poll.registry(), Token(PUBLISHER_TOKENS))?;
        }
        let double = backend.is_some();
        let mut listeners = vec![frontend];
        listeners.extend(backend);
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(&mut l.listener, Token(i), Interest::READABLE)?;
        }
        let limits = Limits {
            max_frames: MAX_FRAMES,
            max_bytes: config.max_message,
        };
        let seed = uuid::Uuid::new_v4().as_u128() as u32;
        // Under CURVE, READY comes after the handshake, boxed.
        let openings = match &curve {
            Some(_) => [
                CurveServer::greeting().to_vec(),
                CurveServer::greeting().to_vec(),
            ],
            None => [
                opening(&config.frontend_identity),
                opening(&config.backend_identity),
            ],
        };
        let curve = curve.map(CurveLoop::new);
        let mut engine = Engine {
            poll,
            double,
            decoder: Decoder::new(config.max_message),
            limits,
            peers: [
                PeerTable::new(config.duplicates),
                PeerTable::new(config.duplicates),
            ],
            generated: Generated::new(seed),
            openings,
            curve,
            config,
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            held: [HoldQueue::new(HOLD_LIMIT), HoldQueue::new(HOLD_LIMIT)],
            next_hold_retry: None,
            congested: HashMap::new(),
            to_service: Vec::new(),
            again: Vec::new(),
            dirty: Vec::new(),
            blocked: Vec::new(),
            closing: Vec::new(),
            publisher,
            limiter: LogLimiter::new(20, Duration::from_secs(10)),
            received: [Tally::default(), Tally::default()],
            sent: [Tally::default(), Tally::default()],
            handled: 0,
            next_liveness_check: Instant::now(),
        };
        tracing::info!(
            mode = if double {
                "double-router"
            } else {
                "single-router"
            },
            engine = "native",
            "router loop started"
        );
        let mut events = Events::with_capacity(1024);
        while !shutdown.is_stopping() {
            let timeout = engine.timeout(Instant::now());
            if let Err(error) = engine.poll.poll(&mut events, Some(timeout)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            engine.turn(&events);
            if engine.handled > 0 {
                activity.fetch_add(engine.handled, Ordering::Relaxed);
                engine.handled = 0;
            }
        }
        engine.stop(&shutdown);
        tracing::info!(engine = "native", "router loop stopped");
        Ok(())
    }
}

/// A message held for a receiver that is not connected yet, as bytes ready
/// for the wire.
struct Held {
    receiver: Vec<u8>,
    wire: Vec<u8>,
    msg_type: MessageType,
    bytes: usize,
}

/// What processing a connection's buffered bytes ended with.
enum Outcome {
    /// Everything complete was handled; the next frame needs this many
    /// bytes from the message start (0: unknown, any read helps).
    Need(usize),
    /// Stop: blocked, parked or closing.
    Stop,
}

/// What happened to a routed message.
enum Forwarded {
    /// Sent, queued, held or dropped: done with it.
    Done,
    /// The receiver (identity) is full: wait.
    Blocked(Vec<u8>),
}

/// The loop's state.
struct Engine {
    poll: Poll,
    double: bool,
    decoder: Decoder,
    limits: Limits,
    /// Routing tables per side ([`Side::index`]).
    peers: [PeerTable; 2],
    generated: Generated,
    /// Greeting and READY per side (the greeting only under CURVE).
    openings: [Vec<u8>; 2],
    /// The CURVE server, when the listeners are CURVE servers.
    curve: Option<CurveLoop>,
    config: NativeConfig,
    /// Frontend, then the backend in double-router mode; token = index.
    listeners: Vec<Listener>,
    /// Connections; token = index + 2.
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    /// Held messages per receiving side.
    held: [HoldQueue<Held>; 2],
    next_hold_retry: Option<Instant>,
    /// Receivers (side index, identity) whose wait timed out, until when.
    congested: HashMap<(usize, Vec<u8>), Instant>,
    /// Connections to read or process this turn, and those left for the next.
    to_service: Vec<usize>,
    again: Vec<usize>,
    /// Connections whose outbox got data this turn.
    dirty: Vec<usize>,
    /// Connections whose message waits for room.
    blocked: Vec<usize>,
    closing: Vec<usize>,
    publisher: Option<Publisher>,
    limiter: LogLimiter,
    received: [Tally; 2],
    sent: [Tally; 2],
    handled: u64,
    /// When heartbeats and handshake deadlines are next looked at.
    next_liveness_check: Instant,
}

const LISTENERS: usize = 2;
/// First token of the central PUB (its listener; its subscribers above):
/// far above any connection index.
const PUBLISHER_TOKENS: usize = 1 << (usize::BITS - 2);

impl Engine {
    fn timeout(&self, now: Instant) -> Duration {
        if !self.again.is_empty()
            || !self.to_service.is_empty()
            || self.publisher.as_ref().is_some_and(Publisher::pending)
        {
            return Duration::ZERO;
        }
        let mut at = (now + POLL_TIMEOUT).min(self.next_liveness_check);
        if let Some(publisher) = &self.publisher {
            at = at.min(publisher.deadline());
        }
        if let Some(retry) = self.next_hold_retry {
            at = at.min(retry);
        }
        for &idx in &self.blocked {
            if let Some(b) = self
                .conns
                .get(idx)
                .and_then(|c| c.as_ref()?.blocked.as_ref())
            {
                at = at.min(b.since + self.config.send_timeout);
            }
        }
        at.saturating_duration_since(now)
    }

    fn side_of_listener(&self, token: usize) -> Side {
        if token == 0 {
            Side::Frontend
        } else {
            Side::Backend
        }
    }

    /// The side a message from `from` is routed to.
    fn dest_side(&self, from: Side) -> Side {
        match (self.double, from) {
            (true, Side::Frontend) => Side::Backend,
            _ => Side::Frontend,
        }
    }

    fn counters(&self, side: Side) -> &SocketCounters {
        let i = if self.double { side.index() } else { 0 };
        &self.listeners[i].counters
    }

    fn name(&self, side: Side) -> &'static str {
        let i = if self.double { side.index() } else { 0 };
        self.listeners[i].name
    }

    fn turn(&mut self, events: &Events) {
        // Left over from the last turn: read budget used up, or woken
        // after the reads (a waiting duplicate promoted at a close).
        self.to_service.append(&mut self.again);
        for event in events {
            if let Some(publisher) = self.publisher.as_mut() {
                if publisher.owns(event.token()) {
                    publisher.handle(self.poll.registry(), event);
                    continue;
                }
            }
            let token = event.token().0;
            if token < LISTENERS {
                self.accept(token);
                continue;
            }
            let idx = token - LISTENERS;
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if event.is_writable() {
                mark_dirty(&mut self.dirty, idx, conn);
            }
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            if readable && !conn.readable {
                conn.readable = true;
                self.to_service.push(idx);
            }
        }
        self.flush_dirty();
        self.wake_blocked(Instant::now());
        let mut list = std::mem::take(&mut self.to_service);
        list.sort_unstable();
        list.dedup();
        for &idx in &list {
            self.service(idx);
        }
        list.clear();
        list.append(&mut self.to_service);
        self.to_service = list;
        if self.next_hold_retry.is_some_and(|at| Instant::now() >= at) {
            self.retry_held();
        }
        let now = Instant::now();
        if now >= self.next_liveness_check {
            self.check_liveness(now);
        }
        if self
            .curve
            .as_mut()
            .is_some_and(|curve| curve.authorizer.refresh())
        {
            self.recheck_curve_peers();
        }
        self.flush_dirty();
        self.close_pending();
        if let Some(publisher) = self.publisher.as_mut() {
            publisher.end_turn(self.poll.registry());
        }
        // Flushing made room: the senders waiting for it go on next turn,
        // which then polls without waiting.
        self.wake_blocked(Instant::now());
        // Tallies are indexed like the listeners (one in single-router mode).
        for (i, listener) in self.listeners.iter().enumerate() {
            self.received[i].flush_received(&listener.counters);
            self.sent[i].flush_sent(&listener.counters);
        }
    }

    fn accept(&mut self, token: usize) {
        let side = self.side_of_listener(token);
        loop {
            let (mut stream, _) = match self.listeners[token].listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors, typically: the listener stays
                    // readable, so the next turn tries again.
                    if self.may_log() {
                        tracing::warn!(%error, "accept failed");
                    }
                    return;
                }
            };
            tune(&stream, &self.config.keepalive);
            let idx = free_slot(&mut self.conns, &mut self.free);
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                Token(idx + LISTENERS),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%error, "cannot register a connection");
                self.free.push(idx);
                continue;
            }
            let mut conn = Connection::new(stream, side, self.limits);
            conn.outbox.push(&self.openings[side.index()]);
            if let Some(curve) = &self.curve {
                conn.curve = Some(Box::new(CurveConn::Handshake(curve.server.handshake())));
            }
            self.counters(side).connected.inc();
            self.conns[idx] = Some(conn);
            if let Some(conn) = self.conns[idx].as_mut() {
                mark_dirty(&mut self.dirty, idx, conn);
            }
            self.to_service.push(idx);
        }
    }

    /// Reads and processes one connection, a few chunks at most.
    fn service(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let mut reads = 0;
        loop {
            let need = match self.process(idx, &mut conn) {
                Outcome::Stop => break,
                Outcome::Need(n) => n,
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
                tracing::debug!(%error, "connection read failed");
            }
        }
        if conn.closing {
            self.closing.push(idx);
        }
        self.conns[idx] = Some(conn);
    }

    /// Handles every complete frame buffered on `conn` (taken out of the
    /// table while it is processed: index `idx`).
    fn process(&mut self, idx: usize, conn: &mut Connection) -> Outcome {
        loop {
            if conn.closing || conn.blocked.is_some() {
                return Outcome::Stop;
            }
            match conn.phase {
                Phase::Parked => return Outcome::Stop,
                Phase::Handshaking(_) if conn.curve.is_some() => {
                    if let Some(outcome) = self.curve_handshake(idx, conn) {
                        return outcome;
                    }
                    continue;
                }
                Phase::Handshaking(mut handshake) => {
                    match handshake.advance(conn.unread(), &self.decoder) {
                        Ok(Step::NeedMore { consumed }) => {
                            conn.handshake_consumed(consumed);
                            conn.phase = Phase::Handshaking(handshake);
                            return Outcome::Need(0);
                        }
                        Ok(Step::Done {
                            consumed,
                            identity,
                            version,
                        }) => {
                            conn.handshake_consumed(consumed);
                            conn.answers_ping = version >= Version::V3_1;
                            self.register(idx, conn, identity);
                            continue;
                        }
                        Err(error) => {
                            if let Some(reason) = error.error_reason() {
                                let mut out = Vec::new();
                                Command::Error { reason }.encode(&mut out);
                                conn.outbox.push(&out);
                                // Best effort: the connection closes
                                // whether the peer gets the reason or not.
                                let _ = conn.outbox.flush(&mut &conn.stream);
                            }
                            if self.may_log() {
                                tracing::warn!(socket = self.name(conn.side), %error, "handshake refused");
                            }
                            conn.closing = true;
                            return Outcome::Stop;
                        }
                    }
                }
                Phase::Active => {}
            }
            let frame = match conn.next_frame(&self.decoder) {
                Next::Frame(frame) => frame,
                Next::Need(need) => return Outcome::Need(need),
                Next::Bad(error) => {
                    if self.may_log() {
                        tracing::warn!(socket = self.name(conn.side), %error, "bad frame; connection closed");
                    }
                    conn.closing = true;
                    return Outcome::Stop;
                }
            };
            match conn.assembler.push(&frame) {
                Push::Partial => {}
                Push::Command => {
                    self.command(idx, conn, frame.body);
                    if !conn.assembler.in_progress() {
                        conn.msg_start = conn.decoded;
                    }
                }
                Push::Dropped(_) => {
                    self.counters(conn.side).dropped(DropReason::TooLarge);
                    conn.msg_start = conn.decoded;
                }
                Push::Complete => match self.forward(idx, conn) {
                    Forwarded::Done => {
                        self.handled += 1;
                        conn.msg_start = conn.decoded;
                    }
                    Forwarded::Blocked(receiver) => {
                        // Decoded again from its start once there is room.
                        conn.decoded = conn.msg_start;
                        conn.assembler.clear();
                        conn.blocked = Some(Blocked {
                            receiver,
                            since: Instant::now(),
                        });
                        self.blocked.push(idx);
                        return Outcome::Stop;
                    }
                },
            }
        }
    }

    /// Moves `conn`'s CURVE handshake on. `None`: the peer was admitted
    /// and its messages follow; otherwise what [`Engine::process`] returns.
    fn curve_handshake(&mut self, idx: usize, conn: &mut Connection) -> Option<Outcome> {
        let Some(CurveConn::Handshake(handshake)) = conn.curve.as_deref_mut() else {
            return Some(Outcome::Stop);
        };
        let mut out = Vec::new();
        let step = handshake.advance(
            &conn.buf[conn.decoded..conn.filled],
            &self.decoder,
            &mut out,
        );
        if !out.is_empty() {
            conn.outbox.push(&out);
            mark_dirty(&mut self.dirty, idx, conn);
        }
        let (consumed, pending, version) = match step {
            Ok(CurveStep::NeedMore { consumed }) => {
                conn.handshake_consumed(consumed);
                return Some(Outcome::Need(0));
            }
            Ok(CurveStep::Initiated {
                consumed,
                pending,
                version,
            }) => (consumed, pending, version),
            Err(error) => {
                // libzmq closes without a word too (a wrong server key
                // among others): nothing to tell a peer that is not ours.
                let socket = self.name(conn.side);
                if let Some(curve) = &self.curve {
                    curve.server.count_refused(socket, Refusal::Handshake);
                }
                if self.may_log() {
                    tracing::warn!(socket, %error, "CURVE handshake failed");
                }
                conn.closing = true;
                return Some(Outcome::Stop);
            }
        };
        conn.handshake_consumed(consumed);
        let t = if self.double { conn.side.index() } else { 0 };
        let key = PublicKey(*pending.client_key());
        let claimed = match pending.metadata().check_peer(SocketType::Router) {
            Ok(peer) => peer.identity.map(<[u8]>::to_vec),
            Err(error) => {
                out.clear();
                pending.refuse(error.reason(), &mut out);
                self.refuse(conn, &out, None, &key, &error.to_string());
                return Some(Outcome::Stop);
            }
        };
        // A peer without an Identity is checked under the one it will be
        // routed by, as the libzmq engine's per-message check sees it.
        let identity = claimed.unwrap_or_else(|| self.generated.next(&self.peers[t]).to_vec());
        let verdict = self
            .curve
            .as_ref()
            .map_or(Err(Refusal::UnknownKey), |curve| {
                curve.authorizer.admit(&key, Some(&identity))
            });
        if let Err(refusal) = verdict {
            out.clear();
            pending.refuse(REFUSED, &mut out);
            let reason = format!(
                "{} ({})",
                refusal.as_str(),
                String::from_utf8_lossy(&identity)
            );
            self.refuse(conn, &out, Some(refusal), &key, &reason);
            return Some(Outcome::Stop);
        }
        let ours = match conn.side {
            Side::Frontend => &self.config.frontend_identity,
            Side::Backend => &self.config.backend_identity,
        };
        // An identity over 255 bytes cannot be sent (the proxy's own are
        // about 60): none then, as the NULL opening does.
        let ready = match Metadata::basic(SocketType::Router, Some(ours))
            .or_else(|_| Metadata::basic(SocketType::Router, None))
        {
            Ok(metadata) => {
                out.clear();
                pending
                    .accept(&metadata, &mut out)
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match ready {
            Ok(session) => {
                conn.outbox.push(&out);
                mark_dirty(&mut self.dirty, idx, conn);
                conn.curve = Some(Box::new(CurveConn::Established(Established {
                    session,
                    key,
                })));
                conn.answers_ping = version >= Version::V3_1;
                self.register(idx, conn, Some(identity));
                None
            }
            Err(error) => {
                if self.may_log() {
                    tracing::warn!(socket = self.name(conn.side), %error, "CURVE READY cannot be sealed");
                }
                conn.closing = true;
                Some(Outcome::Stop)
            }
        }
    }

    /// Sends `error` (an ERROR command) to `conn` and closes it; counts a
    /// refusal by the authorized keys.
    fn refuse(
        &mut self,
        conn: &mut Connection,
        error: &[u8],
        refusal: Option<Refusal>,
        key: &PublicKey,
        reason: &str,
    ) {
        conn.outbox.push(error);
        // Best effort: the connection closes whether the peer gets the
        // reason or not.
        let _ = conn.outbox.flush(&mut &conn.stream);
        conn.closing = true;
        let socket = self.name(conn.side);
        if let (Some(refusal), Some(curve)) = (refusal, &self.curve) {
            curve.server.count_refused(socket, refusal);
        }
        if self.may_log() {
            tracing::warn!(socket, key = %key.to_z85(), reason, "CURVE peer refused at the handshake");
        }
    }

    /// After a reload of the authorized keys: closes the connected CURVE
    /// peers whose key was removed or may no longer use their identity,
    /// each counted, so they neither send nor receive another message.
    fn recheck_curve_peers(&mut self) {
        let Some(curve) = &self.curve else {
            return;
        };
        let mut refused = Vec::new();
        for (idx, slot) in self.conns.iter_mut().enumerate() {
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            let Some(CurveConn::Established(established)) = conn.curve.as_deref() else {
                continue;
            };
            if conn.closing {
                continue;
            }
            if let Err(refusal) = curve
                .authorizer
                .admit(&established.key, Some(&conn.identity))
            {
                conn.closing = true;
                self.closing.push(idx);
                refused.push((conn.side, refusal, established.key, conn.identity.clone()));
            }
        }
        for (side, refusal, key, identity) in refused {
            let socket = self.name(side);
            if let Some(curve) = &self.curve {
                curve.server.count_refused(socket, refusal);
            }
            if self.may_log() {
                tracing::warn!(socket, key = %key.to_z85(), identity = %String::from_utf8_lossy(&identity), reason = refusal.as_str(), "CURVE peer no longer authorized after a reload; connection closed");
            }
        }
    }

    /// The handshake is done: the connection gets its identity.
    fn register(&mut self, idx: usize, conn: &mut Connection, identity: Option<Vec<u8>>) {
        let side = conn.side.index();
        let side = if self.double { side } else { 0 };
        conn.identity = match identity {
            Some(id) => id,
            None => self.generated.next(&self.peers[side]).to_vec(),
        };
        conn.phase = match self.peers[side].claim(&conn.identity, idx) {
            Claim::Holder | Claim::TookOver { .. } => Phase::Active,
            Claim::Waiting => {
                if self.may_log() {
                    tracing::warn!(socket = self.name(conn.side), identity = %String::from_utf8_lossy(&conn.identity), "duplicate identity: the new connection waits until the old one leaves");
                }
                Phase::Parked
            }
        };
        if !self.held[side].is_empty() {
            // The newcomer may be what held messages wait for.
            self.next_hold_retry = Some(Instant::now());
        }
    }

    fn command(&mut self, idx: usize, conn: &mut Connection, body: std::ops::Range<usize>) {
        let Some(body) = conn.buf.get(body) else {
            return;
        };
        if let Ok(Command::Ping { context, .. }) = Command::parse(body) {
            let pong = pong(context);
            if queue_wire(conn, &pong).is_err() {
                conn.closing = true;
            }
            mark_dirty(&mut self.dirty, idx, conn);
        }
        // PONG, SUBSCRIBE and unknown commands mean nothing to a ROUTER.
    }

    /// Validates, routes or publishes the complete message on `conn`.
    fn forward(&mut self, idx: usize, conn: &mut Connection) -> Forwarded {
        let from = conn.side;
        let mut frames: Vec<&[u8]> = Vec::with_capacity(conn.assembler.frames().len() + 1);
        frames.push(&conn.identity);
        for range in conn.assembler.frames() {
            frames.push(conn.buf.get(range.clone()).unwrap_or_default());
        }
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let publishing = self.config.pubsub && self.publisher.is_some();
        let decision = match decide(&frames, from == Side::Frontend, publishing) {
            Ok(decision) => decision,
            Err(reason) => {
                self.counters(from).dropped(reason);
                if self.may_log() {
                    let sender = String::from_utf8_lossy(&conn.identity).into_owned();
                    tracing::warn!(socket = self.name(from), %reason, frames = frames.len(), ?sender, "invalid message dropped");
                }
                return Forwarded::Done;
            }
        };
        let msg_type = decision.msg_type();
        if let Decision::Publish(_) = decision {
            self.received[self.tally_index(from)].add(msg_type, bytes);
            if let Some((client, msg_id)) = self.publish(&frames, msg_type) {
                let ack: [Vec<u8>; 6] = proxy_ack(client, &self.config.frontend_identity, &msg_id);
                let ack: Vec<&[u8]> = ack.iter().map(Vec::as_slice).collect();
                let ack_bytes = ack.iter().map(|f| f.len()).sum();
                // The client is the sender: its outbox is on `conn`.
                if queue_message(conn, &ack[1..]).is_err() {
                    conn.closing = true;
                }
                mark_dirty(&mut self.dirty, idx, conn);
                self.sent[self.tally_index(Side::Frontend)].add(MessageType::Ack, ack_bytes);
            }
            return Forwarded::Done;
        }
        let routed = 'route: {
            rewrite_for_route(&mut frames);
            let to = self.dest_side(from);
            let t = to.index();
            let key = frames[0];
            if self.held[t].holds(key) {
                self.hold(to, &frames, msg_type, bytes);
                break 'route Forwarded::Done;
            }
            let Some(dest) = self.peers[t].get(key) else {
                if self.config.unroutable_wait.is_zero() {
                    self.counters(to).dropped(DropReason::Unroutable);
                } else {
                    self.hold(to, &frames, msg_type, bytes);
                }
                break 'route Forwarded::Done;
            };
            let limit = self.config.out_limit;
            // Fields apart: `frames` borrows the sender's buffer, and the
            // sender may be the receiver.
            let (outbox, stream, curve, closing) = if dest == idx {
                (
                    &mut conn.outbox,
                    &conn.stream,
                    &mut conn.curve,
                    &mut conn.closing,
                )
            } else {
                match self.conns.get_mut(dest).and_then(Option::as_mut) {
                    Some(d) => (&mut d.outbox, &d.stream, &mut d.curve, &mut d.closing),
                    None => break 'route Forwarded::Done,
                }
            };
            if !outbox.is_empty() && outbox.len() >= limit {
                let congested = self.is_congested(t, key);
                if self.config.send_timeout.is_zero() || congested {
                    self.counters(to).dropped(DropReason::HighWaterMark);
                    break 'route Forwarded::Done;
                }
                break 'route Forwarded::Blocked(key.to_vec());
            }
            let wire_len: usize = frames[1..]
                .iter()
                .map(|f| {
                    encode_header(Flags::message(false), f.len())
                        .as_bytes()
                        .len()
                        + f.len()
                })
                .sum();
            let mut failed = false;
            if curve.is_some() {
                // Boxed for this receiver alone: no write straight from
                // the sender's buffer.
                if queue_into(outbox, curve, &frames[1..]).is_err() {
                    *closing = true;
                    if dest != idx {
                        self.closing.push(dest);
                    }
                    failed = true;
                }
            } else if outbox.is_empty() && wire_len >= DIRECT_WRITE_MIN {
                let headers: Vec<_> = frames[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, f)| encode_header(Flags::message(i + 2 < frames.len()), f.len()))
                    .collect();
                let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * headers.len());
                for (h, f) in headers.iter().zip(&frames[1..]) {
                    parts.push(h.as_bytes());
                    parts.push(f);
                }
                let mut out = stream;
                match write_parts(&mut out, &parts) {
                    Ok(n) => outbox.push_rest(&parts, n),
                    Err(error) => {
                        tracing::debug!(%error, "direct write failed");
                        failed = true;
                    }
                }
            } else {
                encode_into(outbox, &frames[1..]);
            }
            let pending = !outbox.is_empty();
            if failed {
                self.counters(to).dropped(DropReason::SendFailed);
                break 'route Forwarded::Done;
            }
            if pending {
                if dest == idx {
                    mark_dirty(&mut self.dirty, idx, conn);
                } else if let Some(d) = self.conns.get_mut(dest).and_then(Option::as_mut) {
                    mark_dirty(&mut self.dirty, dest, d);
                }
            }
            self.sent[self.tally_index(to)].add(msg_type, bytes);
            Forwarded::Done
        };
        if let Forwarded::Done = routed {
            // Counted once: a blocked message is processed again later.
            self.received[self.tally_index(from)].add(msg_type, bytes);
        }
        routed
    }

    fn tally_index(&self, side: Side) -> usize {
        if self.double {
            side.index()
        } else {
            0
        }
    }

    /// Publishes on the central PUB as `[topic, "1.0", type, msg_id,
    /// payload...]` (as [`crate::publisher::publish`] does on a libzmq
    /// PUB). Returns the ack's receiver and message id, if acks are on.
    fn publish(&mut self, frames: &[&[u8]], msg_type: MessageType) -> Option<(Vec<u8>, Vec<u8>)> {
        let publisher = self.publisher.as_mut()?;
        let mut frames = frames.to_vec();
        let sender = rewrite_for_publish(&mut frames)?;
        publisher.publish(&frames, msg_type);
        if !self.config.ack_pub_sub {
            return None;
        }
        frames.get(3).map(|id| (sender.to_vec(), id.to_vec()))
    }

    /// Holds a routed message (`frames[0]` is the receiver) for `to`, or
    /// drops it as unroutable when too many are held.
    fn hold(&mut self, to: Side, frames: &[&[u8]], msg_type: MessageType, bytes: usize) {
        let mut wire = Outbox::default();
        encode_into(&mut wire, &frames[1..]);
        let mut bytes_out = Vec::with_capacity(wire.len());
        // An in-memory write cannot fail or block.
        let _ = wire.flush(&mut bytes_out);
        let held = Held {
            receiver: frames[0].to_vec(),
            wire: bytes_out,
            msg_type,
            bytes,
        };
        let t = to.index();
        let deadline = Instant::now() + self.config.unroutable_wait;
        let receiver = held.receiver.clone();
        match self.held[t].push(&receiver, deadline, held) {
            Ok(()) => {
                self.counters(to).held.set(self.held[t].len() as i64);
                if self.next_hold_retry.is_none() {
                    self.next_hold_retry = Some(Instant::now() + HOLD_RETRY);
                }
            }
            Err(_) => {
                self.counters(to).dropped(DropReason::Unroutable);
                if self.may_log() {
                    tracing::warn!(
                        socket = self.name(to),
                        limit = HOLD_LIMIT,
                        "message for an absent receiver dropped: too many held"
                    );
                }
            }
        }
    }

    /// Sends held messages whose receivers are there (and have room), and
    /// drops those past their deadline.
    fn retry_held(&mut self) {
        let now = Instant::now();
        let mut expired = 0u64;
        for side in [Side::Frontend, Side::Backend] {
            let t = side.index();
            if self.held[t].is_empty() {
                continue;
            }
            let counters = self.counters(side).clone();
            let Engine {
                held,
                peers,
                conns,
                dirty,
                sent,
                config,
                double,
                ..
            } = self;
            let tally = &mut sent[if *double { t } else { 0 }];
            let peers = &peers[t];
            held[t].retry(
                now,
                |m| {
                    let dest = peers.get(&m.receiver).ok_or(DropReason::Unroutable)?;
                    let conn = conns
                        .get_mut(dest)
                        .and_then(Option::as_mut)
                        .ok_or(DropReason::Unroutable)?;
                    if !conn.outbox.is_empty() && conn.outbox.len() >= config.out_limit {
                        return Err(DropReason::HighWaterMark);
                    }
                    if queue_wire(conn, &m.wire).is_err() {
                        // Closed by the reload check or its next read.
                        conn.closing = true;
                        return Err(DropReason::SendFailed);
                    }
                    mark_dirty(dirty, dest, conn);
                    tally.add(m.msg_type, m.bytes);
                    Ok(())
                },
                |_, reason| {
                    counters.dropped(reason);
                    expired += 1;
                },
            );
            counters.held.set(held[t].len() as i64);
        }
        if expired > 0 && self.may_log() {
            tracing::warn!(
                expired,
                wait_ms = self.config.unroutable_wait.as_millis() as u64,
                "held messages dropped: their receivers did not connect in time"
            );
        }
        self.next_hold_retry = if self.held.iter().all(HoldQueue::is_empty) {
            None
        } else {
            Some(now + HOLD_RETRY)
        };
    }

    fn is_congested(&mut self, side: usize, key: &[u8]) -> bool {
        if self.congested.is_empty() {
            return false;
        }
        let now = Instant::now();
        self.congested.retain(|_, until| *until > now);
        self.congested.contains_key(&(side, key.to_vec()))
    }

    /// Lets blocked senders go on once their receiver has room, has left,
    /// or their wait timed out (the receiver is then congested).
    fn wake_blocked(&mut self, now: Instant) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        for idx in blocked {
            let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) else {
                continue;
            };
            let Some(b) = &conn.blocked else {
                continue;
            };
            let to = self.dest_side(conn.side).index();
            let room = match self.peers[to].get(&b.receiver) {
                None => true,
                Some(dest) => self
                    .conns
                    .get(dest)
                    .and_then(Option::as_ref)
                    .is_none_or(|d| d.outbox.len() < self.config.out_limit),
            };
            let timed_out = now >= b.since + self.config.send_timeout;
            if !room && !timed_out {
                self.blocked.push(idx);
                continue;
            }
            if !room {
                self.congested
                    .insert((to, b.receiver.clone()), now + self.config.send_timeout);
            }
            if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                conn.blocked = None;
            }
            self.to_service.push(idx);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            conn.dirty = false;
            if conn.outbox.is_empty() {
                continue;
            }
            if let Err(error) = conn.outbox.flush(&mut &conn.stream) {
                tracing::debug!(%error, "connection write failed");
                if !conn.closing {
                    conn.closing = true;
                    self.closing.push(idx);
                }
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Pings quiet peers, closes those silent past the heartbeat timeout
    /// and those whose handshake is overdue, each counted.
    fn check_liveness(&mut self, now: Instant) {
        let heartbeat = self.config.heartbeat;
        let mut every = heartbeat.map_or(LIVENESS_CHECK_OFF, |h| h.check_every());
        if let Some(limit) = self.config.handshake_timeout {
            every = every.min((limit / 4).max(Duration::from_millis(10)));
        }
        self.next_liveness_check = now + every;
        let ping_frame = ping();
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_mut() else {
                continue;
            };
            if conn.closing {
                continue;
            }
            let due = match conn.phase {
                Phase::Handshaking(_)
                    if self.config.handshake_timeout.is_some_and(|limit| {
                        now.saturating_duration_since(conn.accepted) >= limit
                    }) =>
                {
                    Due::Dead
                }
                // A parked duplicate is not read, so it cannot be heard.
                Phase::Active if conn.answers_ping => match heartbeat {
                    Some(h) => h.due(&mut conn.liveness, now),
                    None => Due::Nothing,
                },
                _ => Due::Nothing,
            };
            match due {
                Due::Nothing => {}
                Due::Ping => {
                    if queue_wire(conn, &ping_frame).is_err() {
                        conn.closing = true;
                        self.closing.push(idx);
                    }
                    mark_dirty(&mut self.dirty, idx, conn);
                }
                Due::Dead => {
                    conn.closing = true;
                    self.closing.push(idx);
                    let side = conn.side;
                    let identity = String::from_utf8_lossy(&conn.identity).into_owned();
                    self.counters(side).timed_out.inc();
                    if self.may_log() {
                        tracing::warn!(socket = self.name(side), identity, "peer silent past the heartbeat timeout or handshake deadline; connection closed");
                    }
                }
            }
        }
    }

    fn close_pending(&mut self) {
        let closing = std::mem::take(&mut self.closing);
        for idx in closing {
            if self
                .conns
                .get(idx)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.closing)
            {
                self.close(idx);
            }
        }
    }

    fn close(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        if let Err(error) = self.poll.registry().deregister(&mut conn.stream) {
            tracing::debug!(%error, "cannot deregister a connection");
        }
        self.free.push(idx);
        self.counters(conn.side).connected.dec();
        if let Some(cut) = conn.assembler.cut() {
            debug_assert_eq!(cut.reason, CutReason::Cut);
            self.counters(conn.side).dropped(DropReason::Truncated);
        }
        if matches!(conn.phase, Phase::Active | Phase::Parked) {
            let side = if self.double { conn.side.index() } else { 0 };
            if let Some(next) = self.peers[side].release(&conn.identity, idx) {
                if let Some(waiter) = self.conns.get_mut(next).and_then(Option::as_mut) {
                    waiter.phase = Phase::Active;
                    self.to_service.push(next);
                }
            }
        }
    }

    /// At shutdown: counts what can no longer be delivered, then gives the
    /// outputs until the linger ends to drain.
    fn stop(&mut self, shutdown: &Shutdown) {
        for side in [Side::Frontend, Side::Backend] {
            let t = side.index();
            let counters = self.counters(side).clone();
            self.held[t].drop_all(|_| counters.dropped(DropReason::Unroutable));
            counters.held.set(0);
        }
        for idx in std::mem::take(&mut self.blocked) {
            if let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) {
                if conn.blocked.is_some() {
                    let to = self.dest_side(conn.side);
                    self.counters(to).dropped(DropReason::HighWaterMark);
                }
            }
        }
        let linger = if self.config.linger_ms >= 0 {
            Duration::from_millis(self.config.linger_ms as u64)
        } else {
            shutdown.remaining().unwrap_or_default()
        };
        let deadline = Instant::now() + linger.max(Duration::from_millis(100));
        let mut events = Events::with_capacity(256);
        loop {
            let waiting = self
                .conns
                .iter_mut()
                .flatten()
                .filter(|c| !c.closing && !c.outbox.is_empty())
                .map(|c| c.outbox.flush(&mut &c.stream).is_ok_and(|done| !done))
                .filter(|&left| left)
                .count()
                + self.publisher.as_mut().map_or(0, Publisher::drain);
            let now = Instant::now();
            if waiting == 0 || now >= deadline {
                return;
            }
            let _ = self
                .poll
                .poll(&mut events, Some((deadline - now).min(POLL_TIMEOUT)));
        }
    }

    fn may_log(&mut self) -> bool {
        let (allowed, suppressed) = self.limiter.check(Instant::now());
        if suppressed > 0 {
            tracing::warn!(suppressed, "log lines about dropped messages suppressed");
        }
        allowed
    }
}

/// Queues `conn` (index `idx`) for a flush at the end of the turn.
fn mark_dirty(dirty: &mut Vec<usize>, idx: usize, conn: &mut Connection) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(idx);
    }
}

/// Appends one message (`frames`, the routing key already stripped) to
/// `conn`'s output: encoded, or sealed under CURVE. An error (our nonces
/// exhausted) means the connection must close.
fn queue_message(conn: &mut Connection, frames: &[&[u8]]) -> Result<(), MessageError> {
    queue_into(&mut conn.outbox, &mut conn.curve, frames)
}

/// [`queue_message`] on a connection's output and CURVE state.
fn queue_into(
    outbox: &mut Outbox,
    curve: &mut Option<Box<CurveConn>>,
    frames: &[&[u8]],
) -> Result<(), MessageError> {
    match curve.as_deref_mut() {
        Some(CurveConn::Established(established)) => {
            outbox.append_with(|out| seal_frames(&mut established.session, frames, out))
        }
        _ => {
            encode_into(outbox, frames);
            Ok(())
        }
    }
}

/// Appends already encoded frames (a command, a held message) to
/// `conn`'s output, sealed under CURVE.
fn queue_wire(conn: &mut Connection, wire: &[u8]) -> Result<(), MessageError> {
    match conn.curve.as_deref_mut() {
        Some(CurveConn::Established(established)) => conn
            .outbox
            .append_with(|out| seal_wire(&mut established.session, wire, out)),
        _ => {
            conn.outbox.push(wire);
            Ok(())
        }
    }
}

/// Appends `frames` (what a DEALER receives: the routing key already
/// stripped) as ZMTP frames.
fn encode_into(outbox: &mut Outbox, frames: &[&[u8]]) {
    let last = frames.len().saturating_sub(1);
    for (i, f) in frames.iter().enumerate() {
        outbox.push(encode_header(Flags::message(i < last), f.len()).as_bytes());
        outbox.push(f);
    }
}

impl ForwardingLoop for NativeRouter {
    const THREAD: &'static str = "native-router";

    fn run(self) -> std::io::Result<()> {
        self.forward()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hwm_maps_to_bytes_and_zero_means_unlimited() {
        assert_eq!(out_limit_for_hwm(1000), 1000 * 1024);
        assert_eq!(out_limit_for_hwm(0), usize::MAX);
        assert_eq!(out_limit_for_hwm(-1), usize::MAX);
    }

    #[test]
    fn frames_are_encoded_with_more_on_all_but_the_last() {
        let mut outbox = Outbox::default();
        let big = vec![9u8; 256];
        encode_into(&mut outbox, &[b"", b"1.0", &big]);
        let mut wire = Vec::new();
        assert!(outbox.flush(&mut wire).expect("in memory"));
        let mut expected = vec![1, 0, 1, 3];
        expected.extend_from_slice(b"1.0");
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 1, 0]);
        expected.extend_from_slice(&big);
        assert_eq!(wire, expected);
    }
}
