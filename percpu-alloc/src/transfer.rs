//! Transfer caches: one per size class, moving batches between CPU caches and the central
//! list.
//!
//! A fixed array of object pointers under a spin lock: a CPU cache that overflows hands a
//! batch here, one that runs dry takes a batch from here, so objects freed on one CPU reach
//! another without taking the central list's lock. When the array is full the batch goes
//! on to the central list; when it is empty the request goes to the central list. Threads
//! with no CPU (see the crate docs) come here in batches too, from their stripe caches.
//!
//! Classes the central lists partition per slot (see [`central`]'s docs) skip this array:
//! their objects must go back to their owners' lists, and a CPU must refill from its own.

use crate::central;
use crate::fork;
use crate::object_stack::{self, ObjectStack};
use crate::release;
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::spin::SpinLock;

/// Room for objects in each class's transfer cache: many batches of small objects, so a
/// burst that overflows a CPU's cache moves through this array, under a lock per class,
/// rather than through the central list.
const CAPACITY: usize = 1024;
/// The bytes each class's transfer cache may hold (at least two batches): large objects
/// get few places, small ones up to [`CAPACITY`].
const LIMIT_BYTES: usize = 1 << 20;

/// Objects the transfer cache of `class` holds at most.
fn limit(class: usize) -> usize {
    let info = &CLASSES[class];
    (LIMIT_BYTES / info.size).clamp(2 * info.batch, CAPACITY)
}

static TRANSFER: [SpinLock<ObjectStack<CAPACITY>>; NUM_CLASSES] =
    [const { SpinLock::new(ObjectStack::EMPTY) }; NUM_CLASSES];

/// Fill `out` with free objects of `class` for the cache of slot `slot`: from that slot's
/// own central list when the class is partitioned, else as [`remove`].
pub(crate) fn remove_for_slot(class: usize, slot: usize, out: &mut [*mut u8]) -> usize {
    if central::is_partitioned(class) {
        fork::ensure_registered();
        return central::remove_owned(class, slot, out);
    }
    remove(class, out)
}

/// Fill `out` with free objects of `class`; returns how many (0 only when out of memory).
pub(crate) fn remove(class: usize, out: &mut [*mut u8]) -> usize {
    // Every path that takes a lock comes through here or `insert` first, holding none.
    fork::ensure_registered();
    let n = TRANSFER[class].lock().pop_into(out);
    if n > 0 {
        return n;
    }
    central::remove(class, out)
}

/// Take back free objects of `class`.
///
/// # Safety
/// As for [`central::insert`].
pub(crate) unsafe fn insert(class: usize, items: &[*mut u8]) {
    fork::ensure_registered();
    if central::is_partitioned(class) {
        // SAFETY: forwarded from the caller.
        unsafe { central::insert(class, items) };
        release::maybe_release();
        return;
    }
    {
        let mut cache = TRANSFER[class].lock();
        // All or nothing: a batch stays together on its way to the central list.
        if cache.len() + items.len() <= limit(class) {
            cache.push_up_to(items, CAPACITY);
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { central::insert(class, items) };
    // Free memory grew on the central list: the one point where it can pass the release
    // threshold. No lock is held here.
    release::maybe_release();
}

/// Move every object of `class` held here to the central list (before a release sweep).
pub(crate) fn drain(class: usize) {
    // SAFETY: the transfer cache holds only free objects of `class`, on no other list.
    unsafe { object_stack::drain_to_central(&TRANSFER[class], class) };
}

/// Take every class's lock and keep them, in class order (the fork `prepare` handler).
pub(crate) fn lock_for_fork() {
    TRANSFER.iter().for_each(SpinLock::lock_and_keep);
}

/// Release the locks taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    for lock in TRANSFER.iter().rev() {
        // SAFETY: forwarded from the caller.
        unsafe { lock.unlock_kept() };
    }
}

/// Objects of `class` held here.
pub(crate) fn count(class: usize) -> usize {
    TRANSFER[class].lock().len()
}
