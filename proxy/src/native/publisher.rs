//! The native PUB: a listener for SUB and XSUB peers, driven by the event
//! loop that owns it (the router loop's central PUB, or the local
//! publisher's), publishing each message to every subscriber whose
//! subscriptions match its first frame.
//!
//! The owning loop registers the listener under a token range of its own
//! choosing ([`Publisher::register`]), hands over the events in that range
//! ([`Publisher::handle`]), publishes ([`Publisher::publish`]) and ends each
//! turn with [`Publisher::end_turn`] (reads subscriptions, writes outputs,
//! closes what ended, adds the counts to the metrics).
//!
//! A published message is encoded once into a shared buffer; subscribers
//! queue a reference to it ([`SharedOutbox`]). A CURVE subscriber
//! ([`Publisher::with_curve`]) gets its own boxes instead: each connection
//! has its own key and nonces, so nothing sealed can be shared.
//!
//! Each subscriber's output is bounded in bytes by the router's receiver
//! limit; a message for a full subscriber is dropped for that subscriber
//! alone and counted (`hwm` on the `publisher` socket): a PUB never waits,
//! so a subscriber that stops reading cannot stall the loop or the others.
//! Subscriptions arrive in either form (3.1 SUBSCRIBE/CANCEL commands, 3.0
//! one-frame messages with a leading 1 or 0 byte) from any peer, as
//! libzmq's PUB accepts them; other messages from subscribers are ignored.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use zmtp::curve::MessageError;
use zmtp::{
    encode_header, Command, Decoder, Flags, Limits, Metadata, Push, SocketType, Subscription,
    Version,
};

use super::connection::{free_slot, tune, Connection, Next, Phase, Side};
use super::curve::{
    seal_frames, seal_wire, CurveConn, CurveLoop, CurveServer, CurveStep, Established, REFUSED,
};
use super::handshake::{opening_as, Step};
use super::heartbeat::{ping, pong, Due, Heartbeat};
use super::keepalive::Keepalive;
use super::outbox::{Chunk, SharedOutbox};
use super::subscriptions::{Applied, Subscriptions};
use crate::curve::{PublicKey, Refusal};
use crate::protocol::{DropReason, MessageType};
use crate::telemetry::{LogLimiter, SocketCounters, Tally};

/// Reads per subscriber per turn before others get theirs.
const READS_PER_TURN: usize = 4;
/// Most frames in one message from a subscriber (anything but a one-frame
/// subscription is ignored anyway).
const MAX_FRAMES: usize = 4096;

/// How often liveness is looked at when neither heartbeats nor a handshake
/// deadline ask for more (as the router).
const LIVENESS_CHECK_OFF: Duration = Duration::from_secs(1);

/// When a native PUB or SUB connection counts as dead: libzmq's
/// `ZMQ_HEARTBEAT_*` and `ZMQ_HANDSHAKE_IVL`, as the router applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// PINGs to quiet peers and the silence that closes them (`None`: off).
    pub heartbeat: Option<Heartbeat>,
    /// How long a connection may take to finish its greeting and READY
    /// (`None`: no limit).
    pub handshake: Option<Duration>,
}

impl Timeouts {
    /// How often the loop should look.
    pub fn check_every(&self) -> Duration {
        let mut every = self
            .heartbeat
            .map_or(LIVENESS_CHECK_OFF, |h| h.check_every());
        if let Some(limit) = self.handshake {
            every = every.min((limit / 4).max(Duration::from_millis(10)));
        }
        every
    }

    /// What `conn` needs at `now`: a PING (only to 3.1 peers: 3.0 has
    /// none), a close (handshake overdue, or silent after a PING), or
    /// nothing.
    pub fn due(&self, conn: &mut Connection, now: Instant) -> Due {
        match conn.phase {
            Phase::Handshaking(_)
                if self
                    .handshake
                    .is_some_and(|limit| now.saturating_duration_since(conn.accepted) >= limit) =>
            {
                Due::Dead
            }
            Phase::Active if conn.answers_ping => match self.heartbeat {
                Some(h) => h.due(&mut conn.liveness, now),
                None => Due::Nothing,
            },
            _ => Due::Nothing,
        }
    }
}

/// Behaviour of a native PUB.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Output bytes per subscriber at which it counts as full: messages
    /// for it are dropped until it reads (the router's `out_limit`).
    pub out_limit: usize,
    /// Largest message accepted from a subscriber; larger ones are skipped.
    pub max_message: usize,
    /// TCP keepalive of accepted connections.
    pub keepalive: Keepalive,
    /// Heartbeats and the handshake deadline.
    pub timeouts: Timeouts,
}

/// One SUB or XSUB peer.
struct Subscriber {
    /// Socket, receive buffer and handshake state (the `side` is unused).
    conn: Connection,
    /// Messages and commands waiting for the peer.
    out: SharedOutbox,
    /// What it subscribed to.
    subscriptions: Subscriptions,
    /// Messages dropped for it since it last had room (logged once per run
    /// of drops, not per message).
    dropping: u64,
}

/// A bound native PUB and its subscribers.
pub struct Publisher {
    listener: TcpListener,
    counters: SocketCounters,
    config: PublisherConfig,
    /// The listener's token; subscriber `i` has `base + 1 + i`.
    base: usize,
    subs: Vec<Option<Subscriber>>,
    free: Vec<usize>,
    /// Subscribers with bytes to read this turn.
    to_service: Vec<usize>,
    /// Subscribers whose read budget ran out: read again next turn.
    again: Vec<usize>,
    /// Subscribers with output queued this turn.
    dirty: Vec<usize>,
    /// Subscribers to close at the end of the turn.
    closing: Vec<usize>,
    decoder: Decoder,
    limits: Limits,
    opening: Chunk,
    sent: Tally,
    limiter: LogLimiter,
    /// When heartbeats and handshake deadlines are next looked at.
    next_liveness_check: Instant,
    ping: Chunk,
    /// The CURVE server, when subscribers must be CURVE clients.
    curve: Option<CurveLoop>,
}

impl Publisher {
    /// Binds `address:port` (port 0: any free port). Returns the publisher
    /// and its endpoint as libzmq prints it (`tcp://ip:port`) and port.
    pub fn bind(
        address: &str,
        port: u16,
        counters: SocketCounters,
        config: PublisherConfig,
    ) -> io::Result<(Publisher, String, u16)> {
        let addr: SocketAddr = (address, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let limits = Limits {
            max_frames: MAX_FRAMES,
            max_bytes: config.max_message,
        };
        let publisher = Publisher {
            listener,
            counters,
            decoder: Decoder::new(config.max_message),
            limits,
            config,
            base: 0,
            subs: Vec::new(),
            free: Vec::new(),
            to_service: Vec::new(),
            again: Vec::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            opening: Arc::new(opening_as(SocketType::Pub)),
            sent: Tally::default(),
            limiter: LogLimiter::new(20, Duration::from_secs(10)),
            next_liveness_check: Instant::now(),
            ping: Arc::new(ping()),
            curve: None,
        };
        Ok((publisher, format!("tcp://{bound}"), bound.port()))
    }

    /// Makes the PUB a CURVE server: subscribers are admitted by their
    /// key (a PUB routes nothing by identity), and every subscriber gets
    /// its own boxes (a published message is no longer shared).
    pub fn with_curve(mut self, curve: CurveServer) -> Publisher {
        self.opening = Arc::new(CurveServer::greeting().to_vec());
        self.curve = Some(CurveLoop::new(curve));
        self
    }

    /// Registers the listener under `base`; subscribers get the tokens
    /// above it, so the owning loop must leave everything from `base` up to
    /// the publisher ([`Publisher::owns`]).
    pub fn register(&mut self, registry: &Registry, base: Token) -> io::Result<()> {
        self.base = base.0;
        registry.register(&mut self.listener, base, Interest::READABLE)
    }

    /// Whether an event with `token` is the publisher's.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.base
    }

    /// Whether work is left for the next turn (the loop should not wait).
    pub fn pending(&self) -> bool {
        !self.again.is_empty() || !self.to_service.is_empty()
    }

    /// When the loop must run a turn at the latest (the next liveness
    /// check).
    pub fn deadline(&self) -> Instant {
        self.next_liveness_check
    }

    /// Takes one of the publisher's events.
    pub fn handle(&mut self, registry: &Registry, event: &Event) {
        let token = event.token().0;
        if token == self.base {
            self.accept(registry);
            return;
        }
        let idx = token - self.base - 1;
        let Some(sub) = self.subs.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if event.is_writable() {
            mark_dirty(&mut self.dirty, idx, &mut sub.conn);
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        if readable && !sub.conn.readable {
            sub.conn.readable = true;
            self.to_service.push(idx);
        }
    }

    /// Publishes `frames` (the first is the topic) to every subscriber
    /// whose subscriptions match, counted as one message of `msg_type` sent
    /// (as libzmq's PUB counts one send). The wire form is built once, and
    /// only if someone wants it.
    pub fn publish(&mut self, frames: &[&[u8]], msg_type: MessageType) {
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        self.sent.add(msg_type, bytes);
        let topic = frames.first().copied().unwrap_or_default();
        let mut wire: Option<Chunk> = None;
        let mut dropped = 0u64;
        let mut started = 0u64;
        for (idx, slot) in self.subs.iter_mut().enumerate() {
            let Some(sub) = slot.as_mut() else {
                continue;
            };
            if sub.conn.phase != Phase::Active
                || sub.conn.closing
                || !sub.subscriptions.matches(topic)
            {
                continue;
            }
            if !sub.out.is_empty() && sub.out.len() >= self.config.out_limit {
                sub.dropping += 1;
                if sub.dropping == 1 {
                    started += 1;
                }
                dropped += 1;
                continue;
            }
            sub.dropping = 0;
            if let Some(session) = sub.conn.session() {
                // Boxes are per connection: sealed for this one alone.
                let mut sealed = Vec::new();
                if seal_frames(session, frames, &mut sealed).is_err() {
                    sub.conn.closing = true;
                    self.closing.push(idx);
                    continue;
                }
                sub.out.push(Arc::new(sealed));
            } else {
                let chunk = wire.get_or_insert_with(|| encode(frames));
                sub.out.push(Arc::clone(chunk));
            }
            mark_dirty(&mut self.dirty, idx, &mut sub.conn);
        }
        if dropped > 0 {
            for _ in 0..dropped {
                self.counters.dropped(DropReason::HighWaterMark);
            }
            // Once when a subscriber starts dropping, not per message: the
            // counter has the totals.
            if started > 0 && self.may_log() {
                tracing::warn!(
                    socket = "publisher",
                    subscribers = started,
                    limit_bytes = self.config.out_limit,
                    "subscriber output full: published messages dropped for it until it reads"
                );
            }
        }
    }

    /// Ends a turn of the owning loop: reads what subscribers sent, writes
    /// what is queued, closes connections that ended, and adds the turn's
    /// counts to the metrics.
    pub fn end_turn(&mut self, registry: &Registry) {
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
        if self
            .curve
            .as_mut()
            .is_some_and(|curve| curve.authorizer.refresh())
        {
            self.recheck_curve_subscribers();
        }
        self.flush_dirty();
        self.close_pending(registry);
        self.sent.flush_sent(&self.counters);
    }

    /// Pings quiet subscribers, closes those silent past the heartbeat
    /// timeout and those whose handshake is overdue, each counted.
    fn check_liveness(&mut self, now: Instant) {
        let timeouts = self.config.timeouts;
        self.next_liveness_check = now + timeouts.check_every();
        let mut dead = 0u64;
        for (idx, slot) in self.subs.iter_mut().enumerate() {
            let Some(sub) = slot.as_mut() else {
                continue;
            };
            if sub.conn.closing {
                continue;
            }
            match timeouts.due(&mut sub.conn, now) {
                Due::Nothing => {}
                Due::Ping => {
                    if queue_chunk(&mut sub.out, &mut sub.conn, &self.ping).is_err() {
                        sub.conn.closing = true;
                        self.closing.push(idx);
                    }
                    mark_dirty(&mut self.dirty, idx, &mut sub.conn);
                }
                Due::Dead => {
                    sub.conn.closing = true;
                    self.closing.push(idx);
                    self.counters.timed_out.inc();
                    dead += 1;
                }
            }
        }
        if dead > 0 && self.may_log() {
            tracing::warn!(
                socket = "publisher",
                subscribers = dead,
                "subscriber silent past the heartbeat timeout or handshake deadline; connection closed"
            );
        }
    }

    /// At shutdown: writes what the sockets take; returns how many
    /// subscribers still have output waiting (the loop retries until its
    /// linger ends).
    pub fn drain(&mut self) -> usize {
        self.sent.flush_sent(&self.counters);
        self.subs
            .iter_mut()
            .flatten()
            .filter(|s| !s.conn.closing && !s.out.is_empty())
            .map(|s| s.out.flush(&mut &s.conn.stream).is_ok_and(|done| !done))
            .filter(|&left| left)
            .count()
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors, typically: the listener stays
                    // readable, so the next turn tries again.
                    if self.may_log() {
                        tracing::warn!(socket = "publisher", %error, "accept failed");
                    }
                    return;
                }
            };
            tune(&stream, &self.config.keepalive);
            let idx = free_slot(&mut self.subs, &mut self.free);
            if let Err(error) = registry.register(
                &mut stream,
                Token(self.base + 1 + idx),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%error, "cannot register a subscriber");
                self.free.push(idx);
                continue;
            }
            let mut sub = Subscriber {
                conn: Connection::new(stream, Side::Frontend, self.limits),
                out: SharedOutbox::default(),
                subscriptions: Subscriptions::default(),
                dropping: 0,
            };
            sub.out.push(Arc::clone(&self.opening));
            if let Some(curve) = &self.curve {
                sub.conn.curve = Some(Box::new(CurveConn::Handshake(curve.server.handshake())));
            }
            mark_dirty(&mut self.dirty, idx, &mut sub.conn);
            // Counted at accept and close, as the socket monitor's
            // ACCEPTED and DISCONNECTED are for the libzmq PUB.
            self.counters.connected.inc();
            self.subs[idx] = Some(sub);
            self.to_service.push(idx);
        }
    }

    /// Reads and handles one subscriber's input, a few reads at most.
    fn service(&mut self, idx: usize) {
        let Some(mut sub) = self.subs.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let mut reads = 0;
        loop {
            let need = match self.process(idx, &mut sub) {
                None => break,
                Some(n) => n,
            };
            if sub.conn.eof {
                sub.conn.closing = true;
                break;
            }
            if !sub.conn.readable {
                break;
            }
            if reads == READS_PER_TURN {
                self.again.push(idx);
                break;
            }
            reads += 1;
            if let Err(error) = sub.conn.read_some(need) {
                tracing::debug!(%error, "subscriber read failed");
            }
        }
        if sub.conn.closing {
            self.closing.push(idx);
        }
        self.subs[idx] = Some(sub);
    }

    /// Handles every complete frame buffered for `sub`. `Some(n)`: the next
    /// frame needs `n` bytes from the message start (0: unknown); `None`:
    /// the connection is closing.
    fn process(&mut self, idx: usize, sub: &mut Subscriber) -> Option<usize> {
        loop {
            if sub.conn.closing {
                return None;
            }
            if matches!(sub.conn.phase, Phase::Handshaking(_)) && sub.conn.curve.is_some() {
                match self.curve_handshake(idx, sub) {
                    Some(need) => return need,
                    None => continue,
                }
            }
            let conn = &mut sub.conn;
            if let Phase::Handshaking(mut handshake) = conn.phase {
                match handshake.advance_as(conn.unread(), &self.decoder, SocketType::Pub) {
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
                        continue;
                    }
                    Err(error) => {
                        if let Some(reason) = error.error_reason() {
                            let mut out = Vec::new();
                            Command::Error { reason }.encode(&mut out);
                            sub.out.push(Arc::new(out));
                            // Best effort: the connection closes whether
                            // the peer gets the reason or not.
                            let _ = sub.out.flush(&mut &conn.stream);
                        }
                        if self.may_log() {
                            tracing::warn!(socket = "publisher", %error, "handshake refused");
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
                        tracing::warn!(socket = "publisher", %error, "bad frame from a subscriber; connection closed");
                    }
                    conn.closing = true;
                    return None;
                }
            };
            match conn.assembler.push(&frame) {
                Push::Partial => {}
                Push::Command => {
                    let body = conn.buf.get(frame.body.clone()).unwrap_or_default();
                    match Command::parse(body) {
                        Ok(Command::Ping { context, .. }) => {
                            let pong = Arc::new(pong(context));
                            if queue_chunk(&mut sub.out, conn, &pong).is_err() {
                                conn.closing = true;
                            }
                            mark_dirty(&mut self.dirty, idx, conn);
                        }
                        Ok(command) => {
                            if let Some(change) = Subscription::from_command(&command) {
                                apply(&mut sub.subscriptions, change, &mut self.limiter);
                            }
                        }
                        // A malformed command means nothing to a PUB.
                        Err(_) => {}
                    }
                    if !conn.assembler.in_progress() {
                        conn.msg_start = conn.decoded;
                    }
                }
                Push::Dropped(_) => conn.msg_start = conn.decoded,
                Push::Complete => {
                    // Only a one-frame message can be a 3.0 subscription;
                    // anything else a subscriber sends is ignored, as
                    // libzmq's PUB does.
                    if let [range] = conn.assembler.frames() {
                        let body = conn.buf.get(range.clone()).unwrap_or_default();
                        if let Some(change) = Subscription::from_message(body) {
                            apply(&mut sub.subscriptions, change, &mut self.limiter);
                        }
                    }
                    conn.assembler.clear();
                    conn.msg_start = conn.decoded;
                }
            }
        }
    }

    /// Moves a subscriber's CURVE handshake on. `None`: admitted, its
    /// subscriptions follow; otherwise what [`Publisher::process`] returns.
    fn curve_handshake(&mut self, idx: usize, sub: &mut Subscriber) -> Option<Option<usize>> {
        let conn = &mut sub.conn;
        let Some(CurveConn::Handshake(handshake)) = conn.curve.as_deref_mut() else {
            return Some(None);
        };
        let mut out = Vec::new();
        let step = handshake.advance(
            &conn.buf[conn.decoded..conn.filled],
            &self.decoder,
            &mut out,
        );
        if !out.is_empty() {
            sub.out.push(Arc::new(std::mem::take(&mut out)));
            mark_dirty(&mut self.dirty, idx, conn);
        }
        let (consumed, pending, version) = match step {
            Ok(CurveStep::NeedMore { consumed }) => {
                conn.handshake_consumed(consumed);
                return Some(Some(0));
            }
            Ok(CurveStep::Initiated {
                consumed,
                pending,
                version,
            }) => (consumed, pending, version),
            Err(error) => {
                if let Some(curve) = &self.curve {
                    curve.server.count_refused("publisher", Refusal::Handshake);
                }
                if self.may_log() {
                    tracing::warn!(socket = "publisher", %error, "CURVE handshake failed");
                }
                conn.closing = true;
                return Some(None);
            }
        };
        conn.handshake_consumed(consumed);
        let key = PublicKey(*pending.client_key());
        // A subscriber is admitted by its key alone: a PUB routes nothing
        // by identity.
        let verdict = match pending.metadata().check_peer(SocketType::Pub) {
            Err(error) => Err((error.reason(), None, error.to_string())),
            Ok(_) => match self.curve.as_ref() {
                Some(curve) => curve
                    .authorizer
                    .admit(&key, None)
                    .map_err(|r| (REFUSED, Some(r), r.as_str().to_string())),
                None => Err((REFUSED, Some(Refusal::UnknownKey), String::new())),
            },
        };
        let ready = match verdict {
            Ok(()) => Metadata::basic(SocketType::Pub, None)
                .map_err(|e| e.to_string())
                .and_then(|ours| pending.accept(&ours, &mut out).map_err(|e| e.to_string())),
            Err((error, refusal, reason)) => {
                pending.refuse(error, &mut out);
                sub.out.push(Arc::new(out));
                // Best effort: the connection closes whether the peer gets
                // the reason or not.
                let _ = sub.out.flush(&mut &conn.stream);
                conn.closing = true;
                if let (Some(refusal), Some(curve)) = (refusal, &self.curve) {
                    curve.server.count_refused("publisher", refusal);
                }
                if self.may_log() {
                    tracing::warn!(socket = "publisher", key = %key.to_z85(), reason, "CURVE peer refused at the handshake");
                }
                return Some(None);
            }
        };
        match ready {
            Ok(session) => {
                sub.out.push(Arc::new(out));
                mark_dirty(&mut self.dirty, idx, conn);
                conn.curve = Some(Box::new(CurveConn::Established(Established {
                    session,
                    key,
                })));
                conn.phase = Phase::Active;
                conn.answers_ping = version >= Version::V3_1;
                None
            }
            Err(error) => {
                if self.may_log() {
                    tracing::warn!(socket = "publisher", %error, "CURVE READY cannot be sealed");
                }
                conn.closing = true;
                Some(None)
            }
        }
    }

    /// After a reload of the authorized keys: closes the subscribers whose
    /// key was removed, each counted, so they receive nothing more.
    fn recheck_curve_subscribers(&mut self) {
        let Some(curve) = &self.curve else {
            return;
        };
        let mut refused = Vec::new();
        for (idx, slot) in self.subs.iter_mut().enumerate() {
            let Some(sub) = slot.as_mut() else {
                continue;
            };
            let Some(CurveConn::Established(established)) = sub.conn.curve.as_deref() else {
                continue;
            };
            if sub.conn.closing {
                continue;
            }
            if let Err(refusal) = curve.authorizer.admit(&established.key, None) {
                sub.conn.closing = true;
                self.closing.push(idx);
                curve.server.count_refused("publisher", refusal);
                refused.push(established.key);
            }
        }
        for key in refused {
            if self.may_log() {
                tracing::warn!(socket = "publisher", key = %key.to_z85(), "CURVE subscriber no longer authorized after a reload; connection closed");
            }
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            let Some(sub) = self.subs.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            sub.conn.dirty = false;
            if sub.out.is_empty() {
                continue;
            }
            if let Err(error) = sub.out.flush(&mut &sub.conn.stream) {
                tracing::debug!(%error, "subscriber write failed");
                if !sub.conn.closing {
                    sub.conn.closing = true;
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

    fn close_pending(&mut self, registry: &Registry) {
        for idx in std::mem::take(&mut self.closing) {
            let Some(slot) = self.subs.get_mut(idx) else {
                continue;
            };
            if !slot.as_ref().is_some_and(|s| s.conn.closing) {
                continue;
            }
            let Some(mut sub) = slot.take() else {
                continue;
            };
            if let Err(error) = registry.deregister(&mut sub.conn.stream) {
                tracing::debug!(%error, "cannot deregister a subscriber");
            }
            self.free.push(idx);
            self.counters.connected.dec();
        }
    }

    fn may_log(&mut self) -> bool {
        let (allowed, suppressed) = self.limiter.check(Instant::now());
        if suppressed > 0 {
            tracing::warn!(suppressed, "log lines about the publisher suppressed");
        }
        allowed
    }
}

/// Applies a subscription change, logging a refused one.
fn apply(subscriptions: &mut Subscriptions, change: Subscription<'_>, limiter: &mut LogLimiter) {
    if subscriptions.apply(change) == Applied::Full && limiter.check(Instant::now()).0 {
        tracing::warn!(
            socket = "publisher",
            limit = super::subscriptions::MAX_PREFIXES,
            "subscription refused: the subscriber holds too many prefixes"
        );
    }
}

/// Queues an encoded command or message for a subscriber: shared under
/// NULL, sealed for it alone under CURVE. An error (our nonces exhausted)
/// means the connection must close.
fn queue_chunk(
    out: &mut SharedOutbox,
    conn: &mut Connection,
    chunk: &Chunk,
) -> Result<(), MessageError> {
    match conn.session() {
        Some(session) => {
            let mut sealed = Vec::new();
            seal_wire(session, chunk, &mut sealed)?;
            out.push(Arc::new(sealed));
        }
        None => out.push(Arc::clone(chunk)),
    }
    Ok(())
}

/// Queues `conn` (subscriber `idx`) for a flush at the end of the turn.
fn mark_dirty(dirty: &mut Vec<usize>, idx: usize, conn: &mut Connection) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(idx);
    }
}

/// A whole message as ZMTP frames, in one buffer shared by every
/// subscriber it goes to.
pub fn encode(frames: &[&[u8]]) -> Chunk {
    let last = frames.len().saturating_sub(1);
    let len: usize = frames
        .iter()
        .map(|f| {
            encode_header(Flags::message(false), f.len())
                .as_bytes()
                .len()
                + f.len()
        })
        .sum();
    let mut wire = Vec::with_capacity(len);
    for (i, f) in frames.iter().enumerate() {
        wire.extend_from_slice(encode_header(Flags::message(i < last), f.len()).as_bytes());
        wire.extend_from_slice(f);
    }
    Arc::new(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_encoded_with_more_on_all_but_the_last_frame() {
        let big = vec![7u8; 300];
        let wire = encode(&[b"topic", b"1.0", &big]);
        let mut expected = vec![1, 5];
        expected.extend_from_slice(b"topic");
        expected.extend_from_slice(&[1, 3]);
        expected.extend_from_slice(b"1.0");
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 1, 44]);
        expected.extend_from_slice(&big);
        assert_eq!(&wire[..], &expected[..]);
    }
}
