-- Schema v2: IP leases (the single source of a VM's address), sessions,
-- and the columns the VM lifecycle needs.

CREATE TABLE ip_leases (
    ip            TEXT    NOT NULL PRIMARY KEY,
    vm_id         TEXT    NOT NULL UNIQUE REFERENCES vms (id) ON DELETE CASCADE,
    allocated_at  INTEGER NOT NULL
);

-- Addresses recorded on v1 rows become leases; a duplicate fails the
-- migration (and rolls it back) instead of silently dropping one.
INSERT INTO ip_leases (ip, vm_id, allocated_at)
    SELECT ip, id, updated_at FROM vms WHERE ip IS NOT NULL;

ALTER TABLE vms DROP COLUMN ip;

ALTER TABLE vms ADD COLUMN backend TEXT
    CHECK (backend IS NULL OR backend IN ('firecracker', 'qemu'));
-- With vmm_pid, identifies the VMM process across daemon restarts
-- (start time in clock ticks since boot, field 22 of /proc/PID/stat).
ALTER TABLE vms ADD COLUMN vmm_start_time INTEGER;
ALTER TABLE vms ADD COLUMN clone_strategy TEXT
    CHECK (clone_strategy IS NULL OR clone_strategy IN ('reflink', 'dm-snapshot', 'sparse-copy'));
ALTER TABLE vms ADD COLUMN last_activity_at INTEGER;

CREATE TABLE sessions (
    id                TEXT    NOT NULL PRIMARY KEY,
    vm_id             TEXT    NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    kind              TEXT    NOT NULL CHECK (kind IN ('shell', 'command')),
    command           TEXT,
    started_at        INTEGER NOT NULL,
    last_activity_at  INTEGER NOT NULL,
    ended_at          INTEGER,
    exit_code         INTEGER
);

CREATE INDEX sessions_vm_id ON sessions (vm_id);
