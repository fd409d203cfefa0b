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
use thiserror::Error;
use zmtp::curve::{MessageError, Opened, Session};
use zmtp::{Assembler, DecodeError, Decoder, Flags, FrameHeader, Limits};

use super::curve::CurveConn;

use super::handshake::Handshake;
use super::heartbeat::Liveness;
use super::keepalive::Keepalive;
use super::outbox::Outbox;

/// Most bytes asked of the socket per read, for a busy connection.
pub const READ_CHUNK: usize = 64 * 1024;

/// Bytes asked per read at first: an idle or quiet peer costs this much
/// buffer (libzmq's is 8 KiB too); a read that fills it doubles it, up to
/// [`READ_CHUNK`].
pub const FIRST_CHUNK: usize = 8 * 1024;

/// The socket options every native connection gets, as libzmq sets them:
/// TCP_NODELAY (small RPC messages and notifications must not wait for
/// Nagle) and the configured keepalive. A failure is logged and not
/// fatal: the connection works without them.
pub fn tune(stream: &TcpStream, keepalive: &Keepalive) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Err(error) = keepalive.apply(stream) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
}

/// The index for a new entry of a connection table: a slot left `free`
/// by a closed connection, else a new one at the end (so indexes, which
/// are the connections' poll tokens, stay small and dense).
pub fn free_slot<T>(table: &mut Vec<Option<T>>, free: &mut Vec<usize>) -> usize {
    match free.pop() {
        Some(idx) => idx,
        None => {
            table.push(None);
            table.len() - 1
        }
    }
}

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

/// What the buffered bytes hold next, past the handshake
/// ([`Connection::next_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A complete frame, now decoded: its body's range is in `buf`.
    Frame(FrameHeader),
    /// The next frame is not all here: it needs this many bytes from
    /// `msg_start` on (0: its header is not complete either). The value
    /// to pass to [`Connection::read_some`].
    Need(usize),
    /// The stream is not ZMTP, or a CURVE box does not open: the
    /// connection must close (it cannot be resynchronised).
    Bad(FrameError),
}

/// Why the next frame cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Not a ZMTP frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A CURVE MESSAGE that does not open (altered, replayed, or not a
    /// MESSAGE at all).
    #[error(transparent)]
    Curve(#[from] MessageError),
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
    /// Bytes to ask per read: grows while reads come back full.
    chunk: usize,
    /// The message at `msg_start` waits for room at its receiver.
    pub blocked: Option<Blocked>,
    /// When it was accepted (for the handshake deadline).
    pub accepted: Instant,
    /// When it was last heard from, and an unanswered PING.
    pub liveness: Liveness,
    /// The peer speaks ZMTP 3.1, so it answers PING (3.0 has no PING).
    pub answers_ping: bool,
    /// CURVE handshake or session; `None` under NULL.
    pub curve: Option<Box<CurveConn>>,
    /// Under CURVE, frames before this buffer offset are already opened
    /// in place: a message decoded again (after waiting for room) is not
    /// opened twice.
    opened: usize,
}

impl Connection {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, side: Side, limits: Limits) -> Connection {
        let now = Instant::now();
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
            chunk: FIRST_CHUNK,
            blocked: None,
            accepted: now,
            liveness: Liveness::new(now),
            answers_ping: false,
            curve: None,
            opened: 0,
        }
    }

    /// The CURVE session, once the handshake is done (`None` under NULL).
    pub fn session(&mut self) -> Option<&mut Session> {
        match self.curve.as_deref_mut() {
            Some(CurveConn::Established(established)) => Some(&mut established.session),
            _ => None,
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
                    self.liveness.heard(Instant::now());
                    if self.filled + n == self.buf.len() {
                        // More was waiting, probably: read more at once.
                        self.chunk = (self.chunk * 2).min(READ_CHUNK);
                    }
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
        if self.buf.len() - self.filled >= missing.max(self.chunk / 4) {
            return;
        }
        if self.msg_start > 0 {
            self.buf.copy_within(self.msg_start..self.filled, 0);
            let by = self.msg_start;
            self.assembler.shift(by);
            self.decoded -= by;
            self.filled -= by;
            self.opened = self.opened.saturating_sub(by);
            self.msg_start = 0;
        }
        let want = kept + missing.max(self.chunk);
        if self.buf.len() < want {
            self.buf.resize(want.next_power_of_two(), 0);
        } else if kept == 0 && self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; self.chunk];
        }
    }

    /// Undecoded bytes.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.decoded..self.filled]
    }

    /// The handshake took `consumed` more bytes: they are done with.
    pub fn handshake_consumed(&mut self, consumed: usize) {
        self.decoded += consumed;
        self.msg_start = self.decoded;
    }

    /// Decodes the next frame if it is all in the buffer, moving `decoded`
    /// past it. The one decoding step of every native socket: the header
    /// first, so that a frame still arriving says how much to read (and
    /// the buffer grows once, to the size it needs).
    pub fn next_frame(&mut self, decoder: &Decoder) -> Next {
        let header = match decoder.header(self.unread()) {
            Ok(Some(header)) => header,
            Ok(None) => return Next::Need(0),
            Err(error) => return Next::Bad(error.into()),
        };
        if self.filled - self.decoded < header.frame_len() {
            return Next::Need(self.decoded - self.msg_start + header.frame_len());
        }
        match decoder.decode(self.unread()) {
            Ok(Some((frame, used))) => {
                let frame = frame.offset(self.decoded);
                self.decoded += used;
                match self.open(frame) {
                    Ok(frame) => Next::Frame(frame),
                    Err(error) => Next::Bad(error.into()),
                }
            }
            Ok(None) => Next::Need(0),
            Err(error) => Next::Bad(error.into()),
        }
    }

    /// Under CURVE, opens `frame` (a MESSAGE) in place and returns the
    /// frame it carries, its payload now plaintext in the buffer, so the
    /// same assembly and forwarding code reads it as a NULL frame. Under
    /// NULL, `frame` itself.
    fn open(&mut self, frame: FrameHeader) -> Result<FrameHeader, MessageError> {
        let Some(CurveConn::Established(established)) = self.curve.as_deref_mut() else {
            return Ok(frame);
        };
        let start = frame.body.start;
        let body = &mut self.buf[frame.body.clone()];
        let opened = if frame.body.end <= self.opened {
            Opened::reread(body).ok_or(MessageError::TooShort { len: body.len() })?
        } else {
            let opened = established.session.open(body)?;
            self.opened = frame.body.end;
            opened
        };
        Ok(FrameHeader {
            flags: if opened.command {
                Flags::COMMAND
            } else {
                Flags::message(opened.more)
            },
            body: start + opened.payload.start..start + opened.payload.end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// A connection over loopback and the peer's end.
    fn pair() -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        let limits = Limits {
            max_frames: 16,
            max_bytes: 1 << 20,
        };
        let conn = Connection::new(TcpStream::from_std(accepted), Side::Frontend, limits);
        (conn, peer)
    }

    /// Reads until `len` bytes are buffered from `msg_start` on.
    fn read_until(conn: &mut Connection, len: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.filled - conn.msg_start < len {
            assert!(Instant::now() < deadline, "bytes never arrived");
            conn.read_some(len).expect("read");
            assert!(!conn.eof, "peer closed early");
        }
    }

    #[test]
    fn a_curve_message_decoded_again_is_not_opened_twice() {
        use crate::curve::PublicKey;
        use crate::native::curve::{session_pair, Established};
        let (server, mut client) = session_pair();
        let (mut conn, mut peer) = pair();
        conn.curve = Some(Box::new(CurveConn::Established(Established {
            session: server,
            key: PublicKey([0; 32]),
        })));
        let mut wire = Vec::new();
        client.seal_frame(true, b"first", &mut wire).expect("seal");
        client
            .seal_frame(false, b"second", &mut wire)
            .expect("seal");
        peer.write_all(&wire).expect("write");
        read_until(&mut conn, wire.len());
        let decoder = Decoder::new(1 << 20);
        let read = |conn: &mut Connection| -> Vec<(bool, Vec<u8>)> {
            (0..2)
                .map(|_| match conn.next_frame(&decoder) {
                    Next::Frame(frame) => (frame.more(), conn.buf[frame.body].to_vec()),
                    other => panic!("no frame: {other:?}"),
                })
                .collect()
        };
        let expected = vec![(true, b"first".to_vec()), (false, b"second".to_vec())];
        assert_eq!(read(&mut conn), expected);
        // What the router does when the receiver is full: decode again
        // from the message start later.
        conn.decoded = conn.msg_start;
        assert_eq!(read(&mut conn), expected);
        // A new box after them opens as usual.
        let mut wire = Vec::new();
        client.seal_frame(false, b"third", &mut wire).expect("seal");
        peer.write_all(&wire).expect("write");
        conn.msg_start = conn.decoded;
        read_until(&mut conn, wire.len());
        match conn.next_frame(&decoder) {
            Next::Frame(frame) => assert_eq!(&conn.buf[frame.body], b"third"),
            other => panic!("no frame: {other:?}"),
        }
    }

    #[test]
    fn a_large_message_in_progress_survives_growth_and_compaction() {
        let (mut conn, mut peer) = pair();
        let first: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let (first, big) = (first.clone(), big.clone());
            move || {
                peer.write_all(&first).expect("write");
                peer.write_all(&big).expect("write");
                peer
            }
        });
        read_until(&mut conn, first.len());
        assert_eq!(
            conn.buf.len(),
            FIRST_CHUNK,
            "a quiet peer costs a small buffer"
        );
        // The first 1000 bytes are handled; the rest is one message in progress.
        conn.msg_start = first.len();
        conn.decoded = first.len();
        read_until(&mut conn, big.len());
        assert_eq!(
            &conn.buf[conn.msg_start..conn.msg_start + big.len()],
            &big[..]
        );
        assert_eq!(conn.msg_start, 0, "handled bytes were dropped to make room");
        let _peer = writer.join().expect("writer");
    }
}
