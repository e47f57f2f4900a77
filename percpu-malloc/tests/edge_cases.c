/* Edge cases of every entry point of libpercpu_malloc.so, run under LD_PRELOAD by
 * tests/preload.rs. Compiled with -fno-builtin so that the compiler keeps every call.
 * Prints "per_cpu_active=<0|1>" and exits 0 when every check passes; prints each failed
 * check and exits 1 otherwise. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                \
        }                                                                              \
    } while (0)

/* Opaque to the optimiser, so overflowing products are computed at run time. */
static volatile size_t big = SIZE_MAX;

static int aligned(const void *p, size_t align) { return ((uintptr_t)p & (align - 1)) == 0; }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + seed);
}

static int holds(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed)) return 0;
    return 1;
}

static void check_preloaded(void) {
    int (*active)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "percpu_malloc_active");
    CHECK(active != NULL);
    if (active) CHECK(active() == 1);
    /* malloc as this program resolves it lives in the shim. */
    Dl_info info;
    CHECK(dladdr((void *)&malloc, &info) != 0);
    CHECK(info.dli_fname != NULL && strstr(info.dli_fname, "libpercpu_malloc") != NULL);
    if (info.dli_fname) fprintf(stderr, "malloc resolved from %s\n", info.dli_fname);
}

static void check_malloc_free(void) {
    void *a = malloc(0), *b = malloc(0);
    CHECK(a != NULL && b != NULL && a != b);
    CHECK(aligned(a, 16) && aligned(b, 16));
    free(a);
    free(b);
    free(NULL);

    for (size_t n = 1; n <= 70000; n = n * 3 + 1) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL && aligned(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        fill(p, n, (unsigned)n);
        CHECK(holds(p, n, (unsigned)n));
        free(p);
    }
    /* Large blocks: their own mapping. */
    unsigned char *l = malloc(5u << 20);
    CHECK(l != NULL && aligned(l, 16));
    CHECK(malloc_usable_size(l) >= (5u << 20));
    fill(l, 5u << 20, 3);
    CHECK(holds(l, 5u << 20, 3));
    free(l);

    errno = 0;
    CHECK(malloc(big) == NULL);
    CHECK(errno == ENOMEM);
    errno = 0;
    CHECK(malloc(big / 2) == NULL);
    CHECK(errno == ENOMEM);

    /* free never touches errno, of small or large blocks. */
    void *k = malloc(100), *kl = malloc(1 << 20);
    errno = 1234;
    free(k);
    free(kl);
    CHECK(errno == 1234);
    CHECK(malloc_usable_size(NULL) == 0);
}

static void check_calloc(void) {
    errno = 0;
    CHECK(calloc(big, 2) == NULL);
    CHECK(errno == ENOMEM);
    errno = 0;
    CHECK(calloc((big >> 1) + 2, 2) == NULL);
    CHECK(errno == ENOMEM);
    void *z = calloc(0, 10);
    CHECK(z != NULL);
    free(z);

    /* Reused small blocks must come back zeroed. */
    for (int round = 0; round < 2; round++) {
        unsigned char *dirty[64];
        for (int i = 0; i < 64; i++) {
            dirty[i] = malloc(200);
            memset(dirty[i], 0xAB, 200);
        }
        for (int i = 0; i < 64; i++) free(dirty[i]);
        for (int i = 0; i < 64; i++) {
            unsigned char *c = calloc(25, 8);
            CHECK(c != NULL && aligned(c, 16));
            int zero = 1;
            for (int j = 0; j < 200; j++) zero &= c[j] == 0;
            CHECK(zero);
            dirty[i] = c;
        }
        for (int i = 0; i < 64; i++) free(dirty[i]);
    }
    unsigned char *lc = calloc(1 << 20, 3);
    CHECK(lc != NULL);
    int zero = 1;
    for (size_t i = 0; i < (3u << 20); i += 4096) zero &= lc[i] == 0;
    CHECK(zero);
    free(lc);
}

static void check_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    unsigned char *p = realloc(NULL, 10);
    CHECK(p != NULL && aligned(p, 16));
    fill(p, 10, 1);
    /* Grow through small classes into large mappings and back down. */
    size_t sizes[] = {10, 24, 100, 1000, 5000, 70000, 300000, 4u << 20, 9u << 20, 600000, 100000, 3000, 17, 1};
    size_t have = 10;
    for (size_t i = 1; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *q = realloc(p, n);
        CHECK(q != NULL && aligned(q, 16));
        if (!q) return;
        size_t keep = have < n ? have : n;
        CHECK(holds(q, keep, 1));
        CHECK(malloc_usable_size(q) >= n);
        fill(q, n, 1);
        p = q;
        have = n;
    }
    /* Failure leaves the block alone. */
    errno = 0;
    CHECK(realloc(p, big) == NULL);
    CHECK(errno == ENOMEM);
    CHECK(holds(p, have, 1));
    errno = 0;
    CHECK(reallocarray(p, big, 3) == NULL);
    CHECK(errno == ENOMEM);
    CHECK(holds(p, have, 1));
    unsigned char *r = reallocarray(p, 100, 40);
    CHECK(r != NULL && holds(r, have, 1));
    /* realloc(p, 0) frees and returns NULL (glibc's behaviour). */
    CHECK(realloc(r, 0) == NULL);

    /* A block with a large alignment keeps its contents when resized. */
    unsigned char *a = aligned_alloc(1 << 16, 3000);
    CHECK(a != NULL && aligned(a, 1 << 16));
    fill(a, 3000, 9);
    unsigned char *b = realloc(a, 1 << 20);
    CHECK(b != NULL && aligned(b, 16) && holds(b, 3000, 9));
    free(b);
}

static void check_aligned(void) {
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 3 * sizeof(void *), 10) == EINVAL);
    CHECK(posix_memalign(&p, 0, 10) == EINVAL);
    CHECK(posix_memalign(&p, sizeof(void *) / 2, 10) == EINVAL);
    CHECK(posix_memalign(&p, 24, 10) == EINVAL);
    CHECK(p == (void *)1);
    errno = 4321;
    CHECK(posix_memalign(&p, 64, big) == ENOMEM);
    CHECK(p == (void *)1);
    CHECK(errno == 4321);
    for (size_t align = sizeof(void *); align <= (4u << 20); align *= 2) {
        void *q = NULL;
        CHECK(posix_memalign(&q, align, align / 2 + 3) == 0);
        CHECK(q != NULL && aligned(q, align) && aligned(q, 16));
        CHECK(malloc_usable_size(q) >= align / 2 + 3);
        memset(q, 0x5A, align / 2 + 3);
        free(q);
    }
    CHECK(errno == 4321);
    void *z = NULL;
    CHECK(posix_memalign(&z, 256, 0) == 0 && z != NULL && aligned(z, 256));
    free(z);

    unsigned char *a4k = aligned_alloc(4096, 4096);
    CHECK(a4k != NULL && aligned(a4k, 4096));
    fill(a4k, 4096, 4);
    CHECK(holds(a4k, 4096, 4));
    free(a4k);
    void *odd = aligned_alloc(64, 100); /* size need not be a multiple */
    CHECK(odd != NULL && aligned(odd, 64));
    free(odd);
    errno = 0;
    CHECK(aligned_alloc(48, 96) == NULL);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(aligned_alloc(0, 96) == NULL);
    CHECK(errno == EINVAL);
    void *g = aligned_alloc(1u << 30, 1); /* 1 GiB alignment: its own mapping */
    CHECK(g != NULL && aligned(g, 1u << 30));
    free(g);

    void *m = memalign(48, 100); /* rounded up to 64 */
    CHECK(m != NULL && aligned(m, 64));
    free(m);
    m = memalign(0, 10);
    CHECK(m != NULL && aligned(m, 16));
    free(m);
    errno = 0;
    CHECK(memalign(big, 10) == NULL);
    CHECK(errno == EINVAL);

    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v != NULL && aligned(v, (size_t)page));
    free(v);
    void *pv = pvalloc(1);
    CHECK(pv != NULL && aligned(pv, (size_t)page) && malloc_usable_size(pv) >= (size_t)page);
    free(pv);
    errno = 0;
    CHECK(pvalloc(big - 10) == NULL);
    CHECK(errno == ENOMEM);
}

static void check_foreign(void) {
    /* Memory the shim never handed out: ignored, never a crash. */
    static char in_data[64];
    size_t len = (size_t)sysconf(_SC_PAGESIZE);
    char *mapped = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mapped != MAP_FAILED);
    CHECK(malloc_usable_size(in_data) == 0);
    CHECK(malloc_usable_size(mapped) == 0);
    errno = 77;
    free(in_data);
    free(mapped);
    CHECK(errno == 77);
    errno = 0;
    CHECK(realloc(mapped, 100) == NULL);
    CHECK(errno == ENOMEM);
    mapped[0] = 1; /* still ours */
    munmap(mapped, len);
}

/* Blocks allocated on one thread and freed on another, with contents checked. */
#define THREADS 4
#define SLOTS 256
#define ROUNDS 20000
static unsigned char *slots[SLOTS];
static size_t slot_len[SLOTS];
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static int thread_failures;

static void *churn(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    for (int i = 0; i < ROUNDS; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        size_t n = (r % 16 == 0) ? 1 + r % 400000 : 1 + r % 2000;
        unsigned char *p = (r % 7 == 0) ? calloc(1, n) : malloc(n);
        if (!p) {
            __atomic_add_fetch(&thread_failures, 1, __ATOMIC_RELAXED);
            continue;
        }
        fill(p, n < 64 ? n : 64, (unsigned)n);
        size_t slot = r % SLOTS;
        pthread_mutex_lock(&slot_lock);
        unsigned char *old = slots[slot];
        size_t old_len = slot_len[slot];
        slots[slot] = p;
        slot_len[slot] = n;
        pthread_mutex_unlock(&slot_lock);
        if (old) {
            if (!holds(old, old_len < 64 ? old_len : 64, (unsigned)old_len))
                __atomic_add_fetch(&thread_failures, 1, __ATOMIC_RELAXED);
            if (r % 5 == 0) {
                unsigned char *grown = realloc(old, old_len * 2);
                if (!grown || !holds(grown, old_len < 64 ? old_len : 64, (unsigned)old_len))
                    __atomic_add_fetch(&thread_failures, 1, __ATOMIC_RELAXED);
                old = grown;
            }
            free(old);
        }
    }
    return NULL;
}

static void check_threads(void) {
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(thread_failures == 0);
    for (int i = 0; i < SLOTS; i++) free(slots[i]);
}

int main(void) {
    check_preloaded();
    check_malloc_free();
    check_calloc();
    check_realloc();
    check_aligned();
    check_foreign();
    check_threads();
    int (*per_cpu)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "percpu_malloc_per_cpu_active");
    CHECK(per_cpu != NULL);
    printf("per_cpu_active=%d\n", per_cpu ? per_cpu() : -1);
    if (failures) fprintf(stderr, "%d checks failed\n", failures);
    return failures ? 1 : 0;
}
