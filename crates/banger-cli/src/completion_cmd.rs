//! `banger completion SHELL`: shell completion through clap_complete's
//! dynamic engine. The script a shell sources only registers `banger`
//! itself as the completer (`COMPLETE=SHELL banger -- WORDS...`), so
//! subcommands and flags always match this binary, and VM, image, kernel
//! names come live from the daemon.
//!
//! Resource names are best effort and quiet: with no daemon answering (or a
//! route it does not have) the candidates are empty. Completion never starts
//! a daemon, never prints an error and never falls back to file names.

use std::ffi::OsStr;
use std::process::ExitCode;
use std::time::Duration;

use banger_host::paths::Layout;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use clap_complete::env::{Bash, CompleteEnv, EnvCompleter, Fish, Powershell, Zsh};

use crate::cli::{Cli, GlobalArgs};
use banger_wire::routes;

use crate::client::Client;

/// The environment variable that turns `banger` into its own completer.
pub const COMPLETE_VAR: &str = "COMPLETE";

/// How long a completion waits for the daemon before offering nothing.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);

/// `banger completion`
#[derive(Debug, Args)]
#[command(after_long_help = RECIPES)]
pub struct CompletionArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Shells `banger completion` supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

const RECIPES: &str = "\
Install:
  bash        banger completion bash > ~/.local/share/bash-completion/completions/banger
              (needs the bash-completion package; or add `source <(banger completion bash)`
              to ~/.bashrc)
  zsh         add `source <(banger completion zsh)` to ~/.zshrc, after `compinit`
  fish        banger completion fish > ~/.config/fish/completions/banger.fish
  powershell  add `banger completion powershell | Out-String | Invoke-Expression`
              to $PROFILE

The script calls `banger` on every TAB, so completions always match the installed
version. VM, image and kernel names come from the running daemon; when
none runs, they are simply not offered (completion never starts one).";

/// The kinds of names completion asks the daemon for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Vm,
    Image,
    Kernel,
    Session,
}

impl Resource {
    /// The API route listing this kind (its answer is decoded loosely:
    /// only the `name`s are read).
    pub fn route(self) -> &'static str {
        match self {
            Resource::Vm => routes::VM_LIST.path(),
            Resource::Image => routes::IMAGE_LIST.path(),
            Resource::Kernel => routes::KERNEL_LIST.path(),
            Resource::Session => routes::SESSION_NAMES.path(),
        }
    }
}

/// The names in a list answer: every `name` of the objects in the first
/// array found (the answer itself or one of its fields, e.g. `{"vms": [...]}`).
pub fn names_in(answer: &serde_json::Value) -> Vec<String> {
    let array = match answer {
        serde_json::Value::Array(a) => Some(a),
        serde_json::Value::Object(o) => o.values().find_map(|v| v.as_array()),
        _ => None,
    };
    array
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("name")?.as_str().map(str::to_owned))
        .collect()
}

/// The names of `kind` from the daemon that is running now; empty when none
/// answers within [`DAEMON_TIMEOUT`] or the route is unknown.
pub fn fetch_names(kind: Resource) -> Vec<String> {
    let Ok(layout) = Layout::detect() else {
        return Vec::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let client = Client::at(layout.socket());
    runtime.block_on(async {
        match tokio::time::timeout(
            DAEMON_TIMEOUT,
            client.get_json::<serde_json::Value>(kind.route()),
        )
        .await
        {
            Ok(Ok(answer)) => names_in(&answer),
            _ => Vec::new(),
        }
    })
}

fn candidates(kind: Resource, current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    fetch_names(kind)
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .map(CompletionCandidate::new)
        .collect()
}

fn completer(kind: Resource) -> ArgValueCompleter {
    match kind {
        Resource::Vm => ArgValueCompleter::new(|c: &OsStr| candidates(Resource::Vm, c)),
        Resource::Image => ArgValueCompleter::new(|c: &OsStr| candidates(Resource::Image, c)),
        Resource::Kernel => ArgValueCompleter::new(|c: &OsStr| candidates(Resource::Kernel, c)),
        Resource::Session => ArgValueCompleter::new(|c: &OsStr| candidates(Resource::Session, c)),
    }
}

/// Which resource an argument names: positional `name`/`names` (or
/// `vm`/`image`/...) under the `vm`, `image`, `kernel` and `session`
/// groups, and `--image`/`--kernel`/`--vm`/`--session` anywhere. `vm create`
/// and `vm run` take new names, which are not completed.
pub fn resource_of(path: &[&str], arg: &clap::Arg) -> Option<Resource> {
    let by_id = |id: &str| match id {
        "vm" | "vms" => Some(Resource::Vm),
        "image" | "images" => Some(Resource::Image),
        "kernel" | "kernels" | "kernel_ref" => Some(Resource::Kernel),
        "session" | "sessions" => Some(Resource::Session),
        _ => None,
    };
    let id = arg.get_id().as_str();
    // `image register --kernel PATH` takes a file, not a kernel name.
    let path_hint = matches!(
        arg.get_value_hint(),
        clap::ValueHint::AnyPath | clap::ValueHint::FilePath | clap::ValueHint::DirPath
    );
    if path_hint {
        return None;
    }
    if let Some(kind) = by_id(id) {
        return Some(kind);
    }
    if !arg.is_positional() || !matches!(id, "name" | "names") {
        return None;
    }
    match path {
        [group, sub, ..] if !matches!(*sub, "create" | "run" | "build" | "pull" | "import") => {
            by_id(group)
        }
        _ => None,
    }
}

fn attach(cmd: clap::Command, path: &mut Vec<String>) -> clap::Command {
    let borrowed: Vec<&str> = path.iter().map(String::as_str).collect();
    // `mut_args` keeps the order (and so the positions) of the arguments.
    let mut cmd = cmd.mut_args(|a| match resource_of(&borrowed, &a) {
        Some(kind) => a.add(completer(kind)),
        None => a,
    });
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name.clone(), |sub| {
            path.push(name.clone());
            let sub = attach(sub, path);
            path.pop();
            sub
        });
    }
    cmd
}

/// The command tree with the daemon-backed completers attached.
pub fn command() -> clap::Command {
    attach(Cli::command(), &mut Vec::new())
}

/// Answer a completion request and exit when `COMPLETE` is set (the shell
/// scripts call `banger` that way); otherwise return at once.
pub fn complete_if_asked() {
    CompleteEnv::with_factory(command)
        .var(COMPLETE_VAR)
        .complete();
}

/// Run `banger completion SHELL`: print the script that registers `banger`
/// as its own completer.
pub fn run(_global: &GlobalArgs, args: CompletionArgs) -> anyhow::Result<ExitCode> {
    let shell: &dyn EnvCompleter = match args.shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
        Shell::Powershell => &Powershell,
    };
    let mut out = std::io::stdout().lock();
    shell.write_registration(COMPLETE_VAR, "banger", "banger", "banger", &mut out)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_either_answer_shape() {
        let listed = serde_json::json!({"vms": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(names_in(&listed), ["a", "b"]);
        let bare = serde_json::json!([{"name": "x", "size": 1}, {"other": 2}]);
        assert_eq!(names_in(&bare), ["x"]);
        assert!(names_in(&serde_json::json!({"error": "nope"})).is_empty());
    }

    #[test]
    fn vm_name_arguments_complete_vms_but_new_names_do_not() {
        let cmd = command();
        let vm = cmd.find_subcommand("vm").unwrap();
        let arg = |sub: &str, id: &str| {
            vm.find_subcommand(sub)
                .unwrap()
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap()
                .clone()
        };
        for (sub, id) in [("ssh", "name"), ("delete", "names"), ("stop", "name")] {
            assert_eq!(resource_of(&["vm", sub], &arg(sub, id)), Some(Resource::Vm));
            assert!(arg(sub, id).get::<ArgValueCompleter>().is_some(), "{sub}");
        }
        assert_eq!(resource_of(&["vm", "create"], &arg("create", "name")), None);
        // `vm acp VM` and `vm workspace prepare VM [PATH]`.
        assert!(arg("acp", "vm").get::<ArgValueCompleter>().is_some());
        let prepare = vm
            .find_subcommand("workspace")
            .and_then(|w| w.find_subcommand("prepare"))
            .unwrap();
        let prepare_arg = |id: &str| prepare.get_arguments().find(|a| a.get_id() == id).unwrap();
        assert!(prepare_arg("vm").get::<ArgValueCompleter>().is_some());
        assert!(prepare_arg("path").get::<ArgValueCompleter>().is_none());
        let image = cmd.find_subcommand("image").unwrap();
        let image_arg = |sub: &str, id: &str| {
            image
                .find_subcommand(sub)
                .unwrap()
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap()
                .clone()
        };
        assert_eq!(
            resource_of(&["image", "show"], &image_arg("show", "name")),
            Some(Resource::Image)
        );
        assert_eq!(
            resource_of(&["image", "pull"], &image_arg("pull", "reference")),
            None
        );
        assert_eq!(
            resource_of(&["image", "register"], &image_arg("register", "kernel_ref")),
            Some(Resource::Kernel)
        );
        assert_eq!(
            resource_of(&["image", "register"], &image_arg("register", "kernel")),
            None,
            "a kernel file path keeps file completion"
        );
        assert_eq!(
            resource_of(&["vm", "create"], &arg("create", "image")),
            Some(Resource::Image)
        );
    }
}
