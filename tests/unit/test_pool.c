/* Tests for ipc/pool: segments and header validation, the allocation table and its
 * compare-and-swap protocol, reclaim after a real SIGKILL, hostile offsets, concurrent
 * processes, and the CUDA path where there is a GPU. Every segment is named after this
 * process ("ut<pid>-..."), so runs never collide, and the last test checks that none is
 * left in /dev/shm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef DIFFUSIOND_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "ipc/pool.h"

#define PAGE ((uint64_t)POOL_DEFAULT_PAGE)

static char g_prefix[32]; /* "ut<pid>-" */

static void inst(char *buf, size_t len, const char *tag)
{
    snprintf(buf, len, "%s%s", g_prefix, tag);
}

static pool_t *create_host(const char *instance, uint32_t slot, uint32_t gen, uint64_t cap)
{
    char err[256] = "";
    pool_t *p = pool_create(instance, slot, gen, cap, POOL_DEVICE_HOST, err, sizeof(err));
    if (!p)
        fail_msg("pool_create %s: %s", instance, err);
    return p;
}

static pool_t *open_consumer(const char *instance, uint32_t slot, uint32_t gen)
{
    char err[256] = "";
    pool_t *p = pool_open(instance, slot, gen, err, sizeof(err));
    if (!p)
        fail_msg("pool_open %s: %s", instance, err);
    return p;
}

static bool segment_exists(const char *instance, uint32_t slot, uint32_t gen)
{
    char name[POOL_NAME_MAX];
    pool_segment_name(name, sizeof(name), instance, slot, gen);
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Maps a whole segment behind the pool's back, to corrupt or inspect it. */
static unsigned char *map_raw(const char *name, size_t *len)
{
    int fd = shm_open(name, O_RDWR, 0);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    *len = (size_t)st.st_size;
    unsigned char *m = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(m != MAP_FAILED);
    return m;
}

/* ---- segments ---- */

static void test_create_open_close(void **state)
{
    char in[64], err[256], name[POOL_NAME_MAX];
    inst(in, sizeof(in), "coc");
    pool_t *p = create_host(in, 4, 7, 10 * PAGE + 1); /* rounded up to 11 pages */
    assert_int_equal(pool_capacity(p), 11 * PAGE);
    assert_int_equal(pool_device(p), POOL_DEVICE_HOST);
    assert_int_equal(pool_slot(p), 4);
    assert_int_equal(pool_gen(p), 7);
    pool_segment_name(name, sizeof(name), in, 4, 7);
    assert_string_equal(pool_name(p), name);
    assert_int_equal(pool_data_start(p) % PAGE, 0);
    assert_true(pool_data_start(p) >= POOL_TABLE_OFFSET + 11 * sizeof(pool_entry_t));
    assert_int_equal(pool_used(p), 0);

    /* A second owner with the same generation must not take over the segment. */
    assert_null(pool_create(in, 4, 7, PAGE, POOL_DEVICE_HOST, err, sizeof(err)));
    assert_non_null(strstr(err, "exists"));

    pool_t *c = open_consumer(in, 4, 7);
    assert_int_equal(pool_capacity(c), pool_capacity(p));
    assert_int_equal(pool_data_start(c), pool_data_start(p));
    assert_int_equal(pool_device(c), POOL_DEVICE_HOST);
    pool_close(&c);
    assert_null(c);
    assert_true(segment_exists(in, 4, 7)); /* a consumer's close leaves the segment */

    pool_close(&p);
    assert_null(p);
    assert_false(segment_exists(in, 4, 7));
    pool_close(&p); /* closing NULL is a no-op */

    err[0] = '\0';
    assert_null(pool_open(in, 4, 7, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    assert_null(pool_create(in, 4, 0, PAGE, POOL_DEVICE_HOST, err, sizeof(err)));
    assert_null(pool_create(in, 4, 7, 0, POOL_DEVICE_HOST, err, sizeof(err)));
    assert_null(pool_create(in, 4, 7, UINT64_MAX, POOL_DEVICE_HOST, err, sizeof(err)));
    assert_null(pool_create("a/b", 4, 7, PAGE, POOL_DEVICE_HOST, err, sizeof(err)));
    assert_non_null(strstr(err, "instance"));
    assert_null(pool_create(in, 4, 7, PAGE, -2, err, sizeof(err)));
    assert_false(segment_exists(in, 4, 7));
}

static void test_segment_mode_0600(void **state)
{
    char in[64], name[POOL_NAME_MAX];
    inst(in, sizeof(in), "mode");
    pool_t *p = create_host(in, 0, 1, 3 * PAGE);
    pool_segment_name(name, sizeof(name), in, 0, 1);
    int fd = shm_open(name, O_RDONLY, 0);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    close(fd);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal((uint64_t)st.st_size, pool_data_start(p) + pool_capacity(p));
    /* The reservation: tmpfs blocks are allocated now, not on first touch. */
    assert_true((uint64_t)st.st_blocks * 512 >= pool_data_start(p) + pool_capacity(p));
    pool_close(&p);
}

/* A valid host header of 4 pages and the size of its segment; the cases below break it. */
static void good_header(pool_header_t *h, uint64_t *size, uint32_t slot, uint32_t gen)
{
    memset(h, 0, sizeof(*h));
    atomic_store(&h->magic, POOL_MAGIC);
    h->version = POOL_LAYOUT_VERSION;
    h->page_size = (uint32_t)PAGE;
    h->pages = 4;
    h->capacity = 4 * PAGE;
    h->data_start = PAGE; /* the table (128 + 4 x 16 bytes) rounded up to a page */
    h->device = POOL_DEVICE_HOST;
    h->owner_slot = slot;
    h->owner_gen = gen;
    *size = PAGE + 4 * PAGE;
}

static void craft(const char *instance, uint32_t slot, uint32_t gen, const pool_header_t *h,
                  uint64_t size)
{
    char name[POOL_NAME_MAX];
    pool_segment_name(name, sizeof(name), instance, slot, gen);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    size_t n = size < sizeof(*h) ? (size_t)size : sizeof(*h);
    assert_int_equal(pwrite(fd, h, n, 0), (ssize_t)n);
    close(fd);
}

static const char *corrupt(int k, pool_header_t *h, uint64_t *size, const char **expect)
{
    switch (k) {
    case 0: *expect = NULL; return "valid (control)";
    case 1: atomic_store(&h->magic, 0); *expect = "magic"; return "magic";
    case 2: h->version = 99; *expect = "version"; return "version";
    case 3: h->page_size = 65535; *expect = "page size"; return "page size not a power of 2";
    case 4: h->page_size = 0; *expect = "page size"; return "page size 0";
    case 5: h->page_size = 1u << 31; *expect = "page size"; return "page size 2^31";
    case 6: h->capacity = 5 * PAGE; *expect = "capacity"; return "pages x page != capacity";
    case 7: /* 2^48 pages of 2^16 bytes wrap to 0 in 64 bits */
        h->pages = UINT64_C(1) << 48; h->capacity = 0; *expect = "capacity";
        return "pages x page overflows";
    case 8: h->pages = 8; h->capacity = 8 * PAGE; *expect = "data area";
        return "capacity larger than the file";
    case 9: h->pages = UINT64_C(1) << 40; h->capacity = UINT64_C(1) << 56; *expect = "table";
        return "table larger than the file";
    case 10: h->data_start = PAGE + 4096; *expect = "data area"; return "data_start unaligned";
    case 11: h->data_start = 0; *expect = "data area"; return "data over the table";
    case 12: h->data_start = UINT64_MAX - PAGE + 1; *expect = "data area";
        return "data_start + capacity overflows";
    case 13: *size -= 1; *expect = "data area"; return "file one byte short";
    case 14: h->device = -2; *expect = "device"; return "device -2";
    case 15: h->device = 0; *expect = "host data area"; return "device pool with host data";
    case 16: h->owner_gen++; *expect = "belongs"; return "other generation";
    case 17: h->owner_slot++; *expect = "belongs"; return "other slot";
    case 18: *size = 10; *expect = "cannot hold"; return "smaller than a header";
    case 19: *size = 0; *expect = "cannot hold"; return "empty segment";
    case 20: *size = sizeof(pool_header_t) + 4; *expect = "table"; return "header only";
    default: return NULL;
    }
}

static void test_header_validation(void **state)
{
    char in[64];
    inst(in, sizeof(in), "hdr");
    for (int k = 0;; k++) {
        pool_header_t h;
        uint64_t size;
        const char *expect;
        good_header(&h, &size, 1, 2);
        const char *what = corrupt(k, &h, &size, &expect);
        if (!what)
            break;
        craft(in, 1, 2, &h, size);
        char err[256] = "";
        pool_t *c = pool_open(in, 1, 2, err, sizeof(err));
        if (!expect) {
            if (!c)
                fail_msg("case %d (%s): %s", k, what, err);
            assert_int_equal(pool_capacity(c), 4 * PAGE);
            assert_int_equal(pool_used(c), 0);
            pool_close(&c);
        } else if (c) {
            fail_msg("case %d (%s): opened", k, what);
        } else if (!strstr(err, expect)) {
            fail_msg("case %d (%s): error \"%s\" does not say \"%s\"", k, what, err, expect);
        }
        assert_int_equal(pool_unlink(in, 1, 2), 0);
    }
}

/* Every single-byte corruption of the header either fails to open or opens a pool that
 * stays within its mapping (a crash here is the bug). */
static void test_header_byte_flips(void **state)
{
    char in[64];
    inst(in, sizeof(in), "flip");
    static const uint8_t values[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    int opened = 0, rejected = 0;
    for (size_t at = 0; at < sizeof(pool_header_t); at++) {
        for (size_t v = 0; v < sizeof(values); v++) {
            pool_header_t h;
            uint64_t size;
            good_header(&h, &size, 1, 2);
            ((uint8_t *)&h)[at] = values[v];
            craft(in, 1, 2, &h, size);
            char err[256];
            pool_t *c = pool_open(in, 1, 2, err, sizeof(err));
            if (c) {
                opened++;
                assert_true(pool_capacity(c) <= size);
                (void)pool_used(c);
                for (uint64_t off = 0; off < pool_capacity(c); off += PAGE)
                    assert_null(pool_data(c, off, 1, 1));
                pool_close(&c);
            } else {
                rejected++;
            }
            assert_int_equal(pool_unlink(in, 1, 2), 0);
        }
    }
    assert_true(opened > 0);   /* e.g. the reserved word and cuda_handle are not checked */
    assert_true(rejected > 0); /* and most fields are */
}

static void test_device_header_needs_cuda(void **state)
{
    /* A well-formed device pool whose handle is all zeros: no build may open it, and the
     * message must say that CUDA was the reason. */
    char in[64];
    inst(in, sizeof(in), "devhdr");
    pool_header_t h;
    uint64_t size;
    good_header(&h, &size, 1, 2);
    h.device = 0;
    h.data_start = 0;
    size = POOL_TABLE_OFFSET + 4 * sizeof(pool_entry_t);
    craft(in, 1, 2, &h, size);
    char err[256] = "";
    assert_null(pool_open(in, 1, 2, err, sizeof(err)));
    assert_non_null(strstr(err, "CUDA"));
    assert_int_equal(pool_unlink(in, 1, 2), 0);
}

/* ---- allocation ---- */

static void test_alloc_no_overlap(void **state)
{
    char in[64];
    inst(in, sizeof(in), "ovl");
    pool_t *p = create_host(in, 0, 1, 32 * PAGE);
    static const uint64_t sizes[] = {1, PAGE, PAGE + 1, 3 * PAGE, 17, 2 * PAGE - 1, 5 * PAGE};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) };
    uint64_t off[N], expect_used = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(pool_alloc(p, sizes[i], 100 + i, &off[i]), 0);
        assert_int_equal(off[i] % PAGE, 0);
        uint64_t span = (sizes[i] + PAGE - 1) / PAGE * PAGE;
        assert_true(off[i] + span <= pool_capacity(p));
        expect_used += span;
        assert_int_equal(pool_holder(p, off[i]), 100 + i);
        unsigned char *d = pool_data(p, off[i], span, 100 + i);
        assert_non_null(d);
        memset(d, 'a' + i, span); /* the whole rounded block is the caller's */
    }
    assert_int_equal(pool_used(p), expect_used);
    for (int i = 0; i < N; i++) {
        uint64_t si = (sizes[i] + PAGE - 1) / PAGE * PAGE;
        for (int j = 0; j < N; j++) {
            uint64_t sj = (sizes[j] + PAGE - 1) / PAGE * PAGE;
            if (i != j)
                assert_true(off[i] + si <= off[j] || off[j] + sj <= off[i]);
        }
        /* No later block wrote over this one. */
        unsigned char *d = pool_data(p, off[i], si, 100 + i);
        for (uint64_t b = 0; b < si; b += 4093)
            assert_int_equal(d[b], 'a' + i);
        assert_int_equal(d[si - 1], 'a' + i);
    }

    /* Release two, allocate again: the new blocks avoid the live ones. */
    assert_int_equal(pool_release(p, off[1], 101), 0);
    assert_int_equal(pool_release(p, off[3], 103), 0);
    expect_used -= PAGE + 3 * PAGE;
    assert_int_equal(pool_used(p), expect_used);
    uint64_t n1, n2;
    assert_int_equal(pool_alloc(p, 4 * PAGE, 200, &n1), 0);
    assert_int_equal(pool_alloc(p, 1, 201, &n2), 0);
    uint64_t nb[2][2] = {{n1, 4 * PAGE}, {n2, PAGE}};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < N; i++) {
            if (i == 1 || i == 3)
                continue;
            uint64_t si = (sizes[i] + PAGE - 1) / PAGE * PAGE;
            assert_true(nb[k][0] + nb[k][1] <= off[i] || off[i] + si <= nb[k][0]);
        }
    assert_true(n1 + 4 * PAGE <= n2 || n2 + PAGE <= n1);
    assert_int_equal(pool_used(p), expect_used + 5 * PAGE);
    pool_close(&p);
}

static void test_shared_not_copied(void **state)
{
    char in[64];
    inst(in, sizeof(in), "shared");
    pool_t *p = create_host(in, 2, 3, 8 * PAGE);
    uint64_t a, b;
    assert_int_equal(pool_alloc(p, PAGE, 9, &a), 0);
    assert_int_equal(pool_alloc(p, 2 * PAGE, 9, &b), 0);
    unsigned char *ob = pool_data(p, b, 2 * PAGE, 9);
    assert_non_null(ob);
    memcpy(ob, "before open", 12);

    pool_t *c = open_consumer(in, 2, 3);
    unsigned char *cb = pool_data(c, b, 2 * PAGE, 9);
    assert_non_null(cb);
    assert_ptr_not_equal(cb, ob); /* two mappings ... */
    assert_memory_equal(cb, "before open", 12);
    memcpy(ob + PAGE, "after open", 11); /* ... of the same bytes, both ways */
    assert_memory_equal(cb + PAGE, "after open", 11);
    memcpy(cb + 100, "from consumer", 14);
    assert_memory_equal(ob + 100, "from consumer", 14);

    /* The bytes are in the segment itself, at data_start + offset. */
    size_t len;
    unsigned char *raw = map_raw(pool_name(p), &len);
    assert_true(pool_data_start(p) + b + PAGE + 11 <= len);
    assert_memory_equal(raw + pool_data_start(p) + b + PAGE, "after open", 11);
    munmap(raw, len);

    /* A hand-over made by the consumer is what the owner sees. */
    assert_int_equal(pool_hand_over(c, b, 9, 10), 0);
    assert_int_equal(pool_holder(p, b), 10);
    assert_int_equal(pool_release(c, b, 10), 0);
    assert_int_equal(pool_used(p), PAGE);
    assert_int_equal(pool_used(c), PAGE);
    pool_close(&c);
    pool_close(&p);
}

static void test_exhaustion(void **state)
{
    char in[64];
    inst(in, sizeof(in), "exh");
    pool_t *p = create_host(in, 0, 1, 8 * PAGE);
    uint64_t blk[4], o = 12345;
    for (int i = 0; i < 4; i++)
        assert_int_equal(pool_alloc(p, 2 * PAGE, 1, &blk[i]), 0);
    assert_int_equal(pool_used(p), 8 * PAGE);

    errno = 0;
    assert_int_equal(pool_alloc(p, 1, 1, &o), -1);
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(o, 12345); /* untouched */
    errno = 0;
    assert_int_equal(pool_alloc(p, UINT64_MAX, 1, &o), -1); /* no overflow in rounding */
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(pool_used(p), 8 * PAGE);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pool_holder(p, blk[i]), 1);

    /* Two free blocks that are not adjacent: 4 pages free, but no run of 3. */
    assert_int_equal(pool_release(p, blk[0], 1), 0);
    assert_int_equal(pool_release(p, blk[2], 1), 0);
    errno = 0;
    assert_int_equal(pool_alloc(p, 3 * PAGE, 1, &o), -1);
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(pool_used(p), 4 * PAGE);
    /* Released neighbours merge into one run. */
    assert_int_equal(pool_release(p, blk[1], 1), 0);
    assert_int_equal(pool_alloc(p, 6 * PAGE, 2, &o), 0);
    assert_int_equal(o, blk[0]);
    assert_int_equal(pool_used(p), 8 * PAGE);
    assert_int_equal(pool_release(p, o, 2), 0);
    assert_int_equal(pool_release(p, blk[3], 1), 0);
    assert_int_equal(pool_used(p), 0);
    assert_int_equal(pool_alloc(p, 8 * PAGE, 3, &o), 0); /* the whole pool again */
    assert_int_equal(o, 0);
    pool_close(&p);
}

static void test_alloc_args(void **state)
{
    char in[64];
    inst(in, sizeof(in), "args");
    pool_t *p = create_host(in, 0, 1, 4 * PAGE);
    uint64_t o;
    errno = 0;
    assert_int_equal(pool_alloc(p, PAGE, 0, &o), -1); /* holder 0 is nobody */
    assert_int_equal(errno, EINVAL);
    assert_int_equal(pool_alloc(p, 0, 1, &o), -1);
    assert_int_equal(pool_used(p), 0);
    pool_t *c = open_consumer(in, 0, 1);
    errno = 0;
    assert_int_equal(pool_alloc(c, PAGE, 1, &o), -1); /* only the owner allocates */
    assert_int_equal(errno, EPERM);
    assert_int_equal(pool_used(p), 0);
    pool_close(&c);
    pool_close(&p);
}

static void test_hand_over_release(void **state)
{
    char in[64];
    inst(in, sizeof(in), "cas");
    pool_t *p = create_host(in, 0, 1, 4 * PAGE);
    uint64_t o;
    assert_int_equal(pool_alloc(p, PAGE, 1, &o), 0);
    assert_int_equal(pool_hand_over(p, o, 2, 3), -1); /* not the holder */
    assert_int_equal(pool_hand_over(p, o, 1, 0), -1); /* to nobody */
    assert_int_equal(pool_hand_over(p, o, 0, 1), -1);
    assert_int_equal(pool_holder(p, o), 1);
    assert_int_equal(pool_hand_over(p, o, 1, 2), 0);
    assert_int_equal(pool_holder(p, o), 2);
    assert_int_equal(pool_hand_over(p, o, 1, 3), -1); /* 1 gave it away */
    assert_int_equal(pool_release(p, o, 1), -1);
    assert_null(pool_data(p, o, 1, 1));
    assert_non_null(pool_data(p, o, 1, 2));
    assert_int_equal(pool_release(p, o, 0), -1);
    assert_int_equal(pool_release(p, o, 2), 0);
    assert_int_equal(pool_release(p, o, 2), -1); /* double release */
    assert_int_equal(pool_hand_over(p, o, 2, 3), -1);
    assert_int_equal(pool_holder(p, o), 0);
    assert_null(pool_data(p, o, 1, 2));
    assert_int_equal(pool_used(p), 0);
    /* Never allocated. */
    assert_int_equal(pool_release(p, 2 * PAGE, 1), -1);
    assert_int_equal(pool_hand_over(p, 2 * PAGE, 0, 1), -1);
    assert_int_equal(pool_used(p), 0);
    pool_close(&p);
}

static bool dead_5(uint32_t holder, void *ctx)
{
    (*(int *)ctx)++;
    return holder == 5;
}

static bool dead_none(uint32_t holder, void *ctx)
{
    return false;
}

static void test_reclaim(void **state)
{
    char in[64];
    inst(in, sizeof(in), "recl");
    pool_t *p = create_host(in, 0, 1, 8 * PAGE);
    uint64_t o[4];
    const uint32_t holders[4] = {5, 6, 7, 5};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pool_alloc(p, (uint64_t)(i + 1) * 1000, holders[i], &o[i]), 0);
    assert_int_equal(pool_release(p, o[2], 7), 0);
    assert_int_equal(pool_reclaim(p, dead_none, NULL), 0);
    assert_int_equal(pool_used(p), 3 * PAGE);

    pool_t *c = open_consumer(in, 0, 1);
    int calls = 0;
    assert_int_equal(pool_reclaim(c, dead_5, &calls), 0); /* not the owner's job */
    assert_int_equal(calls, 0);
    pool_close(&c);

    calls = 0;
    assert_int_equal(pool_reclaim(p, dead_5, &calls), 2);
    assert_int_equal(calls, 3); /* asked about the used blocks only */
    assert_int_equal(pool_holder(p, o[0]), 0);
    assert_int_equal(pool_holder(p, o[3]), 0);
    assert_int_equal(pool_holder(p, o[1]), 6);
    assert_int_equal(pool_release(p, o[0], 5), -1); /* too late for the dead one */
    assert_int_equal(pool_used(p), PAGE);
    calls = 0;
    assert_int_equal(pool_reclaim(p, dead_5, &calls), 0);
    pool_close(&p);
}

static bool dead_gen(uint32_t holder, void *ctx)
{
    return holder == *(uint32_t *)ctx;
}

static void test_reclaim_killed_process(void **state)
{
    char in[64];
    inst(in, sizeof(in), "kill");
    const uint32_t owner_gen = 3, child_gen = 40;
    pool_t *p = create_host(in, 1, owner_gen, 4 * PAGE);
    uint64_t o;
    assert_int_equal(pool_alloc(p, 4 * PAGE, owner_gen, &o), 0);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* A consumer that takes the block and dies without releasing it. No cmocka here. */
        close(fds[0]);
        alarm(30);
        char err[256];
        pool_t *c = pool_open(in, 1, owner_gen, err, sizeof(err));
        if (!c || pool_hand_over(c, o, owner_gen, child_gen) != 0)
            _exit(1);
        unsigned char *d = pool_data(c, o, 4 * PAGE, child_gen);
        if (!d)
            _exit(2);
        memset(d, 0xab, 4 * PAGE);
        if (write(fds[1], "k", 1) != 1)
            _exit(3);
        for (;;)
            pause();
    }
    close(fds[1]);
    char ch = 0;
    assert_int_equal(read(fds[0], &ch, 1), 1);
    close(fds[0]);
    assert_int_equal(ch, 'k');
    assert_int_equal(pool_holder(p, o), child_gen);
    assert_int_equal(((unsigned char *)pool_data(p, o, 1, child_gen))[4 * PAGE - 1], 0xab);

    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_int_equal(pool_holder(p, o), child_gen); /* death alone frees nothing */
    assert_int_equal(pool_used(p), 4 * PAGE);

    uint32_t dead = child_gen;
    assert_int_equal(pool_reclaim(p, dead_gen, &dead), 1);
    assert_int_equal(pool_holder(p, o), 0);
    assert_int_equal(pool_used(p), 0);
    uint64_t again;
    assert_int_equal(pool_alloc(p, 4 * PAGE, owner_gen, &again), 0);
    assert_int_equal(again, o);
    pool_close(&p);
}

static void test_data_rejects(void **state)
{
    char in[64];
    inst(in, sizeof(in), "rej");
    pool_t *p = create_host(in, 0, 1, 8 * PAGE);
    uint64_t a, b;
    assert_int_equal(pool_alloc(p, PAGE, 9, &a), 0);
    assert_int_equal(pool_alloc(p, 2 * PAGE, 9, &b), 0);
    pool_t *c = open_consumer(in, 0, 1);
    const uint64_t cap = pool_capacity(p);
    pool_t *views[2] = {p, c};
    for (int v = 0; v < 2; v++) {
        pool_t *q = views[v];
        assert_non_null(pool_data(q, b, 2 * PAGE, 9)); /* the control */
        assert_non_null(pool_data(q, b, 0, 9));
        assert_null(pool_data(q, b + 1, 1, 9));           /* unaligned */
        assert_null(pool_data(q, b + PAGE, 1, 9));        /* inside, not a start */
        assert_null(pool_data(q, cap, 1, 9));             /* at capacity */
        assert_null(pool_data(q, cap + PAGE, 1, 9));      /* beyond */
        assert_null(pool_data(q, UINT64_MAX, 1, 9));
        assert_null(pool_data(q, UINT64_MAX & ~(PAGE - 1), 1, 9));
        assert_null(pool_data(q, b, 1, 8));               /* wrong holder */
        assert_null(pool_data(q, b, 1, 0));
        assert_null(pool_data(q, b, 2 * PAGE + 1, 9));    /* larger than the block */
        assert_null(pool_data(q, b, UINT64_MAX, 9));
        assert_null(pool_data(q, 6 * PAGE, 1, 9));        /* free page */
        assert_null(pool_data(q, a, PAGE + 1, 9));
        assert_int_equal(pool_holder(q, b + PAGE), 0);
        assert_int_equal(pool_holder(q, UINT64_MAX), 0);
        assert_int_equal(pool_hand_over(q, b + PAGE, 9, 10), -1);
        assert_int_equal(pool_hand_over(q, UINT64_MAX, 9, 10), -1);
        assert_int_equal(pool_release(q, b + 1, 9), -1);
        assert_int_equal(pool_release(q, cap, 9), -1);
        assert_int_equal(pool_release(q, b + PAGE, 9), -1);
    }
    assert_int_equal(pool_holder(p, b), 9);
    assert_int_equal(pool_used(p), 3 * PAGE);
    pool_close(&c);
    pool_close(&p);
}

/* A consumer that scribbles on the shared run lengths cannot make pool_data reach past the
 * pool, nor make the owner hand out overlapping blocks. */
static void test_corrupt_table(void **state)
{
    char in[64];
    inst(in, sizeof(in), "ctab");
    pool_t *p = create_host(in, 0, 1, 8 * PAGE);
    uint64_t a;
    assert_int_equal(pool_alloc(p, 2 * PAGE, 9, &a), 0);
    assert_int_equal(a, 0);
    pool_t *c = open_consumer(in, 0, 1);
    size_t len;
    unsigned char *raw = map_raw(pool_name(p), &len);
    pool_entry_t *table = (pool_entry_t *)(raw + POOL_TABLE_OFFSET);
    assert_int_equal(atomic_load(&table[0].run), 2);
    atomic_store(&table[0].run, UINT64_MAX);
    assert_null(pool_data(c, 0, pool_capacity(c) + 1, 9)); /* clamped to the table */
    assert_non_null(pool_data(c, 0, pool_capacity(c), 9));
    assert_null(pool_data(p, 0, 2 * PAGE + 1, 9)); /* the owner keeps its own runs */
    (void)pool_used(c);
    uint64_t o;
    assert_int_equal(pool_alloc(p, 6 * PAGE, 9, &o), 0);
    assert_int_equal(o, 2 * PAGE);
    munmap(raw, len);
    pool_close(&c);
    pool_close(&p);
}

static void test_unlink_all(void **state)
{
    char a[64], ab[64], adot[64];
    inst(a, sizeof(a), "ua");
    inst(ab, sizeof(ab), "uab");    /* shares a's prefix */
    inst(adot, sizeof(adot), "ua.1"); /* names look like a's with one more field */
    pool_t *pa[3] = {create_host(a, 0, 1, PAGE), create_host(a, 1, 1, PAGE),
                     create_host(a, 1, 2, PAGE)};
    pool_t *pb = create_host(ab, 0, 1, PAGE);
    pool_t *pd = create_host(adot, 2, 3, PAGE);
    char junk[POOL_NAME_MAX];
    snprintf(junk, sizeof(junk), "/diffusiond.%s.junk", a);
    int fd = shm_open(junk, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    /* The ingress's cancel table (pipeline/cancel.c's name), left by a process that died. */
    char cancel[POOL_NAME_MAX], cancel_junk[POOL_NAME_MAX];
    snprintf(cancel, sizeof(cancel), "/diffusiond.%s.cancel.0", a);
    snprintf(cancel_junk, sizeof(cancel_junk), "/diffusiond.%s.cancel.0x", a);
    for (int i = 0; i < 2; i++) {
        fd = shm_open(i ? cancel_junk : cancel, O_CREAT | O_EXCL | O_RDWR, 0600);
        assert_true(fd >= 0);
        close(fd);
    }

    assert_int_equal(pool_unlink_all(a), 4);
    fd = shm_open(cancel, O_RDONLY, 0);
    assert_true(fd < 0);
    fd = shm_open(cancel_junk, O_RDONLY, 0);
    assert_true(fd >= 0); /* not a name of ours */
    close(fd);
    assert_int_equal(shm_unlink(cancel_junk), 0);
    assert_false(segment_exists(a, 0, 1));
    assert_false(segment_exists(a, 1, 1));
    assert_false(segment_exists(a, 1, 2));
    assert_true(segment_exists(ab, 0, 1));
    assert_true(segment_exists(adot, 2, 3));
    fd = shm_open(junk, O_RDONLY, 0);
    assert_true(fd >= 0); /* not a pool name */
    close(fd);
    assert_int_equal(pool_unlink_all(a), 0);
    /* Mapped segments stay usable after the name is gone. */
    uint64_t o;
    assert_int_equal(pool_alloc(pa[0], 1, 1, &o), 0);
    assert_non_null(pool_data(pa[0], o, 1, 1));

    assert_int_equal(pool_unlink(ab, 0, 1), 0);
    assert_false(segment_exists(ab, 0, 1));
    assert_int_equal(pool_unlink(ab, 0, 1), 0); /* already gone is fine */
    assert_int_equal(pool_unlink("x/y", 0, 1), -1);
    assert_int_equal(pool_unlink_all(""), -1);

    for (int i = 0; i < 3; i++)
        pool_close(&pa[i]);
    pool_close(&pb);
    pool_close(&pd);
    assert_int_equal(shm_unlink(junk), 0);
    assert_false(segment_exists(adot, 2, 3));
}

static void test_cache(void **state)
{
    char in[64], err[256];
    inst(in, sizeof(in), "cache");
    pool_t *o11 = create_host(in, 1, 1, PAGE);
    pool_t *o12 = create_host(in, 1, 2, PAGE);
    pool_t *o21 = create_host(in, 2, 1, PAGE);
    pool_cache_t *cache = pool_cache_new(in);
    assert_non_null(cache);

    pool_t *c11 = pool_cache_get(cache, 1, 1, err, sizeof(err));
    assert_non_null(c11);
    assert_ptr_equal(pool_cache_get(cache, 1, 1, err, sizeof(err)), c11); /* opened once */
    pool_t *c12 = pool_cache_get(cache, 1, 2, err, sizeof(err));
    pool_t *c21 = pool_cache_get(cache, 2, 1, err, sizeof(err));
    assert_non_null(c12);
    assert_non_null(c21);
    assert_ptr_not_equal(c12, c11);
    assert_int_equal(pool_gen(c12), 2);
    err[0] = '\0';
    assert_null(pool_cache_get(cache, 3, 1, err, sizeof(err)));
    assert_true(err[0] != '\0');

    /* Slot 1 restarted as gen 2: gen 1 is closed. With its owner gone too, a get must now
     * fail, which shows the cache no longer holds it. */
    pool_cache_forget_stale(cache, 1, 2);
    pool_close(&o11);
    assert_null(pool_cache_get(cache, 1, 1, err, sizeof(err)));
    assert_ptr_equal(pool_cache_get(cache, 1, 2, err, sizeof(err)), c12);
    assert_ptr_equal(pool_cache_get(cache, 2, 1, err, sizeof(err)), c21);

    /* Many pools: the cache grows. */
    pool_t *many[20];
    for (uint32_t g = 0; g < 20; g++) {
        many[g] = create_host(in, 7, 10 + g, PAGE);
        assert_non_null(pool_cache_get(cache, 7, 10 + g, err, sizeof(err)));
    }
    pool_cache_forget_stale(cache, 7, 29);
    for (uint32_t g = 0; g < 20; g++)
        pool_close(&many[g]);
    pool_cache_free(&cache);
    assert_null(cache);
    pool_close(&o12);
    pool_close(&o21);
}

/* ---- concurrency ---- */

enum { RACE_BLOCKS = 256, RACE_PROCS = 6 };

/* Dead is gen 50; the answer takes a while (as a lookup in a real table might), which leaves
 * the peers time to change the word between reclaim's read and its CAS. */
static bool dead_50_slowly(uint32_t holder, void *ctx)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 20000);
    return holder == 50;
}

/* Every block held by gen 50 is fought over by processes that hand it to themselves or
 * release it, while the owner reclaims gen 50 as dead: exactly one wins each block. */
static void test_race_one_winner(void **state)
{
    char in[64];
    inst(in, sizeof(in), "race");
    const uint32_t contested = 50;
    pool_t *p = create_host(in, 0, 1, RACE_BLOCKS * PAGE);
    uint64_t off[RACE_BLOCKS];
    for (int i = 0; i < RACE_BLOCKS; i++)
        assert_int_equal(pool_alloc(p, 1, contested, &off[i]), 0);

    struct shared {
        atomic_int go;
        atomic_int ready;
        atomic_int done;
        atomic_int wins[RACE_BLOCKS];
        atomic_int handed[RACE_BLOCKS];
    } *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof(*sh));

    pid_t pids[RACE_PROCS];
    for (int k = 0; k < RACE_PROCS; k++) {
        pids[k] = fork();
        assert_true(pids[k] >= 0);
        if (pids[k] == 0) {
            alarm(30);
            char err[256];
            pool_t *c = pool_open(in, 0, 1, err, sizeof(err));
            if (!c)
                _exit(1);
            atomic_fetch_add(&sh->ready, 1);
            while (!atomic_load(&sh->go))
                ;
            for (int j = 0; j < RACE_BLOCKS; j++) {
                int i = k % 2 ? RACE_BLOCKS - 1 - j : j;
                int r = k % 3 == 0 ? pool_release(c, off[i], contested)
                                   : pool_hand_over(c, off[i], contested, 100 + k);
                if (r == 0) {
                    atomic_fetch_add(&sh->wins[i], 1);
                    if (k % 3 != 0)
                        atomic_store(&sh->handed[i], 100 + k);
                }
            }
            pool_close(&c);
            atomic_fetch_add(&sh->done, 1);
            _exit(0);
        }
    }
    while (atomic_load(&sh->ready) < RACE_PROCS)
        sched_yield();
    atomic_store(&sh->go, 1);
    size_t reclaimed = pool_reclaim(p, dead_50_slowly, NULL);
    while (atomic_load(&sh->done) < RACE_PROCS)
        reclaimed += pool_reclaim(p, dead_50_slowly, NULL);
    /* Every peer tried every block, so gen 50 holds nothing any more. */
    assert_int_equal(pool_reclaim(p, dead_50_slowly, NULL), 0);
    for (int k = 0; k < RACE_PROCS; k++) {
        int st;
        assert_int_equal(waitpid(pids[k], &st, 0), pids[k]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    size_t child_wins = 0, handed = 0;
    for (int i = 0; i < RACE_BLOCKS; i++) {
        int w = atomic_load(&sh->wins[i]);
        assert_true(w <= 1);
        child_wins += (size_t)w;
        uint32_t h = pool_holder(p, off[i]);
        if (atomic_load(&sh->handed[i])) {
            assert_int_equal(h, atomic_load(&sh->handed[i]));
            handed++;
        } else {
            assert_int_equal(h, 0); /* released or reclaimed */
        }
    }
    assert_int_equal(child_wins + reclaimed, RACE_BLOCKS);
    assert_int_equal(pool_used(p), handed * PAGE);
    munmap(sh, sizeof(*sh));
    pool_close(&p);
}

typedef struct {
    uint64_t offset;
    uint64_t bytes;
    uint64_t seq;
} stress_msg_t;

enum { STRESS_CHAINS = 2, STRESS_JOBS = 3000, STRESS_PAGES = 16 };

static void close_all_but(int (*fds)[2], int n, int keep_r, int keep_w)
{
    for (int i = 0; i < n; i++)
        for (int e = 0; e < 2; e++)
            if (fds[i][e] != keep_r && fds[i][e] != keep_w)
                close(fds[i][e]);
}

/* The pipeline shape: owner -> first stage (hands over, or sometimes drops the job and
 * releases) -> second stage (checks, releases), two chains at once, the owner allocating
 * from a pool that is nearly always full. No cmocka in the children: exit codes. */
static int stress_child(const char *in, uint32_t owner_gen, uint32_t me, uint32_t next, int rfd,
                        int wfd)
{
    alarm(60);
    char err[256];
    pool_t *c = pool_open(in, 5, owner_gen, err, sizeof(err));
    if (!c)
        return 10;
    stress_msg_t m;
    ssize_t n;
    while ((n = read(rfd, &m, sizeof(m))) == (ssize_t)sizeof(m)) {
        unsigned char *d = pool_data(c, m.offset, m.bytes, me);
        if (!d)
            return 11;
        uint64_t seq;
        memcpy(&seq, d, sizeof(seq));
        if (seq != m.seq)
            return 12;
        if (next) {
            if (m.seq % 5 == 0) {
                if (pool_release(c, m.offset, me) != 0)
                    return 13;
                continue;
            }
            d[m.bytes - 1] = (unsigned char)~m.seq;
            if (pool_hand_over(c, m.offset, me, next) != 0)
                return 14;
            if (pool_hand_over(c, m.offset, me, next) == 0) /* once only */
                return 15;
            if (write(wfd, &m, sizeof(m)) != (ssize_t)sizeof(m))
                return 16;
        } else {
            if (d[m.bytes - 1] != (unsigned char)~m.seq)
                return 17;
            if (pool_release(c, m.offset, me) != 0)
                return 18;
            if (pool_release(c, m.offset, me) == 0)
                return 19;
        }
    }
    if (n != 0)
        return 20;
    pool_close(&c);
    return 0;
}

static void test_stress(void **state)
{
    char in[64];
    inst(in, sizeof(in), "stress");
    const uint32_t og = 1;
    pool_t *p = create_host(in, 5, og, STRESS_PAGES * PAGE);
    int fds[2 * STRESS_CHAINS][2]; /* [2c]: owner -> first of chain c; [2c+1]: first -> second */
    for (int i = 0; i < 2 * STRESS_CHAINS; i++)
        assert_int_equal(pipe(fds[i]), 0);
    pid_t pids[2 * STRESS_CHAINS];
    for (int i = 0; i < 2 * STRESS_CHAINS; i++) {
        int chain = i / 2, second = i % 2;
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            uint32_t me = 10 * (uint32_t)(chain + 1) + (uint32_t)second;
            int rfd = fds[2 * chain + second][0];
            int wfd = second ? -1 : fds[2 * chain + 1][1];
            close_all_but(fds, 2 * STRESS_CHAINS, rfd, wfd);
            _exit(stress_child(in, og, me, second ? 0 : me + 1, rfd, wfd));
        }
    }
    for (int i = 0; i < 2 * STRESS_CHAINS; i++) {
        close(fds[i][0]);
        if (i % 2)
            close(fds[i][1]);
    }

    unsigned seed = 12345;
    size_t waits = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t seq = 0; seq < STRESS_JOBS; seq++) {
        seed = seed * 1103515245u + 12345u;
        /* at least the seq word and a separate last byte */
        uint64_t bytes = 2 * sizeof(uint64_t) + (seed >> 8) % (3 * PAGE);
        uint64_t o;
        while (pool_alloc(p, bytes, og, &o) != 0) {
            assert_int_equal(errno, ENOMEM);
            assert_int_equal(pool_reclaim(p, dead_none, NULL), 0);
            waits++;
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            if (t.tv_sec - t0.tv_sec > 60)
                fail_msg("no free block for 60 s at job %llu", (unsigned long long)seq);
            sched_yield();
        }
        unsigned char *d = pool_data(p, o, bytes, og);
        assert_non_null(d);
        memcpy(d, &seq, sizeof(seq));
        int chain = (int)(seq % STRESS_CHAINS);
        uint32_t first = 10 * (uint32_t)(chain + 1);
        assert_int_equal(pool_hand_over(p, o, og, first), 0);
        stress_msg_t m = {.offset = o, .bytes = bytes, .seq = seq};
        assert_int_equal(write(fds[2 * chain][1], &m, sizeof(m)), (ssize_t)sizeof(m));
    }
    for (int c = 0; c < STRESS_CHAINS; c++)
        close(fds[2 * c][1]);
    for (int i = 0; i < 2 * STRESS_CHAINS; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail_msg("stage process %d failed: status %#x", i, st);
    }
    assert_true(waits > 0); /* the pool really was full at times */
    assert_int_equal(pool_used(p), 0);
    uint64_t o;
    assert_int_equal(pool_alloc(p, STRESS_PAGES * PAGE, og, &o), 0); /* all free, one run */
    assert_int_equal(pool_release(p, o, og), 0);
    pool_close(&p);
}

/* ---- CUDA ---- */

static void test_cuda_device_pool(void **state)
{
    char in[64], err[256] = "";
    inst(in, sizeof(in), "cuda");
#ifndef DIFFUSIOND_HAVE_CUDA
    assert_null(pool_create(in, 3, 1, 4 * PAGE, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "without CUDA"));
    assert_false(segment_exists(in, 3, 1));
#else
    /* CUDA must not be used across fork(), so the consumer is forked before the owner
     * touches CUDA, and told by pipe whether there is a GPU to test on. */
    const uint32_t og = 1, cg = 77;
    const uint64_t bytes = 3 * PAGE + 5;
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        alarm(60);
        uint64_t off;
        if (read(go[0], &off, sizeof(off)) != (ssize_t)sizeof(off))
            _exit(0); /* no GPU: nothing to do */
        char cerr[256];
        pool_t *c = pool_open(in, 3, og, cerr, sizeof(cerr));
        if (!c) {
            fprintf(stderr, "consumer: %s\n", cerr);
            _exit(2);
        }
        unsigned char *d = pool_data(c, off, bytes, cg);
        if (!d)
            _exit(3);
        static unsigned char buf[3 * PAGE + 5];
        if (cudaMemcpy(buf, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
            _exit(4);
        for (uint64_t i = 0; i < bytes; i++)
            if (buf[i] != (unsigned char)(i * 7))
                _exit(5);
        for (uint64_t i = 0; i < bytes; i++)
            buf[i] = (unsigned char)(i * 13 + 1);
        if (cudaMemcpy(d, buf, bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
            cudaDeviceSynchronize() != cudaSuccess)
            _exit(6);
        if (pool_release(c, off, cg) != 0)
            _exit(7);
        pool_close(&c);
        _exit(0);
    }
    close(go[0]);
    pool_t *p = pool_create(in, 3, og, 4 * PAGE, 0, err, sizeof(err));
    if (!p) {
        close(go[1]);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_non_null(strstr(err, "CUDA"));
        assert_false(segment_exists(in, 3, 1));
        fprintf(stderr, "test_cuda_device_pool: no GPU here (%s)\n", err);
        skip();
    }
    assert_int_equal(pool_device(p), 0);
    assert_int_equal(pool_data_start(p), 0);
    uint64_t off;
    assert_int_equal(pool_alloc(p, bytes, og, &off), 0);
    unsigned char *d = pool_data(p, off, bytes, og);
    assert_non_null(d);
    static unsigned char buf[3 * PAGE + 5];
    for (uint64_t i = 0; i < bytes; i++)
        buf[i] = (unsigned char)(i * 7);
    assert_int_equal(cudaMemcpy(d, buf, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(pool_hand_over(p, off, og, cg), 0);
    assert_int_equal(write(go[1], &off, sizeof(off)), (ssize_t)sizeof(off));
    close(go[1]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("consumer failed: status %#x", st);
    /* What the consumer wrote through its handle is in our allocation: shared, not copied. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(cudaMemcpy(buf, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    for (uint64_t i = 0; i < bytes; i++)
        assert_int_equal(buf[i], (unsigned char)(i * 13 + 1));
    assert_int_equal(pool_holder(p, off), 0);
    assert_int_equal(pool_used(p), 0);
    pool_close(&p);
    assert_false(segment_exists(in, 3, 1));
#endif
}

/* ---- hygiene ---- */

static int count_leftovers(bool remove)
{
    char prefix[64];
    int n = snprintf(prefix, sizeof(prefix), "diffusiond.%s", g_prefix);
    DIR *dir = opendir("/dev/shm");
    if (!dir)
        return -1;
    int found = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, prefix, (size_t)n) != 0)
            continue;
        found++;
        if (remove) {
            char name[300];
            snprintf(name, sizeof(name), "/%s", de->d_name);
            shm_unlink(name);
        }
    }
    closedir(dir);
    return found;
}

static void test_no_leftovers(void **state)
{
    assert_int_equal(count_leftovers(false), 0);
}

static int group_setup(void **state)
{
    snprintf(g_prefix, sizeof(g_prefix), "ut%ld-", (long)getpid());
    return 0;
}

/* A failed test may leave segments behind; they must not outlive the binary. */
static int group_teardown(void **state)
{
    count_leftovers(true);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_open_close),
        cmocka_unit_test(test_segment_mode_0600),
        cmocka_unit_test(test_header_validation),
        cmocka_unit_test(test_header_byte_flips),
        cmocka_unit_test(test_device_header_needs_cuda),
        cmocka_unit_test(test_alloc_no_overlap),
        cmocka_unit_test(test_shared_not_copied),
        cmocka_unit_test(test_exhaustion),
        cmocka_unit_test(test_alloc_args),
        cmocka_unit_test(test_hand_over_release),
        cmocka_unit_test(test_reclaim),
        cmocka_unit_test(test_reclaim_killed_process),
        cmocka_unit_test(test_data_rejects),
        cmocka_unit_test(test_corrupt_table),
        cmocka_unit_test(test_unlink_all),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_race_one_winner),
        cmocka_unit_test(test_stress),
        cmocka_unit_test(test_cuda_device_pool),
        cmocka_unit_test(test_no_leftovers),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
