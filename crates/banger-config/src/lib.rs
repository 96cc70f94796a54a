//! banger-config (see docs/ARCHITECTURE.md).
