//! A simulated machine for loom, Miri and property tests.
//!
//! [`Simulated`] runs every [`Backend`] operation as the same sequence of loads and stores the
//! real critical section performs, with three differences that keep it faithful without
//! rseq:
//!
//! - The CPU id is injected per thread with [`set_cpu`]; `None` means "no CPU".
//! - Each CPU has a busy flag held for the duration of an operation, which gives the
//!   guarantee the kernel gives: at most one critical section runs on a CPU at a time, and a
//!   later one sees the earlier one's stores.
//! - Aborts are injected with [`abort_next`] or [`abort_one_in`]. An injected abort happens
//!   after the try-stores and before the commit, the worst place a real one can happen.
//!   [`on_next_abort`] runs code at that abort, after the CPU is released: what a real
//!   preemption lets other threads do, or a migration ([`set_cpu`] from inside it).
//!
//! Two threads injected with the same CPU id are like two threads time-sharing one CPU;
//! changing a thread's id is a migration.

use crate::ops::{private, Backend, BoundedStack, Outcome, SlotArray, SlotWord, LINK_LOCKED};
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::sync::Arc;
use core::cell::Cell;
use core::ptr::NonNull;

/// What [`on_next_abort`] runs.
type AbortHook = Box<dyn FnOnce()>;

struct SimThread {
    cpu: Cell<Option<usize>>,
    abort_next: Cell<u32>,
    abort_one_in: Cell<u32>,
    rng: Cell<u64>,
    on_abort: Cell<Option<AbortHook>>,
}

crate::sync::thread_local! {
    // Not `const`: loom's `thread_local!` does not take a const initialiser.
    #[allow(clippy::missing_const_for_thread_local)]
    static SIM_THREAD: SimThread = SimThread {
        cpu: Cell::new(None),
        abort_next: Cell::new(0),
        abort_one_in: Cell::new(0),
        rng: Cell::new(0x9E37_79B9_7F4A_7C15),
        on_abort: Cell::new(None),
    };
}

/// Run this thread's later simulated operations as if on `cpu` (`None`: no CPU).
pub fn set_cpu(cpu: Option<usize>) {
    SIM_THREAD.with(|t| t.cpu.set(cpu));
}

/// The CPU this thread is simulated on.
pub fn cpu() -> Option<usize> {
    SIM_THREAD.with(|t| t.cpu.get())
}

/// Abort this thread's next `count` simulated operations (after their try-stores).
pub fn abort_next(count: u32) {
    SIM_THREAD.with(|t| t.abort_next.set(count));
}

/// Abort about one in `n` of this thread's simulated operations, chosen by a generator seeded
/// with `seed` (deterministic for a given seed). `n == 0` stops random aborts.
pub fn abort_one_in(n: u32, seed: u64) {
    SIM_THREAD.with(|t| {
        t.abort_one_in.set(n);
        t.rng.set(seed | 1);
    });
}

/// Run `hook` on this thread when its next simulated operation aborts, after the operation
/// released its CPU and before it returns [`Outcome::Aborted`]: the window in which a real
/// thread is preempted, other threads run, and it may come back on another CPU. Only an
/// operation that really aborts (reached its commit with an abort injected) runs the hook;
/// one that declined or completed leaves it waiting.
pub fn on_next_abort(hook: impl FnOnce() + 'static) {
    SIM_THREAD.with(|t| t.on_abort.set(Some(Box::new(hook))));
}

fn run_abort_hook() {
    if let Some(hook) = SIM_THREAD.with(|t| t.on_abort.take()) {
        hook();
    }
}

fn should_abort() -> bool {
    SIM_THREAD.with(|t| {
        let pending = t.abort_next.get();
        if pending > 0 {
            t.abort_next.set(pending - 1);
            return true;
        }
        let n = t.abort_one_in.get();
        if n == 0 {
            return false;
        }
        // xorshift64*: cheap, deterministic, good enough to scatter aborts.
        let mut x = t.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        t.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % u64::from(n) == 0
    })
}

/// A simulated machine with a fixed number of CPUs. Cheap to clone: clones share the machine.
#[derive(Clone)]
pub struct Simulated {
    busy: Arc<Box<[AtomicBool]>>,
}

impl core::fmt::Debug for Simulated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Simulated")
            .field("cpus", &self.busy.len())
            .finish()
    }
}

impl Simulated {
    /// A machine with `cpus` CPUs (slot indices `0..cpus`).
    pub fn new(cpus: usize) -> Self {
        Simulated {
            busy: Arc::new((0..cpus).map(|_| AtomicBool::new(false)).collect()),
        }
    }

    /// Run `op` as a critical section on this thread's simulated CPU. `op` gets the CPU and
    /// whether to abort before its commit; it returns `None` when it aborted.
    fn run<T>(&self, len: usize, op: impl FnOnce(usize, bool) -> Option<T>) -> Outcome<T> {
        let Some(cpu) = cpu() else {
            return Outcome::NoCpu;
        };
        if cpu >= len || cpu >= self.busy.len() {
            return Outcome::NoCpu;
        }
        let busy = &self.busy[cpu];
        while busy
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            crate::sync::spin_wait();
        }
        let result = op(cpu, should_abort());
        busy.store(false, Ordering::Release);
        match result {
            Some(value) => Outcome::Completed { cpu, value },
            None => {
                run_abort_hook();
                Outcome::Aborted
            }
        }
    }

    fn fence(&self, cpu: usize) {
        if let Some(busy) = self.busy.get(cpu) {
            while busy
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                crate::sync::spin_wait();
            }
            busy.store(false, Ordering::Release);
        }
    }
}

impl private::Sealed for Simulated {}

fn slot<'a, T>(slots: &SlotArray<'a, T>, cpu: usize) -> &'a T {
    slots.get(cpu).expect("run() checked cpu < len")
}

impl Backend for Simulated {
    fn slot_count(&self) -> usize {
        self.busy.len()
    }

    fn current_cpu(&self) -> Option<usize> {
        cpu().filter(|&c| c < self.busy.len())
    }

    fn add(&self, slots: SlotArray<'_, AtomicU64>, value: u64) -> Outcome<()> {
        self.run(slots.len(), |cpu, abort| {
            if abort {
                return None;
            }
            let slot = slot(&slots, cpu);
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(value),
                Ordering::Relaxed,
            );
            Some(())
        })
    }

    fn compare_and_store<W: SlotWord>(
        &self,
        slots: SlotArray<'_, W>,
        expected: W::Value,
        new: W::Value,
    ) -> Outcome<Result<(), W::Value>> {
        self.run(slots.len(), |cpu, abort| {
            let slot = slot(&slots, cpu);
            let seen = slot.sim_load();
            if seen != expected {
                return Some(Err(seen));
            }
            if abort {
                return None;
            }
            slot.sim_store(new);
            Some(Ok(()))
        })
    }

    unsafe fn pop_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        next_offset: usize,
    ) -> Outcome<Result<NonNull<u8>, *mut u8>> {
        self.run(heads.len(), |cpu, abort| {
            let head_slot = slot(&heads, cpu);
            let head = head_slot.load(Ordering::Acquire);
            let Some(node) = NonNull::new(head).filter(|_| head.addr() & LINK_LOCKED == 0) else {
                return Some(Err(head));
            };
            // SAFETY: the caller guarantees a listed node has an AtomicPtr at `next_offset`
            // and stays allocated while listed; it is listed, since this CPU is busy.
            let next = unsafe { &*node.as_ptr().add(next_offset).cast::<AtomicPtr<u8>>() }
                .load(Ordering::Relaxed);
            if abort {
                return None;
            }
            commit(head_slot, next);
            Some(Ok(node))
        })
    }

    unsafe fn push_linked(
        &self,
        heads: SlotArray<'_, AtomicPtr<u8>>,
        node: NonNull<u8>,
        next_offset: usize,
    ) -> Outcome<Result<(), *mut u8>> {
        self.run(heads.len(), |cpu, abort| {
            let head_slot = slot(&heads, cpu);
            let head = head_slot.load(Ordering::Acquire);
            if head.addr() & LINK_LOCKED != 0 {
                return Some(Err(head));
            }
            // SAFETY: the caller owns `node` and its next field until the push commits.
            unsafe { &*node.as_ptr().add(next_offset).cast::<AtomicPtr<u8>>() }
                .store(head, Ordering::Relaxed);
            if abort {
                return None;
            }
            commit(head_slot, node.as_ptr());
            Some(Ok(()))
        })
    }

    unsafe fn push_word(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        item: *mut u8,
    ) -> Outcome<Result<(), *mut u8>> {
        self.run(stacks.len(), |cpu, abort| {
            let stack = slot(&stacks, cpu);
            let top = stack.top.load(Ordering::Acquire);
            if top.addr() >= stack.end.load(Ordering::Relaxed).addr() {
                return Some(Err(item));
            }
            // SAFETY: the caller guarantees `[top, end)` is free word storage of this stack.
            unsafe { &*top.cast::<AtomicPtr<u8>>() }.store(item, Ordering::Relaxed);
            if abort {
                return None;
            }
            commit(&stack.top, top.wrapping_add(size_of_word()));
            Some(Ok(()))
        })
    }

    unsafe fn pop_word(&self, stacks: SlotArray<'_, BoundedStack>) -> Outcome<Option<*mut u8>> {
        self.run(stacks.len(), |cpu, abort| {
            let stack = slot(&stacks, cpu);
            let top = stack.top.load(Ordering::Acquire);
            if top.addr() <= stack.begin.load(Ordering::Relaxed).addr() {
                return Some(None);
            }
            let newest = top.wrapping_sub(size_of_word());
            // SAFETY: the caller guarantees `[begin, top)` holds this stack's items.
            let item = unsafe { &*newest.cast::<AtomicPtr<u8>>() }.load(Ordering::Relaxed);
            if abort {
                return None;
            }
            commit(&stack.top, newest);
            Some(Some(item))
        })
    }

    unsafe fn push_copy(&self, stacks: SlotArray<'_, BoundedStack>, src: &[u8]) -> Outcome<bool> {
        self.run(stacks.len(), |cpu, abort| {
            let stack = slot(&stacks, cpu);
            let top = stack.top.load(Ordering::Acquire);
            let end = stack.end.load(Ordering::Relaxed);
            if src.is_empty() || end.addr().saturating_sub(top.addr()) < src.len() {
                return Some(false);
            }
            // SAFETY: `[top, top + len)` is free storage of this stack (checked against
            // `end`), and `src` cannot overlap it by the caller's contract.
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), top, src.len()) };
            if abort {
                return None;
            }
            commit(&stack.top, top.wrapping_add(src.len()));
            Some(true)
        })
    }

    unsafe fn pop_copy(
        &self,
        stacks: SlotArray<'_, BoundedStack>,
        dst: &mut [u8],
    ) -> Outcome<bool> {
        self.run(stacks.len(), |cpu, abort| {
            let stack = slot(&stacks, cpu);
            let top = stack.top.load(Ordering::Acquire);
            let begin = stack.begin.load(Ordering::Relaxed);
            if dst.is_empty() || top.addr().saturating_sub(begin.addr()) < dst.len() {
                return Some(false);
            }
            let record = top.wrapping_sub(dst.len());
            // SAFETY: `[top - len, top)` holds this stack's newest record (checked against
            // `begin`); `dst` is the caller's exclusive buffer.
            unsafe { core::ptr::copy_nonoverlapping(record, dst.as_mut_ptr(), dst.len()) };
            if abort {
                return None;
            }
            commit(&stack.top, record);
            Some(true)
        })
    }

    fn fence_cpu(&self, cpu: usize) -> Result<(), crate::Reason> {
        self.fence(cpu);
        Ok(())
    }

    fn fence_all(&self) -> Result<(), crate::Reason> {
        (0..self.busy.len()).for_each(|cpu| self.fence(cpu));
        Ok(())
    }
}

/// The stride of word storage: an `AtomicPtr<u8>` (8 bytes natively; larger under loom,
/// where only the simulator runs).
const fn size_of_word() -> usize {
    core::mem::size_of::<AtomicPtr<u8>>()
}

/// A commit: one store that wins or loses against a remote owner's compare-and-swap as a
/// whole. Written as a swap because loom orders a plain store after a concurrent CAS it
/// never observed in ways no CPU can, and so would invent executions in which a thief's lock
/// bit survives a committed section. Release, like the real commit on x86_64.
fn commit(slot: &AtomicPtr<u8>, value: *mut u8) {
    slot.swap(value, Ordering::AcqRel);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn ran_flag() -> (Rc<Cell<bool>>, impl FnOnce() + 'static) {
        let ran = Rc::new(Cell::new(false));
        let hook = {
            let ran = ran.clone();
            move || ran.set(true)
        };
        (ran, hook)
    }

    #[test]
    fn the_abort_hook_runs_at_an_abort_with_the_cpu_released() {
        let machine = Simulated::new(1);
        let slots = [AtomicU64::new(0)];
        set_cpu(Some(0));
        let ran = Rc::new(Cell::new(false));
        on_next_abort({
            let (ran, machine) = (ran.clone(), machine.clone());
            move || {
                assert!(
                    !machine.busy[0].load(Ordering::Relaxed),
                    "the CPU is released before the hook runs"
                );
                ran.set(true);
            }
        });
        abort_next(1);
        let outcome = machine.add(SlotArray::from_slice(&slots), 5);
        assert!(matches!(outcome, Outcome::Aborted));
        assert!(ran.get());
        assert_eq!(
            slots[0].load(Ordering::Relaxed),
            0,
            "an abort commits nothing"
        );
    }

    #[test]
    fn the_abort_hook_waits_past_an_operation_that_declines() {
        let machine = Simulated::new(1);
        let slots = [AtomicU64::new(7)];
        set_cpu(Some(0));
        let (ran, hook) = ran_flag();
        on_next_abort(hook);
        abort_next(2);
        // Declines (the word is not 0) before its commit: the injected abort is used up,
        // but nothing aborted.
        let declined = machine.compare_and_store(SlotArray::from_slice(&slots), 0, 1);
        assert!(matches!(declined, Outcome::Completed { value: Err(7), .. }));
        assert!(!ran.get());
        let aborted = machine.compare_and_store(SlotArray::from_slice(&slots), 7, 1);
        assert!(matches!(aborted, Outcome::Aborted));
        assert!(ran.get());
    }
}
