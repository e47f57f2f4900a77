//! The allocators compared and the workloads they are compared on, shared by the criterion
//! suite and the report.
//!
//! A binary has one global allocator, so every allocator here is called directly through
//! the `GlobalAlloc` trait (as `&dyn GlobalAlloc`), all through the same interface; whatever
//! the benchmark harness itself allocates comes from the binary's global allocator, the
//! system one.

use crossbeam_queue::ArrayQueue;
use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

static PERCPU: PerCpuAlloc = PerCpuAlloc::new();
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static SYSTEM: System = System;

/// One allocator under test.
#[derive(Clone, Copy)]
pub struct NamedAllocator {
    /// The short name criterion's benchmark ids use.
    pub id: &'static str,
    /// The type whose `GlobalAlloc` impl is called, as the report shows it.
    pub type_name: &'static str,
    /// The allocator.
    pub allocator: &'static (dyn GlobalAlloc + Sync),
}

impl std::fmt::Debug for NamedAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_name)
    }
}

/// Every allocator compared, percpu-alloc's first.
pub fn allocators() -> [NamedAllocator; 4] {
    [
        NamedAllocator {
            id: "percpu",
            type_name: "percpu_alloc::PerCpuAlloc",
            allocator: &PERCPU,
        },
        NamedAllocator {
            id: "system",
            type_name: "std::alloc::System",
            allocator: &SYSTEM,
        },
        NamedAllocator {
            id: "mimalloc",
            type_name: "mimalloc::MiMalloc",
            allocator: &MIMALLOC,
        },
        NamedAllocator {
            id: "jemalloc",
            type_name: "tikv_jemallocator::Jemalloc",
            allocator: &JEMALLOC,
        },
    ]
}

/// Allocate one block of `layout` and write its first byte, so the block is really used.
///
/// # Safety
///
/// `layout` has a non-zero size.
#[inline(always)]
unsafe fn alloc_touched(allocator: &dyn GlobalAlloc, layout: Layout) -> *mut u8 {
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
pub fn alloc_free_pair(allocator: &dyn GlobalAlloc, layout: Layout) {
    assert!(layout.size() > 0);
    // SAFETY: the size was checked non-zero just above.
    let block = unsafe { alloc_touched(allocator, layout) };
    // SAFETY: `block` came from this allocator with this layout and is freed once.
    unsafe { allocator.dealloc(black_box(block), layout) };
}

/// Fill `blocks` with fresh blocks of `layout` (one byte written in each), then free them
/// all: the pattern of a phase that builds a structure and then drops it.
pub fn alloc_then_free_batch(allocator: &dyn GlobalAlloc, layout: Layout, blocks: &mut [*mut u8]) {
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
pub fn producer_consumer(
    allocator: &'static (dyn GlobalAlloc + Sync),
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
