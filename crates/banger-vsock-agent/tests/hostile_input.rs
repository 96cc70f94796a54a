//! Hostile bytes on both ends of the agent channel, 10,000 cases each:
//!
//! - the host's client reading answers from a guest that lies (a guest is
//!   untrusted: its agent may be replaced by anything);
//! - the agent reading request lines (anything that reaches its port);
//! - the agent's `/proc` parsers.
//!
//! None may panic; every refusal is an error value, and the client never
//! reuses a connection whose answers it lost track of.

use std::io::Cursor;
use std::path::Path;

use banger_agent_client::{AgentClient, AgentClientError, MAX_RESPONSE_LINE};
use banger_fuzz::{cheap_bytes, config};
use banger_vsock_agent::procfs::{self, Proto};
use banger_vsock_agent::server::{serve_stream, AgentContext};
use banger_wire::guest::AgentResponse;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

/// Text of up to `max` characters from `alphabet`, plus now and then any
/// character: regex strategies cost more than the parsers they feed.
fn cheap_text(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    cheap_bytes(0..max).prop_map(move |b| {
        b.iter()
            .map(|&x| match chars.get(usize::from(x) % (chars.len() + 2)) {
                Some(c) => *c,
                None => char::from_u32(u32::from(x) * 331).unwrap_or('\u{fffd}'),
            })
            .collect()
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(65536)),
        Just(json!(-1)),
        prop::sample::select(vec![
            "",
            "tcp",
            "udp6",
            "0.0.0.0",
            "::",
            "\u{1b}[2J\u{1b}]0;pwned\u{7}",
            "sshd",
            "health",
            "ports",
            "stats",
            "error",
        ])
        .prop_map(Value::from),
        cheap_text("abc \\\"\u{1b}[;", 16).prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!({ "Ok": null })),
        Just(json!({ "Err": "apply failed" })),
    ]
}

/// A response object: a real variant's shape with fields replaced, dropped
/// or added, or a wrong kind.
fn response_value() -> impl Strategy<Value = Value> {
    let base = prop::sample::select(vec![
        json!({"kind": "health", "version": "0.1.0", "uptime_secs": 3, "hostname": "vm", "applied": {"Ok": null}}),
        json!({"kind": "ports", "ports": [{"proto": "tcp", "address": "0.0.0.0", "port": 22, "pid": 1, "process": "sshd"}]}),
        json!({"kind": "stats", "load1": 0.5, "load5": 0.1, "load15": 0.0, "mem_total_bytes": 1, "mem_available_bytes": 1, "root_disk": {"mount": "/", "total_bytes": 2, "used_bytes": 1}, "work_disk": null}),
        json!({"kind": "error", "message": "no"}),
        json!({"kind": "surprise"}),
    ]);
    let keys = prop::sample::select(vec![
        "kind",
        "version",
        "uptime_secs",
        "hostname",
        "applied",
        "ports",
        "load1",
        "mem_total_bytes",
        "root_disk",
        "message",
        "extra",
    ]);
    (
        base,
        prop::collection::vec((keys, prop::option::of(json_leaf())), 0..3),
    )
        .prop_map(|(mut v, edits)| {
            for (k, val) in edits {
                match val {
                    Some(x) => v[k] = x,
                    None => {
                        v.as_object_mut().unwrap().remove(k);
                    }
                }
            }
            v
        })
}

/// What a lying guest sends back: one or more lines, damaged JSON, raw
/// bytes, nothing, or a line without its newline.
fn reply_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => response_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => cheap_bytes(0..80),
        1 => (response_value(), any::<usize>()).prop_map(|(v, cut)| {
            let mut b = serde_json::to_vec(&v).unwrap();
            b.truncate(cut % (b.len() + 1));
            b
        }),
    ];
    (prop::collection::vec(line, 0..3), prop::bool::weighted(0.9)).prop_map(
        |(lines, newline_last)| {
            let mut out = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                out.extend_from_slice(l);
                if i + 1 < lines.len() || newline_last {
                    out.push(b'\n');
                }
            }
            out
        },
    )
}

/// The host's client against a guest that answers `reply` to the first
/// request and then closes: every outcome is a value, the type asked for
/// or an error, and after an error the connection refuses to be reused.
#[test]
fn client_survives_lying_guests() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config());
    runner
        .run(&(reply_bytes(), 0..3u8), |(reply, which)| {
            rt.block_on(async {
                let (host, guest) = tokio::net::UnixStream::pair().unwrap();
                let fake = tokio::spawn(async move {
                    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
                    let mut guest = BufReader::new(guest);
                    let mut request = String::new();
                    guest.read_line(&mut request).await.unwrap();
                    // The host may have hung up already (it stops reading
                    // after one line); that is its right.
                    let _ = guest.get_mut().write_all(&reply).await;
                    request
                });
                let mut client =
                    AgentClient::from_stream(host).with_timeout(std::time::Duration::from_secs(30));
                let outcome: Result<(), AgentClientError> = match which {
                    0 => client.health().await.map(|_| ()),
                    1 => client.ports().await.map(|_| ()),
                    _ => client.stats().await.map(|_| ()),
                };
                let request = fake.await.unwrap();
                prop_assert!(request.ends_with('\n'));
                if let Err(e) = outcome {
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(!matches!(e, AgentClientError::Timeout { .. }), "{}", e);
                    // A well-framed answer of the wrong kind keeps the
                    // connection in step; anything else must retire it.
                    if matches!(
                        e,
                        AgentClientError::Agent { .. } | AgentClientError::Unexpected { .. }
                    ) {
                        return Ok(());
                    }
                    let again = client.health().await;
                    prop_assert!(
                        matches!(again, Err(AgentClientError::Desynchronized)),
                        "{:?}",
                        again
                    );
                }
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn an_endless_answer_is_cut_at_the_limit() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (host, guest) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut guest = guest;
            let chunk = vec![b'x'; 64 * 1024];
            // Keeps writing until the host hangs up.
            while guest.write_all(&chunk).await.is_ok() {}
        });
        let mut client = AgentClient::from_stream(host);
        let err = client.ports().await.unwrap_err();
        assert!(
            matches!(err, AgentClientError::TooLong { .. }),
            "{err} (limit {MAX_RESPONSE_LINE})"
        );
    });
}

/// Request lines as anything could send them to the agent's port.
fn request_stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        3 => prop::sample::select(vec![
            r#"{"op":"health"}"#,
            r#"{"op":"ports"}"#,
            r#"{"op":"stats"}"#,
            r#"{"op":"health","x":1}"#,
            r#"{"op":"run","cmd":"sh"}"#,
            r#"{"op":null}"#,
            r#"{"op":"health"}{"op":"ports"}"#,
            "   ",
            "",
            "\r",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => cheap_bytes(0..100),
        1 => (prop::sample::select(vec!["op", "kind", "x"]), json_leaf())
            .prop_map(|(k, v)| serde_json::to_vec(&json!({ k: v })).unwrap()),
    ];
    prop::collection::vec(line, 0..5).prop_map(|lines| {
        let mut out = Vec::new();
        for l in lines {
            out.extend(l);
            out.push(b'\n');
        }
        out
    })
}

proptest! {
    #![proptest_config(config())]

    /// The agent answers each complete, non-blank line with exactly one
    /// response line, never panics, and answers junk with an error.
    #[test]
    fn agent_answers_every_line_once(input in request_stream(), tail in cheap_bytes(0..20)) {
        // Paths that do not exist: health and stats answer with errors,
        // which is what this test wants to see framed correctly.
        let ctx = AgentContext {
            proc_root: "/nonexistent/banger-test/proc".into(),
            root: "/nonexistent/banger-test".into(),
            agent_exe: "/nonexistent/banger-test/agent".into(),
            // Never the host's own /root or NIC, whatever a line asks for.
            system: banger_vsock_agent::reidentify::System {
                work_mount: "/nonexistent/banger-test/root".into(),
                sys_net: "/nonexistent/banger-test/sys/class/net".into(),
                proc_root: "/nonexistent/banger-test/proc".into(),
                lookup: Default::default(),
            },
        };
        let mut stream = input.clone();
        // A partial last line (the sender went away) is dropped.
        let tail: Vec<u8> = tail.into_iter().filter(|&b| b != b'\n').collect();
        stream.extend_from_slice(&tail);
        let mut out = Vec::new();
        serve_stream(&ctx, &mut Cursor::new(stream), &mut out).unwrap();
        let expected = input
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count();
        let answers: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        prop_assert_eq!(answers.len(), expected);
        for a in answers {
            let r: AgentResponse = serde_json::from_slice(a).unwrap();
            if let AgentResponse::Error { message } = r {
                prop_assert!(!message.is_empty());
            }
        }
    }
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(a, p)| format!("{a:08X}:{p:04X}")),
        (any::<u128>(), any::<u16>()).prop_map(|(a, p)| format!("{a:032X}:{p:04X}")),
        cheap_text("0123456789ABCDEFabcdefx:", 40),
    ]
}

fn table_line() -> impl Strategy<Value = String> {
    (
        (0..1000u32).prop_map(|n| format!("{n}:")),
        endpoint(),
        endpoint(),
        prop_oneof![
            Just("0A".to_owned()),
            Just("07".to_owned()),
            cheap_text("0123456789ABCDEFz", 3)
        ],
        prop_oneof![
            Just("0".to_owned()),
            any::<u64>().prop_map(|n| n.to_string()),
            cheap_text("0123456789", 24),
            Just("-1".to_owned())
        ],
        prop::collection::vec(cheap_text("0123456789ABCDEF:", 8), 0..8),
    )
        .prop_map(|(sl, local, remote, st, inode, rest)| {
            let mut fields = vec![sl, local, remote, st, "00000000:00000000".into()];
            fields.extend([
                "00:00000000".into(),
                "00000000".into(),
                "0".into(),
                "0".into(),
            ]);
            fields.push(inode);
            fields.extend(rest);
            let keep = fields.len() - (fields.len() % 3 == 0) as usize;
            fields[..keep].join(" ")
        })
}

fn meminfo_text() -> impl Strategy<Value = String> {
    let line = (
        prop::sample::select(vec!["MemTotal", "MemAvailable", "MemFree", "memtotal", ""]),
        prop_oneof![
            Just("18446744073709551615".to_owned()),
            Just("18014398509481984".to_owned()),
            any::<u64>().prop_map(|n| n.to_string()),
            cheap_text("0123456789-", 22),
        ],
        prop::sample::select(vec![" kB", "", " MB", " kB extra", "kB"]),
    )
        .prop_map(|(k, v, unit)| format!("{k}:  {v}{unit}"));
    prop::collection::vec(line, 0..6).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    /// `/proc/net/{tcp,udp}{,6}` tables with arbitrary fields: parsed or a
    /// parse error naming the line, never a panic.
    #[test]
    fn net_tables_never_panic(lines in prop::collection::vec(table_line(), 0..5), v6 in any::<bool>(), tcp in any::<bool>()) {
        let proto = match (tcp, v6) {
            (true, false) => Proto::Tcp,
            (true, true) => Proto::Tcp6,
            (false, false) => Proto::Udp,
            (false, true) => Proto::Udp6,
        };
        let text = format!("  sl  local_address rem_address   st\n{}", lines.join("\n"));
        match procfs::parse_net_table(proto, Path::new("/proc/net/x"), &text) {
            Ok(entries) => prop_assert!(entries.len() < lines.len() + 1),
            Err(e) => prop_assert!(e.to_string().contains("/proc/net/x")),
        }
    }

    /// `/proc/meminfo` with huge, negative or missing values: a value that
    /// overflows in bytes is an error, not a panic or a wrapped number.
    #[test]
    fn meminfo_never_panics(text in meminfo_text()) {
        if let Ok((total, avail)) = procfs::parse_meminfo(Path::new("/proc/meminfo"), &text) {
            prop_assert!(text.contains("MemTotal:") && text.contains("MemAvailable:"));
            let _ = (total, avail);
        }
    }

    /// `/proc/uptime` and `/proc/loadavg` with arbitrary numbers.
    #[test]
    fn uptime_and_loadavg_never_panic(
        words in prop::collection::vec(
            prop_oneof![
                cheap_text("0123456789.-e", 30),
                any::<f64>().prop_map(|f| f.to_string()),
                Just("NaN".to_owned()),
                Just("inf".to_owned()),
                Just("-inf".to_owned()),
                Just("1e400".to_owned()),
            ],
            0..5,
        ),
    ) {
        let text = words.join(" ");
        let _ = procfs::parse_uptime(Path::new("/proc/uptime"), &text);
        let _ = procfs::parse_loadavg(Path::new("/proc/loadavg"), &text);
    }
}

#[test]
fn meminfo_values_that_overflow_are_refused() {
    let text = "MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n";
    let err = procfs::parse_meminfo(Path::new("/proc/meminfo"), text).unwrap_err();
    assert!(err.to_string().contains("MemTotal"), "{err}");
}
