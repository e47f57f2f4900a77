//! Fork safety: the child of a multi-threaded parent gets a working allocator.
//!
//! Worker threads hammer every layer (per-CPU caches, transfer caches, central lists, page
//! heap, large mappings, releases and statistics) while the main thread forks over and
//! over. Each child allocates and frees a lot, across every size class and large blocks, so
//! it needs every lock; a lock left held by a thread that does not exist in the child would
//! make it spin for ever. The parent waits for each child with a timeout and fails (after
//! killing it) if one hangs.
//!
//! Without the fork handlers this test fails within a few forks on a 2-core machine (the
//! children hang on a transfer-cache or central-list lock).

use percpu_alloc::PerCpuAlloc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

const FORKS: usize = 100;
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// Sizes covering small classes of every range, the biggest class, and large blocks.
fn size(i: usize) -> usize {
    match i % 10 {
        0..=4 => 1 + (i * 37) % 512,
        5..=6 => 512 + (i * 997) % 8192,
        7 => 8192 + (i * 7919) % (256 * 1024 - 8192),
        8 => 256 * 1024,
        _ => 256 * 1024 + 1 + (i * 104_729) % (2 << 20),
    }
}

/// Allocate, fill, check and free blocks of many sizes in batches bigger than the per-CPU
/// caches, so every slow path runs. Returns false on a wrong byte.
fn churn(seed: usize, rounds: usize) -> bool {
    for round in 0..rounds {
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(600);
        for i in 0..600 {
            let n = if i % 40 == 39 {
                size(seed + round + i)
            } else {
                size(seed + round + i) % 4096 + 1
            };
            blocks.push(vec![(i + seed) as u8; n]);
        }
        let strings: Vec<String> = (0..300).map(|i| format!("{seed}-{round}-{i}")).collect();
        let boxes: Vec<Box<[u64; 33]>> = (0..300).map(|i| Box::new([i as u64; 33])).collect();
        for (i, b) in blocks.iter().enumerate() {
            // A sample of each block: whole-block checks would dominate a debug build.
            let step = b.len() / 64 + 1;
            if b.iter().step_by(step).any(|&x| x != (i + seed) as u8) {
                return false;
            }
        }
        for (i, s) in strings.iter().enumerate() {
            if *s != format!("{seed}-{round}-{i}") {
                return false;
            }
        }
        if boxes.iter().enumerate().any(|(i, b)| b[32] != i as u64) {
            return false;
        }
    }
    true
}

fn wait_with_timeout(pid: libc::pid_t) -> Result<libc::c_int, String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(status);
        }
        if rc < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if start.elapsed() > CHILD_TIMEOUT {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child {pid} hung for {CHILD_TIMEOUT:?} (a lock left held across fork)"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn children_of_a_busy_parent_can_allocate() {
    let stop = &AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..3usize {
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert!(churn(t * 1000 + i, 1));
                    if t == 0 && i % 8 == 0 {
                        percpu_alloc::release_memory();
                    }
                    if t == 1 && i % 4 == 0 {
                        let _ = percpu_alloc::stats();
                    }
                    i += 1;
                }
            });
        }
        // Cross-thread frees keep the transfer caches and central lists busy too.
        s.spawn(move || {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(4);
            std::thread::scope(|inner| {
                inner.spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let batch = (0..500).map(|j| vec![1u8; size(i + j) % 2048 + 1]);
                        if tx.send(batch.collect()).is_err() {
                            break;
                        }
                        i += 1;
                    }
                });
                for batch in rx {
                    drop(batch);
                }
            });
        });

        let result = (|| {
            for k in 0..FORKS {
                // SAFETY: the child only allocates, frees and calls `_exit`; the allocator
                // is the code under test.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    return Err(format!("fork: {}", std::io::Error::last_os_error()));
                }
                if pid == 0 {
                    let ok = churn(k, 4) && {
                        let big = vec![7u8; 8 << 20];
                        big.iter().step_by(4096).all(|&b| b == 7)
                    };
                    // SAFETY: `_exit` ends the child without running the parent's
                    // destructors or the test harness.
                    unsafe { libc::_exit(if ok { 0 } else { 2 }) };
                }
                let status = wait_with_timeout(pid)?;
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    return Err(format!("child {k} ended with status {status:#x}"));
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}
