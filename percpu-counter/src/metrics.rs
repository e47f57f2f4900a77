//! `metrics::CounterFn` for the per-CPU counters (feature `metrics`), so a metrics-rs
//! recorder can hand out counters whose increments stay on the CPU:
//! `metrics::Counter::from_arc(Arc::new(PerCpuCounter::new()))`.

use crate::{ArenaCounter, PerCpuCounter};
use rseq_sys::Backend;

impl<B: Backend> metrics::CounterFn for PerCpuCounter<B> {
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value as i64);
    }

    /// metrics-rs asks for "at least `value`": see [`PerCpuCounter::raise_to`].
    fn absolute(&self, value: u64) {
        self.raise_to(value);
    }
}

impl<B: Backend> metrics::CounterFn for ArenaCounter<B> {
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value as i64);
    }

    /// metrics-rs asks for "at least `value`": see [`ArenaCounter::raise_to`].
    fn absolute(&self, value: u64) {
        self.raise_to(value);
    }
}
