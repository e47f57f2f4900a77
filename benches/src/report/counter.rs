//! The counter table: `PerCpuCounter` against the designs in [`crate::counters`].

use super::measure::{Contender, Run, Settings, TableSpec};
use crate::counters::{AtomicCounter, StatCounter, StripedCounter, ThreadLocalCounter};
use crate::run_threads;
use percpu_counter::PerCpuCounter;
use std::hint::black_box;
use std::time::Duration;

const BASELINE: &str = "AtomicU64::fetch_add";

/// Run `adds` (each of `threads` threads adding 1 `ops` times; it returns the wall time) and
/// check that `total` (the counter's value) grew by exactly every add, or the figure is of
/// something else and the report stops.
fn exact_adds(
    name: &str,
    threads: usize,
    ops: u64,
    total: impl Fn() -> u64,
    adds: impl FnOnce() -> Duration,
) -> Run {
    let before = total();
    let wall = adds();
    let expected = threads as u64 * ops;
    assert_eq!(total().wrapping_sub(before), expected, "{name} lost adds");
    Run {
        wall,
        ops: expected,
    }
}

/// Each thread adds 1 to one shared counter `ops` times (checked exact).
fn adds<C: StatCounter + 'static>(name: &str, counter: C) -> Contender<'static> {
    let name = name.to_string();
    Contender::new(name.clone(), move |threads, ops| {
        exact_adds(
            &name,
            threads,
            ops,
            || counter.sum(),
            || {
                // The 1 is opaque to the optimiser but read once per thread, as a caller's would.
                run_threads(threads, ops, |_| black_box(1), |&mut one| counter.add(one))
            },
        )
    })
}

/// `PerCpuCounter` through a per-thread `LocalCounter` handle made before the clock starts.
fn local_adds() -> Contender<'static> {
    let counter = PerCpuCounter::new();
    Contender::new("PerCpuCounter::local", move |threads, ops| {
        exact_adds(
            "LocalCounter",
            threads,
            ops,
            || counter.sum_u64(),
            || {
                run_threads(
                    threads,
                    ops,
                    |_| (counter.local(), black_box(1)),
                    |&mut (handle, one)| handle.add(one),
                )
            },
        )
    })
}

/// The hand-written C rseq add (`c/rseq_add.c`): each thread runs all its adds in one call
/// into C, so no Rust code runs per add. What the hardware gives a per-CPU add here, and so
/// the bound for every per-CPU design in the table.
#[cfg(c_reference)]
fn c_adds() -> Contender<'static> {
    let slots = crate::c_reference::Slots::new();
    Contender::new(C_REFERENCE, move |threads, ops| {
        exact_adds(
            "the C reference",
            threads,
            ops,
            || slots.total(),
            || slots.run(threads, ops),
        )
    })
}

#[cfg(c_reference)]
const C_REFERENCE: &str = "hand-written C rseq add";

/// The counter table.
pub fn tables(settings: &Settings) -> Vec<TableSpec<'static>> {
    vec![TableSpec {
        id: "counter-add",
        title: "counter: add 1 to one shared counter".into(),
        note: "op = one add; PerCpuCounter per call and through a per-thread \
               PerCpuCounter::local handle, a CachePadded AtomicU64, CachePadded atomic \
               stripes chosen per thread, a thread_local-crate accumulator, and (while glibc \
               owns rseq) the hand-written C rseq add looping in C, the hardware's bound for \
               a per-CPU add; totals checked exact after every run"
            .into(),
        baseline: BASELINE.into(),
        threads: settings.threads.clone(),
        contenders: contenders(),
        isolated: false,
        focus: None,
    }]
}

fn contenders() -> Vec<Contender<'static>> {
    #[allow(unused_mut)] // Only the C reference's cfg adds to it.
    let mut contenders = vec![
        adds("PerCpuCounter", PerCpuCounter::new()),
        local_adds(),
        adds(BASELINE, AtomicCounter::new()),
        adds("CachePadded striped", StripedCounter::new()),
        adds("thread_local accumulator", ThreadLocalCounter::new()),
    ];
    // The C loop uses glibc's registration; without it (self-registration, no rseq, or
    // PERCPU_NO_RSEQ, which only this crate reads) it would measure something else.
    #[cfg(c_reference)]
    if rseq_sys::owner() == rseq_sys::Owner::Glibc {
        contenders.push(c_adds());
    }
    contenders
}
