//! One accepted peer: its socket, its receive buffer, where decoding stands,
//! its handshake state and its output.
//!
//! The receive buffer holds bytes from `consumed` to `filled`; decoding
//! reads from `decoded`, and the message in progress starts at `msg_start`
//! (bytes before it are done with). Bytes are kept from `msg_start` on until
//! the message is complete and forwarded, because forwarding writes (or
//! copies) the payload straight from this buffer. A message that waits for
//! room at its receiver is decoded again from `msg_start` once there is.

use std::io::{self, Read};
use std::time::Instant;

use mio::net::TcpStream;
use zmtp::{Assembler, Limits};

use super::handshake::Handshake;
use super::outbox::Outbox;

/// Bytes asked of the socket per read (and the initial buffer size).
pub const READ_CHUNK: usize = 64 * 1024;

/// Which of the proxy's ROUTERs a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The frontend (clients; everyone in single-router mode).
    Frontend,
    /// The backend (servers).
    Backend,
}

impl Side {
    /// Dense index for per-side arrays.
    pub fn index(self) -> usize {
        match self {
            Side::Frontend => 0,
            Side::Backend => 1,
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Greeting and READY not done yet.
    Handshaking(Handshake),
    /// Holds its identity: messages are read and routed to it.
    Active,
    /// Its identity is held by another connection (libzmq's default for
    /// duplicates): not read until that one leaves.
    Parked,
}

/// A message that found its receiver's output full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The receiver's identity.
    pub receiver: Vec<u8>,
    /// When the message was first refused.
    pub since: Instant,
}

/// One peer connection.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub stream: TcpStream,
    /// The ROUTER it came in on.
    pub side: Side,
    /// Handshake state.
    pub phase: Phase,
    /// Routing identity, once the handshake is done.
    pub identity: Vec<u8>,
    /// Receive buffer; `buf[consumed..filled]` is unprocessed or kept.
    pub buf: Vec<u8>,
    /// Start of the message in progress (or of undecoded bytes).
    pub msg_start: usize,
    /// Next byte to decode.
    pub decoded: usize,
    /// End of the received bytes.
    pub filled: usize,
    /// Frames of the message in progress.
    pub assembler: Assembler,
    /// Bytes for the peer.
    pub outbox: Outbox,
    /// The socket may have more to read (mio is edge-triggered: set on a
    /// readable event, cleared when a read would block).
    pub readable: bool,
    /// The peer closed its side or the socket failed: close once the
    /// buffered bytes are handled.
    pub eof: bool,
    /// Set when the connection must be closed at the end of the turn.
    pub closing: bool,
    /// Queued for a flush at the end of the turn.
    pub dirty: bool,
    /// The message at `msg_start` waits for room at its receiver.
    pub blocked: Option<Blocked>,
}

impl Connection {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, side: Side, limits: Limits) -> Connection {
        Connection {
            stream,
            side,
            phase: Phase::Handshaking(Handshake::Greeting),
            identity: Vec::new(),
            buf: Vec::new(),
            msg_start: 0,
            decoded: 0,
            filled: 0,
            assembler: Assembler::new(limits),
            outbox: Outbox::default(),
            readable: true,
            eof: false,
            closing: false,
            dirty: false,
            blocked: None,
        }
    }

    /// Reads once into the buffer, making room first (dropping handled bytes,
    /// growing when a frame needs more). `need`: bytes the frame being
    /// decoded needs from `msg_start` on, if known. Returns the bytes read;
    /// 0 means nothing now (would block) or end of stream (`eof` set).
    pub fn read_some(&mut self, need: usize) -> io::Result<usize> {
        self.make_room(need);
        loop {
            match self.stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    self.readable = false;
                    return Ok(0);
                }
                Ok(n) => {
                    self.filled += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.eof = true;
                    self.readable = false;
                    return Err(e);
                }
            }
        }
    }

    /// Makes room to read into: at least a quarter chunk, and whatever the
    /// frame being decoded still lacks (`need`: bytes it takes from
    /// `msg_start` on, 0 if unknown). Moves the kept bytes to the front
    /// before growing, and lets a buffer grown by a large message go once
    /// nothing is kept.
    fn make_room(&mut self, need: usize) {
        let kept = self.filled - self.msg_start;
        let missing = need.saturating_sub(kept);
        if self.buf.len() - self.filled >= missing.max(READ_CHUNK / 4) {
            return;
        }
        if self.msg_start > 0 {
            self.buf.copy_within(self.msg_start..self.filled, 0);
            let by = self.msg_start;
            self.assembler.shift(by);
            self.decoded -= by;
            self.filled -= by;
            self.msg_start = 0;
        }
        let want = kept + missing.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want.next_power_of_two(), 0);
        } else if kept == 0 && self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; READ_CHUNK];
        }
    }

    /// Undecoded bytes.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.decoded..self.filled]
    }
}
