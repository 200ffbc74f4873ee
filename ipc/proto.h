/* proto: the wire protocol between diffusiond processes (msgpack over ZeroMQ).
 *
 * Every message is one ZeroMQ frame holding one msgpack map with string keys, always with
 * "v" (PROTO_VERSION) and "t" (the type name). proto_decode turns a frame into a proto_msg_t
 * with every field checked against its bounds; anything unknown or malformed is rejected with
 * a message (callers log and drop it: wire data is never asserted on). Unknown extra keys are
 * ignored so that a newer peer can add optional fields.
 *
 * No pointers cross a process boundary: tensors travel as proto_tensor_ref_t (pool, generation,
 * offset, bytes, dtype, shape, device) into a tensor pool (pool.h). */
#ifndef DIFFUSIOND_PROTO_H
#define DIFFUSIOND_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_NAME_MAX 32       /* stage names, with the NUL */
#define PROTO_MAX_DIMS 5
#define PROTO_MAX_TENSORS 16    /* per job */
#define PROTO_MAX_ROUTE 8       /* steps still ahead of a job */
#define PROTO_MAX_SLOTS 128     /* stage replicas in one roster */
#define PROTO_MAX_PARAMS 65536  /* bytes of opaque job parameters */
#define PROTO_ERROR_MAX 256     /* job error text, with the NUL */
#define PROTO_MAX_FRAME (PROTO_MAX_PARAMS + 16384) /* larger frames are rejected unread */
#define PROTO_MAX_DEPTH 8       /* nested maps and arrays in a frame, the top map included; the
                                   messages here use 4, the rest is room for a newer peer's keys */

typedef enum {
    PROTO_MSG_HELLO = 1,     /* stage -> supervisor: I started */
    PROTO_MSG_READY,         /* stage -> supervisor: I can take jobs */
    PROTO_MSG_HEARTBEAT,     /* stage -> supervisor: alive, with stats */
    PROTO_MSG_ROSTER,        /* supervisor -> stage: every replica's generation and state */
    PROTO_MSG_DRAIN,         /* supervisor -> stage: take no new work, finish what you have */
    PROTO_MSG_SHUTDOWN,      /* supervisor -> stage: exit now */
    PROTO_MSG_JOB,           /* stage -> stage: a job and its tensors */
} proto_msg_type_t;

typedef enum {
    PROTO_DTYPE_F32 = 0,
    PROTO_DTYPE_BF16,
    PROTO_DTYPE_F16,
    PROTO_DTYPE_F8E4M3,
    PROTO_DTYPE_U8,
    PROTO_DTYPE_I32,
    PROTO_DTYPE_I64,
    PROTO_DTYPE_COUNT
} proto_dtype_t;

/* Bytes per element of dtype, 0 for an unknown one. */
size_t proto_dtype_size(int dtype);
/* "f32", "bf16", ...; "?" for an unknown one. */
const char *proto_dtype_name(int dtype);

/* A tensor in a pool: the owner's slot and generation name the pool; offset and bytes the
 * block. bytes == dtype size x product(shape) is checked by the decoder. */
typedef struct {
    uint32_t pool;                  /* owner's slot index (< PROTO_MAX_SLOTS) */
    uint32_t gen;                   /* owner's generation: a restarted owner has a new pool */
    uint64_t offset;
    uint64_t bytes;
    int32_t device;                 /* -1: host shared memory; N: cuda:N */
    uint8_t dtype;                  /* proto_dtype_t */
    uint8_t ndim;                   /* 0..PROTO_MAX_DIMS */
    int64_t shape[PROTO_MAX_DIMS];  /* each >= 0 */
} proto_tensor_ref_t;

typedef struct {
    char stage[PROTO_NAME_MAX];
    uint32_t slot;
    uint32_t gen;
    int32_t pid;
} proto_hello_t;

typedef struct {
    uint32_t slot;
    uint32_t gen;
} proto_ready_t;

typedef struct {
    uint32_t slot;
    uint32_t gen;
    uint64_t jobs_done;      /* jobs this process finished and forwarded */
    uint64_t jobs_failed;    /* jobs it answered with an error */
    uint64_t jobs_dropped;   /* malformed or stale messages it dropped */
    uint32_t inflight;       /* jobs it holds now */
    uint64_t busy_us;        /* time spent in job callbacks */
    uint64_t pool_used;      /* bytes allocated in its pool */
    uint64_t pool_capacity;  /* 0 when it owns no pool */
    uint8_t draining;        /* 1 once it got DRAIN: inflight then counts toward the drain */
} proto_heartbeat_t;

typedef enum {
    PROTO_SLOT_DOWN = 0,     /* not running, to be started again (waiting for its backoff) */
    PROTO_SLOT_STARTING,     /* spawned, not ready yet */
    PROTO_SLOT_UP,           /* ready: send it jobs */
    PROTO_SLOT_DRAINING,     /* the service is stopping: finish jobs in flight, start none */
    PROTO_SLOT_FAILED,       /* not running and not coming back soon (bad config, restart
                                budget spent, or the service is stopping): jobs for a stage
                                whose replicas all failed fail at once */
    PROTO_SLOT_RETIRING,     /* running, about to be replaced (a reload changed its config):
                                it finishes what it has and takes no new jobs, but results
                                for jobs it started still go to it */
} proto_slot_state_t;

typedef struct {
    uint32_t slot;
    char stage[PROTO_NAME_MAX];
    uint32_t replica;
    uint32_t gen;            /* 0 when the slot never ran */
    uint8_t state;           /* proto_slot_state_t */
} proto_roster_entry_t;

/* The whole table each time, so a stage that missed one update loses nothing. seq grows by
 * one per roster the supervisor sends; a stage ignores a roster older than one it has. */
typedef struct {
    uint64_t seq;
    uint32_t n;
    proto_roster_entry_t entries[PROTO_MAX_SLOTS];
} proto_roster_t;

typedef struct {
    uint64_t id;                               /* assigned by the origin (ingress) */
    uint32_t attempt;                          /* 0 first time; retries count up */
    uint32_t to_gen;                           /* generation this was sent to: a restarted
                                                  replica drops messages meant for its
                                                  predecessor */
    char origin[PROTO_NAME_MAX];               /* stage that answers the client */
    uint32_t origin_slot;                      /* the replica of origin that holds the client:
                                                  results go back to it, not round-robin
                                                  (< PROTO_MAX_SLOTS) */
    uint32_t origin_gen;                       /* ... and its generation: a restarted origin
                                                  never gets its predecessor's results */
    uint32_t n_route;
    char route[PROTO_MAX_ROUTE][PROTO_NAME_MAX]; /* steps still ahead, next first */
    uint32_t n_tensors;
    proto_tensor_ref_t tensors[PROTO_MAX_TENSORS];
    int32_t error;                             /* 0, or a failure code set by a stage */
    char error_msg[PROTO_ERROR_MAX];
    const uint8_t *params;                     /* opaque stage parameters; after decode this
                                                  borrows from the decoded frame */
    uint32_t params_len;                       /* <= PROTO_MAX_PARAMS */
} proto_job_t;

typedef struct {
    proto_msg_type_t type;
    union {
        proto_hello_t hello;
        proto_ready_t ready;
        proto_heartbeat_t heartbeat;
        proto_roster_t roster;
        proto_job_t job;
    } u;                                       /* DRAIN and SHUTDOWN carry nothing */
} proto_msg_t;

typedef struct {
    char *data;   /* malloc'd; proto_buf_free releases it */
    size_t size;
} proto_buf_t;

/* Encodes msg. Returns 0, or -1 if msg itself is out of bounds (a caller bug, reported in err)
 * or memory ran out. */
int proto_encode(const proto_msg_t *msg, proto_buf_t *out, char *err, size_t errlen);
void proto_buf_free(proto_buf_t *buf);

/* Decodes one frame into *msg. Returns 0, or -1 with the reason in err (and *msg zeroed). For a
 * job, msg->u.job.params points into data: keep data alive while using it. */
int proto_decode(const void *data, size_t size, proto_msg_t *msg, char *err, size_t errlen);

/* "hello", "job", ...; "?" for an unknown type. */
const char *proto_msg_type_name(int type);

#endif
