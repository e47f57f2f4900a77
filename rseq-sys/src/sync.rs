//! The atomics and helpers every per-CPU structure uses, from loom under `cfg(loom)` and from
//! `std` otherwise (tokio's `src/loom/` facade, in small). Higher crates import their slot
//! atomics from here so that one build of a structure runs under loom with [`Simulated`]
//! and in production with [`Rseq`].
//!
//! [`Simulated`]: crate::Simulated
//! [`Rseq`]: crate::Rseq

cfg_if::cfg_if! {
    if #[cfg(loom)] {
        /// Atomic types (loom's under `cfg(loom)`).
        pub mod atomic {
            pub use loom::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
        }
        pub use loom::sync::{Arc, Mutex, MutexGuard};
        #[doc(hidden)]
        pub use loom::thread_local;

        /// Back off inside a spin loop (a loom yield under loom).
        pub fn spin_wait() {
            loom::thread::yield_now();
        }
    } else {
        /// Atomic types (loom's under `cfg(loom)`).
        pub mod atomic {
            pub use core::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
        }
        pub use std::sync::{Arc, Mutex, MutexGuard};
        #[doc(hidden)]
        pub use std::thread_local;

        /// Back off inside a spin loop (a loom yield under loom).
        pub fn spin_wait() {
            std::thread::yield_now();
        }
    }
}
