//! The exported C functions. See the crate docs for their semantics.

use crate::HEAP;
use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{EINVAL, ENOMEM};
use percpu_alloc::PerCpuAlloc;

/// Every block is aligned to at least this: `alignof(max_align_t)` on 64-bit Linux.
const MIN_ALIGN: usize = 16;

#[inline]
fn errno() -> c_int {
    // SAFETY: `__errno_location` has no preconditions and returns the calling thread's
    // `errno`, valid for reads for the thread's lifetime.
    unsafe { *libc::__errno_location() }
}

#[inline]
fn set_errno(value: c_int) {
    // SAFETY: as in `errno`; the location is writable and only this thread uses it.
    unsafe { *libc::__errno_location() = value }
}

/// Runs `f` and puts `errno` back as it was: the allocator's system calls (`mmap`, rseq
/// registration, `dlsym` on first use) may leave a value behind even when they succeed
/// or when their failure is handled.
///
/// Used where C or POSIX promise `errno` is left alone (`free`, `posix_memalign`) and on
/// cold paths. Not on every allocation: the two `__errno_location` calls cost about 4 ns,
/// a third of a malloc/free pair, and C lets a successful `malloc` change `errno`.
#[inline]
fn keeping_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = errno();
    let out = f();
    set_errno(saved);
    out
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let raw = keeping_errno(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) });
            let size = match usize::try_from(raw) {
                Ok(size) if size.is_power_of_two() => size,
                _ => 4096,
            };
            PAGE.store(size, Ordering::Relaxed);
            size
        }
        size => size,
    }
}

/// A block of at least `size` bytes aligned to `align` (a power of two) and to
/// [`MIN_ALIGN`], zeroed if asked; `size == 0` gets a unique minimal block. Null on
/// failure; `errno` may have been changed either way.
#[inline]
fn allocate(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    debug_assert!(align.is_power_of_two());
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(MIN_ALIGN)) else {
        return ptr::null_mut();
    };
    // SAFETY: `layout` has a non-zero size.
    unsafe {
        if zeroed {
            HEAP.alloc_zeroed(layout)
        } else {
            HEAP.alloc(layout)
        }
    }
    .cast()
}

/// [`allocate`], setting `errno` to `ENOMEM` on failure.
#[inline]
fn allocate_or_enomem(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let p = allocate(size, align, zeroed);
    if p.is_null() {
        set_errno(ENOMEM);
    }
    p
}

/// The layout this library describes a live block with when handing it back to
/// percpu-alloc: its usable size (from the pagemap) at the minimum alignment. `None` for
/// pointers the allocator did not hand out.
///
/// percpu-alloc's `realloc` finds a block's class or mapping in its pagemap by address,
/// copies at most the old layout's size (here the usable size, all of which is the
/// block's) and uses the alignment only for the new block, which C asks to be aligned for
/// `max_align_t` alone; when the block moves it frees the old one by its pagemap entry.
/// Passing this layout instead of the original one is therefore sound for this allocator,
/// although `GlobalAlloc`'s general contract asks for the very layout used to allocate.
/// (`free` needs no layout: [`PerCpuAlloc::free`].)
#[inline]
fn block_layout(p: *mut c_void) -> Option<Layout> {
    let size = PerCpuAlloc::usable_size(p.cast_const().cast())?;
    Layout::from_size_align(size, MIN_ALIGN).ok()
}

/// Allocates `size` bytes aligned to 16. `malloc(0)` returns a unique pointer.
/// Null with `errno = ENOMEM` on failure.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    allocate_or_enomem(size, MIN_ALIGN, false)
}

/// Frees a block from this library. `free(NULL)` does nothing; pointers this library did
/// not hand out are ignored (leaked). Never changes `errno`.
///
/// # Safety
/// `ptr` is null, or a live block returned by this library's allocation functions and not
/// used afterwards (or memory it never handed out, which is left alone).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    keeping_errno(|| {
        // SAFETY: by the caller's contract `ptr` is a live block from this heap, or memory
        // it never handed out, which `free` leaves alone.
        unsafe { PerCpuAlloc::free(ptr.cast()) }
    });
}

/// Allocates `count * size` zeroed bytes. Null with `errno = ENOMEM` when the product
/// overflows or memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => allocate_or_enomem(total, MIN_ALIGN, true),
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Resizes a block, keeping the first `min(old usable size, size)` bytes.
/// `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns null. On
/// failure returns null with `errno = ENOMEM` and `ptr` stays valid, as it does for a
/// pointer this library did not hand out.
///
/// # Safety
/// `ptr` is null or a live block returned by this library; on success it must not be used
/// again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: the caller hands over a live block.
        unsafe { free(ptr) };
        return ptr::null_mut();
    }
    let (Some(layout), Ok(_)) = (block_layout(ptr), Layout::from_size_align(size, MIN_ALIGN))
    else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: `ptr` is a live block of this heap (the pagemap knows it), `layout` is
    // accepted for it (see `block_layout`), and `size` is non-zero and does not overflow
    // `isize` when rounded up to `layout.align()` (checked just above).
    let new = unsafe { HEAP.realloc(ptr.cast(), layout, size) };
    if new.is_null() {
        set_errno(ENOMEM);
    }
    new.cast()
}

/// `realloc(ptr, count * size)`, or null with `errno = ENOMEM` (and `ptr` untouched) when
/// the product overflows.
///
/// # Safety
/// As for [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: the caller's contract is `realloc`'s.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Stores in `*out` a block of `size` bytes aligned to `align` and returns 0. Returns
/// `EINVAL` unless `align` is a power of two and a multiple of `sizeof(void *)`, `ENOMEM`
/// when memory runs out; `*out` is left alone on failure. Never changes `errno`.
///
/// # Safety
/// `out` is valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return EINVAL;
    }
    let p = keeping_errno(|| allocate(size, align, false));
    if p.is_null() {
        return ENOMEM;
    }
    // SAFETY: the caller promises `out` is writable.
    unsafe { out.write(p) };
    0
}

/// A block of `size` bytes aligned to `align`, which must be a power of two (null with
/// `errno = EINVAL` otherwise); `size` need not be a multiple of it. Null with
/// `errno = ENOMEM` when memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(EINVAL);
        return ptr::null_mut();
    }
    allocate_or_enomem(size, align, false)
}

/// A block of `size` bytes aligned to `align` rounded up to a power of two (glibc's rule;
/// 0 means the default 16). Null with `errno = EINVAL` when no power of two is that large,
/// `ENOMEM` when memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(align) => allocate_or_enomem(size, align, false),
        None => {
            set_errno(EINVAL);
            ptr::null_mut()
        }
    }
}

/// A page-aligned block of `size` bytes; null with `errno = ENOMEM` on failure.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    allocate_or_enomem(size, page_size(), false)
}

/// A page-aligned block of `size` rounded up to whole pages (at least one). Null with
/// `errno = ENOMEM` when that rounding overflows or memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(rounded) => allocate_or_enomem(rounded, page, false),
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// The usable size of a live block (at least the size requested), 0 for null and for
/// pointers this library did not hand out. Only looks `ptr` up in the pagemap, never
/// dereferences it; for an address inside a small block, or a freed one, the answer means
/// nothing.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    PerCpuAlloc::usable_size(ptr.cast_const().cast()).unwrap_or(0)
}

/// Always 1: a program can look this symbol up with `dlsym(RTLD_DEFAULT,
/// "percpu_malloc_active")` to find out that this library is loaded.
#[unsafe(no_mangle)]
pub extern "C" fn percpu_malloc_active() -> c_int {
    1
}

/// 1 when percpu-alloc's per-CPU caches are running (rseq available and the per-CPU
/// regions set up, which happens on first use), else 0 (the locked fallback).
#[unsafe(no_mangle)]
pub extern "C" fn percpu_malloc_per_cpu_active() -> c_int {
    c_int::from(keeping_errno(percpu_alloc::stats).per_cpu_active)
}
