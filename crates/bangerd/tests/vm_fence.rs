//! Guests are fenced in (issue 12, item 6), checked from real guests: two
//! VMs in the test's namespace ("the host"), a second namespace behind a
//! veth acting as the internet (a listener on 198.51.100.2 and one on
//! 169.254.169.254), and host listeners on every address. Probes are bash
//! `/dev/tcp` connects and a hand-made DNS query over `/dev/udp` (the minimal
//! image has neither nc nor dig). Then the config opens the fence and the
//! same probes get through. Two boots.

mod common;
mod vm_harness;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use vm_harness::{boot_tests, privileged, test_image, Netns, World};

const BRIDGE_IP: &str = "172.16.0.1";
/// Listening on every host address, never opened by the config.
const CLOSED_PORT: u16 = 8123;
/// Listening on every host address, opened by `allow_host_ports`.
const OPEN_PORT: u16 = 8124;
/// The host's address on the uplink to "the internet".
const UPLINK_HOST: &str = "198.51.100.1";
/// A server on "the internet".
const REMOTE: &str = "198.51.100.2";
const METADATA: &str = "169.254.169.254";
const REMOTE_PORT: u16 = 8080;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `f` on a thread that entered namespace `ns` (setns affects only the
/// calling thread; sockets stay in the namespace they were made in).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP listener on 0.0.0.0:`port` in `ns` (the kernel completes handshakes
/// from its backlog, so nobody needs to accept).
fn listen_in(ns: &str, port: u16) -> TcpListener {
    in_netns(ns, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind listener")
    })
}

fn connects_from(ns: &str, addr: &'static str, port: u16) -> bool {
    in_netns(ns, move || {
        let target = (addr.parse::<Ipv4Addr>().unwrap(), port).into();
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).is_ok()
    })
}

/// "The internet": a namespace joined to the host's by a veth, serving
/// `REMOTE_PORT` on `REMOTE` and on `METADATA` (routed from the host, as a
/// cloud host routes its metadata service).
struct Internet {
    // Deleting the namespace removes the veth and the routes' next hop.
    _ns: Netns,
    _listener: TcpListener,
}

impl Internet {
    fn attach(host: &Netns) -> Internet {
        let ns = Netns::new();
        let (h, r) = (host.name.as_str(), ns.name.as_str());
        ip(&[
            "-n", h, "link", "add", "bfup0", "type", "veth", "peer", "name", "bfup1", "netns", r,
        ]);
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("{UPLINK_HOST}/24"),
            "dev",
            "bfup0",
        ]);
        ip(&["-n", h, "link", "set", "bfup0", "up"]);
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{REMOTE}/24"),
            "dev",
            "bfup1",
        ]);
        ip(&["-n", r, "link", "set", "bfup1", "up"]);
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{METADATA}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            h,
            "route",
            "add",
            &format!("{METADATA}/32"),
            "via",
            REMOTE,
        ]);
        let listener = listen_in(r, REMOTE_PORT);
        Internet {
            _ns: ns,
            _listener: listener,
        }
    }
}

/// A DNS query for `NAME.vm` type A, class IN, id 0x1234, as printf escapes.
fn dns_query(name: &str) -> String {
    let mut q: Vec<u8> = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [name, "vm"] {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// Run every probe from inside `vm` at once; `name -> reached`.
fn probe(world: &World, vm: &str, targets: &[(&str, String, u16)], dns_name: &str) -> Probes {
    let mut script = String::from(
        "p() { if timeout 5 bash -c \"exec 3<>/dev/tcp/$2/$3\" 2>/dev/null; \
         then echo \"tcp $1 open\"; else echo \"tcp $1 closed\"; fi; }\n",
    );
    for (name, addr, port) in targets {
        script.push_str(&format!("p {name} {addr} {port} &\n"));
    }
    script.push_str(&format!(
        "( exec 4<>/dev/udp/{BRIDGE_IP}/53 && printf '{}' >&4 && \
         echo \"dns $(timeout 5 dd bs=512 count=1 status=none <&4 | od -An -v -tx1 | tr -d ' \\n')\" ) &\n\
         wait\n",
        dns_query(dns_name)
    ));
    // `vm ssh -- ARGS` keeps argv: the script is one word for bash (which has
    // /dev/tcp and /dev/udp).
    let out = world.banger_ok(&["vm", "ssh", vm, "--", "bash", "-c", &script]);
    let mut probes = Probes::default();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("tcp"), Some(name), Some(state)) => {
                probes.tcp.insert(name.to_owned(), state == "open");
            }
            (Some("dns"), answer, _) => probes.dns = answer.unwrap_or("").to_owned(),
            _ => {}
        }
    }
    assert_eq!(
        probes.tcp.len(),
        targets.len(),
        "every probe reports: {out}"
    );
    probes
}

#[derive(Debug, Default)]
struct Probes {
    tcp: BTreeMap<String, bool>,
    /// The DNS answer in hex (empty: none).
    dns: String,
}

impl Probes {
    fn reached(&self, name: &str) -> bool {
        self.tcp[name]
    }

    /// Did the answer (id 0x1234) carry `addr`?
    fn resolved_to(&self, addr: &str) -> bool {
        let want: String = addr
            .parse::<Ipv4Addr>()
            .unwrap()
            .octets()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dns.starts_with("1234") && self.dns.ends_with(&want)
    }
}

fn config(image: &str, network: &str) -> String {
    format!(
        "{}\n[network]\n{network}\n",
        vm_harness::config(image).trim_end()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_reach_nat_and_dns_only_until_the_config_opens_more() {
    let test = "guests_reach_nat_and_dns_only_until_the_config_opens_more";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let image_name = image.name.clone();
    let mut world = World::new(
        &config(&image_name, &format!("allow_host_ports = [{OPEN_PORT}]")),
        Some(image),
    )
    .await;
    let internet = Internet::attach(&world.ns);
    let _closed = listen_in(&world.ns.name, CLOSED_PORT);
    let _open = listen_in(&world.ns.name, OPEN_PORT);
    // The host itself reaches both servers, so a guest that cannot is fenced,
    // not misrouted.
    assert!(connects_from(&world.ns.name, REMOTE, REMOTE_PORT));
    assert!(connects_from(&world.ns.name, METADATA, REMOTE_PORT));

    world.banger_ok(&["vm", "create", "--name", "ga"]);
    world.banger_ok(&["vm", "create", "--name", "gb"]);
    let b_ip = world.show("gb").ip.expect("gb has an address");
    // The host reaches a guest (its SSH is up).
    world.banger_ok(&["vm", "ssh", "gb", "--", "true"]);

    let targets = [
        ("bridge-closed", BRIDGE_IP.to_owned(), CLOSED_PORT),
        ("bridge-open", BRIDGE_IP.to_owned(), OPEN_PORT),
        ("uplink-open", UPLINK_HOST.to_owned(), OPEN_PORT),
        ("remote", REMOTE.to_owned(), REMOTE_PORT),
        ("metadata", METADATA.to_owned(), REMOTE_PORT),
        ("guest-b", b_ip.clone(), 22),
    ];
    let fenced = probe(&world, "ga", &targets, "gb");
    let log = world.log_tail();
    assert!(
        fenced.reached("remote"),
        "NAT to the outside: {fenced:?}\n{log}"
    );
    assert!(
        fenced.reached("bridge-open"),
        "allow_host_ports: {fenced:?}"
    );
    assert!(
        fenced.resolved_to(&b_ip),
        "gb.vm over the bridge's DNS: {fenced:?}"
    );
    for blocked in ["bridge-closed", "uplink-open", "metadata", "guest-b"] {
        assert!(!fenced.reached(blocked), "{blocked} reachable: {fenced:?}");
    }

    // Opening the fence: the same daemon state under a new config.
    world.kill_daemon();
    std::fs::write(
        &world.env.layout.default_config,
        config(
            &image_name,
            "allow_guest_to_guest = true\nallow_link_local = true",
        ),
    )
    .unwrap();
    world.start_daemon().await;
    world.banger_ok(&["network", "setup"]);
    let open = probe(&world, "ga", &targets, "gb");
    for reached in ["remote", "metadata", "guest-b"] {
        assert!(open.reached(reached), "{reached} still blocked: {open:?}");
    }
    for blocked in ["bridge-closed", "bridge-open", "uplink-open"] {
        assert!(!open.reached(blocked), "{blocked} reachable: {open:?}");
    }

    for vm in ["ga", "gb"] {
        world.banger_ok(&["vm", "delete", "--force", vm]);
    }
    world.banger_ok(&["network", "teardown"]);
    let rules = world.ns.ruleset();
    assert!(!rules.contains("banger"), "tables left: {rules}");
    drop(internet);
}
