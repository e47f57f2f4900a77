//! Stress in the manner of the kernel's rseq selftests (param_test.c): many more threads than
//! CPUs increment per-CPU counters while a disturber signals every worker about every 100 µs
//! and moves workers between CPUs, and a reader keeps taking the value out. The amounts taken
//! plus what remains must equal exactly what the workers added.
//!
//! Each test runs in this process's registration mode; `every_registration_mode` re-runs them
//! in child processes with glibc's registration, with self-registration
//! (`GLIBC_TUNABLES=glibc.pthread.rseq=0`) and with rseq disabled (`PERCPU_NO_RSEQ=1`).

use percpu_counter::{CounterSet, LocalCounter, PerCpuArena, PerCpuCounter};
use rseq_sys::testing::Disturber;
use rseq_sys::{Backend, Owner, Rseq};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_micros(100);
const THREADS: usize = 16;
const RUN_FOR: Duration = Duration::from_millis(400);

/// Runs `THREADS` workers calling `work(thread, step)` (which returns what it added) until
/// `RUN_FOR` passes, while `reader()` runs in a loop (returning what it took). Returns
/// (added, taken).
fn hammer(work: impl Fn(usize, u64) -> i64 + Sync, reader: impl Fn() -> i64 + Sync) -> (i64, i64) {
    let disturber = Disturber::start(PERIOD);
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + RUN_FOR;
    let (added, taken) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut taken = 0i64;
            while !stop.load(Ordering::Relaxed) {
                taken = taken.wrapping_add(reader());
                std::thread::sleep(Duration::from_micros(50));
            }
            taken
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (disturber, work) = (&disturber, &work);
                s.spawn(move || {
                    disturber.enlist();
                    let mut added = 0i64;
                    let mut step = 0u64;
                    while !step.is_multiple_of(256) || disturber.keeps_working(deadline) {
                        added = added.wrapping_add(work(thread, step));
                        step += 1;
                    }
                    disturber.retire();
                    added
                })
            })
            .collect();
        let added = workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .fold(0i64, i64::wrapping_add);
        stop.store(true, Ordering::Relaxed);
        (added, reader.join().expect("reader panicked"))
    });
    let disturbed = disturber.stop();
    assert!(disturbed.signals > 0, "the disturber must have run");
    eprintln!(
        "owner {}: {} signals, {} migrations",
        rseq_sys::owner(),
        disturbed.signals,
        disturbed.migrations
    );
    (added, taken)
}

/// A signed value that varies with the thread and step, so sums test more than counting.
fn value(thread: usize, step: u64) -> i64 {
    (step as i64 % 7 - 3) * (thread as i64 + 1)
}

fn counter_on(backend: Rseq) {
    let counter = PerCpuCounter::with_backend(backend);
    let (added, taken) = hammer(
        |thread, step| {
            if step % 2 == 0 {
                counter.inc();
                1
            } else {
                let v = value(thread, step);
                counter.add(v);
                v
            }
        },
        || counter.take(),
    );
    assert_eq!(taken.wrapping_add(counter.sum()), added, "{backend:?}");
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn counter_is_exact_by_cpu_id() {
    counter_on(Rseq::CPU_ID);
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn counter_is_exact_by_concurrency_id() {
    counter_on(Rseq::CONCURRENCY_ID);
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn static_counter_is_exact() {
    static COUNTER: PerCpuCounter = PerCpuCounter::new();
    let (added, taken) = hammer(
        |thread, step| {
            let v = value(thread, step);
            COUNTER.sub(v);
            v.wrapping_neg()
        },
        || COUNTER.take(),
    );
    assert_eq!(taken.wrapping_add(COUNTER.sum()), added);
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn local_handles_are_exact() {
    static COUNTER: PerCpuCounter = PerCpuCounter::new();
    thread_local! {
        // Each worker resolves its handle once, on its first step, and keeps it while the
        // disturber moves it between CPUs and interrupts it.
        static HANDLE: LocalCounter<'static> = COUNTER.local();
    }
    let (added, taken) = hammer(
        |thread, step| {
            let v = value(thread, step);
            HANDLE.with(|handle| match step % 3 {
                0 => {
                    handle.inc();
                    1
                }
                1 => {
                    handle.sub(v);
                    v.wrapping_neg()
                }
                _ => {
                    handle.add(v);
                    v
                }
            })
        },
        || COUNTER.take(),
    );
    assert_eq!(taken.wrapping_add(COUNTER.sum()), added);
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn set_is_exact() {
    let set: CounterSet<3> = CounterSet::new();
    let (added, taken) = hammer(
        |thread, step| {
            let v = value(thread, step);
            set.add(thread % 3, v);
            set.inc((thread + 1) % 3);
            v + 1
        },
        || set.take_all().iter().fold(0i64, |a, &b| a.wrapping_add(b)),
    );
    let remaining = set.snapshot().iter().fold(0i64, |a, &b| a.wrapping_add(b));
    assert_eq!(taken.wrapping_add(remaining), added);
}

#[test]
#[cfg_attr(miri, ignore = "needs signals and affinity syscalls")]
fn arena_counters_are_exact() {
    let arena = PerCpuArena::new();
    let counters: Vec<_> = (0..100).map(|_| arena.counter()).collect();
    let (added, taken) = hammer(
        |thread, step| {
            let v = value(thread, step);
            counters[(thread * 7 + step as usize) % counters.len()].add(v);
            v
        },
        || {
            counters
                .iter()
                .step_by(3)
                .map(|c| c.take())
                .fold(0, i64::wrapping_add)
        },
    );
    let remaining = counters.iter().map(|c| c.sum()).fold(0, i64::wrapping_add);
    assert_eq!(taken.wrapping_add(remaining), added);
}

/// The tests `every_registration_mode` runs in each child process.
const CHILD_TESTS: [&str; 7] = [
    "child_reports_its_owner",
    "counter_is_exact_by_cpu_id",
    "counter_is_exact_by_concurrency_id",
    "set_is_exact",
    "arena_counters_are_exact",
    "static_counter_is_exact",
    "local_handles_are_exact",
];

/// Set in a child process started by `every_registration_mode`.
const CHILD: &str = "PERCPU_COUNTER_STRESS_CHILD";

#[test]
#[cfg_attr(miri, ignore = "starts processes")]
fn every_registration_mode() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let modes: [(&str, &[(&str, &str)]); 3] = [
        ("glibc", &[]),
        ("self", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]),
        ("disabled", &[("PERCPU_NO_RSEQ", "1")]),
    ];
    for (name, env) in modes {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .env(CHILD, name)
            .env_remove("GLIBC_TUNABLES")
            .env_remove("PERCPU_NO_RSEQ")
            .args(["--test-threads=1", "--nocapture"])
            .args(["--exact"])
            .args(CHILD_TESTS);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "mode {name} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("{} passed", CHILD_TESTS.len())),
            "mode {name} did not run every stress test:\n{stdout}"
        );
        let owner = stderr
            .lines()
            .find_map(|line| line.strip_prefix("child owner: "))
            .unwrap_or_else(|| panic!("mode {name}: no owner line in\n{stderr}"));
        eprintln!("mode {name}: owner {owner}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "starts processes")]
fn child_reports_its_owner() {
    let owner = rseq_sys::owner();
    eprintln!("child owner: {owner}");
    let expected = match std::env::var(CHILD).as_deref() {
        Ok("glibc") => owner == Owner::Glibc,
        Ok("self") => owner == Owner::SelfRegistered,
        Ok("disabled") => matches!(owner, Owner::Unavailable(_)),
        _ => true,
    };
    assert!(
        expected,
        "child {:?} runs with owner {owner}",
        std::env::var(CHILD)
    );
    if matches!(owner, Owner::Unavailable(_)) {
        assert_eq!(Rseq::CPU_ID.current_cpu(), None);
    }
}
