//! Fuzz the allocator (called directly through `GlobalAlloc`) with arbitrary sequences of
//! allocations, reallocations and frees of arbitrary sizes and alignments: every live block
//! must be aligned, must not overlap another, and must keep its contents across realloc.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Size (scaled: up to about 4 MiB), alignment as a power of two up to 2^20, zeroed.
    Alloc { size: u16, scale: u8, align_log: u8, zeroed: bool },
    Realloc { pick: u16, size: u16, scale: u8 },
    Free { pick: u16 },
}

const A: PerCpuAlloc = PerCpuAlloc::new();

fn size_of(size: u16, scale: u8) -> usize {
    (size as usize) << (scale % 7)
}

fn fill(p: *mut u8, size: usize, seed: u8) {
    // SAFETY: the block has `size` bytes.
    unsafe { std::slice::from_raw_parts_mut(p, size) }
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = seed.wrapping_add(i as u8));
}

fn check(p: *mut u8, size: usize, seed: u8) {
    // SAFETY: the block has at least `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
    for (i, &b) in bytes.iter().enumerate() {
        assert_eq!(b, seed.wrapping_add(i as u8));
    }
}

fn assert_free(live: &BTreeMap<usize, (Layout, u8)>, p: usize, size: usize) {
    let size = size.max(1);
    if let Some((&q, (l, _))) = live.range(..=p).next_back() {
        assert!(q + l.size().max(1) <= p);
    }
    if let Some((&q, _)) = live.range(p + 1..).next() {
        assert!(p + size <= q);
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut live: BTreeMap<usize, (Layout, u8)> = BTreeMap::new();
    let mut seed = 0u8;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Alloc { size, scale, align_log, zeroed } => {
                let size = size_of(size, scale);
                let layout = Layout::from_size_align(size, 1 << (align_log % 21)).unwrap();
                // SAFETY: this allocator answers zero sizes too (documented).
                let p = unsafe { if zeroed { A.alloc_zeroed(layout) } else { A.alloc(layout) } };
                assert!(!p.is_null());
                assert_eq!(p as usize % layout.align(), 0);
                if zeroed {
                    // SAFETY: the block has `size` bytes.
                    assert!(unsafe { std::slice::from_raw_parts(p, size) }.iter().all(|&b| b == 0));
                }
                assert_free(&live, p as usize, size);
                seed = seed.wrapping_add(31);
                fill(p, size, seed);
                live.insert(p as usize, (layout, seed));
            }
            Op::Realloc { pick, size, scale } => {
                let Some(&key) = live.keys().nth(pick as usize % live.len().max(1)) else { continue };
                let (layout, s) = live.remove(&key).unwrap();
                let new_size = size_of(size, scale).max(1);
                // SAFETY: a live block with its layout; non-zero new size.
                let q = unsafe { A.realloc(key as *mut u8, layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % layout.align(), 0);
                check(q, layout.size().min(new_size), s);
                assert_free(&live, q as usize, new_size);
                fill(q, new_size, s);
                live.insert(q as usize, (Layout::from_size_align(new_size, layout.align()).unwrap(), s));
            }
            Op::Free { pick } => {
                let Some(&key) = live.keys().nth(pick as usize % live.len().max(1)) else { continue };
                let (layout, s) = live.remove(&key).unwrap();
                check(key as *mut u8, layout.size(), s);
                // SAFETY: a live block with its layout.
                unsafe { A.dealloc(key as *mut u8, layout) };
            }
        }
    }
    for (p, (layout, s)) in live {
        check(p as *mut u8, layout.size(), s);
        // SAFETY: a live block with its layout.
        unsafe { A.dealloc(p as *mut u8, layout) };
    }
});
