//! Real programs under `LD_PRELOAD=libpercpu_malloc.so`: Python, a shell pipeline of
//! coreutils and gzip, and a C program that checks every entry point's edge cases.
//!
//! Finding the library: integration tests run from `target/<profile>/deps/`, and cargo
//! builds this package's library (the `rlib` and the `cdylib`, in one rustc call) before
//! them, leaving the cdylib next to the test binary as `deps/libpercpu_malloc.so` (cdylib
//! names carry no hash). That copy is the one used: the uplifted
//! `target/<profile>/libpercpu_malloc.so` is refreshed only by `cargo build`, not when the
//! library is built as a test's dependency, so it can be stale. If the file is missing
//! anyway (a test binary run by hand after a clean), the test builds it with the `cargo`
//! that ran the tests (`$CARGO`), the same target directory and the same profile.
//!
//! The children inherit the environment, so running this suite with
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0` or `PERCPU_NO_RSEQ=1` runs the programs in that
//! mode too. Needs `python3`, `sh`, coreutils, `gzip` and `cc` (the linker rustc uses on
//! Linux) on `PATH`.
#![cfg(target_os = "linux")]

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const LIB_NAME: &str = "libpercpu_malloc.so";
/// Every child is killed after this long: a deadlock must fail the test, not hang it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// `target/<profile>/deps/`, the running test binary's directory.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .expect("test binary has a directory")
        .to_path_buf()
}

/// The shim's absolute path, built on the first call if cargo has not built it.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let deps = deps_dir();
        let lib = deps.join(LIB_NAME);
        if !lib.is_file() {
            build_shim(deps.parent().expect("deps/ has a parent"));
        }
        assert!(lib.is_file(), "{} not found after building", lib.display());
        lib
    })
}

fn build_shim(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    // target/<profile> or, when cross-compiling, target/<triple>/<profile>.
    let mut target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["-p", "percpu-malloc"]);
    let triple = target_dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    if let Some(triple) = triple.filter(|t| t.contains('-') && t.split('-').count() >= 3) {
        cmd.args(["--target", &triple]);
        target_dir = target_dir.parent().expect("target dir").to_path_buf();
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p percpu-malloc failed");
}

/// Runs `cmd` to completion (killing it after [`CHILD_TIMEOUT`]) with or without the shim.
fn run(cmd: &mut Command, preload: bool) -> Output {
    if preload {
        cmd.env("LD_PRELOAD", shim());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes on threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} (preload: {preload}) did not finish in {CHILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("reader").expect("read stdout"),
        stderr: err_reader.join().expect("reader").expect("read stderr"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the command with the shim, checks it succeeded silently (the dynamic linker only
/// warns on stderr when it cannot preload), and returns its stdout.
fn run_ok(cmd: &mut Command, preload: bool) -> String {
    let out = run(cmd, preload);
    assert!(
        out.status.success(),
        "{cmd:?} (preload: {preload}) failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{cmd:?} (preload: {preload}) wrote to stderr:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Splits off the last line, which each script uses to say whether the shim is mapped.
fn split_mapped(stdout: &str) -> (&str, &str) {
    let body = stdout.trim_end_matches('\n');
    body.rsplit_once('\n').unwrap_or(("", body))
}

const PYTHON_WORKLOAD: &str = r#"
import hashlib, json, random, threading, zlib
random.seed(7)
d = {}
for i in range(150000):
    d["k%d" % i] = ["x" * (i % 300), i, str(i * i), {"n": i % 17}]
s = json.dumps(d, sort_keys=True)
d2 = json.loads(s)
assert d2 == d
words = sorted((v[2] for v in d2.values()), reverse=True)
blob = "".join(words).encode()
packed = zlib.compress(blob, 6)
assert zlib.decompress(packed) == blob
growing = bytearray()
for i in range(2000):
    growing += bytes([i % 251]) * (i * 37 % 5000)
big = [bytearray(random.randrange(1, 3 << 20)) for _ in range(40)]
results = [None] * 4
def worker(t):
    r = random.Random(t)
    acc = []
    for i in range(60000):
        acc.append(str(r.random()) * (i % 5))
        if len(acc) > 5000:
            acc = acc[2500:]
    results[t] = hashlib.sha256("".join(acc).encode()).hexdigest()
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(hashlib.sha256(s.encode()).hexdigest(), len(s))
print(words[0], words[-1], len(words), len(packed))
print(hashlib.sha256(growing).hexdigest(), sum(len(b) for b in big))
print(" ".join(results))
print("mapped" if "libpercpu_malloc" in open("/proc/self/maps").read() else "unmapped")
"#;

#[test]
fn python_workload_matches_glibc() {
    let py = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", PYTHON_WORKLOAD]);
        cmd
    };
    let with = run_ok(&mut py(), true);
    let without = run_ok(&mut py(), false);
    let (with_body, with_mapped) = split_mapped(&with);
    let (without_body, without_mapped) = split_mapped(&without);
    assert_eq!(with_mapped, "mapped", "the shim was not loaded:\n{with}");
    assert_eq!(without_mapped, "unmapped");
    assert_eq!(with_body.lines().count(), 4, "{with}");
    assert_eq!(with_body, without_body);
}

const SHELL_PIPELINE: &str = r#"
set -e
seq 1 200000 | sort -r | uniq | wc -l
seq 1 300000 | sort -n -r --parallel=2 -S 8M | head -n 3
seq 1 300000 | sed 's/$/ some padding to compress/' | gzip -6 -c | gunzip -c | cksum
seq 1 100000 | awk '{ s[$1 % 1000] = s[$1 % 1000] $1 } END { n = 0; for (k in s) n += length(s[k]); print n }'
if grep -q libpercpu_malloc /proc/self/maps; then echo mapped; else echo unmapped; fi
"#;

#[test]
fn shell_pipeline_matches_glibc() {
    let sh = || {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", SHELL_PIPELINE]);
        cmd
    };
    let with = run_ok(&mut sh(), true);
    let without = run_ok(&mut sh(), false);
    let (with_body, with_mapped) = split_mapped(&with);
    let (without_body, without_mapped) = split_mapped(&without);
    assert_eq!(with_mapped, "mapped", "the shim was not loaded:\n{with}");
    assert_eq!(without_mapped, "unmapped");
    let lines: Vec<&str> = with_body.lines().map(str::trim).collect();
    assert_eq!(
        lines[..4],
        ["200000", "300000", "299999", "299998"],
        "{with}"
    );
    assert_eq!(with_body, without_body);
}

/// Compiles tests/edge_cases.c once.
fn edge_cases_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/edge_cases.c");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("percpu_malloc_edge_cases");
        let out = Command::new("cc")
            .args(["-O1", "-fno-builtin", "-pthread"])
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .arg("-ldl")
            .output()
            .expect("run cc (the C compiler rustc links with on Linux)");
        assert!(out.status.success(), "cc failed:\n{}", text(&out.stderr));
        bin
    })
}

/// The `per_cpu_active=` value the C program prints after passing every check.
fn run_edge_cases(configure: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new(edge_cases_binary());
    configure(&mut cmd);
    let out = run(&mut cmd, true);
    assert!(
        out.status.success(),
        "edge cases failed under the shim ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("per_cpu_active="))
        .unwrap_or_else(|| panic!("no per_cpu_active line in {stdout:?}"))
        .to_owned()
}

#[test]
fn c_edge_cases_under_the_shim() {
    let per_cpu = run_edge_cases(|_| {});
    // The child inherits this process's environment, so it sees rseq as this process does.
    let disabled = std::env::var("PERCPU_NO_RSEQ").is_ok_and(|v| !v.is_empty() && v != "0");
    if !disabled && rseq_sys::status().cpu_id.is_some() {
        assert_eq!(
            per_cpu, "1",
            "rseq works here but the shim's per-CPU caches did not run"
        );
    }
}

#[test]
fn c_edge_cases_on_the_locked_fallback() {
    let per_cpu = run_edge_cases(|cmd| {
        cmd.env("PERCPU_NO_RSEQ", "1");
    });
    assert_eq!(per_cpu, "0");
}

#[test]
fn c_edge_cases_with_self_registered_rseq() {
    let per_cpu = run_edge_cases(|cmd| {
        cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
            .env_remove("PERCPU_NO_RSEQ");
    });
    if rseq_sys::status().cpu_id.is_some() {
        assert_eq!(per_cpu, "1");
    }
}

/// The C checks are stricter than glibc 2.36 (which crashes on `free` of mmap'd memory and
/// accepts `aligned_alloc(48, ...)`), and the program insists on finding the shim: without
/// it, it must fail. This shows the checks above are not vacuous.
#[test]
fn c_edge_cases_fail_without_the_shim() {
    let out = run(&mut Command::new(edge_cases_binary()), false);
    assert!(
        !out.status.success(),
        "the edge-case program passed without the shim:\n{}",
        text(&out.stderr)
    );
}
