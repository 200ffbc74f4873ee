/* tensor: element types and their conversions, tensor allocation, and the activation arena.
 *
 * The conversions give the bits torch gives (c10/util/BFloat16.h round_to_nearest_even,
 * c10/util/Half.h fp16_ieee_{from,to}_fp32_value, c10/util/Float8_e4m3fn.h
 * fp8e4m3fn_to_fp32_value), so that weights and activations match the reference bit for bit.
 * They work on the bits with integer arithmetic: no dependence on the FPU's rounding mode or
 * flush-to-zero setting. */
#include "nn/tensor.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nn/tensor.c reads tensor data as little-endian, the byte order of every checkpoint"
#endif

#define NN_ALIGN 64

static const struct {
    size_t size;
    const char *name;
} dtype_info[NN_DTYPE_COUNT] = {
    [NN_DTYPE_F32] = {4, "f32"},   [NN_DTYPE_BF16] = {2, "bf16"}, [NN_DTYPE_F16] = {2, "f16"},
    [NN_DTYPE_F8E4M3] = {1, "f8e4m3"}, [NN_DTYPE_U8] = {1, "u8"}, [NN_DTYPE_I32] = {4, "i32"},
    [NN_DTYPE_I64] = {8, "i64"},
};

size_t nn_dtype_size(nn_dtype_t dtype)
{
    if ((unsigned)dtype >= NN_DTYPE_COUNT)
        return 0;
    return dtype_info[dtype].size;
}

const char *nn_dtype_name(nn_dtype_t dtype)
{
    if ((unsigned)dtype >= NN_DTYPE_COUNT)
        return "unknown";
    return dtype_info[dtype].name;
}

/* A negative dimension or an ndim outside [0, NN_MAX_DIMS] is as unusable as an overflowing
 * product, so it gives -1 too: callers need one check. */
int64_t nn_numel(int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > NN_MAX_DIMS)
        return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

int64_t nn_tensor_numel(const nn_tensor_t *t)
{
    return nn_numel(t->ndim, t->shape);
}

/* 0 when the shape is invalid or the size does not fit a size_t. */
size_t nn_tensor_bytes(const nn_tensor_t *t)
{
    int64_t n = nn_tensor_numel(t);
    size_t size = nn_dtype_size(t->dtype);
    if (n < 0 || size == 0 || (uint64_t)n > SIZE_MAX / size)
        return 0;
    return (size_t)n * size;
}

int nn_tensor_alloc(nn_tensor_t *t, nn_dtype_t dtype, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    t->device = NN_DEVICE_CPU;
    size_t size = nn_dtype_size(dtype);
    int64_t n = nn_numel(ndim, shape);
    if (size == 0 || n < 0 || (uint64_t)n > (SIZE_MAX - NN_ALIGN) / size)
        return -1;
    size_t bytes = (size_t)n * size;
    /* aligned_alloc wants a multiple of the alignment, and a non-zero size so that an empty
     * tensor still has a pointer of its own. */
    size_t rounded = bytes == 0 ? NN_ALIGN : (bytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    void *data = aligned_alloc(NN_ALIGN, rounded);
    if (data == NULL)
        return -1;
    memset(data, 0, rounded);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->owned = true;
    return 0;
}

void nn_tensor_free(nn_tensor_t *t)
{
    if (t == NULL)
        return;
    if (t->owned)
        free(t->data);
    t->data = NULL;
    t->owned = false;
}

const char *nn_shape_str(char *buf, size_t len, nn_dtype_t dtype, int ndim, const int64_t *shape)
{
    if (len == 0)
        return buf;
    size_t at = 0;
    int w = snprintf(buf, len, "%s[", nn_dtype_name(dtype));
    at = w < 0 ? 0 : (size_t)w;
    for (int i = 0; i < ndim && i < NN_MAX_DIMS && at < len; i++) {
        w = snprintf(buf + at, len - at, i == 0 ? "%lld" : ",%lld", (long long)shape[i]);
        at += w < 0 ? 0 : (size_t)w;
    }
    if (at < len)
        snprintf(buf + at, len - at, "]");
    return buf;
}


float nn_bf16_to_f32(uint16_t h)
{
    return nn_f32_from_bits((uint32_t)h << 16);
}

uint16_t nn_f32_to_bf16(float f)
{
    uint32_t w = nn_f32_bits(f);
    if ((w & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0; /* torch: every NaN becomes the positive quiet NaN */
    /* Adding 0x7fff, plus one when the kept lowest bit is odd, carries into the kept half
     * exactly when the dropped half is above a tie, or a tie with an odd kept half. Overflow
     * carries into the exponent and gives infinity, as it should. */
    return (uint16_t)((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}

float nn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) /* torch converts through an FP multiply, which quiets a signalling NaN */
        return nn_f32_from_bits(sign | 0x7f800000u | (mant != 0 ? 0x00400000u : 0) | (mant << 13));
    if (exp != 0)
        return nn_f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0)
        return nn_f32_from_bits(sign);
    /* Subnormal: mant x 2^-24. Normalise so that the leading one becomes the hidden bit. */
    int shift = __builtin_clz(mant) - 21; /* places to move the leading one up to bit 10 */
    mant = (mant << shift) & 0x3ffu;
    return nn_f32_from_bits(sign | ((uint32_t)(113 - shift) << 23) | (mant << 13));
}

uint16_t nn_f32_to_f16(float f)
{
    uint32_t w = nn_f32_bits(f);
    uint16_t sign = (uint16_t)((w >> 16) & 0x8000u);
    uint32_t a = w & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00; /* torch keeps the sign of a NaN, not its payload */
    if (a >= 0x477ff000u)
        return sign | 0x7c00; /* 65520 and above round to infinity (65504 is odd) */
    if (a >= 0x38800000u) {
        /* Normal in f16 (>= 2^-14): rebias the exponent, round the 13 dropped bits to even;
         * a carry out of the mantissa correctly bumps the exponent. */
        a -= 112u << 23;
        return sign | (uint16_t)((a + 0xfffu + ((a >> 13) & 1u)) >> 13);
    }
    uint32_t exp = a >> 23;
    if (exp < 102)
        return sign; /* below 2^-25, half the smallest subnormal: rounds to zero */
    /* Subnormal in f16: the value in units of 2^-24 is m x 2^(exp - 126), a right shift by
     * 126 - exp (14..24 places) of the mantissa with its hidden bit, rounded to even. A round
     * up to 0x400 is the smallest normal, which is the right encoding. */
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u)))
        r++;
    return sign | (uint16_t)r;
}

float nn_f8e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t exp = (b >> 3) & 0xfu;
    uint32_t mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7)
        return nn_f32_from_bits(sign | 0x7ff00000u); /* the bits torch's decoder produces */
    if (exp != 0)
        return nn_f32_from_bits(sign | ((exp + 120) << 23) | (mant << 20));
    if (mant == 0)
        return nn_f32_from_bits(sign);
    /* Subnormal: mant x 2^-9. */
    int shift = __builtin_clz(mant) - 28; /* places to move the leading one up to bit 3 */
    mant = (mant << shift) & 0x7u;
    return nn_f32_from_bits(sign | ((uint32_t)(121 - shift) << 23) | (mant << 20));
}

/* The loaders' hot loop: a checkpoint's bf16 weights pass through here once, so it must run
 * at memory speed. The source may be unaligned (safetensors offsets are byte offsets), hence
 * memcpy; blocks of a fixed count let GCC's -O2 cost model vectorise the body (it does not
 * vectorise a loop whose count it cannot prove a multiple of the vector width). */
#define CONVERT_BLOCK 32

static void convert_bf16(const uint8_t *restrict src, float *restrict dst, size_t n)
{
    size_t i = 0;
    for (; i + CONVERT_BLOCK <= n; i += CONVERT_BLOCK) {
        const uint8_t *s = src + 2 * i;
        float *d = dst + i;
        for (int j = 0; j < CONVERT_BLOCK; j++) {
            uint16_t h;
            memcpy(&h, s + 2 * j, sizeof h);
            uint32_t w = (uint32_t)h << 16; /* bf16 is the high half of an f32 */
            memcpy(d + j, &w, sizeof w);
        }
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = nn_bf16_to_f32(h);
    }
}

static void convert_f16(const uint8_t *restrict src, float *restrict dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = nn_f16_to_f32(h);
    }
}

static void convert_f8e4m3(const uint8_t *restrict src, float *restrict dst, size_t n)
{
    float table[256];
    for (int b = 0; b < 256; b++)
        table[b] = nn_f8e4m3_to_f32((uint8_t)b);
    for (size_t i = 0; i < n; i++)
        dst[i] = table[src[i]];
}

int nn_convert_to_f32(nn_dtype_t dtype, const void *src, float *dst, size_t n)
{
    switch (dtype) {
    case NN_DTYPE_F32:
        if (n > 0)
            memmove(dst, src, n * sizeof(float));
        return 0;
    case NN_DTYPE_BF16:
        convert_bf16(src, dst, n);
        return 0;
    case NN_DTYPE_F16:
        convert_f16(src, dst, n);
        return 0;
    case NN_DTYPE_F8E4M3:
        convert_f8e4m3(src, dst, n);
        return 0;
    default:
        return -1;
    }
}

int nn_arena_init(nn_arena_t *a, size_t cap)
{
    memset(a, 0, sizeof *a);
    if (cap > SIZE_MAX - NN_ALIGN)
        return -1;
    cap = cap == 0 ? NN_ALIGN : (cap + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    a->base = aligned_alloc(NN_ALIGN, cap);
    if (a->base == NULL)
        return -1;
    a->cap = cap;
    return 0;
}

void nn_arena_free(nn_arena_t *a)
{
    if (a == NULL)
        return;
    free(a->base);
    memset(a, 0, sizeof *a);
}

void *nn_arena_alloc(nn_arena_t *a, size_t bytes)
{
    if (a->base == NULL || bytes > a->cap - a->used)
        return NULL;
    /* used and cap are multiples of NN_ALIGN, so rounding up cannot pass cap. */
    size_t rounded = (bytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    void *p = a->base + a->used;
    a->used += rounded;
    if (a->used > a->peak)
        a->peak = a->used;
    return p;
}

float *nn_arena_f32(nn_arena_t *a, size_t n)
{
    if (n > SIZE_MAX / sizeof(float))
        return NULL;
    return nn_arena_alloc(a, n * sizeof(float));
}

size_t nn_arena_mark(const nn_arena_t *a)
{
    return a->used;
}

void nn_arena_release(nn_arena_t *a, size_t mark)
{
    assert(mark <= a->used && "nn_arena_release: a mark from later than now");
    a->used = mark;
}
