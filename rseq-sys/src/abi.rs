//! The kernel's rseq ABI (`include/uapi/linux/rseq.h`), with its layout asserted at compile
//! time.
//!
//! Only what the ABI promises is here. In particular `cpu_id_start` is a field the kernel
//! owns and may validate: this crate never stores to it (tcmalloc's overlay of that field
//! broke on Linux 6.19).

use core::mem::{align_of, offset_of, size_of};

/// The per-thread area shared with the kernel (`struct rseq`).
///
/// The kernel writes `cpu_id_start`, `cpu_id`, `node_id` and `mm_cid` whenever the thread
/// returns to user space after preemption, migration or a signal; user space writes only
/// `rseq_cs`. Fields past [`FEATURE_SIZE_ORIGINAL`] exist only when the feature size says so.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct RseqArea {
    /// CPU number, always in range once registered (kernel-owned).
    pub cpu_id_start: u32,
    /// CPU number, or [`CPU_ID_UNINITIALIZED`] / [`CPU_ID_REGISTRATION_FAILED`] (kernel-owned).
    pub cpu_id: u32,
    /// Address of the current [`RseqCs`] descriptor, or 0 (user-owned).
    pub rseq_cs: u64,
    /// Deprecated flags; must stay 0.
    pub flags: u32,
    /// NUMA node of `cpu_id` (feature size >= 24).
    pub node_id: u32,
    /// Memory-map concurrency id (feature size >= 28, Linux >= 6.3).
    pub mm_cid: u32,
}

/// A critical section descriptor (`struct rseq_cs`), placed in the `__rseq_cs` section.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct RseqCs {
    /// Always 0.
    pub version: u32,
    /// Deprecated flags; always 0.
    pub flags: u32,
    /// First instruction of the critical section.
    pub start_ip: u64,
    /// Length of the critical section: the instruction after the commit ends it.
    pub post_commit_offset: u64,
    /// Where the kernel resumes on abort; preceded in memory by [`SIGNATURE`].
    pub abort_ip: u64,
}

/// The abort signature on x86_64: the 4 bytes before every abort handler, checked by the
/// kernel. Emitted as the immediate of a `ud1` instruction so that a disassembler stays in
/// sync and falling into it traps.
pub const SIGNATURE: u32 = 0x5305_3053;

/// `cpu_id` before the thread has been registered.
pub const CPU_ID_UNINITIALIZED: i32 = -1;
/// `cpu_id` after a failed registration (glibc writes it when its registration failed or
/// was disabled by a tunable).
pub const CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// `flags` argument of rseq(2) that unregisters.
pub const FLAG_UNREGISTER: i32 = 1;

/// Size of the original ABI's area, the minimum registration length.
pub const AREA_SIZE_ORIGINAL: usize = 32;
/// Bytes of fields the original ABI fills (`cpu_id_start` .. `flags`).
pub const FEATURE_SIZE_ORIGINAL: u32 = 20;

/// `getauxval` key: the size of the fields this kernel fills (Linux >= 6.3).
pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;
/// `getauxval` key: the alignment this kernel requires of an extended area (Linux >= 6.3).
pub const AT_RSEQ_ALIGN: u64 = 28;

/// Offset of `cpu_id`, the index of a per-CPU operation indexed by CPU number.
pub const OFFSET_CPU_ID: usize = offset_of!(RseqArea, cpu_id);
/// Offset of `rseq_cs`, the only field user space writes.
pub const OFFSET_RSEQ_CS: usize = offset_of!(RseqArea, rseq_cs);
/// Offset of `node_id`.
pub const OFFSET_NODE_ID: usize = offset_of!(RseqArea, node_id);
/// Offset of `mm_cid`, the index of a per-CPU operation indexed by concurrency id.
pub const OFFSET_MM_CID: usize = offset_of!(RseqArea, mm_cid);

/// The feature size at which a field ending at `offset + 4` is filled by the kernel.
pub const fn field_present(feature_size: u32, offset: usize) -> bool {
    feature_size as usize >= offset + 4
}

/// `membarrier` command: query the supported commands.
pub const MEMBARRIER_CMD_QUERY: i32 = 0;
/// `membarrier` command: abort rseq critical sections running on other CPUs of this process.
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
/// `membarrier` command: register this process for the command above.
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;
/// `membarrier` flag: target the one CPU named by the `cpu_id` argument.
pub const MEMBARRIER_CMD_FLAG_CPU: u32 = 1;

const _: () = {
    assert!(size_of::<RseqArea>() == 32);
    assert!(align_of::<RseqArea>() == 32);
    assert!(offset_of!(RseqArea, cpu_id_start) == 0);
    assert!(OFFSET_CPU_ID == 4);
    assert!(OFFSET_RSEQ_CS == 8);
    assert!(offset_of!(RseqArea, flags) == 16);
    assert!(OFFSET_NODE_ID == 20);
    assert!(OFFSET_MM_CID == 24);
    assert!(size_of::<RseqCs>() == 32);
    assert!(align_of::<RseqCs>() == 32);
    assert!(offset_of!(RseqCs, version) == 0);
    assert!(offset_of!(RseqCs, flags) == 4);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
    assert!(!field_present(FEATURE_SIZE_ORIGINAL, OFFSET_NODE_ID));
    assert!(field_present(28, OFFSET_MM_CID));
};
