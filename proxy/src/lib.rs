//! zmq-proxy: the data plane of oslo.messaging's ZeroMQ driver (protocol 1.0).
//!
//! Modules, one idea each:
//! - [`protocol`]: frame layout, validation, routing rewrite (pure);
//! - [`config`]: flags, environment and oslo config file (pure);
//! - [`frame`]: a message frame the hot path reuses, with a send that keeps refused frames;
//! - [`sockets`]: socket options, binding, whole-message receive and send;
//! - [`curve`]: CURVE keys, the authorized-keys file and the ZAP handler;
//! - [`router`]: the double- and single-router forwarding loops;
//! - [`hold`]: messages held for a receiver that is not connected yet (pure);
//! - [`native`]: the native ZMTP engine of the router proxy (`--engine native`);
//! - [`publisher`]: the central PUB path and the local-publisher relay;
//! - [`matchmaker`]: service discovery trait and its backends;
//! - [`telemetry`]: metrics, health endpoints, socket monitor;
//! - [`shutdown`]: the shared shutdown phase;
//! - [`backoff`], [`lock`], [`loop_thread`]: the retry schedule, poison-tolerant
//!   locks and loop threads every layer shares;
//! - [`app`]: the process wiring used by the `zmq-proxy` binary.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod app;
pub mod backoff;
pub mod config;
pub mod curve;
pub mod frame;
pub mod hold;
pub mod lock;
pub mod loop_thread;
pub mod matchmaker;
pub mod native;
pub mod protocol;
pub mod publisher;
pub mod router;
pub mod rpc;
pub mod shutdown;
pub mod sockets;
pub mod telemetry;
