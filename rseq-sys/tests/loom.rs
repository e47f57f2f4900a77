//! loom models of the protocols in rseq-sys that cross CPUs: the simulated per-CPU exclusion
//! every higher crate's algorithm relies on, the lock-bit steal protocol for linked lists,
//! and the stop protocol for bounded stacks. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rseq-sys --test loom --release`.

#![cfg(loom)]

use loom::model::Builder;
use loom::thread;
use rseq_sys::simulation::{abort_next, set_cpu};
use rseq_sys::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use rseq_sys::sync::{Arc, Mutex};
use rseq_sys::{Backend, BoundedStack, Outcome, Rseq, Simulated, SlotArray, LINK_LOCKED};
use std::ptr::NonNull;

/// `loom::model` with the environment's bounds, and a preemption bound of 3 if none is set.
fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(test);
}

/// Retries an operation until it does not abort.
fn until_done<T>(mut op: impl FnMut() -> Outcome<T>) -> Outcome<T> {
    loop {
        match op() {
            Outcome::Aborted => thread::yield_now(),
            outcome => return outcome,
        }
    }
}

#[test]
fn the_hardware_backend_reports_no_cpu_under_loom() {
    model(|| {
        let slots = [AtomicU64::new(0)];
        assert_eq!(
            Rseq::CPU_ID.add(SlotArray::from_slice(&slots), 1),
            Outcome::NoCpu
        );
        assert_eq!(slots[0].load(Ordering::Relaxed), 0);
    });
}

/// Two threads time-sharing CPU 0 (one of them aborted once) and one on CPU 1: the
/// load-add-store inside each section never loses an update.
#[test]
fn sections_on_one_cpu_exclude_each_other() {
    model(|| {
        let machine = Simulated::new(2);
        let slots = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let workers: Vec<_> = [(0, true), (0, false), (1, false)]
            .into_iter()
            .map(|(cpu, abort_once)| {
                let (machine, slots) = (machine.clone(), Arc::clone(&slots));
                thread::spawn(move || {
                    set_cpu(Some(cpu));
                    if abort_once {
                        abort_next(1);
                    }
                    let outcome = until_done(|| machine.add(SlotArray::from_slice(&slots[..]), 1));
                    assert_eq!(outcome, Outcome::Completed { cpu, value: () });
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(slots[0].load(Ordering::Relaxed), 2);
        assert_eq!(slots[1].load(Ordering::Relaxed), 1);
    });
}

#[repr(C, align(8))]
struct Node {
    next: AtomicPtr<u8>,
}

const NODES: usize = 2;

struct Lists {
    machine: Simulated,
    heads: [AtomicPtr<u8>; 1],
    nodes: [Node; NODES],
    /// Where a worker puts a node when the list is locked.
    fallback: Mutex<Vec<usize>>,
}

impl Lists {
    fn node(&self, index: usize) -> NonNull<u8> {
        NonNull::from(&self.nodes[index]).cast()
    }

    fn index(&self, node: *mut u8) -> usize {
        (node.addr() - self.nodes.as_ptr().addr()) / size_of::<Node>()
    }

    fn push(&self, index: usize) {
        // SAFETY: every node has `next` at offset 0, lives as long as `self`, and `index` is
        // on no list (each node is pushed once, by its one owner).
        let outcome = until_done(|| unsafe {
            self.machine
                .push_linked(SlotArray::from_slice(&self.heads), self.node(index), 0)
        });
        match outcome {
            Outcome::Completed { value: Ok(()), .. } => {}
            Outcome::Completed {
                value: Err(head), ..
            } => {
                assert_ne!(head.addr() & LINK_LOCKED, 0, "declined an unlocked list");
                self.fallback.lock().unwrap().push(index);
            }
            outcome => panic!("CPU 0 exists: {outcome:?}"),
        }
    }

    fn pop(&self) -> Option<usize> {
        // SAFETY: as in `push`.
        let outcome = until_done(|| unsafe {
            self.machine
                .pop_linked(SlotArray::from_slice(&self.heads), 0)
        });
        match outcome {
            Outcome::Completed {
                value: Ok(node), ..
            } => Some(self.index(node.as_ptr())),
            Outcome::Completed { value: Err(_), .. } => None,
            outcome => panic!("CPU 0 exists: {outcome:?}"),
        }
    }

    /// The remote steal: lock the head, fence its CPU, re-check, take the chain, release.
    fn steal(&self) -> Vec<usize> {
        let head_slot = &self.heads[0];
        let head = head_slot.load(Ordering::Acquire);
        if head.is_null() || head.addr() & LINK_LOCKED != 0 {
            return Vec::new();
        }
        let locked = head.map_addr(|a| a | LINK_LOCKED);
        if head_slot
            .compare_exchange(head, locked, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Vec::new();
        }
        self.machine.fence_cpu(0).expect("simulated fences succeed");
        if head_slot.load(Ordering::Acquire) != locked {
            // A section that began before the lock committed over it: the list is the CPU's
            // again, and nothing was taken.
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut at = head;
        while !at.is_null() {
            let index = self.index(at);
            taken.push(index);
            at = self.nodes[index].next.load(Ordering::Acquire);
        }
        head_slot.store(std::ptr::null_mut(), Ordering::Release);
        taken
    }
}

/// A worker on CPU 0 pushes both nodes and pops one while a thief steals the list: every
/// node ends up in exactly one place (the list, the fallback, the thief's or the worker's
/// hands), whatever the interleaving.
#[test]
fn stealing_a_list_takes_each_node_exactly_once() {
    model(|| {
        let lists = Arc::new(Lists {
            machine: Simulated::new(1),
            heads: [AtomicPtr::new(std::ptr::null_mut())],
            nodes: [(); NODES].map(|_| Node {
                next: AtomicPtr::new(std::ptr::null_mut()),
            }),
            fallback: Mutex::new(Vec::new()),
        });
        let worker = {
            let lists = Arc::clone(&lists);
            thread::spawn(move || {
                set_cpu(Some(0));
                (0..NODES).for_each(|index| lists.push(index));
                lists.pop()
            })
        };
        let thief = {
            let lists = Arc::clone(&lists);
            thread::spawn(move || lists.steal())
        };
        let held = worker.join().unwrap();
        let stolen = thief.join().unwrap();

        let head = lists.heads[0].load(Ordering::Acquire);
        assert_eq!(
            head.addr() & LINK_LOCKED,
            0,
            "the thief left the list locked"
        );
        let fallback = lists.fallback.lock().unwrap().clone();
        let mut everywhere: Vec<usize> = stolen.clone();
        everywhere.extend(held);
        everywhere.extend(fallback.iter().copied());
        let mut at = head;
        while !at.is_null() {
            let index = lists.index(at);
            everywhere.push(index);
            at = lists.nodes[index].next.load(Ordering::Acquire);
            assert!(everywhere.len() <= NODES, "the list has a cycle");
        }
        everywhere.sort_unstable();
        assert_eq!(
            everywhere,
            (0..NODES).collect::<Vec<_>>(),
            "stolen {stolen:?}, held {held:?}, fallback {fallback:?}"
        );
    });
}

/// A worker on CPU 0 pushes two words onto a two-word stack while a remote owner stops it
/// (begin = end = top, fence, re-check top), reads it, and restarts it: while stopped no
/// section commits, and no word is lost or duplicated.
#[test]
fn stopping_a_bounded_stack_freezes_it() {
    model(|| {
        const CAPACITY: usize = 2;
        let machine = Simulated::new(1);
        let storage: Arc<[AtomicPtr<u8>; CAPACITY]> =
            Arc::new([(); CAPACITY].map(|_| AtomicPtr::new(std::ptr::null_mut())));
        let base = storage.as_ptr().cast_mut().cast::<u8>();
        let end = base.wrapping_add(CAPACITY * size_of::<AtomicPtr<u8>>());
        let stacks = Arc::new([BoundedStack {
            top: AtomicPtr::new(base),
            end: AtomicPtr::new(end),
            begin: AtomicPtr::new(base),
        }]);
        let words = |top: *mut u8| -> Vec<usize> {
            let count = (top.addr() - base.addr()) / size_of::<AtomicPtr<u8>>();
            storage[..count]
                .iter()
                .map(|w| w.load(Ordering::Acquire).addr())
                .collect()
        };

        let worker = {
            let (machine, stacks, _storage) =
                (machine.clone(), Arc::clone(&stacks), Arc::clone(&storage));
            thread::spawn(move || {
                set_cpu(Some(0));
                let mut handed_back = Vec::new();
                for item in 1..=CAPACITY {
                    let word = std::ptr::without_provenance_mut::<u8>(item);
                    // SAFETY: the stack delimits `storage` (AtomicPtr words, kept alive by the
                    // clone held here), reached only through these operations, atomic loads
                    // and the remote owner after it stopped the stack.
                    let outcome = until_done(|| unsafe {
                        machine.push_word(SlotArray::from_slice(&stacks[..]), word)
                    });
                    match outcome {
                        Outcome::Completed { value: Ok(()), .. } => {}
                        Outcome::Completed {
                            value: Err(back), ..
                        } => {
                            assert_eq!(back, word);
                            handed_back.push(item);
                        }
                        outcome => panic!("CPU 0 exists: {outcome:?}"),
                    }
                }
                handed_back
            })
        };

        let stack = &stacks[0];
        let top = loop {
            let top = stack.top.load(Ordering::Acquire);
            stack.begin.store(top, Ordering::Relaxed);
            stack.end.store(top, Ordering::Relaxed);
            machine.fence_cpu(0).expect("simulated fences succeed");
            if stack.top.load(Ordering::Acquire) == top {
                break top;
            }
        };
        let frozen = words(top);
        thread::yield_now();
        assert_eq!(
            stack.top.load(Ordering::Acquire),
            top,
            "a section committed while stopped"
        );
        assert_eq!(words(top), frozen);
        stack.begin.store(base, Ordering::Relaxed);
        stack.end.store(end, Ordering::Release);

        let handed_back = worker.join().unwrap();
        let final_words = words(stack.top.load(Ordering::Acquire));
        assert!(final_words.starts_with(&frozen));
        let mut all: Vec<usize> = final_words.into_iter().chain(handed_back).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=CAPACITY).collect::<Vec<_>>());
    });
}
