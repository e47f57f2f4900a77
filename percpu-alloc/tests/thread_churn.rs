//! Thread exit strands nothing: 10,000 threads created and ended (each allocating, freeing
//! some of it itself and handing the rest to the thread that joins it) leave the resident
//! set where the first thousand left it. The allocator has no per-thread state; this test
//! keeps it that way.
//!
//! A test binary of its own: it measures the process-wide resident set.

use percpu_alloc::PerCpuAlloc;

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

const MIB: usize = 1 << 20;
const WAVE: usize = 50;

fn rss() -> usize {
    percpu_alloc::stats()
        .process_resident_bytes
        .expect("/proc/self/statm")
}

/// One thread's life: about 100 KiB in blocks of many sizes, every byte written; half is
/// freed here, half returned for the joiner to free.
fn live(seed: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    let mut i = 0;
    while bytes < 100 << 10 {
        let len = [16, 40, 100, 256, 1000, 3000, 9000, 20_000][(seed + i) % 8];
        let block = vec![(seed + i) as u8; len];
        bytes += len;
        if i % 2 == 0 {
            kept.push(block);
        }
        i += 1;
    }
    kept
}

fn run_threads(from: usize, to: usize) {
    let mut next = from;
    while next < to {
        let wave: Vec<_> = (next..(next + WAVE).min(to))
            .map(|seed| std::thread::spawn(move || (seed, live(seed))))
            .collect();
        for handle in wave {
            let (seed, kept) = handle.join().expect("thread");
            for (k, block) in kept.iter().enumerate() {
                let expect = (seed + 2 * k) as u8;
                assert!(
                    block.iter().all(|&b| b == expect),
                    "thread {seed}: corrupted"
                );
            }
        }
        next += WAVE;
    }
}

#[test]
fn ten_thousand_threads_leave_resident_memory_bounded() {
    run_threads(0, 1_000);
    let warm = rss();
    let in_use_warm = percpu_alloc::stats().in_use_bytes;
    run_threads(1_000, 10_000);
    let after = rss();
    let in_use_after = percpu_alloc::stats().in_use_bytes;
    eprintln!(
        "resident after 1,000 threads {} MiB, after 10,000 {} MiB",
        warm / MIB,
        after / MIB
    );
    // Nine thousand more threads, each with 100 KiB: a per-thread cache stranded at exit
    // (even 8 KiB each) would add 70 MiB or more.
    assert!(
        after <= warm + 16 * MIB,
        "resident set grew from {warm} to {after} bytes over 9,000 threads"
    );
    assert!(
        in_use_after <= in_use_warm + 4 * MIB,
        "bytes in use grew from {in_use_warm} to {in_use_after}"
    );
}
