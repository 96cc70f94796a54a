//! Wire types shared by every banger process.
//!
//! - [`api`]: the CLI ↔ `bangerd` HTTP/JSON API (`/v1/...`), its error body and
//!   the NDJSON progress stream used by long operations.
//! - [`helper`]: the `bangerd` ↔ `bangerd-root` typed request enum.
//! - [`guest`]: the per-VM config drive contents and the guest agent protocol.
//! - [`image`]: bodies of the `/v1/images` and `/v1/kernels` routes.
//! - [`install`]: `/etc/banger/install.toml`, the system-install metadata.
//! - [`routes`]: every API route, typed, shared by the CLI and the daemon.
//! - [`session`]: bodies of the `/v1/vms/{vm}/sessions` routes.
//! - [`units`]: byte sizes as written (`16G`) and shown (`1.5 GiB`).
//! - [`vm`]: bodies of the `/v1/vms` routes.
//! - [`vmm`]: backend, clone strategy and MAC types every process shares.
//!
//! Everything here is plain data: no I/O, so both sides of every socket agree
//! on the exact shapes and the parse layer can be tested without hardware.

pub mod api;
#[cfg(feature = "attach")]
pub mod attach;
pub mod guest;
pub mod helper;
pub mod image;
pub mod install;
pub mod routes;
pub mod session;
pub mod units;
pub mod vm;
pub mod vmm;

/// The banger version every binary reports (workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version rule, checked on the real types: requests are strict (a typo
/// in a field name is an error, not a silently ignored setting), answers are
/// tolerant (a daemon one release newer may add fields and enum values, and
/// the older CLI must still parse them).
#[cfg(test)]
mod version_skew {
    use crate::api::{ApiError, DaemonStatus, ErrorCode, LogLevel, StreamEvent};
    use crate::image::{ArtifactSource, ImageList, PullRequest};
    use crate::vm::{SpecSource, VmCreateRequest, VmInfo, VmStopRequest};

    #[test]
    fn status_with_added_fields_and_an_unknown_install_mode_parses() {
        let json = r#"{"pid":7,"version":"9.9.9","socket":"/s","uptime_secs":1,
            "state_dir":"/a","cache_dir":"/b","runtime_dir":"/c","backend":"qemu-tcg",
            "backend_reason":"no kvm","install_mode":"container","root_helper":null,
            "schema_version":12,"sessions":3,"features":{"snapshots":true}}"#;
        let s: DaemonStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.version, "9.9.9");
        assert_eq!(s.install_mode, "container");
        assert_eq!(s.schema_version, 12);
    }

    #[test]
    fn vm_info_with_added_fields_and_unknown_enum_values_parses() {
        let json = r#"{"id":"i","name":"web","state":"hibernated","image":"d","kernel":"k",
            "vcpu":2,"memory_mib":1024,"disk_bytes":1,"ip":null,"mac":"m","tap":null,
            "backend":"cloud-hypervisor","vmm_pid":null,"created_at":0,
            "last_activity_at":null,"last_error":null,"snapshot":"s1",
            "spec":{"vcpu":2,"vcpu_source":"preset","memory_mib":1024,"memory_source":"flag",
                    "disk_bytes":1,"disk_source":"config","note":"x"}}"#;
        let vm: VmInfo = serde_json::from_str(json).unwrap();
        let spec = vm.spec.unwrap();
        assert_eq!(spec.vcpu_source, SpecSource::Unknown);
        assert_eq!(spec.memory_source, SpecSource::Flag);
    }

    #[test]
    fn image_list_with_an_unknown_source_parses() {
        let json = r#"{"images":[{"name":"n","version":"1","arch":"x86_64","kernel":"k",
            "size_bytes":1,"source":"snapshot","managed":true,"rootfs":"/r","used_by":[],
            "digest":"sha256:00"}],"next_page":null}"#;
        let list: ImageList = serde_json::from_str(json).unwrap();
        assert_eq!(list.images[0].source, ArtifactSource::Unknown);
    }

    #[test]
    fn unknown_stream_events_levels_and_error_codes_parse() {
        let e: StreamEvent = serde_json::from_str(r#"{"event":"heartbeat","seq":1}"#).unwrap();
        assert_eq!(e, StreamEvent::Unknown);
        let e: StreamEvent =
            serde_json::from_str(r#"{"event":"log","level":"debug","message":"m","at":5}"#)
                .unwrap();
        assert_eq!(
            e,
            StreamEvent::Log {
                level: LogLevel::Unknown,
                message: "m".into()
            }
        );
        let e: StreamEvent = serde_json::from_str(
            r#"{"event":"error","error":{"code":"quota_exceeded","message":"m","hint":"h"}}"#,
        )
        .unwrap();
        let StreamEvent::Error { error } = e else {
            panic!("{e:?}")
        };
        assert_eq!(error.code, ErrorCode::Unknown);
        assert_eq!(error.code.http_status(), 500);
        let err: ApiError =
            serde_json::from_str(r#"{"code":"not_found","message":"m","details":[]}"#).unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
    }

    #[test]
    fn requests_still_reject_unknown_fields() {
        assert!(serde_json::from_str::<VmCreateRequest>(r#"{"nmae":"a"}"#).is_err());
        assert!(serde_json::from_str::<VmStopRequest>(r#"{"froce":true}"#).is_err());
        assert!(serde_json::from_str::<PullRequest>(r#"{"x":1}"#).is_err());
    }
}
