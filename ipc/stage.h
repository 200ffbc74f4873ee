/* stage: the skeleton every stage program runs.
 *
 * A stage's main() is one call: stage_main(argc, argv, &ops). The skeleton owns everything that
 * is the same in every stage: argument parsing, signals, the control channel to the supervisor
 * (HELLO, READY, HEARTBEAT with stats; ROSTER, DRAIN, SHUTDOWN), the stage's tensor pool, the
 * pools of other stages it reads, the receive loop, and forwarding a job to the next step of
 * its route. The stage supplies callbacks (stage_ops_t) that do the work.
 *
 * A job arrives with its tensors checked: every reference names a block this process now
 * holds (stage_tensor_data gives its address). When the job callback returns STAGE_JOB_FORWARD
 * the skeleton hands the tensors to a replica of the next stage in the route (round-robin over
 * the replicas that are up and not full) or, at the end of the route, releases them.
 *
 * Exit codes (the supervisor's contract): 0 done, 1 clean error, 2 bad config (not restarted),
 * anything else a crash. */
#ifndef DIFFUSIOND_STAGE_H
#define DIFFUSIOND_STAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "ipc/pool.h"
#include "ipc/proto.h"
#include "supervisor/config.h"

enum {
    STAGE_EXIT_OK = 0,
    STAGE_EXIT_ERROR = 1,
    STAGE_EXIT_CONFIG = 2,
};

typedef struct stage stage_t;

/* A job while a stage holds it. The message fields are in msg; the frame it was decoded from
 * stays alive as long as the job (msg.params borrows from it). */
typedef struct stage_job {
    proto_job_t msg;
    void *frame;               /* owned: the received bytes */
    struct stage_job *next;    /* for the skeleton's and the stage's queues */
    bool kept;                 /* the skeleton's: a callback kept it (STAGE_JOB_KEPT) */
    bool holds;                /* the skeleton's: its tensors' pools are held open for it */
} stage_job_t;

typedef enum {
    STAGE_JOB_FORWARD = 0, /* done here: send on to the next step (or finish at the route's end) */
    STAGE_JOB_KEPT = 1,    /* the stage keeps the job and later calls stage_job_forward/_fail */
    STAGE_JOB_FAILED = -1, /* the skeleton answers the origin with job->msg.error set */
} stage_job_result_t;

typedef struct {
    /* Called once before READY, after the config is read. Load weights here. Returns 0, or a
     * STAGE_EXIT_* code to exit with. argc/argv: the stage's own arguments (config `args`). */
    int (*init)(stage_t *st, int argc, char **argv, void **state);
    /* A job arrived whose tensors this process now holds. */
    stage_job_result_t (*job)(stage_t *st, void *state, stage_job_t *job);
    /* Called every loop turn (at least every tick_ms): sources make work, batchers flush. */
    void (*tick)(stage_t *st, void *state);
    /* Jobs this stage holds (kept or outstanding), reported in heartbeats; drain waits for 0. */
    uint32_t (*inflight)(stage_t *st, void *state);
    /* Called once on the way out. It must forward, fail or finish every job it kept; the
     * skeleton then hands what it holds back to the origins. */
    void (*fini)(stage_t *st, void *state);
    /* Optional: the stage's own event loop does the waiting, for a stage that has sources of
     * its own (the ingress: libevent's HTTP server), so that they are served the moment they
     * are ready rather than on a tick. Wait until one of fds is readable, one of the stage's
     * own sources has been handled, or timeout_ms (0: do not block) has passed. The fds are
     * the skeleton's (its signal pipe, ZeroMQ's ZMQ_FD of each socket it reads now, at most
     * 4); it asks the sockets first and passes 0 when one has a message waiting. NULL: the
     * skeleton's zmq_poll waits. */
    void (*wait)(stage_t *st, void *state, const int *fds, int n_fds, int timeout_ms);
    int tick_ms;               /* 0: 100 */
} stage_ops_t;

int stage_main(int argc, char **argv, const stage_ops_t *ops);

/* Who and where this process is. */
const char *stage_name(const stage_t *st);
uint32_t stage_replica(const stage_t *st);
uint32_t stage_slot(const stage_t *st);
uint32_t stage_gen(const stage_t *st);
const config_t *stage_config(const stage_t *st);
const config_stage_t *stage_section(const stage_t *st);
const char *stage_runtime_dir(const stage_t *st);
/* True once the supervisor asked for a drain: take no new work. */
bool stage_draining(const stage_t *st);

/* The roster as this process last heard it (read-only views for origins such as ingress).
 * stage_peer_ready: the roster names at least one slot of stage `name` and every one of them
 * is UP (false before the first roster). stage_peer_gen: the largest generation among the
 * slots of `name` (0 when none ran): it grows whenever one of its replicas is restarted (every
 * spawn takes a new generation from one counter), so an origin that remembers it when it sends
 * a job can tell later that a process which may have held the job has been replaced. */
bool stage_peer_ready(const stage_t *st, const char *name);
uint32_t stage_peer_gen(const stage_t *st, const char *name);
/* The generations of the live processes (STARTING, UP, DRAINING, RETIRING) of stage `name`,
 * at most max of them into gens; returns how many. With stage_gen_alive, an origin that
 * keeps them when it sends a job can tell later that a process which may have held the job
 * is gone (a new replica starting does not count: it cannot hold an older job). */
uint32_t stage_peer_gens(const stage_t *st, const char *name, uint32_t *gens, uint32_t max);
/* True while generation gen names a live process in the roster. */
bool stage_gen_alive(const stage_t *st, uint32_t gen);
/* True when process generation gen was ever shown RETIRING in a roster this process received
 * (the last 256 such): it finished or handed back its jobs before it exited. */
bool stage_gen_retired(const stage_t *st, uint32_t gen);

/* Allocates a tensor in this stage's pool, held by this process. Returns 0 and fills *ref and
 * *data, or -1 when the pool is full (try again later) or the request is out of bounds. */
int stage_tensor_alloc(stage_t *st, int dtype, int ndim, const int64_t *shape,
                       proto_tensor_ref_t *ref, void **data);
/* Address of the job's i-th tensor (checked on arrival). Valid while this process holds the
 * job: pools of restarted owners are unmapped only when no job is held or kept. */
void *stage_tensor_data(stage_t *st, const stage_job_t *job, uint32_t i);
/* The pool a reference points into (already opened), NULL if it cannot be. */
pool_t *stage_tensor_pool(stage_t *st, const proto_tensor_ref_t *ref);

/* A new job that starts here (the origin). route: the steps ahead, origin last if the result
 * should come back. The caller adds tensors with stage_tensor_alloc into job->msg.tensors. */
stage_job_t *stage_job_new(stage_t *st, uint64_t id, const char *const *route, uint32_t n_route);
/* Sends a job the stage kept (or made) to the next step; the skeleton owns it afterwards. A job
 * that finds every next replica full waits in the skeleton (and the stage reads no new work
 * meanwhile); one whose next stage has failed for good goes back to its origin as a failure. */
void stage_job_forward(stage_t *st, stage_job_t *job);
/* False while jobs wait for room downstream: an origin makes no new work then, so that it
 * never queues more than the pipeline can hold. */
bool stage_can_send(const stage_t *st);
/* Fails a kept job: the origin gets it back with the error and no tensors (an origin's own
 * failures reach its job callback from the loop, never from inside a callback). */
void stage_job_fail(stage_t *st, stage_job_t *job, int code, const char *msg);
/* Releases the tensors a job holds and empties its tensor list, keeping the job: a stage
 * that consumed its inputs calls it before attaching its outputs (stage_tensor_alloc). */
void stage_job_release_tensors(stage_t *st, stage_job_t *job);
/* Releases the job's tensors and frees it (the end of a job at its last step). */
void stage_job_finish(stage_t *st, stage_job_t *job);

/* While paused the stage reads no new jobs (results still come in): jobs wait in ZeroMQ's
 * queue, whose high-water mark (queue_depth) then holds senders back, and a sender with
 * several replicas to choose from gives the work to one with room. A stage that keeps jobs
 * for a worker pauses while it holds enough of them. */
void stage_pause_intake(stage_t *st, bool paused);

/* Runs the tick callback at the loop's next turn, at once: a worker thread that finished a
 * job calls it, so the job goes on without waiting up to tick_ms. The one function here that
 * any thread may call. */
void stage_wake(stage_t *st);

/* Bytes of this stage's tensor pool; 0 when it has none. */
uint64_t stage_pool_capacity(const stage_t *st);

/* Adds compute time done outside the job callback (a worker thread's) to the busy time that
 * heartbeats report. */
void stage_add_busy_us(stage_t *st, uint64_t us);

/* Monotonic clock in milliseconds and microseconds. */
int64_t stage_now_ms(void);
int64_t stage_now_us(void);

#endif
