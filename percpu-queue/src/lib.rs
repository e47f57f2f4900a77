//! Per-CPU freelists, bounded per-CPU buffers and an object pool on Linux restartable
//! sequences (rseq).
//!
//! The structures a per-CPU allocator or a high-rate server needs: give an object back on the
//! CPU that freed it, take one on the CPU that wants it, with no shared cache line and no
//! atomic read-modify-write on the fast path. Each push or pop is one rseq critical section
//! from [`rseq_sys`] on the current CPU's slot.
//!
//! - [`FreeList<T>`]: a per-CPU intrusive LIFO list of boxed [`Node`]s. A pop on an empty
//!   list tries the fallback lists, then steals a batch from another CPU.
//! - [`PerCpuBuffer<T>`]: a bounded array stack of `Box<T>` per CPU (capacity per CPU
//!   configurable); `push` hands the item back when the CPU's stack is full.
//! - [`Pool<T>`]: an object pool on the freelist; [`Pool::get`] returns a guard that gives
//!   the object back to the current CPU's list on drop; at most `max_idle` objects are kept.
//! - [`IntrusiveList`]: the raw layer under the freelist, `unsafe` to push into, with its
//!   contract written down.
//!
//! Every structure is generic over the [`Backend`](rseq_sys::Backend): [`Rseq`](rseq_sys::Rseq)
//! by default, [`Simulated`](rseq_sys::Simulated) for tests (injected CPU ids and aborts),
//! loom and Miri.
//!
//! # Invariant
//!
//! A per-CPU list head or stack is written only by a committed critical section running on
//! that CPU, by the one thief that has stopped it (lock bit or narrowed bounds) and fenced
//! every CPU with `membarrier`, or under `&mut self` (drain, drop), when no section can run.
//! A thread without a CPU never touches per-CPU slots: it uses a mutex-protected fallback,
//! striped by thread ([`rseq_sys::stripe`]), that every consumer also checks. Every element
//! is owned by exactly one place at a time (one CPU's list, the fallback, a thief in
//! transit, or the caller), so each element pushed is popped or drained exactly once, and
//! the safe API (boxes in, boxes out, guards borrowing the pool) leaves no way to use an
//! element after it is freed. Elements handed
//! from one CPU to another are published with release and acquired with acquire.
//!
//! # Ordering
//!
//! LIFO per CPU (and within the fallback); no order across CPUs. A pop returns `None` when
//! its CPU's list, the fallback and every other CPU it tried were empty; an element in
//! transit (being moved by a concurrent steal) may be missed.
//!
//! # Stealing: the membarrier fence, and why
//!
//! A pop whose CPU has nothing steals from another CPU. A per-CPU pop commits with a plain
//! store, so no atomic compare-and-swap from elsewhere can safely take an element while a
//! section might be in flight; and an atomic protocol both sides follow would put an atomic
//! read-modify-write back on every push and pop, the cost rseq removes. So the thief *stops*
//! the victim's slot with something every section checks (the [`rseq_sys::LINK_LOCKED`] bit
//! on a list head; begin and end narrowed to the top of a bounded stack), fences with
//! `membarrier` (aborting sections in flight, ordering the stop before later ones),
//! re-checks that no section committed in between, takes a batch (one element for the
//! caller, up to 15 more moved onto the thief's CPU, so one fence pays for several pops) and
//! restarts the slot with release stores (a bounded stack, whose top the thief lowers, takes
//! a second fence before its bounds widen again). One thief per slot at a time (a flag per slot), so
//! a stopped state seen after the fence is the thief's own. The fence covers every CPU,
//! because a slot index is a CPU number only when indexing by `cpu_id`; with `mm_cid` the
//! owning thread can be on any CPU. The exact steps are in [`IntrusiveList`] and
//! [`PerCpuBuffer`].
//!
//! # Example
//!
//! ```
//! use percpu_queue::{FreeList, Node, PerCpuBuffer, Pool};
//!
//! // A freelist of reusable buffers: nodes are allocated once, then move in and out.
//! let list: FreeList<Vec<u8>> = FreeList::new();
//! list.push(Box::new(Node::new(Vec::with_capacity(4096))));
//! let mut buffer = list.pop().expect("pushed just now");
//! buffer.push(7);
//! list.push(buffer);
//!
//! // A bounded per-CPU buffer hands items back when full.
//! let ring: PerCpuBuffer<u64> = PerCpuBuffer::with_capacity(2);
//! let mut handed_back = 0;
//! for i in 0..3 {
//!     if ring.push(Box::new(i)).is_err() {
//!         handed_back += 1;
//!     }
//! }
//! assert!(handed_back <= 1);
//!
//! // An object pool: the guard returns the object to this CPU's list on drop.
//! let pool = Pool::new(64, || String::with_capacity(128));
//! {
//!     let mut s = pool.get();
//!     s.push_str("hello");
//! }
//! assert_eq!(pool.kept(), 1);
//!
//! // Drain returns every element exactly once, whichever CPU holds it.
//! let mut list = list;
//! assert_eq!(list.drain().len(), 1);
//! ```
//!
//! # Without rseq
//!
//! When rseq is unavailable (old kernel, seccomp, `PERCPU_NO_RSEQ=1`, valgrind, other
//! platforms, Miri, loom) every per-CPU operation reports no CPU, and every structure runs on
//! its fallback: mutex-protected LIFOs (intrusive for the freelist, bounded for the buffer),
//! one stripe per CPU, each thread using its own first. Everything stays correct, only
//! slower, and no longer local to a CPU. When rseq works but `membarrier`'s rseq commands
//! do not (Linux before 5.10 lacks them), stealing is off: an element on another
//! CPU's list waits there for a thread on that CPU, or for a drain.

mod buffer;
mod fallback;
mod freelist;
mod intrusive;
mod pool;
mod steal;

pub use buffer::PerCpuBuffer;
pub use freelist::{FreeList, Node};
pub use intrusive::IntrusiveList;
pub use pool::{Pool, Pooled};
