//! [`percpu_alloc`] behind the C allocation ABI: a shared library that replaces `malloc`
//! and friends in any dynamically linked program through `LD_PRELOAD`.
//!
//! ```text
//! cargo build --release -p percpu-malloc
//! LD_PRELOAD=target/release/libpercpu_malloc.so python3 script.py
//! ```
//!
//! The dynamic linker resolves every `malloc`, `free`, ... in the process (the program,
//! libc's own internal calls such as `strdup` or `fopen`, and libraries loaded later) to
//! this library, which serves them from the per-CPU heap of [`percpu_alloc::PerCpuAlloc`].
//! The library's own Rust code allocates through the same heap (`#[global_allocator]`
//! here is `PerCpuAlloc`, never `System`, which would call back into this `malloc`).
//!
//! Linux only: on other systems the library is empty. The package also builds an rlib,
//! only so that cargo builds the library before its integration tests; do not depend on
//! it (it would export `malloc` from, and set the global allocator of, whatever links it).
//!
//! # Entry points
//!
//! Every block is aligned to at least 16 bytes (`alignof(max_align_t)` on x86_64 and
//! aarch64). Failures set `errno` as listed below. `free` and `posix_memalign` never change
//! `errno` (POSIX.1-2024 requires it of `free`). The other functions may, as C allows, leave
//! a value in `errno` when they succeed, but only when the allocator's slow path made a
//! system call that failed (such as a thread's first-use rseq registration on a system
//! without rseq). Restoring `errno` on every call would cost about 4 ns (two calls to
//! `__errno_location`), a third of a malloc/free pair.
//!
//! | function | semantics |
//! |---|---|
//! | [`malloc`]`(n)` | a block of at least `n` bytes; `malloc(0)` returns a unique pointer that must be freed (as glibc does); `NULL` + `ENOMEM` on failure |
//! | [`free`]`(p)` | `free(NULL)` does nothing; the block's size comes from the allocator's pagemap, not from a header |
//! | [`calloc`]`(n, m)` | `n * m` zeroed bytes; `NULL` + `ENOMEM` when the product overflows |
//! | [`realloc`]`(p, n)` | `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns `NULL` (glibc's behaviour, `errno` untouched); on failure `NULL` + `ENOMEM` and `p` stays valid; the first `min(old usable size, n)` bytes are kept; the result is 16-byte aligned even when `p` was allocated with a larger alignment |
//! | [`reallocarray`]`(p, n, m)` | `realloc(p, n * m)`, `NULL` + `ENOMEM` when the product overflows |
//! | [`posix_memalign`]`(&p, a, n)` | `EINVAL` unless `a` is a power of two and a multiple of `sizeof(void *)`, `ENOMEM` on failure (`*p` untouched in both cases), else `0`; `n == 0` gives a unique pointer |
//! | [`aligned_alloc`]`(a, n)` | `NULL` + `EINVAL` unless `a` is a power of two (as glibc 2.38 and C17); `n` need not be a multiple of `a` |
//! | [`memalign`]`(a, n)` | glibc's rules: `a` is rounded up to a power of two, `NULL` + `EINVAL` if that overflows |
//! | [`valloc`]`(n)` | page-aligned `malloc(n)` |
//! | [`pvalloc`]`(n)` | page-aligned, `n` rounded up to a whole page (at least one); `NULL` + `ENOMEM` on overflow |
//! | [`malloc_usable_size`]`(p)` | the block's usable size (its size class, or its mapped length for large blocks), at least what was requested; `0` for `NULL` and for pointers this library did not hand out |
//! | [`percpu_malloc_active`]`()` | `1`: lets a program find out (with `dlsym(RTLD_DEFAULT, ...)`) that the library is loaded |
//! | [`percpu_malloc_per_cpu_active`]`()` | `1` when the per-CPU caches run (rseq available and set up), `0` before the first allocation and on the locked fallback |
//!
//! Alignments up to 4 KiB come from the size classes; larger ones get their own mapping
//! (see [`percpu_alloc`]). Any power of two is accepted; what the address space cannot
//! provide fails with `ENOMEM`.
//!
//! # Pointers this library did not allocate
//!
//! With `LD_PRELOAD` every allocation after the library is loaded comes from it, but a
//! program can still hand over memory from elsewhere: `mmap`, a static buffer, or blocks
//! the dynamic linker allocated with its own minimal allocator before relocation. Such
//! pointers are recognised by their missing pagemap entry
//! ([`PerCpuAlloc::usable_size`](percpu_alloc::PerCpuAlloc::usable_size) answers `None`):
//! `free` ignores them (the memory leaks rather than corrupting the heap),
//! `malloc_usable_size` answers 0, and `realloc` fails with `NULL` + `ENOMEM`, leaving the
//! block alone (without its size nothing can be copied). A pointer into the middle of a
//! live small block cannot be told apart from its start: freeing one is undefined, as with
//! any malloc.
//!
//! # Without rseq
//!
//! Where rseq is unavailable (old kernels, seccomp, valgrind, `PERCPU_NO_RSEQ=1`), and on
//! each thread before its rseq area exists or while it exits, every call takes
//! percpu-alloc's fallback: the shared transfer caches and central lists under spin locks.
//! The results are the same, only slower under contention. With glibc's own registration
//! turned off (`GLIBC_TUNABLES=glibc.pthread.rseq=0`) rseq-sys registers each thread itself.
//!
//! # Panics and unwinding
//!
//! The entry points are `extern "C"`: since Rust 1.81 a panic that reaches such a boundary
//! aborts the process instead of unwinding into C. None is expected (the allocator reports
//! failure by returning null), but debug builds keep percpu-alloc's debug assertions, and
//! a failed one stops the process at once.
//!
//! # Limitations
//!
//! - `fork` from a multi-threaded program: percpu-alloc has no `pthread_atfork` handlers,
//!   so if another thread holds one of its spin locks at the moment of `fork`, the child
//!   spins forever on its next allocation needing that lock (glibc's malloc takes its
//!   locks around `fork` for this reason). Single-threaded programs, `fork` + `exec`
//!   without allocating in between (`posix_spawn`, `subprocess`) are unaffected.
//! - glibc's introspection calls (`mallinfo`, `malloc_stats`, `malloc_trim`, `mallopt`)
//!   are not replaced: they describe glibc's own, unused heap.
//! - Small-object memory is reused but never returned to the system (see percpu-alloc).

#[cfg(target_os = "linux")]
use percpu_alloc::PerCpuAlloc;

/// Rust code in this library (and in std, when it allocates) uses the same heap as the C
/// entry points. `System` would call `malloc`, that is, this library.
#[cfg(target_os = "linux")]
#[global_allocator]
static HEAP: PerCpuAlloc = PerCpuAlloc::new();

#[cfg(target_os = "linux")]
mod c_api;

#[cfg(target_os = "linux")]
pub use c_api::*;
