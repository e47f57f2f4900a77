//! Allocators head to head (criterion group `alloc`): `PerCpuAlloc` against the system
//! allocator (glibc), mimalloc and jemalloc, each called directly through `GlobalAlloc`,
//! statically (see `percpu_benches::allocators`; the benchmark binary itself runs on the
//! system allocator).
//!
//! - `alloc/pair/<size>/<allocator>`: one alloc and its free, one byte written, 1 thread.
//! - `alloc/pair_threads/64/<allocator>/<threads>`: the same at 1, 2, 4 and 8 threads, per
//!   operation of aggregate throughput (see `percpu_benches::contended`).
//! - `alloc/batch/64/<allocator>`: allocate 1000 blocks of 64 bytes, then free them all; the
//!   figure is per block (alloc + free).
//! - `alloc/producer_consumer/64/<allocator>`: one thread allocates, another frees what it
//!   receives through a bounded lock-free queue; per block.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percpu_benches::allocators::{
    alloc_free_pair, alloc_then_free_batch, producer_consumer, AllocatorChoice,
};
use percpu_benches::{with_allocator, THREAD_COUNTS};
use std::alloc::Layout;
use std::time::Duration;
use support::bench_contended;

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/pair");
    for size in [16usize, 64, 256, 4096, 64 << 10] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for a in AllocatorChoice::ALL {
            with_allocator!(a, |allocator| group.bench_with_input(
                BenchmarkId::new(size.to_string(), a.id()),
                &layout,
                |b, &layout| b.iter(move || alloc_free_pair(allocator, layout)),
            ));
        }
    }
    group.finish();
}

fn pairs_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/pair_threads/64");
    let layout = Layout::from_size_align(64, 8).unwrap();
    for a in AllocatorChoice::ALL {
        for threads in THREAD_COUNTS {
            with_allocator!(a, |allocator| bench_contended(
                &mut group,
                BenchmarkId::new(a.id(), threads),
                threads,
                // Each thread's own copy, a local of its loop (see the report's `pairs`).
                |_| layout,
                |layout| alloc_free_pair(allocator, *layout),
            ));
        }
    }
    group.finish();
}

const BATCH: usize = 1000;

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/batch/64");
    group.throughput(Throughput::Elements(BATCH as u64));
    let layout = Layout::from_size_align(64, 8).unwrap();
    for a in AllocatorChoice::ALL {
        let mut blocks = vec![std::ptr::null_mut::<u8>(); BATCH];
        with_allocator!(a, |allocator| group.bench_function(a.id(), |b| {
            b.iter(|| alloc_then_free_batch(allocator, layout, &mut blocks))
        }));
    }
    group.finish();
}

fn producer_consumer_one_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/producer_consumer/64");
    let layout = Layout::from_size_align(64, 8).unwrap();
    for a in AllocatorChoice::ALL {
        with_allocator!(a, |allocator| group.bench_function(a.id(), |b| {
            b.iter_custom(|iters| producer_consumer(allocator, layout, 1, iters))
        }));
    }
    group.finish();
}

criterion_group! {
    name = alloc;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = pairs, pairs_threads, batch, producer_consumer_one_pair
}
criterion_main!(alloc);
