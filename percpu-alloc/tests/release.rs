//! Returning memory to the system: `release_memory()` and the automatic threshold.
//!
//! One test function, run as phases in order: both measure the process-wide resident set
//! and the allocator's global statistics, which a concurrent test would disturb.

use percpu_alloc::PerCpuAlloc;

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

const MIB: usize = 1 << 20;

fn rss() -> usize {
    percpu_alloc::stats()
        .process_resident_bytes
        .expect("/proc/self/statm")
}

/// About `total` bytes in small objects of many sizes (every byte written, so resident).
fn small_objects(total: usize, seed: u8) -> Vec<Vec<u8>> {
    let sizes = [
        24usize,
        100,
        512,
        1500,
        4000,
        16 << 10,
        100 << 10,
        250 << 10,
    ];
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut i = 0usize;
    while bytes < total {
        let n = sizes[i % sizes.len()];
        out.push(vec![seed.wrapping_add(i as u8); n]);
        bytes += n;
        i += 1;
    }
    out
}

fn check(objects: &[Vec<u8>], seed: u8) {
    for (i, v) in objects.iter().enumerate() {
        assert!(v.iter().all(|&b| b == seed.wrapping_add(i as u8)));
    }
}

fn explicit_release() {
    let before_alloc = rss();
    let small = small_objects(192 * MIB, 1);
    let large: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; MIB]).collect();
    check(&small, 1);
    let peak = rss();
    assert!(
        peak >= before_alloc + 200 * MIB,
        "allocating 256 MiB raised RSS from {before_alloc} only to {peak}"
    );
    drop(large);
    drop(small);
    let freed = rss();
    let stats_before = percpu_alloc::stats();
    let released = percpu_alloc::release_memory();
    let after = rss();
    let stats = percpu_alloc::stats();
    eprintln!(
        "rss: start {} MiB, peak {} MiB, freed {} MiB, released {} MiB by release_memory, \
         after {} MiB; stats before {stats_before:?} after {stats:?}",
        before_alloc / MIB,
        peak / MIB,
        freed / MIB,
        released / MIB,
        after / MIB
    );
    // Nearly all of the 192 MiB of small objects sits in wholly free spans.
    assert!(released >= 150 * MIB, "released only {released} bytes");
    assert!(stats.released_bytes >= stats_before.released_bytes + released);
    // Released: spans, now free in the page heap, and the large blocks kept for reuse.
    assert!(stats.page_heap_free_bytes + stats_before.large_cached_bytes >= released);
    assert_eq!(stats.large_cached_bytes, 0);
    // The drain emptied this thread's per-CPU caches (and every other CPU's).
    assert!(
        stats.per_cpu_cache_bytes < 4 * MIB,
        "per-CPU caches still hold {} bytes",
        stats.per_cpu_cache_bytes
    );
    assert!(
        after + 120 * MIB <= freed,
        "RSS fell only from {freed} to {after}"
    );
    assert!(after < before_alloc + 64 * MIB);

    // The released spans are reused, and read correctly.
    let mapped = stats.mapped_bytes;
    let again = small_objects(128 * MIB, 9);
    check(&again, 9);
    let reused = percpu_alloc::stats();
    assert!(
        reused.mapped_bytes <= mapped + 16 * MIB,
        "reallocating mapped new memory ({mapped} -> {})",
        reused.mapped_bytes
    );
    assert!(reused.page_heap_free_bytes + 100 * MIB <= stats.page_heap_free_bytes);
    drop(again);
    assert!(percpu_alloc::release_memory() >= 100 * MIB);
}

fn automatic_release() {
    percpu_alloc::set_release_threshold(16 * MIB);
    assert_eq!(percpu_alloc::release_threshold(), 16 * MIB);
    let released_before = percpu_alloc::stats().released_bytes;
    let rss_before = rss();
    // Several rounds: each frees 96 MiB, which overflows the caches onto the central
    // lists, where the slow path sweeps once 16 MiB have built up.
    for round in 0..3u8 {
        let small = small_objects(96 * MIB, round);
        check(&small, round);
        drop(small);
    }
    let stats = percpu_alloc::stats();
    let released = stats.released_bytes - released_before;
    eprintln!(
        "automatic: released {} MiB, rss {} -> {} MiB",
        released / MIB,
        rss_before / MIB,
        rss() / MIB
    );
    assert!(
        released >= 64 * MIB,
        "the slow paths released only {released} bytes"
    );
    assert!(rss() < rss_before + 64 * MIB);
    percpu_alloc::set_release_threshold(0);
    assert_eq!(percpu_alloc::release_threshold(), 0);
}

#[test]
fn memory_goes_back_to_the_system() {
    explicit_release();
    automatic_release();
}
