//! IP leases: the single record of which VM holds which address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::sql::{IpCol, TextCol};
use crate::{StateDb, StateError, Timestamp};

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub vm_id: String,
    pub allocated_at: Timestamp,
}

impl StateDb {
    /// Lease the first address of `candidates` that no VM holds to VM
    /// `vm_id`, in one IMMEDIATE transaction, so concurrent callers on other
    /// connections or processes never get the same address. A VM that
    /// already holds a lease gets that address back. Errors:
    /// [`StateError::NotFound`] for an unknown VM,
    /// [`StateError::LeasesExhausted`] when every candidate is taken.
    pub fn allocate_lease(
        &self,
        vm_id: &str,
        candidates: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Result<Ipv4Addr, StateError> {
        let op = format!("allocate an IP lease for VM id {vm_id:?}");
        self.write(&op, |tx| {
            let q = |e| self.query_error(&op, e);
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM vms WHERE id = ?1", [vm_id], |r| r.get(0))
                .optional()
                .map_err(q)?;
            if exists.is_none() {
                return Err(self.not_found("VM", vm_id));
            }
            let held: Option<IpCol> = tx
                .query_row("SELECT ip FROM ip_leases WHERE vm_id = ?1", [vm_id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(q)?;
            if let Some(TextCol(ip)) = held {
                return Ok(ip);
            }
            let taken: HashSet<Ipv4Addr> = {
                let mut stmt = tx.prepare("SELECT ip FROM ip_leases").map_err(q)?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, IpCol>(0).map(|c| c.0))
                    .map_err(q)?;
                rows.collect::<Result<_, _>>().map_err(q)?
            };
            let mut seen = 0;
            for ip in candidates {
                seen += 1;
                if taken.contains(&ip) {
                    continue;
                }
                tx.execute(
                    "INSERT INTO ip_leases (ip, vm_id, allocated_at) VALUES (?1, ?2, ?3)",
                    params![ip.to_string(), vm_id, Timestamp::now()],
                )
                .map_err(q)?;
                return Ok(ip);
            }
            Err(StateError::LeasesExhausted {
                path: self.path.clone(),
                vm: vm_id.to_owned(),
                candidates: seen,
            })
        })
    }

    /// Drop VM `vm_id`'s lease; returns the address it held, if any.
    pub fn release_lease(&self, vm_id: &str) -> Result<Option<Ipv4Addr>, StateError> {
        self.conn
            .query_row(
                "DELETE FROM ip_leases WHERE vm_id = ?1 RETURNING ip",
                [vm_id],
                |r| r.get::<_, IpCol>(0),
            )
            .optional()
            .map(|ip| ip.map(|c| c.0))
            .map_err(|e| self.query_error(&format!("release the IP lease of VM id {vm_id:?}"), e))
    }

    /// Every lease, by address.
    pub fn list_leases(&self) -> Result<Vec<Lease>, StateError> {
        let mut leases = self.collect(
            "SELECT ip, vm_id, allocated_at FROM ip_leases",
            [],
            |r| {
                Ok(Lease {
                    ip: r.get::<_, IpCol>(0)?.0,
                    vm_id: r.get(1)?,
                    allocated_at: r.get(2)?,
                })
            },
            "list IP leases",
        )?;
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }
}
