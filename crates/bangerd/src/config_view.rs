//! What the daemon reports about its configuration: the effective config as
//! JSON (`GET /v1/config`) and the VMM backend it resolves to.

use banger_config::{resolve_vm_defaults, Config, HostFacts};
use banger_host::probe::BackendChoice;

/// The effective config in the shape of `banger config show --json`:
/// `{ key: { "value": ..., "provenance": "..." } }` (keys sorted), unset
/// values null, `[vm_defaults]` resolved against this host.
pub fn effective_json(config: &Config) -> serde_json::Value {
    let vm = resolve_vm_defaults(config, &HostFacts::detect());
    let map = config
        .effective(&vm)
        .into_iter()
        .map(|row| {
            let value = row
                .value
                .as_ref()
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(serde_json::Value::Null);
            let entry = serde_json::json!({ "value": value, "provenance": row.provenance });
            (row.key.to_owned(), entry)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// The backend `vmm` resolves to on this host.
pub fn backend(config: &Config) -> BackendChoice {
    banger_host::probe::choose_backend(
        config.vmm.value,
        config.firecracker_bin.value.as_deref(),
        config.qemu_bin.value.as_deref(),
    )
}

/// One sentence why `choice` was made (with the problem, when VMs cannot
/// start with it), as `daemon status` shows it.
pub fn backend_reason(choice: &BackendChoice) -> String {
    match &choice.problem {
        Some(problem) => format!("{} (cannot start VMs: {problem})", choice.reason),
        None => choice.reason.clone(),
    }
}
