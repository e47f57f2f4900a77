//! Property test: random sequences of every primitive on the [`rseq_sys::Simulated`] backend,
//! with injected CPU ids (including no CPU and indices past the arrays) and injected aborts,
//! checked step by step against a reference model (see `model/harness.rs` for what it pins
//! down). The fuzz target `rseq_ops` runs the same harness on fuzzer-chosen sequences.

mod model {
    pub mod harness;
    pub mod op;
}

use model::harness::Harness;
use model::op::{Op, WordKind};
use proptest::prelude::*;

fn word_kind() -> impl Strategy<Value = WordKind> {
    prop_oneof![
        Just(WordKind::U64),
        Just(WordKind::Usize),
        Just(WordKind::Ptr)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::option::weighted(0.9, 0usize..5).prop_map(Op::SetCpu),
        2 => (0u32..4).prop_map(Op::AbortNext),
        1 => (0u32..6).prop_map(Op::AbortOneIn),
        3 => any::<u64>().prop_map(Op::Add),
        3 => (word_kind(), 0u64..4, 0u64..4)
            .prop_map(|(kind, expected, new)| Op::CompareAndStore { kind, expected, new }),
        3 => any::<usize>().prop_map(Op::PushLinked),
        3 => Just(Op::PopLinked),
        1 => (0usize..3).prop_map(Op::LockList),
        1 => (0usize..3).prop_map(Op::UnlockList),
        1 => (0usize..3).prop_map(Op::StealList),
        3 => any::<usize>().prop_map(Op::PushWord),
        3 => Just(Op::PopWord),
        2 => prop::collection::vec(any::<usize>(), 0..6).prop_map(Op::PushWords),
        2 => (0usize..6).prop_map(Op::PopWords),
        1 => (0usize..3).prop_map(Op::StopStack),
        1 => (0usize..3).prop_map(Op::RestartStack),
        3 => prop::collection::vec(any::<u8>(), 0..13).prop_map(Op::PushCopy),
        3 => (0usize..13).prop_map(Op::PopCopy),
        1 => (0usize..6).prop_map(Op::FenceCpu),
        1 => Just(Op::FenceAll),
    ]
}

/// Steps per sequence (fewer under Miri, which interprets every check).
const MAX_OPS: usize = if cfg!(miri) { 48 } else { 200 };

fn config() -> ProptestConfig {
    ProptestConfig {
        // Miri interprets every step (each case takes most of a minute there): two random
        // sequences, while `fuzz_decoder_accepts_any_bytes` runs every op kind under Miri
        // deterministically.
        cases: if cfg!(miri) { 2 } else { 256 },
        // Miri isolates the file system; failures are reported with the minimal sequence.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn simulated_primitives_follow_the_model(ops in prop::collection::vec(op(), 0..MAX_OPS)) {
        Harness::run(&ops);
    }
}

/// The decoder the fuzz target uses turns any bytes into a valid sequence, and every op
/// kind can come out of it.
#[test]
fn fuzz_decoder_accepts_any_bytes() {
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    // Under Miri, a prefix (every kind runs there in `every_op_kind_follows_the_model`).
    let bytes = if cfg!(miri) { &bytes[..96] } else { &bytes[..] };
    let ops = model::op::decode(bytes);
    if !cfg!(miri) {
        let kinds: std::collections::HashSet<_> = ops.iter().map(std::mem::discriminant).collect();
        assert_eq!(kinds.len(), model::op::KINDS, "some op kind never decoded");
    }
    Harness::run(&ops);
}

/// Every op kind, each where it completes and where it declines (full, empty, stopped, no
/// CPU, past the arrays, aborted): the random sequences are few under Miri, and this is
/// how every kind runs there.
#[test]
fn every_op_kind_follows_the_model() {
    use Op::*;
    Harness::run(&[
        SetCpu(Some(1)),
        Add(3),
        CompareAndStore {
            kind: WordKind::U64,
            expected: 0,
            new: 2,
        },
        CompareAndStore {
            kind: WordKind::Usize,
            expected: 1,
            new: 3,
        },
        CompareAndStore {
            kind: WordKind::Ptr,
            expected: 0,
            new: 1,
        },
        PushLinked(0),
        PushLinked(1),
        PopLinked,
        LockList(1),
        PushLinked(2),
        UnlockList(1),
        StealList(1),
        PopLinked,
        PushWord(5),
        PushWords(vec![6, 7]),
        PopWord,
        PushWords(vec![8, 9, 10]),
        PopWords(2),
        PopWords(1),
        PushWords(vec![1, 2, 3, 4]),
        StopStack(1),
        PushWords(vec![5]),
        PopWords(1),
        PopWord,
        RestartStack(1),
        PopWords(3),
        PushWord(9),
        PopWords(2),
        PushCopy(vec![1, 2, 3]),
        PopCopy(2),
        PopCopy(5),
        AbortNext(1),
        PushWords(vec![11]),
        AbortOneIn(3),
        PushWords(vec![12, 13]),
        PopWords(1),
        PopWord,
        AbortOneIn(0),
        FenceCpu(1),
        FenceAll,
        SetCpu(Some(3)),
        PushWords(vec![1]),
        SetCpu(Some(4)),
        PopWords(1),
        SetCpu(None),
        PushWords(vec![2]),
        PopWords(0),
    ]);
}

/// Each kind of check can fail: an injected abort shows as `Aborted` and commits nothing.
#[test]
fn an_injected_abort_commits_nothing() {
    Harness::run(&[
        Op::Add(5),
        Op::AbortNext(1),
        Op::Add(7),
        Op::PushWord(9),
        Op::AbortNext(2),
        Op::PushLinked(0),
        Op::PopWord,
        Op::PopWord,
        Op::SetCpu(Some(3)),
        Op::Add(1),
        Op::SetCpu(None),
        Op::PushCopy(vec![1, 2, 3]),
    ]);
}
