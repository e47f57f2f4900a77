//! Linux: who owns the registration, the per-thread area, membarrier, possible CPUs.
//!
//! Everything here must be callable from inside a global allocator, from a signal handler
//! and while a thread exits. So: no allocation of our own (the process-wide state is plain
//! atomics, the per-thread state is const-initialised TLS without a destructor), no lock
//! (a re-entrant or concurrent call during a one-time step sees "busy" and gets no CPU), and
//! only async-signal-safe libc calls apart from `dlsym`, which runs once per process.

use crate::abi::{self, RseqArea};
use crate::arch::{self, Section};
use crate::{IndexBy, Owner, Reason};
use core::cell::{Cell, UnsafeCell};
use core::ffi::{c_int, c_long, c_void, CStr};
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicU32, AtomicU8, AtomicUsize, Ordering};

// ---------------------------------------------------------------------------------------
// Process-wide state, decided once.

const UNDECIDED: u8 = 0;
const DECIDING: u8 = 1;
const GLIBC: u8 = 2;
const SELF: u8 = 3;
const UNAVAILABLE: u8 = 4;

static OWNER: AtomicU8 = AtomicU8::new(UNDECIDED);
/// `__rseq_offset` while glibc owns the registration, else [`NOT_GLIBC`]. Kept apart from
/// [`OWNER`] so that the glibc fast path is a single load.
static GLIBC_OFFSET: AtomicIsize = AtomicIsize::new(NOT_GLIBC);
/// 0 can never be glibc's offset: the thread pointer itself holds the TCB's self-pointer.
/// (A zero test also compiles to a cheaper, better laid-out branch than `isize::MIN`.)
const NOT_GLIBC: isize = 0;
/// Bytes of kernel-filled fields the owner's registration covers.
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
/// Offset of the field [`IndexBy::ConcurrencyId`] reads: `mm_cid` where promised, else `cpu_id`.
static CONCURRENCY_ID_OFFSET: AtomicUsize = AtomicUsize::new(abi::OFFSET_CPU_ID);
/// Length passed to rseq(2) by self-registration.
static AREA_LEN: AtomicU32 = AtomicU32::new(abi::AREA_SIZE_ORIGINAL as u32);
/// Why rseq is unavailable (a `Reason` code) and the errno behind it.
static REASON: AtomicU8 = AtomicU8::new(0);
static REASON_ERRNO: AtomicI32 = AtomicI32::new(0);
/// The pthread key whose destructor ends a self-registration at thread exit.
static EXIT_KEY: AtomicU32 = AtomicU32::new(0);
static POSSIBLE_CPUS: AtomicUsize = AtomicUsize::new(0);

const REASON_DISABLED: u8 = 1;
const REASON_NOT_SUPPORTED: u8 = 2;
const REASON_DENIED: u8 = 3;
const REASON_INVALID: u8 = 4;
const REASON_BUSY: u8 = 5;
const REASON_OTHER: u8 = 6;

fn reason_from_code(code: u8, errno: i32) -> Reason {
    match code {
        REASON_DISABLED => Reason::Disabled,
        REASON_NOT_SUPPORTED => Reason::NotSupported,
        REASON_DENIED => Reason::Denied { errno },
        REASON_INVALID => Reason::Invalid,
        REASON_BUSY => Reason::Busy,
        _ => Reason::Os { errno },
    }
}

fn reason_code(errno: i32) -> u8 {
    match errno {
        libc::ENOSYS => REASON_NOT_SUPPORTED,
        libc::EPERM | libc::EACCES => REASON_DENIED,
        libc::EINVAL => REASON_INVALID,
        libc::EBUSY => REASON_BUSY,
        _ => REASON_OTHER,
    }
}

/// The owner, deciding it on first use. `None` while another call (on this thread, re-entered
/// from an allocator or a signal handler, or on another thread) is deciding it.
#[inline]
pub(crate) fn owner_state() -> Option<u8> {
    match OWNER.load(Ordering::Acquire) {
        UNDECIDED => decide(),
        DECIDING => None,
        state => Some(state),
    }
}

#[cold]
fn decide() -> Option<u8> {
    if OWNER
        .compare_exchange(UNDECIDED, DECIDING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        let state = OWNER.load(Ordering::Acquire);
        return (state != DECIDING).then_some(state);
    }
    let _ = DECIDING_HERE.try_with(|here| here.set(true));
    POSSIBLE_CPUS.store(read_possible_cpus(), Ordering::Relaxed);
    let state = decide_owner();
    OWNER.store(state, Ordering::Release);
    let _ = DECIDING_HERE.try_with(|here| here.set(false));
    Some(state)
}

thread_local! {
    /// Set while this thread decides the owner: a call re-entered from inside the decision
    /// (an allocator reached from `dlsym`, a signal handler) must not wait for it.
    static DECIDING_HERE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

fn unavailable(code: u8, errno: i32) -> u8 {
    REASON.store(code, Ordering::Relaxed);
    REASON_ERRNO.store(errno, Ordering::Relaxed);
    UNAVAILABLE
}

fn decide_owner() -> u8 {
    if disabled_by_environment() {
        return unavailable(REASON_DISABLED, 0);
    }
    if let Some((offset, size)) = glibc_registration() {
        FEATURE_SIZE.store(size, Ordering::Relaxed);
        if abi::field_present(size, abi::OFFSET_MM_CID) {
            CONCURRENCY_ID_OFFSET.store(abi::OFFSET_MM_CID, Ordering::Relaxed);
        }
        if offset == NOT_GLIBC {
            return unavailable(REASON_INVALID, 0);
        }
        GLIBC_OFFSET.store(offset, Ordering::Release);
        return GLIBC;
    }
    // Probe with arguments every kernel that has rseq rejects with EINVAL (length 0): ENOSYS
    // means no rseq, and a seccomp filter answers before argument checks.
    // SAFETY: rseq(2) with a null area and length 0 registers nothing and reads no memory.
    let probe = unsafe { rseq_syscall(ptr::null_mut(), 0, 0) };
    match probe {
        Err(libc::EINVAL) => {}
        Err(errno) => return unavailable(reason_code(errno), errno),
        Ok(()) => return unavailable(REASON_OTHER, 0),
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer and `thread_exit` has the destructor signature.
    // pthread_key_create takes a slot from a static table and does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
        return unavailable(REASON_OTHER, libc::EAGAIN);
    }
    EXIT_KEY.store(key, Ordering::Relaxed);
    let (feature_size, align) = kernel_features();
    let len = round_up(feature_size as usize, align).max(abi::AREA_SIZE_ORIGINAL);
    let len = if len <= AREA_CAPACITY && align <= AREA_ALIGN {
        len
    } else {
        abi::AREA_SIZE_ORIGINAL
    };
    let feature_size = feature_size.min(len as u32);
    FEATURE_SIZE.store(feature_size, Ordering::Relaxed);
    AREA_LEN.store(len as u32, Ordering::Relaxed);
    if abi::field_present(feature_size, abi::OFFSET_MM_CID) {
        CONCURRENCY_ID_OFFSET.store(abi::OFFSET_MM_CID, Ordering::Relaxed);
    }
    SELF
}

fn round_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

/// `PERCPU_NO_RSEQ` set to anything but empty or `0` disables rseq for the process.
fn disabled_by_environment() -> bool {
    // SAFETY: getenv with a NUL-terminated name; it neither allocates nor takes a lock. The
    // result is read at once, before anything could change the environment.
    let value = unsafe { libc::getenv(c"PERCPU_NO_RSEQ".as_ptr()) };
    if value.is_null() {
        return false;
    }
    // SAFETY: getenv returned a NUL-terminated string in the environment block.
    let value = unsafe { CStr::from_ptr(value) }.to_bytes();
    !(value.is_empty() || value == b"0")
}

/// glibc's registration, looked up by name so that neither linking nor loading requires
/// glibc >= 2.35: `Some((offset, feature_size))` when glibc registered rseq for its threads.
fn glibc_registration() -> Option<(isize, u32)> {
    #[cfg(target_env = "gnu")]
    {
        let offset = lookup_symbol(c"__rseq_offset")?.cast::<isize>();
        let size = lookup_symbol(c"__rseq_size")?.cast::<u32>();
        // SAFETY: glibc defines these as `const ptrdiff_t` and `const unsigned int`, set
        // before any user code runs and never written again.
        let (offset, size) = unsafe { (offset.read(), size.read()) };
        (size > 0).then_some((offset, size))
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

#[cfg(target_env = "gnu")]
fn lookup_symbol(name: &CStr) -> Option<*const c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name. It runs once per process
    // (under DECIDING, so a re-entrant allocation from dlerror's message gets no CPU instead
    // of recursing); the loader lock it takes is recursive.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!symbol.is_null()).then_some(symbol.cast_const())
}

/// The kernel's feature size and required alignment (Linux >= 6.3 says; older kernels fill
/// the original 20 bytes of a 32-byte aligned area).
fn kernel_features() -> (u32, usize) {
    // SAFETY: getauxval reads the auxiliary vector; unknown keys return 0.
    let (size, align) = unsafe {
        (
            libc::getauxval(abi::AT_RSEQ_FEATURE_SIZE),
            libc::getauxval(abi::AT_RSEQ_ALIGN),
        )
    };
    let size = if size == 0 {
        abi::FEATURE_SIZE_ORIGINAL
    } else {
        size as u32
    };
    let align = (align as usize).max(abi::AREA_SIZE_ORIGINAL);
    (
        size,
        if align.is_power_of_two() {
            align
        } else {
            usize::MAX
        },
    )
}

/// rseq(2); `Err(errno)` on failure.
///
/// # Safety
/// `area` is null with `len` 0 (a probe), or the calling thread's own area, valid and
/// `len`-byte sized for as long as it stays registered.
unsafe fn rseq_syscall(area: *mut RseqArea, len: u32, flags: c_int) -> Result<(), i32> {
    // SAFETY: the caller upholds the area contract; the other arguments are plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_rseq, area, len, flags, abi::SIGNATURE) };
    if ret == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

// ---------------------------------------------------------------------------------------
// Per-thread self-registration.

/// Room reserved for the area: the largest feature set this crate registers with; a kernel
/// asking for more gets the original 32-byte registration.
const AREA_CAPACITY: usize = 128;
const AREA_ALIGN: usize = 128;

#[repr(C, align(128))]
struct AreaStorage {
    area: RseqArea,
    _extension: [u8; AREA_CAPACITY - core::mem::size_of::<RseqArea>()],
}

const _: () = assert!(core::mem::align_of::<AreaStorage>() == AREA_ALIGN);
const _: () = assert!(core::mem::size_of::<AreaStorage>() == AREA_CAPACITY);

/// Not registered; the next lazy use may register.
const IDLE: u8 = 0;
/// Inside registration bookkeeping on this thread: re-entrant uses get no CPU.
const BUSY: u8 = 1;
const REGISTERED: u8 = 2;
/// Registration failed for this thread (`errno` says why).
const FAILED: u8 = 3;
/// The thread is exiting: lazy uses no longer register.
const EXITED: u8 = 4;
/// The process has no rseq: every use takes the fallback without asking again.
const NO_RSEQ: u8 = 5;

struct ThreadRseq {
    /// Written by the kernel while registered, hence the cell; only read through volatile
    /// loads and critical sections.
    storage: UnsafeCell<AreaStorage>,
    state: Cell<u8>,
    /// Live [`crate::Registration`] guards.
    guards: Cell<u32>,
    /// Registered lazily by an operation: held until the thread exits.
    implicit: Cell<bool>,
    exit_hook_armed: Cell<bool>,
    /// The thread-exit destructor has run.
    exiting: Cell<bool>,
    errno: Cell<i32>,
}

thread_local! {
    static THREAD: ThreadRseq = const {
        ThreadRseq {
            storage: UnsafeCell::new(AreaStorage {
                area: RseqArea {
                    cpu_id_start: 0,
                    cpu_id: abi::CPU_ID_UNINITIALIZED as u32,
                    rseq_cs: 0,
                    flags: 0,
                    node_id: 0,
                    mm_cid: 0,
                },
                _extension: [0; AREA_CAPACITY - core::mem::size_of::<RseqArea>()],
            }),
            state: Cell::new(IDLE),
            guards: Cell::new(0),
            implicit: Cell::new(false),
            exit_hook_armed: Cell::new(false),
            exiting: Cell::new(false),
            errno: Cell::new(0),
        }
    };
}

impl ThreadRseq {
    fn area(&self) -> *mut RseqArea {
        self.storage.get().cast()
    }

    /// Registers this thread's area; the thread state is BUSY meanwhile.
    fn register(&self) -> Result<(), i32> {
        self.state.set(BUSY);
        if !self.exit_hook_armed.get() {
            // A non-null value makes the key's destructor run at thread exit. For keys past
            // glibc's first 32 this may allocate: a re-entrant allocation sees BUSY.
            // SAFETY: the key was created in `decide_owner` and is never deleted.
            let rc = unsafe {
                libc::pthread_setspecific(EXIT_KEY.load(Ordering::Relaxed), self.area().cast())
            };
            if rc != 0 {
                self.errno.set(rc);
                self.state.set(FAILED);
                return Err(rc);
            }
            self.exit_hook_armed.set(true);
        }
        // SAFETY: the area is this thread's TLS, which outlives the registration: it is
        // unregistered at thread exit (`thread_exit`) and the kernel never writes to it after
        // the thread is gone.
        match unsafe { rseq_syscall(self.area(), AREA_LEN.load(Ordering::Relaxed), 0) } {
            Ok(()) => {
                self.state.set(REGISTERED);
                Ok(())
            }
            Err(errno) => {
                self.errno.set(errno);
                self.state.set(FAILED);
                Err(errno)
            }
        }
    }

    fn unregister(&self, next: u8) {
        self.state.set(BUSY);
        // SAFETY: unregisters exactly the area and length this thread registered.
        let result = unsafe {
            rseq_syscall(
                self.area(),
                AREA_LEN.load(Ordering::Relaxed),
                abi::FLAG_UNREGISTER,
            )
        };
        // Unregistering our own registration can fail only if someone else unregistered it
        // behind our back; either way the kernel no longer writes the area.
        debug_assert!(result.is_ok(), "rseq unregister failed: {result:?}");
        // SAFETY: no longer registered, so nothing else writes the area; resetting cpu_id
        // makes stale reads say "unregistered".
        unsafe {
            ptr::addr_of_mut!((*self.area()).cpu_id)
                .write_volatile(abi::CPU_ID_UNINITIALIZED as u32)
        };
        self.state.set(next);
    }
}

/// The pthread key destructor: the thread is exiting. Ends the implicit registration;
/// guards still alive (in TLS destructors that run later) keep it until they drop.
unsafe extern "C" fn thread_exit(_: *mut c_void) {
    // `try_with`: a const TLS without destructor is always accessible, but stay defensive.
    let _ = THREAD.try_with(|thread| {
        thread.exiting.set(true);
        thread.implicit.set(false);
        match thread.state.get() {
            REGISTERED if thread.guards.get() == 0 => thread.unregister(EXITED),
            REGISTERED => {}
            _ => thread.state.set(EXITED),
        }
    });
}

/// This thread's current slot index (`cpu_id`, or the field `index` selects), registering
/// lazily in self mode. `None`: no rseq, or negative.
#[inline]
pub(crate) fn current_index(index: IndexBy) -> Option<usize> {
    run_in_section(index, |section| {
        // SAFETY: the section is this thread's registered area and its index field is inside.
        unsafe { section.read_index() }
    })
    .filter(|&id| (id as i32) >= 0)
    .map(|id| id as usize)
}

/// Run `op` with this thread's section, or report `None` (take the fallback).
///
/// The glibc path gets its own copy of `op` and returns early: with one shared copy the
/// compiler merges the two paths with a jump over the self-registered one, and each taken
/// branch on the straight line costs about a third of the whole operation.
#[inline(always)]
pub(crate) fn run_in_section<R>(index: IndexBy, op: impl Fn(Section) -> R) -> Option<R> {
    let offset = GLIBC_OFFSET.load(Ordering::Relaxed);
    if offset != NOT_GLIBC {
        return Some(op(Section::at_offset(offset, index_field(index))));
    }
    std::hint::cold_path();
    let area = self_registered_area()?;
    Some(op(Section::of_area(area, index_field(index))))
}

/// The section at glibc's offset, the same in every thread: `None` unless glibc owns the
/// registration (deciding the owner if nobody has yet).
pub(crate) fn glibc_section(index: IndexBy) -> Option<Section> {
    if owner_state()? != GLIBC {
        return None;
    }
    let offset = GLIBC_OFFSET.load(Ordering::Relaxed);
    (offset != NOT_GLIBC).then(|| Section::at_offset(offset, index_field(index)))
}

#[inline(always)]
fn index_field(index: IndexBy) -> usize {
    match index {
        IndexBy::CpuId => abi::OFFSET_CPU_ID,
        IndexBy::ConcurrencyId => CONCURRENCY_ID_OFFSET.load(Ordering::Relaxed),
    }
}

#[inline(always)]
fn self_registered_area() -> Option<*mut RseqArea> {
    THREAD
        .try_with(|thread| match thread.state.get() {
            REGISTERED => Some(thread.area()),
            IDLE => lazy_register(thread),
            _ => None,
        })
        .ok()
        .flatten()
}

#[cold]
fn lazy_register(thread: &ThreadRseq) -> Option<*mut RseqArea> {
    match owner_state()? {
        // glibc's offset is published before its state: the next call takes the fast path.
        GLIBC => Some(
            arch::thread_pointer()
                .wrapping_offset(GLIBC_OFFSET.load(Ordering::Relaxed))
                .cast(),
        ),
        SELF => {
            thread.register().ok()?;
            thread.implicit.set(true);
            Some(thread.area())
        }
        _ => {
            thread.state.set(NO_RSEQ);
            None
        }
    }
}

/// Take a counted registration for this thread (the [`crate::Registration`] guard).
pub(crate) fn acquire_registration() -> Result<(), Reason> {
    match owner_state() {
        None => Err(Reason::Busy),
        Some(GLIBC) => Ok(()),
        Some(SELF) => THREAD
            .try_with(|thread| match thread.state.get() {
                REGISTERED => {
                    thread.guards.set(thread.guards.get() + 1);
                    Ok(())
                }
                BUSY => Err(Reason::Busy),
                state => {
                    let next_if_failed = state;
                    match thread.register() {
                        Ok(()) => {
                            thread.guards.set(1);
                            Ok(())
                        }
                        Err(errno) => {
                            // An exiting thread stays EXITED so lazy uses do not retry.
                            if next_if_failed == EXITED {
                                thread.state.set(EXITED);
                            }
                            Err(reason_from_code(reason_code(errno), errno))
                        }
                    }
                }
            })
            .unwrap_or(Err(Reason::Busy)),
        Some(_) => Err(process_reason()),
    }
}

/// Drop a counted registration; the last one out unregisters unless an implicit one remains.
pub(crate) fn release_registration() {
    if owner_state() != Some(SELF) {
        return;
    }
    let _ = THREAD.try_with(|thread| {
        let guards = thread.guards.get().saturating_sub(1);
        thread.guards.set(guards);
        if guards == 0 && !thread.implicit.get() && thread.state.get() == REGISTERED {
            thread.unregister(if thread.exiting.get() { EXITED } else { IDLE });
        }
    });
}

fn process_reason() -> Reason {
    reason_from_code(
        REASON.load(Ordering::Relaxed),
        REASON_ERRNO.load(Ordering::Relaxed),
    )
}

/// The owner. While another thread is deciding it, waits for the decision (a few system
/// calls) rather than report a transient "busy" that later reads would contradict; only a
/// call re-entered on the deciding thread itself gets `Unavailable(Busy)`.
pub(crate) fn owner() -> Owner {
    loop {
        return match owner_state() {
            Some(GLIBC) => Owner::Glibc,
            Some(SELF) => Owner::SelfRegistered,
            Some(_) => Owner::Unavailable(process_reason()),
            None if DECIDING_HERE.try_with(|here| here.get()).unwrap_or(true) => {
                Owner::Unavailable(Reason::Busy)
            }
            None => {
                std::thread::yield_now();
                continue;
            }
        };
    }
}

pub(crate) fn feature_size() -> u32 {
    match owner_state() {
        Some(GLIBC | SELF) => FEATURE_SIZE.load(Ordering::Relaxed),
        _ => 0,
    }
}

/// Whether this thread has a registered area now, without registering it.
pub(crate) fn is_registered() -> bool {
    match OWNER.load(Ordering::Acquire) {
        GLIBC => {
            let area = arch::thread_pointer()
                .wrapping_offset(GLIBC_OFFSET.load(Ordering::Relaxed))
                .cast::<RseqArea>();
            // SAFETY: glibc's area lives in every thread's TCB; volatile: the kernel writes it.
            let cpu_id = unsafe { ptr::addr_of!((*area).cpu_id).read_volatile() };
            (cpu_id as i32) >= 0
        }
        SELF => THREAD
            .try_with(|thread| thread.state.get() == REGISTERED)
            .unwrap_or(false),
        _ => false,
    }
}

/// Why this thread has no area although the process has an owner (self mode only).
pub(crate) fn thread_failure() -> Option<Reason> {
    THREAD
        .try_with(|thread| {
            (thread.state.get() == FAILED)
                .then(|| reason_from_code(reason_code(thread.errno.get()), thread.errno.get()))
        })
        .ok()
        .flatten()
}

/// A kernel-owned field of this thread's area, if registered and within the feature size.
pub(crate) fn read_field(offset: usize) -> Option<u32> {
    if offset != abi::OFFSET_CPU_ID && !abi::field_present(feature_size(), offset) {
        return None;
    }
    run_in_section(IndexBy::CpuId, |section| {
        // SAFETY: the section is this thread's registered area and `offset` names a 4-byte
        // field inside the feature size.
        unsafe { section.read_field(offset) }
    })
}

#[inline]
pub(crate) fn possible_cpus() -> usize {
    let _ = owner_state();
    match POSSIBLE_CPUS.load(Ordering::Relaxed) {
        // Still being decided by another thread: read it directly.
        0 => read_possible_cpus(),
        n => n,
    }
}

// ---------------------------------------------------------------------------------------
// Possible CPUs.

/// The number of possible CPUs: one past the highest index in
/// `/sys/devices/system/cpu/possible` (kernel `nr_cpu_ids`, which bounds both `cpu_id` and
/// `mm_cid`). Read with raw open/read into a stack buffer: no allocation.
fn read_possible_cpus() -> usize {
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated path; read-only open.
    let fd = unsafe {
        libc::open(
            c"/sys/devices/system/cpu/possible".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: `buf` is writable for its length; the descriptor is ours and closed at once.
        let n = unsafe {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n
        };
        if n > 0 {
            if let Some(count) = parse_cpu_list(&buf[..n as usize]) {
                return count;
            }
        }
    }
    affinity_cpus()
}

/// `"0-3,8,10-11\n"` → 12 (one past the highest CPU).
pub(crate) fn parse_cpu_list(text: &[u8]) -> Option<usize> {
    let mut highest: Option<usize> = None;
    for range in text.split(|&b| b == b',') {
        let range = range.trim_ascii();
        if range.is_empty() {
            continue;
        }
        let last = range.rsplit(|&b| b == b'-').next()?;
        let mut value = 0usize;
        if last.is_empty() {
            return None;
        }
        for &digit in last {
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value
                .checked_mul(10)?
                .checked_add(usize::from(digit - b'0'))?;
        }
        highest = Some(highest.map_or(value, |h| h.max(value)));
    }
    highest.map(|h| h + 1)
}

/// When sysfs is unreadable: one past the highest CPU this thread may run on. Critical
/// sections bound-check their index, so a CPU outside this range only means a fallback.
fn affinity_cpus() -> usize {
    // SAFETY: cpu_set_t is plain bits; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: the size and pointer describe `set`.
    if unsafe { libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) } != 0 {
        return 1;
    }
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .find(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .map_or(1, |i| i + 1)
}

// ---------------------------------------------------------------------------------------
// membarrier.

const MEMBARRIER_UNKNOWN: u8 = 0;
const MEMBARRIER_BUSY: u8 = 1;
const MEMBARRIER_READY: u8 = 2;
const MEMBARRIER_MISSING: u8 = 3;
static MEMBARRIER: AtomicU8 = AtomicU8::new(MEMBARRIER_UNKNOWN);

fn membarrier(cmd: i32, flags: u32, cpu: i32) -> Result<c_long, i32> {
    // SAFETY: membarrier takes only integers and touches no user memory.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Whether the RSEQ membarrier commands are there, registering the process for them once.
pub(crate) fn membarrier_rseq_ready() -> bool {
    loop {
        match MEMBARRIER.load(Ordering::Acquire) {
            MEMBARRIER_READY => return true,
            MEMBARRIER_MISSING => return false,
            MEMBARRIER_BUSY => core::hint::spin_loop(),
            _ => {
                if MEMBARRIER
                    .compare_exchange(
                        MEMBARRIER_UNKNOWN,
                        MEMBARRIER_BUSY,
                        Ordering::Acquire,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    continue;
                }
                let wanted = abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
                    | abi::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ;
                let ready = matches!(membarrier(abi::MEMBARRIER_CMD_QUERY, 0, 0), Ok(mask) if mask as i32 & wanted == wanted)
                    && membarrier(abi::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0)
                        .is_ok();
                MEMBARRIER.store(
                    if ready {
                        MEMBARRIER_READY
                    } else {
                        MEMBARRIER_MISSING
                    },
                    Ordering::Release,
                );
                return ready;
            }
        }
    }
}

/// Abort every critical section of this process running on `cpu` (all CPUs if `None`) and
/// wait until each has left its section or been aborted.
pub(crate) fn fence(cpu: Option<usize>) -> Result<(), Reason> {
    if !membarrier_rseq_ready() {
        return Err(Reason::NotSupported);
    }
    let result = match cpu {
        Some(cpu) => match i32::try_from(cpu) {
            Ok(cpu) => match membarrier(
                abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                abi::MEMBARRIER_CMD_FLAG_CPU,
                cpu,
            ) {
                // A kernel without the per-CPU flag (< 5.10): fence every CPU instead.
                Err(libc::EINVAL) => membarrier(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0),
                other => other,
            },
            Err(_) => return Err(Reason::Invalid),
        },
        None => membarrier(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0),
    };
    result
        .map(drop)
        .map_err(|errno| reason_from_code(reason_code(errno), errno))
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_count_one_past_the_highest_cpu() {
        assert_eq!(parse_cpu_list(b"0-1\n"), Some(2));
        assert_eq!(parse_cpu_list(b"0"), Some(1));
        assert_eq!(parse_cpu_list(b"0-3,8,10-11\n"), Some(12));
        assert_eq!(parse_cpu_list(b"5,0-2"), Some(6));
    }

    #[test]
    fn malformed_cpu_lists_are_rejected() {
        assert_eq!(parse_cpu_list(b""), None);
        assert_eq!(parse_cpu_list(b"\n"), None);
        assert_eq!(parse_cpu_list(b"0-"), None);
        assert_eq!(parse_cpu_list(b"a-b"), None);
        assert_eq!(parse_cpu_list(b"99999999999999999999999"), None);
    }
}
