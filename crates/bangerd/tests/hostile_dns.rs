//! Hostile packets for the `.vm` DNS server, 10,000 cases each: hickory
//! parses the wire, our handler decides; neither may panic, every answer is
//! a well-formed response, and nothing outside `vm.` is ever answered (no
//! open resolver). The real server runs on loopback sockets; after each
//! hostile packet a sentinel query must still be answered correctly, so a
//! panic that killed the server fails the case that caused it.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use banger_fuzz::{config, noise};
use bangerd::dns::{serve, Entry, Verdict, VmZone};
use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::{DNSClass, RData, RecordType};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const ALIVE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
const SENTINEL_ID: u16 = 0xBEEF;

fn zone() -> VmZone {
    VmZone::new(Arc::new(|name: &str| match name {
        "alive" => Entry::Vm(Some(ALIVE)),
        "stopped" => Entry::Vm(None),
        _ => Entry::Missing,
    }))
}

const LABELS: &[&str] = &[
    "alive",
    "ALIVE",
    "AlIvE",
    "stopped",
    "nope",
    "vm",
    "VM",
    "com",
    "example",
    "x",
    "",
    "*",
    "a.b",
    "\u{0}",
    "ns",
    "hostmaster",
];

/// A question name in wire form: labels (mostly ending in `vm`), or a
/// compression pointer, or junk.
fn qname() -> impl Strategy<Value = Vec<u8>> {
    let label = prop_oneof![
        8 => prop::sample::select(LABELS).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(vec![b'a'; 63]),
        1 => Just(vec![b'a'; 64]),
        1 => (0..70usize, any::<u64>()).prop_map(|(n, s)| noise(n, s)),
    ];
    let labels = (
        prop::collection::vec(label, 0..4),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(labels, in_vm)| {
            let mut out = Vec::new();
            for l in labels.iter().chain(in_vm.then_some(&b"vm".to_vec())) {
                out.push(l.len().min(255) as u8);
                out.extend_from_slice(&l[..l.len().min(255)]);
            }
            out.push(0);
            out
        });
    prop_oneof![
        8 => labels,
        // A pointer: to the header, to itself, past the end.
        1 => prop::sample::select(vec![vec![0xC0, 0], vec![0xC0, 12], vec![0xFF, 0xFF], vec![0x40, 0]]),
        1 => (0..40usize, any::<u64>()).prop_map(|(n, s)| noise(n, s)),
    ]
}

/// One query packet, hand-assembled so every header field can lie.
fn crafted() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        prop_oneof![
            4 => Just(0x0100u16),
            1 => Just(0x8180),
            1 => Just(0x2800),
            1 => Just(0x7800),
            1 => any::<u16>()
        ],
        prop_oneof![4 => Just(1u16), 1 => 0..4u16, 1 => any::<u16>()],
        prop_oneof![4 => Just(0u16), 1 => any::<u16>()],
        prop::collection::vec(
            (
                qname(),
                prop_oneof![
                    4 => Just(1u16),
                    1 => prop::sample::select(vec![28u16, 255, 6, 252, 251, 16, 0, 41]),
                    1 => any::<u16>()
                ],
                prop_oneof![4 => Just(1u16), 1 => prop::sample::select(vec![3u16, 255, 254, 0]), 1 => any::<u16>()],
            ),
            0..3,
        ),
        prop_oneof![
            4 => Just(Vec::new()),
            // An EDNS OPT record with a huge payload size and odd flags.
            1 => Just(vec![0, 0, 41, 0xFF, 0xFF, 0x80, 0, 0x80, 0, 0, 0]),
            1 => (0..30usize, any::<u64>()).prop_map(|(n, s)| noise(n, s)),
        ],
    )
        .prop_map(|(id, flags, qd, other, questions, tail)| {
            let mut p = Vec::new();
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
            p.extend_from_slice(&qd.to_be_bytes());
            p.extend_from_slice(&0u16.to_be_bytes());
            p.extend_from_slice(&0u16.to_be_bytes());
            p.extend_from_slice(&other.to_be_bytes());
            for (name, qtype, qclass) in questions {
                p.extend_from_slice(&name);
                p.extend_from_slice(&qtype.to_be_bytes());
                p.extend_from_slice(&qclass.to_be_bytes());
            }
            p.extend_from_slice(&tail);
            p
        })
}

/// A crafted packet, damaged, or noise.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    let damaged = (crafted(), any::<usize>(), any::<u8>()).prop_map(|(mut p, i, x)| {
        let n = p.len();
        if x % 2 == 0 {
            p.truncate(i % n);
        } else {
            p[i % n] ^= x | 1;
        }
        p
    });
    prop_oneof![
        6 => crafted(),
        2 => damaged,
        1 => (0..100usize, any::<u64>()).prop_map(|(n, s)| noise(n, s)),
    ]
    .prop_map(|mut p| {
        // The sentinel's id is reserved, so its answer is always its own.
        if p.len() >= 2 && p[..2] == SENTINEL_ID.to_be_bytes() {
            p[0] ^= 1;
        }
        p
    })
}

fn sentinel() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&SENTINEL_ID.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in ["alive", "vm"] {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// Every response, to whatever query: a parseable DNS response whose
/// answers are only `alive.vm. A 10.0.0.7`.
fn check_response(bytes: &[u8]) -> Result<Message, TestCaseError> {
    let m = Message::from_vec(bytes)
        .map_err(|e| TestCaseError::fail(format!("unparseable response {bytes:?}: {e}")))?;
    prop_assert_eq!(m.metadata.message_type, MessageType::Response);
    prop_assert!(
        matches!(
            m.metadata.response_code,
            ResponseCode::NoError
                | ResponseCode::NXDomain
                | ResponseCode::Refused
                | ResponseCode::FormErr
                | ResponseCode::NotImp
                | ResponseCode::ServFail
                | ResponseCode::BADVERS
        ),
        "{:?}",
        m.metadata.response_code
    );
    for a in &m.answers {
        prop_assert_eq!(a.name.to_ascii().to_ascii_lowercase(), "alive.vm.");
        prop_assert_eq!(&a.data, &RData::A(ALIVE.into()));
    }
    Ok(m)
}

#[test]
fn hostile_packets_never_break_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = udp.local_addr().unwrap();
    let _running = rt.block_on(async { serve(zone(), udp, tcp).unwrap() });

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A bound on waiting for the sentinel, not a timing assertion: a dead
    // server never answers.
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.connect(server_addr).unwrap();
    let sentinel = sentinel();
    // Found by this test: a question name pointing into the header (valid
    // as received: `01 31 00` at offset 0 reads as `1.`). The echo of the
    // question in a response would point at the response's header instead.
    let pointer_into_header: &[u8] = &[
        0x01, 0x31, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x00, 0, 1, 0, 1,
    ];
    let mut buf = vec![0u8; 65_536];
    client.send(pointer_into_header).unwrap();
    client.send(&sentinel).unwrap();
    loop {
        let n = client
            .recv(&mut buf)
            .expect("the server answers the sentinel");
        let m = check_response(&buf[..n]).expect("every response parses");
        if m.metadata.id == SENTINEL_ID {
            break;
        }
    }
    let mut runner = TestRunner::new(config());
    runner
        .run(&packet(), |p| {
            let mut buf = vec![0u8; 65_536];
            client.send(&p).unwrap();
            client.send(&sentinel).unwrap();
            loop {
                let n = client
                    .recv(&mut buf)
                    .map_err(|e| TestCaseError::fail(format!("server stopped answering: {e}")))?;
                let m = check_response(&buf[..n])?;
                if m.metadata.id == SENTINEL_ID {
                    prop_assert_eq!(m.answers.len(), 1);
                    break;
                }
            }
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// The handler's decision for any name, type and class: only `.vm`
    /// names of class IN are ours, and only `alive` has an address.
    #[test]
    fn zone_decisions_stay_inside_vm(
        labels in prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(LABELS).prop_map(str::to_owned),
                1 => (0..20usize, any::<u64>())
                    .prop_map(|(n, s)| String::from_utf8_lossy(&noise(n, s)).into_owned()),
            ],
            0..4,
        ),
        dot in any::<bool>(),
        rtype in prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::ANY, RecordType::SOA, RecordType::TXT]),
        class in prop::sample::select(vec![DNSClass::IN, DNSClass::CH, DNSClass::ANY, DNSClass::NONE]),
    ) {
        let mut name = labels.join(".");
        if dot {
            name.push('.');
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        match zone().decide(&name, rtype, class) {
            Verdict::Refused => {}
            Verdict::NxDomain => {
                prop_assert!(lower.ends_with(".vm"), "{}", name);
                prop_assert_eq!(class, DNSClass::IN);
            }
            Verdict::Answer(ips) => {
                prop_assert!(lower == "vm" || lower.ends_with(".vm"), "{}", name);
                prop_assert_eq!(class, DNSClass::IN);
                if !ips.is_empty() {
                    prop_assert_eq!(lower, "alive.vm");
                    prop_assert_eq!(ips, vec![ALIVE]);
                }
            }
        }
    }
}
