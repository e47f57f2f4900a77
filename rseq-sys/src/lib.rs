//! Linux restartable sequences (rseq) for per-CPU data structures.
//!
//! rseq lets a thread run a short *critical section* on "its current CPU's" data without
//! atomic instructions: if the thread is preempted, migrated or signalled before the final
//! (committing) store, the kernel moves it to an abort handler, and nothing was committed.
//! This crate is the only place in the workspace that talks to the kernel ABI or writes
//! assembly. It provides:
//!
//! - **Registration that coexists with glibc.** Once per process it finds the owner:
//!   glibc (>= 2.35 registers every thread; found by symbol lookup, so older glibc still
//!   links and loads), this crate itself (a per-thread area sized and aligned from
//!   `AT_RSEQ_FEATURE_SIZE`/`AT_RSEQ_ALIGN`, registered lazily, reference-counted with
//!   [`Registration`] guards, unregistered at thread exit), or nobody ([`Owner::Unavailable`]
//!   with the [`Reason`]).
//! - **Critical-section primitives** behind the [`Backend`] trait: add to this CPU's slot,
//!   compare-and-store, pop through a pointer, push with a try-store before the commit,
//!   bounded word stacks and copy-then-commit. Each reports [`Outcome::Completed`],
//!   [`Outcome::Aborted`] or [`Outcome::NoCpu`]; the caller retries or falls back.
//!   [`PinnedRseq`] and [`SharedSection`] also push onto a named CPU's stack only while
//!   running there ([`SharedSection::push_word_on`], or
//!   [`SharedSection::push_word_on_stack`] given the stack's address), with no status to
//!   decode on success,
//!   and push or pop a word answering only "done" or "not done"
//!   ([`SharedSection::try_push_word`], [`SharedSection::try_pop_word`]), for callers that
//!   take one slow path whatever went wrong.
//! - **Remote fences** ([`Backend::fence_cpu`], [`Backend::fence_all`]) through
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)`, so a structure can touch another
//!   CPU's slots.
//! - **A simulator** ([`Simulated`]) that runs the same operations with injected CPU ids and
//!   aborts, for loom, Miri and property tests, and a [`sync`] facade that swaps in loom's
//!   atomics under `cfg(loom)`.
//!
//! # Invariant
//!
//! A per-CPU slot is written only by a committed critical section running on that slot's CPU
//! (or by a remote owner after a fence). Every section checks its index (`cpu_id`, or
//! `mm_cid` for [`IndexBy::ConcurrencyId`]) against the array length *inside* the section,
//! so an unregistered thread (`cpu_id` -1 or -2) or an undersized array reports
//! [`Outcome::NoCpu`] and never touches a slot.
//!
//! # Example
//!
//! ```
//! use rseq_sys::{Backend, Outcome, Rseq, SlotArray};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let rseq = Rseq::CPU_ID;
//! let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
//! let fallback = AtomicU64::new(0);
//!
//! for _ in 0..1000 {
//!     loop {
//!         match rseq.add(SlotArray::from_slice(&slots), 1) {
//!             Outcome::Completed { .. } => break,
//!             Outcome::Aborted => continue,
//!             Outcome::NoCpu => {
//!                 fallback.fetch_add(1, Ordering::Relaxed);
//!                 break;
//!             }
//!         }
//!     }
//! }
//! let total: u64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>()
//!     + fallback.load(Ordering::Relaxed);
//! assert_eq!(total, 1000);
//! println!("{}", rseq_sys::status());
//! ```
//!
//! # Without rseq
//!
//! Every operation reports [`Outcome::NoCpu`] when rseq is unavailable: kernels before 4.18
//! (`ENOSYS`), seccomp filters (`EPERM`/`EACCES`), a foreign registration this crate cannot
//! locate (`EBUSY`), valgrind, `PERCPU_NO_RSEQ=1` in the environment, other operating
//! systems and architectures (only x86_64 has critical sections so far), Miri and loom.
//! Early in a process or thread, and while a thread exits, `cpu_id` may be negative: the
//! same answer. None of these crash; [`status()`] says which applies.
//!
//! # Safe inside a global allocator
//!
//! The lookups never allocate, never recurse and take no lock an allocation could re-enter.
//! One-time steps (deciding the owner, registering a thread) mark themselves busy, and any
//! call that arrives meanwhile (from a signal handler, from `dlsym`'s error path allocating,
//! from another thread) gets [`Outcome::NoCpu`] instead of waiting.

#![warn(missing_docs)]

pub mod abi;
mod arch;
mod hardware;
mod ops;
mod os;
mod simulate;
mod status;
pub mod stripe;
pub mod sync;
#[cfg(all(feature = "testing", target_os = "linux"))]
pub mod testing;

pub use hardware::{PinnedRseq, Rseq, SharedSection};
pub use ops::{Backend, BoundedStack, IndexBy, Outcome, SlotArray, SlotWord, LINK_LOCKED};
pub use simulate::Simulated;
pub use status::{status, Status};

/// Controls for the [`Simulated`] backend (per-thread CPU ids, injected aborts, and code run
/// at an abort).
pub mod simulation {
    pub use crate::simulate::{abort_next, abort_one_in, cpu, on_next_abort, set_cpu};
}

use core::fmt;
use core::marker::PhantomData;

/// Who registers rseq areas in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// glibc registered every thread (`__rseq_size > 0`); this crate never registers or
    /// unregisters.
    Glibc,
    /// This crate registers each thread's area on first use.
    SelfRegistered,
    /// No rseq: every operation takes the fallback.
    Unavailable(Reason),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Glibc => f.write_str("glibc"),
            Owner::SelfRegistered => f.write_str("self"),
            Owner::Unavailable(reason) => write!(f, "unavailable ({reason})"),
        }
    }
}

/// Why rseq is unavailable (for the process, or for one thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `PERCPU_NO_RSEQ` is set in the environment.
    Disabled,
    /// The kernel has no rseq (`ENOSYS`: Linux < 4.18, or valgrind).
    NotSupported,
    /// A seccomp filter or security policy refused the call.
    Denied {
        /// The errno returned (`EPERM`, `EACCES`).
        errno: i32,
    },
    /// The kernel rejected the registration's arguments (`EINVAL`).
    Invalid,
    /// Another registration is in place that this crate cannot locate (`EBUSY`), or a
    /// one-time step is in progress on this thread (re-entrant call).
    Busy,
    /// No critical sections for this OS or architecture, or built for Miri or loom.
    UnsupportedPlatform,
    /// Any other failure.
    Os {
        /// The errno returned.
        errno: i32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Disabled => f.write_str("disabled by PERCPU_NO_RSEQ"),
            Reason::NotSupported => f.write_str("ENOSYS: the kernel has no rseq"),
            Reason::Denied { errno } => write!(
                f,
                "denied by the kernel or a seccomp filter (errno {errno})"
            ),
            Reason::Invalid => f.write_str("EINVAL: the kernel rejected the registration"),
            Reason::Busy => f.write_str(
                "EBUSY: another registration is in place, or registration is in progress",
            ),
            Reason::UnsupportedPlatform => {
                f.write_str("no rseq critical sections on this platform or build")
            }
            Reason::Os { errno } => write!(f, "errno {errno}"),
        }
    }
}

impl std::error::Error for Reason {}

/// Who owns rseq registration in this process (decided on first call).
pub fn owner() -> Owner {
    os::owner()
}

/// Bytes of kernel-filled fields the owner's registration covers (20 for the original ABI,
/// 28 with `node_id` and `mm_cid`); 0 when unavailable. Under glibc this is `__rseq_size`,
/// which glibc before 2.40 reports as 20 even on newer kernels: fields past it are not
/// promised and this crate does not read them.
pub fn feature_size() -> u32 {
    os::feature_size()
}

/// The number of possible CPUs (the kernel's `nr_cpu_ids`): per-CPU arrays indexed by
/// `cpu_id` or `mm_cid` need this many slots.
#[inline]
pub fn possible_cpus() -> usize {
    os::possible_cpus()
}

/// This thread's CPU number from its rseq area, registering it lazily if this crate owns
/// registration. `None` without rseq or while `cpu_id` is negative.
pub fn cpu_id() -> Option<u32> {
    os::read_field(abi::OFFSET_CPU_ID).filter(|&id| (id as i32) >= 0)
}

/// This thread's NUMA node, where the registration's feature size covers it.
pub fn node_id() -> Option<u32> {
    cpu_id()?;
    os::read_field(abi::OFFSET_NODE_ID)
}

/// This thread's memory-map concurrency id, where the registration's feature size covers it.
pub fn mm_cid() -> Option<u32> {
    cpu_id()?;
    os::read_field(abi::OFFSET_MM_CID)
}

/// Whether the current thread has a registered rseq area right now. Unlike [`cpu_id()`] this
/// never registers it: a self-registering process reports `false` for a thread that has not
/// used rseq yet, or whose last [`Registration`] guard dropped.
pub fn is_registered() -> bool {
    os::is_registered()
}

/// Why this thread has no rseq area although the process has an owner (for example `EBUSY`
/// from a foreign registration on this thread).
pub fn thread_failure() -> Option<Reason> {
    os::thread_failure()
}

/// Whether `membarrier`'s RSEQ commands are available (registering the process for them on
/// first call), so that [`Rseq`]'s fences work.
pub fn membarrier_rseq() -> bool {
    os::membarrier_rseq_ready()
}

/// A counted registration of the current thread's rseq area.
///
/// While any guard lives, the thread stays registered. Registrations are counted per
/// thread, so nested users never unregister each other; the last guard to drop unregisters
/// unless an operation registered the thread lazily (that registration lasts until the
/// thread exits). Under glibc ownership a guard is a no-op: glibc keeps every thread
/// registered.
///
/// ```
/// let guard = rseq_sys::Registration::acquire();
/// match guard {
///     Ok(_registered) => println!("cpu {:?}", rseq_sys::cpu_id()),
///     Err(reason) => println!("no rseq: {reason}"),
/// }
/// ```
#[must_use = "the registration lasts as long as the guard"]
pub struct Registration {
    _not_send: PhantomData<*mut ()>,
}

impl Registration {
    /// Register the current thread (or count one more user of its registration).
    pub fn acquire() -> Result<Registration, Reason> {
        os::acquire_registration()?;
        Ok(Registration {
            _not_send: PhantomData,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        os::release_registration();
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("owner", &owner())
            .finish()
    }
}
