//! The queue and pool shapes percpu-queue is measured in, written once for the criterion
//! suite and the report: [`PushPop`] over the per-CPU structures and their peers, and the
//! pooled object both pool benchmarks hand out.

use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu_queue::{FreeList, Node, PerCpuBuffer};
use std::sync::Mutex;

/// A structure items go into and come back out of, in any order: what one push+pop pair
/// costs is the figure the queue benchmarks compare.
pub trait PushPop: Sync {
    /// What moves through the structure (a heap allocation in every design here, so each
    /// moves a pointer).
    type Item: Send;
    /// A fresh item, for a thread that has none to push.
    fn new_item(seed: u64) -> Self::Item;
    /// Hand `item` to the structure.
    fn push(&self, item: Self::Item);
    /// Take some item back, if one can be found.
    fn pop(&self) -> Option<Self::Item>;
}

/// One benchmark iteration: push the item `held` and pop one back into `held`. A pop that
/// finds nothing (an item in transit between CPUs) leaves `held` empty, and the next
/// iteration allocates a replacement so it still pushes.
///
/// No `black_box` on `held`: every push and pop has effects the compiler must keep (atomics,
/// locks, rseq sections), and taking `held`'s address would pin it to the stack, adding a
/// store and a reload around every operation (about 4.5 ns per pair here) that a caller
/// holding the item in a register does not pay.
#[inline(always)]
pub fn push_then_pop<Q: PushPop>(queue: &Q, held: &mut Option<Q::Item>) {
    let item = held.take().unwrap_or_else(|| Q::new_item(0));
    queue.push(item);
    *held = queue.pop();
}

impl PushPop for FreeList<u64> {
    type Item = Box<Node<u64>>;
    fn new_item(seed: u64) -> Self::Item {
        Box::new(Node::new(seed))
    }
    #[inline(always)]
    fn push(&self, item: Self::Item) {
        FreeList::push(self, item);
    }
    #[inline(always)]
    fn pop(&self) -> Option<Self::Item> {
        FreeList::pop(self)
    }
}

impl PushPop for PerCpuBuffer<u64> {
    type Item = Box<u64>;
    fn new_item(seed: u64) -> Self::Item {
        Box::new(seed)
    }
    #[inline(always)]
    fn push(&self, item: Self::Item) {
        // The benchmarks hold at most one item per thread, fewer than a CPU's capacity, so a
        // full stack does not happen; if it did, the handed-back item is simply freed.
        let _ = PerCpuBuffer::push(self, item);
    }
    #[inline(always)]
    fn pop(&self) -> Option<Self::Item> {
        PerCpuBuffer::pop(self)
    }
}

impl PushPop for ArrayQueue<Box<u64>> {
    type Item = Box<u64>;
    fn new_item(seed: u64) -> Self::Item {
        Box::new(seed)
    }
    #[inline(always)]
    fn push(&self, item: Self::Item) {
        ArrayQueue::push(self, item).expect("the queue has room for every thread's item");
    }
    #[inline(always)]
    fn pop(&self) -> Option<Self::Item> {
        ArrayQueue::pop(self)
    }
}

impl PushPop for SegQueue<Box<u64>> {
    type Item = Box<u64>;
    fn new_item(seed: u64) -> Self::Item {
        Box::new(seed)
    }
    #[inline(always)]
    fn push(&self, item: Self::Item) {
        SegQueue::push(self, item);
    }
    #[inline(always)]
    fn pop(&self) -> Option<Self::Item> {
        SegQueue::pop(self)
    }
}

impl PushPop for Mutex<Vec<Box<u64>>> {
    type Item = Box<u64>;
    fn new_item(seed: u64) -> Self::Item {
        Box::new(seed)
    }
    #[inline(always)]
    fn push(&self, item: Self::Item) {
        self.lock().expect("no benchmark thread panics").push(item);
    }
    #[inline(always)]
    fn pop(&self) -> Option<Self::Item> {
        self.lock().expect("no benchmark thread panics").pop()
    }
}

/// How many idle objects each pool keeps.
pub const POOL_SIZE: usize = 64;

/// The object every pool benchmark hands out: a buffer worth reusing.
pub fn pooled_object() -> Vec<u8> {
    Vec::with_capacity(256)
}

/// Makes [`pooled_object`]s for an `opool::Pool`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpoolAllocator;

impl opool::PoolAllocator<Vec<u8>> for OpoolAllocator {
    fn allocate(&self) -> Vec<u8> {
        pooled_object()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four threads each start with one numbered item and push and pop it 1000 times;
    /// afterwards every numbered item is found exactly once (held or still queued): the
    /// adapter really moves items through the structure and loses or duplicates none.
    fn items_survive_exactly_once<Q: PushPop>(queue: &Q, number: impl Fn(&Q::Item) -> u64) {
        let held: Vec<Option<Q::Item>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=4u64)
                .map(|n| {
                    s.spawn(move || {
                        let mut held = Some(Q::new_item(n));
                        (0..1000).for_each(|_| push_then_pop(queue, &mut held));
                        held
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut numbers: Vec<u64> = held.iter().flatten().map(&number).collect();
        while let Some(item) = queue.pop() {
            numbers.push(number(&item));
        }
        // Replacements for a pop that missed an item in transit are numbered 0.
        numbers.retain(|&n| n != 0);
        numbers.sort_unstable();
        assert_eq!(numbers, [1, 2, 3, 4]);
    }

    #[test]
    fn every_design_returns_what_it_was_given() {
        items_survive_exactly_once(&FreeList::<u64>::new(), |node| ***node);
        items_survive_exactly_once(&PerCpuBuffer::<u64>::with_capacity(64), |b| **b);
        items_survive_exactly_once(&ArrayQueue::<Box<u64>>::new(8), |b| **b);
        items_survive_exactly_once(&SegQueue::<Box<u64>>::new(), |b| **b);
        items_survive_exactly_once(&Mutex::new(Vec::<Box<u64>>::new()), |b| **b);
    }
}
