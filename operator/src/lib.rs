//! zmq-proxy-operator: the control plane.
