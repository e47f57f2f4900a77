//! [`PerCpuAlloc::free`]: blocks freed without their layout, as C's `free` does. The only
//! test in its binary, run without the harness, so the statistics it reads see no other
//! thread's blocks.

use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

fn blocks_freed_without_their_layout_are_freed() {
    let sizes = [
        1,
        8,
        24,
        100,
        1000,
        5000,
        70_000,
        256 << 10,
        (256 << 10) + 1,
        3 << 20,
    ];
    let layouts: Vec<Layout> = sizes
        .iter()
        .flat_map(|&size| {
            [8, 64, 4096, 1 << 16].map(|align| Layout::from_size_align(size, align).unwrap())
        })
        .collect();
    let mut blocks = Vec::with_capacity(layouts.len());
    let before = percpu_alloc::stats().in_use_bytes;
    for &layout in &layouts {
        // SAFETY: non-zero sizes.
        let p = unsafe { A.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: the block has `layout.size()` bytes.
        unsafe { p.write_bytes(0xA5, layout.size()) };
        blocks.push(p);
    }
    let requested: usize = layouts.iter().map(Layout::size).sum();
    assert!(percpu_alloc::stats().in_use_bytes >= before + requested);
    for &p in &blocks {
        // SAFETY: live blocks of this allocator, not used afterwards.
        unsafe { PerCpuAlloc::free(p) };
    }
    assert_eq!(
        percpu_alloc::stats().in_use_bytes,
        before,
        "every block freed, small and large"
    );

    // Memory this allocator never handed out is left alone.
    let mut local = [7u8; 64];
    // SAFETY: not ours, which `free` documents as left alone.
    unsafe { PerCpuAlloc::free(local.as_mut_ptr()) };
    assert_eq!(local, [7u8; 64]);
    assert_eq!(percpu_alloc::stats().in_use_bytes, before);
}

/// Run without the test harness (see Cargo.toml): the only thread is this one.
fn main() {
    blocks_freed_without_their_layout_are_freed();
    println!("test blocks_freed_without_their_layout_are_freed ... ok");
}
