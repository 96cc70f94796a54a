//! Progress of an import, reported through a callback the caller supplies.

/// One report. `Bytes` reports arrive at most a few times a second per layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The manifest was resolved.
    Resolved {
        manifest_digest: String,
        layers: usize,
        total_bytes: u64,
    },
    /// A layer is already in the cache (verified again when it is applied).
    LayerCached { digest: String, size: u64 },
    /// Bytes of a layer download; `rate` is bytes per second so far.
    LayerBytes {
        digest: String,
        done: u64,
        total: u64,
        rate: u64,
    },
    /// A layer finished downloading (digest verified).
    LayerDone { digest: String, size: u64 },
    /// Applying layer `index` (0-based) of `count`.
    Apply {
        index: usize,
        count: usize,
        digest: String,
    },
    /// A step without counts.
    Note(String),
}

/// The callback; called from the thread doing the work, so keep it cheap.
pub type ProgressFn<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// Drops every report.
pub fn ignore(_: Event) {}
