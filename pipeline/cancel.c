/* cancel: the shared-memory table of cancelled job ids (see cancel.h). */
#include "pipeline/cancel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ipc/proto.h"

#define GEN_CANCEL_MAGIC UINT64_C(0x4c45434e41434644) /* "DFCANCEL" */

/* The segment. magic is stored last by the creator, so a reader that sees it sees gen too. */
typedef struct {
    _Atomic uint64_t magic;
    _Atomic uint32_t gen;      /* the origin process that writes this table */
    uint32_t ring_size;        /* GEN_CANCEL_RING */
    _Atomic uint64_t head;     /* marks written so far; the next goes to head % ring_size */
    _Atomic uint64_t ring[GEN_CANCEL_RING]; /* job ids; 0: empty */
} gen_cancel_shm_t;

struct gen_cancel_table {
    gen_cancel_shm_t *shm;
    char name[96];
};

int gen_cancel_name(const char *instance, uint32_t slot, char *buf, size_t len)
{
    int n = snprintf(buf, len, "/diffusiond.%s.cancel.%u", instance, slot);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

gen_cancel_table_t *gen_cancel_table_create(const char *instance, uint32_t slot, uint32_t gen,
                                            char *err, size_t errlen)
{
    gen_cancel_table_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (gen_cancel_name(instance, slot, t->name, sizeof t->name) != 0) {
        snprintf(err, errlen, "instance name too long");
        free(t);
        return NULL;
    }
    /* A predecessor's segment is unlinked, not reused: readers that still map it keep seeing
     * its generation, which tells them its jobs' origin is gone. */
    shm_unlink(t->name);
    int fd = shm_open(t->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, sizeof(gen_cancel_shm_t)) != 0) {
        snprintf(err, errlen, "%s: %s", t->name, strerror(errno));
        if (fd >= 0) {
            close(fd);
            shm_unlink(t->name);
        }
        free(t);
        return NULL;
    }
    void *m = mmap(NULL, sizeof(gen_cancel_shm_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "mmap %s: %s", t->name, strerror(errno));
        shm_unlink(t->name);
        free(t);
        return NULL;
    }
    t->shm = m; /* ftruncate zeroed it: an empty ring */
    t->shm->ring_size = GEN_CANCEL_RING;
    atomic_store(&t->shm->gen, gen);
    atomic_store_explicit(&t->shm->magic, GEN_CANCEL_MAGIC, memory_order_release);
    return t;
}

void gen_cancel_mark(gen_cancel_table_t *t, uint64_t id)
{
    if (!t || id == 0)
        return;
    /* One writer per table: the head is the origin's own counter. */
    uint64_t h = atomic_load_explicit(&t->shm->head, memory_order_relaxed);
    atomic_store_explicit(&t->shm->ring[h % GEN_CANCEL_RING], id, memory_order_release);
    atomic_store_explicit(&t->shm->head, h + 1, memory_order_release);
}

void gen_cancel_table_destroy(gen_cancel_table_t **tp)
{
    gen_cancel_table_t *t = *tp;
    if (!t)
        return;
    munmap(t->shm, sizeof(gen_cancel_shm_t));
    shm_unlink(t->name);
    free(t);
    *tp = NULL;
}

/* ---- readers ---- */

typedef struct {
    const gen_cancel_shm_t *shm; /* NULL: not open */
    uint32_t gen;                /* the generation it carried when opened */
    int64_t opened_ms;           /* when: a view older than GEN_CANCEL_REOPEN_MS is opened
                                    again, since its origin may have been replaced since and
                                    made a new segment under the same name */
} gen_cancel_view_t;

#define GEN_CANCEL_REOPEN_MS 100

static int64_t cancel_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct gen_cancel {
    char instance[64];
    gen_cancel_view_t views[PROTO_MAX_SLOTS];
};

gen_cancel_t *gen_cancel_new(const char *instance)
{
    gen_cancel_t *c = calloc(1, sizeof *c);
    if (c)
        snprintf(c->instance, sizeof c->instance, "%s", instance);
    return c;
}

static void gen_cancel_close(gen_cancel_view_t *v)
{
    if (v->shm)
        munmap((void *)v->shm, sizeof(gen_cancel_shm_t));
    v->shm = NULL;
    v->gen = 0;
}

void gen_cancel_free(gen_cancel_t **cp)
{
    gen_cancel_t *c = *cp;
    if (!c)
        return;
    for (int i = 0; i < PROTO_MAX_SLOTS; i++)
        gen_cancel_close(&c->views[i]);
    free(c);
    *cp = NULL;
}

/* Maps the slot's current segment; 0, or -1 when there is none (yet) or it is not one. */
static int gen_cancel_open(gen_cancel_t *c, uint32_t slot)
{
    gen_cancel_view_t *v = &c->views[slot];
    char name[96];
    gen_cancel_close(v);
    if (gen_cancel_name(c->instance, slot, name, sizeof name) != 0)
        return -1;
    int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct stat sb;
    void *m = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && (size_t)sb.st_size == sizeof(gen_cancel_shm_t))
        m = mmap(NULL, sizeof(gen_cancel_shm_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -1;
    const gen_cancel_shm_t *shm = m;
    if (atomic_load_explicit(&((gen_cancel_shm_t *)shm)->magic, memory_order_acquire) !=
            GEN_CANCEL_MAGIC ||
        shm->ring_size != GEN_CANCEL_RING) {
        munmap(m, sizeof(gen_cancel_shm_t)); /* being made, or not ours: try again later */
        return -1;
    }
    v->shm = shm;
    v->gen = atomic_load(&((gen_cancel_shm_t *)shm)->gen);
    v->opened_ms = cancel_now_ms();
    return 0;
}

bool gen_cancel_check(gen_cancel_t *c, uint32_t origin_slot, uint32_t origin_gen, uint64_t id)
{
    if (!c || origin_slot >= PROTO_MAX_SLOTS || id == 0)
        return false;
    gen_cancel_view_t *v = &c->views[origin_slot];
    /* A view of another generation is stale (or the job's origin is newer than our view); one
     * of the job's generation may be too, once the origin died and a successor replaced the
     * segment: look again now and then. */
    if (!v->shm || v->gen != origin_gen || cancel_now_ms() - v->opened_ms >= GEN_CANCEL_REOPEN_MS) {
        if (gen_cancel_open(c, origin_slot) != 0)
            return false;
    }
    if (v->gen > origin_gen)
        return true;  /* the origin was replaced: its successor cannot take the result */
    if (v->gen != origin_gen)
        return false; /* the origin's table is not there yet */
    /* The mapping is PROT_READ; atomics need a non-const pointer but only load through it. */
    gen_cancel_shm_t *shm = (gen_cancel_shm_t *)v->shm;
    for (uint32_t i = 0; i < GEN_CANCEL_RING; i++)
        if (atomic_load_explicit(&shm->ring[i], memory_order_acquire) == id)
            return true;
    return false;
}
