//! The operating-system backend: registration, membarrier, CPU counts.

cfg_if::cfg_if! {
    if #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom)))] {
        mod linux;
        pub(crate) use linux::*;
    } else {
        mod unsupported;
        pub(crate) use unsupported::*;
    }
}
