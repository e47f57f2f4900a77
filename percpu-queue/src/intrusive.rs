//! The intrusive per-CPU LIFO list underneath [`FreeList`](crate::FreeList): raw nodes, one
//! list head per CPU, a fallback list, and the steal protocol. `unsafe` to push into: the
//! caller promises what a node is and hands over ownership.
//!
//! The steal protocol is in [`IntrusiveList`]'s docs.

use crate::fallback::{next_field, FallbackList};
use crate::steal::{FenceSupport, ThiefGuard, STEAL_BATCH};
use rseq_sys::sync::atomic::{fence, AtomicBool, AtomicPtr, Ordering};
use rseq_sys::{Backend, Outcome, Rseq, SlotArray, LINK_LOCKED};
use std::ptr::NonNull;

/// One CPU's list: the head, and the flag its thief holds. Aligned to 128 bytes (two cache
/// lines, for the adjacent-line prefetcher) so that CPUs never share a line on the fast path.
#[repr(C, align(128))]
struct CpuList {
    head: AtomicPtr<u8>,
    thief: AtomicBool,
}

/// A per-CPU intrusive LIFO list of raw nodes.
///
/// Each node carries an `AtomicPtr<u8>` "next" field at a fixed offset (given at
/// construction). Pushes and pops run on the current CPU's list, each one rseq critical
/// section; a pop on an empty list tries the fallback list, then steals from other CPUs
/// (below). Order: LIFO per CPU, no global order.
///
/// The list never frees nodes; dropping it with nodes still listed leaks them (the typed
/// [`FreeList`](crate::FreeList) drains and frees its nodes on drop).
///
/// # Steal protocol (membarrier fence, not an atomic protocol)
///
/// A per-CPU pop commits `head = next` with a plain store at the end of a critical section,
/// so no compare-and-swap from another CPU can safely take a node: a section that loaded
/// the old head could still commit after it, and both would own the node. The thief
/// therefore stops the list instead, with the [`LINK_LOCKED`] bit that every per-CPU push
/// and pop checks inside its section:
///
/// 1. become the victim slot's only thief (a flag per slot);
/// 2. `head: h -> h | LINK_LOCKED` with an acquire compare-and-swap;
/// 3. [`Backend::fence_all`]: sections in flight on the victim abort, later ones see the bit;
/// 4. re-read the head: still `h | LINK_LOCKED` means no section committed since step 2 (a
///    committing section stores a pointer without the bit, and no other thief exists), so
///    the list is ours; anything else means one did, and we start again;
/// 5. take the first node for the caller and move up to 15 more onto the
///    thief's own CPU with ordinary per-CPU pushes (reading each node's next before pushing
///    it, since a push rewrites it, even one that aborts; a node whose push declines goes
///    back with the link it had);
/// 6. store the rest as the head, without the bit, with release ordering.
///
/// Why the fence rather than an atomic protocol: an atomic one would put an atomic
/// read-modify-write on every per-CPU push and pop, the very cost rseq removes. The fence
/// costs one `membarrier` per batch, on the slow path only. Where fences are unavailable
/// (`membarrier` without its rseq commands, Linux < 5.10 with rseq) the thief undoes step 2
/// (compare-and-swap back, which is invisible to any section) and stealing stays off:
/// elements on another CPU's list then stay there until a thread on that CPU pops them or
/// [`IntrusiveList::drain`] (which has exclusive access) takes them.
///
/// While a list is stopped, pushes on its CPU go to the fallback list and pops there go on to
/// the fallback and to other CPUs, so nobody waits for a thief.
pub struct IntrusiveList<B: Backend = Rseq> {
    cpus: Box<[CpuList]>,
    fallback: FallbackList,
    fences: FenceSupport,
    next_offset: usize,
    backend: B,
}

impl<B: Backend> core::fmt::Debug for IntrusiveList<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IntrusiveList")
            .field("cpus", &self.cpus.len())
            .field("next_offset", &self.next_offset)
            .field("backend", &self.backend)
            .finish()
    }
}

fn locked(head: *mut u8) -> bool {
    head.addr() & LINK_LOCKED != 0
}

impl IntrusiveList<Rseq> {
    /// An empty list on real rseq (indexed by CPU id, the backend [resolved](Rseq::resolved)
    /// once), for nodes whose next field is at
    /// `next_offset` bytes.
    pub fn new(next_offset: usize) -> Self {
        Self::with_backend(Rseq::CPU_ID.resolved(), next_offset)
    }
}

impl<B: Backend> IntrusiveList<B> {
    /// An empty list running its per-CPU operations on `backend`.
    pub fn with_backend(backend: B, next_offset: usize) -> Self {
        let cpus = (0..backend.slot_count())
            .map(|_| CpuList {
                head: AtomicPtr::new(std::ptr::null_mut()),
                thief: AtomicBool::new(false),
            })
            .collect();
        IntrusiveList {
            cpus,
            fallback: FallbackList::new(backend.slot_count()),
            fences: FenceSupport::new(),
            next_offset,
            backend,
        }
    }

    /// The backend this list runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    #[inline(always)]
    fn heads(&self) -> SlotArray<'_, AtomicPtr<u8>> {
        let base = NonNull::from(&*self.cpus).cast::<AtomicPtr<u8>>();
        // SAFETY: `CpuList` is `repr(C)` with `head` first, so `base + c * size_of::<CpuList>()`
        // is CPU `c`'s head for every `c < len`; the pointer comes from the whole boxed slice,
        // whose shared borrow lives as long as `&self`.
        unsafe { SlotArray::from_raw_parts(base, size_of::<CpuList>(), self.cpus.len()) }
    }

    /// Push `node` on the current CPU's list (or the fallback list without a CPU, or while
    /// this CPU's list is stopped by a thief).
    ///
    /// # Safety
    /// - `node` points to a live allocation, at least 2-aligned, with an `AtomicPtr<u8>` at
    ///   this list's `next_offset`;
    /// - it is on no list, and from now until some pop returns it, it belongs to this list:
    ///   nothing else reads or writes the node or frees it;
    /// - it stays valid at least until it is popped (or drained), even after this list is
    ///   dropped, if it is never popped (the list does not free nodes);
    /// - if the list is shared between threads, whatever the node holds may be handed to
    ///   another thread (the node's contents are `Send`): any thread may pop it.
    #[inline(always)]
    pub unsafe fn push(&self, node: NonNull<u8>) {
        loop {
            // SAFETY: every node on these heads was pushed under this function's contract,
            // so it has a next field at `next_offset` and stays allocated while listed;
            // `node` itself is 2-aligned and ours to link.
            match unsafe {
                self.backend
                    .push_linked(self.heads(), node, self.next_offset)
            } {
                Outcome::Completed { value: Ok(()), .. } => return,
                Outcome::Aborted => continue,
                // Stopped by a thief, or no CPU: never touch a per-CPU head from here.
                Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => {
                    // SAFETY: as above: the caller hands the node to this list.
                    unsafe { self.fallback.push(node, self.next_offset) };
                    return;
                }
            }
        }
    }

    /// Pop a node: the current CPU's newest, else the fallback list's newest, else one stolen
    /// from another CPU. The caller owns the node returned. `None` when every list this call
    /// could reach was empty; with concurrent steals in progress (elements in transit) or
    /// without fences, elements may exist elsewhere.
    #[inline(always)]
    pub fn pop(&self) -> Option<NonNull<u8>> {
        if let Some(node) = self.pop_local() {
            return Some(node);
        }
        self.pop_slow()
    }

    /// Pop from the current CPU's list only; `None` when it is empty or stopped, or without
    /// a CPU.
    #[inline(always)]
    pub fn pop_local(&self) -> Option<NonNull<u8>> {
        loop {
            // SAFETY: every listed node was pushed under `push`'s contract.
            match unsafe { self.backend.pop_linked(self.heads(), self.next_offset) } {
                Outcome::Completed {
                    value: Ok(node), ..
                } => {
                    // Invariant 4: the node may have been published by a thief's release
                    // store of this head; pair it (free on x86_64, where loads acquire).
                    fence(Ordering::Acquire);
                    return Some(node);
                }
                Outcome::Aborted => continue,
                Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => return None,
            }
        }
    }

    #[cold]
    fn pop_slow(&self) -> Option<NonNull<u8>> {
        if let Some(node) = self.pop_fallback() {
            return Some(node);
        }
        self.steal()
    }

    /// Pop from the fallback list only.
    pub(crate) fn pop_fallback(&self) -> Option<NonNull<u8>> {
        self.fallback.pop(self.next_offset)
    }

    /// Try every other CPU's list, starting after the current CPU's.
    pub(crate) fn steal(&self) -> Option<NonNull<u8>> {
        let count = self.cpus.len();
        let start = self.backend.current_cpu().map_or(0, |cpu| cpu + 1);
        (0..count).find_map(|i| self.steal_from((start + i) % count))
    }

    fn steal_from(&self, victim: usize) -> Option<NonNull<u8>> {
        let slot = &self.cpus[victim];
        let seen = slot.head.load(Ordering::Relaxed);
        if seen.is_null() || locked(seen) || !self.fences.available() {
            return None;
        }
        let _thief = ThiefGuard::try_acquire(&slot.thief)?;
        let first = self.lock_list(slot)?;
        // The list is ours: every section on the victim declines until we store a head.
        // SAFETY: `first` is listed, so it follows `push`'s contract.
        let mut rest = unsafe { next_field(first, self.next_offset) }.load(Ordering::Relaxed);
        for _ in 1..STEAL_BATCH {
            let Some(node) = NonNull::new(rest) else {
                break;
            };
            // SAFETY: `node` is on the list we own.
            let next = unsafe { next_field(node, self.next_offset) };
            let after = next.load(Ordering::Relaxed);
            if !self.push_local_only(node) {
                // `node` stays on the victim's list. An attempt that aborted before the push
                // declined had already pointed its next field at our CPU's list (the
                // try-store): restore the victim's link, or the chain behind `node` is lost
                // and the nodes it was pointed at are listed twice. The release store of the
                // head below publishes it.
                next.store(after, Ordering::Relaxed);
                break;
            }
            rest = after;
        }
        // Release: whoever pops the new head acquires the nodes behind it.
        slot.head.store(rest, Ordering::Release);
        Some(first)
    }

    /// Steps 2–4 of the protocol: lock the victim's head and make sure no section can still
    /// commit on it. Returns the first node, with the list locked, or `None` (list empty,
    /// or fences unavailable) with the list as it was.
    fn lock_list(&self, slot: &CpuList) -> Option<NonNull<u8>> {
        loop {
            let head = slot.head.load(Ordering::Acquire);
            let first = NonNull::new(head)?;
            debug_assert!(!locked(head), "only the thief sets the lock bit");
            let stopped = head.map_addr(|addr| addr | LINK_LOCKED);
            if slot
                .head
                .compare_exchange(head, stopped, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if !self.fences.fence(&self.backend) {
                // Undo: storing back the value sections saw is invisible to them. If one
                // committed meanwhile it replaced our bit already, and we leave its value.
                let _ =
                    slot.head
                        .compare_exchange(stopped, head, Ordering::Release, Ordering::Relaxed);
                return None;
            }
            if slot.head.load(Ordering::Acquire) == stopped {
                return Some(first);
            }
        }
    }

    /// Push `node` on the current CPU's list, never the fallback: `false` without a CPU or
    /// when that list is stopped (for example because it is the victim we hold). On `false`
    /// the node's next field may have been rewritten by an aborted attempt.
    fn push_local_only(&self, node: NonNull<u8>) -> bool {
        loop {
            // SAFETY: `node` came off a list of ours, so it satisfies `push`'s contract; an
            // aborted attempt only rewrote its next field, which the caller read beforehand
            // (and restores if the push then declines).
            match unsafe {
                self.backend
                    .push_linked(self.heads(), node, self.next_offset)
            } {
                Outcome::Completed { value: Ok(()), .. } => return true,
                Outcome::Aborted => continue,
                Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => return false,
            }
        }
    }

    /// Take every node from every CPU's list and the fallback list, each exactly once.
    ///
    /// `&mut self` is the proof that no critical section on these lists is running or can
    /// start: sections only run inside `&self` methods. So the heads are read and cleared
    /// directly, with no fence, which works even where fences do not.
    pub fn drain(&mut self) -> Vec<NonNull<u8>> {
        let mut nodes = Vec::new();
        let chains: Vec<*mut u8> = self
            .cpus
            .iter()
            .map(|cpu| cpu.head.swap(std::ptr::null_mut(), Ordering::Acquire))
            .chain(self.fallback.take_chains())
            .collect();
        for chain in chains {
            debug_assert!(!locked(chain), "no thief can be at work under &mut");
            let mut cursor = chain;
            while let Some(node) = NonNull::new(cursor) {
                // SAFETY: `node` is listed, so it follows `push`'s contract.
                cursor = unsafe { next_field(node, self.next_offset) }.load(Ordering::Relaxed);
                nodes.push(node);
            }
        }
        nodes
    }

    /// Whether no node is listed anywhere (a snapshot: exact only without concurrent use).
    pub fn is_empty(&self) -> bool {
        self.cpus
            .iter()
            .all(|cpu| cpu.head.load(Ordering::Relaxed).is_null())
            && self.fallback.looks_empty()
    }
}
