//! xmalloc-test (Lever and Boreham's producer/consumer test): producer threads allocate
//! batches of 64-byte blocks and push them onto a shared bounded stack of batches; as many
//! consumer threads pop batches and free every block, so every free is a cross-thread free.

use super::block::{Ledger, TaggedBlock};
use super::{cpus, scaled};
use crossbeam_queue::ArrayQueue;

/// Every block's size, as in mimalloc-bench's `xmalloc-test -s 64`.
const BLOCK_SIZE: usize = 64;
/// Blocks per batch handed from a producer to a consumer.
const BATCH: usize = 4096;
/// Batches waiting at most; a producer that finds the queue full waits for a consumer.
const QUEUE_BATCHES: usize = 100;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    producers: usize,
    batches_per_producer: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        let producers = cpus();
        Params {
            producers,
            batches_per_producer: scaled(2_400 / producers as u64, scale) as usize,
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{0} producer and {0} consumer threads; each producer allocates {1} batches of {BATCH} \
         blocks of {BLOCK_SIZE} B (and the batch), a consumer frees them; at most \
         {QUEUE_BATCHES} batches wait",
        p.producers, p.batches_per_producer
    )
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let total_batches = p.producers * p.batches_per_producer;
    let queue: ArrayQueue<Vec<TaggedBlock>> = ArrayQueue::new(QUEUE_BATCHES);
    // Batches freed so far by all consumers: a consumer that finds the queue empty stops
    // once this reaches the total.
    let consumed = std::sync::atomic::AtomicUsize::new(0);
    let ledgers: Vec<Ledger> = std::thread::scope(|scope| {
        let producers: Vec<_> = (0..p.producers)
            .map(|producer| {
                let queue = &queue;
                scope.spawn(move || {
                    let mut ledger = Ledger::new(producer as u64);
                    for _ in 0..p.batches_per_producer {
                        let mut batch = Vec::with_capacity(BATCH);
                        batch.extend((0..BATCH).map(|_| ledger.alloc(BLOCK_SIZE)));
                        while let Err(back) = queue.push(batch) {
                            batch = back;
                            // Two cores: let a consumer run rather than spin out the slice.
                            std::thread::yield_now();
                        }
                    }
                    ledger
                })
            })
            .collect();
        let consumers: Vec<_> = (0..p.producers)
            .map(|consumer| {
                let (queue, consumed) = (&queue, &consumed);
                scope.spawn(move || {
                    let mut ledger = Ledger::new((p.producers + consumer) as u64);
                    loop {
                        if let Some(batch) = queue.pop() {
                            for block in batch {
                                ledger.free(block);
                            }
                            consumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        } else if consumed.load(std::sync::atomic::Ordering::Relaxed)
                            >= total_batches
                        {
                            break;
                        } else {
                            std::thread::yield_now();
                        }
                    }
                    ledger
                })
            })
            .collect();
        producers
            .into_iter()
            .chain(consumers)
            .map(|h| h.join().expect("an xmalloc-test thread panicked"))
            .collect()
    });
    Ledger::balance_all(&ledgers)
}
