//! Host-local addresses of their own for pods and control planes.
//!
//! Test processes run concurrently (nextest runs each test in its own
//! process). Two listeners on one address would fight over ports, and a port
//! checked free and bound later can be taken in between, so every pod and
//! every control plane gets an address nobody else uses: leased with an
//! exclusive `flock` on /tmp/zmq-proxy-harness/ip-locks/<ip>; the kernel
//! drops the lock when the lease is dropped or the process dies. Within a
//! process, addresses are handed out round-robin so a just-released one is
//! not reused at once.
//!
//! Not loopback addresses: the API server rejects 127.0.0.0/8 in
//! EndpointSlices, both in the proxies' own (they register their pod IP)
//! and in the `kubernetes` Service's (the API server refuses to start with a
//! loopback advertise address). So the addresses come from [`LOCAL_CIDR`],
//! which `tests/install.sh` routes to `lo` as a local range (`ip route
//! replace local 10.252.0.0/15 dev lo`): any address in it can be bound, and
//! no packet for it leaves the host. [`lease_in`] checks the route before
//! handing out the first address, so a missing route is a clear error and
//! never traffic to a real 10.252.x.y elsewhere.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The host-local range both pools come from, routed to `lo` by
/// tests/install.sh.
pub const LOCAL_CIDR: &str = "10.252.0.0/15";

/// A range of host-local addresses, <first>.<second>.x.y.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Addresses of test proxies that play pods: 10.253.0.1 onwards.
    Pods,
    /// Control planes (etcd and the API server listen there): 10.252.0.1
    /// onwards.
    ControlPlanes,
}

impl Pool {
    fn prefix(self) -> [u8; 2] {
        match self {
            Pool::Pods => [10, 253],
            Pool::ControlPlanes => [10, 252],
        }
    }

    fn next(self) -> &'static AtomicU32 {
        static PODS: AtomicU32 = AtomicU32::new(0);
        static PLANES: AtomicU32 = AtomicU32::new(0);
        match self {
            Pool::Pods => &PODS,
            Pool::ControlPlanes => &PLANES,
        }
    }

    /// Number of usable addresses: x in 0..=255, y in 1..=254.
    pub fn size(self) -> u32 {
        256 * 254
    }

    /// The `n`-th address of the pool (wrapping): for pods 0 -> 10.253.0.1,
    /// 253 -> 10.253.0.254, 254 -> 10.253.1.1.
    pub fn nth(self, n: u32) -> Ipv4Addr {
        let k = n % self.size();
        let [a, b] = self.prefix();
        Ipv4Addr::new(a, b, (k / 254) as u8, (k % 254 + 1) as u8)
    }
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

/// Leases the next free pod address.
pub fn lease() -> std::io::Result<IpLease> {
    lease_in(Pool::Pods)
}

/// Leases the next free address of `pool`.
pub fn lease_in(pool: Pool) -> std::io::Result<IpLease> {
    check_route()?;
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)?;
    for _ in 0..pool.size() {
        let ip = pool.nth(pool.next().fetch_add(1, Ordering::Relaxed));
        let file = File::create(dir.join(ip.to_string()))?;
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            return Ok(IpLease { ip, _lock: file });
        }
    }
    Err(std::io::Error::other(format!(
        "no free loopback address in {pool:?}"
    )))
}

/// Fails unless [`LOCAL_CIDR`] is local to this host: binding a UDP socket
/// to an address works only when the kernel's local table has it.
fn check_route() -> std::io::Result<()> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        for probe in [Pool::Pods.nth(0), Pool::ControlPlanes.nth(0)] {
            std::net::UdpSocket::bind((probe, 0)).map_err(|e| {
                format!(
                    "test addresses {LOCAL_CIDR} are not local to this host ({probe}: {e}); \
                     run `ip route replace local {LOCAL_CIDR} dev lo` as root (tests/install.sh does)"
                )
            })?;
        }
        Ok(())
    });
    result.clone().map_err(std::io::Error::other)
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
    fn pod_addresses_stay_in_the_range_and_skip_network_values() {
        let p = Pool::Pods;
        assert_eq!(p.nth(0), Ipv4Addr::new(10, 253, 0, 1));
        assert_eq!(p.nth(253), Ipv4Addr::new(10, 253, 0, 254));
        assert_eq!(p.nth(254), Ipv4Addr::new(10, 253, 1, 1));
        assert_eq!(p.nth(p.size()), Ipv4Addr::new(10, 253, 0, 1));
        for n in 0..p.size() {
            let ip = p.nth(n).octets();
            assert!(ip[..2] == [10, 253] && ip[3] != 0 && ip[3] != 255);
            // Never loopback: the API server refuses those in EndpointSlices.
            assert!(!p.nth(n).is_loopback());
        }
    }

    #[test]
    fn control_plane_addresses_are_apart_from_pods() {
        let p = Pool::ControlPlanes;
        assert_eq!(p.nth(0), Ipv4Addr::new(10, 252, 0, 1));
        for n in 0..p.size() {
            let ip = p.nth(n).octets();
            assert!(ip[..2] == [10, 252] && ip[3] != 0 && ip[3] != 255);
        }
    }

    #[test]
    fn leased_addresses_can_be_bound_and_reached() {
        for pool in [Pool::Pods, Pool::ControlPlanes] {
            let lease = lease_in(pool).unwrap();
            let listener = std::net::TcpListener::bind((lease.ip(), 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            std::net::TcpStream::connect(addr).unwrap();
        }
    }

    #[test]
    fn a_leased_address_is_not_leased_twice() {
        for pool in [Pool::Pods, Pool::ControlPlanes] {
            let a = lease_in(pool).unwrap();
            let b = lease_in(pool).unwrap();
            assert_ne!(a.ip(), b.ip());
        }
    }
}
