//! The front end: per-CPU caches on rseq.
//!
//! One region per slot of [`Rseq::CONCURRENCY_ID`] (indexed by `mm_cid` where the kernel
//! promises it, else by `cpu_id`), mapped once for all slots. A region starts with one
//! [`BoundedStack`] header per size class, followed by each class's array of object
//! pointers. Allocation is one `try_pop_word` critical section, free one `try_push_word`
//! (or `push_word_on` the CPU that owns the object's span, see [`free`]): a single
//! committing store each, and no status to decode when they complete.
//!
//! Slow paths: a miss (an empty stack on allocation, a full one on free) first grows the
//! class's capacity on that slot (see [`capacity`]). An empty stack is refilled with a
//! batch from the transfer cache, pushed in one section (`push_words`) when it fits, else
//! one object at a time (the thread may migrate while refilling; each push lands on
//! whichever CPU it runs on, and what does not fit goes back). A full stack that cannot
//! grow gives a batch to the transfer cache, popped in one section (`pop_words`) when the
//! stack holds that many, else one at a time. Each miss also gives the release clock a
//! chance to tick. With no CPU (`Outcome::NoCpu`), or before the regions exist, both go to
//! the thread's stripe cache and from there to the transfer cache: no per-CPU slot is
//! touched by a plain store, ever (DESIGN invariant 1). Headers are written only while the
//! regions are private to the initialising thread, before they are published with release.

use crate::capacity::{self, SlotMeta, SlotStacks};
use crate::pagemap::SpanOwner;
use crate::size_class::{CLASSES, NUM_CLASSES};
use crate::{central, os, release, stripe_cache, transfer};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use rseq_sys::{Backend, BoundedStack, Outcome, Rseq, SharedSection, SlotArray};

const BACKEND: Rseq = Rseq::CONCURRENCY_ID;
const MAX_BATCH: usize = 32;

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;

/// Only the set-up protocol reads this; the fast paths look at [`REGIONS`] alone.
static STATE: AtomicU8 = AtomicU8::new(UNINIT);

/// Where the regions are, and how to reach this thread's rseq area: `base` is null until
/// they are ready, then published with release after the other fields. One line, so a fast
/// path reads everything it needs from one place (rseq-sys's own statics sit in another
/// crate, which costs an extra load through the global offset table when not linked with LTO).
#[repr(C, align(64))]
struct Regions {
    base: AtomicPtr<u8>,
    /// `base` again, published after it, when `shared` is `Some`; null otherwise. The fast
    /// paths test this one word: non-null means both "ready" and "there is a process-wide
    /// section", and every other case goes out of line.
    shared_base: AtomicPtr<u8>,
    slots: AtomicUsize,
    /// The process-wide section while glibc owns rseq. Written once by `init` before `base`
    /// is published, never after; read only after `base` was seen non-null (acquire).
    shared: UnsafeCell<Option<SharedSection>>,
}

// SAFETY: `shared` is written only by `init`, by the one thread that won the UNINIT -> BUSY
// transition, before the release store of `base`; every read happens after an acquire load
// saw that store, so no read races the write. The other fields are atomics.
unsafe impl Sync for Regions {}

static REGIONS: Regions = Regions {
    base: AtomicPtr::new(core::ptr::null_mut()),
    shared_base: AtomicPtr::new(core::ptr::null_mut()),
    slots: AtomicUsize::new(0),
    shared: UnsafeCell::new(None),
};

/// Bytes from one slot's region to the next: a constant, so finding this CPU's header is a
/// multiply by an immediate, not one more load on every operation. Whole 4 KiB pages keep
/// regions from sharing lines (and pages) between CPUs.
const STRIDE: usize = LAYOUT.1.next_multiple_of(4096);

const HEADER_BYTES: usize = core::mem::size_of::<BoundedStack>();
const HEADERS_BYTES: usize = NUM_CLASSES * HEADER_BYTES;
/// The slot's [`SlotMeta`] follows the headers, on lines of its own.
const META_OFFSET: usize = HEADERS_BYTES.next_multiple_of(64);
const ARRAYS_OFFSET: usize = (META_OFFSET + core::mem::size_of::<SlotMeta>()).next_multiple_of(64);

/// Byte offset of each class's pointer array inside a region, and the region's size.
const fn layout() -> ([usize; NUM_CLASSES], usize) {
    let mut offsets = [0; NUM_CLASSES];
    let mut at = ARRAYS_OFFSET;
    let mut i = 0;
    while i < NUM_CLASSES {
        offsets[i] = at;
        at += CLASSES_CAPACITY[i] * 8;
        i += 1;
    }
    (offsets, at)
}

const CLASSES_CAPACITY: [usize; NUM_CLASSES] = {
    let classes = crate::size_class::CLASS_TABLE;
    let mut caps = [0; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        caps[i] = classes[i].cpu_capacity;
        i += 1;
    }
    caps
};

const LAYOUT: ([usize; NUM_CLASSES], usize) = layout();

/// Whether the per-CPU caches exist (after the first allocation, when rseq is available).
pub(crate) fn is_active() -> bool {
    !REGIONS.base.load(Ordering::Acquire).is_null()
}

/// Map and set up every slot's region. Runs once; a call that finds another one in progress
/// (another thread, or a re-entrant allocation) returns at once and that caller uses the
/// transfer cache meanwhile.
#[cold]
fn init() {
    if STATE
        .compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    if matches!(rseq_sys::owner(), rseq_sys::Owner::Unavailable(_)) {
        STATE.store(DISABLED, Ordering::Release);
        return;
    }
    let slots = BACKEND.slot_count();
    let stride = STRIDE;
    let Some(total) = slots.checked_mul(stride) else {
        STATE.store(DISABLED, Ordering::Release);
        return;
    };
    let Some(base) = (if total == 0 { None } else { os::map(total) }) else {
        // No memory for the caches: run on the transfer caches alone.
        STATE.store(DISABLED, Ordering::Release);
        return;
    };
    for slot in 0..slots {
        for (class, &offset) in LAYOUT.0.iter().enumerate() {
            // SAFETY: `slot * stride + class * HEADER_BYTES` and the array at `offset` lie inside the
            // fresh mapping of `slots * stride` bytes (the layout fits in `stride`); nobody
            // else can see it before `BASE` is published below, and zeroed memory is a valid
            // `BoundedStack` (three null atomics). Every class starts with capacity 0
            // (`end == begin`; the zeroed `SlotMeta` agrees) and grows on its misses.
            unsafe {
                let region = base.as_ptr().add(slot * stride);
                let header = &*region.add(class * HEADER_BYTES).cast::<BoundedStack>();
                let begin = region.add(offset);
                header.begin.store(begin, Ordering::Relaxed);
                header.top.store(begin, Ordering::Relaxed);
                header.end.store(begin, Ordering::Relaxed);
            }
        }
    }
    REGIONS.slots.store(slots, Ordering::Relaxed);
    // Before the caches are published, so that every span a slot's refill carves is that
    // slot's. Without them (no memory) every class runs on the shared lists.
    central::set_up_partitions(slots);
    let shared = BACKEND.shared();
    // SAFETY: this thread won the UNINIT -> BUSY transition, so it is the only writer, and
    // nobody reads `shared` before `base` or `shared_base` is published just below.
    unsafe { *REGIONS.shared.get() = shared };
    REGIONS.base.store(base.as_ptr(), Ordering::Release);
    if shared.is_some() {
        REGIONS.shared_base.store(base.as_ptr(), Ordering::Release);
    }
    STATE.store(READY, Ordering::Release);
}

/// The stacks of `class` on every slot, or `None` when the caches are not (yet) available;
/// sets the regions up on the first call (the slow paths' way in).
#[inline(always)]
fn stacks(class: usize) -> Option<SlotArray<'static, BoundedStack>> {
    let base = match ready_base() {
        Some(base) => base,
        None => set_up_regions()?,
    };
    Some(stacks_at(base, class))
}

/// The regions' base if they are published, without setting them up: the fast paths leave
/// that to the slow paths, so that they call nothing but in tail position and need no
/// registers saved.
#[inline(always)]
fn ready_base() -> Option<*mut u8> {
    let base = REGIONS.base.load(Ordering::Acquire);
    (!base.is_null()).then_some(base)
}

/// The stacks of `class` and the process-wide section, if the regions are published and
/// there is such a section (the fast paths): one load and one test.
#[inline(always)]
fn shared_caches(class: usize) -> Option<(SlotArray<'static, BoundedStack>, SharedSection)> {
    let (base, section) = shared_regions()?;
    Some((stacks_at(base, class), section))
}

/// The regions' base and the process-wide section, if the regions are published with one.
#[inline(always)]
fn shared_regions() -> Option<(*mut u8, SharedSection)> {
    let base = REGIONS.shared_base.load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    // SAFETY: `shared_base` is non-null only once `init` published it, after writing
    // `shared` as `Some` (acquired by the load above); nothing writes `shared` again.
    let section = unsafe { (*REGIONS.shared.get()).unwrap_unchecked() };
    Some((base, section))
}

/// The stacks of `class` in the regions published at `base`.
#[inline(always)]
fn stacks_at(base: *mut u8, class: usize) -> SlotArray<'static, BoundedStack> {
    // SAFETY: a non-null base was published with release after `slots` was stored and every
    // header initialised (acquired by `ready_base` or `set_up_regions`), and the regions are
    // never unmapped; header `class` of slot `c` is at `base + c * STRIDE + class *
    // HEADER_BYTES`, a live, aligned `BoundedStack` used only through atomics.
    unsafe {
        let first = NonNull::new_unchecked(base.add(class * HEADER_BYTES)).cast::<BoundedStack>();
        SlotArray::from_raw_parts(first, STRIDE, REGIONS.slots.load(Ordering::Relaxed))
    }
}

/// The regions' base once they are ready: sets them up on the first call; `None` while
/// another thread is setting them up, or for good when they cannot exist.
#[cold]
#[inline(never)]
fn set_up_regions() -> Option<*mut u8> {
    if STATE.load(Ordering::Acquire) == UNINIT {
        init();
    }
    ready_base()
}

/// One slot's region, once the regions are published: its headers, its [`SlotMeta`] and
/// its storage, for the slow paths and the drain.
#[derive(Clone, Copy)]
struct Slot {
    region: *mut u8,
}

impl Slot {
    /// Slot `index`, when the regions are published and it is one of theirs.
    fn get(index: usize) -> Option<Slot> {
        let base = REGIONS.base.load(Ordering::Acquire);
        if base.is_null() || index >= REGIONS.slots.load(Ordering::Relaxed) {
            return None;
        }
        Some(Slot {
            region: base.wrapping_add(index * STRIDE),
        })
    }

    /// Every slot (none before the regions are published).
    fn all() -> impl Iterator<Item = Slot> {
        let base = REGIONS.base.load(Ordering::Acquire);
        let slots = if base.is_null() {
            0
        } else {
            REGIONS.slots.load(Ordering::Relaxed)
        };
        (0..slots).map(move |index| Slot {
            region: base.wrapping_add(index * STRIDE),
        })
    }
}

impl SlotStacks for Slot {
    fn meta(&self) -> &SlotMeta {
        // SAFETY: `region` is a published slot's region (see `Slot::get`), never unmapped;
        // its `SlotMeta` at `META_OFFSET` was zeroed by the mapping (a valid value) and is
        // used only through atomics and its lock.
        unsafe { &*self.region.add(META_OFFSET).cast::<SlotMeta>() }
    }

    fn header(&self, class: usize) -> &BoundedStack {
        // SAFETY: as in `meta`: header `class` of a published region, initialised before
        // the regions were published, used only through atomics.
        unsafe { &*self.region.add(class * HEADER_BYTES).cast::<BoundedStack>() }
    }

    fn storage(&self, class: usize) -> *mut u8 {
        self.region.wrapping_add(LAYOUT.0[class])
    }
}

/// Slot `owner`'s stack for `class`, which the headers of that slot's spans of `class` keep
/// (see `central`); null when the span has no owner or the slot does not exist. The
/// regions never move or go away once published, so the address stays valid.
pub(crate) fn owner_stack(owner: SpanOwner, class: usize) -> *const BoundedStack {
    owner
        .get()
        .and_then(Slot::get)
        .map_or(core::ptr::null(), |slot| {
            core::ptr::from_ref(slot.header(class))
        })
}

/// A miss on `class` on slot `index`: count it and grow the class there; returns the
/// class's capacity on that slot now (0 when the slot is unknown).
fn grow_on_miss(index: usize, class: usize) -> usize {
    Slot::get(index).map_or(0, |slot| {
        capacity::grow_on_miss(&slot, class, capacity::cpu_cache_budget())
    })
}

/// An object of `class`, or null when out of memory.
///
/// The fast path is one pop on the process-wide section (glibc's registration); the pop on
/// this thread's own registration, retries, refills and the no-CPU path are out of line,
/// each called in tail position, so this function saves no registers. Not `#[inline]`:
/// compiled in this crate, its statics are addressed directly rather than through the
/// global offset table.
pub(crate) fn alloc(class: usize) -> *mut u8 {
    let Some((stacks, section)) = shared_caches(class) else {
        return alloc_on_own_registration(class);
    };
    // SAFETY: the regions keep the `BoundedStack` contract: each header delimits an array of
    // 8-byte words in the same live mapping, touched only by these operations and atomic
    // loads. The shared section is the same rseq area `BACKEND` would use.
    // Objects are never null, so a null word is a failure of any kind; the slow path pops
    // again to learn which.
    if let Some(object) = unsafe { section.try_pop_word(stacks) } {
        return object.as_ptr();
    }
    core::hint::cold_path();
    alloc_slow(class)
}

/// The object a pop handed out, if it did.
#[inline(always)]
fn popped_object(popped: Outcome<Option<*mut u8>>) -> Option<*mut u8> {
    match popped {
        Outcome::Completed {
            value: Some(object),
            ..
        } => Some(object),
        _ => None,
    }
}

/// [`alloc`] when there is no process-wide section, or the regions are not ready yet: the
/// pop through `BACKEND`, whose lookup of this thread's rseq area may call out (to register
/// it), else the slow path. Takes only the class (the stacks would be passed through memory)
/// and finds the stacks again.
#[inline(never)]
fn alloc_on_own_registration(class: usize) -> *mut u8 {
    let Some(base) = ready_base() else {
        if without_caches() {
            return stripe_cache::alloc(class);
        }
        return alloc_slow(class);
    };
    let stacks = stacks_at(base, class);
    // SAFETY: as in `alloc`.
    let popped = unsafe { BACKEND.pop_word(stacks) };
    if let Some(object) = popped_object(popped) {
        return object;
    }
    core::hint::cold_path();
    alloc_slow(class)
}

/// Whether the per-CPU caches will never exist (no rseq, or no memory for them): every
/// operation then goes straight to the stripe caches, rather than through the slow paths'
/// attempt to set the regions up.
#[inline(always)]
fn without_caches() -> bool {
    STATE.load(Ordering::Relaxed) == DISABLED
}

/// [`alloc`] when the first pop did not hand out an object.
#[cold]
#[inline(never)]
fn alloc_slow(class: usize) -> *mut u8 {
    if let Some(stacks) = stacks(class) {
        loop {
            // SAFETY: as in `alloc`.
            match unsafe { BACKEND.pop_word(stacks) } {
                Outcome::Completed {
                    value: Some(object),
                    ..
                } => return object,
                Outcome::Completed { value: None, cpu } => return refill(class, stacks, cpu),
                Outcome::Aborted => continue,
                Outcome::NoCpu => break,
            }
        }
    }
    stripe_cache::alloc(class)
}

/// The stack for `class` on slot `cpu` ran dry: grow it, fetch a batch (no more than the
/// stack can take), keep one, push the rest.
#[cold]
fn refill(class: usize, stacks: SlotArray<'static, BoundedStack>, cpu: usize) -> *mut u8 {
    let capacity = grow_on_miss(cpu, class);
    let mut batch = [core::ptr::null_mut(); MAX_BATCH];
    let want = CLASSES[class].batch.min(MAX_BATCH).min(capacity + 1);
    let got = transfer::remove_for_slot(class, cpu, &mut batch[..want]);
    release::maybe_tick();
    if got == 0 {
        return core::ptr::null_mut();
    }
    // The rest in one section when it fits (the stack just ran dry, so it does unless the
    // thread migrated or the capacity shrank), else one at a time, what fits.
    let rest = &batch[1..got];
    if !rest.is_empty() && all_pushed(stacks, rest) {
        return batch[0];
    }
    let mut pushed = 1;
    while pushed < got {
        // SAFETY: as in `alloc`; the object is free and ours to cache.
        match unsafe { BACKEND.push_word(stacks, batch[pushed]) } {
            Outcome::Completed { value: Ok(()), .. } => pushed += 1,
            Outcome::Aborted => continue,
            Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => break,
        }
    }
    if pushed < got {
        // SAFETY: these objects are free and were on no list since `remove` returned them.
        unsafe { transfer::insert(class, &batch[pushed..got]) };
    }
    batch[0]
}

/// Push all of `objects` on this CPU's stack in one section; false (none pushed) when they
/// do not fit or there is no CPU.
fn all_pushed(stacks: SlotArray<'static, BoundedStack>, objects: &[*mut u8]) -> bool {
    // SAFETY: as in `alloc`; the objects are free and ours to cache.
    until_not_aborted(|| unsafe { BACKEND.push_words(stacks, objects) })
}

/// Fill `out` from this CPU's stack in one section; false (none popped, `out` meaningless)
/// when it holds fewer or there is no CPU.
fn all_popped(stacks: SlotArray<'static, BoundedStack>, out: &mut [*mut u8]) -> bool {
    // SAFETY: as in `alloc`; `out` is this thread's own buffer.
    until_not_aborted(|| unsafe { BACKEND.pop_words(stacks, out) })
}

/// Run an all-or-nothing `section` again until it is not aborted: its answer, or false
/// with no CPU.
fn until_not_aborted(mut section: impl FnMut() -> Outcome<bool>) -> bool {
    loop {
        match section() {
            Outcome::Completed { value, .. } => return value,
            Outcome::Aborted => continue,
            Outcome::NoCpu => return false,
        }
    }
}

/// Free `object` of `class`, from a span of `owner`. The fast path is one push; the rest
/// is out of line (as in [`alloc`]). An object whose span belongs to a slot goes back to
/// that slot (see `central`'s partitions), so that no other CPU hands out an object whose
/// line the owner's objects share: the push is `push_word_on` the owner, which the section
/// itself confirms is the CPU it runs on, and from anywhere else the object goes to its
/// owner's central list, where the owner's next refill finds it. A thread that migrates
/// after a decline caches the object where it lands, and it reaches its owner's list when
/// that cache flushes. `SpanOwner::NONE` is always correct: an owned class's object
/// freed with it leaves the CPU caches for the stripe caches (see [`is_stray`]), whose
/// batches reach the lists of the span's real owner.
///
/// # Safety
/// `object` is an object of `class` from this allocator, no longer used, freed once, and
/// `owner` is its span's owner or `SpanOwner::NONE`.
#[inline(always)]
pub(crate) unsafe fn free(class: usize, object: *mut u8, owner: SpanOwner) {
    let Some((stacks, section)) = shared_caches(class) else {
        // SAFETY: forwarded from the caller.
        return unsafe { free_on_own_registration(class, object, owner) };
    };
    // SAFETY: as in `alloc`; the caller hands over the object. An owned class's object
    // from a span of no slot's (`NONE`, past every slot) gets `NoCpu` and takes the slow
    // path below: the fast path spends no test on that rare case.
    let pushed = unsafe {
        if class < central::OWNED_CLASSES {
            matches!(
                section.push_word_on(stacks, owner.index(), object),
                Outcome::Completed { value: Ok(()), .. }
            )
        } else {
            section.try_push_word(stacks, object)
        }
    };
    if pushed {
        return;
    }
    core::hint::cold_path();
    // SAFETY: forwarded from the caller (the push above did not take the object).
    unsafe { free_after_decline(class, object, owner, section) }
}

/// [`free`] when the fast push did not take the object: to the owner's central list from
/// any other CPU, out of the CPU caches for an owned class's object of no owner, else the
/// slow path.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
unsafe fn free_after_decline(
    class: usize,
    object: *mut u8,
    owner: SpanOwner,
    section: SharedSection,
) {
    match owner.get() {
        Some(slot) if section.current_cpu() != Some(slot) => {
            // SAFETY: forwarded from the caller.
            unsafe { free_to_owner(class, object, slot) }
        }
        // SAFETY: forwarded from the caller.
        None if is_stray(class) => unsafe { free_stray(class, object) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { free_slow(class, object) },
    }
}

/// Whether an object of `class` from a span of no owner is a stray: the class is
/// partitioned, so its spans normally have owners, and one without is from a shared span,
/// carved for a thread that had no CPU (or lost the race to set the caches up). Cached on a
/// CPU, a stray would come back there on every free through the slow path, since no CPU
/// owns it and the owner's fast push can never take it. A thread on that CPU allocating
/// and freeing in a loop then paid the slow path on every free for good: twice the time
/// of a 16-byte pair.
#[inline(always)]
fn is_stray(class: usize) -> bool {
    class < central::OWNED_CLASSES && central::is_partitioned(class)
}

/// Free a stray (see [`is_stray`]) of `class` to the stripe caches, which serve threads
/// with no CPU, where shared spans belong: the CPU that freed it refills with its own.
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn free_stray(class: usize, object: *mut u8) {
    // SAFETY: forwarded from the caller.
    unsafe { stripe_cache::free(class, object) }
}

/// [`free`] of an object of an owned class, with its span's owner and that owner's stack for
/// `class` from the span's header. The fast path pushes straight onto that stack, while the
/// thread runs on the owner (`push_word_on_stack`): no slot arithmetic, no bounds check,
/// and no test of the slot count, since an object whose span has a stack came from a
/// published region. Everything else is [`free`]'s slow path.
///
/// # Safety
/// As for [`free`], and `stack` is [`owner_stack`]`(owner, class)` (null for no owner).
#[inline(always)]
pub(crate) unsafe fn free_owned(
    class: usize,
    object: *mut u8,
    owner: SpanOwner,
    stack: *const BoundedStack,
) {
    debug_assert!(class < central::OWNED_CLASSES && stack == owner_stack(owner, class));
    let Some((_, section)) = shared_regions() else {
        // SAFETY: forwarded from the caller.
        return unsafe { free_on_own_registration(class, object, owner) };
    };
    // SAFETY: on the owner's CPU `stack` is that slot's live stack for `class` (the caller's
    // contract), which only sections on that CPU write; elsewhere, and for no owner
    // (`usize::MAX`, which no index field equals), the section does not read it.
    let pushed = unsafe { section.push_word_on_stack(stack, owner.index(), object) };
    if let Outcome::Completed { value: Ok(()), .. } = pushed {
        return;
    }
    core::hint::cold_path();
    // SAFETY: forwarded from the caller (the push above did not take the object).
    unsafe { free_after_decline(class, object, owner, section) }
}

/// [`free`] when there is no process-wide section, or the regions are not ready yet (see
/// [`alloc_on_own_registration`]).
///
/// # Safety
/// As for [`free`].
#[inline(never)]
unsafe fn free_on_own_registration(class: usize, object: *mut u8, owner: SpanOwner) {
    match owner.get() {
        Some(slot) if BACKEND.current_cpu() != Some(slot) => {
            // SAFETY: forwarded from the caller.
            return unsafe { free_to_owner(class, object, slot) };
        }
        // SAFETY: forwarded from the caller.
        None if is_stray(class) => return unsafe { free_stray(class, object) },
        _ => {}
    }
    let Some(base) = ready_base() else {
        if without_caches() {
            // SAFETY: forwarded from the caller.
            return unsafe { stripe_cache::free(class, object) };
        }
        // SAFETY: forwarded from the caller.
        return unsafe { free_slow(class, object) };
    };
    let stacks = stacks_at(base, class);
    // SAFETY: as in `alloc`; the caller hands over the object.
    let pushed = unsafe { BACKEND.push_word(stacks, object) };
    if let Outcome::Completed { value: Ok(()), .. } = pushed {
        return;
    }
    core::hint::cold_path();
    // SAFETY: forwarded from the caller (the push above did not take the object).
    unsafe { free_slow(class, object) }
}

/// [`free`] of an object whose span belongs to slot `slot`, from another CPU (or none):
/// onto that slot's central list.
///
/// # Safety
/// As for [`free`], with `slot` the owner.
#[cold]
#[inline(never)]
unsafe fn free_to_owner(class: usize, object: *mut u8, slot: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { central::give_to_owner(class, slot, object) };
    // Free memory grew on a central list (see `transfer::insert`).
    release::maybe_release();
}

/// [`free`] when the first push did not take the object.
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn free_slow(class: usize, object: *mut u8) {
    if let Some(stacks) = stacks(class) {
        loop {
            // SAFETY: as in `alloc`; the caller hands over the object.
            match unsafe { BACKEND.push_word(stacks, object) } {
                Outcome::Completed { value: Ok(()), .. } => return,
                Outcome::Completed { value: Err(_), cpu } => {
                    let before = Slot::get(cpu).map_or(0, |slot| slot.meta().capacity(class));
                    if grow_on_miss(cpu, class) > before {
                        // Room made on that slot: push again (wherever the thread is now).
                        continue;
                    }
                    // SAFETY: forwarded from the caller.
                    unsafe { flush(class, stacks, object) };
                    release::maybe_tick();
                    return;
                }
                Outcome::Aborted => continue,
                Outcome::NoCpu => break,
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { stripe_cache::free(class, object) }
}

/// This CPU's stack for `class` is full: pop a batch and hand it, with `object`, to the
/// transfer cache.
///
/// # Safety
/// As for [`free`].
#[cold]
unsafe fn flush(class: usize, stacks: SlotArray<'static, BoundedStack>, object: *mut u8) {
    let mut batch = [core::ptr::null_mut(); MAX_BATCH];
    batch[0] = object;
    // The freed object and the newest `batch - 1` of the stack: exactly as many as a refill
    // takes. Objects freed together then travel together, and a CPU that refills with them
    // hands them out in one run. Between a producer and a consumer, neighbours allocated in
    // a run stay neighbours, so both sides walk memory in order. A batch of one more
    // object, as before, shifted the runs by one object on every pass. After a few thousand
    // batches the producer's consecutive blocks were scattered over the heap (2-24% of
    // them adjacent, against 91% now), and it took 2-3x as long.
    let want = CLASSES[class].batch.min(MAX_BATCH) - 1;
    // The whole batch in one section when the stack holds that many (it is full, so it
    // does unless the thread migrated), else one at a time, what there is.
    if want > 0 && all_popped(stacks, &mut batch[1..=want]) {
        // SAFETY: as below.
        return unsafe { transfer::insert(class, &batch[..=want]) };
    }
    let mut n = 1;
    while n <= want {
        // SAFETY: as in `alloc`.
        match unsafe { BACKEND.pop_word(stacks) } {
            Outcome::Completed {
                value: Some(popped),
                ..
            } => {
                batch[n] = popped;
                n += 1;
            }
            Outcome::Aborted => continue,
            Outcome::Completed { value: None, .. } | Outcome::NoCpu => break,
        }
    }
    // SAFETY: `object` from the caller; the popped objects were free in a CPU cache and are
    // now only in `batch`.
    unsafe { transfer::insert(class, &batch[..n]) }
}

/// Objects of `class` cached on all CPUs now (a racy snapshot from atomic loads).
pub(crate) fn cached(class: usize) -> usize {
    if !is_active() {
        return 0;
    }
    let Some(stacks) = stacks(class) else {
        return 0;
    };
    stacks
        .iter()
        .map(|s| {
            let top = s.top.load(Ordering::Relaxed) as usize;
            let begin = s.begin.load(Ordering::Relaxed) as usize;
            top.saturating_sub(begin) / 8
        })
        .sum()
}

/// In a forked child: the per-CPU regions being set up by another thread at the fork will
/// never be finished here (that thread does not exist in the child), so undo the claim
/// and let the child set them up itself (the parent's half-made mapping is left unused).
/// Regions already published are kept: the child inherited them whole.
pub(crate) fn after_fork_in_child() {
    if STATE.load(Ordering::Acquire) == BUSY {
        let published = !REGIONS.base.load(Ordering::Acquire).is_null();
        STATE.store(if published { READY } else { UNINIT }, Ordering::Release);
    }
}

/// Move every object cached in every slot's stacks to the central lists, and reset every
/// class's capacity to 0; returns how many objects moved. The caller holds the release
/// lock.
pub(crate) fn drain_all() -> usize {
    drain(|_| true)
}

/// [`drain_all`] for the slots that had no miss since the previous call (idle CPUs, whose
/// caches would otherwise hold their objects for ever), and any left stopped by a failed
/// fence. The caller holds the release lock.
pub(crate) fn drain_idle() -> usize {
    drain(|slot| {
        let meta = slot.meta();
        let misses = meta.misses.load(Ordering::Relaxed);
        let seen = meta.misses_at_check.swap(misses, Ordering::Relaxed);
        let left_stopped = meta.stopped.iter().any(|w| w.load(Ordering::Relaxed) != 0);
        (misses == seen && meta.capacity_bytes.load(Ordering::Relaxed) > 0) || left_stopped
    })
}

/// Bytes of capacity the per-CPU caches are sized to, over all slots (a snapshot).
pub(crate) fn capacity_bytes() -> usize {
    Slot::all()
        .map(|slot| slot.meta().capacity_bytes.load(Ordering::Relaxed))
        .sum()
}

/// Drain the slots `select` picks: move every object cached there to the central lists
/// and reset each class's capacity to 0 (it grows back on misses). Returns the objects
/// moved. The caller holds the release lock, which makes it the only remote owner of any
/// stack; each chosen slot's `resize` lock is held throughout, so no resize runs on it.
///
/// The `BoundedStack` stop protocol (see its docs and percpu-queue's buffer), for all
/// chosen stacks at once so that the whole drain costs two fences:
///
/// 1. stop each stack that is not empty (or was left stopped): `begin = end = top`, and
///    mark it stopped in the slot's `SlotMeta`;
/// 2. fence every CPU, then re-read each stopped stack's `top`: where it moved, a section
///    committed between the read and the fence, so stop it again at the new top and fence
///    again, until no `top` moves. Now `[storage, top)` holds exactly the stack's items and
///    every per-CPU push and pop on it declines;
/// 3. hand the items to the central lists, and lower each `top` to the storage start while
///    `begin == end` still equal the stopped top (a section that reads the new top may push
///    into the emptied slots, but none can pop);
/// 4. fence again, so no section still acts on an old top, and only then restore `begin`
///    and set `end` for capacity 0 (lowering `end` needs no fence, see [`capacity`]).
///
/// Without fences (no membarrier RSEQ command) nothing is moved and every stack is
/// restored as it was. Should the second fence fail, the stacks stay as step 3 left them,
/// which is safe: pushes fill them up to the old top, pops decline, the slow paths go to
/// the transfer cache, and the next drain restores them.
fn drain(select: impl Fn(&Slot) -> bool) -> usize {
    // Mark the chosen slots (only the release lock's holder writes the marks) and hold
    // their resize locks.
    let mut chosen = 0;
    for slot in Slot::all() {
        let meta = slot.meta();
        let pick = select(&slot);
        meta.draining.store(pick, Ordering::Relaxed);
        if pick {
            meta.resize.lock_and_keep();
            chosen += 1;
        }
    }
    if chosen == 0 {
        return 0;
    }
    let each = || {
        Slot::all()
            .filter(|slot| slot.meta().draining.load(Ordering::Relaxed))
            .flat_map(|slot| (0..NUM_CLASSES).map(move |class| (slot, class)))
    };
    let stop = |slot: &Slot, class: usize, top: *mut u8| {
        let header = slot.header(class);
        header.begin.store(top, Ordering::Release);
        header.end.store(top, Ordering::Release);
        slot.meta().set_stopped(class, true);
    };
    let drained = stop_and_empty(&each, &stop);
    for slot in Slot::all() {
        let meta = slot.meta();
        if meta.draining.swap(false, Ordering::Relaxed) {
            // SAFETY: taken with `lock_and_keep` above, by this thread, and not released.
            unsafe { meta.resize.unlock_kept() };
        }
    }
    drained
}

/// Steps 1 to 4 of [`drain`] over the chosen `(slot, class)` pairs.
fn stop_and_empty<I: Iterator<Item = (Slot, usize)>>(
    each: &impl Fn() -> I,
    stop: &impl Fn(&Slot, usize, *mut u8),
) -> usize {
    // Restore a stopped stack's bounds for `capacity` objects and clear its mark. The
    // caller fenced since any `top` it stored, or stored none.
    let restore = |slot: &Slot, class: usize, capacity: usize| {
        let header = slot.header(class);
        header.begin.store(slot.storage(class), Ordering::Release);
        slot.meta().set_stopped(class, false);
        slot.set_capacity(class, capacity);
    };
    // Step 1.
    let mut any = false;
    for (slot, class) in each() {
        let top = slot.header(class).top.load(Ordering::Acquire);
        if top != slot.storage(class) || slot.meta().is_stopped(class) {
            stop(&slot, class, top);
            any = true;
        }
    }
    // Step 2 (only stacks stopped in step 1 need it).
    if any {
        loop {
            if BACKEND.fence_all().is_err() {
                for (slot, class) in each() {
                    if slot.meta().is_stopped(class) {
                        restore(&slot, class, slot.meta().capacity(class));
                    }
                }
                return 0;
            }
            let mut moved = false;
            for (slot, class) in each() {
                if !slot.meta().is_stopped(class) {
                    continue;
                }
                let header = slot.header(class);
                let top = header.top.load(Ordering::Acquire);
                if top != header.begin.load(Ordering::Relaxed) {
                    stop(&slot, class, top);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }
    // Step 3.
    let mut drained = 0;
    for (slot, class) in each() {
        if !slot.meta().is_stopped(class) {
            continue;
        }
        let header = slot.header(class);
        let begin = slot.storage(class);
        let top = header.top.load(Ordering::Acquire);
        let mut batch = [core::ptr::null_mut(); 64];
        let mut at = begin;
        while at < top {
            let mut n = 0;
            while n < batch.len() && at < top {
                // SAFETY: `at` lies in `[storage, top)`, the stopped stack's live words
                // (written by committed pushes, ordered before us by the fence).
                batch[n] = unsafe { &*at.cast::<AtomicPtr<u8>>() }.load(Ordering::Relaxed);
                at = at.wrapping_add(8);
                n += 1;
            }
            // SAFETY: the objects were free in the stopped stack, which no section can pop
            // any more; they are now only in `batch`.
            unsafe { central::insert(class, &batch[..n]) };
            drained += n;
        }
        header.top.store(begin, Ordering::Release);
    }
    // Step 4.
    if !any || BACKEND.fence_all().is_ok() {
        for (slot, class) in each() {
            if slot.meta().is_stopped(class) {
                restore(&slot, class, 0);
            } else {
                slot.set_capacity(class, 0);
            }
        }
    }
    drained
}

/// How many slots' resize locks [`lock_for_fork`] holds.
static LOCKED_FOR_FORK: AtomicUsize = AtomicUsize::new(0);

/// Take every slot's resize lock and keep them (the fork `prepare` handler, after the
/// release lock).
pub(crate) fn lock_for_fork() {
    let mut locked = 0;
    for slot in Slot::all() {
        slot.meta().resize.lock_and_keep();
        locked += 1;
    }
    LOCKED_FOR_FORK.store(locked, Ordering::Relaxed);
}

/// Release the resize locks after a fork: in the parent those [`lock_for_fork`] took
/// (regions published after it looked have locks that their own holders release); in the
/// child every slot's, since the child's only thread is the one that forked, which holds
/// none but those (one held by another thread at the fork would stay held for ever).
///
/// # Safety
/// Called by a fork handler on the thread that ran `lock_for_fork` (in the child: its copy),
/// once per `lock_for_fork`.
pub(crate) unsafe fn unlock_after_fork(in_child: bool) {
    let locked = LOCKED_FOR_FORK.swap(0, Ordering::Relaxed);
    for (index, slot) in Slot::all().enumerate() {
        if in_child || index < locked {
            // SAFETY: this thread took the lock in `lock_for_fork`, or (in the child) no
            // thread that could hold it exists any more.
            unsafe { slot.meta().resize.unlock_kept() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keep the calling thread on the CPU it runs on now; false when it cannot be pinned.
    fn pin_here() -> bool {
        // SAFETY: `sched_getcpu` has no preconditions.
        let Ok(cpu) = usize::try_from(unsafe { libc::sched_getcpu() }) else {
            return false;
        };
        // SAFETY: a zeroed `cpu_set_t` is an empty set, `CPU_SET` stays inside it for any
        // CPU the kernel reports (below `CPU_SETSIZE` here), and the call reads the set
        // through a pointer of the size it is given.
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// An owned class's object from a shared span (what a thread without a CPU gets from the
    /// stripe caches) freed on a CPU must not stay in that CPU's cache. It used to: the
    /// CPU's next allocation handed it out again, and each free of it took the slow path,
    /// for good (a 16-byte pair on that CPU at twice its time).
    #[test]
    fn a_stray_freed_on_a_cpu_leaves_its_cache() {
        let class = 1;
        assert!(class < central::OWNED_CLASSES);
        let warm = alloc(class);
        assert!(!warm.is_null());
        if !is_active() || !central::is_partitioned(class) || !pin_here() {
            // No per-CPU caches or partitions (fallback, Miri), or no way to stay on one
            // CPU: nothing to check.
            // SAFETY: a fresh object of `class`, freed once.
            return unsafe { free(class, warm, SpanOwner::NONE) };
        }
        let stray = stripe_cache::alloc(class);
        assert!(!stray.is_null());
        // SAFETY: `stray` is a live object of `class` from this allocator.
        let (owner, stack) = unsafe { central::span_owner_and_stack(stray) };
        assert_eq!(
            owner,
            SpanOwner::NONE,
            "the stripe caches hand out shared spans"
        );
        assert!(stack.is_null());
        // SAFETY: freed once, with its span header's owner and stack, as `dealloc` does.
        unsafe { free_owned(class, stray, owner, stack) };
        // The free left room on this CPU's stack, so a stray pushed there would be on top.
        let next = alloc(class);
        assert!(!next.is_null());
        assert_ne!(next, stray, "the stray stayed in the CPU cache");
        for object in [next, warm] {
            // SAFETY: live objects of `class`, each freed once with its span's owner.
            unsafe { free(class, object, central::span_owner(object)) };
        }
    }

    /// The fast paths go through `shared_base` alone. If set-up failed to publish it, every
    /// operation would take the out-of-line path, which is just as correct, so no other test
    /// would notice.
    #[test]
    fn the_fast_path_is_armed_exactly_when_glibc_shares_its_registration() {
        let object = alloc(0);
        assert!(!object.is_null());
        // SAFETY: a fresh object of class 0, freed once (`NONE` is always a valid owner).
        unsafe { free(0, object, SpanOwner::NONE) };
        let base = REGIONS.base.load(Ordering::Acquire);
        let shared_base = REGIONS.shared_base.load(Ordering::Acquire);
        if base.is_null() {
            // No per-CPU caches (no rseq, as under Miri or with PERCPU_NO_RSEQ=1).
            assert!(shared_base.is_null());
            return;
        }
        if BACKEND.shared().is_some() {
            assert_eq!(shared_base, base);
        } else {
            assert!(shared_base.is_null());
        }
    }
}
