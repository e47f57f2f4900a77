//! The allocators compared and the workloads they are compared on, shared by the criterion
//! suite, the report and the workloads binary (whose global allocator forwards to the same
//! statics).
//!
//! A binary has one global allocator, so every allocator here is called directly through
//! the `GlobalAlloc` trait, on a static instance; whatever the benchmark harness itself
//! allocates comes from the binary's global allocator, the system one.
//!
//! The calls are static: [`with_allocator!`](crate::with_allocator) compiles the code that
//! measures an allocator once per allocator type, so a timed loop calls its allocator's
//! `alloc` and `dealloc` the way a program calls its global allocator (`__rust_alloc` is a
//! direct call), not through a vtable. Through `&dyn GlobalAlloc`, each operation paid an
//! indirect call and the shim's jump more: on the EPYC host of 2026-12-07 a 16-byte pair
//! took about 2 ns longer for every allocator (percpu-alloc 5.95 ns against 4.06, glibc
//! 10.6 against 8.1, mimalloc 6.3 against 4.4; pinned, 7 processes each, the best of 9
//! runs in each), a third to a half of the fastest pairs, which moved every ratio towards 1.

use crossbeam_queue::ArrayQueue;
use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The `PerCpuAlloc` every benchmark measures.
pub static PERCPU: PerCpuAlloc = PerCpuAlloc::new();
/// The mimalloc every benchmark measures.
pub static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
/// The jemalloc every benchmark measures.
pub static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One of the allocators compared: by the report, by criterion's `alloc` group, and as the
/// workloads binary's global allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorChoice {
    /// [`PERCPU`], this project's.
    PerCpu,
    /// `std::alloc::System`: glibc's malloc here, the baseline of every ratio.
    System,
    /// [`MIMALLOC`].
    Mimalloc,
    /// [`JEMALLOC`].
    Jemalloc,
}

impl AllocatorChoice {
    /// Every allocator, percpu-alloc's first: the order every table shows them in.
    pub const ALL: [AllocatorChoice; 4] = [
        AllocatorChoice::PerCpu,
        AllocatorChoice::System,
        AllocatorChoice::Mimalloc,
        AllocatorChoice::Jemalloc,
    ];

    /// Its short name: criterion's benchmark ids, the value of
    /// [`ALLOCATOR_VAR`](crate::workloads::dispatch::ALLOCATOR_VAR) that selects it, and
    /// the name the workloads' `--allocators` takes.
    pub fn id(self) -> &'static str {
        match self {
            AllocatorChoice::PerCpu => "percpu",
            AllocatorChoice::System => "system",
            AllocatorChoice::Mimalloc => "mimalloc",
            AllocatorChoice::Jemalloc => "jemalloc",
        }
    }

    /// The type whose `GlobalAlloc` impl is called, as the report and the JSON name it.
    pub fn type_name(self) -> &'static str {
        match self {
            AllocatorChoice::PerCpu => "percpu_alloc::PerCpuAlloc",
            AllocatorChoice::System => "std::alloc::System",
            AllocatorChoice::Mimalloc => "mimalloc::MiMalloc",
            AllocatorChoice::Jemalloc => "tikv_jemallocator::Jemalloc",
        }
    }

    /// The column heading of the tables: what the allocator is, not the Rust type.
    pub fn column(self) -> &'static str {
        match self {
            AllocatorChoice::PerCpu => "percpu",
            AllocatorChoice::System => "glibc",
            AllocatorChoice::Mimalloc => "mimalloc",
            AllocatorChoice::Jemalloc => "jemalloc",
        }
    }

    /// The allocator whose [`id`](Self::id) is `id`.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|choice| choice.id() == id)
    }
}

/// `with_allocator!(choice, |a| body)`: `body` with `a` bound to the `&'static` allocator
/// the [`AllocatorChoice`] `choice` stands for, as its own type. `body` is compiled once per
/// allocator, so the calls it makes through `a` are static (and a timed loop in it is
/// compiled for that allocator alone); every copy must have the same type.
#[macro_export]
macro_rules! with_allocator {
    ($choice:expr, |$a:ident| $body:expr) => {
        match $choice {
            $crate::allocators::AllocatorChoice::PerCpu => {
                let $a = &$crate::allocators::PERCPU;
                $body
            }
            $crate::allocators::AllocatorChoice::System => {
                let $a = &::std::alloc::System;
                $body
            }
            $crate::allocators::AllocatorChoice::Mimalloc => {
                let $a = &$crate::allocators::MIMALLOC;
                $body
            }
            $crate::allocators::AllocatorChoice::Jemalloc => {
                let $a = &$crate::allocators::JEMALLOC;
                $body
            }
        }
    };
}

/// Allocate one block of `layout` and write its first byte, so the block is really used.
///
/// # Safety
///
/// `layout` has a non-zero size.
#[inline(always)]
unsafe fn alloc_touched<A: GlobalAlloc + ?Sized>(allocator: &A, layout: Layout) -> *mut u8 {
    // SAFETY: the caller promises a non-zero size, `alloc`'s only precondition.
    let block = unsafe { allocator.alloc(layout) };
    assert!(!block.is_null(), "out of memory");
    // SAFETY: `block` is a live, non-null block of at least one byte.
    unsafe { block.write_volatile(1) };
    block
}

/// One allocation of `layout` and its free, one byte written (`layout` must have a non-zero
/// size).
#[inline(always)]
pub fn alloc_free_pair<A: GlobalAlloc + ?Sized>(allocator: &A, layout: Layout) {
    assert!(layout.size() > 0);
    // SAFETY: the size was checked non-zero just above.
    let block = unsafe { alloc_touched(allocator, layout) };
    // SAFETY: `block` came from this allocator with this layout and is freed once.
    unsafe { allocator.dealloc(black_box(block), layout) };
}

/// Fill `blocks` with fresh blocks of `layout` (one byte written in each), then free them
/// all: the pattern of a phase that builds a structure and then drops it.
pub fn alloc_then_free_batch<A: GlobalAlloc + ?Sized>(
    allocator: &A,
    layout: Layout,
    blocks: &mut [*mut u8],
) {
    assert!(layout.size() > 0);
    for slot in blocks.iter_mut() {
        // SAFETY: the size was checked non-zero above.
        *slot = unsafe { alloc_touched(allocator, layout) };
    }
    for &block in black_box(&*blocks) {
        // SAFETY: each block was allocated just above with this layout and is freed once.
        unsafe { allocator.dealloc(block, layout) };
    }
}

/// `pairs` producer threads each allocate `blocks_per_producer` blocks of `layout` and hand
/// them through a bounded queue to their own consumer thread, which frees them: every free
/// is a cross-thread free. Returns the wall time from the first producer's start (after a
/// barrier that every thread passes) to the last consumer's last free, so thread start-up
/// and join are not counted.
pub fn producer_consumer<A: GlobalAlloc + Sync + ?Sized>(
    allocator: &'static A,
    layout: Layout,
    pairs: usize,
    blocks_per_producer: u64,
) -> Duration {
    assert!(layout.size() > 0 && pairs > 0);
    let queues: Vec<ArrayQueue<usize>> = (0..pairs).map(|_| ArrayQueue::new(1024)).collect();
    let barrier = Barrier::new(2 * pairs);
    let (starts, ends): (Vec<Instant>, Vec<Instant>) = std::thread::scope(|s| {
        let mut producers = Vec::with_capacity(pairs);
        let mut consumers = Vec::with_capacity(pairs);
        for queue in &queues {
            let barrier = &barrier;
            consumers.push(s.spawn(move || {
                barrier.wait();
                let mut freed = 0;
                while freed < blocks_per_producer {
                    if let Some(address) = queue.pop() {
                        // SAFETY: the producer handed over a live block it allocated from
                        // `allocator` with `layout`, and handed it over once.
                        unsafe { allocator.dealloc(address as *mut u8, layout) };
                        freed += 1;
                    } else {
                        // Two cores: let the producer run rather than spin out the slice.
                        std::thread::yield_now();
                    }
                }
                Instant::now()
            }));
            producers.push(s.spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..blocks_per_producer {
                    // SAFETY: the size was checked non-zero above.
                    let mut address = unsafe { alloc_touched(allocator, layout) } as usize;
                    while let Err(back) = queue.push(address) {
                        address = back;
                        std::thread::yield_now();
                    }
                }
                start
            }));
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, Instant>| {
            h.join().expect("benchmark thread panicked")
        };
        (
            producers.into_iter().map(join).collect(),
            consumers.into_iter().map(join).collect(),
        )
    });
    let first_start = starts.into_iter().min().expect("at least one pair");
    let last_end = ends.into_iter().max().expect("at least one pair");
    last_end.saturating_duration_since(first_start)
}

#[cfg(test)]
mod tests {
    use super::AllocatorChoice;

    /// The report labels every figure with `type_name`, and `with_allocator!` picks the
    /// allocator by the variant: the two must name the same allocator.
    #[test]
    fn each_choice_dispatches_to_the_type_it_names() {
        for choice in AllocatorChoice::ALL {
            let dispatched = crate::with_allocator!(choice, |a| std::any::type_name_of_val(a));
            assert_eq!(dispatched, choice.type_name(), "{}", choice.id());
        }
    }
}
