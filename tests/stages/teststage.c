/* diffusiond-teststage: a small stage program for the runtime's process tests and for `make run`
 * until the models exist. One program, three roles:
 *   source  makes jobs, each with one tensor in its pool filled with a pattern, sends them along
 *           the route (--route relay,sink) and back to itself; retries a job whose result has
 *           not come back in --retry-ms; counts a job done when the result shows the sink's mark.
 *   relay   checks the pattern where the source wrote it and forwards the same reference.
 *   sink    checks the whole pattern, writes its mark into the tensor, forwards it.
 *   gen     stands in for one model stage of a text-to-image job (pipeline/gen_job.h) with
 *           --step text|denoise|vae|encode, for the API tests: it checks the job's params;
 *           denoise sleeps --delay-ms in 20 ms steps and stops early when the job is cancelled
 *           (pipeline/cancel.h); encode attaches a real PNG/JPEG/WebP file of the asked size.
 *           A prompt containing "FAIL400" is refused with 400 by the text step.
 * A failed job (its error says which stage could not take it) ends there, or with --retry-ms
 * is sent again when its time comes.
 * Each role appends one line per event to <runtime_dir>/<role>.<replica>.log with the segment
 * and the offset in it where it saw the bytes, so a test can prove that every stage read the
 * same memory (no copy), and the source's mark check proves the writes were shared too. */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/image_codec.h"
#include "ipc/log.h"
#include "ipc/stage.h"
#include "pipeline/cancel.h"
#include "pipeline/gen_job.h"

#define SINK_MARK 0x5EEDF00DCAFEBABEull

typedef enum { ROLE_SOURCE, ROLE_RELAY, ROLE_SINK, ROLE_GEN } role_t;

typedef struct {
    uint64_t id;
    uint32_t attempt;
    int64_t sent_ms;
    bool done;
} outstanding_t;

typedef struct {
    role_t role;
    uint64_t jobs;        /* source: how many jobs in all; 0: one every interval, forever */
    uint64_t bytes;       /* source: tensor size */
    int interval_ms;      /* source: pause between jobs when jobs == 0 */
    uint32_t max_inflight;/* source: jobs out at once */
    int retry_ms;         /* source: resend a job not back after this long (0: never) */
    int delay_ms;         /* relay/sink: time each job takes here */
    char route[PROTO_MAX_ROUTE][PROTO_NAME_MAX];
    uint32_t n_route;
    int log_fd;
    char step[16];        /* gen: text, denoise, vae or encode */
    gen_cancel_t *cancel; /* gen: the origins' cancel tables */

    uint64_t next_id;
    int64_t next_job_ms;
    outstanding_t *out;   /* source: one per job id, indexed by id */
    uint64_t n_out;
    uint64_t n_done;
} teststage_t;

static void teststage_log(teststage_t *ts, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void teststage_log(teststage_t *ts, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(ts->log_fd, line, (size_t)n); /* O_APPEND: one line per write */
    (void)w;
}

/* The value of the i-th 64-bit word of job id's tensor. */
static uint64_t pattern_word(uint64_t id, uint64_t i)
{
    return (id + 1) * 0x9E3779B97F4A7C15ull ^ (i * 0xBF58476D1CE4E5B9ull);
}

static int parse_route(teststage_t *ts, const char *text)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (ts->n_route + 1 >= PROTO_MAX_ROUTE || strlen(tok) >= PROTO_NAME_MAX)
            return -1;
        snprintf(ts->route[ts->n_route++], PROTO_NAME_MAX, "%s", tok);
    }
    return 0;
}

static int teststage_init(stage_t *st, int argc, char **argv, void **state)
{
    static const struct option opts[] = {
        {"role", required_argument, NULL, 'r'},     {"jobs", required_argument, NULL, 'j'},
        {"bytes", required_argument, NULL, 'b'},    {"interval-ms", required_argument, NULL, 'i'},
        {"inflight", required_argument, NULL, 'n'}, {"retry-ms", required_argument, NULL, 't'},
        {"delay-ms", required_argument, NULL, 'd'}, {"route", required_argument, NULL, 'R'},
        {"step", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    teststage_t *ts = calloc(1, sizeof *ts);
    if (!ts)
        return STAGE_EXIT_ERROR;
    ts->role = ROLE_RELAY;
    ts->bytes = 1 << 20;
    ts->interval_ms = 1000;
    ts->max_inflight = 4;
    ts->retry_ms = 0;
    bool role_set = false;
    /* getopt wants argv[0]; the skeleton hands us only our own arguments. */
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (!args) {
        free(ts);
        return STAGE_EXIT_ERROR;
    }
    args[0] = (char *)"teststage";
    for (int i = 0; i < argc; i++)
        args[i + 1] = argv[i];
    optind = 1;
    int c, bad = 0;
    while ((c = getopt_long(argc + 1, args, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            role_set = true;
            if (strcmp(optarg, "source") == 0) ts->role = ROLE_SOURCE;
            else if (strcmp(optarg, "relay") == 0) ts->role = ROLE_RELAY;
            else if (strcmp(optarg, "sink") == 0) ts->role = ROLE_SINK;
            else if (strcmp(optarg, "gen") == 0) ts->role = ROLE_GEN;
            else bad = 1;
            break;
        case 'j': ts->jobs = strtoull(optarg, NULL, 10); break;
        case 'b':
            if (config_parse_size(optarg, &ts->bytes) != 0 || ts->bytes < 8) bad = 1;
            break;
        case 'i': ts->interval_ms = atoi(optarg); break;
        case 'n': ts->max_inflight = (uint32_t)atoi(optarg); break;
        case 't': ts->retry_ms = atoi(optarg); break;
        case 'd': ts->delay_ms = atoi(optarg); break;
        case 'R': if (parse_route(ts, optarg) != 0) bad = 1; break;
        case 'p': snprintf(ts->step, sizeof ts->step, "%s", optarg); break;
        default: bad = 1; break;
        }
    }
    free(args);
    if (bad || !role_set || ts->max_inflight == 0 || ts->bytes % 8 != 0) {
        log_error("bad arguments: want --role source|relay|sink|gen [--step S] [--jobs N --bytes SIZE "
                  "(a multiple of 8) --interval-ms N --inflight N --retry-ms N --route a,b] "
                  "[--delay-ms N]");
        free(ts);
        return STAGE_EXIT_CONFIG;
    }
    if (ts->role == ROLE_GEN) {
        if (strcmp(ts->step, "text") && strcmp(ts->step, "denoise") && strcmp(ts->step, "vae") &&
            strcmp(ts->step, "encode")) {
            log_error("--role gen wants --step text|denoise|vae|encode");
            free(ts);
            return STAGE_EXIT_CONFIG;
        }
        ts->cancel = gen_cancel_new(stage_config(st)->server.instance);
    }
    if (ts->role == ROLE_SOURCE) {
        /* The result comes back to this stage: it is the last step of every route. */
        snprintf(ts->route[ts->n_route++], PROTO_NAME_MAX, "%s", stage_name(st));
        if (ts->jobs) {
            ts->out = calloc(ts->jobs, sizeof *ts->out);
            if (!ts->out) {
                free(ts);
                return STAGE_EXIT_ERROR;
            }
        }
    }
    char path[CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.%u.log", stage_runtime_dir(st), stage_name(st),
             stage_replica(st));
    ts->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (ts->log_fd < 0) {
        log_error("cannot open %s: %s", path, strerror(errno));
        free(ts->out);
        free(ts);
        return STAGE_EXIT_ERROR;
    }
    teststage_log(ts, "start gen=%u", stage_gen(st));
    *state = ts;
    return 0;
}

/* Where the tensor lies: its segment and the offset of its first byte in that segment. */
static void tensor_place(stage_t *st, const proto_tensor_ref_t *ref, const char **seg, uint64_t *at)
{
    pool_t *p = stage_tensor_pool(st, ref);
    *seg = p ? pool_name(p) : "?";
    *at = p ? pool_data_start(p) + ref->offset : 0;
}

static int source_send(stage_t *st, teststage_t *ts, uint64_t id, uint32_t attempt)
{
    const char *route[PROTO_MAX_ROUTE];
    for (uint32_t i = 0; i < ts->n_route; i++)
        route[i] = ts->route[i];
    stage_job_t *job = stage_job_new(st, id, route, ts->n_route);
    if (!job)
        return -1;
    int64_t shape[1] = {(int64_t)(ts->bytes / 8)};
    void *data;
    if (stage_tensor_alloc(st, PROTO_DTYPE_I64, 1, shape, &job->msg.tensors[0], &data) != 0) {
        stage_job_finish(st, job);
        return -1; /* pool full: try again next tick */
    }
    job->msg.n_tensors = 1;
    job->msg.attempt = attempt;
    uint64_t *w = data;
    for (uint64_t i = 0; i < ts->bytes / 8; i++)
        w[i] = pattern_word(id, i);
    const char *seg;
    uint64_t at;
    tensor_place(st, &job->msg.tensors[0], &seg, &at);
    teststage_log(ts, "sent id=%llu attempt=%u seg=%s at=%llu", (unsigned long long)id, attempt,
                  seg, (unsigned long long)at);
    stage_job_forward(st, job);
    return 0;
}

static uint32_t source_outstanding(const teststage_t *ts)
{
    return (uint32_t)(ts->n_out - ts->n_done);
}

static void teststage_tick(stage_t *st, void *state)
{
    teststage_t *ts = state;
    if (ts->role != ROLE_SOURCE || !stage_can_send(st))
        return; /* never queue more than the pipeline can take */
    int64_t now = stage_now_ms();
    /* Retries first: the pipeline lost these (a stage died with them). While the service
     * drains, a lost job is given up instead (a client would get an error). */
    for (uint64_t id = 0; ts->retry_ms > 0 && ts->out && id < ts->n_out; id++) {
        outstanding_t *o = &ts->out[id];
        if (!o->done && now - o->sent_ms >= ts->retry_ms && stage_draining(st)) {
            o->done = true;
            ts->n_done++;
            teststage_log(ts, "gave-up id=%llu attempt=%u", (unsigned long long)id, o->attempt);
        } else if (!o->done && now - o->sent_ms >= ts->retry_ms) {
            if (source_send(st, ts, id, o->attempt + 1) == 0) {
                o->attempt++;
                o->sent_ms = now;
                teststage_log(ts, "retry id=%llu attempt=%u", (unsigned long long)id, o->attempt);
            }
        }
    }
    if (stage_draining(st))
        return;
    if (ts->jobs) {
        while (ts->n_out < ts->jobs && source_outstanding(ts) < ts->max_inflight) {
            if (source_send(st, ts, ts->n_out, 0) != 0)
                return;
            ts->out[ts->n_out].id = ts->n_out;
            ts->out[ts->n_out].sent_ms = now;
            ts->n_out++;
        }
    } else if (now >= ts->next_job_ms && source_outstanding(ts) < ts->max_inflight) {
        if (source_send(st, ts, ts->next_id, 0) == 0) {
            ts->next_id++;
            ts->n_out++;
        }
        ts->next_job_ms = now + ts->interval_ms;
    }
}

static stage_job_result_t source_result(stage_t *st, teststage_t *ts, stage_job_t *job)
{
    uint64_t id = job->msg.id;
    if (job->msg.error) {
        teststage_log(ts, "failed id=%llu attempt=%u code=%d msg=%s", (unsigned long long)id,
                      job->msg.attempt, job->msg.error, job->msg.error_msg);
        /* With --retry-ms the job is sent again when its time comes; without, or once the
         * service drains, it has ended. */
        if (!ts->out) {
            ts->n_done++;
        } else if (id < ts->n_out && !ts->out[id].done && job->msg.attempt == ts->out[id].attempt &&
                   (ts->retry_ms == 0 || stage_draining(st))) {
            ts->out[id].done = true;
            ts->n_done++;
        }
        return STAGE_JOB_FORWARD;
    }
    if (ts->out && (id >= ts->n_out || ts->out[id].done || job->msg.attempt != ts->out[id].attempt)) {
        teststage_log(ts, "stale id=%llu attempt=%u", (unsigned long long)id, job->msg.attempt);
        return STAGE_JOB_FORWARD;
    }
    const uint64_t *w = stage_tensor_data(st, job, 0);
    const char *seg;
    uint64_t at;
    tensor_place(st, &job->msg.tensors[0], &seg, &at);
    bool ok = job->msg.n_tensors == 1 && w && w[0] == SINK_MARK && job->msg.tensors[0].bytes == ts->bytes;
    for (uint64_t i = 1; ok && i < ts->bytes / 8; i++)
        ok = w[i] == pattern_word(id, i);
    teststage_log(ts, "done id=%llu attempt=%u seg=%s at=%llu %s", (unsigned long long)id,
                  job->msg.attempt, seg, (unsigned long long)at, ok ? "ok" : "BAD");
    if (ts->out)
        ts->out[id].done = true;
    ts->n_done++;
    return STAGE_JOB_FORWARD; /* the route is empty: the skeleton releases the tensor */
}

static stage_job_result_t gen_fail(stage_job_t *job, int code, const char *msg)
{
    job->msg.error = code;
    snprintf(job->msg.error_msg, sizeof job->msg.error_msg, "%s", msg);
    return STAGE_JOB_FAILED;
}

/* One step of a text-to-image job, as the model stages will do it, without a model. */
static stage_job_result_t gen_job(stage_t *st, teststage_t *ts, stage_job_t *job)
{
    gen_params_t p;
    char err[256];
    if (gen_params_decode(job->msg.params, job->msg.params_len, &p, err, sizeof err) != 0)
        return gen_fail(job, 400, err);
    teststage_log(ts, "gen step=%s id=%llu attempt=%u seed=%llu", ts->step,
                  (unsigned long long)job->msg.id, job->msg.attempt,
                  (unsigned long long)p.seed);
    stage_job_result_t r = STAGE_JOB_FORWARD;
    if (strcmp(ts->step, "text") == 0 && strstr(p.prompt, "FAIL400")) {
        r = gen_fail(job, 400, "the prompt asked for a failure (FAIL400)");
    } else if (strcmp(ts->step, "denoise") == 0) {
        for (int t = 0; t < ts->delay_ms; t += 20) {
            if (gen_cancel_check(ts->cancel, job->msg.origin_slot, job->msg.origin_gen,
                                 job->msg.id)) {
                teststage_log(ts, "cancelled id=%llu attempt=%u", (unsigned long long)job->msg.id,
                              job->msg.attempt);
                r = gen_fail(job, 499, "cancelled");
                break;
            }
            usleep(20000);
        }
    } else if (strcmp(ts->step, "encode") == 0) {
        stage_job_release_tensors(st, job);
        size_t npix = (size_t)p.width * (size_t)p.height;
        uint8_t *rgb = malloc(npix * 3), *file = NULL;
        size_t len = 0;
        static const image_format_t fmts[] = {IMAGE_PNG, IMAGE_JPEG, IMAGE_WEBP};
        for (size_t i = 0; rgb && i < npix * 3; i++)
            rgb[i] = (uint8_t)(i * 7 + p.seed);
        if (!rgb || image_encode(fmts[p.format], rgb, p.width, p.height, p.quality, &file, &len,
                                 err, sizeof err) != 0) {
            r = gen_fail(job, 500, rgb ? err : "out of memory");
        } else {
            int64_t shape[1] = {(int64_t)len};
            void *data;
            if (stage_tensor_alloc(st, PROTO_DTYPE_U8, 1, shape, &job->msg.tensors[0], &data) != 0) {
                r = gen_fail(job, 503, "encode pool full");
            } else {
                memcpy(data, file, len);
                job->msg.n_tensors = 1;
            }
        }
        free(rgb);
        free(file);
    }
    gen_params_free(&p);
    return r;
}

static stage_job_result_t teststage_job(stage_t *st, void *state, stage_job_t *job)
{
    teststage_t *ts = state;
    if (ts->role == ROLE_SOURCE)
        return source_result(st, ts, job);
    if (ts->role == ROLE_GEN)
        return gen_job(st, ts, job);
    if (job->msg.n_tensors != 1 || job->msg.tensors[0].bytes < 16) {
        snprintf(job->msg.error_msg, sizeof job->msg.error_msg, "want one tensor of >= 16 bytes");
        job->msg.error = 400;
        return STAGE_JOB_FAILED;
    }
    if (ts->delay_ms > 0)
        usleep((useconds_t)ts->delay_ms * 1000);
    uint64_t *w = stage_tensor_data(st, job, 0);
    uint64_t n = job->msg.tensors[0].bytes / 8;
    const char *seg;
    uint64_t at;
    tensor_place(st, &job->msg.tensors[0], &seg, &at);
    bool ok = true;
    if (ts->role == ROLE_RELAY) {
        ok = w[0] == pattern_word(job->msg.id, 0) && w[n - 1] == pattern_word(job->msg.id, n - 1);
    } else {
        for (uint64_t i = 0; ok && i < n; i++)
            ok = w[i] == pattern_word(job->msg.id, i);
        if (ok)
            w[0] = SINK_MARK;
    }
    teststage_log(ts, "%s id=%llu attempt=%u seg=%s at=%llu %s",
                  ts->role == ROLE_RELAY ? "relay" : "sink", (unsigned long long)job->msg.id,
                  job->msg.attempt, seg, (unsigned long long)at, ok ? "ok" : "BAD");
    return STAGE_JOB_FORWARD;
}

static uint32_t teststage_inflight(stage_t *st, void *state)
{
    teststage_t *ts = state;
    return ts->role == ROLE_SOURCE ? source_outstanding(ts) : 0;
}

static void teststage_fini(stage_t *st, void *state)
{
    teststage_t *ts = state;
    teststage_log(ts, "exit outstanding=%u", teststage_inflight(st, state));
    close(ts->log_fd);
    gen_cancel_free(&ts->cancel);
    free(ts->out);
    free(ts);
}

int main(int argc, char **argv)
{
    static const stage_ops_t ops = {
        .init = teststage_init,
        .job = teststage_job,
        .tick = teststage_tick,
        .inflight = teststage_inflight,
        .fini = teststage_fini,
        .tick_ms = 20,
    };
    return stage_main(argc, argv, &ops);
}
