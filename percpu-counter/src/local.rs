//! [`LocalCounter`]: a [`PerCpuCounter`]'s add path resolved once for the calling thread.

use crate::counter::PerCpuCounter;
use rseq_sys::sync::atomic::AtomicU64;
use rseq_sys::{Outcome, PinnedRseq, SlotArray};

/// A [`PerCpuCounter`] handle for one thread's hot loop: the thread's rseq section and the
/// counter's slot array are looked up once, in [`PerCpuCounter::local`], instead of on every
/// increment.
///
/// Why it is faster than [`PerCpuCounter::add`] in a tight loop: the handle holds only plain
/// values, so the compiler keeps them in registers across the critical section (whose
/// inline assembly it must assume may write any memory a shared counter lives in). Each
/// increment is then the section alone, as in hand-written C. Not `Send`: the section it
/// holds is this thread's.
///
/// The handle adds to the same slots as the counter, so [`sum`](PerCpuCounter::sum) and
/// [`take`](PerCpuCounter::take) see its increments exactly as the counter's own. When the
/// thread has no CPU (no rseq, a momentary negative `cpu_id`, or a registration that ended
/// while the handle lived), an increment takes the counter's ordinary path and its fallback.
///
/// ```
/// use percpu_counter::PerCpuCounter;
///
/// static PACKETS: PerCpuCounter = PerCpuCounter::new();
///
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| {
///             let packets = PACKETS.local();
///             for _ in 0..10_000 {
///                 packets.inc();
///             }
///         });
///     }
/// });
/// assert_eq!(PACKETS.sum(), 20_000);
/// ```
#[derive(Clone, Copy)]
pub struct LocalCounter<'a> {
    counter: &'a PerCpuCounter,
    /// `None` when the thread had no rseq section when the handle was made.
    section: Option<(PinnedRseq, SlotArray<'a, AtomicU64>)>,
}

impl<'a> LocalCounter<'a> {
    pub(crate) fn new(
        counter: &'a PerCpuCounter,
        section: Option<(PinnedRseq, SlotArray<'a, AtomicU64>)>,
    ) -> Self {
        LocalCounter { counter, section }
    }

    /// Add `value` (wrapping).
    #[inline(always)]
    pub fn add(&self, value: i64) {
        if let Some((pinned, slots)) = self.section {
            loop {
                match pinned.add(slots, value as u64) {
                    Outcome::Completed { .. } => return,
                    Outcome::Aborted => continue,
                    Outcome::NoCpu => break,
                }
            }
        }
        std::hint::cold_path();
        add_without_cpu(self.counter, value);
    }

    /// Add one.
    #[inline(always)]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtract `value` (wrapping).
    #[inline(always)]
    pub fn sub(&self, value: i64) {
        self.add(value.wrapping_neg());
    }

    /// The counter this handle adds to.
    pub fn counter(&self) -> &'a PerCpuCounter {
        self.counter
    }
}

/// The counter's ordinary path. A free function taking the counter, not `&self`: a handle
/// whose address never escapes can live in registers across the critical section.
#[cold]
#[inline(never)]
fn add_without_cpu(counter: &PerCpuCounter, value: i64) {
    counter.add(value);
}

impl core::fmt::Debug for LocalCounter<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalCounter")
            .field("counter", self.counter)
            .field("has_cpu_section", &self.section.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rseq_sys::{Backend, Rseq};

    #[test]
    fn handle_increments_land_in_the_counter() {
        let counter = PerCpuCounter::new();
        let threads = if cfg!(miri) { 2 } else { 4 };
        let rounds = if cfg!(miri) { 20 } else { 10_000 };
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let handle = counter.local();
                    for _ in 0..rounds {
                        handle.add(3);
                        handle.sub(1);
                        handle.inc();
                        counter.inc();
                    }
                });
            }
        });
        assert_eq!(counter.sum(), threads * rounds * 4);
        assert_eq!(counter.take(), threads * rounds * 4);
        assert_eq!(counter.sum(), 0);
    }

    #[test]
    fn a_handle_has_a_section_exactly_when_the_thread_has_a_cpu() {
        let counter = PerCpuCounter::new();
        let handle = counter.local();
        // True with rseq (glibc's or our own registration), false with PERCPU_NO_RSEQ=1,
        // under Miri and on other systems: then increments take the counter's fallback.
        assert_eq!(
            handle.section.is_some(),
            Rseq::CPU_ID.current_cpu().is_some()
        );
        handle.add(-7);
        assert_eq!(counter.sum(), -7);
        assert!(std::ptr::eq(handle.counter(), &counter));
    }
}
