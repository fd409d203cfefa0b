//! The `zmq-proxy` binary.
fn main() {}
