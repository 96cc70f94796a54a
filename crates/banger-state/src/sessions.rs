//! Sessions: SSH shells and commands run in a VM, the activity that keeps a
//! VM from being auto-stopped.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::{SessionKind, StateDb, StateError, Timestamp};

/// One session in a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub vm_id: String,
    pub kind: SessionKind,
    /// The command line, for [`SessionKind::Command`].
    pub command: Option<String>,
    pub started_at: Timestamp,
    pub last_activity_at: Timestamp,
    /// `None` while the session is open.
    pub ended_at: Option<Timestamp>,
    /// The command's exit status (128+N for a signal), when it ended with one.
    pub exit_code: Option<i32>,
}

const SELECT_SESSION: &str = "SELECT id, vm_id, kind, command, started_at, last_activity_at,
    ended_at, exit_code FROM sessions";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        vm_id: r.get(1)?,
        kind: r.get(2)?,
        command: r.get(3)?,
        started_at: r.get(4)?,
        last_activity_at: r.get(5)?,
        ended_at: r.get(6)?,
        exit_code: r.get(7)?,
    })
}

impl StateDb {
    /// Record a new session and mark its VM active at `started_at`, in one
    /// transaction. [`StateError::NotFound`] for an unknown VM.
    pub fn insert_session(&self, s: &SessionRecord) -> Result<(), StateError> {
        let op = format!("insert session {:?}", s.id);
        self.write(&op, |tx| {
            bump_vm_activity(tx, &s.vm_id, s.last_activity_at)
                .map_err(|e| self.query_error(&op, e))?
                .then_some(())
                .ok_or_else(|| self.not_found("VM", &s.vm_id))?;
            tx.execute(
                "INSERT INTO sessions (id, vm_id, kind, command, started_at, last_activity_at,
                    ended_at, exit_code)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    s.id,
                    s.vm_id,
                    s.kind,
                    s.command,
                    s.started_at,
                    s.last_activity_at,
                    s.ended_at,
                    s.exit_code,
                ],
            )
            .map_err(|e| match crate::sql::unique_violation(&e) {
                Some(_) => self.already_exists("session", "id", s.id.clone()),
                None => self.query_error(&op, e),
            })?;
            Ok(())
        })
    }

    /// The session with this id.
    pub fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StateError> {
        self.conn
            .query_row(
                &format!("{SELECT_SESSION} WHERE id = ?1"),
                [id],
                session_from_row,
            )
            .optional()
            .map_err(|e| self.query_error(&format!("read session {id:?}"), e))
    }

    /// Sessions of VM `vm_id`, or of every VM with `None`; oldest first.
    pub fn list_sessions(&self, vm_id: Option<&str>) -> Result<Vec<SessionRecord>, StateError> {
        let sql =
            format!("{SELECT_SESSION} WHERE ?1 IS NULL OR vm_id = ?1 ORDER BY started_at, id");
        self.collect(&sql, [vm_id], session_from_row, "list sessions")
    }

    /// Record activity in session `id` now, on the session and its VM.
    pub fn touch_session(&self, id: &str) -> Result<SessionRecord, StateError> {
        self.modify_session(id, &format!("record activity of session {id:?}"), |_| {})
    }

    /// Close session `id` now with `exit_code` (also counts as activity).
    pub fn end_session(
        &self,
        id: &str,
        exit_code: Option<i32>,
    ) -> Result<SessionRecord, StateError> {
        self.modify_session(id, &format!("end session {id:?}"), |s| {
            s.ended_at = Some(s.last_activity_at);
            s.exit_code = exit_code;
        })
    }

    /// Delete session `id`; returns whether it existed.
    pub fn delete_session(&self, id: &str) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute("DELETE FROM sessions WHERE id = ?1", [id])
            .map_err(|e| self.query_error(&format!("delete session {id:?}"), e))?;
        Ok(n > 0)
    }

    fn modify_session(
        &self,
        id: &str,
        op: &str,
        f: impl FnOnce(&mut SessionRecord),
    ) -> Result<SessionRecord, StateError> {
        self.write(op, |tx| {
            let mut s = tx
                .query_row(
                    &format!("{SELECT_SESSION} WHERE id = ?1"),
                    [id],
                    session_from_row,
                )
                .optional()
                .map_err(|e| self.query_error(op, e))?
                .ok_or_else(|| self.not_found("session", id))?;
            s.last_activity_at = Timestamp::now();
            f(&mut s);
            tx.execute(
                "UPDATE sessions SET last_activity_at = ?2, ended_at = ?3, exit_code = ?4
                 WHERE id = ?1",
                params![id, s.last_activity_at, s.ended_at, s.exit_code],
            )
            .map_err(|e| self.query_error(op, e))?;
            bump_vm_activity(tx, &s.vm_id, s.last_activity_at)
                .map_err(|e| self.query_error(op, e))?;
            Ok(s)
        })
    }
}

/// A named guest session (`banger vm session`): its row plus the name and
/// the last state the guest reported (JSON of `GuestSession`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedSession {
    pub record: SessionRecord,
    pub name: String,
    pub guest_json: Option<String>,
}

const SELECT_NAMED: &str = "SELECT id, vm_id, kind, command, started_at, last_activity_at,
    ended_at, exit_code, name, guest_json FROM sessions WHERE name IS NOT NULL";

fn named_from_row(r: &Row<'_>) -> rusqlite::Result<NamedSession> {
    Ok(NamedSession {
        record: session_from_row(r)?,
        name: r.get(8)?,
        guest_json: r.get(9)?,
    })
}

impl StateDb {
    /// Record a named session of a VM; a name already used on that VM is
    /// [`StateError::AlreadyExists`] unless `replace_ended` and that session
    /// has ended, in which case the old row is replaced, all in one
    /// transaction.
    pub fn insert_named_session(
        &self,
        s: &NamedSession,
        replace_ended: bool,
    ) -> Result<(), StateError> {
        let op = format!("insert session {:?}", s.name);
        self.write(&op, |tx| {
            let old: Option<(String, Option<Timestamp>)> = tx
                .query_row(
                    "SELECT id, ended_at FROM sessions WHERE vm_id = ?1 AND name = ?2",
                    params![s.record.vm_id, s.name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| self.query_error(&op, e))?;
            if let Some((old_id, ended)) = old {
                if !(replace_ended && ended.is_some()) {
                    return Err(self.already_exists("session", "name", s.name.clone()));
                }
                tx.execute("DELETE FROM sessions WHERE id = ?1", [old_id])
                    .map_err(|e| self.query_error(&op, e))?;
            }
            let r = &s.record;
            bump_vm_activity(tx, &r.vm_id, r.last_activity_at)
                .map_err(|e| self.query_error(&op, e))?
                .then_some(())
                .ok_or_else(|| self.not_found("VM", &r.vm_id))?;
            tx.execute(
                "INSERT INTO sessions (id, vm_id, kind, command, started_at, last_activity_at,
                    ended_at, exit_code, name, guest_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    r.id,
                    r.vm_id,
                    r.kind,
                    r.command,
                    r.started_at,
                    r.last_activity_at,
                    r.ended_at,
                    r.exit_code,
                    s.name,
                    s.guest_json,
                ],
            )
            .map_err(|e| match crate::sql::unique_violation(&e) {
                Some(_) => self.already_exists("session", "name", s.name.clone()),
                None => self.query_error(&op, e),
            })?;
            Ok(())
        })
    }

    /// The named sessions of VM `vm_id`, oldest first.
    pub fn list_named_sessions(&self, vm_id: &str) -> Result<Vec<NamedSession>, StateError> {
        let sql = format!("{SELECT_NAMED} AND vm_id = ?1 ORDER BY started_at, id");
        self.collect(&sql, [vm_id], named_from_row, "list named sessions")
    }

    /// Every named session of every VM, oldest first.
    pub fn list_all_named_sessions(&self) -> Result<Vec<NamedSession>, StateError> {
        let sql = format!("{SELECT_NAMED} ORDER BY started_at, id");
        self.collect(&sql, [], named_from_row, "list named sessions")
    }

    /// Store what the guest last reported about session `id`, and its end
    /// once it has one (an end is never undone).
    pub fn update_session_guest(
        &self,
        id: &str,
        guest_json: &str,
        ended_at: Option<Timestamp>,
        exit_code: Option<i32>,
    ) -> Result<(), StateError> {
        let op = format!("update session {id:?}");
        self.write(&op, |tx| {
            let n = tx
                .execute(
                    "UPDATE sessions SET guest_json = ?2,
                        ended_at = coalesce(ended_at, ?3),
                        exit_code = CASE WHEN ended_at IS NULL THEN ?4 ELSE exit_code END
                     WHERE id = ?1",
                    params![id, guest_json, ended_at, exit_code],
                )
                .map_err(|e| self.query_error(&op, e))?;
            if n == 0 {
                return Err(self.not_found("session", id));
            }
            Ok(())
        })
    }
}

/// Move the VM's `last_activity_at` forward to `at` (never backwards);
/// returns whether the VM exists.
fn bump_vm_activity(tx: &Transaction<'_>, vm_id: &str, at: Timestamp) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE vms SET last_activity_at = max(coalesce(last_activity_at, ?2), ?2) WHERE id = ?1",
        params![vm_id, at],
    )?;
    Ok(n > 0)
}
