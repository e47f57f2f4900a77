//! The safe per-CPU freelist: boxed nodes go in, boxed nodes come out, so no raw pointer
//! ever reaches the user and a node cannot be used after it is freed.

use crate::intrusive::IntrusiveList;
use rseq_sys::sync::atomic::AtomicPtr;
use rseq_sys::{Backend, Rseq};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A value with the link a [`FreeList`] threads it on. Allocate it once
/// (`Box::new(Node::new(value))`) and move the box in and out of lists: pushing and popping
/// never allocate.
///
/// The link is only used while the node is on a list, where nobody else can reach it.
#[repr(C)]
pub struct Node<T> {
    // First field (offset 0), and an AtomicPtr, so every node is at least pointer-aligned:
    // bit 0 of a node address is free for the lock bit.
    next: AtomicPtr<u8>,
    value: T,
}

impl<T> Node<T> {
    /// A node holding `value`.
    pub fn new(value: T) -> Self {
        Node {
            next: AtomicPtr::new(std::ptr::null_mut()),
            value,
        }
    }

    /// The value, out of its node.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Node").field(&self.value).finish()
    }
}

/// A per-CPU LIFO freelist of boxed [`Node`]s.
///
/// - [`push`](FreeList::push) puts a node on the current CPU's list (one rseq critical
///   section), or on the thread's fallback stripe when the thread has no CPU.
/// - [`pop`](FreeList::pop) takes the current CPU's newest node (one critical section, free
///   of ABA: it commits only if still on the same CPU with the head unchanged), else the
///   fallback's newest (the thread's stripe first), else steals a batch from another CPU
///   (the protocol is in [`IntrusiveList`]'s docs).
/// - [`drain`](FreeList::drain) returns every node exactly once, from every CPU and the
///   fallback; dropping the list frees every node still listed.
///
/// Order: LIFO per CPU; no order across CPUs or with the fallback.
///
/// `FreeList<T>` is `Sync` when `T: Send`: threads share the list to move values between
/// them, never to share a value.
pub struct FreeList<T, B: Backend = Rseq> {
    list: IntrusiveList<B>,
    // Owns boxed nodes of T, which move between threads (Sync and Send need T: Send).
    _nodes: PhantomData<std::sync::Mutex<Box<Node<T>>>>,
}

impl<T, B: Backend> core::fmt::Debug for FreeList<T, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FreeList")
            .field("list", &self.list)
            .finish()
    }
}

impl<T> FreeList<T, Rseq> {
    /// An empty freelist on real rseq, indexed by CPU id (the backend
    /// [resolved](Rseq::resolved) once).
    pub fn new() -> Self {
        Self::with_backend(Rseq::CPU_ID.resolved())
    }
}

impl<T> Default for FreeList<T, Rseq> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, B: Backend> FreeList<T, B> {
    /// An empty freelist running on `backend` (for example a
    /// [`Simulated`](rseq_sys::Simulated) machine in tests).
    pub fn with_backend(backend: B) -> Self {
        FreeList {
            list: IntrusiveList::with_backend(backend, core::mem::offset_of!(Node<T>, next)),
            _nodes: PhantomData,
        }
    }

    /// The backend this list runs on.
    pub fn backend(&self) -> &B {
        self.list.backend()
    }

    /// Give `node` to the list, on the current CPU.
    #[inline(always)]
    pub fn push(&self, node: Box<Node<T>>) {
        let node = NonNull::from(Box::leak(node)).cast::<u8>();
        // SAFETY: the node comes from a Box we now own exclusively: live, pointer-aligned,
        // with its `AtomicPtr<u8>` next field at the offset this list was built with. Only
        // the list reaches it until a pop turns it back into the Box, and the list frees it
        // on drop if nobody does.
        unsafe { self.list.push(node) }
    }

    /// Allocate a node for `value` and push it.
    pub fn push_value(&self, value: T) {
        self.push(Box::new(Node::new(value)));
    }

    /// Take a node: this CPU's newest, else the fallback's, else one stolen from another CPU.
    /// `None` when none of those had one (see [`IntrusiveList::pop`] for when elements can
    /// be elsewhere).
    #[inline(always)]
    pub fn pop(&self) -> Option<Box<Node<T>>> {
        // SAFETY: every node on the list was leaked from a `Box<Node<T>>` by `push`, and a pop
        // hands each out once, so rebuilding the Box returns exclusive ownership.
        self.list
            .pop()
            .map(|node| unsafe { Box::from_raw(node.cast::<Node<T>>().as_ptr()) })
    }

    /// Take this CPU's newest node only: no fallback, no stealing.
    #[inline(always)]
    pub fn pop_local(&self) -> Option<Box<Node<T>>> {
        // SAFETY: as in `pop`.
        self.list
            .pop_local()
            .map(|node| unsafe { Box::from_raw(node.cast::<Node<T>>().as_ptr()) })
    }

    /// This CPU's newest node, else the fallback's: never steals (never fences).
    #[inline(always)]
    pub(crate) fn pop_nearby(&self) -> Option<Box<Node<T>>> {
        let node = match self.list.pop_local() {
            Some(node) => node,
            None => self.list.pop_fallback()?,
        };
        // SAFETY: as in `pop`.
        Some(unsafe { Box::from_raw(node.cast::<Node<T>>().as_ptr()) })
    }

    /// A node stolen from another CPU's list, if any.
    pub(crate) fn steal(&self) -> Option<Box<Node<T>>> {
        // SAFETY: as in `pop`.
        self.list
            .steal()
            .map(|node| unsafe { Box::from_raw(node.cast::<Node<T>>().as_ptr()) })
    }

    /// Every node, from every CPU and the fallback, each exactly once; the list is left
    /// empty. Per CPU newest first, CPUs in index order, then the fallback's stripes.
    pub fn drain(&mut self) -> Vec<Box<Node<T>>> {
        self.list
            .drain()
            .into_iter()
            // SAFETY: as in `pop`: drained nodes leave the list exactly once.
            .map(|node| unsafe { Box::from_raw(node.cast::<Node<T>>().as_ptr()) })
            .collect()
    }

    /// Whether the list holds no node (a snapshot: exact only without concurrent use).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl<T, B: Backend> Drop for FreeList<T, B> {
    fn drop(&mut self) {
        drop(self.drain());
    }
}
