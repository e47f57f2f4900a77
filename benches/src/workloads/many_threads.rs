//! Many threads on few CPUs: 256 threads, all alive at once, each keeping a working set of
//! small blocks and replacing half of it each round, yielding the CPU between rounds so the
//! threads interleave. Per-thread caches multiply by the threads; per-CPU caches by the CPUs,
//! which is where the peak RSS should differ.

use super::block::{Ledger, TaggedBlock};
use super::rng::Rng;
use super::scaled;
use std::sync::Barrier;

/// Threads alive at once.
const THREADS: usize = 256;
/// Blocks each thread keeps live.
const WORKING_SET: usize = 250;
/// Smallest block (bytes).
const MIN_SIZE: usize = 16;
/// Largest block (bytes).
const MAX_SIZE: usize = 256;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    rounds: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        Params {
            rounds: scaled(120, scale) as usize,
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{THREADS} threads at once, each with {WORKING_SET} live blocks of {MIN_SIZE}-{MAX_SIZE} \
         B; {} rounds of replacing a random half with new blocks, yielding between rounds",
        p.rounds
    )
}

fn worker(thread: usize, p: Params, all_started: &Barrier) -> Ledger {
    let mut ledger = Ledger::new(thread as u64);
    let mut rng = Rng::new(thread as u64);
    let mut set: Vec<TaggedBlock> = (0..WORKING_SET)
        .map(|_| ledger.alloc(rng.between(MIN_SIZE, MAX_SIZE)))
        .collect();
    // No thread starts replacing until every thread holds its working set: the peak is that
    // of 256 live threads, not of a few at a time.
    all_started.wait();
    for _ in 0..p.rounds {
        for _ in 0..WORKING_SET / 2 {
            let slot = rng.below(WORKING_SET);
            let fresh = ledger.alloc(rng.between(MIN_SIZE, MAX_SIZE));
            ledger.free(std::mem::replace(&mut set[slot], fresh));
        }
        std::thread::yield_now();
    }
    for block in set {
        ledger.free(block);
    }
    ledger
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let all_started = Barrier::new(THREADS);
    let ledgers: Vec<Ledger> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let all_started = &all_started;
                scope.spawn(move || worker(thread, p, all_started))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a many-threads thread panicked"))
            .collect()
    });
    Ledger::balance_all(&ledgers)
}
