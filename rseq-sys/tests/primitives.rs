//! Each primitive against real rseq (or the fallback when unavailable), from many threads,
//! with exact totals.

use rseq_sys::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use rseq_sys::{Backend, BoundedStack, Outcome, PinnedRseq, Rseq, SlotArray};
use std::collections::HashSet;
use std::ptr::NonNull;

const THREADS: usize = 8;

fn backends() -> [Rseq; 2] {
    [Rseq::CPU_ID, Rseq::CONCURRENCY_ID]
}

/// Adds made by each test below: `THREADS` threads, each adding 1 this many times.
const ADDS_PER_THREAD: u64 = 200_000;

/// Runs `THREADS` threads that each make a handle with `make` and add 1 to `slots`
/// `ADDS_PER_THREAD` times through `add`, retrying aborted adds and counting "no CPU" ones
/// in a fallback word. Returns (the slots' total, the fallback's).
fn add_from_threads<H>(
    slots: &[AtomicU64],
    make: impl Fn() -> H + Sync,
    add: impl Fn(&H, SlotArray<'_, AtomicU64>) -> Outcome<()> + Sync,
) -> (u64, u64) {
    let fallback = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let handle = make();
                for _ in 0..ADDS_PER_THREAD {
                    loop {
                        match add(&handle, SlotArray::from_slice(slots)) {
                            Outcome::Completed { cpu, .. } => {
                                assert!(cpu < slots.len());
                                break;
                            }
                            Outcome::Aborted => continue,
                            Outcome::NoCpu => {
                                fallback.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let on_cpus = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    (on_cpus, fallback.load(Ordering::Relaxed))
}

#[test]
#[cfg_attr(miri, ignore = "hardware-sized: millions of operations")]
fn add_is_exact_across_threads() {
    for rseq in backends() {
        let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
        let (on_cpus, fell_back) = add_from_threads(&slots, || (), |_, slots| rseq.add(slots, 1));
        assert_eq!(
            on_cpus + fell_back,
            THREADS as u64 * ADDS_PER_THREAD,
            "{rseq:?}"
        );
        if rseq_sys::cpu_id().is_some() {
            assert_eq!(fell_back, 0, "registered threads should not fall back");
        }
    }
}

#[test]
fn add_reports_no_cpu_for_an_empty_array() {
    let slots: [AtomicU64; 0] = [];
    assert_eq!(
        Rseq::CPU_ID.add(SlotArray::from_slice(&slots), 1),
        Outcome::NoCpu
    );
}

#[test]
fn compare_and_store_declines_with_the_value_seen() {
    let rseq = Rseq::CPU_ID;
    let slots: Vec<AtomicUsize> = (0..rseq.slot_count())
        .map(|_| AtomicUsize::new(7))
        .collect();
    loop {
        match rseq.compare_and_store(SlotArray::from_slice(&slots), 3, 9) {
            Outcome::Completed { value, .. } => {
                assert_eq!(value, Err(7));
                break;
            }
            Outcome::Aborted => continue,
            Outcome::NoCpu => return,
        }
    }
    assert!(slots.iter().all(|s| s.load(Ordering::Relaxed) == 7));
    loop {
        match rseq.compare_and_store(SlotArray::from_slice(&slots), 7, 9) {
            Outcome::Completed { cpu, value } => {
                assert_eq!(value, Ok(()));
                assert_eq!(slots[cpu].load(Ordering::Relaxed), 9);
                break;
            }
            Outcome::Aborted => continue,
            Outcome::NoCpu => unreachable!("had a CPU a moment ago"),
        }
    }
}

#[repr(C, align(8))]
struct Node {
    next: AtomicPtr<u8>,
    id: usize,
}

fn push(
    rseq: Rseq,
    heads: &[AtomicPtr<u8>],
    node: NonNull<u8>,
    fallback: &std::sync::Mutex<Vec<usize>>,
) {
    loop {
        // SAFETY: every node on these lists is a leaked `Node` with `next` at offset 0.
        match unsafe { rseq.push_linked(SlotArray::from_slice(heads), node, 0) } {
            Outcome::Completed { value: Ok(()), .. } => return,
            Outcome::Completed { value: Err(_), .. } => unreachable!("nobody locks these lists"),
            Outcome::Aborted => continue,
            Outcome::NoCpu => {
                fallback.lock().unwrap().push(node.as_ptr().addr());
                return;
            }
        }
    }
}

fn pop(rseq: Rseq, heads: &[AtomicPtr<u8>]) -> Option<Option<NonNull<u8>>> {
    loop {
        // SAFETY: as in `push`.
        match unsafe { rseq.pop_linked(SlotArray::from_slice(heads), 0) } {
            Outcome::Completed {
                value: Ok(node), ..
            } => return Some(Some(node)),
            Outcome::Completed {
                value: Err(head), ..
            } => {
                assert!(head.is_null());
                return Some(None);
            }
            Outcome::Aborted => continue,
            Outcome::NoCpu => return None,
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "hardware-sized: millions of operations")]
fn linked_push_pop_loses_and_duplicates_nothing() {
    let rseq = Rseq::CPU_ID;
    let heads: Vec<AtomicPtr<u8>> = (0..rseq.slot_count())
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let fallback = std::sync::Mutex::new(Vec::new());
    let per_thread = 2_000;
    let nodes: Vec<usize> = (0..THREADS * per_thread)
        .map(|id| {
            Box::into_raw(Box::new(Node {
                next: AtomicPtr::new(std::ptr::null_mut()),
                id,
            })) as usize
        })
        .collect();
    // Each thread pushes its nodes, then repeatedly pops one and pushes it back.
    std::thread::scope(|s| {
        for chunk in nodes.chunks(per_thread) {
            let (heads, fallback) = (&heads, &fallback);
            s.spawn(move || {
                for &node in chunk {
                    push(
                        rseq,
                        heads,
                        NonNull::new(node as *mut u8).unwrap(),
                        fallback,
                    );
                }
                for _ in 0..50_000 {
                    if let Some(Some(node)) = pop(rseq, heads) {
                        push(rseq, heads, node, fallback);
                    }
                }
            });
        }
    });
    let mut seen = HashSet::new();
    for head in &heads {
        let mut node = head.load(Ordering::Acquire);
        while !node.is_null() {
            // SAFETY: every node is a live leaked `Node`.
            let n = unsafe { &*node.cast::<Node>() };
            assert!(seen.insert(n.id), "node {} listed twice", n.id);
            node = n.next.load(Ordering::Relaxed);
        }
    }
    for &node in fallback.lock().unwrap().iter() {
        // SAFETY: as above.
        assert!(seen.insert(unsafe { &*(node as *const Node) }.id));
    }
    assert_eq!(seen.len(), nodes.len());
    for node in nodes {
        // SAFETY: each node was leaked from a Box above and is no longer listed anywhere used.
        drop(unsafe { Box::from_raw(node as *mut Node) });
    }
}

struct Stacks {
    headers: Vec<BoundedStack>,
    _storage: Vec<Box<[AtomicPtr<u8>]>>,
}

fn stacks(cpus: usize, capacity: usize) -> Stacks {
    let mut storage: Vec<Box<[AtomicPtr<u8>]>> = Vec::new();
    let headers = (0..cpus)
        .map(|_| {
            let words: Box<[AtomicPtr<u8>]> = (0..capacity)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect();
            let begin = words.as_ptr() as *mut u8;
            let end = begin.wrapping_add(capacity * 8);
            storage.push(words);
            BoundedStack {
                top: AtomicPtr::new(begin),
                end: AtomicPtr::new(end),
                begin: AtomicPtr::new(begin),
            }
        })
        .collect();
    Stacks {
        headers,
        _storage: storage,
    }
}

#[test]
fn bounded_words_fill_drain_and_hand_back() {
    let rseq = Rseq::CPU_ID;
    let capacity = 64;
    let s = stacks(rseq.slot_count(), capacity);
    let slots = SlotArray::from_slice(&s.headers);
    // Pin to one CPU so the whole sequence runs on one stack.
    let Some(_) = rseq_sys::cpu_id() else { return };
    let mut pushed = Vec::new();
    let mut handed_back = 0;
    for i in 1..=capacity * 2 {
        let item = std::ptr::without_provenance_mut::<u8>(i);
        // SAFETY: the storage lives in `s` for the whole test.
        match unsafe { rseq.push_word(slots, item) } {
            Outcome::Completed { value: Ok(()), cpu } => pushed.push((cpu, i)),
            Outcome::Completed {
                value: Err(back), ..
            } => {
                assert_eq!(back, item);
                handed_back += 1;
            }
            Outcome::Aborted | Outcome::NoCpu => {}
        }
    }
    let mut popped = Vec::new();
    loop {
        // SAFETY: as above.
        match unsafe { rseq.pop_word(slots) } {
            Outcome::Completed {
                value: Some(item),
                cpu,
            } => popped.push((cpu, item.addr())),
            Outcome::Completed { value: None, .. } => {
                // This CPU's stack is empty; others may hold items if we migrated.
                if popped.len() == pushed.len() {
                    break;
                }
                std::thread::yield_now();
                if popped.len() + handed_back > capacity * 4 {
                    break;
                }
            }
            Outcome::Aborted => {}
            Outcome::NoCpu => break,
        }
        if popped.len() == pushed.len() {
            break;
        }
    }
    let mut a: Vec<usize> = pushed.iter().map(|p| p.1).collect();
    let mut b: Vec<usize> = popped.iter().map(|p| p.1).collect();
    a.sort();
    b.sort();
    // Items still on other CPUs' stacks (after a migration) are drained directly.
    for (cpu, header) in s.headers.iter().enumerate() {
        let begin = header.begin.load(Ordering::Relaxed);
        let top = header.top.load(Ordering::Relaxed);
        let n = (top.addr() - begin.addr()) / 8;
        for k in 0..n {
            // SAFETY: `[begin, top)` holds pushed words; no section runs on them now.
            let w = unsafe { &*begin.cast::<AtomicPtr<u8>>().add(k) }.load(Ordering::Relaxed);
            let _ = cpu;
            b.push(w.addr());
        }
    }
    b.sort();
    assert_eq!(a, b);
    assert!(
        handed_back > 0 || pushed.len() < capacity * 2,
        "a full stack must hand items back"
    );
}

/// Pins the calling thread to the CPU it runs on; false when it cannot.
fn pin_here() -> bool {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let Ok(cpu) = usize::try_from(cpu) else {
        return false;
    };
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes bit `cpu` inside it
    // (checked above); sched_setaffinity reads the set we pass with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Runs `op` until it does not abort; `None` when there is no CPU (the fallback).
fn settle<T>(mut op: impl FnMut() -> Outcome<T>) -> Option<T> {
    loop {
        match op() {
            Outcome::Completed { value, .. } => return Some(value),
            Outcome::Aborted => continue,
            Outcome::NoCpu => return None,
        }
    }
}

/// A batch pushed in one section pops word by word, newest first; words pushed one at a time
/// pop as a batch, in storage order; empty batches and batches that do not fit decline. On
/// one pinned thread, so that every operation meets the same stack.
#[test]
#[cfg_attr(miri, ignore = "sets the CPU affinity")]
fn word_batches_mix_with_single_words() {
    std::thread::spawn(|| {
        if !pin_here() {
            return;
        }
        let rseq = Rseq::CPU_ID;
        let s = stacks(rseq.slot_count(), 8);
        let slots = SlotArray::from_slice(&s.headers);
        let word = std::ptr::without_provenance_mut::<u8>;
        let push_words = |w: &[*mut u8]| {
            // SAFETY: the stacks' storage lives in `s`, 8-byte words reached only through
            // these operations; the batches are separate buffers.
            settle(|| unsafe { rseq.push_words(slots, w) })
        };
        let pop_words = |w: &mut [*mut u8]| {
            // SAFETY: as above.
            settle(|| unsafe { rseq.pop_words(slots, w) })
        };
        let push_word = |w: *mut u8| {
            // SAFETY: as above.
            settle(|| unsafe { rseq.push_word(slots, w) })
        };
        let pop_word = || {
            // SAFETY: as above.
            settle(|| unsafe { rseq.pop_word(slots) })
        };

        let Some(pushed) = push_words(&[word(1), word(2), word(3)]) else {
            return;
        };
        assert!(pushed);
        assert_eq!(pop_word(), Some(Some(word(3))));
        assert_eq!(push_word(word(4)), Some(Ok(())));
        let mut out = [std::ptr::null_mut(); 3];
        assert_eq!(pop_words(&mut out), Some(true));
        assert_eq!(out, [word(1), word(2), word(4)]);
        assert_eq!(
            pop_words(&mut out[..1]),
            Some(false),
            "popped from an empty stack"
        );
        assert_eq!(push_words(&[]), Some(false), "an empty push must decline");
        assert_eq!(pop_words(&mut []), Some(false), "an empty pop must decline");
        let nine = [word(7); 9];
        assert_eq!(push_words(&nine), Some(false), "pushed past the storage");
        assert_eq!(push_words(&nine[..8]), Some(true));
        assert_eq!(push_word(word(8)), Some(Err(word(8))));
        assert_eq!(pop_word(), Some(Some(word(7))));
    })
    .join()
    .expect("the pinned thread panicked");
}

#[test]
fn copy_then_commit_round_trips_records() {
    let rseq = Rseq::CPU_ID;
    let s = stacks(rseq.slot_count(), 32);
    let slots = SlotArray::from_slice(&s.headers);
    let record = *b"0123456789abcdef-record";
    let pushed = loop {
        // SAFETY: the storage lives in `s`; records are 23 bytes, read back with 23 bytes.
        match unsafe { rseq.push_copy(slots, &record) } {
            Outcome::Completed { value, cpu } => break Some((value, cpu)),
            Outcome::Aborted => continue,
            Outcome::NoCpu => break None,
        }
    };
    let Some((true, cpu)) = pushed else { return };
    let mut out = [0u8; 23];
    loop {
        // SAFETY: as above.
        match unsafe { rseq.pop_copy(slots, &mut out) } {
            Outcome::Completed {
                value: true,
                cpu: popped_on,
            } => {
                assert_eq!(popped_on, cpu);
                assert_eq!(out, record);
                break;
            }
            // Migrated since the push: read the record straight from the other stack.
            Outcome::Completed { value: false, .. } | Outcome::NoCpu => {
                let begin = s.headers[cpu].begin.load(Ordering::Relaxed);
                // SAFETY: the record sits at `begin` of CPU `cpu`'s stack.
                let stored = unsafe { std::slice::from_raw_parts(begin, 23) };
                assert_eq!(stored, record);
                break;
            }
            Outcome::Aborted => continue,
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "hardware-sized: millions of operations")]
fn pinned_adds_are_exact_across_threads() {
    let rseq = Rseq::CPU_ID;
    let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
    let (on_cpus, fell_back) = add_from_threads(
        &slots,
        || {
            let pinned = rseq.pin();
            assert_eq!(pinned.is_some(), rseq_sys::cpu_id().is_some());
            pinned
        },
        |pinned, slots| match pinned {
            Some(pinned) => pinned.add(slots, 1),
            None => Outcome::NoCpu,
        },
    );
    assert_eq!(on_cpus + fell_back, THREADS as u64 * ADDS_PER_THREAD);
}

#[test]
fn a_pinned_handle_outliving_its_registration_never_writes() {
    std::thread::spawn(|| {
        if rseq_sys::owner() != rseq_sys::Owner::SelfRegistered {
            return;
        }
        let slots: Vec<AtomicU64> = (0..Rseq::CPU_ID.slot_count())
            .map(|_| AtomicU64::new(0))
            .collect();
        let guard = rseq_sys::Registration::acquire().expect("register");
        let pinned = Rseq::CPU_ID.pin().expect("registered thread");
        drop(guard);
        assert!(!rseq_sys::is_registered());
        assert_eq!(pinned.add(SlotArray::from_slice(&slots), 1), Outcome::NoCpu);
        assert!(slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    })
    .join()
    .unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "hardware-sized: millions of operations")]
fn one_shared_section_serves_every_thread_exactly() {
    for rseq in backends() {
        let shared = rseq.shared();
        // Only glibc's registration puts every thread's area at one offset.
        assert_eq!(
            shared.is_some(),
            rseq_sys::owner() == rseq_sys::Owner::Glibc,
            "{rseq:?}"
        );
        let Some(shared) = shared else { continue };
        let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
        // Found once on the main thread and used by threads that never looked it up.
        let (on_cpus, fell_back) = add_from_threads(&slots, || (), |_, slots| shared.add(slots, 1));
        assert_eq!(
            on_cpus + fell_back,
            THREADS as u64 * ADDS_PER_THREAD,
            "{rseq:?}"
        );
        // glibc registers every thread, so the adds ran per CPU.
        assert!(on_cpus > 0, "{rseq:?}");
    }
}

/// A shared section's `current_cpu` reads the field its operations index by: on a thread
/// pinned to one CPU it names the slot an add lands on, and agrees with the backend's own
/// lookup.
#[test]
#[cfg_attr(miri, ignore = "sets the CPU affinity")]
fn a_shared_sections_current_cpu_is_the_slot_its_operations_use() {
    std::thread::spawn(|| {
        if !pin_here() {
            return;
        }
        for rseq in backends() {
            let Some(shared) = rseq.shared() else {
                continue;
            };
            let slots: Vec<AtomicU64> = (0..rseq.slot_count()).map(|_| AtomicU64::new(0)).collect();
            let hint = shared.current_cpu();
            assert!(hint.is_some(), "{rseq:?}: glibc registers every thread");
            assert_eq!(hint, rseq.current_cpu(), "{rseq:?}");
            let landed = loop {
                match shared.add(SlotArray::from_slice(&slots), 1) {
                    Outcome::Completed { cpu, .. } => break cpu,
                    Outcome::Aborted => continue,
                    Outcome::NoCpu => panic!("{rseq:?}: no CPU on a glibc-registered thread"),
                }
            };
            assert_eq!(Some(landed), hint, "{rseq:?}");
            assert_eq!(slots[landed].load(Ordering::Relaxed), 1, "{rseq:?}");
        }
    })
    .join()
    .unwrap();
}

/// Runs `test` on a new thread pinned to the CPU it starts on, with that thread's pinned
/// handle, the headers of one stack of `capacity` words per CPU slot and the thread's CPU. Does nothing
/// where there is no rseq (the fallback mode: nothing runs on a CPU) or no pinning.
fn on_a_pinned_thread(
    capacity: usize,
    test: impl FnOnce(&PinnedRseq, &[BoundedStack], usize) + Send + 'static,
) {
    std::thread::spawn(move || {
        let Some(pinned) = Rseq::CPU_ID.pin() else {
            return;
        };
        if !pin_here() {
            return;
        }
        let s = stacks(Rseq::CPU_ID.slot_count(), capacity);
        let here = pinned.current_cpu().expect("a registered, pinned thread");
        test(&pinned, &s.headers, here);
    })
    .join()
    .unwrap();
}

/// Every word on `s`'s stacks, with the slot of the stack it is on. No section may run on
/// them meanwhile.
fn words_on(s: &Stacks) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (cpu, header) in s.headers.iter().enumerate() {
        let begin = header.begin.load(Ordering::Relaxed);
        let depth = (header.top.load(Ordering::Relaxed).addr() - begin.addr()) / 8;
        for k in 0..depth {
            // SAFETY: `[begin, top)` holds pushed words, and the caller runs no section
            // on them.
            let w = unsafe { &*begin.cast::<AtomicPtr<u8>>().add(k) }.load(Ordering::Relaxed);
            found.push((cpu, w.addr()));
        }
    }
    found
}

/// `push_word_on` pushes onto the named CPU's stack only while the thread runs on that CPU:
/// on a pinned thread it lands on its own CPU's stack, and naming any other slot, or one
/// past the array, stores nothing anywhere and reports `NoCpu`; a full stack hands the
/// item back.
#[test]
#[cfg_attr(miri, ignore = "sets the CPU affinity")]
fn push_word_on_pushes_only_on_the_named_cpu() {
    let capacity = 4;
    on_a_pinned_thread(capacity, move |pinned, headers, here| {
        let slots = SlotArray::from_slice(headers);
        let word = std::ptr::without_provenance_mut::<u8>;
        let push_on = |cpu: usize, item: *mut u8| {
            // SAFETY: the storage lives until `on_a_pinned_thread` returns.
            settle(|| unsafe { pinned.push_word_on(slots, cpu, item) })
        };
        for cpu in (0..slots.len() + 1).filter(|&cpu| cpu != here) {
            assert_eq!(
                push_on(cpu, word(100 + cpu)),
                None,
                "pushed for CPU {cpu} on {here}"
            );
        }
        for i in 1..=capacity {
            assert_eq!(push_on(here, word(i)), Some(Ok(())));
        }
        assert_eq!(push_on(here, word(99)), Some(Err(word(99))));
        for (cpu, header) in slots.iter().enumerate() {
            let depth = (header.top.load(Ordering::Relaxed).addr()
                - header.begin.load(Ordering::Relaxed).addr())
                / 8;
            assert_eq!(depth, if cpu == here { capacity } else { 0 }, "CPU {cpu}");
        }
        // SAFETY: as above.
        let pop = || settle(|| unsafe { pinned.pop_word(slots) });
        for i in (1..=capacity).rev() {
            assert_eq!(pop(), Some(Some(word(i))));
        }
    });
}

/// `push_word_on_stack` pushes onto the stack it is given only while the thread runs on the
/// named CPU, and elsewhere never reads it (a null stack is fine there); a full stack hands
/// the item back.
#[test]
#[cfg_attr(miri, ignore = "sets the CPU affinity")]
fn push_word_on_stack_pushes_only_while_on_the_named_cpu() {
    let capacity = 4;
    on_a_pinned_thread(capacity, move |pinned, headers, here| {
        let word = std::ptr::without_provenance_mut::<u8>;
        let mine: *const BoundedStack = &headers[here];
        let push = |stack: *const BoundedStack, cpu: usize, item: *mut u8| {
            // SAFETY: `mine` is this CPU's stack, alive until `on_a_pinned_thread` returns;
            // for any other CPU the stack is not read.
            settle(|| unsafe { pinned.push_word_on_stack(stack, cpu, item) })
        };
        for cpu in (0..headers.len() + 1)
            .chain([usize::MAX])
            .filter(|&cpu| cpu != here)
        {
            assert_eq!(push(std::ptr::null(), cpu, word(7)), None, "CPU {cpu}");
            assert_eq!(
                push(mine, cpu, word(7)),
                None,
                "CPU {cpu} onto {here}'s stack"
            );
        }
        for i in 1..=capacity {
            assert_eq!(push(mine, here, word(i)), Some(Ok(())));
        }
        assert_eq!(push(mine, here, word(99)), Some(Err(word(99))));
        for (cpu, header) in headers.iter().enumerate() {
            let depth = (header.top.load(Ordering::Relaxed).addr()
                - header.begin.load(Ordering::Relaxed).addr())
                / 8;
            assert_eq!(depth, if cpu == here { capacity } else { 0 }, "CPU {cpu}");
        }
        let slots = SlotArray::from_slice(headers);
        // SAFETY: as above.
        let pop = || settle(|| unsafe { pinned.pop_word(slots) });
        for i in (1..=capacity).rev() {
            assert_eq!(pop(), Some(Some(word(i))));
        }
    });
}

/// Many more threads than CPUs push distinct words with `push_word_on` their current CPU
/// (a hint, which goes stale whenever a thread migrates: then the push reports `NoCpu` and
/// the thread asks again), preempted and migrated by the scheduler as they go. Every word
/// ends on exactly one stack, and on the stack of the CPU the push reported.
#[test]
#[cfg_attr(miri, ignore = "hardware-sized: many threads and operations")]
fn push_word_on_loses_and_duplicates_nothing_across_threads() {
    const PUSHES: usize = 20_000;
    let threads = THREADS;
    let slot_count = Rseq::CPU_ID.slot_count();
    let s = stacks(slot_count, threads * PUSHES);
    let slots = SlotArray::from_slice(&s.headers);
    let reported: Vec<Vec<(usize, usize)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let Some(pinned) = Rseq::CPU_ID.pin() else {
                        return Vec::new();
                    };
                    let mut landed = Vec::with_capacity(PUSHES);
                    for i in 0..PUSHES {
                        let item = std::ptr::without_provenance_mut::<u8>(1 + t * PUSHES + i);
                        // A thread with no CPU (none here: glibc or we registered it)
                        // would push nothing, and the count check below would fail.
                        while let Some(cpu) = pinned.current_cpu() {
                            // SAFETY: the storage lives in `s` until the scope ends.
                            match unsafe { pinned.push_word_on(slots, cpu, item) } {
                                Outcome::Completed {
                                    value: Ok(()),
                                    cpu: on,
                                } => {
                                    assert_eq!(on, cpu);
                                    landed.push((on, item.addr()));
                                    break;
                                }
                                Outcome::Completed { value: Err(_), .. } => {
                                    panic!("a stack sized for every push filled up")
                                }
                                Outcome::Aborted | Outcome::NoCpu => continue,
                            }
                        }
                    }
                    landed
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut expected: Vec<(usize, usize)> = reported.into_iter().flatten().collect();
    let mut found = words_on(&s);
    expected.sort_unstable();
    found.sort_unstable();
    assert_eq!(found, expected);
    if Rseq::CPU_ID.pin().is_some() {
        assert_eq!(
            found.len(),
            threads * PUSHES,
            "a registered thread pushed nothing"
        );
    }
}

/// `try_push_word` and `try_pop_word` push and pop what `push_word` and `pop_word` would,
/// newest first, and answer `false` / `None` for a full or empty stack and for a thread
/// whose CPU is past the array, touching nothing then. On a pinned thread, so that every
/// operation meets the same stack.
#[test]
#[cfg_attr(miri, ignore = "sets the CPU affinity")]
fn try_push_and_try_pop_move_words_or_touch_nothing() {
    let capacity = 4;
    on_a_pinned_thread(capacity, move |pinned, headers, here| {
        let slots = SlotArray::from_slice(headers);
        let short = SlotArray::from_slice(&headers[..here]);
        let word = std::ptr::without_provenance_mut::<u8>;
        // An abort also answers `false` / `None`: retry a few times before taking that as
        // final.
        let try_pop = |slots| {
            (0..100)
                // SAFETY: the storage lives until `on_a_pinned_thread` returns.
                .find_map(|_| unsafe { pinned.try_pop_word(slots) })
                .map(|w| w.as_ptr())
        };
        // SAFETY: as above.
        let try_push = |slots, w| (0..100).any(|_| unsafe { pinned.try_push_word(slots, w) });
        let depths = || {
            headers
                .iter()
                .map(|h| {
                    (h.top.load(Ordering::Relaxed).addr() - h.begin.load(Ordering::Relaxed).addr())
                        / 8
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(try_pop(slots), None, "popped from an empty stack");
        assert!(!try_push(short, word(99)), "pushed past the array");
        assert!(depths().iter().all(|&d| d == 0));
        for i in 1..=capacity {
            assert!(try_push(slots, word(i)), "push {i} of {capacity}");
        }
        assert!(!try_push(slots, word(99)), "pushed onto a full stack");
        let expected: Vec<usize> = (0..headers.len())
            .map(|cpu| if cpu == here { capacity } else { 0 })
            .collect();
        assert_eq!(depths(), expected);
        assert_eq!(try_pop(short), None, "popped past the array");
        for i in (1..=capacity).rev() {
            assert_eq!(try_pop(slots), Some(word(i)));
        }
        assert_eq!(try_pop(slots), None, "popped more than was pushed");
    });
}

/// Many more threads than CPUs push distinct words with `try_push_word` and take them back
/// with `try_pop_word`, preempted and migrated as they go: every word pushed is popped once
/// or still on a stack at the end, none twice, and none that `try_push_word` declined.
#[test]
#[cfg_attr(miri, ignore = "hardware-sized: many threads and operations")]
fn try_push_and_try_pop_lose_and_duplicate_nothing_across_threads() {
    const ROUNDS: usize = 20_000;
    let threads = THREADS;
    let slot_count = Rseq::CPU_ID.slot_count();
    let s = stacks(slot_count, threads * ROUNDS);
    let slots = SlotArray::from_slice(&s.headers);
    let (pushed, popped): (Vec<Vec<usize>>, Vec<Vec<usize>>) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let Some(pinned) = Rseq::CPU_ID.pin() else {
                        return (Vec::new(), Vec::new());
                    };
                    let (mut pushed, mut popped) = (Vec::new(), Vec::new());
                    for i in 0..ROUNDS {
                        let item = std::ptr::without_provenance_mut::<u8>(1 + t * ROUNDS + i);
                        // Aborted or migrated past nothing: a registered thread gets its
                        // push in within a few tries (the stacks never fill).
                        // SAFETY: the storage lives in `s` until the scope ends.
                        if (0..1000).any(|_| unsafe { pinned.try_push_word(slots, item) }) {
                            pushed.push(item.addr());
                        }
                        // Every other round, take one back (whichever this CPU has on top).
                        if i % 2 == 1 {
                            // SAFETY: as above.
                            if let Some(w) = unsafe { pinned.try_pop_word(slots) } {
                                popped.push(w.as_ptr().addr());
                            }
                        }
                    }
                    (pushed, popped)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).unzip()
    });
    let mut pushed: Vec<usize> = pushed.into_iter().flatten().collect();
    let mut accounted: Vec<usize> = popped.into_iter().flatten().collect();
    accounted.extend(words_on(&s).into_iter().map(|(_, word)| word));
    pushed.sort_unstable();
    accounted.sort_unstable();
    assert_eq!(accounted, pushed);
    if Rseq::CPU_ID.pin().is_some() {
        assert_eq!(
            pushed.len(),
            threads * ROUNDS,
            "a registered thread pushed nothing"
        );
    }
}
