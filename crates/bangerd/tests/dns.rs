//! The `.vm` zone served by a real `bangerd` (sockets from its root helper
//! child) in a network namespace, asked by real clients: `dig` and
//! hickory's resolver. VM records with addresses are written straight into
//! the state database (the zone reads it per query), so only the last test
//! boots a guest: `ssh sandbox.vm true` with nothing but the generated
//! ssh_config, strict host key checking included.

mod common;
mod vm_harness;
mod vm_records;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use banger_cli::client::PlainRenderer;
use banger_state::{StateDb, VmState};
use banger_wire::api::NetworkSetupRequest;
use vm_harness::{boot_tests, privileged, test_image, text, World};
use vm_records::record;

/// The bridge address of the default config, where the zone is served.
const DNS: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);

/// Bring up the bridge through the daemon (which then starts the zone).
async fn network_up(world: &World) {
    let client = world.daemon.as_ref().unwrap().client();
    let mut quiet = PlainRenderer::new(Vec::new());
    client
        .stream(
            "/v1/network/setup",
            &NetworkSetupRequest::default(),
            &mut quiet,
        )
        .await
        .unwrap_or_else(|e| panic!("network setup failed: {e}; log:\n{}", world.log_tail()));
}

/// `dig @bridge ARGS` inside the namespace: (status, answer lines).
fn dig(world: &World, args: &[&str]) -> (String, Vec<String>) {
    let out = Command::new("ip")
        .args(["netns", "exec", &world.ns.name, "dig"])
        .arg(format!("@{DNS}"))
        .args(["+time=3", "+tries=3", "+noall", "+comments", "+answer"])
        .args(args)
        .output()
        .expect("run dig (install bind9-dnsutils)");
    assert!(out.status.success(), "dig {args:?}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = stdout
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{stdout}"))
        .to_owned();
    let answers = stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (status, answers)
}

fn dig_flags(world: &World, name: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &world.ns.name, "dig"])
        .arg(format!("@{DNS}"))
        .args(["+time=3", "+tries=3", name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.contains("flags:"))
        .unwrap_or_default()
        .to_owned()
}

/// Run `f` on a thread inside the namespace (sockets it opens live there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// hickory's resolver, asked from inside the namespace: addresses of `name`,
/// or the failure (`"NXDOMAIN"`, `"no records"`, or the error text).
fn resolve(ns: &str, name: &'static str) -> Result<Vec<Ipv4Addr>, String> {
    in_netns(ns, move || {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                IpAddr::V4(DNS),
            )]);
            let resolver = hickory_resolver::Resolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap();
            match resolver.lookup_ip(name).await {
                Ok(found) => Ok(found
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect()),
                Err(e) if e.is_nx_domain() => Err("NXDOMAIN".into()),
                Err(e) if e.is_no_records_found() => Err("no records".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    })
}

/// A raw DNS query for `name` (type A, class IN) with id `id`.
fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[tokio::test]
async fn the_vm_zone_answers_real_clients_and_survives_abuse() {
    if !privileged("the_vm_zone_answers_real_clients_and_survives_abuse") {
        return;
    }
    let world = World::new(&vm_harness::config("none"), None).await;
    network_up(&world).await;
    let sandbox = Ipv4Addr::new(172, 16, 0, 77);
    {
        let db: StateDb = world.db();
        db.insert_vm(&record("sandbox", 1, Some(sandbox), VmState::Running))
            .unwrap();
        db.insert_vm(&record("sleepy", 2, None, VmState::Stopped))
            .unwrap();
    }

    let (status, answers) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(answers, [format!("sandbox.vm. 5 IN A {sandbox}")]);
    assert!(
        dig_flags(&world, "sandbox.vm").contains(" aa"),
        "authoritative"
    );
    let (status, answers) = dig(&world, &["+tcp", "SandBox.VM", "A"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(answers.len(), 1, "{answers:?}");
    let (status, answers) = dig(&world, &["sleepy.vm", "A"]);
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 0));
    let (status, _) = dig(&world, &["missing.vm", "A"]);
    assert_eq!(status, "NXDOMAIN");
    let (status, answers) = dig(&world, &["example.com", "A"]);
    assert_eq!((status.as_str(), answers.len()), ("REFUSED", 0));

    let ns = world.ns.name.clone();
    assert_eq!(resolve(&ns, "sandbox.vm."), Ok(vec![sandbox]));
    assert_eq!(resolve(&ns, "missing.vm."), Err("NXDOMAIN".into()));

    // Malformed packets over UDP: empty, short, a header promising records
    // that are not there, a response posing as a query, random bytes.
    let target = SocketAddr::from((DNS, 53));
    in_netns(&ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x12],
            vec![0; 11],
            vec![0xab, 0xcd, 0x01, 0x00, 0, 5, 0, 0, 0, 0, 0, 0],
            vec![
                0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 3, b'a', b'v', b'm',
            ],
        ];
        let mut seed = 0x2545_f491_u32;
        for len in [12usize, 40, 300, 1400] {
            junk.push(
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect(),
            );
        }
        for packet in &junk {
            let _ = sock.send_to(packet, target);
        }
        // A name longer than DNS allows, in labels of 63.
        let long = vec!["a".repeat(63); 5].join(".") + ".vm";
        let _ = sock.send_to(&query_bytes(7, &long), target);
    });
    // Malformed and idle TCP: a length prefix promising more than is sent,
    // a connection that never sends, and one that sends garbage.
    let idle = in_netns(&ns, move || {
        use std::io::Write;
        let mut held = Vec::new();
        for _ in 0..50 {
            held.push(TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap());
        }
        let mut s = TcpStream::connect(target).unwrap();
        let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]);
        let mut s = TcpStream::connect(target).unwrap();
        let _ = s.write_all(&[0, 3, 9, 9, 9]);
        held
    });
    let (status, answers) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(
        (status.as_str(), answers.len()),
        ("NOERROR", 1),
        "after junk"
    );
    let (status, _) = dig(&world, &["+tcp", "sandbox.vm", "A"]);
    assert_eq!(
        status, "NOERROR",
        "TCP still served beside 50 idle connections"
    );
    drop(idle);

    // A bounded flood: 20 000 queries as fast as one socket sends them,
    // answers never read. The server must still answer afterwards.
    in_netns(&ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..20_000u32 {
            let name = if i % 2 == 0 { "sandbox.vm" } else { "nope.vm" };
            let _ = sock.send_to(&query_bytes(i as u16, name), target);
        }
    });
    let (status, answers) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(
        (status.as_str(), answers.len()),
        ("NOERROR", 1),
        "after the flood"
    );

    // A deleted VM's name stops resolving at once.
    world.banger_ok(&["vm", "delete", "--force", "sandbox"]);
    let (status, _) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(status, "NXDOMAIN");
    assert_eq!(resolve(&ns, "sandbox.vm."), Err("NXDOMAIN".into()));

    // Tearing the network down stops the zone; setting it up again serves
    // on the new bridge.
    let client = world.daemon.as_ref().unwrap().client();
    let mut quiet = PlainRenderer::new(Vec::new());
    client
        .stream("/v1/network/teardown", &serde_json::json!({}), &mut quiet)
        .await
        .unwrap();
    network_up(&world).await;
    let (status, answers) = dig(&world, &["sleepy.vm", "A"]);
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 0));
    let log = world.env.log();
    assert_eq!(
        log.matches("serving the .vm zone on 172.16.0.1:53").count(),
        2,
        "{log}"
    );
    assert!(log.contains("stopped serving the .vm zone"));
}

#[tokio::test]
async fn ssh_to_a_booted_vm_by_name_with_only_the_generated_config() {
    if !privileged("ssh_to_a_booted_vm_by_name_with_only_the_generated_config")
        || !boot_tests("ssh_to_a_booted_vm_by_name_with_only_the_generated_config")
    {
        return;
    }
    let image = test_image();
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "sandbox"]);
    let vm = world.show("sandbox");
    let ip: Ipv4Addr = vm
        .ip
        .as_deref()
        .expect("a running VM has an address")
        .parse()
        .unwrap();

    // Names resolve through the zone on the bridge...
    let (status, answers) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(answers, [format!("sandbox.vm. 5 IN A {ip}")]);
    assert_eq!(resolve(&world.ns.name, "sandbox.vm."), Ok(vec![ip]));

    // ...and plain OpenSSH gets in with the generated config alone: banger's
    // key, banger's known_hosts, strict checking (a wrong key would fail).
    let config = world.env.layout.ssh_config();
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    assert!(text_cfg.contains(&format!("HostName {ip}")), "{text_cfg}");
    let ssh = |host: &str| {
        world
            .command("ssh")
            .arg("-F")
            .arg(&config)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                host,
                "true",
            ])
            .output()
            .unwrap()
    };
    let out = ssh("sandbox.vm");
    assert!(out.status.success(), "ssh sandbox.vm true: {}", text(&out));
    let out = ssh("sandbox");
    assert!(out.status.success(), "ssh sandbox true: {}", text(&out));

    world.banger_ok(&["vm", "delete", "--force", "sandbox"]);
    let (status, _) = dig(&world, &["sandbox.vm", "A"]);
    assert_eq!(status, "NXDOMAIN");
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    assert!(!text_cfg.contains("sandbox"), "{text_cfg}");
}
