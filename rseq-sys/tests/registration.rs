//! Who owns registration, in fresh child processes: glibc by default, self-registration with
//! glibc's tunable off, unavailable with `PERCPU_NO_RSEQ=1`, and under seccomp filters that
//! make rseq(2) fail with ENOSYS or EPERM. Each child counts with per-CPU adds from several
//! threads and reports its totals, which must be exact whichever path it took.
//!
//! (Denying rseq to new threads while glibc owns registration is not tested: glibc >= 2.35
//! itself aborts the process with "Fatal glibc error: rseq registration failed".)
//!
//! Also, in-process: counted registrations and threads that use rseq while exiting. Use
//! before `main` is in its own test binary, so that nothing here decides the owner before a
//! child installs its seccomp filter.
// Child processes, seccomp and pthread keys: nothing Miri can run.
#![cfg(not(miri))]

use rseq_sys::sync::atomic::{AtomicU64, Ordering};
use rseq_sys::{Backend, Outcome, Owner, Reason, Registration, Rseq, SlotArray};
use std::collections::HashMap;
use std::process::Command;

const CHILD_ENV: &str = "RSEQ_SYS_TEST_CHILD";
const THREADS: u64 = 4;
const ADDS: u64 = 20_000;

/// Add 1 to this CPU's slot `n` times; returns how many adds fell back.
fn count(slots: &[AtomicU64], fallback: &AtomicU64, n: u64) -> u64 {
    let mut fell_back = 0;
    for _ in 0..n {
        loop {
            match Rseq::CPU_ID.add(SlotArray::from_slice(slots), 1) {
                Outcome::Completed { .. } => break,
                Outcome::Aborted => continue,
                Outcome::NoCpu => {
                    fallback.fetch_add(1, Ordering::Relaxed);
                    fell_back += 1;
                    break;
                }
            }
        }
    }
    fell_back
}

fn total(slots: &[AtomicU64], fallback: &AtomicU64) -> u64 {
    slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>() + fallback.load(Ordering::Relaxed)
}

/// Install a seccomp filter making rseq(2) fail with `errno` for this thread and the threads
/// it creates later.
fn deny_rseq(errno: i32) {
    let filter = [
        // Load the syscall number (offset 0 of struct seccomp_data).
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_rseq as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | errno as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with valid arguments; `program` and `filter` outlive the call (the kernel
    // copies the filter).
    unsafe {
        assert_eq!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            0,
            "PR_SET_NO_NEW_PRIVS"
        );
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog
            ),
            0,
            "PR_SET_SECCOMP"
        );
    }
}

/// The child side: runs only when re-executed by a parent test (hence ignored by default).
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    match scenario.as_str() {
        "seccomp-ENOSYS" => deny_rseq(libc::ENOSYS),
        "seccomp-EPERM" => deny_rseq(libc::EPERM),
        _ => {}
    }
    let slots: Vec<AtomicU64> = (0..rseq_sys::possible_cpus())
        .map(|_| AtomicU64::new(0))
        .collect();
    let fallback = AtomicU64::new(0);
    let fell_back: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| count(&slots, &fallback, ADDS)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    println!("owner={}", rseq_sys::owner());
    println!("total={}", total(&slots, &fallback));
    println!("expected={}", THREADS * ADDS);
    println!("fell_back={fell_back}");
    println!("registered={}", rseq_sys::is_registered());
}

fn run_child(scenario: &str, env: &[(&str, &str)]) -> HashMap<String, String> {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .args([
            "--ignored",
            "--exact",
            "child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, scenario)
        .env_remove("GLIBC_TUNABLES")
        .env_remove("PERCPU_NO_RSEQ");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child {scenario} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: HashMap<String, String> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        // The harness may print "test child_entry ... " before the first key.
        .map(|(k, v)| (k.rsplit(' ').next().unwrap_or(k).to_string(), v.to_string()))
        .collect();
    assert_eq!(
        report.get("total"),
        report.get("expected"),
        "child {scenario} lost or invented increments: {stdout}"
    );
    report
}

fn fell_back(report: &HashMap<String, String>) -> u64 {
    report["fell_back"].parse().unwrap()
}

/// Whether this glibc registers rseq itself (>= 2.35).
fn glibc_registers_rseq() -> bool {
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }
        .to_str()
        .unwrap()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 35)
}

extern "C" {
    fn gnu_get_libc_version() -> *const std::ffi::c_char;
}

/// The kernel has rseq unless the self-registering child says ENOSYS.
fn kernel_has_rseq() -> bool {
    run_child("tunable", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")])["owner"]
        != format!("unavailable ({})", Reason::NotSupported)
}

#[test]
fn glibc_owns_registration_by_default() {
    let report = run_child("default", &[]);
    if glibc_registers_rseq() && kernel_has_rseq() {
        assert_eq!(report["owner"], "glibc");
        assert_eq!(
            fell_back(&report),
            0,
            "glibc-registered threads must not fall back"
        );
        assert_eq!(report["registered"], "true");
    }
}

#[test]
fn self_registration_when_glibc_does_not_register() {
    let report = run_child("tunable", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    if kernel_has_rseq() {
        assert_eq!(report["owner"], "self");
        assert_eq!(
            fell_back(&report),
            0,
            "self-registered threads must not fall back"
        );
    }
}

#[test]
fn disable_switch_makes_everything_fall_back() {
    let report = run_child("disabled", &[("PERCPU_NO_RSEQ", "1")]);
    assert_eq!(
        report["owner"],
        format!("unavailable ({})", Reason::Disabled)
    );
    assert_eq!(fell_back(&report), THREADS * ADDS);
    assert_eq!(report["registered"], "false");
    // "0" and empty do not disable.
    assert_ne!(
        run_child("not-disabled", &[("PERCPU_NO_RSEQ", "0")])["owner"],
        format!("unavailable ({})", Reason::Disabled)
    );
}

#[test]
fn seccomp_enosys_falls_back_without_crashing() {
    let report = run_child(
        "seccomp-ENOSYS",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
    assert_eq!(
        report["owner"],
        format!("unavailable ({})", Reason::NotSupported)
    );
    assert_eq!(fell_back(&report), THREADS * ADDS);
}

#[test]
fn seccomp_eperm_falls_back_without_crashing() {
    let report = run_child(
        "seccomp-EPERM",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
    assert_eq!(
        report["owner"],
        format!("unavailable ({})", Reason::Denied { errno: libc::EPERM })
    );
    assert_eq!(fell_back(&report), THREADS * ADDS);
}

#[test]
fn nested_registrations_never_unregister_each_other() {
    std::thread::spawn(|| match rseq_sys::owner() {
        Owner::SelfRegistered => {
            assert!(
                !rseq_sys::is_registered(),
                "a new thread starts unregistered"
            );
            let outer = Registration::acquire().expect("register");
            assert!(rseq_sys::is_registered());
            let inner = Registration::acquire().expect("nested register");
            drop(outer);
            assert!(
                rseq_sys::is_registered(),
                "dropping the outer guard must not unregister the inner user"
            );
            drop(inner);
            assert!(!rseq_sys::is_registered(), "the last guard unregisters");
            // Registering again works, so the unregistration really happened in the kernel
            // (a second registration of a registered thread fails with EBUSY).
            let again = Registration::acquire().expect("re-register");
            assert!(rseq_sys::cpu_id().is_some());
            drop(again);
            // A lazy registration by an operation lasts until the thread exits.
            assert!(rseq_sys::cpu_id().is_some());
            assert!(rseq_sys::is_registered());
            drop(Registration::acquire().expect("register"));
            assert!(
                rseq_sys::is_registered(),
                "a guard must not end the lazy registration"
            );
        }
        Owner::Glibc => {
            let guard = Registration::acquire().expect("glibc registration");
            assert!(rseq_sys::is_registered());
            drop(guard);
            assert!(
                rseq_sys::is_registered(),
                "glibc's registration is never ended by us"
            );
        }
        Owner::Unavailable(reason) => {
            assert_eq!(Registration::acquire().err(), Some(reason));
            assert!(!rseq_sys::is_registered());
        }
    })
    .join()
    .unwrap();
}

static EXIT_SLOTS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static EXIT_FALLBACK: AtomicU64 = AtomicU64::new(0);
static EXIT_OBSERVED: AtomicU64 = AtomicU64::new(0);

/// A pthread key destructor created after rseq-sys's own: it runs after rseq-sys has ended
/// the thread's implicit registration.
unsafe extern "C" fn late_exit_hook(_: *mut libc::c_void) {
    if rseq_sys::owner() == Owner::SelfRegistered {
        assert!(
            !rseq_sys::is_registered(),
            "the implicit registration ends at thread exit"
        );
        let guard = Registration::acquire().expect("explicit registration while exiting");
        assert!(rseq_sys::is_registered());
        count(&EXIT_SLOTS, &EXIT_FALLBACK, 100);
        drop(guard);
        assert!(!rseq_sys::is_registered());
    }
    count(&EXIT_SLOTS, &EXIT_FALLBACK, 1000);
    EXIT_OBSERVED.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn exiting_threads_count_exactly() {
    let _ = rseq_sys::owner();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: valid out-pointer and destructor.
    let created = unsafe { libc::pthread_key_create(&mut key, Some(late_exit_hook)) };
    assert_eq!(created, 0);
    let threads = 16;
    for _ in 0..threads {
        std::thread::spawn(move || {
            count(&EXIT_SLOTS, &EXIT_FALLBACK, 1000);
            // SAFETY: the key exists; a non-null value makes its destructor run.
            unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<libc::c_void>()) };
        })
        .join()
        .unwrap();
    }
    assert_eq!(EXIT_OBSERVED.load(Ordering::Relaxed), threads);
    let extra = if rseq_sys::owner() == Owner::SelfRegistered {
        100
    } else {
        0
    };
    assert_eq!(total(&EXIT_SLOTS, &EXIT_FALLBACK), threads * (2000 + extra));
}
