//! Helpers shared by the test binaries that place threads on CPUs.

/// Pin the calling thread to `cpu`; false when the kernel refuses.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch
    // it and the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The slot the allocator's per-CPU caches use for this thread now: its `mm_cid` where the
/// kernel has it (as `Rseq::CONCURRENCY_ID` indexes), else its CPU.
pub fn slot() -> Option<u32> {
    rseq_sys::mm_cid().or_else(rseq_sys::cpu_id)
}
