/* bench_vae: the Qwen-Image VAE on the CPU.
 *   bench_vae FOLDER [--size 256] [--threads N] [--runs 3] [--decode-only] [--tiled]
 *     decode of size/8 x size/8 latents and encode of a size x size image with the vae folder
 *     FOLDER, each timed (median of --runs, after one untimed call; --runs 0: the one call,
 *     timed), with the peak resident
 *     memory of each (weights included); prints "vae_decode_ms <median>" and "vae_encode_ms
 *     <median>" for tools/bench/bench_vae.py, which times the reference on the same folder.
 *     The decode is whole, as the reference's default; --tiled: with the default tiling
 *     (qwen_vae_tiling_default: tiles of 256 beyond 2048x1024 pixels).
 *   bench_vae --conv [--threads N]
 *     the convolution kernel (nn_conv2d, direct) against im2col + OpenBLAS sgemm on the
 *     decoder's 3x3 shapes, each in GFLOP/s: the measurement behind conv_cpu.c's choice.
 * Inputs are fixed pseudo-random values. */
#include <cblas.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn/ops.h"
#include "nn/qwen_image_vae.h"
#include "tools/bench/bench_util.h"

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

/* ---- --conv: the direct kernel against im2col + sgemm -------------------------------------- */

/* The alternative conv_cpu.c measured itself against: each thread copies tiles of IM2COL_TILE
 * output pixels into rows of 9 in_c inputs (im2col) and multiplies them by the [out_c, 9 in_c]
 * weights with single-threaded sgemm, as cpu_linear shares a GEMM; 256-pixel tiles were the
 * best of 64..1024 here. */
enum { IM2COL_TILE = 256 };

static void conv_im2col(int threads, const float *x, int64_t h, int64_t w, int64_t ic,
                        const float *wt /* [oc, 3, 3, ic] */, int64_t oc, float *y, float *scratch)
{
    const int64_t k = 9 * ic, pixels = h * w, tiles = (pixels + IM2COL_TILE - 1) / IM2COL_TILE;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
#ifdef _OPENMP
        float *col = scratch + (size_t)omp_get_thread_num() * IM2COL_TILE * k;
#else
        float *col = scratch;
#endif
        int64_t p0 = t * IM2COL_TILE, n = pixels - p0 < IM2COL_TILE ? pixels - p0 : IM2COL_TILE;
        for (int64_t i = 0; i < n; i++) {
            int64_t py = (p0 + i) / w, px = (p0 + i) % w;
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    int64_t iy = py + ky - 1, ix = px + kx - 1;
                    float *d = col + i * k + (ky * 3 + kx) * ic;
                    if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                        memset(d, 0, (size_t)ic * sizeof(float));
                    else
                        memcpy(d, x + (iy * w + ix) * ic, (size_t)ic * sizeof(float));
                }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)oc, (int)k, 1.0f, col,
                    (int)k, wt, (int)k, 0.0f, y + p0 * oc, (int)oc);
    }
}

static int bench_conv(int threads)
{
    nn_ctx_t ctx;
    if (nn_ctx_init_cpu(&ctx, threads) != 0)
        return 1;
    /* the decoder's 3x3 convolutions of a 1024x1024 decode, each on a 256x256 crop at most */
    static const struct { int64_t ic, oc, side; const char *where; } shapes[] = {
        {96, 96, 256, "level 3 (1024^2, 96 ch)"},
        {192, 96, 256, "upsample to level 3 (192 -> 96)"},
        {192, 192, 256, "level 2 (512^2, 192 ch)"},
        {384, 384, 128, "level 1 (256^2, 384 ch)"},
        {384, 384, 64, "level 0 (128^2, 384 ch, mid block)"},
    };
    printf("3x3 convolutions, %d threads, GFLOP/s (best of 3): direct (nn_conv2d) | im2col + "
           "sgemm\n", ctx.threads);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t ic = shapes[s].ic, oc = shapes[s].oc, side = shapes[s].side;
        const int64_t n = side * side;
        float *x = malloc((size_t)(n * ic) * sizeof(float));
        float *w = malloc((size_t)(oc * ic * 9) * sizeof(float));
        float *wt = malloc((size_t)(oc * ic * 9) * sizeof(float));
        float *y = malloc((size_t)(n * oc) * sizeof(float));
        float *y2 = malloc((size_t)(n * oc) * sizeof(float));
        float *packed = malloc(nn_conv2d_packed_floats(&ctx, oc, ic, 3) * sizeof(float));
        float *scratch = malloc((size_t)ctx.threads * IM2COL_TILE * 9 * (size_t)ic * sizeof(float));
        if (!x || !w || !wt || !y || !y2 || !packed || !scratch)
            return 1;
        fill(x, (size_t)(n * ic), 1, 1.0f);
        fill(w, (size_t)(oc * ic * 9), 2, 0.05f);
        /* torch's [oc, ic, 3, 3] -> rows of [3, 3, ic] for the im2col rows */
        for (int64_t o = 0; o < oc; o++)
            for (int64_t c = 0; c < ic; c++)
                for (int t = 0; t < 9; t++)
                    wt[(o * 9 + t) * ic + c] = w[(o * ic + c) * 9 + t];
        nn_conv2d_pack(&ctx, w, oc, ic, 3, packed);
        const nn_conv2d_t p = {.in_h = side, .in_w = side, .in_c = ic, .out_c = oc, .kernel = 3,
                               .stride = 1, .upsample = 1, .pad_top = 1, .pad_bottom = 1,
                               .pad_left = 1, .pad_right = 1};
        double best_d = 1e9, best_i = 1e9;
        for (int r = 0; r < 4; r++) { /* the first round warms both up */
            double a = bench_now_s();
            nn_conv2d(&ctx, &p, x, packed, NULL, NULL, y);
            double d = bench_now_s() - a;
            a = bench_now_s();
            conv_im2col(ctx.threads, x, side, side, ic, wt, oc, y2, scratch);
            double i = bench_now_s() - a;
            if (r > 0) {
                best_d = d < best_d ? d : best_d;
                best_i = i < best_i ? i : best_i;
            }
        }
        double diff = 0, mag = 0;
        for (int64_t i = 0; i < n * oc; i++) {
            diff += (double)(y[i] - y2[i]) * (y[i] - y2[i]);
            mag += (double)y2[i] * y2[i];
        }
        const double flop = 2.0 * (double)n * (double)oc * (double)ic * 9;
        printf("  %4lld -> %4lld at %4lldx%-4lld %-36s %6.1f | %6.1f   (agree to %.1e)\n",
               (long long)ic, (long long)oc, (long long)side, (long long)side, shapes[s].where,
               flop / best_d * 1e-9, flop / best_i * 1e-9, mag > 0 ? diff / mag : diff);
        free(x);
        free(w);
        free(wt);
        free(y);
        free(y2);
        free(packed);
        free(scratch);
    }
    nn_ctx_free(&ctx);
    return 0;
}

/* ---- FOLDER: decode and encode ------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_vae FOLDER [--size N] [--threads N] [--runs N] "
                "[--decode-only] [--tiled] | bench_vae --conv [--threads N]\n");
        return 2;
    }
    int size = 256, threads = 0, runs = 3;
    bool decode_only = false, tiled = false, conv = !strcmp(argv[1], "--conv");
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--decode-only")) decode_only = true;
        else if (!strcmp(argv[i], "--tiled")) tiled = true;
        else if (i + 1 < argc && !strcmp(argv[i], "--size")) size = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--runs")) runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "bench_vae: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (conv)
        return bench_conv(threads);
    if (runs < 0 || runs > 100 || size < 16 || size > QWEN_VAE_MAX_SIDE) {
        fprintf(stderr, "bench_vae: bad arguments\n");
        return 2;
    }
    nn_ctx_t ctx;
    char err[1024];
    if (nn_ctx_init_cpu(&ctx, threads) != 0)
        return 1;
    double t0 = bench_now_s();
    qwen_vae_t *vae = qwen_vae_load(argv[1], &ctx, decode_only ? QWEN_VAE_DECODER : QWEN_VAE_BOTH,
                                    err, sizeof err);
    if (!vae) {
        fprintf(stderr, "bench_vae: %s\n", err);
        return 1;
    }
    double load_ms = (bench_now_s() - t0) * 1e3;
    const qwen_vae_config_t *c = qwen_vae_config(vae);
    int lh, lw;
    if (qwen_vae_latent_size(c, size, size, &lh, &lw) != 0) {
        fprintf(stderr, "bench_vae: %d pixels cannot be encoded\n", size);
        return 1;
    }
    const size_t zn = (size_t)c->z_dim * lh * lw, pn = (size_t)3 * size * size;
    float *z = malloc(zn * sizeof *z), *mean = malloc(zn * sizeof *mean);
    float *img = malloc(pn * sizeof *img), *out = malloc(pn * sizeof *out);
    const int timed = runs > 0 ? runs : 1;
    double *ms = malloc((size_t)timed * sizeof *ms);
    if (!z || !mean || !img || !out || !ms)
        return 1;
    fill(z, zn, 3, 2.0f);
    fill(img, pn, 4, 1.0f);
    printf("config: base_dim %d, dim_mult", c->base_dim);
    for (int i = 0; i < c->levels; i++)
        printf(" %d", c->dim_mult[i]);
    printf(", %d res blocks, z_dim %d; %dx%d image, %dx%d latents; %d threads\n",
           c->num_res_blocks, c->z_dim, size, size, lh, lw, ctx.threads);
    printf("weights: %.1f MiB f32 (3x3x3 kernels: the first frame's slice), loaded in %.0f ms\n",
           (double)qwen_vae_weight_bytes(vae) / 1048576.0, load_ms);
    qwen_vae_tiling_t whole;
    qwen_vae_tiling_default(&whole);
    if (!tiled)
        whole.max_pixels = 0; /* the whole decode, as the reference's default */

    reset_peak_rss();
    /* r = -1: untimed, the activations' first touch (timed when it is the only call) */
    for (int r = runs > 0 ? -1 : 0; r < timed; r++) {
        double a = bench_now_s();
        if (qwen_vae_decode(vae, z, 1, lh, lw, &whole, out, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "bench_vae: %s\n", err);
            return 1;
        }
        if (r >= 0)
            ms[r] = (bench_now_s() - a) * 1e3;
    }
    long dec_peak = peak_rss_kib();
    double dec_ms = bench_median(ms, timed);
    printf("decode: %.1f ms; peak RSS %.1f MiB (activations %.1f MiB)\n", dec_ms,
           (double)dec_peak / 1024.0, (double)qwen_vae_activation_bytes(vae) / 1048576.0);
    printf("vae_decode_ms %.1f\n", dec_ms);
    printf("vae_decode_peak_mib %.1f\n", (double)dec_peak / 1024.0);
    if (!decode_only) {
        reset_peak_rss();
        for (int r = runs > 0 ? -1 : 0; r < timed; r++) {
            double a = bench_now_s();
            if (qwen_vae_encode(vae, img, 1, size, size, mean, NULL, err, sizeof err) != 0) {
                fprintf(stderr, "bench_vae: %s\n", err);
                return 1;
            }
            if (r >= 0)
                ms[r] = (bench_now_s() - a) * 1e3;
        }
        long enc_peak = peak_rss_kib();
        double enc_ms = bench_median(ms, timed);
        printf("encode: %.1f ms; peak RSS %.1f MiB\n", enc_ms, (double)enc_peak / 1024.0);
        printf("vae_encode_ms %.1f\n", enc_ms);
        printf("vae_encode_peak_mib %.1f\n", (double)enc_peak / 1024.0);
    }
    free(z);
    free(mean);
    free(img);
    free(out);
    free(ms);
    qwen_vae_free(&vae);
    nn_ctx_free(&ctx);
    return 0;
}
