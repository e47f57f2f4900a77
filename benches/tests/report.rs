//! The report binary end to end, in its hidden `--smoke` mode (every table, tiny runs): the
//! JSON holds every table and implementation with positive finite figures, and every plot
//! it names is a non-empty SVG file.

mod common;

use common::positive_finite;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every table the report must produce, with its baseline and implementations, written out
/// here independently of the report's own code so that a table or implementation that goes
/// missing fails the test.
/// Whether the counter table must also have the hand-written C add: built on x86_64 Linux
/// and measured while glibc owns rseq in the report's process (its environment says).
fn c_reference_expected(report: &Value) -> bool {
    cfg!(all(target_arch = "x86_64", target_os = "linux"))
        && report["environment"]["owner"].as_str() == Some("glibc")
}

const EXPECTED: &[(&str, &str, &[&str])] = &[
    (
        "counter-add",
        "AtomicU64::fetch_add",
        &[
            "PerCpuCounter",
            "PerCpuCounter::local",
            "AtomicU64::fetch_add",
            "CachePadded striped",
            "thread_local accumulator",
        ],
    ),
    (
        "queue-push-pop",
        "crossbeam ArrayQueue",
        &[
            "percpu FreeList",
            "percpu PerCpuBuffer",
            "crossbeam ArrayQueue",
            "crossbeam SegQueue",
            "Mutex<Vec>",
        ],
    ),
    (
        "pool-get-drop",
        "object-pool",
        &["percpu Pool", "object-pool", "opool"],
    ),
    ("alloc-pair-16", "std::alloc::System", ALLOCATORS),
    ("alloc-pair-256", "std::alloc::System", ALLOCATORS),
    ("alloc-pair-4096", "std::alloc::System", ALLOCATORS),
    ("alloc-batch-64", "std::alloc::System", ALLOCATORS),
    ("alloc-cross-thread-64", "std::alloc::System", ALLOCATORS),
];

const ALLOCATORS: &[&str] = &[
    "percpu_alloc::PerCpuAlloc",
    "std::alloc::System",
    "mimalloc::MiMalloc",
    "tikv_jemallocator::Jemalloc",
];

/// Run the binary in smoke mode with `envs`, writing into a fresh directory; return the
/// parsed JSON and its stdout.
fn smoke_run(name: &str, envs: &[(&str, &str)]) -> (Value, String) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let json_path = dir.join("nested").join("smoke.json");
    let output = Command::new(env!("CARGO_BIN_EXE_percpu-benches"))
        .args(["--smoke", "--json"])
        .arg(&json_path)
        .envs(envs.iter().copied())
        .output()
        .expect("the report binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "report failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json_path).expect("the JSON was written");
    (
        serde_json::from_str(&text).expect("the JSON parses"),
        stdout,
    )
}

fn check_report(report: &Value, stdout: &str) {
    let threads: Vec<u64> = report["settings"]["threads"]
        .as_array()
        .expect("settings.threads")
        .iter()
        .map(|t| t.as_u64().expect("a thread count"))
        .collect();
    assert!(!threads.is_empty());
    let tables = report["tables"].as_array().expect("tables");
    let ids: Vec<&str> = tables.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let expected_ids: Vec<&str> = EXPECTED.iter().map(|&(id, _, _)| id).collect();
    assert_eq!(ids, expected_ids);

    for (table, &(id, baseline, implementations)) in tables.iter().zip(EXPECTED) {
        assert_eq!(table["baseline"], baseline, "{id}");
        assert!(
            stdout.contains(table["title"].as_str().unwrap()),
            "{id} not printed"
        );
        let series = table["series"].as_array().expect("series");
        let names: Vec<&str> = series
            .iter()
            .map(|s| s["implementation"].as_str().unwrap())
            .collect();
        let mut implementations = implementations.to_vec();
        if id == "counter-add" && c_reference_expected(report) {
            implementations.push("hand-written C rseq add");
        }
        assert_eq!(names, implementations, "{id}");
        // The cross-thread table needs a producer and a consumer: even counts only.
        let table_threads: Vec<u64> = if id == "alloc-cross-thread-64" {
            threads.iter().copied().filter(|t| t % 2 == 0).collect()
        } else {
            threads.clone()
        };
        assert!(!table_threads.is_empty(), "{id}");
        for s in series {
            let name = s["implementation"].as_str().unwrap();
            let points = s["points"].as_array().expect("points");
            let point_threads: Vec<u64> = points
                .iter()
                .map(|p| p["threads"].as_u64().unwrap())
                .collect();
            assert_eq!(point_threads, table_threads, "{id} {name}");
            for p in points {
                let what = format!("{id} {name} at {} threads", p["threads"]);
                let ns = positive_finite(&p["ns_per_op"], &what);
                let ratio = positive_finite(&p["ratio_to_baseline"], &what);
                let samples = p["samples_ns_per_op"].as_array().expect("samples");
                assert_eq!(
                    samples.len() as u64,
                    report["settings"]["repetitions"].as_u64().unwrap(),
                    "{what}"
                );
                let samples: Vec<f64> = samples.iter().map(|v| positive_finite(v, &what)).collect();
                let (lo, hi) = samples
                    .iter()
                    .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                assert!(
                    lo <= ns && ns <= hi,
                    "{what}: median {ns} outside {samples:?}"
                );
                assert!(p["ops_per_thread"].as_u64().unwrap() > 0, "{what}");
                if name == baseline {
                    assert_eq!(ratio, 1.0, "{what}");
                }
            }
        }
    }

    let plots = report["plots"].as_array().expect("plots");
    assert_eq!(plots.len(), EXPECTED.len());
    for (plot, &(id, _, _)) in plots.iter().zip(EXPECTED) {
        let path = Path::new(plot.as_str().expect("a path"));
        assert!(path.to_string_lossy().ends_with(&format!("-{id}.svg")));
        let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{path:?}"
        );
        assert!(svg.contains("<polyline"), "{path:?} has no lines");
    }
}

#[test]
fn smoke_report_has_every_table_and_plot() {
    let (report, stdout) = smoke_run("report-smoke", &[]);
    check_report(&report, &stdout);
    assert!(stdout.contains("rseq owner:"), "{stdout}");
}

#[test]
fn smoke_report_without_rseq_shows_the_fallback() {
    let (report, stdout) = smoke_run("report-smoke-no-rseq", &[("PERCPU_NO_RSEQ", "1")]);
    check_report(&report, &stdout);
    let environment = &report["environment"];
    assert_eq!(environment["rseq_available"], false);
    assert!(
        environment["owner"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{environment}"
    );
    assert!(
        stdout.contains("rseq owner:            unavailable"),
        "{stdout}"
    );
}
