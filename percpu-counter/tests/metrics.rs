//! A metrics-rs recorder that keeps its counters per CPU, through `metrics::CounterFn`
//! (feature `metrics`).
#![cfg(feature = "metrics")]

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use percpu_counter::{ArenaCounter, PerCpuArena, PerCpuCounter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counters named by key: lone per-CPU counters, or arena counters when `arena` is set.
#[derive(Default)]
struct PerCpuRecorder {
    lone: Mutex<HashMap<String, Arc<PerCpuCounter>>>,
    arena: Option<PerCpuArena>,
    in_arena: Mutex<HashMap<String, Arc<ArenaCounter>>>,
}

impl Recorder for PerCpuRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = key.name().to_string();
        match &self.arena {
            Some(arena) => {
                let counter = Arc::clone(
                    self.in_arena
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(|| Arc::new(arena.counter())),
                );
                Counter::from_arc(counter)
            }
            None => {
                let counter = Arc::clone(self.lone.lock().unwrap().entry(name).or_default());
                Counter::from_arc(counter)
            }
        }
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn a_metrics_counter_increments_a_per_cpu_counter() {
    let recorder = PerCpuRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("requests").increment(3);
        metrics::counter!("requests").increment(4);
        metrics::counter!("errors").increment(1);
    });
    let lone = recorder.lone.lock().unwrap();
    assert_eq!(lone["requests"].sum(), 7);
    assert_eq!(lone["errors"].sum(), 1);
}

#[test]
fn absolute_raises_but_never_lowers() {
    let recorder = PerCpuRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let counter = metrics::counter!("bytes");
        counter.increment(10);
        counter.absolute(4);
        counter.absolute(25);
    });
    assert_eq!(recorder.lone.lock().unwrap()["bytes"].sum(), 25);
}

#[test]
fn a_metrics_counter_increments_an_arena_counter_from_many_threads() {
    let recorder = PerCpuRecorder {
        arena: Some(PerCpuArena::new()),
        ..PerCpuRecorder::default()
    };
    let counter = metrics::with_local_recorder(&recorder, || metrics::counter!("hits"));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| (0..250).for_each(|_| counter.increment(1)));
        }
    });
    assert_eq!(recorder.in_arena.lock().unwrap()["hits"].sum(), 1000);
}
