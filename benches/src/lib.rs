//! Shared helpers for the criterion suites in `benches/benches/` and the report binary
//! (`src/main.rs`, the README's main job): the way every contended figure is timed, and the
//! competitors both measure, written once so both measure the same thing.

pub mod allocators;
pub mod counters;
pub mod queues;
pub mod report;
pub mod workloads;

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Thread counts every contended benchmark uses: below, at and above this machine's 2 cores.
pub const THREAD_COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Run `op` `ops` times on each of `threads` threads, all released together by a barrier,
/// and return the wall time from the first thread's start to the last thread's end.
///
/// Each thread reads the clock itself after the barrier, so a thread the scheduler starts
/// late (more threads than cores) neither shortens nor lengthens the span; the main thread's
/// wake-up is not in it at all. `make` builds each thread's state once before the barrier
/// (for example a handle), so it is not timed.
pub fn run_threads<S, M, F>(threads: usize, ops: u64, make: M, op: F) -> Duration
where
    M: Fn(usize) -> S + Sync,
    F: Fn(&mut S) + Sync,
{
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, make, op) = (&barrier, &make, &op);
                scope.spawn(move || {
                    let mut state = make(t);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..ops {
                        op(&mut state);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    wall_time(&spans)
}

/// The span from the earliest start to the latest end of `spans` (zero when empty).
pub fn wall_time(spans: &[(Instant, Instant)]) -> Duration {
    let first_start = spans.iter().map(|&(start, _)| start).min();
    let last_end = spans.iter().map(|&(_, end)| end).max();
    match (first_start, last_end) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    }
}

/// [`run_threads`] divided by `threads`: criterion then reports, per iteration, the cost of
/// one operation of the *aggregate* throughput (wall time per operation across all threads),
/// the figure that shows whether a structure scales.
pub fn contended<S, M, F>(threads: usize, iters: u64, make: M, op: F) -> Duration
where
    M: Fn(usize) -> S + Sync,
    F: Fn(&mut S) + Sync,
{
    run_threads(threads, iters, make, op) / threads as u32
}

/// The hand-written C rseq add (`c/rseq_add.c`), built by this package's build script on
/// x86_64 Linux: the reference the rseq and counter suites measure against.
#[cfg(c_reference)]
pub mod c_reference {
    use crossbeam_utils::CachePadded;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// What the C loop adds to: one slot per possible CPU, each on its own cache line, and
    /// the fallback counter. The one set-up the report and both criterion suites share.
    #[derive(Debug)]
    pub struct Slots {
        slots: Vec<CachePadded<AtomicU64>>,
        fallback: CachePadded<AtomicU64>,
    }

    impl Default for Slots {
        fn default() -> Self {
            Slots {
                slots: (0..rseq_sys::possible_cpus())
                    .map(|_| CachePadded::new(AtomicU64::new(0)))
                    .collect(),
                fallback: CachePadded::new(AtomicU64::new(0)),
            }
        }
    }

    impl Slots {
        /// All zero.
        pub fn new() -> Self {
            Self::default()
        }

        /// `threads` threads each make `adds` adds of 1 in one call into C (so no Rust code
        /// runs per add); the wall time, as [`crate::run_threads`] measures it.
        pub fn run(&self, threads: usize, adds: u64) -> Duration {
            crate::run_threads(
                threads,
                1,
                |_| (),
                |_| {
                    add_loop(&self.slots, adds, &self.fallback);
                },
            )
        }

        /// Every add so far, on a CPU or not.
        pub fn total(&self) -> u64 {
            self.slots
                .iter()
                .map(|slot| slot.load(Ordering::Relaxed))
                .sum::<u64>()
                .wrapping_add(self.fallback.load(Ordering::Relaxed))
        }
    }

    /// Run the C loop on the calling thread: add 1 `count` times to its CPU's slot of
    /// `slots` (one per possible CPU), or to `fallback` without a CPU. Returns how many adds
    /// fell back.
    pub fn add_loop(slots: &[CachePadded<AtomicU64>], count: u64, fallback: &AtomicU64) -> u64 {
        // SAFETY: `slots` is a live slice of cache-padded AtomicU64 slots, one
        // `size_of::<CachePadded<AtomicU64>>()` apart and borrowed for the call; the C code
        // writes a slot only in an rseq critical section on that slot's CPU (the per-CPU
        // invariant, as the Rust sections keep it) and `fallback` only with an atomic add.
        unsafe {
            percpu_c_rseq_add_loop(
                slots.as_ptr() as *mut u64,
                size_of::<CachePadded<AtomicU64>>(),
                slots.len(),
                count,
                fallback.as_ptr(),
            )
        }
    }

    extern "C" {
        /// Add 1 to this CPU's slot `count` times, with the thread's area found once before
        /// the loop; slot `c` is at `slots + c * stride` bytes for `c < len`. Adds without a
        /// CPU go to `*fallback` atomically. Returns how many fell back.
        pub fn percpu_c_rseq_add_loop(
            slots: *mut u64,
            stride: usize,
            len: usize,
            count: u64,
            fallback: *mut u64,
        ) -> u64;
    }
}

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
