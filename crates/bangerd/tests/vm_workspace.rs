//! `banger vm workspace prepare` and `banger vm acp` end to end: the real
//! CLI and daemon, one guest booted under QEMU/TCG (docs/workspace.md).
//!
//! 1. without a VM: `--dry-run` lists tracked and untracked-not-ignored
//!    files (not ignored ones); a repository with a submodule is refused in
//!    the metadata modes, naming `--mode full_copy`;
//! 2. `vm acp` before opencode exists: refused with the install hint;
//! 3. `prepare` (shallow_metadata): untracked-not-ignored present, ignored
//!    absent, a shallow git repository at the host's HEAD;
//! 4. `prepare` again (new content, `--branch`) while a session reads
//!    two files of the tree: every read sees both old or both new;
//! 5. `--readonly`: a write by root in the guest fails; an upload that
//!    breaks off mid-body switches nothing;
//! 6. the submodule repository with `--mode full_copy`: its files are there;
//! 7. `vm acp` through a fake `opencode` that echoes its stdin: bytes come
//!    back unchanged, EOF reaches it, its exit status is banger's, and it
//!    runs in /root/repo (or `--cwd`).

mod common;
mod vm_harness;

use std::io::Write;
use std::process::Stdio;

use vm_harness::{boot_tests, git_sh as sh, privileged, test_image, text, World};

fn guest(world: &World, script: &str) -> String {
    world
        .banger_ok(&["vm", "ssh", "box", "--", "sh", "-c", script])
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_prepare_replaces_atomically_and_acp_bridges_stdio() {
    let test = "workspace_prepare_replaces_atomically_and_acp_bridges_stdio";
    if !privileged(test) {
        return;
    }
    let boot = boot_tests(test);
    let image = boot.then(test_image);
    let image_name = image
        .as_ref()
        .map(|i| i.name.clone())
        .unwrap_or_else(|| vm_harness::DEFAULT_TEST_IMAGE.to_owned());
    let world = World::new(&vm_harness::config(&image_name), image).await;
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    let sub = scratch.path().join("sub");
    let supr = scratch.path().join("super");
    for d in [&repo, &sub, &supr] {
        std::fs::create_dir(d).unwrap();
    }
    sh(
        &repo,
        "git init -q -b main .
         printf 'ignored.log\\n' > .gitignore
         echo 1 > gen-a && echo 1 > gen-b
         git add -A && git commit -qm one
         echo 1b > gen-b && git commit -qam two
         echo u > untracked.txt
         echo secret > ignored.log",
    );
    let head = sh(&repo, "git rev-parse HEAD");
    sh(
        &sub,
        "git init -q -b main . && echo s > s.txt && git add -A && git commit -qm s",
    );
    sh(
        &supr,
        &format!(
            "git init -q -b main . && echo top > top.txt && git add -A && git commit -qm top
             git -c protocol.file.allow=always submodule add -q {} vendor/sub
             git commit -qm sub",
            sub.display()
        ),
    );
    let repo_arg = repo.to_str().unwrap();
    let supr_arg = supr.to_str().unwrap();

    // 1. No VM needed.
    let out = world.banger(&["vm", "workspace", "prepare", "box", repo_arg, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ".gitignore\ngen-a\ngen-b\nuntracked.txt\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shallow"),
        "{}",
        text(&out)
    );
    let out = world.banger(&["vm", "workspace", "prepare", "box", supr_arg]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("submodules (vendor/sub)") && err.contains("--mode full_copy"),
        "{err}"
    );
    let out = world.banger(&[
        "vm",
        "workspace",
        "prepare",
        "box",
        repo_arg,
        "--guest-path",
        "/etc/x",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("system directory"),
        "{}",
        text(&out)
    );
    if !boot {
        return;
    }
    world.banger_ok(&["vm", "create", "--name", "box"]);

    // 2. No opencode yet.
    let out = world.banger(&["vm", "acp", "box"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opencode is not on the PATH of VM box") && err.contains("mise"),
        "{err}"
    );

    // 3. The default mode.
    let out = world.banger_ok(&["vm", "workspace", "prepare", "box", repo_arg]);
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        guest(
            &world,
            "cd /root/repo && cat untracked.txt && test ! -e ignored.log && echo no-ignored \
             && git rev-parse HEAD && git rev-list --count HEAD && cat .git/shallow \
             && git branch --show-current && git status --porcelain"
        ),
        format!("u\nno-ignored\n{head}\n1\n{head}\nmain\n?? untracked.txt")
    );

    // 4. Replace it while a reader loops over the tree.
    sh(
        &repo,
        "echo 2 > gen-a && echo 2 > gen-b && git commit -qam three",
    );
    // The reader is a daemon-managed session, as an orchestrator would run it.
    world.banger_ok(&[
        "vm",
        "session",
        "start",
        "box",
        "--name",
        "reader",
        "--",
        "sh",
        "-c",
        "rm -f /tmp/stop; while [ ! -e /tmp/stop ]; do (cd /root/repo && echo \"$(cat gen-a) $(cat gen-b)\") 2>&1; done",
    ]);
    // Let the loop get going, then replace the tree under it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    world.banger_ok(&[
        "vm",
        "workspace",
        "prepare",
        "box",
        repo_arg,
        "--branch",
        "feat",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    guest(&world, "touch /tmp/stop");
    vm_harness::wait_until(
        "the reader session's end",
        std::time::Duration::from_secs(60),
        || world.session_show("box", "reader").status.is_ended(),
    );
    assert_eq!(
        world.session_show("box", "reader").status,
        banger_wire::guest::SessionStatus::Exited { code: 0 }
    );
    let lines = world.banger_ok(&[
        "vm", "session", "logs", "box", "reader", "--stream", "stdout",
    ]);
    let mut seen = std::collections::BTreeSet::new();
    for line in lines.lines() {
        assert!(
            line == "1 1b" || line == "2 2",
            "a reader saw a mixed or missing tree: {line:?}"
        );
        seen.insert(line);
    }
    assert_eq!(seen.len(), 2, "the reader did not see both trees: {seen:?}");
    assert_eq!(
        guest(
            &world,
            "cd /root/repo && git branch --show-current && cat gen-a"
        ),
        "feat\n2"
    );

    // 5. Read-only.
    world.banger_ok(&["vm", "workspace", "prepare", "box", repo_arg, "--readonly"]);
    let out = world.banger(&[
        "vm",
        "ssh",
        "box",
        "--",
        "sh",
        "-c",
        "id -u; echo x > /root/repo/gen-a",
    ]);
    assert!(!out.status.success(), "root wrote to a read-only tree");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out)
    );
    assert_eq!(guest(&world, "cat /root/repo/gen-a"), "2");

    // An upload that breaks off (the client goes away mid-body, at a tar
    // entry boundary) switches nothing.
    {
        use std::os::unix::net::UnixStream;
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(7);
        h.set_mode(0o644);
        tar.append_data(&mut h, "gen-a", &b"broken\n"[..]).unwrap();
        let entry = tar.into_inner().unwrap();
        let entry = &entry[..1024]; // the entry without the end-of-archive blocks
        let mut sock = UnixStream::connect(world.env.layout.socket()).unwrap();
        write!(
            sock,
            "POST /v1/vms/box/workspace?guest_path=/root/repo&mode=full_copy HTTP/1.1\r\n\
             Host: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            entry.len()
        )
        .unwrap();
        sock.write_all(entry).unwrap();
        sock.write_all(b"\r\n").unwrap();
        sock.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(sock);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !world.env.log().contains("the upload broke off") {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not report the broken upload:\n{}",
                world.log_tail()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        assert_eq!(guest(&world, "cat /root/repo/gen-a"), "2");
    }

    // 6. The submodule repository as a full copy.
    world.banger_ok(&[
        "vm",
        "workspace",
        "prepare",
        "box",
        supr_arg,
        "--mode",
        "full_copy",
        "--guest-path",
        "/root/super",
    ]);
    assert_eq!(
        guest(
            &world,
            "cd /root/super && cat top.txt vendor/sub/s.txt && git -C vendor/sub log --format=%s -1"
        ),
        "top\ns\ns"
    );

    // 7. vm acp through a fake opencode.
    guest(
        &world,
        "printf '#!/bin/sh\\n[ \"$1\" = acp ] || exit 64\\npwd >&2\\ncat\\nexit 7\\n' > /usr/local/bin/opencode \
         && chmod 755 /usr/local/bin/opencode",
    );
    let input = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":1}}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"x\",\"params\":\"tab\\t é ✓\"}\n\
                 no newline at the end";
    let acp = |extra: &[&str]| {
        let mut child = world
            .command(vm_harness::cli_bin())
            .args(["vm", "acp", "box"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = acp(&[]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), input);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "/root/repo");
    let out = acp(&["--cwd", "/tmp"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "/tmp");
    let out = acp(&["--cwd", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such directory in VM box"),
        "{}",
        text(&out)
    );

    world.banger_ok(&["vm", "delete", "--force", "box"]);
}
