/* bench_text_encoder: one forward of a Qwen2.5-VL text encoder folder, timed (median of
 * --runs), with the peak resident memory next to the size of the f32 weights.
 *   bench_text_encoder FOLDER [--tokens 256] [--threads N] [--runs 3]
 * Prints "text_forward_ms <median>" for tools/bench/bench_text_encoder.py, which times the
 * reference on the same folder and prints the ratio. Token ids are fixed pseudo-random values. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "nn/qwen_text_encoder.h"
#include "tools/bench/bench_util.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_text_encoder FOLDER [--tokens N] [--threads N] [--runs N]\n");
        return 2;
    }
    int tokens = 256, threads = 0, runs = 3;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
    }
    if (runs < 1 || runs > 100 || tokens < 1 || tokens > 1 << 16) {
        fprintf(stderr, "bench_text_encoder: bad arguments\n");
        return 2;
    }
    nn_ctx_t ctx;
    char err[1024];
    if (nn_ctx_init_cpu(&ctx, threads) != 0)
        return 1;
    double t0 = bench_now_s();
    qwen_text_encoder_t *enc = qwen_text_encoder_load(argv[1], &ctx, err, sizeof err);
    if (!enc) {
        fprintf(stderr, "bench_text_encoder: %s\n", err);
        return 1;
    }
    double load_ms = (bench_now_s() - t0) * 1e3;
    const qwen_text_config_t *c = qwen_text_encoder_config(enc);
    int32_t *ids = malloc(sizeof *ids * (size_t)tokens);
    float *out = malloc(sizeof *out * (size_t)tokens * (size_t)c->hidden_size);
    double *ms = malloc(sizeof *ms * (size_t)runs);
    if (!ids || !out || !ms)
        return 1;
    uint64_t x = 12345;
    for (int i = 0; i < tokens; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)c->vocab_size);
    }
    bool forward_peak = reset_peak_rss() == 0;
    /* One untimed forward first, as the reference gets: the activations' first touch and the
     * embedding rows' page faults belong to no request but the first. */
    if (qwen_text_encoder_forward(enc, ids, tokens, out, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "bench_text_encoder: %s\n", err);
        return 1;
    }
    for (int r = 0; r < runs; r++) {
        double a = bench_now_s();
        if (qwen_text_encoder_forward(enc, ids, tokens, out, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "bench_text_encoder: %s\n", err);
            return 1;
        }
        ms[r] = (bench_now_s() - a) * 1e3;
    }
    long fwd_peak = forward_peak ? peak_rss_kib() : -1;
    printf("config: hidden %d, %d heads of %d (%d kv heads), MLP %d, %d layers; %d tokens; "
           "%d threads\n", c->hidden_size, c->num_heads, c->head_dim, c->num_kv_heads,
           c->intermediate_size, c->num_layers, tokens, ctx.threads);
    printf("weights: %.1f MiB f32 (embedding left in the file), loaded in %.0f ms; peak RSS of "
           "the forward %.1f MiB\n", (double)qwen_text_encoder_weight_bytes(enc) / 1048576.0,
           load_ms, (double)fwd_peak / 1024.0);
    printf("text_forward_ms %.1f\n", bench_median(ms, runs));
    free(ids);
    free(out);
    free(ms);
    qwen_text_encoder_free(&enc);
    nn_ctx_free(&ctx);
    return 0;
}
