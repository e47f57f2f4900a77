//! `core::alloc::Allocator` for [`PerCpuAlloc`] (the `nightly` feature), so collections can
//! name this heap per value (`Vec::new_in(PerCpuAlloc::new())`) rather than process-wide.
//! Every method is the `GlobalAlloc` path it names; zero-sized layouts get a unique block,
//! as `alloc` gives them.

use crate::PerCpuAlloc;
use core::alloc::{AllocError, Allocator, GlobalAlloc, Layout};
use core::ptr::NonNull;

/// A block of `layout.size()` bytes at `ptr`, or the allocation error for null.
fn block(ptr: *mut u8, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
    NonNull::new(ptr)
        .map(|ptr| NonNull::slice_from_raw_parts(ptr, layout.size()))
        .ok_or(AllocError)
}

// SAFETY: a block returned here is a block `GlobalAlloc::alloc` (or `alloc_zeroed`,
// `realloc`) returned for a layout of the same size and alignment, so it is valid for that
// layout until deallocated, and stays valid when the handle is copied or moved: every
// handle is the same process-wide heap, so any copy can free it. `deallocate`, `grow` and
// `shrink` pass it back with the layout it fits, which is what `GlobalAlloc` requires.
unsafe impl Allocator for PerCpuAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        block(crate::alloc_sized(layout.size(), layout.align()), layout)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `alloc_zeroed` has no precondition here: a zero size is served as one
        // byte, like `alloc`.
        block(unsafe { self.alloc_zeroed(layout) }, layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller hands back a block this heap allocated with `layout`.
        unsafe { crate::dealloc_sized(ptr.as_ptr(), layout.size(), layout.align()) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded from the caller (`new.size() >= old.size()`).
        unsafe { self.resize(ptr, old, new) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded from the caller.
        let grown = unsafe { self.resize(ptr, old, new) }?;
        // SAFETY: the block holds `new.size()` bytes, of which the first `old.size()` are
        // the old contents; the rest is zeroed, as `grow_zeroed` promises.
        unsafe {
            grown
                .cast::<u8>()
                .add(old.size())
                .write_bytes(0, new.size() - old.size())
        };
        Ok(grown)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded from the caller (`new.size() <= old.size()`).
        unsafe { self.resize(ptr, old, new) }
    }
}

impl PerCpuAlloc {
    /// `grow` and `shrink`: `GlobalAlloc::realloc` (in place when the class allows,
    /// `mremap` for large blocks) when the alignment stays; else a new block, the contents
    /// copied, the old one freed.
    ///
    /// # Safety
    /// `ptr` is a live block of this heap allocated with `old`; on success it is not used
    /// again.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.align() == old.align() {
            // SAFETY: `ptr` is a live block allocated with `old`, and `new.size()` rounded
            // up to the alignment fits `isize` (a valid `Layout` promises it).
            return block(unsafe { self.realloc(ptr.as_ptr(), old, new.size()) }, new);
        }
        let moved = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; the copy is the smaller size; the old
        // block goes back with its layout.
        unsafe {
            ptr.as_ptr()
                .copy_to_nonoverlapping(moved.cast::<u8>().as_ptr(), old.size().min(new.size()));
            self.deallocate(ptr, old);
        }
        Ok(moved)
    }
}
