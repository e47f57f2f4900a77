//! The workloads binary end to end at a tiny scale: two workloads on percpu-alloc and glibc,
//! each run in its own child process; it exits 0, prints both workloads' tables and the
//! summary, and its JSON holds positive figures for exactly what was asked.

mod common;

use common::positive_finite;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_percpu-workloads");

#[test]
fn two_workloads_on_two_allocators() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    let _ = std::fs::remove_dir_all(&dir);
    let json_path = dir.join("run.json");
    let output = Command::new(BIN)
        .args([
            "--scale",
            "0.01",
            "--repetitions",
            "2",
            "--workloads",
            "larson,xmalloc-test",
            "--allocators",
            "percpu",
            "--json",
        ])
        .arg(&json_path)
        .output()
        .expect("the binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "larson",
        "xmalloc-test",
        "Time: median wall seconds",
        "Peak RSS: median VmHWM",
        "geometric mean",
        "percpu",
        "glibc",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
    assert!(!stdout.contains("mimalloc"), "not asked for:\n{stdout}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON was written"))
            .expect("the JSON parses");
    assert_eq!(json["baseline"], "std::alloc::System");
    let workloads = json["workloads"].as_array().expect("a workloads array");
    let ids: Vec<&str> = workloads
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["larson", "xmalloc-test"]);
    for workload in workloads {
        let blocks = positive_finite(&workload["blocks_per_run"], "blocks_per_run");
        let allocators = workload["allocators"].as_array().unwrap();
        let names: Vec<&str> = allocators
            .iter()
            .map(|a| a["allocator"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["percpu_alloc::PerCpuAlloc", "std::alloc::System"]);
        for allocator in allocators {
            positive_finite(&allocator["median_seconds"], "median_seconds");
            positive_finite(&allocator["median_peak_rss_kib"], "median_peak_rss_kib");
            positive_finite(&allocator["time_ratio_to_baseline"], "time ratio");
            positive_finite(&allocator["peak_rss_ratio_to_baseline"], "rss ratio");
            let samples = allocator["samples"].as_array().unwrap();
            assert_eq!(samples.len(), 2);
            for sample in samples {
                assert_eq!(positive_finite(&sample["blocks"], "blocks"), blocks);
            }
        }
        assert_eq!(allocators[1]["time_ratio_to_baseline"], 1.0);
    }
    let means = json["geometric_means"].as_array().unwrap();
    assert_eq!(means.len(), 2);
    for mean in means {
        positive_finite(&mean["time_ratio_to_baseline"], "time geometric mean");
        positive_finite(&mean["peak_rss_ratio_to_baseline"], "rss geometric mean");
    }
}

#[test]
fn a_child_runs_on_the_allocator_its_environment_names() {
    let output = Command::new(BIN)
        .args(["--child", "glibc-simple", "--scale", "0.001"])
        .env("PERCPU_WORKLOAD_ALLOCATOR", "jemalloc")
        .output()
        .expect("the binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("percpu-workload-result allocator=jemalloc "),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_refused_with_the_usage() {
    let output = Command::new(BIN)
        .args(["--workloads", "cfrac"])
        .output()
        .expect("the binary starts");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown workload `cfrac`"), "{stderr}");
    assert!(stderr.contains("usage:"), "{stderr}");
}
