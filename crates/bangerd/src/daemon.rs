//! The daemon's life: layout, config, logging, lock, state, root helper,
//! socket, serving, and an orderly stop.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_host::paths::{ensure_private_dir, Layout, PathsError, PrivateDirError};
use banger_wire::api::InstallMode;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::api;
use crate::context::{Daemon, NetSettings};
use crate::helper::{self, ChildSpec, HelperChild, RootHelper};
use crate::lock::{DaemonLock, LockError};
use crate::logging::{self, LogTarget, LoggingError};
use crate::notify;
use crate::socket::{self, PeerCheckedListener, PeerPolicy, SocketAccess, SocketError};

/// How long in-flight requests get to finish once shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Command-line options of `bangerd`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config` / `BANGER_CONFIG`.
    pub config: Option<PathBuf>,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Layout(#[from] PathsError),
    #[error(transparent)]
    Config(#[from] banger_config::ConfigError),
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] banger_state::StateError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("serving {socket} failed: {source}")]
    Serve {
        socket: PathBuf,
        source: std::io::Error,
    },
}

/// Run the daemon until SIGTERM, SIGINT or `POST /v1/shutdown`.
pub fn run(opts: &Options) -> Result<(), DaemonError> {
    let layout = Layout::detect()?;
    let config_path = banger_config::config_path(opts.config.as_deref(), &layout.default_config);
    let config = banger_config::load(&config_path, &layout.home);
    // Log even a bad config: an auto-started daemon has no terminal, and the
    // CLI shows the log's tail when the daemon does not come up.
    let level = match &config {
        Ok(c) => c.log_level.value.clone(),
        Err(_) => banger_config::DEFAULT_LOG_LEVEL.to_owned(),
    };
    logging::init(&LogTarget::detect(&layout.log_file()), &level)?;
    let result = config
        .map_err(DaemonError::from)
        .and_then(|config| serve(layout, config_path, config));
    if let Err(e) = &result {
        tracing::error!("bangerd failed: {e}");
    }
    result
}

fn prepare_dirs(layout: &Layout) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let create = |dir: &PathBuf, mode: u32| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|source| DaemonError::CreateDir {
                path: dir.clone(),
                source,
            })
    };
    match layout.mode {
        InstallMode::PerUser => {
            // State and cache may be symlinks to a bigger disk; the runtime
            // dir may sit in a shared /tmp and must be strictly ours.
            create(&layout.state_dir, 0o700)?;
            create(&layout.cache_dir, 0o700)?;
            ensure_private_dir(&layout.runtime_dir)?;
        }
        // systemd (StateDirectory=, RuntimeDirectory=, ...) creates these with
        // the modes the unit chose; only fill in what is missing.
        InstallMode::System => {
            for dir in [&layout.state_dir, &layout.cache_dir, &layout.runtime_dir] {
                create(dir, 0o750)?;
            }
        }
    }
    Ok(())
}

fn serve(
    layout: Layout,
    config_path: PathBuf,
    config: banger_config::Config,
) -> Result<(), DaemonError> {
    prepare_dirs(&layout)?;
    let lock = DaemonLock::acquire(&layout.daemon_lock())?;
    tracing::info!(
        pid = std::process::id(),
        version = banger_wire::VERSION,
        mode = %layout.mode,
        config = ?config.source,
        "bangerd starting"
    );
    let db = banger_state::StateDb::open(&layout.database())?;
    let schema_version = db.schema_version();
    let net = NetSettings::from_config(&config);
    let backend = crate::config_view::backend(&config);
    let live =
        crate::live_config::LiveConfig::new(config_path, layout.home.clone(), layout.mode, config);
    let vms = crate::vm::manager::VmManager::new(live, &backend);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;

    // Spawned here, on the main thread, which lives as long as the daemon:
    // the helper's parent-death signal is tied to the forking thread.
    let (helper, child) = start_helper(&layout, &net, &runtime);

    // Bound only now, so a socket that accepts is a daemon that answers.
    let bound = {
        let _enter = runtime.enter();
        bind_and_trap(&layout)
    };
    let (signals, listener, attach) = match bound {
        Ok(b) => b,
        Err(e) => {
            if let Some(child) = child {
                child.stop(Duration::from_secs(5));
            }
            return Err(e);
        }
    };
    tracing::info!(socket = %layout.socket().display(), "listening");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(Daemon {
        layout: layout.clone(),
        net,
        db: Mutex::new(db),
        schema_version,
        backend,
        helper,
        started: Instant::now(),
        shutdown: shutdown_tx,
        network_lock: tokio::sync::Mutex::new(()),
        vms,
        dns: tokio::sync::Mutex::new(None),
    });
    // Records must match the VMMs that really run before anyone asks.
    runtime.block_on(crate::vm::recover::recover(&state));
    let auto_stop = runtime.spawn(crate::vm::recover::auto_stop_loop(state.clone()));
    let stats = runtime.spawn(crate::vm::recover::stats_loop(state.clone()));
    let consoles = runtime.spawn(crate::vm::console::rotate_loop(state.clone()));
    let (attach_listener, attach_policy) = attach;
    let attach = runtime.spawn(crate::session::attach::serve(
        state.clone(),
        attach_listener,
        attach_policy,
    ));
    let result = runtime.block_on(serve_api(state, listener, signals, shutdown_rx));
    attach.abort();
    auto_stop.abort();
    stats.abort();
    consoles.abort();

    if let Some(child) = child {
        child.stop(Duration::from_secs(5));
    }
    // Ours: the daemon lock guarantees nobody else bound it since.
    let _ = std::fs::remove_file(layout.socket());
    let _ = std::fs::remove_file(attach_socket(&layout));
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("bangerd stopped");
    drop(lock);
    result
}

/// The session attach bridge's socket (`stdio_mux_v1`), next to the API
/// socket.
pub fn attach_socket(layout: &Layout) -> PathBuf {
    layout
        .socket()
        .with_file_name(banger_wire::attach::SOCKET_NAME)
}

/// The attach listener and who may use it.
type AttachListener = (tokio::net::UnixListener, Arc<PeerPolicy>);

/// Install signal handlers (before READY=1, so a SIGTERM right after it is
/// handled cleanly) and bind the API socket and the attach socket. Needs a
/// runtime context.
fn bind_and_trap(
    layout: &Layout,
) -> Result<(Signals, PeerCheckedListener, AttachListener), DaemonError> {
    let sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let (access, policy) = access_policy(layout)?;
    let inner = socket::bind(&layout.socket(), &access)?;
    // The attach bridge carries a session's stdin: the owner (and root)
    // only, even where `socket_group` opens the API to a group.
    let attach_policy = PeerPolicy {
        group: None,
        ..policy.clone()
    };
    let attach = socket::bind(&attach_socket(layout), &SocketAccess::OwnerOnly)?;
    let listener = PeerCheckedListener {
        inner,
        policy: Arc::new(policy),
    };
    Ok((
        Signals { sigterm, sigint },
        listener,
        (attach, Arc::new(attach_policy)),
    ))
}

/// The socket mode and the per-connection policy of `layout`: the owner and
/// root, plus the members of `socket_group` only when the install sets one.
fn access_policy(layout: &Layout) -> Result<(SocketAccess, PeerPolicy), DaemonError> {
    let Some(install) = &layout.install else {
        let uid = nix::unistd::getuid().as_raw();
        return Ok((SocketAccess::OwnerOnly, PeerPolicy::per_user(uid)));
    };
    let group = socket::resolve_group(install.socket_group.as_deref())?;
    let access = match &group {
        Some(g) => SocketAccess::Group(nix::unistd::Gid::from_raw(g.gid)),
        None => SocketAccess::OwnerOnly,
    };
    let policy = PeerPolicy {
        owner_uid: install.owner_uid,
        owner_name: install.owner_user.clone(),
        group,
        group_setting: Some(
            std::env::var_os(banger_host::paths::INSTALL_FILE_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(banger_wire::install::INSTALL_TOML)),
        ),
    };
    Ok((access, policy))
}

struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

fn start_helper(
    layout: &Layout,
    net: &NetSettings,
    runtime: &tokio::runtime::Runtime,
) -> (RootHelper, Option<HelperChild>) {
    match layout.mode {
        InstallMode::System => {
            let socket = layout.helper_socket();
            if let Err(e) = runtime.block_on(
                RootHelper::System {
                    socket: socket.clone(),
                }
                .request(&banger_wire::helper::HelperRequest::Ping),
            ) {
                tracing::warn!("system root helper not answering yet: {e}");
            }
            (RootHelper::System { socket }, None)
        }
        InstallMode::PerUser if nix::unistd::geteuid().is_root() => {
            let spec = ChildSpec {
                bin: helper::helper_binary(),
                socket: layout.helper_socket(),
                owner_uid: nix::unistd::getuid().as_raw(),
                cidr: net.cidr.to_string(),
                allowed_dirs: vec![
                    layout.state_dir.clone(),
                    layout.cache_dir.clone(),
                    layout.runtime_dir.clone(),
                ],
                log_file: match LogTarget::detect(&layout.log_file()) {
                    LogTarget::File(f) => Some(f),
                    LogTarget::Journal => None,
                },
            };
            let started = HelperChild::spawn(&spec).and_then(|mut child| {
                match runtime.block_on(child.wait_ready(helper::HELPER_START_TIMEOUT)) {
                    Ok(()) => Ok(child),
                    Err(e) => {
                        child.stop(Duration::from_secs(2));
                        Err(e)
                    }
                }
            });
            match started {
                Ok(child) => {
                    tracing::info!(pid = child.pid(), socket = %child.socket().display(), "root helper ready");
                    let helper = RootHelper::Child {
                        pid: child.pid(),
                        socket: child.socket().to_owned(),
                    };
                    (helper, Some(child))
                }
                Err(e) => {
                    // The daemon stays useful for everything unprivileged; the
                    // privileged routes say why they cannot work.
                    tracing::error!("root helper failed to start: {e}");
                    let reason = format!("the root helper child failed to start: {e}");
                    (RootHelper::Unavailable { reason }, None)
                }
            }
        }
        InstallMode::PerUser => {
            let reason = format!(
                "bangerd runs as uid {} without a root helper, so it cannot change host \
                 networking; install the system service with `sudo banger system install`, \
                 or run banger as root so bangerd starts its own helper",
                nix::unistd::getuid()
            );
            (RootHelper::Unavailable { reason }, None)
        }
    }
}

async fn serve_api(
    state: Arc<Daemon>,
    listener: PeerCheckedListener,
    mut signals: Signals,
    mut shutdown_rx: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let socket_path = state.layout.socket();
    notify::ready(&format!("serving {}", socket_path.display()));
    let watchdog = notify::watchdog_interval().map(notify::spawn_watchdog);

    let stop_tx = state.shutdown.clone();
    let router = api::router(state);
    let server = tokio::spawn(crate::http::serve(
        listener,
        router,
        crate::http::Timeouts::default(),
        shutdown_rx.clone(),
    ));

    tokio::select! {
        _ = signals.sigterm.recv() => tracing::info!("SIGTERM received"),
        _ = signals.sigint.recv() => tracing::info!("SIGINT received"),
        _ = shutdown_rx.wait_for(|stop| *stop) => {}
    }
    notify::stopping();
    stop_tx.send_replace(true);
    let result = match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(join)) => Err(DaemonError::Serve {
            socket: socket_path,
            source: std::io::Error::other(join.to_string()),
        }),
        Err(_) => {
            tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
            Ok(())
        }
    };
    if let Some(w) = watchdog {
        w.abort();
    }
    result
}
