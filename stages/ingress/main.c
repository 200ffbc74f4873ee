/* diffusiond-ingress: the HTTP API. It validates each request, turns it into one job per image
 * (route text -> denoise -> vae -> encode -> back here), keeps the client's request until
 * every image is back, and answers.
 *
 * Event loop: the skeleton owns a zmq_poll loop; libevent's HTTP server runs inside it, one
 * non-blocking event_base_loop per tick with tick_ms = 1. libevent cannot hand its epoll fd to
 * zmq_poll, so the alternative (an extra pollable fd in the skeleton) would need a second
 * thread and locks around every request; a 1 ms tick costs ~1 ms of added latency at most and
 * about 1% of a core while idle (measured: see tests/api/test_api.py::test_idle_cpu). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ingress.h"
#include "ipc/log.h"

const char *const ingress_steps[INGRESS_N_STEPS] = {"text", "denoise", "vae", "encode"};

static int ingress_init(stage_t *st, int argc, char **argv, void **state)
{
    if (sodium_init() < 0) {
        log_error("libsodium cannot start");
        return STAGE_EXIT_ERROR;
    }
    ingress_t *in = calloc(1, sizeof *in);
    if (!in)
        return STAGE_EXIT_ERROR;
    in->st = st;
    in->cfg = &stage_config(st)->server;
    in->next_serial = 1;
    in->limits = (gen_request_limits_t){
        .prompt_max = in->cfg->http_prompt_max,
        .pixels_max = in->cfg->http_pixels_max,
        .steps_max = in->cfg->http_steps_max,
        .n_max = in->cfg->http_n_max,
        .model = in->cfg->http_model,
    };
    char err[512];
    if (auth_load(in, err, sizeof err) != 0) {
        log_error("bad config: %s", err);
        free(in);
        return STAGE_EXIT_CONFIG;
    }
    in->cancel = gen_cancel_table_create(in->cfg->instance, stage_slot(st), stage_gen(st), err,
                                         sizeof err);
    if (!in->cancel)
        log_warn("no cancellation table (stages will finish cancelled jobs): %s", err);
    if (http_start(in, err, sizeof err) != 0) {
        log_error("%s", err);
        gen_cancel_table_destroy(&in->cancel);
        auth_free(in);
        free(in);
        /* An address in use or not ours is the config's business: restarting cannot help. */
        return STAGE_EXIT_CONFIG;
    }
    log_info("listening on http://%s (auth %s)", in->cfg->listen, in->n_keys ? "on" : "off");
    *state = in;
    return 0;
}

static void ingress_tick(stage_t *st, void *state)
{
    ingress_t *in = state;
    /* Bounded: EVLOOP_NONBLOCK handles what is ready now and returns. */
    event_base_loop(in->base, EVLOOP_NONBLOCK);
    jobs_tick(in);
}

static stage_job_result_t ingress_job(stage_t *st, void *state, stage_job_t *job)
{
    jobs_result(state, job);
    return STAGE_JOB_FORWARD; /* the route is empty: the skeleton releases the tensors */
}

static uint32_t ingress_inflight(stage_t *st, void *state)
{
    return jobs_inflight(state);
}

static void ingress_fini(stage_t *st, void *state)
{
    ingress_t *in = state;
    jobs_fail_all(in, "the service is stopping");
    /* Let the answers out: turns of the loop until every reply is written (a slow reader of
     * a large answer may need seconds), bounded well below the supervisor's stop_timeout_ms
     * so that it never has to kill the process; at least 100 ms for the last failures. */
    int64_t start = stage_now_ms();
    int64_t limit = stage_config(st)->server.stop_timeout_ms / 2;
    for (;;) {
        event_base_loop(in->base, EVLOOP_NONBLOCK);
        int64_t spent = stage_now_ms() - start;
        if (spent >= limit || (spent >= 100 && in->replies_writing == 0))
            break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    http_stop(in);
    gen_cancel_table_destroy(&in->cancel);
    auth_free(in);
    free(in);
}

int main(int argc, char **argv)
{
    static const stage_ops_t ops = {
        .init = ingress_init,
        .job = ingress_job,
        .tick = ingress_tick,
        .inflight = ingress_inflight,
        .fini = ingress_fini,
        .tick_ms = 1,
    };
    return stage_main(argc, argv, &ops);
}
