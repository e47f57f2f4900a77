//! `percpu-workloads`: the mimalloc-bench workloads, each run with each allocator installed
//! as this process's global allocator (one child process per run).
//! `cargo run --release -p percpu-benches --bin percpu-workloads [-- --help]`; see
//! `percpu_benches::workloads`.

use percpu_benches::workloads::cli::{self, Command};
use percpu_benches::workloads::dispatch::EnvSelectedAllocator;
use percpu_benches::workloads::runner;
use std::process::ExitCode;

/// Whichever allocator `PERCPU_WORKLOAD_ALLOCATOR` names, fixed at the first allocation.
#[global_allocator]
static GLOBAL: EnvSelectedAllocator = EnvSelectedAllocator::new();

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Child { workload, scale }) => match runner::run_child(workload, scale) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("percpu-workloads: verification failed: {error}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Run(options)) => {
            let summary = match runner::run(&options) {
                Ok(summary) => summary,
                Err(error) => {
                    eprintln!("percpu-workloads: {error}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{summary}");
            if let Some(path) = &options.json {
                if let Err(error) = summary.write_json(path) {
                    eprintln!("percpu-workloads: cannot write {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("JSON: {}", path.display());
            }
            println!("measured in {:.1} s", summary.measuring_seconds);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("percpu-workloads: {message}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}
