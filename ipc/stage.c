/* stage: the skeleton every stage program runs (see stage.h).
 * One thread, one loop: poll the control channel, the job sockets and the signal pipe (with
 * zmq_poll, or in the stage's own event loop: ops->wait); handle what arrived; send
 * heartbeats; retry sends that found every next replica full. */
#include "ipc/stage.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ipc/log.h"

#define STAGE_ENDPOINT_MAX 600

/* A FIFO of jobs linked through job->next. */
typedef struct {
    stage_job_t *head, *tail;
    uint32_t n;
} stage_queue_t;

static void stage_queue_push(stage_queue_t *q, stage_job_t *job)
{
    job->next = NULL;
    if (q->tail)
        q->tail->next = job;
    else
        q->head = job;
    q->tail = job;
    q->n++;
}

static stage_job_t *stage_queue_pop(stage_queue_t *q)
{
    stage_job_t *job = q->head;
    if (job) {
        q->head = job->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        job->next = NULL;
    }
    return job;
}

struct stage {
    const stage_ops_t *ops;
    void *state;

    /* identity, from the supervisor's arguments */
    char name[CONFIG_NAME_MAX];
    uint32_t replica, slot, gen;
    char runtime_dir[CONFIG_PATH_MAX];
    char config_path[CONFIG_PATH_MAX];
    config_t config;
    const config_stage_t *section;
    pid_t parent;

    void *zctx;
    void *control;      /* DEALER to the supervisor's ROUTER */
    void *jobs_in;      /* PULL bound at ipc://<runtime_dir>/<name>.<replica> */
    void *results_in;   /* PULL at ipc://<runtime_dir>/<name>.<replica>.results: results of the
                           jobs this process started. Always read, even while sends wait for
                           room, so that an origin can never deadlock its own pipeline. */
    void *push[PROTO_MAX_SLOTS];         /* PUSH to each replica's jobs, made on first use */
    void *push_results[PROTO_MAX_SLOTS]; /* PUSH to each replica's results */
    uint32_t rr[CONFIG_MAX_STAGES]; /* round-robin cursor per stage section */

    pool_t *pool;       /* this stage's own pool, NULL if pool_size is 0 */
    pool_cache_t *pools;/* other stages' pools */

    proto_roster_t roster;
    /* generations seen RETIRING, newest last: a retiring process finishes or hands back every
     * job before it exits, so an origin must not count its exit as a loss */
    uint32_t retired[256];
    uint32_t n_retired;
    atomic_bool wake_tick;      /* stage_wake: run the tick at the loop's next turn */
    bool intake_paused;         /* stage_pause_intake: read no new jobs */
    bool have_roster;
    uint32_t max_gen;   /* largest generation the roster has ever named */

    stage_queue_t pending; /* jobs waiting for a next replica with room, in order */
    stage_queue_t local;   /* our own jobs that failed, for the loop to hand to our callback */
    uint32_t n_kept;    /* jobs the stage's callbacks kept (STAGE_JOB_KEPT) and still hold */
    bool retiring;      /* the roster says we are to be replaced: finish up and exit */
    int64_t last_job_ms;

    bool draining;
    bool running;
    int64_t next_heartbeat_ms;
    proto_heartbeat_t stats;
};

static volatile sig_atomic_t stage_stop_signal;
static int stage_signal_pipe[2] = {-1, -1};

static void stage_on_signal(int sig)
{
    stage_stop_signal = sig;
    int saved = errno;
    ssize_t w = write(stage_signal_pipe[1], "s", 1);
    (void)w; /* a full pipe already wakes the loop */
    errno = saved;
}

int64_t stage_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t stage_now_ms(void) { return stage_now_us() / 1000; }

const char *stage_name(const stage_t *st) { return st->name; }
uint32_t stage_replica(const stage_t *st) { return st->replica; }
uint32_t stage_slot(const stage_t *st) { return st->slot; }
uint32_t stage_gen(const stage_t *st) { return st->gen; }
const config_t *stage_config(const stage_t *st) { return &st->config; }
const config_stage_t *stage_section(const stage_t *st) { return st->section; }
const char *stage_runtime_dir(const stage_t *st) { return st->runtime_dir; }
bool stage_draining(const stage_t *st) { return st->draining; }

bool stage_peer_ready(const stage_t *st, const char *name)
{
    bool any = false;
    for (uint32_t i = 0; st->have_roster && i < st->roster.n; i++) {
        const proto_roster_entry_t *e = &st->roster.entries[i];
        if (strcmp(e->stage, name) != 0)
            continue;
        if (e->state != PROTO_SLOT_UP)
            return false;
        any = true;
    }
    return any;
}

static bool stage_state_alive(uint8_t state);

uint32_t stage_peer_gens(const stage_t *st, const char *name, uint32_t *gens, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; st->have_roster && i < st->roster.n && n < max; i++) {
        const proto_roster_entry_t *e = &st->roster.entries[i];
        if (strcmp(e->stage, name) == 0 && stage_state_alive(e->state))
            gens[n++] = e->gen;
    }
    return n;
}

bool stage_gen_alive(const stage_t *st, uint32_t gen)
{
    for (uint32_t i = 0; st->have_roster && i < st->roster.n; i++)
        if (st->roster.entries[i].gen == gen)
            return stage_state_alive(st->roster.entries[i].state);
    return false;
}

bool stage_gen_retired(const stage_t *st, uint32_t gen)
{
    const uint32_t cap = sizeof st->retired / sizeof st->retired[0];
    uint32_t n = st->n_retired < cap ? st->n_retired : cap;
    for (uint32_t i = 0; i < n; i++)
        if (st->retired[i] == gen)
            return true;
    return false;
}

uint32_t stage_peer_gen(const stage_t *st, const char *name)
{
    uint32_t gen = 0;
    for (uint32_t i = 0; st->have_roster && i < st->roster.n; i++) {
        const proto_roster_entry_t *e = &st->roster.entries[i];
        if (strcmp(e->stage, name) == 0 && e->gen > gen)
            gen = e->gen;
    }
    return gen;
}

/* ---- sending messages ---------------------------------------------------------------------- */

/* Encodes and sends msg; returns 0, or -1 (errno EAGAIN when the peer's queue is full). */
static int stage_send_msg(void *sock, const proto_msg_t *msg, int flags)
{
    proto_buf_t buf;
    char err[256];
    if (proto_encode(msg, &buf, err, sizeof err) != 0) {
        log_error("cannot encode %s: %s", proto_msg_type_name(msg->type), err);
        errno = EINVAL;
        return -1;
    }
    int rc = zmq_send(sock, buf.data, buf.size, flags);
    int saved = errno;
    proto_buf_free(&buf);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

static void stage_send_control(stage_t *st, const proto_msg_t *msg)
{
    /* The control socket's queue is deep; a full one means the supervisor is gone or stuck,
     * and the parent-death check ends this process then. */
    if (stage_send_msg(st->control, msg, ZMQ_DONTWAIT) != 0 && errno != EINVAL)
        log_warn("cannot reach the supervisor: %s", zmq_strerror(errno));
}

static void stage_send_heartbeat(stage_t *st)
{
    proto_msg_t msg = {.type = PROTO_MSG_HEARTBEAT};
    st->stats.slot = st->slot;
    st->stats.gen = st->gen;
    st->stats.inflight = st->pending.n + (st->ops->inflight ? st->ops->inflight(st, st->state) : 0);
    st->stats.draining = st->draining;
    if (st->pool) {
        st->stats.pool_used = pool_used(st->pool);
        st->stats.pool_capacity = pool_capacity(st->pool);
    }
    msg.u.heartbeat = st->stats;
    stage_send_control(st, &msg);
}

/* ---- pools and tensors ----------------------------------------------------------------------- */

pool_t *stage_tensor_pool(stage_t *st, const proto_tensor_ref_t *ref)
{
    if (st->pool && ref->pool == st->slot && ref->gen == st->gen)
        return st->pool;
    char err[256];
    pool_t *p = pool_cache_get(st->pools, ref->pool, ref->gen, err, sizeof err);
    if (!p)
        log_warn("cannot open pool of slot %u gen %u: %s", ref->pool, ref->gen, err);
    return p;
}

int stage_tensor_alloc(stage_t *st, int dtype, int ndim, const int64_t *shape,
                       proto_tensor_ref_t *ref, void **data)
{
    if (!st->pool || ndim < 0 || ndim > PROTO_MAX_DIMS || proto_dtype_size(dtype) == 0)
        return -1;
    uint64_t bytes = proto_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && bytes > UINT64_MAX / (uint64_t)shape[i]))
            return -1;
        bytes *= (uint64_t)shape[i];
    }
    uint64_t offset;
    /* A zero-sized tensor still takes one page so that it has a holder like every other. */
    if (pool_alloc(st->pool, bytes ? bytes : 1, st->gen, &offset) != 0)
        return -1;
    memset(ref, 0, sizeof *ref);
    ref->pool = st->slot;
    ref->gen = st->gen;
    ref->offset = offset;
    ref->bytes = bytes;
    ref->device = pool_device(st->pool);
    ref->dtype = (uint8_t)dtype;
    ref->ndim = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++)
        ref->shape[i] = shape[i];
    *data = pool_data(st->pool, offset, bytes, st->gen);
    return *data ? 0 : -1;
}

void *stage_tensor_data(stage_t *st, const stage_job_t *job, uint32_t i)
{
    if (i >= job->msg.n_tensors)
        return NULL;
    const proto_tensor_ref_t *ref = &job->msg.tensors[i];
    pool_t *p = stage_tensor_pool(st, ref);
    return p ? pool_data(p, ref->offset, ref->bytes, st->gen) : NULL;
}

/* The job no longer points into other stages' pools (it was sent on, or its tensors were
 * released): those pools may be unmapped now if their owners restarted. */
static void stage_job_unhold(stage_t *st, stage_job_t *job)
{
    if (!job->holds)
        return;
    job->holds = false;
    for (uint32_t i = 0; i < job->msg.n_tensors; i++) {
        const proto_tensor_ref_t *ref = &job->msg.tensors[i];
        if (!(st->pool && ref->pool == st->slot && ref->gen == st->gen))
            pool_cache_unhold(st->pools, ref->pool, ref->gen);
    }
}

/* Releases every tensor of the job that this process holds. */
static void stage_release_tensors(stage_t *st, stage_job_t *job)
{
    stage_job_unhold(st, job);
    for (uint32_t i = 0; i < job->msg.n_tensors; i++) {
        pool_t *p = stage_tensor_pool(st, &job->msg.tensors[i]);
        if (p)
            pool_release(p, job->msg.tensors[i].offset, st->gen);
    }
    job->msg.n_tensors = 0;
}

void stage_job_release_tensors(stage_t *st, stage_job_t *job) { stage_release_tensors(st, job); }

void stage_add_busy_us(stage_t *st, uint64_t us) { st->stats.busy_us += us; }

void stage_pause_intake(stage_t *st, bool paused) { st->intake_paused = paused; }

void stage_wake(stage_t *st)
{
    atomic_store(&st->wake_tick, true);
    /* the loop polls the signal pipe: a byte ends its wait (a full pipe wakes it as well) */
    ssize_t w = write(stage_signal_pipe[1], "w", 1);
    (void)w;
}

uint64_t stage_pool_capacity(const stage_t *st) { return st->pool ? pool_capacity(st->pool) : 0; }

/* ---- jobs --------------------------------------------------------------------------------- */

/* Frees the job itself; its tensors have been sent on or released. */
static void stage_job_free(stage_t *st, stage_job_t *job)
{
    if (job) {
        stage_job_unhold(st, job);
        free(job->frame);
        free(job);
    }
}

stage_job_t *stage_job_new(stage_t *st, uint64_t id, const char *const *route, uint32_t n_route)
{
    if (n_route > PROTO_MAX_ROUTE)
        return NULL;
    stage_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->msg.id = id;
    snprintf(job->msg.origin, sizeof job->msg.origin, "%s", st->name);
    job->msg.origin_slot = st->slot;
    job->msg.origin_gen = st->gen;
    job->msg.n_route = n_route;
    for (uint32_t i = 0; i < n_route; i++)
        snprintf(job->msg.route[i], sizeof job->msg.route[i], "%s", route[i]);
    return job;
}

void stage_job_finish(stage_t *st, stage_job_t *job)
{
    if (job->kept) {
        job->kept = false;
        st->n_kept--;
    }
    stage_release_tensors(st, job);
    stage_job_free(st, job);
}

/* A PUSH socket to a replica's job socket, or (results) to its results socket; made on first
 * use and kept: ZeroMQ reconnects it when the replica restarts. */
static void *stage_push_socket(stage_t *st, uint32_t slot, const char *name, uint32_t replica,
                               bool results)
{
    void **cache = results ? &st->push_results[slot] : &st->push[slot];
    if (*cache)
        return *cache;
    void *s = zmq_socket(st->zctx, ZMQ_PUSH);
    if (!s)
        return NULL;
    const config_stage_t *peer = config_find_stage(&st->config, name);
    /* Results are small and must never wait behind work: their queue is deep. */
    int hwm = results ? 10000 : peer ? peer->queue_depth : 16, zero = 0, one = 1;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    /* Queue only on live connections: a message must never wait in a pipe for a replica that
     * died and come out at its successor, which could not use it. */
    zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof one);
    char ep[STAGE_ENDPOINT_MAX];
    snprintf(ep, sizeof ep, "ipc://%s/%s.%u%s", st->runtime_dir, name, replica,
             results ? ".results" : "");
    if (zmq_connect(s, ep) != 0) {
        log_error("cannot connect to %s: %s", ep, zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    *cache = s;
    return s;
}

/* Moves every tensor of the job from holder `from` to `to`; on failure moves back those it
 * moved and returns -1. */
static int stage_hand_over_all(stage_t *st, proto_job_t *msg, uint32_t from, uint32_t to)
{
    for (uint32_t i = 0; i < msg->n_tensors; i++) {
        pool_t *p = stage_tensor_pool(st, &msg->tensors[i]);
        if (!p || pool_hand_over(p, msg->tensors[i].offset, from, to) != 0) {
            for (uint32_t j = 0; j < i; j++) {
                pool_t *q = stage_tensor_pool(st, &msg->tensors[j]);
                if (q)
                    pool_hand_over(q, msg->tensors[j].offset, to, from);
            }
            return -1;
        }
    }
    return 0;
}

typedef enum {
    SEND_OK,
    SEND_BUSY,   /* no replica with room now: hold the job and try again */
    SEND_BROKEN, /* it can never go there: no such stage, every replica failed, the origin
                    that waits for it is gone, or a tensor was lost */
} stage_send_result_t;

static bool stage_is_result(const proto_job_t *msg)
{
    return msg->n_route == 1 && strcmp(msg->route[0], msg->origin) == 0;
}

/* Which replicas may take the job now (indices into the roster). */
static stage_send_result_t stage_candidates(const stage_t *st, const proto_job_t *msg,
                                            uint32_t *cand, uint32_t *n)
{
    const char *next = msg->route[0];
    *n = 0;
    if (stage_is_result(msg)) {
        /* A result goes to the replica that holds the client, that very process: a restarted
         * one has other jobs under the same ids. */
        for (uint32_t i = 0; i < st->roster.n; i++) {
            const proto_roster_entry_t *e = &st->roster.entries[i];
            if (e->slot != msg->origin_slot)
                continue;
            if (e->gen != msg->origin_gen || strcmp(e->stage, next) != 0 ||
                e->state == PROTO_SLOT_DOWN || e->state == PROTO_SLOT_FAILED)
                return SEND_BROKEN;
            cand[(*n)++] = i;
            return e->state == PROTO_SLOT_STARTING ? SEND_BUSY : SEND_OK; /* retiring: still ok */
        }
        return SEND_BROKEN;
    }
    bool any_alive = false;
    for (uint32_t i = 0; i < st->roster.n; i++) {
        const proto_roster_entry_t *e = &st->roster.entries[i];
        if (strcmp(e->stage, next) != 0)
            continue;
        any_alive |= e->state != PROTO_SLOT_FAILED; /* down, starting or retiring: it comes back */
        /* A draining replica still finishes jobs already in the pipeline: only origins stop
         * making new ones. */
        if (e->state == PROTO_SLOT_UP || e->state == PROTO_SLOT_DRAINING)
            cand[(*n)++] = i;
    }
    if (*n)
        return SEND_OK;
    return any_alive ? SEND_BUSY : SEND_BROKEN;
}

/* One try at sending the job to its next step. */
static stage_send_result_t stage_try_send(stage_t *st, stage_job_t *job)
{
    int stage_index = -1;
    for (int i = 0; i < st->config.n_stages; i++)
        if (strcmp(st->config.stages[i].name, job->msg.route[0]) == 0)
            stage_index = i;
    if (stage_index < 0)
        return SEND_BROKEN;
    if (!st->have_roster)
        return SEND_BUSY;
    uint32_t cand[PROTO_MAX_SLOTS], n;
    stage_send_result_t r = stage_candidates(st, &job->msg, cand, &n);
    if (r != SEND_OK)
        return r;
    bool result = stage_is_result(&job->msg);

    proto_msg_t out = {.type = PROTO_MSG_JOB};
    out.u.job = job->msg;
    out.u.job.n_route = job->msg.n_route - 1;
    memmove(out.u.job.route, job->msg.route + 1, sizeof out.u.job.route[0] * out.u.job.n_route);

    for (uint32_t k = 0; k < n; k++) {
        const proto_roster_entry_t *e = &st->roster.entries[cand[(st->rr[stage_index] + k) % n]];
        void *sock = stage_push_socket(st, e->slot, e->stage, e->replica, result);
        if (!sock)
            continue;
        out.u.job.to_gen = e->gen;
        if (stage_hand_over_all(st, &out.u.job, st->gen, e->gen) != 0)
            return SEND_BROKEN;
        if (stage_send_msg(sock, &out, ZMQ_DONTWAIT) == 0) {
            if (!result) /* a result has one candidate: leave the work cursor alone */
                st->rr[stage_index] = (st->rr[stage_index] + k + 1) % n;
            return SEND_OK;
        }
        /* Full or gone: take the blocks back and try the next replica. */
        stage_hand_over_all(st, &out.u.job, e->gen, st->gen);
    }
    return SEND_BUSY;
}

static bool stage_is_origin_of(const stage_t *st, const proto_job_t *msg)
{
    return msg->origin_slot == st->slot && msg->origin_gen == st->gen &&
           strcmp(msg->origin, st->name) == 0;
}

static void stage_fail_to_origin(stage_t *st, stage_job_t *job, int code, const char *msg);

/* A job that can never reach its next step: the origin hears of it (a result or a failure
 * that cannot reach its origin has nobody left to tell). */
static void stage_job_broken(stage_t *st, stage_job_t *job)
{
    if (job->msg.error == 0 && !stage_is_result(&job->msg) &&
        config_find_stage(&st->config, job->msg.origin)) {
        char why[PROTO_ERROR_MAX];
        snprintf(why, sizeof why, "stage %s cannot take it (down, failed or lost a tensor)",
                 job->msg.route[0]);
        stage_fail_to_origin(st, job, 503, why);
        return;
    }
    st->stats.jobs_dropped++;
    log_debug("dropping job %llu: %s %s is gone", (unsigned long long)job->msg.id,
              stage_is_result(&job->msg) ? "its origin" : "its next step", job->msg.route[0]);
    stage_job_finish(st, job);
}

/* Sends now or holds the job until a next replica has room (keeping the order of jobs already
 * held); the job belongs to the skeleton from here. */
static void stage_send_or_hold(stage_t *st, stage_job_t *job)
{
    if (st->pending.head) {
        stage_queue_push(&st->pending, job);
        return;
    }
    switch (stage_try_send(st, job)) {
    case SEND_OK: stage_job_free(st, job); break;
    case SEND_BUSY: stage_queue_push(&st->pending, job); break;
    case SEND_BROKEN: stage_job_broken(st, job); break;
    }
}

/* A kept job comes back to the skeleton. */
static void stage_unkeep(stage_t *st, stage_job_t *job)
{
    if (job->kept) {
        job->kept = false;
        st->n_kept--;
    }
}

void stage_job_forward(stage_t *st, stage_job_t *job)
{
    /* a job the stage kept (a worker computed it) is done now: counted as the callback's
     * STAGE_JOB_FORWARD is, so heartbeats and the restart throttle see the stage's work */
    if (job->kept)
        st->stats.jobs_done++;
    stage_unkeep(st, job);
    if (job->msg.n_route == 0)
        stage_job_finish(st, job);
    else
        stage_send_or_hold(st, job);
}

bool stage_can_send(const stage_t *st) { return st->pending.head == NULL; }

static void stage_fail_to_origin(stage_t *st, stage_job_t *job, int code, const char *msg)
{
    stage_release_tensors(st, job);
    job->msg.error = code;
    /* msg may be job->msg.error_msg itself (a callback's STAGE_JOB_FAILED): snprintf with
     * overlapping buffers is undefined (glibc empties it), so copy through a local. */
    char text[PROTO_ERROR_MAX];
    snprintf(text, sizeof text, "%s", msg);
    memcpy(job->msg.error_msg, text, sizeof text);
    job->msg.params = NULL;
    job->msg.params_len = 0;
    job->msg.n_route = 1;
    snprintf(job->msg.route[0], sizeof job->msg.route[0], "%s", job->msg.origin);
    st->stats.jobs_failed++;
    if (stage_is_origin_of(st, &job->msg)) {
        /* Our own job: the loop hands it to our job callback, never from inside a callback
         * that is still running (tick, or the job callback itself). */
        job->msg.n_route = 0;
        stage_queue_push(&st->local, job);
        return;
    }
    stage_send_or_hold(st, job);
}

void stage_job_fail(stage_t *st, stage_job_t *job, int code, const char *msg)
{
    stage_unkeep(st, job);
    stage_fail_to_origin(st, job, code, msg);
}

static void stage_flush_pending(stage_t *st)
{
    while (st->pending.head) {
        stage_send_result_t r = stage_try_send(st, st->pending.head);
        if (r == SEND_BUSY)
            return;
        stage_job_t *job = stage_queue_pop(&st->pending);
        if (r == SEND_OK)
            stage_job_free(st, job);
        else
            stage_job_broken(st, job); /* may hold it again, at the tail, as a failure */
    }
}

/* Our own failed jobs, delivered to the job callback from the loop. */
static void stage_deliver_local(stage_t *st)
{
    /* Only what is queued now: a callback that fails again (a retry into a failed stage)
     * queues for the next turn, so the loop keeps turning. */
    stage_queue_t now = st->local;
    st->local = (stage_queue_t){0};
    stage_job_t *job;
    while ((job = stage_queue_pop(&now)) != NULL) {
        if (st->ops->job(st, st->state, job) == STAGE_JOB_KEPT) {
            job->kept = true;
            st->n_kept++;
        } else {
            stage_job_finish(st, job);
        }
    }
}

/* ---- receiving ---------------------------------------------------------------------------- */

static void stage_handle_job(stage_t *st, void *frame, stage_job_t *job, bool result)
{
    job->frame = frame;
    if (job->msg.to_gen != st->gen) {
        /* Meant for a predecessor of this replica: its blocks went back to their owners when
         * that process died, so touch none. A job's origin hears of it at once; a result
         * belongs to a client the predecessor held, and nobody is left to tell. */
        st->stats.jobs_dropped++;
        log_debug("job %llu was sent to generation %u", (unsigned long long)job->msg.id,
                  job->msg.to_gen);
        job->msg.n_tensors = 0;
        if (result)
            stage_job_free(st, job);
        else
            stage_fail_to_origin(st, job, 503, "sent to a replica that has since restarted");
        return;
    }
    for (uint32_t i = 0; i < job->msg.n_tensors; i++) {
        if (!stage_tensor_data(st, job, i)) {
            log_warn("job %llu: tensor %u (pool %u gen %u offset %llu) is not held by this "
                     "process", (unsigned long long)job->msg.id, i, job->msg.tensors[i].pool,
                     job->msg.tensors[i].gen, (unsigned long long)job->msg.tensors[i].offset);
            st->stats.jobs_dropped++;
            stage_fail_to_origin(st, job, 503, "a tensor of this job was lost");
            return;
        }
    }
    for (uint32_t i = 0; i < job->msg.n_tensors; i++) {
        const proto_tensor_ref_t *ref = &job->msg.tensors[i];
        if (!(st->pool && ref->pool == st->slot && ref->gen == st->gen))
            pool_cache_hold(st->pools, ref->pool, ref->gen);
    }
    job->holds = true;
    int64_t t0 = stage_now_us();
    stage_job_result_t r = st->ops->job(st, st->state, job);
    st->stats.busy_us += (uint64_t)(stage_now_us() - t0);
    switch (r) {
    case STAGE_JOB_FORWARD:
        st->stats.jobs_done++;
        stage_job_forward(st, job);
        break;
    case STAGE_JOB_KEPT:
        job->kept = true;
        st->n_kept++;
        break;
    case STAGE_JOB_FAILED:
    default:
        stage_fail_to_origin(st, job, job->msg.error ? job->msg.error : 500,
                             job->msg.error_msg[0] ? job->msg.error_msg : "stage failed");
        break;
    }
}

/* Receives one frame from sock into a heap buffer; NULL if none or too large. */
static void *stage_recv_frame(void *sock, size_t *size)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return NULL;
    }
    size_t n = zmq_msg_size(&m);
    void *buf = NULL;
    if (n <= PROTO_MAX_FRAME && (buf = malloc(n ? n : 1)) != NULL)
        memcpy(buf, zmq_msg_data(&m), n);
    else
        log_warn("dropping a frame of %zu bytes", n);
    /* Skip further parts of a multi-part message: the protocol has one frame per message. */
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0)
            break;
    }
    zmq_msg_close(&m);
    *size = n;
    if (!buf)
        *size = 0;
    return buf;
}

/* A process in this state exists (down and failed slots have none). */
static bool stage_state_alive(uint8_t state)
{
    return state == PROTO_SLOT_STARTING || state == PROTO_SLOT_UP ||
           state == PROTO_SLOT_DRAINING || state == PROTO_SLOT_RETIRING;
}

static bool stage_gen_is_dead(uint32_t holder, void *ctx)
{
    const stage_t *st = ctx;
    if (holder == st->gen || holder > st->max_gen)
        return false; /* ourselves, or a process spawned after the roster we know */
    for (uint32_t i = 0; i < st->roster.n; i++)
        if (st->roster.entries[i].gen == holder && stage_state_alive(st->roster.entries[i].state))
            return false;
    return true;
}

static void stage_reclaim(stage_t *st)
{
    if (!st->pool || !st->have_roster)
        return;
    size_t n = pool_reclaim(st->pool, stage_gen_is_dead, st);
    if (n)
        log_info("reclaimed %zu block%s held by stopped processes", n, n == 1 ? "" : "s");
}

static void stage_begin_drain(stage_t *st)
{
    if (st->draining)
        return;
    log_info("draining");
    st->draining = true;
    stage_send_heartbeat(st); /* report inflight now, not at the next beat */
}

static void stage_handle_roster(stage_t *st, const proto_roster_t *roster)
{
    if (st->have_roster && roster->seq <= st->roster.seq)
        return;
    st->roster = *roster;
    st->have_roster = true;
    for (uint32_t i = 0; i < roster->n; i++) {
        const proto_roster_entry_t *e = &roster->entries[i];
        if (e->state != PROTO_SLOT_RETIRING || stage_gen_retired(st, e->gen))
            continue;
        const uint32_t cap = sizeof st->retired / sizeof st->retired[0];
        st->retired[st->n_retired % cap] = e->gen; /* a ring: the oldest are forgotten */
        st->n_retired++;
    }
    for (uint32_t i = 0; i < roster->n; i++) {
        const proto_roster_entry_t *e = &roster->entries[i];
        if (e->gen > st->max_gen)
            st->max_gen = e->gen;
        if (e->slot == st->slot) {
            if (e->state == PROTO_SLOT_DRAINING)
                stage_begin_drain(st); /* in case the DRAIN itself came before our HELLO */
            if (e->state == PROTO_SLOT_RETIRING && !st->retiring) {
                log_info("retiring: finishing held jobs before a restart");
                st->retiring = true;
                stage_begin_drain(st);
            }
        } else {
            /* Pools of owners that restarted or stopped close once no job points into them. */
            pool_cache_forget_stale(st->pools, e->slot, stage_state_alive(e->state) ? e->gen : 0);
        }
    }
    /* Connect to every replica now: ZeroMQ connects in the background, and a first send on a
     * connection still being made would find no peer (ZMQ_IMMEDIATE) and have to wait. */
    for (uint32_t i = 0; i < roster->n; i++) {
        const proto_roster_entry_t *e = &roster->entries[i];
        stage_push_socket(st, e->slot, e->stage, e->replica, false);
        stage_push_socket(st, e->slot, e->stage, e->replica, true);
    }
    stage_reclaim(st);
}

static void stage_handle_control(stage_t *st)
{
    size_t size;
    void *frame;
    while ((frame = stage_recv_frame(st->control, &size)) != NULL) {
        proto_msg_t *msg = malloc(sizeof *msg);
        char err[256];
        if (!msg) {
            free(frame);
            return;
        }
        if (proto_decode(frame, size, msg, err, sizeof err) != 0) {
            log_warn("dropping a control message: %s", err);
        } else if (msg->type == PROTO_MSG_ROSTER) {
            stage_handle_roster(st, &msg->u.roster);
        } else if (msg->type == PROTO_MSG_DRAIN) {
            stage_begin_drain(st);
        } else if (msg->type == PROTO_MSG_SHUTDOWN) {
            st->running = false;
        } else {
            log_warn("dropping an unexpected %s message", proto_msg_type_name(msg->type));
        }
        free(msg);
        free(frame);
    }
}

/* Receives and decodes one job from sock. NULL when there is none; *more says whether to
 * keep reading (a malformed message is dropped and counted, and reading goes on). */
static stage_job_t *stage_receive_job(stage_t *st, void *sock, bool *more)
{
    size_t size;
    *more = true;
    void *frame = stage_recv_frame(sock, &size);
    if (!frame) {
        *more = false;
        return NULL;
    }
    stage_job_t *job = calloc(1, sizeof *job);
    proto_msg_t *msg = malloc(sizeof *msg);
    char err[256];
    if (!job || !msg) {
        log_error("out of memory receiving a job");
    } else if (proto_decode(frame, size, msg, err, sizeof err) != 0) {
        log_warn("dropping a message on the job socket: %s", err);
    } else if (msg->type != PROTO_MSG_JOB) {
        log_warn("dropping a %s message on the job socket", proto_msg_type_name(msg->type));
    } else {
        job->msg = msg->u.job;
        job->frame = frame;
        free(msg);
        return job;
    }
    st->stats.jobs_dropped++;
    free(job);
    free(msg);
    free(frame);
    return NULL;
}

static void stage_handle_jobs(stage_t *st, void *sock, bool results)
{
    /* Bounded per turn, in count and in time, so that control messages, heartbeats and the
     * tick are never starved by a queue of jobs. New work waits while sends wait for room
     * downstream (the backpressure) and while the stage paused its intake, which a job
     * callback of this very loop may have done; results never wait. */
    for (int i = 0; i < 64 && st->running &&
                    (results || (!st->pending.head && !st->intake_paused));
         i++) {
        if (i > 0 && stage_now_ms() >= st->next_heartbeat_ms)
            return;
        bool more;
        stage_job_t *job = stage_receive_job(st, sock, &more);
        if (job) {
            st->last_job_ms = stage_now_ms();
            stage_handle_job(st, job->frame, job, results);
        }
        else if (!more)
            return;
    }
}

/* ---- start-up ------------------------------------------------------------------------------ */

static int stage_parse_u32(const char *text, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || *text == '\0' || *end != '\0' || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static void stage_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s --config FILE --stage NAME --replica N --slot N --gen N --runtime-dir DIR"
            " [-- STAGE-ARGS]\n"
            "Stage programs are started by diffusiond, which passes these arguments.\n",
            prog);
}

/* Parses the supervisor's arguments; *rest_index is where the stage's own arguments begin. */
static int stage_parse_args(stage_t *st, int argc, char **argv, int *rest_index)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},  {"stage", required_argument, NULL, 's'},
        {"replica", required_argument, NULL, 'r'}, {"slot", required_argument, NULL, 'S'},
        {"gen", required_argument, NULL, 'g'},     {"runtime-dir", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    bool have_gen = false, have_slot = false, have_replica = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 'c': snprintf(st->config_path, sizeof st->config_path, "%s", optarg); break;
        case 's': snprintf(st->name, sizeof st->name, "%s", optarg); break;
        case 'd': snprintf(st->runtime_dir, sizeof st->runtime_dir, "%s", optarg); break;
        case 'r': if (stage_parse_u32(optarg, &st->replica) != 0) return -1; have_replica = true; break;
        case 'S': if (stage_parse_u32(optarg, &st->slot) != 0) return -1; have_slot = true; break;
        case 'g': if (stage_parse_u32(optarg, &st->gen) != 0) return -1; have_gen = true; break;
        default: return -1;
        }
    }
    if (!st->config_path[0] || !st->name[0] || !st->runtime_dir[0] || !have_gen || !have_slot ||
        !have_replica || st->gen == 0 || st->slot >= PROTO_MAX_SLOTS)
        return -1;
    *rest_index = optind;
    return 0;
}

static int stage_open_sockets(stage_t *st)
{
    char ep[STAGE_ENDPOINT_MAX];
    int zero = 0, hwm = 10000;
    st->zctx = zmq_ctx_new();
    st->control = st->zctx ? zmq_socket(st->zctx, ZMQ_DEALER) : NULL;
    if (!st->control)
        return -1;
    zmq_setsockopt(st->control, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(st->control, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(st->control, ZMQ_RCVHWM, &hwm, sizeof hwm);
    snprintf(ep, sizeof ep, "ipc://%s/control", st->runtime_dir);
    if (zmq_connect(st->control, ep) != 0) {
        log_error("cannot connect to the supervisor at %s: %s", ep, zmq_strerror(errno));
        return -1;
    }
    return 0;
}

static void *stage_bind(stage_t *st, const char *suffix, int hwm)
{
    char ep[STAGE_ENDPOINT_MAX];
    int zero = 0;
    void *sock = zmq_socket(st->zctx, ZMQ_PULL);
    if (!sock)
        return NULL;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    snprintf(ep, sizeof ep, "ipc://%s/%s.%u%s", st->runtime_dir, st->name, st->replica, suffix);
    if (zmq_bind(sock, ep) != 0) {
        log_error("cannot bind %s: %s", ep, zmq_strerror(errno));
        zmq_close(sock);
        return NULL;
    }
    return sock;
}

/* On the way out, nothing is dropped in silence: every job this process still holds or has
 * queued goes back to its origin as a failure, which the origin may retry elsewhere. */
static void stage_hand_back_all(stage_t *st)
{
    stage_job_t *job;
    if (!st->have_roster) { /* nowhere to send anything */
        while ((job = stage_queue_pop(&st->pending)) != NULL)
            stage_job_finish(st, job);
        while ((job = stage_queue_pop(&st->local)) != NULL)
            stage_job_finish(st, job);
        return;
    }
    stage_queue_t held = st->pending;
    st->pending = (stage_queue_t){0};
    bool more = st->jobs_in != NULL;
    while (more) {
        if ((job = stage_receive_job(st, st->jobs_in, &more)) == NULL)
            continue;
        if (job->msg.to_gen != st->gen) /* meant for a predecessor: its blocks are not ours */
            job->msg.n_tensors = 0;
        stage_queue_push(&held, job);
    }
    while ((job = stage_queue_pop(&held)) != NULL) {
        if (job->msg.error || stage_is_result(&job->msg))
            stage_queue_push(&st->pending, job); /* on its way to an origin already */
        else
            stage_fail_to_origin(st, job, 503, "the stage that held it stopped");
    }
    /* Failures that found no room wait in pending: they get a bounded time to go out. */
    for (int64_t deadline = stage_now_ms() + 500; st->pending.head && stage_now_ms() < deadline;) {
        stage_flush_pending(st);
        if (st->pending.head)
            usleep(2000);
    }
    while ((job = stage_queue_pop(&st->pending)) != NULL)
        stage_job_finish(st, job);
    while ((job = stage_queue_pop(&st->local)) != NULL)
        stage_job_finish(st, job);
}

static void stage_close(stage_t *st)
{
    stage_hand_back_all(st);
    /* Let the failures just sent reach their origins, for a bounded time. */
    int linger = 500;
    for (int i = 0; i < PROTO_MAX_SLOTS; i++) {
        if (st->push[i]) {
            zmq_setsockopt(st->push[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_close(st->push[i]);
        }
        if (st->push_results[i]) {
            zmq_setsockopt(st->push_results[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_close(st->push_results[i]);
        }
    }
    if (st->jobs_in)
        zmq_close(st->jobs_in);
    if (st->results_in)
        zmq_close(st->results_in);
    if (st->control)
        zmq_close(st->control);
    if (st->zctx)
        zmq_ctx_term(st->zctx);
    pool_cache_free(&st->pools);
    pool_close(&st->pool);
}

/* A retiring stage exits once it holds nothing and no new job has come for a while (senders
 * stop sending when the roster says retiring; what they sent before still arrives). */
static bool stage_retired(stage_t *st)
{
    if (!st->retiring || st->pending.head || st->local.head || st->n_kept > 0)
        return false;
    if (st->ops->inflight && st->ops->inflight(st, st->state) > 0)
        return false;
    int64_t quiet = 2 * (int64_t)st->config.server.heartbeat_ms;
    return stage_now_ms() - st->last_job_ms > (quiet > 200 ? quiet : 200);
}

static void stage_drain_signal_pipe(void)
{
    char buf[64];
    while (read(stage_signal_pipe[0], buf, sizeof buf) == (ssize_t)sizeof buf)
        ;
}

/* The stage's own loop waits (ops->wait) on the signal pipe and the sockets' ZMQ_FDs.
 * ZMQ_FD only says that a socket's state may have changed, and it is asking ZMQ_EVENTS that
 * re-arms it: so every socket is asked first, and the wait blocks only when none has a
 * message (one that comes after the question makes its fd readable); otherwise the stage's
 * loop still gets its turn, without blocking. The first n_sockets of control, results_in,
 * jobs_in are read. */
static void stage_wait_in_stage(stage_t *st, int n_sockets, int timeout_ms)
{
    void *const sockets[3] = {st->control, st->results_in, st->jobs_in};
    int fds[4];
    int n_fds = 0;
    fds[n_fds++] = stage_signal_pipe[0];
    for (int i = 0; i < n_sockets; i++) {
        int events = 0, fd = -1;
        size_t len = sizeof events;
        if (zmq_getsockopt(sockets[i], ZMQ_EVENTS, &events, &len) != 0)
            continue; /* a socket in trouble: the wait's timeout bounds the turn */
        if (events & ZMQ_POLLIN)
            timeout_ms = 0; /* a message waits: handle it right after this turn */
        len = sizeof fd;
        if (zmq_getsockopt(sockets[i], ZMQ_FD, &fd, &len) == 0)
            fds[n_fds++] = fd;
    }
    st->ops->wait(st, st->state, fds, n_fds, timeout_ms);
}

static void stage_loop(stage_t *st)
{
    int tick_ms = st->ops->tick_ms > 0 ? st->ops->tick_ms : 100;
    int64_t next_tick = 0;
    while (st->running) {
        if (stage_stop_signal) {
            log_info("stopping on signal %d", (int)stage_stop_signal);
            break;
        }
        if (getppid() != st->parent) {
            log_warn("the supervisor is gone: exiting");
            break;
        }
        /* Control first: a DRAIN that came with our READY must stop the very first tick. */
        stage_handle_control(st);
        int64_t now = stage_now_ms();
        if (now >= st->next_heartbeat_ms) {
            stage_reclaim(st); /* also catches blocks handed to a process after it died */
            stage_send_heartbeat(st);
            st->next_heartbeat_ms = now + st->config.server.heartbeat_ms;
        }
        if (st->ops->tick && (now >= next_tick || atomic_exchange(&st->wake_tick, false))) {
            st->ops->tick(st, st->state);
            next_tick = now + tick_ms;
        }
        stage_flush_pending(st);
        stage_deliver_local(st);
        if (stage_retired(st)) {
            log_info("retired");
            break;
        }

        zmq_pollitem_t items[4] = {
            {.socket = st->control, .events = ZMQ_POLLIN},
            {.fd = stage_signal_pipe[0], .events = ZMQ_POLLIN},
            {.socket = st->results_in, .events = ZMQ_POLLIN},
            {.socket = st->jobs_in, .events = ZMQ_POLLIN},
        };
        /* While jobs wait for room downstream, take no new work: that is the backpressure.
         * Results still come in: they free the pipeline rather than fill it. */
        int n_items = st->pending.head || st->intake_paused ? 3 : 4;
        int64_t wait = st->next_heartbeat_ms - stage_now_ms();
        if (st->ops->tick && next_tick - stage_now_ms() < wait)
            wait = next_tick - stage_now_ms();
        if (st->pending.head && wait > 5)
            wait = 5;
        if (wait < 0)
            wait = 0;
        if (st->ops->wait) {
            stage_wait_in_stage(st, n_items - 1, (int)wait);
            stage_drain_signal_pipe();
        } else {
            if (zmq_poll(items, n_items, (long)wait) < 0 && errno != EINTR) {
                log_error("poll: %s", zmq_strerror(errno));
                break;
            }
            if (items[1].revents & ZMQ_POLLIN)
                stage_drain_signal_pipe();
        }
        stage_handle_control(st);
        stage_handle_jobs(st, st->results_in, true);
        if (n_items == 4)
            stage_handle_jobs(st, st->jobs_in, false);
    }
}

int stage_main(int argc, char **argv, const stage_ops_t *ops)
{
    static stage_t stage; /* one per process; static keeps the large tables off the stack */
    stage_t *st = &stage;
    memset(st, 0, sizeof *st);
    st->ops = ops;
    st->parent = getppid();
    log_init(argv[0], LOG_LEVEL_INFO);

    int rest = argc;
    if (stage_parse_args(st, argc, argv, &rest) != 0) {
        stage_usage(argv[0]);
        return STAGE_EXIT_CONFIG;
    }
    char component[64];
    snprintf(component, sizeof component, "%.31s.%u", st->name, st->replica);
    log_init(component, LOG_LEVEL_INFO);

    char err[CONFIG_ERROR_MAX];
    if (config_load(&st->config, st->config_path, err, sizeof err) != 0) {
        log_error("bad config: %s", err);
        return STAGE_EXIT_CONFIG;
    }
    log_set_level((log_level_t)st->config.server.log_level);
    st->section = config_find_stage(&st->config, st->name);
    if (!st->section) {
        log_error("bad config: %s has no [stage.%s] section", st->config_path, st->name);
        return STAGE_EXIT_CONFIG;
    }

    /* The supervisor sets PR_SET_PDEATHSIG before exec; setting it again here covers a stage
     * started by other means, and the getppid() check in the loop covers the race before it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (pipe2(stage_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        log_error("pipe: %s", strerror(errno));
        return STAGE_EXIT_ERROR;
    }
    struct sigaction sa = {.sa_handler = stage_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN); /* reloads are the supervisor's business */

    int exit_code = STAGE_EXIT_ERROR;
    st->pools = pool_cache_new(st->config.server.instance);
    if (!st->pools || stage_open_sockets(st) != 0)
        goto out;

    proto_msg_t hello = {.type = PROTO_MSG_HELLO};
    snprintf(hello.u.hello.stage, sizeof hello.u.hello.stage, "%.31s", st->name);
    hello.u.hello.slot = st->slot;
    hello.u.hello.gen = st->gen;
    hello.u.hello.pid = (int32_t)getpid();
    stage_send_control(st, &hello);

    if (st->section->pool_size > 0) {
        int device = st->section->device.cuda ? st->section->device.index : POOL_DEVICE_HOST;
        st->pool = pool_create(st->config.server.instance, st->slot, st->gen,
                               st->section->pool_size, device, err, sizeof err);
        if (!st->pool) {
            log_error("cannot create the tensor pool: %s", err);
            goto out;
        }
    }
    if (ops->init) {
        int rc = ops->init(st, argc - rest, argv + rest, &st->state);
        if (rc != 0) {
            exit_code = rc;
            goto out;
        }
    }
    /* The results socket's queue is deep: results must never push back on the pipeline. */
    st->results_in = stage_bind(st, ".results", 10000);
    st->jobs_in = stage_bind(st, "", st->section->queue_depth);
    if (!st->results_in || !st->jobs_in) {
        if (ops->fini) /* init made what fini removes (the ingress's cancel table, say) */
            ops->fini(st, st->state);
        goto out;
    }

    proto_msg_t ready = {.type = PROTO_MSG_READY};
    ready.u.ready.slot = st->slot;
    ready.u.ready.gen = st->gen;
    stage_send_control(st, &ready);
    log_debug("ready (generation %u)", st->gen);

    st->running = true;
    stage_loop(st);
    exit_code = STAGE_EXIT_OK;
    if (ops->fini)
        ops->fini(st, st->state);
    if (st->n_kept > 0)
        log_error("fini left %u kept job%s: their origins are not told (their blocks return "
                  "to their owners when this process is gone)", st->n_kept,
                  st->n_kept == 1 ? "" : "s");
out:
    stage_close(st);
    return exit_code;
}
