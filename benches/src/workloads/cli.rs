//! The workloads binary's command line, parsed by hand like the report's.

use super::dispatch::AllocatorChoice;
use super::{workload, Workload, WORKLOADS};
use std::path::PathBuf;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Multiplies every workload's amount of work (1 is the quick run).
    pub scale: f64,
    /// Child processes per (workload, allocator); the figures are their medians.
    pub repetitions: usize,
    /// The workloads to run, in the suite's order.
    pub workloads: Vec<&'static Workload>,
    /// The allocators to run them on, in the tables' order; always includes glibc's, the
    /// baseline.
    pub allocators: Vec<AllocatorChoice>,
    /// Where to write every figure as JSON, if anywhere.
    pub json: Option<PathBuf>,
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the workloads in child processes and report.
    Run(Options),
    /// Be one child: run `workload` once at `scale` on the allocator the environment names
    /// and print the result line.
    Child {
        /// The workload to run.
        workload: &'static Workload,
        /// Its scale.
        scale: f64,
    },
    /// Print [`USAGE`] and stop.
    Help,
}

/// The `--help` text.
pub const USAGE: &str = "\
usage: cargo run --release -p percpu-benches --bin percpu-workloads -- [--scale X]
           [--repetitions N] [--workloads LIST] [--allocators LIST] [--json PATH]

Runs allocator workloads after the mimalloc-bench suite (larson, xmalloc-test, cache-scratch,
mstress, glibc-simple, rptest, and 256 threads on few CPUs), each with each allocator
installed as the process's global allocator: every run is a child process of this binary.
Prints, per workload, the median wall time and the median peak resident set (VmHWM) of the
runs, each also as a ratio to glibc's malloc (std::alloc::System), then the geometric means
of those ratios across workloads. Every workload checks every block it allocated.

  --scale X          multiply every workload's work by X (default 1: the quick run, about
                     2-3 minutes on 2 cores with the default repetitions)
  --repetitions N    runs per workload and allocator; figures are medians (default 5)
  --workloads LIST   comma-separated subset of: larson, xmalloc-test, cache-scratch,
                     mstress, glibc-simple, rptest, many-threads (default: all)
  --allocators LIST  comma-separated subset of: percpu, system, mimalloc, jemalloc
                     (default: all; system, the baseline, is always run)
  --json PATH        also write every figure and sample to PATH as JSON
  -h, --help         this text

Internal: `--child WORKLOAD --scale X` runs one workload on the allocator named by
PERCPU_WORKLOAD_ALLOCATOR and prints its result line; the parent starts these.";

/// Parse the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        scale: 1.0,
        repetitions: 5,
        workloads: WORKLOADS.iter().collect(),
        allocators: AllocatorChoice::ALL.to_vec(),
        json: None,
    };
    let mut child = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.into())),
            _ => (arg, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .filter(|v| !v.is_empty() && !v.starts_with("--"))
                .ok_or_else(|| format!("{flag} needs {what}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--scale" => {
                let text = value("a number")?;
                options.scale = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--scale needs a positive number, not `{text}`"))?;
            }
            "--repetitions" => {
                let text = value("a count")?;
                options.repetitions = text
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--repetitions needs a count, not `{text}`"))?;
            }
            "--workloads" => {
                let list = value("a list")?;
                let mut chosen = Vec::new();
                for id in list.split(',') {
                    chosen.push(workload(id).ok_or_else(|| format!("unknown workload `{id}`"))?);
                }
                // In the suite's order, each once.
                options.workloads = WORKLOADS
                    .iter()
                    .filter(|w| chosen.iter().any(|c| c.id == w.id))
                    .collect();
            }
            "--allocators" => {
                let list = value("a list")?;
                let mut chosen = vec![AllocatorChoice::System];
                for id in list.split(',') {
                    chosen.push(
                        AllocatorChoice::from_id(id)
                            .ok_or_else(|| format!("unknown allocator `{id}`"))?,
                    );
                }
                options.allocators = AllocatorChoice::ALL
                    .into_iter()
                    .filter(|a| chosen.contains(a))
                    .collect();
            }
            "--json" => options.json = Some(PathBuf::from(value("a path")?)),
            "--child" => {
                let id = value("a workload")?;
                child = Some(workload(&id).ok_or_else(|| format!("unknown workload `{id}`"))?);
            }
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    Ok(match child {
        Some(workload) => Command::Child {
            workload,
            scale: options.scale,
        },
        None => Command::Run(options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn options(args: &[&str]) -> Options {
        match parse_strs(args) {
            Ok(Command::Run(options)) => options,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn defaults_run_everything_on_every_allocator() {
        let o = options(&[]);
        assert_eq!((o.scale, o.repetitions), (1.0, 5));
        assert_eq!(o.workloads.len(), WORKLOADS.len());
        assert_eq!(o.allocators, AllocatorChoice::ALL);
        assert!(o.json.is_none());
    }

    #[test]
    fn subsets_keep_the_suite_order_and_the_baseline() {
        let o = options(&[
            "--workloads",
            "rptest,larson",
            "--allocators=jemalloc,percpu",
            "--scale",
            "0.5",
            "--repetitions=7",
            "--json",
            "out.json",
        ]);
        let ids: Vec<&str> = o.workloads.iter().map(|w| w.id).collect();
        assert_eq!(ids, ["larson", "rptest"]);
        assert_eq!(
            o.allocators,
            [
                AllocatorChoice::PerCpu,
                AllocatorChoice::System,
                AllocatorChoice::Jemalloc
            ]
        );
        assert_eq!((o.scale, o.repetitions), (0.5, 7));
        assert_eq!(o.json, Some(PathBuf::from("out.json")));
    }

    #[test]
    fn child_and_help() {
        match parse_strs(&["--child", "mstress", "--scale", "2"]) {
            Ok(Command::Child { workload, scale }) => {
                assert_eq!((workload.id, scale), ("mstress", 2.0));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_strs(&["--scale", "2", "-h"]),
            Ok(Command::Help)
        ));
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        for bad in [
            &["--scale"][..],
            &["--scale", "0"],
            &["--scale", "-1"],
            &["--scale", "fast"],
            &["--repetitions", "0"],
            &["--workloads", "cfrac"],
            &["--allocators", "tcmalloc"],
            &["--json", "--scale"],
            &["--child", "nope"],
            &["--fast"],
            &["report.json"],
        ] {
            assert!(parse_strs(bad).is_err(), "{bad:?}");
        }
    }
}
