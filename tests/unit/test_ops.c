/* Tests for nn/ops on the CPU backend: every op against a plain double-precision reference
 * written here (naive loops; attention with the whole score matrix and a two-pass softmax),
 * on inputs from a fixed-seed generator, odd shapes included; then the promises ops.h makes
 * about bits: the same with 1 and 2 threads, in place or not, and a row's (a query's) result
 * whatever else is in the call. Error bounds follow from float rounding of each op, so that a
 * real mistake (a transposed weight, a missed rescale, a wrong rounding order) fails them. */
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

#define U ((double)FLT_EPSILON / 2) /* float's unit roundoff */

static nn_ctx_t g_ctx1, g_ctx2; /* 1 and 2 threads */
static nn_ctx_t g_port1, g_port2; /* the same with NN_CPU_PORTABLE=1: no AVX2/FMA loops */

/* ---- inputs and checks ------------------------------------------------------------------ */

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

static float *rnd(int64_t n, double scale, double offset)
{
    float *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (int64_t i = 0; i < n; i++)
        a[i] = (float)(offset + scale * uniform());
    return a;
}

static float *copy(const float *a, int64_t n)
{
    float *b = malloc((size_t)(n > 0 ? n : 1) * sizeof *b);
    assert_non_null(b);
    memcpy(b, a, (size_t)n * sizeof *b);
    return b;
}

static void *zalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    assert_non_null(p);
    return p;
}

/* |got - want| <= bound, element i, with a message that says where. */
static void check_close(const char *what, int64_t i, double got, double want, double bound)
{
    if (!(fabs(got - want) <= bound))
        fail_msg("%s[%lld]: got %.9g, want %.9g (error %.3g > bound %.3g)", what, (long long)i,
                 got, want, fabs(got - want), bound);
}

static void check_same_bits(const char *what, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            fail_msg("%s: element %lld differs: %.9g vs %.9g", what, (long long)i, a[i], b[i]);
}

/* ---- context ---------------------------------------------------------------------------- */

static void test_context(void **state)
{
    (void)state;
    assert_string_equal(g_ctx1.backend->name, "cpu");
    assert_ptr_equal(g_ctx1.backend, nn_backend_cpu());
    assert_int_equal(g_ctx1.threads, 1);
    assert_int_equal(g_ctx2.threads, 2);
    for (int op = 0; op < NN_OP_COUNT; op++)
        assert_true(nn_supports(&g_ctx1, (nn_op_t)op));
    assert_false(nn_supports(&g_ctx1, NN_OP_COUNT));

    nn_ctx_t c;
    assert_int_equal(nn_ctx_init_cpu(&c, 0), 0);
    assert_true(c.threads >= 1);
    assert_non_null(c.impl);
    nn_ctx_free(&c);
    assert_null(c.backend);
    assert_null(c.impl);
    assert_false(nn_supports(&c, NN_OP_LINEAR));
    nn_ctx_free(&c); /* a freed context frees nothing twice */

    /* A backend that leaves entries out says so. */
    nn_backend_t partial = {.name = "partial", .silu = nn_backend_cpu()->silu};
    nn_ctx_t p = {.backend = &partial, .threads = 1};
    assert_true(nn_supports(&p, NN_OP_SILU));
    assert_false(nn_supports(&p, NN_OP_ATTENTION));
    assert_false(nn_supports(&p, NN_OP_LINEAR));
}

/* ---- linear ----------------------------------------------------------------------------- */

static void test_linear_layout(void **state)
{
    (void)state;
    /* x [2,3], w [2,3] (torch's [out, in]), exact in float. */
    const float x[] = {1, 2, 3, 4, 5, 6}, w[] = {1, 0, -1, 2, 1, 0}, b[] = {10, 20};
    float y[4];
    nn_linear(&g_ctx1, x, 2, 3, w, b, y, 2);
    const float want[] = {1 - 3 + 10, 2 + 2 + 20, 4 - 6 + 10, 8 + 5 + 20};
    check_same_bits("linear 2x3x2", y, want, 4);
    nn_linear(&g_ctx1, x, 2, 3, w, NULL, y, 2);
    const float want_nb[] = {-2, 4, -2, 13};
    check_same_bits("linear without bias", y, want_nb, 4);
    /* k = 0: only the bias. */
    nn_linear(&g_ctx1, x, 2, 0, w, b, y, 2);
    const float want_k0[] = {10, 20, 10, 20};
    check_same_bits("linear k=0", y, want_k0, 4);
}

static void test_linear(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 1, 1},   {1, 7, 5},    {3, 16, 9},   {17, 33, 40},
                                        {64, 128, 96}, {5, 300, 3}, {130, 257, 67}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int64_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            seed(100 + s * 2 + (uint64_t)with_bias);
            float *x = rnd(m * k, 1, 0), *w = rnd(n * k, 0.5, 0);
            float *b = with_bias ? rnd(n, 2, 0) : NULL;
            float *y = zalloc((size_t)(m * n) * sizeof *y), *y2 = zalloc((size_t)(m * n) * 4);
            nn_linear(&g_ctx2, x, m, k, w, b, y, n);
            char what[64];
            snprintf(what, sizeof what, "linear %lldx%lldx%lld%s", (long long)m, (long long)k,
                     (long long)n, b ? " +b" : "");
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double acc = b ? b[j] : 0, mag = b ? fabs(b[j]) : 0;
                    for (int64_t l = 0; l < k; l++) {
                        acc += (double)x[i * k + l] * w[j * k + l];
                        mag += fabs((double)x[i * k + l] * w[j * k + l]);
                    }
                    /* a float dot product of length k: error below k u sum|x w|; 1e-5 is
                     * what the model needs and far below what a wrong index gives */
                    check_close(what, i * n + j, y[i * n + j], acc, 1e-5 * mag + 1e-30);
                }
            nn_linear(&g_ctx2, x, m, k, w, b, y2, n);
            check_same_bits("linear, run twice", y, y2, m * n);
            free(x);
            free(w);
            free(b);
            free(y);
            free(y2);
        }
    }
}

/* ---- row-wise ops: the bit promises, shared -------------------------------------------- */

typedef void (*rowop_fn)(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim, float *y,
                         const float *param_a, const float *param_b);

/* With 1 and 2 threads, in place and not, each row alone and in the batch: the same bits.
 * rows * dim is above the size at which the op starts threads. */
static void check_row_bits(const char *name, rowop_fn op, const float *pa, const float *pb,
                           int64_t rows, int64_t dim, double offset)
{
    seed(7);
    float *x = rnd(rows * dim, 3, offset);
    float *y1 = zalloc((size_t)(rows * dim) * 4), *y2 = zalloc((size_t)(rows * dim) * 4);
    op(&g_ctx1, x, rows, dim, y1, pa, pb);
    op(&g_ctx2, x, rows, dim, y2, pa, pb);
    char what[96];
    snprintf(what, sizeof what, "%s: 1 vs 2 threads", name);
    check_same_bits(what, y1, y2, rows * dim);

    float *in = copy(x, rows * dim);
    op(&g_ctx2, in, rows, dim, in, pa, pb);
    snprintf(what, sizeof what, "%s: in place", name);
    check_same_bits(what, in, y1, rows * dim);

    float *one = zalloc((size_t)dim * 4);
    for (int64_t r = 0; r < rows; r += rows / 5 + 1) {
        op(&g_ctx2, x + r * dim, 1, dim, one, pa, pb);
        snprintf(what, sizeof what, "%s: row %lld alone", name, (long long)r);
        check_same_bits(what, one, y1 + r * dim, dim);
    }
    free(x);
    free(y1);
    free(y2);
    free(in);
    free(one);
}

static void op_layernorm(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim, float *y,
                         const float *a, const float *b)
{
    (void)a;
    (void)b;
    nn_layernorm(c, x, rows, dim, 1e-6f, y);
}

static void op_rmsnorm(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim, float *y,
                       const float *weight, const float *b)
{
    (void)b;
    nn_rmsnorm(c, x, rows, dim, weight, 1e-6f, y);
}

static void op_modulate(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim, float *y,
                        const float *shift, const float *scale)
{
    nn_modulate(c, x, rows, dim, shift, scale, y);
}

/* ---- layernorm -------------------------------------------------------------------------- */

static void test_layernorm(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 7}, {3, 64}, {2, 1000}, {4, 3072}};
    static const double offsets[] = {0, 50};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t o = 0; o < 2; o++) {
            const int64_t rows = shapes[s][0], dim = shapes[s][1];
            seed(200 + s * 2 + o);
            float *x = rnd(rows * dim, 3, offsets[o]), *y = zalloc((size_t)(rows * dim) * 4);
            nn_layernorm(&g_ctx2, x, rows, dim, 1e-6f, y);
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * dim;
                double mean = 0, var = 0;
                for (int64_t j = 0; j < dim; j++)
                    mean += xr[j];
                mean /= (double)dim;
                for (int64_t j = 0; j < dim; j++)
                    var += (xr[j] - mean) * (xr[j] - mean);
                var /= (double)dim;
                double rstd = 1 / sqrt(var + 1e-6);
                for (int64_t j = 0; j < dim; j++) {
                    double want = (xr[j] - mean) * rstd;
                    /* float rounds x - mean, mean itself and rstd: a few u of
                     * (|x - mean| + |mean|) rstd, however well the moments are summed */
                    double bound = 8 * U * (fabs(xr[j] - mean) + fabs(mean)) * rstd + 1e-30;
                    check_close("layernorm", r * dim + j, y[r * dim + j], want, bound);
                }
            }
            free(x);
            free(y);
        }
    /* One element: x - mean is 0 exactly. */
    float one = 123.5f, out = 1;
    nn_layernorm(&g_ctx1, &one, 1, 1, 1e-6f, &out);
    assert_true(out == 0.0f);

    check_row_bits("layernorm", op_layernorm, NULL, NULL, 64, 3072, 1);
    check_row_bits("layernorm 7", op_layernorm, NULL, NULL, 3001, 7, 0);
}

/* ---- rmsnorm ---------------------------------------------------------------------------- */

static void test_rmsnorm(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 7}, {24, 128}, {3, 3584}, {5, 1001}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int with_w = 0; with_w < 2; with_w++) {
            const int64_t rows = shapes[s][0], dim = shapes[s][1];
            seed(300 + s * 2 + (uint64_t)with_w);
            float *x = rnd(rows * dim, 2, 0.5), *y = zalloc((size_t)(rows * dim) * 4);
            float *w = with_w ? rnd(dim, 1, 1) : NULL;
            nn_rmsnorm(&g_ctx2, x, rows, dim, w, 1e-6f, y);
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * dim;
                double ms = 0;
                for (int64_t j = 0; j < dim; j++)
                    ms += (double)xr[j] * xr[j];
                ms /= (double)dim;
                double rr = 1 / sqrt(ms + 1e-6);
                for (int64_t j = 0; j < dim; j++) {
                    double want = xr[j] * rr * (w ? w[j] : 1);
                    check_close("rmsnorm", r * dim + j, y[r * dim + j], want,
                                6 * U * fabs(want) + 1e-30);
                }
            }
            free(x);
            free(y);
            free(w);
        }
    seed(301);
    float *w = rnd(128, 1, 1);
    check_row_bits("rmsnorm", op_rmsnorm, NULL, NULL, 40, 3584, 0);
    check_row_bits("rmsnorm weight", op_rmsnorm, w, NULL, 1100, 128, 0);
    free(w);
}

/* ---- modulate, gated_add ---------------------------------------------------------------- */

static void test_modulate(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 9}, {7, 48}, {3, 3072}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int64_t rows = shapes[s][0], dim = shapes[s][1];
        seed(400 + s);
        float *x = rnd(rows * dim, 3, 0), *shift = rnd(dim, 1, 0), *scale = rnd(dim, 1.5, 0);
        float *y = zalloc((size_t)(rows * dim) * 4);
        nn_modulate(&g_ctx2, x, rows, dim, shift, scale, y);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < dim; j++) {
                double xv = x[r * dim + j], a = xv * (1.0 + scale[j]);
                /* three roundings: 1 + scale, the product, the sum */
                double bound = 3 * U * (fabs(a) + fabs(xv) * (1 + fabs(scale[j])) +
                                        fabs(shift[j])) + 1e-30;
                check_close("modulate", r * dim + j, y[r * dim + j], a + shift[j], bound);
            }
        free(x);
        free(shift);
        free(scale);
        free(y);
    }
    seed(401);
    float *shift = rnd(3072, 1, 0), *scale = rnd(3072, 1, 0);
    check_row_bits("modulate", op_modulate, shift, scale, 50, 3072, 0);
    free(shift);
    free(scale);
}

static void test_gated_add(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 9}, {7, 48}, {40, 3072}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int with_gate = 0; with_gate < 2; with_gate++) {
            const int64_t rows = shapes[s][0], dim = shapes[s][1], n = rows * dim;
            seed(500 + s * 2 + (uint64_t)with_gate);
            float *x = rnd(n, 3, 0), *y = rnd(n, 2, 0), *g = with_gate ? rnd(dim, 1, 0) : NULL;
            float *x1 = copy(x, n), *x2 = copy(x, n);
            nn_gated_add(&g_ctx1, x1, rows, dim, g, y);
            nn_gated_add(&g_ctx2, x2, rows, dim, g, y);
            check_same_bits("gated_add: 1 vs 2 threads", x1, x2, n);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < dim; j++) {
                    int64_t i = r * dim + j;
                    double gy = (g ? (double)g[j] : 1.0) * y[i];
                    check_close("gated_add", i, x2[i], x[i] + gy,
                                2 * U * (fabs(x[i]) + 2 * fabs(gy)) + 1e-30);
                }
            if (rows > 1) { /* the last row alone */
                float *last = copy(x + (rows - 1) * dim, dim);
                nn_gated_add(&g_ctx2, last, 1, dim, g, y + (rows - 1) * dim);
                check_same_bits("gated_add: row alone", last, x2 + (rows - 1) * dim, dim);
                free(last);
            }
            free(x);
            free(y);
            free(g);
            free(x1);
            free(x2);
        }
}

/* ---- activations ------------------------------------------------------------------------ */

static const float g_special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-3f, -1e-3f, 0.5f, -0.5f,
                                  3.0f, -3.0f, 9.0f, -9.0f, 20.0f, -20.0f, 87.0f, -87.0f,
                                  88.5f, -88.5f, 100.0f, -100.0f, 1e4f, -1e4f, 1e30f, -1e30f};
#define N_SPECIAL ((int64_t)(sizeof g_special / sizeof *g_special))

static void check_elementwise_bits(const char *name, void (*op)(nn_ctx_t *, float *, int64_t))
{
    const int64_t n = 100003; /* above the threading size, not a multiple of any width */
    seed(11);
    float *x = rnd(n, 10, 0), *a = copy(x, n), *b = copy(x, n);
    op(&g_ctx1, a, n);
    op(&g_ctx2, b, n);
    char what[64];
    snprintf(what, sizeof what, "%s: 1 vs 2 threads", name);
    check_same_bits(what, a, b, n);
    float *part = copy(x + 77, 13);
    op(&g_ctx2, part, 13);
    snprintf(what, sizeof what, "%s: a slice alone", name);
    check_same_bits(what, part, b + 77, 13);
    /* the AVX2 loops and the portable ones: the same bits too */
    memcpy(a, x, (size_t)n * sizeof *a);
    op(&g_port2, a, n);
    snprintf(what, sizeof what, "%s: portable loops", name);
    check_same_bits(what, a, b, n);
    free(x);
    free(a);
    free(b);
    free(part);
}

/* 0.5 x (1 + tanh(u)) written as x / (1 + e^(-2u)): the tanh form cancels to 0 even in
 * double once tanh(u) rounds to -1 (x below about -6). */
static double gelu_ref(double x)
{
    return x / (1 + exp(-2 * sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void test_gelu_tanh(void **state)
{
    (void)state;
    const int64_t n = 4099;
    seed(600);
    float *x = rnd(n, 12, 0);
    memcpy(x, g_special, sizeof g_special);
    float *y = copy(x, n);
    nn_gelu_tanh(&g_ctx2, y, n);
    for (int64_t i = 0; i < n; i++) {
        double u = sqrt(2 / M_PI) * ((double)x[i] + 0.044715 * (double)x[i] * x[i] * x[i]);
        /* u itself is rounded in float (a few u relative), and e^(-2u) turns that into
         * 2|u| times as much: the op's own condition, torch's too */
        double bound = 8 * U * (1 + 2 * fabs(u)) * fabs(gelu_ref(x[i])) + 1e-37;
        check_close("gelu_tanh", i, y[i], gelu_ref(x[i]), bound);
    }
    float nan = NAN;
    nn_gelu_tanh(&g_ctx1, &nan, 1);
    assert_true(isnan(nan));
    free(x);
    free(y);
    check_elementwise_bits("gelu_tanh", nn_gelu_tanh);
}

static void test_silu(void **state)
{
    (void)state;
    const int64_t n = 4099;
    seed(700);
    float *x = rnd(n, 12, 0);
    memcpy(x, g_special, sizeof g_special);
    float *y = copy(x, n);
    nn_silu(&g_ctx2, y, n);
    for (int64_t i = 0; i < n; i++) {
        double want = x[i] / (1 + exp(-(double)x[i]));
        check_close("silu", i, y[i], want, 8 * U * (1 + fabs(x[i])) * fabs(want) + 1e-37);
    }
    float v[] = {NAN, INFINITY};
    nn_silu(&g_ctx1, v, 2);
    assert_true(isnan(v[0]));
    assert_true(v[1] == INFINITY);
    free(x);
    free(y);
    check_elementwise_bits("silu", nn_silu);
}

/* ---- rope ------------------------------------------------------------------------------- */

static void test_rope_pairs(void **state)
{
    (void)state;
    /* One token, one head of 4: pair 0 turned by 90 degrees, pair 1 by 180. */
    float x[] = {1, 2, 3, 4};
    const float c[] = {0, -1}, s[] = {1, 0};
    nn_rope(&g_ctx1, x, 1, 1, 4, c, s);
    const float want[] = {-2, 1, -3, -4};
    check_same_bits("rope pairs", x, want, 4);
}

static void test_rope(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 1, 16}, {5, 3, 16}, {1, 1, 128}, {7, 3, 128},
                                        {130, 24, 128}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
        const int64_t tokens = shapes[sh][0], heads = shapes[sh][1], hd = shapes[sh][2];
        const int64_t n = tokens * heads * hd, half = hd / 2;
        seed(800 + sh);
        float *x = rnd(n, 2, 0), *ang = rnd(tokens * half, 40, 0);
        float *c = zalloc((size_t)(tokens * half) * 4), *s = zalloc((size_t)(tokens * half) * 4);
        for (int64_t i = 0; i < tokens * half; i++) {
            c[i] = (float)cos(ang[i]);
            s[i] = (float)sin(ang[i]);
        }
        float *y = copy(x, n), *y1 = copy(x, n);
        nn_rope(&g_ctx2, y, tokens, heads, hd, c, s);
        nn_rope(&g_ctx1, y1, tokens, heads, hd, c, s);
        check_same_bits("rope: 1 vs 2 threads", y, y1, n);
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t j = 0; j < half; j++) {
                    int64_t i = (t * heads + h) * hd + 2 * j;
                    double a = x[i], b = x[i + 1], cc = c[t * half + j], ss = s[t * half + j];
                    double bound = 2 * U * (fabs(a * cc) + fabs(b * ss) + fabs(a * ss) +
                                            fabs(b * cc)) + 1e-30;
                    check_close("rope re", i, y[i], a * cc - b * ss, bound);
                    check_close("rope im", i + 1, y[i + 1], a * ss + b * cc, bound);
                }
        if (tokens > 1) { /* the last token alone */
            int64_t t = tokens - 1;
            float *one = copy(x + t * heads * hd, heads * hd);
            nn_rope(&g_ctx2, one, 1, heads, hd, c + t * half, s + t * half);
            check_same_bits("rope: token alone", one, y + t * heads * hd, heads * hd);
            free(one);
        }
        free(x);
        free(ang);
        free(c);
        free(s);
        free(y);
        free(y1);
    }
}

static void test_rope_half(void **state)
{
    (void)state;
    /* One token, one head of 4: pair (0, 2) turned by 90 degrees, pair (1, 3) by 180. */
    float x[] = {1, 2, 3, 4};
    const float c0[] = {0, -1}, s0[] = {1, 0};
    nn_rope_half(&g_ctx1, x, 1, 1, 4, c0, s0);
    const float want[] = {-3, -2, 1, -4};
    check_same_bits("rope_half pairs", x, want, 4);

    static const int64_t shapes[][3] = {{1, 1, 16}, {5, 3, 16}, {7, 28, 128}, {130, 4, 64}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
        const int64_t tokens = shapes[sh][0], heads = shapes[sh][1], hd = shapes[sh][2];
        const int64_t n = tokens * heads * hd, half = hd / 2;
        seed(850 + sh);
        float *in = rnd(n, 2, 0), *ang = rnd(tokens * half, 40, 0);
        float *c = zalloc((size_t)(tokens * half) * 4), *s = zalloc((size_t)(tokens * half) * 4);
        for (int64_t i = 0; i < tokens * half; i++) {
            c[i] = (float)cos(ang[i]);
            s[i] = (float)sin(ang[i]);
        }
        float *y = copy(in, n), *y1 = copy(in, n);
        nn_rope_half(&g_ctx2, y, tokens, heads, hd, c, s);
        nn_rope_half(&g_ctx1, y1, tokens, heads, hd, c, s);
        check_same_bits("rope_half: 1 vs 2 threads", y, y1, n);
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t j = 0; j < half; j++) {
                    int64_t i = (t * heads + h) * hd + j;
                    float a = in[i], b = in[i + half], cc = c[t * half + j], ss = s[t * half + j];
                    /* exactly torch's roundings: two products, then their sum */
                    float lo = a * cc + -b * ss, hi = b * cc + a * ss;
                    check_same_bits("rope_half lo", &y[i], &lo, 1);
                    check_same_bits("rope_half hi", &y[i + half], &hi, 1);
                }
        free(in);
        free(ang);
        free(c);
        free(s);
        free(y);
        free(y1);
    }
}

static void test_silu_mul(void **state)
{
    (void)state;
    const int64_t n = 20011;
    seed(710);
    float *x = rnd(n, 12, 0), *y = rnd(n, 3, 0);
    memcpy(x, g_special, sizeof g_special);
    float *gate = copy(x, n), *fused = copy(x, n);
    nn_silu(&g_ctx2, gate, n);
    nn_silu_mul(&g_ctx2, fused, y, n);
    for (int64_t i = 0; i < n; i++) { /* the SiLU's bits, then one rounded product */
        float want = gate[i] * y[i];
        check_same_bits("silu_mul", &fused[i], &want, 1);
    }
    float *one = copy(x, n);
    nn_silu_mul(&g_ctx1, one, y, n);
    check_same_bits("silu_mul: 1 vs 2 threads", one, fused, n);
    float *port = copy(x, n);
    nn_silu_mul(&g_port2, port, y, n);
    check_same_bits("silu_mul: portable", port, fused, n);
    free(x);
    free(y);
    free(gate);
    free(fused);
    free(one);
    free(port);
}

/* ---- rounding order ------------------------------------------------------------------- */

/* Where a row-wise op can round exactly as torch's f32 kernels do, it must: each product and
 * sum in the order torch writes them (RMSNorm's (x * r) * w, modulate's x * (1 + scale) +
 * shift, the gated residual's x + g * y, RoPE's (ac - bd, ad + bc)). The float expressions
 * below are that order; the mean square is the rounded true value. */
static void test_torch_rounding_order(void **state)
{
    (void)state;
    const int64_t rows = 9, dim = 131;
    seed(1000);
    float *x = rnd(rows * dim, 2, 0.3), *z = rnd(rows * dim, 1, 0);
    float *w = rnd(dim, 1, 1), *sh = rnd(dim, 1, 0), *sc = rnd(dim, 1, 0), *g = rnd(dim, 1, 0);
    float *y = zalloc((size_t)(rows * dim) * 4);

    nn_rmsnorm(&g_ctx2, x, rows, dim, w, 1e-6f, y);
    for (int64_t r = 0; r < rows; r++) {
        double ms = 0;
        for (int64_t j = 0; j < dim; j++)
            ms += (double)x[r * dim + j] * x[r * dim + j];
        float rr = 1.0f / sqrtf((float)(ms / (double)dim) + 1e-6f);
        for (int64_t j = 0; j < dim; j++) {
            float want = (x[r * dim + j] * rr) * w[j];
            check_same_bits("rmsnorm: (x * r) * w", &y[r * dim + j], &want, 1);
        }
    }

    nn_modulate(&g_ctx2, x, rows, dim, sh, sc, y);
    for (int64_t i = 0; i < rows * dim; i++) {
        float want = x[i] * (1.0f + sc[i % dim]) + sh[i % dim];
        check_same_bits("modulate: x * (1 + scale) + shift", &y[i], &want, 1);
    }

    memcpy(y, x, (size_t)(rows * dim) * sizeof *y);
    nn_gated_add(&g_ctx2, y, rows, dim, g, z);
    for (int64_t i = 0; i < rows * dim; i++) {
        float want = x[i] + g[i % dim] * z[i];
        check_same_bits("gated_add: x + g * y", &y[i], &want, 1);
    }

    const int64_t tokens = 3, heads = 2, hd = 16, half = hd / 2;
    float *c = rnd(tokens * half, 1, 0), *sn = rnd(tokens * half, 1, 0);
    memcpy(y, x, (size_t)(tokens * heads * hd) * sizeof *y);
    nn_rope(&g_ctx2, y, tokens, heads, hd, c, sn);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t j = 0; j < half; j++) {
                int64_t i = (t * heads + h) * hd + 2 * j;
                float a = x[i], b = x[i + 1], cc = c[t * half + j], ss = sn[t * half + j];
                float want[2] = {a * cc - b * ss, a * ss + b * cc};
                check_same_bits("rope: (ac - bd, ad + bc)", &y[i], want, 2);
            }
    free(x);
    free(w);
    free(y);
    free(sh);
    free(sc);
    free(g);
    free(z);
    free(c);
    free(sn);
}

/* ---- attention -------------------------------------------------------------------------- */

typedef struct {
    int64_t q_len, kv_len, heads, hd;
    int mask;        /* 0 none, 1 some keys masked, 2 all masked, 3 only the last key kept */
    double q_scale;  /* larger: scores in the hundreds, the running max must rescale */
} att_case_t;

static float *make_mask(int kind, int64_t kv_len)
{
    if (kind == 0)
        return NULL;
    float *m = zalloc((size_t)kv_len * 4);
    for (int64_t j = 0; j < kv_len; j++)
        m[j] = kind == 1 ? (uniform() < 0.4 ? 0.0f : 1.0f) : 0.0f;
    if (kind == 1)
        m[0] = 1.0f;
    if (kind == 3)
        m[kv_len - 1] = 1.0f;
    return m;
}

/* Naive double attention: the whole score row, max, exp, sum, then the weighted sum. For
 * each output also the largest |v| among the kept keys and the largest |score|: the error of
 * a float softmax scales with both. */
static void attention_ref(const float *q, int64_t q_len, const float *k, const float *v,
                          int64_t kv_len, int64_t heads, int64_t kv_heads, int64_t hd,
                          const float *mask, bool causal, double scale, double *out,
                          double *vmax, double *smax)
{
    const int64_t group = heads / kv_heads, shift = kv_len - q_len;
    double *sc = malloc((size_t)(kv_len > 0 ? kv_len : 1) * sizeof *sc);
    assert_non_null(sc);
    for (int64_t i = 0; i < q_len; i++)
        for (int64_t h = 0; h < heads; h++) {
            const float *qi = q + (i * heads + h) * hd;
            double mx = -INFINITY, sum = 0, vm = 0, sm = 0;
            for (int64_t j = 0; j < kv_len; j++) {
                if ((mask && mask[j] == 0) || (causal && j > i + shift))
                    continue;
                const float *kj = k + (j * kv_heads + h / group) * hd;
                double d = 0;
                for (int64_t c = 0; c < hd; c++)
                    d += (double)qi[c] * kj[c];
                sc[j] = d * scale;
                mx = fmax(mx, sc[j]);
                sm = fmax(sm, fabs(sc[j]));
            }
            double *o = out + (i * heads + h) * hd;
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int64_t j = 0; j < kv_len; j++) {
                if ((mask && mask[j] == 0) || (causal && j > i + shift))
                    continue;
                double p = exp(sc[j] - mx);
                sum += p;
                const float *vj = v + (j * kv_heads + h / group) * hd;
                for (int64_t c = 0; c < hd; c++) {
                    o[c] += p * vj[c];
                    vm = fmax(vm, fabs(vj[c]));
                }
            }
            for (int64_t c = 0; c < hd; c++)
                o[c] = sum > 0 ? o[c] / sum : 0;
            vmax[i * heads + h] = vm;
            smax[i * heads + h] = sm;
        }
    free(sc);
}

/* Against the reference, and the bit promises, on a pair of contexts (1 and 2 threads). */
static void check_attention(nn_ctx_t *c1, nn_ctx_t *c2)
{
    static const att_case_t cases[] = {
        {1, 1, 1, 16, 0, 1},     {5, 7, 3, 16, 0, 1},     {5, 7, 3, 16, 1, 1},
        {3, 9, 2, 16, 2, 1},     {4, 200, 1, 16, 3, 1},   {70, 300, 1, 128, 0, 1},
        {130, 257, 3, 128, 1, 1}, {65, 129, 3, 128, 0, 60}, {1, 600, 2, 128, 1, 60},
        {33, 40, 2, 80, 1, 2},   {3, 5, 1, 512, 0, 1},    {200, 1, 1, 16, 0, 1},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const att_case_t *cs = &cases[ci];
        const int64_t qn = cs->q_len * cs->heads * cs->hd, kn = cs->kv_len * cs->heads * cs->hd;
        seed(900 + ci);
        float *q = rnd(qn, cs->q_scale, 0), *k = rnd(kn, 1, 0), *v = rnd(kn, 1, 0.2);
        float *mask = make_mask(cs->mask, cs->kv_len);
        float *out = zalloc((size_t)qn * 4);
        const float scale = 1.0f / sqrtf((float)cs->hd);
        double *ref = zalloc((size_t)qn * sizeof *ref);
        double *vmax = zalloc((size_t)(cs->q_len * cs->heads) * sizeof *vmax);
        double *smax = zalloc((size_t)(cs->q_len * cs->heads) * sizeof *smax);

        nn_attention(c2, q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->hd, mask, scale,
                     out);
        attention_ref(q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->heads, cs->hd, mask, false,
                      scale, ref, vmax, smax);
        char what[96];
        snprintf(what, sizeof what, "attention case %zu (q %lld kv %lld h %lld d %lld)", ci,
                 (long long)cs->q_len, (long long)cs->kv_len, (long long)cs->heads,
                 (long long)cs->hd);
        for (int64_t i = 0; i < qn; i++) {
            int64_t row = i / cs->hd;
            if (cs->mask == 2) { /* no key at all: zeros, exactly */
                assert_true(out[i] == 0.0f);
                continue;
            }
            /* a score's error is about u |score| (plus the dot product's), which the
             * softmax passes on to the weights and they to the output: 2e-6 (1 + max|s|)
             * of the largest |v|, under 1e-5 for scores of order 1 */
            double bound = 2e-6 * (1 + smax[row]) * vmax[row] + 1e-30;
            check_close(what, i, out[i], ref[i], bound);
        }

        /* 1 thread: the same bits. */
        float *out1 = zalloc((size_t)qn * 4);
        nn_attention(c1, q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->hd, mask, scale,
                     out1);
        check_same_bits("attention: 1 vs 2 threads", out, out1, qn);

        /* Each query alone, and a run of queries from the middle: the same bits. */
        const int64_t row = cs->heads * cs->hd;
        for (int64_t i = 0; i < cs->q_len; i += cs->q_len / 7 + 1) {
            nn_attention(c2, q + i * row, 1, k, v, cs->kv_len, cs->heads, cs->hd, mask,
                         scale, out1);
            check_same_bits("attention: query alone", out1, out + i * row, row);
        }
        if (cs->q_len > 4) {
            int64_t from = 3, cnt = cs->q_len - 4;
            nn_attention(c2, q + from * row, cnt, k, v, cs->kv_len, cs->heads, cs->hd, mask,
                         scale, out1);
            check_same_bits("attention: a slice of queries", out1, out + from * row, cnt * row);
        }

        /* In place over q. */
        float *qq = copy(q, qn);
        nn_attention(c2, qq, cs->q_len, k, v, cs->kv_len, cs->heads, cs->hd, mask, scale,
                     qq);
        check_same_bits("attention: out == q", qq, out, qn);

        /* Masked keys removed instead of masked: the same bits (padding is free). */
        if (mask && cs->mask != 2) {
            float *kc = zalloc((size_t)kn * 4), *vc = zalloc((size_t)kn * 4);
            int64_t kept = 0;
            for (int64_t j = 0; j < cs->kv_len; j++)
                if (mask[j] != 0) {
                    memcpy(kc + kept * row, k + j * row, (size_t)row * 4);
                    memcpy(vc + kept * row, v + j * row, (size_t)row * 4);
                    kept++;
                }
            nn_attention(c2, q, cs->q_len, kc, vc, kept, cs->heads, cs->hd, NULL, scale,
                         out1);
            check_same_bits("attention: masked vs removed keys", out1, out, qn);
            free(kc);
            free(vc);
        }
        free(qq);
        free(out1);
        free(q);
        free(k);
        free(v);
        free(mask);
        free(out);
        free(ref);
        free(vmax);
        free(smax);
    }
}

static void test_attention(void **state)
{
    (void)state;
    check_attention(&g_ctx1, &g_ctx2);
}

/* The portable loops, which a CPU with AVX2 and FMA never runs otherwise: the same checks,
 * and the default path's results to rounding (FMA rounds once where they round twice). */
static void test_attention_portable(void **state)
{
    (void)state;
    check_attention(&g_port1, &g_port2);

    const int64_t n = 130 * 3 * 80;
    seed(950);
    float *q = rnd(n, 1, 0), *k = rnd(n, 1, 0), *v = rnd(n, 1, 0);
    float *a = zalloc((size_t)n * 4), *b = zalloc((size_t)n * 4);
    nn_attention(&g_ctx2, q, 130, k, v, 130, 3, 80, NULL, 0.11f, a);
    nn_attention(&g_port2, q, 130, k, v, 130, 3, 80, NULL, 0.11f, b);
    for (int64_t i = 0; i < n; i++)
        check_close("attention: default vs portable", i, b[i], a[i], 4e-6);
    free(q);
    free(k);
    free(v);
    free(a);
    free(b);
}

/* Causal attention with grouped kv heads: against the reference, 1 vs 2 threads, default vs
 * portable loops, each query alone with the keys it may see (a future key is as good as
 * absent), and GQA equal to the same heads with each kv head repeated. */
typedef struct {
    int64_t q_len, kv_len, heads, kv_heads, hd;
    int mask; /* as make_mask */
} causal_case_t;

static void test_causal_attention(void **state)
{
    (void)state;
    static const causal_case_t cases[] = {
        {1, 1, 1, 1, 16, 0},     {7, 7, 4, 2, 16, 0},    {7, 7, 4, 2, 16, 1},
        {130, 130, 4, 1, 32, 0}, {97, 97, 6, 3, 16, 1},  {250, 250, 2, 2, 128, 3},
        {5, 12, 2, 1, 16, 0},    {300, 300, 2, 1, 64, 1},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const causal_case_t *cs = &cases[ci];
        const int64_t row = cs->heads * cs->hd, kvrow = cs->kv_heads * cs->hd;
        const int64_t qn = cs->q_len * row, kn = cs->kv_len * kvrow;
        const int64_t shift = cs->kv_len - cs->q_len;
        seed(1100 + ci);
        float *q = rnd(qn, 1, 0), *k = rnd(kn, 1, 0), *v = rnd(kn, 1, 0.2);
        float *mask = make_mask(cs->mask, cs->kv_len);
        const float scale = 1.0f / sqrtf((float)cs->hd);
        float *out = zalloc((size_t)qn * 4), *out1 = zalloc((size_t)qn * 4);
        double *ref = zalloc((size_t)qn * sizeof *ref);
        double *vmax = zalloc((size_t)(cs->q_len * cs->heads) * sizeof *vmax);
        double *smax = zalloc((size_t)(cs->q_len * cs->heads) * sizeof *smax);
        char what[96];
        snprintf(what, sizeof what, "causal attention case %zu (q %lld kv %lld h %lld/%lld)", ci,
                 (long long)cs->q_len, (long long)cs->kv_len, (long long)cs->heads,
                 (long long)cs->kv_heads);

        nn_causal_attention(&g_ctx2, q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->kv_heads,
                            cs->hd, mask, scale, out);
        attention_ref(q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->kv_heads, cs->hd, mask,
                      true, scale, ref, vmax, smax);
        for (int64_t i = 0; i < qn; i++) {
            int64_t r = i / cs->hd;
            check_close(what, i, out[i], ref[i], 2e-6 * (1 + smax[r]) * vmax[r] + 1e-30);
        }

        nn_causal_attention(&g_ctx1, q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->kv_heads,
                            cs->hd, mask, scale, out1);
        check_same_bits("causal attention: 1 vs 2 threads", out, out1, qn);

        nn_causal_attention(&g_port2, q, cs->q_len, k, v, cs->kv_len, cs->heads, cs->kv_heads,
                            cs->hd, mask, scale, out1);
        for (int64_t i = 0; i < qn; i++)
            check_close("causal attention: default vs portable", i, out1[i], out[i], 4e-6);

        /* query i alone, as the last of i + 1 + shift positions */
        for (int64_t i = 0; i < cs->q_len; i += cs->q_len / 9 + 1) {
            nn_causal_attention(&g_ctx2, q + i * row, 1, k, v, i + 1 + shift, cs->heads,
                                cs->kv_heads, cs->hd, mask, scale, out1);
            check_same_bits("causal attention: query alone", out1, out + i * row, row);
        }

        /* every kv head repeated for its group of query heads: the same bits */
        const int64_t group = cs->heads / cs->kv_heads;
        float *kx = zalloc((size_t)(cs->kv_len * row) * 4), *vx = zalloc((size_t)(cs->kv_len * row) * 4);
        for (int64_t j = 0; j < cs->kv_len; j++)
            for (int64_t h = 0; h < cs->heads; h++) {
                memcpy(kx + j * row + h * cs->hd, k + j * kvrow + (h / group) * cs->hd,
                       (size_t)cs->hd * 4);
                memcpy(vx + j * row + h * cs->hd, v + j * kvrow + (h / group) * cs->hd,
                       (size_t)cs->hd * 4);
            }
        nn_causal_attention(&g_ctx2, q, cs->q_len, kx, vx, cs->kv_len, cs->heads, cs->heads,
                            cs->hd, mask, scale, out1);
        check_same_bits("causal attention: GQA vs repeated kv heads", out1, out, qn);

        free(kx);
        free(vx);
        free(q);
        free(k);
        free(v);
        free(mask);
        free(out);
        free(out1);
        free(ref);
        free(vmax);
        free(smax);
    }
}

/* One key: the output is that key's value, whatever the score (e^0 / e^0). */
static void test_attention_one_key(void **state)
{
    (void)state;
    seed(990);
    float *q = rnd(7 * 2 * 16, 50, 0), *k = rnd(2 * 16, 50, 0), *v = rnd(2 * 16, 1, 0);
    float *out = zalloc(7 * 2 * 16 * 4);
    nn_attention(&g_ctx2, q, 7, k, v, 1, 2, 16, NULL, 0.25f, out);
    for (int64_t i = 0; i < 7; i++)
        check_same_bits("attention, one key", out + i * 32, v, 32);
    free(q);
    free(k);
    free(v);
    free(out);
}

/* ---- timestep embedding ----------------------------------------------------------------- */

static void test_timestep_embedding(void **state)
{
    (void)state;
    static const float ts[] = {0.0f, 0.25f, 0.5f, 0.61237244f, 0.999f, 1.0f};
    const int64_t n = 6;
    static const int64_t dims[] = {256, 2, 6};
    static const float scales[] = {1000.0f, 1.0f};
    for (size_t di = 0; di < 3; di++)
        for (size_t si = 0; si < 2; si++) {
            const int64_t dim = dims[di], half = dim / 2;
            const float sc = scales[si];
            float *out = zalloc((size_t)(n * dim) * 4);
            nn_timestep_embedding(&g_ctx1, ts, n, dim, sc, out);
            for (int64_t r = 0; r < n; r++)
                for (int64_t i = 0; i < half; i++) {
                    /* torch's f32 steps, written out: exponent = (f32(-ln 1e4) * i) / half,
                     * freq = exp(exponent), arg = scale * (t * freq); exp, cos, sin rounded
                     * once. The op must give exactly these bits. */
                    float e = ((float)-log(10000.0) * (float)i) / (float)half;
                    float f = (float)exp((double)e);
                    float arg = sc * (ts[r] * f);
                    float want_cos = (float)cos((double)arg), want_sin = (float)sin((double)arg);
                    if (out[r * dim + i] != want_cos || out[r * dim + half + i] != want_sin)
                        fail_msg("timestep dim %lld t %g i %lld: got (%.9g, %.9g), torch's f32 "
                                 "order gives (%.9g, %.9g)", (long long)dim, ts[r],
                                 (long long)i, out[r * dim + i], out[r * dim + half + i],
                                 want_cos, want_sin);
                    /* and the true value, all in double: the f32 exponent is off by about
                     * 2u |exponent|, which exp carries into freq, and two more roundings make
                     * arg: the angle moves by (2 |exponent| + 4) u of itself, 6e-5 rad at
                     * 1000 rad; cos and sin add u */
                    double ex = -log(10000.0) * (double)i / (double)half;
                    double a = sc * (double)ts[r] * exp(ex);
                    double bound = (2 * fabs(ex) + 4) * U * fabs(a) + 2 * U;
                    check_close("timestep cos", i, out[r * dim + i], cos(a), bound);
                    check_close("timestep sin", i, out[r * dim + half + i], sin(a), bound);
                }
            free(out);
        }
    /* t = 0: cos half all ones, sin half all zeros (cos first, as flip_sin_to_cos). */
    float out[8];
    const float zero = 0.0f;
    nn_timestep_embedding(&g_ctx1, &zero, 1, 8, 1000.0f, out);
    for (int i = 0; i < 4; i++) {
        assert_true(out[i] == 1.0f);
        assert_true(out[4 + i] == 0.0f);
    }
}

/* ---- main ------------------------------------------------------------------------------- */

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
        cmocka_unit_test(test_context),
        cmocka_unit_test(test_linear_layout),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_modulate),
        cmocka_unit_test(test_gated_add),
        cmocka_unit_test(test_gelu_tanh),
        cmocka_unit_test(test_silu),
        cmocka_unit_test(test_rope_pairs),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_half),
        cmocka_unit_test(test_silu_mul),
        cmocka_unit_test(test_torch_rounding_order),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_portable),
        cmocka_unit_test(test_attention_one_key),
        cmocka_unit_test(test_causal_attention),
        cmocka_unit_test(test_timestep_embedding),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
