//! [`CounterSet`]: one subsystem's statistics (hits, misses, bytes...) kept together per CPU.

use crate::bank::Bank;
use rseq_sys::{Backend, Rseq};

/// `N` counters that live in the same per-CPU lines: each CPU's copies of all `N` are packed
/// in its own row, so updating any of them touches only that CPU's lines, and a
/// [`snapshot`](Self::snapshot) reads all `N` in one pass per CPU.
///
/// Counters are updated independently by index (name the indices with constants or an enum).
/// A snapshot is not a single instant across counters (no reader can stop writers on other
/// CPUs): each value includes every increment that happened before the snapshot began, and
/// racing ones may or may not be in it.
///
/// ```
/// use percpu_counter::CounterSet;
///
/// const HITS: usize = 0;
/// const MISSES: usize = 1;
/// const BYTES: usize = 2;
/// static CACHE: CounterSet<3> = CounterSet::new();
///
/// CACHE.inc(HITS);
/// CACHE.inc(MISSES);
/// CACHE.add(BYTES, 4096);
/// assert_eq!(CACHE.snapshot(), [1, 1, 4096]);
/// assert_eq!(CACHE.take_all(), [1, 1, 4096]);
/// assert_eq!(CACHE.snapshot(), [0, 0, 0]);
/// ```
pub struct CounterSet<const N: usize, B: Backend = Rseq> {
    bank: Bank<B>,
}

impl<const N: usize> CounterSet<N> {
    /// `N` zero counters on real rseq. `const`: usable in a `static`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        CounterSet {
            bank: Bank::new(Rseq::CPU_ID, N),
        }
    }

    /// `N` zero counters on real rseq.
    #[cfg(loom)]
    pub fn new() -> Self {
        CounterSet::with_backend(Rseq::CPU_ID)
    }
}

impl<const N: usize> Default for CounterSet<N> {
    fn default() -> Self {
        CounterSet::new()
    }
}

impl<const N: usize, B: Backend> CounterSet<N, B> {
    /// `N` zero counters on `backend`.
    pub fn with_backend(backend: B) -> Self {
        CounterSet {
            bank: Bank::new(backend, N),
        }
    }

    /// Add `value` to counter `index` (wrapping).
    ///
    /// # Panics
    /// If `index >= N`.
    #[inline(always)]
    pub fn add(&self, index: usize, value: i64) {
        assert!(
            index < N,
            "counter index {index} out of range for a set of {N}"
        );
        self.bank.add(index, value as u64);
    }

    /// Add one to counter `index`.
    ///
    /// # Panics
    /// If `index >= N`.
    #[inline(always)]
    pub fn inc(&self, index: usize) {
        self.add(index, 1);
    }

    /// Subtract `value` from counter `index` (wrapping).
    ///
    /// # Panics
    /// If `index >= N`.
    #[inline(always)]
    pub fn sub(&self, index: usize, value: i64) {
        self.add(index, value.wrapping_neg());
    }

    /// Counter `index`'s total.
    ///
    /// # Panics
    /// If `index >= N`.
    pub fn sum(&self, index: usize) -> i64 {
        assert!(
            index < N,
            "counter index {index} out of range for a set of {N}"
        );
        self.bank.sum(index) as i64
    }

    /// Every counter's total, read in one pass over each CPU's row.
    pub fn snapshot(&self) -> [i64; N] {
        let mut sums = [0u64; N];
        self.bank.sum_range(0, &mut sums);
        sums.map(|sum| sum as i64)
    }

    /// Remove every counter's value and return what was removed (as
    /// [`PerCpuCounter::take`](crate::PerCpuCounter::take), for all `N` at once).
    pub fn take_all(&self) -> [i64; N] {
        let mut taken = [0u64; N];
        self.bank.take_range(0, &mut taken);
        taken.map(|value| value as i64)
    }

    /// Remove counter `index`'s value and return it.
    ///
    /// # Panics
    /// If `index >= N`.
    pub fn take(&self, index: usize) -> i64 {
        assert!(
            index < N,
            "counter index {index} out of range for a set of {N}"
        );
        self.bank.take(index) as i64
    }

    /// Heap bytes allocated so far.
    pub fn heap_bytes(&self) -> usize {
        self.bank.heap_bytes()
    }
}

impl<const N: usize, B: Backend> core::fmt::Debug for CounterSet<N, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CounterSet")
            .field("values", &self.snapshot())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rseq_sys::simulation::set_cpu;
    use rseq_sys::Simulated;

    #[test]
    fn counters_are_independent_and_snapshot_together() {
        let set: CounterSet<11, _> = CounterSet::with_backend(Simulated::new(2));
        set_cpu(Some(0));
        set.add(0, 5);
        set.add(10, 7);
        set_cpu(Some(1));
        set.sub(10, 2);
        set_cpu(None);
        set.inc(3);
        let mut expected = [0; 11];
        expected[0] = 5;
        expected[3] = 1;
        expected[10] = 5;
        assert_eq!(set.snapshot(), expected);
        assert_eq!(set.sum(10), 5);
        assert_eq!(set.take(0), 5);
        expected[0] = 0;
        assert_eq!(set.take_all(), expected);
        assert_eq!(set.snapshot(), [0; 11]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn an_index_past_the_set_panics() {
        let set: CounterSet<2, _> = CounterSet::with_backend(Simulated::new(1));
        set.inc(2);
    }
}
