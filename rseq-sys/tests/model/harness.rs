//! Runs [`Op`]s on a [`Simulated`] machine and on a reference model side by side, and panics
//! at the first difference: an outcome the model does not allow, or any slot, list or stack
//! that differs after the step.
//!
//! What the model pins down, for every primitive:
//! - no CPU (none injected, or an index past the arrays or the machine) reports `NoCpu`,
//!   stores nothing and consumes no injected abort;
//! - every operation that reaches a CPU consumes one injected abort; an aborted operation
//!   commits nothing, and only an operation that would commit can abort;
//! - a decline (failed comparison, empty or locked list, full, empty or stopped stack)
//!   stores nothing and reports what it saw;
//! - a completed operation did exactly its job on exactly this CPU's slot.

use super::op::{Op, WordKind};
use rseq_sys::simulation::{abort_next, abort_one_in, set_cpu};
use rseq_sys::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use rseq_sys::{Backend, BoundedStack, Outcome, Simulated, SlotArray, SlotWord, LINK_LOCKED};
use std::ptr::NonNull;

/// Slots per per-CPU array.
pub const CPUS: usize = 3;
/// The machine has one CPU more than the arrays have slots: CPU 3 runs, but has no slot.
const MACHINE_CPUS: usize = CPUS + 1;
const NODES: usize = 8;
const WORDS_PER_STACK: usize = 4;
const BYTES_PER_STACK: usize = 24;
const WORD: usize = size_of::<*mut u8>();

#[repr(C, align(8))]
struct ListNode {
    next: AtomicPtr<u8>,
}

/// A heap slice reached only through its raw pointer (never through the `Box` it came from,
/// whose moves would invalidate pointers derived earlier), freed on drop.
struct RawSlice<T> {
    start: NonNull<T>,
    len: usize,
}

impl<T> RawSlice<T> {
    fn new(items: Vec<T>) -> RawSlice<T> {
        let len = items.len();
        let start = NonNull::new(Box::into_raw(items.into_boxed_slice()).cast::<T>())
            .expect("Box::into_raw is never null");
        RawSlice { start, len }
    }

    fn as_ptr(&self) -> *mut T {
        self.start.as_ptr()
    }

    /// The items, for reading between steps.
    fn items(&self) -> &[T] {
        // SAFETY: `start` and `len` describe the live boxed slice this owns; it is mutated
        // only through atomics or by the simulated operations, none of which run while the
        // returned borrow lives (the harness reads between steps).
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl<T> Drop for RawSlice<T> {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.start.as_ptr(), self.len);
        // SAFETY: `start` and `len` came from `Box::into_raw` of a boxed slice, which nothing
        // uses after this drop.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// The real structures, operated on through the [`Simulated`] backend.
struct Subject {
    machine: Simulated,
    counters: Vec<AtomicU64>,
    u64_words: Vec<AtomicU64>,
    usize_words: Vec<AtomicUsize>,
    ptr_words: Vec<AtomicPtr<u8>>,
    heads: Vec<AtomicPtr<u8>>,
    nodes: RawSlice<ListNode>,
    word_stacks: Vec<BoundedStack>,
    word_storage: RawSlice<AtomicPtr<u8>>,
    byte_stacks: Vec<BoundedStack>,
    byte_storage: RawSlice<u8>,
}

fn stack_over(begin: *mut u8, bytes: usize) -> BoundedStack {
    BoundedStack {
        top: AtomicPtr::new(begin),
        end: AtomicPtr::new(begin.wrapping_add(bytes)),
        begin: AtomicPtr::new(begin),
    }
}

fn zeroed<T: Default>() -> Vec<T> {
    (0..CPUS).map(|_| T::default()).collect()
}

impl Subject {
    fn new() -> Subject {
        let word_storage = RawSlice::new(
            (0..CPUS * WORDS_PER_STACK)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        );
        let word_base = word_storage.as_ptr().cast::<u8>();
        let byte_storage = RawSlice::new(vec![0u8; CPUS * BYTES_PER_STACK]);
        Subject {
            machine: Simulated::new(MACHINE_CPUS),
            counters: zeroed(),
            u64_words: zeroed(),
            usize_words: zeroed(),
            ptr_words: (0..CPUS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            heads: (0..CPUS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            nodes: RawSlice::new(
                (0..NODES)
                    .map(|_| ListNode {
                        next: AtomicPtr::new(std::ptr::null_mut()),
                    })
                    .collect(),
            ),
            word_stacks: (0..CPUS)
                .map(|cpu| {
                    let begin = word_base.wrapping_add(cpu * WORDS_PER_STACK * WORD);
                    stack_over(begin, WORDS_PER_STACK * WORD)
                })
                .collect(),
            word_storage,
            byte_stacks: (0..CPUS)
                .map(|cpu| {
                    let begin = byte_storage.as_ptr().wrapping_add(cpu * BYTES_PER_STACK);
                    stack_over(begin, BYTES_PER_STACK)
                })
                .collect(),
            byte_storage,
        }
    }

    fn node(&self, index: usize) -> NonNull<u8> {
        assert!(index < NODES, "no node {index}");
        NonNull::new(self.nodes.as_ptr().wrapping_add(index).cast()).expect("nodes are not null")
    }

    fn node_index(&self, node: *mut u8) -> usize {
        let offset = node.addr() - self.nodes.as_ptr().addr();
        assert_eq!(
            offset % size_of::<ListNode>(),
            0,
            "a head points between nodes"
        );
        let index = offset / size_of::<ListNode>();
        assert!(index < NODES, "a head points past the nodes");
        index
    }

    /// The list hanging from `cpu`'s head (newest first), ignoring the lock bit.
    fn list(&self, cpu: usize) -> Vec<usize> {
        let mut nodes = Vec::new();
        let mut at = self.heads[cpu]
            .load(Ordering::Acquire)
            .map_addr(|a| a & !LINK_LOCKED);
        while !at.is_null() {
            let index = self.node_index(at);
            assert!(nodes.len() < NODES, "list {cpu} has a cycle");
            nodes.push(index);
            at = self.nodes.items()[index].next.load(Ordering::Acquire);
        }
        nodes
    }

    fn word_base(&self, cpu: usize) -> *mut u8 {
        self.word_storage
            .as_ptr()
            .wrapping_add(cpu * WORDS_PER_STACK)
            .cast()
    }

    /// The words on `cpu`'s stack, oldest first (from the storage start, so that a stopped
    /// stack reads the same).
    fn words(&self, cpu: usize) -> Vec<usize> {
        let top = self.word_stacks[cpu].top.load(Ordering::Acquire);
        let count = (top.addr() - self.word_base(cpu).addr()) / WORD;
        assert!(count <= WORDS_PER_STACK, "word stack {cpu} overflowed");
        self.word_storage.items()[cpu * WORDS_PER_STACK..][..count]
            .iter()
            .map(|w| w.load(Ordering::Relaxed).addr())
            .collect()
    }

    fn bytes(&self, cpu: usize) -> Vec<u8> {
        let begin = self
            .byte_storage
            .as_ptr()
            .wrapping_add(cpu * BYTES_PER_STACK);
        let top = self.byte_stacks[cpu].top.load(Ordering::Acquire);
        let len = top.addr() - begin.addr();
        assert!(len <= BYTES_PER_STACK, "byte stack {cpu} overflowed");
        self.byte_storage.items()[cpu * BYTES_PER_STACK..][..len].to_vec()
    }
}

/// What the model says the structures hold.
#[derive(Default)]
struct Model {
    cpu: Option<usize>,
    pending_aborts: u32,
    random_aborts: bool,
    counters: [u64; CPUS],
    u64_words: [u64; CPUS],
    usize_words: [u64; CPUS],
    ptr_words: [u64; CPUS],
    /// Node indices, oldest first.
    lists: [Vec<usize>; CPUS],
    locked: [bool; CPUS],
    words: [Vec<usize>; CPUS],
    stopped: [bool; CPUS],
    bytes: [Vec<u8>; CPUS],
}

/// How an operation that reached a CPU may end, by the model.
enum Expect {
    NoCpu,
    /// It ran on `cpu`; `aborted` says whether it must, may or must not abort.
    Runs {
        cpu: usize,
        abort: Abort,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Abort {
    Must,
    May,
    MustNot,
}

/// A simulated machine and its model, stepped together.
pub struct Harness {
    subject: Subject,
    model: Model,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh machine on CPU 0 with no aborts pending (the simulation's per-thread state is
    /// reset, since fuzzing and proptest reuse one thread for many runs).
    pub fn new() -> Harness {
        set_cpu(Some(0));
        abort_next(0);
        abort_one_in(0, 1);
        Harness {
            subject: Subject::new(),
            model: Model {
                cpu: Some(0),
                ..Model::default()
            },
        }
    }

    /// Runs every op, checking after each.
    pub fn run(ops: &[Op]) {
        let mut harness = Harness::new();
        for (step, op) in ops.iter().enumerate() {
            harness.step(op);
            harness.check(step, op);
        }
        // Leave the thread as found for the next run.
        Harness::new();
    }

    fn slots<T>(values: &[T]) -> SlotArray<'_, T> {
        SlotArray::from_slice(values)
    }

    /// The model's prediction for an operation that commits when `commits`.
    fn expect(&mut self, commits: bool) -> Expect {
        let Some(cpu) = self.model.cpu.filter(|&cpu| cpu < CPUS) else {
            return Expect::NoCpu;
        };
        let forced = self.model.pending_aborts > 0;
        if forced {
            self.model.pending_aborts -= 1;
        }
        let abort = match (commits, forced, self.model.random_aborts) {
            (false, _, _) => Abort::MustNot,
            (true, true, _) => Abort::Must,
            (true, false, true) => Abort::May,
            (true, false, false) => Abort::MustNot,
        };
        Expect::Runs { cpu, abort }
    }

    /// Checks `outcome` against `expect`; `Some((cpu, value))` when it completed.
    fn settle<T: std::fmt::Debug>(expect: Expect, outcome: Outcome<T>) -> Option<(usize, T)> {
        match (expect, outcome) {
            (Expect::NoCpu, Outcome::NoCpu) => None,
            (Expect::Runs { abort, .. }, Outcome::Aborted) => {
                assert_ne!(abort, Abort::MustNot, "aborted although it could not abort");
                None
            }
            (Expect::Runs { cpu, abort }, Outcome::Completed { cpu: ran_on, value }) => {
                assert_ne!(abort, Abort::Must, "completed despite an injected abort");
                assert_eq!(ran_on, cpu, "ran on another CPU than injected");
                Some((cpu, value))
            }
            (Expect::NoCpu, outcome) => panic!("expected NoCpu, got {outcome:?}"),
            (Expect::Runs { cpu, .. }, outcome) => {
                panic!("expected a run on {cpu}, got {outcome:?}")
            }
        }
    }

    /// The CPU with slots the current thread is on, if any.
    fn slot_cpu(&self) -> Option<usize> {
        self.model.cpu.filter(|&cpu| cpu < CPUS)
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::SetCpu(cpu) => {
                set_cpu(cpu);
                self.model.cpu = cpu;
            }
            Op::AbortNext(n) => {
                abort_next(n);
                self.model.pending_aborts = n;
            }
            Op::AbortOneIn(n) => {
                // n == 1 would abort every attempt; treat it as "off" like 0.
                let n = if n < 2 { 0 } else { n };
                abort_one_in(n, 0x5eed);
                self.model.random_aborts = n != 0;
            }
            Op::Add(value) => self.add(value),
            Op::CompareAndStore {
                kind,
                expected,
                new,
            } => self.compare_and_store(kind, expected, new),
            Op::PushLinked(choice) => self.push_linked(choice),
            Op::PopLinked => self.pop_linked(),
            Op::LockList(cpu) => self.lock_list(cpu % CPUS, true),
            Op::UnlockList(cpu) => self.lock_list(cpu % CPUS, false),
            Op::StealList(cpu) => self.steal_list(cpu % CPUS),
            Op::PushWord(item) => self.push_word(item),
            Op::PopWord => self.pop_word(),
            Op::PushWords(ref items) => self.push_words(items),
            Op::PopWords(count) => self.pop_words(count),
            Op::StopStack(cpu) => self.stop_stack(cpu % CPUS),
            Op::RestartStack(cpu) => self.restart_stack(cpu % CPUS),
            Op::PushCopy(ref record) => self.push_copy(record),
            Op::PopCopy(len) => self.pop_copy(len),
            Op::FenceCpu(cpu) => {
                let cpu = cpu % (MACHINE_CPUS + 1);
                assert_eq!(self.subject.machine.fence_cpu(cpu), Ok(()));
            }
            Op::FenceAll => assert_eq!(self.subject.machine.fence_all(), Ok(())),
        }
    }

    fn add(&mut self, value: u64) {
        let expect = self.expect(true);
        let outcome = self
            .subject
            .machine
            .add(Self::slots(&self.subject.counters), value);
        if let Some((cpu, ())) = Self::settle(expect, outcome) {
            self.model.counters[cpu] = self.model.counters[cpu].wrapping_add(value);
        }
    }

    fn compare_and_store(&mut self, kind: WordKind, expected: u64, new: u64) {
        let seen = self.slot_cpu().map(|cpu| match kind {
            WordKind::U64 => self.model.u64_words[cpu],
            WordKind::Usize => self.model.usize_words[cpu],
            WordKind::Ptr => self.model.ptr_words[cpu],
        });
        let expect = self.expect(seen == Some(expected));
        let machine = &self.subject.machine;
        let result = match kind {
            WordKind::U64 => cas(machine, &self.subject.u64_words, expect, expected, new),
            WordKind::Usize => cas(machine, &self.subject.usize_words, expect, expected, new),
            WordKind::Ptr => cas(machine, &self.subject.ptr_words, expect, expected, new),
        };
        if let Some((cpu, result)) = result {
            match result {
                Ok(()) => {
                    assert_eq!(seen, Some(expected), "stored although the slot differed");
                    let word = match kind {
                        WordKind::U64 => &mut self.model.u64_words[cpu],
                        WordKind::Usize => &mut self.model.usize_words[cpu],
                        WordKind::Ptr => &mut self.model.ptr_words[cpu],
                    };
                    *word = new;
                }
                Err(value) => {
                    assert_ne!(seen, Some(expected), "declined although the slot matched");
                    assert_eq!(
                        Some(value),
                        seen,
                        "declined with a value the slot never held"
                    );
                }
            }
        }
    }

    fn free_nodes(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|n| !self.model.lists.iter().any(|list| list.contains(n)))
            .collect()
    }

    fn model_head(&self, cpu: usize) -> *mut u8 {
        let head = match self.model.lists[cpu].last() {
            Some(&node) => self.subject.node(node).as_ptr(),
            None => std::ptr::null_mut(),
        };
        if self.model.locked[cpu] {
            head.map_addr(|a| a | LINK_LOCKED)
        } else {
            head
        }
    }

    fn push_linked(&mut self, choice: usize) {
        let free = self.free_nodes();
        if free.is_empty() {
            return;
        }
        let node = free[choice % free.len()];
        let locked = self.slot_cpu().is_some_and(|cpu| self.model.locked[cpu]);
        let expect = self.expect(!locked);
        let heads = Self::slots(&self.subject.heads);
        // SAFETY: every node has its `next` AtomicPtr at offset 0 and lives in `subject`;
        // `node` is on no list (the model's free set, checked against the lists each step).
        let outcome = unsafe {
            self.subject
                .machine
                .push_linked(heads, self.subject.node(node), 0)
        };
        if let Some((cpu, result)) = Self::settle(expect, outcome) {
            match result {
                Ok(()) => {
                    assert!(!locked, "pushed onto a locked list");
                    self.model.lists[cpu].push(node);
                }
                Err(head) => {
                    assert!(locked, "declined a push onto an unlocked list");
                    assert_eq!(head, self.model_head(cpu), "declined with a wrong head");
                }
            }
        }
    }

    fn pop_linked(&mut self) {
        let takes = self
            .slot_cpu()
            .is_some_and(|cpu| !self.model.locked[cpu] && !self.model.lists[cpu].is_empty());
        let expect = self.expect(takes);
        let heads = Self::slots(&self.subject.heads);
        // SAFETY: as in `push_linked`.
        let outcome = unsafe { self.subject.machine.pop_linked(heads, 0) };
        if let Some((cpu, result)) = Self::settle(expect, outcome) {
            match result {
                Ok(node) => {
                    assert!(takes, "popped from an empty or locked list");
                    let newest = self.model.lists[cpu].pop();
                    assert_eq!(Some(self.subject.node_index(node.as_ptr())), newest);
                }
                Err(head) => {
                    assert!(!takes, "declined a pop from a list with nodes");
                    assert_eq!(head, self.model_head(cpu), "declined with a wrong head");
                }
            }
        }
    }

    fn lock_list(&mut self, cpu: usize, lock: bool) {
        if self.model.locked[cpu] == lock {
            return;
        }
        let head = &self.subject.heads[cpu];
        let current = head.load(Ordering::Relaxed);
        let wanted = current.map_addr(|a| {
            if lock {
                a | LINK_LOCKED
            } else {
                a & !LINK_LOCKED
            }
        });
        head.compare_exchange(current, wanted, Ordering::AcqRel, Ordering::Relaxed)
            .expect("no one else touches the head between steps");
        self.model.locked[cpu] = lock;
    }

    /// The remote steal protocol on one thread: nothing runs concurrently, so every round
    /// succeeds; loom checks the concurrent case.
    fn steal_list(&mut self, cpu: usize) {
        if self.model.locked[cpu] {
            return;
        }
        let head_slot = &self.subject.heads[cpu];
        let head = head_slot.load(Ordering::Acquire);
        let locked = head.map_addr(|a| a | LINK_LOCKED);
        head_slot
            .compare_exchange(head, locked, Ordering::Acquire, Ordering::Relaxed)
            .expect("no one else touches the head between steps");
        assert_eq!(self.subject.machine.fence_cpu(cpu), Ok(()));
        assert_eq!(
            head_slot.load(Ordering::Acquire),
            locked,
            "a section committed after the fence"
        );
        let taken = self.subject.list(cpu);
        head_slot.store(std::ptr::null_mut(), Ordering::Release);
        let mut expected = std::mem::take(&mut self.model.lists[cpu]);
        expected.reverse();
        assert_eq!(taken, expected, "stole another chain than the model's list");
    }

    fn push_word(&mut self, item: usize) {
        let item_ptr = std::ptr::without_provenance_mut::<u8>(item);
        let fits = self.slot_cpu().is_some_and(|cpu| {
            !self.model.stopped[cpu] && self.model.words[cpu].len() < WORDS_PER_STACK
        });
        let expect = self.expect(fits);
        let stacks = Self::slots(&self.subject.word_stacks);
        // SAFETY: each stack delimits its own part of `word_storage` (AtomicPtr words, live in
        // `subject`), reached only through these operations and atomic loads.
        let outcome = unsafe { self.subject.machine.push_word(stacks, item_ptr) };
        if let Some((cpu, result)) = Self::settle(expect, outcome) {
            match result {
                Ok(()) => {
                    assert!(fits, "pushed onto a full or stopped stack");
                    self.model.words[cpu].push(item);
                }
                Err(back) => {
                    assert!(!fits, "declined a push onto a stack with room");
                    assert_eq!(back, item_ptr, "handed back another item");
                }
            }
        }
    }

    fn pop_word(&mut self) {
        let has = self
            .slot_cpu()
            .is_some_and(|cpu| !self.model.stopped[cpu] && !self.model.words[cpu].is_empty());
        let expect = self.expect(has);
        let stacks = Self::slots(&self.subject.word_stacks);
        // SAFETY: as in `push_word`.
        let outcome = unsafe { self.subject.machine.pop_word(stacks) };
        if let Some((cpu, result)) = Self::settle(expect, outcome) {
            match result {
                Some(item) => {
                    assert!(has, "popped from an empty or stopped stack");
                    assert_eq!(Some(item.addr()), self.model.words[cpu].pop());
                }
                None => assert!(!has, "declined a pop from a stack with items"),
            }
        }
    }

    /// `push_words` and `pop_words` on the same word stacks as `push_word` and `pop_word`:
    /// a batch must leave exactly what that many one-word operations would.
    fn push_words(&mut self, items: &[usize]) {
        let words: Vec<*mut u8> = items
            .iter()
            .map(|&item| std::ptr::without_provenance_mut(item))
            .collect();
        let fits = self.slot_cpu().is_some_and(|cpu| {
            !items.is_empty()
                && !self.model.stopped[cpu]
                && self.model.words[cpu].len() + items.len() <= WORDS_PER_STACK
        });
        let expect = self.expect(fits);
        let stacks = Self::slots(&self.subject.word_stacks);
        // SAFETY: as in `push_word`; `words` is a separate buffer.
        let outcome = unsafe { self.subject.machine.push_words(stacks, &words) };
        if let Some((cpu, pushed)) = Self::settle(expect, outcome) {
            assert_eq!(pushed, fits, "push_words disagrees about the room left");
            if pushed {
                self.model.words[cpu].extend_from_slice(items);
            }
        }
    }

    fn pop_words(&mut self, count: usize) {
        let has = self.slot_cpu().is_some_and(|cpu| {
            count > 0 && !self.model.stopped[cpu] && self.model.words[cpu].len() >= count
        });
        let expect = self.expect(has);
        let stacks = Self::slots(&self.subject.word_stacks);
        let mut out = vec![std::ptr::null_mut(); count];
        // SAFETY: as in `push_word`; `out` is the caller's exclusive buffer.
        let outcome = unsafe { self.subject.machine.pop_words(stacks, &mut out) };
        if let Some((cpu, popped)) = Self::settle(expect, outcome) {
            assert_eq!(popped, has, "pop_words disagrees about the words stored");
            if popped {
                let words = &mut self.model.words[cpu];
                let newest = words.split_off(words.len() - count);
                let out: Vec<usize> = out.iter().map(|w| w.addr()).collect();
                assert_eq!(out, newest, "popped other words than were pushed");
            }
        }
    }

    fn stop_stack(&mut self, cpu: usize) {
        if self.model.stopped[cpu] {
            return;
        }
        let stack = &self.subject.word_stacks[cpu];
        let top = stack.top.load(Ordering::Acquire);
        stack.begin.store(top, Ordering::Relaxed);
        stack.end.store(top, Ordering::Relaxed);
        assert_eq!(self.subject.machine.fence_cpu(cpu), Ok(()));
        assert_eq!(
            stack.top.load(Ordering::Acquire),
            top,
            "a section committed after the fence"
        );
        self.model.stopped[cpu] = true;
    }

    fn restart_stack(&mut self, cpu: usize) {
        if !self.model.stopped[cpu] {
            return;
        }
        let stack = &self.subject.word_stacks[cpu];
        let begin = self.subject.word_base(cpu);
        stack.begin.store(begin, Ordering::Relaxed);
        stack.end.store(
            begin.wrapping_add(WORDS_PER_STACK * WORD),
            Ordering::Release,
        );
        self.model.stopped[cpu] = false;
    }

    fn push_copy(&mut self, record: &[u8]) {
        let fits = self.slot_cpu().is_some_and(|cpu| {
            !record.is_empty() && self.model.bytes[cpu].len() + record.len() <= BYTES_PER_STACK
        });
        let expect = self.expect(fits);
        let stacks = Self::slots(&self.subject.byte_stacks);
        // SAFETY: each stack delimits its own part of the byte storage (live in `subject`,
        // reached only through these operations); `record` is a separate buffer.
        let outcome = unsafe { self.subject.machine.push_copy(stacks, record) };
        if let Some((cpu, stored)) = Self::settle(expect, outcome) {
            assert_eq!(stored, fits, "push_copy disagrees about the room left");
            if stored {
                self.model.bytes[cpu].extend_from_slice(record);
            }
        }
    }

    fn pop_copy(&mut self, len: usize) {
        let has = self
            .slot_cpu()
            .is_some_and(|cpu| len > 0 && self.model.bytes[cpu].len() >= len);
        let expect = self.expect(has);
        let stacks = Self::slots(&self.subject.byte_stacks);
        let mut record = vec![0u8; len];
        // SAFETY: as in `push_copy`; `record` is the caller's exclusive buffer.
        let outcome = unsafe { self.subject.machine.pop_copy(stacks, &mut record) };
        if let Some((cpu, popped)) = Self::settle(expect, outcome) {
            assert_eq!(popped, has, "pop_copy disagrees about the bytes stored");
            if popped {
                let bytes = &mut self.model.bytes[cpu];
                let newest = bytes.split_off(bytes.len() - len);
                assert_eq!(record, newest, "popped other bytes than were pushed");
            }
        }
    }

    /// Compares every slot, list and stack with the model.
    fn check(&self, step: usize, op: &Op) {
        let s = &self.subject;
        let m = &self.model;
        for cpu in 0..CPUS {
            assert_eq!(
                s.counters[cpu].load(Ordering::Relaxed),
                m.counters[cpu],
                "counter {cpu} after step {step} ({op:?})"
            );
            assert_eq!(
                s.u64_words[cpu].load(Ordering::Relaxed),
                m.u64_words[cpu],
                "u64 word {cpu} after step {step} ({op:?})"
            );
            assert_eq!(
                s.usize_words[cpu].load(Ordering::Relaxed) as u64,
                m.usize_words[cpu],
                "usize word {cpu} after step {step} ({op:?})"
            );
            assert_eq!(
                s.ptr_words[cpu].load(Ordering::Relaxed).addr() as u64,
                m.ptr_words[cpu],
                "ptr word {cpu} after step {step} ({op:?})"
            );
            assert_eq!(
                s.heads[cpu].load(Ordering::Relaxed),
                self.model_head(cpu),
                "list head {cpu} after step {step} ({op:?})"
            );
            let mut list = s.list(cpu);
            list.reverse();
            assert_eq!(list, m.lists[cpu], "list {cpu} after step {step} ({op:?})");
            assert_eq!(
                s.words(cpu),
                m.words[cpu],
                "word stack {cpu} after step {step} ({op:?})"
            );
            let stack = &s.word_stacks[cpu];
            let top = stack.top.load(Ordering::Relaxed);
            let (begin, end) = if m.stopped[cpu] {
                (top, top)
            } else {
                let base = s.word_base(cpu);
                (base, base.wrapping_add(WORDS_PER_STACK * WORD))
            };
            assert_eq!(
                stack.begin.load(Ordering::Relaxed),
                begin,
                "word stack {cpu} begin after step {step} ({op:?})"
            );
            assert_eq!(
                stack.end.load(Ordering::Relaxed),
                end,
                "word stack {cpu} end after step {step} ({op:?})"
            );
            assert_eq!(
                s.bytes(cpu),
                m.bytes[cpu],
                "byte stack {cpu} after step {step} ({op:?})"
            );
        }
    }
}

/// One compare-and-store on `words`, checked against `expect`; values are small integers
/// converted to the word's type.
fn cas<W: SlotWord>(
    machine: &Simulated,
    words: &[W],
    expect: Expect,
    expected: u64,
    new: u64,
) -> Option<(usize, Result<(), u64>)>
where
    W::Value: WordValue,
{
    let outcome = machine.compare_and_store(
        SlotArray::from_slice(words),
        W::Value::from_u64(expected),
        W::Value::from_u64(new),
    );
    Harness::settle(expect, outcome)
        .map(|(cpu, result)| (cpu, result.map_err(|seen| seen.to_u64())))
}

/// Small integers as slot-word values (pointers without provenance: they are never
/// dereferenced).
trait WordValue {
    fn from_u64(value: u64) -> Self;
    fn to_u64(self) -> u64;
}

impl WordValue for u64 {
    fn from_u64(value: u64) -> Self {
        value
    }
    fn to_u64(self) -> u64 {
        self
    }
}

impl WordValue for usize {
    fn from_u64(value: u64) -> Self {
        usize::try_from(value).expect("small test values")
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
}

impl WordValue for *mut u8 {
    fn from_u64(value: u64) -> Self {
        std::ptr::without_provenance_mut(usize::from_u64(value))
    }
    fn to_u64(self) -> u64 {
        self.addr() as u64
    }
}
