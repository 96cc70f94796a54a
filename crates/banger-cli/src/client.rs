//! HTTP client for the bangerd API over its Unix socket, and daemon auto-start.
