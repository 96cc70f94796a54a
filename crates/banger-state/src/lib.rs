//! banger-state (see docs/ARCHITECTURE.md).
