//! VM records.

use std::net::Ipv4Addr;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::sql::{self, IpCol, JsonCol, TextCol};
use crate::{CloneStrategy, StateDb, StateError, Timestamp, VmState, Vmm};

/// One VM as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Stable identifier (never reused); the key of leases and sessions.
    pub id: String,
    /// Unique, user-facing name (a DNS label).
    pub name: String,
    /// Image name the root disk was cloned from.
    pub image: String,
    /// Kernel name it boots.
    pub kernel: String,
    pub state: VmState,
    pub vcpu: u32,
    pub memory_mib: u64,
    /// Size of the work disk.
    pub disk_bytes: u64,
    /// The leased address; on insert, `Some` records that lease too. Read
    /// from `ip_leases`, so it is `None` once the lease is released.
    pub ip: Option<Ipv4Addr>,
    /// Stable MAC address, unique across VMs.
    pub mac: String,
    pub tap: Option<String>,
    pub backend: Option<Vmm>,
    pub vmm_pid: Option<u32>,
    /// With `vmm_pid`, the identity of the VMM process: its start time in
    /// clock ticks since boot (field 22 of `/proc/PID/stat`), so a reused
    /// pid is not mistaken for the VMM.
    pub vmm_start_time: Option<u64>,
    pub clone_strategy: Option<CloneStrategy>,
    pub created_at: Timestamp,
    /// Set by every update method.
    pub updated_at: Timestamp,
    /// Last SSH or session activity (for `auto_stop_stale_after`).
    pub last_activity_at: Option<Timestamp>,
    /// The resolved VM spec (with provenance) as JSON.
    pub spec: serde_json::Value,
}

/// A partial update of a VM: `None` leaves a field as it is; for nullable
/// fields `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmPatch {
    pub state: Option<VmState>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub tap: Option<Option<String>>,
    pub backend: Option<Option<Vmm>>,
    pub vmm_pid: Option<Option<u32>>,
    pub vmm_start_time: Option<Option<u64>>,
    pub clone_strategy: Option<Option<CloneStrategy>>,
    pub spec: Option<serde_json::Value>,
    /// Also drop the VM's IP lease, in the same transaction (a VM found dead
    /// is marked stopped and loses its tap and lease at once).
    pub release_lease: bool,
}

impl VmPatch {
    fn apply(&self, vm: &mut VmRecord) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut vm.state, &self.state);
        set(&mut vm.vcpu, &self.vcpu);
        set(&mut vm.memory_mib, &self.memory_mib);
        set(&mut vm.disk_bytes, &self.disk_bytes);
        set(&mut vm.tap, &self.tap);
        set(&mut vm.backend, &self.backend);
        set(&mut vm.vmm_pid, &self.vmm_pid);
        set(&mut vm.vmm_start_time, &self.vmm_start_time);
        set(&mut vm.clone_strategy, &self.clone_strategy);
        set(&mut vm.spec, &self.spec);
        if self.release_lease {
            vm.ip = None;
        }
    }
}

const SELECT_VM: &str = "SELECT v.id, v.name, v.image, v.kernel, v.state, v.vcpu, v.memory_mib,
        v.disk_bytes, l.ip, v.mac, v.tap, v.backend, v.vmm_pid, v.vmm_start_time,
        v.clone_strategy, v.created_at, v.updated_at, v.last_activity_at, v.spec_json
    FROM vms v LEFT JOIN ip_leases l ON l.vm_id = v.id";

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<VmRecord> {
    Ok(VmRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        kernel: r.get(3)?,
        state: r.get(4)?,
        vcpu: r.get(5)?,
        memory_mib: r.get(6)?,
        disk_bytes: r.get(7)?,
        ip: r.get::<_, Option<IpCol>>(8)?.map(|c| c.0),
        mac: r.get(9)?,
        tap: r.get(10)?,
        backend: r.get::<_, Option<TextCol<Vmm>>>(11)?.map(|c| c.0),
        vmm_pid: r.get(12)?,
        vmm_start_time: r.get(13)?,
        clone_strategy: r.get::<_, Option<TextCol<CloneStrategy>>>(14)?.map(|c| c.0),
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        last_activity_at: r.get(17)?,
        spec: r.get::<_, JsonCol>(18)?.0,
    })
}

impl StateDb {
    /// Insert a new VM, and its lease when `vm.ip` is set, in one transaction.
    /// A taken id, name, MAC or IP gives [`StateError::AlreadyExists`].
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StateError> {
        let op = format!("insert VM {:?}", vm.name);
        self.write(&op, |tx| {
            let spec = vm.spec.to_string();
            let inserted = tx.execute(
                "INSERT INTO vms (id, name, image, kernel, state, vcpu, memory_mib, disk_bytes,
                    mac, tap, backend, vmm_pid, vmm_start_time, clone_strategy, created_at,
                    updated_at, last_activity_at, spec_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18)",
                params![
                    vm.id,
                    vm.name,
                    vm.image,
                    vm.kernel,
                    vm.state,
                    vm.vcpu,
                    vm.memory_mib,
                    vm.disk_bytes,
                    vm.mac,
                    vm.tap,
                    vm.backend.map(Vmm::as_str),
                    vm.vmm_pid,
                    vm.vmm_start_time,
                    vm.clone_strategy.map(CloneStrategy::as_str),
                    vm.created_at,
                    vm.updated_at,
                    vm.last_activity_at,
                    spec,
                ],
            );
            inserted.map_err(|e| {
                let (field, value) = match sql::unique_violation(&e).map(str::to_owned).as_deref() {
                    Some("vms.id") => ("id", vm.id.clone()),
                    Some("vms.name") => ("name", vm.name.clone()),
                    Some("vms.mac") => ("mac", vm.mac.clone()),
                    _ => return self.query_error(&op, e),
                };
                self.already_exists("VM", field, value)
            })?;
            if let Some(ip) = vm.ip {
                tx.execute(
                    "INSERT INTO ip_leases (ip, vm_id, allocated_at) VALUES (?1, ?2, ?3)",
                    params![ip.to_string(), vm.id, vm.created_at],
                )
                .map_err(|e| match sql::unique_violation(&e) {
                    Some(_) => self.already_exists("IP lease", "ip", ip.to_string()),
                    None => self.query_error(&op, e),
                })?;
            }
            Ok(())
        })
    }

    /// The VM with this id.
    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>, StateError> {
        self.conn
            .query_row(&format!("{SELECT_VM} WHERE v.id = ?1"), [id], vm_from_row)
            .optional()
            .map_err(|e| self.query_error(&format!("read VM id {id:?}"), e))
    }

    /// The VM with this name.
    pub fn get_vm_by_name(&self, name: &str) -> Result<Option<VmRecord>, StateError> {
        self.conn
            .query_row(
                &format!("{SELECT_VM} WHERE v.name = ?1"),
                [name],
                vm_from_row,
            )
            .optional()
            .map_err(|e| self.query_error(&format!("read VM {name:?}"), e))
    }

    /// Every VM, oldest first.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StateError> {
        let sql = format!("{SELECT_VM} ORDER BY v.created_at, v.name");
        self.collect(&sql, [], vm_from_row, "list VMs")
    }

    /// Names of the VMs whose root disk comes from `image`.
    pub fn vms_using_image(&self, image: &str) -> Result<Vec<String>, StateError> {
        let op = format!("find VMs using image {image:?}");
        self.collect(
            "SELECT name FROM vms WHERE image = ?1 ORDER BY name",
            [image],
            |r| r.get(0),
            &op,
        )
    }

    /// Names of the VMs that boot `kernel`.
    pub fn vms_using_kernel(&self, kernel: &str) -> Result<Vec<String>, StateError> {
        let op = format!("find VMs using kernel {kernel:?}");
        self.collect(
            "SELECT name FROM vms WHERE kernel = ?1 ORDER BY name",
            [kernel],
            |r| r.get(0),
            &op,
        )
    }

    /// Apply `patch` to VM `id` (bumping `updated_at`) and return the result.
    pub fn update_vm(&self, id: &str, patch: &VmPatch) -> Result<VmRecord, StateError> {
        self.modify_vm(id, &format!("update VM id {id:?}"), |vm| {
            patch.apply(vm);
            Ok(patch.release_lease)
        })
    }

    /// Set VM `id`'s state.
    pub fn update_vm_state(&self, id: &str, state: VmState) -> Result<VmRecord, StateError> {
        self.update_vm(
            id,
            &VmPatch {
                state: Some(state),
                ..VmPatch::default()
            },
        )
    }

    /// Compare-and-set: move VM `id` to `to` only when its state is one of
    /// `expected`, else [`StateError::WrongState`] and nothing changes.
    pub fn transition_vm_state(
        &self,
        id: &str,
        expected: &[VmState],
        to: VmState,
    ) -> Result<VmRecord, StateError> {
        self.modify_vm(id, &format!("change state of VM id {id:?} to {to}"), |vm| {
            if !expected.contains(&vm.state) {
                return Err(StateError::WrongState {
                    path: self.path.clone(),
                    vm: vm.name.clone(),
                    found: vm.state,
                    expected: expected.to_vec(),
                    to,
                });
            }
            vm.state = to;
            Ok(false)
        })
    }

    /// Record activity on VM `id` now (SSH, agent traffic).
    pub fn touch_vm(&self, id: &str) -> Result<(), StateError> {
        let op = format!("record activity of VM id {id:?}");
        let n = self
            .conn
            .execute(
                "UPDATE vms SET last_activity_at = ?2 WHERE id = ?1",
                params![id, Timestamp::now()],
            )
            .map_err(|e| self.query_error(&op, e))?;
        if n == 0 {
            return Err(self.not_found("VM", id));
        }
        Ok(())
    }

    /// Delete VM `id` with its lease and sessions (cascade). Returns whether
    /// it existed, so deleting twice is not an error.
    pub fn delete_vm(&self, id: &str) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute("DELETE FROM vms WHERE id = ?1", [id])
            .map_err(|e| self.query_error(&format!("delete VM id {id:?}"), e))?;
        Ok(n > 0)
    }

    /// Read VM `id`, let `f` change it, write it back and re-read it, all in
    /// one transaction; `f` returns whether to release the lease too.
    fn modify_vm(
        &self,
        id: &str,
        op: &str,
        f: impl FnOnce(&mut VmRecord) -> Result<bool, StateError>,
    ) -> Result<VmRecord, StateError> {
        self.write(op, |tx| {
            let select = format!("{SELECT_VM} WHERE v.id = ?1");
            let mut vm = tx
                .query_row(&select, [id], vm_from_row)
                .optional()
                .map_err(|e| self.query_error(op, e))?
                .ok_or_else(|| self.not_found("VM", id))?;
            let release_lease = f(&mut vm)?;
            vm.updated_at = Timestamp::now();
            tx.execute(
                "UPDATE vms SET state = ?2, vcpu = ?3, memory_mib = ?4, disk_bytes = ?5, tap = ?6,
                    backend = ?7, vmm_pid = ?8, vmm_start_time = ?9, clone_strategy = ?10,
                    updated_at = ?11, spec_json = ?12
                 WHERE id = ?1",
                params![
                    id,
                    vm.state,
                    vm.vcpu,
                    vm.memory_mib,
                    vm.disk_bytes,
                    vm.tap,
                    vm.backend.map(Vmm::as_str),
                    vm.vmm_pid,
                    vm.vmm_start_time,
                    vm.clone_strategy.map(CloneStrategy::as_str),
                    vm.updated_at,
                    vm.spec.to_string(),
                ],
            )
            .map_err(|e| self.query_error(op, e))?;
            if release_lease {
                tx.execute("DELETE FROM ip_leases WHERE vm_id = ?1", [id])
                    .map_err(|e| self.query_error(op, e))?;
            }
            tx.query_row(&select, [id], vm_from_row)
                .map_err(|e| self.query_error(op, e))
        })
    }

    pub(crate) fn collect<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
        op: &str,
    ) -> Result<Vec<T>, StateError> {
        let run = || -> rusqlite::Result<Vec<T>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params, f)?;
            rows.collect()
        };
        run().map_err(|e| self.query_error(op, e))
    }

    pub(crate) fn not_found(&self, kind: &'static str, key: &str) -> StateError {
        StateError::NotFound {
            path: self.path.clone(),
            kind,
            key: key.to_owned(),
        }
    }

    pub(crate) fn already_exists(
        &self,
        kind: &'static str,
        field: &str,
        value: String,
    ) -> StateError {
        StateError::AlreadyExists {
            path: self.path.clone(),
            kind,
            field: field.to_owned(),
            value,
        }
    }
}
