//! What the criterion suites share.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};
use percpu_benches::contended;

/// Bench `id` in `group` as [`contended`] runs it: criterion's iterations done by each of
/// `threads` threads at once, each with its own state from `make`, and reported per
/// operation of the aggregate throughput.
pub fn bench_contended<S, M, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    threads: usize,
    make: M,
    op: F,
) where
    M: Fn(usize) -> S + Sync,
    F: Fn(&mut S) + Sync,
{
    group.bench_function(id, |b| {
        b.iter_custom(|iters| contended(threads, iters, &make, &op))
    });
}
