//! IP lease allocation, including concurrent allocation from separate
//! connections to one file.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};

use banger_state::{StateDb, StateError, Timestamp, VmRecord, VmState};

fn vm(id: &str) -> VmRecord {
    VmRecord {
        id: id.into(),
        name: format!("vm-{id}"),
        image: "debian-bookworm".into(),
        kernel: "generic-6.12".into(),
        state: VmState::Created,
        vcpu: 1,
        memory_mib: 512,
        disk_bytes: 1 << 30,
        ip: None,
        mac: format!("02:00:00:00:{id}"),
        tap: None,
        backend: None,
        vmm_pid: None,
        vmm_start_time: None,
        clone_strategy: None,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
        last_activity_at: None,
        spec: serde_json::json!({}),
    }
}

/// 172.16.0.2 ..= 172.16.0.(1 + n)
fn pool(n: u8) -> impl Iterator<Item = Ipv4Addr> + Clone {
    (2..2 + n).map(|last| Ipv4Addr::new(172, 16, 0, last))
}

#[test]
fn allocation_takes_the_first_free_address() {
    let db = StateDb::open_in_memory().unwrap();
    for id in ["a", "b", "c"] {
        db.insert_vm(&vm(id)).unwrap();
    }
    assert_eq!(
        db.allocate_lease("a", pool(3)).unwrap(),
        Ipv4Addr::new(172, 16, 0, 2)
    );
    assert_eq!(
        db.allocate_lease("b", pool(3)).unwrap(),
        Ipv4Addr::new(172, 16, 0, 3)
    );
    // Asking again returns the lease already held.
    assert_eq!(
        db.allocate_lease("a", pool(3)).unwrap(),
        Ipv4Addr::new(172, 16, 0, 2)
    );
    assert_eq!(
        db.get_vm("b").unwrap().unwrap().ip,
        Some(Ipv4Addr::new(172, 16, 0, 3))
    );

    assert_eq!(
        db.release_lease("a").unwrap(),
        Some(Ipv4Addr::new(172, 16, 0, 2))
    );
    assert_eq!(db.release_lease("a").unwrap(), None);
    assert_eq!(db.get_vm("a").unwrap().unwrap().ip, None);
    // The freed address is reused first.
    assert_eq!(
        db.allocate_lease("c", pool(3)).unwrap(),
        Ipv4Addr::new(172, 16, 0, 2)
    );

    let leases = db.list_leases().unwrap();
    let pairs: Vec<_> = leases.iter().map(|l| (l.ip, l.vm_id.as_str())).collect();
    assert_eq!(
        pairs,
        [
            (Ipv4Addr::new(172, 16, 0, 2), "c"),
            (Ipv4Addr::new(172, 16, 0, 3), "b")
        ]
    );
}

#[test]
fn exhausted_pool_and_unknown_vm_are_errors() {
    let db = StateDb::open_in_memory().unwrap();
    db.insert_vm(&vm("a")).unwrap();
    db.insert_vm(&vm("b")).unwrap();
    db.allocate_lease("a", pool(1)).unwrap();
    let err = db.allocate_lease("b", pool(1)).unwrap_err();
    assert!(
        matches!(&err, StateError::LeasesExhausted { vm, candidates: 1, .. } if vm == "b"),
        "{err:?}"
    );
    let err = db.allocate_lease("b", std::iter::empty()).unwrap_err();
    assert!(
        matches!(&err, StateError::LeasesExhausted { candidates: 0, .. }),
        "{err:?}"
    );
    let err = db.allocate_lease("nope", pool(5)).unwrap_err();
    assert!(
        matches!(&err, StateError::NotFound { kind: "VM", .. }),
        "{err:?}"
    );
    assert_eq!(db.list_leases().unwrap().len(), 1);
}

#[test]
fn deleting_a_vm_releases_its_lease() {
    let db = StateDb::open_in_memory().unwrap();
    db.insert_vm(&vm("a")).unwrap();
    db.insert_vm(&vm("b")).unwrap();
    db.allocate_lease("a", pool(4)).unwrap();
    db.allocate_lease("b", pool(4)).unwrap();
    assert!(db.delete_vm("a").unwrap());
    let leases = db.list_leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].vm_id, "b");
}

#[test]
fn concurrent_allocations_from_separate_handles_are_distinct() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 12;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.db");
    {
        let db = StateDb::open(&path).unwrap();
        for t in 0..THREADS {
            for i in 0..PER_THREAD {
                db.insert_vm(&vm(&format!("t{t}-{i}"))).unwrap();
            }
        }
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = path.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let db = StateDb::open(&path).unwrap();
                barrier.wait();
                (0..PER_THREAD)
                    .map(|i| db.allocate_lease(&format!("t{t}-{i}"), pool(200)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Ipv4Addr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    assert_eq!(distinct.len(), all.len(), "duplicate leases: {all:?}");
    // First-free allocation packs the pool from its start.
    let expected: HashSet<Ipv4Addr> = pool((THREADS * PER_THREAD) as u8).collect();
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), expected);

    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.list_leases().unwrap().len(), THREADS * PER_THREAD);
}
