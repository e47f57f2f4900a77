//! The allocator tables: `PerCpuAlloc` against the system allocator, mimalloc and jemalloc,
//! each called directly and statically through `GlobalAlloc` (see [`crate::allocators`]).

use super::measure::{Contender, Run, Settings, TableSpec};
use crate::allocators::{
    alloc_free_pair, alloc_then_free_batch, producer_consumer, AllocatorChoice,
};
use crate::{run_threads, with_allocator};
use std::alloc::Layout;

const BASELINE: &str = "std::alloc::System";

/// How every allocator table says the allocators are called.
const HOW_CALLED: &str = "every allocator is called directly through `GlobalAlloc` \
                          (alloc/dealloc on a static instance, static calls, the timed loop \
                          compiled for each allocator), the same interface for all; \
                          this binary's own #[global_allocator] is the system one; each \
                          timed run is made in a process of its own, after a warm-up run, \
                          the allocators taking turns (in one process they slow each other \
                          down)";

/// Blocks per alloc-then-free batch.
const BATCH: usize = 1000;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("a valid layout")
}

fn pairs(allocator: AllocatorChoice, size: usize) -> Contender<'static> {
    let layout = layout(size);
    with_allocator!(allocator, |a| {
        Contender::new(allocator.type_name(), move |threads, ops| {
            // The layout is each thread's state, a local of its timed loop: captured by the
            // closure instead, it was reloaded through two pointers and tested again around
            // every opaque call into the allocator.
            let wall = run_threads(
                threads,
                ops,
                |_| layout,
                |layout| alloc_free_pair(a, *layout),
            );
            Run {
                wall,
                ops: threads as u64 * ops,
            }
        })
    })
}

/// `ops` is rounded to whole batches (at least one) per thread.
fn batches(allocator: AllocatorChoice, size: usize) -> Contender<'static> {
    let layout = layout(size);
    with_allocator!(allocator, |a| {
        Contender::new(allocator.type_name(), move |threads, ops| {
            let batches = (ops / BATCH as u64).max(1);
            let wall = run_threads(
                threads,
                batches,
                |_| vec![std::ptr::null_mut::<u8>(); BATCH],
                |blocks| alloc_then_free_batch(a, layout, blocks),
            );
            Run {
                wall,
                ops: threads as u64 * batches * BATCH as u64,
            }
        })
    })
}

/// Half the threads produce, half consume; `ops` blocks per producer.
fn cross_thread(allocator: AllocatorChoice, size: usize) -> Contender<'static> {
    let layout = layout(size);
    with_allocator!(allocator, |a| {
        Contender::new(allocator.type_name(), move |threads, ops| {
            let pairs = threads / 2;
            let wall = producer_consumer(a, layout, pairs, ops);
            Run {
                wall,
                ops: pairs as u64 * ops,
            }
        })
    })
}

fn table(
    id: &'static str,
    title: String,
    what: &str,
    threads: Vec<usize>,
    contender: impl Fn(AllocatorChoice) -> Contender<'static>,
) -> TableSpec<'static> {
    TableSpec {
        id,
        title,
        note: format!("{what}; {HOW_CALLED}"),
        baseline: BASELINE.into(),
        threads,
        contenders: AllocatorChoice::ALL.into_iter().map(contender).collect(),
        isolated: true,
        focus: Some(AllocatorChoice::PerCpu.type_name().into()),
    }
}

/// Alloc/free pairs at three sizes, batches, and cross-thread frees.
pub fn tables(settings: &Settings) -> Vec<TableSpec<'static>> {
    let mut tables: Vec<TableSpec<'static>> = [
        (16, "alloc-pair-16"),
        (256, "alloc-pair-256"),
        (4096, "alloc-pair-4096"),
    ]
    .into_iter()
    .map(|(size, id)| {
        table(
            id,
            format!("allocator: allocate {size} bytes and free them"),
            "op = one alloc + one free on the same thread, one byte written",
            settings.threads.clone(),
            move |a| pairs(a, size),
        )
    })
    .collect();
    tables.push(table(
        "alloc-batch-64",
        format!("allocator: allocate {BATCH} blocks of 64 bytes, then free them all"),
        "op = one block's alloc + free within the batch, one byte written",
        settings.threads.clone(),
        |a| batches(a, 64),
    ));
    let paired_threads: Vec<usize> = settings
        .threads
        .iter()
        .copied()
        .filter(|&t| t >= 2 && t % 2 == 0)
        .collect();
    tables.push(table(
        "alloc-cross-thread-64",
        "allocator: 64-byte blocks allocated on one thread, freed on another".into(),
        "op = one block allocated by a producer thread and freed by its consumer (half the \
         threads each, a bounded queue per pair); ns per block",
        paired_threads,
        |a| cross_thread(a, 64),
    ));
    tables
}
