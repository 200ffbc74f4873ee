/* bench_ops: the CPU backend's speed on the Qwen-Image transformer's shapes, next to what it
 * builds on, measured in the same run.
 *
 * nn_linear on 1088 tokens (1024x1024 at 32 px per token, 64 text tokens) for each kind of
 * Linear a block has, against a bare cblas_sgemm of the same shape with OpenBLAS's own threads
 * (as many as the context has): the ratio is what our way of threading it (OpenBLAS
 * single-threaded on a slice of columns per OpenMP thread, the bias added per slice) gains or
 * costs. Then nn_attention on 1088 tokens, 8 heads of 128
 * (one third of the real model's 24), with its GFLOP/s counted as 4 q_len kv_len head_dim per
 * head. Every figure is the median of several runs after a warm-up; one line per shape. */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tools/bench/bench_util.h"
#include "nn/ops.h"

#define REPS 9


static float *filled(size_t n, float scale)
{
    float *a = malloc(n * sizeof *a);
    if (!a) {
        fprintf(stderr, "bench_ops: out of memory\n");
        exit(1);
    }
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        a[i] = scale * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    return a;
}

static void bench_linear(nn_ctx_t *ctx, int m, int k, int n)
{
    float *x = filled((size_t)m * k, 1), *w = filled((size_t)n * k, 0.1f);
    float *b = filled((size_t)n, 1), *y = filled((size_t)m * n, 0);
    double t_nn[REPS], t_bare[REPS];
    /* Each in its own block of runs: OpenBLAS's threads keep spinning for a while after a
     * call of theirs, and would steal the cores from the next nn_linear if the two took turns
     * (in the model no OpenBLAS thread ever runs: the context sets OpenBLAS to one thread). */
    openblas_set_num_threads(1); /* what the context runs with */
    nn_linear(ctx, x, m, k, w, b, y, n); /* warm-up: threads, pages, caches */
    for (int r = 0; r < REPS; r++) {
        double t0 = bench_now_s();
        nn_linear(ctx, x, m, k, w, b, y, n);
        t_nn[r] = bench_now_s() - t0;
    }
    openblas_set_num_threads(ctx->threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
    for (int r = 0; r < REPS; r++) {
        double t0 = bench_now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, y,
                    n);
        t_bare[r] = bench_now_s() - t0;
    }
    openblas_set_num_threads(1);
    double flop = 2.0 * m * k * n, nn = bench_median(t_nn, REPS), bare = bench_median(t_bare, REPS);
    printf("linear     m=%d k=%d n=%d: nn_linear %.1f GFLOP/s (%.1f ms), bare sgemm %.1f GFLOP/s "
           "(%.1f ms), ratio %.1f%%\n", m, k, n, flop / nn * 1e-9, nn * 1e3, flop / bare * 1e-9,
           bare * 1e3, 100.0 * bare / nn);
    free(x);
    free(w);
    free(b);
    free(y);
}

static void bench_attention(nn_ctx_t *ctx, int tokens, int heads, int head_dim)
{
    size_t n = (size_t)tokens * heads * head_dim;
    float *q = filled(n, 2), *k = filled(n, 2), *v = filled(n, 1), *out = filled(n, 0);
    double t[REPS];
    const float scale = 1.0f / 11.3137085f;
    nn_attention(ctx, q, tokens, k, v, tokens, heads, head_dim, NULL, scale, out);
    for (int r = 0; r < REPS; r++) {
        double t0 = bench_now_s();
        nn_attention(ctx, q, tokens, k, v, tokens, heads, head_dim, NULL, scale, out);
        t[r] = bench_now_s() - t0;
    }
    double s = bench_median(t, REPS), flop = 4.0 * tokens * tokens * head_dim * heads;
    printf("attention  %d tokens, %d heads x %d: %.1f ms (%.1f GFLOP/s)\n", tokens, heads,
           head_dim, s * 1e3, flop / s * 1e-9);
    free(q);
    free(k);
    free(v);
    free(out);
}

int main(void)
{
    nn_ctx_t ctx;
    if (nn_ctx_init_cpu(&ctx, 0) != 0) {
        fprintf(stderr, "bench_ops: cannot make a CPU context\n");
        return 1;
    }
    const char *wait = getenv("OMP_WAIT_POLICY");
    printf("bench_ops: CPU backend, %d threads, OMP_WAIT_POLICY=%s, %s\n", ctx.threads,
           wait ? wait : "(unset: OpenMP threads spin after each op)", openblas_get_config());
    static const int shapes[][2] = {{1024, 1024}, {1024, 4096}, {4096, 1024}, {1024, 6144}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        bench_linear(&ctx, 1088, shapes[i][0], shapes[i][1]);
    bench_attention(&ctx, 1088, 8, 128);
    nn_ctx_free(&ctx);
    return 0;
}
