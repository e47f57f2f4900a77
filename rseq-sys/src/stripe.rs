//! Fallback stripes: where a thread without a CPU works.
//!
//! A structure whose per-CPU operation reports [`Outcome::NoCpu`](crate::Outcome::NoCpu)
//! (no rseq, or a thread between registrations) must not touch a per-CPU slot (DESIGN.md
//! invariant 1), so it keeps separate fallback storage. One shared copy of that storage
//! would make every thread without rseq fight for one cache line or lock; instead the
//! structure keeps [`count`] *stripes* (one per CPU, rounded up to a power of two) and each
//! thread uses [`current`]: dealt round-robin on the thread's first use and kept, so threads
//! spread over the stripes and one thread's work stays on one line (the fast-counter /
//! contatori design). Consumers that must see everything (sums, pops, drains) look at every
//! stripe.

/// How many stripes a structure with `cpus` per-CPU slots keeps: one per CPU (rounded up to
/// a power of two so picking one is a mask), at least 1, at most 64.
pub fn count(cpus: usize) -> usize {
    cpus.clamp(1, 64).next_power_of_two()
}

/// This thread's stripe among `stripes` (a power of two, as [`count`] returns). During
/// thread teardown, once the thread's ticket is gone, stripe 0: as correct as any.
#[inline]
pub fn current(stripes: usize) -> usize {
    debug_assert!(stripes.is_power_of_two());
    thread_ticket() & (stripes - 1)
}

#[cfg(not(loom))]
fn thread_ticket() -> usize {
    use core::cell::Cell;
    use core::sync::atomic::{AtomicUsize, Ordering};

    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const UNSET: usize = usize::MAX;
    std::thread_local! {
        static TICKET: Cell<usize> = const { Cell::new(UNSET) };
    }
    // During thread teardown the thread-local may be gone: stripe 0 is as correct as any.
    TICKET
        .try_with(|ticket| {
            let mut value = ticket.get();
            if value == UNSET {
                value = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
                ticket.set(value);
            }
            value
        })
        .unwrap_or(0)
}

/// Under loom the ticket must be the same in every explored execution (a process-wide
/// counter would not be, nor is loom's `ThreadId` hash, which includes the execution), so
/// it is the thread's number within the execution (what its `Debug` prints), hashed with
/// fixed keys.
#[cfg(loom)]
fn thread_ticket() -> usize {
    use core::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", loom::thread::current().id()).hash(&mut hasher);
    hasher.finish() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_powers_of_two_within_bounds() {
        assert_eq!(count(0), 1);
        assert_eq!(count(1), 1);
        assert_eq!(count(2), 2);
        assert_eq!(count(3), 4);
        assert_eq!(count(1000), 64);
    }

    #[cfg(not(loom))]
    #[test]
    fn a_thread_keeps_its_stripe_and_threads_spread() {
        let mine = current(64);
        assert_eq!(current(64), mine);
        let others: std::collections::HashSet<usize> = (0..8)
            .map(|_| std::thread::spawn(|| current(64)).join().unwrap())
            .collect();
        // Tickets are dealt round-robin, so eight new threads do not all share one stripe.
        assert!(others.len() > 1);
    }
}
