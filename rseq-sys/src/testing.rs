//! Disturbance for stress tests, in the manner of the kernel's rseq selftests
//! (`tools/testing/selftests/rseq/param_test.c`): while worker threads hammer a per-CPU
//! structure, a disturber thread signals every worker about every 100 µs and moves workers
//! between CPUs by changing their affinity. Both make critical sections abort, which is the
//! path ordinary tests never reach.
//!
//! Only for tests (feature `testing`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counts of what the disturber did, to show it ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Disturbed {
    /// Signals delivered to workers.
    pub signals: u64,
    /// Affinity changes applied to workers.
    pub migrations: u64,
}

struct Shared {
    workers: Mutex<Vec<i32>>,
    stop: AtomicBool,
    signals: AtomicU64,
    migrations: AtomicU64,
}

/// A running disturber. Workers call [`Disturber::enlist`] on their own thread; dropping or
/// [`Disturber::stop`]ping ends it.
pub struct Disturber {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

static HANDLER_SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic increment.
    HANDLER_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// The signal the disturber sends (its handler only counts).
pub const SIGNAL: libc::c_int = libc::SIGUSR1;

fn install_handler() {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)` that only
    // does an atomic increment (async-signal-safe); SA_RESTART keeps interrupted syscalls
    // in the test harness going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(SIGNAL, &action, std::ptr::null_mut()),
            0,
            "sigaction failed"
        );
    }
}

fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn set_affinity(tid: i32, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain bits; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` is below CPU_SETSIZE (checked by the caller's range).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the size and pointer describe `set`; a vanished tid fails with ESRCH.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) == 0 }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `set_affinity`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size and pointer describe `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return vec![0];
    }
    // SAFETY: `i` is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

impl Disturber {
    /// Start disturbing every `period` (about 100 µs in the selftests).
    pub fn start(period: Duration) -> Disturber {
        install_handler();
        let shared = Arc::new(Shared {
            workers: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            signals: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
        });
        let cpus = allowed_cpus();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                // SAFETY: getpid has no preconditions.
                let pid = unsafe { libc::getpid() };
                let mut round = 0usize;
                while !shared.stop.load(Ordering::Relaxed) {
                    let workers = shared.workers.lock().expect("disturber lock").clone();
                    for (i, &tid) in workers.iter().enumerate() {
                        // SAFETY: tgkill to a thread of this process with a signal whose
                        // handler is installed; a tid that has exited fails with ESRCH.
                        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, SIGNAL) } == 0 {
                            shared.signals.fetch_add(1, Ordering::Relaxed);
                        }
                        // Every few rounds, pin each worker to one CPU, rotating, then free it.
                        if round.is_multiple_of(4) && cpus.len() > 1 {
                            let mask = if (round / 4 + i) % 3 == 2 {
                                cpus.clone()
                            } else {
                                vec![cpus[(round / 4 + i) % cpus.len()]]
                            };
                            if set_affinity(tid, &mask) {
                                shared.migrations.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    round += 1;
                    std::thread::sleep(period);
                }
                // Leave every surviving worker free to run anywhere.
                for &tid in shared.workers.lock().expect("disturber lock").iter() {
                    set_affinity(tid, &cpus);
                }
            })
        };
        Disturber {
            shared,
            thread: Some(thread),
        }
    }

    /// Register the calling thread as a worker to disturb. Call [`Disturber::retire`] before
    /// the thread exits.
    pub fn enlist(&self) {
        self.shared
            .workers
            .lock()
            .expect("disturber lock")
            .push(current_tid());
    }

    /// Stop disturbing the calling thread, once the disturber has signalled some worker: a
    /// worker bounded by a count of operations can otherwise finish before the disturber
    /// first runs (in fallback mode a whole stress test takes a few milliseconds on two
    /// CPUs), and a run that was never disturbed tests nothing. Waits at most
    /// [`Disturber::GRACE`], so that a broken disturber fails the test's own check instead
    /// of hanging it.
    pub fn retire(&self) {
        let give_up = Instant::now() + Self::GRACE;
        while self.signals_sent() == 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        let tid = current_tid();
        self.shared
            .workers
            .lock()
            .expect("disturber lock")
            .retain(|&t| t != tid);
    }

    /// Signals delivered so far.
    pub fn signals_sent(&self) -> u64 {
        self.shared.signals.load(Ordering::Relaxed)
    }

    /// Whether a worker bounded by time should go on: until `deadline`, and after it until
    /// the disturber has signalled someone. A scheduler that runs one thread at a time
    /// (valgrind's) can keep the disturber off the CPU for a whole short run, and a run that
    /// was never disturbed tests nothing. Gives up [`Disturber::GRACE`] after the deadline so
    /// that a broken disturber fails the test's own check instead of hanging it.
    pub fn keeps_working(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now < deadline {
            return true;
        }
        if self.signals_sent() > 0 || now >= deadline + Self::GRACE {
            return false;
        }
        // Overtime exists only to let the disturber run: step aside so that a scheduler
        // which favours running threads over waking ones (valgrind's default) lets it in.
        std::thread::sleep(Duration::from_millis(1));
        true
    }

    /// How long past its deadline [`Disturber::keeps_working`] waits for a first signal.
    pub const GRACE: Duration = Duration::from_secs(60);

    /// Stop and report what was done.
    pub fn stop(mut self) -> Disturbed {
        self.finish()
    }

    fn finish(&mut self) -> Disturbed {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("disturber thread panicked");
        }
        Disturbed {
            signals: self.shared.signals.load(Ordering::Relaxed),
            migrations: self.shared.migrations.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Disturber {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Signals handled so far in this process (all disturbers).
pub fn signals_handled() -> u64 {
    HANDLER_SIGNALS.load(Ordering::Relaxed)
}

/// `n` scaled by `PERCPU_STRESS_SCALE`, rounded up: the iteration count for a stress test
/// whose work is a count rather than a duration.
///
/// The variable is a number in (0, 1] (default 1). Tools that run threads many times slower
/// (valgrind, the sanitizers) set it, so a test keeps its thread counts, and with them its
/// interleavings, while doing less work per thread.
///
/// # Panics
///
/// If the variable is set to anything but a number in (0, 1]: a typo must not quietly run a
/// test at full size, or at none.
pub fn stress_scaled(n: u64) -> u64 {
    let scale = match std::env::var("PERCPU_STRESS_SCALE") {
        Ok(value) => value
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && *s <= 1.0)
            .unwrap_or_else(|| panic!("PERCPU_STRESS_SCALE={value}: want a number in (0, 1]")),
        Err(_) => 1.0,
    };
    (n as f64 * scale).ceil() as u64
}
