//! bangerd library (see docs/ARCHITECTURE.md).
