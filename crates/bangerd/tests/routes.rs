//! Every route of `banger_wire::routes::ALL` (the ones the CLI builds its
//! requests from) is served by a real `bangerd`: none falls through to the
//! router's "no such endpoint" 404 or its 405. A route added to the list but
//! not to the router, or registered under another path or method, fails here.

mod common;

use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::routes::{self, Method, RouteInfo};
use common::{curl, Daemon, TestEnv};

/// A name no VM, image or kernel has: the routes answer "no such VM" (a 404
/// from the handler, not from the router) or do nothing.
const NAME: &str = "route-check-none";

/// The request for `route`: POST bodies carry an unknown field, so every
/// JSON route rejects them before acting (no network setup, no VM create).
fn request(route: &RouteInfo) -> Vec<String> {
    let path = format!(
        "http://x{}",
        route
            .path
            .replace("{name}", NAME)
            .replace("{session}", NAME)
    );
    let mut args = vec!["-X".to_owned(), route.method.to_string()];
    if route.method == Method::Post {
        args.extend([
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "--data".to_owned(),
            r#"{"route_check_unknown_field":1}"#.to_owned(),
        ]);
    }
    args.push(path);
    args
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env).await;
    // Shutdown stops the daemon: ask it last.
    let (last, first): (Vec<&RouteInfo>, Vec<&RouteInfo>) = routes::ALL
        .iter()
        .partition(|r| r.path == routes::SHUTDOWN.path());
    assert_eq!(last.len(), 1);
    let mut unserved = Vec::new();
    for route in first.into_iter().chain(last) {
        let args = request(route);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&env.socket(), &args);
        let fallthrough = match code {
            405 => true,
            404 => {
                let err: ApiError = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{route:?}: 404 body {body:?}: {e}"));
                assert_eq!(err.code, ErrorCode::NotFound, "{route:?}");
                err.message.starts_with("no such endpoint")
            }
            _ => false,
        };
        if fallthrough {
            unserved.push(format!("{} {} -> {code} {body}", route.method, route.path));
        }
    }
    assert!(
        unserved.is_empty(),
        "routes the CLI uses that bangerd does not serve:\n{}",
        unserved.join("\n")
    );
    assert!(daemon.wait_exit().success(), "log:\n{}", env.log());
}

/// The check above can tell a missing route from a missing VM.
#[tokio::test]
async fn an_unserved_route_is_told_apart_from_a_missing_vm() {
    let env = TestEnv::new();
    let _daemon = Daemon::start(&env).await;
    let (code, body) = curl(
        &env.socket(),
        &["http://x/v1/vms/route-check-none/frobnicate"],
    );
    assert_eq!(code, 404);
    assert!(body.contains("no such endpoint"), "{body}");
    let (code, body) = curl(&env.socket(), &["http://x/v1/vms/route-check-none"]);
    assert_eq!(code, 404);
    assert!(!body.contains("no such endpoint"), "{body}");
    let (code, _) = curl(&env.socket(), &["-X", "PUT", "http://x/v1/vms"]);
    assert_eq!(code, 405);
}
