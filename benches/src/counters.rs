//! The statistics-counter designs `PerCpuCounter` is measured against, behind one trait so
//! the criterion suite and the report drive them the same way.

use crossbeam_utils::CachePadded;
use percpu_counter::PerCpuCounter;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use thread_local::ThreadLocal;

/// A counter design under test: add from any thread, read exactly.
pub trait StatCounter: Sync {
    /// Add `value` (wrapping).
    fn add(&self, value: u64);
    /// Everything added so far (wrapping).
    fn sum(&self) -> u64;
}

impl StatCounter for PerCpuCounter {
    #[inline(always)]
    fn add(&self, value: u64) {
        PerCpuCounter::add(self, value as i64);
    }
    fn sum(&self) -> u64 {
        self.sum_u64()
    }
}

/// One shared `AtomicU64` added to with `fetch_add`, on its own cache line so only the
/// threads themselves contend for it.
#[derive(Debug, Default)]
pub struct AtomicCounter(CachePadded<AtomicU64>);

impl AtomicCounter {
    /// A zero counter.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StatCounter for AtomicCounter {
    #[inline(always)]
    fn add(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn sum(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The fast-counter / contatori design: cache-padded atomic stripes, each thread dealt one
/// (round-robin on first use, kept in a thread-local) and adding to it with `fetch_add`.
#[derive(Debug)]
pub struct StripedCounter {
    stripes: Box<[CachePadded<AtomicU64>]>,
}

impl Default for StripedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl StripedCounter {
    /// A zero counter with as many stripes as these libraries use: a few per hardware
    /// thread, a power of two.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = (4 * cpus).next_power_of_two();
        StripedCounter {
            stripes: (0..count)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    #[inline(always)]
    fn stripe(&self) -> &AtomicU64 {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static TICKET: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let ticket = TICKET.with(|ticket| {
            if ticket.get() == usize::MAX {
                ticket.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            ticket.get()
        });
        &self.stripes[ticket & (self.stripes.len() - 1)]
    }
}

impl StatCounter for StripedCounter {
    #[inline(always)]
    fn add(&self, value: u64) {
        self.stripe().fetch_add(value, Ordering::Relaxed);
    }
    fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0, |sum, s| sum.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

/// A `thread_local`-crate accumulator: one word per thread, written only by its thread
/// (plain load + store, no locked instruction), read by iterating every thread's word.
#[derive(Debug, Default)]
pub struct ThreadLocalCounter(ThreadLocal<AtomicU64>);

impl ThreadLocalCounter {
    /// A zero counter.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StatCounter for ThreadLocalCounter {
    #[inline(always)]
    fn add(&self, value: u64) {
        let mine = self.0.get_or_default();
        mine.store(
            mine.load(Ordering::Relaxed).wrapping_add(value),
            Ordering::Relaxed,
        );
    }
    fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |sum, s| sum.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts_every_add_from_threads(counter: &dyn StatCounter) {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| counter.add(3)));
            }
        });
        assert_eq!(counter.sum(), 4 * 1000 * 3);
    }

    #[test]
    fn every_design_counts_exactly() {
        counts_every_add_from_threads(&PerCpuCounter::new());
        counts_every_add_from_threads(&AtomicCounter::new());
        counts_every_add_from_threads(&StripedCounter::new());
        counts_every_add_from_threads(&ThreadLocalCounter::new());
    }
}
