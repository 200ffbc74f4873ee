/* model_stage: what the text, denoise, vae and encode stages share: a generation job arrives
 * (pipeline/gen_job.h), its parameters are checked, the model computes on a worker thread
 * while the stage's loop keeps answering the supervisor, and the outputs replace the inputs in
 * the job, which goes on to the next step.
 *
 * Threads: the skeleton (ipc/stage.h) is single-threaded, so everything that touches it runs
 * on the loop thread: the job callback collects the inputs' addresses and queues a task; the
 * compute function runs on the worker thread with nothing but the task (inputs read in place
 * in the shared pools, outputs written to malloc'd buffers); the tick callback takes finished
 * tasks, allocates the outputs in the stage's pool, copies them there, releases the inputs and
 * forwards the job (the worker wakes the loop with stage_wake, so that happens at once, not at
 * the next tick). The copy is local to the stage (an output is copied once into its shared
 * block, never between stages); it lets a task finish while the pool is full: it then waits in
 * the stage, and the stage stops taking new work, until blocks come back. */
#ifndef DIFFUSIOND_PIPELINE_MODEL_STAGE_H
#define DIFFUSIOND_PIPELINE_MODEL_STAGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc/stage.h"
#include "pipeline/gen_job.h"

#define GEN_TASK_MAX_OUT 4

typedef struct {
    int dtype;                           /* proto_dtype_t */
    int ndim;
    int64_t shape[PROTO_MAX_DIMS];
    void *data;                          /* malloc'd by compute; freed by the stage */
} gen_output_t;

typedef struct gen_task {
    stage_job_t *job;                    /* the loop thread's; compute must not touch it */
    gen_params_t params;
    uint64_t id;
    uint32_t origin_slot, origin_gen;    /* who made the job (for the cancel table) */
    struct model_stage *stage;
    uint32_t n_in;
    proto_tensor_ref_t in_ref[PROTO_MAX_TENSORS];
    const void *in[PROTO_MAX_TENSORS];   /* the inputs, in the pools, held by this job */
    uint32_t n_out;
    gen_output_t out[GEN_TASK_MAX_OUT];
    uint64_t busy_us;                    /* the worker's time on it, for the heartbeats */
    bool stopped;                        /* gen_task_cancelled said yes: a compute that fails
                                            after it was stopped, not by its input */
    int code;                            /* compute's failure: 400 bad input, 500 otherwise */
    char err[PROTO_ERROR_MAX];
    struct gen_task *next;
} gen_task_t;

/* Runs on the worker thread: read task->in, fill task->out (n_out, each output malloc'd).
 * Returns 0, or -1 with task->code and task->err set. */
typedef int (*gen_compute_fn)(void *model, gen_task_t *task);

typedef struct {
    const char *what;                    /* for logs: "text", "denoise", ... */
    uint32_t min_inputs, max_inputs;     /* tensors a job must bring */
    gen_compute_fn compute;
    void *model;
    /* The models' context, or NULL. While a task computes, the worker makes its stop
     * (nn_ctx_t.stop) the task's cancellation, so that a model stops between its blocks, and
     * a task that failed because it was cancelled is answered 499 (or 503, the stage
     * stopping). */
    struct nn_ctx *ctx;
} model_stage_spec_t;

/* A model stage program: its main() is `return model_stage_main(argc, argv, &def);`, and
 * model_stage_main supplies the skeleton's callbacks. */
typedef struct {
    /* Loads the models and fills spec (what, inputs, compute, model, ctx); called once the
     * stage's section has been checked (device, batch keys). 0, or a STAGE_EXIT_* code. */
    int (*init)(stage_t *st, model_stage_spec_t *spec);
    /* Frees spec.model, after the worker has stopped (NULL: nothing to free). */
    void (*fini)(void *model);
} model_stage_def_t;

/* Runs the stage (stage_main). On the way out the worker stops: the task it is running stops
 * at its next block or step; tasks already computed go on if the pool has room for them now;
 * the rest, and those not started, are failed 503 (their origin sends them again
 * elsewhere). */
int model_stage_main(int argc, char **argv, const model_stage_def_t *def);

/* For compute functions: a malloc'd output of dtype and shape; NULL when out of memory. */
void *gen_output_alloc(gen_task_t *task, int dtype, int ndim, const int64_t *shape);
/* True when the task should stop: its client is gone (the origin's cancel table,
 * pipeline/cancel.h) or the stage is stopping. For compute functions, between steps; the
 * worker also asks before it starts a task, and skips it, and the models ask between blocks
 * (model_stage_spec_t.ctx). */
bool gen_task_cancelled(gen_task_t *task);

/* Sets the task's failure and returns -1. */
int gen_task_fail(gen_task_t *task, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Whether the stage's pool can take the outputs of the largest job the request limits allow
 * ([server] http_pixels_max, the longest prompts): bytes[0..n) are those outputs' sizes, each
 * taking whole pages. 0, or STAGE_EXIT_CONFIG (logged, naming pool_size) when they cannot
 * fit: such a job would compute and then fail. */
int model_stage_check_pool(const stage_t *st, const uint64_t *bytes, int n);

/* The model folder of the config ([model] path), or an error for the stage's init. */
int model_stage_folder(const stage_t *st, const char *component, char *out, size_t outlen);

#endif
