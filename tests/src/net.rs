//! Loopback ports for the control plane's listeners.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// A currently free TCP port on 127.0.0.1.
///
/// The port is released before the caller binds it, so another process could
/// take it in between; the window is short and a collision makes the
/// component fail to start with a clear log line.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
