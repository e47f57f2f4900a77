//! larson (Larson and Krishnan's server simulation): each thread keeps a set of live blocks
//! and replaces random ones with new blocks of random size; at the end of a generation it
//! hands its whole set to a fresh thread of the next generation, so most blocks are freed by
//! a thread other than the one that allocated them, after their allocating thread has exited.

use super::block::{Ledger, TaggedBlock};
use super::rng::Rng;
use super::{cpus, scaled};

/// Smallest block (bytes).
const MIN_SIZE: usize = 16;
/// Largest block (bytes).
const MAX_SIZE: usize = 1000;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    threads: usize,
    live_per_thread: usize,
    generations: usize,
    replacements_per_generation: u64,
}

impl Params {
    fn at(scale: f64) -> Self {
        Params {
            threads: cpus(),
            live_per_thread: scaled(5_000, scale.min(1.0)) as usize,
            generations: 10,
            replacements_per_generation: scaled(400_000, scale),
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{} threads x {} generations; each thread keeps {} blocks of {MIN_SIZE}-{MAX_SIZE} B \
         and replaces a random one {} times, then hands all of them to the next generation's \
         thread",
        p.threads, p.generations, p.live_per_thread, p.replacements_per_generation
    )
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    // As in the original, the main thread allocates the first sets, so even the first
    // generation frees blocks it did not allocate.
    let mut ledgers = vec![Ledger::new(0)];
    let mut rng = Rng::new(4141);
    let mut sets: Vec<Vec<Option<TaggedBlock>>> = (0..p.threads)
        .map(|_| {
            (0..p.live_per_thread)
                .map(|_| Some(ledgers[0].alloc(rng.between(MIN_SIZE, MAX_SIZE))))
                .collect()
        })
        .collect();
    for generation in 0..p.generations {
        // Thread t of this generation takes the set thread t + 1 left, so with two or more
        // threads no set stays with the CPU-mate of the thread that filled it.
        sets.rotate_left(1);
        let finished: Vec<(Vec<Option<TaggedBlock>>, Ledger)> = std::thread::scope(|scope| {
            let handles: Vec<_> = sets
                .drain(..)
                .enumerate()
                .map(|(thread, mut set)| {
                    let stream = (generation * p.threads + thread + 1) as u64;
                    scope.spawn(move || {
                        let mut ledger = Ledger::new(stream);
                        let mut rng = Rng::new(stream);
                        for _ in 0..p.replacements_per_generation {
                            let slot = &mut set[rng.below(p.live_per_thread)];
                            if let Some(old) = slot.take() {
                                ledger.free(old);
                            }
                            *slot = Some(ledger.alloc(rng.between(MIN_SIZE, MAX_SIZE)));
                        }
                        (set, ledger)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a larson thread panicked"))
                .collect()
        });
        for (set, ledger) in finished {
            sets.push(set);
            ledgers.push(ledger);
        }
    }
    let mut last = Ledger::new(u64::MAX);
    for block in sets.into_iter().flatten().flatten() {
        last.free(block);
    }
    ledgers.push(last);
    Ledger::balance_all(&ledgers)
}
