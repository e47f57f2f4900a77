//! Statistics counters: `PerCpuCounter` (per call, and through a per-thread
//! `PerCpuCounter::local` handle) against `AtomicU64::fetch_add`, a `CachePadded`
//! striped counter with the stripe chosen by thread (the fast-counter / contatori design) and
//! a `thread_local`-crate accumulator, at 1, 2, 4 and 8 threads (`counter/add`); the
//! hand-written C rseq add as the floor (`counter/add/hand-written C rseq`); the cost of an
//! exact read against the number of counters read (`counter/sum`); and the heap bytes per
//! counter for 1, 10^3 and 10^6 counters, measured with a counting global allocator and
//! printed as a table (`counter/memory`, not a timing).
//!
//! Add figures are per operation of aggregate throughput (see `percpu_benches::contended`).
//! Each design is checked afterwards to have counted exactly the adds it was given.
//!
//! Why two `PerCpuCounter` lines: a tight loop of adds to one counter is bound by how fast
//! each add's read of the slot gets the previous add's store. When the slot address sits in
//! the same registers every iteration (the C loop, the local handle), the CPU forwards it
//! almost for free; a per-call add must reload the counter's fields after every critical
//! section (its asm may write any shared memory), which costs the full forwarding latency.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_utils::CachePadded;
use percpu_benches::counters::{AtomicCounter, StatCounter, StripedCounter, ThreadLocalCounter};
use percpu_benches::{contended, THREAD_COUNTS};
use percpu_counter::{CounterSet, PerCpuArena, PerCpuCounter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The system allocator, counting live heap bytes so the memory table reports what was
/// really allocated.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counting is a relaxed atomic
// add or subtract on the side.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's valid layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's valid layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (that is, `System`) returned with
        // this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller guarantees `ptr` and `layout` describe a
        // live block from this allocator and `new_size` is valid for its alignment.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap bytes that `build` leaves allocated (what it returns keeps them alive until dropped).
fn bytes_kept_by<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let value = build();
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    (value, after.saturating_sub(before))
}

fn bench_add<C: StatCounter>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    counter: &C,
) {
    let expected = Cell::new(0u64);
    group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
        b.iter_custom(|iters| {
            expected.set(expected.get() + threads as u64 * iters);
            // The value is opaque to the optimiser but read once per thread (see `add`).
            contended(
                threads,
                iters,
                |_| black_box(1),
                |&mut one| counter.add(one),
            )
        })
    });
    assert_eq!(
        counter.sum(),
        expected.get(),
        "{name} lost or invented adds"
    );
}

/// `PerCpuCounter` through a [`LocalCounter`](percpu_counter::LocalCounter) handle per
/// thread, made before the clock starts.
fn bench_local_add(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    threads: usize,
    counter: &PerCpuCounter,
) {
    let expected = Cell::new(0u64);
    group.bench_with_input(
        BenchmarkId::new("PerCpuCounter::local", threads),
        &threads,
        |b, &threads| {
            b.iter_custom(|iters| {
                expected.set(expected.get() + threads as u64 * iters);
                contended(
                    threads,
                    iters,
                    |_| (counter.local(), black_box(1)),
                    |&mut (handle, one)| handle.add(one),
                )
            })
        },
    );
    assert_eq!(counter.sum_u64(), expected.get(), "LocalCounter lost adds");
}

#[cfg(c_reference)]
use percpu_benches::c_reference;

fn add(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter/add");
    for threads in THREAD_COUNTS {
        let percpu = PerCpuCounter::new();
        bench_add(&mut group, "PerCpuCounter", threads, &percpu);
        bench_local_add(&mut group, threads, &PerCpuCounter::new());
        bench_add(
            &mut group,
            "AtomicU64::fetch_add",
            threads,
            &AtomicCounter::new(),
        );
        bench_add(
            &mut group,
            "CachePadded striped",
            threads,
            &StripedCounter::new(),
        );
        bench_add(
            &mut group,
            "thread_local accumulator",
            threads,
            &ThreadLocalCounter::new(),
        );
    }
    #[cfg(c_reference)]
    {
        let slots = c_reference::Slots::new();
        // At every thread count: what the hardware gives any per-CPU add here.
        for threads in THREAD_COUNTS {
            group.bench_with_input(
                BenchmarkId::new("hand-written C rseq", threads),
                &threads,
                |b, &threads| b.iter_custom(|iters| slots.run(threads, iters) / threads as u32),
            );
        }
    }
    group.finish();
}

fn sum(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter/sum");
    // One counter, after 8 threads have written it, in each design.
    let percpu = PerCpuCounter::new();
    let atomic = AtomicCounter::new();
    let striped = StripedCounter::new();
    let per_thread = ThreadLocalCounter::new();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                percpu.inc();
                atomic.add(1);
                striped.add(1);
                per_thread.add(1);
            });
        }
    });
    group.bench_function("PerCpuCounter", |b| b.iter(|| black_box(&percpu).sum()));
    group.bench_function("AtomicU64", |b| b.iter(|| black_box(&atomic).sum()));
    group.bench_function("CachePadded striped", |b| {
        b.iter(|| black_box(&striped).sum())
    });
    group.bench_function("thread_local accumulator", |b| {
        b.iter(|| black_box(&per_thread).sum())
    });
    // Reading many counters: a set's snapshot and every counter of an arena, by count.
    let set: CounterSet<64> = CounterSet::new();
    set.inc(0);
    group.bench_function(BenchmarkId::new("CounterSet::snapshot", 64), |b| {
        b.iter(|| black_box(&set).snapshot())
    });
    for n in [1usize, 1_000, 100_000] {
        let arena = PerCpuArena::new();
        let counters: Vec<_> = (0..n).map(|_| arena.counter()).collect();
        counters.iter().for_each(|c| c.inc());
        group.bench_with_input(
            BenchmarkId::new("PerCpuArena, every counter", n),
            &n,
            |b, _| {
                b.iter(|| {
                    counters
                        .iter()
                        .map(|c| c.sum())
                        .fold(0i64, i64::wrapping_add)
                })
            },
        );
        let atomics: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(1)).collect();
        group.bench_with_input(
            BenchmarkId::new("AtomicU64, every counter", n),
            &n,
            |b, _| {
                b.iter(|| {
                    black_box(&atomics)
                        .iter()
                        .fold(0u64, |s, a| s.wrapping_add(a.load(Ordering::Relaxed)))
                })
            },
        );
    }
    group.finish();
}

/// Prints heap bytes per counter (not a timing). Every counter is incremented once first,
/// so lazily allocated storage is counted.
fn memory(_: &mut Criterion) {
    println!(
        "\ncounter/memory: heap bytes per counter ({} possible CPUs)",
        rseq_sys::possible_cpus()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "design", "1", "1000", "1000000"
    );
    let row = |name: &str, per_counter: &dyn Fn(usize) -> Option<f64>| {
        let cell = |n| per_counter(n).map_or("-".to_string(), |b| format!("{b:.1}"));
        println!(
            "{:<34} {:>12} {:>12} {:>12}",
            name,
            cell(1),
            cell(1_000),
            cell(1_000_000)
        );
    };
    row("PerCpuArena (rseq rows)", &|n| {
        let ((arena, counters), bytes) = bytes_kept_by(|| {
            let arena = PerCpuArena::new();
            let counters: Vec<_> = (0..n).map(|_| arena.counter()).collect();
            (arena, counters)
        });
        // The handles live in the caller's Vec; count only what the arena allocated.
        let handles = counters.capacity() * std::mem::size_of_val(&counters[0]);
        let ((), lazily) = bytes_kept_by(|| counters.iter().for_each(|c| c.inc()));
        assert_eq!(arena.len(), n);
        Some((bytes + lazily - handles) as f64 / n as f64)
    });
    row("PerCpuCounter (lone, padded)", &|n| {
        (n <= 1_000).then(|| {
            let (counters, bytes) = bytes_kept_by(|| {
                let counters: Vec<PerCpuCounter> = (0..n).map(|_| PerCpuCounter::new()).collect();
                counters.iter().for_each(|c| c.inc());
                counters
            });
            drop(counters);
            bytes as f64 / n as f64
        })
    });
    row("CounterSet<64> (per counter)", &|n| {
        (n == 1_000).then(|| {
            let (sets, bytes) = bytes_kept_by(|| {
                let sets: Vec<CounterSet<64>> =
                    (0..n / 64 + 1).map(|_| CounterSet::new()).collect();
                sets.iter().for_each(|s| s.inc(0));
                sets
            });
            let per = bytes as f64 / (sets.len() * 64) as f64;
            drop(sets);
            per
        })
    });
    row("AtomicU64, CachePadded", &|n| {
        let (atomics, bytes) = bytes_kept_by(|| {
            (0..n)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect::<Vec<_>>()
        });
        drop(atomics);
        Some(bytes as f64 / n as f64)
    });
    row("CachePadded striped", &|n| {
        (n <= 1_000).then(|| {
            let (striped, bytes) =
                bytes_kept_by(|| (0..n).map(|_| StripedCounter::new()).collect::<Vec<_>>());
            drop(striped);
            bytes as f64 / n as f64
        })
    });
    row("thread_local acc. (2 threads)", &|n| {
        (n <= 1_000).then(|| {
            let (counters, bytes) = bytes_kept_by(|| {
                let counters: Vec<ThreadLocalCounter> =
                    (0..n).map(|_| ThreadLocalCounter::new()).collect();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        s.spawn(|| counters.iter().for_each(|c| c.add(1)));
                    }
                });
                counters
            });
            drop(counters);
            bytes as f64 / n as f64
        })
    });
    let arena = PerCpuArena::new();
    println!(
        "(an ArenaCounter handle, kept by the caller, is {} bytes more)\n",
        std::mem::size_of_val(&arena.counter())
    );
}

criterion_group!(benches, memory, add, sum);
criterion_main!(benches);
