//! A tcmalloc-style per-CPU memory allocator on Linux restartable sequences, usable as the
//! `#[global_allocator]` with one line.
//!
//! ```
//! use percpu_alloc::PerCpuAlloc;
//!
//! #[global_allocator]
//! static ALLOC: PerCpuAlloc = PerCpuAlloc::new();
//!
//! let v: Vec<u64> = (0..1000).collect();
//! let s = format!("{} items", v.len());
//! assert_eq!(s, "1000 items");
//! let stats = percpu_alloc::stats();
//! assert!(stats.in_use_bytes >= 1000 * 8);
//! assert!(stats.mapped_bytes >= stats.in_use_bytes);
//! ```
//!
//! # Design
//!
//! Four layers, each a module with its own contract:
//!
//! - **Size classes** ([`size_class`](crate)): 104 classes from 8 bytes to 256 KiB, found by
//!   one table lookup (by the size itself up to 1 KiB, `(size + 127) / 128` above). Waste is
//!   below 12.5% for every request over 56 bytes and under 8 bytes below. Alignment up to
//!   4 KiB is served from the classes (a request is rounded to its alignment first; the
//!   class found is then a multiple of it, and spans are 64 KiB-aligned).
//! - **Front end** (`front`): one region per rseq slot, indexed by `mm_cid` where the
//!   kernel promises it (dense: few regions touched when few threads run) else by `cpu_id`
//!   ([`rseq_sys::Rseq::CONCURRENCY_ID`]). Per class a `BoundedStack` header and an array of
//!   object pointers: allocation is one pop critical section, free one push
//!   (`push_word_on` the owning CPU for objects under a line), each with one committing
//!   store. An empty stack is refilled with a batch from the
//!   transfer cache, pushed in one section (`push_words`) when it fits, else one by one
//!   (the thread may have migrated meanwhile; what does not fit goes back); a full one
//!   gives a batch back, popped in one section when the stack holds that many.
//! - **Capacities** (`capacity`): every class starts at capacity 0 on every CPU and grows
//!   by a batch on each miss, while the CPU's capacities stay within a byte budget
//!   ([`set_cpu_cache_budget`], `PERCPU_ALLOC_CPU_CACHE_BYTES`, default 6 MiB); at the
//!   budget a missing class takes room other classes of that CPU leave unused. So a CPU
//!   caches what its threads use, and the per-CPU total stays bounded.
//! - **Middle** (`transfer`, `central`): per class a transfer cache (a fixed array of
//!   pointers under a spin lock, up to 1024 objects or 1 MiB) that moves batches between
//!   CPUs, backed by a central free list (a stack of object addresses in its own mapping,
//!   so moving a batch never touches the objects, plus a bump range over the newest span
//!   so fresh spans are never touched before use).
//!   Threads without a CPU keep a small stack per class on their stripe (`stripe_cache`)
//!   in front of the transfer cache. Classes under a cache line (8-56 B) skip the transfer
//!   cache once the per-CPU caches exist: each slot has its own central list for them, its
//!   refills carve only spans recorded as its own (in the pagemap, and in a header line
//!   at the start of each of these spans, which also holds the owner's stack for the class
//!   and which the free path reads), and a free on
//!   another CPU goes back to the owning slot's list (where its next refill finds it), so
//!   objects handed out on different CPUs never share a line (no passive false sharing).
//! - **Back end** (`page_heap`, `pagemap`, `os`): spans cut from 64 MiB `MAP_NORESERVE`
//!   arenas; a two-level radix pagemap over 48-bit addresses maps each 4 KiB granule to its
//!   size class (small spans) or mapped length (large allocations), so a block can be
//!   freed without its size ([`PerCpuAlloc::free`]), and [`PerCpuAlloc::usable_size`] and
//!   `realloc` work. `dealloc` takes the class from the layout, as `GlobalAlloc`'s
//!   contract allows, and reads no pagemap (debug builds check the class against it);
//!   C's `free` goes by the pagemap. Requests over 256 KiB or
//!   aligned beyond 4 KiB get their own mapping (alignment by over-reserving and trimming,
//!   any power of two up to what the address space allows, 1 GiB included); `realloc` of
//!   such blocks uses `mremap`. A freed large block is kept mapped for the next large
//!   request it fits (`large_cache`: within [`set_large_cache_bytes`],
//!   `PERCPU_ALLOC_LARGE_CACHE_BYTES`, default 32 MiB, blocks up to a quarter of that), so
//!   programs that cycle large buffers pay no `mmap`, `munmap` or page faults for them.
//!   The page size is read at run time.
//!
//! Metadata never comes from the global allocator: the pagemap root, the transfer and
//! central lists and the stripe caches are statics, everything else is mmap'd. The spin
//! locks are held only around code that does not allocate, so an allocation on the same
//! thread (a signal handler aside: `malloc` is not async-signal-safe either) never finds
//! its own lock held.
//! There is no thread-local storage of ours at all; rseq-sys's per-thread lookups (the rseq
//! area, the stripe ticket) are allocation-free and do not use initial-exec TLS.
//!
//! # Invariant
//!
//! Every free object is in exactly one place: a CPU's stack, a stripe's stack, a transfer
//! cache, a central free list (shared, or a slot's), or an unused bump range. Per-CPU
//! stacks are written only by committed rseq critical sections on their own slot (headers
//! are set up before the regions are published); everything else moves objects under a
//! lock.
//!
//! # Without rseq
//!
//! When a thread has no CPU (rseq unavailable: old kernel, seccomp, valgrind,
//! `PERCPU_NO_RSEQ=1`; early in a thread or while it exits; or before the per-CPU regions
//! exist) each allocation and free goes to a small stack per size class on the thread's
//! *stripe* (one per CPU up to 16, dealt to threads round-robin, as
//! [`rseq_sys::stripe`] describes), under that stack's own spin lock, which batches its
//! traffic with the transfer cache: correct, slower than a per-CPU cache (a lock per
//! operation), still spread over threads, and no per-CPU slot is touched. When rseq is
//! unavailable for the whole process the per-CPU regions are never mapped.
//!
//! # Returning memory
//!
//! [`release_memory`] gives free memory back to the system: it drains every CPU's cache
//! (membarrier stop protocol), the stripe caches and the transfer caches into the central
//! lists, and releases every wholly free span with `madvise(MADV_DONTNEED)`. DONTNEED
//! rather than `MADV_FREE`: the resident set drops in the call and the pages read as zeros,
//! where FREE only lets the kernel take them lazily under pressure (RSS stays put until
//! then). Released spans stay mapped and are reused first. [`set_release_threshold`] (or the
//! `PERCPU_ALLOC_RELEASE_BYTES` environment variable, read at first use, e.g. `256m`) makes
//! the allocation slow paths do the same, without the per-CPU drain, whenever that many
//! bytes of free objects have built up on the central lists; off by default. Large
//! allocations are unmapped when freed, or kept for reuse within their budget until
//! [`release_memory`] or the clock below unmaps them. [`Stats::released_bytes`] counts
//! what went back.
//!
//! And on a clock, with no thread of its own: at most once per release interval
//! ([`set_release_interval`], `PERCPU_ALLOC_RELEASE_INTERVAL_MS`, default one second) the
//! first cache miss drains the per-CPU caches of every CPU that had no miss since the
//! previous tick (resetting their capacities), the stripe caches, and when a CPU was idle
//! the transfer caches, then releases the wholly free spans if the central lists grew by a
//! MiB since, and unmaps the large blocks kept since before the previous tick. A process
//! whose allocation rate falls thus shrinks within a second or two of its next miss; one
//! that stops allocating keeps its memory until it allocates again or calls
//! [`release_memory`].
//!
//! # Fork
//!
//! `pthread_atfork` handlers, registered at the first slow path, take every lock of the
//! allocator before `fork` and release them after, in parent and child, so the child of a
//! multi-threaded process finds no lock held (lock order in `fork.rs`).
//!
//! # Not yet
//!
//! Capacity moves between the classes of one CPU, not between CPUs (an idle CPU's goes back
//! to nothing on the clock); free spans are not merged with their neighbours; the
//! statistics use relaxed atomics and locks rather than percpu-counter.
//!
//! # `Allocator` (nightly)
//!
//! With the `nightly` feature (and a nightly toolchain, for the unstable `allocator_api`)
//! `PerCpuAlloc` also implements `core::alloc::Allocator`, so one collection can use this
//! heap without it being the global allocator: `Vec::new_in(PerCpuAlloc::new())`. `grow`
//! and `shrink` go through `realloc` (in place where the class allows, `mremap` for large
//! blocks) when the alignment stays.

#![cfg_attr(feature = "nightly", feature(allocator_api))]

#[cfg(feature = "nightly")]
mod allocator_api;
mod capacity;
mod central;
mod fork;
mod front;
mod large_cache;
mod object_stack;
mod os;
mod page_heap;
mod pagemap;
mod release;
mod size_class;
mod spin;
mod stripe_cache;
mod transfer;

pub use capacity::{cpu_cache_budget, set_cpu_cache_budget};
pub use large_cache::{large_cache_bytes, set_large_cache_bytes};
pub use release::{
    release_interval, release_memory, release_threshold, set_release_interval,
    set_release_threshold,
};

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use pagemap::{Entry, SpanOwner};
use size_class::CLASSES;

/// The allocator. All instances share one process-wide heap, so it is only a handle: put
/// one in a `#[global_allocator]` static, or call it directly.
#[derive(Debug, Default, Clone, Copy)]
pub struct PerCpuAlloc {
    _private: (),
}

impl PerCpuAlloc {
    /// A handle to the process-wide heap.
    pub const fn new() -> Self {
        PerCpuAlloc { _private: () }
    }

    /// The usable size of the block at `ptr` (at least the size it was requested with), or
    /// `None` when `ptr` is not the start of a block this allocator handed out (for small
    /// objects, any address inside one of its spans answers with that span's class size;
    /// the answer is meaningful only for live blocks).
    pub fn usable_size(ptr: *const u8) -> Option<usize> {
        match pagemap::get(ptr.addr()) {
            Entry::Small(class) => Some(CLASSES[class].size),
            Entry::Large(len) => Some(len),
            Entry::None => None,
        }
    }

    /// Free the block at `ptr` without its layout (C's `free`): the pagemap says what it
    /// is. A pointer this allocator never handed out is left alone. [`GlobalAlloc::dealloc`]
    /// is faster when the layout is at hand: it need not wait for the pagemap.
    ///
    /// # Safety
    /// `ptr` is a live block returned by this allocator (through any handle), or memory it
    /// never handed out; it is not used afterwards.
    pub unsafe fn free(ptr: *mut u8) {
        // SAFETY: forwarded from the caller.
        unsafe { free_entry(ptr, pagemap::get(ptr.addr())) }
    }
}

/// Stop the process: the allocator cannot keep its books (out of memory for metadata in
/// the middle of an operation that cannot be undone).
#[cold]
fn abort_out_of_metadata() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// `GlobalAlloc::alloc` of a layout's `size` and `align`. Requests the granule table does
/// not answer are out of line and called in tail position, so that `front::alloc`'s fast
/// path, inlined here, runs straight through and still saves no registers.
///
/// The two words come apart, in the order `__rust_alloc` receives them: a `Layout` argument
/// is passed alignment first, so the allocator shim the global allocator attribute generates
/// had to swap its two registers (three moves) before every jump here.
fn alloc_sized(size: usize, align: usize) -> *mut u8 {
    match size_class::granule_class(size, align) {
        Some(class) => front::alloc(class),
        None => alloc_other_size(size, align),
    }
}

/// [`alloc_sized`] past the granule table: over 1 KiB or aligned beyond 8 bytes (a class
/// from the rounding path), or large. `size` and `align` are a `Layout`'s.
#[inline(never)]
fn alloc_other_size(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for_aligned(size, align) {
        Some(class) => front::alloc(class),
        None => page_heap::alloc_large(size, align, false).map_or(ptr::null_mut(), NonNull::as_ptr),
    }
}

/// Free the block at `ptr`, which the pagemap says is `entry`.
///
/// # Safety
/// `ptr` is a live block this allocator returned (or, for `Entry::None`, anything), not
/// used afterwards.
#[inline]
unsafe fn free_entry(ptr: *mut u8, entry: Entry) {
    match entry {
        Entry::Small(class) => {
            // Only the classes under a line have owned spans (one more pagemap read).
            let owner = if class < central::OWNED_CLASSES {
                pagemap::owner(ptr.addr())
            } else {
                SpanOwner::NONE
            };
            // SAFETY: the caller hands back a live block this allocator returned; the
            // pagemap says it is an object of `class`, from a span of `owner`.
            unsafe { front::free(class, ptr, owner) }
        }
        // SAFETY: as above; a large block starts its mapping of `len` bytes.
        Entry::Large(len) => unsafe { page_heap::free_large(NonNull::new_unchecked(ptr), len) },
        // Not ours: leaving it alone is the only safe answer.
        Entry::None => {}
    }
}

/// `GlobalAlloc::dealloc` of a layout's `size` and `align` (in the order `__rust_dealloc`
/// receives them, as for [`alloc_sized`]). Out of line, in this crate, as `alloc_sized` is:
/// inlined into the caller's crate it reached the class table and the pagemap, and
/// `front::free`, through the global offset table, two loads and an indirect jump more per
/// free.
///
/// The layout names the class: `GlobalAlloc` requires the layout the block was allocated
/// with, and a block's class is always the one that layout maps to (`realloc` keeps a block
/// in place only then). So the fast path reads no pagemap (two dependent loads and about 15
/// instructions fewer per free); debug builds still check the class against it. The
/// classes under a line also need the span's owner (see `central`'s partitions), which the
/// span's header gives, with the owner's stack for the class, in two loads from one line at
/// the block's own address; the push goes straight onto that stack. Layouts past the
/// granule table are out of line, as in [`alloc_sized`].
///
/// # Safety
/// As for [`GlobalAlloc::dealloc`] with the layout of `size` and `align`.
unsafe fn dealloc_sized(ptr: *mut u8, size: usize, align: usize) {
    match size_class::granule_class(size, align) {
        // SAFETY: forwarded from the caller, with the class of its layout.
        Some(class) => unsafe { free_of_class(ptr, class) },
        // SAFETY: forwarded from the caller.
        None => unsafe { dealloc_other_size(ptr, size, align) },
    }
}

/// [`dealloc_sized`] past the granule table; large layouts have no class and go by the
/// pagemap.
///
/// # Safety
/// As for [`dealloc_sized`].
#[inline(never)]
unsafe fn dealloc_other_size(ptr: *mut u8, size: usize, align: usize) {
    match size_class::class_for_aligned(size, align) {
        // SAFETY: forwarded from the caller, with the class of its layout.
        Some(class) => unsafe { free_of_class(ptr, class) },
        // SAFETY: forwarded from the caller.
        None => unsafe { dealloc_by_pagemap(ptr) },
    }
}

/// Free `ptr`, a block of `class` (the class of the layout it was allocated with).
///
/// # Safety
/// `ptr` is a live block this allocator returned with a layout of class `class`, not used
/// afterwards.
#[inline(always)]
unsafe fn free_of_class(ptr: *mut u8, class: usize) {
    debug_assert!(
        pagemap::small_owner(ptr.addr(), class).is_some(),
        "dealloc with a layout other than the block's"
    );
    // Two inlined frees, one per branch, so that each knows whether its class is owned and
    // the class is tested once.
    if class < central::OWNED_CLASSES {
        // SAFETY: the caller hands back a live block of `class`, an owned class, so its
        // span's header names the owner and the owner's stack.
        unsafe {
            let (owner, stack) = central::span_owner_and_stack(ptr);
            front::free_owned(class, ptr, owner, stack)
        }
    } else {
        // SAFETY: the caller hands back a live block of `class`; spans of the classes from
        // a line up have no owner.
        unsafe { front::free(class, ptr, SpanOwner::NONE) }
    }
}

/// [`GlobalAlloc::dealloc`] of a layout with no class (a large block): the pagemap has its
/// mapped length. Out of line, to keep `dealloc` small.
///
/// # Safety
/// As for [`free_entry`].
#[cold]
#[inline(never)]
unsafe fn dealloc_by_pagemap(ptr: *mut u8) {
    let entry = pagemap::get(ptr.addr());
    debug_assert!(
        entry != Entry::None,
        "dealloc of a pointer this allocator never returned"
    );
    // SAFETY: forwarded from the caller; the entry is the pagemap's.
    unsafe { free_entry(ptr, entry) }
}

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()` (class sizes are multiples of the rounded alignment inside 64 KiB-aligned
// spans; large blocks are mapped at that alignment) that no other live allocation overlaps
// (every free object is in exactly one place, see the crate invariant). `dealloc` and
// `realloc` find the block's class or length in the pagemap.
unsafe impl GlobalAlloc for PerCpuAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        alloc_sized(layout.size(), layout.align())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match size_class::class_for(layout.size(), layout.align()) {
            Some(class) => {
                let p = front::alloc(class);
                if !p.is_null() {
                    // SAFETY: `p` is a fresh block of at least `layout.size()` bytes.
                    unsafe { p.write_bytes(0, layout.size()) };
                }
                p
            }
            None => page_heap::alloc_large(layout.size(), layout.align(), true)
                .map_or(ptr::null_mut(), NonNull::as_ptr),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { dealloc_sized(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let entry = pagemap::get(ptr.addr());
        match entry {
            Entry::Small(class) => {
                if size_class::class_for(new_size, align) == Some(class) {
                    return ptr;
                }
            }
            Entry::Large(len) => {
                if align <= os::page_size() && new_size > size_class::MAX_SMALL {
                    // SAFETY: the caller hands over a live large block of mapped length `len`.
                    let remapped = unsafe {
                        page_heap::realloc_large(NonNull::new_unchecked(ptr), len, new_size)
                    };
                    // When `mremap` refuses (out of memory, or a block the large-block cache
                    // joined from two mappings, which `mremap` cannot move as one) the block
                    // is untouched: copy it as any other.
                    if let Some(new) = remapped {
                        return new.as_ptr();
                    }
                }
            }
            Entry::None => {}
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
            return ptr::null_mut();
        };
        let new = alloc_sized(new_layout.size(), new_layout.align());
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new)` bytes long.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                free_entry(ptr, entry);
            }
        }
        new
    }
}

/// A snapshot of the allocator's memory. Read from relaxed atomics and brief lock holds
/// while other threads run, so the parts need not add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in blocks handed out and not freed (small blocks at their class size, large
    /// ones at their mapped length).
    pub in_use_bytes: usize,
    /// Free bytes cached in per-CPU stacks.
    pub per_cpu_cache_bytes: usize,
    /// Bytes the per-CPU stacks are sized to hold now, over all CPUs: each CPU's share is
    /// within [`cpu_cache_budget`], and grows and shrinks with use.
    pub per_cpu_capacity_bytes: usize,
    /// Free bytes in the transfer caches.
    pub transfer_cache_bytes: usize,
    /// Free bytes cached for threads without a CPU (per thread stripe).
    pub no_cpu_cache_bytes: usize,
    /// Free bytes on the central free lists (not counting never-used parts of spans).
    pub central_bytes: usize,
    /// Bytes of large allocations currently mapped.
    pub large_bytes: usize,
    /// Bytes of freed large blocks kept mapped (and resident) for reuse, within
    /// [`large_cache_bytes`].
    pub large_cached_bytes: usize,
    /// Bytes of address space this allocator has mapped (spans, large blocks, metadata).
    pub mapped_bytes: usize,
    /// The whole process's resident set (`/proc/self/statm`), when readable.
    pub process_resident_bytes: Option<usize>,
    /// Whether the per-CPU caches are running (rseq available and set up).
    pub per_cpu_active: bool,
    /// Bytes of free spans kept by the page heap for reuse: mapped, their memory given
    /// back to the system (or never touched).
    pub page_heap_free_bytes: usize,
    /// Bytes given back to the system since the process started (cumulative): spans
    /// released with `MADV_DONTNEED` by [`release_memory`] and the automatic release, and
    /// freed large blocks the large-block cache kept and then unmapped. Large blocks
    /// unmapped as they are freed are not counted.
    pub released_bytes: usize,
}

/// Read the allocator's statistics. Allocation-free.
pub fn stats() -> Stats {
    fork::ensure_registered();
    let mut s = Stats::default();
    let mut small_in_use = 0usize;
    for (class, info) in CLASSES.iter().enumerate() {
        let size = info.size;
        let cached = front::cached(class);
        let transferring = transfer::count(class);
        let striped = stripe_cache::count(class);
        let (carved, free) = central::counts(class);
        s.per_cpu_cache_bytes += cached * size;
        s.transfer_cache_bytes += transferring * size;
        s.no_cpu_cache_bytes += striped * size;
        s.central_bytes += free * size;
        small_in_use += carved.saturating_sub(cached + transferring + striped + free) * size;
    }
    s.per_cpu_capacity_bytes = front::capacity_bytes();
    s.large_bytes = page_heap::large_bytes();
    s.large_cached_bytes = large_cache::kept_bytes();
    s.in_use_bytes = small_in_use + s.large_bytes;
    s.mapped_bytes = os::mapped_bytes();
    s.process_resident_bytes = os::process_resident_bytes();
    s.per_cpu_active = front::is_active();
    s.page_heap_free_bytes = page_heap::free_bytes();
    s.released_bytes = page_heap::released_bytes();
    s
}
