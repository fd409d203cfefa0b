//! zmq-proxy-operator: the control plane. It reconciles `ZmqProxy` resources
//! ([`crd`]) through a pipeline ([`reconcile`]): [`validate`] -> [`build`]
//! (pure, the desired children) -> [`apply`] (server-side apply, orphan
//! cleanup) -> [`report`] (status computed by [`status`]).
//!
//! Around the pipeline: [`context`] (state the reconciles share),
//! [`controller`] (what triggers a reconcile), [`manager`] (leadership and
//! the controllers' lifetime, with [`leader`]), [`discovery`] (which optional
//! APIs are served), [`kinds`] (API kinds handled dynamically), [`events`],
//! [`metrics`], [`backoff`] and [`lock`]. [`curve`] and [`curve_secret`]
//! find the proxies' CURVE key (pure and I/O halves) before the build. [`rbac`] holds the operator's own
//! permissions, for the chart; [`resources`] re-exports former paths.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod apply;
pub mod backoff;
pub mod build;
pub mod check;
pub mod context;
pub mod controller;
pub mod crd;
pub mod curve;
pub mod curve_secret;
pub mod discovery;
pub mod events;
pub mod kinds;
pub mod leader;
pub mod lock;
pub mod manager;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod report;
pub mod resources;
pub mod status;
pub mod validate;
