//! One booted guest, through the real CLI and daemon:
//!
//! - a `[[file_sync]]` entry added to config.toml after the daemon started
//!   reaches the next VM (the daemon re-reads the edited file; no restart);
//! - `vm run -- CMD ARGS` and `vm ssh NAME -- CMD ARGS` deliver the same
//!   argv to the guest, word for word, with spaces, quotes, `$`, `;`,
//!   newlines and empty arguments;
//! - `vm ssh NAME -- sh -c 'echo "a  b"'` prints `a  b`, and a redirection
//!   inside the `sh -c` script writes what it says.

mod common;
mod vm_harness;

use vm_harness::{boot_tests, privileged, test_image, text, World};

/// Arguments a remote shell would mangle if they were not quoted.
fn hostile_args() -> Vec<String> {
    [
        "a  b",
        "it's",
        "\"double\"",
        "$HOME $(echo no) `echo no`",
        "a;b && c | d",
        "line1\nline2",
        "",
        "*",
        "\\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What `printf '[%s]\n' ARGS...` prints when each argument arrived whole.
fn expected_printf(args: &[String]) -> String {
    args.iter().map(|a| format!("[{a}]\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn live_file_sync_and_argv_of_vm_run_and_vm_ssh() {
    let test = "live_file_sync_and_argv_of_vm_run_and_vm_ssh";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let base = vm_harness::config(&image.name);
    let world = World::new(&base, Some(image)).await;

    // The daemon runs; now the user adds a file_sync entry.
    let home = &world.env.layout.home;
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(home.join("notes.txt"), "synced after start\n").unwrap();
    let config = world.env.layout.default_config.clone();
    std::fs::write(
        &config,
        format!("{base}\n[[file_sync]]\nhost = \"~/notes.txt\"\nguest = \"~/notes.txt\"\n"),
    )
    .unwrap();

    let args = hostile_args();
    let mut run: Vec<&str> = vec!["vm", "run", "--name", "argv", "--", "printf", "[%s]\\n"];
    run.extend(args.iter().map(String::as_str));
    let out = world.banger(&run);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected_printf(&args),
        "vm run: {}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "a valid edit needs no warning: {}",
        text(&out)
    );

    // The file_sync entry added after the daemon started is in the guest.
    let synced = world.banger_ok(&["vm", "ssh", "argv", "--", "cat", "/root/notes.txt"]);
    assert_eq!(synced, "synced after start\n");

    let mut ssh: Vec<&str> = vec!["vm", "ssh", "argv", "--", "printf", "[%s]\\n"];
    ssh.extend(args.iter().map(String::as_str));
    let out = world.banger(&ssh);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected_printf(&args),
        "vm ssh: {}",
        text(&out)
    );

    // The issue's own examples.
    let out = world.banger_ok(&["vm", "ssh", "argv", "--", "sh", "-c", "echo \"a  b\""]);
    assert_eq!(out, "a  b\n");
    world.banger_ok(&["vm", "ssh", "argv", "--", "sh", "-c", "echo kept > /root/f"]);
    let out = world.banger_ok(&["vm", "ssh", "argv", "--", "cat", "/root/f"]);
    assert_eq!(out, "kept\n");
    // The remote status is still banger's.
    let out = world.banger(&["vm", "ssh", "argv", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    world.banger_ok(&["vm", "delete", "--force", "argv"]);
}
