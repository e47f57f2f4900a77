//! Per-CPU operations: what a higher crate asks for, and the backends that run them.
//!
//! A higher crate lays out one slot per CPU ([`SlotArray`]) and asks a [`Backend`] to run an
//! operation on the current CPU's slot. The answer is an [`Outcome`]: it ran to completion on
//! CPU `cpu`, it was aborted (preempted, migrated or signalled: retry), or there is no CPU
//! (rseq unavailable, the thread not registered, or the index past the array: take the
//! fallback). Two backends exist: [`Rseq`](crate::Rseq) runs real critical sections, and
//! [`Simulated`](crate::Simulated) runs the same operations with injected CPU ids and aborts
//! so that loom, Miri and property tests exercise the same algorithm.

use crate::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::NonNull;

/// What a per-CPU operation did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The operation ran to completion on CPU `cpu` (the slot index it used). For operations
    /// that can decline (a failed comparison, an empty list, a full stack), `value` says
    /// which happened; a declined operation stored nothing.
    Completed {
        /// The slot index the operation ran on.
        cpu: usize,
        /// The operation's result.
        value: T,
    },
    /// Preempted, migrated or interrupted by a signal before the commit: nothing was
    /// committed (try-stores into memory the caller owns may have happened). Retry.
    Aborted,
    /// No CPU to run on: take the fallback path.
    NoCpu,
}

/// Which field of the rseq area indexes the per-CPU slots. A structure must use one choice
/// for its whole life: mixing them would let two CPUs share a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexBy {
    /// `cpu_id`: the physical CPU number, below [`possible_cpus()`](crate::possible_cpus).
    CpuId,
    /// `mm_cid` where the ABI promises it (the registration's feature size covers it), else
    /// `cpu_id`. Dense: with few threads only the first few slots are used. Decided once per
    /// process, so a structure always sees one field.
    ConcurrencyId,
}

/// One slot per CPU: slot `c` is the `T` at `base + c * stride` bytes, for `c < len`.
///
/// Built safely from a slice (each element is one CPU's slot, or holds it at a fixed
/// offset), or unsafely from raw parts for memory a higher crate manages itself.
pub struct SlotArray<'a, T> {
    base: NonNull<T>,
    stride: usize,
    len: usize,
    _borrow: PhantomData<&'a [T]>,
}

impl<T> Clone for SlotArray<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SlotArray<'_, T> {}

impl<T> core::fmt::Debug for SlotArray<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotArray")
            .field("base", &self.base)
            .field("stride", &self.stride)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: a SlotArray is a shared borrow of `T`s; sending or sharing it is sending `&[T]`,
// which needs `T: Sync`.
unsafe impl<T: Sync> Send for SlotArray<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for SlotArray<'_, T> {}

impl<'a, T> SlotArray<'a, T> {
    /// Each element of `slots` is one CPU's slot.
    pub fn from_slice(slots: &'a [T]) -> Self {
        SlotArray {
            base: NonNull::from(slots).cast(),
            stride: size_of::<T>(),
            len: slots.len(),
            _borrow: PhantomData,
        }
    }

    /// Each element of `elements` is one CPU's record, and `field` picks its slot (usually a
    /// field projection such as `|cpu| &cpu.head`).
    ///
    /// This checks every element (O(`elements.len()`)): build the array once, outside hot
    /// loops, and copy it (it is `Copy`). Structures that rebuild their view on every
    /// operation should use [`SlotArray::from_raw_parts`] with a layout they control.
    ///
    /// # Panics
    /// If `field` does not return a `T` inside each element at one same offset.
    pub fn project<E>(elements: &'a [E], field: impl Fn(&E) -> &T) -> Self {
        let offset = match elements.first() {
            Some(first) => byte_offset(first, field(first)),
            None => 0,
        };
        for element in elements {
            let here = byte_offset(element, field(element));
            assert!(
                here == offset && offset + size_of::<T>() <= size_of::<E>(),
                "SlotArray::project: the slot must be a field at a fixed offset in each element"
            );
        }
        let base = NonNull::from(elements).cast::<u8>();
        SlotArray {
            // `wrapping_add` keeps the slice's provenance, which covers every element.
            base: NonNull::new(base.as_ptr().wrapping_add(offset))
                .unwrap_or(base)
                .cast(),
            stride: size_of::<E>(),
            len: elements.len(),
            _borrow: PhantomData,
        }
    }

    /// Slots at `base + c * stride` for `c < len`.
    ///
    /// # Safety
    /// For every `c < len`, `base + c * stride` bytes is a live, aligned `T`, shared for `'a`
    /// (no `&mut` to it exists), and the pointer's provenance covers all of them.
    pub unsafe fn from_raw_parts(base: NonNull<T>, stride: usize, len: usize) -> Self {
        SlotArray {
            base,
            stride,
            len,
            _borrow: PhantomData,
        }
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no slots (every operation then reports no CPU).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distance in bytes between consecutive slots.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Slot `cpu`, for reading from any CPU (with atomic loads) or for a remote owner after a
    /// fence.
    pub fn get(&self, cpu: usize) -> Option<&'a T> {
        (cpu < self.len).then(|| {
            // SAFETY: `cpu < len`, so by the constructor's guarantee this is a live, aligned
            // `T` borrowed for `'a`.
            unsafe {
                self.base
                    .cast::<u8>()
                    .add(cpu * self.stride)
                    .cast::<T>()
                    .as_ref()
            }
        })
    }

    /// Every slot, in CPU order.
    pub fn iter(&self) -> impl Iterator<Item = &'a T> + '_ {
        (0..self.len).filter_map(|cpu| self.get(cpu))
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom)))]
    pub(crate) fn raw(&self) -> crate::arch::Slots {
        crate::arch::Slots {
            base: self.base.as_ptr().cast(),
            stride: self.stride,
            len: self.len,
        }
    }
}

fn byte_offset<E, T>(element: &E, field: &T) -> usize {
    (field as *const T as *const u8 as usize)
        .wrapping_sub(element as *const E as *const u8 as usize)
}

/// One CPU's bounded stack: `begin <= top <= end` delimit its storage; `[begin, top)` holds
/// the items. Per-CPU pushes decline when `top == end`, pops when `top == begin`.
///
/// A remote owner stops the per-CPU operations on a stack by moving `begin` and `end` to
/// `top` (both checks then decline), fencing the stack's CPU, and re-reading `top`: if it
/// changed, a section committed in between and the stop must be retried. While stopped, the
/// owner may move items and storage freely.
///
/// Restarting takes a second fence. A section reads `top`, then the bound it checks, then
/// commits from the `top` it read; if the owner stored a new `top` and then widened the
/// bounds with no fence between, a section that read the *old* `top` and the *new* bounds
/// would commit from stale state (popping an item already moved away, or pushing over
/// vacated slots). So: store the new `top` while `begin == end` still equal the stopped
/// top, fence, and only then restore `begin` and `end`.
#[repr(C)]
#[derive(Debug)]
pub struct BoundedStack {
    /// One past the newest item.
    pub top: AtomicPtr<u8>,
    /// One past the last byte of storage.
    pub end: AtomicPtr<u8>,
    /// The first byte of storage.
    pub begin: AtomicPtr<u8>,
}

impl BoundedStack {
    /// A stack over nothing: every push declines, every pop declines.
    pub fn empty() -> Self {
        BoundedStack {
            top: AtomicPtr::new(core::ptr::null_mut()),
            end: AtomicPtr::new(core::ptr::null_mut()),
            begin: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

const _: () = {
    assert!(core::mem::offset_of!(BoundedStack, top) == 0);
    assert!(
        core::mem::offset_of!(BoundedStack, end) == 8 || cfg!(not(target_pointer_width = "64"))
    );
    assert!(
        core::mem::offset_of!(BoundedStack, begin) == 16 || cfg!(not(target_pointer_width = "64"))
    );
};

/// Bit 0 of a linked-list head: a remote owner holds the list. Per-CPU pushes and pops
/// decline while it is set (list nodes are at least 2-aligned, so real heads never have it).
pub const LINK_LOCKED: usize = 1;

/// An 8-byte word a per-CPU operation can compare and store.
pub trait SlotWord: Sync + private::Sealed {
    /// The value the word holds.
    type Value: Copy + PartialEq + core::fmt::Debug;
    #[doc(hidden)]
    fn sim_load(&self) -> Self::Value;
    #[doc(hidden)]
    fn sim_store(&self, value: Self::Value);
    #[doc(hidden)]
    fn to_bits(value: Self::Value) -> u64;
    #[doc(hidden)]
    fn from_bits(bits: u64) -> Self::Value;
}

pub(crate) mod private {
    pub trait Sealed {}
}

macro_rules! slot_word {
    ($atomic:ty, $value:ty, |$v:ident| $to:expr, |$b:ident| $from:expr) => {
        impl private::Sealed for $atomic {}
        impl SlotWord for $atomic {
            type Value = $value;
            fn sim_load(&self) -> $value {
                self.load(core::sync::atomic::Ordering::Relaxed)
            }
            fn sim_store(&self, value: $value) {
                self.store(value, core::sync::atomic::Ordering::Relaxed)
            }
            fn to_bits($v: $value) -> u64 {
                $to
            }
            fn from_bits($b: u64) -> $value {
                $from
            }
        }
    };
}

slot_word!(AtomicU64, u64, |v| v, |b| b);
slot_word!(AtomicUsize, usize, |v| v as u64, |b| b as usize);
slot_word!(
    AtomicPtr<u8>,
    *mut u8,
    |v| v.expose_provenance() as u64,
    |b| core::ptr::with_exposed_provenance_mut(b as usize)
);

/// Runs per-CPU operations. Sealed: [`Rseq`](crate::Rseq) and [`Simulated`](crate::Simulated) are the
/// implementations.
///
/// Every operation indexes the slots by the backend's [`IndexBy`], checks the index against
/// the array inside the critical section, and reports [`Outcome::NoCpu`] when it cannot run.
pub trait Backend: Clone + Send + Sync + core::fmt::Debug + private::Sealed {
    /// How many slots a per-CPU array needs so that every CPU has one.
    fn slot_count(&self) -> usize;

    /// The slot index this thread would use now, if it has one. A hint: the thread may
    /// migrate at once.
    fn current_cpu(&self) -> Option<usize>;

    /// `slot += value` (wrapping).
    fn add(&self, slots: SlotArray<'_, AtomicU64>, value: u64) -> Outcome<()>;

    /// If `slot == expected`, `slot = new` and `Ok(())`; else `Err(seen)` and nothing stored.
    fn compare_and_store<W: SlotWord>(
        &self,
        slots: SlotArray<'_, W>,
        expected: W::Value,
        new: W::Value,
    ) -> Outcome<Result<(), W::Value>>;

    /// Pop this CPU's list head: `Ok(node)`, or `Err(head)` when the list is empty (null)
    /// or locked ([`LINK_LOCKED`]).
    ///
    /// # Safety
    /// Every node reachable from any head of `heads` has an `AtomicPtr<u8>` at
    /// `next_offset`, and stays allocated while it is on a list.
    unsafe fn pop_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        next_offset: usize,
    ) -> Outcome<Result<NonNull<u8>, *mut u8>>;

    /// Push `node` on this CPU's list: try-store `node.next = head`, commit `head = node`.
    /// `Err(head)` when the list is locked. The push publishes the node's earlier writes
    /// with release ordering to whoever acquires the head.
    ///
    /// # Safety
    /// As for [`Backend::pop_linked`]; `node` is at least 2-aligned, not on any list, and
    /// nothing else accesses its `next` field until it is popped.
    unsafe fn push_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        node: NonNull<u8>,
        next_offset: usize,
    ) -> Outcome<Result<(), *mut u8>>;

    /// Push one word on this CPU's [`BoundedStack`]: try-store it at `top`, commit
    /// `top += 8`. `Err(item)` (handed back) when full.
    ///
    /// # Safety
    /// Every stack's `begin <= top <= end` delimit 8-byte aligned storage of `AtomicPtr<u8>`
    /// words, live for the call and accessed only through these operations, atomic loads,
    /// or by a remote owner that has stopped the stack.
    unsafe fn push_word(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        item: *mut u8,
    ) -> Outcome<Result<(), *mut u8>>;

    /// Pop one word from this CPU's [`BoundedStack`]; `None` when empty.
    ///
    /// # Safety
    /// As for [`Backend::push_word`].
    unsafe fn pop_word(&self, stacks: SlotArray<'_, BoundedStack>) -> Outcome<Option<*mut u8>>;

    /// Copy-then-commit push: copy `src` to `top` (try-stores), commit `top += src.len()`.
    /// `false` when it does not fit, or when `src` is empty: a section that moved nothing
    /// would still store `top`, which a stopped stack (see [`BoundedStack`]) forbids.
    ///
    /// # Safety
    /// As for [`Backend::push_word`] with byte storage; records are read back only by
    /// [`Backend::pop_copy`] with the same size, except on word stacks, where
    /// [`Backend::push_words`] and [`Backend::pop_words`] mix with the one-word operations.
    unsafe fn push_copy(&self, stacks: SlotArray<'_, BoundedStack>, src: &[u8]) -> Outcome<bool>;

    /// Copy-then-commit pop: copy the `dst.len()` bytes below `top` into `dst`, commit
    /// `top -= dst.len()`. `false` when fewer bytes are stored, or when `dst` is empty (as
    /// for [`Backend::push_copy`]). After an abort `dst` may hold a partial copy.
    ///
    /// # Safety
    /// As for [`Backend::push_copy`].
    unsafe fn pop_copy(&self, stacks: SlotArray<'_, BoundedStack>, dst: &mut [u8])
        -> Outcome<bool>;

    /// Push all of `words` on this CPU's word [`BoundedStack`] in one critical section, in
    /// order (the last is the next [`Backend::pop_word`]), or none of them (`false`) when
    /// they do not fit or `words` is empty: `words.len()` one-word pushes for the price of
    /// one section. It is [`Backend::push_copy`] of the words' bytes: on 8-byte aligned
    /// word storage that leaves exactly what one [`Backend::push_word`] per word would.
    ///
    /// # Safety
    /// As for [`Backend::push_word`]; `words` lies outside every stack's storage.
    #[inline(always)]
    unsafe fn push_words(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        words: &[*mut u8],
    ) -> Outcome<bool> {
        // SAFETY: a byte view of the caller's words (any initialised memory can be read as
        // bytes); the copy moves pointers whole, provenance included, onto word storage the
        // caller vouches for, which is push_copy's contract.
        unsafe {
            let bytes =
                core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), size_of_val(words));
            self.push_copy(stacks, bytes)
        }
    }

    /// Pop `out.len()` words from this CPU's word [`BoundedStack`] in one critical section,
    /// or none (`false`) when it holds fewer or `out` is empty. `out` receives them in
    /// storage order: the one [`Backend::pop_word`] would have returned first is last.
    /// After an abort `out` may hold a partial copy.
    ///
    /// # Safety
    /// As for [`Backend::push_words`].
    #[inline(always)]
    unsafe fn pop_words(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        out: &mut [*mut u8],
    ) -> Outcome<bool> {
        // SAFETY: a byte view of the caller's exclusive buffer; every bit pattern is a valid
        // raw pointer, so whatever the copy leaves there (a partial copy after an abort
        // included) is a valid `*mut u8`. The rest is pop_copy's contract, as above.
        unsafe {
            let bytes =
                core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), size_of_val(out));
            self.pop_copy(stacks, bytes)
        }
    }

    /// Make slot `cpu`'s owner safe to touch from here: abort and wait out any critical section
    /// running on it, and order everything before the fence before every later section there.
    /// Under [`IndexBy::ConcurrencyId`] a slot is not a CPU, so [`Rseq`](crate::Rseq) fences every CPU.
    fn fence_cpu(&self, cpu: usize) -> Result<(), crate::Reason>;

    /// [`Backend::fence_cpu`] for every CPU at once.
    fn fence_all(&self) -> Result<(), crate::Reason>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct PerCpu {
        hits: AtomicU64,
        head: AtomicPtr<u8>,
    }

    fn records(n: usize) -> Vec<PerCpu> {
        (0..n)
            .map(|i| PerCpu {
                hits: AtomicU64::new(i as u64),
                head: AtomicPtr::new(core::ptr::null_mut()),
            })
            .collect()
    }

    #[test]
    fn projection_reaches_each_elements_field() {
        let cpus = records(4);
        let hits = SlotArray::project(&cpus, |c| &c.hits);
        assert_eq!(hits.len(), 4);
        assert_eq!(hits.stride(), size_of::<PerCpu>());
        for (cpu, slot) in hits.iter().enumerate() {
            assert!(core::ptr::eq(slot, &cpus[cpu].hits));
            assert_eq!(
                slot.load(crate::sync::atomic::Ordering::Relaxed),
                cpu as u64
            );
        }
        assert!(hits.get(4).is_none());
        let heads = SlotArray::project(&cpus, |c| &c.head);
        assert!(core::ptr::eq(heads.get(3).unwrap(), &cpus[3].head));
    }

    #[test]
    #[should_panic(expected = "fixed offset")]
    fn projection_outside_the_element_is_refused() {
        static ELSEWHERE: AtomicU64 = AtomicU64::new(0);
        let cpus = records(2);
        let _ = SlotArray::project(&cpus, |_| &ELSEWHERE);
    }

    #[test]
    fn an_empty_projection_has_no_slots() {
        let cpus = records(0);
        let hits = SlotArray::project(&cpus, |c| &c.hits);
        assert!(hits.is_empty());
        assert_eq!(hits.iter().count(), 0);
    }

    #[test]
    fn slot_word_bits_round_trip() {
        assert_eq!(AtomicU64::from_bits(AtomicU64::to_bits(u64::MAX)), u64::MAX);
        assert_eq!(AtomicUsize::from_bits(AtomicUsize::to_bits(12345)), 12345);
    }
}
