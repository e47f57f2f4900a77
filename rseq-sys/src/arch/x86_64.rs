//! x86_64 critical sections.
//!
//! Every primitive is one `asm!` block, most built by [`critical_section!`] (`push_word_on`,
//! `try_push_word` and `try_pop_word` write theirs out, to leave without a status):
//!
//! - its `struct rseq_cs` descriptor goes into the `__rseq_cs` section (and its address
//!   into `__rseq_cs_ptr_array`, where debuggers and CRIU look for them);
//! - it stores the descriptor's address into the area's `rseq_cs` field, the only field user
//!   space writes;
//! - inside the section it reads the index field (`cpu_id` or `mm_cid`, the same field it
//!   indexes by) and leaves with "no CPU" when the index is negative or past the array, so an
//!   unregistered thread or an undersized array can never reach a slot;
//! - the commit is the last instruction before the post-commit label;
//! - the abort handler and the other cold exits live in `__rseq_failure`, and the abort
//!   handler is preceded by the signature (as the immediate of a `ud1`).
//!
//! Labels are numbers from 2 up: LLVM's Intel syntax parser reads `0b`/`1b` as binary
//! literals. 2 = start, 3 = post-commit, 4 = descriptor, 5 = abort, 6 = no CPU,
//! 7 = declined (compare failed, list empty, stack full), 8 = end.
//!
//! No syscall and no store to a kernel-owned field happens inside a section. The status is
//! 0 = completed, 1 = aborted, 2 = no CPU, 3 = declined.
//!
//! Registers are scarce: a section that needs more than the nine caller-saved ones makes
//! every caller save and restore callee-saved registers around it, on the allocator's fast
//! path too. So dead inputs carry results: the status leaves in `len`'s register, and the
//! slot (or header) address is computed in the register that brought the stride in.

use crate::abi::RseqArea;
use core::arch::asm;

pub(crate) const COMPLETED: u32 = 0;
pub(crate) const ABORTED: u32 = 1;
pub(crate) const NO_CPU: u32 = 2;
pub(crate) const DECLINED: u32 = 3;

/// The section's `struct rseq_cs` (label 4: version 0, flags 0, start 2, post-commit
/// offset, abort 5) in `__rseq_cs`, and its address in `__rseq_cs_ptr_array`.
macro_rules! descriptor {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "4:\n",
            ".long 0x0, 0x0\n",
            ".quad 2f, (3f - 2f), 5f\n",
            ".popsection\n",
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            ".quad 4b\n",
            ".popsection",
        )
    };
}

/// The signature the kernel checks before an abort handler: the immediate of a `ud1`, so
/// that jumping to it by mistake traps.
macro_rules! signature {
    () => {
        concat!(".byte 0x0f, 0xb9, 0x3d\n", ".long 0x53053053")
    };
}

/// The section's entry: arm it (the descriptor's address into the area's `rseq_cs`, through
/// the `{cpu}` register), then, from the start label on, read the index field into `{cpu}`
/// and leave for `$no_cpu` when it is negative or not below `{len}`.
macro_rules! enter_section {
    ($no_cpu:literal) => {
        concat!(
            "lea {cpu}, [rip + 4b]\n",
            "mov qword ptr fs:[{area} + 8], {cpu}\n",
            "2:\n",
            "mov {cpu:e}, dword ptr fs:[{index}]\n",
            "cmp {cpu}, {len}\n",
            "jae ",
            $no_cpu,
        )
    };
}

macro_rules! critical_section {
    (
        area: $area:expr,
        index: $index:expr,
        len: $len:expr,
        cpu: $cpu:ident,
        status: $status:ident,
        body: [$($body:literal),* $(,)?],
        $($operands:tt)*
    ) => {{
        // `len` is dead once checked, so its register carries the status out.
        let status_word: usize;
        asm!(
            descriptor!(),
            enter_section!("6f"),
            $($body,)*
            "3:",
            "xor {len:e}, {len:e}",
            ".pushsection __rseq_failure, \"ax\"",
            signature!(),
            "5:",
            "mov {len:e}, 1",
            "jmp 8f",
            "6:",
            "mov {len:e}, 2",
            "jmp 8f",
            "7:",
            "mov {len:e}, 3",
            "jmp 8f",
            ".popsection",
            "8:",
            area = in(reg) $area,
            index = in(reg) $index,
            len = inout(reg) $len => status_word,
            cpu = out(reg) $cpu,
            $($operands)*
            options(nostack),
        );
        $status = status_word as u32;
    }};
}

/// Where a critical section runs, as offsets from the thread pointer: the thread's area and
/// the index field inside it. Sections address them `fs:`-relative, which saves loading the
/// thread pointer and forming addresses on every operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Section {
    pub(crate) area: isize,
    pub(crate) index: isize,
}

impl Section {
    /// The section of the calling thread whose area is at `area`, indexed by the field at
    /// `field` bytes into it.
    #[inline(always)]
    pub(crate) fn of_area(area: *mut RseqArea, field: usize) -> Section {
        let area = area.addr().wrapping_sub(thread_pointer().addr()) as isize;
        Section {
            area,
            index: area.wrapping_add(field as isize),
        }
    }

    /// The section at `offset` from the thread pointer (glibc's `__rseq_offset`).
    #[inline(always)]
    pub(crate) fn at_offset(offset: isize, field: usize) -> Section {
        Section {
            area: offset,
            index: offset.wrapping_add(field as isize),
        }
    }

    /// A 4-byte kernel-written field of the area, read once (volatile: the kernel writes it
    /// asynchronously).
    ///
    /// # Safety
    /// `self` describes the calling thread's registered area and `offset` a 4-byte field
    /// inside it.
    #[inline(always)]
    pub(crate) unsafe fn read_field(self, offset: usize) -> u32 {
        let value: u32;
        // SAFETY: by the caller's contract `fs:[area + offset]` is a field of this thread's
        // area; a plain 4-byte load, like the kernel ABI's volatile reads.
        unsafe {
            asm!(
                "mov {value:e}, dword ptr fs:[{area} + {offset}]",
                area = in(reg) self.area,
                offset = in(reg) offset,
                value = out(reg) value,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }

    /// The index field (`cpu_id` or `mm_cid`), read once, as [`Section::read_field`] does.
    ///
    /// # Safety
    /// `self` describes an area of the calling thread that is still live (registered, or
    /// no longer: the kernel then leaves the field negative).
    #[inline(always)]
    pub(crate) unsafe fn read_index(self) -> u32 {
        let value: u32;
        // SAFETY: by the caller's contract `fs:[index]` is the index field of this thread's
        // area; a plain 4-byte load.
        unsafe {
            asm!(
                "mov {value:e}, dword ptr fs:[{index}]",
                index = in(reg) self.index,
                value = out(reg) value,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }
}

/// Per-CPU slots: slot `c` is at `base + c * stride`, for `c < len`.
#[derive(Clone, Copy)]
pub(crate) struct Slots {
    pub(crate) base: *mut u8,
    pub(crate) stride: usize,
    pub(crate) len: usize,
}

/// The thread pointer (`fs:0` holds its own address on x86_64 Linux).
#[inline(always)]
pub(crate) fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux the TCB's first word is the thread pointer itself (the TLS ABI
    // every libc uses), always mapped while the thread runs. The read has no side effect.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags, pure));
    }
    tp
}

/// `*slot[cpu] += value` (wrapping), committed by the add itself.
///
/// # Safety
/// `section` points into the calling thread's registered area; for every `c < slots.len`,
/// `slots.base + c * slots.stride` is a live, 8-byte aligned `u64` that only critical
/// sections and atomic operations access.
#[inline(always)]
pub(crate) unsafe fn add(section: Section, slots: Slots, value: u64) -> (u32, usize) {
    let status: u32;
    let cpu: usize;
    // SAFETY: the caller guarantees the area and slot contract above. The section writes only
    // `rseq_cs` in the area and the one slot selected by an index checked against `len`.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {slot}, {cpu}",
                "add qword ptr [{base} + {slot}], {value}",
            ],
            base = in(reg) slots.base,
            value = in(reg) value,
            slot = inout(reg) slots.stride => _,
        );
    }
    (status, cpu)
}

/// If `*slot[cpu] == expected`, store `new`; otherwise decline with the value seen.
///
/// # Safety
/// As for [`add`], with 8-byte slots.
#[inline(always)]
pub(crate) unsafe fn compare_and_store(
    section: Section,
    slots: Slots,
    expected: u64,
    new: u64,
) -> (u32, usize, u64) {
    let status: u32;
    let cpu: usize;
    let seen: u64;
    // SAFETY: as for `add`; the only store is the commit to the selected slot.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {slot}, {cpu}",
                "add {slot}, {base}",
                "mov {seen}, qword ptr [{slot}]",
                "cmp {seen}, {expected}",
                "jne 7f",
                "mov qword ptr [{slot}], {new}",
            ],
            base = in(reg) slots.base,
            expected = in(reg) expected,
            new = in(reg) new,
            slot = inout(reg) slots.stride => _,
            seen = out(reg) seen,
        );
    }
    (status, cpu, seen)
}

/// Pop the head of this CPU's linked list: load head, decline if null or locked (bit 0 set),
/// load `head->next`, store it as the head.
///
/// # Safety
/// As for [`add`], with pointer slots; every non-null head reachable from a slot points to a
/// node with a readable pointer at `next_offset`.
#[inline(always)]
pub(crate) unsafe fn pop_linked(
    section: Section,
    slots: Slots,
    next_offset: usize,
) -> (u32, usize, *mut u8) {
    let status: u32;
    let cpu: usize;
    let head: *mut u8;
    // SAFETY: as for `add`. The head read inside the section is still this CPU's head (nothing
    // else writes this slot while the section runs, or the section aborts), so the node it
    // points to is on the list and readable by the caller's contract.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {slot}, {cpu}",
                "add {slot}, {base}",
                "mov {head}, qword ptr [{slot}]",
                "test {head}, {head}",
                "jz 7f",
                "test {head}, 1",
                "jnz 7f",
                "mov {next}, qword ptr [{head} + {next_offset}]",
                "mov qword ptr [{slot}], {next}",
            ],
            base = in(reg) slots.base,
            next_offset = in(reg) next_offset,
            slot = inout(reg) slots.stride => _,
            head = out(reg) head,
            next = out(reg) _,
        );
    }
    (status, cpu, head)
}

/// Push `node` on this CPU's linked list: decline if the head is locked (bit 0 set),
/// try-store `node->next = head`, commit `head = node`.
///
/// On x86_64 every store is a release store (TSO) and the `asm!` block is a compiler barrier,
/// so this one sequence serves both the relaxed and the release variant.
///
/// # Safety
/// As for [`add`], with pointer slots; `node + next_offset` is a writable pointer-sized field
/// that nothing else accesses until the push commits.
#[inline(always)]
pub(crate) unsafe fn push_linked(
    section: Section,
    slots: Slots,
    node: *mut u8,
    next_offset: usize,
) -> (u32, usize, *mut u8) {
    let status: u32;
    let cpu: usize;
    let head: *mut u8;
    // SAFETY: as for `add`; the try-store goes to the caller's own node, the commit to the slot.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {slot}, {cpu}",
                "add {slot}, {base}",
                "mov {head}, qword ptr [{slot}]",
                "test {head}, 1",
                "jnz 7f",
                "mov qword ptr [{node} + {next_offset}], {head}",
                "mov qword ptr [{slot}], {node}",
            ],
            base = in(reg) slots.base,
            node = in(reg) node,
            next_offset = in(reg) next_offset,
            slot = inout(reg) slots.stride => _,
            head = out(reg) head,
        );
    }
    (status, cpu, head)
}

/// Push onto this CPU's bounded stack (header: `top`, `end`, `begin`): decline if `size`
/// is 0 or `top + size > end`, copy `size` bytes from `src` to `top` (the try-stores), commit
/// `top += size`.
///
/// # Safety
/// As for [`add`], with [`crate::BoundedStack`] headers whose `begin <= top <= end` delimit
/// writable storage owned by the header; `src` is readable for `size` bytes and does not
/// overlap any stack storage.
#[inline(always)]
pub(crate) unsafe fn push_copy(
    section: Section,
    slots: Slots,
    src: *const u8,
    size: usize,
) -> (u32, usize) {
    let status: u32;
    let cpu: usize;
    // SAFETY: as for `add`. The copy writes [top, top + size), checked against `end`, which
    // is free storage of this CPU's stack; only the commit makes it visible as an item.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "test rcx, rcx",
                "jz 7f",
                "imul {header}, {cpu}",
                "add {header}, {base}",
                "mov rdi, qword ptr [{header}]",
                "lea {end}, [rdi + rcx]",
                "cmp {end}, qword ptr [{header} + 8]",
                "ja 7f",
                "rep movsb",
                "mov qword ptr [{header}], rdi",
            ],
            base = in(reg) slots.base,
            header = inout(reg) slots.stride => _,
            end = out(reg) _,
            inout("rsi") src => _,
            inout("rcx") size => _,
            out("rdi") _,
        );
    }
    (status, cpu)
}

/// Pop from this CPU's bounded stack: decline if `size` is 0 or `top - size < begin`, copy
/// the `size` bytes below `top` to `dst`, commit `top -= size`.
///
/// # Safety
/// As for [`push_copy`]; `dst` is writable for `size` bytes, private to the caller, and its
/// contents are meaningful only when the pop completes (an abort may leave a partial copy).
#[inline(always)]
pub(crate) unsafe fn pop_copy(
    section: Section,
    slots: Slots,
    dst: *mut u8,
    size: usize,
) -> (u32, usize) {
    let status: u32;
    let cpu: usize;
    // SAFETY: as for `add`. The copy reads [top - size, top), checked against `begin`, which
    // holds this CPU's newest item; it writes only the caller's private `dst`.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "test rcx, rcx",
                "jz 7f",
                "imul {header}, {cpu}",
                "add {header}, {base}",
                "mov {top}, qword ptr [{header}]",
                "sub {top}, rcx",
                "jb 7f",
                "cmp {top}, qword ptr [{header} + 16]",
                "jb 7f",
                "mov rsi, {top}",
                "rep movsb",
                "mov qword ptr [{header}], {top}",
            ],
            base = in(reg) slots.base,
            header = inout(reg) slots.stride => _,
            top = out(reg) _,
            inout("rdi") dst => _,
            inout("rcx") size => _,
            out("rsi") _,
        );
    }
    (status, cpu)
}

/// Push one word onto this CPU's bounded stack: decline if `top == end`, try-store `item` at
/// `top`, commit `top += 8`.
///
/// # Safety
/// As for [`push_copy`] with word-aligned, word-sized storage.
#[inline(always)]
pub(crate) unsafe fn push_word(section: Section, slots: Slots, item: *mut u8) -> (u32, usize) {
    let status: u32;
    let cpu: usize;
    // SAFETY: as for `add`. The try-store writes the free word at `top`, checked against
    // `end`; only the commit makes it an item.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {header}, {cpu}",
                "add {header}, {base}",
                "mov {top}, qword ptr [{header}]",
                "cmp {top}, qword ptr [{header} + 8]",
                "jae 7f",
                "mov qword ptr [{top}], {item}",
                "add {top}, 8",
                "mov qword ptr [{header}], {top}",
            ],
            base = in(reg) slots.base,
            item = in(reg) item,
            header = inout(reg) slots.stride => _,
            top = out(reg) _,
        );
    }
    (status, cpu)
}

/// Pop one word from this CPU's bounded stack: decline if `top == begin`, load the word below
/// `top` through the pointer, commit `top -= 8`.
///
/// # Safety
/// As for [`push_word`].
#[inline(always)]
pub(crate) unsafe fn pop_word(section: Section, slots: Slots) -> (u32, usize, *mut u8) {
    let status: u32;
    let cpu: usize;
    let item: *mut u8;
    // SAFETY: as for `add`. The load reads the newest item of this CPU's stack, checked
    // against `begin`; the only store is the commit.
    unsafe {
        critical_section!(
            area: section.area, index: section.index, len: slots.len,
            cpu: cpu, status: status,
            body: [
                "imul {header}, {cpu}",
                "add {header}, {base}",
                "mov {top}, qword ptr [{header}]",
                "cmp {top}, qword ptr [{header} + 16]",
                "jbe 7f",
                "mov {item}, qword ptr [{top} - 8]",
                "sub {top}, 8",
                "mov qword ptr [{header}], {top}",
            ],
            base = in(reg) slots.base,
            header = inout(reg) slots.stride => _,
            top = out(reg) _,
            item = out(reg) item,
        );
    }
    (status, cpu, item)
}

/// [`pop_word`] that answers with the word alone: null for every exit but a completed pop
/// (aborted, no CPU, empty), so the caller's one test of the word replaces the status
/// decode and no status or CPU register is needed.
///
/// # Safety
/// As for [`push_word`].
#[inline(always)]
pub(crate) unsafe fn try_pop_word(section: Section, slots: Slots) -> *mut u8 {
    let item: *mut u8;
    // SAFETY: as for `pop_word`, the same section with every cold exit zeroing the item
    // instead of setting a status. The abort handler (after the signature) and the no-CPU
    // and empty exits share that code, outside the section.
    unsafe {
        asm!(
            descriptor!(),
            enter_section!("6f"),
            "imul {header}, {cpu}",
            "add {header}, {base}",
            "mov {cpu}, qword ptr [{header}]",
            "cmp {cpu}, qword ptr [{header} + 16]",
            "jbe 6f",
            "mov {item}, qword ptr [{cpu} - 8]",
            "sub {cpu}, 8",
            "mov qword ptr [{header}], {cpu}",
            "3:",
            ".pushsection __rseq_failure, \"ax\"",
            signature!(),
            "5:",
            "6:",
            "xor {item:e}, {item:e}",
            "jmp 8f",
            ".popsection",
            "8:",
            area = in(reg) section.area,
            index = in(reg) section.index,
            len = in(reg) slots.len,
            base = in(reg) slots.base,
            header = inout(reg) slots.stride => _,
            cpu = out(reg) _,
            item = out(reg) item,
            options(nostack),
        );
    }
    item
}

/// [`push_word`] that answers only whether the word was pushed: every exit but the commit
/// leaves through one label (`asm goto`), so a completed push falls through with no status
/// to decode, and no CPU leaves the section.
///
/// # Safety
/// As for [`push_word`].
#[inline(always)]
pub(crate) unsafe fn try_push_word(section: Section, slots: Slots, item: *mut u8) -> bool {
    // SAFETY: as for `push_word`, the same section leaving through a label instead of
    // setting a status; the abort handler (after the signature, outside the section) jumps
    // to that label too.
    unsafe {
        asm!(
            descriptor!(),
            enter_section!("{failed}"),
            "imul {header}, {cpu}",
            "add {header}, {base}",
            "mov {cpu}, qword ptr [{header}]",
            "cmp {cpu}, qword ptr [{header} + 8]",
            "jae {failed}",
            "mov qword ptr [{cpu}], {item}",
            "add {cpu}, 8",
            "mov qword ptr [{header}], {cpu}",
            "3:",
            ".pushsection __rseq_failure, \"ax\"",
            signature!(),
            "5:",
            "jmp {failed}",
            ".popsection",
            area = in(reg) section.area,
            index = in(reg) section.index,
            len = in(reg) slots.len,
            base = in(reg) slots.base,
            item = in(reg) item,
            header = inout(reg) slots.stride => _,
            cpu = out(reg) _,
            failed = label { return false; },
            options(nostack),
        );
    }
    true
}

/// Push one word onto slot `cpu`'s bounded stack, only while the thread runs on CPU `cpu`:
/// decline if `top == end`, try-store `item` at `top`, commit `top += 8`. Returns the
/// status (never `DECLINED` for a thread elsewhere: that is `NO_CPU`).
///
/// The caller names the CPU, so the section needs no output: the slot address is formed
/// before it starts, and every exit but the commit leaves through a label (`asm goto`), so
/// the completed path falls through with no status to test.
///
/// # Safety
/// As for [`push_word`], and `cpu < slots.len`.
#[inline(always)]
pub(crate) unsafe fn push_word_on(
    section: Section,
    slots: Slots,
    cpu: usize,
    item: *mut u8,
) -> u32 {
    debug_assert!(cpu < slots.len);
    let header = slots.base.wrapping_add(cpu.wrapping_mul(slots.stride));
    // SAFETY: the caller guarantees the area and `cpu < len`, so `header` is slot `cpu`'s
    // live `BoundedStack` header.
    unsafe { push_word_on_header(section, header, cpu, item) }
}

/// [`push_word_on`] onto the stack whose header is at `header`, the caller's stack for CPU
/// `cpu`: the section reads it only after confirming that it runs on `cpu`.
///
/// # Safety
/// The area as for [`push_word`]; and whenever the calling thread runs on CPU `cpu`,
/// `header` is a live `BoundedStack` header with `push_word`'s storage contract that only
/// sections on CPU `cpu` write. Otherwise `header` may be anything: it is not read.
#[inline(always)]
pub(crate) unsafe fn push_word_on_header(
    section: Section,
    header: *mut u8,
    cpu: usize,
    item: *mut u8,
) -> u32 {
    // SAFETY: the index field is compared with `cpu` before any access to `header`, so the
    // section touches that stack only while running on its CPU, when the caller guarantees
    // it; the try-store writes the free word at `top`, checked against `end`, and only the
    // commit makes it an item. The abort handler (after the signature, outside the section)
    // and every cold exit jump to a label: no status register is needed.
    unsafe {
        asm!(
            descriptor!(),
            "lea {top}, [rip + 4b]",
            "mov qword ptr fs:[{area} + 8], {top}",
            "2:",
            "mov {top:e}, dword ptr fs:[{index}]",
            "cmp {top}, {cpu}",
            "jne {elsewhere}",
            "mov {top}, qword ptr [{header}]",
            "cmp {top}, qword ptr [{header} + 8]",
            "jae {full}",
            "mov qword ptr [{top}], {item}",
            "add {top}, 8",
            "mov qword ptr [{header}], {top}",
            "3:",
            ".pushsection __rseq_failure, \"ax\"",
            signature!(),
            "5:",
            "jmp {aborted}",
            ".popsection",
            area = in(reg) section.area,
            index = in(reg) section.index,
            cpu = in(reg) cpu,
            header = in(reg) header,
            item = in(reg) item,
            top = out(reg) _,
            elsewhere = label { return NO_CPU; },
            full = label { return DECLINED; },
            aborted = label { return ABORTED; },
            options(nostack),
        );
    }
    COMPLETED
}
