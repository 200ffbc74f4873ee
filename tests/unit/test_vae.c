/* test_vae: the Qwen-Image VAE against the golden vectors that tools/golden/gen_vae.py made
 * with the reference (diffusers' AutoencoderKLQwenImage + torch): decode, encode (posterior
 * mean) and tiled decode of two configs, each compared as a whole and module by module
 * (relative error below 1e-4; a failure names the first module that is off); the pipeline's
 * latent scaling and pixel conversions bit for bit; then the loader's errors, bad sizes, and
 * the same bits with 1 and 2 threads.
 *
 * The golden folders hold vae/config.json and io.safetensors only: the weights are a pure
 * function of (seed, tensor name, element) listed in io.safetensors' metadata, which this test
 * recomputes with nn/philox's Philox4x32-10 and writes to a temporary diffusers folder (after
 * checking their FNV-1a-64 against the reference's), so the loader reads the real layout
 * without 20 MB of committed weights (see gen_vae.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/ops.h"
#include "nn/philox.h"
#include "nn/qwen_image_vae.h"
#include "nn/safetensors.h"
#include "tests/common/files.h"
#include "tests/common/golden.h"
#include "tests/common/stop.h"

#define GOLDEN "tests/golden"
#define TOL 1e-4

/* ---- the generated weights (gen_vae.py's docstring) ------------------------------------- */

static uint32_t fnv1a32(const char *s)
{
    uint32_t h = 0x811C9DC5u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x01000193u;
    return h;
}

static uint64_t fnv1a64(const void *data, size_t n, uint64_t h)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static void draw(uint64_t seed, const char *name, int64_t n, float a, float b, float *out)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, tag = fnv1a32(name);
    for (int64_t i = 0; i < n; i += 4) {
        uint64_t blk = (uint64_t)i / 4;
        uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)(blk >> 32), tag, 0}, w[4];
        philox4x32_10(ctr, key, w);
        for (int l = 0; l < 4 && i + l < n; l++) {
            float u = (float)((int32_t)(w[l] >> 8) - (1 << 23)) * 0x1p-23f;
            float v = u * b;
            if (a != 0.0f)
                v = a + v;
            out[i + l] = v;
        }
    }
}

/* Writes dir/vae/{config.json, diffusion_pytorch_model.safetensors} for golden case `name`,
 * with one extra tensor when `extra` is set. */
static void build_folder(const char *name, const safetensors_t *io, const char *dir, bool extra)
{
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/vae", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    char from[512];
    snprintf(from, sizeof from, GOLDEN "/%s/vae/config.json", name);
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    test_copy_file(from, path);

    const char *list = safetensors_metadata(io, "weights");
    const char *seed_s = safetensors_metadata(io, "weights_seed");
    const char *digest_s = safetensors_metadata(io, "weights_fnv1a64");
    assert_non_null(list);
    assert_non_null(seed_s);
    assert_non_null(digest_s);
    json_error_t jerr;
    json_t *rows = json_loads(list, 0, &jerr);
    assert_true(json_is_array(rows));
    size_t n = json_array_size(rows) + (extra ? 1 : 0);
    const char **names = calloc(n, sizeof *names);
    nn_dtype_t *dtypes = calloc(n, sizeof *dtypes);
    int *ndims = calloc(n, sizeof *ndims);
    int64_t (*shapes)[NN_MAX_DIMS] = calloc(n, sizeof *shapes);
    const void **datas = calloc(n, sizeof *datas);
    assert_true(names && dtypes && ndims && shapes && datas);
    uint64_t seed = strtoull(seed_s, NULL, 10), h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *r = json_array_get(rows, i), *shape = json_array_get(r, 1);
        names[i] = json_string_value(json_array_get(r, 0));
        dtypes[i] = NN_DTYPE_F32;
        ndims[i] = (int)json_array_size(shape);
        assert_true(names[i] && ndims[i] >= 1 && ndims[i] <= NN_MAX_DIMS);
        int64_t count = 1;
        for (int d = 0; d < ndims[i]; d++) {
            shapes[i][d] = json_integer_value(json_array_get(shape, (size_t)d));
            count *= shapes[i][d];
        }
        float *v = malloc((size_t)count * sizeof *v);
        assert_non_null(v);
        draw(seed, names[i], count, (float)json_number_value(json_array_get(r, 2)),
             (float)json_number_value(json_array_get(r, 3)), v);
        h = fnv1a64(v, (size_t)count * sizeof *v, h);
        datas[i] = v;
    }
    char digest[32];
    snprintf(digest, sizeof digest, "%016llx", (unsigned long long)h);
    if (strcmp(digest, digest_s) != 0)
        fail_msg("%s: the generated weights hash to %s, the reference's to %s", name, digest,
                 digest_s);
    static const float extra_v[2] = {1, 2};
    if (extra) {
        size_t i = n - 1;
        names[i] = "decoder.extra.weight";
        dtypes[i] = NN_DTYPE_F32;
        ndims[i] = 1;
        shapes[i][0] = 2;
        datas[i] = extra_v;
    }
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    if (safetensors_write(path, n, names, dtypes, ndims, (const int64_t (*)[NN_MAX_DIMS])shapes,
                          datas, err, sizeof err) != 0)
        fail_msg("%s", err);
    for (size_t i = 0; i < json_array_size(rows); i++)
        free((void *)datas[i]);
    json_decref(rows);
    free(names);
    free(dtypes);
    free(ndims);
    free(shapes);
    free(datas);
}

static void remove_folder(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/vae", dir);
    rmdir(path);
    rmdir(dir);
}

/* ---- one golden case --------------------------------------------------------------------- */

typedef struct {
    char name[64], dir[256];
    nn_ctx_t ctx;
    qwen_vae_t *vae;
    safetensors_t *io;
} vae_case_t;

static void case_open(vae_case_t *k, const char *name, int threads, int parts)
{
    char path[512], err[1024];
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", name);
    snprintf(path, sizeof path, GOLDEN "/%s/io.safetensors", name);
    k->io = safetensors_open(path, err, sizeof err);
    if (!k->io)
        fail_msg("%s", err);
    snprintf(k->dir, sizeof k->dir, "/tmp/test_vae.XXXXXX");
    assert_non_null(mkdtemp(k->dir));
    build_folder(name, k->io, k->dir, false);
    assert_int_equal(nn_ctx_init_cpu(&k->ctx, threads), 0);
    snprintf(path, sizeof path, "%s/vae", k->dir);
    k->vae = qwen_vae_load(path, &k->ctx, parts, err, sizeof err);
    /* the VAE holds its weights: the folder goes now, so that a failing test leaves none */
    remove_folder(k->dir);
    if (!k->vae)
        fail_msg("%s", err);
}

static void case_close(vae_case_t *k)
{
    qwen_vae_free(&k->vae);
    safetensors_close(&k->io);
    nn_ctx_free(&k->ctx);
}

/* A golden tensor's dims: [B, C, T, H, W] -> c, h, w. */
static void dims_of(const safetensors_t *io, const char *name, int *c, int *h, int *w)
{
    const st_tensor_t *t = safetensors_find(io, name);
    if (!t)
        fail_msg("golden tensor %s missing", name);
    assert_int_equal(t->ndim, 5);
    *c = (int)t->shape[1];
    *h = (int)t->shape[3];
    *w = (int)t->shape[4];
}

/* The trace: every activation the VAE reports, kept planar as the reference's [C, h, w]. */
typedef struct {
    char name[64];
    float *x;
    int64_t n;
} traced_t;

typedef struct {
    traced_t items[64];
    int n;
} trace_log_t;

static void on_trace(void *user, const char *name, const float *x, int64_t c, int64_t h,
                     int64_t w)
{
    trace_log_t *log = user;
    assert_true(log->n < 64);
    traced_t *t = &log->items[log->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n = c * h * w;
    t->x = malloc((size_t)t->n * sizeof(float));
    assert_non_null(t->x);
    for (int64_t k = 0; k < c; k++)
        for (int64_t i = 0; i < h * w; i++)
            t->x[k * h * w + i] = x[i * c + k];
}

/* Every traced module the reference kept, in the order they ran: the first one off fails;
 * returns how many were compared. */
static int check_trace(const vae_case_t *k, const char *what, trace_log_t *log)
{
    int compared = 0;
    for (int i = 0; i < log->n; i++) {
        char key[96];
        snprintf(key, sizeof key, "trace.%s", log->items[i].name);
        if (!safetensors_find(k->io, key))
            continue;
        int64_t n;
        float *ref = golden(k->io, key, &n);
        assert_int_equal(n, log->items[i].n);
        double e = rel_err(log->items[i].x, ref, n);
        if (!(e < TOL))
            fail_msg("%s %s: %s is off by %.3g (relative): the first module that differs", k->name,
                     what, log->items[i].name, e);
        free(ref);
        compared++;
    }
    for (int i = 0; i < log->n; i++)
        free(log->items[i].x);
    log->n = 0;
    return compared;
}

static void check_decode(const char *name)
{
    vae_case_t k;
    case_open(&k, name, 2, QWEN_VAE_BOTH);
    const qwen_vae_config_t *c = qwen_vae_config(k.vae);
    char err[512];
    int zc, h, w, oc, oh, ow;
    dims_of(k.io, "z", &zc, &h, &w);
    dims_of(k.io, "output", &oc, &oh, &ow);
    assert_int_equal(zc, c->z_dim);
    assert_int_equal(oh, h * c->spatial_factor);
    float *z = golden(k.io, "z", NULL), *ref = golden(k.io, "output", NULL);
    float *out = malloc((size_t)oc * oh * ow * sizeof *out);
    trace_log_t log = {0};
    qwen_vae_trace_t tr = {on_trace, &log};
    if (qwen_vae_decode(k.vae, z, 1, h, w, NULL, out, &tr, err, sizeof err) != 0)
        fail_msg("%s: %s", name, err);
    int traced = check_trace(&k, "decode", &log);
    assert_true(traced >= 4);
    double e = rel_err(out, ref, (int64_t)oc * oh * ow);
    if (!(e < TOL))
        fail_msg("%s: decoded image off by %.3g (relative)", name, e);
    print_message("  %s decode %dx%d -> %dx%d: rel err %.2e (%d modules traced)\n", name, h, w,
                  oh, ow, e, traced);

    /* the pipeline's 8-bit image: from the reference's float output, the same bytes; from
     * ours, the same bytes but where a value sits within our rounding of a .5 boundary */
    const st_tensor_t *t8 = safetensors_find(k.io, "rgb8");
    assert_non_null(t8);
    const size_t n8 = (size_t)oh * ow * 3;
    uint8_t *rgb8 = malloc(n8);
    qwen_vae_postprocess(ref, oh, ow, NULL, rgb8);
    assert_memory_equal(rgb8, t8->data, n8);
    qwen_vae_postprocess(out, oh, ow, NULL, rgb8);
    size_t off = 0;
    for (size_t i = 0; i < n8; i++) {
        int d = (int)rgb8[i] - (int)((const uint8_t *)t8->data)[i];
        assert_true(d >= -1 && d <= 1);
        off += d != 0;
    }
    assert_true(off <= n8 / 100);
    if (safetensors_find(k.io, "rgb")) {
        float *rgb = malloc(n8 * sizeof *rgb), *want = golden(k.io, "rgb", NULL);
        qwen_vae_postprocess(ref, oh, ow, rgb, NULL);
        assert_memory_equal(rgb, want, n8 * sizeof *rgb);
        free(rgb);
        free(want);
    }
    /* the pipeline's de-normalisation, bit for bit */
    float *lat = golden(k.io, "latents", NULL);
    qwen_vae_denormalize(k.vae, lat, (int64_t)h * w);
    assert_memory_equal(lat, z, (size_t)zc * h * w * sizeof(float));
    free(lat);
    free(rgb8);
    free(z);
    free(ref);
    free(out);
    case_close(&k);
}

static void check_encode(const char *name)
{
    vae_case_t k;
    case_open(&k, name, 2, QWEN_VAE_BOTH);
    const qwen_vae_config_t *c = qwen_vae_config(k.vae);
    char err[512];
    int ic, H, W, zc, h, w;
    dims_of(k.io, "image", &ic, &H, &W);
    dims_of(k.io, "mean", &zc, &h, &w);
    int lh, lw;
    assert_int_equal(qwen_vae_latent_size(c, H, W, &lh, &lw), 0);
    assert_int_equal(lh, h);
    assert_int_equal(lw, w);
    float *image = golden(k.io, "image", NULL), *ref = golden(k.io, "mean", NULL);
    if (safetensors_find(k.io, "image_rgb8")) {
        /* the pipeline's preprocessing, bit for bit */
        const st_tensor_t *t8 = safetensors_find(k.io, "image_rgb8");
        float *mine = malloc((size_t)ic * H * W * sizeof *mine);
        qwen_vae_preprocess_rgb8(t8->data, H, W, mine);
        assert_memory_equal(mine, image, (size_t)ic * H * W * sizeof *mine);
        free(mine);
    }
    float *mean = malloc((size_t)zc * h * w * sizeof *mean);
    trace_log_t log = {0};
    qwen_vae_trace_t tr = {on_trace, &log};
    if (qwen_vae_encode(k.vae, image, 1, H, W, mean, &tr, err, sizeof err) != 0)
        fail_msg("%s: %s", name, err);
    int traced = check_trace(&k, "encode", &log);
    assert_true(traced >= 4);
    double e = rel_err(mean, ref, (int64_t)zc * h * w);
    if (!(e < TOL))
        fail_msg("%s: posterior mean off by %.3g (relative)", name, e);
    print_message("  %s encode %dx%d -> %dx%d: rel err %.2e (%d modules traced)\n", name, H, W, h,
                  w, e, traced);
    if (safetensors_find(k.io, "odd_image")) {
        /* odd sizes: the downsamples' right and bottom padding and floor division */
        int oc_, oh, ow, zh, zw;
        dims_of(k.io, "odd_image", &oc_, &oh, &ow);
        dims_of(k.io, "odd_mean", &zc, &zh, &zw);
        float *odd = golden(k.io, "odd_image", NULL), *want = golden(k.io, "odd_mean", NULL);
        float *got = malloc((size_t)zc * zh * zw * sizeof *got);
        assert_int_equal(qwen_vae_latent_size(c, oh, ow, &lh, &lw), 0);
        assert_true(lh == zh && lw == zw);
        assert_int_equal(qwen_vae_encode(k.vae, odd, 1, oh, ow, got, NULL, err, sizeof err), 0);
        double eo = rel_err(got, want, (int64_t)zc * zh * zw);
        if (!(eo < TOL))
            fail_msg("%s: posterior mean of the %dx%d image off by %.3g", name, ow, oh, eo);
        free(odd);
        free(want);
        free(got);
    }
    if (safetensors_find(k.io, "image_latents")) {
        /* the edit pipeline's normalisation of the reference's mean, bit for bit */
        float *want = golden(k.io, "image_latents", NULL);
        qwen_vae_normalize(k.vae, ref, (int64_t)h * w);
        assert_memory_equal(ref, want, (size_t)zc * h * w * sizeof(float));
        free(want);
    }
    free(image);
    free(ref);
    free(mean);
    case_close(&k);
}

static void check_tiled(const char *name)
{
    vae_case_t k;
    case_open(&k, name, 2, QWEN_VAE_DECODER);
    char err[512];
    int zc, h, w, oc, oh, ow;
    dims_of(k.io, "tiled_z", &zc, &h, &w);
    dims_of(k.io, "tiled_output", &oc, &oh, &ow);
    const char *ts = safetensors_metadata(k.io, "tiling");
    int tile, stride;
    assert_non_null(ts);
    assert_int_equal(sscanf(ts, "[%d, %d]", &tile, &stride), 2);
    qwen_vae_tiling_t t = {.max_pixels = 1, .tile_height = tile, .tile_width = tile,
                           .stride_height = stride, .stride_width = stride};
    float *z = golden(k.io, "tiled_z", NULL), *ref = golden(k.io, "tiled_output", NULL);
    const int64_t n = (int64_t)oc * oh * ow;
    float *out = malloc((size_t)n * sizeof *out), *whole = malloc((size_t)n * sizeof *whole);
    if (qwen_vae_decode(k.vae, z, 1, h, w, &t, out, NULL, err, sizeof err) != 0)
        fail_msg("%s: %s", name, err);
    double e = rel_err(out, ref, n);
    if (!(e < TOL))
        fail_msg("%s: tiled decode off by %.3g (relative)", name, e);
    /* and it is not the whole decode: the tiles and their blending show */
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, h, w, NULL, whole, NULL, err, sizeof err), 0);
    double apart = rel_err(whole, ref, n);
    assert_true(apart > 100 * TOL);
    print_message("  %s tiled decode %dx%d, tiles %d every %d: rel err %.2e (whole decode: %.2e "
                  "away)\n", name, oh, ow, tile, stride, e, apart);
    free(z);
    free(ref);
    free(out);
    free(whole);
    case_close(&k);
}

/* vae_pipe: the pipelines' whole paths, 8-bit image out and in (what diffusiond-generate's -o
 * and --image run): sample_tiny's denoised latents to the reference's PNG pixels, and an
 * 8-bit image to the edit pipeline's normalised latents. */
static void test_pipe(void **state)
{
    (void)state;
    vae_case_t k;
    case_open(&k, "vae_pipe", 2, QWEN_VAE_BOTH);
    char err[512];
    int zc, h, w;
    dims_of(k.io, "denorm_latents", &zc, &h, &w);
    const st_tensor_t *t8 = safetensors_find(k.io, "pipeline_rgb8");
    assert_non_null(t8);
    const int H = (int)t8->shape[0], W = (int)t8->shape[1];
    assert_int_equal(H, h * 8);
    float *z = golden(k.io, "denorm_latents", NULL), *img = malloc((size_t)3 * H * W * 4);
    uint8_t *rgb8 = malloc((size_t)3 * H * W);
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, h, w, NULL, img, NULL, err, sizeof err), 0);
    qwen_vae_postprocess(img, H, W, NULL, rgb8);
    size_t off = 0;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) {
        int d = (int)rgb8[i] - (int)((const uint8_t *)t8->data)[i];
        assert_true(d >= -1 && d <= 1);
        off += d != 0;
    }
    assert_true(off <= (size_t)3 * H * W / 100);

    const st_tensor_t *in8 = safetensors_find(k.io, "image_rgb8");
    assert_non_null(in8);
    const int IH = (int)in8->shape[0], IW = (int)in8->shape[1];
    int lh, lw;
    assert_int_equal(qwen_vae_latent_size(qwen_vae_config(k.vae), IH, IW, &lh, &lw), 0);
    float *pix = malloc((size_t)3 * IH * IW * 4), *lat = malloc((size_t)zc * lh * lw * 4);
    qwen_vae_preprocess_rgb8(in8->data, IH, IW, pix);
    assert_int_equal(qwen_vae_encode(k.vae, pix, 1, IH, IW, lat, NULL, err, sizeof err), 0);
    qwen_vae_normalize(k.vae, lat, (int64_t)lh * lw);
    int64_t n;
    float *want = golden(k.io, "image_latents", &n);
    assert_int_equal(n, (int64_t)zc * lh * lw);
    double e = rel_err(lat, want, n);
    if (!(e < TOL))
        fail_msg("vae_pipe: normalised image latents off by %.3g", e);
    print_message("  vae_pipe: %dx%d decode, %zu of %d bytes one off; %dx%d encode rel err %.2e\n",
                  H, W, off, 3 * H * W, IH, IW, e);
    free(z);
    free(img);
    free(rgb8);
    free(pix);
    free(lat);
    free(want);
    case_close(&k);
}

static void test_tiny_decode(void **state) { (void)state; check_decode("vae_tiny"); }
static void test_tiny_encode(void **state) { (void)state; check_encode("vae_tiny"); }
static void test_tiny_tiled(void **state) { (void)state; check_tiled("vae_tiny"); }
static void test_cfg2_decode(void **state) { (void)state; check_decode("vae_cfg2"); }
static void test_cfg2_encode(void **state) { (void)state; check_encode("vae_cfg2"); }
static void test_cfg2_tiled(void **state) { (void)state; check_tiled("vae_cfg2"); }

/* ---- properties -------------------------------------------------------------------------- */

/* numpy_to_pil rounds half to even: x * 0.5 + 0.5 then * 255 lands exactly on k + 0.5 for
 * some decoded values, and those must go to the even neighbour (roundf would go up). The
 * golden images may hold no such value, so search them out. */
static void test_postprocess_rounding(void **state)
{
    (void)state;
    int ties = 0, up = 0;
    for (int i = 0; i <= 1 << 21; i++) {
        float x = -1.0f + (float)i * 0x1p-20f;
        volatile float v = x * 0.5f;
        v = v + 0.5f;
        volatile float s = v * 255.0f;
        float frac = s - floorf(s);
        if (frac != 0.5f)
            continue;
        float img[3] = {x, x, x};
        uint8_t rgb8[3];
        qwen_vae_postprocess(img, 1, 1, NULL, rgb8);
        int even = (int)floorf(s) % 2 == 0 ? (int)floorf(s) : (int)floorf(s) + 1;
        assert_int_equal(rgb8[0], even);
        ties++;
        up += even > s;
    }
    assert_true(ties >= 10 && up > 0 && up < ties); /* both directions met (24 ties) */
    /* the ends and beyond: clamped */
    float img[3] = {-1.5f, 1.0f, 0.0f};
    uint8_t rgb8[3];
    float rgb[3];
    qwen_vae_postprocess(img, 1, 1, rgb, rgb8);
    assert_true(rgb8[0] == 0 && rgb8[1] == 255 && rgb8[2] == 128); /* 127.5 -> 128 */
    assert_true(rgb[0] == 0.0f && rgb[1] == 1.0f && rgb[2] == 0.5f);
    /* and back: 8-bit to [-1, 1] */
    const uint8_t px[3] = {0, 255, 51};
    qwen_vae_preprocess_rgb8(px, 1, 1, rgb);
    assert_true(rgb[0] == -1.0f && rgb[1] == 1.0f);
    volatile float q = 51.0f / 255.0f;
    assert_true(rgb[2] == 2.0f * q - 1.0f);
}

/* The same bits with 1 and 2 threads on this config (its widths stay below the point where
 * nn_linear splits its columns over threads, which may change bits: see ops_cpu.c), and after
 * another call (the activations are reused, not carried over); a tiling that covers the image
 * in one tile is the whole decode. */
static void test_same_bits(void **state)
{
    (void)state;
    vae_case_t k1, k2;
    case_open(&k1, "vae_cfg2", 1, QWEN_VAE_BOTH);
    case_open(&k2, "vae_cfg2", 2, QWEN_VAE_BOTH);
    char err[512];
    float *z = golden(k1.io, "z", NULL), *big_z = golden(k1.io, "tiled_z", NULL);
    const int64_t n = 3 * 48 * 80;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    assert_int_equal(qwen_vae_decode(k1.vae, z, 1, 6, 10, NULL, a, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_vae_decode(k2.vae, big_z, 1, 6, 10, NULL, b, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_vae_decode(k2.vae, z, 1, 3, 5, NULL, b, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_vae_decode(k2.vae, z, 1, 6, 10, NULL, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, n * sizeof *a);
    qwen_vae_tiling_t one = {.max_pixels = 1, .tile_height = 80, .tile_width = 80,
                             .stride_height = 64, .stride_width = 64};
    assert_int_equal(qwen_vae_decode(k2.vae, z, 1, 6, 10, &one, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, n * sizeof *a);

    float *image = golden(k1.io, "image", NULL);
    float ma[16 * 60], mb[16 * 60];
    assert_int_equal(qwen_vae_encode(k1.vae, image, 1, 48, 80, ma, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_vae_encode(k2.vae, image, 1, 48, 80, mb, NULL, err, sizeof err), 0);
    assert_memory_equal(ma, mb, sizeof ma);
    free(z);
    free(big_z);
    free(image);
    free(a);
    free(b);
    case_close(&k1);
    case_close(&k2);
}

/* A context whose stop says yes ends decode, tiled decode and encode between blocks with
 * "stopped"; asked nothing, or saying no, changes no bit. */
static void test_stop(void **state)
{
    (void)state;
    vae_case_t k;
    case_open(&k, "vae_cfg2", 2, QWEN_VAE_BOTH);
    char err[512];
    float *z = golden(k.io, "z", NULL), *image = golden(k.io, "image", NULL);
    const int64_t n = 3 * 48 * 80;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), mean[16 * 60];
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 6, 10, NULL, a, NULL, err, sizeof err), 0);

    test_stop_t never = {.left = 1 << 30};
    k.ctx.stop = test_stop_after;
    k.ctx.stop_user = &never;
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 6, 10, NULL, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, n * sizeof *a);
    /* asked before each of the decoder's residual blocks */
    const qwen_vae_config_t *c = qwen_vae_config(k.vae);
    assert_int_equal(never.asked, c->levels * (c->num_res_blocks + 1));

    test_stop_t later = {.left = 2};
    k.ctx.stop_user = &later;
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 6, 10, NULL, b, NULL, err, sizeof err), -1);
    assert_string_equal(err, "stopped");
    assert_int_equal(later.asked, 3); /* and not once more after saying yes */

    qwen_vae_tiling_t tiles = {.max_pixels = 1, .tile_height = 32, .tile_width = 32,
                               .stride_height = 24, .stride_width = 24};
    test_stop_t second_tile = {.left = never.asked};
    k.ctx.stop_user = &second_tile;
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 6, 10, &tiles, b, NULL, err, sizeof err), -1);
    assert_string_equal(err, "stopped");
    assert_int_equal(second_tile.asked, never.asked + 1); /* the first tile went through */

    test_stop_t now = {.left = 0};
    k.ctx.stop_user = &now;
    assert_int_equal(qwen_vae_encode(k.vae, image, 1, 48, 80, mean, NULL, err, sizeof err), -1);
    assert_string_equal(err, "stopped");

    k.ctx.stop = NULL; /* and the VAE works on after a stop */
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 6, 10, NULL, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, n * sizeof *a);
    free(z);
    free(image);
    free(a);
    free(b);
    case_close(&k);
}

static void test_bad_calls(void **state)
{
    (void)state;
    vae_case_t k;
    case_open(&k, "vae_tiny", 1, QWEN_VAE_DECODER);
    char err[512] = "";
    float z[4 * 2 * 2], out[3 * 8 * 8 * 2];
    memset(z, 0, sizeof z);
    assert_int_equal(qwen_vae_decode(k.vae, z, 2, 2, 2, NULL, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "video"));
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 0, 2, NULL, out, NULL, err, sizeof err), -1);
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 5000, 2, NULL, out, NULL, err, sizeof err), -1);
    qwen_vae_tiling_t bad = {.max_pixels = 1, .tile_height = 6, .tile_width = 8,
                             .stride_height = 4, .stride_width = 4};
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 2, 2, &bad, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "multiples of 4"));
    /* the encoder was not loaded */
    assert_int_equal(qwen_vae_encode(k.vae, out, 1, 8, 8, z, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "without its encoder"));
    case_close(&k);

    case_open(&k, "vae_tiny", 1, QWEN_VAE_ENCODER);
    assert_int_equal(qwen_vae_decode(k.vae, z, 1, 2, 2, NULL, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "without its decoder"));
    /* too small to reach the last level: 1 pixel cannot be downsampled */
    int h, w;
    assert_int_equal(qwen_vae_latent_size(qwen_vae_config(k.vae), 1, 8, &h, &w), -1);
    assert_int_equal(qwen_vae_latent_size(qwen_vae_config(k.vae), 9, 7, &h, &w), 0);
    assert_int_equal(h, 2); /* 9 -> 4 -> 2: floor((n - 2) / 2) + 1 */
    assert_int_equal(w, 1); /* 7 -> 3 -> 1 */
    assert_int_equal(qwen_vae_encode(k.vae, out, 1, 1, 8, z, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot be encoded"));
    case_close(&k);
}

/* ---- loader errors: the tiny case's folder with one thing changed -------------------------- */

static char g_dir[256];
static safetensors_t *g_io;

static int make_tmp(void **state)
{
    (void)state;
    char err[512];
    g_io = safetensors_open(GOLDEN "/vae_tiny/io.safetensors", err, sizeof err);
    snprintf(g_dir, sizeof g_dir, "/tmp/test_vae_load.XXXXXX");
    if (!g_io || !mkdtemp(g_dir))
        return -1;
    build_folder("vae_tiny", g_io, g_dir, false);
    return 0;
}

static int remove_tmp(void **state)
{
    (void)state;
    remove_folder(g_dir);
    safetensors_close(&g_io);
    return 0;
}

/* Loads g_dir/vae with this config.json (NULL: the golden one); returns the error ("" when it
 * loaded). */
static const char *load_with(const char *config, int parts, char *err, size_t errlen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/vae/config.json", g_dir);
    if (config)
        test_write_text(path, config);
    else
        test_copy_file(GOLDEN "/vae_tiny/vae/config.json", path);
    nn_ctx_t ctx;
    assert_int_equal(nn_ctx_init_cpu(&ctx, 1), 0);
    err[0] = 0;
    snprintf(path, sizeof path, "%s/vae", g_dir);
    qwen_vae_t *vae = qwen_vae_load(path, &ctx, parts, err, errlen);
    if (vae)
        assert_string_equal(err, "");
    qwen_vae_free(&vae);
    nn_ctx_free(&ctx);
    return err;
}

#define TINY "\"base_dim\": 24, \"z_dim\": 4, \"latents_mean\": [0, 0, 0, 0], " \
             "\"latents_std\": [1, 1, 1, 1]"

static void test_loader_errors(void **state)
{
    (void)state;
    char err[1024];
    assert_string_equal(load_with(NULL, QWEN_VAE_BOTH, err, sizeof err), "");
    assert_string_equal(load_with("{" TINY ", \"dim_mult\": [1, 2, 4], \"num_res_blocks\": 1, "
                                  "\"temperal_downsample\": [false, true]}",
                                  QWEN_VAE_DECODER, err, sizeof err), "");
    /* a block the file does not have: the error names the tensor and the file */
    load_with("{" TINY ", \"dim_mult\": [1, 2, 4], \"num_res_blocks\": 2, "
              "\"temperal_downsample\": [false, true]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "encoder.down_blocks.1.norm1.gamma"));
    assert_non_null(strstr(err, "diffusion_pytorch_model.safetensors"));
    /* widths that do not match the file: both shapes */
    load_with("{\"base_dim\": 16, \"z_dim\": 4, \"latents_mean\": [0, 0, 0, 0], "
              "\"latents_std\": [1, 1, 1, 1], \"dim_mult\": [1, 2, 4], \"num_res_blocks\": 1, "
              "\"temperal_downsample\": [false, true]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "encoder.conv_in.weight has shape f32[24,3,3,3,3], expected "
                                "[16,3,3,3,3]"));
    /* a 2D/3D flag the file disagrees with: time_conv is missing or left over */
    load_with("{" TINY ", \"dim_mult\": [1, 2, 4], \"num_res_blocks\": 1, "
              "\"temperal_downsample\": [true, true]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "encoder.down_blocks.1.time_conv.weight"));
    load_with("{" TINY ", \"dim_mult\": [1, 2, 4], \"num_res_blocks\": 1, "
              "\"temperal_downsample\": [false, false]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "unexpected tensor"));
    assert_non_null(strstr(err, "time_conv"));
    /* config errors */
    load_with("{" TINY ", \"dim_mult\": [1, 2, 4], \"temperal_downsample\": [false]}",
              QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "temperal_downsample must be a list of len(dim_mult) - 1 = 2"));
    load_with("{" TINY ", \"attn_scales\": [1.0]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "attn_scales"));
    load_with("{\"base_dim\": 24, \"z_dim\": 4, \"latents_mean\": [0, 0, 0], "
              "\"latents_std\": [1, 1, 1, 1]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "latents_mean must be a list of z_dim = 4 numbers"));
    load_with("{" "\"base_dim\": 24, \"z_dim\": 4, \"latents_mean\": [0, 0, 0, 0], "
              "\"latents_std\": [1, 0, 1, 1]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "latents_std[1] must be a positive number"));
    load_with("{\"_class_name\": \"AutoencoderKLWan\"}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "AutoencoderKLWan"));
    load_with("{\"base_dim\": 256, \"dim_mult\": [1, 2, 4, 4], \"temperal_downsample\": "
              "[false, true, true]}", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "attention is 1024 channels wide"));
    load_with("[1]", QWEN_VAE_BOTH, err, sizeof err);
    assert_non_null(strstr(err, "not a JSON object"));
    load_with(NULL, 0, err, sizeof err);
    assert_non_null(strstr(err, "no part"));
    /* a tensor the config does not have */
    remove_folder(g_dir);
    assert_int_equal(mkdir(g_dir, 0700), 0);
    build_folder("vae_tiny", g_io, g_dir, true);
    load_with(NULL, QWEN_VAE_DECODER, err, sizeof err);
    assert_non_null(strstr(err, "unexpected tensor decoder.extra.weight"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_decode),
        cmocka_unit_test(test_tiny_encode),
        cmocka_unit_test(test_tiny_tiled),
        cmocka_unit_test(test_cfg2_decode),
        cmocka_unit_test(test_cfg2_encode),
        cmocka_unit_test(test_cfg2_tiled),
        cmocka_unit_test(test_pipe),
        cmocka_unit_test(test_postprocess_rounding),
        cmocka_unit_test(test_same_bits),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_bad_calls),
        cmocka_unit_test_setup_teardown(test_loader_errors, make_tmp, remove_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
