//! Freed large blocks kept mapped for reuse: reuse, the fit and the budget, zeroing, and
//! their return to the system by `release_memory`, the budget setter and the release clock.
//!
//! One test function, run as phases in order: the cache and its statistics are global, and
//! the allocator is called directly (the process runs on the system allocator), so no other
//! thread may make or free large blocks meanwhile (no test harness: see Cargo.toml).

use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

static A: PerCpuAlloc = PerCpuAlloc::new();

fn kept() -> usize {
    percpu_alloc::stats().large_cached_bytes
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A large block of `size` bytes, every page written with `fill`.
fn alloc_filled(size: usize, fill: u8) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { A.alloc(layout(size)) };
    assert!(!p.is_null());
    for offset in (0..size).step_by(4 * KIB).chain([size - 1]) {
        // SAFETY: inside the block of `size` bytes.
        unsafe { p.add(offset).write(fill) };
    }
    p
}

fn free(p: *mut u8, size: usize) {
    // SAFETY: `p` is a live block of `size` bytes from `A`.
    unsafe { A.dealloc(p, layout(size)) };
}

fn a_freed_block_serves_the_next_request_that_fits() {
    percpu_alloc::set_large_cache_bytes(16 * MIB);
    percpu_alloc::release_memory();
    assert_eq!(kept(), 0);

    let p = alloc_filled(MIB, 0xa5);
    free(p, MIB);
    assert_eq!(kept(), MIB, "a freed 1 MiB block is kept");

    // Close enough to take it: its whole length is usable.
    // SAFETY: a non-zero size.
    let q = unsafe { A.alloc(layout(900 * KIB)) };
    assert_eq!(q, p, "a request within a quarter of a kept block takes it");
    assert_eq!(PerCpuAlloc::usable_size(q), Some(MIB));
    assert_eq!(kept(), 0);
    // A block of its own (the kernel may map it next to `q`: then the two freed blocks
    // are kept joined as one).
    let small = alloc_filled(700 * KIB, 1);
    assert_ne!(small, q);
    free(q, 900 * KIB);
    free(small, 700 * KIB);
    assert_eq!(kept(), MIB + 700 * KIB);

    // A zeroed request for a kept block gets zeros, not the old contents.
    // SAFETY: a non-zero size.
    let z = unsafe { A.alloc_zeroed(layout(MIB)) };
    assert!(z == p || z == small, "a kept block serves it");
    assert_eq!(kept(), 700 * KIB);
    // SAFETY: `z` is a live block of 1 MiB.
    let bytes = unsafe { std::slice::from_raw_parts(z, MIB) };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "a reused block handed out zeroed"
    );
    free(z, MIB);

    // A request aligned beyond the kept blocks' addresses does not take them.
    let aligned = Layout::from_size_align(MIB, 64 * MIB).unwrap();
    // SAFETY: a non-zero size.
    let big = unsafe { A.alloc(aligned) };
    assert_eq!(big.addr() % (64 * MIB), 0);
    // SAFETY: `big` is a live block with layout `aligned`.
    unsafe { A.dealloc(big, aligned) };

    let released = percpu_alloc::release_memory();
    assert_eq!(kept(), 0, "release_memory unmaps every kept block");
    assert!(released >= 2 * MIB + 700 * KIB, "released {released}");
}

/// A request much shorter than a kept block takes its head and leaves the rest kept; the
/// head, freed, joins the rest again; a rest too short for a large request is unmapped.
fn a_much_longer_block_gives_its_head_and_takes_it_back() {
    percpu_alloc::set_large_cache_bytes(16 * MIB);
    percpu_alloc::release_memory();
    let p = alloc_filled(2 * MIB, 6);
    free(p, 2 * MIB);
    assert_eq!(kept(), 2 * MIB);

    let head = alloc_filled(700 * KIB, 7);
    assert_eq!(head, p, "the head of the kept block");
    assert_eq!(PerCpuAlloc::usable_size(head), Some(700 * KIB));
    assert_eq!(kept(), 2 * MIB - 700 * KIB, "the rest stays kept");
    // The rest is a block of its own: a request that fits it takes it whole.
    // SAFETY: a non-zero size.
    let rest = unsafe { A.alloc(layout(MIB + 200 * KIB)) };
    assert_eq!(rest.addr(), p.addr() + 700 * KIB);
    assert_eq!(PerCpuAlloc::usable_size(rest), Some(2 * MIB - 700 * KIB));
    assert_eq!(kept(), 0);
    // SAFETY: `rest` holds 1348 KiB; its first byte follows the head's last.
    unsafe { rest.add(2 * MIB - 700 * KIB - 1).write(8) };
    // SAFETY: as above: the head's bytes were not touched by the rest's writes.
    assert_eq!(unsafe { head.add(700 * KIB - 1).read() }, 7);

    // Freed, the two join into the original block, which serves a 2 MiB request whole.
    free(rest, MIB + 200 * KIB);
    free(head, 700 * KIB);
    assert_eq!(kept(), 2 * MIB);
    // SAFETY: a non-zero size.
    let whole = unsafe { A.alloc(layout(2 * MIB)) };
    assert_eq!(whole, p, "head and rest joined again");
    assert_eq!(kept(), 0);

    free(whole, 2 * MIB);
    percpu_alloc::release_memory();

    // 800 KiB of a kept 1 MiB block leave 224 KiB, too short for any large request (over
    // 256 KiB): unmapped at once.
    let p = alloc_filled(MIB, 9);
    free(p, MIB);
    let released_before = percpu_alloc::stats().released_bytes;
    // SAFETY: a non-zero size.
    let most = unsafe { A.alloc(layout(800 * KIB)) };
    assert_eq!(most, p);
    assert_eq!(PerCpuAlloc::usable_size(most), Some(800 * KIB));
    assert_eq!(kept(), 0);
    assert_eq!(
        percpu_alloc::stats().released_bytes - released_before,
        224 * KIB
    );
    // A head grows like any block (`mremap`, moving it), contents kept.
    // SAFETY: `most` is live with this layout; the new size is non-zero.
    let grown = unsafe { A.realloc(most, layout(800 * KIB), 3 * MIB) };
    assert!(!grown.is_null());
    // SAFETY: `grown` holds 3 MiB, the first 800 KiB copied from `most`, whose every 4 KiB
    // page starts with a 9.
    assert_eq!(unsafe { grown.add(796 * KIB).read() }, 9);
    free(grown, 3 * MIB);
    percpu_alloc::release_memory();
}

fn the_budget_bounds_what_is_kept() {
    percpu_alloc::set_large_cache_bytes(4 * MIB);
    assert_eq!(percpu_alloc::large_cache_bytes(), 4 * MIB);

    // Over a quarter of the budget: unmapped at once.
    let p = alloc_filled(2 * MIB, 2);
    free(p, 2 * MIB);
    assert_eq!(kept(), 0);

    // Five blocks of 1 MiB: the budget keeps four, the newest.
    let blocks: Vec<*mut u8> = (0..5).map(|i| alloc_filled(MIB, i)).collect();
    for &b in &blocks {
        free(b, MIB);
    }
    assert_eq!(kept(), 4 * MIB);
    // SAFETY: a non-zero size.
    let reused: Vec<*mut u8> = (0..4).map(|_| unsafe { A.alloc(layout(MIB)) }).collect();
    assert!(
        blocks[1..].iter().all(|b| reused.contains(b)),
        "the four newest blocks were kept"
    );
    for &b in &reused {
        free(b, MIB);
    }

    // Turning the cache off unmaps what it holds and keeps nothing after.
    percpu_alloc::set_large_cache_bytes(0);
    assert_eq!(kept(), 0);
    let p = alloc_filled(MIB, 3);
    free(p, MIB);
    assert_eq!(kept(), 0);
}

fn the_release_clock_unmaps_blocks_left_unused() {
    percpu_alloc::set_large_cache_bytes(16 * MIB);
    let interval = Duration::from_millis(50);
    percpu_alloc::set_release_interval(interval);

    let old = alloc_filled(MIB, 4);
    // Longer than `old`, so the requests below never take `old` alone. Should the kernel
    // map it next to `old`, the two are kept joined, and the joined block ages as `old`
    // (its oldest part), which the loop's count of ticks still measures.
    let ticker = alloc_filled(2 * MIB, 5);
    free(old, MIB);
    assert_eq!(kept(), MIB);
    // Each large free reads the clock; the clock ticks at most once per interval, and a
    // block goes at the second tick after it was kept. Frees of a longer block keep the
    // clock going without taking the old one (each takes the block it freed last time).
    let mut ticker = Some(ticker);
    let mut ticks = 0;
    while kept() % (2 * MIB) >= MIB && ticks < 100 {
        std::thread::sleep(interval + Duration::from_millis(20));
        let p = ticker.take().unwrap_or_else(|| alloc_filled(2 * MIB, 5));
        free(p, 2 * MIB);
        ticks += 1;
    }
    assert!(
        ticks >= 2,
        "the block survived less than one interval ({ticks} ticks)"
    );
    assert!(
        kept() % (2 * MIB) < MIB,
        "the unused block was still kept after {ticks} intervals"
    );
    percpu_alloc::set_release_interval(Duration::ZERO);
    percpu_alloc::release_memory();
}

fn main() {
    a_freed_block_serves_the_next_request_that_fits();
    a_much_longer_block_gives_its_head_and_takes_it_back();
    the_budget_bounds_what_is_kept();
    the_release_clock_unmaps_blocks_left_unused();
    println!("large_cache: 4 phases passed");
}
