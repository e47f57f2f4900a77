//! A bounded stack of free objects' addresses: the storage of each transfer cache and of
//! each stripe's cache, always used under its owner's spin lock.
//!
//! Both caches move objects in slices (a batch in, a batch out) and both are emptied into
//! the central list before a release sweep; that shared shape lives here once.

use crate::central;
use crate::spin::SpinLock;

/// Objects moved per lock hold by [`drain_to_central`]: a small copy on the caller's
/// stack however large the cache.
const DRAIN_CHUNK: usize = 64;

/// Up to `N` free objects: `items[..len]`, the newest last.
pub(crate) struct ObjectStack<const N: usize> {
    len: usize,
    items: [*mut u8; N],
}

// SAFETY: the pointers are free objects owned by the stack, and every owner keeps the stack
// under a lock, so they are used by one thread at a time.
unsafe impl<const N: usize> Send for ObjectStack<N> {}

impl<const N: usize> ObjectStack<N> {
    pub(crate) const EMPTY: Self = ObjectStack {
        len: 0,
        items: [core::ptr::null_mut(); N],
    };

    /// Objects held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The newest object, taken off.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<*mut u8> {
        self.len = self.len.checked_sub(1)?;
        Some(self.items[self.len])
    }

    /// Move the newest `out.len()` objects (or all, when fewer) into `out`, in stack order;
    /// returns how many.
    pub(crate) fn pop_into(&mut self, out: &mut [*mut u8]) -> usize {
        let n = self.len.min(out.len());
        let from = self.len - n;
        out[..n].copy_from_slice(&self.items[from..self.len]);
        self.len = from;
        n
    }

    /// Push `object` if the stack holds fewer than `limit` (and `N`); false when full.
    #[inline]
    pub(crate) fn push(&mut self, object: *mut u8, limit: usize) -> bool {
        if self.len >= limit {
            return false;
        }
        let Some(slot) = self.items.get_mut(self.len) else {
            return false;
        };
        *slot = object;
        self.len += 1;
        true
    }

    /// Push the first of `items`, as many as keep the stack at or below `limit` (and `N`);
    /// returns how many.
    pub(crate) fn push_up_to(&mut self, items: &[*mut u8], limit: usize) -> usize {
        let n = items.len().min(limit.min(N).saturating_sub(self.len));
        self.items[self.len..self.len + n].copy_from_slice(&items[..n]);
        self.len += n;
        n
    }

    /// Keep the oldest `keep` objects and move the rest into `out`, in stack order; returns
    /// how many moved.
    pub(crate) fn split_off(&mut self, keep: usize, out: &mut [*mut u8]) -> usize {
        let keep = keep.min(self.len);
        let n = self.len - keep;
        out[..n].copy_from_slice(&self.items[keep..self.len]);
        self.len = keep;
        n
    }
}

/// Move the objects the stack behind `lock` holds now into the central list of `class`, a
/// chunk at a time (objects pushed meanwhile may stay, so a busy stack cannot keep the
/// caller here); the lock is never held while the central list's is taken.
///
/// # Safety
/// Every object on the stack is a free object of `class` from this allocator, on no other
/// list (what every owner of an `ObjectStack` keeps).
pub(crate) unsafe fn drain_to_central<const N: usize>(
    lock: &SpinLock<ObjectStack<N>>,
    class: usize,
) {
    let mut chunk = [core::ptr::null_mut(); DRAIN_CHUNK];
    let mut left = lock.lock().len();
    while left > 0 {
        let n = lock.lock().pop_into(&mut chunk[..left.min(DRAIN_CHUNK)]);
        if n == 0 {
            return;
        }
        left -= n;
        // SAFETY: the objects were free on the stack (the caller's promise) and are now
        // only in `chunk`.
        unsafe { central::insert(class, &chunk[..n]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(n: usize) -> Vec<*mut u8> {
        (1..=n)
            .map(|i| core::ptr::without_provenance_mut(i * 8))
            .collect()
    }

    #[test]
    fn slices_go_in_and_out_in_stack_order_within_the_limit() {
        let items = objects(6);
        let mut stack = ObjectStack::<4>::EMPTY;
        assert_eq!(stack.pop(), None);
        assert!(stack.push(items[0], 1));
        assert!(!stack.push(items[1], 1), "at the limit");
        assert_eq!(stack.pop(), Some(items[0]));
        assert_eq!(stack.push_up_to(&items[..3], 2), 2, "limit below N");
        assert_eq!(stack.push_up_to(&items[2..], 10), 2, "N below the limit");
        assert_eq!(stack.len(), 4);
        assert_eq!(stack.push_up_to(&items[4..], 10), 0, "full");
        assert_eq!(stack.pop(), Some(items[3]));
        let mut out = [core::ptr::null_mut(); 2];
        assert_eq!(stack.pop_into(&mut out), 2);
        assert_eq!(out, [items[1], items[2]]);
        assert_eq!(stack.pop_into(&mut out), 1);
        assert_eq!(out[0], items[0]);
        assert_eq!(stack.len(), 0);
    }

    #[test]
    fn split_off_keeps_the_oldest() {
        let items = objects(4);
        let mut stack = ObjectStack::<4>::EMPTY;
        stack.push_up_to(&items, 4);
        let mut out = [core::ptr::null_mut(); 4];
        assert_eq!(stack.split_off(1, &mut out), 3);
        assert_eq!(out[..3], items[1..]);
        assert_eq!(stack.len(), 1);
        assert_eq!(stack.split_off(5, &mut out), 0, "keep past len keeps all");
        assert_eq!(stack.pop(), Some(items[0]));
    }
}
