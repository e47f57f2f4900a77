//! loom models of the fallback and steal protocols of the per-CPU freelist and of the
//! bounded buffer's stop-and-restart steal, on the `Simulated` backend (injected CPU ids; a
//! per-CPU busy flag stands for "one section at a time per CPU", and fences wait sections
//! out). Every interleaving must hand each node or item out exactly once.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p percpu-queue --release --test loom`
//!
//! rseq-sys's simulator commits with an RMW (`swap`): loom does not order a plain store after
//! a concurrent compare-and-swap the storing thread never saw the way real CPUs do, and would
//! report double pops that cannot happen.
//!
//! The buffer runs under loom because loom's `AtomicPtr` is one word (an index into the
//! model), as rseq-sys's word-stepping stack operations need. Each buffer model fails at the
//! bound above on the earlier restart (lower `top`, then widen the bounds at once, with no
//! second fence): a section on the victim loads the old top before the restart and the
//! widened bound after it.
// The gate comes after the docs: a crate whose first attribute is a false `cfg` loses its
// docs too, and `missing_docs` (denied in CI's clippy run) then fires on the empty crate.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use percpu_queue::{FreeList, Node, PerCpuBuffer};
use rseq_sys::simulation::set_cpu;
use rseq_sys::Simulated;

type List = FreeList<u32, Simulated>;

fn list(cpus: usize) -> Arc<List> {
    Arc::new(FreeList::with_backend(Simulated::new(cpus)))
}

fn push(list: &List, value: u32) {
    list.push(Box::new(Node::new(value)));
}

fn pop(list: &List) -> Option<u32> {
    list.pop().map(|node| node.into_inner())
}

/// Every id in `expected` exactly once across `got` and what is left in the list.
fn check(list: Arc<List>, mut got: Vec<u32>, expected: &[u32]) {
    let mut list = Arc::try_unwrap(list).expect("every thread joined");
    got.extend(list.drain().into_iter().map(|node| node.into_inner()));
    got.sort_unstable();
    assert_eq!(got, expected);
}

/// Threads without a CPU share the mutex-protected fallback with a thread on a CPU.
#[test]
fn fallback_hands_each_node_out_once() {
    fallback_hands_out_once_with(1);
}

/// As above with two CPUs, and so two fallback stripes (loom threads are dealt stripes by
/// a hash of their number; the unit tests in `fallback.rs` check that a pop reaches every
/// stripe).
#[test]
fn fallback_stripes_hand_each_node_out_once() {
    fallback_hands_out_once_with(2);
}

fn fallback_hands_out_once_with(cpus: usize) {
    loom::model(move || {
        let list = list(cpus);
        let handles: Vec<_> = [None, None, Some(0)]
            .into_iter()
            .enumerate()
            .map(|(id, cpu)| {
                let list = list.clone();
                thread::spawn(move || {
                    set_cpu(cpu);
                    push(&list, id as u32);
                    pop(&list)
                })
            })
            .collect();
        let got: Vec<u32> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        // Each thread pushed before popping, so each pop found something somewhere.
        assert_eq!(got.len(), 3);
        check(list, got, &[0, 1, 2]);
    });
}

/// A thief on CPU 1 races the owner popping on CPU 0.
#[test]
fn steal_races_owner_pop() {
    loom::model(|| {
        let list = list(2);
        set_cpu(Some(0));
        push(&list, 0);
        push(&list, 1);
        let owner = {
            let list = list.clone();
            thread::spawn(move || {
                set_cpu(Some(0));
                pop(&list)
            })
        };
        let thief = {
            let list = list.clone();
            thread::spawn(move || {
                set_cpu(Some(1));
                pop(&list)
            })
        };
        let got: Vec<u32> = [owner.join().unwrap(), thief.join().unwrap()]
            .into_iter()
            .flatten()
            .collect();
        check(list, got, &[0, 1]);
    });
}

/// A thief races the owner pushing: a push on a stopped list goes to the fallback, and
/// nothing is lost or doubled.
#[test]
fn steal_races_owner_push() {
    loom::model(|| {
        let list = list(2);
        set_cpu(Some(0));
        push(&list, 0);
        let owner = {
            let list = list.clone();
            thread::spawn(move || {
                set_cpu(Some(0));
                push(&list, 1);
            })
        };
        let thief = {
            let list = list.clone();
            thread::spawn(move || {
                set_cpu(Some(1));
                pop(&list)
            })
        };
        owner.join().unwrap();
        let got: Vec<u32> = thief.join().unwrap().into_iter().collect();
        assert_eq!(got.len(), 1, "node 0 was pushed before the thief started");
        check(list, got, &[0, 1]);
    });
}

/// Two thieves (one on a CPU, one without) go after the same victim: one thief per victim,
/// and neither takes a node the other took.
#[test]
fn two_thieves_share_nothing() {
    loom::model(|| {
        let list = list(2);
        set_cpu(Some(0));
        push(&list, 0);
        push(&list, 1);
        let thieves: Vec<_> = [Some(1), None]
            .into_iter()
            .map(|cpu| {
                let list = list.clone();
                thread::spawn(move || {
                    set_cpu(cpu);
                    pop(&list)
                })
            })
            .collect();
        let got: Vec<u32> = thieves
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        check(list, got, &[0, 1]);
    });
}

/// A thief moving a batch onto its own CPU races another thread popping on that CPU: the
/// moved nodes are ordinary per-CPU pushes, so each node still comes out once.
#[test]
fn batch_moved_by_a_thief_races_its_cpu() {
    loom::model(|| {
        let list = list(2);
        set_cpu(Some(0));
        push(&list, 0);
        push(&list, 1);
        push(&list, 2);
        let workers: Vec<_> = [Some(1), Some(1)]
            .into_iter()
            .map(|cpu| {
                let list = list.clone();
                thread::spawn(move || {
                    set_cpu(cpu);
                    pop(&list)
                })
            })
            .collect();
        let got: Vec<u32> = workers
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        check(list, got, &[0, 1, 2]);
    });
}

type Buffer = PerCpuBuffer<u32, Simulated>;

fn buffer(cpus: usize, capacity: usize) -> Arc<Buffer> {
    Arc::new(PerCpuBuffer::with_backend(Simulated::new(cpus), capacity))
}

/// Every id in `expected` exactly once across `got` and what is left in the buffer, compared
/// by address before anything is freed, so that an item handed out twice fails the assertion
/// rather than freeing twice.
fn check_buffer(buffer: Arc<Buffer>, got: impl IntoIterator<Item = Box<u32>>, expected: &[u32]) {
    let mut buffer = Arc::try_unwrap(buffer).expect("every thread joined");
    let mut items: Vec<*mut u32> = got
        .into_iter()
        .chain(buffer.drain())
        .map(Box::into_raw)
        .collect();
    items.sort_unstable();
    let count = items.len();
    items.dedup();
    assert_eq!(items.len(), count, "an item was handed out twice");
    let mut values: Vec<u32> = items
        .into_iter()
        // SAFETY: each pointer came from a distinct `Box` (just checked) and is rebuilt once.
        .map(|item| *unsafe { Box::from_raw(item) })
        .collect();
    values.sort_unstable();
    assert_eq!(values, expected);
}

/// A thief on CPU 1 takes CPU 0's items while a thread on CPU 0 pops: the pop must not act
/// on the top the thief saw once the thief restarts the stack.
#[test]
fn buffer_steal_races_owner_pop() {
    loom::model(|| {
        let buffer = buffer(2, 2);
        set_cpu(Some(0));
        buffer.push(Box::new(0)).unwrap();
        buffer.push(Box::new(1)).unwrap();
        let threads: Vec<_> = [Some(0), Some(1)]
            .into_iter()
            .map(|cpu| {
                let buffer = buffer.clone();
                thread::spawn(move || {
                    set_cpu(cpu);
                    buffer.pop()
                })
            })
            .collect();
        // A pop may come back empty: the owner's stack is stopped while the thief works on
        // it, and the items in transit are not visible to other pops.
        let got: Vec<Box<u32>> = threads
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        check_buffer(buffer, got, &[0, 1]);
    });
}

/// A thief on CPU 1 takes CPU 0's items while a thread on CPU 0 pushes: the push must not
/// commit above the slots the thief emptied.
#[test]
fn buffer_steal_races_owner_push() {
    loom::model(|| {
        let buffer = buffer(2, 2);
        set_cpu(Some(0));
        buffer.push(Box::new(0)).unwrap();
        let owner = {
            let buffer = buffer.clone();
            thread::spawn(move || {
                set_cpu(Some(0));
                buffer.push(Box::new(1)).err()
            })
        };
        let thief = {
            let buffer = buffer.clone();
            thread::spawn(move || {
                set_cpu(Some(1));
                buffer.pop()
            })
        };
        let got: Vec<Box<u32>> = [owner.join().unwrap(), thief.join().unwrap()]
            .into_iter()
            .flatten()
            .collect();
        check_buffer(buffer, got, &[0, 1]);
    });
}

/// A thread on CPU 0 pushes and then pops while a thief on CPU 1 takes CPU 0's items: the
/// push may land in a slot the thief has just emptied (before the bounds are widened), and
/// the pop that follows must then find that item and only that one.
#[test]
fn buffer_owner_refills_during_a_steal() {
    loom::model(|| {
        let buffer = buffer(2, 2);
        set_cpu(Some(0));
        buffer.push(Box::new(0)).unwrap();
        buffer.push(Box::new(1)).unwrap();
        let owner = {
            let buffer = buffer.clone();
            thread::spawn(move || {
                set_cpu(Some(0));
                let back = buffer.push(Box::new(2)).err();
                back.into_iter().chain(buffer.pop()).collect::<Vec<_>>()
            })
        };
        let thief = {
            let buffer = buffer.clone();
            thread::spawn(move || {
                set_cpu(Some(1));
                buffer.pop()
            })
        };
        let mut got = owner.join().unwrap();
        got.extend(thief.join().unwrap());
        check_buffer(buffer, got, &[0, 1, 2]);
    });
}
