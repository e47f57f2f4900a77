//! Property tests: random operation sequences against a plain-integer model, on the
//! simulated backend with injected CPU ids (including "no CPU") and injected aborts.

use percpu_counter::{CounterSet, PerCpuArena, PerCpuCounter};
use proptest::prelude::*;
use rseq_sys::simulation::{abort_next, set_cpu};
use rseq_sys::Simulated;

const CPUS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Move to this CPU (`None`: no CPU), with this many aborts before the next operation.
    Migrate(Option<usize>, u32),
    Add(i64),
    Sub(i64),
    Inc,
    Sum,
    Take,
    Reset,
    RaiseTo(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // CPU ids past the machine's are "no CPU" too: the backend must say so.
        (proptest::option::of(0..CPUS + 1), 0u32..4)
            .prop_map(|(cpu, aborts)| Op::Migrate(cpu, aborts)),
        any::<i64>().prop_map(Op::Add),
        (-1000i64..1000).prop_map(Op::Add),
        any::<i64>().prop_map(Op::Sub),
        Just(Op::Inc),
        Just(Op::Sum),
        Just(Op::Take),
        Just(Op::Reset),
        any::<u64>().prop_map(Op::RaiseTo),
    ]
}

/// Longest operation sequence: Miri interprets every step (and the arena test checks every
/// counter after each), so sequences there are short.
const MAX_OPS: usize = if cfg!(miri) { 16 } else { 64 };

fn cases() -> u32 {
    if cfg!(miri) {
        4
    } else {
        256
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn counter_matches_the_model(ops in proptest::collection::vec(op(), 0..MAX_OPS)) {
        let counter = PerCpuCounter::with_backend(Simulated::new(CPUS));
        let mut model: i64 = 0;
        set_cpu(None);
        for op in ops {
            match op {
                Op::Migrate(cpu, aborts) => {
                    set_cpu(cpu);
                    abort_next(aborts);
                }
                Op::Add(v) => {
                    counter.add(v);
                    model = model.wrapping_add(v);
                }
                Op::Sub(v) => {
                    counter.sub(v);
                    model = model.wrapping_sub(v);
                }
                Op::Inc => {
                    counter.inc();
                    model = model.wrapping_add(1);
                }
                Op::Sum => prop_assert_eq!(counter.sum(), model),
                Op::Take => {
                    prop_assert_eq!(counter.take(), model);
                    model = 0;
                }
                Op::Reset => {
                    counter.reset();
                    model = 0;
                }
                Op::RaiseTo(v) => {
                    counter.raise_to(v);
                    if (model as u64) < v {
                        model = v as i64;
                    }
                }
            }
            prop_assert_eq!(counter.sum_u64(), model as u64);
        }
        abort_next(0);
        set_cpu(None);
    }

    #[test]
    fn set_matches_the_model(
        ops in proptest::collection::vec((op(), 0usize..5), 0..MAX_OPS),
    ) {
        let set: CounterSet<5, _> = CounterSet::with_backend(Simulated::new(CPUS));
        let mut model = [0i64; 5];
        set_cpu(None);
        for (op, index) in ops {
            match op {
                Op::Migrate(cpu, aborts) => {
                    set_cpu(cpu);
                    abort_next(aborts);
                }
                Op::Add(v) => {
                    set.add(index, v);
                    model[index] = model[index].wrapping_add(v);
                }
                Op::Sub(v) => {
                    set.sub(index, v);
                    model[index] = model[index].wrapping_sub(v);
                }
                Op::Inc => {
                    set.inc(index);
                    model[index] = model[index].wrapping_add(1);
                }
                Op::Sum => prop_assert_eq!(set.sum(index), model[index]),
                Op::Take => {
                    prop_assert_eq!(set.take(index), model[index]);
                    model[index] = 0;
                }
                Op::Reset => {
                    prop_assert_eq!(set.take_all(), model);
                    model = [0; 5];
                }
                Op::RaiseTo(_) => {}
            }
            prop_assert_eq!(set.snapshot(), model);
        }
        abort_next(0);
        set_cpu(None);
    }

    #[test]
    fn arena_counters_match_the_model(
        ops in proptest::collection::vec((op(), 0usize..24, any::<bool>()), 0..MAX_OPS * 3 / 2),
    ) {
        let arena = PerCpuArena::with_backend(Simulated::new(CPUS));
        // Up to 24 handles; `replace` drops one and takes a (possibly recycled) new one.
        let mut counters: Vec<_> = (0..24).map(|_| arena.counter()).collect();
        let mut model = [0i64; 24];
        set_cpu(None);
        for (op, index, replace) in ops {
            if replace {
                counters[index] = arena.counter();
                model[index] = 0;
            }
            let counter = &counters[index];
            match op {
                Op::Migrate(cpu, aborts) => {
                    set_cpu(cpu);
                    abort_next(aborts);
                }
                Op::Add(v) => {
                    counter.add(v);
                    model[index] = model[index].wrapping_add(v);
                }
                Op::Sub(v) => {
                    counter.sub(v);
                    model[index] = model[index].wrapping_sub(v);
                }
                Op::Inc => {
                    counter.inc();
                    model[index] = model[index].wrapping_add(1);
                }
                Op::Sum => {}
                Op::Take => {
                    prop_assert_eq!(counter.take(), model[index]);
                    model[index] = 0;
                }
                Op::Reset => {
                    counter.reset();
                    model[index] = 0;
                }
                Op::RaiseTo(v) => {
                    counter.raise_to(v);
                    if (model[index] as u64) < v {
                        model[index] = v as i64;
                    }
                }
            }
            for (counter, &expected) in counters.iter().zip(&model) {
                prop_assert_eq!(counter.sum(), expected);
            }
            prop_assert_eq!(arena.len(), 24);
        }
        abort_next(0);
        set_cpu(None);
    }
}
