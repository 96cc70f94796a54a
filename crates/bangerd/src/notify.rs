//! systemd readiness protocol (`sd_notify`): READY/STATUS once the socket
//! listens, STOPPING when shutdown begins, WATCHDOG pings when the unit asks
//! for them. Every call is a no-op without `NOTIFY_SOCKET`.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd the daemon is ready and what it serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tell systemd the daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog ping interval: half of `WATCHDOG_USEC`, when systemd set it
/// for this process (like `sd_watchdog_enabled(3)`, a missing `WATCHDOG_PID`
/// means "this process").
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Ping the watchdog every `interval` until the task is aborted.
pub fn spawn_watchdog(interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    })
}

fn send(states: &[NotifyState<'_>]) {
    // Failing to notify must not take the daemon down: systemd then reports
    // the unit itself (start timeout, watchdog), which is the right signal.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}
