/* ops: the operations the models are made of, behind one small backend table.
 *
 * Every op works on f32 arrays that live on the context's device (host memory for the CPU
 * backend), row-major with the last dimension contiguous. The CPU backend (ops_cpu.c: OpenBLAS
 * for GEMM, OpenMP threads for the rest) is the reference that every other backend is tested
 * against. A backend may leave an entry NULL; nn_supports() says which it has.
 *
 * Determinism: for a given backend and thread count every op gives the same bits on every
 * run, and a row's result never depends on which other rows are in the same call except
 * where noted (nn_linear: see there). */
#ifndef DIFFUSIOND_NN_OPS_H
#define DIFFUSIOND_NN_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    NN_OP_LINEAR,
    NN_OP_LAYERNORM,
    NN_OP_RMSNORM,
    NN_OP_MODULATE,
    NN_OP_GATED_ADD,
    NN_OP_GELU_TANH,
    NN_OP_SILU,
    NN_OP_ROPE,
    NN_OP_ROPE_HALF,
    NN_OP_SILU_MUL,
    NN_OP_ATTENTION,
    NN_OP_TIMESTEP_EMBEDDING,
    NN_OP_CONV2D,
    NN_OP_L2NORM,
    NN_OP_COUNT
} nn_op_t;

typedef struct nn_ctx nn_ctx_t;

/* A 2D convolution's geometry (nn_conv2d). The input may first be enlarged by nearest-neighbour
 * upsampling (each pixel becomes upsample x upsample), then zero-padded on each side, then
 * convolved with a square kernel at the stride. */
typedef struct {
    int64_t in_h, in_w;        /* input size, before upsampling */
    int64_t in_c, out_c;       /* channels: in_c <= NN_CONV2D_MAX_IN_C */
    int kernel;                /* 1..NN_CONV2D_MAX_KERNEL */
    int stride;                /* >= 1 */
    int upsample;              /* 1, or 2 (diffusers' Upsample "nearest-exact" x2) */
    int pad_top, pad_bottom, pad_left, pad_right;
} nn_conv2d_t;

#define NN_CONV2D_MAX_IN_C 8192
#define NN_CONV2D_MAX_KERNEL 7

/* Output size of a convolution: floor((in * upsample + pads - kernel) / stride) + 1, or 0 when
 * the padded input is smaller than the kernel. */
static inline int64_t nn_conv2d_out_h(const nn_conv2d_t *p)
{
    int64_t span = p->in_h * p->upsample + p->pad_top + p->pad_bottom - p->kernel;
    return span < 0 ? 0 : span / p->stride + 1;
}

static inline int64_t nn_conv2d_out_w(const nn_conv2d_t *p)
{
    int64_t span = p->in_w * p->upsample + p->pad_left + p->pad_right - p->kernel;
    return span < 0 ? 0 : span / p->stride + 1;
}

/* The table a backend fills. Arguments as in the nn_* wrappers below. */
typedef struct {
    const char *name;
    void (*linear)(nn_ctx_t *ctx, const float *x, int64_t m, int64_t k, const float *w,
                   const float *b, float *y, int64_t n);
    void (*layernorm)(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim, float eps,
                      float *y);
    void (*rmsnorm)(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                    const float *weight, float eps, float *y);
    void (*modulate)(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                     const float *shift, const float *scale, float *y);
    void (*gated_add)(nn_ctx_t *ctx, float *x, int64_t rows, int64_t dim, const float *gate,
                      const float *y);
    void (*gelu_tanh)(nn_ctx_t *ctx, float *x, int64_t n);
    void (*silu)(nn_ctx_t *ctx, float *x, int64_t n);
    void (*rope)(nn_ctx_t *ctx, float *x, int64_t tokens, int64_t heads, int64_t head_dim,
                 const float *cos, const float *sin);
    void (*rope_half)(nn_ctx_t *ctx, float *x, int64_t tokens, int64_t heads,
                      int64_t head_dim, const float *cos, const float *sin);
    void (*silu_mul)(nn_ctx_t *ctx, float *x, const float *y, int64_t n);
    void (*attention)(nn_ctx_t *ctx, const float *q, int64_t q_len, const float *k,
                      const float *v, int64_t kv_len, int64_t heads, int64_t kv_heads,
                      int64_t head_dim, const float *key_mask, bool causal, float scale,
                      float *out);
    void (*timestep_embedding)(nn_ctx_t *ctx, const float *t, int64_t n, int64_t dim,
                               float scale, float *out);
    size_t (*conv2d_packed_floats)(int64_t out_c, int64_t in_c, int kernel);
    void (*conv2d_pack)(nn_ctx_t *ctx, const float *w, int64_t out_c, int64_t in_c, int kernel,
                        float *packed);
    void (*conv2d)(nn_ctx_t *ctx, const nn_conv2d_t *p, const float *x, const float *packed,
                   const float *bias, const float *residual, float *y);
    void (*l2norm)(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t dim,
                   const float *gamma, float scale, float eps, bool silu, float *y);
    void (*ctx_free)(nn_ctx_t *ctx);  /* releases ctx->impl; NULL: the backend keeps none */
} nn_backend_t;

/* The largest head_dim nn_attention takes: the CPU backend reserves its per-thread tiles for
 * it when the context is made, so that no op allocates. */
#define NN_ATTENTION_MAX_HEAD_DIM 512

struct nn_ctx {
    const nn_backend_t *backend;
    int threads;      /* compute threads (OpenMP); OpenBLAS runs single-threaded in each */
    void *impl;       /* the backend's own state */
    /* Optional, set by the caller around a model call: the models poll it between their
     * blocks (the text encoder's layers, the transformer's, the VAE's), and true ends the
     * call early with -1 and the error "stopped". A server sets it to drop a job whose
     * client has gone. */
    bool (*stop)(void *user);
    void *stop_user;
};

/* True when the caller asked the model call in progress to stop (nn_ctx_t.stop). */
static inline bool nn_stopped(const nn_ctx_t *c) { return c->stop && c->stop(c->stop_user); }

/* A CPU context with `threads` threads (0: every core the process may run on). Returns 0, or
 * -1 when its scratch memory cannot be had. A context serves one caller thread at a time.
 * It sets OpenBLAS to one thread, process-wide: GEMMs are split over the OpenMP threads. With
 * NN_CPU_PORTABLE=1 in the environment the context uses its portable loops where it would use
 * AVX2/FMA ones: the same bits for the activations, other bits (same accuracy) for attention
 * and conv2d; the tests check both. Run processes that use it with OMP_WAIT_POLICY=PASSIVE in their
 * environment (libgomp reads it at load): otherwise each threaded op leaves its threads
 * spinning for milliseconds, on the cores the next GEMM needs (the supervisor and
 * diffusiond-generate set it). */
int nn_ctx_init_cpu(nn_ctx_t *ctx, int threads);
void nn_ctx_free(nn_ctx_t *ctx);
bool nn_supports(const nn_ctx_t *ctx, nn_op_t op);
const nn_backend_t *nn_backend_cpu(void);

/* y[m,n] = x[m,k] . w[n,k]^T + b[n] (torch.nn.Linear's layout; b may be NULL). The GEMM may
 * block rows differently for different m: callers that need a row's bits to be the same
 * whatever else is in the batch call it per sample with the same m. */
static inline void nn_linear(nn_ctx_t *c, const float *x, int64_t m, int64_t k, const float *w,
                             const float *b, float *y, int64_t n)
{ c->backend->linear(c, x, m, k, w, b, y, n); }

/* LayerNorm over the last dim without affine parameters: (x - mean) / sqrt(var + eps), var
 * biased. y may be x. */
static inline void nn_layernorm(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim,
                                float eps, float *y)
{ c->backend->layernorm(c, x, rows, dim, eps, y); }

/* RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * weight (weight may be NULL). y may
 * be x. */
static inline void nn_rmsnorm(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim,
                              const float *weight, float eps, float *y)
{ c->backend->rmsnorm(c, x, rows, dim, weight, eps, y); }

/* adaLN modulation, one shift/scale vector [dim] for all rows: y = x * (1 + scale) + shift.
 * y may be x. */
static inline void nn_modulate(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim,
                               const float *shift, const float *scale, float *y)
{ c->backend->modulate(c, x, rows, dim, shift, scale, y); }

/* Gated residual: x += gate * y, gate [dim] for all rows (NULL: x += y). */
static inline void nn_gated_add(nn_ctx_t *c, float *x, int64_t rows, int64_t dim,
                                const float *gate, const float *y)
{ c->backend->gated_add(c, x, rows, dim, gate, y); }

/* In place: GELU with the tanh approximation; SiLU (x * sigmoid(x)). */
static inline void nn_gelu_tanh(nn_ctx_t *c, float *x, int64_t n) { c->backend->gelu_tanh(c, x, n); }
static inline void nn_silu(nn_ctx_t *c, float *x, int64_t n) { c->backend->silu(c, x, n); }

/* The gated MLP's activation, in place: x = silu(x) * y, the SiLU rounded before the product
 * (torch's act_fn(gate) * up). */
static inline void nn_silu_mul(nn_ctx_t *c, float *x, const float *y, int64_t n)
{ c->backend->silu_mul(c, x, y, n); }

/* Rotary embedding on interleaved complex pairs, in place: x [tokens, heads, head_dim]; for
 * each token t and pair j < head_dim/2, (x[2j], x[2j+1]) is rotated by the angle whose cosine
 * and sine are cos[t, j] and sin[t, j] (both [tokens, head_dim/2], the same for every head). */
static inline void nn_rope(nn_ctx_t *c, float *x, int64_t tokens, int64_t heads,
                           int64_t head_dim, const float *cos, const float *sin)
{ c->backend->rope(c, x, tokens, heads, head_dim, cos, sin); }

/* Rotary embedding in the rotate-half form (transformers' Qwen2 and Llama families), in
 * place: x [tokens, heads, head_dim]; with h = head_dim/2, element j < h pairs with j + h:
 * x[j]' = x[j] cos[t, j] - x[j+h] sin[t, j], x[j+h]' = x[j+h] cos[t, j] + x[j] sin[t, j],
 * each product rounded before the sum as torch's q*cos + rotate_half(q)*sin. cos and sin are
 * [tokens, head_dim/2] (the reference's tables repeat them over both halves). */
static inline void nn_rope_half(nn_ctx_t *c, float *x, int64_t tokens, int64_t heads,
                                int64_t head_dim, const float *cos, const float *sin)
{ c->backend->rope_half(c, x, tokens, heads, head_dim, cos, sin); }

/* Softmax attention of one sample, not causal: q [q_len, heads, head_dim], k and v
 * [kv_len, heads, head_dim], out [q_len, heads, head_dim]. key_mask [kv_len] (NULL: all keys)
 * holds 1 for keys to attend to and 0 for keys to ignore. Scores are scaled by `scale`. Tiled:
 * never materialises q_len x kv_len. A query whose keys are all masked gets zeros.
 * head_dim <= NN_ATTENTION_MAX_HEAD_DIM. out may be q (not k or v).
 * A query's bits depend on neither q_len nor the other queries, and a masked key changes
 * nothing: the result is the one with that key removed, bit for bit (padding is free). */
static inline void nn_attention(nn_ctx_t *c, const float *q, int64_t q_len, const float *k,
                                const float *v, int64_t kv_len, int64_t heads,
                                int64_t head_dim, const float *key_mask, float scale, float *out)
{
    c->backend->attention(c, q, q_len, k, v, kv_len, heads, heads, head_dim, key_mask, false,
                          scale, out);
}

/* Causal attention with grouped key/value heads (GQA), as a decoder's self-attention: q and
 * out [q_len, heads, head_dim], k and v [kv_len, kv_heads, head_dim], heads a multiple of
 * kv_heads; query head h reads kv head h / (heads / kv_heads). Query i sees key j only when
 * j <= i + (kv_len - q_len) (the queries are the last q_len positions) and key_mask[j] != 0.
 * Otherwise as nn_attention: the same bits for a query whatever q_len, and a masked or
 * future key is as good as absent. */
static inline void nn_causal_attention(nn_ctx_t *c, const float *q, int64_t q_len,
                                       const float *k, const float *v, int64_t kv_len,
                                       int64_t heads, int64_t kv_heads, int64_t head_dim,
                                       const float *key_mask, float scale, float *out)
{
    c->backend->attention(c, q, q_len, k, v, kv_len, heads, kv_heads, head_dim, key_mask, true,
                          scale, out);
}

/* Sinusoidal timestep embedding, cos half first (diffusers' get_timestep_embedding with
 * flip_sin_to_cos=True, downscale_freq_shift=0, max_period 10000): for i < dim/2,
 * freq_i = exp(-ln(10000) * i / (dim/2)), arg = scale * t * freq_i, out = [cos(arg), sin(arg)].
 * t [n], out [n, dim]; dim even. */
static inline void nn_timestep_embedding(nn_ctx_t *c, const float *t, int64_t n, int64_t dim,
                                         float scale, float *out)
{ c->backend->timestep_embedding(c, t, n, dim, scale, out); }

/* 2D convolution on pixel-major (NHWC) images, the layout of every convolutional model here:
 * x [in_h, in_w, in_c], y [out_h, out_w, out_c] (nn_conv2d_out_h/_w), so that a pixel's
 * channels are one row and the per-pixel ops (nn_l2norm, nn_linear as a 1x1 convolution) work
 * on rows. The weights are the backend's own packing of torch's Conv2d weight [out_c, in_c,
 * kernel, kernel], made once at load time by nn_conv2d_pack into nn_conv2d_packed_floats()
 * floats; each backend packs for its kernel (the CPU: 16 output channels at a time).
 *   y = conv(x) + bias (+ residual): bias [out_c] may be NULL; residual [out_h, out_w, out_c]
 *   may be NULL or y itself (a residual block's sum, accumulated in place), added after the
 *   bias as torch adds `conv(x) + h`. y must not overlap x.
 * Each output element is one thread's sum over (ky, kx, c) in that order, so the bits do not
 * depend on the thread count or on the image's size; an out-of-range tap adds nothing (as
 * torch's zero padding adds zeros). The CPU uses FMA where it has it (NN_CPU_PORTABLE: other
 * bits, same accuracy). */
static inline size_t nn_conv2d_packed_floats(const nn_ctx_t *c, int64_t out_c, int64_t in_c,
                                             int kernel)
{ return c->backend->conv2d_packed_floats(out_c, in_c, kernel); }

static inline void nn_conv2d_pack(nn_ctx_t *c, const float *w, int64_t out_c, int64_t in_c,
                                  int kernel, float *packed)
{ c->backend->conv2d_pack(c, w, out_c, in_c, kernel, packed); }

static inline void nn_conv2d(nn_ctx_t *c, const nn_conv2d_t *p, const float *x,
                             const float *packed, const float *bias, const float *residual,
                             float *y)
{ c->backend->conv2d(c, p, x, packed, bias, residual, y); }

/* The channel norm of the Wan/Qwen-Image VAE (diffusers' QwenImageRMS_norm, F.normalize over
 * the channels), per row: y = x / max(||x||_2, eps) * scale * gamma, rounded in that order
 * (scale is sqrt(dim) there), then, when silu is set, y = SiLU(y) as nn_silu computes it.
 * gamma [dim] may be NULL. y may be x. */
static inline void nn_l2norm(nn_ctx_t *c, const float *x, int64_t rows, int64_t dim,
                             const float *gamma, float scale, float eps, bool silu, float *y)
{ c->backend->l2norm(c, x, rows, dim, gamma, scale, eps, silu, y); }

#endif
