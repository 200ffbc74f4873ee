/* ops_cpu: the CPU backend, the reference every other backend is compared with. nn_linear is
 * OpenBLAS's sgemm; everything else is plain loops threaded with OpenMP over rows (attention:
 * over heads and blocks of queries), each row computed by one thread in a fixed order, so that
 * their bits depend neither on the thread count nor on the other rows in the call. nn_linear's
 * bits are fixed for a given thread count only (see cpu_linear). On x86-64
 * the attention tiles and the activations also have AVX2 versions, chosen at run time. The
 * convolution's direct kernel is conv_cpu.c's. */
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif
/* x86-64 gets AVX2 (and FMA) versions of the hot loops, chosen at run time. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_PATHS 1
#endif

#include "nn/conv_cpu.h"
#include "nn/ops.h"
#include "nn/tensor.h"

/* Attention works on ATT_BQ queries against ATT_BK keys at a time; both are multiples of the
 * kernels' 6 rows, and ATT_BQ of their 16 lanes. */
enum { ATT_BQ = 96, ATT_BK = 120 };

/* Below this many elements an op runs on the calling thread: a parallel region costs more. */
#define PAR_MIN 16384

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef struct {
    int threads;
    bool avx2;          /* the activations may use AVX2 (same bits as without) */
    bool fma;           /* attention's tile loops may use AVX2 and FMA (other bits) */
    size_t tile_floats; /* one thread's attention tiles, a multiple of 16 (64 bytes) */
    float *tiles;       /* threads * tile_floats */
} cpu_state_t;

/* ---- helpers ---------------------------------------------------------------------------- */

/* Sums in a fixed order whatever the compiler, in eight double lanes (independent chains that
 * the compiler may put in vectors, pairwise at the end): exact enough that the norms' float
 * mean and variance are the rounded true values. */
static double sum_f64(const float *x, int64_t n)
{
    double s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            s[l] += x[i + l];
    for (; i < n; i++)
        s[0] += x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* sum (x - center)^2, the same way. */
static double sumsq_f64(const float *x, int64_t n, double center)
{
    double s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double a = x[i + l] - center;
            s[l] += a * a;
        }
    for (; i < n; i++) {
        double a = x[i] - center;
        s[0] += a * a;
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}


/* lo or hi where x is outside [lo, hi], x otherwise (NaN included), by bit masks: GCC will
 * not if-convert a float ?: that feeds arithmetic (trapping math), and then will not
 * vectorise the loop. */
static inline float clamp_f32(float x, float lo, float hi)
{
    uint32_t below = -(uint32_t)(x < lo), above = -(uint32_t)(x > hi);
    return nn_f32_from_bits((nn_f32_bits(x) & ~(below | above)) | (nn_f32_bits(lo) & below) |
                         (nn_f32_bits(hi) & above));
}

/* e^x in float over the whole range (0 below -103.97, inf above 88.72, NaN stays NaN),
 * within 1 ulp (checked on every 7th float): Cody-Waite reduction x = n ln2 + r,
 * |r| <= ln2/2, and Cephes' expf polynomial, then 2^n applied as two factors so that
 * subnormal results and n = 128 need no special case. n is read from the rounding constant's
 * low bits rather than converted, so a NaN is no undefined behaviour. Branch-free so that
 * `omp simd` loops vectorise it, which glibc's expf does not. */
static inline float exp_f32(float x)
{
    float xc = clamp_f32(x, -104.0f, 89.0f);
    float t = xc * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t ni = (int32_t)(nn_f32_bits(t) - 0x4B400000u), n1 = ni / 2, n2 = ni - n1;
    return y * nn_f32_from_bits((uint32_t)(n1 + 127) << 23) *
           nn_f32_from_bits((uint32_t)(n2 + 127) << 23);
}

static inline int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < INT_MAX ? (int)n : 1;
}

/* ---- GEMM ------------------------------------------------------------------------------- */

/* torch's addmm(b, x, w^T): one rounding for the bias, added to the finished dot product. */
static void cpu_linear(nn_ctx_t *ctx, const float *x, int64_t m, int64_t k, const float *w,
                       const float *b, float *y, int64_t n)
{
    assert(m >= 0 && k >= 0 && n >= 0 && m <= INT_MAX && k <= INT_MAX && n <= INT_MAX);
    if (m == 0 || n == 0)
        return;
    if (k == 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                y[i * n + j] = b ? b[j] : 0.0f;
        return;
    }
    /* One thread pool: OpenBLAS runs single-threaded in each OpenMP thread, on its own slice
     * of the output columns (a multiple of 16 wide), with the bias added to the slice while it
     * is still in cache. OpenBLAS's own threads beside OpenMP's cost a tenth of the time in
     * wake-ups and yields on two cores. A row's bits do not depend on the other rows, but an
     * output column's may depend on where the split puts it (OpenBLAS rounds by position in
     * its tiles): the same thread count gives the same bits, another count may not. */
    int parts = ctx->threads;
    if (parts > 1 && n < 64 * parts)
        parts = 1; /* too narrow to share: the time embedding's MLP, small projections */
    int64_t width = ((n + parts - 1) / parts + 15) / 16 * 16;
#pragma omp parallel for num_threads(parts) if (parts > 1) schedule(static)
    for (int p = 0; p < parts; p++) {
        int64_t n0 = (int64_t)p * width, n1 = n0 + width < n ? n0 + width : n;
        if (n0 >= n1)
            continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)(n1 - n0), (int)k,
                    1.0f, x, (int)k, w + n0 * k, (int)k, 0.0f, y + n0, (int)n);
        if (!b)
            continue;
        for (int64_t i = 0; i < m; i++) {
            float *yi = y + i * n;
#pragma omp simd
            for (int64_t j = n0; j < n1; j++)
                yi[j] += b[j];
        }
    }
}

/* ---- row-wise ops ----------------------------------------------------------------------- */

/* torch.nn.LayerNorm without affine: mean and biased variance, here from double sums
 * rounded once to float, then (x - mean) * (1 / sqrt(var + eps)) in float. */
static void cpu_layernorm(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim, float eps,
                          float *y)
{
#pragma omp parallel for num_threads(ctx->threads) if (rows * dim >= PAR_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        double mean = sum_f64(xi, dim) / (double)dim;
        float var = (float)(sumsq_f64(xi, dim, mean) / (double)dim);
        float mean_f = (float)mean, rstd = 1.0f / sqrtf(var + eps);
#pragma omp simd
        for (int64_t j = 0; j < dim; j++)
            yi[j] = (xi[j] - mean_f) * rstd;
    }
}

/* diffusers' RMSNorm: x * rsqrt(mean(x^2) + eps), then times weight, each product rounded as
 * torch rounds it; mean(x^2) from a double sum rounded once. */
static void cpu_rmsnorm(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                        const float *weight, float eps, float *y)
{
#pragma omp parallel for num_threads(ctx->threads) if (rows * dim >= PAR_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        float ms = (float)(sumsq_f64(xi, dim, 0.0) / (double)dim);
        float r = 1.0f / sqrtf(ms + eps);
        if (weight) {
#pragma omp simd
            for (int64_t j = 0; j < dim; j++)
                yi[j] = (xi[j] * r) * weight[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < dim; j++)
                yi[j] = xi[j] * r;
        }
    }
}

static void cpu_modulate(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                         const float *shift, const float *scale, float *y)
{
#pragma omp parallel for num_threads(ctx->threads) if (rows * dim >= PAR_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
#pragma omp simd
        for (int64_t j = 0; j < dim; j++)
            yi[j] = xi[j] * (1.0f + scale[j]) + shift[j];
    }
}

static void cpu_gated_add(nn_ctx_t *ctx, float *x, int64_t rows, int64_t dim,
                          const float *gate, const float *y)
{
#pragma omp parallel for num_threads(ctx->threads) if (rows * dim >= PAR_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *xi = x + i * dim;
        const float *yi = y + i * dim;
        if (gate) {
#pragma omp simd
            for (int64_t j = 0; j < dim; j++)
                xi[j] += gate[j] * yi[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < dim; j++)
                xi[j] += yi[j];
        }
    }
}

/* torch's gelu(approximate='tanh'), 0.5 x (1 + tanh(u)), evaluated as x / (1 + e^(-2u)),
 * the same function without the cancellation in 1 + tanh(u) for negative x; u as torch
 * computes it: sqrt(2/pi) * (x + 0.044715 * x*x*x). */
static ALWAYS_INLINE void gelu_tanh_span(float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float u = 0.797884560802865355f * (v + 0.044715f * (v * v * v));
        x[i] = v / (1.0f + exp_f32(-2.0f * u));
    }
}

/* torch's silu: x / (1 + e^-x). */
static ALWAYS_INLINE void silu_span(float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + exp_f32(-x[i]));
}

/* Each twice: with AVX2 (eight lanes, and the integer ops exp_f32 needs) and for any CPU.
 * No FMA in either, so both give the same bits. */
/* The spans take a second operand y (NULL for the one-operand ops), so that one driver
 * below serves them all. */
typedef void (*span_fn)(float *x, const float *y, int64_t n);

static void gelu_tanh_any(float *x, const float *y, int64_t n) { (void)y; gelu_tanh_span(x, n); }
static void silu_any(float *x, const float *y, int64_t n) { (void)y; silu_span(x, n); }
#ifdef HAVE_X86_PATHS
__attribute__((target("avx2"))) static void gelu_tanh_avx2(float *x, const float *y, int64_t n)
{
    (void)y;
    gelu_tanh_span(x, n);
}
__attribute__((target("avx2"))) static void silu_avx2(float *x, const float *y, int64_t n)
{
    (void)y;
    silu_span(x, n);
}
#endif

/* An element-wise op over n elements (x, and y when not NULL) in chunks, threaded over the
 * chunks. */
#define ELEM_CHUNK 8192

static void elementwise(nn_ctx_t *ctx, float *x, const float *y, int64_t n, span_fn any,
                        span_fn avx2)
{
    const cpu_state_t *st = ctx->impl;
    span_fn span = st->avx2 && avx2 ? avx2 : any;
    const int64_t chunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for num_threads(ctx->threads) if (n >= PAR_MIN) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t from = c * ELEM_CHUNK, len = n - from < ELEM_CHUNK ? n - from : ELEM_CHUNK;
        span(x + from, y ? y + from : NULL, len);
    }
}

/* The AVX2 version of a span where the build can have one, NULL elsewhere. */
#ifdef HAVE_X86_PATHS
#define AVX2_SPAN(f) f
#else
#define AVX2_SPAN(f) NULL
#endif

static void cpu_gelu_tanh(nn_ctx_t *ctx, float *x, int64_t n)
{
    elementwise(ctx, x, NULL, n, gelu_tanh_any, AVX2_SPAN(gelu_tanh_avx2));
}

static void cpu_silu(nn_ctx_t *ctx, float *x, int64_t n)
{
    elementwise(ctx, x, NULL, n, silu_any, AVX2_SPAN(silu_avx2));
}

/* torch's act_fn(gate) * up: the SiLU rounded, then the product. */
static ALWAYS_INLINE void silu_mul_span(float *x, const float *y, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float s = x[i] / (1.0f + exp_f32(-x[i]));
        x[i] = s * y[i];
    }
}

static void silu_mul_any(float *x, const float *y, int64_t n) { silu_mul_span(x, y, n); }
#ifdef HAVE_X86_PATHS
__attribute__((target("avx2"))) static void silu_mul_avx2(float *x, const float *y, int64_t n)
{
    silu_mul_span(x, y, n);
}
#endif

static void cpu_silu_mul(nn_ctx_t *ctx, float *x, const float *y, int64_t n)
{
    elementwise(ctx, x, y, n, silu_mul_any, AVX2_SPAN(silu_mul_avx2));
}

/* diffusers' apply_rotary_emb_qwen (use_real=False): a complex product per pair, rounded as
 * torch's (ac - bd, ad + bc). */
static void cpu_rope(nn_ctx_t *ctx, float *x, int64_t tokens, int64_t heads, int64_t head_dim,
                     const float *cos, const float *sin)
{
    assert(head_dim % 2 == 0);
    int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(ctx->threads) if (tokens * heads * head_dim >= PAR_MIN) \
    schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *xh = x + (t * heads + h) * head_dim;
#pragma omp simd
            for (int64_t j = 0; j < half; j++) {
                float a = xh[2 * j], b = xh[2 * j + 1];
                xh[2 * j] = a * c[j] - b * s[j];
                xh[2 * j + 1] = a * s[j] + b * c[j];
            }
        }
    }
}

/* transformers' apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, where rotate_half(x) is
 * (-x[h:], x[:h]); each product rounded, then the sum. */
static void cpu_rope_half(nn_ctx_t *ctx, float *x, int64_t tokens, int64_t heads,
                          int64_t head_dim, const float *cos, const float *sin)
{
    assert(head_dim % 2 == 0);
    int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(ctx->threads) if (tokens * heads * head_dim >= PAR_MIN) \
    schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *lo = x + (t * heads + h) * head_dim, *hi = lo + half;
#pragma omp simd
            for (int64_t j = 0; j < half; j++) {
                float a = lo[j], b = hi[j];
                lo[j] = a * c[j] + -b * s[j];
                hi[j] = b * c[j] + a * s[j];
            }
        }
    }
}

/* diffusers' QwenImageRMS_norm: F.normalize over the row (x / max(||x||_2, eps), the norm
 * from a double sum of squares rounded once), then * scale, * gamma, each product rounded as
 * torch rounds it; SiLU after it when asked, as silu_span. Compiled twice like the
 * activations, with the same bits. */
static ALWAYS_INLINE void l2norm_row(const float *x, int64_t dim, const float *gamma,
                                     float scale, float eps, bool silu, float *y)
{
    float norm = (float)sqrt(sumsq_f64(x, dim, 0.0));
    float d = norm < eps ? eps : norm; /* clamp_min: a NaN norm stays NaN */
    if (gamma) {
#pragma omp simd
        for (int64_t j = 0; j < dim; j++) {
            float v = x[j] / d;
            v = v * scale;
            y[j] = v * gamma[j];
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < dim; j++) {
            float v = x[j] / d;
            y[j] = v * scale;
        }
    }
    if (silu)
        silu_span(y, dim);
}

static void l2norm_rows_any(const float *x, int64_t rows, int64_t dim, const float *gamma,
                            float scale, float eps, bool silu, float *y)
{
    for (int64_t i = 0; i < rows; i++)
        l2norm_row(x + i * dim, dim, gamma, scale, eps, silu, y + i * dim);
}

#ifdef HAVE_X86_PATHS
__attribute__((target("avx2")))
static void l2norm_rows_avx2(const float *x, int64_t rows, int64_t dim, const float *gamma,
                             float scale, float eps, bool silu, float *y)
{
    for (int64_t i = 0; i < rows; i++)
        l2norm_row(x + i * dim, dim, gamma, scale, eps, silu, y + i * dim);
}
#endif

/* Rows in chunks of about ELEM_CHUNK elements, threaded over the chunks; each row is one
 * thread's, so the bits do not depend on the thread count. */
static void cpu_l2norm(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                       const float *gamma, float scale, float eps, bool silu, float *y)
{
    const cpu_state_t *st = ctx->impl;
    void (*run)(const float *, int64_t, int64_t, const float *, float, float, bool, float *) =
        l2norm_rows_any;
#ifdef HAVE_X86_PATHS
    if (st->avx2)
        run = l2norm_rows_avx2;
#endif
    if (rows <= 0 || dim <= 0)
        return;
    const int64_t per = dim >= ELEM_CHUNK ? 1 : ELEM_CHUNK / dim;
    const int64_t chunks = (rows + per - 1) / per;
#pragma omp parallel for num_threads(ctx->threads) if (rows * dim >= PAR_MIN) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t r0 = c * per, n = rows - r0 < per ? rows - r0 : per;
        run(x + r0 * dim, n, dim, gamma, scale, eps, silu, y + r0 * dim);
    }
}

/* ---- convolution (conv_cpu.c) ----------------------------------------------------------- */

static size_t cpu_conv2d_packed_floats(int64_t out_c, int64_t in_c, int kernel)
{
    return conv_cpu_packed_floats(out_c, in_c, kernel);
}

static void cpu_conv2d_pack(nn_ctx_t *ctx, const float *w, int64_t out_c, int64_t in_c,
                            int kernel, float *packed)
{
    (void)ctx;
    conv_cpu_pack(w, out_c, in_c, kernel, packed);
}

static void cpu_conv2d(nn_ctx_t *ctx, const nn_conv2d_t *p, const float *x, const float *packed,
                       const float *bias, const float *residual, float *y)
{
    const cpu_state_t *st = ctx->impl;
    conv_cpu_run(st->threads, st->fma, p, x, packed, bias, residual, y);
}

/* ---- attention -------------------------------------------------------------------------- */

/* The tile products are our own loops, not sgemm: OpenBLAS rounds a row differently
 * depending on where it sits in its micro-tile (on Zen, rows 6-11 of every 12 differ from the
 * same row placed at 0), so a query's bits would depend on its neighbours. Here a score is
 * sum_c q[c] k[c] in the order c = 0, 1, ..., an output sum_j p[j] v[j] in key order, and the
 * softmax runs with queries in the vector lanes and keys in order, so nothing a query gets
 * depends on which lane it has. Where the CPU has AVX2 and FMA, the products are fused; the
 * portable loops round the product and the sum apart (other bits, same accuracy). */
typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

/* Macros, not functions: a 32-byte vector passed by value draws GCC's ABI note (-Wpsabi). */
#define V8_LOAD(p) (*(const v8f_unaligned *)(const void *)(p))
#define V8_STORE(p, v) (*(v8f_unaligned *)(void *)(p) = (v))
#define V8_SPLAT(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})

/* Tile layouts (dp: head_dim rounded up to 16, padded with zeros, which add nothing):
 *   qT [dp, ATT_BQ]      the block's queries, transposed: queries in lanes
 *   kt, vt [ATT_BK, dp]  the tile's keys and values, one per row
 *   sT [ATT_BK, ATT_BQ]  scores, then probabilities: keys in rows, queries in lanes
 *   o [ATT_BQ, dp]       the running output: head dims in lanes */

/* sT[j0+r, i0..i0+15] = scale * sum_c k[j0+r, c] qT[c, i0..], r < 6: twelve accumulators,
 * two loads and six broadcasts per twelve multiply-adds. */
#define VROW(a0, a1, s, x0, x1)                                                              \
    do {                                                                                     \
        v8f b_ = V8_SPLAT(s);                                                                \
        a0 += b_ * x0;                                                                       \
        a1 += b_ * x1;                                                                       \
    } while (0)

static ALWAYS_INLINE void qk_6x16(const float *qT, const float *kt, int64_t dp, float scale,
                                  float *sT, int64_t i0, int64_t j0)
{
    const float *k0 = kt + j0 * dp, *k1 = k0 + dp, *k2 = k1 + dp, *k3 = k2 + dp, *k4 = k3 + dp,
                *k5 = k4 + dp, *qc = qT + i0;
    v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
    v8f a30 = {0}, a31 = {0}, a40 = {0}, a41 = {0}, a50 = {0}, a51 = {0};
    for (int64_t c = 0; c < dp; c++, qc += ATT_BQ) {
        v8f q0 = V8_LOAD(qc), q1 = V8_LOAD(qc + 8);
        VROW(a00, a01, k0[c], q0, q1);
        VROW(a10, a11, k1[c], q0, q1);
        VROW(a20, a21, k2[c], q0, q1);
        VROW(a30, a31, k3[c], q0, q1);
        VROW(a40, a41, k4[c], q0, q1);
        VROW(a50, a51, k5[c], q0, q1);
    }
    v8f sc = V8_SPLAT(scale);
    float *s0 = sT + j0 * ATT_BQ + i0;
    V8_STORE(s0, a00 * sc);
    V8_STORE(s0 + 8, a01 * sc);
    V8_STORE(s0 + ATT_BQ, a10 * sc);
    V8_STORE(s0 + ATT_BQ + 8, a11 * sc);
    V8_STORE(s0 + 2 * ATT_BQ, a20 * sc);
    V8_STORE(s0 + 2 * ATT_BQ + 8, a21 * sc);
    V8_STORE(s0 + 3 * ATT_BQ, a30 * sc);
    V8_STORE(s0 + 3 * ATT_BQ + 8, a31 * sc);
    V8_STORE(s0 + 4 * ATT_BQ, a40 * sc);
    V8_STORE(s0 + 4 * ATT_BQ + 8, a41 * sc);
    V8_STORE(s0 + 5 * ATT_BQ, a50 * sc);
    V8_STORE(s0 + 5 * ATT_BQ + 8, a51 * sc);
}

/* o[i0+r, c0..c0+15] = o * corr[i0+r] + sum_j sT[j, i0+r] vt[j, c0..], j < nk in order. */
static ALWAYS_INLINE void pv_6x16(const float *sT, const float *vt, int nk, int64_t dp,
                                  const float *corr, float *o, int64_t i0, int64_t c0)
{
    float *o0 = o + i0 * dp + c0, *o1 = o0 + dp, *o2 = o1 + dp, *o3 = o2 + dp, *o4 = o3 + dp,
          *o5 = o4 + dp;
    v8f a00 = V8_LOAD(o0) * V8_SPLAT(corr[i0]), a01 = V8_LOAD(o0 + 8) * V8_SPLAT(corr[i0]);
    v8f a10 = V8_LOAD(o1) * V8_SPLAT(corr[i0 + 1]), a11 = V8_LOAD(o1 + 8) * V8_SPLAT(corr[i0 + 1]);
    v8f a20 = V8_LOAD(o2) * V8_SPLAT(corr[i0 + 2]), a21 = V8_LOAD(o2 + 8) * V8_SPLAT(corr[i0 + 2]);
    v8f a30 = V8_LOAD(o3) * V8_SPLAT(corr[i0 + 3]), a31 = V8_LOAD(o3 + 8) * V8_SPLAT(corr[i0 + 3]);
    v8f a40 = V8_LOAD(o4) * V8_SPLAT(corr[i0 + 4]), a41 = V8_LOAD(o4 + 8) * V8_SPLAT(corr[i0 + 4]);
    v8f a50 = V8_LOAD(o5) * V8_SPLAT(corr[i0 + 5]), a51 = V8_LOAD(o5 + 8) * V8_SPLAT(corr[i0 + 5]);
    const float *p = sT + i0, *vj = vt + c0;
    for (int j = 0; j < nk; j++, p += ATT_BQ, vj += dp) {
        v8f v0 = V8_LOAD(vj), v1 = V8_LOAD(vj + 8);
        VROW(a00, a01, p[0], v0, v1);
        VROW(a10, a11, p[1], v0, v1);
        VROW(a20, a21, p[2], v0, v1);
        VROW(a30, a31, p[3], v0, v1);
        VROW(a40, a41, p[4], v0, v1);
        VROW(a50, a51, p[5], v0, v1);
    }
    V8_STORE(o0, a00);
    V8_STORE(o0 + 8, a01);
    V8_STORE(o1, a10);
    V8_STORE(o1 + 8, a11);
    V8_STORE(o2, a20);
    V8_STORE(o2 + 8, a21);
    V8_STORE(o3, a30);
    V8_STORE(o3 + 8, a31);
    V8_STORE(o4, a40);
    V8_STORE(o4 + 8, a41);
    V8_STORE(o5, a50);
    V8_STORE(o5 + 8, a51);
}

#ifdef HAVE_X86_PATHS
/* The same two kernels with fused multiply-adds. */
#define FROW(a0, a1, sptr, x0, x1)                                                           \
    do {                                                                                     \
        __m256 b_ = _mm256_broadcast_ss(sptr);                                               \
        a0 = _mm256_fmadd_ps(b_, x0, a0);                                                    \
        a1 = _mm256_fmadd_ps(b_, x1, a1);                                                    \
    } while (0)

__attribute__((target("avx2,fma")))
static inline void qk_6x16_fma(const float *qT, const float *kt, int64_t dp, float scale,
                               float *sT, int64_t i0, int64_t j0)
{
    const float *k0 = kt + j0 * dp, *k1 = k0 + dp, *k2 = k1 + dp, *k3 = k2 + dp, *k4 = k3 + dp,
                *k5 = k4 + dp, *qc = qT + i0;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
           a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    for (int64_t c = 0; c < dp; c++, qc += ATT_BQ) {
        __m256 q0 = _mm256_loadu_ps(qc), q1 = _mm256_loadu_ps(qc + 8);
        FROW(a00, a01, k0 + c, q0, q1);
        FROW(a10, a11, k1 + c, q0, q1);
        FROW(a20, a21, k2 + c, q0, q1);
        FROW(a30, a31, k3 + c, q0, q1);
        FROW(a40, a41, k4 + c, q0, q1);
        FROW(a50, a51, k5 + c, q0, q1);
    }
    __m256 sc = _mm256_set1_ps(scale);
    float *s0 = sT + j0 * ATT_BQ + i0;
    _mm256_storeu_ps(s0, _mm256_mul_ps(a00, sc));
    _mm256_storeu_ps(s0 + 8, _mm256_mul_ps(a01, sc));
    _mm256_storeu_ps(s0 + ATT_BQ, _mm256_mul_ps(a10, sc));
    _mm256_storeu_ps(s0 + ATT_BQ + 8, _mm256_mul_ps(a11, sc));
    _mm256_storeu_ps(s0 + 2 * ATT_BQ, _mm256_mul_ps(a20, sc));
    _mm256_storeu_ps(s0 + 2 * ATT_BQ + 8, _mm256_mul_ps(a21, sc));
    _mm256_storeu_ps(s0 + 3 * ATT_BQ, _mm256_mul_ps(a30, sc));
    _mm256_storeu_ps(s0 + 3 * ATT_BQ + 8, _mm256_mul_ps(a31, sc));
    _mm256_storeu_ps(s0 + 4 * ATT_BQ, _mm256_mul_ps(a40, sc));
    _mm256_storeu_ps(s0 + 4 * ATT_BQ + 8, _mm256_mul_ps(a41, sc));
    _mm256_storeu_ps(s0 + 5 * ATT_BQ, _mm256_mul_ps(a50, sc));
    _mm256_storeu_ps(s0 + 5 * ATT_BQ + 8, _mm256_mul_ps(a51, sc));
}

__attribute__((target("avx2,fma")))
static inline void pv_6x16_fma(const float *sT, const float *vt, int nk, int64_t dp,
                               const float *corr, float *o, int64_t i0, int64_t c0)
{
    float *o0 = o + i0 * dp + c0, *o1 = o0 + dp, *o2 = o1 + dp, *o3 = o2 + dp, *o4 = o3 + dp,
          *o5 = o4 + dp;
#define FLOAD(a0, a1, orow, r)                                                               \
    __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(orow), _mm256_set1_ps(corr[i0 + r]));          \
    __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(orow + 8), _mm256_set1_ps(corr[i0 + r]))
    FLOAD(a00, a01, o0, 0);
    FLOAD(a10, a11, o1, 1);
    FLOAD(a20, a21, o2, 2);
    FLOAD(a30, a31, o3, 3);
    FLOAD(a40, a41, o4, 4);
    FLOAD(a50, a51, o5, 5);
#undef FLOAD
    const float *p = sT + i0, *vj = vt + c0;
    for (int j = 0; j < nk; j++, p += ATT_BQ, vj += dp) {
        __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
        FROW(a00, a01, p, v0, v1);
        FROW(a10, a11, p + 1, v0, v1);
        FROW(a20, a21, p + 2, v0, v1);
        FROW(a30, a31, p + 3, v0, v1);
        FROW(a40, a41, p + 4, v0, v1);
        FROW(a50, a51, p + 5, v0, v1);
    }
    _mm256_storeu_ps(o0, a00);
    _mm256_storeu_ps(o0 + 8, a01);
    _mm256_storeu_ps(o1, a10);
    _mm256_storeu_ps(o1 + 8, a11);
    _mm256_storeu_ps(o2, a20);
    _mm256_storeu_ps(o2 + 8, a21);
    _mm256_storeu_ps(o3, a30);
    _mm256_storeu_ps(o3 + 8, a31);
    _mm256_storeu_ps(o4, a40);
    _mm256_storeu_ps(o4 + 8, a41);
    _mm256_storeu_ps(o5, a50);
    _mm256_storeu_ps(o5 + 8, a51);
}
#endif

/* One head and one block of up to ATT_BQ queries, flash-attention style: for each tile of up
 * to ATT_BK unmasked keys, the scores, then per query the running max, p = e^(s - max), the
 * rescale of what was summed so far, and O = O * corr + P V; O / sum at the end. Tiles hold
 * unmasked keys only, so a masked key moves no tile boundary: it is as good as absent.
 * Causal: the block's tiles stop after the last key its last query sees, and a query's score
 * for a later key is -inf, so p = 0 and its sums gain exact zeros: the same bits as if the
 * key were absent, whatever the block holds. */
static ALWAYS_INLINE void attention_block(const float *q, int64_t q_len, const float *k,
                                          const float *v, int64_t kv_len, int64_t heads,
                                          int64_t kv_heads, int64_t d, const float *key_mask,
                                          bool causal, float scale, float *out, int64_t h,
                                          int64_t qb, float *tiles, bool fma)
{
    const int64_t stride = heads * d, kv_stride = kv_heads * d, dp = (d + 15) / 16 * 16;
    const int64_t kh = h / (heads / kv_heads); /* the kv head this query head reads */
    float *qT = tiles;
    float *kt = qT + dp * ATT_BQ;
    float *vt = kt + ATT_BK * dp;
    float *sT = vt + ATT_BK * dp;
    float *o = sT + ATT_BK * ATT_BQ;
    float *mx = o + ATT_BQ * dp;     /* running max; -inf until a key is seen */
    float *sum = mx + ATT_BQ;        /* running denominator */
    float *corr = sum + ATT_BQ;      /* this tile's rescale of o and sum */
    float *m_use = corr + ATT_BQ;    /* the max that p is taken against (0 while none) */
    float *tsum = m_use + ATT_BQ;    /* this tile's sum of p */
    int64_t *key_at = (int64_t *)(void *)(tsum + ATT_BQ); /* [ATT_BK] each tile row's key */
    const int64_t q0 = qb * ATT_BQ;
    const int64_t nq = q_len - q0 < ATT_BQ ? q_len - q0 : ATT_BQ;
    /* causal: query i sees key j when j <= i + shift; the block needs keys below key_end */
    const int64_t shift = kv_len - q_len;
    int64_t key_end = kv_len;
    if (causal && q0 + nq + shift < key_end)
        key_end = q0 + nq + shift > 0 ? q0 + nq + shift : 0;
    /* computed: nq6 rows of o (the PV kernel's 6), nl lanes of sT (the QK kernel's 16); the
     * padding queries are zeros, their results unused */
    const int64_t nq6 = (nq + 5) / 6 * 6, nl = (nq6 + 15) / 16 * 16;
    memset(qT, 0, (size_t)(dp * ATT_BQ) * sizeof(float));
    for (int64_t i = 0; i < nq; i++) {
        const float *qi = q + (q0 + i) * stride + h * d;
        for (int64_t c = 0; c < d; c++)
            qT[c * ATT_BQ + i] = qi[c];
    }
    memset(kt, 0, (size_t)(2 * ATT_BK * dp) * sizeof(float)); /* kt and vt: dims past d */
    memset(o, 0, (size_t)(ATT_BQ * dp) * sizeof(float));
    for (int64_t i = 0; i < ATT_BQ; i++) {
        mx[i] = -INFINITY;
        sum[i] = 0.0f;
    }

    int64_t next = 0; /* the first key not yet in a tile */
    for (;;) {
        int nk = 0;
        for (; next < key_end && nk < ATT_BK; next++) {
            if (key_mask && key_mask[next] == 0.0f)
                continue;
            memcpy(kt + nk * dp, k + next * kv_stride + kh * d, (size_t)d * sizeof(float));
            memcpy(vt + nk * dp, v + next * kv_stride + kh * d, (size_t)d * sizeof(float));
            key_at[nk] = next;
            nk++;
        }
        if (nk == 0)
            break;
        const int nk6 = (nk + 5) / 6 * 6; /* rows past nk: earlier keys, scored, unused */

        for (int64_t i = 0; i < nl; i += 16) /* a 16-query slice of qT stays in L1 */
            for (int j = 0; j < nk6; j += 6) {
#ifdef HAVE_X86_PATHS
                if (fma) {
                    qk_6x16_fma(qT, kt, dp, scale, sT, i, j);
                    continue;
                }
#endif
                qk_6x16(qT, kt, dp, scale, sT, i, j);
            }
        if (causal)
            for (int j = 0; j < nk; j++) {
                /* lanes i < key - q0 - shift are queries before this key */
                int64_t blind = key_at[j] - q0 - shift;
                float *sj = sT + j * ATT_BQ;
                for (int64_t i = 0; i < (blind < nl ? blind : nl); i++)
                    sj[i] = -INFINITY;
            }

        for (int64_t i = 0; i < nl; i++)
            m_use[i] = mx[i];
        for (int j = 0; j < nk; j++) {
            const float *sj = sT + j * ATT_BQ;
#pragma omp simd
            for (int64_t i = 0; i < nl; i++)
                m_use[i] = sj[i] > m_use[i] ? sj[i] : m_use[i];
        }
        for (int64_t i = 0; i < nl; i++) {
            float m_new = m_use[i];
            if (m_new == -INFINITY) /* every score so far is -inf: p = 0, nothing to rescale */
                m_use[i] = 0.0f;
            corr[i] = exp_f32(mx[i] - m_use[i]); /* 0 on the first tile, where o, sum are 0 */
            mx[i] = m_new;
            tsum[i] = 0.0f;
        }
        for (int j = 0; j < nk; j++) {
            float *sj = sT + j * ATT_BQ;
#pragma omp simd
            for (int64_t i = 0; i < nl; i++) {
                float p = exp_f32(sj[i] - m_use[i]);
                sj[i] = p;
                tsum[i] += p;
            }
        }
        for (int64_t i = 0; i < nl; i++)
            sum[i] = sum[i] * corr[i] + tsum[i];

        for (int64_t c = 0; c < dp; c += 16) /* a 16-dim slice of vt stays in L1 */
            for (int64_t i = 0; i < nq6; i += 6) {
#ifdef HAVE_X86_PATHS
                if (fma) {
                    pv_6x16_fma(sT, vt, nk, dp, corr, o, i, c);
                    continue;
                }
#endif
                pv_6x16(sT, vt, nk, dp, corr, o, i, c);
            }
    }

    for (int64_t i = 0; i < nq; i++) {
        float *dst = out + (q0 + i) * stride + h * d;
        const float *oi = o + i * dp;
        float l = sum[i];
        if (l > 0.0f) {
#pragma omp simd
            for (int64_t c = 0; c < d; c++)
                dst[c] = oi[c] / l;
        } else {
            memset(dst, 0, (size_t)d * sizeof(float));
        }
    }
}

/* The block twice: with AVX2 and FMA, and for any CPU. */
#ifdef HAVE_X86_PATHS
__attribute__((target("avx2,fma")))
static void attention_block_fma(const float *q, int64_t q_len, const float *k, const float *v,
                                int64_t kv_len, int64_t heads, int64_t kv_heads, int64_t d,
                                const float *key_mask, bool causal, float scale, float *out,
                                int64_t h, int64_t qb, float *tiles)
{
    attention_block(q, q_len, k, v, kv_len, heads, kv_heads, d, key_mask, causal, scale, out, h,
                    qb, tiles, true);
}
#endif

static void attention_block_any(const float *q, int64_t q_len, const float *k, const float *v,
                                int64_t kv_len, int64_t heads, int64_t kv_heads, int64_t d,
                                const float *key_mask, bool causal, float scale, float *out,
                                int64_t h, int64_t qb, float *tiles)
{
    attention_block(q, q_len, k, v, kv_len, heads, kv_heads, d, key_mask, causal, scale, out, h,
                    qb, tiles, false);
}

static void cpu_attention(nn_ctx_t *ctx, const float *q, int64_t q_len, const float *k,
                          const float *v, int64_t kv_len, int64_t heads, int64_t kv_heads,
                          int64_t head_dim, const float *key_mask, bool causal, float scale,
                          float *out)
{
    const cpu_state_t *st = ctx->impl;
    assert(head_dim > 0 && head_dim <= NN_ATTENTION_MAX_HEAD_DIM);
    assert(q_len >= 0 && kv_len >= 0 && heads >= 0 && kv_heads > 0 && heads % kv_heads == 0);
    if (q_len == 0 || heads == 0)
        return;
    const int64_t nqb = (q_len + ATT_BQ - 1) / ATT_BQ, items = heads * nqb;
    void (*block)(const float *, int64_t, const float *, const float *, int64_t, int64_t,
                  int64_t, int64_t, const float *, bool, float, float *, int64_t, int64_t,
                  float *) = attention_block_any;
#ifdef HAVE_X86_PATHS
    if (st->fma)
        block = attention_block_fma;
#endif
    /* Blocks are independent and each is one thread's from start to end: any schedule gives
     * the same bits. */
#pragma omp parallel for num_threads(st->threads) schedule(static)
    for (int64_t it = 0; it < items; it++)
        block(q, q_len, k, v, kv_len, heads, kv_heads, head_dim, key_mask, causal, scale, out,
              it / nqb, it % nqb, st->tiles + (size_t)thread_id() * st->tile_floats);
}

/* ---- timestep embedding ----------------------------------------------------------------- */

/* diffusers' get_timestep_embedding (flip_sin_to_cos=True, downscale_freq_shift=0), rounded
 * step by step as torch rounds it in f32: exponent = (f32(-ln 10000) * i) / half,
 * freq = exp(exponent), arg = scale * (t * freq). exp, cos and sin are evaluated in double and
 * rounded once, i.e. correctly rounded: what torch's 1-ulp vector versions nearly always give
 * too. The argument reaches 1000 rad, where an ulp of freq is 6e-5 of output, so this order
 * matters. */
static void cpu_timestep_embedding(nn_ctx_t *ctx, const float *t, int64_t n, int64_t dim,
                                   float scale, float *out)
{
    assert(dim % 2 == 0);
    const int64_t half = dim / 2;
    const float neg_log_period = (float)-log(10000.0);
    for (int64_t r = 0; r < n; r++) {
        float *o = out + r * dim;
        for (int64_t i = 0; i < half; i++) {
            float exponent = (neg_log_period * (float)i) / (float)half;
            float freq = (float)exp((double)exponent);
            float arg = scale * (t[r] * freq);
            o[i] = (float)cos((double)arg);
            o[half + i] = (float)sin((double)arg);
        }
    }
}

/* ---- context ---------------------------------------------------------------------------- */

static void cpu_ctx_free(nn_ctx_t *ctx)
{
    cpu_state_t *st = ctx->impl;
    if (st) {
        free(st->tiles);
        free(st);
    }
    ctx->impl = NULL;
}

static const nn_backend_t cpu_backend = {
    .name = "cpu",
    .linear = cpu_linear,
    .layernorm = cpu_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .modulate = cpu_modulate,
    .gated_add = cpu_gated_add,
    .gelu_tanh = cpu_gelu_tanh,
    .silu = cpu_silu,
    .rope = cpu_rope,
    .rope_half = cpu_rope_half,
    .silu_mul = cpu_silu_mul,
    .attention = cpu_attention,
    .timestep_embedding = cpu_timestep_embedding,
    .conv2d_packed_floats = cpu_conv2d_packed_floats,
    .conv2d_pack = cpu_conv2d_pack,
    .conv2d = cpu_conv2d,
    .l2norm = cpu_l2norm,
    .ctx_free = cpu_ctx_free,
};

const nn_backend_t *nn_backend_cpu(void) { return &cpu_backend; }

int nn_ctx_init_cpu(nn_ctx_t *ctx, int threads)
{
    memset(ctx, 0, sizeof *ctx);
    if (threads <= 0)
        threads = cpu_count();
    cpu_state_t *st = calloc(1, sizeof *st);
    if (!st)
        return -1;
    const size_t d = NN_ATTENTION_MAX_HEAD_DIM;
    /* qT, kt, vt, o; sT; mx, sum, corr, m_use, tsum; key_at (int64) */
    size_t tile = 2 * (ATT_BQ + ATT_BK) * d + ATT_BQ * ATT_BK + 5 * ATT_BQ + 2 * ATT_BK;
    tile = (tile + 15) / 16 * 16;
    st->threads = threads;
#ifdef HAVE_X86_PATHS
    __builtin_cpu_init();
    const char *portable = getenv("NN_CPU_PORTABLE");
    bool simd = !(portable && *portable && strcmp(portable, "0") != 0);
    st->avx2 = simd && __builtin_cpu_supports("avx2");
    st->fma = st->avx2 && __builtin_cpu_supports("fma");
#endif
    st->tile_floats = tile;
    st->tiles = aligned_alloc(64, (size_t)threads * tile * sizeof(float));
    if (!st->tiles) {
        free(st);
        return -1;
    }
    ctx->backend = &cpu_backend;
    ctx->threads = threads;
    ctx->impl = st;
    openblas_set_num_threads(1); /* cpu_linear splits the work over OpenMP threads */
    return 0;
}
