/* Tests for the ops the VAE added to nn/ops (nn_conv2d with its packing, nn_l2norm) on the CPU
 * backend: each against a plain double-precision reference written here, on geometries that
 * cover what the VAE runs (3x3 "same", the downsample's right/bottom pad with stride 2, the
 * fused nearest x2 upsample, 1x1) and some it does not (5x5 and 7x7 kernels, asymmetric pads,
 * output channels that are not a multiple of 16, rows wider than one work item); then the
 * promises ops.h makes: the same bits with 1 and 2 threads, residuals accumulated in place,
 * the portable loops within rounding of the FMA ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"

#define U ((double)FLT_EPSILON / 2)

static nn_ctx_t g_ctx1, g_ctx2, g_port1, g_port2;

static uint64_t g_rng;

static void seed(uint64_t s) { g_rng = s * 0x9E3779B97F4A7C15ull + 1; }

static double uniform(void) /* [-1, 1), splitmix64 */
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ull << 52) - 1.0;
}

static float *rnd(int64_t n, double scale)
{
    float *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (int64_t i = 0; i < n; i++)
        a[i] = (float)(scale * uniform());
    return a;
}

static float *alloc_f(int64_t n)
{
    float *a = calloc((size_t)(n > 0 ? n : 1), sizeof *a);
    assert_non_null(a);
    return a;
}

static void check_same_bits(const char *what, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            fail_msg("%s: element %lld differs: %.9g vs %.9g", what, (long long)i, a[i], b[i]);
}

/* ---- conv2d ---------------------------------------------------------------------------- */

/* The convolution in double, from torch's weight layout [out_c, in_c, k, k]; abs gets the sum
 * of the terms' magnitudes (the scale of the rounding error). */
static void conv_ref(const nn_conv2d_t *p, const float *x, const float *w, const float *b,
                     const float *r, double *y, double *abs)
{
    const int64_t oh = nn_conv2d_out_h(p), ow = nn_conv2d_out_w(p), k = p->kernel;
    const int64_t uh = p->in_h * p->upsample, uw = p->in_w * p->upsample;
    for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++)
            for (int64_t o = 0; o < p->out_c; o++) {
                double s = b ? b[o] : 0.0, a = b ? fabs(b[o]) : 0.0;
                for (int64_t ky = 0; ky < k; ky++)
                    for (int64_t kx = 0; kx < k; kx++) {
                        int64_t uy = oy * p->stride + ky - p->pad_top;
                        int64_t ux = ox * p->stride + kx - p->pad_left;
                        if (uy < 0 || uy >= uh || ux < 0 || ux >= uw)
                            continue;
                        const float *px =
                            x + ((uy / p->upsample) * p->in_w + ux / p->upsample) * p->in_c;
                        for (int64_t c = 0; c < p->in_c; c++) {
                            double t = (double)px[c] * w[((o * p->in_c + c) * k + ky) * k + kx];
                            s += t;
                            a += fabs(t);
                        }
                    }
                int64_t i = (oy * ow + ox) * p->out_c + o;
                if (r) {
                    s += r[i];
                    a += fabs(r[i]);
                }
                y[i] = s;
                abs[i] = a;
            }
}

/* Runs one geometry on every context: against the reference, the same bits with 1 and 2
 * threads, the portable loops within rounding. */
static void check_conv(const char *name, nn_conv2d_t p, bool bias, bool residual)
{
    const int64_t oh = nn_conv2d_out_h(&p), ow = nn_conv2d_out_w(&p);
    assert_true(oh > 0 && ow > 0);
    const int64_t nx = p.in_h * p.in_w * p.in_c, ny = oh * ow * p.out_c;
    const int64_t nw = p.out_c * p.in_c * p.kernel * p.kernel;
    float *x = rnd(nx, 1.0), *w = rnd(nw, 1.0 / sqrt((double)(p.in_c * p.kernel * p.kernel)));
    float *b = bias ? rnd(p.out_c, 0.5) : NULL, *r = residual ? rnd(ny, 1.0) : NULL;
    float *packed = alloc_f((int64_t)nn_conv2d_packed_floats(&g_ctx1, p.out_c, p.in_c, p.kernel));
    nn_conv2d_pack(&g_ctx1, w, p.out_c, p.in_c, p.kernel, packed);
    double *want = malloc((size_t)ny * sizeof *want), *abs_ = malloc((size_t)ny * sizeof *abs_);
    assert_non_null(want);
    assert_non_null(abs_);
    conv_ref(&p, x, w, b, r, want, abs_);
    /* a sum of n terms, each product and partial sum rounded once (twice without FMA) */
    const double n = (double)(p.in_c * p.kernel * p.kernel + 2);
    nn_ctx_t *ctxs[] = {&g_ctx1, &g_ctx2, &g_port1, &g_port2};
    float *got[4];
    for (int c = 0; c < 4; c++) {
        got[c] = alloc_f(ny);
        nn_conv2d(ctxs[c], &p, x, packed, b, r, got[c]);
        for (int64_t i = 0; i < ny; i++)
            if (!(fabs(got[c][i] - want[i]) <= 2 * n * U * abs_[i] + 1e-30))
                fail_msg("%s (context %d): y[%lld] = %.9g, want %.9g (error %.3g, bound %.3g)",
                         name, c, (long long)i, got[c][i], want[i], fabs(got[c][i] - want[i]),
                         2 * n * U * abs_[i]);
    }
    char what[160];
    snprintf(what, sizeof what, "%s: 1 vs 2 threads", name);
    check_same_bits(what, got[0], got[1], ny);
    snprintf(what, sizeof what, "%s: portable, 1 vs 2 threads", name);
    check_same_bits(what, got[2], got[3], ny);
    /* the residual accumulated in place: y = conv(x) + b + y */
    if (r) {
        float *y = alloc_f(ny);
        memcpy(y, r, (size_t)ny * sizeof *y);
        nn_conv2d(&g_ctx2, &p, x, packed, b, y, y);
        snprintf(what, sizeof what, "%s: residual in place", name);
        check_same_bits(what, y, got[0], ny);
        free(y);
    }
    for (int c = 0; c < 4; c++)
        free(got[c]);
    free(x);
    free(w);
    free(b);
    free(r);
    free(packed);
    free(want);
    free(abs_);
}

static nn_conv2d_t geom(int64_t h, int64_t w, int64_t ic, int64_t oc, int k, int stride, int up,
                        int pt, int pb, int pl, int pr)
{
    return (nn_conv2d_t){.in_h = h, .in_w = w, .in_c = ic, .out_c = oc, .kernel = k,
                         .stride = stride, .upsample = up, .pad_top = pt, .pad_bottom = pb,
                         .pad_left = pl, .pad_right = pr};
}

static void test_conv_layout(void **state)
{
    (void)state;
    /* 1 input channel, 2 outputs, 3x3 kernel of 1..9 and its negative, on a 2x3 image of
     * 1..6 with padding 1: exact in float, so the tap order and the packing show. */
    const float x[] = {1, 2, 3, 4, 5, 6};
    float w[18];
    for (int i = 0; i < 9; i++) {
        w[i] = (float)(i + 1);
        w[9 + i] = -(float)(i + 1);
    }
    const float b[] = {100, 0};
    nn_conv2d_t p = geom(2, 3, 1, 2, 3, 1, 1, 1, 1, 1, 1);
    float packed[64 * 9], y[12];
    assert_true(nn_conv2d_packed_floats(&g_ctx1, 2, 1, 3) <= sizeof packed / sizeof packed[0]);
    nn_conv2d_pack(&g_ctx1, w, 2, 1, 3, packed);
    nn_conv2d(&g_ctx1, &p, x, packed, b, NULL, y);
    /* output (0,0): x(0,0) w[1][1] + x(0,1) w[1][2] + x(1,0) w[2][1] + x(1,1) w[2][2]
     * = 1*5 + 2*6 + 4*8 + 5*9 = 94 */
    assert_true(y[0] == 194.0f && y[1] == -94.0f);
    /* output (1,2): x(0,1) w[0][0] + x(0,2) w[0][1] + x(1,1) w[1][0] + x(1,2) w[1][1]
     * = 2*1 + 3*2 + 5*4 + 6*5 = 58 */
    assert_true(y[10] == 158.0f && y[11] == -58.0f);
}

static void test_conv_same(void **state)
{
    (void)state;
    seed(1);
    /* the VAE's 3x3 "same" convolution; 19 outputs: a partial panel; 13 columns: a partial
     * block of 6 pixels */
    check_conv("3x3 same", geom(7, 13, 5, 19, 3, 1, 1, 1, 1, 1, 1), true, false);
    check_conv("3x3 same, residual", geom(4, 9, 24, 32, 3, 1, 1, 1, 1, 1, 1), true, true);
    /* rows wider than one work item (96 pixels) */
    check_conv("3x3 wide", geom(3, 203, 3, 16, 3, 1, 1, 1, 1, 1, 1), true, false);
    check_conv("1x1, residual, no bias", geom(5, 7, 33, 17, 1, 1, 1, 0, 0, 0, 0), false, true);
}

static void test_conv_stride_upsample(void **state)
{
    (void)state;
    seed(2);
    /* the VAE's downsample: ZeroPad2d((0, 1, 0, 1)), 3x3, stride 2; even and odd sizes */
    check_conv("downsample even", geom(8, 10, 8, 8, 3, 2, 1, 0, 1, 0, 1), true, false);
    check_conv("downsample odd", geom(9, 7, 6, 20, 3, 2, 1, 0, 1, 0, 1), true, false);
    /* the VAE's upsample: nearest x2, then 3x3 "same" */
    check_conv("upsample", geom(5, 4, 6, 3, 3, 1, 2, 1, 1, 1, 1), true, false);
    check_conv("upsample, residual", geom(3, 7, 16, 8, 3, 1, 2, 1, 1, 1, 1), true, true);
    /* other kernels and asymmetric pads */
    check_conv("5x5 stride 2", geom(11, 12, 4, 9, 5, 2, 1, 2, 1, 0, 2), true, false);
    check_conv("7x7 upsample", geom(4, 5, 2, 5, 7, 1, 2, 3, 3, 1, 4), false, false);
    check_conv("3x3 valid", geom(6, 6, 3, 4, 3, 1, 1, 0, 0, 0, 0), true, false);
}

static void test_conv_out_size(void **state)
{
    (void)state;
    nn_conv2d_t p = geom(9, 8, 1, 1, 3, 2, 1, 0, 1, 0, 1);
    assert_int_equal(nn_conv2d_out_h(&p), 4); /* (9 + 1 - 3) / 2 + 1 */
    assert_int_equal(nn_conv2d_out_w(&p), 4); /* (8 + 1 - 3) / 2 + 1 */
    p = geom(5, 3, 1, 1, 3, 1, 2, 1, 1, 1, 1);
    assert_int_equal(nn_conv2d_out_h(&p), 10);
    assert_int_equal(nn_conv2d_out_w(&p), 6);
    p = geom(1, 1, 1, 1, 3, 2, 1, 0, 1, 0, 1); /* 2x2 after padding: smaller than the kernel */
    assert_int_equal(nn_conv2d_out_h(&p), 0);
}

/* ---- l2norm ---------------------------------------------------------------------------- */

static void check_l2norm(int64_t rows, int64_t dim, bool gamma, bool silu)
{
    float *x = rnd(rows * dim, 3.0), *g = gamma ? rnd(dim, 1.0) : NULL;
    if (g)
        for (int64_t j = 0; j < dim; j++)
            g[j] += 1.0f;
    /* a row of zeros: divided by eps, zeros (and SiLU(0) = 0); a row whose norm is below
     * eps: divided by eps, not by its norm (nor by norm + eps) */
    memset(x, 0, (size_t)dim * sizeof *x);
    if (rows > 1)
        for (int64_t j = 0; j < dim; j++)
            x[dim + j] = (float)(1e-13 * (1 + j % 3));
    const float scale = (float)sqrt((double)dim), eps = 1e-12f;
    float *y1 = alloc_f(rows * dim), *y2 = alloc_f(rows * dim), *yp = alloc_f(rows * dim);
    nn_l2norm(&g_ctx1, x, rows, dim, g, scale, eps, silu, y1);
    nn_l2norm(&g_ctx2, x, rows, dim, g, scale, eps, silu, y2);
    nn_l2norm(&g_port2, x, rows, dim, g, scale, eps, silu, yp);
    for (int64_t i = 0; i < rows; i++) {
        double ss = 0;
        for (int64_t j = 0; j < dim; j++)
            ss += (double)x[i * dim + j] * x[i * dim + j];
        double d = fmax(sqrt(ss), (double)eps);
        for (int64_t j = 0; j < dim; j++) {
            double v = x[i * dim + j] / d * scale * (g ? g[j] : 1.0);
            double want = silu ? v / (1.0 + exp(-v)) : v;
            double got = y1[i * dim + j];
            /* the norm rounded once, three roundings after it; SiLU's within a few ulp */
            double bound = 12 * U * fabs(v) + 1e-30;
            if (!(fabs(got - want) <= bound))
                fail_msg("l2norm rows %lld dim %lld%s: [%lld][%lld] = %.9g, want %.9g",
                         (long long)rows, (long long)dim, silu ? " silu" : "", (long long)i,
                         (long long)j, got, want);
        }
    }
    check_same_bits("l2norm: 1 vs 2 threads", y1, y2, rows * dim);
    check_same_bits("l2norm: portable", y1, yp, rows * dim);
    /* in place */
    nn_l2norm(&g_ctx2, x, rows, dim, g, scale, eps, silu, x);
    check_same_bits("l2norm: in place", x, y1, rows * dim);
    free(x);
    free(g);
    free(y1);
    free(y2);
    free(yp);
}

static void test_l2norm(void **state)
{
    (void)state;
    seed(3);
    check_l2norm(37, 96, true, false);
    check_l2norm(37, 96, true, true);
    check_l2norm(700, 24, true, true); /* many rows per chunk, threaded */
    check_l2norm(5, 384, false, false);
    check_l2norm(3, 5, true, true);
}

static void test_l2norm_torch_order(void **state)
{
    (void)state;
    /* (x / d) * scale * gamma rounded step by step, as torch evaluates
     * `F.normalize(x) * self.scale * self.gamma`: a row (3, 4) has norm 5 exactly; 3/5 rounds,
     * then the products round. */
    const float x[2] = {3.0f, 4.0f}, g[2] = {1.1f, 0.7f};
    const float scale = (float)sqrt(2.0);
    float y[2];
    nn_l2norm(&g_ctx1, x, 1, 2, g, scale, 1e-12f, false, y);
    for (int j = 0; j < 2; j++) {
        volatile float v = x[j] / 5.0f;
        v = v * scale;
        v = v * g[j];
        assert_true(y[j] == v);
    }
}

static int setup(void **state)
{
    (void)state;
    if (nn_ctx_init_cpu(&g_ctx1, 1) != 0 || nn_ctx_init_cpu(&g_ctx2, 2) != 0)
        return -1;
    setenv("NN_CPU_PORTABLE", "1", 1);
    int rc = nn_ctx_init_cpu(&g_port1, 1) | nn_ctx_init_cpu(&g_port2, 2);
    unsetenv("NN_CPU_PORTABLE");
    return rc != 0 ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    nn_ctx_free(&g_ctx1);
    nn_ctx_free(&g_ctx2);
    nn_ctx_free(&g_port1);
    nn_ctx_free(&g_port2);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_layout),
        cmocka_unit_test(test_conv_same),
        cmocka_unit_test(test_conv_stride_upsample),
        cmocka_unit_test(test_conv_out_size),
        cmocka_unit_test(test_l2norm),
        cmocka_unit_test(test_l2norm_torch_order),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
