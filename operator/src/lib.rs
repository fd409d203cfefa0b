//! zmq-proxy-operator: the control plane. It reconciles `ZmqProxy` resources
//! ([`crd`]) into the objects built by [`resources`], applied and observed by
//! [`reconcile`].

pub mod crd;
