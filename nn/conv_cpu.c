/* conv_cpu: the CPU backend's 2D convolution (see conv_cpu.h and nn_conv2d in ops.h).
 *
 * A direct convolution, not im2col + sgemm: the output is cut into blocks of 6 pixels of one
 * row by 16 output channels, and a register-blocked kernel (twelve 8-lane accumulators) sums
 * over the taps and input channels reading the NHWC input in place, through one pointer per
 * pixel and tap. Padding, stride and the nearest-neighbour upsampling live only in how those
 * pointers are chosen (a tap outside the image points at zeros, or is skipped when it is
 * outside for the whole block), so an upsampled input is never materialised. On this machine
 * (2 Zen 3 cores) it runs at 145-180 GFLOP/s on the VAE's shapes, where im2col tiles through
 * OpenBLAS's sgemm reach 80-170 (tools/bench/bench_vae --conv compares the two): sgemm packs
 * the weight matrix again for every tile, and the tiles' copies cost memory traffic that the
 * pointers avoid.
 *
 * Weights are packed once, at load time: panel p holds output channels 16p..16p+15 as
 * [tap][in_c][16] (zeros past out_c), so the kernel reads them as two contiguous vectors per
 * input channel. */
#include "nn/conv_cpu.h"

#include <assert.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_PATHS 1
#endif

enum {
    CONV_PX = 6,   /* output pixels per kernel call */
    CONV_OC = 16,  /* output channels per kernel call: one weight panel */
    CONV_XT = 96,  /* output pixels of a row per work item: the panel is reused across them */
    CONV_MAX_TAPS = NN_CONV2D_MAX_KERNEL * NN_CONV2D_MAX_KERNEL,
};

/* What a tap reads for a pixel that falls in the padding. */
static const float conv_zeros[NN_CONV2D_MAX_IN_C];

/* One tap of one block: where each of the block's pixels reads its in_c inputs. */
typedef struct {
    const float *px[CONV_PX];
    int64_t tap; /* ky * kernel + kx: the panel's slice */
} conv_tap_t;

size_t conv_cpu_packed_floats(int64_t out_c, int64_t in_c, int kernel)
{
    return (size_t)((out_c + CONV_OC - 1) / CONV_OC) * CONV_OC * (size_t)kernel *
           (size_t)kernel * (size_t)in_c;
}

void conv_cpu_pack(const float *w, int64_t out_c, int64_t in_c, int kernel, float *packed)
{
    const int64_t taps = (int64_t)kernel * kernel, panels = (out_c + CONV_OC - 1) / CONV_OC;
    for (int64_t p = 0; p < panels; p++)
        for (int64_t t = 0; t < taps; t++)
            for (int64_t c = 0; c < in_c; c++) {
                float *dst = packed + ((p * taps + t) * in_c + c) * CONV_OC;
                for (int64_t l = 0; l < CONV_OC; l++) {
                    int64_t o = p * CONV_OC + l;
                    /* torch's [out_c, in_c, kernel, kernel]; tap t = ky * kernel + kx */
                    dst[l] = o < out_c ? w[(o * in_c + c) * taps + t] : 0.0f;
                }
            }
}

/* ---- kernels: acc[6][16] = sum over the block's taps and c of px[i][c] * panel[tap][c][:] */

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
#define V8_LOAD(p) (*(const v8f_unaligned *)(const void *)(p))
#define V8_STORE(p, v) (*(v8f_unaligned *)(void *)(p) = (v))
#define V8_SPLAT(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})

/* The product and the sum rounded apart (no FMA): what any CPU computes the same. */
static void conv_kernel_any(const conv_tap_t *taps, int n, int64_t in_c, const float *panel,
                            float *acc)
{
    v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
    v8f a30 = {0}, a31 = {0}, a40 = {0}, a41 = {0}, a50 = {0}, a51 = {0};
#define VROW(a0, a1, s)                                                                      \
    do {                                                                                     \
        v8f b_ = V8_SPLAT(s);                                                                \
        a0 += b_ * w0;                                                                       \
        a1 += b_ * w1;                                                                       \
    } while (0)
    for (int t = 0; t < n; t++) {
        const float *p0 = taps[t].px[0], *p1 = taps[t].px[1], *p2 = taps[t].px[2],
                    *p3 = taps[t].px[3], *p4 = taps[t].px[4], *p5 = taps[t].px[5];
        const float *w = panel + taps[t].tap * in_c * CONV_OC;
        for (int64_t c = 0; c < in_c; c++, w += CONV_OC) {
            v8f w0 = V8_LOAD(w), w1 = V8_LOAD(w + 8);
            VROW(a00, a01, p0[c]);
            VROW(a10, a11, p1[c]);
            VROW(a20, a21, p2[c]);
            VROW(a30, a31, p3[c]);
            VROW(a40, a41, p4[c]);
            VROW(a50, a51, p5[c]);
        }
    }
#undef VROW
    V8_STORE(acc, a00);
    V8_STORE(acc + 8, a01);
    V8_STORE(acc + 16, a10);
    V8_STORE(acc + 24, a11);
    V8_STORE(acc + 32, a20);
    V8_STORE(acc + 40, a21);
    V8_STORE(acc + 48, a30);
    V8_STORE(acc + 56, a31);
    V8_STORE(acc + 64, a40);
    V8_STORE(acc + 72, a41);
    V8_STORE(acc + 80, a50);
    V8_STORE(acc + 88, a51);
}

#ifdef HAVE_X86_PATHS
/* Fused multiply-adds: two weight loads and six broadcasts per twelve FMAs, which keeps both
 * of Zen's and Haswell's FMA pipes busy from L1/L2. */
__attribute__((target("avx2,fma")))
static void conv_kernel_fma(const conv_tap_t *taps, int n, int64_t in_c, const float *panel,
                            float *acc)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
           a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
#define FROW(a0, a1, ptr)                                                                    \
    do {                                                                                     \
        __m256 b_ = _mm256_broadcast_ss(ptr);                                                \
        a0 = _mm256_fmadd_ps(b_, w0, a0);                                                    \
        a1 = _mm256_fmadd_ps(b_, w1, a1);                                                    \
    } while (0)
    for (int t = 0; t < n; t++) {
        const float *p0 = taps[t].px[0], *p1 = taps[t].px[1], *p2 = taps[t].px[2],
                    *p3 = taps[t].px[3], *p4 = taps[t].px[4], *p5 = taps[t].px[5];
        const float *w = panel + taps[t].tap * in_c * CONV_OC;
        for (int64_t c = 0; c < in_c; c++, w += CONV_OC) {
            __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
            FROW(a00, a01, p0 + c);
            FROW(a10, a11, p1 + c);
            FROW(a20, a21, p2 + c);
            FROW(a30, a31, p3 + c);
            FROW(a40, a41, p4 + c);
            FROW(a50, a51, p5 + c);
        }
    }
#undef FROW
    _mm256_storeu_ps(acc, a00);
    _mm256_storeu_ps(acc + 8, a01);
    _mm256_storeu_ps(acc + 16, a10);
    _mm256_storeu_ps(acc + 24, a11);
    _mm256_storeu_ps(acc + 32, a20);
    _mm256_storeu_ps(acc + 40, a21);
    _mm256_storeu_ps(acc + 48, a30);
    _mm256_storeu_ps(acc + 56, a31);
    _mm256_storeu_ps(acc + 64, a40);
    _mm256_storeu_ps(acc + 72, a41);
    _mm256_storeu_ps(acc + 80, a50);
    _mm256_storeu_ps(acc + 88, a51);
}
#endif

typedef void (*conv_kernel_fn)(const conv_tap_t *, int, int64_t, const float *, float *);

/* ---- driver ---------------------------------------------------------------------------- */

/* The taps of the block of pixels ox0..ox0+5 in output row oy that touch the image, in tap
 * order. Returns their number. */
static int conv_block_taps(const nn_conv2d_t *p, const float *x, int64_t out_w, int64_t oy,
                           int64_t ox0, conv_tap_t *taps)
{
    const int64_t up_h = p->in_h * p->upsample, up_w = p->in_w * p->upsample;
    int n = 0;
    for (int ky = 0; ky < p->kernel; ky++) {
        int64_t uy = oy * p->stride + ky - p->pad_top; /* row in the padded, enlarged input */
        if (uy < 0 || uy >= up_h)
            continue; /* the whole block reads padding: its products are all zero */
        const float *row = x + (uy / p->upsample) * p->in_w * p->in_c;
        for (int kx = 0; kx < p->kernel; kx++) {
            conv_tap_t *t = &taps[n];
            bool any = false;
            for (int i = 0; i < CONV_PX; i++) {
                int64_t ox = ox0 + i, ux = ox * p->stride + kx - p->pad_left;
                if (ox < out_w && ux >= 0 && ux < up_w) {
                    t->px[i] = row + (ux / p->upsample) * p->in_c;
                    any = true;
                } else {
                    t->px[i] = conv_zeros;
                }
            }
            if (any) {
                t->tap = (int64_t)ky * p->kernel + kx;
                n++;
            }
        }
    }
    return n;
}

/* Output row oy, pixels x0..x0+npx-1, every output channel. */
static void conv_item(const nn_conv2d_t *p, const float *x, const float *packed,
                      const float *bias, const float *residual, float *y, int64_t out_w,
                      int64_t oy, int64_t x0, int64_t npx, conv_kernel_fn kernel)
{
    const int64_t oc = p->out_c, panels = (oc + CONV_OC - 1) / CONV_OC;
    const int64_t panel_floats = (int64_t)p->kernel * p->kernel * p->in_c * CONV_OC;
    conv_tap_t taps[CONV_MAX_TAPS];
    float acc[CONV_PX * CONV_OC];
    for (int64_t pn = 0; pn < panels; pn++) {
        const float *panel = packed + pn * panel_floats;
        const int64_t c0 = pn * CONV_OC, nc = oc - c0 < CONV_OC ? oc - c0 : CONV_OC;
        const float *b = bias ? bias + c0 : NULL;
        for (int64_t bx = 0; bx < npx; bx += CONV_PX) {
            int n = conv_block_taps(p, x, out_w, oy, x0 + bx, taps);
            kernel(taps, n, p->in_c, panel, acc);
            const int64_t np = npx - bx < CONV_PX ? npx - bx : CONV_PX;
            for (int64_t i = 0; i < np; i++) {
                const int64_t at = (oy * out_w + x0 + bx + i) * oc + c0;
                const float *a = acc + i * CONV_OC;
                float *yo = y + at;
                /* (conv + bias) + residual, as torch rounds `conv(x) + h`; residual may be y:
                 * each element is read before it is written */
                if (b && residual) {
                    const float *r = residual + at;
                    for (int64_t j = 0; j < nc; j++) {
                        float v = a[j] + b[j];
                        yo[j] = v + r[j];
                    }
                } else if (b) {
                    for (int64_t j = 0; j < nc; j++)
                        yo[j] = a[j] + b[j];
                } else if (residual) {
                    const float *r = residual + at;
                    for (int64_t j = 0; j < nc; j++)
                        yo[j] = a[j] + r[j];
                } else {
                    memcpy(yo, a, (size_t)nc * sizeof(float));
                }
            }
        }
    }
}

void conv_cpu_run(int threads, bool fma, const nn_conv2d_t *p, const float *x,
                  const float *packed, const float *bias, const float *residual, float *y)
{
    assert(p->in_c > 0 && p->in_c <= NN_CONV2D_MAX_IN_C && p->out_c > 0);
    assert(p->kernel >= 1 && p->kernel <= NN_CONV2D_MAX_KERNEL && p->stride >= 1);
    assert(p->upsample >= 1 && p->pad_top >= 0 && p->pad_bottom >= 0 && p->pad_left >= 0 &&
           p->pad_right >= 0);
    const int64_t out_h = nn_conv2d_out_h(p), out_w = nn_conv2d_out_w(p);
    if (out_h <= 0 || out_w <= 0)
        return;
    conv_kernel_fn kernel = conv_kernel_any;
#ifdef HAVE_X86_PATHS
    if (fma)
        kernel = conv_kernel_fma;
#else
    (void)fma;
#endif
    const int64_t xtiles = (out_w + CONV_XT - 1) / CONV_XT, items = out_h * xtiles;
    /* Items are independent and each is one thread's from start to end: any split of them
     * gives the same bits. Tiny convolutions stay on the calling thread. */
    const bool split = threads > 1 && items > 1 &&
                       (double)items * CONV_XT * (double)p->out_c * (double)p->in_c *
                               p->kernel * p->kernel > 2e6;
    (void)split; /* read by OpenMP only */
#pragma omp parallel for num_threads(threads) if (split) schedule(static)
    for (int64_t it = 0; it < items; it++) {
        const int64_t oy = it / xtiles, x0 = (it % xtiles) * CONV_XT;
        const int64_t npx = out_w - x0 < CONV_XT ? out_w - x0 : CONV_XT;
        conv_item(p, x, packed, bias, residual, y, out_w, oy, x0, npx, kernel);
    }
}
