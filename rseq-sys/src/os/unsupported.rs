//! Everywhere rseq critical sections cannot run: other systems, architectures without
//! critical sections yet, Miri and loom. Every operation reports no CPU, so every higher
//! crate runs its fallback path.

use crate::{Owner, Reason};

pub(crate) fn owner() -> Owner {
    Owner::Unavailable(Reason::UnsupportedPlatform)
}

pub(crate) fn feature_size() -> u32 {
    0
}

pub(crate) fn thread_failure() -> Option<Reason> {
    None
}

pub(crate) fn read_field(_offset: usize) -> Option<u32> {
    None
}

pub(crate) fn acquire_registration() -> Result<(), Reason> {
    Err(Reason::UnsupportedPlatform)
}

pub(crate) fn release_registration() {}

pub(crate) fn possible_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub(crate) fn membarrier_rseq_ready() -> bool {
    false
}

pub(crate) fn fence(_cpu: Option<usize>) -> Result<(), Reason> {
    // No critical section can be running anywhere, so there is nothing to abort.
    Ok(())
}

pub(crate) fn is_registered() -> bool {
    false
}
