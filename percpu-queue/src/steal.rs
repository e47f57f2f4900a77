//! What every steal protocol in this crate shares: one thief per victim at a time, the fence
//! that makes a victim's slot safe to touch, and remembering when fences do not exist.
//!
//! The per-CPU protocols themselves (locking a list head, narrowing a bounded stack) live
//! next to the structures they apply to; both follow the same three steps:
//!
//! 1. Become the victim slot's only thief ([`ThiefGuard`]). Thieves are the only writers of
//!    the "stopped" states (a head with [`rseq_sys::LINK_LOCKED`], a stack narrowed to its
//!    top), so with one thief per slot a stopped state seen after the fence is our own and
//!    cannot be an ABA reappearance of another thief's.
//! 2. Stop the slot with atomic stores every per-CPU section also checks, then
//!    [`Backend::fence_all`]: sections in flight on the victim are aborted and every later
//!    section sees the stop. Re-read the slot: unchanged means stopped and ours; changed
//!    means a section committed between the stop and the fence, so try again.
//! 3. Take elements with plain reads (we own the slot), then restart the slot with release
//!    stores so the next owner acquires what we left. Where the restart is more than one
//!    store that sections load separately (a bounded stack's lowered `top`, then its
//!    bounds), fence between them: a section that loaded the old value before the first
//!    store and the new one after the last would commit from the old one.
//!
//! # Why `fence_all` and not `fence_cpu`
//! A slot index is a CPU number only for [`rseq_sys::IndexBy::CpuId`]; under
//! [`rseq_sys::IndexBy::ConcurrencyId`] it is an `mm_cid`, and the thread owning that slot
//! may run on any CPU, so fencing "CPU `victim`" could miss it. Fencing every CPU is right for
//! both, and a steal is already the slow path (one fence moves a batch of elements).

use rseq_sys::sync::atomic::{AtomicBool, Ordering};
use rseq_sys::Backend;

/// How many elements one steal moves at most: one for the caller, the rest onto the thief's
/// own CPU, so that one fence pays for several later pops.
pub(crate) const STEAL_BATCH: usize = 16;

/// Holds a victim slot's thief flag; dropping it lets the next thief in.
pub(crate) struct ThiefGuard<'a> {
    flag: &'a AtomicBool,
}

impl<'a> ThiefGuard<'a> {
    /// Become the only thief of the slot guarded by `flag`, or `None` if another thief is at
    /// work there (it will hand out what it takes; we try elsewhere rather than wait).
    pub(crate) fn try_acquire(flag: &'a AtomicBool) -> Option<Self> {
        if flag.load(Ordering::Relaxed) || flag.swap(true, Ordering::Acquire) {
            return None;
        }
        Some(ThiefGuard { flag })
    }
}

impl Drop for ThiefGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// Whether the backend's fences work, learnt from the first failure: without them no steal
/// protocol is sound, so stealing stops for the life of the structure.
pub(crate) struct FenceSupport {
    missing: AtomicBool,
}

impl FenceSupport {
    pub(crate) fn new() -> Self {
        FenceSupport {
            missing: AtomicBool::new(false),
        }
    }

    /// Whether stealing is still worth trying.
    pub(crate) fn available(&self) -> bool {
        !self.missing.load(Ordering::Relaxed)
    }

    /// Fence every CPU; `false` (and stealing off from now on) when the backend cannot.
    pub(crate) fn fence<B: Backend>(&self, backend: &B) -> bool {
        match backend.fence_all() {
            Ok(()) => true,
            Err(_) => {
                self.missing.store(true, Ordering::Relaxed);
                false
            }
        }
    }
}
