//! Per-CPU operations before `main` (an early constructor, or an allocator during startup):
//! they run or fall back, and count exactly.

use rseq_sys::sync::atomic::{AtomicU64, Ordering};
use rseq_sys::{Backend, Outcome, Rseq, SlotArray};

static EARLY_SLOTS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static EARLY_FALLBACK: AtomicU64 = AtomicU64::new(0);
static EARLY_OWNER_DECIDED: AtomicU64 = AtomicU64::new(0);

extern "C" fn before_main() {
    for _ in 0..1000 {
        loop {
            match Rseq::CPU_ID.add(SlotArray::from_slice(&EARLY_SLOTS), 1) {
                Outcome::Completed { .. } => break,
                Outcome::Aborted => continue,
                Outcome::NoCpu => {
                    EARLY_FALLBACK.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    EARLY_OWNER_DECIDED.store(1, Ordering::Relaxed);
}

/// Runs before `main`, like an early constructor.
#[used]
#[link_section = ".init_array"]
static BEFORE_MAIN: extern "C" fn() = before_main;

#[test]
fn use_before_main_counts_exactly() {
    assert_eq!(
        EARLY_OWNER_DECIDED.load(Ordering::Relaxed),
        1,
        "the constructor ran"
    );
    let total: u64 = EARLY_SLOTS
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .sum::<u64>()
        + EARLY_FALLBACK.load(Ordering::Relaxed);
    assert_eq!(total, 1000);
}
