//! zmq-proxy: the data plane.
