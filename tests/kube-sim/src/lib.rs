//! Simulated Kubernetes API server (in progress).
