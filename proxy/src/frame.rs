//! One frame of a multipart ZeroMQ message, for the forwarding hot path.
//!
//! The `zmq` crate's `Message` is consumed by `Socket::send`, even when
//! libzmq refuses it: a message held back at a full receiver would have to
//! be copied before every attempt. libzmq itself leaves a refused message
//! with its caller, so [`Frame`] wraps the raw `zmq_msg_t` and keeps that
//! contract: a send that fails leaves the frame as it was, and one that
//! succeeds leaves it empty, ready for the next receive. A loop can so keep
//! one set of frames for its whole life: no per-frame init, close or copy.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::Deref;

use zmq_sys::zmq_msg_t;

/// A libzmq message frame owned by Rust (closed on drop).
pub struct Frame {
    msg: zmq_msg_t,
}

// SAFETY: a zmq_msg_t is plain data plus, for large frames, a reference to
// content that libzmq counts atomically; libzmq lets a message be used from
// any one thread at a time, which `&mut` guarantees.
unsafe impl Send for Frame {}

/// A socket's raw libzmq handle, for the frame calls, lent by a borrow of
/// the `zmq::Socket` that owns it: the borrow checker keeps the socket open
/// while the handle is in use, so safe code cannot use a closed socket's
/// handle. Neither `Copy` nor `Send` (a raw pointer field), so it cannot
/// leave its borrow or its thread.
pub struct RawSocket<'s> {
    handle: *mut c_void,
    _socket: PhantomData<&'s zmq::Socket>,
}

impl<'s> RawSocket<'s> {
    /// The handle of `socket`, for as long as `socket` stays borrowed.
    pub fn of(socket: &'s mut zmq::Socket) -> RawSocket<'s> {
        RawSocket {
            handle: socket.as_mut_ptr(),
            _socket: PhantomData,
        }
    }
}

/// A `zmq::Socket` kept with its raw handle, so that a shared borrow can lend
/// the handle ([`HandledSocket::raw`]; the `zmq` crate gives it only to a
/// mutable borrow, and a single-router loop reads and writes one socket
/// through two shared borrows).
pub struct HandledSocket {
    /// Private and never replaced: `handle` is this socket's for its life.
    socket: zmq::Socket,
    handle: *mut c_void,
}

// SAFETY: `zmq::Socket` is `Send`; `handle` is that socket's own handle and
// moves with it, so both are used by whichever one thread owns the pair.
// Not `Sync` (the raw pointer): libzmq sockets are not thread-safe.
unsafe impl Send for HandledSocket {}

impl HandledSocket {
    /// Keeps `socket` with its handle.
    pub fn new(mut socket: zmq::Socket) -> HandledSocket {
        let handle = socket.as_mut_ptr();
        HandledSocket { socket, handle }
    }

    /// The socket.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The socket's handle, valid while `self` stays borrowed (the socket
    /// closes only when `self` is dropped).
    pub fn raw(&self) -> RawSocket<'_> {
        RawSocket {
            handle: self.handle,
            _socket: PhantomData,
        }
    }
}

fn last_error() -> zmq::Error {
    // SAFETY: reads the calling thread's errno.
    zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() })
}

impl Frame {
    /// An empty frame.
    pub fn new() -> Frame {
        let mut msg = zmq_msg_t { __: [0; 64] };
        // SAFETY: zmq_msg_init on fresh storage cannot fail.
        unsafe { zmq_sys::zmq_msg_init(&mut msg) };
        Frame { msg }
    }

    /// A frame holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Frame {
        let mut msg = zmq_msg_t { __: [0; 64] };
        // SAFETY: on success the message owns `data.len()` writable bytes;
        // on failure (out of memory) libzmq aborts, as for any allocation.
        unsafe {
            if zmq_sys::zmq_msg_init_size(&mut msg, data.len()) != 0 {
                std::alloc::handle_alloc_error(std::alloc::Layout::for_value(data));
            }
            let dst = zmq_sys::zmq_msg_data(&mut msg) as *mut u8;
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
        }
        Frame { msg }
    }

    /// The frame's length in bytes (cheaper than `len()` through `Deref`).
    #[inline]
    pub fn size(&self) -> usize {
        // SAFETY: the message is initialised; zmq_msg_size only reads it
        // (libzmq's signature takes a mutable pointer nonetheless).
        unsafe { zmq_sys::zmq_msg_size(&self.msg as *const zmq_msg_t as *mut zmq_msg_t) }
    }

    /// Whether more frames of the same message follow this received one.
    #[inline]
    pub fn more(&self) -> bool {
        // SAFETY: the message is initialised; zmq_msg_more only reads it.
        unsafe { zmq_sys::zmq_msg_more(&self.msg) != 0 }
    }

    /// A metadata property libzmq attached to this received frame (e.g.
    /// `User-Id`, set by the ZAP handler), if any.
    pub fn property(&self, name: &std::ffi::CStr) -> Option<&[u8]> {
        // SAFETY: the message is initialised and `name` NUL-terminated;
        // zmq_msg_gets returns NULL or a NUL-terminated string owned by the
        // message's metadata, which lives as long as the message content,
        // and changing or closing the message needs `&mut self`.
        unsafe {
            let value = zmq_sys::zmq_msg_gets(&self.msg, name.as_ptr());
            if value.is_null() {
                None
            } else {
                Some(std::ffi::CStr::from_ptr(value).to_bytes())
            }
        }
    }

    /// Receives the next frame from `socket` into this one and returns its
    /// size. libzmq releases the old content first, even when the receive
    /// then fails (the frame is left empty).
    #[inline]
    pub fn recv(&mut self, socket: &RawSocket<'_>, flags: i32) -> Result<usize, zmq::Error> {
        // SAFETY: the message is initialised and the socket handle is valid
        // (see RawSocket).
        let size = unsafe { zmq_sys::zmq_msg_recv(&mut self.msg, socket.handle, flags) };
        usize::try_from(size).map_err(|_| last_error())
    }

    /// Sends this frame on `socket`. On success the frame is left empty; on
    /// failure it is left exactly as it was, so it can be sent again.
    #[inline]
    pub fn send(&mut self, socket: &RawSocket<'_>, flags: i32) -> Result<(), zmq::Error> {
        // SAFETY: as for recv; zmq_msg_send takes the content only on success.
        if unsafe { zmq_sys::zmq_msg_send(&mut self.msg, socket.handle, flags) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }
}

impl Default for Frame {
    fn default() -> Frame {
        Frame::new()
    }
}

impl Deref for Frame {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // libzmq's accessors take a mutable pointer but only read.
        let msg = &self.msg as *const zmq_msg_t as *mut zmq_msg_t;
        // SAFETY: the message is initialised; data/size describe its bytes,
        // which live as long as the message is neither changed nor closed,
        // and both need `&mut self`.
        unsafe {
            let size = zmq_sys::zmq_msg_size(msg);
            if size == 0 {
                return &[];
            }
            std::slice::from_raw_parts(zmq_sys::zmq_msg_data(msg) as *const u8, size)
        }
    }
}

impl From<&[u8]> for Frame {
    fn from(data: &[u8]) -> Frame {
        Frame::from_slice(data)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({:?})", String::from_utf8_lossy(self))
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: the message is initialised and closed exactly once.
        unsafe { zmq_sys::zmq_msg_close(&mut self.msg) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ctx: &zmq::Context) -> (zmq::Socket, zmq::Socket) {
        let a = ctx.socket(zmq::PAIR).unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        let ep = format!("inproc://frame-{}", uuid::Uuid::new_v4());
        a.bind(&ep).unwrap();
        b.connect(&ep).unwrap();
        (a, b)
    }

    #[test]
    fn frames_carry_bytes_and_the_more_flag() {
        let ctx = zmq::Context::new();
        let (mut a, mut b) = pair(&ctx);
        let (ra, rb) = (RawSocket::of(&mut a), RawSocket::of(&mut b));
        let big = [7u8; 100];
        let mut first = Frame::from_slice(b"head");
        let mut second = Frame::from(&big[..]);
        first.send(&ra, zmq::SNDMORE).unwrap();
        second.send(&ra, 0).unwrap();
        assert!(
            first.is_empty() && second.is_empty(),
            "sent frames are left empty"
        );
        let mut r = Frame::new();
        assert_eq!(r.recv(&rb, 0), Ok(4));
        assert_eq!((&*r, r.more(), r.size()), (&b"head"[..], true, 4));
        // Receiving into a used frame replaces its content.
        assert_eq!(r.recv(&rb, 0), Ok(100));
        assert_eq!((&*r, r.more()), (&big[..], false));
        assert_eq!(r.recv(&rb, zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
        assert!(
            r.is_empty(),
            "libzmq releases the old content even when nothing came"
        );
    }

    #[test]
    fn a_refused_frame_is_left_whole_for_the_next_attempt() {
        let ctx = zmq::Context::new();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_router_mandatory(true).unwrap();
        let raw = RawSocket::of(&mut router);
        let id = vec![b'x'; 60];
        let mut frame = Frame::from_slice(&id);
        assert_eq!(
            frame.send(&raw, zmq::SNDMORE | zmq::DONTWAIT),
            Err(zmq::Error::EHOSTUNREACH)
        );
        assert_eq!(&*frame, &id[..]);
    }
}
