/* ingress: the HTTP stage, the only process that speaks to clients (see main.c).
 * The modules share one context, ingress_t: http.c (the server and its routes), jobs.c (the
 * table of requests being answered and their jobs), metrics.c, openapi.c, auth.c. */
#ifndef DIFFUSIOND_INGRESS_H
#define DIFFUSIOND_INGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>

#include "ipc/fd_reserve.h"
#include "ipc/stage.h"
#include "pipeline/cancel.h"
#include "pipeline/gen_request.h"

/* The route of a generation job, the config names of its stages (pipeline/gen_job.h). */
#define INGRESS_N_STEPS 4
extern const char *const ingress_steps[INGRESS_N_STEPS];

/* ---- metrics.c ---- */
enum { INGRESS_ROUTE_GENERATIONS, INGRESS_ROUTE_HEALTH, INGRESS_ROUTE_READY, INGRESS_ROUTE_METRICS,
       INGRESS_ROUTE_OPENAPI, INGRESS_ROUTE_OTHER, INGRESS_N_ROUTES };
#define INGRESS_LATENCY_BUCKETS 14

typedef struct {
    uint64_t route_status[INGRESS_N_ROUTES][500]; /* answers by route and status - 100 */
    uint64_t images;                        /* images answered */
    uint64_t jobs_sent, jobs_retried, jobs_failed, jobs_cancelled, jobs_stale;
    uint64_t latency_count;                 /* requests answered 200 */
    double latency_sum;                     /* seconds */
    uint64_t latency_bucket[INGRESS_LATENCY_BUCKETS]; /* cumulative: le each bound */
    double job_seconds_sum;                 /* send to result, per image, successful ones */
    uint64_t job_seconds_count;
} ingress_metrics_t;

/* ---- jobs.c ---- */
typedef struct ingress_request ingress_request_t;

typedef struct ingress {
    stage_t *st;
    const config_server_t *cfg;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener; /* evhttp's, for pausing accept() (http.c) */
    struct event *accept_timer;      /* resumes accepting after a pause */
    int64_t accept_logged_ms;        /* the last pause logged, and the pauses since */
    uint32_t accept_pauses;
    fd_reserve_t fds;                /* descriptors kept free for ZeroMQ (http.c) */
    gen_cancel_table_t *cancel;
    gen_request_limits_t limits;

    /* auth.c: digests of the accepted tokens (none: no auth) */
    uint8_t (*keys)[32];
    size_t n_keys;

    ingress_request_t *requests; /* accepted, not answered: newest first */
    uint32_t n_requests;
    uint32_t replies_writing;   /* replies handed to libevent and not yet written out (a large
                                   answer to a slow reader) nor lost with their connection: the
                                   stop waits for them, bounded. Not counted as work for the
                                   drain: a reader that never reads would hold it up until
                                   http_io_timeout_ms */
    uint64_t next_serial;
    int64_t last_lost_check_ms;
    bool send_blocked;          /* jobs_tick left images unsent: the pipeline took no more */
    ingress_metrics_t m;

    /* main.c: the skeleton's file descriptors in libevent's loop (stage_ops_t.wait) */
    struct event *wait_events[4];
    int wait_fds[4];
    int n_wait;
    struct event *wait_timer;
} ingress_t;

/* Takes a validated request (ownership of *req moves in) for the client behind hreq. */
void jobs_accept(ingress_t *in, struct evhttp_request *hreq, gen_request_t *req);
/* Sends what waits, finds lost jobs, times out old requests: from the tick, and as soon as
 * the pipeline takes jobs again after send_blocked. */
void jobs_tick(ingress_t *in);
/* A job came back (a result or a failure). */
void jobs_result(ingress_t *in, stage_job_t *job);
/* Jobs out in the pipeline or waiting to go (the drain waits for them). */
uint32_t jobs_inflight(const ingress_t *in);
/* Answers every request 503 (the stage is stopping). */
void jobs_fail_all(ingress_t *in, const char *why);

/* ---- http.c ---- */
int http_start(ingress_t *in, char *err, size_t errlen);
/* No new connections from now on (the stage is stopping): they wait in the backlog and are
 * refused when the process exits. */
void http_stop_accepting(ingress_t *in);
void http_stop(ingress_t *in);
/* Sends {"error":{message,type,param,code}} with status and counts it. */
void http_send_error(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                     const char *type, const char *param, const char *code, const char *message);
/* Sends a JSON body (ownership of text moves in; it is free()d). */
void http_send_json(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                    char *text);
/* The same with the body already in an evbuffer, which it takes (and frees). */
void http_send_json_buffer(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                           struct evbuffer *body);
bool http_ready(ingress_t *in, char *why, size_t whylen);

/* ---- metrics.c ---- */
void metrics_count(ingress_t *in, int route, int status);
void metrics_latency(ingress_t *in, double seconds);
char *metrics_render(ingress_t *in); /* malloc'd text */

/* ---- openapi.c ---- */
const char *openapi_document(void);

/* ---- auth.c ---- */
int auth_load(ingress_t *in, char *err, size_t errlen);
void auth_free(ingress_t *in);
/* True when auth is off or the request carries an accepted bearer token. */
bool auth_check(const ingress_t *in, struct evhttp_request *hreq);

#endif
