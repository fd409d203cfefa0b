//! Pod IPs: each pod gets its own loopback address (127.0.0.2, .3, ...).
//!
//! Test processes run concurrently (nextest runs each test in its own
//! process), and two pods on one address would fight over ports, so an
//! address is leased with an exclusive `flock` on
//! /tmp/zmq-proxy-harness/ip-locks/<ip>; the kernel drops the lock when the
//! lease is dropped or the process dies. Within a process, addresses are
//! handed out round-robin so a just-released one is not reused at once.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Number of usable addresses: 127.0.x.y, y in 1..=254, minus 127.0.0.1.
const POOL_SIZE: u32 = 256 * 254 - 1;

/// The `n`-th pod address (wrapping): 0 -> 127.0.0.2, 252 -> 127.0.0.254,
/// 253 -> 127.0.1.1.
pub fn nth_ip(n: u32) -> Ipv4Addr {
    let k = n % POOL_SIZE + 1; // skip 127.0.0.1 (the host)
    Ipv4Addr::new(127, 0, (k / 254) as u8, (k % 254 + 1) as u8)
}

/// A leased address; the lease ends when this is dropped.
#[derive(Debug)]
pub struct IpLease {
    ip: Ipv4Addr,
    _lock: File,
}

impl IpLease {
    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// Leases the next free address.
pub fn lease() -> std::io::Result<IpLease> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)?;
    for _ in 0..POOL_SIZE {
        let ip = nth_ip(NEXT.fetch_add(1, Ordering::Relaxed));
        let file = File::create(dir.join(ip.to_string()))?;
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            return Ok(IpLease { ip, _lock: file });
        }
    }
    Err(std::io::Error::other("no free loopback pod address"))
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir()
        .join("zmq-proxy-harness")
        .join("ip-locks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_host_and_network_values() {
        assert_eq!(nth_ip(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(nth_ip(252), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(nth_ip(253), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(nth_ip(POOL_SIZE), Ipv4Addr::new(127, 0, 0, 2));
        for n in 0..POOL_SIZE {
            let ip = nth_ip(n).octets();
            assert!(ip[3] != 0 && ip[3] != 255 && ip != [127, 0, 0, 1]);
        }
    }

    #[test]
    fn a_leased_address_is_not_leased_twice() {
        let a = lease().unwrap();
        let b = lease().unwrap();
        assert_ne!(a.ip(), b.ip());
    }
}
