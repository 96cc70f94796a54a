//! Every route of the `bangerd` API, typed: its method, its path template
//! (axum's syntax: `{name}` for the VM, image or kernel, and `{session}` for
//! a session of that VM), the request body
//! and the answer. The CLI builds its requests from these constants and the
//! daemon registers its router with the same ones, so a path cannot drift
//! between the two; [`ALL`] lists them for the daemon's test that every
//! route is served.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::api::ShutdownResponse;
use crate::api::{DaemonStatus, NetworkReport, NetworkSetupRequest, NetworkTeardownRequest};
use crate::image::{
    ArtifactDeleted, BuildRequest, ImageInfo, ImageList, ImageRegisterRequest, ImportRequest,
    InstallReport, KernelInfo, KernelList, PromoteRequest, PullRequest,
};
use crate::session::{
    SessionInfo, SessionKillRequest, SessionList, SessionLogLine, SessionStartRequest,
    SessionStopRequest,
};
use crate::vm::{
    VmActivityRequest, VmCreateRequest, VmDeleted, VmInfo, VmList, VmPorts, VmStartRequest,
    VmStopRequest, VmTimings,
};

/// HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// One JSON document of the route's answer type.
    Json,
    /// NDJSON [`crate::api::StreamEvent`]s ending in `done` with the answer
    /// type as its result.
    Stream,
    /// Plain bytes (a log).
    Text,
    /// NDJSON: one answer-type value per line, until the body ends.
    Lines,
    /// A file download (an export archive).
    Download,
}

/// The body of a request that has none (GET, DELETE, and POSTs without
/// settings); serialized as `{}` when a POST needs one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// The answer type of a route whose answer is not JSON ([`Answer::Text`],
/// [`Answer::Download`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {}

/// One route: `Req` is its request body, `Resp` its answer (the `done`
/// result of a streamed route).
pub struct Route<Req, Resp> {
    /// Method and path template, as [`ALL`] lists them.
    pub info: RouteInfo,
    types: PhantomData<fn(Req) -> Resp>,
}

/// A route without its types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    /// Path template: `/v1/vms/{name}`.
    pub path: &'static str,
    pub answer: Answer,
}

impl<Req, Resp> Route<Req, Resp> {
    const fn new(method: Method, path: &'static str, answer: Answer) -> Self {
        Route {
            info: RouteInfo {
                method,
                path,
                answer,
            },
            types: PhantomData,
        }
    }

    /// The path template, which is what the daemon's router registers.
    pub const fn path(&self) -> &'static str {
        self.info.path
    }

    pub const fn method(&self) -> Method {
        self.info.method
    }

    /// The request target of a route without a path parameter.
    ///
    /// # Panics
    /// When the route has a `{name}` parameter (a bug in the caller: use
    /// [`Route::at`]).
    pub fn target(&self) -> Target<Req, Resp> {
        assert!(
            !self.info.path.contains('{'),
            "{} needs a name: use Route::at",
            self.info.path
        );
        Target::new(self.info.method, self.info.path.to_owned())
    }

    /// The request target with `{name}` set to `name`, percent-encoded as
    /// one path segment (a name like `a/../b` cannot reach another route).
    ///
    /// # Panics
    /// When the route has no `{name}` parameter (a bug in the caller).
    pub fn at(&self, name: &str) -> Target<Req, Resp> {
        let (head, tail) = self
            .info
            .path
            .split_once("{name}")
            .unwrap_or_else(|| panic!("{} has no {{name}} parameter", self.info.path));
        let mut path = String::from(head);
        escape_into(&mut path, name, false);
        path.push_str(tail);
        Target::new(self.info.method, path)
    }

    /// The request target of a session route: `{name}` set to the VM and
    /// `{session}` to the session, each percent-encoded as one segment.
    ///
    /// # Panics
    /// When the route has no `{session}` parameter (a bug in the caller).
    pub fn at_session(&self, vm: &str, session: &str) -> Target<Req, Resp> {
        let mut target = self.at(vm);
        let (head, tail) = target
            .path
            .split_once("{session}")
            .unwrap_or_else(|| panic!("{} has no {{session}} parameter", self.info.path));
        let mut path = String::from(head);
        escape_into(&mut path, session, false);
        path.push_str(tail);
        target.path = path;
        target
    }
}

impl<Req, Resp> std::fmt::Debug for Route<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.info.method, self.info.path)
    }
}

/// A concrete request of one route: method and path (with its query).
pub struct Target<Req, Resp> {
    pub method: Method,
    /// The request target: escaped path and query.
    pub path: String,
    has_query: bool,
    types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Target<Req, Resp> {
    fn new(method: Method, path: String) -> Self {
        Target {
            method,
            path,
            has_query: false,
            types: PhantomData,
        }
    }

    /// Add `key=value` to the query string (`value` percent-encoded).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.path.push(if self.has_query { '&' } else { '?' });
        self.has_query = true;
        escape_into(&mut self.path, key, true);
        self.path.push('=');
        escape_into(&mut self.path, value, true);
        self
    }
}

impl<Req, Resp> std::fmt::Debug for Target<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Percent-encode all but RFC 3986's unreserved characters (and `/` in a
/// query value, where it is harmless and keeps paths readable in logs).
fn escape_into(out: &mut String, s: &str, query: bool) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (query && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

use Answer::{Download, Json, Lines, Stream, Text};
use Method::{Delete, Get, Post};

pub const STATUS: Route<NoBody, DaemonStatus> = Route::new(Get, "/v1/status", Json);
/// The daemon stops after answering.
pub const SHUTDOWN: Route<NoBody, ShutdownResponse> = Route::new(Post, "/v1/shutdown", Json);
/// The effective config, as JSON (its shape follows the config file).
pub const CONFIG: Route<NoBody, serde_json::Value> = Route::new(Get, "/v1/config", Json);
pub const NETWORK_SETUP: Route<NetworkSetupRequest, NetworkReport> =
    Route::new(Post, "/v1/network/setup", Stream);
pub const NETWORK_TEARDOWN: Route<NetworkTeardownRequest, NetworkReport> =
    Route::new(Post, "/v1/network/teardown", Stream);

pub const VM_LIST: Route<NoBody, VmList> = Route::new(Get, "/v1/vms", Json);
pub const VM_CREATE: Route<VmCreateRequest, VmInfo> = Route::new(Post, "/v1/vms", Stream);
pub const VM_SHOW: Route<NoBody, VmInfo> = Route::new(Get, "/v1/vms/{name}", Json);
/// Query `force=true`: delete a running VM.
pub const VM_DELETE: Route<NoBody, VmDeleted> = Route::new(Delete, "/v1/vms/{name}", Json);
pub const VM_START: Route<VmStartRequest, VmInfo> =
    Route::new(Post, "/v1/vms/{name}/start", Stream);
pub const VM_STOP: Route<VmStopRequest, VmInfo> = Route::new(Post, "/v1/vms/{name}/stop", Stream);
pub const VM_RESTART: Route<VmStopRequest, VmInfo> =
    Route::new(Post, "/v1/vms/{name}/restart", Stream);
/// The serial console log; query `follow=true` keeps the body open.
pub const VM_LOGS: Route<NoBody, Raw> = Route::new(Get, "/v1/vms/{name}/logs", Text);
pub const VM_PORTS: Route<NoBody, VmPorts> = Route::new(Get, "/v1/vms/{name}/ports", Json);
pub const VM_ACTIVITY: Route<VmActivityRequest, VmInfo> =
    Route::new(Post, "/v1/vms/{name}/activity", Json);
pub const VM_TIMINGS: Route<NoBody, VmTimings> = Route::new(Get, "/v1/vms/{name}/timings", Json);
pub const VM_TIMINGS_PUT: Route<VmTimings, VmTimings> =
    Route::new(Post, "/v1/vms/{name}/timings", Json);
/// `vm workspace prepare`: the body is a tar stream, the settings are the
/// query ([`crate::workspace::WorkspaceParams`]).
pub const VM_WORKSPACE: Route<Raw, crate::workspace::WorkspaceReport> =
    Route::new(Post, "/v1/vms/{name}/workspace", Stream);

pub const IMAGE_LIST: Route<NoBody, ImageList> = Route::new(Get, "/v1/images", Json);
pub const IMAGE_REGISTER: Route<ImageRegisterRequest, ImageInfo> =
    Route::new(Post, "/v1/images/register", Json);
pub const IMAGE_IMPORT: Route<ImportRequest, InstallReport> =
    Route::new(Post, "/v1/images/import", Stream);
/// The request body is the file itself; query `name` labels it in messages.
pub const IMAGE_IMPORT_UPLOAD: Route<Raw, InstallReport> =
    Route::new(Post, "/v1/images/import/upload", Stream);
/// The archive; its index is in the [`crate::image::EXPORT_INDEX_HEADER`] header.
pub const IMAGE_EXPORT: Route<NoBody, Raw> = Route::new(Get, "/v1/images/{name}/export", Download);
pub const IMAGE_SHOW: Route<NoBody, ImageInfo> = Route::new(Get, "/v1/images/{name}", Json);
pub const IMAGE_DELETE: Route<NoBody, ArtifactDeleted> =
    Route::new(Delete, "/v1/images/{name}", Json);
pub const IMAGE_PULL: Route<PullRequest, InstallReport> =
    Route::new(Post, "/v1/images/{name}/pull", Stream);
pub const IMAGE_BUILD: Route<BuildRequest, InstallReport> =
    Route::new(Post, "/v1/images/{name}/build", Stream);
pub const IMAGE_PROMOTE: Route<PromoteRequest, ImageInfo> =
    Route::new(Post, "/v1/images/{name}/promote", Stream);

pub const KERNEL_LIST: Route<NoBody, KernelList> = Route::new(Get, "/v1/kernels", Json);
pub const KERNEL_SHOW: Route<NoBody, KernelInfo> = Route::new(Get, "/v1/kernels/{name}", Json);
pub const KERNEL_DELETE: Route<NoBody, ArtifactDeleted> =
    Route::new(Delete, "/v1/kernels/{name}", Json);
pub const KERNEL_PULL: Route<PullRequest, InstallReport> =
    Route::new(Post, "/v1/kernels/{name}/pull", Stream);
pub const KERNEL_BUILD: Route<BuildRequest, InstallReport> =
    Route::new(Post, "/v1/kernels/{name}/build", Stream);

/// Import an OCI image from a registry (docs/oci-import.md).
pub const OCI_PULL: Route<crate::image::OciPullRequest, crate::image::OciPullReport> =
    Route::new(Post, "/v1/oci/pull", Stream);

/// Every named session of every VM (completion).
pub const SESSION_NAMES: Route<NoBody, crate::session::SessionNames> =
    Route::new(Get, "/v1/sessions", Json);

/// A VM's sessions (docs/sessions.md).
pub const SESSION_LIST: Route<NoBody, SessionList> =
    Route::new(Get, "/v1/vms/{name}/sessions", Json);
pub const SESSION_START: Route<SessionStartRequest, SessionInfo> =
    Route::new(Post, "/v1/vms/{name}/sessions", Json);
pub const SESSION_SHOW: Route<NoBody, SessionInfo> =
    Route::new(Get, "/v1/vms/{name}/sessions/{session}", Json);
pub const SESSION_STOP: Route<SessionStopRequest, SessionInfo> =
    Route::new(Post, "/v1/vms/{name}/sessions/{session}/stop", Json);
pub const SESSION_KILL: Route<SessionKillRequest, SessionInfo> =
    Route::new(Post, "/v1/vms/{name}/sessions/{session}/kill", Json);
/// Query `stream=stdout|stderr|both`, `follow=true`, `tail=N`.
pub const SESSION_LOGS: Route<NoBody, SessionLogLine> =
    Route::new(Get, "/v1/vms/{name}/sessions/{session}/logs", Lines);

/// Every route, for tests and docs.
pub const ALL: &[RouteInfo] = &[
    STATUS.info,
    SHUTDOWN.info,
    CONFIG.info,
    NETWORK_SETUP.info,
    NETWORK_TEARDOWN.info,
    VM_LIST.info,
    VM_CREATE.info,
    VM_SHOW.info,
    VM_DELETE.info,
    VM_START.info,
    VM_STOP.info,
    VM_RESTART.info,
    VM_LOGS.info,
    VM_PORTS.info,
    VM_ACTIVITY.info,
    VM_TIMINGS.info,
    VM_TIMINGS_PUT.info,
    VM_WORKSPACE.info,
    IMAGE_LIST.info,
    IMAGE_REGISTER.info,
    IMAGE_IMPORT.info,
    IMAGE_IMPORT_UPLOAD.info,
    IMAGE_EXPORT.info,
    IMAGE_SHOW.info,
    IMAGE_DELETE.info,
    IMAGE_PULL.info,
    IMAGE_BUILD.info,
    IMAGE_PROMOTE.info,
    KERNEL_LIST.info,
    KERNEL_SHOW.info,
    KERNEL_DELETE.info,
    KERNEL_PULL.info,
    KERNEL_BUILD.info,
    OCI_PULL.info,
    SESSION_NAMES.info,
    SESSION_LIST.info,
    SESSION_START.info,
    SESSION_SHOW.info,
    SESSION_STOP.info,
    SESSION_KILL.info,
    SESSION_LOGS.info,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_escaped_path_segment() {
        assert_eq!(VM_START.at("web").path, "/v1/vms/web/start");
        assert_eq!(VM_SHOW.at("a/../b").path, "/v1/vms/a%2F..%2Fb");
        assert_eq!(IMAGE_PULL.at("a b/c").path, "/v1/images/a%20b%2Fc/pull");
        assert_eq!(VM_LIST.target().path, "/v1/vms");
    }

    #[test]
    fn queries_are_escaped() {
        let t = VM_DELETE.at("web").query("force", "true");
        assert_eq!(t.path, "/v1/vms/web?force=true");
        assert_eq!(t.method, Method::Delete);
        let t = IMAGE_IMPORT_UPLOAD
            .target()
            .query("name", "/tmp/a b&c=d.tar")
            .query("x", "1");
        assert_eq!(
            t.path,
            "/v1/images/import/upload?name=/tmp/a%20b%26c%3Dd.tar&x=1"
        );
    }

    #[test]
    fn session_routes_escape_both_names() {
        assert_eq!(
            SESSION_STOP.at_session("web", "a/../b").path,
            "/v1/vms/web/sessions/a%2F..%2Fb/stop"
        );
        assert_eq!(
            SESSION_LOGS
                .at_session("a b", "s")
                .query("stream", "both")
                .path,
            "/v1/vms/a%20b/sessions/s/logs?stream=both"
        );
        // A VM name that spells the placeholder cannot fill the session's.
        assert_eq!(
            SESSION_SHOW.at_session("{session}", "s").path,
            "/v1/vms/%7Bsession%7D/sessions/s"
        );
    }

    #[test]
    #[should_panic(expected = "no {session} parameter")]
    fn a_vm_route_has_no_session() {
        let _ = VM_SHOW.at_session("web", "s");
    }

    #[test]
    #[should_panic(expected = "needs a name")]
    fn a_parameterised_route_needs_its_name() {
        let _ = VM_SHOW.target();
    }

    #[test]
    fn every_route_is_listed_once_under_v1() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(r.path.starts_with(crate::api::API_PREFIX), "{r:?}");
            assert!(seen.insert((r.method, r.path)), "{r:?} listed twice");
            // axum's template syntax: `{name}` first, then `{session}`.
            let params = r.path.matches('{').count();
            let ok = match params {
                0 => true,
                1 => r.path.contains("{name}"),
                2 => r.path.find("{name}") < r.path.find("{session}") && r.path.contains("{name}"),
                _ => false,
            };
            assert!(ok, "{r:?}");
        }
    }
}
