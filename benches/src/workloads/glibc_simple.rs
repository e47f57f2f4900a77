//! glibc-simple (glibc's `bench-malloc-simple`): one thread, a tight loop that allocates a
//! batch of same-size blocks, writes every byte, then frees the first half in allocation
//! order and the second half in reverse, for batch sizes 25 to 1600 and block sizes 16, 32
//! and 64 bytes: the fast path of an allocator's thread (or CPU) cache and little else.

use super::scaled;
use std::hint::black_box;

/// Block sizes, each run through every batch size.
const BLOCK_SIZES: [usize; 3] = [16, 32, 64];
/// Blocks allocated before any is freed.
const BATCH_SIZES: [usize; 4] = [25, 100, 400, 1600];

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Allocations per (block size, batch size) pair.
    allocs_per_pair: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        Params {
            allocs_per_pair: scaled(2_400_000, scale) as usize,
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "1 thread; for blocks of {BLOCK_SIZES:?} B and batches of {BATCH_SIZES:?}: {} \
         allocations per pair, every byte written, each batch freed half FIFO, half LIFO",
        p.allocs_per_pair
    )
}

fn new_block(size: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(size);
    block.extend((0..size).map(|i| i as u8));
    block
}

/// Check `block` still holds what `new_block` wrote at its ends, then free it.
fn free_block(block: Vec<u8>, size: usize) -> bool {
    let intact = block.len() == size && block[0] == 0 && block[size - 1] == (size - 1) as u8;
    // The bytes written are seen as used, so the writes are not dropped as dead stores.
    drop(black_box(block));
    intact
}

/// Run at `scale`; the blocks allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH_SIZES[BATCH_SIZES.len() - 1]);
    let (mut allocated, mut intact) = (0u64, 0u64);
    for size in BLOCK_SIZES {
        for batch_size in BATCH_SIZES {
            for _ in 0..(p.allocs_per_pair / batch_size).max(1) {
                batch.extend((0..batch_size).map(|_| new_block(size)));
                allocated += batch_size as u64;
                let half = batch_size / 2;
                let order = (0..half).chain((half..batch_size).rev());
                for index in order {
                    // An empty `Vec` is left behind, which owns no memory.
                    let block = std::mem::take(&mut batch[index]);
                    intact += u64::from(free_block(block, size));
                }
                batch.clear();
            }
        }
    }
    if intact != allocated {
        return Err(format!(
            "{} of {allocated} blocks did not hold what was written to them",
            allocated - intact
        ));
    }
    Ok(allocated)
}
