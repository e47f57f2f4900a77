//! Caches for threads without a CPU: a small stack of free objects per size class per
//! *stripe*, where a stripe is chosen per thread ([`rseq_sys::stripe`]).
//!
//! Threads without a CPU (rseq unavailable, blocked by seccomp, under valgrind, or a thread
//! starting or exiting) must not touch a per-CPU stack (the crate invariant). Sending each
//! of their allocations and frees to the class's one transfer cache made them queue on one
//! lock per class: two threads without rseq paid 11x glibc for a 16-byte pair. Here each
//! thread works on its stripe's stack, under that stack's own spin lock, and the transfer
//! cache only sees batches, as it does from the per-CPU caches. Threads spread over the
//! stripes round-robin, so the lock is almost always uncontended and its line stays in the
//! thread's core.
//!
//! Like the transfer cache, an entry never holds its lock while calling anything else, so
//! no two locks of this allocator are ever held together from here.

use crate::object_stack::{self, ObjectStack};
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::spin::{SpinGuard, SpinLock};
use crate::transfer;
use crate::{fork, release};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The most stripes kept; with more CPUs, threads share stripes (still this many ways).
const MAX_STRIPES: usize = 16;
/// Stripes per CPU (up to [`MAX_STRIPES`]). A thread without a CPU is often one of more
/// threads than CPUs, and threads sharing a stripe contend for its locks, worst when the
/// holder is preempted. With one stripe per CPU, a batch loop in fallback mode (8 threads
/// on 2 CPUs, 1000 x 64 B each) ran at a median 2.1x glibc's time per block (1.5-6.0x in 6
/// runs); with four, 1.6x (1.5-1.8x), in the same 6 alternating runs (2026-12-07). The cost
/// is what more stripes can hold, which the release sweeps drain.
const STRIPES_PER_CPU: usize = 4;
/// Room for objects in each stripe's stack per class: an entry (lock, length, objects)
/// fills two 128-byte blocks (the unit the adjacent-line prefetcher pulls in). With 14
/// objects (one block) a batch of 1000 small blocks reached the shared transfer cache every
/// 7 objects, and 8 threads on 2 CPUs queued on its lock. With 30, a batch loop in fallback
/// mode (8 threads, 1000 x 64 B each) was faster in each of 8 alternating runs: medians 43
/// against 68 ns per block, 44 against 47 at 1 thread (2026-11-23).
const CAPACITY: usize = 30;

/// Objects a stripe keeps of `class`: twice the class's batch, so large objects (batches
/// of one) keep two and a stripe never holds more than a few of a class's spans busy.
fn limit(class: usize) -> usize {
    (2 * CLASSES[class].batch).clamp(2, CAPACITY)
}

type Stack = ObjectStack<CAPACITY>;

/// One class's stack of one stripe, alone in its 256 bytes so stripes share no line.
#[repr(align(256))]
struct Entry(SpinLock<Stack>);

static STRIPES: [[Entry; NUM_CLASSES]; MAX_STRIPES] =
    [const { [const { Entry(SpinLock::new(Stack::EMPTY)) }; NUM_CLASSES] }; MAX_STRIPES];

/// The stripes in use (a power of two), or 0 before the first use has counted the CPUs.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's entry for `class`.
#[inline]
fn entry(class: usize) -> &'static SpinLock<Stack> {
    let mut stripes = IN_USE.load(Ordering::Relaxed);
    if stripes == 0 {
        // Racing first uses compute the same value.
        stripes =
            rseq_sys::stripe::count(STRIPES_PER_CPU * rseq_sys::possible_cpus()).min(MAX_STRIPES);
        IN_USE.store(stripes, Ordering::Relaxed);
    }
    &STRIPES[rseq_sys::stripe::current(stripes)][class].0
}

/// An object of `class` for a thread without a CPU, or null when out of memory.
pub(crate) fn alloc(class: usize) -> *mut u8 {
    // Every path that takes a lock registers the fork handlers first, holding none.
    fork::ensure_registered();
    let entry = entry(class);
    if let Some(object) = entry.lock().pop() {
        return object;
    }
    // Half a stack's worth: one to hand out, the rest for the next allocations.
    let mut batch = [core::ptr::null_mut(); CAPACITY / 2 + 1];
    let got = transfer::remove(class, &mut batch[..limit(class) / 2 + 1]);
    release::maybe_tick();
    if got == 0 {
        return core::ptr::null_mut();
    }
    let rest = &batch[1..got];
    let kept = entry.lock().push_up_to(rest, limit(class));
    if kept < rest.len() {
        // Another thread of this stripe filled the stack meanwhile.
        // SAFETY: these objects are free and on no list since `remove` returned them.
        unsafe { transfer::insert(class, &rest[kept..]) };
    }
    batch[0]
}

/// Free `object` of `class` for a thread without a CPU.
///
/// # Safety
/// `object` is an object of `class` from this allocator, no longer used, freed once.
pub(crate) unsafe fn free(class: usize, object: *mut u8) {
    fork::ensure_registered();
    let limit = limit(class);
    let mut stack = entry(class).lock();
    if stack.push(object, limit) {
        return;
    }
    // SAFETY: forwarded from the caller; `stack` is the full stack, still locked.
    unsafe { spill(class, object, stack, limit) }
}

/// [`free`] onto a full `stack` (locked): the newer half goes on to the transfer cache
/// with `object`, in the order freed. Out of line, so that the common free neither zeroes
/// nor reserves the overflow buffer: those stores, ahead of the lock's locked instruction,
/// made it wait for them.
///
/// Keeping the older half and passing runs of consecutive frees along keeps objects freed
/// together together, so whole spans come free for a release sweep (handing on the older
/// half interleaved the caches' objects with the central list's: tests/release.rs in
/// fallback mode kept 12-15 MiB more of fragmented spans).
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn spill(class: usize, object: *mut u8, mut stack: SpinGuard<'_, Stack>, limit: usize) {
    let mut overflow = [core::ptr::null_mut(); CAPACITY + 1];
    let n = stack.split_off(limit / 2, &mut overflow);
    drop(stack);
    overflow[n] = object;
    // SAFETY: `object` from the caller; the others were free in the stack and are now
    // only in `overflow`.
    unsafe { transfer::insert(class, &overflow[..=n]) };
    release::maybe_tick();
}

/// Move every object of `class` held here to the central list (before a release sweep,
/// which can give a span back only when all its objects are there).
pub(crate) fn drain(class: usize) {
    // A release tick drains every class of every stripe, so the empty ones must cost
    // little: stripes past the count in use were never touched (the count, once set, never
    // changes), and indexing each entry by place, rather than borrowing a stripe's whole
    // array, keeps Miri from retagging 104 entries per step (seconds per tick there).
    #[expect(
        clippy::needless_range_loop,
        reason = "an iterator borrows each stripe's whole array"
    )]
    for stripe in 0..IN_USE.load(Ordering::Relaxed) {
        // SAFETY: a stripe's stack holds only free objects of `class`, on no other list.
        unsafe { object_stack::drain_to_central(&STRIPES[stripe][class].0, class) };
    }
}

/// Objects of `class` held here (a snapshot).
pub(crate) fn count(class: usize) -> usize {
    STRIPES
        .iter()
        .map(|stripe| stripe[class].0.lock().len())
        .sum()
}

/// Take every entry's lock and keep them, in stripe then class order (the fork `prepare`
/// handler).
pub(crate) fn lock_for_fork() {
    STRIPES
        .iter()
        .flatten()
        .for_each(|entry| entry.0.lock_and_keep());
}

/// Release the locks taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    for entry in STRIPES.iter().flatten().rev() {
        // SAFETY: forwarded from the caller.
        unsafe { entry.0.unlock_kept() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fill_their_own_256_bytes() {
        assert_eq!(size_of::<Entry>(), 256);
        assert_eq!(align_of::<Entry>(), 256);
    }

    /// Objects of `class` out of the central list and in no cache: handed out and not
    /// freed. Only this test allocates through the stripe caches in the lib's test binary
    /// (and nothing there uses the per-CPU caches), so this is exact.
    fn in_use(class: usize) -> usize {
        let (carved, free) = crate::central::counts(class);
        carved - free - count(class) - transfer::count(class)
    }

    #[test]
    fn objects_come_back_exactly_once_through_stripe_and_transfer_cache() {
        // A class the central lists never partition: partitioned ones skip the transfer
        // cache once another test of this binary has set up the per-CPU caches.
        let class = crate::central::PARTITIONED_CLASSES + 2;
        for round in 0..2 {
            let mut objects: Vec<*mut u8> = (0..3 * CAPACITY).map(|_| alloc(class)).collect();
            assert!(
                objects.iter().all(|p| !p.is_null()),
                "round {round}: out of memory"
            );
            for (i, &object) in objects.iter().enumerate() {
                // SAFETY: a fresh object of this class, at least 8 bytes.
                unsafe { object.cast::<u64>().write_unaligned(i as u64) };
            }
            assert_eq!(
                in_use(class),
                3 * CAPACITY,
                "round {round}: every object counted"
            );
            objects.sort();
            objects.dedup();
            assert_eq!(
                objects.len(),
                3 * CAPACITY,
                "round {round}: an object handed out twice"
            );
            // Three stacks' worth: most of it overflows to the transfer cache in batches.
            for &object in &objects {
                // SAFETY: each object came from `alloc` of this class and is freed once.
                unsafe { free(class, object) };
            }
            assert_eq!(
                in_use(class),
                0,
                "round {round}: a freed object went missing"
            );
            assert!(
                transfer::count(class) > 0,
                "round {round}: the overflow reached the transfer cache"
            );
        }
        let on_central = crate::central::counts(class).1;
        let held = count(class);
        drain(class);
        assert_eq!(count(class), 0, "a drain leaves no object behind");
        assert_eq!(
            crate::central::counts(class).1,
            on_central + held,
            "drained to the central list"
        );
        assert_eq!(in_use(class), 0, "a drain loses nothing");
    }
}
