/* pool: tensor pools in POSIX shared memory: the segment and its header, the allocation
 * table and the one-word-per-block protocol that lets stages pass blocks without a lock
 * (see pool.h). The CUDA allocation behind a device pool lives in pool_cuda.c. */
#include "ipc/pool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ipc/pool_cuda.h"

/* The table is shared between processes: an atomic that is not lock-free would be emulated
 * with a lock private to each process and would protect nothing. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free to be shared between processes");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "the layout assumes 8-byte atomic words");
_Static_assert(sizeof(pool_entry_t) == 16, "the layout assumes 16-byte table entries");
_Static_assert(sizeof(pool_header_t) <= POOL_TABLE_OFFSET, "the header overlaps the table");
_Static_assert(POOL_TABLE_OFFSET % _Alignof(pool_entry_t) == 0, "the table is misaligned");

/* Page sizes accepted from a header: a power of two in this range, so that data is at least
 * OS-page aligned and a page count times a page size is easy to bound. */
#define POOL_PAGE_MIN 4096u
#define POOL_PAGE_MAX (1u << 30)

struct pool {
    char name[POOL_NAME_MAX];
    bool owner;
    int device;
    int cuda_opened_on; /* consumer of a device pool: the device its handle was opened on */
    uint32_t slot;
    uint32_t gen;
    /* Private copies of the validated header: bounds never depend on shared memory that
     * another process could change after pool_open checked it. */
    uint64_t page_size;
    uint64_t pages;
    uint64_t capacity;
    uint64_t data_start;
    unsigned char *map;
    size_t map_len;
    pool_header_t *hdr;
    pool_entry_t *table;
    unsigned char *data; /* host: map + data_start; device: the CUDA pointer */
    /* Owner only. The owner keeps its own run lengths so that a consumer scribbling on the
     * shared table can at worst mislabel a block, never make the owner hand out overlapping
     * blocks. */
    uint64_t *runs;
    uint64_t cursor; /* next-fit: where the next search starts */
    dev_t seg_dev;   /* identity of the segment the owner created, so that pool_close */
    ino_t seg_ino;   /* never unlinks a newer segment that took the same name */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The name, or -1 when the instance would make it ambiguous ('/' is a path to shm_open) or
 * too long to be the same name in every process. */
static int make_name(char *buf, const char *instance, uint32_t slot, uint32_t gen, char *err,
                     size_t errlen)
{
    if (!instance || !*instance || strchr(instance, '/')) {
        set_err(err, errlen, "invalid pool instance name \"%s\"", instance ? instance : "(null)");
        return -1;
    }
    int n = snprintf(buf, POOL_NAME_MAX, "/diffusiond.%s.%" PRIu32 ".%" PRIu32, instance, slot,
                     gen);
    if (n < 0 || n >= POOL_NAME_MAX) {
        set_err(err, errlen, "pool instance name \"%s\" is too long", instance);
        return -1;
    }
    return 0;
}

void pool_segment_name(char *buf, size_t len, const char *instance, uint32_t slot, uint32_t gen)
{
    snprintf(buf, len, "/diffusiond.%s.%" PRIu32 ".%" PRIu32, instance, slot, gen);
}

/* ---- segment and header ---- */

static uint64_t table_end(uint64_t pages)
{
    return POOL_TABLE_OFFSET + pages * sizeof(pool_entry_t);
}

/* Everything pool_open trusts, checked against the size the segment really has. Each
 * product and sum is bounded before it is formed, so that no overflow can pass a check. */
static int header_check(const pool_header_t *h, uint64_t size, uint32_t slot, uint32_t gen,
                        char *err, size_t errlen)
{
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic != POOL_MAGIC) {
        set_err(err, errlen, "bad magic %#" PRIx64 " (not a pool, or not initialised yet)",
                magic);
        return -1;
    }
    if (h->version != POOL_LAYOUT_VERSION) {
        set_err(err, errlen, "layout version %" PRIu32 ", this build reads %u", h->version,
                POOL_LAYOUT_VERSION);
        return -1;
    }
    uint64_t ps = h->page_size;
    if (ps < POOL_PAGE_MIN || ps > POOL_PAGE_MAX || (ps & (ps - 1)) != 0) {
        set_err(err, errlen, "page size %" PRIu64 " is not a power of two in [%u, %u]", ps,
                POOL_PAGE_MIN, POOL_PAGE_MAX);
        return -1;
    }
    if (h->pages == 0 || h->pages > UINT64_MAX / ps || h->pages * ps != h->capacity) {
        set_err(err, errlen, "%" PRIu64 " pages of %" PRIu64 " bytes are not the capacity %" PRIu64,
                h->pages, ps, h->capacity);
        return -1;
    }
    if (size < POOL_TABLE_OFFSET ||
        h->pages > (size - POOL_TABLE_OFFSET) / sizeof(pool_entry_t)) {
        set_err(err, errlen, "a table of %" PRIu64 " pages does not fit a %" PRIu64 "-byte segment",
                h->pages, size);
        return -1;
    }
    if (h->device < POOL_DEVICE_HOST) {
        set_err(err, errlen, "invalid device %" PRId32, h->device);
        return -1;
    }
    if (h->device == POOL_DEVICE_HOST) {
        if (h->data_start % ps != 0 || h->data_start < table_end(h->pages) ||
            h->data_start > size || h->capacity > size - h->data_start) {
            set_err(err, errlen,
                    "data area at %" PRIu64 " of %" PRIu64 " bytes is outside the %" PRIu64
                    "-byte segment",
                    h->data_start, h->capacity, size);
            return -1;
        }
    } else if (h->data_start != 0) {
        set_err(err, errlen, "device pool with a host data area at %" PRIu64, h->data_start);
        return -1;
    }
    if (h->owner_slot != slot || h->owner_gen != gen) {
        set_err(err, errlen, "segment belongs to slot %" PRIu32 " gen %" PRIu32, h->owner_slot,
                h->owner_gen);
        return -1;
    }
    return 0;
}

/* Reserves the segment's memory now: tmpfs allocates on first touch, and a full /dev/shm
 * (64 MiB in a default container) would then kill us with SIGBUS in the middle of a job
 * instead of failing here with a message. */
static int reserve(int fd, uint64_t size, char *err, size_t errlen)
{
    if (ftruncate(fd, (off_t)size) != 0) {
        set_err(err, errlen, "ftruncate to %" PRIu64 " bytes: %s", size, strerror(errno));
        return -1;
    }
    int r = posix_fallocate(fd, 0, (off_t)size);
    if (r != 0 && r != EOPNOTSUPP && r != EINVAL) {
        set_err(err, errlen, "reserving %" PRIu64 " bytes in /dev/shm: %s", size, strerror(r));
        return -1;
    }
    return 0;
}

pool_t *pool_create(const char *instance, uint32_t slot, uint32_t gen, uint64_t capacity,
                    int device, char *err, size_t errlen)
{
    const uint64_t ps = POOL_DEFAULT_PAGE;
    if (gen == 0) {
        set_err(err, errlen, "generation 0 is not a generation");
        return NULL;
    }
    if (device < POOL_DEVICE_HOST) {
        set_err(err, errlen, "invalid device %d", device);
        return NULL;
    }
    /* The bound keeps the table, the segment size and every offset far from overflow. */
    if (capacity == 0 || capacity > (UINT64_C(1) << 48)) {
        set_err(err, errlen, "pool capacity %" PRIu64 " is not in [1, 2^48] bytes", capacity);
        return NULL;
    }
    uint64_t pages = (capacity + ps - 1) / ps;
    capacity = pages * ps;
    uint64_t tend = table_end(pages);
    uint64_t data_start = device == POOL_DEVICE_HOST ? (tend + ps - 1) / ps * ps : 0;
    uint64_t seg = device == POOL_DEVICE_HOST ? data_start + capacity : tend;
    if (seg > SIZE_MAX || seg > (uint64_t)INT64_MAX) {
        set_err(err, errlen, "a %" PRIu64 "-byte segment does not fit this machine", seg);
        return NULL;
    }

    pool_t *p = calloc(1, sizeof(*p));
    if (!p || !(p->runs = calloc(pages, sizeof(*p->runs)))) {
        set_err(err, errlen, "out of memory for a pool of %" PRIu64 " pages", pages);
        free(p);
        return NULL;
    }
    if (make_name(p->name, instance, slot, gen, err, errlen) != 0) {
        free(p->runs);
        free(p);
        return NULL;
    }
    int fd = shm_open(p->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        set_err(err, errlen, "shm_open %s: %s", p->name, strerror(errno));
        free(p->runs);
        free(p);
        return NULL;
    }
    void *map = MAP_FAILED;
    struct stat created;
    if (fstat(fd, &created) == 0) {
        p->seg_dev = created.st_dev;
        p->seg_ino = created.st_ino;
    }
    if (reserve(fd, seg, err, errlen) == 0) {
        map = mmap(NULL, (size_t)seg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
            set_err(err, errlen, "mmap %s (%" PRIu64 " bytes): %s", p->name, seg, strerror(errno));
    }
    close(fd);
    if (map == MAP_FAILED)
        goto fail_unlink;

    p->owner = true;
    p->device = device;
    p->cuda_opened_on = -1;
    p->slot = slot;
    p->gen = gen;
    p->page_size = ps;
    p->pages = pages;
    p->capacity = capacity;
    p->data_start = data_start;
    p->map = map;
    p->map_len = (size_t)seg;
    p->hdr = map;
    p->table = (pool_entry_t *)(p->map + POOL_TABLE_OFFSET);
    /* A fresh segment is zero-filled, so every table entry already reads {FREE, 0}. */

    pool_header_t *h = p->hdr;
    if (device == POOL_DEVICE_HOST) {
        p->data = p->map + data_start;
    } else {
        void *dptr = NULL;
        if (pool_cuda_alloc(device, capacity, &dptr, h->cuda_handle, err, errlen) != 0) {
            munmap(p->map, p->map_len);
            goto fail_unlink;
        }
        p->data = dptr;
    }
    h->version = POOL_LAYOUT_VERSION;
    h->page_size = (uint32_t)ps;
    h->pages = pages;
    h->capacity = capacity;
    h->data_start = data_start;
    h->device = device;
    h->owner_slot = slot;
    h->owner_gen = gen;
    h->reserved = 0;
    atomic_store_explicit(&h->magic, POOL_MAGIC, memory_order_release);
    return p;

fail_unlink:
    shm_unlink(p->name);
    free(p->runs);
    free(p);
    return NULL;
}

pool_t *pool_open(const char *instance, uint32_t slot, uint32_t gen, char *err, size_t errlen)
{
    char name[POOL_NAME_MAX];
    if (gen == 0) {
        set_err(err, errlen, "generation 0 is not a generation");
        return NULL;
    }
    if (make_name(name, instance, slot, gen, err, errlen) != 0)
        return NULL;
    /* Read-write: releasing and handing over are writes to the table. */
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) {
        set_err(err, errlen, "shm_open %s: %s", name, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, errlen, "fstat %s: %s", name, strerror(errno));
        close(fd);
        return NULL;
    }
    if (st.st_size < (off_t)sizeof(pool_header_t) || (uint64_t)st.st_size > SIZE_MAX) {
        set_err(err, errlen, "%s: a %jd-byte segment cannot hold a pool", name,
                (intmax_t)st.st_size);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    unsigned char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        set_err(err, errlen, "mmap %s: %s", name, strerror(errno));
        return NULL;
    }
    pool_header_t *h = (pool_header_t *)map;
    char why[192];
    if (header_check(h, len, slot, gen, why, sizeof(why)) != 0) {
        set_err(err, errlen, "%s: %s", name, why);
        munmap(map, len);
        return NULL;
    }

    pool_t *p = calloc(1, sizeof(*p));
    if (!p) {
        set_err(err, errlen, "%s: out of memory", name);
        munmap(map, len);
        return NULL;
    }
    memcpy(p->name, name, sizeof(name));
    p->owner = false;
    p->device = h->device;
    p->cuda_opened_on = -1;
    p->slot = slot;
    p->gen = gen;
    p->page_size = h->page_size;
    p->pages = h->pages;
    p->capacity = h->capacity;
    p->data_start = h->data_start;
    p->map = map;
    p->map_len = len;
    p->hdr = h;
    p->table = (pool_entry_t *)(map + POOL_TABLE_OFFSET);
    if (p->device == POOL_DEVICE_HOST) {
        p->data = map + p->data_start;
    } else {
        void *dptr = NULL;
        if (pool_cuda_open(h->cuda_handle, &dptr, &p->cuda_opened_on, why, sizeof(why)) != 0) {
            set_err(err, errlen, "%s: %s", name, why);
            munmap(map, len);
            free(p);
            return NULL;
        }
        p->data = dptr;
    }
    return p;
}

void pool_close(pool_t **pool)
{
    if (!pool || !*pool)
        return;
    pool_t *p = *pool;
    if (p->device != POOL_DEVICE_HOST && p->data) {
        if (p->owner)
            pool_cuda_free(p->device, p->data);
        else
            pool_cuda_close(p->cuda_opened_on, p->data);
    }
    munmap(p->map, p->map_len);
    /* Consumers that still map the segment keep it; the name goes so a restarted owner with
     * the same generation could never find a stale one. An owner that outlived its supervisor
     * (it exits on the parent-death signal) may find the name taken by a new run's segment:
     * that one is not ours to remove. */
    if (p->owner) {
        char path[POOL_NAME_MAX + 16];
        struct stat now;
        snprintf(path, sizeof path, "/dev/shm%s", p->name);
        if (stat(path, &now) == 0 && now.st_dev == p->seg_dev && now.st_ino == p->seg_ino)
            shm_unlink(p->name);
    }
    free(p->runs);
    free(p);
    *pool = NULL;
}

int pool_unlink(const char *instance, uint32_t slot, uint32_t gen)
{
    char name[POOL_NAME_MAX];
    if (make_name(name, instance, slot, gen, NULL, 0) != 0) {
        errno = EINVAL;
        return -1;
    }
    if (shm_unlink(name) != 0 && errno != ENOENT)
        return -1;
    return 0;
}

/* The end of a run of 1 to 10 digits (a u32) at s, or NULL. */
static const char *number_end(const char *s)
{
    const char *start = s;
    while (*s >= '0' && *s <= '9')
        s++;
    return s == start || s - start > 10 ? NULL : s;
}

/* After "diffusiond.INSTANCE.": a pool's "SLOT.GEN", or a cancel table's "cancel.SLOT"
 * (pipeline/cancel.c names them so), and nothing else: instance "a" must not take "a.b"'s
 * segments for its own. */
static bool is_instance_segment(const char *rest)
{
    const char *e = number_end(rest);
    if (e && *e == '.') { /* SLOT.GEN */
        e = number_end(e + 1);
        return e && *e == '\0';
    }
    if (strncmp(rest, "cancel.", 7) != 0)
        return false;
    e = number_end(rest + 7);
    return e && *e == '\0';
}

int pool_unlink_all(const char *instance)
{
    char prefix[POOL_NAME_MAX];
    if (!instance || !*instance || strchr(instance, '/')) {
        errno = EINVAL;
        return -1;
    }
    int n = snprintf(prefix, sizeof(prefix), "diffusiond.%s.", instance);
    if (n < 0 || (size_t)n >= sizeof(prefix)) {
        errno = EINVAL;
        return -1;
    }
    /* shm_open names live in /dev/shm on Linux; there is no other way to list them. */
    DIR *dir = opendir("/dev/shm");
    if (!dir)
        return -1;
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, prefix, (size_t)n) != 0 || !is_instance_segment(de->d_name + n))
            continue;
        char name[POOL_NAME_MAX + 1];
        if ((size_t)snprintf(name, sizeof(name), "/%s", de->d_name) >= sizeof(name))
            continue;
        if (shm_unlink(name) == 0)
            removed++;
    }
    closedir(dir);
    return removed;
}

/* ---- the allocation table ---- */

/* The table index of the page that offset names; false if offset is not page-aligned inside
 * the pool (offsets come from the wire). */
static bool page_index(const pool_t *p, uint64_t offset, uint64_t *idx)
{
    if (offset >= p->capacity || (offset & (p->page_size - 1)) != 0)
        return false;
    *idx = offset / p->page_size;
    return true;
}

/* Pages in the block starting at idx, 0 when idx starts none. The owner's own copy where it
 * has one; a consumer's comes from shared memory and is clamped to the table. */
static uint64_t block_run(const pool_t *p, uint64_t idx)
{
    if (p->owner)
        return p->runs[idx];
    uint64_t run = atomic_load_explicit(&p->table[idx].run, memory_order_relaxed);
    return run <= p->pages - idx ? run : p->pages - idx;
}

/* Owner: a released block becomes free pages. Nobody else writes a RELEASED word (every
 * other change is a CAS from USED), so plain stores suffice. */
static void free_block(pool_t *p, uint64_t idx)
{
    p->runs[idx] = 0;
    atomic_store_explicit(&p->table[idx].run, 0, memory_order_relaxed);
    atomic_store_explicit(&p->table[idx].word, POOL_WORD(POOL_ENTRY_FREE, 0), memory_order_release);
}

/* Owner: first run of n free pages that starts at or after from, freeing released blocks
 * on the way. */
static bool find_free(pool_t *p, uint64_t from, uint64_t n, uint64_t *start)
{
    uint64_t i = from, len = 0;
    while (i < p->pages) {
        uint64_t run = p->runs[i];
        if (run == 0) {
            if (len == 0)
                *start = i;
            i++;
            if (++len == n)
                return true;
            continue;
        }
        /* acquire: the last holder's writes to the data happen before we reuse it. */
        uint64_t w = atomic_load_explicit(&p->table[i].word, memory_order_acquire);
        if (POOL_WORD_STATE(w) == POOL_ENTRY_RELEASED) {
            free_block(p, i);
            continue; /* look at page i again, now free */
        }
        /* USED, or anything a consumer scribbled: not ours to take. */
        len = 0;
        i += run;
    }
    return false;
}

int pool_alloc(pool_t *p, uint64_t bytes, uint32_t holder, uint64_t *offset)
{
    if (!p || !p->owner) {
        errno = EPERM;
        return -1;
    }
    if (holder == 0 || bytes == 0 || !offset) {
        errno = EINVAL;
        return -1;
    }
    if (bytes > p->capacity) {
        errno = ENOMEM;
        return -1;
    }
    uint64_t n = (bytes + p->page_size - 1) / p->page_size;
    uint64_t start = 0;
    /* Next-fit from the cursor: blocks are mostly released in the order they were taken, so
     * the free space is usually just ahead and the busy front is not rescanned every time.
     * Then one pass from the start before giving up. */
    if (!find_free(p, p->cursor, n, &start) && !(p->cursor > 0 && find_free(p, 0, n, &start))) {
        errno = ENOMEM;
        return -1;
    }
    p->runs[start] = n;
    atomic_store_explicit(&p->table[start].run, n, memory_order_relaxed);
    /* release: whoever sees the word also sees the run length. */
    atomic_store_explicit(&p->table[start].word, POOL_WORD(POOL_ENTRY_USED, holder),
                          memory_order_release);
    p->cursor = start + n < p->pages ? start + n : 0;
    *offset = start * p->page_size;
    return 0;
}

void *pool_data(pool_t *p, uint64_t offset, uint64_t bytes, uint32_t holder)
{
    uint64_t idx;
    if (!p || holder == 0 || !page_index(p, offset, &idx))
        return NULL;
    uint64_t w = atomic_load_explicit(&p->table[idx].word, memory_order_acquire);
    if (w != POOL_WORD(POOL_ENTRY_USED, holder))
        return NULL;
    /* run <= pages - idx, so the product stays inside capacity - offset. */
    if (bytes > block_run(p, idx) * p->page_size)
        return NULL;
    return p->data + offset;
}

int pool_hand_over(pool_t *p, uint64_t offset, uint32_t from, uint32_t to)
{
    uint64_t idx;
    if (!p || from == 0 || to == 0 || !page_index(p, offset, &idx))
        return -1;
    uint64_t expect = POOL_WORD(POOL_ENTRY_USED, from);
    return atomic_compare_exchange_strong(&p->table[idx].word, &expect,
                                          POOL_WORD(POOL_ENTRY_USED, to))
               ? 0
               : -1;
}

int pool_release(pool_t *p, uint64_t offset, uint32_t holder)
{
    uint64_t idx;
    if (!p || holder == 0 || !page_index(p, offset, &idx))
        return -1;
    uint64_t expect = POOL_WORD(POOL_ENTRY_USED, holder);
    return atomic_compare_exchange_strong(&p->table[idx].word, &expect,
                                          POOL_WORD(POOL_ENTRY_RELEASED, 0))
               ? 0
               : -1;
}

uint32_t pool_holder(pool_t *p, uint64_t offset)
{
    uint64_t idx;
    if (!p || !page_index(p, offset, &idx))
        return 0;
    uint64_t w = atomic_load_explicit(&p->table[idx].word, memory_order_acquire);
    return POOL_WORD_STATE(w) == POOL_ENTRY_USED ? POOL_WORD_HOLDER(w) : 0;
}

size_t pool_reclaim(pool_t *p, pool_is_dead_fn is_dead, void *ctx)
{
    if (!p || !p->owner || !is_dead)
        return 0;
    size_t reclaimed = 0;
    for (uint64_t i = 0; i < p->pages;) {
        uint64_t run = p->runs[i];
        if (run == 0) {
            i++;
            continue;
        }
        /* A CAS, not a store: a live peer may hand the block over or release it meanwhile,
         * and then the new word is judged again. */
        uint64_t w = atomic_load_explicit(&p->table[i].word, memory_order_acquire);
        while (POOL_WORD_STATE(w) == POOL_ENTRY_USED && is_dead(POOL_WORD_HOLDER(w), ctx)) {
            if (atomic_compare_exchange_weak(&p->table[i].word, &w,
                                             POOL_WORD(POOL_ENTRY_RELEASED, 0))) {
                reclaimed++;
                break;
            }
        }
        i += run;
    }
    return reclaimed;
}

uint64_t pool_used(pool_t *p)
{
    if (!p)
        return 0;
    /* A scan rather than a counter: releases happen in other processes. */
    uint64_t used = 0;
    for (uint64_t i = 0; i < p->pages;) {
        uint64_t run = block_run(p, i);
        if (run == 0) {
            i++;
            continue;
        }
        uint64_t w = atomic_load_explicit(&p->table[i].word, memory_order_acquire);
        if (POOL_WORD_STATE(w) == POOL_ENTRY_USED)
            used += run * p->page_size;
        i += run;
    }
    return used;
}

uint64_t pool_capacity(const pool_t *p) { return p->capacity; }
int pool_device(const pool_t *p) { return p->device; }
uint32_t pool_slot(const pool_t *p) { return p->slot; }
uint32_t pool_gen(const pool_t *p) { return p->gen; }
const char *pool_name(const pool_t *p) { return p->name; }
uint64_t pool_data_start(const pool_t *p) { return p->data_start; }

/* ---- consumer cache ---- */

typedef struct {
    uint32_t slot;
    uint32_t gen;
    pool_t *pool;
    uint32_t holds;  /* jobs of this process that point into the pool */
    bool stale;      /* its owner restarted or stopped: close it once holds is 0 */
} pool_cache_entry_t;

struct pool_cache {
    char instance[POOL_NAME_MAX];
    pool_cache_entry_t *entries; /* unordered; a handful of producing stages */
    size_t n;
    size_t cap;
};

pool_cache_t *pool_cache_new(const char *instance)
{
    if (!instance || strlen(instance) >= POOL_NAME_MAX)
        return NULL;
    pool_cache_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    strcpy(c->instance, instance);
    return c;
}

void pool_cache_free(pool_cache_t **cache)
{
    if (!cache || !*cache)
        return;
    pool_cache_t *c = *cache;
    for (size_t i = 0; i < c->n; i++)
        pool_close(&c->entries[i].pool);
    free(c->entries);
    free(c);
    *cache = NULL;
}

pool_t *pool_cache_get(pool_cache_t *c, uint32_t slot, uint32_t gen, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->entries[i].slot == slot && c->entries[i].gen == gen)
            return c->entries[i].pool;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        pool_cache_entry_t *e = realloc(c->entries, cap * sizeof(*e));
        if (!e) {
            set_err(err, errlen, "out of memory for the pool cache");
            return NULL;
        }
        c->entries = e;
        c->cap = cap;
    }
    pool_t *p = pool_open(c->instance, slot, gen, err, errlen);
    if (!p)
        return NULL;
    c->entries[c->n++] = (pool_cache_entry_t){.slot = slot, .gen = gen, .pool = p};
    return p;
}

static void cache_close(pool_cache_t *c, size_t i)
{
    pool_close(&c->entries[i].pool);
    c->entries[i] = c->entries[--c->n];
}

void pool_cache_forget_stale(pool_cache_t *c, uint32_t slot, uint32_t gen)
{
    for (size_t i = 0; i < c->n;) {
        pool_cache_entry_t *e = &c->entries[i];
        if (e->slot == slot && e->gen != gen) {
            e->stale = true;
            if (e->holds == 0) {
                cache_close(c, i);
                continue;
            }
        }
        i++;
    }
}

void pool_cache_hold(pool_cache_t *c, uint32_t slot, uint32_t gen)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->entries[i].slot == slot && c->entries[i].gen == gen) {
            c->entries[i].holds++;
            return;
        }
}

void pool_cache_unhold(pool_cache_t *c, uint32_t slot, uint32_t gen)
{
    for (size_t i = 0; i < c->n; i++) {
        pool_cache_entry_t *e = &c->entries[i];
        if (e->slot == slot && e->gen == gen && e->holds > 0) {
            if (--e->holds == 0 && e->stale)
                cache_close(c, i);
            return;
        }
    }
}
