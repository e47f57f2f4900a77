//! Transfer caches: one per size class, moving batches between CPU caches and the central
//! list.
//!
//! A fixed array of object pointers under a spin lock: a CPU cache that overflows hands a
//! batch here, one that runs dry takes a batch from here, so objects freed on one CPU reach
//! another without walking the central list's links. When the array is full the batch goes
//! on to the central list; when it is empty the request goes to the central list. Threads
//! with no CPU (see the crate docs) allocate and free here directly.

use crate::central;
use crate::size_class::NUM_CLASSES;
use crate::spin::SpinLock;

/// Objects each class's transfer cache holds.
const CAPACITY: usize = 128;

struct Transfer {
    items: [*mut u8; CAPACITY],
    len: usize,
}

// SAFETY: the pointers are free objects owned by the cache, used only under its lock.
unsafe impl Send for Transfer {}

static TRANSFER: [SpinLock<Transfer>; NUM_CLASSES] = [const {
    SpinLock::new(Transfer {
        items: [core::ptr::null_mut(); CAPACITY],
        len: 0,
    })
}; NUM_CLASSES];

/// Fill `out` with free objects of `class`; returns how many (0 only when out of memory).
pub(crate) fn remove(class: usize, out: &mut [*mut u8]) -> usize {
    {
        let mut cache = TRANSFER[class].lock();
        let n = cache.len.min(out.len());
        if n > 0 {
            let from = cache.len - n;
            out[..n].copy_from_slice(&cache.items[from..cache.len]);
            cache.len = from;
            return n;
        }
    }
    central::remove(class, out)
}

/// Take back free objects of `class`.
///
/// # Safety
/// As for [`central::insert`].
pub(crate) unsafe fn insert(class: usize, items: &[*mut u8]) {
    {
        let mut cache = TRANSFER[class].lock();
        let len = cache.len;
        if len + items.len() <= CAPACITY {
            cache.items[len..len + items.len()].copy_from_slice(items);
            cache.len = len + items.len();
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { central::insert(class, items) }
}

/// Objects of `class` held here.
pub(crate) fn count(class: usize) -> usize {
    TRANSFER[class].lock().len
}
