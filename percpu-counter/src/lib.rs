//! Per-CPU statistics counters on Linux restartable sequences (rseq).
//!
//! Hot statistics counters are incremented from many threads and read rarely. An
//! `AtomicU64::fetch_add` makes every increment fight for one cache line; sharded or
//! thread-local counters waste memory per thread or read inexactly. Here every counter has
//! one 8-byte slot per CPU: an increment is a restartable-sequence add to the current CPU's
//! slot (no locked instruction, no line shared with another CPU), and a read adds the slots
//! up exactly.
//!
//! - [`PerCpuCounter`]: one counter; `const` constructor, so it can be a `static`.
//!   [`PerCpuCounter::local`] gives a thread a [`LocalCounter`] handle for hot loops.
//! - [`CounterSet`]: `N` counters of one subsystem (hits, misses, bytes) packed per CPU,
//!   updated independently and snapshotted together.
//! - [`PerCpuArena`]: many counters at `CPUs x 8` bytes each (each CPU's copies packed
//!   together, one row per CPU), handed out as [`ArenaCounter`]s.
//! - Feature `metrics`: `metrics::CounterFn` for [`PerCpuCounter`] and [`ArenaCounter`].
//!
//! Everything is generic over the [`rseq_sys::Backend`], so tests run the same code on
//! [`rseq_sys::Simulated`] with injected CPU ids and aborts (under loom and Miri too).
//!
//! # Invariant
//!
//! A per-CPU slot is written only by a committed rseq add on its CPU (DESIGN.md invariant 1).
//! Increments without a CPU go to separate *stripe* rows with `fetch_add`, never to per-CPU
//! slots, so a non-locked per-CPU add can never race a locked fallback add on one word.
//! Readers load slots and stripes with atomic loads. Nothing else ever writes a slot: `take`
//! and `reset` subtract through the same add path instead of storing zero remotely.
//!
//! # Example
//!
//! ```
//! use percpu_counter::{CounterSet, PerCpuArena, PerCpuCounter};
//!
//! static BYTES_SENT: PerCpuCounter = PerCpuCounter::new();
//!
//! std::thread::scope(|s| {
//!     for _ in 0..4 {
//!         s.spawn(|| {
//!             for _ in 0..1000 {
//!                 BYTES_SENT.add(1500);
//!             }
//!         });
//!     }
//! });
//! assert_eq!(BYTES_SENT.sum(), 4 * 1000 * 1500);
//!
//! // Read and reset for a periodic export: nothing added concurrently is lost.
//! let exported = BYTES_SENT.take();
//! assert_eq!(exported, 6_000_000);
//! assert_eq!(BYTES_SENT.sum(), 0);
//!
//! let stats: CounterSet<2> = CounterSet::new();
//! stats.inc(0);
//! stats.sub(1, 3);
//! assert_eq!(stats.snapshot(), [1, -3]);
//!
//! let arena = PerCpuArena::new();
//! let per_user: Vec<_> = (0..100).map(|_| arena.counter()).collect();
//! per_user[42].inc();
//! assert_eq!(per_user[42].sum(), 1);
//! ```
//!
//! # Reading and resetting
//!
//! A sum includes every increment that happened before it started; one racing with it may
//! or may not be included. `take` reads the sum `v` and adds `-v` through the ordinary add
//! path, then returns `v`: racing increments are either in `v` or stay in the counter, so the
//! amounts taken plus what remains always equal everything added. Takes on one counter (or
//! set, or arena chunk) are serialised by a flag; increments never wait. This needs no remote
//! write and no membarrier fence. Per-CPU baselines would also be exact, but cost a second
//! word per CPU per counter and make every read pair a slot with its baseline; a fence-based
//! remote zeroing would cost a system call per CPU on every reset.
//!
//! # Without rseq
//!
//! When rseq is unavailable (old kernels, seccomp, valgrind, `PERCPU_NO_RSEQ=1`, other
//! systems and architectures, Miri, loom) or a thread momentarily has no CPU id, the add
//! reports "no CPU" and the increment goes to the fallback: a few cache-line-separated stripe
//! rows (one per CPU, rounded up to a power of two), each thread dealt one stripe
//! round-robin, updated with `fetch_add`. Sums and takes read both kinds of row, so results
//! stay exact; the fallback scales like a striped counter. Stripes are allocated only when a
//! thread first falls back, and per-CPU rows only when one first has a CPU.

mod arena;
mod bank;
mod counter;
mod local;
#[cfg(feature = "metrics")]
mod metrics;
mod rows;
mod set;

pub use arena::{ArenaCounter, PerCpuArena};
pub use counter::PerCpuCounter;
pub use local::LocalCounter;
pub use set::CounterSet;
