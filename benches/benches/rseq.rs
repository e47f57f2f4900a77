//! rseq-sys's per-CPU add (looked up per operation, through a resolved backend, and pinned to
//! the thread's section once) against `AtomicU64::fetch_add(Relaxed)` and against a
//! hand-written C rseq add, at 1, 2 and 8 threads; and the cost of the CPU-id lookup alone.
//!
//! Figures are per operation of aggregate throughput (see `percpu_benches::contended`). Each
//! thread's slot view and value (opaque to the optimiser) are its own state, made before the
//! clock starts, as the C loop gets them as arguments: read through a shared closure
//! instead, they would be reloaded after every critical section (the asm may write any
//! memory the compiler cannot prove private), which the C loop never does.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_utils::CachePadded;
use rseq_sys::{Backend, Outcome, Rseq, SlotArray};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use support::bench_contended;

const THREADS: [usize; 3] = [1, 2, 8];

/// One slot per CPU, each on its own cache line, plus the fallback counter.
struct PerCpuSlots {
    slots: Vec<CachePadded<AtomicU64>>,
    fallback: CachePadded<AtomicU64>,
}

impl PerCpuSlots {
    fn new() -> Self {
        let slots = (0..Rseq::CPU_ID.slot_count())
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect();
        PerCpuSlots {
            slots,
            fallback: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// The slots as a `SlotArray`, built once per benchmark (projection checks every slot).
    fn view(&self) -> SlotArray<'_, AtomicU64> {
        SlotArray::project(&self.slots, |s| &**s)
    }

    /// An add through `rseq`: [`Rseq::CPU_ID`] itself (the area looked up on every call) or
    /// a [`Rseq::resolved`] copy that carries its section (no lookup of rseq-sys's statics
    /// in front of the section).
    #[inline(always)]
    fn add(&self, rseq: Rseq, slots: SlotArray<'_, AtomicU64>, value: u64) {
        loop {
            match rseq.add(slots, value) {
                Outcome::Completed { .. } => return,
                Outcome::Aborted => continue,
                Outcome::NoCpu => {
                    self.fallback.fetch_add(value, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

impl PerCpuSlots {
    /// The same add with the thread's section found once, before the loop.
    #[inline(always)]
    fn add_pinned(
        &self,
        slots: SlotArray<'_, AtomicU64>,
        pinned: Option<&rseq_sys::PinnedRseq>,
        value: u64,
    ) {
        if let Some(pinned) = pinned {
            loop {
                match pinned.add(slots, value) {
                    Outcome::Completed { .. } => return,
                    Outcome::Aborted => continue,
                    Outcome::NoCpu => break,
                }
            }
        }
        self.fallback.fetch_add(value, Ordering::Relaxed);
    }
}

#[cfg(c_reference)]
use percpu_benches::c_reference;

fn add(c: &mut Criterion) {
    let mut group = c.benchmark_group("rseq/add");
    for threads in THREADS {
        let slots = PerCpuSlots::new();
        let view = slots.view();
        bench_contended(
            &mut group,
            BenchmarkId::new("rseq-sys", threads),
            threads,
            |_| (view, black_box(1)),
            |&mut (view, one)| slots.add(Rseq::CPU_ID, view, one),
        );
        let resolved_slots = PerCpuSlots::new();
        let resolved_view = resolved_slots.view();
        bench_contended(
            &mut group,
            BenchmarkId::new("rseq-sys resolved", threads),
            threads,
            |_| (Rseq::CPU_ID.resolved(), resolved_view, black_box(1)),
            |&mut (rseq, view, one)| resolved_slots.add(rseq, view, one),
        );
        let pinned_slots = PerCpuSlots::new();
        let pinned_view = pinned_slots.view();
        bench_contended(
            &mut group,
            BenchmarkId::new("rseq-sys pinned", threads),
            threads,
            |_| (Rseq::CPU_ID.pin(), pinned_view, black_box(1)),
            |&mut (pinned, view, one)| pinned_slots.add_pinned(view, pinned.as_ref(), one),
        );
        let atomic = CachePadded::new(AtomicU64::new(0));
        bench_contended(
            &mut group,
            BenchmarkId::new("AtomicU64::fetch_add", threads),
            threads,
            |_| black_box(1),
            |&mut one| {
                atomic.fetch_add(one, Ordering::Relaxed);
            },
        );
        #[cfg(c_reference)]
        {
            let c_slots = c_reference::Slots::new();
            group.bench_with_input(
                BenchmarkId::new("hand-written C rseq", threads),
                &threads,
                |b, &threads| b.iter_custom(|iters| c_slots.run(threads, iters) / threads as u32),
            );
        }
    }
    group.finish();
}

fn cpu_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("rseq/cpu-lookup");
    group.bench_function("Rseq::current_cpu", |b| {
        b.iter(|| black_box(Rseq::CPU_ID.current_cpu()))
    });
    group.bench_function("sched_getcpu", |b| {
        // SAFETY: sched_getcpu has no preconditions.
        b.iter(|| black_box(unsafe { libc_sched_getcpu() }))
    });
    group.finish();
}

extern "C" {
    #[link_name = "sched_getcpu"]
    fn libc_sched_getcpu() -> i32;
}

criterion_group!(benches, add, cpu_lookup);
criterion_main!(benches);
