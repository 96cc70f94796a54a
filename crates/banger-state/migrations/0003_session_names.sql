-- Schema v3: named guest sessions (`banger vm session`, docs/sessions.md).
-- `name` is unique per VM; `guest_json` keeps the last state the guest
-- agent reported (banger_wire::guest::GuestSession), so a session whose VM
-- is stopped, or whose guest forgot it across a reboot, still shows how it
-- was last seen.
ALTER TABLE sessions ADD COLUMN name TEXT;
ALTER TABLE sessions ADD COLUMN guest_json TEXT;
CREATE UNIQUE INDEX sessions_vm_name ON sessions (vm_id, name) WHERE name IS NOT NULL;
