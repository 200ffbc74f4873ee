/* bench_handoff: what it costs to hand a tensor from one stage process to another, next to
 * what copying it would cost.
 *
 * Two processes, the same path a job takes between stages: the owner allocates a block in its
 * pool, hands it over to the consumer's generation, encodes the job (proto) and sends it over a
 * ZeroMQ ipc:// PUSH socket; the consumer receives, decodes, opens the pool (once, cached),
 * checks the block is its own (pool_data), reads one byte of it, releases it and acks with the
 * time at which it held the tensor. The handoff figure is that one-way time (both processes
 * read the same CLOCK_MONOTONIC), from the owner's hand-over to the consumer's first byte;
 * the round trip with the ack is printed too. Next to them, memcpy of the same bytes in the
 * same run: what a copying pipeline would pay instead.
 *
 * Writing a large tensor evicts the caches, and the handoff after it runs cold (code, socket
 * buffers, page tables). --cold writes 64 MiB of unrelated memory before every handoff, small
 * ones and the tensor-less message too, so that every row pays the same cold start and the
 * rows show what depends on the tensor's size: nothing. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tools/bench/bench_util.h"
#include "ipc/pool.h"
#include "ipc/proto.h"

#define OWNER_GEN 1
#define CONSUMER_GEN 2
#define ROUNDS 200
#define EVICT_BYTES (64u << 20)



/* The consumer: receive a job, check and touch its tensor, release it, ack. */
static int consumer(const char *instance, const char *dir)
{
    char ep[512], err[256];
    void *ctx = zmq_ctx_new();
    void *in = zmq_socket(ctx, ZMQ_PULL), *ack = zmq_socket(ctx, ZMQ_PUSH);
    snprintf(ep, sizeof ep, "ipc://%s/consumer", dir);
    zmq_bind(in, ep);
    snprintf(ep, sizeof ep, "ipc://%s/ack", dir);
    zmq_connect(ack, ep);
    pool_cache_t *cache = pool_cache_new(instance);
    proto_msg_t *msg = malloc(sizeof *msg);
    char buf[PROTO_MAX_FRAME];
    volatile uint8_t sink = 0;
    zmq_send(ack, "h", 1, 0); /* bound: the owner may start */
    for (;;) {
        int n = zmq_recv(in, buf, sizeof buf, 0);
        if (n <= 0 || (size_t)n > sizeof buf)
            break;
        if (proto_decode(buf, (size_t)n, msg, err, sizeof err) != 0 || msg->type != PROTO_MSG_JOB)
            break;
        if (msg->u.job.n_tensors == 0 && msg->u.job.attempt == 0)
            break; /* the end */
        if (msg->u.job.n_tensors == 0) { /* a job without a tensor: the messaging alone */
            int64_t t_seen = bench_now_ns();
            zmq_send(ack, &t_seen, sizeof t_seen, 0);
            continue;
        }
        const proto_tensor_ref_t *ref = &msg->u.job.tensors[0];
        pool_t *p = pool_cache_get(cache, ref->pool, ref->gen, err, sizeof err);
        const uint8_t *data = p ? pool_data(p, ref->offset, ref->bytes, CONSUMER_GEN) : NULL;
        if (!data) {
            fprintf(stderr, "consumer: bad reference: %s\n", p ? "not held" : err);
            return 1;
        }
        sink ^= data[ref->bytes - 1];
        int64_t t_held = bench_now_ns();
        pool_release(p, ref->offset, CONSUMER_GEN);
        zmq_send(ack, &t_held, sizeof t_held, 0);
    }
    (void)sink;
    free(msg);
    pool_cache_free(&cache);
    zmq_close(in);
    zmq_close(ack);
    zmq_ctx_term(ctx);
    return 0;
}

int main(int argc, char **argv)
{
    static const uint64_t sizes[] = {4096, 1u << 20, 64u << 20, 256u << 20};
    bool cold = argc > 1 && strcmp(argv[1], "--cold") == 0;
    char dir[] = "/tmp/diffusiond-bench-XXXXXX", instance[32], err[256], ep[512];
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(instance, sizeof instance, "bench%d", (int)getpid());
    pool_t *pool = pool_create(instance, 0, OWNER_GEN, (256u << 20) + (1u << 20), POOL_DEVICE_HOST,
                               err, sizeof err);
    if (!pool) {
        fprintf(stderr, "bench_handoff: %s\n", err);
        return 1;
    }
    pid_t child = fork();
    if (child == 0)
        _exit(consumer(instance, dir));

    void *ctx = zmq_ctx_new();
    void *out = zmq_socket(ctx, ZMQ_PUSH), *ack = zmq_socket(ctx, ZMQ_PULL);
    snprintf(ep, sizeof ep, "ipc://%s/ack", dir);
    zmq_bind(ack, ep);
    snprintf(ep, sizeof ep, "ipc://%s/consumer", dir);
    zmq_connect(out, ep);
    char a;
    zmq_recv(ack, &a, 1, 0);
    int64_t t_held;

    printf("tensor handoff between two processes (median of %d), memcpy of the same bytes%s\n",
           ROUNDS, cold ? "; caches evicted before each handoff" : "");
    printf("%10s %12s %14s %12s %14s\n", "bytes", "handoff_us", "round_trip_us", "memcpy_us",
           "handoff/copy");
    proto_msg_t msg = {.type = PROTO_MSG_JOB};
    double t_hand[ROUNDS], t_round[ROUNDS], t_copy[ROUNDS]; /* ns */
    uint8_t *copy_dst = malloc(256u << 20);
    if (!copy_dst)
        return 1;
    memset(copy_dst, 0, 256u << 20); /* fault the pages in: time the copy, not the faults */
    uint8_t *evict = cold ? malloc(EVICT_BYTES) : NULL;
    if (cold && !evict)
        return 1;
    int rc = 0;
    /* First the same job message with no tensor: the part of a handoff that is messaging. */
    for (int r = 0; r < ROUNDS; r++) {
        if (cold)
            memset(evict, r, EVICT_BYTES);
        memset(&msg.u.job, 0, sizeof msg.u.job);
        msg.u.job.id = (uint64_t)r;
        msg.u.job.attempt = 1;
        msg.u.job.to_gen = CONSUMER_GEN;
        snprintf(msg.u.job.origin, sizeof msg.u.job.origin, "bench");
        proto_buf_t buf;
        int64_t t0 = bench_now_ns();
        if (proto_encode(&msg, &buf, err, sizeof err) != 0)
            return 1;
        zmq_send(out, buf.data, buf.size, 0);
        proto_buf_free(&buf);
        if (zmq_recv(ack, &t_held, sizeof t_held, 0) != sizeof t_held)
            return 1;
        t_round[r] = (double)(bench_now_ns() - t0);
        t_hand[r] = (double)(t_held - t0);
    }
    printf("%10s %12.1f %14.1f %12s %14s\n", "no tensor", bench_median(t_hand, ROUNDS) / 1e3,
           bench_median(t_round, ROUNDS) / 1e3, "-", "-");
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0] && rc == 0; k++) {
        uint64_t bytes = sizes[k];
        int rounds = bytes >= (64u << 20) ? ROUNDS / 4 : ROUNDS;
        for (int r = 0; r < rounds; r++) {
            uint64_t off;
            if (pool_alloc(pool, bytes, OWNER_GEN, &off) != 0) {
                fprintf(stderr, "bench_handoff: pool exhausted\n");
                rc = 1;
                break;
            }
            uint8_t *data = pool_data(pool, off, bytes, OWNER_GEN);
            memset(data, r, bytes); /* a real producer wrote it: the pages are resident */
            if (cold)
                memset(evict, r, EVICT_BYTES);

            int64_t t0 = bench_now_ns();
            proto_job_t *job = &msg.u.job;
            memset(job, 0, sizeof *job);
            job->id = (uint64_t)r;
            job->to_gen = CONSUMER_GEN;
            snprintf(job->origin, sizeof job->origin, "bench");
            job->n_tensors = 1;
            job->tensors[0] = (proto_tensor_ref_t){.pool = 0, .gen = OWNER_GEN, .offset = off,
                                                   .bytes = bytes, .device = -1,
                                                   .dtype = PROTO_DTYPE_U8, .ndim = 1,
                                                   .shape = {(int64_t)bytes}};
            pool_hand_over(pool, off, OWNER_GEN, CONSUMER_GEN);
            proto_buf_t buf;
            if (proto_encode(&msg, &buf, err, sizeof err) != 0) {
                fprintf(stderr, "bench_handoff: %s\n", err);
                rc = 1;
                break;
            }
            zmq_send(out, buf.data, buf.size, 0);
            proto_buf_free(&buf);
            if (zmq_recv(ack, &t_held, sizeof t_held, 0) != sizeof t_held) {
                fprintf(stderr, "bench_handoff: the consumer failed\n");
                rc = 1;
                break;
            }
            t_round[r] = (double)(bench_now_ns() - t0);
            t_hand[r] = (double)(t_held - t0);

            t0 = bench_now_ns();
            memcpy(copy_dst, data, bytes);
            t_copy[r] = (double)(bench_now_ns() - t0);
            __asm__ volatile("" : : "r"(copy_dst) : "memory"); /* keep the copy */
        }
        if (rc)
            break;
        double h = bench_median(t_hand, rounds) / 1e3, c = bench_median(t_copy, rounds) / 1e3;
        double rt = bench_median(t_round, rounds) / 1e3;
        printf("%10llu %12.1f %14.1f %12.1f %13.4fx\n", (unsigned long long)bytes, h, rt, c, h / c);
    }
    msg.u.job.n_tensors = 0;
    msg.u.job.attempt = 0;
    proto_buf_t end;
    if (proto_encode(&msg, &end, err, sizeof err) == 0) {
        zmq_send(out, end.data, end.size, 0);
        proto_buf_free(&end);
    }
    int status;
    waitpid(child, &status, 0);
    free(copy_dst);
    free(evict);
    zmq_close(out);
    zmq_close(ack);
    zmq_ctx_term(ctx);
    pool_close(&pool);
    snprintf(ep, sizeof ep, "%s/consumer", dir);
    unlink(ep);
    snprintf(ep, sizeof ep, "%s/ack", dir);
    unlink(ep);
    rmdir(dir);
    return rc;
}
