//! mstress (mimalloc's stress test): more threads than CPUs allocate blocks of mostly small,
//! occasionally huge sizes; some live briefly, some until the thread ends, and a quarter of
//! the steps swap a live block with a slot of a shared transfer array, so blocks migrate
//! between threads and outlive the thread that made them. Threads are re-created each round;
//! half the transfer slots survive into the next round.

use super::block::{Ledger, TaggedBlock};
use super::rng::Rng;
use super::scaled;
use std::sync::Mutex;

/// Threads per round: more than the CPUs of most machines, as in mstress's default use.
const THREADS: usize = 8;
/// Rounds, each re-creating all threads.
const ROUNDS: usize = 10;
/// Slots of the shared transfer array.
const TRANSFER_SLOTS: usize = 1_000;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Short-lived allocations of thread 0; thread `t` does `t % 4 + 1` times as many.
    base_allocs: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        Params {
            base_allocs: scaled(12_000, scale) as usize,
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{THREADS} threads x {ROUNDS} rounds; thread t makes (t % 4 + 1) x {} short-lived and \
         half as many thread-lifetime blocks of 8-512 B (1% up to 100x, 0.1% 1000x, 0.01% \
         10000x larger), frees 2/3 of steps, swaps 1/4 of steps with one of \
         {TRANSFER_SLOTS} shared slots",
        p.base_allocs
    )
}

/// A block of `1 << below(shifts)` words, now and then much larger.
fn alloc_words(ledger: &mut Ledger, rng: &mut Rng, shifts: usize) -> TaggedBlock {
    let mut words = 1usize << rng.below(shifts);
    if rng.chance(1) {
        words *= if rng.chance(1) {
            10_000
        } else if rng.chance(10) {
            1_000
        } else {
            100
        };
    }
    ledger.alloc(words * 8)
}

fn stress(
    thread: usize,
    round: usize,
    p: Params,
    transfer: &[Mutex<Option<TaggedBlock>>],
) -> Ledger {
    let stream = (round * THREADS + thread + 1) as u64;
    let mut ledger = Ledger::new(stream);
    let mut rng = Rng::new(stream);
    let mut allocs = p.base_allocs * (thread % 4 + 1);
    let mut retain = allocs / 2;
    let mut short_lived: Vec<Option<TaggedBlock>> = Vec::new();
    let mut retained: Vec<TaggedBlock> = Vec::with_capacity(retain);
    while allocs > 0 || retain > 0 {
        if retain == 0 || (allocs > 0 && rng.chance(50)) {
            allocs -= 1;
            short_lived.push(Some(alloc_words(&mut ledger, &mut rng, 5)));
        } else {
            retain -= 1;
            retained.push(alloc_words(&mut ledger, &mut rng, 7));
        }
        if rng.chance(66) {
            let slot = rng.below(short_lived.len().max(1));
            if let Some(block) = short_lived.get_mut(slot).and_then(Option::take) {
                ledger.free(block);
            }
        }
        if !short_lived.is_empty() && rng.chance(25) {
            let slot = rng.below(short_lived.len());
            let shared = &transfer[rng.below(TRANSFER_SLOTS)];
            std::mem::swap(
                &mut short_lived[slot],
                &mut *shared.lock().expect("transfer slot poisoned"),
            );
        }
    }
    for block in retained
        .into_iter()
        .chain(short_lived.into_iter().flatten())
    {
        ledger.free(block);
    }
    ledger
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let transfer: Vec<Mutex<Option<TaggedBlock>>> =
        (0..TRANSFER_SLOTS).map(|_| Mutex::new(None)).collect();
    let mut main = Ledger::new(0);
    let mut rng = Rng::new(43);
    let mut ledgers = Vec::with_capacity(ROUNDS * THREADS + 1);
    for round in 0..ROUNDS {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let transfer = &transfer;
                    scope.spawn(move || stress(thread, round, p, transfer))
                })
                .collect();
            ledgers.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("an mstress thread panicked")),
            );
        });
        let last = round + 1 == ROUNDS;
        for slot in &transfer {
            if last || rng.chance(50) {
                if let Some(block) = slot.lock().expect("transfer slot poisoned").take() {
                    main.free(block);
                }
            }
        }
    }
    ledgers.push(main);
    Ledger::balance_all(&ledgers)
}
