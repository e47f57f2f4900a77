//! Large blocks kept mapped after their free, for the next large request.
//!
//! A large block is a mapping of its own. Unmapping it on free and mapping a fresh one for
//! the next large request costs two system calls and a page fault for every page the
//! program then touches (the kernel zeroes each one). Programs that free and allocate
//! large buffers in turn pay that every time; glibc avoids it by raising its `mmap`
//! threshold once it sees such a free, so it serves later requests from its heap.
//!
//! So a freed large block of at most a quarter of the budget ([`set_large_cache_bytes`],
//! `PERCPU_ALLOC_LARGE_CACHE_BYTES`, default 32 MiB) is kept whole and resident, while
//! the blocks kept total at most the budget. When a new block does not fit, the oldest kept
//! ones are unmapped. A large request takes the smallest kept block that is long enough and
//! aligned enough: the whole block when it is at most a quarter longer than the request (a
//! block's usable size is its whole length), else the block's head, and the rest stays
//! kept as a block of its own (or is unmapped when too short for a large request); a freed
//! block is joined with kept blocks next to it, so a split block becomes whole again.
//! Without that, a program whose large blocks vary in size mapped a fresh block for most
//! requests, and each `mmap` and `munmap` holds the address-space lock that every page
//! fault of every thread waits on: in alternating runs of mstress (sizes up to 5 MB from 8
//! threads) splitting and joining took its median from 0.32-0.34 s to 0.25-0.28 s (glibc
//! 0.37-0.41 s), and its page faults from about 57,000 to 29,000-38,000. A joined block may
//! span two mappings, which `mremap` cannot move as one: `realloc` then copies. A kept
//! block is reused as it is: `alloc_zeroed` clears the bytes it asks for.
//!
//! Kept blocks go back to the system when the release clock ticks for the second time
//! without their reuse (so a block stays between one and two release intervals), on
//! [`release_memory`](crate::release_memory), and all at once when the budget is set to 0.
//!
//! One spin lock covers the table. No other lock is taken while it is held, and
//! `munmap` is called after it is released.

use crate::os;
use crate::page_heap;
use crate::release;
use crate::size_class::MAX_SMALL;
use crate::spin::SpinLock;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Blocks kept at most: enough for a program's handful of large buffers, small enough to
/// scan on every large request.
const SLOTS: usize = 16;
const DEFAULT_BUDGET: usize = 32 << 20;

/// The budget in bytes, [`release::UNREAD`] until read.
static BUDGET: AtomicUsize = AtomicUsize::new(release::UNREAD);
/// The release clock's ticks seen, which date the kept blocks.
static TICKS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy)]
struct Kept {
    /// The block: `len` bytes of a mapping, or of mappings next to each other (see
    /// [`Table::join_neighbours`]); a pointer, so it keeps its provenance.
    ptr: *mut u8,
    len: usize,
    /// [`TICKS`] when it was kept.
    since: usize,
    /// The order of keeping (oldest lowest), within one tick too.
    serial: usize,
}

const NO_BLOCK: Kept = Kept {
    ptr: core::ptr::null_mut(),
    len: 0,
    since: 0,
    serial: 0,
};

struct Table {
    blocks: [Kept; SLOTS],
    count: usize,
    bytes: usize,
    /// The next block's `serial`.
    next_serial: usize,
}

// SAFETY: the pointers are unused mappings owned by the table, used only under its lock.
unsafe impl Send for Table {}

static TABLE: SpinLock<Table> = SpinLock::new(Table {
    blocks: [NO_BLOCK; SLOTS],
    count: 0,
    bytes: 0,
    next_serial: 0,
});

/// Blocks taken out of the table under its lock, to be unmapped once it is released: at
/// most the whole table and the one block `keep` was handed.
struct Evicted {
    blocks: [Kept; SLOTS + 1],
    count: usize,
}

impl Evicted {
    const fn new() -> Self {
        Evicted {
            blocks: [NO_BLOCK; SLOTS + 1],
            count: 0,
        }
    }

    fn push(&mut self, block: Kept) {
        self.blocks[self.count] = block;
        self.count += 1;
    }

    /// Unmap every block; returns their bytes.
    fn unmap(self) -> usize {
        let mut bytes = 0;
        for block in &self.blocks[..self.count] {
            // SAFETY: every evicted block is mapped memory that was handed to `keep` unused
            // (whole large blocks, the rest of one `take` split, or such blocks joined) and
            // has left the table, so nothing else refers to it; `munmap` takes any
            // page-aligned range of mappings.
            unsafe { os::unmap(NonNull::new_unchecked(block.ptr), block.len) };
            bytes += block.len;
        }
        page_heap::count_released(bytes);
        bytes
    }
}

impl Table {
    /// Put `block` in the table, which has room for it.
    fn insert(&mut self, block: Kept) {
        let count = self.count;
        self.blocks[count] = block;
        self.count += 1;
        self.bytes += block.len;
    }

    /// Join `block` with the kept blocks next to it in the address space (the rest of a
    /// block `take` split, or a mapping the kernel placed alongside), while the whole stays
    /// within `limit` bytes, taking them out of the table. The joined block is as old as
    /// its oldest part, so it goes back to the system no later than any part would have.
    fn join_neighbours(&mut self, block: &mut Kept, limit: usize) {
        let mut index = 0;
        while index < self.count {
            let other = self.blocks[index];
            let before = other.ptr.wrapping_add(other.len) == block.ptr;
            let after = block.ptr.wrapping_add(block.len) == other.ptr;
            if (before || after) && block.len + other.len <= limit {
                self.remove(index);
                if before {
                    block.ptr = other.ptr;
                }
                block.len += other.len;
                block.since = block.since.min(other.since);
                block.serial = block.serial.min(other.serial);
                // `remove` moved the last block into `index`, and the joined block may now
                // touch one already passed: look again from the start (at most 16).
                index = 0;
            } else {
                index += 1;
            }
        }
    }

    /// Take block `index` out of the table.
    fn remove(&mut self, index: usize) -> Kept {
        let block = self.blocks[index];
        self.count -= 1;
        self.blocks[index] = self.blocks[self.count];
        self.bytes -= block.len;
        block
    }

    /// Remove block `index`, moving it into `to`.
    fn evict(&mut self, index: usize, to: &mut Evicted) {
        let block = self.remove(index);
        to.push(block);
    }

    /// Evict the block kept longest; `false` when there is none.
    fn evict_oldest(&mut self, to: &mut Evicted) -> bool {
        let blocks = &self.blocks[..self.count];
        let oldest = (0..blocks.len()).min_by_key(|&index| blocks[index].serial);
        oldest.inspect(|&index| self.evict(index, to)).is_some()
    }

    /// Evict the blocks `drop` picks.
    fn evict_where(&mut self, to: &mut Evicted, drop: impl Fn(&Kept) -> bool) {
        let mut index = 0;
        while index < self.count {
            if drop(&self.blocks[index]) {
                self.evict(index, to);
            } else {
                index += 1;
            }
        }
    }
}

/// Set the large-block cache's budget: freed large blocks (over 256 KiB) of at most a
/// quarter of `bytes` are kept mapped, up to `bytes` in all, and handed out again for
/// large requests instead of fresh mappings (see the crate docs). `0` turns the cache off
/// and unmaps what it holds. Overrides `PERCPU_ALLOC_LARGE_CACHE_BYTES`; the default is
/// 32 MiB.
pub fn set_large_cache_bytes(bytes: usize) {
    BUDGET.store(bytes.min(release::UNREAD - 1), Ordering::Relaxed);
    let mut evicted = Evicted::new();
    {
        let mut table = TABLE.lock();
        table.evict_where(&mut evicted, |block| block.len > bytes / 4);
        while table.bytes > bytes && table.evict_oldest(&mut evicted) {}
    }
    evicted.unmap();
}

/// The large-block cache's budget (see [`set_large_cache_bytes`]): from
/// `PERCPU_ALLOC_LARGE_CACHE_BYTES` (a byte count with an optional `k`, `m` or `g` suffix)
/// at first use, 32 MiB when unset or malformed.
pub fn large_cache_bytes() -> usize {
    release::read_once(&BUDGET, || {
        release::bytes_from_environment(c"PERCPU_ALLOC_LARGE_CACHE_BYTES").unwrap_or(DEFAULT_BUDGET)
    })
}

/// Bytes of large blocks kept now.
pub(crate) fn kept_bytes() -> usize {
    TABLE.lock().bytes
}

/// Whether kept blocks may be split (a request much shorter than a block takes its head)
/// and joined (a freed block and the kept ones next to it become one). Not under Miri, whose
/// mappings are allocations of `std::alloc::System` that can only be unmapped whole (see
/// `os`).
const RESHAPE: bool = !cfg!(miri);

/// A kept block for a large request of `len` bytes (a page multiple) aligned to `align`:
/// the block and its length, at least `len`. The smallest kept block that is long enough
/// and aligned enough serves it: whole when it is at most a quarter longer than `len`, else
/// its first `len` bytes, and the rest stays kept (its own block from now on), or is
/// unmapped when it is too short for any request over [`MAX_SMALL`].
pub(crate) fn take(len: usize, align: usize) -> Option<(NonNull<u8>, usize)> {
    let whole_up_to = len.saturating_add(len / 4);
    let mut short_rest = Evicted::new();
    let taken = {
        let mut table = TABLE.lock();
        let count = table.count;
        let best = table.blocks[..count]
            .iter()
            .enumerate()
            .filter(|(_, block)| {
                let fits = block.len >= len && (RESHAPE || block.len <= whole_up_to);
                fits && block.ptr.addr().is_multiple_of(align)
            })
            .min_by_key(|(_, block)| block.len)
            .map(|(index, _)| index)?;
        let block = table.remove(best);
        if block.len <= whole_up_to {
            block
        } else {
            // Pages a program touched stay resident in the rest, so the next large request
            // it serves faults nothing in and maps nothing (a `mmap` or `munmap` takes the
            // process's address-space lock, which every page fault of every thread waits
            // on). The rest is a page multiple (both lengths are) and keeps the block's
            // age. `remove` just freed a slot for it.
            let rest = Kept {
                ptr: block.ptr.wrapping_add(len),
                len: block.len - len,
                ..block
            };
            if rest.len > MAX_SMALL {
                table.insert(rest);
            } else {
                short_rest.push(rest);
            }
            Kept { len, ..block }
        }
    };
    short_rest.unmap();
    Some((NonNull::new(taken.ptr)?, taken.len))
}

/// Keep the freed large block `[ptr, ptr + len)` if the budget allows, joined with kept
/// blocks next to it and evicting the oldest blocks to make room; `false` (over a quarter of
/// the budget) leaves it to the caller (to unmap).
///
/// # Safety
/// The block is a large block from [`os`] (a whole mapping, or the part of one that
/// [`take`] handed out), its pagemap entry cleared, and nothing uses it afterwards.
pub(crate) unsafe fn keep(ptr: NonNull<u8>, len: usize) -> bool {
    let mut evicted = Evicted::new();
    {
        let mut table = TABLE.lock();
        // Read under the lock: `set_large_cache_bytes` stores the budget before it takes
        // the lock to evict, so either this sees the new budget or that eviction runs
        // after this block is in (with the budget read before the lock, a block could stay
        // kept past a budget of 0 until the next tick).
        let budget = large_cache_bytes();
        if len > budget / 4 {
            return false;
        }
        let mut block = Kept {
            ptr: ptr.as_ptr(),
            len,
            since: TICKS.load(Ordering::Relaxed),
            serial: table.next_serial,
        };
        table.next_serial = table.next_serial.wrapping_add(1);
        if RESHAPE {
            table.join_neighbours(&mut block, budget / 4);
        }
        while (table.count == SLOTS || table.bytes + block.len > budget)
            && table.evict_oldest(&mut evicted)
        {}
        if table.count < SLOTS && table.bytes + block.len <= budget {
            table.insert(block);
        } else {
            // Not reached (a block of at most a quarter of the budget always fits once
            // the table is empty), but should it be, the block, joined parts included, goes
            // back to the system like the evicted ones.
            evicted.push(block);
        }
    }
    evicted.unmap();
    true
}

/// A tick of the release clock: unmap the blocks kept before the previous tick (unused
/// for at least one whole interval). Returns the bytes unmapped.
pub(crate) fn tick() -> usize {
    let now = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
    let mut evicted = Evicted::new();
    TABLE
        .lock()
        .evict_where(&mut evicted, |block| block.since + 2 <= now);
    evicted.unmap()
}

/// Unmap every kept block ([`release_memory`](crate::release_memory)). Returns the bytes.
pub(crate) fn release_all() -> usize {
    let mut evicted = Evicted::new();
    TABLE.lock().evict_where(&mut evicted, |_| true);
    evicted.unmap()
}

/// Take the table's lock and keep it (the fork `prepare` handler).
pub(crate) fn lock_for_fork() {
    TABLE.lock_and_keep();
}

/// Release the lock taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded from the caller.
    unsafe { TABLE.unlock_kept() }
}
