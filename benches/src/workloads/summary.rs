//! The workloads' figures: per workload and allocator the median time and peak RSS of the
//! runs and their ratios to glibc's, the geometric means of those ratios, their text tables
//! and the JSON copy.

use super::dispatch::AllocatorChoice;
use crate::report::table::wrap;
use serde::Serialize;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

/// The allocator every ratio is taken against.
pub const BASELINE: AllocatorChoice = AllocatorChoice::System;

/// One child process's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Wall time of the workload, measured in the child around the workload alone.
    pub seconds: f64,
    /// The child's peak resident set (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Blocks the workload allocated, checked and freed.
    pub blocks: u64,
}

/// One allocator on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct AllocatorFigures {
    /// The allocator's type.
    pub allocator: &'static str,
    /// Its `--allocators` id.
    pub id: &'static str,
    /// Median of the runs' wall times.
    pub median_seconds: f64,
    /// `median_seconds` over the baseline's: below 1 is faster.
    pub time_ratio_to_baseline: f64,
    /// Median of the runs' peak resident sets, KiB.
    pub median_peak_rss_kib: f64,
    /// `median_peak_rss_kib` over the baseline's: below 1 is less memory.
    pub peak_rss_ratio_to_baseline: f64,
    /// Every run, in the order run.
    pub samples: Vec<Sample>,
}

/// Every allocator on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadFigures {
    /// The workload's id.
    pub workload: &'static str,
    /// What it ran, at the scale used.
    pub description: String,
    /// Blocks each run allocated (the same in every run on every allocator).
    pub blocks_per_run: u64,
    /// One entry per allocator, in the tables' order.
    pub allocators: Vec<AllocatorFigures>,
}

/// One allocator's geometric means across workloads.
#[derive(Debug, Clone, Serialize)]
pub struct GeometricMean {
    /// The allocator's type.
    pub allocator: &'static str,
    /// Its `--allocators` id.
    pub id: &'static str,
    /// Geometric mean of its time ratios to the baseline.
    pub time_ratio_to_baseline: f64,
    /// Geometric mean of its peak-RSS ratios to the baseline.
    pub peak_rss_ratio_to_baseline: f64,
}

/// Everything one run of the binary measured, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The `--scale` used.
    pub scale: f64,
    /// Runs per workload and allocator.
    pub repetitions: usize,
    /// CPUs available to the children.
    pub cpus: usize,
    /// The baseline allocator's type.
    pub baseline: &'static str,
    /// How a time is measured.
    pub time_measure: &'static str,
    /// How a peak RSS is measured.
    pub rss_measure: &'static str,
    /// Seconds the whole run took, children and all.
    pub measuring_seconds: f64,
    /// One entry per workload, in the order run.
    pub workloads: Vec<WorkloadFigures>,
    /// One entry per allocator.
    pub geometric_means: Vec<GeometricMean>,
}

/// What [`Summary::time_measure`] says.
pub const TIME_MEASURE: &str = "wall time of the workload in the child, from before its \
    first allocation to after its last check (process start-up and exit excluded)";

/// What [`Summary::rss_measure`] says.
pub const RSS_MEASURE: &str = "VmHWM of the child at its end (/proc/self/status): the peak \
    resident set of that process alone";

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    assert!(!sorted.is_empty(), "median of nothing");
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// The geometric mean of `values` (all positive).
pub fn geometric_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, count) = values
        .into_iter()
        .fold((0.0, 0usize), |(sum, count), v| (sum + v.ln(), count + 1));
    assert!(count > 0, "geometric mean of nothing");
    (sum / count as f64).exp()
}

impl WorkloadFigures {
    /// The figures of `samples` (one list per allocator in `allocators`, which includes
    /// [`BASELINE`]), with ratios to the baseline filled in.
    pub fn new(
        workload: &'static str,
        description: String,
        allocators: &[AllocatorChoice],
        samples: Vec<Vec<Sample>>,
    ) -> Self {
        assert_eq!(allocators.len(), samples.len());
        let medians: Vec<(f64, f64)> = samples
            .iter()
            .map(|runs| {
                (
                    median(runs.iter().map(|s| s.seconds)),
                    median(runs.iter().map(|s| s.peak_rss_kib as f64)),
                )
            })
            .collect();
        let base = allocators
            .iter()
            .position(|&a| a == BASELINE)
            .expect("the baseline is always measured");
        let (base_seconds, base_rss) = medians[base];
        let blocks_per_run = samples[base][0].blocks;
        let allocators = allocators
            .iter()
            .zip(samples)
            .zip(medians)
            .map(|((&choice, samples), (seconds, rss))| AllocatorFigures {
                allocator: choice.type_name(),
                id: choice.id(),
                median_seconds: seconds,
                time_ratio_to_baseline: seconds / base_seconds,
                median_peak_rss_kib: rss,
                peak_rss_ratio_to_baseline: rss / base_rss,
                samples,
            })
            .collect();
        WorkloadFigures {
            workload,
            description,
            blocks_per_run,
            allocators,
        }
    }
}

/// `kib` as MiB with one decimal.
fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// The column heading of the allocator whose id is `id`.
fn column(id: &str) -> &'static str {
    AllocatorChoice::from_id(id).map_or("?", AllocatorChoice::column)
}

impl fmt::Display for WorkloadFigures {
    /// The workload, what it ran, then one row per allocator: time and peak RSS, each with
    /// its ratio to glibc.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.workload)?;
        for line in wrap(&self.description, 96) {
            writeln!(f, "  {line}")?;
        }
        let runs = self.allocators.first().map_or(0, |a| a.samples.len());
        writeln!(
            f,
            "  {} blocks per run, all checked; medians of {runs} runs, ratios to glibc (below \
             1x is better)",
            self.blocks_per_run
        )?;
        writeln!(
            f,
            "  {:<10} {:>10} {:>7} {:>12} {:>7}",
            "allocator", "time", "ratio", "peak RSS", "ratio"
        )?;
        for a in &self.allocators {
            writeln!(
                f,
                "  {:<10} {:>8.3} s {:>6.2}x {:>12} {:>6.2}x",
                column(a.id),
                a.median_seconds,
                a.time_ratio_to_baseline,
                mib(a.median_peak_rss_kib),
                a.peak_rss_ratio_to_baseline
            )?;
        }
        Ok(())
    }
}

impl Summary {
    /// The summary of `workloads` (each measured on the same allocators, in the same order).
    pub fn new(
        scale: f64,
        repetitions: usize,
        cpus: usize,
        measuring_seconds: f64,
        workloads: Vec<WorkloadFigures>,
    ) -> Self {
        let geometric_means = workloads
            .first()
            .map(|first| {
                (0..first.allocators.len())
                    .map(|i| GeometricMean {
                        allocator: first.allocators[i].allocator,
                        id: first.allocators[i].id,
                        time_ratio_to_baseline: geometric_mean(
                            workloads
                                .iter()
                                .map(|w| w.allocators[i].time_ratio_to_baseline),
                        ),
                        peak_rss_ratio_to_baseline: geometric_mean(
                            workloads
                                .iter()
                                .map(|w| w.allocators[i].peak_rss_ratio_to_baseline),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Summary {
            scale,
            repetitions,
            cpus,
            baseline: BASELINE.type_name(),
            time_measure: TIME_MEASURE,
            rss_measure: RSS_MEASURE,
            measuring_seconds,
            workloads,
            geometric_means,
        }
    }

    /// Write the summary to `path` as pretty-printed JSON, creating its directory.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(&mut file, self)?;
        file.write_all(b"\n")?;
        file.flush()
    }

    /// One matrix: a row per workload, a column per allocator, each cell the figure `cell`
    /// makes, then the geometric-mean row of `ratio`.
    fn matrix(
        &self,
        f: &mut fmt::Formatter<'_>,
        title: &str,
        cell: impl Fn(&AllocatorFigures) -> String,
        mean: impl Fn(&GeometricMean) -> f64,
    ) -> fmt::Result {
        const WIDTH: usize = 17;
        writeln!(f, "{title}")?;
        write!(f, "  {:<14}", "workload")?;
        for g in &self.geometric_means {
            write!(f, " {:>WIDTH$}", column(g.id))?;
        }
        writeln!(f)?;
        for w in &self.workloads {
            write!(f, "  {:<14}", w.workload)?;
            for a in &w.allocators {
                write!(f, " {:>WIDTH$}", cell(a))?;
            }
            writeln!(f)?;
        }
        write!(f, "  {:<14}", "geometric mean")?;
        for g in &self.geometric_means {
            write!(f, " {:>WIDTH$}", format!("{:.2}x", mean(g)))?;
        }
        writeln!(f)
    }

    /// What the figures say about percpu-alloc's three goals, when percpu-alloc, mimalloc
    /// and jemalloc were all measured.
    fn goals(&self) -> Option<String> {
        let mean = |id: &str| self.geometric_means.iter().find(|g| g.id == id);
        let (percpu, mimalloc, jemalloc) = (mean("percpu")?, mean("mimalloc")?, mean("jemalloc")?);
        let slower: Vec<String> = self
            .workloads
            .iter()
            .filter_map(|w| {
                let a = w.allocators.iter().find(|a| a.id == "percpu")?;
                (a.time_ratio_to_baseline >= 1.0)
                    .then(|| format!("{} {:.2}x", w.workload, a.time_ratio_to_baseline))
            })
            .collect();
        let verdict = |holds: bool| if holds { "holds" } else { "does not hold" };
        Some(format!(
            "percpu-alloc's goals in this run:\n\
             - faster than glibc on every workload: {} ({} of {} faster{}{})\n\
             - time geometric mean at or below mimalloc's: {} ({:.2}x vs {:.2}x)\n\
             - peak RSS geometric mean below mimalloc's and jemalloc's: {} ({:.2}x vs {:.2}x \
             and {:.2}x)",
            verdict(slower.is_empty()),
            self.workloads.len() - slower.len(),
            self.workloads.len(),
            if slower.is_empty() { "" } else { "; not on " },
            slower.join(", "),
            verdict(percpu.time_ratio_to_baseline <= mimalloc.time_ratio_to_baseline),
            percpu.time_ratio_to_baseline,
            mimalloc.time_ratio_to_baseline,
            verdict(
                percpu.peak_rss_ratio_to_baseline < mimalloc.peak_rss_ratio_to_baseline
                    && percpu.peak_rss_ratio_to_baseline < jemalloc.peak_rss_ratio_to_baseline
            ),
            percpu.peak_rss_ratio_to_baseline,
            mimalloc.peak_rss_ratio_to_baseline,
            jemalloc.peak_rss_ratio_to_baseline,
        ))
    }
}

impl fmt::Display for Summary {
    /// The time matrix, the peak-RSS matrix and, when all were measured, the goals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.matrix(
            f,
            "Time: median wall seconds, and ratio to glibc (below 1x is faster)",
            |a| format!("{:.3} s {:.2}x", a.median_seconds, a.time_ratio_to_baseline),
            |g| g.time_ratio_to_baseline,
        )?;
        writeln!(f)?;
        self.matrix(
            f,
            "Peak RSS: median VmHWM, and ratio to glibc (below 1x is less memory)",
            |a| {
                format!(
                    "{} {:.2}x",
                    mib(a.median_peak_rss_kib),
                    a.peak_rss_ratio_to_baseline
                )
            },
            |g| g.peak_rss_ratio_to_baseline,
        )?;
        if let Some(goals) = self.goals() {
            writeln!(f, "\n{goals}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, peak_rss_kib: u64) -> Sample {
        Sample {
            seconds,
            peak_rss_kib,
            blocks: 10,
        }
    }

    #[test]
    fn medians_and_geometric_means() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!((geometric_mean([2.0, 8.0]) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn ratios_are_to_glibc_and_means_across_workloads() {
        let allocators = [AllocatorChoice::PerCpu, AllocatorChoice::System];
        let a = WorkloadFigures::new(
            "a",
            "first".into(),
            &allocators,
            vec![
                vec![sample(1.0, 100), sample(3.0, 300), sample(2.0, 200)],
                vec![sample(4.0, 400)],
            ],
        );
        assert_eq!(a.allocators[0].time_ratio_to_baseline, 0.5);
        assert_eq!(a.allocators[0].peak_rss_ratio_to_baseline, 0.5);
        assert_eq!(a.allocators[1].time_ratio_to_baseline, 1.0);
        let b = WorkloadFigures::new(
            "b",
            "second".into(),
            &allocators,
            vec![vec![sample(8.0, 800)], vec![sample(1.0, 100)]],
        );
        let summary = Summary::new(1.0, 1, 2, 0.0, vec![a, b]);
        assert!((summary.geometric_means[0].time_ratio_to_baseline - 2.0).abs() < 1e-12);
        assert!((summary.geometric_means[1].peak_rss_ratio_to_baseline - 1.0).abs() < 1e-12);
        let text = summary.to_string();
        assert!(text.contains("geometric mean"), "{text}");
        assert!(text.contains("2.000 s 0.50x"), "{text}");
        assert!(
            summary.goals().is_none(),
            "mimalloc and jemalloc were not measured"
        );
        let workload = summary.workloads[0].to_string();
        assert!(workload.contains("percpu"), "{workload}");
        assert!(workload.contains("0.2 MiB"), "{workload}");
    }
}
