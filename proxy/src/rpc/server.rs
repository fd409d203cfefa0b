//! The RPC server: receives requests for one target through the proxies and
//! runs them on an async handler.
//!
//! One DEALER (identity `{host}/{topic}/{uuid4}`, or
//! `{host}/{topic}/{server}/{uuid4}`, as oslo names them) connected to every
//! proxy's backend, and with pub/sub a SUB on every proxy's PUB. The identity
//! is registered in the matchmaker under `topic/server` and `topic` and kept
//! fresh, from the moment the DEALER has met its first proxy. Both sockets live on one [`SocketThread`]; replies and acks are
//! sent by that thread too.
//!
//! With acks on, CALL and CAST are acknowledged on receipt, and message ids
//! are remembered for a TTL (clients with acks re-send, possibly through
//! another proxy): a copy is not handled again; its ack is re-sent, and for
//! a CALL the cached reply once there is one.
//!
//! [`RpcServer::stop`] unregisters first, keeps serving for a short grace
//! period while clients notice, then stops taking requests, waits for the
//! running handlers and closes the sockets after their replies left.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::connections::{self, follow_proxies};
use super::dedup::{Dedup, Seen};
use super::payload::{decode_pair, encode_reply, RemoteError};
use super::socket_thread::{Command, Monitor, SocketThread};
use super::{default_host, open_socket, CurveClient, RpcError};
use crate::backoff::CappedBackoff;
use crate::matchmaker::{BoxFuture, Liveness, Matchmaker, Target};
use crate::protocol::{dealer_request, Delivery, MessageType, Publication};

/// Index of the DEALER on the socket thread.
const DEALER: usize = 0;
/// Index of the SUB (pub/sub only).
const SUB: usize = 1;

/// Server settings (oslo names in brackets).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Host part of the identity (`rpc_zmq_host`).
    pub host: String,
    /// The target served.
    pub target: Target,
    /// Ack CALL and CAST on receipt (`rpc_use_acks`).
    pub acks: bool,
    /// Also receive fanout/notify from the proxies' PUB sockets (`use_pub_sub`).
    pub pubsub: bool,
    /// How long message ids are remembered with acks on (`rpc_message_ttl`, 300 s).
    pub dedup_ttl: Duration,
    /// Registration TTL and refresh (`zmq_target_expire` / `zmq_target_update`).
    pub liveness: Liveness,
    /// ZMQ_RECONNECT_IVL towards proxies.
    pub reconnect_interval: Duration,
    /// After unregistering, how long requests are still served while
    /// clients notice (about one matchmaker poll period).
    pub shutdown_grace: Duration,
    /// CURVE keys, for proxies started with CURVE; `None` = plain (NULL).
    pub curve: Option<CurveClient>,
}

impl ServerConfig {
    /// Defaults for serving `target`.
    pub fn new(target: Target) -> ServerConfig {
        ServerConfig {
            host: default_host(),
            target,
            acks: false,
            pubsub: false,
            dedup_ttl: Duration::from_secs(300),
            liveness: Liveness::default(),
            reconnect_interval: Duration::from_millis(10),
            shutdown_grace: Duration::from_millis(1500),
            curve: None,
        }
    }
}

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// CALL, CAST, CAST_FANOUT or NOTIFY.
    pub msg_type: MessageType,
    /// The client's message id.
    pub message_id: String,
    /// Identity of the client DEALER (empty for pub/sub deliveries).
    pub sender: String,
    /// Request context.
    pub context: Value,
    /// The message: `{"method", "args", ...}` for RPC, the notification for NOTIFY.
    pub message: Value,
}

impl Incoming {
    /// `message.method`, for RPC messages.
    pub fn method(&self) -> Option<&str> {
        self.message.get("method").and_then(Value::as_str)
    }

    /// `message.args` (JSON null when absent).
    pub fn args(&self) -> &Value {
        self.message.get("args").unwrap_or(&Value::Null)
    }
}

/// What runs requests. Implemented for every
/// `Fn(Incoming) -> impl Future<Output = Result<Value, RemoteError>>`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; the result is the reply of a CALL (ignored otherwise).
    fn handle(&self, incoming: Incoming) -> BoxFuture<'static, Result<Value, RemoteError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, RemoteError>> + Send + 'static,
{
    fn handle(&self, incoming: Incoming) -> BoxFuture<'static, Result<Value, RemoteError>> {
        Box::pin(self(incoming))
    }
}

/// A running RPC server.
pub struct RpcServer {
    identity: String,
    config: ServerConfig,
    matchmaker: Arc<dyn Matchmaker>,
    thread: Arc<SocketThread>,
    stop: watch::Sender<bool>,
    accepting: watch::Sender<bool>,
    registered: watch::Receiver<bool>,
    connected: watch::Receiver<usize>,
    in_flight: mpsc::Receiver<()>,
    in_flight_tx: Option<mpsc::Sender<()>>,
    _ctx: zmq::Context,
}

/// oslo's identity: `{host}/{topic}[/{server}]/{uuid4}` (server up to any `@`).
pub fn server_identity(host: &str, target: &Target) -> String {
    let key = match &target.server {
        Some(s) => format!("{}/{}", target.topic, s.split('@').next().unwrap_or(s)),
        None => target.topic.clone(),
    };
    format!("{host}/{key}/{}", uuid::Uuid::new_v4())
}

impl RpcServer {
    /// Creates the sockets, starts following proxies and registering, and
    /// dispatches requests to `handler`.
    pub async fn start(
        matchmaker: Arc<dyn Matchmaker>,
        config: ServerConfig,
        handler: impl Handler,
    ) -> Result<RpcServer, RpcError> {
        let identity = server_identity(&config.host, &config.target);
        let ctx = zmq::Context::new();
        let sock_err = |e: zmq::Error| RpcError::Socket(e.to_string());
        let dealer = open_socket(
            &ctx,
            zmq::DEALER,
            identity.as_bytes(),
            config.reconnect_interval,
            config.curve.as_ref(),
        )?;
        let mut sockets = vec![dealer];
        if config.pubsub {
            let sub_id = format!(
                "{}/{}/{}",
                config.host,
                config.target.topic,
                uuid::Uuid::new_v4()
            );
            let sub = open_socket(
                &ctx,
                zmq::SUB,
                sub_id.as_bytes(),
                config.reconnect_interval,
                config.curve.as_ref(),
            )?;
            sub.set_subscribe(config.target.topic.as_bytes())
                .map_err(sock_err)?;
            sockets.push(sub);
        }
        let (inbox_tx, inbox) = mpsc::unbounded_channel::<(usize, Vec<Vec<u8>>)>();
        let (peers, connected) = watch::channel(0usize);
        let thread = Arc::new(SocketThread::spawn(
            "rpc-server",
            &ctx,
            sockets,
            Duration::from_secs(2),
            Some(Monitor {
                socket: DEALER,
                peers,
            }),
            move |socket, frames| {
                let _ = inbox_tx.send((socket, frames));
            },
        )?);
        let (stop, stop_rx) = watch::channel(false);
        let (accepting, accepting_rx) = watch::channel(true);
        let mut follow: Vec<(usize, connections::EndpointOf)> =
            vec![(DEALER, connections::backend)];
        if config.pubsub {
            follow.push((SUB, connections::publisher));
        }
        tokio::spawn(follow_proxies(
            Arc::clone(&matchmaker),
            Arc::clone(&thread),
            follow,
            config.curve.clone(),
            stop_rx.clone(),
        ));
        let (registered_tx, registered) = watch::channel(false);
        tokio::spawn(keep_registered(
            Arc::clone(&matchmaker),
            connected.clone(),
            registration_targets(&config.target),
            identity.clone(),
            config.liveness,
            registered_tx,
            stop_rx,
        ));
        let (in_flight_tx, in_flight) = mpsc::channel::<()>(1);
        let dispatcher = Dispatcher {
            config: config.clone(),
            thread: Arc::clone(&thread),
            handler: Arc::new(handler),
            dedup: Arc::new(Mutex::new(Dedup::new(config.dedup_ttl))),
            in_flight: in_flight_tx.clone(),
        };
        tokio::spawn(dispatcher.run(inbox, accepting_rx));
        Ok(RpcServer {
            identity,
            config,
            matchmaker,
            thread,
            stop,
            accepting,
            registered,
            connected,
            in_flight,
            in_flight_tx: Some(in_flight_tx),
            _ctx: ctx,
        })
    }

    /// This server's DEALER identity (what clients address).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until the identity is registered and the DEALER completed the
    /// handshake with at least `proxies` proxies.
    pub async fn wait_ready(&self, proxies: usize, timeout: Duration) -> bool {
        let mut reg = self.registered.clone();
        let mut con = self.connected.clone();
        tokio::time::timeout(timeout, async {
            reg.wait_for(|r| *r).await.is_ok() && con.wait_for(|c| *c >= proxies).await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Clean shutdown: unregister, serve `shutdown_grace` longer, stop
    /// taking requests, wait for running handlers, close the sockets.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        for target in registration_targets(&self.config.target) {
            if let Err(error) = self
                .matchmaker
                .unregister_server(&target, &self.identity)
                .await
            {
                tracing::warn!(%error, ?target, "could not unregister rpc server");
            }
        }
        tokio::time::sleep(self.config.shutdown_grace).await;
        self.accepting.send_replace(false);
        self.in_flight_tx.take();
        // Every handler task holds a sender; all dropped = all finished.
        while self.in_flight.recv().await.is_some() {}
        let thread = Arc::clone(&self.thread);
        let _ = tokio::task::spawn_blocking(move || thread.stop()).await;
    }
}

/// oslo registers `topic/server` first, then `topic`.
fn registration_targets(target: &Target) -> Vec<Target> {
    let mut v = Vec::new();
    if target.server.is_some() {
        v.push(target.clone());
    }
    v.push(Target::topic(target.topic.clone()));
    v
}

/// Registers once the DEALER is reachable through at least one proxy (a
/// proxy's ROUTER drops messages for identities it has not met, so
/// registering earlier would send clients into a void), then refreshes.
async fn keep_registered(
    matchmaker: Arc<dyn Matchmaker>,
    mut connected: watch::Receiver<usize>,
    targets: Vec<Target>,
    identity: String,
    liveness: Liveness,
    registered: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        r = connected.wait_for(|n| *n > 0) => if r.is_err() { return },
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut backoff = CappedBackoff::registration();
    loop {
        let mut ok = true;
        for target in &targets {
            if let Err(error) = matchmaker
                .register_server(target, &identity, liveness.expire)
                .await
            {
                tracing::warn!(%error, ?target, retry_in = ?backoff.peek(), "rpc server registration failed");
                ok = false;
                break;
            }
        }
        let wait = if ok {
            registered.send_replace(true);
            backoff.reset();
            liveness.update
        } else {
            backoff.next_wait()
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

struct Dispatcher {
    config: ServerConfig,
    thread: Arc<SocketThread>,
    handler: Arc<dyn Handler>,
    dedup: Arc<Mutex<Dedup>>,
    in_flight: mpsc::Sender<()>,
}

/// How long a reply or ack is worth queuing when no proxy takes it at once.
const REPLY_DEADLINE: Duration = Duration::from_secs(60);

impl Dispatcher {
    async fn run(
        self,
        mut inbox: mpsc::UnboundedReceiver<(usize, Vec<Vec<u8>>)>,
        mut accepting: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some((socket, frames)) => self.receive(socket, frames),
                    None => return,
                },
                _ = accepting.wait_for(|a| !*a) => return,
            }
        }
    }

    fn send(&self, frames: Vec<Vec<u8>>) {
        let _ = self.thread.send(Command::Send {
            socket: DEALER,
            frames,
            deadline: (Instant::now() + REPLY_DEADLINE).into_std(),
        });
    }

    fn receive(&self, socket: usize, frames: Vec<Vec<u8>>) {
        let (msg_type, sender, message_id, payload) = if socket == DEALER {
            match Delivery::parse(&frames) {
                Ok(d) => (d.msg_type, d.sender, d.message_id, d.payload.first()),
                Err(reason) => {
                    tracing::debug!(%reason, "server dropped a malformed message");
                    return;
                }
            }
        } else {
            match Publication::parse(&frames) {
                Ok(p) if p.topic == self.config.target.topic.as_bytes() => {
                    (p.msg_type, &b""[..], p.message_id, p.payload.first())
                }
                Ok(_) => return,
                Err(reason) => {
                    tracing::debug!(%reason, "server dropped a malformed publication");
                    return;
                }
            }
        };
        if !matches!(
            msg_type,
            MessageType::Call | MessageType::Cast | MessageType::CastFanout | MessageType::Notify
        ) {
            return;
        }
        let direct = matches!(msg_type, MessageType::Call | MessageType::Cast);
        let ack = || dealer_request(MessageType::Ack, sender, message_id, &[]);
        // Only clients with acks re-send, so only then are ids remembered
        // (as oslo): at thousands of messages per second, 300 s of ids and
        // replies is memory worth spending only when it buys something.
        let seen = if self.config.acks {
            let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
            d.check(message_id, std::time::Instant::now())
        } else {
            Seen::New
        };
        if let Seen::Duplicate(reply) = seen {
            tracing::debug!(msg_id = %String::from_utf8_lossy(message_id), "duplicate dropped");
            if self.config.acks && direct {
                self.send(ack());
            }
            if let Some(reply) = reply {
                self.send(reply);
            }
            return;
        }
        if self.config.acks && direct {
            self.send(ack());
        }
        let client = sender.to_vec();
        let id = message_id.to_vec();
        let decoded = payload
            .ok_or_else(|| "no payload frame".to_string())
            .and_then(|p| decode_pair(p).map_err(|e| e.to_string()));
        let (context, message) = match decoded {
            Ok(pair) => pair,
            Err(why) => {
                tracing::warn!(%why, "undecodable request");
                if msg_type == MessageType::Call {
                    let failure =
                        RemoteError::new("ValueError", format!("undecodable request: {why}"));
                    self.reply(client, id, Err(failure));
                }
                return;
            }
        };
        let incoming = Incoming {
            msg_type,
            message_id: String::from_utf8_lossy(message_id).into_owned(),
            sender: String::from_utf8_lossy(sender).into_owned(),
            context,
            message,
        };
        let handler = Arc::clone(&self.handler);
        let token = self.in_flight.clone();
        let replier = Replier {
            thread: Arc::clone(&self.thread),
            dedup: Arc::clone(&self.dedup),
        };
        tokio::spawn(async move {
            let result = handler.handle(incoming).await;
            if msg_type == MessageType::Call {
                replier.reply(client, id, result);
            }
            drop(token);
        });
    }

    fn reply(&self, client: Vec<u8>, id: Vec<u8>, result: Result<Value, RemoteError>) {
        Replier {
            thread: Arc::clone(&self.thread),
            dedup: Arc::clone(&self.dedup),
        }
        .reply(client, id, result)
    }
}

/// Sends a CALL's reply (through the socket thread) and caches it for copies.
struct Replier {
    thread: Arc<SocketThread>,
    dedup: Arc<Mutex<Dedup>>,
}

impl Replier {
    fn reply(&self, client: Vec<u8>, id: Vec<u8>, result: Result<Value, RemoteError>) {
        let frames = dealer_request(MessageType::Reply, &client, &id, &[&encode_reply(&result)]);
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_reply(&id, frames.clone());
        let _ = self.thread.send(Command::Send {
            socket: DEALER,
            frames,
            deadline: (Instant::now() + REPLY_DEADLINE).into_std(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_registration_order_follow_oslo() {
        let id = server_identity("node1", &Target::server("compute", "host1@backend"));
        assert!(id.starts_with("node1/compute/host1/"), "{id}");
        assert_eq!(id.len(), "node1/compute/host1/".len() + 36);
        assert!(server_identity("n", &Target::topic("t")).starts_with("n/t/"));
        assert_eq!(
            registration_targets(&Target::server("t", "s")),
            vec![Target::server("t", "s"), Target::topic("t")]
        );
        assert_eq!(
            registration_targets(&Target::topic("t")),
            vec![Target::topic("t")]
        );
    }
}
