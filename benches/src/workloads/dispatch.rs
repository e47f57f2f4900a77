//! The workloads binary's global allocator: one of the four compared allocators, chosen once
//! per process from the [`ALLOCATOR_VAR`] environment variable and never changed.
//!
//! Each (workload, allocator) pair runs in its own process, so each allocator is measured as
//! the process's real global allocator: every `Box`, `Vec` and thread start-up of the
//! workload goes through it, as in a program that installed it with `#[global_allocator]`.
//!
//! # What the dispatch costs
//!
//! Every call loads one byte from an atomic and switches on it. The byte never changes once
//! set, so the branch predictor learns the one path a process takes and each allocator pays
//! the same load and predicted branches (a compare chain may test one arm a compare or two
//! before another: a fraction of a nanosecond, far below anything the tables show). The four
//! allocators are called statically, not through a `dyn` pointer, so an allocator whose fast
//! path can be inlined (percpu-alloc's, Rust code) is inlined as it would be when installed
//! directly; the C allocators are calls into their libraries either way.

pub use crate::allocators::AllocatorChoice;
use crate::allocators::{JEMALLOC, MIMALLOC, PERCPU};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable naming the allocator a workloads process runs on: `percpu`,
/// `system`, `mimalloc` or `jemalloc` ([`AllocatorChoice::id`]). Unset or unknown means
/// `system`; the child then reports the allocator it really ran on and the parent checks it.
pub const ALLOCATOR_VAR: &str = "PERCPU_WORKLOAD_ALLOCATOR";

/// [`ALLOCATOR_VAR`] for `getenv`; the test below keeps the two spellings equal.
const ALLOCATOR_VAR_C: &CStr = c"PERCPU_WORKLOAD_ALLOCATOR";

/// The byte [`CHOICE`] holds for `choice`.
fn code(choice: AllocatorChoice) -> u8 {
    match choice {
        AllocatorChoice::PerCpu => PERCPU_CODE,
        AllocatorChoice::System => SYSTEM_CODE,
        AllocatorChoice::Mimalloc => MIMALLOC_CODE,
        AllocatorChoice::Jemalloc => JEMALLOC_CODE,
    }
}

const UNCHOSEN: u8 = 0;
const PERCPU_CODE: u8 = 1;
const SYSTEM_CODE: u8 = 2;
const MIMALLOC_CODE: u8 = 3;
const JEMALLOC_CODE: u8 = 4;

/// The chosen allocator's code, [`UNCHOSEN`] until the process's first allocation.
static CHOICE: AtomicU8 = AtomicU8::new(UNCHOSEN);

/// The chosen allocator's code, choosing it on first use.
#[inline(always)]
fn chosen_code() -> u8 {
    // Relaxed is enough: the byte is written once, by `choose`'s compare-exchange, and a
    // thread that still reads `UNCHOSEN` goes through that compare-exchange and reads the
    // winner there.
    match CHOICE.load(Ordering::Relaxed) {
        UNCHOSEN => choose(),
        code => code,
    }
}

/// Read [`ALLOCATOR_VAR`] and fix the choice, unless another thread fixed it first.
#[cold]
#[inline(never)]
fn choose() -> u8 {
    // SAFETY: the name is NUL-terminated. `getenv` races only with a concurrent `setenv`,
    // and this binary never changes its own environment (children get theirs through
    // `Command::env`, which edits a copy).
    let value = unsafe { libc::getenv(ALLOCATOR_VAR_C.as_ptr()) };
    let wanted = if value.is_null() {
        SYSTEM_CODE
    } else {
        // SAFETY: a non-null `getenv` result is a NUL-terminated string in the environment,
        // which stays as it is (see above) while it is read here.
        let value = unsafe { CStr::from_ptr(value) }.to_bytes();
        // Matched on bytes: no allocation may happen here, and `from_id` is not needed.
        match value {
            b"percpu" => PERCPU_CODE,
            b"mimalloc" => MIMALLOC_CODE,
            b"jemalloc" => JEMALLOC_CODE,
            _ => SYSTEM_CODE,
        }
    };
    match CHOICE.compare_exchange(UNCHOSEN, wanted, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => wanted,
        Err(already) => already,
    }
}

/// The global allocator of the workloads binary: forwards every call to the allocator
/// [`ALLOCATOR_VAR`] named when the process first allocated.
#[derive(Debug, Default)]
pub struct EnvSelectedAllocator;

impl EnvSelectedAllocator {
    /// The allocator; which one it forwards to is decided at the first allocation.
    pub const fn new() -> Self {
        EnvSelectedAllocator
    }

    /// The allocator this process runs on (choosing it now if nothing was allocated yet).
    pub fn active() -> AllocatorChoice {
        let code = chosen_code();
        AllocatorChoice::ALL
            .into_iter()
            .find(|&choice| self::code(choice) == code)
            .unwrap_or(AllocatorChoice::System)
    }
}

/// Call `$method` with `$args` on the chosen allocator. `chosen_code` returns one of the four
/// codes, so the last arm is jemalloc's.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match chosen_code() {
            PERCPU_CODE => PERCPU.$method($($arg),*),
            SYSTEM_CODE => System.$method($($arg),*),
            MIMALLOC_CODE => MIMALLOC.$method($($arg),*),
            _ => JEMALLOC.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to the same one of four correct `GlobalAlloc` implementations for
// the whole life of the process (the choice is made before the first allocation returns and
// never changes), so each block is freed, grown or shrunk by the allocator that made it, and
// each call carries its caller's contract to an allocator that honours it.
unsafe impl GlobalAlloc for EnvSelectedAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, forwarded unchanged.
        unsafe { forward!(alloc(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, forwarded unchanged to the allocator
        // that returned `ptr` (there is only ever one).
        unsafe { forward!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, forwarded unchanged.
        unsafe { forward!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, forwarded unchanged to the allocator
        // that returned `ptr` (there is only ever one).
        unsafe { forward!(realloc(ptr, layout, new_size)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_name_is_the_rust_name() {
        assert_eq!(ALLOCATOR_VAR_C.to_str(), Ok(ALLOCATOR_VAR));
    }

    #[test]
    fn ids_round_trip_and_codes_are_distinct() {
        for choice in AllocatorChoice::ALL {
            assert_eq!(AllocatorChoice::from_id(choice.id()), Some(choice));
            assert_ne!(code(choice), UNCHOSEN);
        }
        let mut codes: Vec<u8> = AllocatorChoice::ALL.into_iter().map(code).collect();
        codes.dedup();
        assert_eq!(codes.len(), 4);
        assert_eq!(AllocatorChoice::from_id("glibc"), None);
    }
}
