//! Round trips and constraints of VM, image, kernel and session records.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use banger_state::{
    ArtifactSource, CloneStrategy, ImageRecord, KernelRecord, SessionKind, SessionRecord, StateDb,
    StateError, Timestamp, VmPatch, VmRecord, VmState, Vmm,
};

fn vm(id: &str, name: &str) -> VmRecord {
    VmRecord {
        id: id.into(),
        name: name.into(),
        image: "debian-bookworm".into(),
        kernel: "generic-6.12".into(),
        state: VmState::Created,
        vcpu: 2,
        memory_mib: 1024,
        disk_bytes: 16 << 30,
        ip: None,
        mac: format!("02:00:00:00:{id}"),
        tap: None,
        backend: Some(Vmm::Qemu),
        vmm_pid: None,
        vmm_start_time: None,
        clone_strategy: Some(CloneStrategy::SparseCopy),
        created_at: Timestamp::from_unix_millis(1_700_000_000_000),
        updated_at: Timestamp::from_unix_millis(1_700_000_000_000),
        last_activity_at: None,
        spec: serde_json::json!({"vcpu": {"value": 2, "from": "host"}}),
    }
}

fn image(name: &str, kernel: &str) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        version: "2025.01.1".into(),
        arch: "x86_64".into(),
        kernel_ref: kernel.into(),
        rootfs_path: PathBuf::from(format!("/var/lib/banger/images/{name}/rootfs.ext4")),
        rootfs_sha256: Some("a".repeat(64)),
        size_bytes: 1 << 30,
        source: ArtifactSource::Pulled,
        managed: true,
        recipe_hash: Some("r".repeat(64)),
        created_at: Timestamp::from_unix_millis(1_700_000_000_123),
    }
}

fn kernel(name: &str) -> KernelRecord {
    KernelRecord {
        name: name.into(),
        version: "6.12.9".into(),
        vmlinux_path: PathBuf::from(format!("/var/lib/banger/kernels/{name}/vmlinux")),
        initrd_path: Some(PathBuf::from(format!(
            "/var/lib/banger/kernels/{name}/initrd"
        ))),
        modules_path: Some(PathBuf::from(format!(
            "/var/lib/banger/kernels/{name}/modules"
        ))),
        sha256: Some("b".repeat(64)),
        source: ArtifactSource::Built,
        managed: true,
        created_at: Timestamp::from_unix_millis(1_600_000_000_000),
    }
}

#[test]
fn vm_round_trip_and_updates() {
    let db = StateDb::open_in_memory().unwrap();
    let mut a = vm("id-a", "alpha");
    a.ip = Some("172.16.0.9".parse().unwrap());
    a.vmm_start_time = Some(u64::from(u32::MAX) + 5);
    db.insert_vm(&a).unwrap();
    db.insert_vm(&vm("id-b", "beta")).unwrap();

    assert_eq!(db.get_vm("id-a").unwrap().unwrap(), a);
    assert_eq!(db.get_vm_by_name("alpha").unwrap().unwrap(), a);
    assert_eq!(db.get_vm("missing").unwrap(), None);
    assert_eq!(db.get_vm_by_name("missing").unwrap(), None);
    let names: Vec<_> = db.list_vms().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(db.list_leases().unwrap()[0].ip, a.ip.unwrap());

    let running = db.update_vm_state("id-a", VmState::Running).unwrap();
    assert_eq!(running.state, VmState::Running);
    assert!(running.updated_at > a.updated_at);
    assert_eq!(running.ip, a.ip);

    let patched = db
        .update_vm(
            "id-a",
            &VmPatch {
                tap: Some(Some("bgtap3".into())),
                vmm_pid: Some(Some(777)),
                vmm_start_time: Some(Some(123_456)),
                backend: Some(Some(Vmm::Firecracker)),
                clone_strategy: Some(Some(CloneStrategy::Reflink)),
                memory_mib: Some(2048),
                ..VmPatch::default()
            },
        )
        .unwrap();
    assert_eq!(patched.state, VmState::Running);
    assert_eq!(patched.tap.as_deref(), Some("bgtap3"));
    assert_eq!(
        (patched.vmm_pid, patched.vmm_start_time),
        (Some(777), Some(123_456))
    );
    assert_eq!(patched.backend, Some(Vmm::Firecracker));
    assert_eq!(patched.clone_strategy, Some(CloneStrategy::Reflink));
    assert_eq!((patched.vcpu, patched.memory_mib), (2, 2048));
    assert_eq!(db.get_vm("id-a").unwrap().unwrap(), patched);

    // A dead VMM: stopped, no process, no tap, no lease, in one update.
    let stopped = db
        .update_vm(
            "id-a",
            &VmPatch {
                state: Some(VmState::Stopped),
                tap: Some(None),
                vmm_pid: Some(None),
                vmm_start_time: Some(None),
                release_lease: true,
                ..VmPatch::default()
            },
        )
        .unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        (stopped.tap, stopped.vmm_pid, stopped.ip),
        (None, None, None)
    );
    assert!(db.list_leases().unwrap().is_empty());

    db.touch_vm("id-b").unwrap();
    assert!(db
        .get_vm("id-b")
        .unwrap()
        .unwrap()
        .last_activity_at
        .is_some());

    let err = db.update_vm_state("missing", VmState::Running).unwrap_err();
    assert!(matches!(&err, StateError::NotFound { kind: "VM", key, .. } if key == "missing"));
    assert!(matches!(
        db.touch_vm("missing"),
        Err(StateError::NotFound { .. })
    ));

    assert!(db.delete_vm("id-a").unwrap());
    assert!(!db.delete_vm("id-a").unwrap());
    assert_eq!(db.get_vm("id-a").unwrap(), None);
}

#[test]
fn vm_unique_fields_are_reported_by_name() {
    let db = StateDb::open_in_memory().unwrap();
    let mut a = vm("id-a", "alpha");
    a.ip = Some("172.16.0.2".parse().unwrap());
    db.insert_vm(&a).unwrap();

    let mut same_name = vm("id-x", "alpha");
    same_name.mac = "02:aa:00:00:00:01".into();
    let err = db.insert_vm(&same_name).unwrap_err();
    assert!(
        matches!(&err, StateError::AlreadyExists { kind: "VM", field, value, .. }
            if field == "name" && value == "alpha"),
        "{err:?}"
    );
    assert!(err.to_string().contains("alpha"), "{err}");

    let mut same_id = vm("id-a", "other");
    same_id.mac = "02:aa:00:00:00:02".into();
    let err = db.insert_vm(&same_id).unwrap_err();
    assert!(
        matches!(&err, StateError::AlreadyExists { field, .. } if field == "id"),
        "{err:?}"
    );

    let same_mac = VmRecord {
        id: "id-m".into(),
        name: "mac".into(),
        ..a.clone()
    };
    let err = db.insert_vm(&same_mac).unwrap_err();
    assert!(
        matches!(&err, StateError::AlreadyExists { field, .. } if field == "mac"),
        "{err:?}"
    );

    // Same IP: the VM row is rolled back with the failed lease.
    let mut same_ip = vm("id-c", "gamma");
    same_ip.mac = "02:aa:00:00:00:03".into();
    same_ip.ip = a.ip;
    let err = db.insert_vm(&same_ip).unwrap_err();
    assert!(
        matches!(&err, StateError::AlreadyExists { kind: "IP lease", value, .. }
            if value == "172.16.0.2"),
        "{err:?}"
    );
    assert_eq!(db.get_vm("id-c").unwrap(), None);
    assert_eq!(db.list_vms().unwrap().len(), 1);
}

#[test]
fn state_transition_is_compare_and_set() {
    let db = StateDb::open_in_memory().unwrap();
    db.insert_vm(&vm("id-a", "alpha")).unwrap();
    let starting = db
        .transition_vm_state(
            "id-a",
            &[VmState::Created, VmState::Stopped],
            VmState::Starting,
        )
        .unwrap();
    assert_eq!(starting.state, VmState::Starting);

    let err = db
        .transition_vm_state(
            "id-a",
            &[VmState::Created, VmState::Stopped],
            VmState::Starting,
        )
        .unwrap_err();
    match &err {
        StateError::WrongState { vm, found, to, .. } => {
            assert_eq!(
                (vm.as_str(), *found, *to),
                ("alpha", VmState::Starting, VmState::Starting)
            );
        }
        other => panic!("expected WrongState, got {other:?}"),
    }
    assert!(err.to_string().contains("created, stopped"), "{err}");
    assert_eq!(
        db.get_vm("id-a").unwrap().unwrap().updated_at,
        starting.updated_at
    );
}

#[test]
fn image_and_kernel_round_trip() {
    let db = StateDb::open_in_memory().unwrap();
    let k = kernel("generic-6.12");
    let mut registered = KernelRecord {
        name: "mine".into(),
        initrd_path: None,
        modules_path: None,
        sha256: None,
        source: ArtifactSource::Registered,
        managed: false,
        // Paths are stored byte for byte, UTF-8 or not.
        vmlinux_path: PathBuf::from(OsStr::from_bytes(b"/home/u/k\xff/vmlinux")),
        ..k.clone()
    };
    db.insert_kernel(&k).unwrap();
    db.insert_kernel(&registered).unwrap();
    assert_eq!(db.get_kernel("generic-6.12").unwrap().unwrap(), k);
    assert_eq!(db.get_kernel("mine").unwrap().unwrap(), registered);
    assert_eq!(db.get_kernel("missing").unwrap(), None);
    let names: Vec<_> = db
        .list_kernels()
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["generic-6.12", "mine"]);

    registered.managed = true;
    registered.vmlinux_path = "/var/lib/banger/kernels/mine/vmlinux".into();
    db.update_kernel(&registered).unwrap();
    assert_eq!(db.get_kernel("mine").unwrap().unwrap(), registered);
    let err = db.update_kernel(&kernel("missing")).unwrap_err();
    assert!(
        matches!(err, StateError::NotFound { kind: "kernel", .. }),
        "{err:?}"
    );
    let err = db.insert_kernel(&k).unwrap_err();
    assert!(
        matches!(err, StateError::AlreadyExists { kind: "kernel", .. }),
        "{err:?}"
    );

    let img = image("debian-bookworm", "generic-6.12");
    let mut minimal = image("debian-minimal", "generic-6.12");
    minimal.rootfs_sha256 = None;
    minimal.recipe_hash = None;
    minimal.source = ArtifactSource::Registered;
    minimal.managed = false;
    db.insert_image(&img).unwrap();
    db.insert_image(&minimal).unwrap();
    assert_eq!(db.get_image("debian-bookworm").unwrap().unwrap(), img);
    assert_eq!(db.get_image("debian-minimal").unwrap().unwrap(), minimal);
    assert_eq!(db.list_images().unwrap(), [img.clone(), minimal.clone()]);
    assert_eq!(
        db.images_using_kernel("generic-6.12").unwrap(),
        ["debian-bookworm", "debian-minimal"]
    );

    minimal.managed = true;
    minimal.rootfs_path = "/var/lib/banger/images/debian-minimal/rootfs.ext4".into();
    db.update_image(&minimal).unwrap();
    assert_eq!(db.get_image("debian-minimal").unwrap().unwrap(), minimal);
    let err = db.insert_image(&img).unwrap_err();
    assert!(
        matches!(err, StateError::AlreadyExists { kind: "image", .. }),
        "{err:?}"
    );
    let err = db.update_image(&image("missing", "k")).unwrap_err();
    assert!(
        matches!(err, StateError::NotFound { kind: "image", .. }),
        "{err:?}"
    );

    assert!(db.delete_image("debian-minimal").unwrap());
    assert!(!db.delete_image("debian-minimal").unwrap());
    assert!(db.delete_kernel("mine").unwrap());
    assert_eq!(db.get_kernel("mine").unwrap(), None);
}

#[test]
fn delete_refuses_while_in_use_and_names_the_users() {
    let db = StateDb::open_in_memory().unwrap();
    db.insert_kernel(&kernel("generic-6.12")).unwrap();
    db.insert_image(&image("debian-bookworm", "generic-6.12"))
        .unwrap();
    db.insert_vm(&vm("id-a", "alpha")).unwrap();
    let mut b = vm("id-b", "beta");
    b.kernel = "generic-6.12".into();
    db.insert_vm(&b).unwrap();
    assert_eq!(
        db.vms_using_image("debian-bookworm").unwrap(),
        ["alpha", "beta"]
    );
    assert_eq!(
        db.vms_using_kernel("generic-6.12").unwrap(),
        ["alpha", "beta"]
    );

    let err = db.delete_image("debian-bookworm").unwrap_err();
    match &err {
        StateError::InUse {
            kind: "image",
            key,
            users,
            ..
        } => {
            assert_eq!(key, "debian-bookworm");
            assert_eq!(users, &["VM alpha", "VM beta"]);
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(err.to_string().contains("VM alpha, VM beta"), "{err}");
    let err = db.delete_kernel("generic-6.12").unwrap_err();
    assert!(
        matches!(&err, StateError::InUse { users, .. }
            if users == &["image debian-bookworm", "VM alpha", "VM beta"]),
        "{err:?}"
    );
    assert!(db.get_image("debian-bookworm").unwrap().is_some());

    db.delete_vm("id-a").unwrap();
    db.delete_vm("id-b").unwrap();
    assert!(db.delete_image("debian-bookworm").unwrap());
    assert!(db.delete_kernel("generic-6.12").unwrap());
}

#[test]
fn sessions_track_activity_and_cascade_with_their_vm() {
    let db = StateDb::open_in_memory().unwrap();
    db.insert_vm(&vm("id-a", "alpha")).unwrap();
    db.insert_vm(&vm("id-b", "beta")).unwrap();
    let t0 = Timestamp::from_unix_millis(1_700_000_100_000);
    let shell = SessionRecord {
        id: "s-1".into(),
        vm_id: "id-a".into(),
        kind: SessionKind::Shell,
        command: None,
        started_at: t0,
        last_activity_at: t0,
        ended_at: None,
        exit_code: None,
    };
    let cmd = SessionRecord {
        id: "s-2".into(),
        vm_id: "id-b".into(),
        kind: SessionKind::Command,
        command: Some("make test".into()),
        ..shell.clone()
    };
    db.insert_session(&shell).unwrap();
    db.insert_session(&cmd).unwrap();
    assert_eq!(db.get_session("s-1").unwrap().unwrap(), shell);
    assert_eq!(
        db.get_vm("id-a").unwrap().unwrap().last_activity_at,
        Some(t0)
    );
    assert_eq!(
        db.list_sessions(None).unwrap(),
        [shell.clone(), cmd.clone()]
    );
    assert_eq!(
        db.list_sessions(Some("id-b")).unwrap(),
        std::slice::from_ref(&cmd)
    );

    let touched = db.touch_session("s-1").unwrap();
    assert!(touched.last_activity_at > t0);
    assert_eq!(
        db.get_vm("id-a").unwrap().unwrap().last_activity_at,
        Some(touched.last_activity_at)
    );

    let ended = db.end_session("s-2", Some(7)).unwrap();
    assert_eq!(ended.exit_code, Some(7));
    assert_eq!(ended.ended_at, Some(ended.last_activity_at));
    assert_eq!(db.get_session("s-2").unwrap().unwrap(), ended);

    let orphan = SessionRecord {
        id: "s-3".into(),
        vm_id: "missing".into(),
        ..shell.clone()
    };
    let err = db.insert_session(&orphan).unwrap_err();
    assert!(
        matches!(&err, StateError::NotFound { kind: "VM", .. }),
        "{err:?}"
    );
    let err = db.insert_session(&shell).unwrap_err();
    assert!(
        matches!(
            &err,
            StateError::AlreadyExists {
                kind: "session",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        db.touch_session("missing"),
        Err(StateError::NotFound { .. })
    ));

    db.delete_vm("id-a").unwrap();
    assert_eq!(db.get_session("s-1").unwrap(), None);
    assert!(db.delete_session("s-2").unwrap());
    assert!(!db.delete_session("s-2").unwrap());
}
