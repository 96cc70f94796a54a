//! `banger vm run` end to end through the real CLI and daemon, in a network
//! namespace, booted under QEMU/TCG, with `[[file_sync]]` entries in the
//! config. Five boots share one daemon:
//!
//! 1. `vm run REPO -- sh -c '...; exit 7'`: exit 7, stdout and stderr on
//!    their own streams, tracked files only (no untracked, no ignored),
//!    uncommitted edits, modes and symlinks, `git status`/`git diff` work in
//!    the guest; the VM keeps running: the file_sync results are checked in
//!    it with `stat` (owner root:root, default and custom file modes, a
//!    directory with mixed modes, the symlink escaping the home skipped, the
//!    missing path warned about), `vm show` has the phase timings, and the
//!    mise bootstrap (the repository has `.mise.toml`) left its log;
//! 2. `vm run --rm --include-untracked --branch feat --from v1 REPO -- ...`:
//!    untracked files go, ignored ones never, the new branch is checked out;
//!    a SIGINT to banger (Ctrl-C) reaches the guest command, banger exits
//!    130 and the VM is gone (--rm after a failure);
//! 3. bare `vm run --rm --verbose -- true`: success, phase timings printed,
//!    the VM is gone (--rm after a success).
//! 4. `vm run --rm -- true` interrupted (SIGINT) while the guest boots:
//!    exit 130, the VM is deleted.
//! 5. `vm run REPO` without a command: a shell in /root/repo reading stdin,
//!    its exit status, the VM kept with the how-to-reach message.
//!
//! Before any boot: `--dry-run` prints the file list and creates nothing,
//! workspace flags without a PATH are refused, a path outside a repository
//! is refused.

mod common;
mod vm_harness;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use vm_harness::{boot_tests, git_sh as sh, privileged, test_image, text, World};

/// A repository with a commit, then an uncommitted edit, an untracked file
/// and ignored files.
fn make_repo(dir: &Path) {
    sh(
        dir,
        "git init -q -b main .
         printf 'ignored.log\\nbuild/\\n' > .gitignore
         mkdir -p src
         echo committed > src/a.txt
         printf '#!/bin/sh\\necho tool\\n' > run.sh && chmod 755 run.sh
         ln -s src/a.txt link
         printf '[tools]\\n' > .mise.toml
         git add -A && git commit -qm init
         git tag v1
         echo second > second.txt && git add second.txt && git commit -qm second
         echo edited > src/a.txt
         echo secret > untracked.env
         echo noise > ignored.log
         mkdir build && echo obj > build/x.o",
    );
}

fn file_sync_config(image: &str) -> String {
    format!(
        "{}\n\
         [[file_sync]]\nhost = \"~/.gitconfig\"\nguest = \"~/.gitconfig\"\n\n\
         [[file_sync]]\nhost = \"~/tool.sh\"\nguest = \"~/bin/tool.sh\"\nmode = \"0750\"\n\n\
         [[file_sync]]\nhost = \"~/dots\"\nguest = \"/root/.config/dots\"\n\n\
         [[file_sync]]\nhost = \"~/escape\"\nguest = \"~/escape\"\n\n\
         [[file_sync]]\nhost = \"~/missing\"\nguest = \"~/missing\"\n",
        vm_harness::config(image)
    )
}

fn make_home(home: &Path, outside: &Path) {
    std::fs::write(home.join(".gitconfig"), "[user]\n\tname = t\n").unwrap();
    std::fs::set_permissions(home.join(".gitconfig"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(home.join("tool.sh"), "#!/bin/sh\n").unwrap();
    let dots = home.join("dots");
    std::fs::create_dir_all(dots.join("sub")).unwrap();
    for (name, mode) in [("public", 0o644), ("secret", 0o600), ("sub/run", 0o755)] {
        std::fs::write(dots.join(name), name).unwrap();
        std::fs::set_permissions(dots.join(name), PermissionsExt::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(dots.join("sub"), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&dots, PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::write(outside.join("leak"), "must not reach the guest").unwrap();
    std::os::unix::fs::symlink(outside.join("leak"), home.join("escape")).unwrap();
}

/// After `--rm`: no VM record, lease, VM directory or QEMU of any VM, and
/// nothing named `name` (whose id is unknown once it is gone).
fn assert_no_vm_left(world: &World, name: &str) {
    world.assert_nothing_left(name, "-", None);
    assert!(world.list().is_empty(), "VMs left: {:?}", world.list());
    assert!(world.db().list_leases().unwrap().is_empty(), "leases left");
    let vms = world.env.layout.state_dir.join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM directories left: {left:?}");
}

/// `child`'s exit status once it is gone, within `secs`; else it is killed
/// and the test fails with the daemon's log.
fn exit_after_sigint(
    child: &mut std::process::Child,
    secs: u64,
    world: &World,
) -> std::process::ExitStatus {
    common::wait_child_within(child, std::time::Duration::from_secs(secs)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "banger did not exit after SIGINT; log:\n{}",
            world.log_tail()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_run_workspace_command_rm_bare_and_file_sync() {
    let test = "vm_run_workspace_command_rm_bare_and_file_sync";
    if !privileged(test) {
        return;
    }
    let boot = boot_tests(test);
    let image_name = std::env::var("BANGER_TEST_IMAGE")
        .unwrap_or_else(|_| vm_harness::DEFAULT_TEST_IMAGE.to_owned());
    let image = boot.then(test_image);
    let world = World::new(&file_sync_config(&image_name), image).await;
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("my repo");
    std::fs::create_dir(&repo).unwrap();
    make_repo(&repo);
    make_home(&world.env.layout.home, scratch.path());
    let repo_arg = repo.to_str().unwrap();

    // No VM needed: dry run, flag checks, not a repository.
    let out = world.banger(&["vm", "run", "--dry-run", repo_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ".gitignore\n.mise.toml\nlink\nrun.sh\nsecond.txt\nsrc/a.txt\n"
    );
    let out = world.banger(&["vm", "run", "--dry-run", "--include-untracked", repo_arg]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ".gitignore\n.mise.toml\nlink\nrun.sh\nsecond.txt\nsrc/a.txt\nuntracked.env\n",
        "{}",
        text(&out)
    );
    let out = world.banger(&["vm", "run", "--branch", "x", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--branch needs a workspace PATH"),
        "{}",
        text(&out)
    );
    let out = world.banger(&["vm", "run", scratch.path().to_str().unwrap(), "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not inside a git repository"),
        "{}",
        text(&out)
    );
    assert!(world.list().is_empty(), "a dry run or refusal made a VM");

    if !boot {
        return;
    }

    // 1. Failing command, tracked files only; the VM is kept: file_sync
    //    and the recorded timings are checked in it, then it is deleted.
    let script = "set -e
        echo to-stdout; echo to-stderr >&2
        test \"$(pwd)\" = /root/repo
        test \"$(cat src/a.txt)\" = edited
        test -x run.sh && test \"$(stat -c %a run.sh)\" = 755
        test \"$(readlink link)\" = src/a.txt
        test ! -e untracked.env && test ! -e ignored.log && test ! -e build
        test \"$(git rev-parse --abbrev-ref HEAD)\" = main
        test \"$(git log --format=%s | tr '\\n' ' ')\" = 'second init '
        git status --porcelain > /tmp/st; test \"$(cat /tmp/st)\" = ' M src/a.txt'
        git diff --stat | grep -q 'src/a.txt'
        exit 7";
    let out = world.banger(&[
        "vm", "run", "--name", "ws", repo_arg, "--", "sh", "-c", script,
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "to-stdout\n", "{}", text(&out));
    assert!(stderr.contains("to-stderr\n"), "{}", text(&out));
    assert!(stderr.starts_with("spec: "), "{stderr}");
    assert!(stderr.contains("[workspace] copying 6 files"), "{stderr}");
    assert!(stderr.contains("ws keeps running at 172.16.0."), "{stderr}");
    assert!(
        stderr.contains("file_sync[4]: ") && stderr.contains("does not exist; skipped"),
        "missing file_sync path warned: {stderr}"
    );
    assert!(
        stderr.contains("file_sync[3]: ") && stderr.contains("outside your home"),
        "escaping symlink warned: {stderr}"
    );
    let vm = world.show("ws");
    assert_eq!(vm.state, "running");
    // `vm show --json` carries the same timings as the text.
    let recorded: Vec<String> = vm
        .details
        .as_ref()
        .and_then(|d| d.timings.as_ref())
        .map(|t| t.phases.iter().map(|p| p.phase.clone()).collect())
        .unwrap_or_default();
    assert!(
        recorded.iter().any(|p| p == "workspace copy"),
        "timings in vm show --json: {recorded:?}"
    );
    let show = world.banger_ok(&["vm", "show", "ws"]);
    let timings = show
        .split("timings (vm run):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no timings in vm show: {show}"));
    for phase in [
        "resolve image",
        "clone disk",
        "boot",
        "SSH ready",
        "workspace copy",
        "command",
    ] {
        assert!(
            timings.contains(&format!("  {phase:<15} ")),
            "{phase}: {show}"
        );
    }
    let stat = world.banger_ok(&[
        "vm",
        "ssh",
        "ws",
        "--",
        "sh",
        "-c",
        "cd /root && stat -c '%n %U:%G %a' .gitconfig bin/tool.sh .config/dots \
         .config/dots/public .config/dots/secret .config/dots/sub .config/dots/sub/run; \
         ls -a /root | tr '\\n' ' '",
    ]);
    let mut lines = stat.lines();
    for want in [
        ".gitconfig root:root 600",
        "bin/tool.sh root:root 750",
        ".config/dots root:root 750",
        ".config/dots/public root:root 644",
        ".config/dots/secret root:root 600",
        ".config/dots/sub root:root 700",
        ".config/dots/sub/run root:root 755",
    ] {
        assert_eq!(lines.next(), Some(want), "{stat}");
    }
    let listing = format!(" {} ", lines.next().unwrap_or_default());
    assert!(listing.contains(" repo "), "{listing}");
    assert!(
        !listing.contains(" escape ") && !listing.contains(" missing "),
        "skipped entries reached the guest: {listing}"
    );
    // The repository has .mise.toml: the bootstrap ran in the background
    // and, with no mise in the minimal image, logged why it did nothing.
    let tooling = world.banger_ok(&[
        "vm",
        "ssh",
        "ws",
        "--",
        "sh",
        "-c",
        "log=/root/.cache/banger/vm-run-tooling-my_repo.log; \
         for i in $(seq 60); do [ -s $log ] && break; sleep 1; done; cat $log",
    ]);
    assert!(!tooling.trim().is_empty(), "empty tooling log");
    if image_name == vm_harness::DEFAULT_TEST_IMAGE {
        assert_eq!(
            tooling.trim(),
            "mise is not installed in this image; skipped"
        );
    }
    let deleted = world.banger_ok(&["vm", "delete", "--force", "ws"]);
    assert_eq!(deleted, "deleted ws\n");
    world.assert_nothing_left("ws", &vm.id, vm.ip.as_deref());

    // 2. Untracked files, a new branch from a tag, --rm; the command is
    //    interrupted (SIGINT to banger, as Ctrl-C would): it exits 130 and
    //    the VM is deleted after the failure.
    let v1 = String::from_utf8(
        Command::new("git")
            .args(["-C", repo_arg, "rev-parse", "v1^{commit}"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script = format!(
        "set -e
        test -f untracked.env && test ! -e ignored.log && test ! -e build
        test \"$(git branch --show-current)\" = feat
        test \"$(git rev-parse HEAD)\" = {}
        test ! -e second.txt
        git status --porcelain | grep -q '^?? untracked.env$'
        echo ready
        sleep 600",
        v1.trim()
    );
    let mut child = world
        .command(vm_harness::cli_bin())
        .args([
            "vm",
            "run",
            "--rm",
            "--name",
            "br",
            "--include-untracked",
            "--branch",
            "feat",
            "--from",
            "v1",
            repo_arg,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr_pipe }, &mut text);
        text
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    if first != "ready\n" {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "guest checks failed (stdout {first:?}):\n{}\nlog:\n{}",
            stderr_reader.join().unwrap(),
            world.log_tail()
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // Bounded: the interrupt travels over a second ssh, then the VM is
    // deleted; generous for a loaded machine.
    let status = exit_after_sigint(&mut child, 180, &world);
    let stderr = stderr_reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_no_vm_left(&world, "br");

    // 3. Bare `vm run --rm -- true`: succeeds, prints the timings with
    //    --verbose, and leaves nothing.
    let out = world.banger(&[
        "vm",
        "run",
        "--rm",
        "--name",
        "bare",
        "--verbose",
        "--",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for phase in [
        "resolve image",
        "clone disk",
        "boot",
        "SSH ready",
        "command",
    ] {
        assert!(
            stderr.contains(&format!("\n{phase:<15} ")),
            "{phase}: {stderr}"
        );
    }
    assert!(!stderr.contains("workspace copy"), "{stderr}");
    assert_no_vm_left(&world, "bare");

    // 4. Ctrl-C while the guest boots, with --rm: banger exits 130 and the
    //    VM is deleted (once the daemon's boot step ends).
    let mut child = world
        .command(vm_harness::cli_bin())
        .args(["vm", "run", "--rm", "--name", "intr", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("vm run ended before booting:\n{seen}");
        }
        seen.push_str(&line);
        if line.starts_with("[boot] ") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // Bounded by the daemon's boot timeout (the delete waits for the boot).
    let status = exit_after_sigint(&mut child, 300, &world);
    seen.push_str(&rest.join().unwrap());
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted: deleting intr once its current step ends"),
        "{seen}"
    );
    assert_no_vm_left(&world, "intr");

    // 5. Interactive mode (no command) with a workspace: the shell starts in
    //    /root/repo and reads stdin (no terminal here); its status is
    //    banger's, the VM keeps running and banger says how to reach it.
    let mut child = world
        .command(vm_harness::cli_bin())
        .args(["vm", "run", "--name", "shell", repo_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pwd\ngit branch --show-current\nexit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/root/repo\nmain\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shell keeps running at 172.16.0.")
            && stderr.contains("`banger vm ssh shell` to reconnect")
            && stderr.contains("`banger vm delete --force shell` to delete it"),
        "{stderr}"
    );
    // The next steps an orchestrator or editor takes, printed before the shell.
    assert!(
        stderr.contains("banger vm acp shell")
            && stderr.contains("banger vm session start shell --name dev -- CMD")
            && stderr.contains("banger vm workspace prepare shell PATH"),
        "{stderr}"
    );
    let vm = world.show("shell");
    assert_eq!(vm.state, "running");
    world.banger_ok(&["vm", "delete", "--force", "shell"]);
    world.assert_nothing_left("shell", &vm.id, vm.ip.as_deref());
}
