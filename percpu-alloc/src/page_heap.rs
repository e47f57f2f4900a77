//! The page heap: address space for spans of small objects, and large allocations.
//!
//! Spans for small objects are cut from 64 MiB arenas (mapped `MAP_NORESERVE`, aligned to
//! [`SPAN_ALIGN`], so untouched parts cost no memory) by a bump pointer, and recorded in the
//! pagemap with their size class. A span the central list found wholly free comes back
//! through [`release_span`]: its memory is given back to the system (`MADV_DONTNEED`, see
//! [`os::release`]) and the span goes on a free list by size, from which [`new_span`] takes
//! a span of the size asked for before cutting a new one (splitting a larger free span
//! when none of that size is left). Adjacent free spans are not merged: a span keeps the
//! size it was released with (at most 2 MiB), so address space freed by one size may serve
//! only that size or smaller ones; it costs no memory, only address space.
//!
//! One spin lock covers the bump pointer and the free lists. It is taken with the central
//! list's lock held (a central list asks for a span while locked), never the other way
//! round; the fork handlers take it last (see [`fork`](crate::fork)).
//!
//! Large allocations (over [`MAX_SMALL`](crate::size_class::MAX_SMALL) bytes or aligned
//! beyond [`MAX_SMALL_ALIGN`](crate::size_class::MAX_SMALL_ALIGN)) are one mapping each,
//! aligned by over-reserving and trimming, recorded in the pagemap by their start, and
//! grown or shrunk with `mremap`. A freed one is kept mapped for reuse by a later large
//! request when the [`large_cache`] has room for it, else unmapped.

use crate::large_cache;
use crate::os;
use crate::pagemap::{self, Entry, SpanOwner};
use crate::release;
use crate::size_class::SPAN_ALIGN;
use crate::spin::SpinLock;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Miri interprets every byte it is given: a smaller arena there (still above the largest
/// span) keeps the interpreted tests' memory small.
const ARENA_BYTES: usize = if cfg!(miri) { 4 << 20 } else { 64 << 20 };
/// Free spans are kept by size in whole [`SPAN_ALIGN`] units, up to this many units (2 MiB,
/// the largest span a size class uses); longer free ranges are kept in pieces of this size.
const FREE_BUCKETS: usize = 32;

/// A stack of free spans, in memory mapped for it (never the global allocator). Spans are
/// kept as pointers, not addresses, so each keeps its arena's provenance.
struct FreeStack {
    items: *mut *mut u8,
    len: usize,
    capacity: usize,
}

impl FreeStack {
    fn pop(&mut self) -> Option<*mut u8> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: `len < capacity` entries of the mapping at `items` were written by `push`.
        Some(unsafe { self.items.add(self.len).read() })
    }

    /// `false` when the stack is full and cannot grow (out of memory).
    fn push(&mut self, span: *mut u8) -> bool {
        if self.len == self.capacity && !self.grow() {
            return false;
        }
        // SAFETY: `len < capacity`, inside the mapping at `items`.
        unsafe { self.items.add(self.len).write(span) };
        self.len += 1;
        true
    }

    fn grow(&mut self) -> bool {
        let word = core::mem::size_of::<*mut u8>();
        let old_bytes = self.capacity * word;
        let new_bytes = (old_bytes * 2).max(os::page_size());
        let grown = match NonNull::new(self.items.cast::<u8>()) {
            // SAFETY: `items` is the whole mapping of `old_bytes` made below, used only
            // under the heap lock (held by the caller); on success only the new one is used.
            Some(old) => unsafe { os::remap(old, old_bytes, new_bytes) },
            None => os::map(new_bytes),
        };
        match grown {
            Some(items) => {
                self.items = items.as_ptr().cast();
                self.capacity = new_bytes / word;
                true
            }
            None => false,
        }
    }
}

struct Heap {
    /// The bump range of the newest arena: `[next, next + left)`.
    next: *mut u8,
    left: usize,
    /// `free[i]` holds free spans of `(i + 1) * SPAN_ALIGN` bytes.
    free: [FreeStack; FREE_BUCKETS],
}

// SAFETY: the raw pointers are mappings owned by the heap, used only under its lock.
unsafe impl Send for Heap {}

static HEAP: SpinLock<Heap> = SpinLock::new(Heap {
    next: core::ptr::null_mut(),
    left: 0,
    free: [const {
        FreeStack {
            items: core::ptr::null_mut(),
            len: 0,
            capacity: 0,
        }
    }; FREE_BUCKETS],
});
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes of spans on the free lists (mapped, not resident).
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes given back to the system since the process started: spans with `MADV_DONTNEED`,
/// and the large blocks the cache kept and then unmapped (see [`count_released`]).
static RELEASED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Count `bytes` of resident memory given back to the system some other way than
/// [`release_span`] (the large-block cache unmapping what it kept).
pub(crate) fn count_released(bytes: usize) {
    RELEASED_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// Bytes of live large allocations (their mapped lengths).
pub(crate) fn large_bytes() -> usize {
    LARGE_BYTES.load(Ordering::Relaxed)
}

/// Bytes of free spans held by the page heap (address space kept mapped for reuse, its
/// memory given back).
pub(crate) fn free_bytes() -> usize {
    FREE_BYTES.load(Ordering::Relaxed)
}

/// Bytes given back to the system since the process started.
pub(crate) fn released_bytes() -> usize {
    RELEASED_BYTES.load(Ordering::Relaxed)
}

/// Take the heap's lock and keep it (the fork `prepare` handler).
pub(crate) fn lock_for_fork() {
    HEAP.lock_and_keep();
}

/// Release the lock taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded from the caller.
    unsafe { HEAP.unlock_kept() }
}

impl Heap {
    /// Put the free range `[start, start + bytes)` (whole [`SPAN_ALIGN`] units) on the free
    /// lists, in pieces of at most the largest bucket. A piece that cannot be recorded (no
    /// memory for the list) is dropped: address space lost, no memory.
    fn put_free(&mut self, mut start: *mut u8, mut bytes: usize) {
        while bytes >= SPAN_ALIGN {
            let piece = bytes.min(FREE_BUCKETS * SPAN_ALIGN);
            if self.free[piece / SPAN_ALIGN - 1].push(start) {
                FREE_BYTES.fetch_add(piece, Ordering::Relaxed);
            }
            // Wrapping: after the last piece `start` may point one past the arena.
            start = start.wrapping_add(piece);
            bytes -= piece;
        }
    }

    /// A free span of `bytes`: one of that size, else the smallest larger one, split.
    fn take_free(&mut self, bytes: usize) -> Option<*mut u8> {
        let units = bytes / SPAN_ALIGN;
        for bucket in units - 1..FREE_BUCKETS {
            if let Some(start) = self.free[bucket].pop() {
                let have = (bucket + 1) * SPAN_ALIGN;
                FREE_BYTES.fetch_sub(have, Ordering::Relaxed);
                self.put_free(start.wrapping_add(bytes), have - bytes);
                return Some(start);
            }
        }
        None
    }
}

/// A span of `bytes` (a multiple of [`SPAN_ALIGN`], at most 2 MiB) for size class `class`,
/// recorded in the pagemap as `owner`'s. Its memory is zeroed (fresh, or released with
/// `MADV_DONTNEED`). `None` when out of memory.
pub(crate) fn new_span(bytes: usize, class: usize, owner: SpanOwner) -> Option<NonNull<u8>> {
    debug_assert!(bytes.is_multiple_of(SPAN_ALIGN) && bytes <= FREE_BUCKETS * SPAN_ALIGN);
    let start = {
        let mut heap = HEAP.lock();
        match heap.take_free(bytes) {
            Some(start) => start,
            None => {
                if heap.left < bytes {
                    let fresh = os::map_aligned(ARENA_BYTES, SPAN_ALIGN)?;
                    // The rest of the old arena (never touched, so never resident) joins
                    // the free lists.
                    let (next, left) = (heap.next, heap.left);
                    heap.put_free(next, left);
                    heap.next = fresh.as_ptr();
                    heap.left = ARENA_BYTES;
                }
                let start = heap.next;
                heap.next = start.wrapping_add(bytes);
                heap.left -= bytes;
                start
            }
        }
    };
    let span = NonNull::new(start)?;
    if !pagemap::set_span(span, bytes, class, owner) {
        // The span is lost to the heap, but nothing refers to it.
        return None;
    }
    Some(span)
}

/// Give back a wholly free span: forget its class, release its memory to the system and
/// keep it for reuse by [`new_span`]. Returns the bytes released (0 when `madvise` refused;
/// the span is kept all the same, with its memory).
///
/// # Safety
/// `[span, span + bytes)` is a whole span from [`new_span`] of which no object is in use
/// or on any list, and nothing touches it afterwards.
pub(crate) unsafe fn release_span(span: NonNull<u8>, bytes: usize) -> usize {
    // Clear the pagemap while the span is still ours: once on the free list it may be
    // handed out (and recorded) again.
    pagemap::set_range(span, bytes, Entry::None);
    // SAFETY: the caller hands over the whole span, unused.
    let released = unsafe { os::release(span, bytes) };
    HEAP.lock().put_free(span.as_ptr(), bytes);
    if released {
        RELEASED_BYTES.fetch_add(bytes, Ordering::Relaxed);
        bytes
    } else {
        0
    }
}

/// The mapped length for a large request of `size` bytes, or `None` on overflow.
pub(crate) fn large_len(size: usize) -> Option<usize> {
    let len = size.max(1).checked_next_multiple_of(os::page_size())?;
    // Layout sizes are at most isize::MAX; keep the mapped length there too.
    (len <= isize::MAX as usize).then_some(len)
}

/// A large allocation of at least `size` bytes aligned to `align`, its first `size` bytes
/// zeroed when `zeroed` (a fresh mapping is; a kept one is cleared). `None` when out of
/// memory or the request cannot be represented.
pub(crate) fn alloc_large(size: usize, align: usize, zeroed: bool) -> Option<NonNull<u8>> {
    let len = large_len(size)?;
    let (ptr, len) = match large_cache::take(len, align) {
        Some((ptr, kept_len)) => {
            if zeroed {
                // SAFETY: the kept block is a whole mapping of `kept_len >= len >= size`
                // bytes that the cache handed over, unused by anyone else.
                unsafe { ptr.as_ptr().write_bytes(0, size) };
            }
            (ptr, kept_len)
        }
        None => (os::map_aligned(len, align)?, len),
    };
    if !pagemap::set(ptr, Entry::Large(len)) {
        // SAFETY: the whole mapping of `len` bytes (fresh, or the cache's) was never handed
        // out.
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
    // SAFETY: the caller hands over the whole mapping, its pagemap entry now cleared.
    if !unsafe { large_cache::keep(ptr, len) } {
        // SAFETY: as above; the cache declined it.
        unsafe { os::unmap(ptr, len) };
    }
    release::maybe_tick();
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
