//! The operating system's memory calls, and the only place that makes them.
//!
//! Contract: every function returns `None` (or does nothing) on failure instead of
//! panicking, never allocates through the global allocator, and keeps [`mapped_bytes`] equal
//! to the bytes this crate currently holds mapped.
//!
//! Under Miri each function hands over to [`interpreted`] first: Miri's `mmap` accepts only
//! malloc-like calls (no `MAP_NORESERVE`, no partial `munmap`, no `madvise`), so there the
//! memory comes from the system allocator, with the same contract, and everything above this
//! module (the crate's unsafe memory handling) runs in the interpreter unchanged.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// The system page size, read with `sysconf` at run time (4 KiB on most x86_64 systems,
/// 16 or 64 KiB on some aarch64 ones) and cached.
pub(crate) fn page_size() -> usize {
    match PAGE_SIZE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let size = if size > 0 && (size as usize).is_power_of_two() {
                size as usize
            } else {
                4096
            };
            PAGE_SIZE.store(size, Ordering::Relaxed);
            size
        }
        size => size,
    }
}

/// Bytes currently mapped by this crate.
pub(crate) fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Map `len` bytes (a non-zero multiple of the page size) of fresh, zeroed, read-write
/// anonymous memory, page-aligned. `None` when the kernel refuses.
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) fn map(len: usize) -> Option<NonNull<u8>> {
    #[cfg(miri)]
    return interpreted::map(len, page_size());
    debug_assert!(len > 0 && len.is_multiple_of(page_size()));
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    MAPPED.fetch_add(len, Ordering::Relaxed);
    NonNull::new(ptr.cast())
}

/// Map `len` bytes aligned to `align` (a power of two; `len` a multiple of the page size) by
/// over-reserving and unmapping the unaligned head and the tail.
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) fn map_aligned(len: usize, align: usize) -> Option<NonNull<u8>> {
    #[cfg(miri)]
    return interpreted::map(len, align.max(page_size()));
    let page = page_size();
    if align <= page {
        return map(len);
    }
    let total = len.checked_add(align - page)?;
    let base = map(total)?;
    let head = base.as_ptr().addr().wrapping_neg() & (align - 1);
    let aligned = base.as_ptr().wrapping_add(head);
    let tail = total - head - len;
    // SAFETY: `[base, base + head)` and `[aligned + len, base + total)` lie inside the
    // mapping just made, which nothing else knows about; both are page multiples because
    // `base`, `aligned`, `len` and `total` are.
    unsafe {
        if head > 0 {
            unmap(base, head);
        }
        if tail > 0 {
            unmap(NonNull::new_unchecked(aligned.wrapping_add(len)), tail);
        }
    }
    NonNull::new(aligned)
}

/// Unmap `[ptr, ptr + len)`.
///
/// # Safety
/// The range was mapped by this module (a whole mapping, part of one, or parts of adjacent
/// ones; under Miri a whole mapping), is a page multiple, and nothing uses it afterwards.
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    #[cfg(miri)]
    // SAFETY: forwarded from the caller.
    return unsafe { interpreted::unmap(ptr, len) };
    // SAFETY: the caller hands over the range, which this module mapped.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    if rc == 0 {
        MAPPED.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Give the physical memory behind `[ptr, ptr + len)` back to the system, keeping the
/// address range mapped: `madvise(MADV_DONTNEED)`. `false` when the kernel refuses.
///
/// DONTNEED rather than `MADV_FREE`: on a private anonymous mapping DONTNEED drops the
/// pages at once, so the resident set (what users and the tests measure) falls in the
/// call, and the range reads as zeros afterwards. FREE only marks the pages as reclaimable
/// under memory pressure: cheaper when the memory is soon reused, but RSS stays put until
/// the kernel needs memory, and the old contents may come back. Releases here are rare and
/// meant to be seen, so the immediate, deterministic effect wins.
///
/// # Safety
/// The range lies in a mapping made by this module, is a page multiple, and nothing reads
/// or writes it until it is handed out again (its contents are lost).
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) unsafe fn release(ptr: NonNull<u8>, len: usize) -> bool {
    #[cfg(miri)]
    // SAFETY: forwarded from the caller.
    return unsafe { interpreted::release(ptr, len) };
    debug_assert!(len.is_multiple_of(page_size()));
    // SAFETY: the caller guarantees the range is ours and unused; DONTNEED on a private
    // anonymous mapping only replaces its pages with zero-fill-on-demand ones.
    unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Grow or shrink the mapping `[ptr, ptr + old_len)` to `new_len` bytes, moving it if need
/// be (`MREMAP_MAYMOVE`). `None` leaves the old mapping untouched: the kernel refuses, for
/// one, a range that spans two mappings.
///
/// # Safety
/// `[ptr, ptr + old_len)` was mapped by this module (as for [`unmap`]), is not used by
/// anyone else during the call; on success the old range must no longer be used.
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) unsafe fn remap(
    ptr: NonNull<u8>,
    old_len: usize,
    new_len: usize,
) -> Option<NonNull<u8>> {
    #[cfg(miri)]
    // SAFETY: forwarded from the caller.
    return unsafe { interpreted::remap(ptr, old_len, new_len) };
    // SAFETY: the caller owns the whole mapping; MREMAP_MAYMOVE lets the kernel pick a new
    // address and never touches other mappings.
    let new = unsafe { libc::mremap(ptr.as_ptr().cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
    if new == libc::MAP_FAILED {
        return None;
    }
    if new_len >= old_len {
        MAPPED.fetch_add(new_len - old_len, Ordering::Relaxed);
    } else {
        MAPPED.fetch_sub(old_len - new_len, Ordering::Relaxed);
    }
    NonNull::new(new.cast())
}

/// Nanoseconds on a monotonic clock of coarse resolution (a few milliseconds: the vDSO
/// reads it without a system call and without the time counter), for pacing slow work.
pub(crate) fn monotonic_coarse_ns() -> u64 {
    // Miri knows the precise clock; the coarse one only saves time natively.
    let clock = if cfg!(miri) {
        libc::CLOCK_MONOTONIC
    } else {
        libc::CLOCK_MONOTONIC_COARSE
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock exists on every Linux since
    // 2.6.32, and should the call fail `now` stays zero (pacing then waits for a later call).
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// The process's resident set in bytes, from `/proc/self/statm` (read with raw
/// open/read into a stack buffer: no allocation). `None` when unreadable.
#[cfg_attr(miri, allow(unreachable_code))]
pub(crate) fn process_resident_bytes() -> Option<usize> {
    // Miri isolates the program from the file system.
    #[cfg(miri)]
    return None;
    let mut buf = [0u8; 128];
    // SAFETY: NUL-terminated path, read-only open.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buf` is writable for its length; the descriptor is ours and closed at once.
    let n = unsafe {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    // Second field: resident pages.
    let text = &buf[..n as usize];
    let mut fields = text.split(|&b| b == b' ');
    let _size = fields.next()?;
    let resident = fields.next()?;
    let mut pages = 0usize;
    for &digit in resident {
        if !digit.is_ascii_digit() {
            return None;
        }
        pages = pages
            .checked_mul(10)?
            .checked_add(usize::from(digit - b'0'))?;
    }
    pages.checked_mul(page_size())
}

/// The memory calls as the interpreter can run them: the system allocator (never the global
/// one, which may be this crate) stands in for the kernel's mappings.
#[cfg(miri)]
mod interpreted {
    use super::{page_size, MAPPED};
    use core::alloc::{GlobalAlloc, Layout};
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::alloc::System;

    /// Mappings aligned beyond a page, as (address, alignment): `dealloc` needs the
    /// alignment `alloc` was given, and `unmap` is told only the address and length. A
    /// fixed table, since this module may not allocate through the global allocator; the
    /// interpreted tests hold a handful at a time.
    static OVER_ALIGNED: [(AtomicUsize, AtomicUsize); 256] =
        [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 256];

    fn layout(len: usize, align: usize) -> Option<Layout> {
        Layout::from_size_align(len, align).ok()
    }

    pub(super) fn map(len: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = layout(len, align)?;
        let slot = if align > page_size() {
            // Claim a free entry before allocating, so a full table fails cleanly.
            Some(OVER_ALIGNED.iter().find(|(address, _)| {
                address
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })?)
        } else {
            None
        };
        // SAFETY: `len` is non-zero (the callers' contract), so the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { System.alloc_zeroed(layout) });
        if let Some((address, alignment)) = slot {
            alignment.store(align, Ordering::Relaxed);
            address.store(ptr.map_or(0, |p| p.as_ptr().addr()), Ordering::Release);
        }
        MAPPED.fetch_add(ptr.map_or(0, |_| len), Ordering::Relaxed);
        ptr
    }

    /// The alignment `ptr` was mapped with, forgetting it.
    fn take_alignment(ptr: NonNull<u8>) -> usize {
        for (address, alignment) in &OVER_ALIGNED {
            if address.load(Ordering::Acquire) == ptr.as_ptr().addr() {
                let align = alignment.load(Ordering::Relaxed);
                address.store(0, Ordering::Release);
                return align;
            }
        }
        page_size()
    }

    /// # Safety
    /// As for [`super::unmap`], and the range is a whole mapping (the interpreter frees only
    /// whole allocations; the native `map_aligned` and the large-block cache's split and
    /// joined blocks are the only partial unmaps, and here the first maps aligned directly
    /// and the second is off).
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
        let align = take_alignment(ptr);
        // SAFETY: the caller hands over a whole mapping made by `map` with this length and,
        // as looked up, this alignment.
        unsafe { System.dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(len, align)) };
        MAPPED.fetch_sub(len, Ordering::Relaxed);
    }

    /// `MADV_DONTNEED`'s effect on a private anonymous mapping: the range reads as zeros.
    ///
    /// # Safety
    /// As for [`super::release`].
    pub(super) unsafe fn release(ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the caller guarantees the range is ours, mapped and unused.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        true
    }

    /// # Safety
    /// As for [`super::remap`]; the mapping is page-aligned (the only kind the crate remaps).
    pub(super) unsafe fn remap(
        ptr: NonNull<u8>,
        old_len: usize,
        new_len: usize,
    ) -> Option<NonNull<u8>> {
        let page = page_size();
        // SAFETY: the caller owns the whole mapping, made by `map` with `old_len` and page
        // alignment; `new_len` is non-zero.
        let new =
            NonNull::new(unsafe { System.realloc(ptr.as_ptr(), layout(old_len, page)?, new_len) })?;
        if new_len > old_len {
            // SAFETY: `[old_len, new_len)` is inside the new allocation; a grown mapping's
            // new pages read as zeros.
            unsafe { new.as_ptr().add(old_len).write_bytes(0, new_len - old_len) };
            MAPPED.fetch_add(new_len - old_len, Ordering::Relaxed);
        } else {
            MAPPED.fetch_sub(old_len - new_len, Ordering::Relaxed);
        }
        Some(new)
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
        assert!(page_size() >= 4096);
    }

    #[test]
    fn aligned_mappings_are_aligned_zeroed_and_writable() {
        for align in [page_size(), 1 << 16, 1 << 21] {
            let len = 3 * page_size();
            let p = map_aligned(len, align).expect("mmap");
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: the mapping is `len` bytes, ours.
            unsafe {
                let bytes = core::slice::from_raw_parts_mut(p.as_ptr(), len);
                assert!(bytes.iter().all(|&b| b == 0));
                bytes.fill(0xA5);
                unmap(p, len);
            }
        }
    }

    #[test]
    fn remap_keeps_contents() {
        let page = page_size();
        let p = map(page).expect("mmap");
        // SAFETY: `p` is one page, ours; after remap only the new range is used.
        unsafe {
            p.as_ptr().write_bytes(7, page);
            let q = remap(p, page, 64 * page).expect("mremap");
            assert!(core::slice::from_raw_parts(q.as_ptr(), page)
                .iter()
                .all(|&b| b == 7));
            assert!(core::slice::from_raw_parts(q.as_ptr().add(page), 63 * page)
                .iter()
                .all(|&b| b == 0));
            unmap(q, 64 * page);
        }
    }

    #[test]
    fn released_memory_reads_as_zero_and_stays_usable() {
        let len = 16 * page_size();
        let p = map(len).expect("mmap");
        // SAFETY: the mapping is `len` bytes, ours; released only while unused.
        unsafe {
            p.as_ptr().write_bytes(0x5A, len);
            assert!(release(p, len));
            let bytes = core::slice::from_raw_parts_mut(p.as_ptr(), len);
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(1);
            assert!(bytes.iter().all(|&b| b == 1));
            unmap(p, len);
        }
    }

    #[test]
    fn resident_bytes_are_reported() {
        assert!(process_resident_bytes().expect("statm") > 0);
    }
}
