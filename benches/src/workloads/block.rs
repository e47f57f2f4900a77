//! The blocks the workloads allocate, and the ledger that proves every one was written, read
//! back intact and freed.
//!
//! A [`TaggedBlock`] is allocated from the global allocator (the allocator under test) and
//! carries a 64-bit tag at its start, the tag mixed with its size at its end, and a tag byte
//! on every further 4 KiB page, so its whole extent is resident as in a program that uses
//! what it allocates. Freeing it checks all of them: two live blocks that overlap, a block
//! shorter than asked for, or a block handed out twice breaks a tag. A [`Ledger`] counts the
//! blocks and sums their tags on both sides; a workload that balances its ledgers has freed,
//! intact, exactly the blocks it allocated.

use super::rng::mix;
use std::alloc::Layout;
use std::ptr::NonNull;

/// The smallest block: the start tag needs 8 bytes.
pub const MIN_BLOCK: usize = 8;

/// Tags are 8-byte words, so blocks are 8-aligned (what `malloc` callers rely on too).
const BLOCK_ALIGN: usize = 8;

/// Distance between the page bytes written into a large block.
const PAGE: usize = 4096;

/// A block of the global allocator with its tags written.
#[derive(Debug)]
pub struct TaggedBlock {
    start: NonNull<u8>,
    size: usize,
}

// SAFETY: a `TaggedBlock` is the only handle to its block, and every allocator compared
// accepts a free from any thread; moving the handle moves the ownership.
unsafe impl Send for TaggedBlock {}

impl TaggedBlock {
    /// Allocate `size` bytes (at least [`MIN_BLOCK`]) and write `tag` into them.
    pub fn new(size: usize, tag: u64) -> Self {
        assert!(size >= MIN_BLOCK, "blocks are at least {MIN_BLOCK} bytes");
        let layout = Self::layout(size);
        // SAFETY: the size is non-zero, checked just above.
        let start = unsafe { std::alloc::alloc(layout) };
        let Some(start) = NonNull::new(start) else {
            std::alloc::handle_alloc_error(layout)
        };
        let block = TaggedBlock { start, size };
        // SAFETY: `block` is a fresh allocation of `size` bytes, aligned for `u64`, that no
        // one else holds; every offset written is below `size` (see `tag_offsets`).
        unsafe {
            start.cast::<u64>().write(tag);
            if let Some((offset, value)) = block.tag_offsets(tag) {
                start.add(offset).cast::<u64>().write_unaligned(value);
            }
            // Page bytes stop short of the end tag, which they would otherwise overwrite.
            for offset in (PAGE..size - 8).step_by(PAGE) {
                start.add(offset).write(tag as u8);
            }
        }
        block
    }

    /// The size asked for.
    pub fn size(&self) -> usize {
        self.size
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, BLOCK_ALIGN).expect("block size fits a layout")
    }

    /// The end tag's offset and value; blocks under 16 bytes have only the start tag.
    fn tag_offsets(&self, tag: u64) -> Option<(usize, u64)> {
        (self.size >= 2 * MIN_BLOCK).then(|| (self.size - 8, mix(tag ^ self.size as u64)))
    }

    /// Check every tag and return the start one.
    ///
    /// # Panics
    ///
    /// With a message naming the block when a tag is not what was written: the allocator
    /// handed out memory that something else wrote over.
    fn checked_tag(&self) -> u64 {
        let start = self.start;
        // SAFETY: the block is live and `size` bytes long; the start tag is aligned.
        let tag = unsafe { start.cast::<u64>().read() };
        let mut intact = true;
        if let Some((offset, expected)) = self.tag_offsets(tag) {
            // SAFETY: `offset + 8 <= size`.
            intact &= unsafe { start.add(offset).cast::<u64>().read_unaligned() } == expected;
        }
        for offset in (PAGE..self.size - 8).step_by(PAGE) {
            // SAFETY: `offset < size`.
            intact &= unsafe { start.add(offset).read() } == tag as u8;
        }
        assert!(
            intact,
            "memory corruption: the block of {} bytes at {:p} (start tag {tag:#x}) was written \
             over while it was live",
            self.size, start
        );
        tag
    }
}

impl Drop for TaggedBlock {
    /// Free the block; [`Ledger::free`] checks it first (a panicking workload's leftovers
    /// are freed unchecked).
    fn drop(&mut self) {
        // SAFETY: the block came from the global allocator with this layout and this handle
        // is its only owner, dropped once.
        unsafe { std::alloc::dealloc(self.start.as_ptr(), Self::layout(self.size)) };
    }
}

/// Blocks allocated and freed through one ledger (usually one per thread), and their tags.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    stream: u64,
    allocated: u64,
    freed: u64,
    allocated_tags: u64,
    freed_tags: u64,
}

impl Ledger {
    /// An empty ledger whose tags come from `stream` (distinct streams give distinct tags).
    pub fn new(stream: u64) -> Self {
        Ledger {
            stream: mix(stream.wrapping_add(1)),
            ..Ledger::default()
        }
    }

    /// Allocate a tagged block of `size` bytes and count it.
    pub fn alloc(&mut self, size: usize) -> TaggedBlock {
        let tag = mix(self.stream ^ self.allocated.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.allocated += 1;
        self.allocated_tags = self.allocated_tags.wrapping_add(tag);
        TaggedBlock::new(size, tag)
    }

    /// Check and free `block` (allocated through any ledger) and count it.
    pub fn free(&mut self, block: TaggedBlock) {
        let tag = block.checked_tag();
        drop(block);
        self.freed += 1;
        self.freed_tags = self.freed_tags.wrapping_add(tag);
    }

    /// Add `other`'s counts to this one's.
    pub fn merge(&mut self, other: &Ledger) {
        self.allocated += other.allocated;
        self.freed += other.freed;
        self.allocated_tags = self.allocated_tags.wrapping_add(other.allocated_tags);
        self.freed_tags = self.freed_tags.wrapping_add(other.freed_tags);
    }

    /// The blocks allocated, if exactly those were freed (same count, same sum of tags),
    /// else what is wrong.
    pub fn balance(&self) -> Result<u64, String> {
        if self.allocated != self.freed {
            return Err(format!(
                "{} blocks allocated but {} freed",
                self.allocated, self.freed
            ));
        }
        if self.allocated_tags != self.freed_tags {
            return Err(format!(
                "the {} blocks freed are not the ones allocated (tag sums {:#x} and {:#x})",
                self.freed, self.allocated_tags, self.freed_tags
            ));
        }
        if self.allocated == 0 {
            return Err("no blocks were allocated".into());
        }
        Ok(self.allocated)
    }

    /// Merge all of `ledgers` and [`balance`](Self::balance) the total.
    pub fn balance_all<'a>(ledgers: impl IntoIterator<Item = &'a Ledger>) -> Result<u64, String> {
        let mut total = Ledger::default();
        for ledger in ledgers {
            total.merge(ledger);
        }
        total.balance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledgers_balance_across_threads_of_frees() {
        let mut maker = Ledger::new(1);
        let blocks: Vec<TaggedBlock> = [8, 15, 16, 100, 5000, 8196, 70_000]
            .into_iter()
            .map(|size| maker.alloc(size))
            .collect();
        assert_eq!(blocks[4].size(), 5000);
        let freer = std::thread::spawn(move || {
            let mut freer = Ledger::new(2);
            for block in blocks {
                freer.free(block);
            }
            freer
        })
        .join()
        .unwrap();
        assert!(maker.balance().is_err(), "nothing freed through it");
        assert_eq!(Ledger::balance_all([&maker, &freer]), Ok(7));
    }

    #[test]
    fn a_missing_free_or_a_different_block_does_not_balance() {
        let mut a = Ledger::new(1);
        let kept = a.alloc(32);
        let freed = a.alloc(32);
        a.free(freed);
        assert!(a
            .balance()
            .unwrap_err()
            .contains("2 blocks allocated but 1 freed"));
        drop(kept);

        let mut b = Ledger::new(2);
        let foreign = Ledger::new(3).alloc(32);
        let _own = b.alloc(32);
        b.free(foreign);
        assert!(b.balance().unwrap_err().contains("not the ones allocated"));
    }

    #[test]
    #[should_panic(expected = "memory corruption")]
    fn an_overwritten_tag_is_caught() {
        let mut ledger = Ledger::new(1);
        let block = ledger.alloc(64);
        // SAFETY: the block is live and 64 bytes long; byte 60 is inside the end tag.
        unsafe {
            block
                .start
                .as_ptr()
                .add(60)
                .write(0x5a ^ block.start.as_ptr().add(60).read())
        };
        ledger.free(block);
    }
}
