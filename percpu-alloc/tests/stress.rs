//! Stress: many more threads than CPUs, signals and migrations during the run, cross-thread
//! frees, and churn of 10,000 short-lived threads, with the allocator as the global one.

use percpu_alloc::PerCpuAlloc;
use rseq_sys::testing::Disturber;
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
    let threads = 32;
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u64>)>(256);
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let tx = tx.clone();
            let disturber = &disturber;
            s.spawn(move || {
                disturber.enlist();
                let mut mine = Vec::new();
                for i in 0..3_000u64 {
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
        assert_eq!(received, threads * 1_500);
    });
    let disturbed = disturber.stop();
    assert!(disturbed.signals > 0);
}

#[test]
fn ten_thousand_short_lived_threads() {
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
    for wave in 0..100u64 {
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
    assert_eq!(joined, 10_000);
    assert_eq!(checker.join().unwrap(), 10_000);
}

#[test]
fn large_blocks_churn_across_threads() {
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                for i in 0..40u64 {
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
