//! [`PerCpuArena`]: many counters for the price of `CPUs x 8` bytes each.

use crate::bank::Bank;
use rseq_sys::{Backend, Rseq};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Counters in the first chunk; each later chunk doubles, up to [`MAX_CHUNK`].
const FIRST_CHUNK: usize = 16;
/// Counters in the largest chunk (4 KiB per CPU).
const MAX_CHUNK: usize = 512;

/// A per-CPU arena of counters: each CPU's copies of many counters are packed together, one
/// row per CPU (the Linux per-CPU allocator's and librseq mempool's layout). A counter costs
/// one 8-byte word per possible CPU, not a cache line, yet two CPUs never write one line:
/// a line holds eight counters *of the same CPU*.
///
/// Storage grows in chunks (16 counters, then doubling to 512 per chunk), so a handful of
/// counters stays small and a million costs `10^6 x CPUs x 8` bytes plus at most one partly
/// used chunk. A chunk's per-CPU rows are allocated when one of its counters is first
/// incremented on a CPU, and its fallback stripes only if a thread increments one without a
/// CPU.
///
/// [`counter`](Self::counter) hands out an [`ArenaCounter`]; dropping it returns its slot to
/// the arena, and the next counter to reuse the slot starts from zero.
///
/// ```
/// use percpu_counter::PerCpuArena;
///
/// let arena = PerCpuArena::new();
/// let per_route: Vec<_> = (0..1000).map(|_| arena.counter()).collect();
/// per_route[7].add(3);
/// per_route[999].inc();
/// assert_eq!(per_route[7].sum(), 3);
/// assert_eq!(per_route.iter().map(|c| c.sum()).sum::<i64>(), 4);
/// assert_eq!(arena.len(), 1000);
/// ```
pub struct PerCpuArena<B: Backend = Rseq> {
    shared: Arc<Shared<B>>,
}

struct Shared<B: Backend> {
    backend: B,
    state: Mutex<State<B>>,
}

struct State<B: Backend> {
    chunks: Vec<Arc<Chunk<B>>>,
    /// The next never-used column of the last chunk.
    next_column: usize,
    /// Columns returned by dropped counters.
    free: Vec<(Arc<Chunk<B>>, usize)>,
    live: usize,
}

struct Chunk<B: Backend> {
    bank: Bank<B>,
    /// Where a dropped counter returns its column (gone once the arena is dropped).
    arena: Weak<Shared<B>>,
    /// Counters this chunk hands out (its bank may round up to a whole line).
    capacity: usize,
}

/// One counter in a [`PerCpuArena`]. Not `Clone`: its slot returns to the arena when it
/// drops; share it by reference or in an `Arc`.
pub struct ArenaCounter<B: Backend = Rseq> {
    chunk: Arc<Chunk<B>>,
    column: usize,
}

impl PerCpuArena {
    /// An empty arena on real rseq (indexed by CPU id, the backend
    /// [resolved](Rseq::resolved) once).
    pub fn new() -> Self {
        PerCpuArena::with_backend(Rseq::CPU_ID.resolved())
    }
}

impl Default for PerCpuArena {
    fn default() -> Self {
        PerCpuArena::new()
    }
}

impl<B: Backend> PerCpuArena<B> {
    /// An empty arena on `backend`.
    pub fn with_backend(backend: B) -> Self {
        PerCpuArena {
            shared: Arc::new(Shared {
                backend,
                state: Mutex::new(State {
                    chunks: Vec::new(),
                    next_column: 0,
                    free: Vec::new(),
                    live: 0,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<B>> {
        // The state stays consistent at every step, so a panic elsewhere cannot poison it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new counter, zero.
    pub fn counter(&self) -> ArenaCounter<B> {
        let mut state = self.state();
        state.live += 1;
        if let Some((chunk, column)) = state.free.pop() {
            drop(state);
            // Nobody else holds this column, so taking its leftover value leaves exactly 0.
            chunk.bank.take(column);
            return ArenaCounter { chunk, column };
        }
        let needs_chunk = state
            .chunks
            .last()
            .is_none_or(|chunk| state.next_column == chunk.capacity);
        if needs_chunk {
            let capacity = (FIRST_CHUNK << state.chunks.len().min(16)).min(MAX_CHUNK);
            state.chunks.push(Arc::new(Chunk {
                bank: Bank::new(self.shared.backend.clone(), capacity),
                arena: Arc::downgrade(&self.shared),
                capacity,
            }));
            state.next_column = 0;
        }
        let column = state.next_column;
        state.next_column += 1;
        let chunk = Arc::clone(state.chunks.last().expect("a chunk was just ensured"));
        ArenaCounter { chunk, column }
    }

    /// Counters handed out and not yet dropped.
    pub fn len(&self) -> usize {
        self.state().live
    }

    /// Whether no counter is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters the arena has room for without allocating another chunk.
    pub fn capacity(&self) -> usize {
        self.state().chunks.iter().map(|chunk| chunk.capacity).sum()
    }

    /// Heap bytes the arena holds now, computed from its layout: every chunk's allocated
    /// rows, the chunk headers and the bookkeeping vectors (not the handles, which live
    /// wherever the caller keeps them).
    pub fn heap_bytes(&self) -> usize {
        let state = self.state();
        let chunks: usize = state
            .chunks
            .iter()
            .map(|chunk| chunk.bank.heap_bytes() + arc_bytes::<Chunk<B>>())
            .sum();
        chunks
            + state.chunks.capacity() * size_of::<Arc<Chunk<B>>>()
            + state.free.capacity() * size_of::<(Arc<Chunk<B>>, usize)>()
            + arc_bytes::<Shared<B>>()
    }
}

/// An `Arc<T>`'s allocation: two counts and the value.
fn arc_bytes<T>() -> usize {
    2 * size_of::<usize>() + size_of::<T>()
}

impl<B: Backend> core::fmt::Debug for PerCpuArena<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = self.state();
        f.debug_struct("PerCpuArena")
            .field("live", &state.live)
            .field("chunks", &state.chunks.len())
            .finish()
    }
}

impl<B: Backend> ArenaCounter<B> {
    /// Add `value` (wrapping).
    #[inline(always)]
    pub fn add(&self, value: i64) {
        self.chunk.bank.add(self.column, value as u64);
    }

    /// Add one.
    #[inline(always)]
    pub fn inc(&self) {
        self.chunk.bank.add(self.column, 1);
    }

    /// Subtract `value` (wrapping).
    #[inline(always)]
    pub fn sub(&self, value: i64) {
        self.chunk
            .bank
            .add(self.column, value.wrapping_neg() as u64);
    }

    /// The total (as [`PerCpuCounter::sum`](crate::PerCpuCounter::sum)).
    pub fn sum(&self) -> i64 {
        self.chunk.bank.sum(self.column) as i64
    }

    /// The total as unsigned (the same bits as [`sum`](Self::sum)).
    pub fn sum_u64(&self) -> u64 {
        self.chunk.bank.sum(self.column)
    }

    /// Remove the current value and return it (as
    /// [`PerCpuCounter::take`](crate::PerCpuCounter::take)).
    pub fn take(&self) -> i64 {
        self.chunk.bank.take(self.column) as i64
    }

    /// Set back to zero, except for increments racing with the reset.
    pub fn reset(&self) {
        self.chunk.bank.take(self.column);
    }

    /// Raise to at least `value` (as [`PerCpuCounter::raise_to`](crate::PerCpuCounter::raise_to)).
    pub fn raise_to(&self, value: u64) {
        self.chunk.bank.raise_to(self.column, value);
    }
}

impl<B: Backend> Drop for ArenaCounter<B> {
    fn drop(&mut self) {
        if let Some(shared) = self.chunk.arena.upgrade() {
            let mut state = shared
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.live -= 1;
            state.free.push((Arc::clone(&self.chunk), self.column));
        }
    }
}

impl<B: Backend> core::fmt::Debug for ArenaCounter<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ArenaCounter")
            .field("sum", &self.sum())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rseq_sys::simulation::set_cpu;
    use rseq_sys::Simulated;

    #[test]
    fn counters_are_independent_across_chunks() {
        let arena = PerCpuArena::with_backend(Simulated::new(2));
        let n = if cfg!(miri) { 40 } else { 2000 };
        let counters: Vec<_> = (0..n).map(|_| arena.counter()).collect();
        for (i, counter) in counters.iter().enumerate() {
            set_cpu(if i % 3 == 2 { None } else { Some(i % 2) });
            counter.add(i as i64);
        }
        set_cpu(None);
        for (i, counter) in counters.iter().enumerate() {
            assert_eq!(counter.sum(), i as i64);
        }
        assert_eq!(arena.len(), n);
        assert!(arena.capacity() >= n);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let arena = PerCpuArena::with_backend(Simulated::new(2));
        set_cpu(Some(1));
        let first = arena.counter();
        first.add(41);
        drop(first);
        assert_eq!(arena.len(), 0);
        set_cpu(Some(0));
        let second = arena.counter();
        assert_eq!(second.sum(), 0);
        second.inc();
        assert_eq!(second.sum(), 1);
        assert_eq!(arena.capacity(), FIRST_CHUNK);
        set_cpu(None);
    }

    #[test]
    fn counters_outlive_their_arena() {
        let arena = PerCpuArena::with_backend(Simulated::new(1));
        let counter = arena.counter();
        drop(arena);
        set_cpu(Some(0));
        counter.add(2);
        assert_eq!(counter.sum(), 2);
        set_cpu(None);
    }

    #[test]
    fn layout_bytes_are_cpus_times_eight_per_counter() {
        let cpus = 2;
        let arena = PerCpuArena::with_backend(Simulated::new(cpus));
        let n = if cfg!(miri) { 600 } else { 10_000 };
        set_cpu(Some(0));
        let counters: Vec<_> = (0..n).map(|_| arena.counter()).collect();
        counters.iter().for_each(ArenaCounter::inc);
        set_cpu(None);
        let rows_bytes = arena.capacity() * cpus * 8;
        assert!(arena.heap_bytes() >= rows_bytes);
        // Slack: at most one partly used chunk plus small headers.
        assert!(arena.capacity() <= n + MAX_CHUNK);
        assert!(arena.heap_bytes() < rows_bytes + 64 * 1024);
    }
}
