//! Per-CPU caches sized by use within a per-CPU byte budget, and the release clock that
//! drains idle CPUs and gives free spans back with no call from the application.
//!
//! One test function, run as phases in order: they read the allocator's global statistics,
//! which another thread would disturb (so no test harness: see Cargo.toml). Where the
//! per-CPU caches are not running (`PERCPU_NO_RSEQ=1`, valgrind) the per-CPU checks become
//! "nothing is cached per CPU" and the release clock is checked through the stripe caches
//! and central lists.

mod support;

use percpu_alloc::PerCpuAlloc;
use std::time::{Duration, Instant};
use support::{pin_to_cpu, slot};

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Sizes in every part of the class table, up to 64 KiB.
fn size(i: usize) -> usize {
    [
        16, 48, 100, 200, 400, 800, 1500, 3000, 6000, 12_000, 30_000, 64_000,
    ][i % 12]
}

/// Allocate `n` blocks of many sizes (written), then free them all: the frees fill the
/// caches of whichever CPUs the thread runs on.
fn churn(n: usize, seed: usize) {
    let blocks: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![(seed + i) as u8; size(seed + i)])
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == (seed + i) as u8));
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn budget_bounds_every_cpu() {
    let budget = 256 * KIB;
    percpu_alloc::set_cpu_cache_budget(budget);
    assert_eq!(percpu_alloc::cpu_cache_budget(), budget);
    percpu_alloc::release_memory();
    // Joined one by one, not left to the scope: a join waits for the thread to be gone,
    // its exit's own frees included, which would otherwise land in the next phase.
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    for round in 0..20 {
                        churn(600, t * 1000 + round);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("churn thread");
        }
    });
    let stats = percpu_alloc::stats();
    eprintln!(
        "budget {} KiB: capacity {} KiB, cached {} KiB over all CPUs",
        budget / KIB,
        stats.per_cpu_capacity_bytes / KIB,
        stats.per_cpu_cache_bytes / KIB
    );
    if !stats.per_cpu_active {
        assert_eq!(stats.per_cpu_capacity_bytes, 0);
        assert_eq!(stats.per_cpu_cache_bytes, 0);
        return;
    }
    // Each slot (a CPU, or an mm_cid, of which there are no more than CPUs) keeps its
    // capacity within the budget; with fixed capacities these frees would have cached
    // several MiB per CPU (128 KiB per class).
    let slots = rseq_sys::possible_cpus();
    assert!(stats.per_cpu_capacity_bytes <= slots * budget);
    // What is cached may pass a shrunken capacity by the pushes in flight while it shrank.
    assert!(
        stats.per_cpu_cache_bytes <= slots * (budget + 128 * KIB),
        "{} bytes cached per CPU, over a {budget}-byte budget",
        stats.per_cpu_cache_bytes / slots
    );
    assert!(stats.per_cpu_capacity_bytes > 0, "the caches were used");
    percpu_alloc::set_cpu_cache_budget(6 * MIB);
}

fn capacity_grows_with_misses() {
    percpu_alloc::release_memory();
    let start = percpu_alloc::stats();
    // `release_memory` empties every CPU's cache and resets every capacity to 0.
    assert_eq!(start.per_cpu_capacity_bytes, 0);
    assert_eq!(start.per_cpu_cache_bytes, 0);
    // 200 blocks of 64 bytes, freed: the class starts at capacity 0 and grows a batch per
    // miss until the frees fit.
    for _ in 0..3 {
        let blocks: Vec<Box<[u8; 64]>> = (0..200).map(|i| Box::new([i as u8; 64])).collect();
        drop(blocks);
    }
    let stats = percpu_alloc::stats();
    eprintln!(
        "after 200 x 64 B: capacity {} B, cached {} B",
        stats.per_cpu_capacity_bytes, stats.per_cpu_cache_bytes
    );
    if stats.per_cpu_active {
        assert!(
            stats.per_cpu_cache_bytes >= 100 * 64,
            "the 64-byte class did not grow to hold the frees"
        );
        assert!(stats.per_cpu_capacity_bytes >= stats.per_cpu_cache_bytes - 64);
    }
}

fn idle_cpus_drain_and_memory_goes_back_on_the_clock() {
    percpu_alloc::release_memory();
    percpu_alloc::set_release_interval(Duration::from_millis(50));
    assert_eq!(percpu_alloc::release_interval(), Duration::from_millis(50));
    let two_cpus = cpus() >= 2;
    let before = percpu_alloc::stats();
    // This thread stays on CPU 0 (and so, under mm_cid, keeps its concurrency id while
    // the burst thread runs).
    if two_cpus {
        assert!(pin_to_cpu(0));
    }
    // A burst on CPU 1 leaves 24 MiB of free objects (the clock ticks during it too), and
    // last its caches full of many classes.
    let burst_slot = std::thread::scope(|s| {
        s.spawn(|| {
            if two_cpus {
                assert!(pin_to_cpu(1));
            }
            let blocks: Vec<Vec<u8>> = (0..96_000).map(|i| vec![i as u8; 256]).collect();
            drop(blocks);
            churn(3000, 7);
            slot()
        })
        .join()
        .expect("burst thread")
    });
    let burst = percpu_alloc::stats();
    // Then this thread keeps allocating at a low rate, enough to miss now and then (300
    // blocks of 1 KiB: more than the class's capacity), for 10 intervals.
    let calm_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < calm_until {
        let blocks: Vec<Vec<u8>> = (0..300).map(|i| vec![i as u8; 1000]).collect();
        drop(blocks);
        std::thread::sleep(Duration::from_millis(5));
    }
    let calm_slot = slot();
    let calm = percpu_alloc::stats();
    eprintln!(
        "before: released {} MiB; burst: cached per CPU {} KiB, central {} KiB, released {} \
         MiB; calm: cached {} KiB, central {} KiB, released {} MiB",
        before.released_bytes / MIB,
        burst.per_cpu_cache_bytes / KIB,
        burst.central_bytes / KIB,
        burst.released_bytes / MIB,
        calm.per_cpu_cache_bytes / KIB,
        calm.central_bytes / KIB,
        calm.released_bytes / MIB
    );
    // No `release_memory` and no threshold since `before`: only the clock released this.
    assert!(
        calm.released_bytes >= before.released_bytes + 16 * MIB,
        "the clock released {} bytes of the burst's 24 MiB",
        calm.released_bytes - before.released_bytes
    );
    assert!(
        calm.central_bytes < 4 * MIB,
        "{} bytes of free objects stayed on the central lists",
        calm.central_bytes
    );
    // Slots are concurrency ids where the kernel has mm_cid (self-registration here): the
    // kernel may hand the exited burst thread's id to this thread, whose slot is then in
    // use, not idle, and keeps its cache.
    if burst.per_cpu_active && two_cpus && burst_slot == calm_slot {
        eprintln!("this thread took over the burst's slot {calm_slot:?}: not idle, kept");
    } else if burst.per_cpu_active && two_cpus {
        // CPU 1's caches (a dozen classes) were drained; what is left is CPU 0's 1 KiB
        // class and the like.
        assert!(
            burst.per_cpu_cache_bytes >= 512 * KIB,
            "the burst did not fill CPU 1's cache"
        );
        assert!(
            calm.per_cpu_cache_bytes < burst.per_cpu_cache_bytes / 2,
            "the idle CPU's cache was not drained"
        );
    }
    percpu_alloc::set_release_interval(Duration::ZERO);
    assert_eq!(percpu_alloc::release_interval(), Duration::ZERO);
}

fn caches_sized_by_use_and_drained_when_idle() {
    budget_bounds_every_cpu();
    capacity_grows_with_misses();
    idle_cpus_drain_and_memory_goes_back_on_the_clock();
}

/// Run without the test harness (see Cargo.toml): the only thread is this one.
fn main() {
    caches_sized_by_use_and_drained_when_idle();
    println!("test caches_sized_by_use_and_drained_when_idle ... ok");
}
