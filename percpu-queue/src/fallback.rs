//! Where elements go when a thread has no CPU (rseq unavailable, not registered yet, or the
//! index past the array), and where a push goes when its CPU's slot is stopped by a thief.
//!
//! DESIGN invariant 1: a thread without a CPU never writes a per-CPU head or stack, because
//! it cannot know that no critical section is running on that slot. So it uses separate,
//! mutex-protected storage, and every consumer checks it after its own CPU's slot. A mutex
//! is the simple, obviously correct choice for a path that only runs without rseq: a
//! lock-free Treiber stack would need its own ABA defence for pops.
//!
//! The storage is striped ([`rseq_sys::stripe`]): one padded stack per CPU (rounded up to a
//! power of two), each thread pushing to and popping from its own stripe first, so threads
//! without rseq do not all queue on one lock and one line (one shared lock made a push+pop
//! pair at two threads about 5x a crossbeam `ArrayQueue`'s). A pop whose stripe is empty
//! looks at the others, so nothing pushed is out of reach. An atomic length beside each
//! lock lets consumers skip empty stripes without locking (the common case when rseq
//! works): written under the lock with release, read with acquire, so a push that happened
//! before a pop is always seen by it.

use crossbeam_utils::CachePadded;
use rseq_sys::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use rseq_sys::sync::{Mutex, MutexGuard};
use std::ptr::NonNull;
use std::sync::PoisonError;

/// One padded `T` per fallback stripe.
struct Stripes<T>(Box<[CachePadded<T>]>);

impl<T> Stripes<T> {
    /// [`rseq_sys::stripe::count`]`(cpus)` stripes made by `make`.
    fn new(cpus: usize, mut make: impl FnMut() -> T) -> Self {
        Stripes(
            (0..rseq_sys::stripe::count(cpus))
                .map(|_| CachePadded::new(make()))
                .collect(),
        )
    }

    /// The calling thread's stripe first, then the others in order: every stripe once.
    fn mine_first(&self) -> impl Iterator<Item = &T> {
        let count = self.0.len();
        let mine = rseq_sys::stripe::current(count);
        (0..count).map(move |i| &*self.0[(mine + i) & (count - 1)])
    }

    fn mine(&self) -> &T {
        &self.0[rseq_sys::stripe::current(self.0.len())]
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|stripe| &**stripe)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while the lock is held, so poisoning cannot leave a broken chain.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The top of an intrusive chain of nodes linked through their next field.
struct Chain {
    top: *mut u8,
}

// SAFETY: the chain's nodes are owned by the list, not by any thread; the pointer is only
// followed by whoever holds the mutex around it.
unsafe impl Send for Chain {}

/// One stripe of [`FallbackList`]: an intrusive LIFO stack of nodes behind a mutex.
struct ListStripe {
    chain: Mutex<Chain>,
    len: AtomicUsize,
}

/// Intrusive LIFO stacks of nodes behind mutexes, one per stripe.
pub(crate) struct FallbackList {
    stripes: Stripes<ListStripe>,
}

/// The next field of a node at `next_offset`.
///
/// # Safety
/// `node` is a live node with an `AtomicPtr<u8>` at `next_offset` (the list's contract).
pub(crate) unsafe fn next_field<'a>(node: NonNull<u8>, next_offset: usize) -> &'a AtomicPtr<u8> {
    // SAFETY: by the caller's contract the field is a live, aligned AtomicPtr<u8>; atomics
    // may be shared.
    unsafe { &*node.as_ptr().add(next_offset).cast::<AtomicPtr<u8>>() }
}

impl ListStripe {
    /// Pop the newest node, if any.
    fn pop(&self, next_offset: usize) -> Option<NonNull<u8>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut chain = lock(&self.chain);
        let node = NonNull::new(chain.top)?;
        // SAFETY: `node` is on this chain, so it was pushed under the contract of
        // `FallbackList::push` and is live; the mutex orders its pusher's writes before
        // this read.
        chain.top = unsafe { next_field(node, next_offset) }.load(Ordering::Relaxed);
        self.len
            .store(self.len.load(Ordering::Relaxed) - 1, Ordering::Release);
        Some(node)
    }
}

impl FallbackList {
    /// Empty, with a stripe per CPU of `cpus` (rounded up to a power of two).
    pub(crate) fn new(cpus: usize) -> Self {
        FallbackList {
            stripes: Stripes::new(cpus, || ListStripe {
                chain: Mutex::new(Chain {
                    top: std::ptr::null_mut(),
                }),
                len: AtomicUsize::new(0),
            }),
        }
    }

    /// Push `node` on the calling thread's stripe.
    ///
    /// # Safety
    /// `node` has an `AtomicPtr<u8>` at `next_offset`, is on no list, and is owned by this
    /// list until popped (the intrusive list's contract).
    // Out of line: the per-CPU fast paths that fall back here are inlined into callers.
    #[inline(never)]
    pub(crate) unsafe fn push(&self, node: NonNull<u8>, next_offset: usize) {
        let stripe = self.stripes.mine();
        let mut chain = lock(&stripe.chain);
        // SAFETY: the caller hands us `node` with its next field.
        unsafe { next_field(node, next_offset) }.store(chain.top, Ordering::Relaxed);
        chain.top = node.as_ptr();
        stripe
            .len
            .store(stripe.len.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Pop the newest node of the calling thread's stripe, else of the first other stripe
    /// that has one.
    // Out of line: the per-CPU fast paths that fall back here are inlined into callers.
    #[inline(never)]
    pub(crate) fn pop(&self, next_offset: usize) -> Option<NonNull<u8>> {
        self.stripes
            .mine_first()
            .find_map(|stripe| stripe.pop(next_offset))
    }

    /// Whether every stripe looked empty (a snapshot).
    pub(crate) fn looks_empty(&self) -> bool {
        self.stripes
            .iter()
            .all(|stripe| stripe.len.load(Ordering::Acquire) == 0)
    }

    /// Take every stripe's chain (for drains), leaving the list empty: one chain per stripe,
    /// each newest first.
    pub(crate) fn take_chains(&self) -> Vec<*mut u8> {
        self.stripes
            .iter()
            .map(|stripe| {
                let mut chain = lock(&stripe.chain);
                stripe.len.store(0, Ordering::Release);
                std::mem::replace(&mut chain.top, std::ptr::null_mut())
            })
            .collect()
    }
}

/// Bounded stacks of words behind mutexes, one per stripe: the fallback of the bounded
/// per-CPU buffer. Each stripe holds as many items as one CPU's stack, so a thread without
/// a CPU also gets its item handed back when its stripe is full.
pub(crate) struct FallbackWords {
    stripes: Stripes<WordStripe>,
    capacity: usize,
}

struct WordStripe {
    words: Mutex<Words>,
    len: AtomicUsize,
}

struct Words(Vec<NonNull<u8>>);

// SAFETY: the words are owned items of the buffer, not tied to any thread (the buffer is
// only Send/Sync when its items are Send).
unsafe impl Send for Words {}

impl WordStripe {
    fn pop(&self) -> Option<NonNull<u8>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut words = lock(&self.words);
        let item = words.0.pop();
        self.len.store(words.0.len(), Ordering::Release);
        item
    }
}

impl FallbackWords {
    /// Empty, with a stripe per CPU of `cpus` (rounded up to a power of two), each holding
    /// up to `capacity` items.
    pub(crate) fn new(cpus: usize, capacity: usize) -> Self {
        FallbackWords {
            stripes: Stripes::new(cpus, || WordStripe {
                // Grown on use: a process with rseq never needs it.
                words: Mutex::new(Words(Vec::new())),
                len: AtomicUsize::new(0),
            }),
            capacity,
        }
    }

    /// Push `item` on the calling thread's stripe, or hand it back when that is full.
    // Out of line: the per-CPU fast paths that fall back here are inlined into callers.
    #[inline(never)]
    pub(crate) fn push(&self, item: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let stripe = self.stripes.mine();
        let mut words = lock(&stripe.words);
        if words.0.len() >= self.capacity {
            return Err(item);
        }
        words.0.push(item);
        stripe.len.store(words.0.len(), Ordering::Release);
        Ok(())
    }

    /// Pop the newest item of the calling thread's stripe, else of the first other stripe
    /// that has one.
    // Out of line: the per-CPU fast paths that fall back here are inlined into callers.
    #[inline(never)]
    pub(crate) fn pop(&self) -> Option<NonNull<u8>> {
        self.stripes.mine_first().find_map(WordStripe::pop)
    }

    /// Take every item (for drains): stripe by stripe, each newest first.
    pub(crate) fn take_all(&self) -> Vec<NonNull<u8>> {
        let mut all = Vec::new();
        for stripe in self.stripes.iter() {
            let mut words = lock(&stripe.words);
            stripe.len.store(0, Ordering::Release);
            all.extend(words.0.drain(..).rev());
        }
        all
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const THREADS: usize = 8;
    const EACH: usize = 10;

    fn node(_: usize) -> NonNull<u8> {
        // A node is just its next field, at offset 0.
        NonNull::from(Box::leak(Box::new(AtomicPtr::<u8>::new(
            std::ptr::null_mut(),
        ))))
        .cast()
    }

    fn free(node: NonNull<u8>) {
        // SAFETY: every node here is a leaked `Box<AtomicPtr<u8>>`, freed once.
        drop(unsafe { Box::from_raw(node.cast::<AtomicPtr<u8>>().as_ptr()) });
    }

    #[test]
    fn one_thread_pops_what_every_thread_pushed() {
        let list = FallbackList::new(THREADS);
        let pushed: Vec<Vec<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let list = &list;
                    s.spawn(move || {
                        (0..EACH)
                            .map(|i| {
                                let n = node(t * EACH + i);
                                // SAFETY: a fresh node with its next field at offset 0.
                                unsafe { list.push(n, 0) };
                                n.as_ptr().addr()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(!list.looks_empty());
        let mut popped = Vec::new();
        while let Some(n) = list.pop(0) {
            popped.push(n);
        }
        assert!(list.looks_empty());
        let mut got: Vec<usize> = popped.iter().map(|n| n.as_ptr().addr()).collect();
        let mut want: Vec<usize> = pushed.into_iter().flatten().collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            got, want,
            "each node popped exactly once, whichever stripe held it"
        );
        popped.into_iter().for_each(free);
    }

    #[test]
    fn a_thread_pops_its_own_newest_first() {
        let list = FallbackList::new(THREADS);
        let nodes: Vec<NonNull<u8>> = (0..3).map(node).collect();
        for &n in &nodes {
            // SAFETY: fresh nodes with their next field at offset 0.
            unsafe { list.push(n, 0) };
        }
        assert_eq!(list.pop(0), Some(nodes[2]));
        assert_eq!(
            list.take_chains()
                .into_iter()
                .filter(|c| !c.is_null())
                .count(),
            1
        );
        assert!(list.looks_empty());
        nodes.into_iter().for_each(free);
    }

    #[test]
    fn words_are_bounded_per_stripe_and_reachable_from_any_thread() {
        let words = FallbackWords::new(THREADS, 2);
        let items: Vec<NonNull<u8>> = (1..=3usize)
            .map(|i| NonNull::new(core::ptr::without_provenance_mut::<u8>(i * 8)).unwrap())
            .collect();
        assert_eq!(words.push(items[0]), Ok(()));
        assert_eq!(words.push(items[1]), Ok(()));
        assert_eq!(words.push(items[2]), Err(items[2]), "the stripe is full");
        // Another thread finds them although its own stripe may be another one.
        let popped = std::thread::scope(|s| {
            s.spawn(|| words.pop().map(|item| item.as_ptr().addr()))
                .join()
                .unwrap()
        });
        assert_eq!(popped, Some(items[1].as_ptr().addr()));
        assert_eq!(words.take_all(), vec![items[0]]);
        assert_eq!(words.pop(), None);
    }
}
