//! The percpu report: `cargo run --release -p percpu-benches [-- --full] [-- --json PATH]`.
//! See `percpu_benches::report` and `--help`.

use percpu_benches::report::{self, cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Run(options)) => match report::run(&options) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("percpu-benches: {error}");
                ExitCode::FAILURE
            }
        },
        Ok(cli::Command::Sample(request)) => match report::serve_sample(&request) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("percpu-benches {}: {error}", report::isolate::SAMPLE_FLAG);
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("percpu-benches: {message}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}
