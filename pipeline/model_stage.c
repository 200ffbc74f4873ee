/* model_stage: a generation stage's job flow around one worker thread (see the header). */
#include "pipeline/model_stage.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/log.h"
#include "ipc/pool.h"
#include "nn/ops.h"
#include "pipeline/cancel.h"

/* A FIFO of tasks. */
typedef struct {
    gen_task_t *head, *tail;
    uint32_t n;
} task_queue_t;

static void queue_push(task_queue_t *q, gen_task_t *t)
{
    t->next = NULL;
    if (q->tail)
        q->tail->next = t;
    else
        q->head = t;
    q->tail = t;
    q->n++;
}

static void queue_push_front(task_queue_t *q, gen_task_t *t)
{
    t->next = q->head;
    q->head = t;
    if (!q->tail)
        q->tail = t;
    q->n++;
}

static gen_task_t *queue_pop(task_queue_t *q)
{
    gen_task_t *t = q->head;
    if (t) {
        q->head = t->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        t->next = NULL;
    }
    return t;
}

typedef struct model_stage model_stage_t;

struct model_stage {
    model_stage_spec_t spec;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    task_queue_t todo;        /* lock: for the worker */
    task_queue_t done;        /* lock: computed (or failed), for the loop */
    bool quit;                /* lock */
    atomic_bool abort;        /* the stage is stopping: every task counts as cancelled */
    gen_cancel_t *cancel;     /* worker thread only: the origins' cancel tables */
    stage_t *st;              /* for stage_wake, the one skeleton call the worker makes */
    task_queue_t waiting;     /* loop thread only: computed, waiting for room in the pool */
    uint32_t held;            /* loop thread only: jobs kept (queued, running, done, waiting) */
};

static void task_free(gen_task_t *t)
{
    for (uint32_t i = 0; i < t->n_out; i++)
        free(t->out[i].data);
    gen_params_free(&t->params);
    free(t);
}

static bool task_should_stop(void *task) { return gen_task_cancelled(task); }

/* The stage's compute, with the models asking between their blocks whether the task was
 * cancelled. */
static void task_compute(model_stage_t *ms, gen_task_t *t)
{
    nn_ctx_t *ctx = ms->spec.ctx;
    if (ctx) {
        ctx->stop = task_should_stop;
        ctx->stop_user = t;
    }
    int rc = ms->spec.compute(ms->spec.model, t);
    if (ctx) {
        ctx->stop = NULL;
        ctx->stop_user = NULL;
    }
    if (rc == 0)
        return;
    if (t->stopped) /* part-way, because it was asked to: the answer says why */
        gen_task_fail(t, atomic_load(&ms->abort) ? 503 : 499, "%s: %s", ms->spec.what,
                      atomic_load(&ms->abort) ? "the stage is stopping" : "cancelled");
    else if (t->code == 0)
        gen_task_fail(t, 500, "%s failed", ms->spec.what);
}

static void *worker_main(void *arg)
{
    model_stage_t *ms = arg;
    pthread_mutex_lock(&ms->lock);
    for (;;) {
        while (!ms->quit && !ms->todo.head)
            pthread_cond_wait(&ms->wake, &ms->lock);
        if (ms->quit)
            break;
        gen_task_t *t = queue_pop(&ms->todo);
        pthread_mutex_unlock(&ms->lock);
        int64_t t0 = stage_now_us();
        if (atomic_load(&ms->abort))
            gen_task_fail(t, 503, "%s: the stage is stopping", ms->spec.what);
        else if (gen_task_cancelled(t))
            gen_task_fail(t, 499, "%s: cancelled before it started", ms->spec.what);
        else {
            log_debug("%s: job %llu computing", ms->spec.what, (unsigned long long)t->id);
            task_compute(ms, t);
        }
        t->busy_us = (uint64_t)(stage_now_us() - t0);
        pthread_mutex_lock(&ms->lock);
        queue_push(&ms->done, t);
        stage_wake(ms->st); /* forward it now, not at the next tick */
    }
    pthread_mutex_unlock(&ms->lock);
    return NULL;
}

bool gen_task_cancelled(gen_task_t *task)
{
    model_stage_t *ms = task->stage;
    if (atomic_load(&ms->abort) ||
        (ms->cancel &&
         gen_cancel_check(ms->cancel, task->origin_slot, task->origin_gen, task->id)))
        task->stopped = true;
    return task->stopped;
}

/* Starts the worker thread; st gives the instance whose cancel tables the worker reads.
 * NULL when it cannot (out of memory, no thread). */
static model_stage_t *model_stage_start(const model_stage_spec_t *spec, stage_t *st)
{
    model_stage_t *ms = calloc(1, sizeof *ms);
    if (!ms)
        return NULL;
    ms->spec = *spec;
    ms->st = st;
    /* without the tables (no origin made one yet, or out of memory) nothing is cancelled:
     * work is never stopped by mistake */
    ms->cancel = gen_cancel_new(stage_config(st)->server.instance);
    atomic_init(&ms->abort, false);
    pthread_mutex_init(&ms->lock, NULL);
    pthread_cond_init(&ms->wake, NULL);
    if (pthread_create(&ms->thread, NULL, worker_main, ms) != 0) {
        gen_cancel_free(&ms->cancel);
        pthread_mutex_destroy(&ms->lock);
        pthread_cond_destroy(&ms->wake);
        free(ms);
        return NULL;
    }
    return ms;
}

void *gen_output_alloc(gen_task_t *task, int dtype, int ndim, const int64_t *shape)
{
    if (task->n_out >= GEN_TASK_MAX_OUT || ndim < 1 || ndim > PROTO_MAX_DIMS)
        return NULL;
    size_t n = proto_dtype_size(dtype);
    if (n == 0) /* not a dtype the pools carry */
        return NULL;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && n > SIZE_MAX / (size_t)shape[i]))
            return NULL;
        n *= (size_t)shape[i];
    }
    void *data = malloc(n ? n : 1);
    if (!data)
        return NULL;
    gen_output_t *o = &task->out[task->n_out++];
    o->dtype = dtype;
    o->ndim = ndim;
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
    o->data = data;
    return data;
}

int gen_task_fail(gen_task_t *task, int code, const char *fmt, ...)
{
    task->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(task->err, sizeof task->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* The pool bytes a tensor takes: whole pages, and one for an empty tensor, which still has a
 * block (stage_tensor_alloc). */
static uint64_t pool_block_bytes(uint64_t bytes)
{
    uint64_t pages = bytes == 0 ? 1 : (bytes + POOL_DEFAULT_PAGE - 1) / POOL_DEFAULT_PAGE;
    return pages * POOL_DEFAULT_PAGE;
}

/* The pool bytes the task's outputs take together. Outputs come from gen_output_alloc, which
 * checked that their sizes do not overflow. */
static uint64_t task_pool_bytes(const gen_task_t *t)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < t->n_out; i++) {
        uint64_t bytes = proto_dtype_size(t->out[i].dtype);
        for (int d = 0; d < t->out[i].ndim; d++)
            bytes *= (uint64_t)t->out[i].shape[d];
        total += pool_block_bytes(bytes);
    }
    return total;
}

/* What a model stage's section may ask: 0, or STAGE_EXIT_CONFIG (logged) for device =
 * cuda:N, which the models cannot run on yet. batch_size and batch_wait_ms are accepted with
 * a warning that they change nothing: the stages compute one job at a time. */
static int model_stage_check_section(const stage_t *st)
{
    const config_stage_t *sec = stage_section(st);
    if (sec->device.cuda) {
        log_error("device = cuda:%d: the %s stage's models run on the CPU only (no CUDA "
                  "backend yet); set device = cpu", sec->device.index, stage_name(st));
        return STAGE_EXIT_CONFIG;
    }
    if (sec->batch_size > 1 || sec->batch_wait_ms > 0)
        log_warn("batch_size = %d, batch_wait_ms = %d change nothing: the %s stage computes "
                 "one job at a time (on the CPU a batch would run image by image anyway)",
                 sec->batch_size, sec->batch_wait_ms, stage_name(st));
    return 0;
}

int model_stage_check_pool(const stage_t *st, const uint64_t *bytes, int n)
{
    uint64_t need = 0;
    for (int i = 0; i < n; i++)
        need += pool_block_bytes(bytes[i]);
    if (need <= stage_pool_capacity(st))
        return 0;
    log_error("pool_size = %llu bytes cannot take the outputs of the largest job the request "
              "limits allow (%llu bytes with http_pixels_max = %lld): raise the %s stage's "
              "pool_size", (unsigned long long)stage_pool_capacity(st),
              (unsigned long long)need, (long long)stage_config(st)->server.http_pixels_max,
              stage_name(st));
    return STAGE_EXIT_CONFIG;
}

int model_stage_folder(const stage_t *st, const char *component, char *out, size_t outlen)
{
    const char *root = stage_config(st)->model.path;
    if (!root[0]) {
        log_error("[model] path is empty: the %s stage needs a model folder", stage_name(st));
        return -1;
    }
    int n = snprintf(out, outlen, "%s/%s", root, component);
    if (n > 0 && (size_t)n < outlen)
        return 0;
    log_error("[model] path %s/%s is too long", root, component);
    return -1;
}

/* One job computing and one queued behind it are enough to keep the worker busy: more would
 * wait here, out of reach of the other replicas and of ZeroMQ's backpressure (queue_depth),
 * and be lost with this process if it died. */
#define MODEL_STAGE_HOLD 2

static void model_stage_throttle(model_stage_t *ms, stage_t *st)
{
    stage_pause_intake(st, ms->held >= MODEL_STAGE_HOLD);
}

static stage_job_result_t model_stage_job(model_stage_t *ms, stage_t *st, stage_job_t *job)
{
    char err[PROTO_ERROR_MAX];
    if (job->msg.n_tensors < ms->spec.min_inputs || job->msg.n_tensors > ms->spec.max_inputs) {
        snprintf(job->msg.error_msg, sizeof job->msg.error_msg,
                 "%s: a job with %u tensors, expected %u..%u", ms->spec.what,
                 job->msg.n_tensors, ms->spec.min_inputs, ms->spec.max_inputs);
        job->msg.error = 500;
        return STAGE_JOB_FAILED;
    }
    gen_task_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(job->msg.error_msg, sizeof job->msg.error_msg, "%s: out of memory",
                 ms->spec.what);
        job->msg.error = 503;
        return STAGE_JOB_FAILED;
    }
    if (gen_params_decode(job->msg.params, job->msg.params_len, &t->params, err, sizeof err)) {
        free(t);
        snprintf(job->msg.error_msg, sizeof job->msg.error_msg, "%s: %.200s", ms->spec.what, err);
        job->msg.error = 400;
        return STAGE_JOB_FAILED;
    }
    t->job = job;
    t->id = job->msg.id;
    t->origin_slot = job->msg.origin_slot;
    t->origin_gen = job->msg.origin_gen;
    t->stage = ms;
    t->n_in = job->msg.n_tensors;
    for (uint32_t i = 0; i < t->n_in; i++) {
        t->in_ref[i] = job->msg.tensors[i];
        t->in[i] = stage_tensor_data(st, job, i);
    }
    pthread_mutex_lock(&ms->lock);
    queue_push(&ms->todo, t);
    pthread_cond_signal(&ms->wake);
    pthread_mutex_unlock(&ms->lock);
    ms->held++;
    log_debug("%s: job %llu taken, %u held", ms->spec.what, (unsigned long long)t->id,
              (unsigned)ms->held);
    model_stage_throttle(ms, st);
    return STAGE_JOB_KEPT;
}

/* The task's outputs into the stage's pool, replacing its inputs. 0 sent on; 1 no room yet. */
static int task_send(model_stage_t *ms, stage_t *st, gen_task_t *t)
{
    stage_job_t *job = t->job;
    proto_tensor_ref_t refs[GEN_TASK_MAX_OUT];
    void *dst[GEN_TASK_MAX_OUT];
    uint32_t made = 0;
    for (; made < t->n_out; made++) {
        gen_output_t *o = &t->out[made];
        if (stage_tensor_alloc(st, o->dtype, o->ndim, o->shape, &refs[made], &dst[made]) != 0)
            break;
    }
    if (made < t->n_out) {
        /* no room: give back what was taken and try again on a later tick */
        for (uint32_t i = 0; i < made; i++) {
            pool_t *p = stage_tensor_pool(st, &refs[i]);
            if (p)
                pool_release(p, refs[i].offset, stage_gen(st));
        }
        return 1;
    }
    for (uint32_t i = 0; i < t->n_out; i++)
        memcpy(dst[i], t->out[i].data, refs[i].bytes);
    stage_job_release_tensors(st, job);
    for (uint32_t i = 0; i < t->n_out; i++)
        job->msg.tensors[i] = refs[i];
    job->msg.n_tensors = t->n_out;
    ms->held--;
    model_stage_throttle(ms, st);
    task_free(t);
    stage_job_forward(st, job);
    return 0;
}

static void model_stage_tick(model_stage_t *ms, stage_t *st)
{
    pthread_mutex_lock(&ms->lock);
    gen_task_t *t;
    while ((t = queue_pop(&ms->done))) {
        stage_add_busy_us(st, t->busy_us);
        queue_push(&ms->waiting, t);
    }
    pthread_mutex_unlock(&ms->lock);
    while ((t = queue_pop(&ms->waiting))) {
        /* outputs that together exceed the whole pool would wait for room forever, and every
         * job behind them with them: fail the task instead */
        uint64_t need = task_pool_bytes(t);
        if (t->code == 0 && need > stage_pool_capacity(st))
            gen_task_fail(t, 500, "%s: outputs of %llu bytes do not fit the stage's pool "
                          "(pool_size %llu bytes)", ms->spec.what, (unsigned long long)need,
                          (unsigned long long)stage_pool_capacity(st));
        if (t->code == 499) /* its client left: not the stage's failure */
            log_info("%s: job %llu dropped: %s", ms->spec.what, (unsigned long long)t->id,
                     t->err);
        else if (t->code != 0)
            log_warn("%s: job %llu failed: %s", ms->spec.what, (unsigned long long)t->id,
                     t->err);
        if (t->code != 0) {
            stage_job_t *job = t->job;
            ms->held--;
            model_stage_throttle(ms, st);
            int code = t->code;
            char msg[PROTO_ERROR_MAX];
            snprintf(msg, sizeof msg, "%s", t->err);
            task_free(t);
            stage_job_fail(st, job, code, msg);
            continue;
        }
        if (task_send(ms, st, t) != 0) {
            queue_push_front(&ms->waiting, t); /* the pool is full: keep the order, retry */
            break;
        }
    }
}

static void model_stage_stop(model_stage_t *ms, stage_t *st)
{
    if (!ms)
        return;
    atomic_store(&ms->abort, true);
    pthread_mutex_lock(&ms->lock);
    ms->quit = true;
    pthread_cond_signal(&ms->wake);
    pthread_mutex_unlock(&ms->lock);
    pthread_join(ms->thread, NULL);
    /* finished tasks go on when they can; the rest go back to their origin */
    model_stage_tick(ms, st);
    task_queue_t *lists[] = {&ms->waiting, &ms->todo};
    for (size_t l = 0; l < 2; l++) {
        gen_task_t *t;
        while ((t = queue_pop(lists[l]))) {
            stage_job_t *job = t->job;
            task_free(t);
            ms->held--;
            stage_job_fail(st, job, 503, "the stage stopped before finishing it");
        }
    }
    gen_cancel_free(&ms->cancel);
    pthread_mutex_destroy(&ms->lock);
    pthread_cond_destroy(&ms->wake);
    free(ms);
}

/* ---- the skeleton's callbacks -------------------------------------------------------------- */

static const model_stage_def_t *stage_def; /* one model stage per process */

static int stage_init_cb(stage_t *st, int argc, char **argv, void **state)
{
    (void)argc;
    (void)argv;
    int rc = model_stage_check_section(st);
    model_stage_spec_t spec = {0};
    if (rc == 0)
        rc = stage_def->init(st, &spec);
    if (rc != 0)
        return rc;
    model_stage_t *ms = model_stage_start(&spec, st);
    if (!ms) {
        if (stage_def->fini)
            stage_def->fini(spec.model);
        return STAGE_EXIT_ERROR;
    }
    *state = ms;
    return 0;
}

static stage_job_result_t stage_job_cb(stage_t *st, void *state, stage_job_t *job)
{
    return model_stage_job(state, st, job);
}

static void stage_tick_cb(stage_t *st, void *state) { model_stage_tick(state, st); }

static uint32_t stage_inflight_cb(stage_t *st, void *state)
{
    (void)st;
    return ((const model_stage_t *)state)->held;
}

static void stage_fini_cb(stage_t *st, void *state)
{
    model_stage_t *ms = state;
    void *model = ms->spec.model;
    model_stage_stop(ms, st);
    if (stage_def->fini)
        stage_def->fini(model);
}

int model_stage_main(int argc, char **argv, const model_stage_def_t *def)
{
    stage_def = def;
    /* the worker wakes the loop when a task is done (stage_wake); the tick also retries
     * computed tasks that wait for room in the pool */
    static const stage_ops_t ops = {.init = stage_init_cb, .job = stage_job_cb,
                                    .tick = stage_tick_cb, .inflight = stage_inflight_cb,
                                    .fini = stage_fini_cb, .tick_ms = 5};
    return stage_main(argc, argv, &ops);
}
