//! banger-vsock-agent library (see docs/ARCHITECTURE.md).
