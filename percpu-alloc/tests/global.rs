//! The allocator as `#[global_allocator]`: std collections, threads, cross-thread frees,
//! large and over-aligned blocks, edge-case layouts.

use percpu_alloc::PerCpuAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

#[test]
fn std_collections_work() {
    let mut map = HashMap::new();
    let mut tree = BTreeMap::new();
    let mut deque = VecDeque::new();
    for i in 0..20_000u64 {
        map.insert(i, format!("value {i}"));
        tree.insert(format!("{i:08}"), vec![i; (i % 17) as usize]);
        deque.push_back(Box::new(i));
        if i % 3 == 0 {
            deque.pop_front();
        }
    }
    for i in 0..20_000u64 {
        assert_eq!(map[&i], format!("value {i}"));
        assert_eq!(tree[&format!("{i:08}")], vec![i; (i % 17) as usize]);
    }
    let total: u64 = deque.iter().map(|b| **b).sum();
    assert!(total > 0);
    let mut big: Vec<u8> = Vec::new();
    for i in 0..3_000_000u32 {
        big.push(i as u8);
    }
    assert!(big.iter().enumerate().all(|(i, &b)| b == i as u8));
}

#[test]
fn blocks_freed_on_other_threads() {
    let (tx, rx) = mpsc::channel::<Vec<u64>>();
    let producers: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    let len = ((i * 7 + t) % 300) as usize;
                    tx.send(vec![t * 1_000_000 + i; len]).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = std::thread::spawn(move || {
        let mut seen = 0;
        for v in rx {
            if let Some(&first) = v.first() {
                assert!(v.iter().all(|&x| x == first));
            }
            seen += 1;
        }
        seen
    });
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 20_000);
}

#[test]
fn every_alignment_up_to_1_gib_is_honoured() {
    let mut align = 1usize;
    while align <= 1 << 30 {
        for size in [1, 8, 100, 5000, 300_000] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { A.alloc(layout) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            assert!(PerCpuAlloc::usable_size(p).unwrap() >= size);
            // SAFETY: `p` is a live block of `size` bytes.
            unsafe {
                p.write_bytes(0xAB, size);
                A.dealloc(p, layout);
            }
        }
        align *= 2;
    }
}

#[test]
fn zero_size_and_extreme_layouts() {
    // A zero-size layout is outside the GlobalAlloc contract for callers; we still answer
    // with a unique, freeable block rather than anything undefined.
    let zero = Layout::from_size_align(0, 1).unwrap();
    // SAFETY: see above; the block is freed with the same layout.
    unsafe {
        let a = A.alloc(zero);
        let b = A.alloc(zero);
        assert!(!a.is_null() && !b.is_null() && a != b);
        A.dealloc(a, zero);
        A.dealloc(b, zero);
    }
    let align = 1 << 12;
    let huge = Layout::from_size_align(isize::MAX as usize - (align - 1), align).unwrap();
    // SAFETY: non-zero size; exhaustion must return null.
    assert!(unsafe { A.alloc(huge) }.is_null());
    // SAFETY: as above.
    assert!(unsafe { A.alloc_zeroed(huge) }.is_null());
    let huge1 = Layout::from_size_align(isize::MAX as usize, 1).unwrap();
    // SAFETY: as above.
    assert!(unsafe { A.alloc(huge1) }.is_null());
    let small = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: realloc to an impossible size fails and leaves the block intact.
    unsafe {
        let p = A.alloc(small);
        p.write_bytes(3, 64);
        let q = A.realloc(p, small, isize::MAX as usize - 7);
        assert!(q.is_null());
        assert!(std::slice::from_raw_parts(p, 64).iter().all(|&b| b == 3));
        A.dealloc(p, small);
    }
}

#[test]
fn realloc_preserves_contents_across_classes_and_large_blocks() {
    for align in [1, 8, 64, 4096, 1 << 16] {
        let mut layout = Layout::from_size_align(1, align).unwrap();
        // SAFETY: non-zero size; each step reallocates the live block with its layout.
        unsafe {
            let mut p = A.alloc(layout);
            p.write(0);
            let mut size = 1;
            for new_size in [
                3, 17, 200, 4000, 70_000, 300_000, 5_000_000, 400_000, 100, 9,
            ] {
                let q = A.realloc(p, layout, new_size);
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0);
                let kept = size.min(new_size);
                for i in 0..kept {
                    assert_eq!(
                        *q.add(i),
                        (i % 251) as u8,
                        "align {align} {size}->{new_size} at {i}"
                    );
                }
                for i in 0..new_size {
                    q.add(i).write((i % 251) as u8);
                }
                p = q;
                size = new_size;
                layout = Layout::from_size_align(size, align).unwrap();
            }
            A.dealloc(p, layout);
        }
    }
}

#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    for size in [8, 48, 1000, 100_000, 1 << 20] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..3 {
            // SAFETY: non-zero size; dirtied and freed with its layout.
            unsafe {
                let p = A.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(0xFF, size);
                A.dealloc(p, layout);
            }
        }
    }
}

#[test]
fn statistics_track_a_large_block() {
    let v = vec![1u8; 8 << 20];
    // Other tests run meanwhile, so only what this block alone implies is checked.
    let during = percpu_alloc::stats();
    assert!(during.large_bytes >= 8 << 20);
    assert!(during.in_use_bytes >= 8 << 20);
    assert!(during.mapped_bytes >= during.large_bytes);
    drop(v);
    assert!(during.process_resident_bytes.is_some());
}

#[test]
fn per_cpu_caches_run_exactly_when_rseq_is_available() {
    let v = vec![0u8; 100];
    let active = percpu_alloc::stats().per_cpu_active;
    let available = !matches!(rseq_sys::owner(), rseq_sys::Owner::Unavailable(_));
    assert_eq!(active, available, "owner {:?}", rseq_sys::owner());
    if std::env::var_os("PERCPU_NO_RSEQ").is_some_and(|v| !v.is_empty() && v != "0") {
        assert!(
            !active,
            "PERCPU_NO_RSEQ must leave the per-CPU caches unused"
        );
    }
    drop(v);
}
