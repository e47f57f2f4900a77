//! A bounded per-CPU buffer of boxed items: one array stack of pointers per CPU, pushed with
//! the try-store-then-commit primitive ([`Backend::push_word`]) and popped with
//! [`Backend::pop_word`].
//!
//! The protocol that lets another CPU take items is in [`PerCpuBuffer`]'s docs.

use crate::fallback::FallbackWords;
use crate::steal::{FenceSupport, ThiefGuard, STEAL_BATCH};
use rseq_sys::sync::atomic::{fence, AtomicBool, AtomicPtr, Ordering};
use rseq_sys::{Backend, BoundedStack, Outcome, Rseq, SlotArray};
use std::marker::PhantomData;
use std::ptr::NonNull;

const WORD: usize = size_of::<*mut u8>();
const WORDS_PER_LINE: usize = 8;

/// Eight words on their own 64-byte line: each CPU's storage starts on a fresh line.
#[repr(C, align(64))]
struct Line([AtomicPtr<u8>; WORDS_PER_LINE]);

/// One CPU's stack header and its thief flag, on lines of their own.
#[repr(C, align(128))]
struct CpuStack {
    stack: BoundedStack,
    thief: AtomicBool,
}

/// A bounded per-CPU LIFO buffer of `Box<T>`.
///
/// Each CPU has room for `capacity` items; [`push`](PerCpuBuffer::push) hands the item back
/// when the current CPU's stack is full. A thread without a CPU uses its fallback stripe,
/// a mutex-protected stack of the same capacity. [`pop`](PerCpuBuffer::pop) takes this
/// CPU's newest item, else the fallback's (the thread's stripe first), else steals from
/// another CPU (protocol below).
///
/// Order: LIFO per CPU; no global order. Memory: `capacity` words per CPU, allocated up
/// front, plus up to `capacity` words per fallback stripe (one stripe per CPU, rounded up to
/// a power of two), allocated only when a thread without a CPU pushes.
///
/// # Steal protocol (membarrier fence)
///
/// A per-CPU push declines when `top >= end`, a pop when `top <= begin`. A thief (the only
/// one for that CPU: a flag per slot) stops a stack by narrowing it to its top:
///
/// 1. read `t = top`; store `begin = t` and `end = t`;
/// 2. [`Backend::fence_all`]: sections in flight abort; later sections see the narrowed
///    bounds, and with `top == t` every push and every pop declines;
/// 3. re-read `top`: equal to `t` means the stack is stopped and `[storage, t)` holds exactly
///    its items, whatever committed before the fence; different means a section committed
///    between steps 1 and 2, so go back to 1 with the new top;
/// 4. take the newest item for the caller and move up to 15 more onto the
///    thief's own CPU while they fit (a push there declines when full, or when the thief
///    runs on the victim itself);
/// 5. lower `top` below the taken items, with a release store, leaving `begin == end == t`:
///    a section that reads the new top can push into the slots just vacated (they were read
///    already) but cannot pop; one that read the old top `t` declines both ways;
/// 6. [`Backend::fence_all`] again: no section still holds the old top `t`;
/// 7. restore `begin` and `end` to the storage bounds with release stores.
///
/// Step 6 is what makes the restart safe. A section loads `top`, then the bound it checks,
/// and commits `top` plus or minus one word computed from the `top` it loaded (the x86_64
/// asm and the simulator alike). Atomicity holds only against its own CPU, so a section on
/// the victim can load `top == t` before the thief's step 5 and `begin` after step 7: it
/// then pops the word at `t - 1`, which the thief has already handed out, and commits
/// `top = t - 1`, which puts back the words the thief moved away; a push likewise commits
/// `t + 1` over the emptied slots. Either way an item comes out twice. No order of the
/// three stores closes that window, because the section's loads straddle all of them;
/// only a fence between lowering `top` and widening the bounds retires every section that
/// saw the old top. So a steal costs two fences, for a batch of up to 16 items.
///
/// Without fences the thief puts `begin` and `end` back at step 2 (untouched `top`, so any
/// section that ran in between merely declined) and stealing stays off. Should the second
/// fence fail, the stack stays as step 5 left it, which is safe for good: pushes fill it up
/// to `t`, pops decline, and [`drain`](PerCpuBuffer::drain) still returns its items.
pub struct PerCpuBuffer<T, B: Backend = Rseq> {
    cpus: Box<[CpuStack]>,
    // Referenced through the stack headers' pointers. A Vec rather than a Box: moving a Box
    // asserts unique access under Miri's aliasing models, which those pointers would violate.
    storage: Vec<Line>,
    fallback: FallbackWords,
    fences: FenceSupport,
    capacity: usize,
    backend: B,
    _items: PhantomData<std::sync::Mutex<Box<T>>>,
}

impl<T, B: Backend> core::fmt::Debug for PerCpuBuffer<T, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuBuffer")
            .field("cpus", &self.cpus.len())
            .field("capacity", &self.capacity)
            .field("backend", &self.backend)
            .finish()
    }
}

impl<T> PerCpuBuffer<T, Rseq> {
    /// A buffer holding up to `capacity` items per CPU, on real rseq indexed by CPU id (the
    /// backend [resolved](Rseq::resolved) once).
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_backend(Rseq::CPU_ID.resolved(), capacity)
    }
}

impl<T, B: Backend> PerCpuBuffer<T, B> {
    /// A buffer holding up to `capacity` items per CPU, running on `backend`.
    ///
    /// # Panics
    /// If `AtomicPtr<u8>` is not one machine word: the backend's stack operations step
    /// through storage one word at a time. std's is, and so is loom's (an index into its
    /// model), which lets loom run this buffer on the simulated backend.
    pub fn with_backend(backend: B, capacity: usize) -> Self {
        assert_eq!(
            size_of::<AtomicPtr<u8>>(),
            WORD,
            "bounded stacks need word-sized atomics"
        );
        let cpu_count = backend.slot_count();
        let lines_per_cpu = capacity.div_ceil(WORDS_PER_LINE);
        let storage: Vec<Line> = (0..cpu_count * lines_per_cpu)
            .map(|_| {
                Line(std::array::from_fn(
                    |_| AtomicPtr::new(std::ptr::null_mut()),
                ))
            })
            .collect();
        let base = storage.as_ptr().cast::<u8>().cast_mut();
        let cpus = (0..cpu_count)
            .map(|cpu| {
                // `wrapping_add` keeps the provenance of the whole storage slice.
                let begin = base.wrapping_add(cpu * lines_per_cpu * size_of::<Line>());
                CpuStack {
                    stack: BoundedStack {
                        top: AtomicPtr::new(begin),
                        end: AtomicPtr::new(begin.wrapping_add(capacity * WORD)),
                        begin: AtomicPtr::new(begin),
                    },
                    thief: AtomicBool::new(false),
                }
            })
            .collect();
        PerCpuBuffer {
            cpus,
            storage,
            fallback: FallbackWords::new(cpu_count, capacity),
            fences: FenceSupport::new(),
            capacity,
            backend,
            _items: PhantomData,
        }
    }

    /// Items each CPU's stack (and the fallback) can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The backend this buffer runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    #[inline(always)]
    fn stacks(&self) -> SlotArray<'_, BoundedStack> {
        let base = NonNull::from(&*self.cpus).cast::<BoundedStack>();
        // SAFETY: `CpuStack` is `repr(C)` with `stack` first, so `base + c * size_of::<CpuStack>()`
        // is CPU `c`'s header for every `c < len`; the pointer comes from the whole boxed
        // slice, borrowed as long as `&self`.
        unsafe { SlotArray::from_raw_parts(base, size_of::<CpuStack>(), self.cpus.len()) }
    }

    /// The storage bounds CPU `cpu`'s stack was built with.
    fn bounds(&self, cpu: usize) -> (*mut u8, *mut u8) {
        let lines_per_cpu = self.capacity.div_ceil(WORDS_PER_LINE);
        let begin = self
            .storage
            .as_ptr()
            .cast::<u8>()
            .cast_mut()
            .wrapping_add(cpu * lines_per_cpu * size_of::<Line>());
        (begin, begin.wrapping_add(self.capacity * WORD))
    }

    /// Put `item` on the current CPU's stack (or the fallback without a CPU); `Err(item)`
    /// when that stack is full.
    #[inline(always)]
    pub fn push(&self, item: Box<T>) -> Result<(), Box<T>> {
        let word = NonNull::from(Box::leak(item)).cast::<u8>();
        match self.push_word(word) {
            Ok(()) => Ok(()),
            // SAFETY: a word handed back was never stored: it is still the Box we leaked.
            Err(word) => Err(unsafe { Box::from_raw(word.cast::<T>().as_ptr()) }),
        }
    }

    #[inline(always)]
    fn push_word(&self, word: NonNull<u8>) -> Result<(), NonNull<u8>> {
        loop {
            // SAFETY: each header's `top`, `begin` and `end` point into its own CPU's
            // 8-aligned words of `storage` (live as long as `&self`, accessed only
            // atomically), `end` at most one past them: the thief only narrows `begin`/`end`
            // to a `top` it read, lowers `top` to a word it has emptied, and restores the
            // storage bounds. So a push that passes `top < end` writes a free word of this
            // stack and a pop that passes `top > begin` reads an item of it, even while `top`
            // sits below the narrowed bounds (steps 1 and 5 of the protocol).
            match unsafe { self.backend.push_word(self.stacks(), word.as_ptr()) } {
                Outcome::Completed { value: Ok(()), .. } => return Ok(()),
                Outcome::Aborted => continue,
                Outcome::Completed { value: Err(_), cpu } => {
                    // Full, or stopped by a thief: a stopped stack is not full, so let the
                    // fallback take it rather than hand back an item that would have fit.
                    if self.cpus[cpu].thief.load(Ordering::Relaxed) {
                        return self.fallback.push(word);
                    }
                    return Err(word);
                }
                Outcome::NoCpu => return self.fallback.push(word),
            }
        }
    }

    /// Take an item: this CPU's newest, else the fallback's, else one stolen from another
    /// CPU. `None` when none of those had one (or, without fences, when only other CPUs do).
    #[inline(always)]
    pub fn pop(&self) -> Option<Box<T>> {
        let word = match self.pop_local_word() {
            Some(word) => word,
            None => self.pop_slow()?,
        };
        // SAFETY: every stored word is a Box<T> leaked by `push`, handed out once.
        Some(unsafe { Box::from_raw(word.cast::<T>().as_ptr()) })
    }

    #[inline(always)]
    fn pop_local_word(&self) -> Option<NonNull<u8>> {
        loop {
            // SAFETY: as in `push_word`.
            match unsafe { self.backend.pop_word(self.stacks()) } {
                Outcome::Completed {
                    value: Some(word), ..
                } => {
                    // Invariant 4: pair with a thief's release store of `top`.
                    fence(Ordering::Acquire);
                    return NonNull::new(word);
                }
                Outcome::Aborted => continue,
                Outcome::Completed { value: None, .. } | Outcome::NoCpu => return None,
            }
        }
    }

    #[cold]
    fn pop_slow(&self) -> Option<NonNull<u8>> {
        if let Some(word) = self.fallback.pop() {
            return Some(word);
        }
        let count = self.cpus.len();
        let start = self.backend.current_cpu().map_or(0, |cpu| cpu + 1);
        (0..count).find_map(|i| self.steal_from((start + i) % count))
    }

    fn steal_from(&self, victim: usize) -> Option<NonNull<u8>> {
        let slot = &self.cpus[victim];
        let (storage_begin, storage_end) = self.bounds(victim);
        if slot.stack.top.load(Ordering::Relaxed).addr() <= storage_begin.addr()
            || !self.fences.available()
        {
            return None;
        }
        let _thief = ThiefGuard::try_acquire(&slot.thief)?;
        let top = self.stop_stack(&slot.stack, storage_begin, storage_end)?;
        // The stack is ours and `[storage_begin, top)` holds its items.
        let word_at = |addr: *mut u8| {
            // SAFETY: `addr` lies in `[storage_begin, top)`, this stack's live words.
            unsafe { &*addr.cast::<AtomicPtr<u8>>() }.load(Ordering::Relaxed)
        };
        let mut new_top = top.wrapping_sub(WORD);
        let first = word_at(new_top);
        for _ in 1..STEAL_BATCH {
            if new_top.addr() <= storage_begin.addr() {
                break;
            }
            let below = new_top.wrapping_sub(WORD);
            let Some(word) = NonNull::new(word_at(below)) else {
                break;
            };
            if !self.push_local_only(word) {
                break;
            }
            new_top = below;
        }
        // Steps 5-7 (see the type docs): lower `top` while the bounds still stop pops, fence
        // so that no section can act on the old top any more, then widen the bounds; release
        // so the next section acquires what is left.
        slot.stack.top.store(new_top, Ordering::Release);
        if self.fences.fence(&self.backend) {
            slot.stack.begin.store(storage_begin, Ordering::Release);
            slot.stack.end.store(storage_end, Ordering::Release);
        }
        NonNull::new(first)
    }

    /// Steps 1–3: stop the stack at its top and return that top, or `None` (empty, or fences
    /// unavailable) with the stack restored.
    fn stop_stack(
        &self,
        stack: &BoundedStack,
        storage_begin: *mut u8,
        storage_end: *mut u8,
    ) -> Option<*mut u8> {
        let restore = || {
            stack.begin.store(storage_begin, Ordering::Release);
            stack.end.store(storage_end, Ordering::Release);
        };
        loop {
            let top = stack.top.load(Ordering::Acquire);
            if top.addr() <= storage_begin.addr() {
                restore();
                return None;
            }
            stack.begin.store(top, Ordering::Release);
            stack.end.store(top, Ordering::Release);
            if !self.fences.fence(&self.backend) {
                restore();
                return None;
            }
            if stack.top.load(Ordering::Acquire) == top {
                return Some(top);
            }
        }
    }

    /// Push on the current CPU's stack only: `false` when full, stopped, or without a CPU.
    fn push_local_only(&self, word: NonNull<u8>) -> bool {
        loop {
            // SAFETY: as in `push_word`.
            match unsafe { self.backend.push_word(self.stacks(), word.as_ptr()) } {
                Outcome::Completed { value: Ok(()), .. } => return true,
                Outcome::Aborted => continue,
                Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => return false,
            }
        }
    }

    /// Every item, from every CPU and the fallback, each exactly once; the buffer is left
    /// empty. Per CPU newest first, CPUs in index order, then the fallback's stripes, each
    /// newest first.
    ///
    /// `&mut self` proves no critical section runs on these stacks (they only run inside
    /// `&self` methods), so the stacks are read and reset directly.
    pub fn drain(&mut self) -> Vec<Box<T>> {
        let mut words = Vec::new();
        for cpu in 0..self.cpus.len() {
            let (storage_begin, storage_end) = self.bounds(cpu);
            let stack = &self.cpus[cpu].stack;
            // A stack left stopped by a failed second fence (see the type docs) restarts here.
            stack.begin.store(storage_begin, Ordering::Relaxed);
            stack.end.store(storage_end, Ordering::Relaxed);
            let mut top = stack.top.swap(storage_begin, Ordering::Acquire);
            while top.addr() > storage_begin.addr() {
                top = top.wrapping_sub(WORD);
                // SAFETY: `top` lies in `[storage_begin, old top)`, this stack's live words.
                let word = unsafe { &*top.cast::<AtomicPtr<u8>>() }.load(Ordering::Relaxed);
                words.extend(NonNull::new(word));
            }
        }
        words.extend(self.fallback.take_all());
        words
            .into_iter()
            // SAFETY: every stored word is a Box<T> leaked by `push`; the stacks and the
            // fallback were just emptied, so each is rebuilt once.
            .map(|word| unsafe { Box::from_raw(word.cast::<T>().as_ptr()) })
            .collect()
    }
}

impl<T, B: Backend> Drop for PerCpuBuffer<T, B> {
    fn drop(&mut self) {
        drop(self.drain());
    }
}
