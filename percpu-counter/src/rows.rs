//! The memory layout every counter in this crate uses: rows of cache lines, allocated on
//! first use.
//!
//! A block holds `rows` rows of `lines_per_row` cache lines each. A row belongs to one CPU
//! (or, for the fallback, one stripe); column `c` is counter number `c`, at word `c` of every
//! row. So one CPU's copies of many counters sit together in its own lines (the Linux per-CPU
//! allocator's and librseq mempool's layout), rows never share a line, and the per-CPU slots
//! of counter `c` form a [`SlotArray`] with a stride of one row.
//!
//! [`LazyRows`] starts empty so that a `static` counter can be built in a `const`
//! constructor. The first user allocates the lines and publishes them with a release CAS; a
//! thread that loses the race frees its own and uses the winner's. The hot path is then one
//! acquire load of the line pointer and one load of the row count, both in the counter
//! itself: no second pointer to chase, no lock. (An earlier layout reached the lines through
//! a published header box; the extra dependent load doubled the cost of an add.)

use core::mem::{size_of, size_of_val};
use core::num::NonZeroUsize;
use core::ptr::NonNull;
use rseq_sys::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use rseq_sys::SlotArray;

/// Counters in one cache line.
pub(crate) const WORDS_PER_LINE: usize = 8;

/// One 64-byte cache line of counter words.
#[repr(C, align(64))]
pub(crate) struct Line([AtomicU64; WORDS_PER_LINE]);

impl Line {
    fn zeroed() -> Self {
        Line(core::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// A block of rows published on first use.
pub(crate) struct LazyRows {
    /// The first line of a leaked `Box<[Line]>` of `rows * lines_per_row` lines, or null.
    first: AtomicPtr<Line>,
    /// Rows in the block: set once (from 0) before the block is published, never changed
    /// after, so every reader that acquires `first` reads the block's true count.
    rows: AtomicUsize,
    lines_per_row: usize,
    /// `lines_per_row * WORDS_PER_LINE`, never zero, so the bound check on column 0 (a lone
    /// counter) folds away.
    columns: NonZeroUsize,
}

/// `lines_per_row` lines per row, at least one, as `(lines_per_row, columns)`.
const fn shape(lines_per_row: usize) -> (usize, NonZeroUsize) {
    let lines_per_row = if lines_per_row == 0 { 1 } else { lines_per_row };
    match lines_per_row.checked_mul(WORDS_PER_LINE) {
        Some(columns) => match NonZeroUsize::new(columns) {
            Some(columns) => (lines_per_row, columns),
            None => panic!("a row has at least one column"),
        },
        None => panic!("per-CPU row size overflows"),
    }
}

impl LazyRows {
    /// Empty, with `lines_per_row` lines per row once allocated.
    #[cfg(not(loom))]
    pub(crate) const fn new(lines_per_row: usize) -> Self {
        let (lines_per_row, columns) = shape(lines_per_row);
        LazyRows {
            first: AtomicPtr::new(core::ptr::null_mut()),
            rows: AtomicUsize::new(0),
            lines_per_row,
            columns,
        }
    }

    /// Empty (loom's atomics have no `const` constructor).
    #[cfg(loom)]
    pub(crate) fn new(lines_per_row: usize) -> Self {
        let (lines_per_row, columns) = shape(lines_per_row);
        LazyRows {
            first: AtomicPtr::new(core::ptr::null_mut()),
            rows: AtomicUsize::new(0),
            lines_per_row,
            columns,
        }
    }

    /// Columns (counters) per row.
    #[inline(always)]
    pub(crate) fn columns(&self) -> usize {
        self.columns.get()
    }

    /// The block, if published.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<Rows<'_>> {
        let first = self.first.load(Ordering::Acquire);
        if first.is_null() {
            return None;
        }
        let rows = self.rows.load(Ordering::Relaxed);
        // SAFETY: a non-null `first` was published (release CAS, acquired above) from a leaked
        // `Box<[Line]>` of `rows * lines_per_row` lines, where `rows` was fixed before that
        // CAS and never changes, so this load reads it and the slice is exactly that live
        // allocation. It is freed only in `drop` (`&mut self`), so it outlives `&self`. The
        // lines are only ever shared (atomics), never mutably borrowed.
        let lines = unsafe { core::slice::from_raw_parts(first, rows * self.lines_per_row) };
        Some(Rows {
            lines,
            rows,
            lines_per_row: self.lines_per_row,
            columns: self.columns,
        })
    }

    /// The block, allocating `rows()` zeroed rows if nobody has yet. (If racing callers ask
    /// for different counts, the first to fix the count decides for all.)
    #[inline]
    pub(crate) fn get_or_init(&self, rows: impl FnOnce() -> usize) -> Rows<'_> {
        match self.get() {
            Some(block) => block,
            None => self.init(rows()),
        }
    }

    /// The allocating half of [`get_or_init`](Self::get_or_init): out of line, so the
    /// published case stays a few instructions wherever it is inlined.
    #[cold]
    #[inline(never)]
    fn init(&self, rows: usize) -> Rows<'_> {
        // Fix the row count before any block is published, so that whoever acquires the
        // published pointer also sees the count (the count's store happens before the CAS
        // that publishes, through this acquire or the publisher's own program order).
        let rows = match self
            .rows
            .compare_exchange(0, rows, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => rows,
            Err(fixed) => fixed,
        };
        let total = rows
            .checked_mul(self.lines_per_row)
            .expect("per-CPU block size overflows");
        let fresh: Box<[Line]> = (0..total).map(|_| Line::zeroed()).collect();
        let mine = Box::into_raw(fresh).cast::<Line>();
        if self
            .first
            .compare_exchange(
                core::ptr::null_mut(),
                mine,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            let mine = core::ptr::slice_from_raw_parts_mut(mine, total);
            // SAFETY: `mine` is the box leaked above, with its length; it was never
            // published, so this thread still owns it.
            drop(unsafe { Box::from_raw(mine) });
        }
        self.get().expect("published just now")
    }

    /// Heap bytes allocated.
    pub(crate) fn bytes(&self) -> usize {
        self.get().map_or(0, |rows| size_of_val(rows.lines))
    }
}

impl Drop for LazyRows {
    fn drop(&mut self) {
        let first = self.first.load(Ordering::Acquire);
        if !first.is_null() {
            let total = self.rows.load(Ordering::Acquire) * self.lines_per_row;
            let lines = core::ptr::slice_from_raw_parts_mut(first, total);
            // SAFETY: `first` is the published leaked box and `rows` was fixed before it was
            // published (`&mut self` means every earlier user has synchronised with us), so
            // `total` is its length. Nobody else frees it.
            drop(unsafe { Box::from_raw(lines) });
        }
    }
}

/// A published block, borrowed.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    lines: &'a [Line],
    rows: usize,
    lines_per_row: usize,
    columns: NonZeroUsize,
}

impl<'a> Rows<'a> {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Counter `column`'s word in `row`.
    ///
    /// # Panics
    /// If `row` or `column` is out of range.
    #[inline(always)]
    pub(crate) fn word(&self, row: usize, column: usize) -> &'a AtomicU64 {
        assert!(row < self.rows && column < self.columns.get());
        &self.lines[row * self.lines_per_row + column / WORDS_PER_LINE].0[column % WORDS_PER_LINE]
    }

    /// Counter `column`'s words, one per row, as the slots of a per-CPU operation.
    ///
    /// # Panics
    /// If `column` is out of range.
    #[inline(always)]
    pub(crate) fn slots(&self, column: usize) -> SlotArray<'a, AtomicU64> {
        assert!(column < self.columns.get());
        let offset = (column / WORDS_PER_LINE) * size_of::<Line>()
            + (column % WORDS_PER_LINE) * size_of::<AtomicU64>();
        // Derived from the whole slice, so the pointer's provenance covers every row.
        let base = NonNull::from(self.lines)
            .cast::<u8>()
            .as_ptr()
            .wrapping_add(offset)
            .cast::<AtomicU64>();
        let stride = self.lines_per_row * size_of::<Line>();
        // SAFETY: `column < columns`, so for each `r < rows` the address `base + r * stride`
        // is line `r * lines_per_row + column / 8`, word `column % 8`: an aligned, live
        // `AtomicU64` inside `self.lines` (`rows * lines_per_row` lines; a `Line` is a
        // `repr(C)` array of them, so word `k` is at `k * size_of::<AtomicU64>()`). The
        // pointer comes from the whole slice, which is only ever shared for `'a`; it is
        // non-null because a slice pointer is (with zero rows it is dangling but never
        // dereferenced: the array is empty).
        unsafe { SlotArray::from_raw_parts(NonNull::new_unchecked(base), stride, self.rows) }
    }

    /// Wrapping sum of counter `column` over every row (relaxed loads: other CPUs' rows are
    /// only read, never written, from here).
    pub(crate) fn sum(&self, column: usize) -> u64 {
        (0..self.rows).fold(0u64, |sum, row| {
            sum.wrapping_add(self.word(row, column).load(Ordering::Relaxed))
        })
    }

    /// Adds every row's words for columns `first..first + out.len()` into `out` (wrapping).
    pub(crate) fn sum_into(&self, first: usize, out: &mut [u64]) {
        for row in 0..self.rows {
            for (k, total) in out.iter_mut().enumerate() {
                *total = total.wrapping_add(self.word(row, first + k).load(Ordering::Relaxed));
            }
        }
    }
}

// Rows are whole cache lines apart only if a line is a multiple of 64 bytes (loom's atomics
// are bigger than 8 bytes, so this is not automatic).
const _: () = assert!(size_of::<Line>().is_multiple_of(64));
