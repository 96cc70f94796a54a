-- Schema v1: VMs, images and kernels.
-- Timestamps are integer milliseconds since the Unix epoch.

CREATE TABLE vms (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    image       TEXT    NOT NULL,
    kernel      TEXT    NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('created', 'starting', 'running', 'stopping', 'stopped', 'error')),
    vcpu        INTEGER NOT NULL CHECK (vcpu > 0),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib > 0),
    disk_bytes  INTEGER NOT NULL CHECK (disk_bytes >= 0),
    -- Moved into ip_leases by v2.
    ip          TEXT,
    mac         TEXT    NOT NULL UNIQUE,
    tap         TEXT,
    vmm_pid     INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    spec_json   TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX vms_image ON vms (image);
CREATE INDEX vms_kernel ON vms (kernel);

CREATE TABLE images (
    name           TEXT    NOT NULL PRIMARY KEY,
    version        TEXT    NOT NULL,
    arch           TEXT    NOT NULL,
    kernel_ref     TEXT    NOT NULL,
    rootfs_path    TEXT    NOT NULL,
    rootfs_sha256  TEXT,
    size_bytes     INTEGER NOT NULL CHECK (size_bytes >= 0),
    source         TEXT    NOT NULL CHECK (source IN ('pulled', 'built', 'registered')),
    managed        INTEGER NOT NULL CHECK (managed IN (0, 1)),
    recipe_hash    TEXT,
    created_at     INTEGER NOT NULL
);

CREATE INDEX images_kernel_ref ON images (kernel_ref);

CREATE TABLE kernels (
    name          TEXT    NOT NULL PRIMARY KEY,
    version       TEXT    NOT NULL,
    vmlinux_path  TEXT    NOT NULL,
    initrd_path   TEXT,
    modules_path  TEXT,
    sha256        TEXT,
    source        TEXT    NOT NULL CHECK (source IN ('pulled', 'built', 'registered')),
    managed       INTEGER NOT NULL CHECK (managed IN (0, 1)),
    created_at    INTEGER NOT NULL
);
