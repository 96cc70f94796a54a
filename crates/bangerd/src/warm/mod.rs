//! Warm start: VMs restored from a snapshot of a booted guest instead of
//! booting cold (docs/warm-start.md). [`store`] keeps the snapshots.

pub mod store;
