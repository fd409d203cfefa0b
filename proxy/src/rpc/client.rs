//! The RPC client: call, cast, fanout and notify through the proxies.
//!
//! One DEALER per client (identity `{host}/{uuid4}`), owned by a
//! [`SocketThread`], connected to the frontend of every proxy the matchmaker
//! lists; ZeroMQ round-robins messages over the proxies. Replies and acks
//! come back on the same socket; the thread hands each to the future waiting
//! for its message id. That future is registered *before* the message is
//! sent, so an instant reply cannot be missed.
//!
//! With acks on, a CALL or CAST that is not acknowledged within the ack
//! timeout (x multiplier after each retry) is sent again with the same
//! message id; ZeroMQ puts the copy on the next proxy, and the server's
//! duplicate suppression makes sure it runs once. A retry re-chooses the
//! server when the chosen one has left the matchmaker. A CALL that was acked
//! but whose reply is late is re-sent the same way (the server answers a
//! copy with its cached reply), because a reply can die with a proxy too.
//! A server that let an ack time out is skipped by new requests for a while
//! (see [`super::routing`]): a crashed server stays listed until its TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::connections::{self, follow_proxies};
use super::payload::{decode_reply, encode_pair, Request};
use super::routing::Routes;
use super::socket_thread::{Command, Monitor, SocketThread};
use super::{default_host, new_message_id, open_socket, CurveClient, RpcError};
use crate::matchmaker::{Matchmaker, Target};
use crate::protocol::{dealer_request, Delivery, MessageType};

/// Client settings (oslo names in brackets).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Host part of the identity (`rpc_zmq_host`).
    pub host: String,
    /// Wait for acks and retry (`rpc_use_acks`).
    pub acks: bool,
    /// First ack timeout (`rpc_ack_timeout_base`, 15 s).
    pub ack_timeout: Duration,
    /// Ack timeout multiplier per retry (`rpc_ack_timeout_multiplier`, 2).
    pub ack_timeout_multiplier: u32,
    /// Retries after the first send (`rpc_retry_attempts`, 3); 0 = none.
    pub retries: u32,
    /// Default call timeout (`rpc_response_timeout`, 60 s).
    pub call_timeout: Duration,
    /// How long to wait for a target to have servers (`check_timeout`, 20 s).
    pub discovery_timeout: Duration,
    /// Fanout and notify through the proxies' PUB sockets (`use_pub_sub`).
    pub pubsub: bool,
    /// ZMQ_RECONNECT_IVL towards proxies.
    pub reconnect_interval: Duration,
    /// Acks on: how long new requests skip a server that let an ack time
    /// out (it may have crashed and still be listed until its TTL).
    pub suspect_period: Duration,
    /// CURVE keys, for proxies started with CURVE; `None` = plain (NULL).
    pub curve: Option<CurveClient>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            host: default_host(),
            acks: false,
            ack_timeout: Duration::from_secs(15),
            ack_timeout_multiplier: 2,
            retries: 3,
            call_timeout: Duration::from_secs(60),
            discovery_timeout: Duration::from_secs(20),
            pubsub: false,
            reconnect_interval: Duration::from_millis(10),
            suspect_period: Duration::from_secs(60),
            curve: None,
        }
    }
}

/// Per-message overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// Call timeout instead of the configured one.
    pub timeout: Option<Duration>,
    /// Retries instead of the configured number; `Some(0)` = no retry.
    pub retries: Option<u32>,
}

/// Counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Messages handed to the socket (first sends and retries).
    pub sent: u64,
    /// Re-sends after an ack (or reply) timeout.
    pub retries: u64,
    /// Acks received.
    pub acks: u64,
    /// Replies received.
    pub replies: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    retries: AtomicU64,
    acks: AtomicU64,
    replies: AtomicU64,
}

/// Futures waiting for the ack and reply of one message id.
struct Waiter {
    ack: Option<oneshot::Sender<()>>,
    reply: Option<oneshot::Sender<Vec<u8>>>,
}

type Waiters = Arc<Mutex<HashMap<Vec<u8>, Waiter>>>;

fn lock_waiters(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Waiter>> {
    // A panic while the map is locked cannot leave an entry half written.
    crate::lock::lock(w)
}

/// Removes a message id's waiter when its request finishes (or is dropped).
struct WaiterGuard {
    waiters: Waiters,
    id: Vec<u8>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        lock_waiters(&self.waiters).remove(&self.id);
    }
}

/// An RPC client; cheap to clone, clones share the socket.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    identity: String,
    thread: Arc<SocketThread>,
    waiters: Waiters,
    routes: Routes,
    counters: Arc<Counters>,
    /// Proxies whose frontend completed the handshake.
    connected: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    _ctx: zmq::Context,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl RpcClient {
    /// Creates the client's socket and starts following the proxy list.
    pub async fn connect(
        matchmaker: Arc<dyn Matchmaker>,
        config: ClientConfig,
    ) -> Result<RpcClient, RpcError> {
        let identity = format!("{}/{}", config.host, uuid::Uuid::new_v4());
        let ctx = zmq::Context::new();
        let dealer = open_socket(
            &ctx,
            zmq::DEALER,
            identity.as_bytes(),
            config.reconnect_interval,
            config.curve.as_ref(),
        )?;
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let counters = Arc::new(Counters::default());
        let on_message = {
            let waiters = Arc::clone(&waiters);
            let counters = Arc::clone(&counters);
            move |_socket: usize, frames: Vec<Vec<u8>>| deliver(&waiters, &counters, &frames)
        };
        let (peers, connected) = watch::channel(0usize);
        let thread = Arc::new(SocketThread::spawn(
            "rpc-client",
            &ctx,
            vec![dealer],
            Duration::from_millis(500),
            Some(Monitor { socket: 0, peers }),
            on_message,
        )?);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(follow_proxies(
            Arc::clone(&matchmaker),
            Arc::clone(&thread),
            vec![(0, connections::frontend as connections::EndpointOf)],
            config.curve.clone(),
            stop_rx,
        ));
        Ok(RpcClient {
            inner: Arc::new(Inner {
                config,
                identity,
                thread,
                waiters,
                routes: Routes::new(matchmaker),
                counters,
                connected,
                stop,
                _ctx: ctx,
            }),
        })
    }

    /// This client's DEALER identity.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            sent: c.sent.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
        }
    }

    /// Waits until the DEALER has completed the handshake with at least `n` proxies.
    pub async fn wait_for_proxies(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Calls `request.method` on one server of `target` and returns its result.
    pub async fn call(&self, target: &Target, request: &Request) -> Result<Value, RpcError> {
        self.call_with(target, request, SendOptions::default())
            .await
    }

    /// [`RpcClient::call`] with per-call options.
    pub async fn call_with(
        &self,
        target: &Target,
        request: &Request,
        options: SendOptions,
    ) -> Result<Value, RpcError> {
        let timeout = options.timeout.unwrap_or(self.inner.config.call_timeout);
        let deadline = Instant::now() + timeout;
        let reply = self
            .direct(MessageType::Call, target, request, options, deadline)
            .await?;
        match reply {
            Some(frame) => Ok(decode_reply(&frame)??),
            None => Err(RpcError::Timeout(timeout)),
        }
    }

    /// Sends `request` to one server of `target` without a reply. With acks
    /// on, returns once the server acknowledged it (or fails with
    /// [`RpcError::NoAck`] after the retries); without, once it is queued.
    pub async fn cast(&self, target: &Target, request: &Request) -> Result<(), RpcError> {
        self.cast_with(target, request, SendOptions::default())
            .await
    }

    /// [`RpcClient::cast`] with per-message options.
    pub async fn cast_with(
        &self,
        target: &Target,
        request: &Request,
        options: SendOptions,
    ) -> Result<(), RpcError> {
        let deadline = Instant::now() + self.inner.config.discovery_timeout;
        self.direct(MessageType::Cast, target, request, options, deadline)
            .await
            .map(|_| ())
    }

    /// Sends `request` to every server of `topic`. Returns the number of
    /// copies sent (1 with pub/sub: the proxies publish it).
    pub async fn fanout(&self, topic: &str, request: &Request) -> Result<usize, RpcError> {
        self.multisend(MessageType::CastFanout, topic.to_string(), request.encode())
            .await
    }

    /// Sends a notification `[context, message]` to the listeners of
    /// `{topic}.{priority}`. Returns the number of copies sent.
    pub async fn notify(
        &self,
        topic: &str,
        priority: &str,
        context: &Value,
        message: &Value,
    ) -> Result<usize, RpcError> {
        self.multisend(
            MessageType::Notify,
            format!("{topic}.{priority}"),
            encode_pair(context, message),
        )
        .await
    }

    async fn multisend(
        &self,
        msg_type: MessageType,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<usize, RpcError> {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.discovery_timeout;
        let id = new_message_id();
        let keys: Vec<String> = if cfg.pubsub {
            vec![topic]
        } else {
            self.inner
                .routes
                .servers(&Target::topic(topic), deadline)
                .await?
        };
        for key in &keys {
            self.send_frames(
                dealer_request(msg_type, key.as_bytes(), id.as_bytes(), &[&payload]),
                deadline,
            )?;
        }
        Ok(keys.len())
    }

    fn send_frames(&self, frames: Vec<Vec<u8>>, deadline: Instant) -> Result<(), RpcError> {
        self.inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.inner.thread.send(Command::Send {
            socket: 0,
            frames,
            deadline: deadline.into_std(),
        })
    }

    /// CALL or CAST to one server, with the ack/retry logic. Returns the
    /// reply frame of a CALL (`None` on timeout), nothing for a CAST.
    async fn direct(
        &self,
        msg_type: MessageType,
        target: &Target,
        request: &Request,
        options: SendOptions,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        let cfg = &self.inner.config;
        let is_call = msg_type == MessageType::Call;
        let mut retries_left = options.retries.unwrap_or(cfg.retries);
        let id = new_message_id().into_bytes();
        let (ack_tx, mut ack_rx) = oneshot::channel();
        let (reply_tx, mut reply_rx) = oneshot::channel();
        lock_waiters(&self.inner.waiters).insert(
            id.clone(),
            Waiter {
                ack: cfg.acks.then_some(ack_tx),
                reply: is_call.then_some(reply_tx),
            },
        );
        let _guard = WaiterGuard {
            waiters: Arc::clone(&self.inner.waiters),
            id: id.clone(),
        };
        let discovery_deadline = deadline.min(Instant::now() + cfg.discovery_timeout);
        let mut server = self.inner.routes.choose(target, discovery_deadline).await?;
        let payload = request.encode();
        let frames = |server: &str| dealer_request(msg_type, server.as_bytes(), &id, &[&payload]);
        let mut ack_timeout = cfg.ack_timeout;
        // A cast's copy is worth sending until its ack would be late.
        let send_deadline = |t: Duration| {
            if is_call {
                deadline
            } else {
                Instant::now() + t
            }
        };
        self.send_frames(frames(&server), send_deadline(ack_timeout))?;
        if !cfg.acks {
            if !is_call {
                return Ok(None);
            }
            return Ok(tokio::time::timeout_at(deadline, reply_rx)
                .await
                .ok()
                .and_then(Result::ok));
        }
        let mut attempts = 1u32;
        let mut acked = false;
        let mut next_retry = Instant::now() + ack_timeout;
        loop {
            tokio::select! {
                reply = &mut reply_rx, if is_call => {
                    self.inner.routes.clear(target, &server).await;
                    return Ok(reply.ok());
                }
                ack = &mut ack_rx, if !acked => {
                    acked = true;
                    self.inner.routes.clear(target, &server).await;
                    if ack.is_ok() && !is_call {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(next_retry), if retries_left > 0 => {
                    retries_left -= 1;
                    attempts += 1;
                    if !acked {
                        self.inner.routes.suspect(target, &server, cfg.suspect_period).await;
                    }
                    if !self.inner.routes.is_live(target, &server).await {
                        // The chosen server left: pick a live one if one
                        // shows up in time, else try the old one again.
                        let wait = (Instant::now() + ack_timeout).min(deadline);
                        if let Ok(s) = self.inner.routes.choose(target, wait).await {
                            server = s;
                        }
                    }
                    ack_timeout = ack_timeout.saturating_mul(cfg.ack_timeout_multiplier.max(1));
                    self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(msg_id = %String::from_utf8_lossy(&id), attempts, "no ack in time; re-sending");
                    self.send_frames(frames(&server), send_deadline(ack_timeout))?;
                    next_retry = Instant::now() + ack_timeout;
                }
                _ = tokio::time::sleep_until(next_retry), if retries_left == 0 && !is_call => {
                    self.inner.routes.suspect(target, &server, cfg.suspect_period).await;
                    return Err(RpcError::NoAck { attempts });
                }
                _ = tokio::time::sleep_until(deadline), if is_call => {
                    return Ok(None);
                }
            }
        }
    }

    /// Stops following proxies and closes the socket (after up to 500 ms of
    /// linger for messages still queued).
    pub async fn close(self) {
        self.inner.stop.send_replace(true);
        let thread = Arc::clone(&self.inner.thread);
        let _ = tokio::task::spawn_blocking(move || thread.stop()).await;
    }
}

/// Runs on the socket thread: hands a reply or ack to its waiter.
fn deliver(waiters: &Waiters, counters: &Counters, frames: &[Vec<u8>]) {
    let Ok(d) = Delivery::parse(frames) else {
        tracing::debug!(frames = frames.len(), "client dropped a malformed message");
        return;
    };
    let mut map = lock_waiters(waiters);
    let Some(w) = map.get_mut(d.message_id) else {
        // Late or duplicate answer to a finished request.
        return;
    };
    match d.msg_type {
        MessageType::Ack => {
            counters.acks.fetch_add(1, Ordering::Relaxed);
            if let Some(tx) = w.ack.take() {
                let _ = tx.send(());
            }
        }
        MessageType::Reply => {
            counters.replies.fetch_add(1, Ordering::Relaxed);
            // A reply implies receipt.
            if let Some(tx) = w.ack.take() {
                let _ = tx.send(());
            }
            if let (Some(tx), Some(frame)) = (w.reply.take(), d.payload.first()) {
                let _ = tx.send(frame.clone());
            }
        }
        _ => {}
    }
}
