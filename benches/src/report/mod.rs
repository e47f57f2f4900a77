//! The report: the README's main job. Measures percpu's structures against atomics and peer
//! crates in this run and prints side-by-side tables (ns per op and ratios to a named
//! baseline), writes every figure as JSON and one SVG plot per table.
//!
//! One idea per module: [`cli`] the flags, [`measure`] how a figure is timed, `affinity`
//! pinning one-thread rounds to a CPU, [`table`] the figures and their text layout, `env`
//! the rseq header, `counter`, `queue` and `alloc` the tables to measure, `plot` the SVGs
//! and `json` the machine-readable copy.

mod affinity;
mod alloc;
pub mod cli;
mod counter;
mod env;
pub mod isolate;
mod json;
pub mod measure;
mod plot;
mod queue;
pub mod table;

pub use env::Environment;

use cli::Options;
use indicatif::{ProgressBar, ProgressStyle};
use measure::{measure_table, Settings, TableSpec};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;
use table::Table;

/// Everything one run measured, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How much measuring was done.
    pub settings: Settings,
    /// The rseq environment the figures were measured in.
    pub environment: Environment,
    /// Seconds the measuring took.
    pub measuring_seconds: f64,
    /// Every table, in the order printed.
    pub tables: Vec<Table>,
    /// The SVG plot of each table, in the same order.
    pub plots: Vec<PathBuf>,
}

/// Where a run wrote its files.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The JSON report.
    pub json: PathBuf,
    /// One SVG per table.
    pub plots: Vec<PathBuf>,
}

/// `report.json` in `percpu-report/` of the cargo target directory this binary was built
/// in (recognised by the `CACHEDIR.TAG` cargo leaves there), else under `./target/`.
pub fn default_json_path() -> PathBuf {
    let target_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| PathBuf::from("target"));
    target_dir.join("percpu-report").join("report.json")
}

/// The SVG beside `json` for the table `id`: `<stem>-<id>.svg`.
fn plot_path(json: &Path, id: &str) -> PathBuf {
    let stem = json
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy());
    json.with_file_name(format!("{stem}-{id}.svg"))
}

fn header(settings: &Settings, environment: &Environment) -> String {
    let threads: Vec<String> = settings.threads.iter().map(usize::to_string).collect();
    format!(
        "percpu report, {mode} mode: threads {threads}; each figure is the median of \
         {reps} timed runs of about {target:?} each, one per round (a round times every \
         contender once, in turn; at one thread all on the same CPU, the CPUs taking turns \
         by round), and each ratio the median of the per-round ratios\n\
         ns per op = wall time from the first thread's start to the last one's end (all \
         released by one barrier, each doing a fixed number of ops) / all threads' ops\n\n\
         {environment}",
        mode = settings.mode.name(),
        threads = threads.join(", "),
        reps = settings.repetitions,
        target = settings.target_run,
    )
}

/// Every table this report measures.
fn table_specs(settings: &Settings) -> Vec<TableSpec<'static>> {
    let mut specs = counter::tables(settings);
    specs.extend(queue::tables(settings));
    specs.extend(alloc::tables(settings));
    specs
}

/// The child's side of a sample measured in its own process: the tables of the parent's
/// mode, the one contender warmed up and timed; the line to print back.
pub fn serve_sample(request: &isolate::SampleRequest) -> Result<String, String> {
    // The parent's settings, without probing rseq again as `Environment::current` would.
    let settings = Settings::for_mode(request.mode, env::available_parallelism());
    isolate::serve(request, &table_specs(&settings))
}

/// Measure everything `options` asks for, print the environment and each table to stdout
/// as it is done (progress goes to stderr), then write the SVG plots and the JSON.
pub fn run(options: &Options) -> io::Result<Outputs> {
    let environment = Environment::current();
    let settings = Settings::for_mode(options.mode, environment.available_parallelism);
    println!("{}", header(&settings, &environment));

    let specs = table_specs(&settings);
    let figures = specs.iter().map(TableSpec::figure_count).sum::<usize>();
    let progress = ProgressBar::new(figures as u64).with_style(
        ProgressStyle::with_template("{bar:32} {pos}/{len} figures, {elapsed} {msg}")
            .expect("a valid progress template"),
    );
    let started = Instant::now();
    let mut tables = Vec::with_capacity(specs.len());
    for spec in &specs {
        let table = measure_table(spec, &settings, &progress)?;
        progress.suspend(|| println!("{table}"));
        tables.push(table);
    }
    progress.finish_and_clear();
    let measuring_seconds = started.elapsed().as_secs_f64();

    let json = options.json.clone().unwrap_or_else(default_json_path);
    if let Some(dir) = json.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let plots: Vec<PathBuf> = tables.iter().map(|t| plot_path(&json, &t.id)).collect();
    for (table, path) in tables.iter().zip(&plots) {
        plot::write_svg(table, path)?;
    }
    let report = Report {
        settings,
        environment,
        measuring_seconds,
        tables,
        plots: plots.clone(),
    };
    json::write_json(&report, &json)?;
    println!(
        "measured in {measuring_seconds:.1} s; JSON: {}; plots: {}",
        json.display(),
        plot_path(&json, "*").display()
    );
    Ok(Outputs { json, plots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_go_beside_the_json() {
        assert_eq!(
            plot_path(Path::new("out/run.json"), "counter-add"),
            Path::new("out/run-counter-add.svg")
        );
        assert_eq!(
            plot_path(Path::new("run.json"), "x"),
            Path::new("run-x.svg")
        );
    }

    #[test]
    fn every_table_has_its_baseline_among_its_contenders() {
        for mode in [cli::Mode::Quick, cli::Mode::Full, cli::Mode::Smoke] {
            let settings = Settings::for_mode(mode, 2);
            for spec in table_specs(&settings) {
                assert!(!spec.threads.is_empty(), "{}", spec.id);
                assert!(
                    spec.contenders.iter().any(|c| c.name == spec.baseline),
                    "{}",
                    spec.id
                );
            }
        }
    }
}
