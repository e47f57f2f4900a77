//! Allocators head to head (criterion group `alloc`): `PerCpuAlloc` against the system
//! allocator (glibc), mimalloc and jemalloc, each called directly through `GlobalAlloc`
//! (the benchmark binary itself runs on the system allocator).
//!
//! - `alloc/pair/<size>/<allocator>`: one alloc and its free, one byte written, 1 thread.
//! - `alloc/pair_threads/64/<allocator>/<threads>`: the same at 1, 2, 4 and 8 threads, per
//!   operation of aggregate throughput (see `percpu_benches::contended`).
//! - `alloc/batch/64/<allocator>`: allocate 1000 blocks of 64 bytes, then free them all; the
//!   figure is per block (alloc + free).
//! - `alloc/producer_consumer/64/<allocator>`: one thread allocates, another frees what it
//!   receives through a bounded lock-free queue; per block.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use percpu_alloc::PerCpuAlloc;
use percpu_benches::{contended, THREAD_COUNTS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

static PERCPU: PerCpuAlloc = PerCpuAlloc::new();
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static SYSTEM: System = System;

fn allocators() -> [(&'static str, &'static (dyn GlobalAlloc + Sync)); 4] {
    [
        ("percpu", &PERCPU),
        ("system", &SYSTEM),
        ("mimalloc", &MIMALLOC),
        ("jemalloc", &JEMALLOC),
    ]
}

/// One alloc/free pair with a byte written, so the block is really used.
#[inline(always)]
fn pair(a: &dyn GlobalAlloc, layout: Layout) {
    // SAFETY: non-zero size; the block is freed with its own layout.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        p.write_volatile(1);
        a.dealloc(black_box(p), layout);
    }
}

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/pair");
    for size in [16usize, 64, 256, 4096, 64 << 10] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for (name, a) in allocators() {
            group.bench_with_input(
                BenchmarkId::new(size.to_string(), name),
                &layout,
                |b, &layout| b.iter(|| pair(a, layout)),
            );
        }
    }
    group.finish();
}

fn pairs_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/pair_threads/64");
    let layout = Layout::from_size_align(64, 8).unwrap();
    for (name, a) in allocators() {
        for threads in THREAD_COUNTS {
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| contended(threads, iters, |_| (), |_| pair(a, layout)))
            });
        }
    }
    group.finish();
}

const BATCH: usize = 1000;

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/batch/64");
    group.throughput(Throughput::Elements(BATCH as u64));
    let layout = Layout::from_size_align(64, 8).unwrap();
    for (name, a) in allocators() {
        let mut blocks = vec![std::ptr::null_mut::<u8>(); BATCH];
        group.bench_function(name, |b| {
            b.iter(|| {
                for slot in blocks.iter_mut() {
                    // SAFETY: non-zero size.
                    let p = unsafe { a.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: `p` is a live 64-byte block.
                    unsafe { p.write_volatile(1) };
                    *slot = p;
                }
                for &p in blocks.iter() {
                    // SAFETY: each block is live and freed once with its layout.
                    unsafe { a.dealloc(p, layout) };
                }
            })
        });
    }
    group.finish();
}

/// `iters` blocks allocated on this thread and freed on another. Timed from when both
/// threads are running until the consumer has freed the last block, so thread start-up and
/// join are not counted.
fn producer_consumer_run(a: &'static (dyn GlobalAlloc + Sync), iters: u64) -> Duration {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let queue = ArrayQueue::<usize>::new(1024);
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let (queue, barrier) = (&queue, &barrier);
        let consumer = s.spawn(move || {
            barrier.wait();
            let mut freed = 0;
            while freed < iters {
                if let Some(p) = queue.pop() {
                    // SAFETY: the producer handed over a live 64-byte block from `a`.
                    unsafe { a.dealloc(p as *mut u8, layout) };
                    freed += 1;
                } else {
                    // Two cores: let the producer run rather than burn the time slice.
                    std::thread::yield_now();
                }
            }
            Instant::now()
        });
        barrier.wait();
        let start = Instant::now();
        for _ in 0..iters {
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `p` is a live 64-byte block.
            unsafe { p.write_volatile(1) };
            let mut item = p as usize;
            while let Err(back) = queue.push(item) {
                item = back;
                std::thread::yield_now();
            }
        }
        let finished = consumer.join().unwrap();
        finished.duration_since(start)
    })
}

fn producer_consumer(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc/producer_consumer/64");
    for (name, a) in allocators() {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| producer_consumer_run(a, iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = alloc;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = pairs, pairs_threads, batch, producer_consumer
}
criterion_main!(alloc);
