//! Per-architecture critical sections. The only place with inline assembly.

cfg_if::cfg_if! {
    if #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri), not(loom)))] {
        mod x86_64;
        pub(crate) use x86_64::*;
    }
}
