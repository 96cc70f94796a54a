//! Host-side knowledge shared by the CLI, `bangerd` and `bangerd-root`:
//! where banger keeps its files ([`paths`]) and what this host can do
//! ([`probe`], used by `banger doctor` and backend selection).

pub mod lock;
pub mod paths;
pub mod probe;
