/* metrics: Prometheus text for GET /metrics, from what ingress itself sees, plus each stage
 * replica's busy time and job counts, which travel in heartbeats to the supervisor: ingress
 * reads them from the supervisor's status.json in the runtime folder (rewritten every
 * heartbeat), so they are at most a heartbeat old. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ingress.h"

static const double metrics_bounds[INGRESS_LATENCY_BUCKETS] = {
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
};

static const char *const metrics_route_names[INGRESS_N_ROUTES] = {
    "/v1/images/generations", "/health", "/ready", "/metrics", "/openapi.json", "other",
};

void metrics_count(ingress_t *in, int route, int status)
{
    if (route < 0 || route >= INGRESS_N_ROUTES || status < 100 || status >= 600)
        return;
    in->m.route_status[route][status - 100]++;
}

void metrics_latency(ingress_t *in, double seconds)
{
    in->m.latency_count++;
    in->m.latency_sum += seconds;
    for (int i = 0; i < INGRESS_LATENCY_BUCKETS; i++)
        if (seconds <= metrics_bounds[i])
            in->m.latency_bucket[i]++;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} metrics_out_t;

static void out(metrics_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out(metrics_out_t *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->failed = 1;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
}

/* Per replica, from <runtime_dir>/status.json: busy seconds (time computing jobs: callbacks
 * and model workers), jobs done and failed, pool bytes in use. Silent when the file cannot be
 * read (the supervisor writes it once a heartbeat). */
static void stage_stats(ingress_t *in, metrics_out_t *o)
{
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/status.json", stage_runtime_dir(in->st));
    json_t *root = json_load_file(path, 0, NULL);
    json_t *slots = root ? json_object_get(root, "slots") : NULL;
    if (!json_is_array(slots)) {
        json_decref(root);
        return;
    }
    static const struct {
        const char *key, *name, *help, *type;
        double scale;
    } series[] = {
        {"busy_us", "diffusiond_stage_busy_seconds_total", "Time the replica spent computing jobs.",
         "counter", 1e-6},
        {"jobs_done", "diffusiond_stage_jobs_done_total", "Jobs the replica finished.", "counter", 1},
        {"jobs_failed", "diffusiond_stage_jobs_failed_total", "Jobs the replica failed.", "counter", 1},
        {"pool_used", "diffusiond_stage_pool_bytes", "Bytes in use in the replica's tensor pool.",
         "gauge", 1},
    };
    for (size_t k = 0; k < sizeof series / sizeof series[0]; k++) {
        out(o, "# HELP %s %s (per process: starts again at 0 when it restarts)\n# TYPE %s %s\n",
            series[k].name, series[k].help, series[k].name, series[k].type);
        size_t i;
        json_t *slot;
        json_array_foreach(slots, i, slot) {
            json_t *stage = json_object_get(slot, "stage"), *rep = json_object_get(slot, "replica");
            json_t *v = json_object_get(slot, series[k].key);
            if (!json_is_string(stage) || !json_is_integer(rep) || !json_is_integer(v))
                continue;
            out(o, "%s{stage=\"%s\",replica=\"%lld\"} %.6g\n", series[k].name,
                json_string_value(stage), (long long)json_integer_value(rep),
                (double)json_integer_value(v) * series[k].scale);
        }
    }
    json_decref(root);
}


char *metrics_render(ingress_t *in)
{
    metrics_out_t o = {.buf = malloc(4096), .cap = 4096};
    if (!o.buf)
        return NULL;
    o.buf[0] = '\0';
    const ingress_metrics_t *m = &in->m;

    out(&o, "# HELP diffusiond_http_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE diffusiond_http_requests_total counter\n");
    for (int r = 0; r < INGRESS_N_ROUTES; r++)
        for (int s = 100; s < 600; s++)
            if (m->route_status[r][s - 100])
                out(&o, "diffusiond_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                    metrics_route_names[r], s, (unsigned long long)m->route_status[r][s - 100]);

    out(&o, "# HELP diffusiond_queue_requests Generation requests accepted and not answered.\n"
            "# TYPE diffusiond_queue_requests gauge\ndiffusiond_queue_requests %u\n"
            "# HELP diffusiond_queue_limit http_queue_max.\n"
            "# TYPE diffusiond_queue_limit gauge\ndiffusiond_queue_limit %d\n",
        in->n_requests, in->cfg->http_queue_max);
    out(&o, "# HELP diffusiond_jobs_inflight Images of accepted requests not back yet.\n"
            "# TYPE diffusiond_jobs_inflight gauge\ndiffusiond_jobs_inflight %u\n",
        jobs_inflight(in));
    out(&o, "# HELP diffusiond_images_total Images answered to clients.\n"
            "# TYPE diffusiond_images_total counter\ndiffusiond_images_total %llu\n",
        (unsigned long long)m->images);
    out(&o, "# HELP diffusiond_jobs_total Jobs by what happened to them at ingress.\n"
            "# TYPE diffusiond_jobs_total counter\n"
            "diffusiond_jobs_total{event=\"sent\"} %llu\n"
            "diffusiond_jobs_total{event=\"retried\"} %llu\n"
            "diffusiond_jobs_total{event=\"failed\"} %llu\n"
            "diffusiond_jobs_total{event=\"cancelled\"} %llu\n"
            "diffusiond_jobs_total{event=\"stale\"} %llu\n",
        (unsigned long long)m->jobs_sent, (unsigned long long)m->jobs_retried,
        (unsigned long long)m->jobs_failed, (unsigned long long)m->jobs_cancelled,
        (unsigned long long)m->jobs_stale);
    out(&o, "# HELP diffusiond_job_seconds Time from sending an image's job to its result "
            "(the whole route).\n# TYPE diffusiond_job_seconds summary\n"
            "diffusiond_job_seconds_sum %.6f\ndiffusiond_job_seconds_count %llu\n",
        m->job_seconds_sum, (unsigned long long)m->job_seconds_count);

    out(&o, "# HELP diffusiond_request_seconds Time from accepting a generation request to its "
            "200 answer.\n# TYPE diffusiond_request_seconds histogram\n");
    for (int i = 0; i < INGRESS_LATENCY_BUCKETS; i++)
        out(&o, "diffusiond_request_seconds_bucket{le=\"%g\"} %llu\n", metrics_bounds[i],
            (unsigned long long)m->latency_bucket[i]);
    out(&o, "diffusiond_request_seconds_bucket{le=\"+Inf\"} %llu\n"
            "diffusiond_request_seconds_sum %.6f\ndiffusiond_request_seconds_count %llu\n",
        (unsigned long long)m->latency_count, m->latency_sum,
        (unsigned long long)m->latency_count);

    const config_t *cfg = stage_config(in->st);
    out(&o, "# HELP diffusiond_stage_ready 1 when every replica of the stage is up.\n"
            "# TYPE diffusiond_stage_ready gauge\n");
    for (int i = 0; i < cfg->n_stages; i++)
        out(&o, "diffusiond_stage_ready{stage=\"%s\"} %d\n", cfg->stages[i].name,
            stage_peer_ready(in->st, cfg->stages[i].name) ? 1 : 0);
    out(&o, "# HELP diffusiond_stage_generation Newest process generation of the stage (grows "
            "with each restart).\n# TYPE diffusiond_stage_generation gauge\n");
    for (int i = 0; i < cfg->n_stages; i++)
        out(&o, "diffusiond_stage_generation{stage=\"%s\"} %u\n", cfg->stages[i].name,
            stage_peer_gen(in->st, cfg->stages[i].name));
    stage_stats(in, &o);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}
