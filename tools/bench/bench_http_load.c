/* bench_http_load: a load client for diffusiond's HTTP API. N client threads each send requests
 * over their own keep-alive connection, one at a time, until the total is reached; it prints
 * the throughput and the latency percentiles.
 *
 *   bench_http_load --port P --concurrency N --requests M --body 'JSON'   POST /v1/images/generations
 *   bench_http_load --port P --concurrency N --seconds S --health         GET /health as fast as it can
 *
 * Output (one line each, for tools/bench/bench_service.py):
 *   load_ok <requests answered 200>   load_failed <others>   load_seconds <wall time>
 *   load_rps <200s per second>   load_p50_ms <median latency>   load_p99_ms <99th percentile>
 * A response is read whole (status line, headers, Content-Length bytes); only 200 counts. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "tools/bench/bench_util.h"

typedef struct {
    int port;
    const char *request;       /* the whole HTTP request */
    size_t request_len;
    int total;                 /* requests to send in all (0: until deadline) */
    double deadline_s;         /* health mode: stop at this time */
    atomic_int next;           /* requests claimed so far */
    double *latency_ms;        /* [total or capacity] */
    int capacity;
    atomic_int ok, failed, recorded;
} load_t;

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one response; returns its status, 0 on a broken connection. *keep is false when the
 * server closes the connection after it. */
static int read_response(int fd, char **buf, size_t *cap, bool *keep)
{
    size_t have = 0, head = 0;
    for (;;) {
        if (have + 4096 > *cap) {
            *cap = (*cap ? *cap * 2 : 65536);
            *buf = realloc(*buf, *cap);
            if (!*buf)
                return 0;
        }
        ssize_t r = recv(fd, *buf + have, *cap - have - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        have += (size_t)r;
        (*buf)[have] = 0;
        char *end = strstr(*buf, "\r\n\r\n");
        if (end) {
            head = (size_t)(end - *buf) + 4;
            break;
        }
    }
    int status = 0;
    if (sscanf(*buf, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    size_t body = 0;
    *keep = true;
    for (char *line = strstr(*buf, "\r\n"); line && line < *buf + head; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, "Content-Length:", 15))
            body = strtoul(line + 17, NULL, 10);
        if (!strncasecmp(line + 2, "Connection: close", 17))
            *keep = false;
    }
    while (have < head + body) {
        if (head + body + 1 > *cap) {
            *cap = head + body + 1;
            *buf = realloc(*buf, *cap);
            if (!*buf)
                return 0;
        }
        ssize_t r = recv(fd, *buf + have, head + body - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        have += (size_t)r;
    }
    return status;
}

static void *client(void *arg)
{
    load_t *L = arg;
    int fd = -1;
    char *buf = NULL;
    size_t cap = 0;
    for (;;) {
        if (L->total > 0 && atomic_fetch_add(&L->next, 1) >= L->total)
            break;
        if (L->total == 0 && bench_now_s() >= L->deadline_s)
            break;
        if (fd < 0 && (fd = dial(L->port)) < 0) {
            atomic_fetch_add(&L->failed, 1);
            continue;
        }
        double t0 = bench_now_s();
        bool keep = false;
        int status = send_all(fd, L->request, L->request_len) == 0
                         ? read_response(fd, &buf, &cap, &keep) : 0;
        double ms = (bench_now_s() - t0) * 1e3;
        if (status == 200) {
            atomic_fetch_add(&L->ok, 1);
            int i = atomic_fetch_add(&L->recorded, 1);
            if (i < L->capacity)
                L->latency_ms[i] = ms;
        } else {
            atomic_fetch_add(&L->failed, 1);
        }
        if (!keep || status == 0) {
            close(fd);
            fd = -1;
        }
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}

static double percentile(double *v, int n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv)
{
    int port = 0, conc = 1, requests = 0;
    double seconds = 0;
    const char *body = NULL;
    bool health = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc) conc = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc) requests = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--body") && i + 1 < argc) body = argv[++i];
        else if (!strcmp(argv[i], "--health")) health = true;
        else {
            fprintf(stderr, "usage: bench_http_load --port P --concurrency N (--requests M --body JSON"
                            " | --seconds S --health)\n");
            return 2;
        }
    }
    if (port <= 0 || conc < 1 || conc > 1024 || (health ? seconds <= 0 : requests < 1 || !body)) {
        fprintf(stderr, "bench_http_load: bad arguments\n");
        return 2;
    }
    char *req;
    int n = health ? asprintf(&req, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                   : asprintf(&req,
                              "POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                              strlen(body), body);
    if (n < 0)
        return 1;
    load_t L = {.port = port, .request = req, .request_len = (size_t)n, .total = requests,
                .capacity = health ? 4000000 : requests};
    L.latency_ms = malloc(sizeof(double) * (size_t)L.capacity);
    pthread_t *t = malloc(sizeof *t * (size_t)conc);
    if (!L.latency_ms || !t)
        return 1;
    double start = bench_now_s();
    L.deadline_s = start + seconds;
    for (int i = 0; i < conc; i++)
        pthread_create(&t[i], NULL, client, &L);
    for (int i = 0; i < conc; i++)
        pthread_join(t[i], NULL);
    double wall = bench_now_s() - start;
    int ok = atomic_load(&L.ok), rec = atomic_load(&L.recorded);
    if (rec > L.capacity)
        rec = L.capacity;
    printf("load_ok %d\nload_failed %d\nload_seconds %.3f\nload_rps %.2f\n", ok,
           atomic_load(&L.failed), wall, ok / wall);
    printf("load_p50_ms %.2f\nload_p99_ms %.2f\n", percentile(L.latency_ms, rec, 0.50),
           percentile(L.latency_ms, rec, 0.99));
    free(L.latency_ms);
    free(t);
    free(req);
    return atomic_load(&L.failed) ? 1 : 0;
}
