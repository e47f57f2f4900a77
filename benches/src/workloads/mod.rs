//! The allocator community's workloads (after the mimalloc-bench suite), rewritten in Rust,
//! each run with each compared allocator installed as the process's global allocator: the
//! `percpu-workloads` binary.
//!
//! One process per (workload, allocator, repetition): the parent ([`runner`]) starts this
//! binary again as a child with [`dispatch::ALLOCATOR_VAR`] naming the allocator, the child
//! runs one workload, times it, reads its peak resident set and prints both back, and the
//! parent prints per-workload and summary tables ([`summary`]) of the medians and their
//! ratios to glibc's malloc. Every workload checks what it allocated ([`block`]): a run that
//! loses, duplicates or corrupts a block fails instead of producing a figure.
//!
//! One module per workload; [`rng`] is their shared random numbers, [`cli`] the flags.

pub mod block;
mod cache_scratch;
pub mod cli;
pub mod dispatch;
mod glibc_simple;
mod larson;
mod many_threads;
mod mstress;
pub mod rng;
mod rptest;
pub mod runner;
pub mod summary;
mod xmalloc;

/// One workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// The name `--workloads` takes and the tables show.
    pub id: &'static str,
    /// What it runs at a given `--scale`: threads, counts and sizes.
    pub describe: fn(f64) -> String,
    /// Run it at a given `--scale`; the number of blocks allocated (every one checked and
    /// freed), or what went wrong.
    pub run: fn(f64) -> Result<u64, String>,
}

/// Every workload, in the order they run and are shown.
pub const WORKLOADS: [Workload; 7] = [
    Workload {
        id: "larson",
        describe: larson::describe,
        run: larson::run,
    },
    Workload {
        id: "xmalloc-test",
        describe: xmalloc::describe,
        run: xmalloc::run,
    },
    Workload {
        id: "cache-scratch",
        describe: cache_scratch::describe,
        run: cache_scratch::run,
    },
    Workload {
        id: "mstress",
        describe: mstress::describe,
        run: mstress::run,
    },
    Workload {
        id: "glibc-simple",
        describe: glibc_simple::describe,
        run: glibc_simple::run,
    },
    Workload {
        id: "rptest",
        describe: rptest::describe,
        run: rptest::run,
    },
    Workload {
        id: "many-threads",
        describe: many_threads::describe,
        run: many_threads::run,
    },
];

/// The workload named `id`.
pub fn workload(id: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.id == id)
}

/// The CPUs this process may run on: the thread count of the workloads that use one thread
/// per CPU, as mimalloc-bench runs them.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `base` times `scale`, rounded, at least 1.
fn scaled(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale).round() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_found() {
        for w in &WORKLOADS {
            assert_eq!(workload(w.id).map(|found| found.id), Some(w.id));
            assert!(!(w.describe)(1.0).is_empty());
        }
        assert!(workload("cfrac").is_none());
    }

    #[test]
    fn scaling_rounds_and_never_reaches_zero() {
        assert_eq!(scaled(1000, 0.5), 500);
        assert_eq!(scaled(1000, 0.0001), 1);
        assert_eq!(scaled(3, 1.0), 3);
    }

    /// Every workload, tiny, on the test binary's own allocator: it balances its ledgers and
    /// allocates the same number of blocks each time (the parent relies on both).
    #[test]
    fn every_workload_runs_and_balances_at_a_tiny_scale() {
        for w in &WORKLOADS {
            let first = (w.run)(0.002).unwrap_or_else(|e| panic!("{}: {e}", w.id));
            assert!(first > 0, "{}", w.id);
            assert_eq!((w.run)(0.002), Ok(first), "{}", w.id);
        }
    }
}
