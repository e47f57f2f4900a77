//! The pagemap: from any address this allocator handed out to what it belongs to.
//!
//! A two-level radix tree over 48-bit addresses in 4 KiB granules (a fixed granule, so it
//! is correct for any page size of 4 KiB or more). The root is a static array of leaf
//! pointers; leaves are mapped on demand and never freed. Lookups are two atomic loads.
//!
//! Entries ([`Entry`]): small-object spans record their size class in every granule they
//! cover (objects are freed by interior address), together with the granule's distance from
//! the span's start (so [`span_start`] finds the span of any object, for releasing wholly
//! free spans) and the span's [`SpanOwner`] (read by the free path with the class, in the
//! same load); large allocations record their mapped length in their first granule only
//! (they are freed by their start address).

use crate::os;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

const GRANULE_SHIFT: usize = 12;
const ADDRESS_BITS: usize = 48;
const LEAF_BITS: usize = 18;
const ROOT_BITS: usize = ADDRESS_BITS - GRANULE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
/// A small entry is `1 | class << 1 | granules from the span's start << OFFSET_SHIFT |
/// owner << OWNER_SHIFT`.
const CLASS_MASK: usize = 0x7f;
const OFFSET_SHIFT: usize = 8;
const OWNER_SHIFT: usize = 40;
const OFFSET_MASK: usize = (1 << (OWNER_SHIFT - OFFSET_SHIFT)) - 1;
/// Slots a [`SpanOwner`] can name: `0..MAX_OWNED_SLOTS`.
pub(crate) const MAX_OWNED_SLOTS: usize = (1 << (usize::BITS as usize - OWNER_SHIFT)) - 1;
const _: () = assert!(crate::size_class::NUM_CLASSES <= CLASS_MASK + 1);

struct Leaf {
    entries: [AtomicUsize; LEAF_LEN],
}

const ROOT_LEN: usize = 1 << ROOT_BITS;

/// The root: a pointer per leaf, each used only through the atomic [`Root::slot`] makes of
/// it. One `UnsafeCell` around the whole array, rather than an array of `AtomicPtr`s, so
/// that a reference to the static is a single interior-mutable range: Miri retags that
/// reference on every access, and walking a quarter-million atomics each time made the
/// interpreted tests crawl. The machine code is the same.
struct Root(UnsafeCell<[*mut Leaf; ROOT_LEN]>);

// SAFETY: the array is only ever read and written through the atomics `slot` hands out.
unsafe impl Sync for Root {}

impl Root {
    #[inline]
    fn slot(&self, index: usize) -> &AtomicPtr<Leaf> {
        // Masking keeps any index in bounds; `split` already yields only these.
        let index = index & (ROOT_LEN - 1);
        // SAFETY: `index` is in bounds of the static array, which lives for the whole
        // program; `*mut Leaf` has `AtomicPtr<Leaf>`'s size and alignment; and every access
        // to the array is atomic, through views made here, so none races a non-atomic one.
        unsafe { AtomicPtr::from_ptr(self.0.get().cast::<*mut Leaf>().add(index)) }
    }
}

static ROOT: Root = Root(UnsafeCell::new([core::ptr::null_mut(); ROOT_LEN]));

/// What an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Nothing this allocator handed out.
    None,
    /// An object of this size class (the span offset kept beside it is read by
    /// [`span_start`] only).
    Small(usize),
    /// A large allocation starting here, mapped for this many bytes (a page multiple).
    Large(usize),
}

impl Entry {
    fn encode(self) -> usize {
        match self {
            Entry::None => 0,
            Entry::Small(class) => (class << 1) | 1,
            Entry::Large(len) => {
                debug_assert!(len > 0 && len % 2 == 0);
                len
            }
        }
    }

    fn decode(bits: usize) -> Entry {
        if bits == 0 {
            Entry::None
        } else if bits & 1 == 1 {
            Entry::Small((bits >> 1) & CLASS_MASK)
        } else {
            Entry::Large(bits)
        }
    }
}

/// The per-CPU slot whose partition a small span belongs to (see `central`), or none (the
/// shared lists'). Held as the slot itself, `usize::MAX` for none: that word is what a
/// span's header keeps, and the free path's one bounds check against the slot count also
/// sends "none" away. The pagemap keeps it in a span's entries as `slot + 1`, 0 for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanOwner(usize);

impl SpanOwner {
    /// A span of the shared lists.
    pub(crate) const NONE: SpanOwner = SpanOwner(usize::MAX);

    /// A span of `slot`'s partition; `slot` is below [`MAX_OWNED_SLOTS`].
    pub(crate) fn slot(slot: usize) -> SpanOwner {
        debug_assert!(slot < MAX_OWNED_SLOTS);
        SpanOwner(slot)
    }

    /// The owning slot, if any.
    #[inline(always)]
    pub(crate) fn get(self) -> Option<usize> {
        (self.0 != usize::MAX).then_some(self.0)
    }

    /// The owning slot, or `usize::MAX` for none: past every slot, so one compare with the
    /// slot count tells a span owned by a slot from every other.
    #[inline(always)]
    pub(crate) fn index(self) -> usize {
        self.0
    }

    /// The word that stands for this owner in a span's header (see `central`).
    pub(crate) fn raw(self) -> usize {
        self.0
    }

    /// The owner a span header's word stands for.
    #[inline(always)]
    pub(crate) fn from_raw(raw: usize) -> SpanOwner {
        SpanOwner(raw)
    }

    /// This owner in a pagemap entry's owner bits: `slot + 1`, 0 for none.
    fn to_entry_field(self) -> usize {
        self.0.wrapping_add(1)
    }

    /// The owner a pagemap entry's owner bits stand for.
    fn from_entry_field(bits: usize) -> SpanOwner {
        SpanOwner(bits.wrapping_sub(1))
    }
}

fn split(addr: usize) -> Option<(usize, usize)> {
    if addr >> ADDRESS_BITS != 0 {
        return None;
    }
    let granule = addr >> GRANULE_SHIFT;
    Some((granule >> LEAF_BITS, granule & (LEAF_LEN - 1)))
}

/// The raw entry word of the granule holding `addr`; `None` when no leaf covers it (or it
/// lies beyond the address bits mapped).
#[inline(always)]
fn entry_bits(addr: usize) -> Option<usize> {
    let (root, leaf) = split(addr)?;
    let node = ROOT.slot(root).load(Ordering::Acquire);
    if node.is_null() {
        return None;
    }
    // SAFETY: non-null root entries point to leaves that are fully initialised (zeroed by
    // mmap, published with release) and never freed.
    Some(unsafe { (*node).entries[leaf].load(Ordering::Acquire) })
}

/// What `addr` belongs to.
#[inline]
pub(crate) fn get(addr: usize) -> Entry {
    entry_bits(addr).map_or(Entry::None, Entry::decode)
}

/// The owner of the span holding `addr` when it is a span of size class `class` ([`get`]
/// answering `Entry::Small(class)`, without decoding the other kinds), else `None`.
#[inline]
pub(crate) fn small_owner(addr: usize, class: usize) -> Option<SpanOwner> {
    let bits = entry_bits(addr)?;
    (bits & ((CLASS_MASK << 1) | 1) == Entry::Small(class).encode())
        .then_some(SpanOwner::from_entry_field(bits >> OWNER_SHIFT))
}

/// The owner of the small-object span holding `addr` ([`SpanOwner::NONE`] when it is in
/// none).
pub(crate) fn owner(addr: usize) -> SpanOwner {
    match entry_bits(addr) {
        Some(bits) if bits & 1 == 1 => SpanOwner::from_entry_field(bits >> OWNER_SHIFT),
        _ => SpanOwner::NONE,
    }
}

/// The leaf under root slot `root`, mapped on first use. A raw pointer, never a reference
/// to the whole leaf: entries are reached one at a time ([`leaf_entry`]), so that nothing
/// retags the leaf's quarter-million atomics on every access (Miri would).
fn leaf_for(root: usize) -> Option<NonNull<Leaf>> {
    let mut node = ROOT.slot(root).load(Ordering::Acquire);
    if node.is_null() {
        let len = core::mem::size_of::<Leaf>().next_multiple_of(os::page_size());
        let fresh = os::map(len)?.cast::<Leaf>();
        match ROOT.slot(root).compare_exchange(
            core::ptr::null_mut(),
            fresh.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => node = fresh.as_ptr(),
            Err(winner) => {
                // SAFETY: `fresh` was never published; nobody else knows it.
                unsafe { os::unmap(fresh.cast(), len) };
                node = winner;
            }
        }
    }
    NonNull::new(node)
}

/// Entry `index` of `leaf`.
fn leaf_entry(leaf: NonNull<Leaf>, index: usize) -> &'static AtomicUsize {
    // SAFETY: `leaf` is a published leaf (zeroed mmap memory is a valid array of atomics),
    // never freed, so a shared `'static` reference to one of its entries is sound; the
    // index is bounds-checked.
    unsafe { &(*leaf.as_ptr()).entries[index] }
}

/// Record `entry` for every granule of `[start, start + len)`. `false` (nothing changed
/// beyond possibly mapped leaves) when a leaf cannot be mapped or the range is outside
/// the 48-bit space.
pub(crate) fn set_range(start: NonNull<u8>, len: usize, entry: Entry) -> bool {
    set_range_owned(start, len, entry, SpanOwner::NONE)
}

/// [`set_range`] for a span of `class` that belongs to `owner`.
pub(crate) fn set_span(start: NonNull<u8>, len: usize, class: usize, owner: SpanOwner) -> bool {
    set_range_owned(start, len, Entry::Small(class), owner)
}

fn set_range_owned(start: NonNull<u8>, len: usize, entry: Entry, owner: SpanOwner) -> bool {
    let first = start.as_ptr().addr();
    let Some(last) = first.checked_add(len.max(1) - 1) else {
        return false;
    };
    if split(last).is_none() {
        return false;
    }
    // Map every leaf first so that the writes below cannot fail half-way.
    let mut granule = first >> GRANULE_SHIFT;
    let last_granule = last >> GRANULE_SHIFT;
    let mut root = granule >> LEAF_BITS;
    while root <= last_granule >> LEAF_BITS {
        if leaf_for(root).is_none() {
            return false;
        }
        root += 1;
    }
    let bits = match entry {
        Entry::Small(_) => entry.encode() | (owner.to_entry_field() << OWNER_SHIFT),
        _ => entry.encode(),
    };
    let first_granule = granule;
    while granule <= last_granule {
        // Small entries carry their distance from the range's start (a range of small
        // entries is always one whole span).
        let bits = match entry {
            Entry::Small(_) => bits | ((granule - first_granule) << OFFSET_SHIFT),
            _ => bits,
        };
        if let Some(leaf) = leaf_for(granule >> LEAF_BITS) {
            leaf_entry(leaf, granule & (LEAF_LEN - 1)).store(bits, Ordering::Release);
        }
        granule += 1;
    }
    true
}

/// The start of the small-object span holding `addr`, or `None` when `addr` is in none.
pub(crate) fn span_start(addr: usize) -> Option<usize> {
    let bits = entry_bits(addr)?;
    if bits & 1 == 0 {
        return None;
    }
    let granule = (addr >> GRANULE_SHIFT) - ((bits >> OFFSET_SHIFT) & OFFSET_MASK);
    Some(granule << GRANULE_SHIFT)
}

/// Record `entry` for the granule holding `start` only.
pub(crate) fn set(start: NonNull<u8>, entry: Entry) -> bool {
    set_range(start, 1, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANULE: usize = 1 << GRANULE_SHIFT;

    #[test]
    fn entries_round_trip() {
        for e in [
            Entry::None,
            Entry::Small(0),
            Entry::Small(103),
            Entry::Large(4096),
            Entry::Large(1 << 40),
        ] {
            assert_eq!(Entry::decode(e.encode()), e);
        }
    }

    #[test]
    fn ranges_are_recorded_and_cleared() {
        let len = 64 * 1024;
        let region = os::map(len).expect("mmap");
        let base = region.as_ptr() as usize;
        assert_eq!(get(base), Entry::None);
        assert!(set_range(region, len, Entry::Small(5)));
        for offset in [0, 1, GRANULE, len / 2, len - 1] {
            assert_eq!(get(base + offset), Entry::Small(5));
            assert_eq!(span_start(base + offset), Some(base));
        }
        assert_eq!(span_start(base + len), None);
        assert_eq!(get(base + len), Entry::None);
        assert!(set(region, Entry::Large(len)));
        assert_eq!(get(base), Entry::Large(len));
        assert_eq!(span_start(base), None);
        assert!(set_range(region, len, Entry::None));
        assert_eq!(get(base + len / 2), Entry::None);
        // SAFETY: ours, unused from here.
        unsafe { os::unmap(region, len) };
    }

    #[test]
    fn a_spans_owner_is_kept_beside_its_class_and_offsets() {
        let len = 128 * 1024;
        let region = os::map(len).expect("mmap");
        let base = region.as_ptr() as usize;
        for who in [
            SpanOwner::NONE,
            SpanOwner::slot(0),
            SpanOwner::slot(MAX_OWNED_SLOTS - 1),
        ] {
            assert!(set_span(region, len, 3, who));
            for offset in [0, GRANULE, len - 1] {
                assert_eq!(get(base + offset), Entry::Small(3));
                assert_eq!(span_start(base + offset), Some(base));
                assert_eq!(small_owner(base + offset, 3), Some(who));
                assert_eq!(small_owner(base + offset, 4), None);
                assert_eq!(owner(base + offset), who);
            }
        }
        assert_eq!(SpanOwner::slot(7).get(), Some(7));
        assert_eq!(SpanOwner::NONE.get(), None);
        assert!(set(region, Entry::Large(len)));
        assert_eq!(owner(base), SpanOwner::NONE);
        assert_eq!(small_owner(base, 3), None);
        assert!(set_range(region, len, Entry::None));
        // SAFETY: ours, unused from here.
        unsafe { os::unmap(region, len) };
    }

    #[test]
    fn addresses_beyond_48_bits_are_refused() {
        assert_eq!(get(1 << 50), Entry::None);
        let high = NonNull::new(core::ptr::without_provenance_mut(1 << 50)).unwrap();
        assert!(!set(high, Entry::Small(1)));
    }
}
