//! One step of a sequence run against the simulated machine and the reference model.
//!
//! Shared (through `#[path]`) by the proptest in `tests/model.rs` and the fuzz target
//! `fuzz/fuzz_targets/rseq_ops.rs`, so both drive the same checked sequence.

/// Which [`rseq_sys::SlotWord`] type a compare-and-store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordKind {
    U64,
    Usize,
    Ptr,
}

/// One step. CPU and node numbers are taken modulo what exists, so every value is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Run later operations on this CPU: `Some(0..3)` has slots, `Some(3)` is a CPU of the
    /// machine past the arrays, `Some(4)` is past the machine, `None` is no CPU.
    SetCpu(Option<usize>),
    /// Abort the next `n` operations that reach a CPU.
    AbortNext(u32),
    /// Abort about one in `n` operations at random (`0` or `1`: stop random aborts).
    AbortOneIn(u32),
    Add(u64),
    CompareAndStore {
        kind: WordKind,
        expected: u64,
        new: u64,
    },
    /// Push the `n`-th node that is on no list (modulo their number).
    PushLinked(usize),
    PopLinked,
    /// Remote owner: set [`rseq_sys::LINK_LOCKED`] on this CPU's list head.
    LockList(usize),
    /// Remote owner: clear the lock bit again.
    UnlockList(usize),
    /// Remote owner: the steal protocol (lock, fence, re-check, take the chain, release).
    StealList(usize),
    PushWord(usize),
    PopWord,
    /// Push these words in one section (all or none).
    PushWords(Vec<usize>),
    /// Pop this many words in one section (all or none).
    PopWords(usize),
    /// Remote owner: stop this CPU's word stack (begin = end = top, fence, re-check top).
    StopStack(usize),
    /// Remote owner: restore the stopped word stack's begin and end.
    RestartStack(usize),
    PushCopy(Vec<u8>),
    /// Pop a record of this many bytes.
    PopCopy(usize),
    FenceCpu(usize),
    FenceAll,
}

/// How many kinds of [`Op`] there are (the decoder's tags).
pub const KINDS: usize = 20;

/// Decodes ops from bytes (for the fuzzer): each op is a tag byte and its operand bytes;
/// missing bytes read as zero.
pub fn decode(bytes: &[u8]) -> Vec<Op> {
    let mut input = bytes.iter().copied();
    let mut ops = Vec::new();
    while let Some(tag) = input.next() {
        let mut byte = || input.next().unwrap_or(0);
        let op = match usize::from(tag) % KINDS {
            0 => Op::SetCpu(match byte() % 6 {
                5 => None,
                cpu => Some(usize::from(cpu)),
            }),
            1 => Op::AbortNext(u32::from(byte() % 4)),
            2 => Op::AbortOneIn(u32::from(byte() % 8)),
            3 => Op::Add(u64::from(byte()) | (u64::from(byte()) << 56)),
            4 => {
                let kind = match byte() % 3 {
                    0 => WordKind::U64,
                    1 => WordKind::Usize,
                    _ => WordKind::Ptr,
                };
                let values = byte();
                Op::CompareAndStore {
                    kind,
                    expected: u64::from(values % 4),
                    new: u64::from(values / 4 % 4),
                }
            }
            5 => Op::PushLinked(usize::from(byte())),
            6 => Op::PopLinked,
            7 => Op::LockList(usize::from(byte())),
            8 => Op::UnlockList(usize::from(byte())),
            9 => Op::StealList(usize::from(byte())),
            10 => Op::PushWord(usize::from(byte())),
            11 => Op::PopWord,
            12 => Op::StopStack(usize::from(byte())),
            13 => Op::RestartStack(usize::from(byte())),
            14 => {
                let len = usize::from(byte() % 13);
                Op::PushCopy((0..len).map(|_| byte()).collect())
            }
            15 => Op::PopCopy(usize::from(byte() % 13)),
            16 => Op::FenceCpu(usize::from(byte())),
            17 => Op::FenceAll,
            18 => {
                let len = usize::from(byte() % 6);
                Op::PushWords((0..len).map(|_| usize::from(byte())).collect())
            }
            _ => Op::PopWords(usize::from(byte() % 6)),
        };
        ops.push(op);
    }
    ops
}
