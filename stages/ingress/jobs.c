/* jobs: the requests ingress has accepted and not yet answered, and their jobs.
 *
 * A request for n images is n jobs, ids serial*16 + i (serial counts requests from 1, so no
 * id is 0, as the cancel table needs). Each job is retried at most once (attempt 1): when it
 * comes back with 503 (a stage died or restarted with it, see stage_fail_to_origin), or when
 * it may have been lost without an answer: a process of its route that was alive when the
 * job was sent (stage_peer_gens) is no longer (stage_gen_alive), which is how a SIGKILLed
 * holder shows. An image is made by whichever attempt brings it first (the other is then
 * cancelled); an older attempt's failure is ignored. A request is answered exactly once: 200
 * with every image, the first failure's status, 504 at http_timeout_ms, or 503 when the
 * stage stops; a client that goes away cancels its jobs (pipeline/cancel.h), and so does
 * every failure and timeout for the jobs still out. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include <errno.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <sodium.h>

#include <event2/buffer.h>

#include "ingress.h"
#include "ipc/log.h"

#define JOBS_MAX_N 10
#define JOBS_LOST_CHECK_MS 50

typedef enum { IMG_WAITING, IMG_SENT, IMG_DONE } img_state_t;

typedef struct {
    img_state_t state;
    uint32_t attempt;
    int64_t sent_us;
    uint32_t holders[4 * INGRESS_N_STEPS * CONFIG_MAX_REPLICAS]; /* generations of the route's
                                  stages alive at any time since it was sent: who may hold it */
    uint32_t n_holders;
    char *b64;                       /* the image, base64 (sodium_bin2base64) */
} ingress_image_t;

/* The close callback's argument: it finds the request by serial, so that it cannot touch a
 * request already answered. */
typedef struct {
    ingress_t *in;
    uint64_t serial;
} jobs_close_ctx_t;

struct ingress_request {
    ingress_request_t *next;
    jobs_close_ctx_t *close_ctx;     /* set while the close callback is attached */
    jobs_close_ctx_t *watch_ctx;     /* the watch's argument */
    struct event *watch;             /* EOF on the client's socket while we compute */
    uint64_t serial;
    struct evhttp_request *hreq;
    struct evhttp_connection *conn;
    gen_request_t req;
    int64_t accepted_us, deadline_ms;
    int n_done;
    int64_t created;                 /* Unix time of acceptance, the answer's "created" */
    ingress_image_t images[JOBS_MAX_N];
};

static ingress_request_t *jobs_find(ingress_t *in, uint64_t serial)
{
    for (ingress_request_t *r = in->requests; r; r = r->next)
        if (r->serial == serial)
            return r;
    return NULL;
}

static uint64_t jobs_id(const ingress_request_t *r, int i) { return r->serial * 16 + (uint64_t)i; }

/* Marks every image not done as cancelled for the stages still working on it. */
static void jobs_cancel_out(ingress_t *in, ingress_request_t *r)
{
    for (int i = 0; i < r->req.n; i++) {
        if (r->images[i].state == IMG_SENT) {
            gen_cancel_mark(in->cancel, jobs_id(r, i));
            in->m.jobs_cancelled++;
        }
    }
}

static void jobs_detach(ingress_request_t *r);

static void jobs_remove(ingress_t *in, ingress_request_t *r)
{
    for (ingress_request_t **p = &in->requests; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            in->n_requests--;
            break;
        }
    }
    for (int i = 0; i < JOBS_MAX_N; i++)
        free(r->images[i].b64);
    if (r->hreq)
        jobs_detach(r);
    if (r->watch)
        event_free(r->watch);
    free(r->watch_ctx);
    gen_request_free(&r->req);
    free(r);
}


static void jobs_closed(struct evhttp_connection *conn, void *arg)
{
    jobs_close_ctx_t *c = arg;
    ingress_request_t *r = jobs_find(c->in, c->serial);
    if (r && r->conn == conn) {
        log_info("request %" PRIu64 ": the client went away; cancelling its jobs", r->serial);
        r->hreq = NULL;
        r->close_ctx = NULL; /* freed below */
        jobs_cancel_out(c->in, r);
        metrics_count(c->in, INGRESS_ROUTE_GENERATIONS, 499); /* nginx's "client closed" */
        jobs_remove(c->in, r);
    }
    free(c);
}

/* libevent 2.1 stops reading an incoming connection once it has read a request, so it would
 * not see the client leave until it writes the answer. The watch reads for EOF itself (a peek,
 * leaving any pipelined bytes to libevent) and closes the connection, which runs jobs_closed. */
static void jobs_watch(evutil_socket_t fd, short what, void *arg)
{
    jobs_close_ctx_t *c = arg;
    ingress_request_t *r = jobs_find(c->in, c->serial);
    if (!r || !r->conn)
        return;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        evhttp_connection_free(r->conn); /* calls jobs_closed, which frees r and c */
    else if (n < 0)
        event_add(r->watch, NULL);
    /* n > 0: a pipelined request; the watch ends and the answer's write will tell */
}

/* Detaches the close callback before the answer: the connection may live on (keep-alive)
 * after the request is gone. */
static void jobs_detach(ingress_request_t *r)
{
    if (r->conn && r->close_ctx)
        evhttp_connection_set_closecb(r->conn, NULL, NULL);
    free(r->close_ctx);
    r->close_ctx = NULL;
}

static void jobs_answer_error(ingress_t *in, ingress_request_t *r, int status, const char *type,
                              const char *code, const char *msg)
{
    jobs_cancel_out(in, r);
    if (r->hreq) {
        jobs_detach(r);
        http_send_error(in, r->hreq, INGRESS_ROUTE_GENERATIONS, status, type, NULL, code, msg);
    }
    jobs_remove(in, r);
}

/* A seed for JSON: an integer up to 2^63 - 1, a decimal string above (jansson's integers are
 * signed 64-bit), so that every seed a client may send comes back as it was. */
static json_t *seed_json(uint64_t seed)
{
    if (seed <= INT64_MAX)
        return json_integer((json_int_t)seed);
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, seed);
    return json_string(s);
}

/* Appends a seed as seed_json writes it. */
static int seed_append(struct evbuffer *b, uint64_t seed)
{
    return seed <= INT64_MAX ? evbuffer_add_printf(b, "%" PRIu64, seed)
                             : evbuffer_add_printf(b, "\"%" PRIu64 "\"", seed);
}

/* The answer is the images' base64 (megabytes) around a small JSON object. jansson would check
 * every base64 byte as UTF-8, scan it again for escapes and copy it twice more; base64 needs
 * no escaping, so the data array is written straight into the reply's buffer and only the
 * small rest goes through jansson. */
static void jobs_answer(ingress_t *in, ingress_request_t *r)
{
    const gen_params_t *p = &r->req.params;
    char size[32];
    snprintf(size, sizeof size, "%dx%d", p->width, p->height);
    /* usage: token counts are the text stage's, which does not report them yet: zeros. */
    json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:s, s:{s:i, s:{s:i, s:i}, s:i, s:i}}",
                          "created", (json_int_t)r->created, "background", "opaque",
                          "output_format", gen_request_format_name(p->format), "quality",
                          r->req.quality, "size", size, "usage", "input_tokens", 0,
                          "input_tokens_details", "text_tokens", 0, "image_tokens", 0,
                          "output_tokens", 0, "total_tokens", 0);
    if (o) /* the seed of image 0 */
        json_object_set_new(o, "seed", seed_json(p->seed));
    char *rest = o ? json_dumps(o, JSON_COMPACT) : NULL; /* "{...}" */
    json_decref(o);
    struct evbuffer *body = rest ? evbuffer_new() : NULL;
    bool ok = body && evbuffer_add_printf(body, "{\"data\":[") >= 0;
    for (int i = 0; ok && i < r->req.n; i++) {
        ok = evbuffer_add_printf(body, "%s{\"b64_json\":\"", i ? "," : "") >= 0 &&
             evbuffer_add(body, r->images[i].b64, strlen(r->images[i].b64)) == 0 &&
             evbuffer_add_printf(body, "\",\"seed\":") >= 0 &&
             seed_append(body, p->seed + (uint64_t)i) >= 0 && evbuffer_add(body, "}", 1) == 0;
        free(r->images[i].b64); /* in the buffer now */
        r->images[i].b64 = NULL;
    }
    ok = ok && evbuffer_add(body, "],", 2) == 0 && evbuffer_add(body, rest + 1, strlen(rest + 1)) == 0;
    free(rest);
    if (!ok) {
        if (body)
            evbuffer_free(body);
        jobs_answer_error(in, r, 500, "server_error", "internal_error", "out of memory");
        return;
    }
    in->m.images += (uint64_t)r->req.n;
    metrics_latency(in, (double)(stage_now_us() - r->accepted_us) / 1e6);
    jobs_detach(r);
    http_send_json_buffer(in, r->hreq, INGRESS_ROUTE_GENERATIONS, 200, body);
    jobs_remove(in, r);
}

void jobs_accept(ingress_t *in, struct evhttp_request *hreq, gen_request_t *req)
{
    ingress_request_t *r = calloc(1, sizeof *r);
    jobs_close_ctx_t *c = calloc(1, sizeof *c);
    if (!r || !c) {
        free(r);
        free(c);
        gen_request_free(req);
        http_send_error(in, hreq, INGRESS_ROUTE_GENERATIONS, 503, "server_error", NULL,
                        "out_of_memory", "out of memory; try again shortly");
        return;
    }
    r->serial = in->next_serial++;
    r->hreq = hreq;
    r->conn = evhttp_request_get_connection(hreq);
    r->req = *req;
    memset(req, 0, sizeof *req);
    if (!r->req.seed_given) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, 0) != sizeof s)
            s = (uint64_t)stage_now_us() ^ r->serial * UINT64_C(0x9E3779B97F4A7C15);
        r->req.params.seed = s & GEN_REQUEST_RANDOM_SEED_MAX;
    }
    r->accepted_us = stage_now_us();
    r->deadline_ms = stage_now_ms() + in->cfg->http_timeout_ms;
    r->created = (int64_t)time(NULL);
    c->in = in;
    c->serial = r->serial;
    if (r->conn) {
        r->close_ctx = c;
        evhttp_connection_set_closecb(r->conn, jobs_closed, c);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(r->conn);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
        r->watch_ctx = malloc(sizeof *r->watch_ctx);
        if (fd >= 0 && r->watch_ctx) {
            *r->watch_ctx = *c;
            r->watch = event_new(in->base, fd, EV_READ, jobs_watch, r->watch_ctx);
            if (r->watch)
                event_add(r->watch, NULL);
        }
    } else {
        free(c);
    }
    /* Oldest first: requests are sent in the order they came. */
    ingress_request_t **tail = &in->requests;
    while (*tail)
        tail = &(*tail)->next;
    *tail = r;
    in->n_requests++;
    log_debug("request %" PRIu64 ": %d image%s %dx%d, %d steps, seed %" PRIu64, r->serial,
              r->req.n, r->req.n == 1 ? "" : "s", r->req.params.width, r->req.params.height,
              r->req.params.steps, r->req.params.seed);
    jobs_tick(in); /* send now rather than at the next tick */
}

/* Adds the live processes of the route that the image does not know yet: a job sent while a
 * stage was down waits in the skeleton and reaches that stage's successor, which may then die
 * with it. */
static void jobs_add_holders(ingress_t *in, ingress_image_t *img)
{
    const uint32_t cap = sizeof img->holders / sizeof img->holders[0];
    for (int k = 0; k < INGRESS_N_STEPS; k++) {
        uint32_t gens[CONFIG_MAX_REPLICAS];
        uint32_t n = stage_peer_gens(in->st, ingress_steps[k], gens, CONFIG_MAX_REPLICAS);
        for (uint32_t g = 0; g < n; g++) {
            bool known = false;
            for (uint32_t h = 0; h < img->n_holders && !known; h++)
                known = img->holders[h] == gens[g];
            if (!known && img->n_holders < cap)
                img->holders[img->n_holders++] = gens[g];
        }
    }
}

/* Makes and sends image i's job. 0, or the status to answer when it cannot be made: 503 out
 * of memory, 500 params over PROTO_MAX_PARAMS (gen_request_parse refuses those: a bug). */
static int jobs_send(ingress_t *in, ingress_request_t *r, int i)
{
    const char *route[INGRESS_N_STEPS + 1];
    for (int k = 0; k < INGRESS_N_STEPS; k++)
        route[k] = ingress_steps[k];
    route[INGRESS_N_STEPS] = stage_name(in->st);
    gen_params_t p = r->req.params;
    p.seed = r->req.params.seed + (uint64_t)i; /* wraps around 2^64, as documented */
    char *params = NULL, err[256];
    size_t len = 0;
    if (gen_params_encode(&p, &params, &len, err, sizeof err) != 0) {
        log_error("request %" PRIu64 ": cannot encode its job: %s", r->serial, err);
        return 503;
    }
    if (len > PROTO_MAX_PARAMS) {
        log_error("request %" PRIu64 ": its job's params are %zu bytes, over %d", r->serial, len,
                  PROTO_MAX_PARAMS);
        free(params);
        return 500;
    }
    stage_job_t *job = stage_job_new(in->st, jobs_id(r, i), route, INGRESS_N_STEPS + 1);
    if (!job) {
        free(params);
        return 503;
    }
    ingress_image_t *img = &r->images[i];
    job->msg.attempt = img->attempt;
    job->msg.params = (const uint8_t *)params;
    job->msg.params_len = (uint32_t)len;
    job->frame = params; /* the skeleton frees the frame with the job */
    img->state = IMG_SENT;
    img->sent_us = stage_now_us();
    img->n_holders = 0;
    jobs_add_holders(in, img);
    in->m.jobs_sent++;
    stage_job_forward(in->st, job);
    return 0;
}

/* Image i is lost or failed for infrastructure reasons: once more, or give up with 503. */
static bool jobs_retry(ingress_t *in, ingress_request_t *r, int i, const char *why)
{
    ingress_image_t *img = &r->images[i];
    if (img->attempt >= 1) {
        char msg[PROTO_ERROR_MAX + 64];
        snprintf(msg, sizeof msg, "image %d failed twice: %s", i, why);
        in->m.jobs_failed++;
        jobs_answer_error(in, r, 503, "server_error", "unavailable", msg);
        return false;
    }
    log_info("request %" PRIu64 " image %d: retrying (%s)", r->serial, i, why);
    /* The first attempt is not marked cancelled: the table knows ids, not attempts, and the
     * retry has the same id. If it still runs somewhere, whichever attempt answers first
     * makes the image and the other is cancelled then (jobs_result). */
    img->attempt++;
    img->state = IMG_WAITING;
    in->m.jobs_retried++;
    return true;
}

void jobs_result(ingress_t *in, stage_job_t *job)
{
    const proto_job_t *m = &job->msg;
    ingress_request_t *r = jobs_find(in, m->id / 16);
    int i = (int)(m->id % 16);
    /* An image's result is the same bits whichever attempt made it (a seed fixes the image):
     * an older attempt's image is as good as the newest's, and whichever comes first answers
     * (a retry may still be waiting to be sent; it then never is). An older attempt's error
     * is stale: the newer attempt speaks for the image. */
    bool open = r && i < r->req.n &&
                (r->images[i].state == IMG_SENT || r->images[i].state == IMG_WAITING);
    if (!open || m->attempt > r->images[i].attempt ||
        (m->attempt < r->images[i].attempt && m->error)) {
        in->m.jobs_stale++; /* answered, cancelled, or an older attempt's failure */
        return;
    }
    ingress_image_t *img = &r->images[i];
    if (m->error == 503) {
        jobs_retry(in, r, i, m->error_msg);
        return;
    }
    if (m->error) {
        /* A stage refused the job itself (a prompt over the model's tokens: 400): no retry. */
        int status = m->error >= 400 && m->error < 600 ? m->error : 500;
        in->m.jobs_failed++;
        jobs_answer_error(in, r, status, status < 500 ? "invalid_request_error" : "server_error",
                          status < 500 ? "invalid_value" : "internal_error", m->error_msg);
        return;
    }
    const uint8_t *data = m->n_tensors >= 1 ? stage_tensor_data(in->st, job, GEN_T_FILE) : NULL;
    if (!data || m->tensors[0].dtype != PROTO_DTYPE_U8 || m->tensors[0].ndim != 1 ||
        m->tensors[0].bytes == 0) {
        in->m.jobs_failed++;
        jobs_answer_error(in, r, 500, "server_error", "internal_error",
                          "the encode stage sent no image file");
        return;
    }
    size_t n = (size_t)m->tensors[0].bytes;
    size_t b64len = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    img->b64 = malloc(b64len);
    if (!img->b64) {
        jobs_answer_error(in, r, 503, "server_error", "out_of_memory", "out of memory");
        return;
    }
    sodium_bin2base64(img->b64, b64len, data, n, sodium_base64_VARIANT_ORIGINAL);
    /* A retried image's other attempt may still be computing: the first, when its loss was
     * only feared, or the retry, when the first came back. It has this id too, and is not
     * needed now (unless it was never sent). */
    if (img->attempt > 0 && !(m->attempt < img->attempt && img->state == IMG_WAITING)) {
        gen_cancel_mark(in->cancel, m->id);
        in->m.jobs_cancelled++;
    }
    img->state = IMG_DONE;
    in->m.job_seconds_sum += (double)(stage_now_us() - img->sent_us) / 1e6;
    in->m.job_seconds_count++;
    if (++r->n_done == r->req.n)
        jobs_answer(in, r);
}

void jobs_tick(ingress_t *in)
{
    int64_t now = stage_now_ms();
    bool check_lost = now - in->last_lost_check_ms >= JOBS_LOST_CHECK_MS;
    if (check_lost)
        in->last_lost_check_ms = now;

    bool can_send = true;
    in->send_blocked = false;
    ingress_request_t *next;
    for (ingress_request_t *r = in->requests; r; r = next) {
        next = r->next; /* r may be answered and freed below */
        if (now >= r->deadline_ms) {
            char msg[128];
            snprintf(msg, sizeof msg, "not answered within http_timeout_ms (%d ms)",
                     in->cfg->http_timeout_ms);
            jobs_answer_error(in, r, 504, "server_error", "timeout", msg);
            continue;
        }
        bool alive = true;
        for (int i = 0; alive && check_lost && i < r->req.n; i++) {
            ingress_image_t *img = &r->images[i];
            if (img->state != IMG_SENT)
                continue;
            for (uint32_t k = 0; k < img->n_holders; k++) {
                /* a process that retired (a reload) finished or handed back its jobs before
                 * it exited: only one that died can have lost the job */
                if (!stage_gen_alive(in->st, img->holders[k]) &&
                    !stage_gen_retired(in->st, img->holders[k])) {
                    char why[96];
                    snprintf(why, sizeof why, "process generation %u of its route died while "
                             "it was out", img->holders[k]);
                    alive = jobs_retry(in, r, i, why);
                    break;
                }
            }
            if (alive && img->state == IMG_SENT)
                jobs_add_holders(in, img);
        }
        /* Send while the pipeline takes more (stage_can_send is the backpressure). */
        for (int i = 0; alive && i < r->req.n; i++) {
            if (r->images[i].state != IMG_WAITING)
                continue;
            if (!can_send || !(can_send = stage_can_send(in->st))) {
                in->send_blocked = true;
                break;
            }
            int failed = jobs_send(in, r, i);
            if (failed == 503) {
                jobs_answer_error(in, r, 503, "server_error", "out_of_memory",
                                  "cannot make the job (out of memory)");
                break;
            }
            if (failed) {
                jobs_answer_error(in, r, 500, "server_error", "internal_error",
                                  "the job's parameters are too large to send");
                break;
            }
        }
    }
}

uint32_t jobs_inflight(const ingress_t *in)
{
    uint32_t n = 0;
    for (const ingress_request_t *r = in->requests; r; r = r->next)
        for (int i = 0; i < r->req.n; i++)
            n += r->images[i].state != IMG_DONE;
    return n;
}

void jobs_fail_all(ingress_t *in, const char *why)
{
    while (in->requests)
        jobs_answer_error(in, in->requests, 503, "server_error", "unavailable", why);
}
