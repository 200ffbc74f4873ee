/* pool: tensor pools in shared memory, the data plane between stages.
 *
 * Each producing stage owns one pool. Its header is a POSIX shared-memory segment (mode 0600)
 * named by pool_segment_name(instance, slot, gen) that holds the allocation table; the data is
 * either in the same segment after the header (device -1) or in one CUDA device allocation
 * whose IPC handle the header carries (device >= 0), exported once by the owner and opened
 * once by each consumer. Tensors cross stages as (pool, gen, offset, bytes, ...) references
 * and are never copied.
 *
 * Lifetime: every block has a holder, the generation of the process responsible for it (0 is
 * never a generation). Only the owner allocates (pool_alloc) and frees. Handing a job to the
 * next stage moves the holder with a compare-and-swap (pool_hand_over); the last holder
 * releases the block (pool_release); the owner turns released blocks back into free space when
 * it allocates. When a process dies, the owner marks every block that generation held as
 * released (pool_reclaim). All cross-process state is one 64-bit atomic word per block, so a
 * release, a hand-over and a reclaim of the same block can race and exactly one wins.
 *
 * Everything a consumer reads from the header or a reference is bounds-checked: a corrupt or
 * hostile reference yields an error, never an access outside the segment. */
#ifndef DIFFUSIOND_POOL_H
#define DIFFUSIOND_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pool pool_t;

#define POOL_DEVICE_HOST (-1)
#define POOL_NAME_MAX 96
#define POOL_DEFAULT_PAGE (64u * 1024u) /* allocation granularity and alignment */

/* "/diffusiond.<instance>.<slot>.<gen>": the shm_open name of a pool's segment. */
void pool_segment_name(char *buf, size_t len, const char *instance, uint32_t slot, uint32_t gen);

/* Owner: creates the segment (failing if it exists) with room for capacity bytes of tensors,
 * rounded up to whole pages. device: POOL_DEVICE_HOST or a CUDA ordinal (an error in a build
 * without CUDA). Returns NULL with the reason in err. */
pool_t *pool_create(const char *instance, uint32_t slot, uint32_t gen, uint64_t capacity,
                    int device, char *err, size_t errlen);

/* Consumer: maps an existing pool (and opens its CUDA allocation). NULL with err on failure,
 * including a header that does not validate. */
pool_t *pool_open(const char *instance, uint32_t slot, uint32_t gen, char *err, size_t errlen);

/* Unmaps; the owner also unlinks the segment and frees the device allocation. Nulls *pool. */
void pool_close(pool_t **pool);

/* Removes a segment by name without mapping it (the supervisor, after an owner died). */
int pool_unlink(const char *instance, uint32_t slot, uint32_t gen);
/* Removes every segment of this instance left in /dev/shm, pools and the ingress's cancel
 * tables (pipeline/cancel.h) alike; returns how many. */
int pool_unlink_all(const char *instance);

/* Owner: allocates bytes (> 0) held by holder. Returns 0 and the offset, or -1 when no run of
 * free pages is large enough (exhaustion: the caller waits and retries, it is not an error of
 * the request). Released blocks are reclaimed here first. */
int pool_alloc(pool_t *pool, uint64_t bytes, uint32_t holder, uint64_t *offset);

/* The block at offset, if it is allocated, at least bytes long and held by holder: its address
 * (host, or device for a CUDA pool). NULL otherwise. Any process that maps the pool. */
void *pool_data(pool_t *pool, uint64_t offset, uint64_t bytes, uint32_t holder);

/* Moves the block at offset from holder `from` to holder `to`. 0, or -1 if it was not held by
 * `from` (reclaimed, released, or never allocated). */
int pool_hand_over(pool_t *pool, uint64_t offset, uint32_t from, uint32_t to);

/* The last holder is done with the block. 0, or -1 if it did not hold it. */
int pool_release(pool_t *pool, uint64_t offset, uint32_t holder);

/* Holder of the block at offset, 0 if none (free, released or not a block start). */
uint32_t pool_holder(pool_t *pool, uint64_t offset);

/* Owner: marks released every block whose holder is_dead() says is a dead generation.
 * Returns the number of blocks reclaimed. */
typedef bool (*pool_is_dead_fn)(uint32_t holder, void *ctx);
size_t pool_reclaim(pool_t *pool, pool_is_dead_fn is_dead, void *ctx);

/* Owner: bytes in blocks that are allocated and not yet released/reclaimed. */
uint64_t pool_used(pool_t *pool);
uint64_t pool_capacity(const pool_t *pool);
int pool_device(const pool_t *pool);
uint32_t pool_slot(const pool_t *pool);
uint32_t pool_gen(const pool_t *pool);
/* The shm_open name of the segment (for logs and tests that prove no copy was made). */
const char *pool_name(const pool_t *pool);
/* Byte offset of the data area inside the segment (host pools), so that a tensor at offset
 * lies at data_start + offset in /dev/shm/<name>. */
uint64_t pool_data_start(const pool_t *pool);

/* Consumer-side cache of opened pools, keyed by (slot, gen): each pool is opened once. */
typedef struct pool_cache pool_cache_t;
pool_cache_t *pool_cache_new(const char *instance);
void pool_cache_free(pool_cache_t **cache);
/* The opened pool, opening it on first use. NULL with err if it cannot be opened. */
pool_t *pool_cache_get(pool_cache_t *cache, uint32_t slot, uint32_t gen, char *err, size_t errlen);
/* Closes cached pools of slot whose generation is not gen (a restarted owner; gen 0: the owner
 * is gone), at once or, for a pool that jobs still point into, when the last hold goes. */
void pool_cache_forget_stale(pool_cache_t *cache, uint32_t slot, uint32_t gen);
/* A job of this process points into the cached pool (slot, gen) / no longer does: a pool is
 * never unmapped under a job that holds a pointer into it. */
void pool_cache_hold(pool_cache_t *cache, uint32_t slot, uint32_t gen);
void pool_cache_unhold(pool_cache_t *cache, uint32_t slot, uint32_t gen);

/* Segment layout. Shared by the processes of one build (the version changes with it); exposed
 * so that tests, tools and fuzz targets can build and corrupt segments. Everything else goes
 * through the functions above.
 *
 *   [0, sizeof(pool_header_t))                     header
 *   [POOL_TABLE_OFFSET, + pages * sizeof(entry))    allocation table, one entry per page
 *   [data_start, data_start + capacity)             tensor data (host pools only)
 *
 * Owner-side calls (create, alloc, reclaim, used, close of the owner) on one pool_t are not
 * thread-safe with each other; pool_data, pool_hand_over, pool_release and pool_holder are
 * safe from any thread of any process that maps the pool. A forked child must not pool_close
 * a pool_t inherited from its owner parent (that would unlink the segment). */
#include <stdatomic.h>

#define POOL_MAGIC UINT64_C(0x314c4f4f50464644) /* "DFFPOOL1" little-endian */
#define POOL_LAYOUT_VERSION 1u
#define POOL_TABLE_OFFSET 128u
#define POOL_CUDA_HANDLE_BYTES 64u /* CUDA_IPC_HANDLE_SIZE */

typedef struct {
    _Atomic uint64_t magic;  /* stored last, with release order: a reader that sees it sees
                              * every other field */
    uint32_t version;        /* POOL_LAYOUT_VERSION */
    uint32_t page_size;      /* power of two; block size granularity and alignment */
    uint64_t pages;          /* table entries; pages * page_size == capacity */
    uint64_t capacity;       /* bytes of tensor data */
    uint64_t data_start;     /* host pools: offset of the data area, a multiple of page_size;
                              * device pools: 0 (the data is the CUDA allocation) */
    int32_t device;          /* POOL_DEVICE_HOST or the owner's CUDA ordinal */
    uint32_t owner_slot;
    uint32_t owner_gen;
    uint32_t reserved;       /* 0 */
    uint8_t cuda_handle[POOL_CUDA_HANDLE_BYTES]; /* cudaIpcMemHandle_t, device pools only */
} pool_header_t;

/* Entry word: state in the high 32 bits, holder generation in the low 32. Only a block's
 * first page has a non-FREE word and a run; the pages inside a block stay {FREE, 0} and are
 * skipped by the run length. FREE and RELEASED words have holder 0. */
enum {
    POOL_ENTRY_FREE = 0,
    POOL_ENTRY_USED = 1,
    POOL_ENTRY_RELEASED = 2,
};
#define POOL_WORD(state, holder) (((uint64_t)(state) << 32) | (uint32_t)(holder))
#define POOL_WORD_STATE(word) ((uint32_t)((word) >> 32))
#define POOL_WORD_HOLDER(word) ((uint32_t)(word))

typedef struct {
    _Atomic uint64_t word; /* POOL_WORD(state, holder). Everyone changes a USED word by CAS
                            * only; the owner alone stores to FREE and RELEASED words. */
    _Atomic uint64_t run;  /* pages in the block at a block start, else 0; written only by
                            * the owner before it publishes the word. Untrusted by readers. */
} pool_entry_t;

#endif
