//! Samples measured in a process of their own: this binary run again with [`SAMPLE_FLAG`],
//! which rebuilds the same tables, runs the one contender once to warm up and once timed,
//! and prints the timed run back.
//!
//! The allocator tables use it. Allocators measured in turn in one process slow each other
//! down. On the 2-core EPYC host of 2026-12-07, a 16-byte pair of percpu-alloc took 4.1-4.4
//! ns in processes that ran it alone, and 5.2-6.3 ns in most processes that also ran
//! mimalloc, jemalloc and glibc in between. glibc's own pair went from 8.5 ns alone to
//! 9.2-10.0 ns. How much varied from process to process. A program has one allocator, so
//! one allocator per process is the figure that describes it; the workloads binary
//! measures the same way. Each figure's samples also come from as many processes, so one
//! process's luck (code and data placement) does not set a whole figure.

use super::measure::{Run, TableSpec};
use std::io;
use std::process::Command;
use std::time::Duration;

/// The hidden first argument that makes this binary measure one sample and print it.
pub const SAMPLE_FLAG: &str = "--sample";

/// One sample to measure: contender `contender` of table `table` (as the tables of `mode`
/// name them), at `threads` threads doing `ops` operations each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRequest {
    /// The mode whose tables the parent measures (`--quick`, `--full` or `--smoke`).
    pub mode: super::cli::Mode,
    /// The table's id.
    pub table: String,
    /// The contender's name.
    pub contender: String,
    /// Threads in the timed run.
    pub threads: usize,
    /// Operations per thread in the timed run.
    pub ops: u64,
}

impl SampleRequest {
    /// The arguments that ask a child for this sample.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            SAMPLE_FLAG.into(),
            format!("--{}", self.mode.name()),
            self.table.clone(),
            self.contender.clone(),
            self.threads.to_string(),
            self.ops.to_string(),
        ]
    }

    /// The request in `args` (what follows [`SAMPLE_FLAG`]).
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let [mode, table, contender, threads, ops] = args else {
            return Err(format!(
                "{SAMPLE_FLAG} takes a mode, a table, a contender, threads and ops; got {args:?}"
            ));
        };
        let mode = super::cli::Mode::from_flag(mode)
            .ok_or_else(|| format!("{SAMPLE_FLAG}: unknown mode `{mode}`"))?;
        let threads = threads
            .parse()
            .ok()
            .filter(|&t: &usize| t > 0)
            .ok_or_else(|| format!("{SAMPLE_FLAG}: bad thread count `{threads}`"))?;
        let ops = ops
            .parse()
            .ok()
            .filter(|&o: &u64| o > 0)
            .ok_or_else(|| format!("{SAMPLE_FLAG}: bad operation count `{ops}`"))?;
        Ok(SampleRequest {
            mode,
            table: table.clone(),
            contender: contender.clone(),
            threads,
            ops,
        })
    }
}

/// Measure `request` in a child process of this binary.
pub fn sample_in_child(request: &SampleRequest) -> io::Result<Run> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe).args(request.to_args()).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failed = |why: String| {
        io::Error::other(format!(
            "the sample {request:?} failed: {why}; its stderr: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    };
    if !output.status.success() {
        return Err(failed(format!("it exited with {}", output.status)));
    }
    parse_run(&stdout).ok_or_else(|| failed(format!("it printed `{}`", stdout.trim())))
}

/// The child's side: find the contender among `specs`, warm it up with one run of the same
/// size (a fresh process starts with empty caches and unmapped heaps), then time one run
/// and print it as `<wall ns> <ops>`.
pub fn serve(request: &SampleRequest, specs: &[TableSpec<'_>]) -> Result<String, String> {
    let spec = specs
        .iter()
        .find(|spec| spec.id == request.table)
        .ok_or_else(|| format!("no table `{}`", request.table))?;
    let contender = spec
        .contenders
        .iter()
        .find(|contender| contender.name == request.contender)
        .ok_or_else(|| format!("no contender `{}` in `{}`", request.contender, spec.id))?;
    (contender.workload)(request.threads, request.ops);
    let run = (contender.workload)(request.threads, request.ops);
    Ok(format_run(run))
}

fn format_run(run: Run) -> String {
    format!("{} {}", run.wall.as_nanos(), run.ops)
}

fn parse_run(line: &str) -> Option<Run> {
    let mut words = line.split_whitespace();
    let wall: u64 = words.next()?.parse().ok()?;
    let ops: u64 = words.next()?.parse().ok()?;
    (words.next().is_none() && ops > 0).then_some(Run {
        wall: Duration::from_nanos(wall),
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::cli::Mode;

    #[test]
    fn a_request_survives_its_arguments() {
        let request = SampleRequest {
            mode: Mode::Smoke,
            table: "alloc-pair-16".into(),
            contender: "mimalloc::MiMalloc".into(),
            threads: 4,
            ops: 1234,
        };
        let args = request.to_args();
        assert_eq!(args[0], SAMPLE_FLAG);
        assert_eq!(SampleRequest::parse(&args[1..]), Ok(request));
    }

    #[test]
    fn bad_requests_are_refused() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(SampleRequest::parse(&args(&["--smoke", "t", "c", "0", "5"])).is_err());
        assert!(SampleRequest::parse(&args(&["--smoke", "t", "c", "2", "0"])).is_err());
        assert!(SampleRequest::parse(&args(&["--fast", "t", "c", "2", "5"])).is_err());
        assert!(SampleRequest::parse(&args(&["--smoke", "t", "c", "2"])).is_err());
    }

    #[test]
    fn a_run_round_trips_and_garbage_does_not_parse() {
        let run = Run {
            wall: Duration::from_nanos(987_654),
            ops: 1000,
        };
        let back = parse_run(&format_run(run)).expect("a printed run parses");
        assert_eq!((back.wall, back.ops), (run.wall, run.ops));
        assert!(parse_run("").is_none());
        assert!(parse_run("12").is_none());
        assert!(parse_run("12 0").is_none());
        assert!(parse_run("12 5 7").is_none());
        assert!(parse_run("twelve 5").is_none());
    }
}
