//! VM records written straight into a state database, for tests that need
//! VMs the daemon lists (and, with an address, resolves) without booting.

#![allow(dead_code)]

use std::net::Ipv4Addr;

use banger_state::{Timestamp, VmRecord, VmState};

/// VM `name` in `state`, number `n` (its id and MAC derive from it, so
/// records with different `n` never collide), leasing `ip` when given.
pub fn record(name: &str, n: u8, ip: Option<Ipv4Addr>, state: VmState) -> VmRecord {
    let now = Timestamp::now();
    VmRecord {
        id: format!("{n:02x}{}", "d".repeat(30)),
        name: name.into(),
        image: "img".into(),
        kernel: "k".into(),
        state,
        vcpu: 1,
        memory_mib: 256,
        disk_bytes: 1 << 30,
        ip,
        mac: format!("02:00:00:00:02:{n:02x}"),
        tap: None,
        backend: None,
        vmm_pid: None,
        vmm_start_time: None,
        clone_strategy: None,
        created_at: now,
        updated_at: now,
        last_activity_at: None,
        spec: serde_json::json!({}),
    }
}
