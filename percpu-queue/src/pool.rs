//! An object pool on the per-CPU freelist.

use crate::freelist::{FreeList, Node};
use rseq_sys::sync::atomic::{AtomicUsize, Ordering};
use rseq_sys::{Backend, Rseq};
use std::ops::{Deref, DerefMut};

type Create<T> = Box<dyn Fn() -> T + Send + Sync>;

/// A pool of reusable objects, kept idle on a per-CPU [`FreeList`].
///
/// [`get`](Pool::get) takes an idle object (this CPU's newest, else the fallback's) or
/// creates one with the user's closure (stealing from another CPU only once the pool is at
/// its bound); the returned [`Pooled`]
/// guard gives it back to the current CPU's list when dropped. Getting and returning an idle
/// object touch only the current CPU's list: no shared cache line.
///
/// # Memory bound
/// At most `max_idle` objects are ever *kept* by the pool: an object created while fewer
/// than `max_idle` are kept joins the pool for good; one created beyond that is temporary and
/// is dropped when its guard is. So idle objects never exceed `max_idle`, and the count of
/// kept objects is the only shared counter, touched only when creating (the slow path).
/// Objects are returned as they are: reset them yourself if needed.
pub struct Pool<T, B: Backend = Rseq> {
    idle: FreeList<T, B>,
    create: Create<T>,
    kept: AtomicUsize,
    max_idle: usize,
}

impl<T, B: Backend> core::fmt::Debug for Pool<T, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("kept", &self.kept.load(Ordering::Relaxed))
            .field("max_idle", &self.max_idle)
            .field("idle", &self.idle)
            .finish()
    }
}

impl<T> Pool<T, Rseq> {
    /// A pool keeping at most `max_idle` objects, creating them with `create`, on real rseq
    /// (the backend [resolved](Rseq::resolved) once).
    pub fn new(max_idle: usize, create: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self::with_backend(Rseq::CPU_ID.resolved(), max_idle, create)
    }
}

impl<T, B: Backend> Pool<T, B> {
    /// A pool on `backend`.
    pub fn with_backend(
        backend: B,
        max_idle: usize,
        create: impl Fn() -> T + Send + Sync + 'static,
    ) -> Self {
        Pool {
            idle: FreeList::with_backend(backend),
            create: Box::new(create),
            kept: AtomicUsize::new(0),
            max_idle,
        }
    }

    /// An object: this CPU's newest idle one, else the fallback's; else a new one while the
    /// pool keeps fewer than `max_idle`; else one stolen from another CPU; else a new
    /// temporary one.
    ///
    /// Creating before stealing keeps steals (each a `membarrier` fence) rare: the pool
    /// grows to its bound first, so every CPU soon has idle objects of its own.
    #[inline(always)]
    pub fn get(&self) -> Pooled<'_, T, B> {
        match self.idle.pop_nearby() {
            Some(node) => self.guard(node, true),
            None => self.get_slow(),
        }
    }

    #[cold]
    fn get_slow(&self) -> Pooled<'_, T, B> {
        let reserved = self
            .kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept < self.max_idle).then_some(kept + 1)
            })
            .is_ok();
        if !reserved {
            if let Some(node) = self.idle.steal() {
                return self.guard(node, true);
            }
        }
        self.guard(Box::new(Node::new((self.create)())), reserved)
    }

    #[inline(always)]
    fn guard(&self, node: Box<Node<T>>, kept: bool) -> Pooled<'_, T, B> {
        Pooled {
            pool: self,
            node: Some(node),
            kept,
        }
    }

    /// How many objects the pool keeps (idle or in use), at most `max_idle`.
    pub fn kept(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// The most objects the pool keeps.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// Take every idle object out of the pool (each exactly once, from every CPU); they no
    /// longer count as kept, so the pool may create replacements.
    pub fn drain(&mut self) -> Vec<T> {
        let idle: Vec<T> = self
            .idle
            .drain()
            .into_iter()
            .map(|node| node.into_inner())
            .collect();
        // `&mut self`: no guard is out, so every kept object was idle and is now gone.
        // (A guard leaked with `mem::forget` took its object with it: fewer may come back.)
        debug_assert!(idle.len() <= self.kept.load(Ordering::Relaxed));
        self.kept.store(0, Ordering::Relaxed);
        idle
    }
}

/// An object out of a [`Pool`]; dereferences to it, and gives it back to the current CPU's
/// idle list when dropped (or drops it, if it was created past the pool's bound).
pub struct Pooled<'a, T, B: Backend = Rseq> {
    pool: &'a Pool<T, B>,
    node: Option<Box<Node<T>>>,
    kept: bool,
}

impl<T, B: Backend> Pooled<'_, T, B> {
    /// Whether this object returns to the pool when dropped (`false` for one created past
    /// the bound).
    pub fn is_kept(&self) -> bool {
        self.kept
    }

    /// Take the object out of the pool for good; the pool may create a replacement.
    pub fn detach(mut self) -> T {
        let node = self.node.take().expect("a live guard holds its object");
        if self.kept {
            self.pool.kept.fetch_sub(1, Ordering::Relaxed);
        }
        node.into_inner()
    }
}

impl<T, B: Backend> Deref for Pooled<'_, T, B> {
    type Target = T;
    fn deref(&self) -> &T {
        self.node.as_ref().expect("a live guard holds its object")
    }
}

impl<T, B: Backend> DerefMut for Pooled<'_, T, B> {
    fn deref_mut(&mut self) -> &mut T {
        self.node.as_mut().expect("a live guard holds its object")
    }
}

impl<T: core::fmt::Debug, B: Backend> core::fmt::Debug for Pooled<'_, T, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pooled")
            .field("object", &**self)
            .field("kept", &self.kept)
            .finish()
    }
}

impl<T, B: Backend> Drop for Pooled<'_, T, B> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            if self.kept {
                self.pool.idle.push(node);
            }
        }
    }
}
