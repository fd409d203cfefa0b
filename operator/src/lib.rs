//! zmq-proxy-operator: the control plane. It reconciles `ZmqProxy` resources
//! ([`crd`]) into the children built by [`resources`], applied and observed by
//! [`reconcile`], with status from [`status`], API versions from
//! [`discovery`], leadership from [`leader`] and telemetry from [`metrics`].
//! [`rbac`] holds the operator's own permissions, for the chart.

pub mod crd;
pub mod discovery;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod resources;
pub mod status;
