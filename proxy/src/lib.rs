//! zmq-proxy: the data plane of oslo.messaging's ZeroMQ driver (protocol 1.0).
//!
//! Modules, one idea each:
//! - [`protocol`]: frame layout, validation, routing rewrite (pure);
//! - [`matchmaker`]: service discovery trait and its backends;
//! - [`shutdown`]: the shared shutdown phase.
#![warn(missing_docs)]

pub mod matchmaker;
pub mod protocol;
pub mod shutdown;
