//! Where elements go when a thread has no CPU (rseq unavailable, not registered yet, or the
//! index past the array), and where a push goes when its CPU's slot is stopped by a thief.
//!
//! DESIGN invariant 1: a thread without a CPU never writes a per-CPU head or stack, because
//! it cannot know that no critical section is running on that slot. So it uses separate,
//! mutex-protected storage, and every consumer checks it after its own CPU's slot. A mutex
//! is the simple, obviously correct choice for a path that only runs without rseq: a
//! lock-free Treiber stack would need its own ABA defence for pops. An atomic length beside
//! the lock lets consumers skip the lock when the fallback is empty (the common case when
//! rseq works): written under the lock with release, read with acquire, so a push that
//! happened before a pop is always seen by it.

use rseq_sys::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use rseq_sys::sync::{Mutex, MutexGuard};
use std::ptr::NonNull;
use std::sync::PoisonError;

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

/// An intrusive LIFO stack of nodes behind a mutex.
pub(crate) struct FallbackList {
    chain: Mutex<Chain>,
    len: AtomicUsize,
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

impl FallbackList {
    pub(crate) fn new() -> Self {
        FallbackList {
            chain: Mutex::new(Chain {
                top: std::ptr::null_mut(),
            }),
            len: AtomicUsize::new(0),
        }
    }

    /// Push `node`.
    ///
    /// # Safety
    /// `node` has an `AtomicPtr<u8>` at `next_offset`, is on no list, and is owned by this
    /// list until popped (the intrusive list's contract).
    pub(crate) unsafe fn push(&self, node: NonNull<u8>, next_offset: usize) {
        let mut chain = lock(&self.chain);
        // SAFETY: the caller hands us `node` with its next field.
        unsafe { next_field(node, next_offset) }.store(chain.top, Ordering::Relaxed);
        chain.top = node.as_ptr();
        self.len
            .store(self.len.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Pop the newest node, if any.
    pub(crate) fn pop(&self, next_offset: usize) -> Option<NonNull<u8>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut chain = lock(&self.chain);
        let node = NonNull::new(chain.top)?;
        // SAFETY: `node` is on this chain, so it was pushed under the contract of `push`
        // and is live; the mutex orders its pusher's writes before this read.
        chain.top = unsafe { next_field(node, next_offset) }.load(Ordering::Relaxed);
        self.len
            .store(self.len.load(Ordering::Relaxed) - 1, Ordering::Release);
        Some(node)
    }

    /// Whether the list looked empty (a snapshot).
    pub(crate) fn looks_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Take the whole chain (for drains), leaving the list empty.
    pub(crate) fn take_chain(&self) -> *mut u8 {
        let mut chain = lock(&self.chain);
        self.len.store(0, Ordering::Release);
        std::mem::replace(&mut chain.top, std::ptr::null_mut())
    }
}

/// A bounded stack of words behind a mutex: the fallback of the bounded per-CPU buffer, with
/// the same capacity as one CPU's stack, so a thread without a CPU also gets its items
/// handed back when full.
pub(crate) struct FallbackWords {
    words: Mutex<Words>,
    len: AtomicUsize,
    capacity: usize,
}

struct Words(Vec<NonNull<u8>>);

// SAFETY: the words are owned items of the buffer, not tied to any thread (the buffer is
// only Send/Sync when its items are Send).
unsafe impl Send for Words {}

impl FallbackWords {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        FallbackWords {
            words: Mutex::new(Words(Vec::with_capacity(capacity))),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Push `item`, or hand it back when full.
    pub(crate) fn push(&self, item: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let mut words = lock(&self.words);
        if words.0.len() >= self.capacity {
            return Err(item);
        }
        words.0.push(item);
        self.len.store(words.0.len(), Ordering::Release);
        Ok(())
    }

    /// Pop the newest item, if any.
    pub(crate) fn pop(&self) -> Option<NonNull<u8>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut words = lock(&self.words);
        let item = words.0.pop();
        self.len.store(words.0.len(), Ordering::Release);
        item
    }

    /// Take every item (for drains).
    pub(crate) fn take_all(&self) -> Vec<NonNull<u8>> {
        let mut words = lock(&self.words);
        self.len.store(0, Ordering::Release);
        std::mem::take(&mut words.0)
    }
}
