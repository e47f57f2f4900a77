//! Stress in the manner of the kernel's rseq selftests (param_test.c): many more threads than
//! CPUs push and pop while a disturber signals every worker about every 100 µs and moves
//! workers between CPUs. Every element pushed must come out exactly once (popped, drained or
//! handed back). CI runs this file in all three registration modes (glibc, self-registration,
//! `PERCPU_NO_RSEQ=1`). Under Miri the disturber (syscalls) is off and sizes are small.

use percpu_queue::{FreeList, Node, PerCpuBuffer, Pool};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

const THREADS: usize = if cfg!(miri) { 3 } else { 16 };

/// Operations per thread: 20,000, times `PERCPU_STRESS_SCALE` when set (a number in (0, 1];
/// `.ci/valgrind` and `.ci/sanitizers` set it, since their tools run the threads many times
/// slower), and 40 under Miri.
fn per_thread() -> u64 {
    if cfg!(miri) {
        return 40;
    }
    rseq_sys::testing::stress_scaled(20_000)
}

#[cfg(not(miri))]
type Disturber = rseq_sys::testing::Disturber;

/// Runs while the test runs, disturbing every enlisted worker (nothing under Miri).
struct Disturbance {
    #[cfg(not(miri))]
    disturber: Disturber,
}

impl Disturbance {
    fn start() -> Self {
        Disturbance {
            #[cfg(not(miri))]
            disturber: Disturber::start(std::time::Duration::from_micros(100)),
        }
    }

    fn enlist(&self) {
        #[cfg(not(miri))]
        self.disturber.enlist();
    }

    fn retire(&self) {
        #[cfg(not(miri))]
        self.disturber.retire();
    }

    fn finish(self) {
        #[cfg(not(miri))]
        {
            let done = self.disturber.stop();
            assert!(
                done.signals > 0,
                "the disturber must have signalled workers"
            );
        }
    }
}

/// Every id in `0..expected` exactly once.
fn assert_exactly_once(mut ids: Vec<u64>, expected: u64) {
    ids.sort_unstable();
    let len = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), len, "an element came out twice");
    assert_eq!(
        ids,
        (0..expected).collect::<Vec<_>>(),
        "an element was lost"
    );
}

#[test]
fn freelist_push_pop_from_every_thread_loses_and_duplicates_nothing() {
    let per_thread = per_thread();
    let mut list: FreeList<u64> = FreeList::new();
    let disturbance = Disturbance::start();
    let popped = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (list, popped, disturbance) = (&list, &popped, &disturbance);
            s.spawn(move || {
                disturbance.enlist();
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    list.push(Box::new(Node::new(t * per_thread + i)));
                    // Pop a little less than we push so lists grow and steals have prey.
                    if i % 8 != 0 {
                        mine.extend(list.pop().map(|n| n.into_inner()));
                    }
                }
                disturbance.retire();
                popped.lock().unwrap().extend(mine);
            });
        }
    });
    disturbance.finish();
    let mut ids = popped.into_inner().unwrap();
    ids.extend(list.drain().into_iter().map(|n| n.into_inner()));
    assert_exactly_once(ids, THREADS as u64 * per_thread);
    assert!(list.is_empty());
}

#[test]
fn freelist_consumers_steal_what_producers_push() {
    let per_thread = per_thread();
    let mut list: FreeList<u64> = FreeList::new();
    let disturbance = Disturbance::start();
    let producers = THREADS / 2;
    let producing = AtomicUsize::new(producers);
    let popped = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..producers as u64 {
            let (list, producing, disturbance) = (&list, &producing, &disturbance);
            s.spawn(move || {
                disturbance.enlist();
                for i in 0..per_thread {
                    list.push(Box::new(Node::new(t * per_thread + i)));
                }
                disturbance.retire();
                producing.fetch_sub(1, Ordering::Release);
            });
        }
        for _ in producers..THREADS {
            let (list, producing, popped, disturbance) = (&list, &producing, &popped, &disturbance);
            s.spawn(move || {
                disturbance.enlist();
                let mut mine = Vec::new();
                loop {
                    // Read before popping: a None after every producer finished means the
                    // lists were empty then (or hold only what fences cannot reach).
                    let finished = producing.load(Ordering::Acquire) == 0;
                    match list.pop() {
                        Some(node) => mine.push(node.into_inner()),
                        None if finished => break,
                        None => std::thread::yield_now(),
                    }
                }
                disturbance.retire();
                popped.lock().unwrap().extend(mine);
            });
        }
    });
    disturbance.finish();
    let mut ids = popped.into_inner().unwrap();
    let left = list.drain();
    let stranded = left.len();
    ids.extend(left.into_iter().map(|n| n.into_inner()));
    assert_exactly_once(ids, producers as u64 * per_thread);
    // The last consumer to stop saw every list empty while no other consumer was moving a
    // batch (one that is keeps popping until it too sees nothing). So whenever consumers can
    // reach every CPU's list (stealing works, or everything went through the fallback),
    // nothing is left. Only with rseq but without fences may elements be stranded.
    let stealing_off = rseq_sys::cpu_id().is_some() && !rseq_sys::membarrier_rseq();
    if !stealing_off {
        assert_eq!(
            stranded, 0,
            "consumers stopped while elements were reachable"
        );
    }
}

#[test]
fn buffer_items_are_popped_drained_or_handed_back_exactly_once() {
    let per_thread = per_thread();
    let mut buffer: PerCpuBuffer<u64> = PerCpuBuffer::with_capacity(64);
    let disturbance = Disturbance::start();
    let out = Mutex::new(Vec::new());
    let handed_back_total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (buffer, out, disturbance, handed_back_total) =
                (&buffer, &out, &disturbance, &handed_back_total);
            s.spawn(move || {
                disturbance.enlist();
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    if let Err(back) = buffer.push(Box::new(t * per_thread + i)) {
                        handed_back_total.fetch_add(1, Ordering::Relaxed);
                        mine.push(*back);
                    }
                    if i % 3 == 0 {
                        mine.extend(buffer.pop().map(|b| *b));
                    }
                }
                disturbance.retire();
                out.lock().unwrap().extend(mine);
            });
        }
    });
    disturbance.finish();
    let mut ids = out.into_inner().unwrap();
    ids.extend(buffer.drain().into_iter().map(|b| *b));
    assert_exactly_once(ids, THREADS as u64 * per_thread);
    // Pushes outnumber pops 3:1 against 64 slots per CPU: full stacks must hand items back.
    assert!(handed_back_total.load(Ordering::Relaxed) > 0);
}

struct Tracked {
    in_use: AtomicBool,
    uses: AtomicU64,
}

#[test]
fn pool_objects_are_never_shared_and_idle_stays_bounded() {
    let per_thread = per_thread();
    const MAX_IDLE: usize = 8;
    let created = std::sync::Arc::new(AtomicUsize::new(0));
    let creations = created.clone();
    let mut pool = Pool::new(MAX_IDLE, move || {
        creations.fetch_add(1, Ordering::Relaxed);
        Tracked {
            in_use: AtomicBool::new(false),
            uses: AtomicU64::new(0),
        }
    });
    let disturbance = Disturbance::start();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (pool, disturbance) = (&pool, &disturbance);
            s.spawn(move || {
                disturbance.enlist();
                for i in 0..per_thread {
                    let a = pool.get();
                    assert!(
                        !a.in_use.swap(true, Ordering::Acquire),
                        "object handed out twice"
                    );
                    a.uses.fetch_add(1, Ordering::Relaxed);
                    if i % 4 == 0 {
                        let b = pool.get();
                        assert!(
                            !b.in_use.swap(true, Ordering::Acquire),
                            "object handed out twice"
                        );
                        b.in_use.store(false, Ordering::Release);
                    }
                    a.in_use.store(false, Ordering::Release);
                    assert!(pool.kept() <= MAX_IDLE);
                }
                disturbance.retire();
            });
        }
    });
    disturbance.finish();
    let kept = pool.kept();
    assert!(kept <= MAX_IDLE);
    let idle = pool.drain();
    assert_eq!(
        idle.len(),
        kept,
        "every kept object is idle once all guards are gone"
    );
    assert!(idle.iter().all(|o| !o.in_use.load(Ordering::Relaxed)));
    let total_uses: u64 = idle.iter().map(|o| o.uses.load(Ordering::Relaxed)).sum();
    assert!(total_uses > 0 || created.load(Ordering::Relaxed) > kept);
}

/// With rseq and fences: a thread on another CPU gets every element one thread left on CPU
/// 0, through the steal protocol alone (the fallback is empty when the pushes ran on a CPU).
#[cfg(not(miri))]
#[test]
fn a_thread_on_another_cpu_steals_everything() {
    fn pin(cpu: usize) -> bool {
        // SAFETY: cpu_set_t is plain bits; all-zero is valid.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (at most 1 here).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: the size and pointer describe `set`; 0 is the calling thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 }
    }
    if rseq_sys::cpu_id().is_none() || !rseq_sys::membarrier_rseq() {
        return;
    }
    let list: FreeList<u64> = FreeList::new();
    let buffer: PerCpuBuffer<u64> = PerCpuBuffer::with_capacity(1000);
    const N: u64 = 1000;
    let pinned = std::thread::scope(|s| {
        s.spawn(|| {
            if !pin(0) {
                return false;
            }
            for i in 0..N {
                list.push(Box::new(Node::new(i)));
                buffer.push(Box::new(i)).expect("room for every item");
            }
            true
        })
        .join()
        .unwrap()
    });
    if !pinned {
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            if !pin(1) {
                return;
            }
            let stolen: Vec<u64> =
                std::iter::from_fn(|| list.pop().map(|n| n.into_inner())).collect();
            assert_exactly_once(stolen, N);
            let stolen: Vec<u64> = std::iter::from_fn(|| buffer.pop().map(|b| *b)).collect();
            assert_exactly_once(stolen, N);
        });
    });
}

/// The same exactly-once property on a simulated 3-CPU machine, where every thread migrates
/// (including to "no CPU") every few operations and one section in five aborts after its
/// try-stores: many concurrent steals, stops and fallbacks. Under Miri this is the run that
/// checks the per-CPU and steal paths for data races and undefined behaviour.
#[test]
fn simulated_migrations_and_aborts_lose_nothing() {
    simulated_migrations_and_aborts(false);
}

/// The same with the bounded buffer in the mix. This run caught issue 5 (a double free in
/// about one debug run in four): the buffer's steal restarted a stack without fencing out
/// sections that had loaded its old top (see `PerCpuBuffer`'s docs, step 6; the loom models
/// `buffer_*` pin the interleaving down).
#[test]
fn simulated_migrations_and_aborts_with_the_buffer_lose_nothing() {
    simulated_migrations_and_aborts(true);
}

fn simulated_migrations_and_aborts(with_buffer: bool) {
    let per_thread = per_thread();
    use rseq_sys::simulation::{abort_one_in, set_cpu};
    use rseq_sys::Simulated;
    const CPUS: usize = 3;
    let machine = Simulated::new(CPUS);
    let mut list: FreeList<u64, Simulated> = FreeList::with_backend(machine.clone());
    let mut buffer: PerCpuBuffer<u64, Simulated> = PerCpuBuffer::with_backend(machine, 8);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (list, buffer, out) = (&list, &buffer, &out);
            s.spawn(move || {
                abort_one_in(5, t + 1);
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    if i % 7 == 0 {
                        // CPUs 0..3, and every fourth move to no CPU at all.
                        let slot = ((t + i / 7) % (CPUS as u64 + 1)) as usize;
                        set_cpu((slot < CPUS).then_some(slot));
                    }
                    let id = t * per_thread + i;
                    if i % 2 == 0 || !with_buffer {
                        list.push(Box::new(Node::new(id)));
                    } else if let Err(back) = buffer.push(Box::new(id)) {
                        mine.push(*back);
                    }
                    if i % 3 != 0 {
                        mine.extend(list.pop().map(|n| n.into_inner()));
                        if with_buffer {
                            mine.extend(buffer.pop().map(|b| *b));
                        }
                    }
                }
                abort_one_in(0, 0);
                out.lock().unwrap().extend(mine);
            });
        }
    });
    let mut ids = out.into_inner().unwrap();
    ids.extend(list.drain().into_iter().map(|n| n.into_inner()));
    ids.extend(buffer.drain().into_iter().map(|b| *b));
    assert_exactly_once(ids, THREADS as u64 * per_thread);
}
