//! The page heap: address space for spans of small objects, and large allocations.
//!
//! Spans for small objects are cut from 64 MiB arenas (mapped `MAP_NORESERVE`, aligned to
//! [`SPAN_ALIGN`], so untouched parts cost no memory) by a bump pointer under a spin lock,
//! and recorded in the pagemap with their size class. They are never returned to the
//! system yet (see the crate docs' "not yet" list).
//!
//! Large allocations (over [`MAX_SMALL`](crate::size_class::MAX_SMALL) bytes or aligned
//! beyond [`MAX_SMALL_ALIGN`](crate::size_class::MAX_SMALL_ALIGN)) are one mapping each,
//! aligned by over-reserving and trimming, recorded in the pagemap by their start, unmapped
//! on free and grown or shrunk with `mremap`.

use crate::os;
use crate::pagemap::{self, Entry};
use crate::size_class::SPAN_ALIGN;
use crate::spin::SpinLock;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

const ARENA_BYTES: usize = 64 << 20;

struct Arena {
    next: usize,
    end: usize,
}

static ARENA: SpinLock<Arena> = SpinLock::new(Arena { next: 0, end: 0 });
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of live large allocations (their mapped lengths).
pub(crate) fn large_bytes() -> usize {
    LARGE_BYTES.load(Ordering::Relaxed)
}

/// A fresh, zeroed span of `bytes` (a multiple of [`SPAN_ALIGN`]) for size class `class`,
/// recorded in the pagemap. `None` when out of memory.
pub(crate) fn new_span(bytes: usize, class: usize) -> Option<NonNull<u8>> {
    debug_assert!(bytes.is_multiple_of(SPAN_ALIGN) && bytes <= ARENA_BYTES);
    let start = {
        let mut arena = ARENA.lock();
        if arena.end - arena.next < bytes {
            // The remainder of the old arena is abandoned (at most one span's worth, never
            // touched, so never resident).
            let fresh = os::map_aligned(ARENA_BYTES, SPAN_ALIGN)?;
            arena.next = fresh.as_ptr() as usize;
            arena.end = arena.next + ARENA_BYTES;
        }
        let start = arena.next;
        arena.next += bytes;
        start
    };
    let span = NonNull::new(start as *mut u8)?;
    if !pagemap::set_range(span, bytes, Entry::Small(class)) {
        // The span is lost to the arena, but nothing refers to it.
        return None;
    }
    Some(span)
}

/// The mapped length for a large request of `size` bytes, or `None` on overflow.
pub(crate) fn large_len(size: usize) -> Option<usize> {
    let len = size.max(1).checked_next_multiple_of(os::page_size())?;
    // Layout sizes are at most isize::MAX; keep the mapped length there too.
    (len <= isize::MAX as usize).then_some(len)
}

/// A large allocation of at least `size` bytes aligned to `align`, zeroed. `None` when out
/// of memory or the request cannot be represented.
pub(crate) fn alloc_large(size: usize, align: usize) -> Option<NonNull<u8>> {
    let len = large_len(size)?;
    let ptr = os::map_aligned(len, align)?;
    if !pagemap::set(ptr, Entry::Large(len)) {
        // SAFETY: the mapping was just made and never handed out.
        unsafe { os::unmap(ptr, len) };
        return None;
    }
    LARGE_BYTES.fetch_add(len, Ordering::Relaxed);
    Some(ptr)
}

/// Free a large allocation.
///
/// # Safety
/// `ptr` was returned by [`alloc_large`] or [`realloc_large`] with mapped length `len` (its
/// pagemap entry), is not used afterwards and not freed twice.
pub(crate) unsafe fn free_large(ptr: NonNull<u8>, len: usize) {
    // Clear the entry while the address range is still ours: once unmapped, another thread
    // may be given the same address and record it.
    pagemap::set(ptr, Entry::None);
    LARGE_BYTES.fetch_sub(len, Ordering::Relaxed);
    // SAFETY: the caller hands over the whole mapping.
    unsafe { os::unmap(ptr, len) };
}

/// Resize a large allocation (page-aligned only) to `new_size` bytes with `mremap`, moving
/// it if need be. `None` leaves the old allocation intact.
///
/// # Safety
/// As for [`free_large`]; on success the old pointer must no longer be used.
pub(crate) unsafe fn realloc_large(
    ptr: NonNull<u8>,
    len: usize,
    new_size: usize,
) -> Option<NonNull<u8>> {
    let new_len = large_len(new_size)?;
    if new_len == len {
        return Some(ptr);
    }
    pagemap::set(ptr, Entry::None);
    // SAFETY: the caller owns the whole mapping `[ptr, ptr + len)`.
    match unsafe { os::remap(ptr, len, new_len) } {
        Some(new) => {
            if !pagemap::set(new, Entry::Large(new_len)) {
                // Recording fails only when a pagemap leaf cannot be mapped: the process is
                // out of memory and the old block is already moved. Stop rather than hand
                // out a block that could never be freed.
                crate::abort_out_of_metadata();
            }
            if new_len > len {
                LARGE_BYTES.fetch_add(new_len - len, Ordering::Relaxed);
            } else {
                LARGE_BYTES.fetch_sub(len - new_len, Ordering::Relaxed);
            }
            Some(new)
        }
        None => {
            pagemap::set(ptr, Entry::Large(len));
            None
        }
    }
}
