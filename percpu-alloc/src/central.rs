//! Central free lists: one per size class, the last stop before the page heap.
//!
//! A class's central list holds the addresses of its free objects on a stack (an array in
//! its own mapping, grown by doubling) and a bump range in its newest span for objects never
//! handed out, so a fresh span costs nothing until used. Batches move by copying addresses;
//! the objects themselves, usually long out of cache by the time they get here, are never
//! read or written. When the stack's mapping cannot grow, objects go on an intrusive
//! overflow list (linked through their first word) instead of being lost. Everything
//! happens under the class's spin lock, around code that does not allocate (a new span or a
//! larger stack comes from `mmap`, directly or through the page heap's own lock).
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
    /// Free objects: `stack[..len]`, in a mapping with room for `room` pointers (none
    /// while `room` is 0). Pointers, not links through the objects: taking a batch or
    /// giving one back copies words here and never touches the objects, which are usually
    /// cold by the time they reach this list (a walk of links was a cache miss per object,
    /// under the lock).
    stack: *mut *mut u8,
    len: usize,
    room: usize,
    /// Free objects for which the stack could not grow (its mapping failed), linked
    /// through their first word, so that no object is ever lost.
    overflow: *mut u8,
    overflow_count: usize,
    /// Never-used objects: `[bump, bump + bump_left)` in the newest span (a pointer, so
    /// that objects carved from it keep the span's provenance).
    bump: *mut u8,
    bump_left: usize,
    /// Objects ever carved from spans (for statistics).
    carved: usize,
}

// SAFETY: the raw pointers are the list's own stack mapping and addresses of free objects
// owned by this list; both are only used under the list's lock.
unsafe impl Send for Central {}

const EMPTY: Central = Central {
    stack: core::ptr::null_mut(),
    len: 0,
    room: 0,
    overflow: core::ptr::null_mut(),
    overflow_count: 0,
    bump: core::ptr::null_mut(),
    bump_left: 0,
    carved: 0,
};

static CENTRAL: [SpinLock<Central>; NUM_CLASSES] = [const { SpinLock::new(EMPTY) }; NUM_CLASSES];

/// Bytes of objects on all classes' free lists (updated under each class's lock).
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of objects on the central free lists of all classes.
pub(crate) fn free_bytes() -> usize {
    FREE_BYTES.load(Ordering::Relaxed)
}

const WORD: usize = core::mem::size_of::<*mut u8>();

impl Central {
    fn free_count(&self) -> usize {
        self.len + self.overflow_count
    }

    /// Make room for at least `wanted` pointers on the stack (doubling, so that `insert`
    /// stays amortised O(1) per object); false when the mapping cannot grow.
    fn reserve(&mut self, wanted: usize) -> bool {
        if wanted <= self.room {
            return true;
        }
        #[cfg(test)]
        if tests::REFUSE_GROWTH.get() {
            return false;
        }
        let Some(bytes) = wanted
            .max(self.room * 2)
            .checked_mul(WORD)
            .map(|bytes| bytes.next_multiple_of(os::page_size()))
        else {
            return false;
        };
        let mapping = match NonNull::new(self.stack.cast::<u8>()) {
            // SAFETY: the stack is this list's own whole mapping of `room` words, used
            // only under the lock held through `self`; on success the old range is not
            // used again (the new address replaces it below).
            Some(old) => unsafe { os::remap(old, self.room * WORD, bytes) },
            None => os::map(bytes),
        };
        let Some(mapping) = mapping else {
            return false;
        };
        self.stack = mapping.as_ptr().cast();
        self.room = bytes / WORD;
        true
    }

    /// Fill `out` from the free objects (the top of the stack, the newest, then the
    /// overflow list); returns how many.
    fn take_free(&mut self, out: &mut [*mut u8]) -> usize {
        let taken = self.len.min(out.len());
        if taken > 0 {
            self.len -= taken;
            // SAFETY: `stack[..len + taken]` were written by `put` in the list's mapping
            // (non-null, as `taken > 0`), and `out` is the caller's own buffer.
            unsafe {
                core::ptr::copy_nonoverlapping(self.stack.add(self.len), out.as_mut_ptr(), taken);
            }
        }
        let mut n = taken;
        while n < out.len() && !self.overflow.is_null() {
            let object = self.overflow;
            // SAFETY: objects on the overflow list are ours, at least 8 bytes and 8-aligned,
            // and their first word holds the next link written by `put`.
            self.overflow = unsafe { object.cast::<*mut u8>().read() };
            self.overflow_count -= 1;
            out[n] = object;
            n += 1;
        }
        n
    }

    /// Add free objects: onto the stack, or onto the overflow list when the stack cannot
    /// grow.
    ///
    /// # Safety
    /// As for [`insert`].
    unsafe fn put(&mut self, items: &[*mut u8]) {
        if items.is_empty() {
            return;
        }
        if self.reserve(self.len + items.len()) {
            // SAFETY: the stack has room for `len + items.len()` words, and `items` is the
            // caller's buffer, not the stack mapping.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    items.as_ptr(),
                    self.stack.add(self.len),
                    items.len(),
                );
            }
            self.len += items.len();
        } else {
            for &object in items {
                // SAFETY: the caller hands over the object: at least 8 bytes, 8-aligned,
                // unused.
                unsafe { object.cast::<*mut u8>().write(self.overflow) };
                self.overflow = object;
            }
            self.overflow_count += items.len();
        }
    }

    /// Move the overflow list onto the stack, if the stack can grow to take it.
    fn absorb_overflow(&mut self) {
        if self.overflow_count == 0 || !self.reserve(self.len + self.overflow_count) {
            return;
        }
        while !self.overflow.is_null() {
            let object = self.overflow;
            // SAFETY: as in `take_free`: an overflow object's first word is its link.
            self.overflow = unsafe { object.cast::<*mut u8>().read() };
            // SAFETY: `reserve` made room for every overflow object.
            unsafe { self.stack.add(self.len).write(object) };
            self.len += 1;
        }
        self.overflow_count = 0;
    }

    /// Give back most of the stack's mapping when under a quarter of it is in use (after
    /// a release sweep), keeping room for twice what is left.
    fn shrink(&mut self) {
        let page_words = os::page_size() / WORD;
        let keep = (self.len * 2).max(1).next_multiple_of(page_words);
        if self.room < 4 * keep {
            return;
        }
        let Some(old) = NonNull::new(self.stack.cast::<u8>()) else {
            return;
        };
        // SAFETY: as in `reserve`; `keep` words still hold the `len` objects.
        if let Some(mapping) = unsafe { os::remap(old, self.room * WORD, keep * WORD) } {
            self.stack = mapping.as_ptr().cast();
            self.room = keep;
        }
    }
}

/// Fill `out` with free objects of `class`; returns how many (0 only when out of memory).
pub(crate) fn remove(class: usize, out: &mut [*mut u8]) -> usize {
    let size = CLASSES[class].size;
    let mut list = CENTRAL[class].lock();
    let mut n = list.take_free(out);
    FREE_BYTES.fetch_sub(n * size, Ordering::Relaxed);
    while n < out.len() {
        if list.bump_left >= size {
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
    // SAFETY: forwarded from the caller.
    unsafe { list.put(items) };
    FREE_BYTES.fetch_add(items.len() * CLASSES[class].size, Ordering::Relaxed);
}

/// `(objects ever carved from spans, objects on the free list)` for `class`.
pub(crate) fn counts(class: usize) -> (usize, usize) {
    let list = CENTRAL[class].lock();
    (list.carved, list.free_count())
}

/// Give every wholly free span of `class` back to the page heap (which releases its memory
/// to the system); returns the bytes released.
///
/// A span is wholly free when all the objects ever carved from it are on the free list:
/// every object of the span, or for the span the bump range is in, every object before
/// the bump pointer (the rest was never handed out, and goes with it). The free objects are
/// sorted by address in place (so each span's objects are adjacent), counted per span, and
/// the survivors compacted to the bottom of the stack, highest address first, so that later
/// batches, taken from the top, walk memory upwards. The released spans' starts are
/// collected in a scratch mapping and handed to the page heap after the list's lock is
/// dropped; the stack's mapping shrinks when it is mostly empty.
pub(crate) fn release_free_spans(class: usize) -> usize {
    let size = CLASSES[class].size;
    let span_bytes = CLASSES[class].span_bytes;
    let per_span = span_bytes / size;
    let mut list = CENTRAL[class].lock();
    list.absorb_overflow();
    let n = list.len;
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
    // Every span released but the bump range's has `per_span` objects here.
    let most_released = 1 + n / per_span;
    let scratch_bytes = (most_released * WORD).next_multiple_of(os::page_size());
    let Some(scratch) = os::map(scratch_bytes) else {
        return 0;
    };
    // SAFETY: the fresh mapping holds `most_released` words, is zeroed (null pointers), and
    // is only used through this slice until it is unmapped below.
    let spans = unsafe {
        core::slice::from_raw_parts_mut(scratch.as_ptr().cast::<*mut u8>(), most_released)
    };
    // SAFETY: `stack[..n]` holds the pointers `put` and `absorb_overflow` wrote, in the
    // list's own mapping, which only this lock holder uses while the slice lives.
    let objects = unsafe { core::slice::from_raw_parts_mut(list.stack, n) };
    objects.sort_unstable_by(|a, b| b.cmp(a));
    let mut released_spans = 0;
    let mut kept = 0;
    let mut i = 0;
    while i < n {
        // Every free object lies in a span of this class; `None` would be a broken book,
        // and keeping such an object on the list is the harmless answer.
        let span = pagemap::span_start(objects[i].addr());
        let mut j = i + 1;
        if let Some(span) = span {
            // Spans do not overlap, so the objects sorted (downwards) after `i` that are
            // at or above `span` are exactly this span's.
            while j < n && objects[j].addr() >= span {
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
                spans[released_spans] = objects[i].with_addr(span);
                released_spans += 1;
            }
            _ => {
                // Survivors move down: `kept <= i`, so nothing unread is overwritten.
                objects.copy_within(i..j, kept);
                kept += j - i;
            }
        }
        i = j;
    }
    list.len = kept;
    list.shrink();
    FREE_BYTES.fetch_sub((n - kept) * size, Ordering::Relaxed);
    drop(list);
    let mut released = 0;
    for &span in &spans[..released_spans] {
        // SAFETY: every object carved from this span was on the free list and has been
        // taken off it under the lock, and the bump range no longer points into it, so
        // nothing refers to the span any more; span starts are never null.
        released += unsafe { page_heap::release_span(NonNull::new_unchecked(span), span_bytes) };
    }
    // SAFETY: the scratch mapping is ours and `spans` is not used past this point.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;

    thread_local! {
        /// Makes `Central::reserve` fail on this thread, as when `mmap` refuses.
        pub(super) static REFUSE_GROWTH: Cell<bool> = const { Cell::new(false) };
    }

    #[test]
    fn objects_outlive_a_stack_that_cannot_grow() {
        let mut storage = vec![[0usize; 2]; 600];
        let objects: Vec<*mut u8> = storage.iter_mut().map(|o| o.as_mut_ptr().cast()).collect();
        let mut list = EMPTY;
        // SAFETY: each object is 16 bytes, 8-aligned, unused, and handed over once.
        unsafe { list.put(&objects[..100]) };
        assert_eq!((list.len, list.overflow_count), (100, 0));
        REFUSE_GROWTH.set(true);
        // More than a page of words: the stack must grow, and cannot.
        // SAFETY: as above.
        unsafe { list.put(&objects[100..]) };
        assert_eq!((list.len, list.overflow_count), (100, 500));
        assert_eq!(list.free_count(), 600);
        // Still refused: the overflow stays where it is.
        list.absorb_overflow();
        assert_eq!(list.overflow_count, 500);
        REFUSE_GROWTH.set(false);

        let mut out = vec![core::ptr::null_mut(); 150];
        assert_eq!(list.take_free(&mut out), 150);
        // The whole stack, then the overflow list from its newest object.
        assert_eq!(out[..100], objects[..100]);
        assert_eq!(out[100], objects[599]);
        let mut seen: BTreeSet<*mut u8> = out.iter().copied().collect();
        list.absorb_overflow();
        assert_eq!((list.len, list.overflow_count), (450, 0));
        let mut rest = vec![core::ptr::null_mut(); 600];
        assert_eq!(list.take_free(&mut rest), 450);
        assert_eq!(list.take_free(&mut rest), 0);
        seen.extend(&rest[..450]);
        assert_eq!(seen, objects.iter().copied().collect::<BTreeSet<_>>());

        let stack = NonNull::new(list.stack.cast::<u8>()).unwrap();
        // SAFETY: the list's own mapping, not used past this point.
        unsafe { os::unmap(stack, list.room * WORD) };
    }
}
