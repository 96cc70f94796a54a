//! Taps made ahead of time (`tap_pool_size` of them), so a VM start takes a
//! ready tap instead of waiting on the root helper to create one.
//!
//! Pool taps are `banger-p<N>`; a VM that takes one keeps that name until it
//! stops, when the tap is deleted like any VM tap (a used tap is never put
//! back: a guest could have left state on it). When the pool is empty a
//! start falls back to creating its own `banger-t<N>`. The pool is filled
//! after a start has made sure the bridge exists, one refill at a time, and
//! is forgotten on network teardown (which deletes every banger tap). Idle
//! pool taps left by an earlier daemon are adopted: creating an existing tap
//! is a no-op for the helper, and numbering restarts at 0.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use banger_state::StateDb;
use banger_wire::helper::HelperRequest;

use crate::helper::RootHelper;

/// Name prefix of pool taps.
pub const POOL_PREFIX: &str = "banger-p";

/// Tap names have at most 15 bytes: `banger-p` leaves 7 digits.
const NAME_LIMIT: u32 = 10_000_000;

/// The idle taps and the refill in progress.
#[derive(Debug, Default)]
pub struct TapPool {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    idle: VecDeque<String>,
    /// Names being created right now (never handed out or picked twice).
    making: HashSet<String>,
    next: u32,
    refilling: bool,
}

impl TapPool {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a ready tap, if there is one.
    pub fn take(&self) -> Option<String> {
        self.inner().idle.pop_front()
    }

    /// The taps ready now.
    pub fn idle(&self) -> Vec<String> {
        self.inner().idle.iter().cloned().collect()
    }

    /// Forget every idle tap (after a teardown deleted them).
    pub fn forget(&self) {
        self.inner().idle.clear();
    }

    /// The next name not used by a VM, the pool or a refill; claims it.
    fn claim_name(&self, used: &HashSet<String>) -> String {
        let mut inner = self.inner();
        loop {
            let name = format!("{POOL_PREFIX}{}", inner.next);
            inner.next = (inner.next + 1) % NAME_LIMIT;
            if !used.contains(&name) && !inner.making.contains(&name) && !inner.idle.contains(&name)
            {
                inner.making.insert(name.clone());
                return name;
            }
        }
    }

    fn made(&self, name: &str, ok: bool) {
        let mut inner = self.inner();
        inner.making.remove(name);
        if ok {
            inner.idle.push_back(name.to_owned());
        }
    }
}

/// What a refill needs from the daemon.
#[derive(Debug, Clone, Copy)]
pub struct RefillContext<'a> {
    pub helper: &'a RootHelper,
    pub db: &'a Mutex<StateDb>,
    /// The bridge new taps join.
    pub bridge: &'a str,
    /// `tap_pool_size`.
    pub want: usize,
}

impl TapPool {
    /// Create taps on the bridge until `want` are idle. Only one refill
    /// runs at a time; a failure is logged and ends this refill (the next
    /// start tries again, and starts never depend on the pool).
    pub async fn refill(&self, cx: RefillContext<'_>) {
        {
            let mut inner = self.inner();
            if inner.refilling || inner.idle.len() >= cx.want {
                return;
            }
            inner.refilling = true;
        }
        while self.inner().idle.len() < cx.want {
            let used: HashSet<String> = {
                let db = cx.db.lock().unwrap_or_else(|e| e.into_inner());
                match db.list_vms() {
                    Ok(vms) => vms.into_iter().filter_map(|v| v.tap).collect(),
                    Err(e) => {
                        tracing::warn!("tap pool: cannot list VMs: {e}");
                        break;
                    }
                }
            };
            let name = self.claim_name(&used);
            let made = cx
                .helper
                .request(&HelperRequest::CreateTap {
                    name: name.clone(),
                    bridge: cx.bridge.to_owned(),
                })
                .await;
            self.made(&name, made.is_ok());
            if let Err(e) = made {
                tracing::warn!(tap = %name, "tap pool: cannot create a tap: {e}");
                break;
            }
        }
        self.inner().refilling = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_skip_vm_taps_refills_and_idle_taps() {
        let pool = TapPool::default();
        let used: HashSet<String> = ["banger-p1".to_owned()].into();
        let a = pool.claim_name(&used);
        let b = pool.claim_name(&used);
        assert_eq!((a.as_str(), b.as_str()), ("banger-p0", "banger-p2"));
        pool.made(&a, true);
        pool.made(&b, false);
        assert_eq!(pool.idle(), ["banger-p0"]);
        assert_eq!(pool.take().as_deref(), Some("banger-p0"));
        assert_eq!(pool.take(), None);
        // Numbering goes on: a tap just deleted is not recreated at once.
        assert_eq!(pool.claim_name(&HashSet::new()), "banger-p3");
    }

    #[test]
    fn names_fit_a_link_name_and_wrap() {
        let pool = TapPool::default();
        pool.inner().next = NAME_LIMIT - 1;
        let last = pool.claim_name(&HashSet::new());
        assert_eq!(last, "banger-p9999999");
        assert!(last.len() <= 15);
        assert_eq!(pool.claim_name(&HashSet::new()), "banger-p0");
    }
}
