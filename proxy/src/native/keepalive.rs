//! TCP keepalive on accepted connections, with libzmq's option semantics
//! (`ZMQ_TCP_KEEPALIVE*`: -1 leaves the OS default, 0 turns it off, 1 on;
//! idle, interval and count in seconds/probes, -1 for the OS default), so
//! the proxy's `--tcp-keepalive*` flags mean the same with either engine.

use std::io;
use std::os::fd::AsRawFd;

/// Keepalive settings of the native engine's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// -1 OS default, 0 off, 1 on.
    pub mode: i32,
    /// Idle seconds before the first probe (TCP_KEEPIDLE), -1 OS default.
    pub idle: i32,
    /// Seconds between probes (TCP_KEEPINTVL), -1 OS default.
    pub interval: i32,
    /// Probes before the connection is dropped (TCP_KEEPCNT), -1 OS default.
    pub count: i32,
}

impl Default for Keepalive {
    /// Everything left to the OS, as libzmq's defaults.
    fn default() -> Keepalive {
        Keepalive {
            mode: -1,
            idle: -1,
            interval: -1,
            count: -1,
        }
    }
}

impl Keepalive {
    /// Applies the settings to `socket`. As in libzmq, the tuning options
    /// are only set when keepalive is turned on.
    pub fn apply(&self, socket: &impl AsRawFd) -> io::Result<()> {
        if self.mode < 0 {
            return Ok(());
        }
        let fd = socket.as_raw_fd();
        set(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            i32::from(self.mode > 0),
        )?;
        if self.mode == 0 {
            return Ok(());
        }
        for (option, value) in [
            (libc::TCP_KEEPIDLE, self.idle),
            (libc::TCP_KEEPINTVL, self.interval),
            (libc::TCP_KEEPCNT, self.count),
        ] {
            if value >= 0 {
                set(fd, libc::IPPROTO_TCP, option, value)?;
            }
        }
        Ok(())
    }
}

/// One integer socket option.
fn set(fd: i32, level: i32, option: i32, value: i32) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed from its owner for the call;
    // the pointer and length describe `value`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(socket: &impl AsRawFd, level: i32, option: i32) -> i32 {
        let mut value = 0i32;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: as in `set`, with room for one i32.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                level,
                option,
                (&mut value as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[test]
    fn settings_reach_the_socket_as_libzmq_would_set_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        Keepalive {
            mode: 1,
            idle: 30,
            interval: 5,
            count: 3,
        }
        .apply(&socket)
        .expect("apply");
        assert_eq!(get(&socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get(&socket, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
        assert_eq!(get(&socket, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
        assert_eq!(get(&socket, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        let off = Keepalive {
            mode: 0,
            ..Keepalive::default()
        };
        off.apply(&socket).expect("apply");
        assert_eq!(get(&socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        // The OS default is left alone.
        Keepalive::default().apply(&socket).expect("apply");
        assert_eq!(get(&socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    }
}
