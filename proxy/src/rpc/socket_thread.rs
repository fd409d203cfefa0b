//! The thread that owns an RPC client's or server's ZeroMQ sockets.
//!
//! ZeroMQ sockets are not thread-safe, so every socket lives on one thread
//! for its whole life; async code talks to it through [`SocketThread`]:
//! commands go through a channel, followed by a wake-up message on an
//! inproc PUSH/PULL pair that the thread polls together with its sockets.
//! Received messages are handed to a callback on the thread, which routes
//! them onwards (to waiting futures, or to a dispatcher channel).
//!
//! Optionally the thread watches one socket with the ZeroMQ socket monitor
//! and publishes how many peers completed the ZMTP handshake, which is when
//! a proxy's ROUTER knows our identity and can route to us.
//!
//! Sends never block the thread: a message a socket cannot take now (e.g. a
//! DEALER with ZMQ_IMMEDIATE and no proxy connected yet) waits in a queue
//! until its deadline, then is dropped; the sender's ack or reply timeout
//! decides what happens next.

use std::collections::{BTreeSet, VecDeque};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::RpcError;
use crate::curve::PublicKey;

/// How many messages are read from one socket before the others get a turn.
const READ_BATCH: usize = 256;
/// Poll period while sends are queued (they are retried at this rate).
const RETRY_PERIOD_MS: i64 = 5;

/// What the owning thread is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Connect socket `socket` to `endpoint`.
    Connect {
        /// Index of the socket, in the order given to [`SocketThread::spawn`].
        socket: usize,
        /// ZeroMQ endpoint.
        endpoint: String,
        /// The CURVE server key of this connection, for a CURVE socket.
        /// libzmq copies the socket's options into each connection when
        /// it connects, so one DEALER can reach proxies of different keys.
        server_key: Option<PublicKey>,
    },
    /// Disconnect socket `socket` from `endpoint`.
    Disconnect {
        /// Socket index.
        socket: usize,
        /// ZeroMQ endpoint.
        endpoint: String,
    },
    /// Subscribe a SUB socket to a prefix.
    Subscribe {
        /// Socket index.
        socket: usize,
        /// Topic prefix.
        prefix: Vec<u8>,
    },
    /// Send a multipart message; dropped if it cannot leave before `deadline`.
    Send {
        /// Socket index.
        socket: usize,
        /// Frames, sent as one message.
        frames: Vec<Vec<u8>>,
        /// Latest time the message is still worth sending.
        deadline: Instant,
    },
}

/// Which socket to watch with the socket monitor, and where to publish its
/// number of handshaken peers.
pub struct Monitor {
    /// Socket index.
    pub socket: usize,
    /// Receives the peer count on every change.
    pub peers: watch::Sender<usize>,
}

/// Handle on the socket-owning thread; shareable between tasks.
pub struct SocketThread {
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    waker: Mutex<zmq::Socket>,
    join: Mutex<Option<JoinHandle<()>>>,
}

fn zmq_error(what: &str) -> impl FnOnce(zmq::Error) -> RpcError + '_ {
    move |e| RpcError::Socket(format!("{what}: {e}"))
}

impl SocketThread {
    /// Starts a thread named `name` owning `sockets` (already configured),
    /// calling `on_message(socket_index, frames)` for every received message.
    /// On stop, sockets close with `linger` so queued replies still leave.
    pub fn spawn<F>(
        name: &str,
        ctx: &zmq::Context,
        sockets: Vec<zmq::Socket>,
        linger: Duration,
        monitor: Option<Monitor>,
        mut on_message: F,
    ) -> Result<SocketThread, RpcError>
    where
        F: FnMut(usize, Vec<Vec<u8>>) + Send + 'static,
    {
        let endpoint = format!("inproc://rpc-wake-{}", uuid::Uuid::new_v4());
        let pull = ctx.socket(zmq::PULL).map_err(zmq_error("wake PULL"))?;
        pull.bind(&endpoint).map_err(zmq_error("bind wake PULL"))?;
        let push = ctx.socket(zmq::PUSH).map_err(zmq_error("wake PUSH"))?;
        push.set_linger(0).map_err(zmq_error("ZMQ_LINGER"))?;
        push.connect(&endpoint)
            .map_err(zmq_error("connect wake PUSH"))?;
        let monitor = match monitor {
            Some(m) => {
                let socket = sockets
                    .get(m.socket)
                    .ok_or_else(|| RpcError::Socket("monitored socket index".into()))?;
                let endpoint = format!("inproc://rpc-monitor-{}", uuid::Uuid::new_v4());
                let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
                    | zmq::SocketEvent::DISCONNECTED.to_raw();
                socket
                    .monitor(&endpoint, i32::from(events))
                    .map_err(zmq_error("socket monitor"))?;
                let pair = ctx.socket(zmq::PAIR).map_err(zmq_error("monitor PAIR"))?;
                pair.connect(&endpoint)
                    .map_err(zmq_error("connect monitor PAIR"))?;
                Some(PeerWatch {
                    pair,
                    peers: m.peers,
                    handshaken: BTreeSet::new(),
                })
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel::<Command>();
        let linger_ms = i32::try_from(linger.as_millis()).unwrap_or(i32::MAX);
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                run(&pull, &sockets, monitor, &rx, &mut on_message);
                for s in &sockets {
                    let _ = s.set_linger(linger_ms);
                }
            })
            .map_err(|e| RpcError::Socket(format!("spawn {name}: {e}")))?;
        Ok(SocketThread {
            commands: Mutex::new(Some(tx)),
            waker: Mutex::new(push),
            join: Mutex::new(Some(join)),
        })
    }

    /// Queues `command` and wakes the thread. Fails once the thread stopped.
    pub fn send(&self, command: Command) -> Result<(), RpcError> {
        {
            let guard = self.commands.lock().map_err(|_| RpcError::Closed)?;
            let tx = guard.as_ref().ok_or(RpcError::Closed)?;
            tx.send(command).map_err(|_| RpcError::Closed)?;
        }
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Ok(w) = self.waker.lock() {
            // EAGAIN means wake-ups are already pending: nothing lost.
            let _ = w.send(&b""[..], zmq::DONTWAIT);
        }
    }

    /// Stops the thread after it has handled every queued command, and
    /// waits for it (blocking: call from `spawn_blocking` in async code).
    pub fn stop(&self) {
        if let Ok(mut guard) = self.commands.lock() {
            guard.take();
        }
        self.wake();
        let join = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            let _ = j.join();
        }
    }
}

impl Drop for SocketThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Monitor events of the watched socket, turned into a peer count.
struct PeerWatch {
    pair: zmq::Socket,
    peers: watch::Sender<usize>,
    handshaken: BTreeSet<String>,
}

impl PeerWatch {
    fn drain(&mut self) {
        while let Ok(frames) = self.pair.recv_multipart(zmq::DONTWAIT) {
            let (Some(head), Some(endpoint)) = (frames.first(), frames.get(1)) else {
                continue;
            };
            if head.len() < 2 {
                continue;
            }
            let event = zmq::SocketEvent::from_raw(u16::from_le_bytes([head[0], head[1]]));
            let endpoint = String::from_utf8_lossy(endpoint).into_owned();
            match event {
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED => {
                    self.handshaken.insert(endpoint);
                }
                zmq::SocketEvent::DISCONNECTED => {
                    self.handshaken.remove(&endpoint);
                }
                _ => {}
            }
            self.publish();
        }
    }

    fn forget(&mut self, endpoint: &str) {
        if self.handshaken.remove(endpoint) {
            self.publish();
        }
    }

    fn publish(&self) {
        let n = self.handshaken.len();
        self.peers.send_if_modified(|cur| {
            let changed = *cur != n;
            *cur = n;
            changed
        });
    }
}

struct Pending {
    socket: usize,
    frames: Vec<Vec<u8>>,
    deadline: Instant,
}

fn run<F: FnMut(usize, Vec<Vec<u8>>)>(
    wake: &zmq::Socket,
    sockets: &[zmq::Socket],
    mut monitor: Option<PeerWatch>,
    commands: &mpsc::Receiver<Command>,
    on_message: &mut F,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut stopping = false;
    // Poll items: the wake socket, the monitor (if any), then the sockets.
    let first_socket = 1 + usize::from(monitor.is_some());
    loop {
        let timeout = if pending.is_empty() {
            -1
        } else {
            RETRY_PERIOD_MS
        };
        let readable: Vec<bool> = {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(sockets.len() + 2);
            items.push(wake.as_poll_item(zmq::POLLIN));
            if let Some(m) = &monitor {
                items.push(m.pair.as_poll_item(zmq::POLLIN));
            }
            items.extend(sockets.iter().map(|s| s.as_poll_item(zmq::POLLIN)));
            match zmq::poll(&mut items, timeout) {
                Ok(_) => items.iter().map(|i| i.is_readable()).collect(),
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "rpc socket poll failed; socket thread stops");
                    return;
                }
            }
        };
        if readable.first().copied().unwrap_or(false) {
            while wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
        }
        if let Some(m) = &mut monitor {
            m.drain();
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Send {
                    socket,
                    frames,
                    deadline,
                }) => pending.push_back(Pending {
                    socket,
                    frames,
                    deadline,
                }),
                Ok(other) => {
                    if let (Command::Disconnect { endpoint, .. }, Some(m)) = (&other, &mut monitor)
                    {
                        m.forget(endpoint);
                    }
                    apply(sockets, other)
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        flush(sockets, &mut pending);
        for (i, socket) in sockets.iter().enumerate() {
            if !readable.get(i + first_socket).copied().unwrap_or(false) {
                continue;
            }
            for _ in 0..READ_BATCH {
                match socket.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => on_message(i, frames),
                    Err(_) => break,
                }
            }
        }
        if stopping {
            // Whatever the sockets accept now leaves within the linger period.
            flush(sockets, &mut pending);
            return;
        }
    }
}

fn apply(sockets: &[zmq::Socket], command: Command) {
    let result = match &command {
        Command::Connect {
            socket,
            endpoint,
            server_key,
        } => sockets.get(*socket).map(|s| match server_key {
            Some(key) => s
                .set_curve_serverkey(&key.0)
                .and_then(|()| s.connect(endpoint)),
            None => s.connect(endpoint),
        }),
        Command::Disconnect { socket, endpoint } => {
            sockets.get(*socket).map(|s| s.disconnect(endpoint))
        }
        Command::Subscribe { socket, prefix } => {
            sockets.get(*socket).map(|s| s.set_subscribe(prefix))
        }
        Command::Send { .. } => None,
    };
    if let Some(Err(e)) = result {
        tracing::warn!(?command, error = %e, "rpc socket command failed");
    }
}

/// Sends queued messages in order; a socket that cannot take one keeps the
/// rest of its queue waiting (per-socket order is kept).
fn flush(sockets: &[zmq::Socket], pending: &mut VecDeque<Pending>) {
    let now = Instant::now();
    let mut blocked = vec![false; sockets.len()];
    let mut keep = VecDeque::with_capacity(pending.len());
    while let Some(p) = pending.pop_front() {
        if p.deadline <= now {
            tracing::debug!(socket = p.socket, "rpc send expired before a proxy took it");
            continue;
        }
        let Some(socket) = sockets.get(p.socket) else {
            continue;
        };
        if blocked[p.socket] {
            keep.push_back(p);
            continue;
        }
        match socket.send_multipart(p.frames.iter(), zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => {
                blocked[p.socket] = true;
                keep.push_back(p);
            }
            Err(e) => tracing::warn!(error = %e, "rpc send failed"),
        }
    }
    *pending = keep;
}
