//! The rseq environment the figures were measured in, from `rseq_sys::status()`.

use rseq_sys::Owner;
use serde::Serialize;
use std::fmt;

/// What a reader needs to know to interpret the figures: who registers rseq (or why nothing
/// does, so every structure ran its fallback) and how many CPUs there are.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// `glibc`, `self` or `unavailable (reason)`.
    pub owner: String,
    /// Whether the per-CPU fast paths ran (false: every structure took its fallback).
    pub rseq_available: bool,
    /// Bytes of kernel-filled rseq fields the registration covers.
    pub feature_size: u32,
    /// The main thread's CPU when the report started.
    pub cpu_id: Option<u32>,
    /// The main thread's memory-map concurrency id, where the feature size covers it.
    pub mm_cid: Option<u32>,
    /// The main thread's NUMA node, where the feature size covers it.
    pub node_id: Option<u32>,
    /// Why the main thread has no rseq area although the process has an owner.
    pub thread_failure: Option<String>,
    /// Possible CPUs (rseq-sys sizes its per-CPU arrays by this).
    pub possible_cpus: usize,
    /// Hardware threads this process may run on.
    pub available_parallelism: usize,
    /// Whether membarrier's RSEQ commands are available (the per-CPU steals need them).
    pub membarrier_rseq: bool,
}

impl Environment {
    /// The environment now, from the calling thread.
    pub fn current() -> Self {
        let status = rseq_sys::status();
        Environment {
            owner: status.owner.to_string(),
            rseq_available: !matches!(status.owner, Owner::Unavailable(_)),
            feature_size: status.feature_size,
            cpu_id: status.cpu_id,
            mm_cid: status.mm_cid,
            node_id: status.node_id,
            thread_failure: status.thread_failure.map(|reason| reason.to_string()),
            possible_cpus: status.possible_cpus,
            available_parallelism: available_parallelism(),
            membarrier_rseq: status.membarrier_rseq,
        }
    }
}

/// Hardware threads this process may run on (1 when the system will not say).
pub fn available_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rseq owner:            {}", self.owner)?;
        if let Some(failure) = &self.thread_failure {
            writeln!(f, "main thread failure:   {failure}")?;
        }
        writeln!(f, "feature size:          {}", self.feature_size)?;
        writeln!(f, "mm_cid:                {}", OrUnavailable(self.mm_cid))?;
        writeln!(f, "node_id:               {}", OrUnavailable(self.node_id))?;
        writeln!(f, "possible CPUs:         {}", self.possible_cpus)?;
        writeln!(f, "available parallelism: {}", self.available_parallelism)?;
        writeln!(
            f,
            "membarrier RSEQ:       {}",
            if self.membarrier_rseq { "yes" } else { "no" }
        )?;
        if !self.rseq_available {
            writeln!(
                f,
                "(no rseq: every percpu figure below is its fallback path)"
            )?;
        }
        Ok(())
    }
}
