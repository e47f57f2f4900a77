//! Shared helpers for the criterion suites in `benches/benches/`.
//!
//! The report binary (the README's main job) will live here too; until then this crate holds
//! what every suite needs to measure under contention the same way.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Thread counts every contended benchmark uses: below, at and above this machine's 2 cores.
pub const THREAD_COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Run `op` `iters` times on each of `threads` threads, all released together, and return
/// the wall time of the slowest thread divided by `threads`: criterion then reports the cost
/// of one operation of the *aggregate* throughput (wall time per operation across all
/// threads), the figure that shows whether a structure scales.
///
/// `make` builds each thread's state once before the clock starts (for example a handle).
pub fn contended<S, M, F>(threads: usize, iters: u64, make: M, op: F) -> Duration
where
    M: Fn(usize) -> S + Sync,
    F: Fn(&mut S) + Sync,
{
    let barrier = Barrier::new(threads);
    let elapsed = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, make, op) = (&barrier, &make, &op);
                scope.spawn(move || {
                    let mut state = make(t);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op(&mut state);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    });
    elapsed / threads as u32
}

/// The hand-written C rseq add (`c/rseq_add.c`), built by this package's build script on
/// x86_64 Linux: the reference the rseq and counter suites measure against.
#[cfg(c_reference)]
pub mod c_reference {
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
