//! A thief interrupted while it moves a node onto its own CPU, on the `Simulated` backend:
//! a deterministic case of what the stress tests reach only by chance.
//!
//! A per-CPU push writes the node's next field before its commit (the try-store), so an
//! aborted push leaves that field pointing at the thief CPU's list. When the retry then
//! declines, the thief hands the node back to the victim's list, and the node must carry the
//! link it had there. Found by ThreadSanitizer in `stress.rs` (a node freed by its popper
//! while the thief's chain still reached it): the node went back with the stale link, so the
//! rest of the victim's chain was lost (this test), or, when the thief's CPU had nodes, they
//! became reachable from two lists.

use percpu_queue::{FreeList, Node};
use rseq_sys::simulation::{abort_next, on_next_abort, set_cpu};
use rseq_sys::Simulated;
use std::cell::Cell;
use std::rc::Rc;

const CPUS: usize = 3;
const VICTIM: usize = 0;
const THIEF: usize = 1;

fn push(list: &FreeList<u32, Simulated>, cpu: usize, value: u32) {
    set_cpu(Some(cpu));
    list.push(Box::new(Node::new(value)));
}

fn pop(list: &FreeList<u32, Simulated>, cpu: usize) -> Option<u32> {
    set_cpu(Some(cpu));
    list.pop().map(|node| node.into_inner())
}

/// The thief's sections, in order: its pop on its own (empty) CPU, which consumes one
/// injected abort without aborting (an empty pop declines before its commit), then the push
/// of the first node it moves. So two injected aborts make that push abort.
fn abort_the_thiefs_first_move() {
    abort_next(2);
}

/// The thief is preempted inside its first move and comes back on the victim's CPU, whose
/// list it holds stopped: the retried push declines and the node goes back to the victim.
#[test]
fn a_node_handed_back_after_an_aborted_move_keeps_its_link() {
    let mut list: FreeList<u32, Simulated> = FreeList::with_backend(Simulated::new(CPUS));
    for value in 0..3 {
        push(&list, VICTIM, value);
    }
    let preempted = Rc::new(Cell::new(false));
    abort_the_thiefs_first_move();
    on_next_abort({
        let preempted = preempted.clone();
        move || {
            preempted.set(true);
            set_cpu(Some(VICTIM));
        }
    });
    let stolen = pop(&list, THIEF);
    abort_next(0);
    assert!(preempted.get(), "the thief's first move aborted");
    assert_eq!(
        stolen,
        Some(2),
        "the victim's newest goes to the thief's caller"
    );
    // Node 1 went back to the victim; node 0 must still be behind it.
    assert_eq!(pop(&list, VICTIM), Some(1));
    assert_eq!(
        pop(&list, VICTIM),
        Some(0),
        "the rest of the victim's chain"
    );
    assert!(list.drain().is_empty());
}
