//! The command line: a few flags, parsed by hand.

use std::path::PathBuf;

/// How much measuring to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Thread counts 1, 2, 4 and 8, short runs: about a minute and a half on 2 cores.
    Quick,
    /// More thread counts, more and longer runs.
    Full,
    /// The smallest run that still fills every table, for the tests (not in `--help`).
    Smoke,
}

impl Mode {
    /// The mode's flag without dashes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
            Mode::Smoke => "smoke",
        }
    }

    /// The mode a flag (`--quick`, `--full`, `--smoke`) names.
    pub fn from_flag(flag: &str) -> Option<Mode> {
        [Mode::Quick, Mode::Full, Mode::Smoke]
            .into_iter()
            .find(|mode| flag.strip_prefix("--") == Some(mode.name()))
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How much measuring to do.
    pub mode: Mode,
    /// Where the JSON goes (the plots go beside it); `None` for the default place.
    pub json: Option<PathBuf>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Measure and report.
    Run(Options),
    /// Print [`USAGE`] and stop.
    Help,
    /// Measure one sample and print it: the child side of a table measured one process per
    /// sample (see [`super::isolate`]; not in `--help`).
    Sample(super::isolate::SampleRequest),
}

/// The `--help` text.
pub const USAGE: &str = "\
usage: cargo run --release -p percpu-benches -- [--quick | --full] [--json PATH]

Measures percpu's counter, queue, pool and allocator against atomics and peer crates in
this run, and prints side-by-side tables (ns per operation, and each implementation's
ratio to a named baseline).

  --quick      the default: 1, 2, 4 and 8 threads, median of 5 short runs (about a minute
               and a half on 2 cores)
  --full       every thread count up to the CPUs, then powers of two up to 4x the CPUs
               (at least 16); median of 9 longer runs (several minutes on 2 cores)
  --json PATH  write every figure to PATH; the SVG plots go beside it as
               <stem>-<table>.svg (default: target/percpu-report/report.json)
  -h, --help   this text

The allocator tables time each run in a process of their own (this binary run again).
PERCPU_NO_RSEQ=1 measures the fallback paths (no rseq).";

/// Parse the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some(super::isolate::SAMPLE_FLAG) {
        return super::isolate::SampleRequest::parse(&args[1..]).map(Command::Sample);
    }
    let mut options = Options {
        mode: Mode::Quick,
        json: None,
    };
    let mut modes_given = 0;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(mode) = Mode::from_flag(&arg) {
            modes_given += 1;
            options.mode = mode;
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--json" => {
                let path = args.next().ok_or("--json needs a path")?;
                options.json = Some(json_path(&path)?);
            }
            _ => match arg.strip_prefix("--json=") {
                Some(path) => options.json = Some(json_path(path)?),
                None => return Err(format!("unknown argument `{arg}`")),
            },
        }
    }
    if modes_given > 1 {
        return Err("give at most one of --quick and --full".into());
    }
    Ok(Command::Run(options))
}

fn json_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() || path.starts_with("--") {
        return Err(format!("--json needs a path, not `{path}`"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn quick_is_the_default() {
        assert_eq!(
            parse_strs(&[]),
            Ok(Command::Run(Options {
                mode: Mode::Quick,
                json: None
            }))
        );
    }

    #[test]
    fn modes_and_json_path() {
        assert_eq!(
            parse_strs(&["--full", "--json", "out/r.json"]),
            Ok(Command::Run(Options {
                mode: Mode::Full,
                json: Some("out/r.json".into())
            }))
        );
        assert_eq!(
            parse_strs(&["--json=r.json", "--smoke"]),
            Ok(Command::Run(Options {
                mode: Mode::Smoke,
                json: Some("r.json".into())
            }))
        );
        assert_eq!(parse_strs(&["--quick", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        assert!(parse_strs(&["--json"]).is_err());
        assert!(parse_strs(&["--json", "--full"]).is_err());
        assert!(parse_strs(&["--quick", "--full"]).is_err());
        assert!(parse_strs(&["--fast"]).is_err());
        assert!(parse_strs(&["report.json"]).is_err());
    }
}
