//! Central free lists: one per size class, the last stop before the page heap.
//!
//! A class's central list holds the addresses of its free objects on a stack (an array in
//! its own mapping, grown by doubling) and a bump range in its newest span for objects never
//! handed out, so a fresh span costs nothing until used. Batches move by copying addresses;
//! the objects themselves, usually long out of cache by the time they get here, are never
//! read or written. When the stack's mapping cannot grow, objects go on an intrusive
//! overflow list (linked through their first word) instead of being lost. Everything
//! happens under the class's spin lock, around code that does not allocate (a new span or a
//! larger stack comes from `mmap`, directly or through the page heap's own lock).
//!
//! Objects do not know their span, and nothing counts live objects per span (that would
//! cost a pagemap lookup and a counter update on every object moved here). Instead
//! [`release_free_spans`] sweeps a class's list now and then: it sorts the free objects by
//! address, counts them per span (the pagemap knows each object's span start), and gives
//! every span whose objects are all here back to the page heap. The sweep is
//! `O(n log n)` in the list's length and runs only on an explicit
//! [`release_memory`](crate::release_memory) or when the free bytes here grew past the
//! release threshold (see [`release`](crate::release)).
//!
//! **Partitions.** Objects smaller than a cache line ([`OWNED_CLASSES`]) share lines with
//! their neighbours. Were one CPU's free of another CPU's object to go to the freeing CPU's
//! cache, that CPU would hand it out again at once, and two CPUs would write one line for as
//! long as both objects live (passive false sharing, Hoard's cache-scratch). So once the
//! per-CPU caches exist, these classes get one list per slot besides the shared one: a
//! slot's refills carve and take only from its own list, whose spans the pagemap records as
//! that slot's ([`SpanOwner`]), so a CPU hands out only objects from lines no other CPU is
//! handing out. A free on another CPU puts the object straight on its owner's list
//! ([`give_to_owner`]), and every object that reaches a central list goes to its owner's
//! ([`insert`] routes by the pagemap), so a span's free objects are all on one list and the
//! sweep below still finds every wholly free span. Spans carved before the caches existed,
//! or by threads with no CPU, have no owner and stay on the shared list.
//!
//! **Carving per slot.** From 64 bytes on no two objects share a line, but objects carved
//! for different CPUs still sat side by side: refills taking turns from one bump range gave
//! each CPU runs of a batch's objects (2 KiB at 64 bytes) between the other CPU's. Two
//! threads allocating and freeing 1000 blocks of 64 bytes each, pinned to the two CPUs of
//! the 2-core EPYC host of 2026-12-08, their caches filled at the same time, took 6.9-19.9
//! ns per block each (10 of 12 threads over 10 ns), against 5.4-7.7 once each CPU's blocks
//! came from spans of its own, and mimalloc's (pages per thread) 6.6-9.7, in the same
//! minutes. The likely cause, not confirmed (the host has no performance counters): the
//! hardware prefetchers fetch lines next to and ahead of the ones a CPU walks, so at each
//! boundary they pulled lines the other CPU was writing. So the classes up to 128 bytes
//! ([`PARTITIONED_CLASSES`]) have lists per slot too, and a slot's refills carve only its
//! own spans (freed objects come first, its own list's or, when that is empty, another
//! slot's: see `take_before_carving`). Their frees are not routed: the object goes to the
//! cache of the CPU that frees it (it shares no line, so handing it out there is safe and a
//! free from another CPU stays a plain push), and reaches its owner's list only when that
//! cache flushes it, through [`insert`]. Above 128 bytes a refill's run is 4 KiB or more,
//! so its boundaries are rarer, and those classes keep one shared list behind the transfer
//! cache: the same test at 144 bytes took 5.1-5.4 ns per block on CPU 0 with the caches
//! filled at once, against 4.6-4.8 filled one after the other, and at 256 bytes 7.3-9.7
//! against 7.5-8.3, where mimalloc took 7.0-9.8 and 7.5-7.8.
//!
//! Every span of the owned classes starts with a header line that holds its owner and the
//! owner's stack for the class ([`span_owner`], [`span_owner_and_stack`]), so the free fast
//! path finds both with two loads from one line at the object's own address
//! (`SPAN_ALIGN`-aligned spans: the header is at the object's address rounded down) rather
//! than the pagemap's two dependent loads. The line is written once, when the span is
//! carved, and only read afterwards, so it is shared by every CPU without moving; it costs
//! 64 bytes of each 64 KiB span (0.1%). The pagemap records the same owner, for the paths
//! that start from an address alone.

use crate::front;
use crate::os;
use crate::page_heap;
use crate::pagemap::{self, SpanOwner};
use crate::size_class::{CLASSES, NUM_CLASSES, SPAN_ALIGN};
use crate::spin::SpinLock;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use rseq_sys::BoundedStack;

struct Central {
    /// Free objects: `stack[..len]`, in a mapping with room for `room` pointers (none
    /// while `room` is 0). Pointers, not links through the objects: taking a batch or
    /// giving one back copies words here and never touches the objects, which are usually
    /// cold by the time they reach this list (a walk of links was a cache miss per object,
    /// under the lock).
    stack: *mut *mut u8,
    len: usize,
    room: usize,
    /// Free objects for which the stack could not grow (its mapping failed), linked
    /// through their first word, so that no object is ever lost.
    overflow: *mut u8,
    overflow_count: usize,
    /// Never-used objects: `[bump, bump + bump_left)` in the newest span (a pointer, so
    /// that objects carved from it keep the span's provenance).
    bump: *mut u8,
    bump_left: usize,
    /// Objects ever carved from spans (for statistics).
    carved: usize,
}

// SAFETY: the raw pointers are the list's own stack mapping and addresses of free objects
// owned by this list; both are only used under the list's lock.
unsafe impl Send for Central {}

const EMPTY: Central = Central {
    stack: core::ptr::null_mut(),
    len: 0,
    room: 0,
    overflow: core::ptr::null_mut(),
    overflow_count: 0,
    bump: core::ptr::null_mut(),
    bump_left: 0,
    carved: 0,
};

static CENTRAL: [SpinLock<Central>; NUM_CLASSES] = [const { SpinLock::new(EMPTY) }; NUM_CLASSES];

/// Classes whose spans name their owner in a header and whose frees go back to the owner
/// (see the module docs): those whose objects are smaller than a cache line (8 to 56
/// bytes); from 64 bytes on, an object is a multiple of a line and aligned to it.
pub(crate) const OWNED_CLASSES: usize = 7;
const _: () = assert!(
    CLASSES[OWNED_CLASSES - 1].size < 64 && CLASSES[OWNED_CLASSES].size == 64,
    "OWNED_CLASSES must be the classes under a cache line"
);

/// Classes with a central list per slot: the owned ones and those of 64 to 128 bytes, whose
/// spans are carved per slot too but whose frees stay on the freeing CPU (see the module
/// docs, "Carving per slot").
pub(crate) const PARTITIONED_CLASSES: usize = 16;
const _: () = assert!(
    PARTITIONED_CLASSES >= OWNED_CLASSES
        && CLASSES[PARTITIONED_CLASSES - 1].size == 128
        && CLASSES[PARTITIONED_CLASSES].size > 128,
    "PARTITIONED_CLASSES must be the classes up to 128 bytes"
);

/// Bytes at the start of every span of an owned class that hold its header (the owner word)
/// rather than objects: a whole line, so no object shares it. A multiple of every owned
/// class's alignment (the largest power of two dividing its size, under 64), so objects
/// after it keep their alignment.
const SPAN_HEADER_BYTES: usize = 64;
// `span_owner` finds the header by rounding down to `SPAN_ALIGN`: every owned class's span
// is exactly one such block (classes grow, so the largest owned one decides).
const _: () = assert!(
    CLASSES[OWNED_CLASSES - 1].span_bytes == SPAN_ALIGN
        && CLASSES[OWNED_CLASSES - 1].size * 8 <= SPAN_ALIGN - SPAN_HEADER_BYTES
);

/// Bytes at the start of a span of `class` before its first object.
const fn header_bytes(class: usize) -> usize {
    if class < OWNED_CLASSES {
        SPAN_HEADER_BYTES
    } else {
        0
    }
}

/// Objects in one span of `class`.
fn objects_per_span(class: usize) -> usize {
    (CLASSES[class].span_bytes - header_bytes(class)) / CLASSES[class].size
}

/// The owner of the span holding `object`, an object of an owned class, from the span's
/// header: one load.
///
/// # Safety
/// `object` is a live (or just freed) object of a class below [`OWNED_CLASSES`] from this
/// allocator, so its span, whose header was written before the object was first handed
/// out, stays carved while this reads it.
#[inline(always)]
pub(crate) unsafe fn span_owner(object: *mut u8) -> SpanOwner {
    // Spans of owned classes are one `SPAN_ALIGN` block, aligned to it.
    let header = object.map_addr(|addr| addr & !(SPAN_ALIGN - 1));
    // SAFETY: by the caller's contract `header` is the start of a live span in this
    // allocator's arena (whose provenance `object` carries), 64 KiB-aligned, whose first
    // word was stored by `take_or_carve` (a happens-before edge reaches every thread that
    // got the object) and is only read until the span is given back, which cannot happen
    // while one of its objects is in use.
    let raw = unsafe { AtomicUsize::from_ptr(header.cast::<usize>()) }.load(Ordering::Relaxed);
    SpanOwner::from_raw(raw)
}

/// The owner of the span holding `object` and the owner's stack for the span's class (see
/// [`front::owner_stack`]; null exactly when the span has no owner), from the span's
/// header: two loads from one line.
///
/// # Safety
/// As for [`span_owner`].
#[inline(always)]
pub(crate) unsafe fn span_owner_and_stack(object: *mut u8) -> (SpanOwner, *const BoundedStack) {
    let header = object.map_addr(|addr| addr & !(SPAN_ALIGN - 1));
    // SAFETY: as in `span_owner`; the second word was stored with the first.
    let stack = unsafe { AtomicPtr::from_ptr(header.add(8).cast::<*mut BoundedStack>()) }
        .load(Ordering::Relaxed);
    // SAFETY: forwarded from the caller.
    (unsafe { span_owner(object) }, stack.cast_const())
}

/// One slot's lists for the partitioned classes. All-zero bytes are a valid value of it (null
/// pointers, zero counts, unlocked locks: exactly `SpinLock::new(EMPTY)`), so a fresh
/// anonymous mapping of them needs no initialising writes, and only the slots in use are
/// ever touched.
#[repr(C)]
struct SlotPartitions {
    lists: [Partition; PARTITIONED_CLASSES],
}

/// A list on its own line (two: the adjacent-line prefetcher pairs them).
#[repr(align(128))]
struct Partition(SpinLock<Central>);

/// The partitions: `PARTITION_SLOTS` of them at `PARTITIONS`, set once by
/// [`set_up_partitions`] (the pointer claimed first, the count published after it with
/// release); none while the count is 0.
static PARTITIONS: AtomicPtr<SlotPartitions> = AtomicPtr::new(core::ptr::null_mut());
static PARTITION_SLOTS: AtomicUsize = AtomicUsize::new(0);

/// Give the partitioned classes a list per slot, for `slots` slots; false (and nothing changed)
/// when they cannot be mapped, or were set up already. Called once, by the thread setting
/// up the per-CPU caches, before they are published.
pub(crate) fn set_up_partitions(slots: usize) -> bool {
    if slots == 0
        || slots > pagemap::MAX_OWNED_SLOTS
        || PARTITION_SLOTS.load(Ordering::Acquire) != 0
    {
        return false;
    }
    let Some(bytes) = slots.checked_mul(core::mem::size_of::<SlotPartitions>()) else {
        return false;
    };
    let bytes = bytes.next_multiple_of(os::page_size());
    let Some(mapping) = os::map(bytes) else {
        return false;
    };
    // Only the first caller's mapping is ever published (the unit tests call this beside
    // the caches' own set-up), so the count always describes the mapping it goes with.
    if PARTITIONS
        .compare_exchange(
            core::ptr::null_mut(),
            mapping.as_ptr().cast(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        // SAFETY: the mapping was never published; nobody else knows it.
        unsafe { os::unmap(mapping, bytes) };
        return false;
    }
    PARTITION_SLOTS.store(slots, Ordering::Release);
    true
}

/// Every slot's partitions (none before [`set_up_partitions`]).
fn all_partitions() -> &'static [SlotPartitions] {
    let slots = PARTITION_SLOTS.load(Ordering::Acquire);
    if slots == 0 {
        return &[];
    }
    // SAFETY: a non-zero count was published with release after the pointer to a fresh,
    // zeroed mapping of `slots` `SlotPartitions` (a valid value, see its docs), never
    // unmapped and used only through its locks and atomics.
    unsafe { core::slice::from_raw_parts(PARTITIONS.load(Ordering::Relaxed), slots) }
}

/// Whether `class` has a list per slot (it is one of [`PARTITIONED_CLASSES`], and the
/// partitions exist).
#[inline]
pub(crate) fn is_partitioned(class: usize) -> bool {
    class < PARTITIONED_CLASSES && PARTITION_SLOTS.load(Ordering::Relaxed) != 0
}

/// `slot`'s list for `class`, if it has one.
fn partition(class: usize, slot: usize) -> Option<&'static SpinLock<Central>> {
    if class >= PARTITIONED_CLASSES {
        return None;
    }
    Some(&all_partitions().get(slot)?.lists[class].0)
}

/// The list objects of `class` from spans of `owner` go to.
fn list_of(class: usize, owner: SpanOwner) -> &'static SpinLock<Central> {
    owner
        .get()
        .and_then(|slot| partition(class, slot))
        .unwrap_or(&CENTRAL[class])
}

/// Bytes of objects on all classes' free lists (updated under each class's lock).
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of objects on the central free lists of all classes.
pub(crate) fn free_bytes() -> usize {
    FREE_BYTES.load(Ordering::Relaxed)
}

const WORD: usize = core::mem::size_of::<*mut u8>();

impl Central {
    fn free_count(&self) -> usize {
        self.len + self.overflow_count
    }

    /// Make room for at least `wanted` pointers on the stack (doubling, so that `insert`
    /// stays amortised O(1) per object); false when the mapping cannot grow.
    fn reserve(&mut self, wanted: usize) -> bool {
        if wanted <= self.room {
            return true;
        }
        #[cfg(test)]
        if tests::REFUSE_GROWTH.get() {
            return false;
        }
        let Some(bytes) = wanted
            .max(self.room * 2)
            .checked_mul(WORD)
            .map(|bytes| bytes.next_multiple_of(os::page_size()))
        else {
            return false;
        };
        let mapping = match NonNull::new(self.stack.cast::<u8>()) {
            // SAFETY: the stack is this list's own whole mapping of `room` words, used
            // only under the lock held through `self`; on success the old range is not
            // used again (the new address replaces it below).
            Some(old) => unsafe { os::remap(old, self.room * WORD, bytes) },
            None => os::map(bytes),
        };
        let Some(mapping) = mapping else {
            return false;
        };
        self.stack = mapping.as_ptr().cast();
        self.room = bytes / WORD;
        true
    }

    /// [`take_free`](Self::take_free) for a list of `class`, with [`FREE_BYTES`] kept up to
    /// date: what every path that hands free objects out of a list calls.
    fn take_free_counted(&mut self, class: usize, out: &mut [*mut u8]) -> usize {
        let n = self.take_free(out);
        if n > 0 {
            FREE_BYTES.fetch_sub(n * CLASSES[class].size, Ordering::Relaxed);
        }
        n
    }

    /// Fill `out` from the free objects (the top of the stack, the newest, then the
    /// overflow list); returns how many.
    fn take_free(&mut self, out: &mut [*mut u8]) -> usize {
        let taken = self.len.min(out.len());
        if taken > 0 {
            self.len -= taken;
            // SAFETY: `stack[..len + taken]` were written by `put` in the list's mapping
            // (non-null, as `taken > 0`), and `out` is the caller's own buffer.
            unsafe {
                core::ptr::copy_nonoverlapping(self.stack.add(self.len), out.as_mut_ptr(), taken);
            }
        }
        let mut n = taken;
        while n < out.len() && !self.overflow.is_null() {
            let object = self.overflow;
            // SAFETY: objects on the overflow list are ours, at least 8 bytes and 8-aligned,
            // and their first word holds the next link written by `put`.
            self.overflow = unsafe { object.cast::<*mut u8>().read() };
            self.overflow_count -= 1;
            out[n] = object;
            n += 1;
        }
        n
    }

    /// Add free objects: onto the stack, or onto the overflow list when the stack cannot
    /// grow.
    ///
    /// # Safety
    /// As for [`insert`].
    unsafe fn put(&mut self, items: &[*mut u8]) {
        if items.is_empty() {
            return;
        }
        if self.reserve(self.len + items.len()) {
            // SAFETY: the stack has room for `len + items.len()` words, and `items` is the
            // caller's buffer, not the stack mapping.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    items.as_ptr(),
                    self.stack.add(self.len),
                    items.len(),
                );
            }
            self.len += items.len();
        } else {
            for &object in items {
                // SAFETY: the caller hands over the object: at least 8 bytes, 8-aligned,
                // unused.
                unsafe { object.cast::<*mut u8>().write(self.overflow) };
                self.overflow = object;
            }
            self.overflow_count += items.len();
        }
    }

    /// Move the overflow list onto the stack, if the stack can grow to take it.
    fn absorb_overflow(&mut self) {
        if self.overflow_count == 0 || !self.reserve(self.len + self.overflow_count) {
            return;
        }
        while !self.overflow.is_null() {
            let object = self.overflow;
            // SAFETY: as in `take_free`: an overflow object's first word is its link.
            self.overflow = unsafe { object.cast::<*mut u8>().read() };
            // SAFETY: `reserve` made room for every overflow object.
            unsafe { self.stack.add(self.len).write(object) };
            self.len += 1;
        }
        self.overflow_count = 0;
    }

    /// Give back most of the stack's mapping when under a quarter of it is in use (after
    /// a release sweep), keeping room for twice what is left.
    fn shrink(&mut self) {
        let page_words = os::page_size() / WORD;
        let keep = (self.len * 2).max(1).next_multiple_of(page_words);
        if self.room < 4 * keep {
            return;
        }
        let Some(old) = NonNull::new(self.stack.cast::<u8>()) else {
            return;
        };
        // SAFETY: as in `reserve`; `keep` words still hold the `len` objects.
        if let Some(mapping) = unsafe { os::remap(old, self.room * WORD, keep * WORD) } {
            self.stack = mapping.as_ptr().cast();
            self.room = keep;
        }
    }
}

/// Fill `out` with free objects of `class` from the shared list; returns how many (0 only
/// when out of memory).
pub(crate) fn remove(class: usize, out: &mut [*mut u8]) -> usize {
    take_or_carve(&mut CENTRAL[class].lock(), class, SpanOwner::NONE, out)
}

/// Fill `out` with free objects of `class` for slot `slot`: from its own list when `class`
/// is partitioned (see the module docs), else from the shared list. Returns how many (0
/// only when out of memory).
pub(crate) fn remove_owned(class: usize, slot: usize, out: &mut [*mut u8]) -> usize {
    let Some(list) = partition(class, slot) else {
        return remove(class, out);
    };
    if class >= OWNED_CLASSES {
        // Carved per slot only: freed objects first, this slot's or another's (see
        // `take_before_carving`).
        let n = take_before_carving(list, class, slot, out);
        if n > 0 {
            return n;
        }
    }
    take_or_carve(&mut list.lock(), class, SpanOwner::slot(slot), out)
}

/// For a class carved per slot but not owned: fill `out` from the free objects of `slot`'s
/// own list, else from those of another slot's list. Returns how many (0: nothing free
/// anywhere; the caller takes from the slot's bump range, or carves).
///
/// The per-slot spans keep two CPUs' fresh objects apart; they are not needed for
/// correctness, since these objects share no line. Freed objects are used before fresh
/// ones, as the shared list did: without this, a slot whose list ran dry went on to its bump
/// range and fresh spans while another slot's list held free objects, and xmalloc-test's
/// producers, moving between CPUs, went from 33.6-39.7 to 48-53 MiB peak RSS. Other lists are
/// tried (`try_lock`, never waited for, one lock at a time: no lock order to keep) in slot
/// order from the next one, and only their free objects, never their bump ranges, which
/// stay their slot's.
fn take_before_carving(
    list: &SpinLock<Central>,
    class: usize,
    slot: usize,
    out: &mut [*mut u8],
) -> usize {
    let n = list.lock().take_free_counted(class, out);
    if n > 0 {
        return n;
    }
    let slots = all_partitions().len();
    for other in (1..slots).map(|step| (slot + step) % slots) {
        let Some(mut other_list) = partition(class, other).and_then(SpinLock::try_lock) else {
            continue;
        };
        let n = other_list.take_free_counted(class, out);
        if n > 0 {
            return n;
        }
    }
    0
}

/// Fill `out` from `list`'s free objects, then from its bump range, carving a fresh span
/// recorded as `owner`'s when nothing else was found.
fn take_or_carve(list: &mut Central, class: usize, owner: SpanOwner, out: &mut [*mut u8]) -> usize {
    let size = CLASSES[class].size;
    let mut n = list.take_free_counted(class, out);
    while n < out.len() {
        if list.bump_left >= size {
            out[n] = list.bump;
            list.bump = list.bump.wrapping_add(size);
            list.bump_left -= size;
            list.carved += 1;
            n += 1;
        } else {
            // Refill the bump range from a fresh span only when nothing was found: a partial
            // batch is fine and keeps the lock short.
            if n > 0 {
                break;
            }
            let span_bytes = CLASSES[class].span_bytes;
            let Some(span) = page_heap::new_span(span_bytes, class, owner) else {
                break;
            };
            let first = header_bytes(class);
            if first > 0 {
                // A header with an owner always has the owner's stack: the free fast path
                // relies on it. Owned spans are carved for a slot's refill, once the
                // regions exist; a partition without them (only unit tests make one) gets
                // headers of no owner, which forgo the routing on the fast path.
                let stack = front::owner_stack(owner, class);
                let header_owner = if stack.is_null() {
                    SpanOwner::NONE
                } else {
                    owner
                };
                // SAFETY: the span is fresh and ours alone (under the list's lock, not yet
                // handed out), 64 KiB-aligned, so its first two words are aligned and no
                // object's (the header is a whole line).
                unsafe {
                    AtomicUsize::from_ptr(span.as_ptr().cast::<usize>())
                        .store(header_owner.raw(), Ordering::Relaxed);
                    AtomicPtr::from_ptr(span.as_ptr().add(8).cast::<*mut BoundedStack>())
                        .store(stack.cast_mut(), Ordering::Relaxed);
                }
            }
            list.bump = span.as_ptr().wrapping_add(first);
            list.bump_left = objects_per_span(class) * size;
        }
    }
    n
}

/// Take back free objects of `class`, each onto the list of its span's owner.
///
/// # Safety
/// Every pointer in `items` is an object of `class` from this allocator that nobody uses
/// any more and that is on no other list.
pub(crate) unsafe fn insert(class: usize, items: &[*mut u8]) {
    if !is_partitioned(class) {
        // SAFETY: forwarded from the caller.
        return unsafe { insert_into(&CENTRAL[class], class, items) };
    }
    // A batch usually comes from one CPU's cache, so from one owner: one lock per run. Spans
    // are whole, aligned `SPAN_ALIGN` blocks, so an object in the same block as the last one
    // looked up is in the same span, with the same owner, and needs no lookup.
    let block_of = |object: &*mut u8| object.addr() / SPAN_ALIGN;
    let mut rest = items;
    while let Some(first) = rest.first() {
        let owner = pagemap::owner(first.addr());
        let mut block = block_of(first);
        let run = rest
            .iter()
            .position(|object| {
                if block_of(object) == block {
                    return false;
                }
                block = block_of(object);
                pagemap::owner(object.addr()) != owner
            })
            .unwrap_or(rest.len());
        // SAFETY: forwarded from the caller; `list_of` is the list of the run's owner.
        unsafe { insert_into(list_of(class, owner), class, &rest[..run]) };
        rest = &rest[run..];
    }
}

/// # Safety
/// As for [`insert`].
unsafe fn insert_into(list: &SpinLock<Central>, class: usize, items: &[*mut u8]) {
    let mut list = list.lock();
    // SAFETY: forwarded from the caller.
    unsafe { list.put(items) };
    FREE_BYTES.fetch_add(items.len() * CLASSES[class].size, Ordering::Relaxed);
}

/// Give `object` of `class` back to slot `slot`, which owns its span, from another CPU (or
/// from a thread with none): onto the slot's list, for its next refill. A lock and a pointer
/// stored: the object itself is not touched (an earlier lock-free inbox linked objects
/// through their first word, and the owner's walk of that list missed the cache once per
/// object, in series; mstress ran 2% faster without it).
///
/// # Safety
/// As for [`insert`], for `object`; its span is `slot`'s.
pub(crate) unsafe fn give_to_owner(class: usize, slot: usize, object: *mut u8) {
    let list = partition(class, slot).unwrap_or(&CENTRAL[class]);
    // SAFETY: forwarded from the caller.
    unsafe { insert_into(list, class, &[object]) };
}

/// `(objects ever carved from spans, objects free here)` for `class`, over the shared list
/// and every slot's list.
pub(crate) fn counts(class: usize) -> (usize, usize) {
    let mut carved = 0;
    let mut free = 0;
    let slots = 0..all_partitions().len();
    for list in
        core::iter::once(&CENTRAL[class]).chain(slots.filter_map(|slot| partition(class, slot)))
    {
        let list = list.lock();
        carved += list.carved;
        free += list.free_count();
    }
    (carved, free)
}

/// Give every wholly free span of `class` back to the page heap (which releases its memory
/// to the system); returns the bytes released.
///
/// A span is wholly free when all the objects ever carved from it are on the free list:
/// every object of the span, or for the span the bump range is in, every object before
/// the bump pointer (the rest was never handed out, and goes with it). The free objects are
/// sorted by address in place (so each span's objects are adjacent), counted per span, and
/// the survivors compacted to the bottom of the stack, highest address first, so that later
/// batches, taken from the top, walk memory upwards. The released spans' starts are
/// collected in a scratch mapping and handed to the page heap after the list's lock is
/// dropped; the stack's mapping shrinks when it is mostly empty.
pub(crate) fn release_free_spans(class: usize) -> usize {
    let slots = 0..all_partitions().len();
    core::iter::once(&CENTRAL[class])
        .chain(slots.filter_map(|slot| partition(class, slot)))
        .map(|list| release_spans_of(list, class))
        .sum()
}

/// [`release_free_spans`] for one list.
fn release_spans_of(list: &SpinLock<Central>, class: usize) -> usize {
    let size = CLASSES[class].size;
    let span_bytes = CLASSES[class].span_bytes;
    let per_span = objects_per_span(class);
    let mut list = list.lock();
    list.absorb_overflow();
    let n = list.len;
    // The span the bump range is in, and how many objects were carved from it.
    let bump_span = if list.bump_left > 0 {
        pagemap::span_start(list.bump.addr()).map(|span| {
            let carved = (list.bump.addr() - span - header_bytes(class)) / size;
            (span, carved)
        })
    } else {
        None
    };
    let fewest = match bump_span {
        Some((_, carved)) if carved > 0 => carved.min(per_span),
        _ => per_span,
    };
    if n == 0 || n < fewest {
        return 0;
    }
    // Every span released but the bump range's has `per_span` objects here.
    let most_released = 1 + n / per_span;
    let scratch_bytes = (most_released * WORD).next_multiple_of(os::page_size());
    let Some(scratch) = os::map(scratch_bytes) else {
        return 0;
    };
    // SAFETY: the fresh mapping holds `most_released` words, is zeroed (null pointers), and
    // is only used through this slice until it is unmapped below.
    let spans = unsafe {
        core::slice::from_raw_parts_mut(scratch.as_ptr().cast::<*mut u8>(), most_released)
    };
    // SAFETY: `stack[..n]` holds the pointers `put` and `absorb_overflow` wrote, in the
    // list's own mapping, which only this lock holder uses while the slice lives.
    let objects = unsafe { core::slice::from_raw_parts_mut(list.stack, n) };
    objects.sort_unstable_by(|a, b| b.cmp(a));
    let mut released_spans = 0;
    let mut kept = 0;
    let mut i = 0;
    while i < n {
        // Every free object lies in a span of this class; `None` would be a broken book,
        // and keeping such an object on the list is the harmless answer.
        let span = pagemap::span_start(objects[i].addr());
        let mut j = i + 1;
        if let Some(span) = span {
            // Spans do not overlap, so the objects sorted (downwards) after `i` that are
            // at or above `span` are exactly this span's.
            while j < n && objects[j].addr() >= span {
                j += 1;
            }
        }
        let carved = match (span, bump_span) {
            (Some(span), Some((bump, carved))) if span == bump => carved,
            _ => per_span,
        };
        match span {
            Some(span) if j - i == carved => {
                if matches!(bump_span, Some((bump, _)) if bump == span) {
                    list.bump = core::ptr::null_mut();
                    list.bump_left = 0;
                }
                list.carved -= carved;
                // The span's start, derived from one of its objects to keep the arena's
                // provenance.
                spans[released_spans] = objects[i].with_addr(span);
                released_spans += 1;
            }
            _ => {
                // Survivors move down: `kept <= i`, so nothing unread is overwritten.
                objects.copy_within(i..j, kept);
                kept += j - i;
            }
        }
        i = j;
    }
    list.len = kept;
    list.shrink();
    FREE_BYTES.fetch_sub((n - kept) * size, Ordering::Relaxed);
    drop(list);
    let mut released = 0;
    for &span in &spans[..released_spans] {
        // SAFETY: every object carved from this span was on the free list and has been
        // taken off it under the lock, and the bump range no longer points into it, so
        // nothing refers to the span any more; span starts are never null.
        released += unsafe { page_heap::release_span(NonNull::new_unchecked(span), span_bytes) };
    }
    // SAFETY: the scratch mapping is ours and `spans` is not used past this point.
    unsafe { os::unmap(scratch, scratch_bytes) };
    released
}

/// Slots whose partitions [`lock_for_fork`] locked.
static LOCKED_FOR_FORK: AtomicUsize = AtomicUsize::new(0);

/// Take every list's lock and keep them: the shared ones in class order, then each slot's
/// (the fork `prepare` handler).
pub(crate) fn lock_for_fork() {
    CENTRAL.iter().for_each(SpinLock::lock_and_keep);
    let slots = all_partitions();
    for slot in slots {
        slot.lists.iter().for_each(|list| list.0.lock_and_keep());
    }
    LOCKED_FOR_FORK.store(slots.len(), Ordering::Relaxed);
}

/// Release the locks taken by [`lock_for_fork`] (partitions set up since were not locked
/// by it, and are left alone).
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    let locked = LOCKED_FOR_FORK.swap(0, Ordering::Relaxed);
    for slot in all_partitions()[..locked].iter().rev() {
        for list in slot.lists.iter().rev() {
            // SAFETY: forwarded from the caller.
            unsafe { list.0.unlock_kept() };
        }
    }
    for lock in CENTRAL.iter().rev() {
        // SAFETY: forwarded from the caller.
        unsafe { lock.unlock_kept() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;

    thread_local! {
        /// Makes `Central::reserve` fail on this thread, as when `mmap` refuses.
        pub(super) static REFUSE_GROWTH: Cell<bool> = const { Cell::new(false) };
    }

    /// Sets up partitions if nothing has (under Miri nothing else does); the slots there are.
    fn partition_slots() -> usize {
        set_up_partitions(2);
        // Another test's call may have claimed the mapping and not yet published the count:
        // wait for it, a while (a mapping that failed publishes nothing).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while all_partitions().is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        all_partitions().len()
    }

    /// The free objects on `slot`'s list for `class`.
    fn held_by(class: usize, slot: usize) -> usize {
        partition(class, slot)
            .expect("partitioned")
            .lock()
            .free_count()
    }

    #[test]
    fn owned_objects_go_back_to_their_slot_and_only_there() {
        // Only this test uses class 4 in this binary.
        let class = 4;
        // The header names the owner and its stack for the class when the per-CPU caches
        // exist (with rseq: set up here, if no other test did); without them this test's
        // partitions are made by hand, and the headers name no owner and no stack.
        let warm = crate::front::alloc(0);
        // SAFETY: a fresh object of class 0, freed once (`NONE` is always a valid owner).
        unsafe { crate::front::free(0, warm, SpanOwner::NONE) };
        let slots = partition_slots();
        assert!(slots > 0 && is_partitioned(class));
        let slot = slots - 1;
        let mut batch = [core::ptr::null_mut(); 32];
        assert_eq!(remove_owned(class, slot, &mut batch), 32);
        let stack = crate::front::owner_stack(SpanOwner::slot(slot), class);
        let header_owner = if stack.is_null() {
            SpanOwner::NONE
        } else {
            SpanOwner::slot(slot)
        };
        assert_eq!(stack.is_null(), !crate::front::is_active());
        for &object in &batch {
            assert_eq!(pagemap::owner(object.addr()), SpanOwner::slot(slot));
            // SAFETY: a live object of an owned class, just taken from its list.
            assert_eq!(unsafe { span_owner(object) }, header_owner);
            // SAFETY: as above.
            let from_header = unsafe { span_owner_and_stack(object) };
            assert_eq!(from_header, (header_owner, stack));
            assert!(
                object.addr() % SPAN_ALIGN >= SPAN_HEADER_BYTES,
                "an object on the header"
            );
        }
        let shared_before = CENTRAL[class].lock().free_count();
        let on_list = held_by(class, slot);
        // Half from another CPU, given back; half through a flush, routed.
        for &object in &batch[..16] {
            // SAFETY: each object came from `remove_owned` and is given back once.
            unsafe { give_to_owner(class, slot, object) };
        }
        // SAFETY: as above.
        unsafe { insert(class, &batch[16..]) };
        assert_eq!(held_by(class, slot), on_list + 32);
        assert_eq!(CENTRAL[class].lock().free_count(), shared_before);
        // The slot's next take finds them.
        let mut again = [core::ptr::null_mut(); 32];
        assert_eq!(remove_owned(class, slot, &mut again), 32);
        let mut got: Vec<_> = again.to_vec();
        let mut gave: Vec<_> = batch.to_vec();
        got.sort();
        gave.sort();
        assert_eq!(got, gave);
        assert_eq!(held_by(class, slot), on_list);
        // A batch mixing owners (shared, this slot's, shared again) splits by owner.
        let mut shared = [core::ptr::null_mut(); 8];
        assert_eq!(remove(class, &mut shared), 8);
        for &object in &shared {
            // SAFETY: as above.
            assert_eq!(unsafe { span_owner(object) }, SpanOwner::NONE);
            // SAFETY: as above.
            assert!(unsafe { span_owner_and_stack(object) }.1.is_null());
        }
        let shared_before = CENTRAL[class].lock().free_count();
        let mixed: Vec<*mut u8> = shared[..4]
            .iter()
            .chain(&again[..16])
            .chain(&shared[4..])
            .copied()
            .collect();
        // SAFETY: as above.
        unsafe { insert(class, &mixed) };
        assert_eq!(CENTRAL[class].lock().free_count(), shared_before + 8);
        assert_eq!(held_by(class, slot), on_list + 16);
        // Back for good; the sweep finds both wholly free spans, the slot's and the shared
        // list's (nothing else carves this class here).
        // SAFETY: as above.
        unsafe { insert(class, &again[16..]) };
        let (carved, _) = counts(class);
        assert!(release_free_spans(class) > 0);
        assert_eq!(counts(class).0, carved - 32 - 8);
    }

    #[test]
    fn classes_carved_per_slot_come_from_their_slots_spans_and_go_back_there() {
        // Only this test uses class 10 (88 bytes) in this binary.
        let class = 10;
        assert!((OWNED_CLASSES..PARTITIONED_CLASSES).contains(&class));
        assert_eq!(header_bytes(class), 0, "no header: frees are not routed");
        let slots = partition_slots();
        assert!(slots > 0 && is_partitioned(class));
        let mut taken: Vec<(usize, [*mut u8; 32])> = Vec::new();
        for slot in 0..slots.min(2) {
            let mut batch = [core::ptr::null_mut(); 32];
            assert_eq!(remove_owned(class, slot, &mut batch), 32);
            // The slot's first take carves a fresh span of its own, from its start.
            assert_eq!(batch[0].addr() % SPAN_ALIGN, 0);
            for &object in &batch {
                assert_eq!(pagemap::owner(object.addr()), SpanOwner::slot(slot));
            }
            taken.push((slot, batch));
        }
        if let [(_, first), (_, second)] = taken.as_slice() {
            let spans = |batch: &[*mut u8; 32]| -> Vec<usize> {
                batch.iter().map(|o| o.addr() / SPAN_ALIGN).collect()
            };
            assert!(
                spans(first)
                    .iter()
                    .all(|span| !spans(second).contains(span)),
                "two slots carved from one span"
            );
        }
        // Back through flushes that mix the slots' objects: each onto its owner's list.
        let before: Vec<usize> = taken
            .iter()
            .map(|&(slot, _)| held_by(class, slot))
            .collect();
        let shared_before = CENTRAL[class].lock().free_count();
        let mut mixed = Vec::new();
        for i in 0..32 {
            mixed.extend(taken.iter().map(|(_, batch)| batch[i]));
        }
        // SAFETY: each object came from `remove_owned` and is given back once.
        unsafe { insert(class, &mixed) };
        for (&(slot, _), before) in taken.iter().zip(before) {
            assert_eq!(held_by(class, slot), before + 32);
        }
        assert_eq!(CENTRAL[class].lock().free_count(), shared_before);
        // Every span is wholly free again, on its owner's list, and the sweep finds it.
        let (carved, _) = counts(class);
        assert!(release_free_spans(class) > 0);
        assert_eq!(counts(class).0, carved - 32 * taken.len());
    }

    #[test]
    fn a_slot_out_of_its_own_takes_another_slots_free_objects_before_carving() {
        // Only this test uses class 11 (96 bytes) in this binary.
        let class = 11;
        assert!((OWNED_CLASSES..PARTITIONED_CLASSES).contains(&class));
        let slots = partition_slots();
        if slots < 2 {
            // One slot (a one-CPU machine): no other slot to take from.
            return;
        }
        let mut spare = [core::ptr::null_mut(); 32];
        assert_eq!(remove_owned(class, 0, &mut spare), 32);
        // SAFETY: the objects came from `remove_owned` and are given back once.
        unsafe { insert(class, &spare) };
        assert_eq!(held_by(class, 0), 32);
        let (carved, _) = counts(class);
        // Slot 1 has nothing of its own: it takes slot 0's free objects, carving nothing.
        let mut first = [core::ptr::null_mut(); 32];
        assert_eq!(remove_owned(class, 1, &mut first), 32);
        let (mut got, mut gave) = (first.to_vec(), spare.to_vec());
        got.sort();
        gave.sort();
        assert_eq!(got, gave);
        assert_eq!(counts(class).0, carved, "a span was carved");
        assert_eq!(held_by(class, 0), 0);
        // Now nothing is free anywhere: slot 1 carves a span of its own.
        let mut second = [core::ptr::null_mut(); 32];
        assert_eq!(remove_owned(class, 1, &mut second), 32);
        for &object in &second {
            assert_eq!(pagemap::owner(object.addr()), SpanOwner::slot(1));
        }
        // Back through a flush, each to its owner's list; both spans are wholly free again.
        let (carved, _) = counts(class);
        let all: Vec<*mut u8> = first.iter().chain(&second).copied().collect();
        // SAFETY: as above.
        unsafe { insert(class, &all) };
        assert_eq!((held_by(class, 0), held_by(class, 1)), (32, 32));
        assert!(release_free_spans(class) > 0);
        assert_eq!(counts(class).0, carved - 64);
    }

    #[test]
    fn frees_from_other_threads_reach_the_owner_exactly_once() {
        // Only this test uses class 5 in this binary.
        let class = 5;
        let slots = partition_slots();
        assert!(slots > 0);
        let slot = 0;
        let per_thread = if cfg!(miri) { 40 } else { 2_000 };
        let threads = 3;
        let mut objects = Vec::new();
        let mut out = [core::ptr::null_mut(); 32];
        while objects.len() < per_thread * threads {
            let n = remove_owned(class, slot, &mut out);
            assert!(n > 0, "out of memory");
            objects.extend_from_slice(&out[..n]);
        }
        let addresses: Vec<usize> = objects.iter().map(|o| o.addr()).collect();
        let parts: Vec<SendPtrs> = objects
            .chunks(per_thread)
            .map(|c| SendPtrs(c.to_vec()))
            .collect();
        let taken = std::thread::scope(|scope| {
            for part in parts {
                scope.spawn(move || {
                    let part = part;
                    for &object in &part.0 {
                        // SAFETY: each object is free, given back once, by one thread.
                        unsafe { give_to_owner(class, slot, object) };
                    }
                });
            }
            // The owner takes while the others free.
            let mut taken = Vec::new();
            while taken.len() < per_thread {
                let n = remove_owned(class, slot, &mut out);
                taken.extend(out[..n].iter().map(|o| o.addr()));
            }
            taken
        });
        // Everything given back is now either taken or on the slot's list: take the rest.
        let mut all: Vec<usize> = taken;
        let on_list = held_by(class, slot);
        let mut rest = vec![core::ptr::null_mut(); on_list + objects.len()];
        let n = remove_owned(class, slot, &mut rest);
        all.extend(rest[..n].iter().map(|o| o.addr()));
        let given: BTreeSet<usize> = addresses.iter().copied().collect();
        let seen: BTreeSet<usize> = all.iter().copied().filter(|a| given.contains(a)).collect();
        assert_eq!(seen, given, "every object given back came out again");
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "no object came out twice");
        // SAFETY: every object taken last is free and handed back once (those the owner
        // took while the others freed stay out, as if in use).
        unsafe { insert(class, &rest[..n]) };
    }

    struct SendPtrs(Vec<*mut u8>);
    // SAFETY: the pointers are free objects handed to one thread, which alone uses them.
    unsafe impl Send for SendPtrs {}

    #[test]
    fn objects_outlive_a_stack_that_cannot_grow() {
        let mut storage = vec![[0usize; 2]; 600];
        let objects: Vec<*mut u8> = storage.iter_mut().map(|o| o.as_mut_ptr().cast()).collect();
        let mut list = EMPTY;
        // SAFETY: each object is 16 bytes, 8-aligned, unused, and handed over once.
        unsafe { list.put(&objects[..100]) };
        assert_eq!((list.len, list.overflow_count), (100, 0));
        REFUSE_GROWTH.set(true);
        // More than a page of words: the stack must grow, and cannot.
        // SAFETY: as above.
        unsafe { list.put(&objects[100..]) };
        assert_eq!((list.len, list.overflow_count), (100, 500));
        assert_eq!(list.free_count(), 600);
        // Still refused: the overflow stays where it is.
        list.absorb_overflow();
        assert_eq!(list.overflow_count, 500);
        REFUSE_GROWTH.set(false);

        let mut out = vec![core::ptr::null_mut(); 150];
        assert_eq!(list.take_free(&mut out), 150);
        // The whole stack, then the overflow list from its newest object.
        assert_eq!(out[..100], objects[..100]);
        assert_eq!(out[100], objects[599]);
        let mut seen: BTreeSet<*mut u8> = out.iter().copied().collect();
        list.absorb_overflow();
        assert_eq!((list.len, list.overflow_count), (450, 0));
        let mut rest = vec![core::ptr::null_mut(); 600];
        assert_eq!(list.take_free(&mut rest), 450);
        assert_eq!(list.take_free(&mut rest), 0);
        seen.extend(&rest[..450]);
        assert_eq!(seen, objects.iter().copied().collect::<BTreeSet<_>>());

        let stack = NonNull::new(list.stack.cast::<u8>()).unwrap();
        // SAFETY: the list's own mapping, not used past this point.
        unsafe { os::unmap(stack, list.room * WORD) };
    }
}
