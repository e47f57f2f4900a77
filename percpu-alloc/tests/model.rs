//! Property test: random alloc/realloc/dealloc sequences against a model that checks
//! alignment, no overlap between live blocks, and preserved contents.

use percpu_alloc::PerCpuAlloc;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: usize,
        align_log: u32,
        zeroed: bool,
    },
    Realloc {
        pick: usize,
        size: usize,
    },
    Free {
        pick: usize,
    },
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..=64,
        3 => 65usize..=4096,
        2 => 4097usize..=(256 << 10),
        1 => (256usize << 10)..=(3 << 20),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size_strategy(), 0u32..=13, any::<bool>())
            .prop_map(|(size, align_log, zeroed)| Op::Alloc { size, align_log, zeroed }),
        2 => (any::<usize>(), size_strategy()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

struct Block {
    /// The block itself (the map's key is its address; the pointer keeps its provenance).
    ptr: *mut u8,
    layout: Layout,
    seed: u8,
}

/// The bytes written and checked in a block of `size`: the first 256, every `STRIDE`th, and
/// the last (checking all of a multi-megabyte block byte by byte would dominate the run).
fn sampled(size: usize) -> impl Iterator<Item = usize> {
    /// Prime, so the samples fall at every offset within pages and words; far apart under
    /// Miri, which interprets each one.
    const STRIDE: usize = if cfg!(miri) { 4093 } else { 61 };
    let first = 0..size.min(256);
    let strided = (256usize.next_multiple_of(STRIDE)..size.saturating_sub(1)).step_by(STRIDE);
    first
        .chain(strided)
        .chain(size.checked_sub(1).filter(|&last| last >= 256))
}

fn fill(p: *mut u8, size: usize, seed: u8) {
    for i in sampled(size) {
        // SAFETY: the block has `size` bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// Check the bytes `fill(_, written, seed)` wrote below `kept`.
fn check_kept(p: *mut u8, kept: usize, written: usize, seed: u8) {
    for i in sampled(written).take_while(|&i| i < kept) {
        // SAFETY: the block has at least `size` bytes.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, seed.wrapping_add(i as u8), "byte {i} of {kept}");
    }
}

fn check(p: *mut u8, size: usize, seed: u8) {
    check_kept(p, size, size, seed);
}

fn run(ops: Vec<Op>) {
    let a = PerCpuAlloc::new();
    // Keyed by address: the model of live blocks.
    let mut live: BTreeMap<usize, Block> = BTreeMap::new();
    let mut next_seed = 1u8;
    let no_overlap = |live: &BTreeMap<usize, Block>, p: usize, size: usize| {
        let size = size.max(1);
        if let Some((&q, b)) = live.range(..=p).next_back() {
            assert!(q + b.layout.size().max(1) <= p, "overlap with {q:#x}");
        }
        if let Some((&q, _)) = live.range(p + 1..).next() {
            assert!(p + size <= q, "overlap with {q:#x}");
        }
    };
    for op in ops {
        match op {
            Op::Alloc {
                size,
                align_log,
                zeroed,
            } => {
                let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
                // SAFETY: zero sizes are answered by this allocator (documented).
                let p = unsafe {
                    if zeroed {
                        a.alloc_zeroed(layout)
                    } else {
                        a.alloc(layout)
                    }
                };
                assert!(!p.is_null());
                assert_eq!(p.addr() % layout.align(), 0);
                assert!(PerCpuAlloc::usable_size(p).unwrap() >= size);
                if zeroed {
                    check_zero(p, size);
                }
                no_overlap(&live, p.addr(), size);
                let seed = next_seed;
                next_seed = next_seed.wrapping_add(37);
                fill(p, size, seed);
                live.insert(
                    p.addr(),
                    Block {
                        ptr: p,
                        layout,
                        seed,
                    },
                );
            }
            Op::Realloc { pick, size } => {
                if live.is_empty() {
                    continue;
                }
                let key = *live.keys().nth(pick % live.len()).unwrap();
                let block = live.remove(&key).unwrap();
                let new_size = size.max(1);
                // SAFETY: a live block with its layout; non-zero new size.
                let q = unsafe { a.realloc(block.ptr, block.layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q.addr() % block.layout.align(), 0);
                check_kept(
                    q,
                    block.layout.size().min(new_size),
                    block.layout.size(),
                    block.seed,
                );
                no_overlap(&live, q.addr(), new_size);
                fill(q, new_size, block.seed);
                let layout = Layout::from_size_align(new_size, block.layout.align()).unwrap();
                live.insert(
                    q.addr(),
                    Block {
                        ptr: q,
                        layout,
                        seed: block.seed,
                    },
                );
            }
            Op::Free { pick } => {
                if live.is_empty() {
                    continue;
                }
                let key = *live.keys().nth(pick % live.len()).unwrap();
                let block = live.remove(&key).unwrap();
                check(block.ptr, block.layout.size(), block.seed);
                // SAFETY: a live block with its layout.
                unsafe { a.dealloc(block.ptr, block.layout) };
            }
        }
    }
    for block in live.into_values() {
        check(block.ptr, block.layout.size(), block.seed);
        // SAFETY: a live block with its layout.
        unsafe { a.dealloc(block.ptr, block.layout) };
    }
}

fn check_zero(p: *mut u8, size: usize) {
    if cfg!(miri) {
        // Miri interprets each comparison: the sampled bytes only.
        for i in sampled(size) {
            // SAFETY: the block has `size` bytes.
            assert_eq!(unsafe { p.add(i).read() }, 0, "byte {i} of {size}");
        }
        return;
    }
    // Every byte, compared a page at a time: `[u8] == [u8]` is one `memcmp` even in a debug
    // build, where a byte loop over a multi-megabyte block dominated the whole test.
    static ZEROS: [u8; 4096] = [0; 4096];
    // SAFETY: the block has `size` bytes, all initialised by `alloc_zeroed`, and nothing
    // writes them while this shared view lives.
    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
    for (n, chunk) in bytes.chunks(ZEROS.len()).enumerate() {
        if chunk != &ZEROS[..chunk.len()] {
            let at = chunk.iter().position(|&b| b != 0).unwrap();
            panic!("byte {} of {size} is not zero", n * ZEROS.len() + at);
        }
    }
}

/// Miri interprets every step: a few short sequences there, checked the same way.
const CASES: u32 = if cfg!(miri) { 4 } else { 256 };
const MAX_OPS: usize = if cfg!(miri) { 24 } else { 200 };

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sequences_match_the_model(ops in proptest::collection::vec(op_strategy(), 1..MAX_OPS)) {
        run(ops);
    }
}

#[test]
fn sequences_match_the_model_on_many_threads() {
    // The same model per thread, all threads sharing the heap (and its CPU caches).
    std::thread::scope(|s| {
        for t in 0..if cfg!(miri) { 2 } else { 6u64 } {
            s.spawn(move || {
                let mut runner = proptest::test_runner::TestRunner::new_with_rng(
                    ProptestConfig {
                        cases: if cfg!(miri) { 1 } else { 16 },
                        ..ProptestConfig::default()
                    },
                    proptest::test_runner::TestRng::from_seed(
                        proptest::test_runner::RngAlgorithm::ChaCha,
                        &[t as u8; 32],
                    ),
                );
                runner
                    .run(
                        &proptest::collection::vec(op_strategy(), 1..MAX_OPS * 3 / 2),
                        |ops| {
                            run(ops);
                            Ok(())
                        },
                    )
                    .unwrap();
            });
        }
    });
}
