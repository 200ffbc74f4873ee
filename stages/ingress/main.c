/* diffusiond-ingress: the HTTP API. It validates each request, turns it into one job per image
 * (route text -> denoise -> vae -> encode -> back here), keeps the client's request until
 * every image is back, and answers.
 *
 * Event loop: the skeleton owns the loop and libevent does its waiting (stage_ops_t.wait):
 * the skeleton's signal pipe and ZeroMQ sockets (their ZMQ_FDs) are events in libevent's
 * base next to the HTTP server's, so that a request is read, and an answer written, the
 * moment it can be, and a job's result handled the moment it comes. One thread: the HTTP
 * callbacks call the skeleton directly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    jobs_tick(state);
}

/* The events only end libevent's wait: the skeleton reads its fds when the wait returns. */
static void ingress_woken(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static void ingress_wait_forget(ingress_t *in)
{
    for (int i = 0; i < in->n_wait; i++)
        event_free(in->wait_events[i]);
    in->n_wait = 0;
}

/* Registers the skeleton's fds with libevent, when they are not those of the last turn (they
 * change only when the skeleton stops or starts reading new jobs). */
static int ingress_wait_watch(ingress_t *in, const int *fds, int n_fds)
{
    const int cap = (int)(sizeof in->wait_fds / sizeof in->wait_fds[0]);
    if (n_fds > cap)
        return -1;
    if (n_fds == in->n_wait && !memcmp(fds, in->wait_fds, (size_t)n_fds * sizeof *fds))
        return 0;
    ingress_wait_forget(in);
    for (int i = 0; i < n_fds; i++) {
        struct event *ev = event_new(in->base, fds[i], EV_READ | EV_PERSIST, ingress_woken, NULL);
        if (!ev || event_add(ev, NULL) != 0) {
            if (ev)
                event_free(ev);
            ingress_wait_forget(in);
            return -1;
        }
        in->wait_events[in->n_wait] = ev;
        in->wait_fds[in->n_wait++] = fds[i];
    }
    return 0;
}

static void ingress_wait(stage_t *st, void *state, const int *fds, int n_fds, int timeout_ms)
{
    ingress_t *in = state;
    if (in->send_blocked && stage_can_send(st)) {
        jobs_tick(in); /* the pipeline takes jobs again: send what waited */
        /* without blocking: the skeleton has sends to retry or failures to hand back now */
        timeout_ms = 0;
    }
    if (!in->wait_timer)
        in->wait_timer = evtimer_new(in->base, ingress_woken, NULL);
    if (timeout_ms > 0 && in->wait_timer && ingress_wait_watch(in, fds, n_fds) == 0) {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(in->wait_timer, &tv);
        event_base_loop(in->base, EVLOOP_ONCE);
        evtimer_del(in->wait_timer);
    } else {
        /* Not blocking (or libevent cannot watch the fds: then a turn every millisecond).
         * One pass, EVLOOP_ONCE with EVLOOP_NONBLOCK: NONBLOCK alone goes round as long as
         * something is ready, and the signal pipe and the ZMQ_FDs stay readable until the
         * skeleton reads them after this returns, so a signal or a message that came during
         * such a turn kept the ingress spinning there for good (a stop, which sends both,
         * then ended in SIGKILL). */
        event_base_loop(in->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        if (timeout_ms > 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
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
    ingress_wait_forget(in);
    if (in->wait_timer)
        event_free(in->wait_timer);
    http_stop_accepting(in);
    jobs_fail_all(in, "the service is stopping");
    /* Let the answers out: turns of the loop until every reply is written (a slow reader of
     * a large answer may need seconds), bounded well below the supervisor's stop_timeout_ms
     * so that it never has to kill the process; at least 100 ms for the last failures. */
    int64_t start = stage_now_ms();
    int64_t limit = stage_config(st)->server.stop_timeout_ms / 2;
    for (;;) {
        event_base_loop(in->base, EVLOOP_ONCE | EVLOOP_NONBLOCK); /* one pass: see above */
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
        .wait = ingress_wait,
        /* request deadlines, lost jobs: nothing there needs a finer clock */
        .tick_ms = 10,
    };
    return stage_main(argc, argv, &ops);
}
