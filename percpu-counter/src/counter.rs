//! [`PerCpuCounter`]: one statistics counter, per CPU.

use crate::bank::Bank;
use crate::local::LocalCounter;
use rseq_sys::{Backend, Rseq};

/// One counter with a slot per CPU: increments are an rseq add to the current CPU's slot (no
/// locked instruction, no shared cache line), reads add up every slot.
///
/// Values are signed and wrap: [`add`](Self::add) and [`sub`](Self::sub) take `i64`,
/// [`sum`](Self::sum) reads the total as `i64` and [`sum_u64`](Self::sum_u64) as `u64` (the
/// same bits). The slots are allocated on the first increment (published with one CAS), so
/// [`PerCpuCounter::new`] is `const` and a counter can be a `static`:
///
/// ```
/// use percpu_counter::PerCpuCounter;
///
/// static REQUESTS: PerCpuCounter = PerCpuCounter::new();
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| REQUESTS.inc()));
///     }
/// });
/// assert_eq!(REQUESTS.sum(), 4000);
/// assert_eq!(REQUESTS.take(), 4000);
/// assert_eq!(REQUESTS.sum(), 0);
/// ```
///
/// # Reading and resetting
///
/// - [`sum`](Self::sum) includes every increment that happened before the call; one racing
///   with it may or may not be included. With no concurrent writers it is exact.
/// - [`take`](Self::take) returns the value it removed: it reads the sum `v` and adds `-v`
///   through the ordinary increment path. Increments racing with it are never lost: each
///   is either part of `v` (returned) or left in the counter. So the returned amounts of all
///   takes plus the final sum always equal everything ever added. Takes on one counter are
///   serialised by a flag (they are rare); increments never wait for it.
/// - [`reset`](Self::reset) is a `take` that discards the amount.
pub struct PerCpuCounter<B: Backend = Rseq> {
    bank: Bank<B>,
}

/// The column a lone counter uses in its bank.
const COLUMN: usize = 0;

impl PerCpuCounter {
    /// A zero counter on real rseq (indexed by CPU id). `const`: usable in a `static`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        PerCpuCounter {
            bank: Bank::new(Rseq::CPU_ID, 1),
        }
    }

    /// A zero counter on real rseq (indexed by CPU id).
    #[cfg(loom)]
    pub fn new() -> Self {
        PerCpuCounter::with_backend(Rseq::CPU_ID)
    }
}

impl PerCpuCounter {
    /// A handle that adds to this counter from the calling thread with the thread's section
    /// and the slots looked up once: the fastest way to increment in a hot loop. See
    /// [`LocalCounter`].
    pub fn local(&self) -> LocalCounter<'_> {
        let section = self
            .bank
            .backend()
            .pin()
            .and_then(|pinned| Some((pinned, self.bank.cpu_slots(COLUMN)?)));
        LocalCounter::new(self, section)
    }
}

impl Default for PerCpuCounter {
    fn default() -> Self {
        PerCpuCounter::new()
    }
}

impl<B: Backend> PerCpuCounter<B> {
    /// A zero counter on `backend` (for example [`rseq_sys::Simulated`] in tests, or
    /// [`Rseq::CONCURRENCY_ID`]).
    pub fn with_backend(backend: B) -> Self {
        PerCpuCounter {
            bank: Bank::new(backend, 1),
        }
    }

    /// Add `value` (wrapping).
    #[inline(always)]
    pub fn add(&self, value: i64) {
        self.bank.add(COLUMN, value as u64);
    }

    /// Add one.
    #[inline(always)]
    pub fn inc(&self) {
        self.bank.add(COLUMN, 1);
    }

    /// Subtract `value` (wrapping).
    #[inline(always)]
    pub fn sub(&self, value: i64) {
        self.bank.add(COLUMN, value.wrapping_neg() as u64);
    }

    /// The total as a signed number (see the type's docs for what a racing read sees).
    pub fn sum(&self) -> i64 {
        self.bank.sum(COLUMN) as i64
    }

    /// The total as an unsigned number (the same bits as [`sum`](Self::sum)).
    pub fn sum_u64(&self) -> u64 {
        self.bank.sum(COLUMN)
    }

    /// Remove the current value and return it; racing increments stay in the counter.
    pub fn take(&self) -> i64 {
        self.bank.take(COLUMN) as i64
    }

    /// Set the counter back to zero, except for increments racing with the reset.
    pub fn reset(&self) {
        self.bank.take(COLUMN);
    }

    /// Raise the counter to at least `value` (read as unsigned): what metrics-rs calls
    /// `absolute`. Exclusive with [`take`](Self::take) and other raises.
    pub fn raise_to(&self, value: u64) {
        self.bank.raise_to(COLUMN, value);
    }

    /// Heap bytes the counter has allocated so far (per-CPU rows, and fallback stripes if
    /// any thread ran without a CPU).
    pub fn heap_bytes(&self) -> usize {
        self.bank.heap_bytes()
    }

    /// The backend this counter runs on.
    pub fn backend(&self) -> &B {
        self.bank.backend()
    }
}

impl<B: Backend> core::fmt::Debug for PerCpuCounter<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuCounter")
            .field("sum", &self.sum())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rseq_sys::simulation::{abort_next, set_cpu};
    use rseq_sys::Simulated;

    #[test]
    fn signed_values_wrap_through_unsigned_slots() {
        let counter = PerCpuCounter::with_backend(Simulated::new(2));
        set_cpu(Some(1));
        counter.sub(5);
        set_cpu(Some(0));
        counter.add(2);
        assert_eq!(counter.sum(), -3);
        assert_eq!(counter.sum_u64(), (-3i64) as u64);
        set_cpu(None);
    }

    #[test]
    fn aborted_adds_are_retried_once_each() {
        let counter = PerCpuCounter::with_backend(Simulated::new(2));
        set_cpu(Some(0));
        abort_next(3);
        counter.add(7);
        assert_eq!(counter.sum(), 7);
        set_cpu(None);
    }

    #[test]
    fn no_cpu_goes_to_stripes_and_cpu_rows_stay_unallocated() {
        let counter = PerCpuCounter::with_backend(Simulated::new(2));
        set_cpu(None);
        counter.add(4);
        assert_eq!(counter.sum(), 4);
        // Only stripe rows exist: 2 stripes of 2 lines.
        assert_eq!(counter.heap_bytes(), 2 * 2 * 64);
        set_cpu(Some(1));
        counter.inc();
        assert_eq!(counter.sum(), 5);
        assert_eq!(counter.heap_bytes(), 2 * (2 * 2 * 64));
        set_cpu(None);
    }

    #[test]
    fn take_moves_the_value_out_once() {
        let counter = PerCpuCounter::with_backend(Simulated::new(3));
        for cpu in [Some(0), Some(2), None] {
            set_cpu(cpu);
            counter.add(10);
        }
        set_cpu(Some(1));
        assert_eq!(counter.take(), 30);
        assert_eq!(counter.sum(), 0);
        assert_eq!(counter.take(), 0);
        counter.add(1);
        counter.reset();
        assert_eq!(counter.sum(), 0);
        set_cpu(None);
    }

    #[test]
    fn raise_to_only_raises() {
        let counter = PerCpuCounter::with_backend(Simulated::new(1));
        set_cpu(Some(0));
        counter.add(10);
        counter.raise_to(4);
        assert_eq!(counter.sum(), 10);
        counter.raise_to(25);
        assert_eq!(counter.sum(), 25);
        set_cpu(None);
    }

    #[test]
    fn a_static_counter_works_on_the_real_backend() {
        static COUNTER: PerCpuCounter = PerCpuCounter::new();
        let threads = if cfg!(miri) { 2 } else { 4 };
        let per_thread = if cfg!(miri) { 50 } else { 10_000 };
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| (0..per_thread).for_each(|_| COUNTER.inc()));
            }
        });
        assert_eq!(COUNTER.sum(), threads * per_thread);
    }
}
