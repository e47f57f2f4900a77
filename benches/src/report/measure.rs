//! How one figure is measured: a fixed number of operations per thread, sized once per
//! implementation by a calibration run, repeated, and the median kept.

use super::affinity;
use super::cli::Mode;
use super::table::{Point, Series, Table};
use indicatif::ProgressBar;
use serde::Serialize;
use std::time::Duration;

/// How much measuring a mode does.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The mode these settings are for.
    pub mode: Mode,
    /// Thread counts every table is measured at (a table may skip ones it cannot use).
    pub threads: Vec<usize>,
    /// Timed runs per figure; the figure is their median.
    pub repetitions: usize,
    /// About how long one timed run takes if the threads did not slow each other down.
    #[serde(rename = "target_run_ms", serialize_with = "as_millis")]
    pub target_run: Duration,
    /// The fewest operations any thread does in a timed run.
    pub min_ops_per_thread: u64,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

impl Settings {
    /// The settings of `mode` on a machine with `cpus` hardware threads.
    pub fn for_mode(mode: Mode, cpus: usize) -> Self {
        match mode {
            Mode::Quick => Settings {
                mode,
                threads: crate::THREAD_COUNTS.to_vec(),
                repetitions: 5,
                target_run: Duration::from_millis(80),
                min_ops_per_thread: 1_000,
            },
            Mode::Full => {
                let most = (4 * cpus).max(16);
                let mut threads: Vec<usize> = (1..=cpus).collect();
                threads.extend(
                    (0..)
                        .map(|shift| 1usize << shift)
                        .skip_while(|&n| n <= cpus)
                        .take_while(|&n| n <= most),
                );
                Settings {
                    mode,
                    threads,
                    repetitions: 9,
                    target_run: Duration::from_millis(150),
                    min_ops_per_thread: 10_000,
                }
            }
            Mode::Smoke => Settings {
                mode,
                threads: vec![1, 2],
                repetitions: 3,
                target_run: Duration::from_micros(300),
                min_ops_per_thread: 20,
            },
        }
    }
}

/// What one timed run did: its wall time and how many operations all its threads did.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// From the first thread's start to the last one's end.
    pub wall: Duration,
    /// Operations done in that time, by all threads together.
    pub ops: u64,
}

/// One timed run of an implementation: `(threads, ops_per_thread) -> Run`. What "one
/// operation" is comes with the table; a workload may round `ops_per_thread` (to whole
/// batches, say) and reports the operations it really did.
pub type Workload<'a> = Box<dyn Fn(usize, u64) -> Run + 'a>;

/// One implementation in a table.
pub struct Contender<'a> {
    /// How the tables, the JSON and the plots name it.
    pub name: String,
    /// What a timed run of it does.
    pub workload: Workload<'a>,
}

impl<'a> Contender<'a> {
    /// `name`, measured by `workload`.
    pub fn new(name: impl Into<String>, workload: impl Fn(usize, u64) -> Run + 'a) -> Self {
        Contender {
            name: name.into(),
            workload: Box::new(workload),
        }
    }
}

/// A table to measure: every contender at every thread count.
pub struct TableSpec<'a> {
    /// A short stable identifier (JSON key, plot file name).
    pub id: &'static str,
    /// The heading.
    pub title: String,
    /// What one operation is, and anything else a reader needs to trust the figures.
    pub note: String,
    /// The contender every ratio is taken against.
    pub baseline: String,
    /// The thread counts this table is measured at.
    pub threads: Vec<usize>,
    /// The implementations compared.
    pub contenders: Vec<Contender<'a>>,
    /// Whether every timed run is made in a process of its own (see [`super::isolate`]);
    /// otherwise in this one.
    pub isolated: bool,
    /// The contender the table is about, if it is about one: it is then also compared with
    /// every other contender directly, round by round (see [`Table::with_head_to_head`]).
    pub focus: Option<String>,
}

impl TableSpec<'_> {
    /// How many figures measuring this table produces.
    pub fn figure_count(&self) -> usize {
        self.contenders.len() * self.threads.len()
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn ns_per_op(run: Run) -> f64 {
    assert!(run.ops > 0, "a run that did nothing");
    // A run too fast for the clock would read 0; count it as one nanosecond in all.
    run.wall.as_nanos().max(1) as f64 / run.ops as f64
}

/// Nanoseconds per operation of `workload` at `threads`, from a run long enough to time:
/// starting small, multiplying the work until a run lasts an eighth of the target and so
/// does a second run of the same size, then keeping the faster of the two. Doubles as the
/// warm-up.
///
/// A run can be slow for reasons that do not recur: an allocator setting up its heap, first
/// page faults, a preemption. Sizing from such a run alone once put mimalloc's whole 16-byte
/// table at the 1,000-operation floor (its 16-operation first run took over 10 ms), so every
/// figure timed thread start-up more than the allocator. A size whose second run is short
/// was not long enough, and the work grows on.
fn calibrate(workload: &Workload<'_>, threads: usize, settings: &Settings) -> f64 {
    let long_enough = settings.target_run / 8;
    let mut ops = 16;
    loop {
        let run = workload(threads, ops);
        let last = ops >= 1 << 30;
        if run.wall >= long_enough || last {
            let again = workload(threads, ops);
            if again.wall >= long_enough || last {
                return ns_per_op(run).min(ns_per_op(again));
            }
        }
        ops *= 4;
    }
}

/// One timed run of `contender` of `spec`: in this process, or, for an isolated table, in a
/// child that warms it up first (the calibration, in this process, only sizes the runs).
fn timed_run(
    spec: &TableSpec<'_>,
    contender: &Contender<'_>,
    settings: &Settings,
    threads: usize,
    ops: u64,
) -> std::io::Result<Run> {
    if !spec.isolated {
        return Ok((contender.workload)(threads, ops));
    }
    super::isolate::sample_in_child(&super::isolate::SampleRequest {
        mode: settings.mode,
        table: spec.id.into(),
        contender: contender.name.clone(),
        threads,
        ops,
    })
}

/// Measure every contender of `spec` at every thread count, ticking `progress` once per
/// figure, and return the table with ratios to the baseline; an error when a child
/// measuring an isolated table's sample fails.
///
/// The contenders take turns: each repetition (a round) at a thread count runs every
/// contender once, in order, before the next round starts. A host whose speed drifts during
/// the table (frequency, neighbours on a shared machine) then moves the samples of one round
/// alike, and each ratio is the median of the per-round ratios (see [`Table::with_ratios`]),
/// so a slow stretch that takes in a whole round cancels out of it. At one thread every
/// sample of a round runs on the same CPU, the rounds on each allowed CPU in turn (see
/// `affinity`): this host's CPUs slow down independently of each other.
pub fn measure_table(
    spec: &TableSpec<'_>,
    settings: &Settings,
    progress: &ProgressBar,
) -> std::io::Result<Table> {
    let first_threads = *spec.threads.first().expect("a table has thread counts");
    let cpus = affinity::allowed_cpus();
    // Enough operations in all for one target run if nothing scaled or contended, shared
    // out among the threads below.
    let total_ops: Vec<f64> = spec
        .contenders
        .iter()
        .map(|contender| {
            progress.set_message(format!("{}: {} (calibrating)", spec.id, contender.name));
            let calibrated_ns = calibrate(&contender.workload, first_threads, settings);
            settings.target_run.as_nanos() as f64 / calibrated_ns
        })
        .collect();
    let mut points: Vec<Vec<Point>> = spec.contenders.iter().map(|_| Vec::new()).collect();
    for &threads in &spec.threads {
        progress.set_message(format!("{}: {threads} thread(s)", spec.id));
        let ops_per_thread: Vec<u64> = total_ops
            .iter()
            .map(|&total| {
                ((total * first_threads as f64 / threads as f64) as u64)
                    .clamp(settings.min_ops_per_thread, 1 << 32)
            })
            .collect();
        let mut samples: Vec<Vec<f64>> = spec.contenders.iter().map(|_| Vec::new()).collect();
        for round in 0..settings.repetitions {
            // One thread: the whole round on one CPU, the rounds on each CPU in turn.
            let cpu = (threads == 1 && !cpus.is_empty()).then(|| cpus[round % cpus.len()]);
            for (i, contender) in spec.contenders.iter().enumerate() {
                let run = affinity::pinned(cpu, || {
                    timed_run(spec, contender, settings, threads, ops_per_thread[i])
                })??;
                samples[i].push(ns_per_op(run));
            }
        }
        for (i, samples) in samples.into_iter().enumerate() {
            points[i].push(Point {
                threads,
                ns_per_op: median(&samples),
                ratio_to_baseline: f64::NAN,
                samples_ns_per_op: samples,
                ops_per_thread: ops_per_thread[i],
            });
        }
        progress.inc(spec.contenders.len() as u64);
    }
    let series = spec
        .contenders
        .iter()
        .zip(points)
        .map(|(contender, points)| Series {
            implementation: contender.name.clone(),
            points,
        })
        .collect();
    Ok(Table::with_ratios(
        spec.id,
        spec.title.clone(),
        spec.note.clone(),
        spec.baseline.clone(),
        series,
    )
    .with_head_to_head(spec.focus.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }

    /// A workload whose runs take 20 µs (thread start-up) plus 10 ns per operation; the
    /// first run of a size for which `disturbs` holds also pays a one-time 50 ms (an
    /// allocator setting itself up, a preemption).
    fn disturbed_once(disturbs: impl Fn(u64) -> bool + 'static) -> Workload<'static> {
        let done = std::cell::Cell::new(false);
        Box::new(move |threads, ops| {
            let extra = if disturbs(ops) && !done.replace(true) {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            Run {
                wall: extra + Duration::from_micros(20) + Duration::from_nanos(10 * ops),
                ops: threads as u64 * ops,
            }
        })
    }

    fn assert_calibrated_near_10_ns(workload: Workload<'_>) {
        let ns = calibrate(&workload, 1, &Settings::for_mode(Mode::Quick, 2));
        assert!(
            (ns - 10.0).abs() < 0.5,
            "calibrated at {ns} ns per op, not about 10"
        );
    }

    #[test]
    fn calibration_is_not_sized_by_a_slow_first_run() {
        // The 16-operation first run lasts long enough; its repeat does not, so the work
        // grows until the start-up no longer counts.
        assert_calibrated_near_10_ns(disturbed_once(|_| true));
    }

    #[test]
    fn calibration_keeps_the_faster_of_two_runs_of_the_final_size() {
        // At 10 ns per op, 2^20 ops are the first size to last the 10 ms quick mode asks
        // for; the first run of that size is disturbed, its repeat is not.
        assert_calibrated_near_10_ns(disturbed_once(|ops| ops >= 1 << 20));
    }

    #[test]
    fn full_mode_goes_to_four_times_the_cpus() {
        assert_eq!(Settings::for_mode(Mode::Full, 2).threads, [1, 2, 4, 8, 16]);
        assert_eq!(
            Settings::for_mode(Mode::Full, 6).threads,
            [1, 2, 3, 4, 5, 6, 8, 16]
        );
        assert_eq!(Settings::for_mode(Mode::Quick, 2).threads, [1, 2, 4, 8]);
    }
}
