//! percpu-queue against its peers, at 1, 2, 4 and 8 threads (this machine has 2 cores).
//!
//! - `queue/push-pop`: one push and one pop of a boxed item per iteration, on each thread:
//!   the per-CPU [`FreeList`] and [`PerCpuBuffer`] against crossbeam's `ArrayQueue` and
//!   `SegQueue` and a `Mutex<Vec>`; and, as the yardstick for the single-thread goal
//!   ("a push+pop pair costs at most twice a counter add pair"), a pair of rseq-sys per-CPU
//!   adds on cache-padded slots.
//! - `queue/pool`: one get and one drop of a pooled `Vec<u8>` per iteration: [`Pool`]
//!   against the `object-pool` and `opool` crates.
//!
//! Figures are per operation of aggregate throughput (see `percpu_benches::contended`), so
//! "5x the throughput of ArrayQueue" means a fifth of its time per iteration.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu_benches::queues::{pooled_object, push_then_pop, OpoolAllocator, PushPop, POOL_SIZE};
use percpu_benches::THREAD_COUNTS;
use percpu_counter::PerCpuCounter;
use percpu_queue::{FreeList, PerCpuBuffer, Pool};
use std::hint::black_box;
use std::sync::Mutex;
use support::bench_contended;

/// One push and one pop per iteration on each thread, each thread starting with its own item.
fn bench_push_pop<Q: PushPop>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    queue: &Q,
) {
    bench_contended(
        group,
        BenchmarkId::new(name, threads),
        threads,
        |t| Some(Q::new_item(t as u64)),
        |held| push_then_pop(queue, held),
    );
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/push-pop");
    for threads in THREAD_COUNTS {
        // The baseline the issue names: a pair of adds on percpu-counter's counter.
        let counter = PerCpuCounter::new();
        bench_contended(
            &mut group,
            BenchmarkId::new("counter add pair (rseq-sys)", threads),
            threads,
            |_| (),
            |_| {
                counter.add(black_box(1));
                counter.add(black_box(1));
            },
        );
        bench_push_pop(
            &mut group,
            "percpu FreeList",
            threads,
            &FreeList::<u64>::new(),
        );
        bench_push_pop(
            &mut group,
            "percpu PerCpuBuffer",
            threads,
            &PerCpuBuffer::<u64>::with_capacity(64),
        );
        bench_push_pop(
            &mut group,
            "crossbeam ArrayQueue",
            threads,
            &ArrayQueue::<Box<u64>>::new(threads * 2),
        );
        bench_push_pop(
            &mut group,
            "crossbeam SegQueue",
            threads,
            &SegQueue::<Box<u64>>::new(),
        );
        bench_push_pop(
            &mut group,
            "Mutex<Vec>",
            threads,
            &Mutex::new(Vec::<Box<u64>>::with_capacity(threads * 2)),
        );
    }
    group.finish();
}

fn pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/pool");
    for threads in THREAD_COUNTS {
        let percpu = Pool::new(POOL_SIZE, pooled_object);
        bench_contended(
            &mut group,
            BenchmarkId::new("percpu Pool", threads),
            threads,
            |_| (),
            |_| {
                let object = percpu.get();
                black_box(&*object);
            },
        );

        let object_pool = object_pool::Pool::new(POOL_SIZE, pooled_object);
        bench_contended(
            &mut group,
            BenchmarkId::new("object-pool", threads),
            threads,
            |_| (),
            |_| {
                let object = object_pool.pull(pooled_object);
                black_box(&*object);
            },
        );

        let opool = opool::Pool::new_prefilled(POOL_SIZE, OpoolAllocator);
        bench_contended(
            &mut group,
            BenchmarkId::new("opool", threads),
            threads,
            |_| (),
            |_| {
                let object = opool.get();
                black_box(&*object);
            },
        );
    }
    group.finish();
}

criterion_group!(queue, push_pop, pool);
criterion_main!(queue);
