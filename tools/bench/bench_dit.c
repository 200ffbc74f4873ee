/* bench_dit: one forward of a Qwen-Image transformer folder, timed (median of --runs), with
 * the peak resident memory next to the size of the f32 weights.
 *   bench_dit FOLDER [--img-tokens 1024] [--txt-tokens 64] [--threads N] [--runs 3]
 * Prints "dit_forward_ms <median>" for tools/bench/bench_dit.py, which times the reference on
 * the same folder and prints the ratio. Inputs are fixed pseudo-random values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <time.h>

#include "tools/bench/bench_util.h"
#include "nn/ops.h"
#include "nn/philox.h"
#include "nn/qwen_image_dit.h"


int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_dit FOLDER [--img-tokens N] [--txt-tokens N] [--threads N] [--runs N]\n");
        return 2;
    }
    int img_side = 32, txt = 64, threads = 0, runs = 3;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--img-tokens")) {
            int n = atoi(argv[i + 1]), s = 1;
            while (s * s < n)
                s++;
            img_side = s;
        } else if (!strcmp(argv[i], "--txt-tokens")) txt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
    }
    if (runs < 1 || runs > 100 || txt < 1) {
        fprintf(stderr, "bench_dit: bad arguments\n");
        return 2;
    }
    nn_ctx_t ctx;
    char err[1024];
    if (nn_ctx_init_cpu(&ctx, threads) != 0)
        return 1;
    double t0 = (bench_now_s() * 1e3);
    dit_t *dit = dit_load(argv[1], &ctx, err, sizeof err);
    if (!dit) {
        fprintf(stderr, "bench_dit: %s\n", err);
        return 1;
    }
    double load_ms = (bench_now_s() * 1e3) - t0;
    const dit_config_t *c = dit_config(dit);
    int64_t S = (int64_t)img_side * img_side, L = txt;
    int64_t out_ch = (int64_t)c->patch_size * c->patch_size * c->out_channels;
    float *img = malloc(sizeof(float) * (size_t)(S * c->in_channels));
    float *emb = malloc(sizeof(float) * (size_t)(L * c->joint_attention_dim));
    float *out = malloc(sizeof(float) * (size_t)(S * out_ch));
    philox_normal(1, 0, (uint64_t)(S * c->in_channels), img);
    philox_normal(2, 0, (uint64_t)(L * c->joint_attention_dim), emb);
    float t = 0.5f;
    dit_input_t in = {.batch = 1, .img_len = S, .txt_len = L, .img = img, .txt = emb,
                      .timestep = &t, .n_images = 1,
                      .images = {{.frames = 1, .height = img_side, .width = img_side}}};
    double *ms = malloc(sizeof(double) * (size_t)runs);
    long load_peak = peak_rss_kib();
    /* The loader's peak holds the mapped file and the f32 copy at once; the forward's peak is
     * the weights plus activations: measure it on its own. */
    bool forward_peak = reset_peak_rss() == 0;
    /* One untimed forward first, as the reference gets: the activations' first touch belongs
     * to no request but the first. */
    if (dit_forward(dit, &in, out, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "bench_dit: %s\n", err);
        return 1;
    }
    for (int r = 0; r < runs; r++) {
        double a = (bench_now_s() * 1e3);
        if (dit_forward(dit, &in, out, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "bench_dit: %s\n", err);
            return 1;
        }
        ms[r] = (bench_now_s() * 1e3) - a;
    }
    double median_ms = bench_median(ms, runs);
    long fwd_peak = forward_peak ? peak_rss_kib() : -1;
    printf("config: D=%d, %d heads of %d, %d layers; %lld image + %lld text tokens; %d threads\n",
           c->dim, c->num_attention_heads, c->attention_head_dim, c->num_layers, (long long)S,
           (long long)L, ctx.threads);
    printf("weights: %.1f MiB f32, loaded in %.0f ms (peak RSS while loading %.1f MiB); "
           "peak RSS of the forward %.1f MiB\n",
           (double)dit_weight_bytes(dit) / 1048576.0, load_ms, (double)load_peak / 1024.0,
           (double)fwd_peak / 1024.0);
    printf("dit_forward_ms %.1f\n", median_ms);
    free(ms);
    free(img);
    free(emb);
    free(out);
    dit_free(&dit);
    nn_ctx_free(&ctx);
    return 0;
}
