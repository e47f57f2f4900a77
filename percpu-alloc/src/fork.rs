//! Fork safety: `pthread_atfork` handlers that keep the child's allocator usable.
//!
//! `fork` copies only the calling thread. A spin lock that another thread held at that
//! moment would stay held in the child for ever, and the child's first allocation that
//! needs it would spin for ever. So the `prepare` handler takes every lock of the allocator
//! before the fork, and the `parent` and `child` handlers release them after it: the fork
//! then happens at a moment when no other thread is inside a locked section, and every
//! list is consistent in the child.
//!
//! # Lock order
//!
//! `prepare` takes the locks in one fixed global order, which is also the only order in
//! which any code path nests them (so the handler cannot deadlock against a thread that
//! holds some of them):
//!
//! 1. the release lock ([`release`](crate::release): held across a whole
//!    [`release_memory`](crate::release_memory), which takes the locks below);
//! 2. each per-CPU slot's resize lock, slot 0 to the last (held by a resize, which takes
//!    no other lock, and by the drain of a slot's stacks, under the release lock);
//! 3. the stripe caches, stripe by stripe and class by class (never nested);
//! 4. the transfer caches, class 0 to the last (never nested with each other or held while
//!    taking another lock);
//! 5. the central lists, class 0 to the last (one at a time; a central list asks the page
//!    heap for a span while locked);
//! 6. the page heap;
//! 7. the large-block cache (held by a free or a large request, or under the release lock
//!    by a tick or [`release_memory`](crate::release_memory), with no other lock).
//!
//! `parent` and `child` release them in reverse. The per-CPU stacks need nothing more: they
//! change only in committed rseq critical sections, each atomic on its CPU, so a
//! fork never sees one half-done; rseq state is per thread, and the child's only thread
//! keeps its own. The drain of remote stacks runs under the release lock, so no stack is
//! left stopped in the child either. One-time set-up the child cannot finish (the per-CPU
//! regions being mapped by another thread at the fork) is reset by the `child` handler.
//!
//! # Registration
//!
//! The handlers are registered once, lazily, by the first call that is about to take a
//! lock (see [`ensure_registered`]), at a point where the caller holds none: glibc's
//! `pthread_atfork` takes its own lock and may call `malloc`, which may be this allocator
//! (percpu-malloc replaces it), so registering while holding one of our locks could
//! deadlock. Allocations made by `pthread_atfork` itself re-enter [`ensure_registered`] on
//! the registering thread, which recognises itself by its thread id and lets them through;
//! other threads wait until the registration is done, so none takes a lock that a fork in
//! the meantime could leave held. A child forked while the registration was under way
//! (in another thread) takes it over.
//!
//! A `prepare` handler registered *before* ours runs after ours, with our locks held: if it
//! allocated through this allocator it would deadlock. Registering at the first slow path
//! puts ours among the first (the first allocation happens early in a process), and
//! handlers registered later (which run earlier) are free to allocate.

use crate::{central, front, large_cache, page_heap, release, stripe_cache, transfer};
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);
/// The registering thread while `STATE == REGISTERING`: `pid << 32 | tid` (0 before it
/// is known), one word so a takeover in a child replaces both at once.
static REGISTRANT: AtomicU64 = AtomicU64::new(0);

/// The thread that holds every lock between `prepare` and `parent`/`child` (its tid), and
/// how many times `prepare` ran for it: should the handlers ever be registered twice (a
/// child that took over a registration whose handlers had in fact been entered, see
/// [`register`]), the second `prepare` must not wait for the locks the first one holds.
static HOLDER: AtomicUsize = AtomicUsize::new(0);
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Register the fork handlers if that has not been done. Call it holding no lock of the
/// allocator. One load on every call after the first.
#[inline]
pub(crate) fn ensure_registered() {
    if STATE.load(Ordering::Acquire) != REGISTERED {
        register();
    }
}

fn tid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail (a raw syscall, so glibc < 2.30
    // links too).
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn pid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

fn me() -> u64 {
    (u64::from(pid()) << 32) | u64::from(tid())
}

#[cold]
#[inline(never)]
fn register() {
    let me = me();
    loop {
        match STATE.compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                REGISTRANT.store(me, Ordering::Release);
                finish_registration();
                return;
            }
            Err(REGISTERED) => return,
            Err(_) => {
                let owner = REGISTRANT.load(Ordering::Acquire);
                if owner == me {
                    // Re-entered from our own `pthread_atfork` (it allocated): go on, the
                    // caller holds no lock and the registration completes after it.
                    return;
                }
                if owner != 0
                    && owner >> 32 != me >> 32
                    && REGISTRANT
                        .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    // The registrant is in the process this one was forked from: it will
                    // never finish here, so this thread does.
                    finish_registration();
                    return;
                }
                // Another thread is registering. Wait rather than take a lock that a fork
                // before the registration completes would leave held in the child; it
                // does not need anything this thread holds (it holds no lock).
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
}

/// The registrant's part: call `pthread_atfork`, then publish the outcome.
fn finish_registration() {
    // Miri cannot fork (nor register fork handlers): nothing to keep safe there. The
    // handlers are still named, so that the interpreted build compiles the same code.
    #[cfg(miri)]
    let rc = {
        let _handlers: [extern "C" fn(); 3] = [prepare, parent, child];
        0
    };
    #[cfg(not(miri))]
    // SAFETY: the three handlers are `extern "C" fn()` that live as long as the program
    // (this crate is never unloaded: it may be the global allocator).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    // On failure (ENOMEM) the next slow path tries again.
    let state = if rc == 0 { REGISTERED } else { UNREGISTERED };
    REGISTRANT.store(0, Ordering::Release);
    STATE.store(state, Ordering::Release);
}

extern "C" fn prepare() {
    let tid = tid() as usize;
    if HOLDER.load(Ordering::Acquire) == tid {
        // Registered twice: this thread holds every lock already.
        DEPTH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The fixed order (see the module docs).
    release::lock_for_fork();
    front::lock_for_fork();
    stripe_cache::lock_for_fork();
    transfer::lock_for_fork();
    central::lock_for_fork();
    page_heap::lock_for_fork();
    large_cache::lock_for_fork();
    HOLDER.store(tid, Ordering::Release);
    DEPTH.store(1, Ordering::Relaxed);
}

/// Undo one `prepare`: release every lock when it was the outermost.
fn release_all(in_child: bool) {
    if DEPTH.fetch_sub(1, Ordering::Relaxed) != 1 {
        return;
    }
    HOLDER.store(0, Ordering::Release);
    // SAFETY: `prepare` took these locks on this thread (in the child: on the thread whose
    // copy this is) and nothing released them since; released in reverse order.
    unsafe {
        large_cache::unlock_after_fork();
        page_heap::unlock_after_fork();
        central::unlock_after_fork();
        transfer::unlock_after_fork();
        stripe_cache::unlock_after_fork();
        front::unlock_after_fork(in_child);
        release::unlock_after_fork();
    }
}

extern "C" fn parent() {
    release_all(false);
}

extern "C" fn child() {
    // Our handlers ran, so the registration is complete whatever the flag copied from the
    // parent says (the registrant may have been between `pthread_atfork` and the store).
    REGISTRANT.store(0, Ordering::Relaxed);
    STATE.store(REGISTERED, Ordering::Release);
    front::after_fork_in_child();
    release_all(true);
}
