/*
 * The reference the rseq-sys add is measured against: a per-CPU add written directly in C
 * with inline assembly, doing the same work (index bound check, stride multiply, one add as
 * the commit) in a loop that stays in C, so no call overhead is counted per operation.
 * glibc (>= 2.35) owns the registration; without it every add takes the atomic fallback.
 */
#include <stddef.h>
#include <stdint.h>

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

static inline char *rseq_area(void) {
    char *tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    return tp + __rseq_offset;
}

/* 0: committed, 1: aborted, 2: no CPU. */
static inline int rseq_add_once(char *area, uint64_t *slots, size_t stride, size_t len, uint64_t value) {
    int status;
    __asm__ __volatile__(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n"
        "4:\n\t"
        ".long 0, 0\n\t"
        ".quad 2f, (3f - 2f), 5f\n\t"
        ".popsection\n\t"
        "leaq 4b(%%rip), %%rax\n\t"
        "movq %%rax, 8(%[area])\n"
        "2:\n\t"
        "movl 4(%[area]), %%eax\n\t"
        "cmpq %[len], %%rax\n\t"
        "jae 6f\n\t"
        "imulq %[stride], %%rax\n\t"
        "addq %[value], (%[slots], %%rax)\n"
        "3:\n\t"
        "xorl %[status], %[status]\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n"
        "5:\n\t"
        "movl $1, %[status]\n\t"
        "jmp 7f\n"
        "6:\n\t"
        "movl $2, %[status]\n\t"
        "jmp 7f\n\t"
        ".popsection\n"
        "7:\n"
        : [status] "=&r"(status)
        : [area] "r"(area), [slots] "r"(slots), [stride] "r"(stride), [len] "r"(len), [value] "r"(value)
        : "rax", "memory", "cc");
    return status;
}

/* Add 1 to this CPU's slot `count` times; returns how many adds took the fallback. */
uint64_t percpu_c_rseq_add_loop(uint64_t *slots, size_t stride, size_t len, uint64_t count, uint64_t *fallback) {
    uint64_t fell_back = 0;
    int registered = &__rseq_size != 0 && __rseq_size > 0;
    char *area = registered ? rseq_area() : 0;
    for (uint64_t i = 0; i < count; i++) {
        for (;;) {
            int status = __builtin_expect(registered, 1) ? rseq_add_once(area, slots, stride, len, 1) : 2;
            if (__builtin_expect(status == 0, 1))
                break;
            if (status == 2) {
                __atomic_fetch_add(fallback, 1, __ATOMIC_RELAXED);
                fell_back++;
                break;
            }
        }
    }
    return fell_back;
}
