//! A spin lock for the allocator's shared lists.
//!
//! Held only around code that neither allocates nor calls out, so an allocation on the same
//! thread can never find it held (no re-entry deadlock). Waiters spin briefly and then yield
//! the CPU with `sched_yield`, which does not allocate.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time (acquire on lock, release on
// unlock), so sharing the lock shares `T` only as sending it would.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                if spins < 64 {
                    core::hint::spin_loop();
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
        SpinGuard { lock: self }
    }

    /// The lock if it is free now, else `None` (for work that may be skipped, such as an
    /// automatic release that another thread is already doing).
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // `then`, not `then_some`: a guard built for a failed attempt would be dropped,
        // and its drop releases the lock that its holder still holds.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| SpinGuard { lock: self })
    }

    /// Take the lock and keep it with no guard: the fork handlers hold every lock from the
    /// `prepare` handler to the `parent` or `child` one, which are separate calls.
    pub(crate) fn lock_and_keep(&self) {
        core::mem::forget(self.lock());
    }

    /// Release a lock taken with [`lock_and_keep`](Self::lock_and_keep).
    ///
    /// # Safety
    /// The lock was taken with `lock_and_keep` and not released since; in a forked child,
    /// by the thread that forked (whose copy is the child's only thread).
    pub(crate) unsafe fn unlock_kept(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock, and `&mut self`
        // makes this the only reference through it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_try_lock_leaves_the_lock_held() {
        let lock = SpinLock::new(());
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        assert!(
            lock.try_lock().is_none(),
            "the failed attempt released the lock"
        );
        drop(held);
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn lock_excludes() {
        static COUNTER: SpinLock<u64> = SpinLock::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..if cfg!(miri) { 100 } else { 100_000 } {
                        *COUNTER.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*COUNTER.lock(), if cfg!(miri) { 400 } else { 400_000 });
    }
}
