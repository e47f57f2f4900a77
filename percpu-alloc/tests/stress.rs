//! Stress: many more threads than CPUs, signals and migrations during the run, cross-thread
//! frees, and churn of 10,000 short-lived threads, with the allocator as the global one.
//!
//! `PERCPU_STRESS_SCALE` (a number in (0, 1], default 1) scales every test's iteration and
//! thread-churn counts, never its thread counts: `.ci/valgrind` and `.ci/sanitizers` set it,
//! since their tools run the threads many times slower.

use percpu_alloc::PerCpuAlloc;
use rseq_sys::testing::{stress_scaled as scaled, Disturber};
use std::sync::mpsc;
use std::time::Duration;

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

fn pattern(tag: u64, len: usize) -> Vec<u64> {
    (0..len as u64)
        .map(|i| tag ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect()
}

fn verify(tag: u64, v: &[u64]) {
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, tag ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

#[test]
fn threads_far_beyond_cpus_with_cross_thread_frees_under_disturbance() {
    let disturber = Disturber::start(Duration::from_micros(100));
    let threads = 32u64;
    // Even, so that each thread sends exactly half.
    let per_thread = scaled(3_000).next_multiple_of(2);
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u64>)>(256);
    std::thread::scope(|s| {
        for t in 0..threads {
            let tx = tx.clone();
            let disturber = &disturber;
            s.spawn(move || {
                disturber.enlist();
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    let tag = (t << 32) | i;
                    let len = ((i * 13 + t) % 700) as usize;
                    let v = pattern(tag, len);
                    if i % 2 == 0 {
                        tx.send((tag, v)).unwrap();
                    } else {
                        mine.push((tag, v));
                        if mine.len() > 50 {
                            let (tag, v) = mine.swap_remove((i as usize * 7) % mine.len());
                            verify(tag, &v);
                        }
                    }
                }
                for (tag, v) in mine {
                    verify(tag, &v);
                }
                disturber.retire();
            });
        }
        drop(tx);
        // Frees happen here, on a thread that allocated none of them.
        let mut received = 0;
        for (tag, v) in rx.iter() {
            verify(tag, &v);
            received += 1;
        }
        assert_eq!(received, threads * per_thread / 2);
    });
    let disturbed = disturber.stop();
    assert!(disturbed.signals > 0);
}

/// 100 waves of 100 threads (fewer waves when scaled down).
#[test]
fn ten_thousand_short_lived_threads() {
    let waves = scaled(100);
    let (tx, rx) = mpsc::channel::<(u64, Vec<u64>)>();
    let checker = std::thread::spawn(move || {
        let mut n = 0u64;
        for (tag, v) in rx {
            verify(tag, &v);
            n += 1;
        }
        n
    });
    let mut joined = 0u64;
    for wave in 0..waves {
        let handles: Vec<_> = (0..100u64)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let tag = wave * 1000 + t;
                    let keep = pattern(tag, (tag % 300) as usize);
                    let boxed: Vec<Box<[u8; 40]>> =
                        (0..20).map(|i| Box::new([i as u8; 40])).collect();
                    tx.send((tag, pattern(tag, 64))).unwrap();
                    verify(tag, &keep);
                    assert!(boxed
                        .iter()
                        .enumerate()
                        .all(|(i, b)| b.iter().all(|&x| x == i as u8)));
                    // Returned to the joining thread, freed there.
                    keep
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            verify(wave * 1000 + t as u64, &h.join().unwrap());
            joined += 1;
        }
    }
    drop(tx);
    assert_eq!(joined, waves * 100);
    assert_eq!(checker.join().unwrap(), waves * 100);
}

#[test]
fn large_blocks_churn_across_threads() {
    let per_thread = scaled(40);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                for i in 0..per_thread {
                    let len = (300_000 + ((i * 7919 + t) % 500_000)) as usize / 8;
                    let mut v = pattern(t * 100 + i, len);
                    v.resize(len * 2, 0);
                    verify(t * 100 + i, &v[..len]);
                    v.truncate(len / 3);
                    v.shrink_to_fit();
                    verify(t * 100 + i, &v);
                }
            });
        }
    });
}
