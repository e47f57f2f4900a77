//! A snapshot of the rseq environment, printed as `key: value` lines.

use crate::{Owner, Reason};
use core::fmt;

/// What rseq looks like for this process and the calling thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Who registers rseq areas.
    pub owner: Owner,
    /// Bytes of kernel-filled fields the registration covers (0 when unavailable).
    pub feature_size: u32,
    /// The calling thread's CPU number.
    pub cpu_id: Option<u32>,
    /// The calling thread's NUMA node, where covered by the feature size.
    pub node_id: Option<u32>,
    /// The calling thread's concurrency id, where covered by the feature size.
    pub mm_cid: Option<u32>,
    /// Why the calling thread has no area although the process has an owner.
    pub thread_failure: Option<Reason>,
    /// The number of possible CPUs.
    pub possible_cpus: usize,
    /// Whether membarrier's RSEQ commands are available.
    pub membarrier_rseq: bool,
}

/// The rseq environment now, from the calling thread.
pub fn status() -> Status {
    Status {
        owner: crate::owner(),
        feature_size: crate::feature_size(),
        cpu_id: crate::cpu_id(),
        node_id: crate::node_id(),
        mm_cid: crate::mm_cid(),
        thread_failure: crate::thread_failure(),
        possible_cpus: crate::possible_cpus(),
        membarrier_rseq: crate::membarrier_rseq(),
    }
}

struct OrUnavailable(Option<u32>);

impl fmt::Display for OrUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("unavailable"),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "owner: {}", self.owner)?;
        writeln!(f, "feature_size: {}", self.feature_size)?;
        writeln!(f, "cpu_id: {}", OrUnavailable(self.cpu_id))?;
        writeln!(f, "mm_cid: {}", OrUnavailable(self.mm_cid))?;
        writeln!(f, "node_id: {}", OrUnavailable(self.node_id))?;
        if let Some(reason) = self.thread_failure {
            writeln!(f, "thread: unregistered ({reason})")?;
        }
        writeln!(f, "possible_cpus: {}", self.possible_cpus)?;
        write!(
            f,
            "membarrier_rseq: {}",
            if self.membarrier_rseq { "yes" } else { "no" }
        )
    }
}
