//! Per-CPU cache capacities sized by use, inside a per-CPU byte budget.
//!
//! Each slot's stack for a class has storage for the class's `cpu_capacity` objects, but
//! only the first `capacity` words are in use: the stack's `end` sits at
//! `storage + capacity * 8`. Every class starts at capacity 0 on every slot, so a CPU (or
//! an `mm_cid`) that never allocates a class caches none of it. A miss (an empty stack on
//! allocation, a full one on free) grows the class by one batch, while the slot's
//! capacities, counted in bytes (`capacity * size` over its classes), stay within the
//! budget ([`set_cpu_cache_budget`], `PERCPU_ALLOC_CPU_CACHE_BYTES`). At the budget, the
//! growth is taken from other classes of the same slot that have unused room, round robin:
//! a class that stopped missing loses the room it does not use to one that misses. A slot
//! with no miss for a whole release interval is drained and reset to nothing (see
//! [`release`](crate::release)).
//!
//! Why changing `end` needs no fence: a push declines when `top >= end` and a pop never
//! looks at `end`. Raising `end` only makes room. Lowering it races only with pushes that
//! read the old `end` on the slot's CPU just before: they may leave `top` a few words above
//! the new `end`, which is still inside the storage; pushes then decline until pops bring
//! `top` down. So the budget bounds capacity exactly and cached bytes up to that
//! momentary overshoot.
//!
//! Resizes of one slot are serialised by its `resize` lock (tried, never waited for, from
//! the slow paths: a resize that finds it busy is skipped), which the drain of remote
//! stacks also holds, so no resize touches a stack the drain has stopped.

use crate::release::{self, UNREAD};
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::spin::SpinLock;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};

/// Per-slot bookkeeping, in the slot's region next to its stack headers. All-zero bytes
/// are a valid value (an unlocked lock, zero counts, empty capacities), which is how the
/// fresh mapping provides it.
#[repr(C)]
pub(crate) struct SlotMeta {
    /// Serialises capacity changes of this slot, and the drain of its stacks.
    pub resize: SpinLock<()>,
    /// Misses (refills and flushes) on this slot, ever.
    pub misses: AtomicU64,
    /// `misses` as the previous idle check saw it (written under the release lock).
    pub misses_at_check: AtomicU64,
    /// `sum(capacity[class] * size)`: the bytes of capacity in use, against the budget.
    pub capacity_bytes: AtomicUsize,
    /// Where the next search for room to take starts.
    steal_from: AtomicUsize,
    /// Chosen by the drain under way (written only by the release lock's holder).
    pub draining: AtomicBool,
    /// Bit `class`: this class's stack was stopped by a drain and not yet restored
    /// (written only by the drain, under the release lock and `resize`).
    pub stopped: [AtomicU64; NUM_CLASSES.div_ceil(64)],
    /// Each class's capacity in objects, at most its `cpu_capacity`.
    pub capacity: [AtomicU16; NUM_CLASSES],
}

const _: () = {
    let mut class = 0;
    while class < NUM_CLASSES {
        assert!(CLASSES_MAX[class] <= u16::MAX as usize);
        class += 1;
    }
};

const CLASSES_MAX: [usize; NUM_CLASSES] = {
    let mut max = [0; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        max[i] = crate::size_class::CLASS_TABLE[i].cpu_capacity;
        i += 1;
    }
    max
};

impl SlotMeta {
    pub(crate) fn is_stopped(&self, class: usize) -> bool {
        self.stopped[class / 64].load(Ordering::Relaxed) & (1 << (class % 64)) != 0
    }

    pub(crate) fn set_stopped(&self, class: usize, stopped: bool) {
        let bit = 1 << (class % 64);
        if stopped {
            self.stopped[class / 64].fetch_or(bit, Ordering::Relaxed);
        } else {
            self.stopped[class / 64].fetch_and(!bit, Ordering::Relaxed);
        }
    }

    pub(crate) fn capacity(&self, class: usize) -> usize {
        usize::from(self.capacity[class].load(Ordering::Relaxed))
    }
}

/// One slot's stacks as the resizing sees them: where each class's storage starts and its
/// header.
pub(crate) trait SlotStacks {
    fn meta(&self) -> &SlotMeta;
    fn header(&self, class: usize) -> &rseq_sys::BoundedStack;
    fn storage(&self, class: usize) -> *mut u8;

    /// Objects on `class`'s stack now (a snapshot; may exceed the capacity, see above).
    fn len(&self, class: usize) -> usize {
        let top = self.header(class).top.load(Ordering::Relaxed).addr();
        top.saturating_sub(self.storage(class).addr()) / 8
    }

    /// Set `class`'s capacity, and its stack's `end` to match. The caller holds `resize`
    /// and the stack is not stopped.
    fn set_capacity(&self, class: usize, capacity: usize) {
        let meta = self.meta();
        let old = meta.capacity(class);
        let size = CLASSES[class].size;
        meta.capacity[class].store(capacity as u16, Ordering::Relaxed);
        if capacity > old {
            meta.capacity_bytes
                .fetch_add((capacity - old) * size, Ordering::Relaxed);
        } else {
            meta.capacity_bytes
                .fetch_sub((old - capacity) * size, Ordering::Relaxed);
        }
        let end = self.storage(class).wrapping_add(capacity * 8);
        self.header(class).end.store(end, Ordering::Release);
    }
}

/// The per-CPU byte budget; [`UNREAD`] until the environment was read.
static BUDGET: AtomicUsize = AtomicUsize::new(UNREAD);
/// 6 MiB per slot: the mimalloc-bench rptest mix (2
/// threads, 8 B to 16 KB, tables of 1000 blocks) ran 2.6x slower at 3 MiB, and with more
/// peak memory (objects shuttled through the central lists fragment spans), and no faster
/// at 8 or 16 MiB.
const DEFAULT_BUDGET: usize = 6 << 20;

/// Set the byte budget of each CPU's cache: the most bytes of free objects (counted at
/// their size class) one CPU's caches may be sized to hold, over all size classes. Classes
/// grow within it as they miss and give up unused room to each other. Lowering it applies
/// from the next resize on (what is cached now stays until used or drained). Overrides
/// `PERCPU_ALLOC_CPU_CACHE_BYTES`. The default is 6 MiB.
pub fn set_cpu_cache_budget(bytes: usize) {
    BUDGET.store(bytes.min(UNREAD - 1), Ordering::Relaxed);
}

/// The byte budget of each CPU's cache (see [`set_cpu_cache_budget`]): from
/// `PERCPU_ALLOC_CPU_CACHE_BYTES` (a byte count with an optional `k`, `m` or `g` suffix)
/// at first use, 6 MiB when unset or malformed.
pub fn cpu_cache_budget() -> usize {
    release::read_once(&BUDGET, || {
        release::bytes_from_environment(c"PERCPU_ALLOC_CPU_CACHE_BYTES").unwrap_or(DEFAULT_BUDGET)
    })
}

/// A miss on `class` of this slot: count it, and grow the class by up to one batch within
/// `budget` bytes (taking unused room from other classes when the budget is spent).
/// Returns the class's capacity afterwards. Skips the growth when another thread is
/// resizing this slot or a drain holds it.
pub(crate) fn grow_on_miss(slot: &impl SlotStacks, class: usize, budget: usize) -> usize {
    let meta = slot.meta();
    meta.misses.fetch_add(1, Ordering::Relaxed);
    let Some(_resize) = meta.resize.try_lock() else {
        return meta.capacity(class);
    };
    let capacity = meta.capacity(class);
    let max = CLASSES[class].cpu_capacity;
    if capacity >= max || meta.is_stopped(class) {
        return capacity;
    }
    let size = CLASSES[class].size;
    let want = CLASSES[class].batch.min(max - capacity);
    let mut room = budget.saturating_sub(meta.capacity_bytes.load(Ordering::Relaxed)) / size;
    if room < want {
        take_unused_room(slot, class, (want - room) * size);
        room = budget.saturating_sub(meta.capacity_bytes.load(Ordering::Relaxed)) / size;
    }
    let grown = capacity + want.min(room);
    if grown > capacity {
        slot.set_capacity(class, grown);
    }
    grown
}

/// Shrink other classes of the slot by room they do not use (capacity above their current
/// length), round robin from where the last search stopped, until `bytes` are freed or
/// every class was looked at. The caller holds `resize`.
fn take_unused_room(slot: &impl SlotStacks, growing: usize, bytes: usize) {
    let meta = slot.meta();
    let start = meta.steal_from.load(Ordering::Relaxed);
    let mut freed = 0;
    for step in 0..NUM_CLASSES {
        let class = (start + step) % NUM_CLASSES;
        let capacity = meta.capacity(class);
        if class == growing || capacity == 0 || meta.is_stopped(class) {
            continue;
        }
        let unused = capacity.saturating_sub(slot.len(class));
        if unused == 0 {
            continue;
        }
        let size = CLASSES[class].size;
        let take = unused.min((bytes - freed).div_ceil(size));
        slot.set_capacity(class, capacity - take);
        freed += take * size;
        if freed >= bytes {
            meta.steal_from.store(class + 1, Ordering::Relaxed);
            return;
        }
    }
    meta.steal_from.store(start + 1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rseq_sys::BoundedStack;

    /// A slot in plain memory, with every class's storage at its full `cpu_capacity`.
    struct TestSlot {
        meta: SlotMeta,
        headers: Vec<BoundedStack>,
        storage: Vec<Vec<u64>>,
    }

    impl TestSlot {
        fn new() -> Box<Self> {
            // SAFETY: all-zero bytes are a valid `SlotMeta` (see its docs).
            let meta = unsafe { core::mem::zeroed::<SlotMeta>() };
            let storage: Vec<Vec<u64>> =
                CLASSES.iter().map(|c| vec![0u64; c.cpu_capacity]).collect();
            let headers = storage
                .iter()
                .map(|s| {
                    let h = BoundedStack::empty();
                    let begin = s.as_ptr().cast_mut().cast::<u8>();
                    h.begin.store(begin, Ordering::Relaxed);
                    h.top.store(begin, Ordering::Relaxed);
                    h.end.store(begin, Ordering::Relaxed);
                    h
                })
                .collect();
            Box::new(TestSlot {
                meta,
                headers,
                storage,
            })
        }

        /// Pretend `n` objects sit on `class`'s stack.
        fn fill(&self, class: usize, n: usize) {
            let begin = self.storage(class);
            self.headers[class]
                .top
                .store(begin.wrapping_add(n * 8), Ordering::Relaxed);
        }
    }

    impl SlotStacks for TestSlot {
        fn meta(&self) -> &SlotMeta {
            &self.meta
        }
        fn header(&self, class: usize) -> &BoundedStack {
            &self.headers[class]
        }
        fn storage(&self, class: usize) -> *mut u8 {
            self.storage[class].as_ptr().cast_mut().cast()
        }
    }

    fn end_matches_capacity(slot: &TestSlot) {
        for class in 0..NUM_CLASSES {
            let end = slot.headers[class].end.load(Ordering::Relaxed);
            assert_eq!(
                end.addr() - slot.storage(class).addr(),
                slot.meta.capacity(class) * 8,
                "class {class}: end and capacity disagree"
            );
        }
        let bytes: usize = (0..NUM_CLASSES)
            .map(|c| slot.meta.capacity(c) * CLASSES[c].size)
            .sum();
        assert_eq!(slot.meta.capacity_bytes.load(Ordering::Relaxed), bytes);
    }

    #[test]
    fn misses_grow_a_class_by_batches_up_to_its_storage() {
        let slot = TestSlot::new();
        let class = 3;
        let (batch, max) = (CLASSES[class].batch, CLASSES[class].cpu_capacity);
        assert_eq!(slot.meta.capacity(class), 0, "classes start empty");
        assert_eq!(grow_on_miss(&*slot, class, DEFAULT_BUDGET), batch);
        assert_eq!(grow_on_miss(&*slot, class, DEFAULT_BUDGET), 2 * batch);
        for _ in 0..max {
            grow_on_miss(&*slot, class, DEFAULT_BUDGET);
        }
        assert_eq!(slot.meta.capacity(class), max, "never beyond the storage");
        assert_eq!(slot.meta.misses.load(Ordering::Relaxed), max as u64 + 2);
        end_matches_capacity(&slot);
    }

    #[test]
    fn the_budget_bounds_capacity_and_unused_room_moves_to_the_class_that_misses() {
        let slot = TestSlot::new();
        // Small classes that use all their room, and one (the victim) that uses none.
        for class in 0..8 {
            grow_on_miss(&*slot, class, DEFAULT_BUDGET);
            slot.fill(class, slot.meta.capacity(class));
        }
        // One batch of 1152-byte objects: less than the hungry class could use.
        let victim = 40;
        grow_on_miss(&*slot, victim, DEFAULT_BUDGET);
        let victim_capacity = slot.meta.capacity(victim);
        assert!(victim_capacity > 1, "the victim has room to give");
        // A budget that is spent now, bar less than one object of the hungry class.
        let hungry = 60;
        let size = CLASSES[hungry].size;
        let budget = slot.meta.capacity_bytes.load(Ordering::Relaxed) + size / 2;
        let grown = grow_on_miss(&*slot, hungry, budget);
        assert!(grown > 0, "the missing class grew");
        assert!(
            slot.meta.capacity(victim) < victim_capacity,
            "room came from the victim"
        );
        for class in 0..8 {
            assert_eq!(
                slot.meta.capacity(class),
                slot.len(class),
                "class {class} lost room it uses"
            );
        }
        assert!(slot.meta.capacity_bytes.load(Ordering::Relaxed) <= budget);
        // Growing on until the victim has nothing left: the budget still holds, and the
        // hungry class stops growing.
        for _ in 0..2 * CLASSES[hungry].cpu_capacity {
            grow_on_miss(&*slot, hungry, budget);
            assert!(slot.meta.capacity_bytes.load(Ordering::Relaxed) <= budget);
        }
        assert_eq!(slot.meta.capacity(victim), 0, "all unused room was taken");
        assert!(slot.meta.capacity(hungry) < CLASSES[hungry].cpu_capacity);
        end_matches_capacity(&slot);
    }

    #[test]
    fn a_held_resize_lock_or_a_stopped_stack_skips_the_growth_but_counts_the_miss() {
        let slot = TestSlot::new();
        let guard = slot.meta.resize.lock();
        assert_eq!(grow_on_miss(&*slot, 1, DEFAULT_BUDGET), 0);
        drop(guard);
        slot.meta.set_stopped(1, true);
        assert_eq!(grow_on_miss(&*slot, 1, DEFAULT_BUDGET), 0);
        slot.meta.set_stopped(1, false);
        assert!(grow_on_miss(&*slot, 1, DEFAULT_BUDGET) > 0);
        assert_eq!(slot.meta.misses.load(Ordering::Relaxed), 3);
    }
}
