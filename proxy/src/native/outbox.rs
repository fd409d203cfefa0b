//! A connection's output: bytes waiting for the socket, bounded in bytes.
//!
//! Small messages are copied in (a copy of a few dozen bytes is far cheaper
//! than a system call), so that everything routed to one peer during one
//! turn of the event loop leaves in one `write`. A large message bound for
//! a peer with nothing queued skips the copy: it is written straight from
//! the sender's receive buffer with one vectored write of its headers and
//! bodies ([`write_parts`]), and only what the socket did not take is copied
//! here. The bound is what back-pressure is measured against: a queue at or
//! over it counts as full (the high-water mark, in bytes).
//!
//! A publisher's subscribers get [`SharedOutbox`]es instead: a published
//! message is encoded once into a reference-counted buffer, and every
//! subscriber that wants it queues a reference, not a copy; the queue is
//! written with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Most slices handed to one `writev` (Linux's IOV_MAX).
const MAX_IOV: usize = 1024;

/// Bytes waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    head: usize,
}

impl Outbox {
    /// Bytes waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Whether nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Lets `write` append to the queue in place (CURVE boxes are sealed
    /// straight into it rather than into a buffer copied after).
    #[inline]
    pub fn append_with<R>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        write(&mut self.buf)
    }

    /// Appends what follows the first `skip` bytes of `parts` taken as one
    /// byte string: the rest of a vectored write the socket took in part.
    pub fn push_rest(&mut self, parts: &[&[u8]], mut skip: usize) {
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            self.buf.extend_from_slice(&part[skip..]);
            skip = 0;
        }
    }

    /// Writes as much as `out` takes. `Ok(true)` when everything went,
    /// `Ok(false)` when the socket is full (it would block).
    pub fn flush(&mut self, out: &mut impl Write) -> io::Result<bool> {
        while self.head < self.buf.len() {
            match out.write(&self.buf[self.head..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.head = 0;
        // A burst can leave a large allocation behind; give it back once
        // the queue is empty, so idle peers cost little memory.
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
        Ok(true)
    }

    /// Drops the written prefix once it is most of the buffer, so the
    /// buffer does not grow with the total ever queued.
    fn compact(&mut self) {
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }
}

/// Slices per vectored write of a [`SharedOutbox`]: kept on the stack, and
/// plenty to fill a socket buffer with small messages.
const SHARED_IOV: usize = 64;

/// An encoded message or command, shared by the outputs it is queued on
/// (an `Arc<Vec>` rather than an `Arc<[u8]>`: made from the encoding
/// buffer without copying it).
pub type Chunk = Arc<Vec<u8>>;

/// Bytes waiting for one connection as a queue of shared, already-encoded
/// chunks (whole messages or commands, so anything queued between two of
/// them lands on a message boundary).
#[derive(Debug, Default)]
pub struct SharedOutbox {
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes waiting in all.
    len: usize,
}

impl SharedOutbox {
    /// Bytes waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a chunk (a reference to it: no copy).
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.queue.push_back(chunk);
    }

    /// Writes as much as `out` takes. `Ok(true)` when everything went,
    /// `Ok(false)` when the socket is full (it would block).
    pub fn flush(&mut self, out: &mut impl Write) -> io::Result<bool> {
        while !self.queue.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); SHARED_IOV];
                let mut n = 0;
                for (i, chunk) in self.queue.iter().take(SHARED_IOV).enumerate() {
                    let skip = if i == 0 { self.head } else { 0 };
                    slices[i] = IoSlice::new(&chunk[skip..]);
                    n += 1;
                }
                out.write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A burst can leave a large ring behind; idle peers cost little.
        if self.queue.capacity() > 1024 {
            self.queue = VecDeque::new();
        }
        Ok(true)
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.queue.front() else {
                return;
            };
            let left = front.len() - self.head;
            if n >= left {
                n -= left;
                self.queue.pop_front();
                self.head = 0;
            } else {
                self.head += n;
                n = 0;
            }
        }
    }
}

/// Capacity an empty outbox keeps; more is released.
const SHRINK_ABOVE: usize = 256 * 1024;

/// Writes `parts` as one byte string with as few vectored writes as the
/// socket allows; returns how many bytes it took (all of them, or fewer
/// when it would block).
pub fn write_parts(out: &mut impl Write, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len().min(MAX_IOV));
    while written < total {
        slices.clear();
        let mut skip = written;
        for part in parts {
            if slices.len() == MAX_IOV {
                break;
            }
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        match out.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes, then would block.
    struct Tight {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_partial_vectored_write_leaves_exactly_the_rest_queued() {
        let parts: [&[u8]; 4] = [b"\x01\x02", b"ab", b"", b"cdefg"];
        for room in 0..=9 {
            let mut sock = Tight {
                got: Vec::new(),
                room,
            };
            let n = write_parts(&mut sock, &parts).expect("write");
            assert_eq!(n, room.min(9));
            let mut outbox = Outbox::default();
            outbox.push_rest(&parts, n);
            sock.room = usize::MAX;
            assert!(outbox.flush(&mut sock).expect("flush"));
            assert_eq!(sock.got, b"\x01\x02abcdefg", "room {room}");
        }
    }

    #[test]
    fn a_shared_outbox_writes_its_chunks_in_order_across_partial_writes() {
        let a: Chunk = Arc::new(b"hello ".to_vec());
        let b: Chunk = Arc::new(b"world".to_vec());
        for room in 0..=11 {
            let mut outbox = SharedOutbox::default();
            outbox.push(Arc::clone(&a));
            outbox.push(Arc::new(Vec::new()));
            outbox.push(Arc::clone(&b));
            assert_eq!(outbox.len(), 11);
            let mut sock = Tight {
                got: Vec::new(),
                room,
            };
            let done = outbox.flush(&mut sock).expect("flush");
            assert_eq!(done, room >= 11, "room {room}");
            assert_eq!(outbox.len(), 11 - room.min(11));
            outbox.push(Arc::new(b"!".to_vec()));
            sock.room = usize::MAX;
            assert!(outbox.flush(&mut sock).expect("flush"));
            assert_eq!(sock.got, b"hello world!", "room {room}");
            assert!(outbox.is_empty());
        }
        // Shared, not copied: the chunks are still referenced only here.
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn flush_stops_when_the_socket_is_full_and_resumes_in_order() {
        let mut outbox = Outbox::default();
        outbox.push(b"hello ");
        outbox.push(b"world");
        let mut sock = Tight {
            got: Vec::new(),
            room: 4,
        };
        assert!(!outbox.flush(&mut sock).expect("flush"));
        assert_eq!(outbox.len(), 7);
        outbox.push(b"!");
        sock.room = 100;
        assert!(outbox.flush(&mut sock).expect("flush"));
        assert_eq!(sock.got, b"hello world!");
        assert!(outbox.is_empty());
    }
}
