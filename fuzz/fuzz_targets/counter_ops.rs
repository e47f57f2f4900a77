//! Operation sequences on every percpu-counter type, on the simulated backend with injected
//! CPU ids (including none and ids past the machine) and aborts, checked against a model.
//! The real `Rseq` backend runs them too (its CPU is whatever this thread is on).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percpu_counter::{ArenaCounter, CounterSet, PerCpuArena, PerCpuCounter};
use rseq_sys::simulation::{abort_next, set_cpu};
use rseq_sys::Simulated;

const SET: usize = 4;
const HANDLES: usize = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    Migrate { cpu: Option<u8>, aborts: u8 },
    Add { target: u8, value: i64 },
    Sub { target: u8, value: i64 },
    Inc { target: u8 },
    Take { target: u8 },
    Reset { target: u8 },
    RaiseTo { target: u8, value: u64 },
    TakeAll,
    Replace { handle: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    cpus: u8,
    ops: Vec<Op>,
}

/// Which counter an operation names: 0 the lone counter, 1 the real-rseq counter,
/// 2..2+SET the set's, then the arena handles.
const TARGETS: usize = 2 + SET + HANDLES;

/// Add `value` to counter `target` (numbered as [`TARGETS`] describes).
fn apply(
    target: usize,
    value: i64,
    lone: &PerCpuCounter<Simulated>,
    real: &PerCpuCounter,
    set: &CounterSet<SET, Simulated>,
    handles: &[ArenaCounter<Simulated>],
) {
    match target {
        0 => lone.add(value),
        1 => real.add(value),
        t if t < 2 + SET => set.add(t - 2, value),
        t => handles[t - 2 - SET].add(value),
    }
}

fuzz_target!(|input: Input| {
    let cpus = usize::from(input.cpus % 9);
    let backend = Simulated::new(cpus);
    let lone = PerCpuCounter::with_backend(backend.clone());
    let real = PerCpuCounter::new();
    let set: CounterSet<SET, Simulated> = CounterSet::with_backend(backend.clone());
    let arena = PerCpuArena::with_backend(backend);
    let mut handles: Vec<_> = (0..HANDLES).map(|_| arena.counter()).collect();
    let mut model = [0i64; TARGETS];
    set_cpu(None);

    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Migrate { cpu, aborts } => {
                set_cpu(cpu.map(usize::from));
                abort_next(u32::from(aborts % 8));
            }
            Op::Add { target, value } => {
                let t = usize::from(target) % TARGETS;
                apply(t, value, &lone, &real, &set, &handles);
                model[t] = model[t].wrapping_add(value);
            }
            Op::Sub { target, value } => {
                let t = usize::from(target) % TARGETS;
                apply(t, value.wrapping_neg(), &lone, &real, &set, &handles);
                model[t] = model[t].wrapping_sub(value);
            }
            Op::Inc { target } => {
                let t = usize::from(target) % TARGETS;
                apply(t, 1, &lone, &real, &set, &handles);
                model[t] = model[t].wrapping_add(1);
            }
            Op::Take { target } => {
                let t = usize::from(target) % TARGETS;
                let taken = match t {
                    0 => lone.take(),
                    1 => real.take(),
                    t if t < 2 + SET => set.take(t - 2),
                    t => handles[t - 2 - SET].take(),
                };
                assert_eq!(taken, model[t]);
                model[t] = 0;
            }
            Op::Reset { target } => {
                let t = usize::from(target) % TARGETS;
                match t {
                    0 => lone.reset(),
                    1 => real.reset(),
                    t if t < 2 + SET => {
                        set.take(t - 2);
                    }
                    t => handles[t - 2 - SET].reset(),
                }
                model[t] = 0;
            }
            Op::RaiseTo { target, value } => {
                let t = usize::from(target) % TARGETS;
                // Sets have no raise: for them nothing happens and the model is unchanged.
                let raisable = match t {
                    0 => {
                        lone.raise_to(value);
                        true
                    }
                    1 => {
                        real.raise_to(value);
                        true
                    }
                    t if t < 2 + SET => false,
                    t => {
                        handles[t - 2 - SET].raise_to(value);
                        true
                    }
                };
                if raisable && (model[t] as u64) < value {
                    model[t] = value as i64;
                }
            }
            Op::TakeAll => {
                let taken = set.take_all();
                assert_eq!(taken[..], model[2..2 + SET]);
                model[2..2 + SET].fill(0);
            }
            Op::Replace { handle } => {
                let h = usize::from(handle) % HANDLES;
                handles[h] = arena.counter();
                model[2 + SET + h] = 0;
            }
        }
        assert_eq!(lone.sum(), model[0]);
        assert_eq!(real.sum(), model[1]);
        assert_eq!(set.snapshot()[..], model[2..2 + SET]);
        for (h, counter) in handles.iter().enumerate() {
            assert_eq!(counter.sum(), model[2 + SET + h]);
        }
        assert_eq!(arena.len(), HANDLES);
    }
    abort_next(0);
    set_cpu(None);
});
