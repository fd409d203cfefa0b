//! Support for the end-to-end scenario suite (tests/e2e.rs): the installed
//! system and how it is driven ([`cluster`]), the RPC traffic
//! ([`load`]), bad input ([`bad_input`]), the figures and invariants
//! ([`report`]) and the duplicate counter and logging ([`counting`]).

pub mod bad_input;
pub mod cluster;
pub mod counting;
pub mod load;
pub mod report;
