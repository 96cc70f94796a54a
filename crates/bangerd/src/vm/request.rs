//! Turning a `POST /v1/vms` body into a checked VM size and name, before
//! anything is created: flags win over `[vm_defaults]`, which win over host
//! heuristics; every value keeps where it came from for the `spec:` line.

use banger_config::{resolve_vm_defaults, Config, HostFacts, Provenance};
use banger_vm::identity::validate_vm_name;
use banger_wire::vm::{SpecSource, VmCreateRequest, VmSizeSpec};

use super::VmError;

const MIB: u64 = 1 << 20;

/// A create request with every value resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCreate {
    pub name: String,
    pub image: String,
    pub size: VmSizeSpec,
    pub no_start: bool,
}

/// Resolve and check `req` against the config and the host. `generated_name`
/// is used when the request names no VM.
pub fn resolve_create(
    req: &VmCreateRequest,
    config: &Config,
    host: &HostFacts,
    generated_name: impl FnOnce() -> String,
) -> Result<ResolvedCreate, VmError> {
    let name = match &req.name {
        Some(n) => n.clone(),
        None => generated_name(),
    };
    validate_vm_name(&name).map_err(VmError::InvalidName)?;
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| config.default_image_name.value.clone());
    if image.is_empty() {
        return Err(VmError::InvalidRequest {
            message: "image name must not be empty".into(),
        });
    }
    let defaults = resolve_vm_defaults(config, host);
    let (vcpu, vcpu_source) = resolve_vcpu(req, &defaults)?;
    let (memory_mib, memory_source) = resolve_memory(req, &defaults, host)?;
    let (disk_bytes, disk_source) = resolve_disk(req, &defaults)?;
    Ok(ResolvedCreate {
        name,
        image,
        size: VmSizeSpec {
            vcpu,
            vcpu_source,
            memory_mib,
            memory_source,
            disk_bytes,
            disk_source,
        },
        no_start: req.no_start,
    })
}

fn invalid(message: String) -> VmError {
    VmError::InvalidRequest { message }
}

/// `--vcpu`, else `[vm_defaults]`, within 1 and the VMM's maximum.
fn resolve_vcpu(
    req: &VmCreateRequest,
    defaults: &banger_config::VmDefaults,
) -> Result<(u32, SpecSource), VmError> {
    let (vcpu, vcpu_source) = match req.vcpu {
        Some(v) => (v, SpecSource::Flag),
        None => (defaults.vcpu.value, source(defaults.vcpu.provenance)),
    };
    let max = banger_vmm::spec::MAX_VCPUS;
    if !(1..=max).contains(&vcpu) {
        return Err(invalid(format!(
            "vcpu {vcpu} is out of range: use 1 to {max}"
        )));
    }
    Ok((vcpu, vcpu_source))
}

/// `--memory`, else `[vm_defaults]`, within banger's limits and this host's RAM.
fn resolve_memory(
    req: &VmCreateRequest,
    defaults: &banger_config::VmDefaults,
    host: &HostFacts,
) -> Result<(u64, SpecSource), VmError> {
    let (memory_mib, memory_source) = match &req.memory {
        Some(text) => (
            parse_memory(text)
                .map_err(|reason| invalid(format!("invalid memory {text:?}: {reason}")))?,
            SpecSource::Flag,
        ),
        None => (
            defaults.memory_mib.value,
            source(defaults.memory_mib.provenance),
        ),
    };
    let min = u64::from(banger_vmm::spec::MIN_MEMORY_MIB);
    if memory_mib < min {
        return Err(invalid(format!(
            "memory {memory_mib} MiB is below the minimum of {min} MiB"
        )));
    }
    if host.mem_bytes > 0 && memory_mib.saturating_mul(MIB) > host.mem_bytes {
        return Err(invalid(format!(
            "memory {} is above this host's RAM ({}); ask for less with --memory",
            human(memory_mib * MIB),
            human(host.mem_bytes)
        )));
    }
    let max = banger_vmm::spec::MAX_MEMORY_MIB;
    if memory_mib > u64::from(max) {
        return Err(invalid(format!(
            "memory {memory_mib} MiB is above banger's limit of {max} MiB"
        )));
    }
    Ok((memory_mib, memory_source))
}

/// `--disk-size`, else `[vm_defaults]`, at least the work disk's minimum.
fn resolve_disk(
    req: &VmCreateRequest,
    defaults: &banger_config::VmDefaults,
) -> Result<(u64, SpecSource), VmError> {
    let (disk_bytes, disk_source) = match &req.disk_size {
        Some(text) => (
            banger_config::parse_size(text)
                .map_err(|reason| invalid(format!("invalid disk size: {reason}")))?,
            SpecSource::Flag,
        ),
        None => (
            defaults.disk_bytes.value,
            source(defaults.disk_bytes.provenance),
        ),
    };
    let min = banger_vm::disk::MIN_WORK_DISK_BYTES;
    if disk_bytes < min {
        return Err(invalid(format!(
            "disk size {} is below the minimum of {}",
            human(disk_bytes),
            human(min)
        )));
    }
    Ok((disk_bytes, disk_source))
}

/// Memory: a size with a binary unit (`1G`, `512M`), or a plain number of MiB.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map_err(|_| "number too large".to_owned());
    }
    let bytes = banger_config::parse_size(t).map_err(|e| e.to_string())?;
    if bytes % MIB != 0 {
        return Err(format!("{text:?} is not a whole number of MiB"));
    }
    Ok(bytes / MIB)
}

fn source(p: Provenance) -> SpecSource {
    match p {
        Provenance::Config | Provenance::Env => SpecSource::Config,
        Provenance::Host => SpecSource::Host,
        Provenance::BuiltIn => SpecSource::BuiltIn,
    }
}

pub use banger_wire::units::human_bytes as human;

/// The `spec:` line `banger vm create` prints first.
pub fn spec_line(size: &VmSizeSpec) -> String {
    format!(
        "spec: vcpu {} ({}), memory {} ({}), disk {} ({})",
        size.vcpu,
        size.vcpu_source,
        human(size.memory_mib * MIB),
        size.memory_source,
        human(size.disk_bytes),
        size.disk_source
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn host() -> HostFacts {
        HostFacts {
            cpus: 8,
            mem_bytes: 16 * GIB,
        }
    }

    fn resolve(req: VmCreateRequest) -> Result<ResolvedCreate, VmError> {
        let config = Config::defaults(Path::new("/home/a"));
        resolve_create(&req, &config, &host(), || "vm-gen".into())
    }

    fn message(r: Result<ResolvedCreate, VmError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn flags_win_and_are_marked_as_flags() {
        let r = resolve(VmCreateRequest {
            name: Some("web".into()),
            vcpu: Some(3),
            memory: Some("1536".into()),
            disk_size: Some("2G".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.name, "web");
        assert_eq!(r.image, banger_config::DEFAULT_IMAGE_NAME);
        assert_eq!(
            r.size,
            VmSizeSpec {
                vcpu: 3,
                vcpu_source: SpecSource::Flag,
                memory_mib: 1536,
                memory_source: SpecSource::Flag,
                disk_bytes: 2 * GIB,
                disk_source: SpecSource::Flag,
            }
        );
        assert_eq!(
            spec_line(&r.size),
            "spec: vcpu 3 (flag), memory 1.5 GiB (flag), disk 2 GiB (flag)"
        );
    }

    #[test]
    fn defaults_come_from_the_host_and_built_ins() {
        let r = resolve(VmCreateRequest::default()).unwrap();
        assert_eq!(r.name, "vm-gen");
        assert_eq!((r.size.vcpu, r.size.vcpu_source), (2, SpecSource::Host));
        assert_eq!(
            (r.size.memory_mib, r.size.memory_source),
            (2048, SpecSource::Host)
        );
        assert_eq!(r.size.disk_source, SpecSource::BuiltIn);
    }

    #[test]
    fn bad_input_is_explained() {
        let bad_name = message(resolve(VmCreateRequest {
            name: Some("Bad_Name".into()),
            ..Default::default()
        }));
        assert!(
            bad_name.contains("invalid VM name \"Bad_Name\""),
            "{bad_name}"
        );
        let too_big = message(resolve(VmCreateRequest {
            memory: Some("64G".into()),
            ..Default::default()
        }));
        assert!(
            too_big.contains("memory 64 GiB is above this host's RAM (16 GiB)"),
            "{too_big}"
        );
        let disk = message(resolve(VmCreateRequest {
            disk_size: Some("lots".into()),
            ..Default::default()
        }));
        assert!(disk.contains("invalid disk size: \"lots\""), "{disk}");
        let no_unit = message(resolve(VmCreateRequest {
            disk_size: Some("10".into()),
            ..Default::default()
        }));
        assert!(no_unit.contains("has no unit"), "{no_unit}");
        let small = message(resolve(VmCreateRequest {
            memory: Some("16M".into()),
            ..Default::default()
        }));
        assert!(small.contains("below the minimum of 64 MiB"), "{small}");
        let vcpu = message(resolve(VmCreateRequest {
            vcpu: Some(0),
            ..Default::default()
        }));
        assert!(vcpu.contains("vcpu 0 is out of range"), "{vcpu}");
    }

    #[test]
    fn memory_accepts_units_or_mib() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert_eq!(parse_memory("768MiB").unwrap(), 768);
        assert!(parse_memory("1536K")
            .unwrap_err()
            .contains("whole number of MiB"));
        assert!(parse_memory("2GB").unwrap_err().contains("ambiguous"));
    }
}
