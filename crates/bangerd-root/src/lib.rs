//! bangerd-root library (see docs/ARCHITECTURE.md).
