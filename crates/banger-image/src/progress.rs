//! Progress reports of long operations (pull, install, build), shaped so the
//! daemon can forward them as `StreamEvent::Progress` unchanged.

/// Which part of an operation a [`Progress`] report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for another pull/build of the same name to finish.
    Wait,
    /// Downloading a bundle; `current`/`total` are bytes.
    Download,
    /// Unpacking and verifying a bundle from a local file; bytes.
    Unpack,
    /// Moving a verified bundle into place.
    Install,
    /// A step of a local build; `message` says which.
    Build,
    /// Packing installed files into a bundle (export).
    Pack,
}

impl Phase {
    /// Stable lowercase name, used as the `phase` of stream events.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Wait => "wait",
            Phase::Download => "download",
            Phase::Unpack => "unpack",
            Phase::Install => "install",
            Phase::Build => "build",
            Phase::Pack => "pack",
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub message: String,
    /// Bytes (or items) done, when countable.
    pub current: Option<u64>,
    /// Bytes (or items) expected, when known.
    pub total: Option<u64>,
}

impl Progress {
    /// A report without counts.
    pub fn note(phase: Phase, message: impl Into<String>) -> Progress {
        Progress {
            phase,
            message: message.into(),
            current: None,
            total: None,
        }
    }

    /// A report with byte counts.
    pub fn bytes(
        phase: Phase,
        message: impl Into<String>,
        current: u64,
        total: Option<u64>,
    ) -> Progress {
        Progress {
            phase,
            message: message.into(),
            current: Some(current),
            total,
        }
    }
}

/// The callback that receives [`Progress`] reports. It is called from the
/// thread doing the work, so it must be cheap (e.g. send on a channel).
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A callback that drops every report.
pub fn ignore(_: Progress) {}
