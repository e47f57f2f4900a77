//! Fuzz the per-CPU freelist, bounded buffer and pool on a simulated 3-CPU machine: any
//! sequence of pushes, pops, drains, CPU changes (including "no CPU" and an index past the
//! array) and injected aborts must hand every element out exactly once, keep each CPU LIFO,
//! hand items back only when the target stack is full, and keep the pool within its bound.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percpu_queue::{FreeList, Node, PerCpuBuffer, Pool};
use rseq_sys::simulation::{abort_next, abort_one_in, set_cpu};
use rseq_sys::Simulated;
use std::collections::BTreeSet;

const CPUS: usize = 3;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Run later operations on this CPU: 0..3 are CPUs, 3 is past the array, 4+ is none.
    Cpu(u8),
    /// Abort the next few critical sections.
    Abort(u8),
    ListPush,
    ListPop,
    ListDrain,
    BufferPush,
    BufferPop,
    BufferDrain,
    PoolGet,
    PoolPut,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    max_idle: u8,
    random_aborts: u8,
    ops: Vec<Op>,
}

fn cpu_of(byte: u8) -> Option<usize> {
    match byte {
        0..=3 => Some(byte as usize),
        _ => None,
    }
}

fuzz_target!(|input: Input| {
    let capacity = usize::from(input.capacity % 8);
    let max_idle = usize::from(input.max_idle % 8);
    let machine = Simulated::new(CPUS);
    let mut list: FreeList<u64, Simulated> = FreeList::with_backend(machine.clone());
    let mut buffer: PerCpuBuffer<u64, Simulated> =
        PerCpuBuffer::with_backend(machine.clone(), capacity);
    let pool = Pool::with_backend(machine, max_idle, || 0u64);
    set_cpu(Some(0));
    // One in n sections aborts at random (n >= 2: n == 1 would abort every retry forever).
    let one_in = u32::from(input.random_aborts % 8);
    abort_one_in(if one_in < 2 { 0 } else { one_in }, 0x5eed);

    let mut next_id = 0u64;
    // What each structure holds, as sets (the exact order is the property tests' job).
    let mut in_list = BTreeSet::new();
    let mut in_buffer = BTreeSet::new();
    let mut guards = Vec::new();

    for op in input.ops.iter().take(512) {
        match *op {
            Op::Cpu(byte) => set_cpu(cpu_of(byte)),
            Op::Abort(count) => abort_next(u32::from(count % 4)),
            Op::ListPush => {
                list.push(Box::new(Node::new(next_id)));
                in_list.insert(next_id);
                next_id += 1;
            }
            Op::ListPop => match list.pop() {
                Some(node) => assert!(in_list.remove(&node.into_inner()), "popped twice"),
                // Single-threaded with working fences: nothing is ever out of reach.
                None => assert!(in_list.is_empty(), "pop missed an element"),
            },
            Op::ListDrain => {
                let drained: Vec<u64> = list.drain().into_iter().map(|n| n.into_inner()).collect();
                assert_eq!(drained.len(), in_list.len());
                for id in drained {
                    assert!(in_list.remove(&id), "drained twice");
                }
            }
            Op::BufferPush => match buffer.push(Box::new(next_id)) {
                Ok(()) => {
                    in_buffer.insert(next_id);
                    next_id += 1;
                }
                Err(back) => {
                    assert_eq!(*back, next_id, "handed back a different item");
                    assert!(
                        capacity == 0 || !in_buffer.is_empty(),
                        "handed back while empty"
                    );
                }
            },
            Op::BufferPop => match buffer.pop() {
                Some(item) => assert!(in_buffer.remove(&*item), "popped twice"),
                None => assert!(in_buffer.is_empty(), "pop missed an item"),
            },
            Op::BufferDrain => {
                let drained: Vec<u64> = buffer.drain().into_iter().map(|b| *b).collect();
                assert_eq!(drained.len(), in_buffer.len());
                for id in drained {
                    assert!(in_buffer.remove(&id), "drained twice");
                }
            }
            Op::PoolGet => {
                let mut guard = pool.get();
                *guard += 1;
                guards.push(guard);
                assert!(pool.kept() <= max_idle);
            }
            Op::PoolPut => {
                guards.pop();
            }
        }
    }
    abort_one_in(0, 0);
    abort_next(0);
    drop(guards);
    assert!(pool.kept() <= max_idle);
    let rest: BTreeSet<u64> = list.drain().into_iter().map(|n| n.into_inner()).collect();
    assert_eq!(rest, in_list);
    let rest: BTreeSet<u64> = buffer.drain().into_iter().map(|b| *b).collect();
    assert_eq!(rest, in_buffer);
});
