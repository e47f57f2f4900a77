//! Stress in the manner of the kernel's rseq selftests (param_test.c): many more threads than
//! CPUs hammer per-CPU counters and per-CPU linked lists while a timer signal hits every
//! worker about every 100 µs and workers are moved between CPUs. Totals must be exact and no
//! list node may be lost or duplicated. Moderate sizes by default; `--ignored` runs heavier.
//!
//! Plus thread churn: thousands of short-lived threads using rseq (in self-registration mode
//! each registers and unregisters).
// Child processes, signals and CPU affinity: nothing Miri can run.
#![cfg(not(miri))]

use rseq_sys::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use rseq_sys::testing::Disturber;
use rseq_sys::{Backend, Outcome, Rseq, SlotArray};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_micros(100);

#[derive(Default)]
struct Tally {
    aborted: AtomicU64,
    fell_back: AtomicU64,
}

/// Each worker adds until `run_for` has passed, then reports how many adds it made.
fn counter_stress(threads: usize, run_for: Duration, require_aborts: bool) {
    let rseq = Rseq::CPU_ID;
    let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
    let fallback = AtomicU64::new(0);
    let tally = Tally::default();
    let disturber = Disturber::start(PERIOD);
    let deadline = Instant::now() + run_for;
    let expected: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    disturber.enlist();
                    let mut made = 0u64;
                    while !made.is_multiple_of(1024) || disturber.keeps_working(deadline) {
                        made += 1;
                        loop {
                            match rseq.add(SlotArray::from_slice(&slots), 1) {
                                Outcome::Completed { .. } => break,
                                Outcome::Aborted => {
                                    tally.aborted.fetch_add(1, Ordering::Relaxed);
                                }
                                Outcome::NoCpu => {
                                    fallback.fetch_add(1, Ordering::Relaxed);
                                    tally.fell_back.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                    }
                    disturber.retire();
                    made
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let disturbed = disturber.stop();
    let total: u64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>()
        + fallback.load(Ordering::Relaxed);
    assert_eq!(total, expected);
    assert!(
        disturbed.signals > 0,
        "the disturber must have signalled workers"
    );
    report("counter", threads, &tally, disturbed);
    if require_aborts && rseq_sys::cpu_id().is_some() {
        // Signals and preemptions landing inside sections abort them: the path under test.
        assert!(
            tally.aborted.load(Ordering::Relaxed) > 0,
            "no critical section was ever aborted"
        );
    }
}

fn report(what: &str, threads: usize, tally: &Tally, disturbed: rseq_sys::testing::Disturbed) {
    eprintln!(
        "{what}: {threads} threads, {} aborts, {} fallbacks, {} signals, {} migrations",
        tally.aborted.load(Ordering::Relaxed),
        tally.fell_back.load(Ordering::Relaxed),
        disturbed.signals,
        disturbed.migrations
    );
}

#[repr(C, align(8))]
struct Node {
    next: AtomicPtr<u8>,
    id: usize,
}

/// Per-CPU linked lists with a shared fallback list; every node is always in exactly one.
struct Lists {
    heads: Vec<AtomicPtr<u8>>,
    fallback: Mutex<Vec<usize>>,
    /// A thief may lock heads: a push that finds one locked falls back (else it is a bug).
    stolen_from: bool,
}

impl Lists {
    fn push(&self, node: NonNull<u8>, tally: &Tally) {
        loop {
            // SAFETY: every node on these lists is a live `Node` with `next` at offset 0,
            // owned by the lists until popped.
            match unsafe { Rseq::CPU_ID.push_linked(SlotArray::from_slice(&self.heads), node, 0) } {
                Outcome::Completed { value: Ok(()), .. } => return,
                Outcome::Completed {
                    value: Err(head), ..
                } if !self.stolen_from => panic!("unexpected locked head {head:p}"),
                Outcome::Aborted => {
                    tally.aborted.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Completed { value: Err(_), .. } | Outcome::NoCpu => {
                    tally.fell_back.fetch_add(1, Ordering::Relaxed);
                    self.fallback
                        .lock()
                        .unwrap()
                        .push(node.as_ptr().expose_provenance());
                    return;
                }
            }
        }
    }

    fn pop(&self, tally: &Tally) -> Option<NonNull<u8>> {
        loop {
            // SAFETY: as in `push`.
            match unsafe { Rseq::CPU_ID.pop_linked(SlotArray::from_slice(&self.heads), 0) } {
                Outcome::Completed {
                    value: Ok(node), ..
                } => return Some(node),
                Outcome::Completed { value: Err(_), .. } => break,
                Outcome::Aborted => {
                    tally.aborted.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::NoCpu => {
                    tally.fell_back.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let addr = self.fallback.lock().unwrap().pop()?;
        NonNull::new(std::ptr::with_exposed_provenance_mut(addr))
    }

    /// Every one of `count` nodes is on exactly one list (a per-CPU one or the fallback),
    /// and no head is left locked.
    fn assert_each_listed_once(&self, count: usize) {
        let mut seen = HashSet::new();
        for head in &self.heads {
            let mut node = head.load(Ordering::Acquire);
            assert_eq!(
                node.addr() & rseq_sys::LINK_LOCKED,
                0,
                "a head was left locked"
            );
            while !node.is_null() {
                // SAFETY: every listed node is a live leaked `Node`.
                let n = unsafe { &*node.cast::<Node>() };
                assert!(seen.insert(n.id), "node {} is listed twice", n.id);
                node = n.next.load(Ordering::Relaxed);
            }
        }
        for &addr in self.fallback.lock().unwrap().iter() {
            // SAFETY: as above.
            let n = unsafe { &*std::ptr::with_exposed_provenance::<Node>(addr) };
            assert!(seen.insert(n.id), "node {} is listed twice", n.id);
        }
        assert_eq!(seen.len(), count, "nodes were lost");
    }
}

/// Each worker pops, holds and pushes back nodes until `run_for` has passed.
fn list_stress(threads: usize, nodes_per_thread: usize, run_for: Duration, require_aborts: bool) {
    let lists = Lists {
        heads: (0..Rseq::CPU_ID.slot_count())
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
        fallback: Mutex::new(Vec::new()),
        stolen_from: false,
    };
    let tally = Tally::default();
    let all: Vec<usize> = (0..threads * nodes_per_thread)
        .map(|id| {
            Box::into_raw(Box::new(Node {
                next: AtomicPtr::new(std::ptr::null_mut()),
                id,
            }))
            .expose_provenance()
        })
        .collect();
    let disturber = Disturber::start(PERIOD);
    let deadline = Instant::now() + run_for;
    std::thread::scope(|s| {
        for chunk in all.chunks(nodes_per_thread) {
            let (lists, tally, disturber) = (&lists, &tally, &disturber);
            s.spawn(move || {
                disturber.enlist();
                for &node in chunk {
                    lists.push(
                        NonNull::new(std::ptr::with_exposed_provenance_mut(node)).unwrap(),
                        tally,
                    );
                }
                // Pop a few, hold them (so nodes move between CPUs), push them back.
                let mut held = Vec::new();
                let mut round = 0usize;
                while !round.is_multiple_of(1024) || disturber.keeps_working(deadline) {
                    round += 1;
                    if let Some(node) = lists.pop(tally) {
                        held.push(node);
                    }
                    if round % 3 == 2 {
                        for node in held.drain(..) {
                            lists.push(node, tally);
                        }
                    }
                }
                for node in held {
                    lists.push(node, tally);
                }
                disturber.retire();
            });
        }
    });
    let disturbed = disturber.stop();
    lists.assert_each_listed_once(all.len());
    report("list", threads, &tally, disturbed);
    if require_aborts && rseq_sys::cpu_id().is_some() {
        assert!(
            tally.aborted.load(Ordering::Relaxed) > 0,
            "no critical section was ever aborted"
        );
    }
    for addr in all {
        // SAFETY: each node came from Box::into_raw above and no list is used any more.
        drop(unsafe { Box::from_raw(std::ptr::with_exposed_provenance_mut::<Node>(addr)) });
    }
}

#[test]
fn counters_are_exact_under_signals_and_migration() {
    for threads in [4, 16, 32] {
        counter_stress(threads, Duration::from_millis(300), false);
    }
}

#[test]
fn lists_lose_and_duplicate_nothing_under_signals_and_migration() {
    for threads in [4, 16, 32] {
        list_stress(threads, 200, Duration::from_millis(300), false);
    }
}

#[test]
#[ignore = "heavy: run with --ignored"]
fn heavy_counter_stress() {
    for threads in [4, 8, 16, 32, 64] {
        counter_stress(threads, Duration::from_secs(5), true);
    }
}

#[test]
#[ignore = "heavy: run with --ignored"]
fn heavy_list_stress() {
    for threads in [4, 8, 16, 32, 64] {
        list_stress(threads, 1_000, Duration::from_secs(5), true);
    }
}

#[test]
fn thread_churn_registers_and_releases_cleanly() {
    let rseq = Rseq::CPU_ID;
    let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
    let fallback = AtomicU64::new(0);
    let threads = 4000;
    // Waves of short-lived threads, several alive at once, each counting a little and
    // (in self mode) registering on first use and unregistering at exit.
    for _ in 0..threads / 8 {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        loop {
                            match rseq.add(SlotArray::from_slice(&slots), 1) {
                                Outcome::Completed { .. } => break,
                                Outcome::Aborted => continue,
                                Outcome::NoCpu => {
                                    fallback.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                    }
                    let _nested = rseq_sys::Registration::acquire();
                });
            }
        });
    }
    let total: u64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>()
        + fallback.load(Ordering::Relaxed);
    assert_eq!(total, threads as u64 * 100);
    if rseq_sys::is_registered() || rseq_sys::cpu_id().is_some() {
        assert_eq!(
            fallback.load(Ordering::Relaxed),
            0,
            "registered threads fell back"
        );
    }
}

/// A remote thief takes whole per-CPU lists with the lock-bit protocol: CAS the head from
/// `h` to `h | LINK_LOCKED`, fence that CPU (membarrier aborts any section in flight there),
/// re-check that the head is still `h | LINK_LOCKED` (else a section committed in between:
/// give up this round), take the chain, release with a null head. Workers meanwhile push
/// and pop, falling back to the shared list when a head is locked or there is no CPU.
#[test]
fn stealing_with_fences_loses_and_duplicates_nothing() {
    let rseq = Rseq::CPU_ID;
    let lists = Lists {
        heads: (0..rseq.slot_count())
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
        fallback: Mutex::new(Vec::new()),
        stolen_from: true,
    };
    let tally = Tally::default();
    let threads = 8;
    let per_thread = 200;
    let all: Vec<usize> = (0..threads * per_thread)
        .map(|id| {
            Box::into_raw(Box::new(Node {
                next: AtomicPtr::new(std::ptr::null_mut()),
                id,
            }))
            .expose_provenance()
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stolen_lists = AtomicU64::new(0);
    let disturber = Disturber::start(PERIOD);
    std::thread::scope(|s| {
        let workers: Vec<_> = all
            .chunks(per_thread)
            .map(|chunk| {
                let (lists, tally, disturber) = (&lists, &tally, &disturber);
                s.spawn(move || {
                    disturber.enlist();
                    for &node in chunk {
                        lists.push(
                            NonNull::new(std::ptr::with_exposed_provenance_mut(node)).unwrap(),
                            tally,
                        );
                    }
                    let deadline = Instant::now() + Duration::from_millis(400);
                    let mut held = Vec::new();
                    let mut round = 0usize;
                    while !round.is_multiple_of(256) || disturber.keeps_working(deadline) {
                        round += 1;
                        if let Some(node) = lists.pop(tally) {
                            held.push(node);
                        }
                        if round % 4 == 3 {
                            for node in held.drain(..) {
                                lists.push(node, tally);
                            }
                        }
                    }
                    for node in held {
                        lists.push(node, tally);
                    }
                    disturber.retire();
                })
            })
            .collect();
        let thief = {
            let (lists, stop, stolen_lists) = (&lists, &stop, &stolen_lists);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for cpu in 0..lists.heads.len() {
                        if let Some(chain) = steal(rseq, &lists.heads[cpu], cpu) {
                            stolen_lists.fetch_add(1, Ordering::Relaxed);
                            let mut fallback = lists.fallback.lock().unwrap();
                            let mut node = chain;
                            let mut taken = 0;
                            while !node.is_null() {
                                taken += 1;
                                assert!(taken <= threads * per_thread, "the stolen chain has a cycle: a section committed into a stolen list");
                                fallback.push(node.expose_provenance());
                                // SAFETY: the thief owns the stolen chain; every node is live.
                                node = unsafe { &*node.cast::<Node>() }
                                    .next
                                    .load(Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        for worker in workers {
            worker.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        thief.join().unwrap();
    });
    disturber.stop();
    lists.assert_each_listed_once(all.len());
    if rseq_sys::cpu_id().is_some() {
        assert!(
            stolen_lists.load(Ordering::Relaxed) > 0,
            "the thief never stole a list"
        );
    }
    eprintln!(
        "steal: {} lists stolen, {} aborts, {} fallbacks",
        stolen_lists.load(Ordering::Relaxed),
        tally.aborted.load(Ordering::Relaxed),
        tally.fell_back.load(Ordering::Relaxed)
    );
    for addr in all {
        // SAFETY: each node came from Box::into_raw above and no list is used any more.
        drop(unsafe { Box::from_raw(std::ptr::with_exposed_provenance_mut::<Node>(addr)) });
    }
}

/// The thief's side of the protocol for CPU `cpu`'s list. Returns the stolen chain.
fn steal(rseq: Rseq, head: &AtomicPtr<u8>, cpu: usize) -> Option<*mut u8> {
    let seen = head.load(Ordering::Acquire);
    if seen.is_null() || seen.addr() & rseq_sys::LINK_LOCKED != 0 {
        return None;
    }
    let locked = seen.map_addr(|a| a | rseq_sys::LINK_LOCKED);
    head.compare_exchange(seen, locked, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    rseq.fence_cpu(cpu).expect("membarrier fence");
    if head.load(Ordering::Acquire) != locked {
        // A section that read `seen` before the CAS committed after it: the list is the
        // committer's and consistent; our lock was overwritten, nothing to undo.
        return None;
    }
    // Owned: every later section on `cpu` sees the lock bit and declines.
    head.store(std::ptr::null_mut(), Ordering::Release);
    Some(seen)
}
