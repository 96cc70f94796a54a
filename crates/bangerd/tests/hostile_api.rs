//! Hostile requests to a real `bangerd` over its Unix socket: 10,000 request
//! bodies that do not parse as the endpoint's type, and 10,000 hostile path
//! names. Every one is refused with a 4xx and a JSON error (a body that does
//! not parse is exactly 400 `bad_request`), never a 5xx, never a dropped
//! connection (deleting a valid name that does not exist is the one
//! success: `existed: false`); afterwards the daemon still serves and its VM, image and
//! kernel lists are what they were.
//!
//! Bodies that *do* parse are skipped rather than sent: they would really
//! create VMs or touch the network.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use banger_fuzz::{noise, CASES};
use banger_wire::api::{ApiError, ErrorCode};
use common::{Daemon, TestEnv};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        // Generated bodies that parse are skipped, not sent.
        max_global_rejects: CASES,
        ..banger_fuzz::config()
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(socket: &Path, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response to {method} {target}: {out:?}"));
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[head_end + 4..].to_vec())
}

fn parses<T: DeserializeOwned>(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace) || serde_json::from_slice::<T>(body).is_ok()
}

/// The POST endpoints with a JSON body, and whether a body parses as its
/// request type.
type Endpoint = (&'static str, fn(&[u8]) -> bool);

const ENDPOINTS: &[Endpoint] = &[
    ("/v1/vms", parses::<banger_wire::vm::VmCreateRequest>),
    (
        "/v1/vms/fuzz/start",
        parses::<banger_wire::vm::VmStartRequest>,
    ),
    (
        "/v1/vms/fuzz/stop",
        parses::<banger_wire::vm::VmStopRequest>,
    ),
    (
        "/v1/vms/fuzz/restart",
        parses::<banger_wire::vm::VmStopRequest>,
    ),
    (
        "/v1/vms/fuzz/activity",
        parses::<banger_wire::vm::VmActivityRequest>,
    ),
    ("/v1/vms/fuzz/timings", parses::<banger_wire::vm::VmTimings>),
    (
        "/v1/images/register",
        parses::<banger_wire::image::ImageRegisterRequest>,
    ),
    (
        "/v1/images/fuzz/pull",
        parses::<banger_wire::image::PullRequest>,
    ),
    (
        "/v1/kernels/fuzz/pull",
        parses::<banger_wire::image::PullRequest>,
    ),
    (
        "/v1/network/setup",
        parses::<banger_wire::api::NetworkSetupRequest>,
    ),
    (
        "/v1/network/teardown",
        parses::<banger_wire::api::NetworkTeardownRequest>,
    ),
];

const FIELDS: &[&str] = &[
    "name",
    "image",
    "vcpu",
    "memory_mib",
    "disk_size",
    "force",
    "path",
    "rootfs",
    "kernel",
    "workspace",
    "x",
];

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1e308)),
        prop::sample::select(vec![
            "",
            "x",
            "../../etc/passwd",
            "/etc/shadow",
            "\u{1b}[2J",
            "a b",
            "debian",
            "8G",
            "-1",
        ])
        .prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!([[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]])),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..4)
        .prop_map(|fields| {
            let o: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            serde_json::to_vec(&Value::Object(o)).unwrap()
        });
    prop_oneof![
        4 => object,
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (0..200usize, any::<u64>()).prop_map(|(n, s)| noise(n, s)),
        1 => prop::sample::select(vec![
            &b"{"[..],
            b"{\"name\":",
            b"\xef\xbb\xbf{}",
            b"{}{}",
            b"null",
            b"{\"name\":\"a\",\"name\":\"b\"}",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                char::from(*b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn name_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "x", "..", "%2e%2e", "..%2F..%2Fetc", "%00", "a%20b", "A", "%FF", "-rf", ".", "%2F",
            "sandbox", "debian-bookworm", "generic-6.12",
        ])
        .prop_map(str::to_owned),
        1 => Just("a".repeat(300)),
        2 => (0..40usize, any::<u64>()).prop_map(|(n, s)| percent_encode(&noise(n, s))),
    ]
}

fn api_error(status: u16, body: &[u8]) -> Result<ApiError, TestCaseError> {
    prop_assert!(
        (400..500).contains(&status),
        "status {} body {}",
        status,
        String::from_utf8_lossy(body)
    );
    let e: ApiError = serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!(
            "not an ApiError ({e}): {}",
            String::from_utf8_lossy(body)
        ))
    })?;
    prop_assert!(!e.message.is_empty());
    Ok(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_with_4xx() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env).await;
    let socket = daemon.socket.clone();
    let lists = |socket: &Path| -> Vec<(u16, Vec<u8>)> {
        ["/v1/vms", "/v1/images", "/v1/kernels"]
            .iter()
            .map(|p| http(socket, "GET", p, b""))
            .collect()
    };
    let socket2 = socket.clone();
    tokio::task::spawn_blocking(move || {
        let socket = socket2;
        let before = lists(&socket);

        let mut runner = TestRunner::new(config());
        runner
            .run(
                &(prop::sample::select(ENDPOINTS), body()),
                |((path, parses), body)| {
                    prop_assume!(!parses(&body));
                    let (status, reply) = http(&socket, "POST", path, &body);
                    let e = api_error(status, &reply)?;
                    prop_assert_eq!(status, 400);
                    prop_assert_eq!(e.code, ErrorCode::BadRequest);
                    Ok(())
                },
            )
            .unwrap();

        let mut runner = TestRunner::new(config());
        runner
            .run(
                &(
                    prop::sample::select(vec!["GET", "DELETE"]),
                    prop::sample::select(vec!["vms", "images", "kernels"]),
                    name_segment(),
                    prop::sample::select(vec!["", "/logs", "/ports", "/timings"]),
                ),
                |(method, kind, name, tail)| {
                    let tail = if kind == "vms" && method == "GET" {
                        tail
                    } else {
                        ""
                    };
                    let (status, reply) =
                        http(&socket, method, &format!("/v1/{kind}/{name}{tail}"), b"");
                    // Deleting a valid name that does not exist is an
                    // idempotent success (`existed: false`); anything else
                    // is refused.
                    if method == "DELETE" && status == 200 {
                        let v: Value = serde_json::from_slice(&reply).unwrap();
                        prop_assert_eq!(&v["existed"], &Value::Bool(false));
                    } else {
                        api_error(status, &reply)?;
                    }
                    Ok(())
                },
            )
            .unwrap();

        assert_eq!(before, lists(&socket), "a refused request changed state");
    })
    .await
    .unwrap();
    // Still serving.
    daemon.client().status().await.unwrap();
}
