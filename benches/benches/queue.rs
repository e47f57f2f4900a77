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

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu_benches::{contended, THREAD_COUNTS};
use percpu_counter::PerCpuCounter;
use percpu_queue::{FreeList, Node, PerCpuBuffer, Pool};
use std::hint::black_box;
use std::sync::Mutex;

/// Pushes the thread's item and pops one back; a pop that finds nothing (an item in transit
/// between CPUs) allocates a replacement so the next iteration still pushes.
macro_rules! push_pop {
    ($state:expr, $new:expr, |$item:ident| $push:expr, $pop:expr) => {{
        let $item = $state.take().unwrap_or_else(|| $new);
        $push;
        *$state = $pop;
        black_box(&*$state);
    }};
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/push-pop");
    for threads in THREAD_COUNTS {
        // The baseline the issue names: a pair of adds on percpu-counter's counter.
        let counter = PerCpuCounter::new();
        group.bench_with_input(
            BenchmarkId::new("counter add pair (rseq-sys)", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |_| (),
                        |_| {
                            counter.add(black_box(1));
                            counter.add(black_box(1));
                        },
                    )
                })
            },
        );

        let list: FreeList<u64> = FreeList::new();
        group.bench_with_input(
            BenchmarkId::new("percpu FreeList", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |t| Some(Box::new(Node::new(t as u64))),
                        |state: &mut Option<Box<Node<u64>>>| {
                            push_pop!(
                                state,
                                Box::new(Node::new(0)),
                                |item| list.push(item),
                                list.pop()
                            )
                        },
                    )
                })
            },
        );

        let buffer: PerCpuBuffer<u64> = PerCpuBuffer::with_capacity(64);
        group.bench_with_input(
            BenchmarkId::new("percpu PerCpuBuffer", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |t| Some(Box::new(t as u64)),
                        |state: &mut Option<Box<u64>>| {
                            push_pop!(
                                state,
                                Box::new(0),
                                |item| {
                                    // Each thread holds at most one item, so a full stack
                                    // (64 per CPU) never happens here; drop it if it did.
                                    let _ = buffer.push(item);
                                },
                                buffer.pop()
                            )
                        },
                    )
                })
            },
        );

        let array = ArrayQueue::new(threads * 2);
        group.bench_with_input(
            BenchmarkId::new("crossbeam ArrayQueue", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |t| Some(Box::new(t as u64)),
                        |state: &mut Option<Box<u64>>| {
                            push_pop!(
                                state,
                                Box::new(0),
                                |item| array.push(item).expect("room for every thread's item"),
                                array.pop()
                            )
                        },
                    )
                })
            },
        );

        let seg = SegQueue::new();
        group.bench_with_input(
            BenchmarkId::new("crossbeam SegQueue", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |t| Some(Box::new(t as u64)),
                        |state: &mut Option<Box<u64>>| {
                            push_pop!(state, Box::new(0), |item| seg.push(item), seg.pop())
                        },
                    )
                })
            },
        );

        let mutex = Mutex::new(Vec::with_capacity(threads * 2));
        group.bench_with_input(
            BenchmarkId::new("Mutex<Vec>", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |t| Some(Box::new(t as u64)),
                        |state: &mut Option<Box<u64>>| {
                            push_pop!(
                                state,
                                Box::new(0),
                                |item| mutex.lock().unwrap().push(item),
                                mutex.lock().unwrap().pop()
                            )
                        },
                    )
                })
            },
        );
    }
    group.finish();
}

const POOL_SIZE: usize = 64;

fn new_object() -> Vec<u8> {
    Vec::with_capacity(256)
}

struct OpoolAllocator;

impl opool::PoolAllocator<Vec<u8>> for OpoolAllocator {
    fn allocate(&self) -> Vec<u8> {
        new_object()
    }
}

fn pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/pool");
    for threads in THREAD_COUNTS {
        let percpu = Pool::new(POOL_SIZE, new_object);
        group.bench_with_input(
            BenchmarkId::new("percpu Pool", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |_| (),
                        |_| {
                            let object = percpu.get();
                            black_box(&*object);
                        },
                    )
                })
            },
        );

        let object_pool = object_pool::Pool::new(POOL_SIZE, new_object);
        group.bench_with_input(
            BenchmarkId::new("object-pool", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |_| (),
                        |_| {
                            let object = object_pool.pull(new_object);
                            black_box(&*object);
                        },
                    )
                })
            },
        );

        let opool = opool::Pool::new_prefilled(POOL_SIZE, OpoolAllocator);
        group.bench_with_input(
            BenchmarkId::new("opool", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    contended(
                        threads,
                        iters,
                        |_| (),
                        |_| {
                            let object = opool.get();
                            black_box(&*object);
                        },
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(queue, push_pop, pool);
criterion_main!(queue);
