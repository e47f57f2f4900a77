//! `PerCpuAlloc` as a `core::alloc::Allocator` (the `nightly` feature): collections that
//! name it, zero-sized and over-aligned layouts, growing and shrinking in and out of place.

#![feature(allocator_api)]

use percpu_alloc::PerCpuAlloc;
use std::alloc::{Allocator, Layout};
use std::collections::VecDeque;

#[test]
fn collections_allocated_in_the_heap_work() {
    let mut v: Vec<u64, PerCpuAlloc> = Vec::new_in(PerCpuAlloc::new());
    for i in 0..100_000u64 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 100_000 * 99_999 / 2);
    assert!(PerCpuAlloc::usable_size(v.as_ptr().cast()).unwrap() >= 100_000 * 8);
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).collect::<Vec<u64>>());
    let boxed = Box::new_in([7u8; 3000], PerCpuAlloc::new());
    assert!(boxed.iter().all(|&b| b == 7));
    let mut deque = VecDeque::new_in(PerCpuAlloc::new());
    deque.extend(0..1000);
    deque.rotate_left(300);
    assert_eq!(deque[0], 300);
}

#[test]
fn layouts_and_resizes_keep_contents_and_alignment() {
    let heap = PerCpuAlloc::new();
    let zero = Layout::from_size_align(0, 1).unwrap();
    let a = heap.allocate(zero).unwrap();
    let b = heap.allocate(zero).unwrap();
    assert_eq!(a.len(), 0);
    assert_ne!(
        a.cast::<u8>(),
        b.cast::<u8>(),
        "zero-sized blocks must be distinct"
    );
    // SAFETY: both came from `allocate(zero)` and are freed once.
    unsafe {
        heap.deallocate(a.cast(), zero);
        heap.deallocate(b.cast(), zero);
    }
    // Small to small (in place or not), small to large, large to larger, back to small,
    // and a change of alignment; contents kept at every step.
    let sizes = [24usize, 40, 3000, 300_000, 1_000_000, 100];
    let aligns = [8usize, 8, 64, 4096, 4096, 16];
    let mut layout = Layout::from_size_align(sizes[0], aligns[0]).unwrap();
    let block = heap.allocate_zeroed(layout).unwrap();
    assert!(block.len() == layout.size());
    let mut ptr = block.cast::<u8>();
    // SAFETY: `ptr` is a live block of `layout.size()` zeroed bytes.
    let fresh = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), layout.size()) };
    assert!(fresh.iter().all(|&b| b == 0));
    let fill = |p: *mut u8, n: usize| {
        for i in 0..n {
            // SAFETY: the caller passes a live block of at least `n` bytes.
            unsafe { p.add(i).write(i as u8) };
        }
    };
    fill(ptr.as_ptr(), layout.size());
    for (&size, &align) in sizes.iter().zip(&aligns).skip(1) {
        let new = Layout::from_size_align(size, align).unwrap();
        // SAFETY: `ptr` is live with `layout`; grow takes a larger size, shrink a smaller.
        let moved = unsafe {
            if size >= layout.size() {
                heap.grow_zeroed(ptr, layout, new)
            } else {
                heap.shrink(ptr, layout, new)
            }
        }
        .unwrap();
        assert_eq!(moved.len(), size);
        let p = moved.cast::<u8>().as_ptr();
        assert_eq!(p.addr() % align, 0, "size {size} align {align}");
        let kept = layout.size().min(size);
        for i in 0..kept {
            // SAFETY: `p` holds `size >= kept` bytes.
            assert_eq!(unsafe { p.add(i).read() }, i as u8, "byte {i} of {size}");
        }
        for i in kept..size {
            // SAFETY: as above; `grow_zeroed` zeroed the bytes past the old size.
            assert_eq!(unsafe { p.add(i).read() }, 0, "byte {i} of {size}");
        }
        fill(p, size);
        ptr = moved.cast();
        layout = new;
    }
    // SAFETY: the last block, with its layout.
    unsafe { heap.deallocate(ptr, layout) };
}
