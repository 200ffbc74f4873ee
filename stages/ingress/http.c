/* http: libevent's HTTP server, the routes, and the JSON answers and errors.
 * Routes: POST /v1/images/generations, GET /health, /ready, /metrics, /openapi.json. Every
 * error is {"error":{"message","type","param","code"}} (OpenAI's shape). A few errors are
 * libevent's own and answered before a route sees the request: 413 for a body over
 * http_body_max, 400 for a request line or headers that are not HTTP or over 64K. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>

#include "ingress.h"
#include "ipc/log.h"

#define HTTP_HEADERS_MAX (64 * 1024)
#define HTTP_ACCEPT_PAUSE_MS 100
#define HTTP_ACCEPT_LOG_MS 1000
/* Descriptors the HTTP server leaves to ZeroMQ (ipc/fd_reserve.h): each replica may be
 * reconnecting its two sockets to us while we reconnect ours to it, and libzmq opens an
 * eventfd for each socket made. */
#define HTTP_FD_RESERVE_BASE 64
#define HTTP_FD_RESERVE_PER_REPLICA 4
#define HTTP_FEW_CONNECTIONS 256 /* fewer than this room for clients is worth a warning */

/* Error texts may quote a client's bytes cut anywhere: keep them valid UTF-8 for JSON. */
static json_t *http_json_text(const char *s)
{
    json_t *j = json_string(s);
    if (j)
        return j;
    char buf[1024];
    size_t n = 0;
    for (; *s && n + 1 < sizeof buf; s++)
        buf[n++] = (unsigned char)*s < 0x80 ? *s : '?';
    buf[n] = '\0';
    return json_string(buf);
}

/* libevent calls this once a reply is written out whole. The close callback goes too: the
 * connection may be freed right after (Connection: close), and must not count it again. */
static void http_reply_written(struct evhttp_request *hreq, void *arg)
{
    ingress_t *in = arg;
    struct evhttp_connection *conn = evhttp_request_get_connection(hreq);
    if (conn)
        evhttp_connection_set_closecb(conn, NULL, NULL);
    if (in->replies_writing > 0)
        in->replies_writing--;
}

/* libevent frees the connection without calling the on-complete callback when the write
 * fails (the client left mid-answer) or times out: the reply is over then too. */
static void http_reply_lost(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    ingress_t *in = arg;
    if (in->replies_writing > 0)
        in->replies_writing--;
}

/* Sends the reply, counted as being written until libevent has sent its last byte or lost
 * the connection: a stop must not free the server under a half-sent answer. body may be
 * NULL. A HEAD request gets the headers a GET would (Content-Length too) and no body:
 * libevent 2.1 leaves out Content-Length for HEAD but still writes the body, which a client
 * would then read as the start of the next answer on a kept-alive connection. */
static void http_reply(ingress_t *in, struct evhttp_request *hreq, int status,
                       struct evbuffer *body)
{
    const char *reason = status == 200 ? "OK" : NULL; /* NULL: libevent's phrase for status */
    if (evhttp_request_get_command(hreq) == EVHTTP_REQ_HEAD) {
        char len[24];
        snprintf(len, sizeof len, "%zu", body ? evbuffer_get_length(body) : 0);
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Length", len);
        body = NULL;
    }
    /* Without a connection libevent frees the request and writes nothing. The connection's
     * close callback is free here: jobs.c detaches its own before answering. */
    struct evhttp_connection *conn = evhttp_request_get_connection(hreq);
    if (conn) {
        evhttp_connection_set_closecb(conn, http_reply_lost, in);
        evhttp_request_set_on_complete_cb(hreq, http_reply_written, in);
        in->replies_writing++;
    }
    evhttp_send_reply(hreq, status, reason, body); /* moves the data */
}

void http_send_json_buffer(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                           struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Type",
                      "application/json");
    http_reply(in, hreq, status, body);
    evbuffer_free(body);
    metrics_count(in, route, status);
}

void http_send_json(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                    char *text)
{
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Type",
                      "application/json");
    if (body && text)
        evbuffer_add(body, text, strlen(text));
    http_reply(in, hreq, status, body);
    if (body)
        evbuffer_free(body);
    free(text);
    metrics_count(in, route, status);
}

void http_send_error(ingress_t *in, struct evhttp_request *hreq, int route, int status,
                     const char *type, const char *param, const char *code, const char *message)
{
    json_t *e = json_object();
    json_object_set_new(e, "message", http_json_text(message));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param && param[0] ? http_json_text(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_pack("{s:o}", "error", e);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
    if (status == 503 || status == 429)
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "Retry-After", "1");
    if (status == 401)
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "WWW-Authenticate",
                          "Bearer");
    http_send_json(in, hreq, route, status, text);
}

static void http_send_text(ingress_t *in, struct evhttp_request *hreq, int route,
                           const char *type, const char *text)
{
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Type", type);
    if (body)
        evbuffer_add(body, text, strlen(text));
    http_reply(in, hreq, 200, body);
    if (body)
        evbuffer_free(body);
    metrics_count(in, route, 200);
}

/* Every stage of the pipeline up, the queue below its limit, and not draining. */
bool http_ready(ingress_t *in, char *why, size_t whylen)
{
    const config_t *cfg = stage_config(in->st);
    if (stage_draining(in->st)) {
        snprintf(why, whylen, "the service is stopping");
        return false;
    }
    for (int i = 0; i < INGRESS_N_STEPS; i++) {
        if (!config_find_stage(cfg, ingress_steps[i])) {
            snprintf(why, whylen, "the config has no [stage.%s]", ingress_steps[i]);
            return false;
        }
    }
    for (int i = 0; i < cfg->n_stages; i++) {
        if (!stage_peer_ready(in->st, cfg->stages[i].name)) {
            snprintf(why, whylen, "stage %s is not ready", cfg->stages[i].name);
            return false;
        }
    }
    if (in->n_requests >= (uint32_t)in->cfg->http_queue_max) {
        snprintf(why, whylen, "the queue is full (%u requests)", in->n_requests);
        return false;
    }
    return true;
}

static void http_ready_route(ingress_t *in, struct evhttp_request *hreq)
{
    char why[256] = "";
    bool ok = http_ready(in, why, sizeof why);
    json_t *stages = json_object();
    const config_t *cfg = stage_config(in->st);
    for (int i = 0; i < cfg->n_stages; i++)
        json_object_set_new(stages, cfg->stages[i].name,
                            json_boolean(stage_peer_ready(in->st, cfg->stages[i].name)));
    json_t *o = json_pack("{s:s, s:o, s:i, s:i}", "status", ok ? "ready" : "not ready",
                          "stages", stages, "queued", (int)in->n_requests, "queue_max",
                          in->cfg->http_queue_max);
    if (o && !ok)
        json_object_set_new(o, "reason", json_string(why));
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!ok)
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "Retry-After", "1");
    http_send_json(in, hreq, INGRESS_ROUTE_READY, ok ? 200 : 503, text);
}

/* "application/json", with any parameters (charset), any case. */
static bool http_is_json(const char *ct)
{
    if (!ct)
        return false;
    ct += strspn(ct, " ");
    size_t n = strcspn(ct, "; ");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

static void http_generations(ingress_t *in, struct evhttp_request *hreq)
{
    const int route = INGRESS_ROUTE_GENERATIONS;
    struct evkeyvalq *hin = evhttp_request_get_input_headers(hreq);
    const char *ct = evhttp_find_header(hin, "Content-Type");
    if (!http_is_json(ct)) {
        char msg[256];
        snprintf(msg, sizeof msg, "Content-Type must be application/json, not '%.64s'",
                 ct ? ct : "(none)");
        http_send_error(in, hreq, route, 415, "invalid_request_error", NULL,
                        "unsupported_media_type", msg);
        return;
    }
    if (stage_draining(in->st)) {
        http_send_error(in, hreq, route, 503, "server_error", NULL, "unavailable",
                        "the service is stopping; try again on another instance");
        return;
    }
    struct evbuffer *b = evhttp_request_get_input_buffer(hreq);
    size_t len = evbuffer_get_length(b);
    if (len > in->cfg->http_body_max) { /* libevent checks this first; kept for safety */
        http_send_error(in, hreq, route, 413, "invalid_request_error", NULL, "body_too_large",
                        "the body is larger than http_body_max");
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(b, -1) : "";
    gen_request_t req;
    gen_request_error_t err;
    if (gen_request_parse(body, len, &in->limits, &req, &err) != 0) {
        http_send_error(in, hreq, route, 400, "invalid_request_error", err.param, err.code,
                        err.message);
        return;
    }
    if (in->n_requests >= (uint32_t)in->cfg->http_queue_max) {
        gen_request_free(&req);
        http_send_error(in, hreq, route, 503, "server_error", NULL, "queue_full",
                        "too many requests are waiting; try again shortly");
        return;
    }
    jobs_accept(in, hreq, &req);
}

typedef struct {
    const char *path;
    int route;
    unsigned methods; /* EVHTTP_REQ_* */
    const char *allow;
} http_route_t;

static const http_route_t http_routes[] = {
    {"/v1/images/generations", INGRESS_ROUTE_GENERATIONS, EVHTTP_REQ_POST, "POST"},
    {"/health", INGRESS_ROUTE_HEALTH, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD"},
    {"/ready", INGRESS_ROUTE_READY, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD"},
    {"/metrics", INGRESS_ROUTE_METRICS, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD"},
    {"/openapi.json", INGRESS_ROUTE_OPENAPI, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD"},
};

static void http_dispatch(struct evhttp_request *hreq, void *arg)
{
    ingress_t *in = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(hreq);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const http_route_t *r = NULL;
    for (size_t i = 0; path && i < sizeof http_routes / sizeof http_routes[0]; i++)
        if (strcmp(path, http_routes[i].path) == 0)
            r = &http_routes[i];
    if (!r) {
        char msg[256];
        snprintf(msg, sizeof msg, "no route %.128s; see /openapi.json", path ? path : "(bad)");
        http_send_error(in, hreq, INGRESS_ROUTE_OTHER, 404, "invalid_request_error", NULL,
                        "not_found", msg);
        return;
    }
    if (!(evhttp_request_get_command(hreq) & r->methods)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s takes %s", r->path, r->allow);
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "Allow", r->allow);
        http_send_error(in, hreq, r->route, 405, "invalid_request_error", NULL,
                        "method_not_allowed", msg);
        return;
    }
    /* /health stays open so that a supervisor of the host can probe without a token. */
    if (r->route != INGRESS_ROUTE_HEALTH && !auth_check(in, hreq)) {
        http_send_error(in, hreq, r->route, 401, "invalid_request_error", NULL,
                        "invalid_api_key", "a valid 'Authorization: Bearer TOKEN' is required");
        return;
    }
    switch (r->route) {
    case INGRESS_ROUTE_GENERATIONS: http_generations(in, hreq); break;
    case INGRESS_ROUTE_HEALTH:
        http_send_json(in, hreq, r->route, 200, strdup("{\"status\":\"ok\"}"));
        break;
    case INGRESS_ROUTE_READY: http_ready_route(in, hreq); break;
    case INGRESS_ROUTE_METRICS: {
        char *text = metrics_render(in);
        http_send_text(in, hreq, r->route, "text/plain; version=0.0.4; charset=utf-8",
                       text ? text : "");
        free(text);
        break;
    }
    case INGRESS_ROUTE_OPENAPI:
        http_send_text(in, hreq, r->route, "application/json", openapi_document());
        break;
    default: break;
    }
}

/* libevent hands a listener's error callback the listener's argument, which is evhttp's own:
 * the ingress is found here instead (one per process). */
static ingress_t *http_accept_owner;

/* Stops accepting for HTTP_ACCEPT_PAUSE_MS: the connections wait in the listen backlog. The
 * log says so once a second at most. */
static void http_accept_pause(ingress_t *in, const char *why)
{
    if (!in->listener)
        return; /* no longer accepting at all */
    evconnlistener_disable(in->listener);
    struct timeval tv = {0, HTTP_ACCEPT_PAUSE_MS * 1000};
    evtimer_add(in->accept_timer, &tv);
    in->accept_pauses++;
    int64_t now = stage_now_ms();
    if (now - in->accept_logged_ms >= HTTP_ACCEPT_LOG_MS) {
        log_warn("cannot accept connections: %s; accepting pauses %d ms at a time "
                 "(%u pauses since the last such line)", why, HTTP_ACCEPT_PAUSE_MS,
                 in->accept_pauses);
        in->accept_logged_ms = now;
        in->accept_pauses = 0;
    }
}

static void http_pause_for_descriptors(ingress_t *in)
{
    char why[160];
    if (in->fds.count_failed)
        snprintf(why, sizeof why, "no descriptor left to count them with (limit %ld)",
                 fd_limit());
    else
        snprintf(why, sizeof why, "%ld descriptors open, limit %ld, %d kept free for the "
                 "pipeline", in->fds.counted + in->fds.opened_since, fd_limit(),
                 in->fds.reserve);
    http_accept_pause(in, why);
}

static void http_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ingress_t *in = arg;
    if (!in->listener)
        return;
    if (!fd_reserve_room(&in->fds)) {
        http_pause_for_descriptors(in);
        return;
    }
    evconnlistener_enable(in->listener);
}

/* accept() failed other than for a passing reason: out of descriptors (EMFILE: the limit
 * lowered from outside below what is open; ENFILE: the whole system's table is full) or of
 * kernel memory, mostly. libevent would only warn: the listening socket stays readable, so
 * its loop would call accept() again at once, spinning a core and flooding the log until
 * connections close, and missing heartbeats meanwhile. Accepting pauses instead. */
static void http_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg;
    (void)lev;
    int err = EVUTIL_SOCKET_ERROR();
    ingress_t *in = http_accept_owner;
    if (!in || !in->accept_timer)
        return; /* not ours to pause: no timer would resume it */
    http_accept_pause(in, evutil_socket_error_to_string(err));
}

/* evhttp calls this for each connection it has just accepted, before reading from it: the
 * one place that sees every connection. Returning NULL lets evhttp make its bufferevent. */
static struct bufferevent *http_connection_accepted(struct event_base *base, void *arg)
{
    (void)base;
    ingress_t *in = arg;
    if (in->accept_timer && !fd_reserve_opened(&in->fds))
        http_pause_for_descriptors(in); /* this one is served; the next waits for room */
    return NULL;
}

static int http_replicas(const ingress_t *in)
{
    const config_t *cfg = stage_config(in->st);
    int n = 0;
    for (int i = 0; i < cfg->n_stages; i++)
        n += cfg->stages[i].replicas;
    return n;
}

int http_start(ingress_t *in, char *err, size_t errlen)
{
    in->base = event_base_new();
    in->http = in->base ? evhttp_new(in->base) : NULL;
    if (!in->http) {
        snprintf(err, errlen, "cannot start libevent's HTTP server");
        return -1;
    }
    /* Every method reaches the dispatcher, which answers 405 itself (libevent would answer
     * 501 for methods outside this set). */
    evhttp_set_allowed_methods(in->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                             EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(in->http, (ev_ssize_t)in->cfg->http_body_max);
    evhttp_set_max_headers_size(in->http, HTTP_HEADERS_MAX);
    struct timeval tv = {in->cfg->http_io_timeout_ms / 1000,
                         (in->cfg->http_io_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(in->http, &tv);
    evhttp_set_gencb(in->http, http_dispatch, in);

    char host[128];
    snprintf(host, sizeof host, "%s", in->cfg->listen);
    char *colon = strrchr(host, ':'); /* config_check_listen made sure of HOST:PORT */
    if (!colon) {
        snprintf(err, errlen, "listen = %s is not HOST:PORT", in->cfg->listen);
        return -1;
    }
    *colon = '\0';
    int port = atoi(colon + 1);
    char *h = host;
    if (h[0] == '[' && colon > host && colon[-1] == ']') { /* [::1] */
        colon[-1] = '\0';
        h++;
    }
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(in->http, h,
                                                                       (ev_uint16_t)port);
    if (!bound) {
        snprintf(err, errlen, "cannot listen on %s (in use, or not an address of this host)",
                 in->cfg->listen);
        return -1;
    }
    in->listener = evhttp_bound_socket_get_listener(bound);
    in->accept_timer = evtimer_new(in->base, http_accept_resume, in);
    if (!in->accept_timer) {
        snprintf(err, errlen, "cannot start libevent's HTTP server (out of memory)");
        return -1;
    }
    http_accept_owner = in;
    evconnlistener_set_error_cb(in->listener, http_accept_error);

    /* Descriptors: as many as the hard limit allows, less a reserve for ZeroMQ's connections
     * (ipc/fd_reserve.h says why): a few for each replica's sockets as they reconnect, and a
     * margin. */
    long before, limit = fd_raise_limit(&before);
    int reserve = HTTP_FD_RESERVE_BASE + HTTP_FD_RESERVE_PER_REPLICA * http_replicas(in);
    bool cut;
    if (fd_reserve_init(&in->fds, reserve, &cut)) {
        log_info("descriptors: limit %ld (was %ld), %ld open, %d kept free for the pipeline",
                 limit, before, in->fds.counted, in->fds.reserve);
        long room = limit - in->fds.counted - in->fds.reserve;
        if (cut || room < HTTP_FEW_CONNECTIONS)
            log_warn("room for %ld client connections only%s: raise the hard limit on open "
                     "files (systemd's LimitNOFILE, docker's --ulimit nofile)", room,
                     cut ? ", and less than the advised reserve for the pipeline" : "");
    } else
        log_warn("cannot count descriptors (/proc/self/fd): clients may take them all, and "
                 "ZeroMQ aborts the process when it is left none");
    evhttp_set_bevcb(in->http, http_connection_accepted, in);
    return 0;
}

void http_stop_accepting(ingress_t *in)
{
    if (in->listener)
        evconnlistener_disable(in->listener);
    in->listener = NULL; /* and the pause timer leaves it so */
}

void http_stop(ingress_t *in)
{
    if (in->accept_timer)
        event_free(in->accept_timer);
    in->accept_timer = NULL;
    in->listener = NULL;
    http_accept_owner = NULL;
    if (in->http)
        evhttp_free(in->http);
    if (in->base)
        event_base_free(in->base);
    in->http = NULL;
    in->base = NULL;
}
