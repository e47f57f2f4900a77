//! rptest (rpmalloc's benchmark, as mimalloc-bench runs it): each thread keeps a table of
//! live blocks of 8 B to 16 KB (uniformly distributed sizes, every page touched); each loop
//! frees a varying number of them, frees the batches other threads sent it, allocates a
//! varying number of new ones, and every other loop also allocates a batch for the next
//! thread to free.

use super::block::{Ledger, TaggedBlock};
use super::rng::Rng;
use super::{cpus, scaled};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Smallest block (bytes).
const MIN_SIZE: usize = 8;
/// Largest block (bytes).
const MAX_SIZE: usize = 16_000;
/// Slots of each thread's table of live blocks.
const SLOTS: usize = 1_000;
/// Mean frees, and mean allocations, per loop (each loop draws 50-150% of it).
const MEAN_OPS: usize = 100;
/// A batch for the next thread is made every this many loops.
const CROSS_EVERY: usize = 2;
/// Batches that may wait in a thread's inbox: a thread that is ahead waits (freeing its own
/// inbox meanwhile) rather than pile up batches for a descheduled neighbour, so the peak
/// RSS measures the allocator and not how the scheduler happened to run the threads.
const MAX_WAITING_BATCHES: usize = 4;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    threads: usize,
    loops: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        Params {
            threads: cpus(),
            loops: scaled(4_000, scale) as usize,
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{} threads x {} loops over a table of {SLOTS} blocks of {MIN_SIZE}-{MAX_SIZE} B: \
         free and allocate 50-150 blocks per loop; every {CROSS_EVERY} loops send a batch as \
         large as that loop's allocations to the next thread, which frees it (at most \
         {MAX_WAITING_BATCHES} batches wait per thread)",
        p.threads, p.loops
    )
}

/// A loop's number of frees or allocations.
fn ops(rng: &mut Rng) -> usize {
    rng.between(MEAN_OPS / 2, MEAN_OPS * 3 / 2)
}

fn worker(
    thread: usize,
    p: Params,
    inboxes: &[Mutex<Vec<Vec<TaggedBlock>>>],
    done_looping: &AtomicUsize,
) -> Ledger {
    let mut ledger = Ledger::new(thread as u64);
    let mut rng = Rng::new(thread as u64 + 1);
    let mut table: Vec<Option<TaggedBlock>> = (0..SLOTS).map(|_| None).collect();
    let inbox = &inboxes[thread];
    let next = &inboxes[(thread + 1) % p.threads];
    let free_inbox = |ledger: &mut Ledger| {
        let batches = std::mem::take(&mut *inbox.lock().expect("inbox poisoned"));
        for block in batches.into_iter().flatten() {
            ledger.free(block);
        }
    };
    for turn in 0..p.loops {
        for _ in 0..ops(&mut rng) {
            if let Some(block) = table[rng.below(SLOTS)].take() {
                ledger.free(block);
            }
        }
        free_inbox(&mut ledger);
        let allocs = ops(&mut rng);
        for _ in 0..allocs {
            let slot = &mut table[rng.below(SLOTS)];
            if let Some(block) = slot.take() {
                ledger.free(block);
            }
            *slot = Some(ledger.alloc(rng.between(MIN_SIZE, MAX_SIZE)));
        }
        if turn % CROSS_EVERY == 0 {
            let batch: Vec<TaggedBlock> = (0..allocs)
                .map(|_| ledger.alloc(rng.between(MIN_SIZE, MAX_SIZE)))
                .collect();
            // Every thread drains its inbox while it waits here and, once done looping,
            // until all are done, so the wait ends and a ring of waiting threads cannot jam.
            while next.lock().expect("inbox poisoned").len() >= MAX_WAITING_BATCHES {
                free_inbox(&mut ledger);
                std::thread::yield_now();
            }
            next.lock().expect("inbox poisoned").push(batch);
        }
    }
    done_looping.fetch_add(1, Ordering::Release);
    // Keep freeing what a slower neighbour sends; once every thread is done looping (the
    // Acquire pairs with their Release after their last send), one last drain empties it.
    while done_looping.load(Ordering::Acquire) < p.threads {
        free_inbox(&mut ledger);
        std::thread::yield_now();
    }
    free_inbox(&mut ledger);
    for block in table.into_iter().flatten() {
        ledger.free(block);
    }
    ledger
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let inboxes: Vec<Mutex<Vec<Vec<TaggedBlock>>>> =
        (0..p.threads).map(|_| Mutex::new(Vec::new())).collect();
    let done_looping = AtomicUsize::new(0);
    let ledgers: Vec<Ledger> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..p.threads)
            .map(|thread| {
                let (inboxes, done_looping) = (&inboxes, &done_looping);
                scope.spawn(move || worker(thread, p, inboxes, done_looping))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an rptest thread panicked"))
            .collect()
    });
    Ledger::balance_all(&ledgers)
}
