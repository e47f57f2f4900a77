//! Both sides of a measurement: the parent starts one child process of this binary per
//! (workload, allocator, repetition) and collects what each prints; the child runs one
//! workload on the allocator its environment names, times it and reads its own peak RSS.
//!
//! The peak RSS is the child's `VmHWM`, read by the child at its end, rather than the
//! `ru_maxrss` the parent could get from `wait4`: Rust starts children with `posix_spawn`
//! (a vfork-style clone that shares the parent's memory until `exec`), and Linux carries the
//! high-water mark of the memory a process had before `exec` into its `ru_maxrss`, so that
//! figure could be the parent's size rather than the child's. `VmHWM` belongs to the
//! child's own address space after `exec`.

use super::cli::Options;
use super::dispatch::{AllocatorChoice, EnvSelectedAllocator, ALLOCATOR_VAR};
use super::summary::{Sample, Summary, WorkloadFigures};
use super::Workload;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The first word of the line a child prints with its result.
const RESULT_PREFIX: &str = "percpu-workload-result";

/// Be a child: run `workload` at `scale` on this process's allocator and print the result
/// line (`percpu-workload-result allocator=ID seconds=S peak_rss_kib=K blocks=B`).
pub fn run_child(workload: &Workload, scale: f64) -> Result<(), String> {
    let allocator = EnvSelectedAllocator::active();
    let start = Instant::now();
    let blocks = (workload.run)(scale)
        .map_err(|error| format!("{} on {}: {error}", workload.id, allocator.type_name()))?;
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss_kib = own_peak_rss_kib()?;
    println!(
        "{RESULT_PREFIX} allocator={} seconds={seconds:.9} peak_rss_kib={peak_rss_kib} \
         blocks={blocks}",
        allocator.id()
    );
    Ok(())
}

/// This process's peak resident set so far, KiB, from the `VmHWM` line of
/// `/proc/self/status`.
fn own_peak_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .ok_or_else(|| "no VmHWM line in /proc/self/status".to_string())
}

/// Parse a child's stdout: its result line, checked to come from `allocator`.
fn parse_result(stdout: &str, allocator: AllocatorChoice) -> Result<Sample, String> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("no result line in the child's output:\n{stdout}"))?;
    let field = |name: &str| -> Result<&str, String> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("no {name} in the child's result `{line}`"))
    };
    let number = |name: &str| -> Result<f64, String> {
        field(name)?
            .parse()
            .map_err(|_| format!("{name} in `{line}` is not a number"))
    };
    let ran_on = field("allocator")?;
    if ran_on != allocator.id() {
        return Err(format!(
            "the child ran on `{ran_on}`, not `{}`: {ALLOCATOR_VAR} was not honoured",
            allocator.id()
        ));
    }
    let sample = Sample {
        seconds: number("seconds")?,
        peak_rss_kib: number("peak_rss_kib")? as u64,
        blocks: number("blocks")? as u64,
    };
    if !(sample.seconds > 0.0 && sample.peak_rss_kib > 0 && sample.blocks > 0) {
        return Err(format!("the child's result `{line}` is not all positive"));
    }
    Ok(sample)
}

/// Run `workload` once at `scale` in a child process on `allocator`.
fn run_once(workload: &Workload, allocator: AllocatorChoice, scale: f64) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let output = Command::new(exe)
        .args(["--child", workload.id, "--scale", &scale.to_string()])
        .env(ALLOCATOR_VAR, allocator.id())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start a child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} on {} failed ({}):\n{}{}",
            workload.id,
            allocator.type_name(),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_result(&stdout, allocator)
        .map_err(|e| format!("{} on {}: {e}", workload.id, allocator.type_name()))
}

/// Measure every workload of `options` on every allocator of it, printing each workload's
/// table as it is done, and return the summary (not yet printed).
pub fn run(options: &Options) -> Result<Summary, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let names: Vec<&str> = options.allocators.iter().map(|a| a.type_name()).collect();
    println!(
        "percpu-workloads: scale {}, {} runs per workload and allocator (one child process \
         each), {cpus} CPUs\nallocators: {}\ntime: {}\npeak RSS: {}\n",
        options.scale,
        options.repetitions,
        names.join(", "),
        super::summary::TIME_MEASURE,
        super::summary::RSS_MEASURE,
    );
    let started = Instant::now();
    let mut figures = Vec::with_capacity(options.workloads.len());
    for workload in &options.workloads {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); options.allocators.len()];
        // Repetitions outermost, allocators interleaved within each: a slow drift of the
        // machine (another process, thermal state) spreads over every allocator alike.
        for _ in 0..options.repetitions {
            for (allocator, runs) in options.allocators.iter().zip(&mut samples) {
                runs.push(run_once(workload, *allocator, options.scale)?);
            }
        }
        let blocks = samples[0][0].blocks;
        if let Some((allocator, sample)) = options
            .allocators
            .iter()
            .zip(&samples)
            .flat_map(|(a, runs)| runs.iter().map(move |s| (a, s)))
            .find(|(_, s)| s.blocks != blocks)
        {
            return Err(format!(
                "{}: a run on {} allocated {} blocks, another {blocks}: the runs did not do \
                 the same work",
                workload.id,
                allocator.type_name(),
                sample.blocks
            ));
        }
        let workload_figures = WorkloadFigures::new(
            workload.id,
            (workload.describe)(options.scale),
            &options.allocators,
            samples,
        );
        println!("{workload_figures}");
        figures.push(workload_figures);
    }
    let measuring_seconds = started.elapsed().as_secs_f64();
    Ok(Summary::new(
        options.scale,
        options.repetitions,
        cpus,
        measuring_seconds,
        figures,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse_and_are_checked() {
        let out = "noise\npercpu-workload-result allocator=percpu seconds=0.5 \
                   peak_rss_kib=2048 blocks=7\n";
        assert_eq!(
            parse_result(out, AllocatorChoice::PerCpu),
            Ok(Sample {
                seconds: 0.5,
                peak_rss_kib: 2048,
                blocks: 7
            })
        );
        assert!(parse_result(out, AllocatorChoice::System)
            .unwrap_err()
            .contains("not honoured"));
        assert!(parse_result("nothing", AllocatorChoice::PerCpu).is_err());
        let zero = "percpu-workload-result allocator=system seconds=0 peak_rss_kib=1 blocks=1";
        assert!(parse_result(zero, AllocatorChoice::System).is_err());
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        assert!(own_peak_rss_kib().unwrap() > 0);
    }
}
