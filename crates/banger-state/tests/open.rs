//! Opening, migrating and refusing databases on real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use banger_state::{
    ArtifactSource, KernelRecord, StateDb, StateError, Timestamp, VmState, SCHEMA_VERSION,
};
use rusqlite::Connection;

const V1_SQL: &str = include_str!("../migrations/0001_initial.sql");

fn journal_mode(path: &Path) -> String {
    let conn = Connection::open(path).unwrap();
    conn.pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap()
}

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn new_database_is_created_private_in_wal_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a/b/state.db");
    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.schema_version(), SCHEMA_VERSION);
    assert_eq!(db.path(), path);
    drop(db);

    for dir in [tmp.path().join("a"), tmp.path().join("a/b")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(journal_mode(&path), "wal");
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
}

#[test]
fn existing_parent_directory_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    StateDb::open(&tmp.path().join("state.db")).unwrap();
    let mode = std::fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn v1_database_is_migrated_and_keeps_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V1_SQL).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO vms (id, name, image, kernel, state, vcpu, memory_mib, disk_bytes, ip,
                mac, tap, vmm_pid, created_at, updated_at, spec_json)
             VALUES ('id-1', 'alpha', 'debian-bookworm', 'generic-6.12', 'running', 2, 1024,
                8589934592, '172.16.0.2', '02:00:00:00:00:01', 'bgtap0', 4242, 1000, 2000,
                '{\"vcpu\":{\"value\":2,\"from\":\"config\"}}');
             INSERT INTO vms (id, name, image, kernel, state, vcpu, memory_mib, disk_bytes, ip,
                mac, tap, vmm_pid, created_at, updated_at, spec_json)
             VALUES ('id-2', 'beta', 'debian-bookworm', 'generic-6.12', 'stopped', 1, 512,
                1024, NULL, '02:00:00:00:00:02', NULL, NULL, 3000, 3000, '{}');
             INSERT INTO images (name, version, arch, kernel_ref, rootfs_path, rootfs_sha256,
                size_bytes, source, managed, recipe_hash, created_at)
             VALUES ('debian-bookworm', '2024.1', 'x86_64', 'generic-6.12',
                '/var/lib/banger/images/debian-bookworm/rootfs.ext4', 'abc', 123, 'pulled', 1,
                NULL, 500);
             INSERT INTO kernels (name, version, vmlinux_path, initrd_path, modules_path, sha256,
                source, managed, created_at)
             VALUES ('generic-6.12', '6.12.9', '/k/vmlinux', '/k/initrd', NULL, 'def', 'built',
                1, 400);",
        )
        .unwrap();
    }

    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.schema_version(), SCHEMA_VERSION);
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));

    let alpha = db.get_vm_by_name("alpha").unwrap().unwrap();
    assert_eq!(alpha.id, "id-1");
    assert_eq!(alpha.state, VmState::Running);
    assert_eq!(alpha.disk_bytes, 8_589_934_592);
    assert_eq!(alpha.ip, Some("172.16.0.2".parse().unwrap()));
    assert_eq!(alpha.tap.as_deref(), Some("bgtap0"));
    assert_eq!(alpha.vmm_pid, Some(4242));
    assert_eq!(alpha.vmm_start_time, None);
    assert_eq!(alpha.backend, None);
    assert_eq!(alpha.spec["vcpu"]["from"], "config");
    let beta = db.get_vm_by_name("beta").unwrap().unwrap();
    assert_eq!(beta.ip, None);
    assert_eq!(db.list_vms().unwrap().len(), 2);

    // The v1 address became a real lease: the unique index now protects it.
    let leases = db.list_leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (
            leases[0].vm_id.as_str(),
            leases[0].allocated_at.unix_millis()
        ),
        ("id-1", 2000)
    );
    let ip = db.allocate_lease(
        "id-2",
        ["172.16.0.2".parse().unwrap(), "172.16.0.3".parse().unwrap()],
    );
    assert_eq!(
        ip.unwrap(),
        "172.16.0.3".parse::<std::net::Ipv4Addr>().unwrap()
    );

    let image = db.get_image("debian-bookworm").unwrap().unwrap();
    assert_eq!(image.rootfs_sha256.as_deref(), Some("abc"));
    assert!(image.managed);
    let kernel = db.get_kernel("generic-6.12").unwrap().unwrap();
    assert_eq!(kernel.initrd_path.as_deref(), Some(Path::new("/k/initrd")));
    assert_eq!(kernel.modules_path, None);
    assert_eq!(journal_mode(&path), "wal");
}

#[test]
fn reopening_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    {
        let db = StateDb::open(&path).unwrap();
        db.insert_kernel(&KernelRecord {
            name: "k".into(),
            version: "1".into(),
            vmlinux_path: "/k/vmlinux".into(),
            initrd_path: None,
            modules_path: None,
            sha256: None,
            source: ArtifactSource::Registered,
            managed: false,
            created_at: Timestamp::from_unix_millis(1),
        })
        .unwrap();
    }
    for _ in 0..3 {
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.schema_version(), SCHEMA_VERSION);
        assert_eq!(db.list_kernels().unwrap().len(), 1);
    }
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
}

#[test]
fn concurrent_first_opens_migrate_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || StateDb::open(&path).map(|db| db.schema_version()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), SCHEMA_VERSION);
    }
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
}

#[test]
fn newer_schema_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    drop(StateDb::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let err = StateDb::open(&path).unwrap_err();
    match &err {
        StateError::NewerSchema {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*found, SCHEMA_VERSION + 7);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("upgrade banger"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Opening `path` fails with `Corrupt` and leaves the file as it was;
/// returns the error's detail.
fn assert_corrupt(path: &Path) -> String {
    let before = std::fs::read(path).unwrap();
    let err = StateDb::open(path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("Move it aside"), "{msg}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the corrupt file was modified"
    );
    match err {
        StateError::Corrupt { path: p, detail } if p == path => detail,
        other => panic!("expected Corrupt for {}, got {other:?}", path.display()),
    }
}

#[test]
fn file_that_is_not_a_database_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    assert_corrupt(&path);
    std::fs::write(&path, "just some text, not SQLite\n").unwrap();
    assert_corrupt(&path);
}

/// A valid database with one table of 2000 rows, 4 KiB pages; its bytes.
fn filler_database(path: &Path) -> Vec<u8> {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT);")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..2000 {
        tx.execute(
            "INSERT INTO filler (body) VALUES (?1)",
            [format!("row number {i:>6}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 8 * PAGE);
    bytes
}

const PAGE: usize = 4096;

#[test]
fn damaged_pages_are_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    let mut bytes = filler_database(&path);
    // Scribble over the b-tree headers of a few pages: reading them fails
    // with SQLITE_CORRUPT.
    for p in [3, 5, 7] {
        bytes[p * PAGE..p * PAGE + 64].fill(0xA5);
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt(&path);
}

#[test]
fn keys_out_of_order_fail_quick_check() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    let mut bytes = filler_database(&path);
    // Swap the first two cell pointers of the first table leaf page (type
    // 0x0d): every page still parses, but quick_check reports the rowids
    // out of order.
    let leaf = (1..bytes.len() / PAGE)
        .map(|p| p * PAGE)
        .find(|&o| bytes[o] == 0x0d)
        .unwrap();
    let (a, b) = (leaf + 8, leaf + 10);
    let first = [bytes[a], bytes[a + 1]];
    bytes.copy_within(b..b + 2, a);
    bytes[b..b + 2].copy_from_slice(&first);
    std::fs::write(&path, &bytes).unwrap();
    let detail = assert_corrupt(&path);
    assert!(
        detail.contains("quick_check") && detail.contains("out of order"),
        "{detail}"
    );
}

#[test]
fn unopenable_path_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // The "parent directory" is a regular file.
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let path = blocker.join("state.db");
    let err = StateDb::open(&path).unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
