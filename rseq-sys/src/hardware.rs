//! The hardware backend: real rseq critical sections, looked up per operation ([`Rseq`]) or
//! once for a stretch of work on one thread ([`PinnedRseq`]).

use crate::ops::{private, Backend, BoundedStack, IndexBy, Outcome, SlotArray, SlotWord};
use crate::sync::atomic::{AtomicPtr, AtomicU64};
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Real rseq critical sections. Indexed by [`IndexBy::CpuId`] unless built with
/// [`Rseq::CONCURRENCY_ID`].
///
/// Each operation finds the calling thread's area (one load and a test under glibc), unless
/// the backend was [`resolved`](Rseq::resolved) at run time while glibc owns rseq: then it
/// carries the process-wide section and reads it from wherever the backend is stored. For a
/// hot loop on one thread, [`Rseq::pin`] finds the area once.
///
/// Two backends are equal when they index by the same field (resolved or not, they address
/// the same slots).
#[derive(Debug, Clone, Copy)]
pub struct Rseq {
    index: IndexBy,
    shared: Option<SharedSection>,
}

impl PartialEq for Rseq {
    fn eq(&self, other: &Rseq) -> bool {
        self.index == other.index
    }
}

impl Eq for Rseq {}

impl core::hash::Hash for Rseq {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.index.hash(state);
    }
}

impl Default for Rseq {
    fn default() -> Self {
        Rseq::CPU_ID
    }
}

impl Rseq {
    /// Slots indexed by `cpu_id`.
    pub const CPU_ID: Rseq = Rseq {
        index: IndexBy::CpuId,
        shared: None,
    };
    /// Slots indexed by `mm_cid` where promised (see [`IndexBy::ConcurrencyId`]).
    pub const CONCURRENCY_ID: Rseq = Rseq {
        index: IndexBy::ConcurrencyId,
        shared: None,
    };

    /// This backend carrying the [`shared`](Rseq::shared) section when there is one: each
    /// operation then takes the section from the backend value itself (typically on the
    /// same cache line as the structure's own fields) instead of looking up the thread's
    /// area through rseq-sys's statics. Structures built at run time resolve their backend
    /// once; the `const` ones cannot, and look the area up per operation.
    ///
    /// ```
    /// use rseq_sys::{Backend, Rseq};
    ///
    /// let backend = Rseq::CPU_ID.resolved();
    /// assert_eq!(backend, Rseq::CPU_ID);
    /// assert_eq!(backend.is_resolved(), rseq_sys::owner() == rseq_sys::Owner::Glibc);
    /// ```
    pub fn resolved(self) -> Rseq {
        Rseq {
            index: self.index,
            shared: self.shared(),
        }
    }

    /// Whether this backend carries the process-wide section (see [`resolved`](Rseq::resolved)).
    pub fn is_resolved(&self) -> bool {
        self.shared.is_some()
    }

    /// The field this backend indexes by.
    pub const fn index_by(&self) -> IndexBy {
        self.index
    }

    /// This thread's section, found once: `None` when this thread has no rseq (every
    /// operation would report [`Outcome::NoCpu`]).
    ///
    /// ```
    /// use rseq_sys::{Backend, Outcome, Rseq, SlotArray};
    /// use std::sync::atomic::AtomicU64;
    ///
    /// let slots: Vec<AtomicU64> = (0..Rseq::CPU_ID.slot_count()).map(|_| AtomicU64::new(0)).collect();
    /// if let Some(pinned) = Rseq::CPU_ID.pin() {
    ///     for _ in 0..1000 {
    ///         while pinned.add(SlotArray::from_slice(&slots), 1) == Outcome::Aborted {}
    ///     }
    /// }
    /// ```
    #[inline]
    pub fn pin(&self) -> Option<PinnedRseq> {
        imp::pin(self.index)
    }

    /// The section every thread of the process uses, when there is one: only while glibc
    /// owns the registration, because glibc places every thread's area at the same offset
    /// from its thread pointer (`__rseq_offset`). `None` when rseq-sys registers itself (an
    /// area is a thread's own, and where it sits depends on how this library was loaded)
    /// or rseq is unavailable.
    ///
    /// Unlike [`PinnedRseq`] the handle is `Send` and `Sync`, so a structure can find it
    /// once and keep it in a `static` next to its own data: an allocator's fast path then
    /// reads one line instead of rseq-sys's statics as well. A thread whose registration
    /// failed, or that is starting or exiting, reads a negative CPU id through it and gets
    /// [`Outcome::NoCpu`], as through [`Rseq`].
    ///
    /// ```
    /// use rseq_sys::{Backend, Outcome, Rseq, SlotArray};
    /// use std::sync::atomic::AtomicU64;
    ///
    /// let slots: Vec<AtomicU64> = (0..Rseq::CPU_ID.slot_count()).map(|_| AtomicU64::new(0)).collect();
    /// if let Some(shared) = Rseq::CPU_ID.shared() {
    ///     std::thread::scope(|s| {
    ///         s.spawn(|| while shared.add(SlotArray::from_slice(&slots), 1) == Outcome::Aborted {});
    ///     });
    /// }
    /// ```
    #[inline]
    pub fn shared(&self) -> Option<SharedSection> {
        imp::shared(self.index)
    }
}

/// [`Rseq`] with the process-wide section found once: see [`Rseq::shared`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedSection {
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom))),
        allow(dead_code)
    )]
    section: imp::Pinned,
}

/// [`Rseq`] with the calling thread's section found once. Not `Send`: it describes this
/// thread's rseq area.
///
/// If the thread's registration ends while a handle lives (the last
/// [`Registration`](crate::Registration) guard of a self-registered thread drops), its
/// `cpu_id` reads "unregistered" and every operation reports [`Outcome::NoCpu`]: never a
/// write to a slot.
#[derive(Debug, Clone, Copy)]
pub struct PinnedRseq {
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom))),
        allow(dead_code)
    )]
    section: imp::Pinned,
    _not_send: PhantomData<*mut ()>,
}

impl private::Sealed for Rseq {}

macro_rules! forward_to_sections {
    () => {
        /// The slot index this section's thread has now (the field the section indexes by),
        /// `None` while it is negative. A hint, as [`Backend::current_cpu`]: the thread may
        /// migrate at once. One load, with no lookup of the thread's area.
        #[inline(always)]
        pub fn current_cpu(&self) -> Option<usize> {
            imp::section_index(self.section)
        }

        /// [`Backend::add`] on this thread's section.
        #[inline(always)]
        pub fn add(&self, slots: SlotArray<'_, AtomicU64>, value: u64) -> Outcome<()> {
            imp::add(self.section, slots, value)
        }

        /// [`Backend::compare_and_store`] on this thread's section.
        #[inline(always)]
        pub fn compare_and_store<W: SlotWord>(
            &self,
            slots: SlotArray<'_, W>,
            expected: W::Value,
            new: W::Value,
        ) -> Outcome<Result<(), W::Value>> {
            imp::compare_and_store(self.section, slots, expected, new)
        }

        /// [`Backend::pop_linked`] on this thread's section.
        ///
        /// # Safety
        /// As for [`Backend::pop_linked`].
        #[inline(always)]
        pub unsafe fn pop_linked(
            &self,
            heads: SlotArray<'_, AtomicPtr<u8>>,
            next_offset: usize,
        ) -> Outcome<Result<NonNull<u8>, *mut u8>> {
            // SAFETY: the caller upholds `Backend::pop_linked`'s contract.
            unsafe { imp::pop_linked(self.section, heads, next_offset) }
        }

        /// [`Backend::push_linked`] on this thread's section.
        ///
        /// # Safety
        /// As for [`Backend::push_linked`].
        #[inline(always)]
        pub unsafe fn push_linked(
            &self,
            heads: SlotArray<'_, AtomicPtr<u8>>,
            node: NonNull<u8>,
            next_offset: usize,
        ) -> Outcome<Result<(), *mut u8>> {
            // SAFETY: the caller upholds `Backend::push_linked`'s contract.
            unsafe { imp::push_linked(self.section, heads, node, next_offset) }
        }

        /// [`Backend::push_word`] on this thread's section.
        ///
        /// # Safety
        /// As for [`Backend::push_word`].
        #[inline(always)]
        pub unsafe fn push_word(
            &self,
            stacks: SlotArray<'_, BoundedStack>,
            item: *mut u8,
        ) -> Outcome<Result<(), *mut u8>> {
            // SAFETY: the caller upholds `Backend::push_word`'s contract.
            unsafe { imp::push_word(self.section, stacks, item) }
        }

        /// [`Backend::push_word`] on this thread's section, answering only whether the
        /// word was pushed: `false` when the push did not complete (aborted, no CPU, full
        /// stack), and the word is still the caller's. For callers that take one slow path
        /// for every kind of failure (an allocator's free, which pushes again with
        /// [`push_word`](Self::push_word) to learn why): the section leaves through labels,
        /// so a completed push decodes no status.
        ///
        /// # Safety
        /// As for [`Backend::push_word`].
        #[inline(always)]
        pub unsafe fn try_push_word(
            &self,
            stacks: SlotArray<'_, BoundedStack>,
            item: *mut u8,
        ) -> bool {
            // SAFETY: the caller upholds `Backend::push_word`'s contract.
            unsafe { imp::try_push_word(self.section, stacks, item) }
        }

        /// [`Backend::push_word`] onto slot `cpu`'s stack, only while the thread runs
        /// there: [`Outcome::NoCpu`] when it runs on another slot (or none, or `cpu` is past
        /// the array), checked inside the section, so an object meant for one CPU's cache
        /// never lands in another's. Knowing the CPU in advance lets the section leave
        /// through labels (no status to decode), which makes this the cheaper push when the
        /// caller has a CPU in mind, as an allocator freeing an object to the CPU that owns
        /// it does.
        ///
        /// # Safety
        /// As for [`Backend::push_word`].
        #[inline(always)]
        pub unsafe fn push_word_on(
            &self,
            stacks: SlotArray<'_, BoundedStack>,
            cpu: usize,
            item: *mut u8,
        ) -> Outcome<Result<(), *mut u8>> {
            // SAFETY: the caller upholds `Backend::push_word`'s contract.
            unsafe { imp::push_word_on(self.section, stacks, cpu, item) }
        }

        /// [`push_word_on`](Self::push_word_on) onto the stack at `stack`, the caller's
        /// stack for CPU `cpu` found some other way than through a [`SlotArray`] (an
        /// allocator that keeps the address next to the CPU, say). The section reads
        /// `stack` only after confirming that the thread runs on `cpu`; elsewhere it
        /// reports [`Outcome::NoCpu`] and `stack` may be anything.
        ///
        /// # Safety
        /// Whenever the calling thread runs on CPU `cpu` (as this handle's index field
        /// counts CPUs), `stack` points to a live [`BoundedStack`] that meets
        /// [`Backend::push_word`]'s contract for that CPU's slot: its storage is live, and
        /// nothing but critical sections on CPU `cpu` and atomic loads touch it.
        #[inline(always)]
        pub unsafe fn push_word_on_stack(
            &self,
            stack: *const BoundedStack,
            cpu: usize,
            item: *mut u8,
        ) -> Outcome<Result<(), *mut u8>> {
            // SAFETY: forwarded from the caller.
            unsafe { imp::push_word_on_stack(self.section, stack, cpu, item) }
        }

        /// [`Backend::pop_word`] on this thread's section, answering with the word alone:
        /// `None` when the pop did not complete (aborted, no CPU, empty stack) or popped a
        /// null word. For stacks of non-null words whose callers take one slow path for
        /// every kind of failure (an allocator's refill, which pops again with
        /// [`pop_word`](Self::pop_word) to learn why): one test of the word replaces the
        /// status decode.
        ///
        /// # Safety
        /// As for [`Backend::pop_word`].
        #[inline(always)]
        pub unsafe fn try_pop_word(
            &self,
            stacks: SlotArray<'_, BoundedStack>,
        ) -> Option<NonNull<u8>> {
            // SAFETY: the caller upholds `Backend::pop_word`'s contract.
            unsafe { imp::try_pop_word(self.section, stacks) }
        }

        /// [`Backend::pop_word`] on this thread's section.
        ///
        /// # Safety
        /// As for [`Backend::pop_word`].
        #[inline(always)]
        pub unsafe fn pop_word(
            &self,
            stacks: SlotArray<'_, BoundedStack>,
        ) -> Outcome<Option<*mut u8>> {
            // SAFETY: the caller upholds `Backend::pop_word`'s contract.
            unsafe { imp::pop_word(self.section, stacks) }
        }
    };
}

impl PinnedRseq {
    forward_to_sections!();
}

impl SharedSection {
    forward_to_sections!();
}

cfg_if::cfg_if! {
    if #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom)))] {
        mod imp {
            use super::*;
            use crate::arch::{self, Section, ABORTED, COMPLETED, DECLINED, NO_CPU};

            pub(super) type Pinned = Section;

            pub(super) fn pin(index: IndexBy) -> Option<PinnedRseq> {
                crate::os::run_in_section(index, |section| PinnedRseq { section, _not_send: PhantomData })
            }

            pub(super) fn shared(index: IndexBy) -> Option<SharedSection> {
                crate::os::glibc_section(index).map(|section| SharedSection { section })
            }

            /// Aborts and "no CPU" are rare: marked cold, they stay off the straight line.
            #[inline(always)]
            fn outcome<T>(status: u32, cpu: usize, value: impl FnOnce(bool) -> T) -> Outcome<T> {
                match status {
                    COMPLETED => Outcome::Completed { cpu, value: value(false) },
                    DECLINED => Outcome::Completed { cpu, value: value(true) },
                    ABORTED => {
                        std::hint::cold_path();
                        Outcome::Aborted
                    }
                    status => {
                        std::hint::cold_path();
                        debug_assert_eq!(status, NO_CPU);
                        Outcome::NoCpu
                    }
                }
            }

            #[inline(always)]
            pub(super) fn add(section: Section, slots: SlotArray<'_, AtomicU64>, value: u64) -> Outcome<()> {
                // SAFETY: the section is this thread's; SlotArray guarantees `len` live,
                // aligned AtomicU64 slots, which the section updates like a relaxed RMW.
                let (status, cpu) = unsafe { arch::add(section, slots.raw(), value) };
                outcome(status, cpu, |_| ())
            }

            #[inline(always)]
            pub(super) fn compare_and_store<W: SlotWord>(section: Section, slots: SlotArray<'_, W>, expected: W::Value, new: W::Value) -> Outcome<Result<(), W::Value>> {
                const { assert!(core::mem::size_of::<W>() == 8) };
                // SAFETY: as for `add`, with 8-byte atomic slots (asserted above).
                let (status, cpu, seen) = unsafe { arch::compare_and_store(section, slots.raw(), W::to_bits(expected), W::to_bits(new)) };
                outcome(status, cpu, |declined| if declined { Err(W::from_bits(seen)) } else { Ok(()) })
            }

            /// # Safety
            /// As for [`Backend::pop_linked`].
            #[inline(always)]
            pub(super) unsafe fn pop_linked(section: Section, heads: SlotArray<'_, AtomicPtr<u8>>, next_offset: usize) -> Outcome<Result<NonNull<u8>, *mut u8>> {
                // SAFETY: the caller guarantees every listed node has a next field at
                // `next_offset`; SlotArray guarantees the heads.
                let (status, cpu, head) = unsafe { arch::pop_linked(section, heads.raw(), next_offset) };
                outcome(status, cpu, |declined| match NonNull::new(head) {
                    Some(node) if !declined => Ok(node),
                    _ => Err(head),
                })
            }

            /// # Safety
            /// As for [`Backend::push_linked`].
            #[inline(always)]
            pub(super) unsafe fn push_linked(section: Section, heads: SlotArray<'_, AtomicPtr<u8>>, node: NonNull<u8>, next_offset: usize) -> Outcome<Result<(), *mut u8>> {
                // SAFETY: the caller owns `node` and its next field; SlotArray guarantees the
                // heads.
                let (status, cpu, head) = unsafe { arch::push_linked(section, heads.raw(), node.as_ptr(), next_offset) };
                outcome(status, cpu, |declined| if declined { Err(head) } else { Ok(()) })
            }

            /// # Safety
            /// As for [`Backend::push_word`].
            #[inline(always)]
            pub(super) unsafe fn push_word(section: Section, stacks: SlotArray<'_, BoundedStack>, item: *mut u8) -> Outcome<Result<(), *mut u8>> {
                // SAFETY: the caller guarantees each stack's storage.
                let (status, cpu) = unsafe { arch::push_word(section, stacks.raw(), item) };
                outcome(status, cpu, |declined| if declined { Err(item) } else { Ok(()) })
            }

            /// # Safety
            /// As for [`Backend::push_word`].
            #[inline(always)]
            pub(super) unsafe fn push_word_on(section: Section, stacks: SlotArray<'_, BoundedStack>, cpu: usize, item: *mut u8) -> Outcome<Result<(), *mut u8>> {
                if cpu >= stacks.len() {
                    std::hint::cold_path();
                    return Outcome::NoCpu;
                }
                // SAFETY: the caller guarantees each stack's storage, and `cpu` is one of
                // the array's slots (checked just above).
                let status = unsafe { arch::push_word_on(section, stacks.raw(), cpu, item) };
                outcome(status, cpu, |declined| if declined { Err(item) } else { Ok(()) })
            }

            /// # Safety
            /// As for `push_word_on_stack` on the handles.
            #[inline(always)]
            pub(super) unsafe fn push_word_on_stack(section: Section, stack: *const BoundedStack, cpu: usize, item: *mut u8) -> Outcome<Result<(), *mut u8>> {
                // SAFETY: forwarded from the caller.
                let status = unsafe { arch::push_word_on_header(section, stack.cast_mut().cast::<u8>(), cpu, item) };
                outcome(status, cpu, |declined| if declined { Err(item) } else { Ok(()) })
            }

            /// # Safety
            /// As for [`Backend::pop_word`].
            #[inline(always)]
            pub(super) unsafe fn pop_word(section: Section, stacks: SlotArray<'_, BoundedStack>) -> Outcome<Option<*mut u8>> {
                // SAFETY: the caller guarantees each stack's storage.
                let (status, cpu, item) = unsafe { arch::pop_word(section, stacks.raw()) };
                outcome(status, cpu, |declined| (!declined).then_some(item))
            }

            /// # Safety
            /// As for [`Backend::push_word`].
            #[inline(always)]
            pub(super) unsafe fn try_push_word(section: Section, stacks: SlotArray<'_, BoundedStack>, item: *mut u8) -> bool {
                // SAFETY: the caller guarantees each stack's storage.
                unsafe { arch::try_push_word(section, stacks.raw(), item) }
            }

            /// # Safety
            /// As for [`Backend::pop_word`].
            #[inline(always)]
            pub(super) unsafe fn try_pop_word(section: Section, stacks: SlotArray<'_, BoundedStack>) -> Option<NonNull<u8>> {
                // SAFETY: the caller guarantees each stack's storage.
                NonNull::new(unsafe { arch::try_pop_word(section, stacks.raw()) })
            }

            /// # Safety
            /// As for [`Backend::push_copy`].
            #[inline(always)]
            pub(super) unsafe fn push_copy(section: Section, stacks: SlotArray<'_, BoundedStack>, src: &[u8]) -> Outcome<bool> {
                // SAFETY: the caller guarantees each stack's storage; `src` is a live slice.
                let (status, cpu) = unsafe { arch::push_copy(section, stacks.raw(), src.as_ptr(), src.len()) };
                outcome(status, cpu, |declined| !declined)
            }

            /// # Safety
            /// As for [`Backend::pop_copy`].
            #[inline(always)]
            pub(super) unsafe fn pop_copy(section: Section, stacks: SlotArray<'_, BoundedStack>, dst: &mut [u8]) -> Outcome<bool> {
                // SAFETY: the caller guarantees each stack's storage; `dst` is a live,
                // exclusive slice.
                let (status, cpu) = unsafe { arch::pop_copy(section, stacks.raw(), dst.as_mut_ptr(), dst.len()) };
                outcome(status, cpu, |declined| !declined)
            }

            /// Run `op` on the backend's shared section if it carries one (its own copy of
            /// `op`, as `run_in_section` gives each of its paths), else on this thread's
            /// section, or report no CPU.
            #[inline(always)]
            pub(super) fn per_operation<T>(index: IndexBy, shared: Option<SharedSection>, op: impl Fn(Section) -> Outcome<T>) -> Outcome<T> {
                if let Some(shared) = shared {
                    return op(shared.section);
                }
                crate::os::run_in_section(index, op).unwrap_or(Outcome::NoCpu)
            }

            #[inline]
            pub(super) fn current_cpu(index: IndexBy) -> Option<usize> {
                crate::os::current_index(index)
            }

            #[inline(always)]
            pub(super) fn section_index(section: Section) -> Option<usize> {
                // SAFETY: a handle's section is the calling thread's area: glibc's, which
                // every thread has, for a `SharedSection`; for a `PinnedRseq` (not `Send`) the
                // area it was made for, which stays mapped while the thread lives even after
                // its registration ends (the field then reads negative). Either way the
                // index field is a 4-byte field inside memory of this thread.
                let id = unsafe { section.read_index() };
                ((id as i32) >= 0).then_some(id as usize)
            }
        }
    } else {
        mod imp {
            use super::*;

            /// No section exists on this target; a `PinnedRseq` is never built.
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub(super) enum Pinned {}

            pub(super) fn pin(_: IndexBy) -> Option<PinnedRseq> {
                None
            }
            pub(super) fn shared(_: IndexBy) -> Option<SharedSection> {
                None
            }
            pub(super) fn add(section: Pinned, _: SlotArray<'_, AtomicU64>, _: u64) -> Outcome<()> {
                match section {}
            }
            pub(super) fn compare_and_store<W: SlotWord>(section: Pinned, _: SlotArray<'_, W>, _: W::Value, _: W::Value) -> Outcome<Result<(), W::Value>> {
                match section {}
            }
            pub(super) unsafe fn pop_linked(section: Pinned, _: SlotArray<'_, AtomicPtr<u8>>, _: usize) -> Outcome<Result<NonNull<u8>, *mut u8>> {
                match section {}
            }
            pub(super) unsafe fn push_linked(section: Pinned, _: SlotArray<'_, AtomicPtr<u8>>, _: NonNull<u8>, _: usize) -> Outcome<Result<(), *mut u8>> {
                match section {}
            }
            pub(super) unsafe fn push_word(section: Pinned, _: SlotArray<'_, BoundedStack>, _: *mut u8) -> Outcome<Result<(), *mut u8>> {
                match section {}
            }
            pub(super) unsafe fn push_word_on(section: Pinned, _: SlotArray<'_, BoundedStack>, _: usize, _: *mut u8) -> Outcome<Result<(), *mut u8>> {
                match section {}
            }
            pub(super) unsafe fn push_word_on_stack(section: Pinned, _: *const BoundedStack, _: usize, _: *mut u8) -> Outcome<Result<(), *mut u8>> {
                match section {}
            }
            pub(super) unsafe fn pop_word(section: Pinned, _: SlotArray<'_, BoundedStack>) -> Outcome<Option<*mut u8>> {
                match section {}
            }
            pub(super) unsafe fn try_push_word(section: Pinned, _: SlotArray<'_, BoundedStack>, _: *mut u8) -> bool {
                match section {}
            }
            pub(super) unsafe fn try_pop_word(section: Pinned, _: SlotArray<'_, BoundedStack>) -> Option<NonNull<u8>> {
                match section {}
            }
            pub(super) unsafe fn push_copy(section: Pinned, _: SlotArray<'_, BoundedStack>, _: &[u8]) -> Outcome<bool> {
                match section {}
            }
            pub(super) unsafe fn pop_copy(section: Pinned, _: SlotArray<'_, BoundedStack>, _: &mut [u8]) -> Outcome<bool> {
                match section {}
            }
            pub(super) fn per_operation<T>(_: IndexBy, _: Option<SharedSection>, _: impl Fn(Pinned) -> Outcome<T>) -> Outcome<T> {
                Outcome::NoCpu
            }
            pub(super) fn current_cpu(_: IndexBy) -> Option<usize> {
                None
            }
            pub(super) fn section_index(section: Pinned) -> Option<usize> {
                match section {}
            }
        }
    }
}

impl Backend for Rseq {
    #[inline]
    fn slot_count(&self) -> usize {
        crate::possible_cpus()
    }

    #[inline]
    fn current_cpu(&self) -> Option<usize> {
        imp::current_cpu(self.index).filter(|&id| id < self.slot_count())
    }

    #[inline(always)]
    fn add(&self, slots: SlotArray<'_, AtomicU64>, value: u64) -> Outcome<()> {
        imp::per_operation(self.index, self.shared, |section| {
            imp::add(section, slots, value)
        })
    }

    #[inline(always)]
    fn compare_and_store<W: SlotWord>(
        &self,
        slots: SlotArray<'_, W>,
        expected: W::Value,
        new: W::Value,
    ) -> Outcome<Result<(), W::Value>> {
        imp::per_operation(self.index, self.shared, |section| {
            imp::compare_and_store(section, slots, expected, new)
        })
    }

    #[inline(always)]
    unsafe fn pop_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        next_offset: usize,
    ) -> Outcome<Result<NonNull<u8>, *mut u8>> {
        // SAFETY: the caller upholds this method's contract, which is `imp::pop_linked`'s.
        imp::per_operation(self.index, self.shared, |section| unsafe {
            imp::pop_linked(section, heads, next_offset)
        })
    }

    #[inline(always)]
    unsafe fn push_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        node: NonNull<u8>,
        next_offset: usize,
    ) -> Outcome<Result<(), *mut u8>> {
        // SAFETY: the caller upholds this method's contract, which is `imp::push_linked`'s.
        imp::per_operation(self.index, self.shared, |section| unsafe {
            imp::push_linked(section, heads, node, next_offset)
        })
    }

    #[inline(always)]
    unsafe fn push_word(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        item: *mut u8,
    ) -> Outcome<Result<(), *mut u8>> {
        // SAFETY: the caller upholds this method's contract, which is `imp::push_word`'s.
        imp::per_operation(self.index, self.shared, |section| unsafe {
            imp::push_word(section, stacks, item)
        })
    }

    #[inline(always)]
    unsafe fn pop_word(&self, stacks: SlotArray<'_, BoundedStack>) -> Outcome<Option<*mut u8>> {
        // SAFETY: the caller upholds this method's contract, which is `imp::pop_word`'s.
        imp::per_operation(self.index, self.shared, |section| unsafe {
            imp::pop_word(section, stacks)
        })
    }

    #[inline(always)]
    unsafe fn push_copy(&self, stacks: SlotArray<'_, BoundedStack>, src: &[u8]) -> Outcome<bool> {
        // SAFETY: the caller upholds this method's contract, which is `imp::push_copy`'s.
        imp::per_operation(self.index, self.shared, |section| unsafe {
            imp::push_copy(section, stacks, src)
        })
    }

    #[inline(always)]
    unsafe fn pop_copy(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        dst: &mut [u8],
    ) -> Outcome<bool> {
        let (ptr, len) = (dst.as_mut_ptr(), dst.len());
        imp::per_operation(self.index, self.shared, |section| {
            // SAFETY: the caller upholds this method's contract; `ptr`/`len` describe the
            // caller's exclusive `dst`, re-borrowed for this one call (the closure runs once).
            unsafe { imp::pop_copy(section, stacks, core::slice::from_raw_parts_mut(ptr, len)) }
        })
    }

    fn fence_cpu(&self, cpu: usize) -> Result<(), crate::Reason> {
        match self.index {
            IndexBy::CpuId => crate::os::fence(Some(cpu)),
            // A concurrency id is not a CPU: the slot's owner may run anywhere.
            IndexBy::ConcurrencyId => crate::os::fence(None),
        }
    }

    fn fence_all(&self) -> Result<(), crate::Reason> {
        crate::os::fence(None)
    }
}
