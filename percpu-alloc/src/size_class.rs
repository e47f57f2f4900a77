//! Size classes: which object size serves a request, found by table index.
//!
//! Sizes 8..=128 step by 8 (the granule every object is aligned to); above 128 each power
//! of two `2^k` is split into 8 steps of `2^k / 8`, up to [`MAX_SMALL`] (256 KiB). A request
//! of `s` bytes gets the smallest class `c >= s`; since consecutive classes above 64 bytes
//! differ by at most 1/8 of the larger, the waste `(c - s) / c` stays below 12.5% for every
//! request over 56 bytes; below that the 8-byte granule bounds it at 7 bytes.
//!
//! Alignment: objects sit at `span start + i * size` with spans aligned to [`SPAN_ALIGN`],
//! so an object is aligned to the largest power of two dividing its class size. A request
//! with alignment `a <= MAX_SMALL_ALIGN` is rounded up to a multiple of `a` first; the class
//! found for that rounded size is then itself a multiple of `a` (checked for every size and
//! alignment by the tests).

/// The largest request served from a size class; larger ones get whole mappings.
pub(crate) const MAX_SMALL: usize = 256 * 1024;
/// The largest alignment served from a size class.
pub(crate) const MAX_SMALL_ALIGN: usize = 4096;
/// Spans of small objects are aligned to (and sized in multiples of) this.
pub(crate) const SPAN_ALIGN: usize = 64 * 1024;

const FINE_CLASSES: usize = 16; // 8..=128 step 8
const DOUBLINGS: usize = 11; // 2^7 .. 2^18
/// The number of size classes.
pub(crate) const NUM_CLASSES: usize = FINE_CLASSES + DOUBLINGS * 8;

/// One size class and its cache policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Class {
    /// Object size in bytes.
    pub size: usize,
    /// Bytes in one span of this class (a multiple of [`SPAN_ALIGN`]).
    pub span_bytes: usize,
    /// The most objects each CPU's stack for this class can grow to (its storage; the
    /// capacity in use grows and shrinks below it, see `capacity`).
    pub cpu_capacity: usize,
    /// Objects moved at once between a CPU's stack and the transfer cache.
    pub batch: usize,
}

const fn class_size(index: usize) -> usize {
    if index < FINE_CLASSES {
        (index + 1) * 8
    } else {
        let k = (index - FINE_CLASSES) / 8 + 7;
        let j = (index - FINE_CLASSES) % 8 + 1;
        (1 << k) + j * ((1 << k) / 8)
    }
}

const fn clamp(v: usize, lo: usize, hi: usize) -> usize {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

const fn build_classes() -> [Class; NUM_CLASSES] {
    let mut out = [Class {
        size: 0,
        span_bytes: 0,
        cpu_capacity: 0,
        batch: 0,
    }; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        let size = class_size(i);
        // At least 8 objects per span, in whole SPAN_ALIGN units.
        let want = if size * 8 > SPAN_ALIGN {
            size * 8
        } else {
            SPAN_ALIGN
        };
        let span_bytes = want.div_ceil(SPAN_ALIGN) * SPAN_ALIGN;
        // About 128 KiB per class per CPU, between 2 and 2048 objects.
        let cpu_capacity = clamp(128 * 1024 / size, 2, 2048);
        let batch = clamp(cpu_capacity / 4, 1, 32);
        out[i] = Class {
            size,
            span_bytes,
            cpu_capacity,
            batch,
        };
        i += 1;
    }
    out
}

/// Every class, smallest first (a constant, for use in other constants).
pub(crate) const CLASS_TABLE: [Class; NUM_CLASSES] = build_classes();
/// Every class, smallest first.
pub(crate) static CLASSES: [Class; NUM_CLASSES] = CLASS_TABLE;

const SMALL_LOOKUP_MAX: usize = 1024;
const SMALL_TABLE_LEN: usize = SMALL_LOOKUP_MAX + 1;
const LARGE_TABLE_LEN: usize = MAX_SMALL / 128 + 1;

/// The first class whose size is at least `size` (by scanning; used to build the tables).
const fn first_class_at_least(size: usize) -> u8 {
    let mut i = 0;
    while i < NUM_CLASSES {
        if class_size(i) >= size {
            return i as u8;
        }
        i += 1;
    }
    (NUM_CLASSES - 1) as u8
}

/// `SMALL_TABLE[s]` is the class for sizes `s <= 1024`: a byte per size rather than per
/// 8-byte granule (1 KiB rather than 129 bytes, of which a program touches the lines of the
/// sizes it asks for), so the lookup needs no rounding: two instructions fewer on every
/// `alloc` and `dealloc`.
static SMALL_TABLE: [u8; SMALL_TABLE_LEN] = {
    let mut t = [0u8; SMALL_TABLE_LEN];
    let mut i = 0;
    while i < SMALL_TABLE_LEN {
        t[i] = first_class_at_least(if i == 0 { 1 } else { i });
        i += 1;
    }
    t
};

/// `LARGE_TABLE[(s + 127) / 128]` is the class for sizes `1024 < s <= MAX_SMALL`. Classes
/// above 1024 bytes are multiples of 128, so the rounding loses nothing.
static LARGE_TABLE: [u8; LARGE_TABLE_LEN] = {
    let mut t = [0u8; LARGE_TABLE_LEN];
    let mut i = 0;
    while i < LARGE_TABLE_LEN {
        t[i] = first_class_at_least(if i == 0 { 1 } else { i * 128 });
        i += 1;
    }
    t
};

/// The class for a request of `size` bytes aligned to `align` (a power of two), or `None`
/// when it must be a large allocation (too big, or aligned beyond [`MAX_SMALL_ALIGN`]).
/// A zero size is served as one byte, so every allocation has a unique address.
#[inline]
pub(crate) fn class_for(size: usize, align: usize) -> Option<usize> {
    granule_class(size, align).or_else(|| class_for_aligned(size, align))
}

/// [`class_for`] for the requests one table lookup answers (up to 1 KiB, aligned to at most
/// 8 bytes), else `None`: the allocator's fast paths take the rest out of line.
#[inline(always)]
pub(crate) fn granule_class(size: usize, align: usize) -> Option<usize> {
    // Most requests are aligned to at most the 8-byte granule. Every class size is a
    // multiple of 8, so rounding to such an alignment never changes the class, and a zero
    // size maps to the 1-byte class through entry 0. This runs on every `alloc` and
    // `dealloc`, so both conditions are one compare: `align >> 4` is 0 exactly when
    // `align <= 8`, and any other value negated sets the top bit, so `size | over_aligned`
    // is `size` for granule alignments and past `SMALL_LOOKUP_MAX` for all others.
    let over_aligned = (align >> 4).wrapping_neg();
    if size | over_aligned <= SMALL_LOOKUP_MAX {
        return Some(SMALL_TABLE[size] as usize);
    }
    None
}

/// [`class_for`] for the rest: alignments over 8 bytes and sizes over 1 KiB.
#[inline]
pub(crate) fn class_for_aligned(size: usize, align: usize) -> Option<usize> {
    if align > MAX_SMALL_ALIGN || size > MAX_SMALL {
        return None;
    }
    // No overflow: size <= MAX_SMALL and align <= MAX_SMALL_ALIGN.
    let rounded = (size.max(1) + align - 1) & !(align - 1);
    if rounded <= SMALL_LOOKUP_MAX {
        Some(SMALL_TABLE[rounded] as usize)
    } else if rounded <= MAX_SMALL {
        Some(LARGE_TABLE[(rounded + 127) >> 7] as usize)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_increase_and_end_at_max_small() {
        for pair in CLASSES.windows(2) {
            assert!(pair[0].size < pair[1].size);
        }
        assert_eq!(CLASSES[0].size, 8);
        assert_eq!(CLASSES[NUM_CLASSES - 1].size, MAX_SMALL);
    }

    #[test]
    fn class_policy_is_sane() {
        for c in &CLASSES {
            assert_eq!(c.span_bytes % SPAN_ALIGN, 0);
            assert!(c.span_bytes / c.size >= 8, "{c:?}");
            assert!(c.cpu_capacity >= 2 && c.batch >= 1 && c.batch <= c.cpu_capacity);
        }
    }

    fn check_size(size: usize, align: usize) {
        let class = class_for(size, align).expect("small");
        let c = CLASSES[class].size;
        assert!(c >= size.max(1), "size {size} align {align} -> {c}");
        assert_eq!(c % align, 0, "size {size} align {align} -> {c}");
        // The smallest class that fits and is aligned: class sizes strictly increase (checked
        // above), so it is enough that the nearest smaller aligned class is too small.
        if let Some(smaller) = CLASSES[..class].iter().rev().find(|k| k.size % align == 0) {
            assert!(
                smaller.size < size.max(1),
                "size {size} align {align} -> {c}: class {} fits",
                smaller.size
            );
        }
        if align <= 8 && size > 56 {
            let waste = (c - size) as f64 / c as f64;
            assert!(waste <= 0.125, "size {size} -> {c}: waste {waste}");
        }
        if align <= 8 && size <= 56 {
            assert!(c - size.max(1) < 8);
        }
    }

    /// The sizes to check: natively every size up to [`MAX_SMALL`] (a fraction of a second).
    /// Miri runs about a thousand times slower, so there every class size and its two
    /// neighbours (where the answer changes), the edges of the two lookup tables, and every
    /// `stride`-th size in between (about 20 seconds for both tests together).
    fn sizes(stride: usize) -> Vec<usize> {
        if !cfg!(miri) {
            return (0..=MAX_SMALL).collect();
        }
        let mut sizes: Vec<usize> = (0..=MAX_SMALL).step_by(stride).collect();
        for c in &CLASSES {
            sizes.extend([c.size - 1, c.size, c.size + 1]);
        }
        sizes.extend([0, 1, SMALL_LOOKUP_MAX, SMALL_LOOKUP_MAX + 1, MAX_SMALL]);
        sizes.retain(|&s| s <= MAX_SMALL);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    #[test]
    fn every_size_gets_the_smallest_fitting_class() {
        let sizes = sizes(STRIDE_UNDER_MIRI);
        if !cfg!(miri) {
            assert_eq!(sizes.len(), MAX_SMALL + 1);
        }
        for size in sizes {
            check_size(size, 1);
        }
    }

    #[test]
    fn aligned_requests_get_aligned_classes() {
        let sizes = sizes(STRIDE_UNDER_MIRI * 4);
        let mut align = 1;
        while align <= MAX_SMALL_ALIGN {
            for &size in &sizes {
                check_size(size, align);
            }
            // Around the alignment itself and its multiples near the ends.
            for size in [align - 1, align, align + 1, MAX_SMALL - align, MAX_SMALL] {
                check_size(size, align);
            }
            align *= 2;
        }
    }

    #[test]
    fn the_granule_shortcut_agrees_with_the_rounding_path() {
        for align in [1, 2, 4, 8] {
            for size in 0..=SMALL_LOOKUP_MAX + 1 {
                assert_eq!(
                    class_for(size, align),
                    class_for_aligned(size, align),
                    "size {size} align {align}"
                );
            }
        }
    }

    /// The one-compare test answers exactly the requests up to 1 KiB aligned to at most 8,
    /// for every power-of-two alignment (the largest ones too, where a shift-based test
    /// would overflow).
    #[test]
    fn the_granule_shortcut_answers_exactly_its_range() {
        for shift in 0..usize::BITS {
            let align = 1usize << shift;
            let edges = [
                0,
                1,
                8,
                56,
                64,
                1000,
                SMALL_LOOKUP_MAX,
                SMALL_LOOKUP_MAX + 1,
            ];
            for size in edges {
                let small = align <= 8 && size <= SMALL_LOOKUP_MAX;
                let expected = small.then(|| class_for_aligned(size, align).expect("small"));
                assert_eq!(
                    granule_class(size, align),
                    expected,
                    "size {size} align {align}"
                );
            }
        }
        assert_eq!(granule_class(usize::MAX, 1), None);
    }

    /// Under Miri, every this-many-th size (a prime, so the samples fall at every residue of
    /// the 8- and 128-byte table granules).
    const STRIDE_UNDER_MIRI: usize = 1021;

    #[test]
    fn oversized_or_overaligned_requests_are_large() {
        assert_eq!(class_for(MAX_SMALL + 1, 1), None);
        assert_eq!(class_for(usize::MAX, 1), None);
        assert_eq!(class_for(8, MAX_SMALL_ALIGN * 2), None);
        assert_eq!(class_for(MAX_SMALL, MAX_SMALL_ALIGN), Some(NUM_CLASSES - 1));
    }
}
