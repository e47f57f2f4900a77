//! Fuzz rseq-sys's primitives through the `Backend` facade on a `Simulated` machine: any
//! sequence of CPU changes (including no CPU and indices past the arrays), injected aborts
//! (counted and random), adds, compare-and-stores, linked pushes and pops with remote locks
//! and steals, bounded word pushes and pops with remote stops, copy-then-commit pushes and
//! pops, and fences, checked against a reference model after every step.
//!
//! The harness and the byte decoder are rseq-sys's model test (`rseq-sys/tests/model/`),
//! shared so that the property test and the fuzzer check the same things.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../rseq-sys/tests/model/harness.rs"]
mod harness;
#[path = "../../rseq-sys/tests/model/op.rs"]
mod op;

// `harness.rs` names its sibling `super::op`; the crate root is its parent here.
use harness::Harness;

fuzz_target!(|data: &[u8]| {
    Harness::run(&op::decode(data));
});
