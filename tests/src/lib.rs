//! Test harness for a real Kubernetes control plane.
