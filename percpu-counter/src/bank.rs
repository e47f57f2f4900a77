//! The algorithm every counter type shares: a bank of counters (columns), each with one word
//! per CPU and one word per fallback stripe.
//!
//! - **add**: an rseq add to the current CPU's word (retried when aborted). With no CPU, a
//!   `fetch_add` on this thread's stripe word. The two kinds of storage are separate rows, so
//!   a non-locked rseq add never races a locked fallback add on one word (DESIGN.md
//!   invariant 1).
//! - **sum**: relaxed loads of every CPU word and every stripe word, added with wrapping.
//! - **take**: under the bank's exclusive flag, read the sum `v`, then add `-v` through the
//!   ordinary add path. The total drops by exactly what was read: an increment that raced
//!   with the reads either was counted in `v` (and is removed) or was not (and stays). No
//!   remote write to another CPU's word is ever needed, so no fence either.
//!
//! Both row blocks are allocated on first need: the per-CPU rows on the first add that finds
//! a CPU, the stripes on the first add that does not. A process without rseq never allocates
//! per-CPU rows; one with rseq never allocates stripes unless a thread runs without a CPU.

use crate::rows::{LazyRows, WORDS_PER_LINE};
use rseq_sys::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rseq_sys::{Backend, Outcome, SlotArray};

/// Rows are at least this many lines apart: adjacent-line prefetchers fetch 128-byte pairs,
/// so two CPUs' rows in one pair would still contend.
const MIN_LINES_PER_ROW: usize = 2;

pub(crate) struct Bank<B: Backend> {
    backend: B,
    cpus: LazyRows,
    stripes: LazyRows,
    /// Held by `take` and `absolute`: two takers that both read `v` and both subtracted it
    /// would drive the counter to `-v`.
    exclusive: AtomicBool,
}

const fn lines_for(columns: usize) -> usize {
    let lines = columns.div_ceil(WORDS_PER_LINE);
    if lines < MIN_LINES_PER_ROW {
        MIN_LINES_PER_ROW
    } else {
        lines
    }
}

impl<B: Backend> Bank<B> {
    /// A bank with room for at least `columns` counters, all zero, nothing allocated yet.
    #[cfg(not(loom))]
    pub(crate) const fn new(backend: B, columns: usize) -> Self {
        Bank {
            backend,
            cpus: LazyRows::new(lines_for(columns)),
            stripes: LazyRows::new(lines_for(columns)),
            exclusive: AtomicBool::new(false),
        }
    }

    /// A bank with room for at least `columns` counters, all zero, nothing allocated yet.
    #[cfg(loom)]
    pub(crate) fn new(backend: B, columns: usize) -> Self {
        Bank {
            backend,
            cpus: LazyRows::new(lines_for(columns)),
            stripes: LazyRows::new(lines_for(columns)),
            exclusive: AtomicBool::new(false),
        }
    }

    /// How many counters the bank holds.
    pub(crate) fn columns(&self) -> usize {
        self.cpus.columns()
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// `counter[column] += value` (wrapping).
    ///
    /// # Panics
    /// If `column >= self.columns()`.
    #[inline(always)]
    pub(crate) fn add(&self, column: usize, value: u64) {
        if let Some(cpus) = self.cpus.get() {
            let slots = cpus.slots(column);
            loop {
                match self.backend.add(slots, value) {
                    Outcome::Completed { .. } => return,
                    Outcome::Aborted => continue,
                    Outcome::NoCpu => break,
                }
            }
        }
        self.add_slow(column, value);
    }

    /// Counter `column`'s per-CPU slots, allocating the rows if this is the first use with a
    /// CPU; `None` when the calling thread has no CPU now (then nothing is allocated).
    ///
    /// # Panics
    /// If `column >= self.columns()`.
    pub(crate) fn cpu_slots(&self, column: usize) -> Option<SlotArray<'_, AtomicU64>> {
        let rows = match self.cpus.get() {
            Some(rows) => rows,
            None => {
                self.backend.current_cpu()?;
                self.cpus.get_or_init(|| self.backend.slot_count())
            }
        };
        Some(rows.slots(column))
    }

    /// First add with a CPU (allocate the per-CPU rows), or an add with none (the stripes).
    #[cold]
    #[inline(never)]
    fn add_slow(&self, column: usize, value: u64) {
        if self.cpus.get().is_none() && self.backend.current_cpu().is_some() {
            let cpus = self.cpus.get_or_init(|| self.backend.slot_count());
            let slots = cpus.slots(column);
            loop {
                match self.backend.add(slots, value) {
                    Outcome::Completed { .. } => return,
                    Outcome::Aborted => continue,
                    Outcome::NoCpu => break,
                }
            }
        }
        let stripes = self
            .stripes
            .get_or_init(|| rseq_sys::stripe::count(self.backend.slot_count()));
        stripes
            .word(rseq_sys::stripe::current(stripes.rows()), column)
            .fetch_add(value, Ordering::Relaxed);
    }

    /// The wrapping sum of counter `column`: every increment that happened before the call
    /// is in it; one racing with it may or may not be.
    ///
    /// # Panics
    /// If `column >= self.columns()`.
    pub(crate) fn sum(&self, column: usize) -> u64 {
        assert!(column < self.columns(), "counter index out of range");
        let cpus = self.cpus.get().map_or(0, |rows| rows.sum(column));
        let stripes = self.stripes.get().map_or(0, |rows| rows.sum(column));
        cpus.wrapping_add(stripes)
    }

    /// Sums of counters `first..first + out.len()`, in one pass over each row.
    ///
    /// # Panics
    /// If the range passes `self.columns()`.
    pub(crate) fn sum_range(&self, first: usize, out: &mut [u64]) {
        assert!(
            first
                .checked_add(out.len())
                .is_some_and(|end| end <= self.columns()),
            "counter range out of range"
        );
        out.fill(0);
        if let Some(rows) = self.cpus.get() {
            rows.sum_into(first, out);
        }
        if let Some(rows) = self.stripes.get() {
            rows.sum_into(first, out);
        }
    }

    /// Remove and return counter `column`'s current value (see the module docs).
    pub(crate) fn take(&self, column: usize) -> u64 {
        let _exclusive = self.lock();
        let taken = self.sum(column);
        if taken != 0 {
            self.add(column, taken.wrapping_neg());
        }
        taken
    }

    /// [`Bank::take`] for counters `first..first + out.len()` at once.
    pub(crate) fn take_range(&self, first: usize, out: &mut [u64]) {
        let _exclusive = self.lock();
        self.sum_range(first, out);
        for (k, &taken) in out.iter().enumerate() {
            if taken != 0 {
                self.add(first + k, taken.wrapping_neg());
            }
        }
    }

    /// Raise counter `column` to at least `value` (as unsigned): if its sum is below, add the
    /// difference. Exclusive with takes and other raises, so two raises never both add.
    pub(crate) fn raise_to(&self, column: usize, value: u64) {
        let _exclusive = self.lock();
        let now = self.sum(column);
        if now < value {
            self.add(column, value - now);
        }
    }

    /// Heap bytes this bank's rows occupy now.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.cpus.bytes() + self.stripes.bytes()
    }

    fn lock(&self) -> Exclusive<'_> {
        while self
            .exclusive
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            rseq_sys::sync::spin_wait();
        }
        Exclusive(&self.exclusive)
    }
}

impl<B: Backend> core::fmt::Debug for Bank<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bank")
            .field("backend", &self.backend)
            .field("columns", &self.columns())
            .field("per_cpu_rows", &self.cpus.get().map(|rows| rows.rows()))
            .field("stripes", &self.stripes.get().map(|rows| rows.rows()))
            .finish()
    }
}

struct Exclusive<'a>(&'a AtomicBool);

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
