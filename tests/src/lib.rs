//! End-to-end test support for snapgate.
