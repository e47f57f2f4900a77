//! Central free lists: one per size class, the last stop before the page heap.
//!
//! A class's central list holds freed objects on an intrusive singly-linked list (the link
//! is the object's first word) and a bump range in its newest span for objects never handed
//! out, so a fresh span costs nothing until used. Everything happens under the class's spin
//! lock, around code that does not allocate (a new span comes from the page heap, which
//! takes its own lock and only maps memory).

use crate::page_heap;
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::spin::SpinLock;

struct Central {
    /// Freed objects, linked through their first word.
    free: *mut u8,
    free_count: usize,
    /// Never-used objects: `[bump, bump_end)` in the newest span.
    bump: usize,
    bump_end: usize,
    /// Objects ever carved from spans (for statistics).
    carved: usize,
}

// SAFETY: the raw pointers are addresses of free objects owned by this list; they are only
// followed under the list's lock.
unsafe impl Send for Central {}

static CENTRAL: [SpinLock<Central>; NUM_CLASSES] = [const {
    SpinLock::new(Central {
        free: core::ptr::null_mut(),
        free_count: 0,
        bump: 0,
        bump_end: 0,
        carved: 0,
    })
}; NUM_CLASSES];

/// Fill `out` with free objects of `class`; returns how many (0 only when out of memory).
pub(crate) fn remove(class: usize, out: &mut [*mut u8]) -> usize {
    let size = CLASSES[class].size;
    let mut list = CENTRAL[class].lock();
    let mut n = 0;
    while n < out.len() {
        if !list.free.is_null() {
            let object = list.free;
            // SAFETY: objects on the free list are ours, at least 8 bytes and 8-aligned, and
            // their first word holds the next link written by `insert`.
            list.free = unsafe { object.cast::<*mut u8>().read() };
            list.free_count -= 1;
            out[n] = object;
            n += 1;
        } else if list.bump_end - list.bump >= size {
            out[n] = list.bump as *mut u8;
            list.bump += size;
            list.carved += 1;
            n += 1;
        } else {
            // Refill the bump range from a fresh span only when nothing was found: a partial
            // batch is fine and keeps the lock short.
            if n > 0 {
                break;
            }
            let span_bytes = CLASSES[class].span_bytes;
            let Some(span) = page_heap::new_span(span_bytes, class) else {
                break;
            };
            list.bump = span.as_ptr() as usize;
            list.bump_end = list.bump + (span_bytes / size) * size;
        }
    }
    n
}

/// Take back free objects of `class`.
///
/// # Safety
/// Every pointer in `items` is an object of `class` from this allocator that nobody uses
/// any more and that is on no other list.
pub(crate) unsafe fn insert(class: usize, items: &[*mut u8]) {
    let mut list = CENTRAL[class].lock();
    for &object in items {
        // SAFETY: the caller hands over the object: at least 8 bytes, 8-aligned, unused.
        unsafe { object.cast::<*mut u8>().write(list.free) };
        list.free = object;
    }
    list.free_count += items.len();
}

/// `(objects ever carved from spans, objects on the free list)` for `class`.
pub(crate) fn counts(class: usize) -> (usize, usize) {
    let list = CENTRAL[class].lock();
    (list.carved, list.free_count)
}
