//! Central free lists: one per size class, the last stop before the page heap.
//!
//! A class's central list holds freed objects on an intrusive singly-linked list (the link
//! is the object's first word) and a bump range in its newest span for objects never handed
//! out, so a fresh span costs nothing until used. Everything happens under the class's spin
//! lock, around code that does not allocate (a new span comes from the page heap, which
//! takes its own lock and only maps memory).
//!
//! Objects do not know their span, and nothing counts live objects per span (that would
//! cost a pagemap lookup and a counter update on every object moved here). Instead
//! [`release_free_spans`] sweeps a class's list now and then: it sorts the free objects by
//! address, counts them per span (the pagemap knows each object's span start), and gives
//! every span whose objects are all here back to the page heap. The sweep is
//! `O(n log n)` in the list's length and runs only on an explicit
//! [`release_memory`](crate::release_memory) or when the free bytes here grew past the
//! release threshold (see [`release`](crate::release)).

use crate::os;
use crate::page_heap;
use crate::pagemap;
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::spin::SpinLock;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

struct Central {
    /// Freed objects, linked through their first word.
    free: *mut u8,
    free_count: usize,
    /// Never-used objects: `[bump, bump + bump_left)` in the newest span (a pointer, so
    /// that objects carved from it keep the span's provenance).
    bump: *mut u8,
    bump_left: usize,
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
        bump: core::ptr::null_mut(),
        bump_left: 0,
        carved: 0,
    })
}; NUM_CLASSES];

/// Bytes of objects on all classes' free lists (updated under each class's lock).
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of objects on the central free lists of all classes.
pub(crate) fn free_bytes() -> usize {
    FREE_BYTES.load(Ordering::Relaxed)
}

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
            FREE_BYTES.fetch_sub(size, Ordering::Relaxed);
            out[n] = object;
            n += 1;
        } else if list.bump_left >= size {
            out[n] = list.bump;
            list.bump = list.bump.wrapping_add(size);
            list.bump_left -= size;
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
            list.bump = span.as_ptr();
            list.bump_left = (span_bytes / size) * size;
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
    FREE_BYTES.fetch_add(items.len() * CLASSES[class].size, Ordering::Relaxed);
}

/// `(objects ever carved from spans, objects on the free list)` for `class`.
pub(crate) fn counts(class: usize) -> (usize, usize) {
    let list = CENTRAL[class].lock();
    (list.carved, list.free_count)
}

/// Give every wholly free span of `class` back to the page heap (which releases its memory
/// to the system); returns the bytes released.
///
/// A span is wholly free when all the objects ever carved from it are on the free list:
/// every object of the span, or for the span the bump range is in, every object before
/// the bump pointer (the rest was never handed out, and goes with it). The free objects are
/// copied to a scratch mapping, sorted by address (so each span's objects are adjacent),
/// counted per span, and the survivors relinked in address order, which also makes later
/// allocations walk memory upwards. The spans themselves are handed to the page heap after
/// the list's lock is dropped.
pub(crate) fn release_free_spans(class: usize) -> usize {
    let size = CLASSES[class].size;
    let span_bytes = CLASSES[class].span_bytes;
    let per_span = span_bytes / size;
    let word = core::mem::size_of::<*mut u8>();
    let mut list = CENTRAL[class].lock();
    let n = list.free_count;
    // The span the bump range is in, and how many objects were carved from it.
    let bump_span = if list.bump_left > 0 {
        pagemap::span_start(list.bump.addr()).map(|span| (span, (list.bump.addr() - span) / size))
    } else {
        None
    };
    let fewest = match bump_span {
        Some((_, carved)) if carved > 0 => carved.min(per_span),
        _ => per_span,
    };
    if n == 0 || n < fewest {
        return 0;
    }
    let scratch_bytes = (n * word).next_multiple_of(os::page_size());
    let Some(scratch) = os::map(scratch_bytes) else {
        return 0;
    };
    // SAFETY: the fresh mapping holds `n` words, is zeroed (null pointers), and is only
    // used through this slice until it is unmapped below.
    let objects = unsafe { core::slice::from_raw_parts_mut(scratch.as_ptr().cast::<*mut u8>(), n) };
    let mut next = list.free;
    for slot in objects.iter_mut() {
        *slot = next;
        // SAFETY: `free_count` objects are on the list, each linked through its first
        // word by `insert` (or by the relinking below).
        next = unsafe { next.cast::<*mut u8>().read() };
    }
    objects.sort_unstable();
    // Released spans' starts are written over the front of `objects`: each released span
    // had at least one object, so the write index never passes the group being read.
    let mut released_spans = 0;
    let mut head: *mut u8 = core::ptr::null_mut();
    let mut tail: *mut u8 = core::ptr::null_mut();
    let mut kept = 0;
    let mut i = 0;
    while i < n {
        // Every free object lies in a span of this class; `None` would be a broken book,
        // and keeping such an object on the list is the harmless answer.
        let span = pagemap::span_start(objects[i].addr());
        let mut j = i + 1;
        if let Some(span) = span {
            // Spans do not overlap, so the sorted objects below `span + span_bytes` from
            // `i` on are exactly this span's.
            while j < n && objects[j].addr() < span + span_bytes {
                j += 1;
            }
        }
        let carved = match (span, bump_span) {
            (Some(span), Some((bump, carved))) if span == bump => carved,
            _ => per_span,
        };
        match span {
            Some(span) if j - i == carved => {
                if matches!(bump_span, Some((bump, _)) if bump == span) {
                    list.bump = core::ptr::null_mut();
                    list.bump_left = 0;
                }
                list.carved -= carved;
                // The span's start, derived from one of its objects to keep the arena's
                // provenance.
                objects[released_spans] = objects[i].with_addr(span);
                released_spans += 1;
            }
            _ => {
                for &object in &objects[i..j] {
                    if tail.is_null() {
                        head = object;
                    } else {
                        // SAFETY: `tail` is a free object of this list (at least 8 bytes,
                        // 8-aligned, unused): its first word is the link.
                        unsafe { tail.cast::<*mut u8>().write(object) };
                    }
                    tail = object;
                    kept += 1;
                }
            }
        }
        i = j;
    }
    if !tail.is_null() {
        // SAFETY: as above.
        unsafe { tail.cast::<*mut u8>().write(core::ptr::null_mut()) };
    }
    list.free = head;
    list.free_count = kept;
    FREE_BYTES.fetch_sub((n - kept) * size, Ordering::Relaxed);
    drop(list);
    let mut released = 0;
    for &span in &objects[..released_spans] {
        // SAFETY: every object carved from this span was on the free list and has been
        // taken off it under the lock, and the bump range no longer points into it, so
        // nothing refers to the span any more; span starts are never null.
        released += unsafe { page_heap::release_span(NonNull::new_unchecked(span), span_bytes) };
    }
    // SAFETY: the scratch mapping is ours and `objects` is not used past this point.
    unsafe { os::unmap(scratch, scratch_bytes) };
    released
}

/// Take every class's lock and keep them, in class order (the fork `prepare` handler).
pub(crate) fn lock_for_fork() {
    CENTRAL.iter().for_each(SpinLock::lock_and_keep);
}

/// Release the locks taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    for lock in CENTRAL.iter().rev() {
        // SAFETY: forwarded from the caller.
        unsafe { lock.unlock_kept() };
    }
}
