//! Giving free memory back to the system: on request ([`release_memory`]), automatically
//! past a threshold ([`set_release_threshold`], `PERCPU_ALLOC_RELEASE_BYTES`), and on a
//! clock ([`set_release_interval`], `PERCPU_ALLOC_RELEASE_INTERVAL_MS`).
//!
//! What can go back is a wholly free span: one whose every object sits on its class's
//! central free list. [`release_memory`] first moves every cached free object there (the
//! per-CPU caches through the membarrier stop protocol, see `front::drain_all`, and the
//! transfer caches), then sweeps each class's list (`central::release_free_spans`) and
//! hands the wholly free spans to the page heap, which releases their memory with
//! `MADV_DONTNEED` and keeps the address range for reuse. Large allocations are unmapped
//! when freed, or kept whole for reuse within a budget (see `large_cache`), which the clock
//! and [`release_memory`] empty.
//!
//! The automatic release runs in the slow path that puts objects on a central list (a
//! transfer cache overflowing): once the free bytes on the central lists exceed the
//! threshold above the level left by the previous sweep, that thread sweeps every class
//! (no per-CPU drain: the two fences it takes interrupt every CPU, too costly to do
//! unasked). So at most about `threshold` bytes of central free memory build up between
//! sweeps, and a sweep's cost (sorting the free lists) is paid once per `threshold` bytes
//! freed; no background thread is needed. Free objects still in per-CPU and transfer caches
//! (bounded: the per-CPU budget, and up to 1 MiB or 1024 objects per class) are not counted.
//!
//! The clock: every miss of a per-CPU cache (and every slow path of the stripe caches, and
//! every free of a large block) reads a coarse monotonic clock, and the first one after
//! each release interval (default one second) ticks, unless another thread is releasing:
//!
//! - the per-CPU caches of every slot that had no miss since the previous tick are drained
//!   (membarrier fences, as [`release_memory`] does) and their capacities reset, so a CPU
//!   that stopped allocating keeps nothing; when one was, the transfer caches are drained
//!   too (the process is calming down);
//! - the stripe caches are drained;
//! - the central lists are swept when their free bytes grew by at least 1 MiB since the
//!   previous tick's sweep left them;
//! - the freed large blocks kept for reuse since before the previous tick are unmapped.
//!
//! So a process whose allocation rate falls shrinks within an interval or two of its next
//! slow path. One that stops allocating altogether keeps what it had until it allocates
//! again or calls [`release_memory`]: nothing runs without an application thread.
use crate::spin::SpinLock;
use crate::{central, fork, front, large_cache, os, stripe_cache, transfer};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

/// Serialises releases (explicit and automatic) and the drain of remote per-CPU stacks
/// (one thief at a time). First in the fork lock order.
static RELEASE: SpinLock<()> = SpinLock::new(());

/// The automatic release threshold in bytes, 0 for none; [`UNREAD`] until the environment
/// was read (or [`set_release_threshold`] called).
static THRESHOLD: AtomicUsize = AtomicUsize::new(UNREAD);
pub(crate) const UNREAD: usize = usize::MAX;
/// Central free bytes above which the next automatic sweep runs (0: at the threshold).
static NEXT_SWEEP: AtomicUsize = AtomicUsize::new(0);

/// Give free memory back to the operating system; returns the bytes released.
///
/// Moves the free objects cached on every CPU, in the stripe caches and in the transfer
/// caches to the central lists, then releases every span of small objects that is wholly
/// free with `madvise(MADV_DONTNEED)` (the process's resident set falls at once; see the
/// crate docs for why not `MADV_FREE`). The spans stay mapped and are reused by later
/// allocations. The freed large blocks kept for reuse (see [`set_large_cache_bytes`]) are
/// unmapped, and count in the bytes returned.
///
/// [`set_large_cache_bytes`]: crate::set_large_cache_bytes
///
/// The per-CPU caches of other CPUs are drained with the membarrier fence protocol; where
/// the kernel has no `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` they stay as they are (at
/// most about 128 KiB per size class per CPU) and only what lies below them is released.
/// Allocation-free; takes locks only briefly per class, so other threads keep allocating.
pub fn release_memory() -> usize {
    fork::ensure_registered();
    let _release = RELEASE.lock();
    front::drain_all();
    for class in 0..crate::size_class::NUM_CLASSES {
        stripe_cache::drain(class);
        transfer::drain(class);
    }
    let released = sweep() + large_cache::release_all();
    NEXT_SWEEP.store(0, Ordering::Relaxed);
    LEFT_BY_TICK.store(central::free_bytes(), Ordering::Relaxed);
    released
}

/// Set the automatic release threshold: once more than `bytes` of free objects have built
/// up on the central free lists since the last sweep, the allocation slow path that notices
/// releases the wholly free spans (as [`release_memory`] does, minus the per-CPU drain).
/// `0` turns the automatic release off (the default unless `PERCPU_ALLOC_RELEASE_BYTES` is
/// set). Overrides the environment variable.
pub fn set_release_threshold(bytes: usize) {
    THRESHOLD.store(
        if bytes == UNREAD { UNREAD - 1 } else { bytes },
        Ordering::Relaxed,
    );
    NEXT_SWEEP.store(0, Ordering::Relaxed);
}

/// The automatic release threshold in bytes (0: off). Read from
/// `PERCPU_ALLOC_RELEASE_BYTES` at the first use unless [`set_release_threshold`] came
/// first.
pub fn release_threshold() -> usize {
    read_once(&THRESHOLD, threshold_from_environment)
}

/// A setting kept in `cell`, which holds [`UNREAD`] until the first use reads it with
/// `from_environment` (clamped below [`UNREAD`]). A setter that stored a value first wins.
pub(crate) fn read_once(cell: &AtomicUsize, from_environment: impl FnOnce() -> usize) -> usize {
    match cell.load(Ordering::Relaxed) {
        UNREAD => {
            let value = from_environment().min(UNREAD - 1);
            match cell.compare_exchange(UNREAD, value, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => value,
                Err(set) => set,
            }
        }
        value => value,
    }
}

/// `PERCPU_ALLOC_RELEASE_BYTES`: unset, empty or malformed means 0 (off).
fn threshold_from_environment() -> usize {
    bytes_from_environment(c"PERCPU_ALLOC_RELEASE_BYTES").unwrap_or(0)
}

/// The environment variable `name` as a byte count with an optional `k`, `m` or `g` suffix
/// (KiB, MiB, GiB); `None` when unset, empty or malformed.
pub(crate) fn bytes_from_environment(name: &core::ffi::CStr) -> Option<usize> {
    parse_bytes(environment(name)?)
}

/// The environment variable `name`'s bytes, read without allocating.
fn environment(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a NUL-terminated name; it neither allocates nor takes a lock.
    // The value is read at once (as rseq-sys reads `PERCPU_NO_RSEQ`).
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string in the environment block, which the
    // allocator's callers do not modify (nor does Rust's `set_var` free old values).
    Some(unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes())
}

fn parse_bytes(text: &[u8]) -> Option<usize> {
    let (digits, shift) = match text.last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    parse_decimal(digits)?.checked_mul(1 << shift)
}

/// A plain decimal number (no sign, no suffix); `None` when empty or malformed.
fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    let mut n = 0usize;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
    }
    Some(n)
}

/// Sweep every class; the caller holds [`RELEASE`].
fn sweep() -> usize {
    (0..crate::size_class::NUM_CLASSES)
        .map(central::release_free_spans)
        .sum()
}

/// The automatic release: called after objects went onto a central list, holding no lock.
pub(crate) fn maybe_release() {
    let threshold = release_threshold();
    if threshold == 0 {
        return;
    }
    let free = central::free_bytes();
    let next = NEXT_SWEEP.load(Ordering::Relaxed);
    let trigger = if next == 0 { threshold } else { next };
    if free <= trigger {
        // Free objects were reused since the last sweep: lower the bar with them, so the
        // next sweep comes after `threshold` more bytes, not after the old high mark.
        if next != 0 && free.saturating_add(threshold) < next {
            NEXT_SWEEP.store(free.saturating_add(threshold), Ordering::Relaxed);
        }
        return;
    }
    // Another thread releasing already does the work.
    let Some(_release) = RELEASE.try_lock() else {
        return;
    };
    // A span comes free only when all its objects are on the central list: the few that
    // threads without a CPU keep on their stripes would hold theirs back. Cheap to drain
    // (one short lock per stripe and class), unlike the per-CPU caches (a fence each).
    for class in 0..crate::size_class::NUM_CLASSES {
        stripe_cache::drain(class);
    }
    sweep();
    // What is left is fragmented (spans with objects in use): wait for `threshold` more.
    NEXT_SWEEP.store(
        central::free_bytes().saturating_add(threshold).max(1),
        Ordering::Relaxed,
    );
}

/// Milliseconds between ticks of the release clock, 0 for none; [`UNREAD`] until the
/// environment was read (or [`set_release_interval`] called).
static INTERVAL_MS: AtomicUsize = AtomicUsize::new(UNREAD);
const DEFAULT_INTERVAL_MS: usize = 1000;
/// When the next tick is due, on [`os::monotonic_coarse_ns`]; 0 until the first slow path
/// starts the clock.
static NEXT_TICK: AtomicU64 = AtomicU64::new(0);
/// Central free bytes the previous tick's sweep left behind (in fragmented spans).
static LEFT_BY_TICK: AtomicUsize = AtomicUsize::new(0);
/// A tick sweeps when the central free bytes grew by this much since.
const TICK_SWEEP_BYTES: usize = 1 << 20;

/// Set the release interval: at most this often, the first cache miss after it drains the
/// per-CPU caches of CPUs that had no miss since the last time, and releases the wholly
/// free spans (see the crate docs). [`Duration::ZERO`] turns it off. Overrides
/// `PERCPU_ALLOC_RELEASE_INTERVAL_MS`; the default is one second. Millisecond resolution
/// (rounded up), and the clock read is coarse (a few milliseconds).
pub fn set_release_interval(interval: Duration) {
    let ms = interval.as_nanos().div_ceil(1_000_000);
    INTERVAL_MS.store(
        usize::try_from(ms).unwrap_or(UNREAD - 1).min(UNREAD - 1),
        Ordering::Relaxed,
    );
    NEXT_TICK.store(0, Ordering::Relaxed);
}

/// The release interval (see [`set_release_interval`]): from
/// `PERCPU_ALLOC_RELEASE_INTERVAL_MS` at first use (`0` for off), one second when unset or
/// malformed.
pub fn release_interval() -> Duration {
    Duration::from_millis(interval_ms() as u64)
}

fn interval_ms() -> usize {
    read_once(&INTERVAL_MS, || {
        environment(c"PERCPU_ALLOC_RELEASE_INTERVAL_MS")
            .and_then(parse_decimal)
            .unwrap_or(DEFAULT_INTERVAL_MS)
    })
}

/// The release clock: called from slow paths holding no lock; ticks at most once per
/// interval (see the module docs).
pub(crate) fn maybe_tick() {
    let ms = interval_ms();
    if ms == 0 {
        return;
    }
    let now = os::monotonic_coarse_ns();
    let due = NEXT_TICK.load(Ordering::Relaxed);
    if now < due {
        return;
    }
    let next = now.saturating_add((ms as u64).saturating_mul(1_000_000));
    if NEXT_TICK
        .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
        || due == 0
    {
        // Another thread ticks, or this call only started the clock.
        return;
    }
    let Some(_release) = RELEASE.try_lock() else {
        return;
    };
    tick();
}

/// One tick; the caller holds [`RELEASE`].
fn tick() {
    let idle = front::drain_idle();
    for class in 0..crate::size_class::NUM_CLASSES {
        stripe_cache::drain(class);
        if idle > 0 {
            transfer::drain(class);
        }
    }
    let free = central::free_bytes();
    let left = LEFT_BY_TICK.load(Ordering::Relaxed);
    if free >= left.saturating_add(TICK_SWEEP_BYTES) {
        sweep();
        LEFT_BY_TICK.store(central::free_bytes(), Ordering::Relaxed);
    } else if free < left {
        LEFT_BY_TICK.store(free, Ordering::Relaxed);
    }
    large_cache::tick();
}

/// Take the release lock and keep it (the fork `prepare` handler; first in the order).
pub(crate) fn lock_for_fork() {
    RELEASE.lock_and_keep();
}

/// Release the lock taken by [`lock_for_fork`].
///
/// # Safety
/// As for [`SpinLock::unlock_kept`].
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded from the caller.
    unsafe { RELEASE.unlock_kept() }
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, parse_decimal};

    #[test]
    fn byte_counts_parse() {
        assert_eq!(parse_bytes(b"4096"), Some(4096));
        assert_eq!(parse_bytes(b"64k"), Some(64 << 10));
        assert_eq!(parse_bytes(b"256M"), Some(256 << 20));
        assert_eq!(parse_bytes(b"1g"), Some(1 << 30));
        assert_eq!(parse_bytes(b"0"), Some(0));
        for bad in [&b""[..], b"k", b"12x", b"-5", b"1.5m"] {
            assert_eq!(parse_bytes(bad), None);
        }
        assert_eq!(parse_decimal(b"250"), Some(250));
        assert_eq!(parse_decimal(b"1k"), None, "milliseconds take no suffix");
        assert_eq!(parse_decimal(b"99999999999999999999999"), None);
    }
}
