/* test_tensor: dtype sizes and names, shapes, allocation, the arena, and the element
 * conversions, each conversion checked against an independent computation: the exact value
 * of each candidate (for rounding) or a formula (for decoding), and torch's own algorithms
 * where the bits of NaNs are at stake. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/tensor.h"

static uint32_t bits_of(float f)
{
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

static float float_of(uint32_t w)
{
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

/* A pseudo-random sequence, the same on every run. */
static uint64_t rng_state = 0x243f6a8885a308d3u;

static uint32_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static void test_dtype_size_name(void **state)
{
    static const struct {
        nn_dtype_t dtype;
        size_t size;
        const char *name;
    } want[] = {
        {NN_DTYPE_F32, 4, "f32"},   {NN_DTYPE_BF16, 2, "bf16"}, {NN_DTYPE_F16, 2, "f16"},
        {NN_DTYPE_F8E4M3, 1, "f8e4m3"}, {NN_DTYPE_U8, 1, "u8"}, {NN_DTYPE_I32, 4, "i32"},
        {NN_DTYPE_I64, 8, "i64"},
    };
    assert_int_equal(sizeof want / sizeof want[0], NN_DTYPE_COUNT);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_int_equal(nn_dtype_size(want[i].dtype), want[i].size);
        assert_string_equal(nn_dtype_name(want[i].dtype), want[i].name);
    }
    assert_int_equal(nn_dtype_size(NN_DTYPE_COUNT), 0);
    assert_int_equal(nn_dtype_size((nn_dtype_t)-1), 0);
    assert_non_null(nn_dtype_name(NN_DTYPE_COUNT));
}

static void test_numel(void **state)
{
    int64_t s[NN_MAX_DIMS + 1] = {2, 3, 4, 5, 6, 7};
    assert_int_equal(nn_numel(0, NULL), 1);
    assert_int_equal(nn_numel(3, s), 24);
    assert_int_equal(nn_numel(5, s), 720);
    assert_int_equal(nn_numel(6, s), -1); /* more than NN_MAX_DIMS */
    assert_int_equal(nn_numel(-1, s), -1);

    int64_t zero[3] = {4, 0, 9};
    assert_int_equal(nn_numel(3, zero), 0);
    int64_t neg[2] = {4, -1};
    assert_int_equal(nn_numel(2, neg), -1);

    int64_t big[2] = {INT64_MAX, 1};
    assert_true(nn_numel(2, big) == INT64_MAX);
    int64_t over[2] = {INT64_MAX, 2};
    assert_int_equal(nn_numel(2, over), -1);
    int64_t over2[3] = {1LL << 32, 1LL << 31, 2};
    assert_int_equal(nn_numel(3, over2), -1);
    int64_t edge[2] = {1LL << 31, 1LL << 31};
    assert_true(nn_numel(2, edge) == (int64_t)1 << 62);
    int64_t zero_after[3] = {1LL << 40, 1LL << 40, 0}; /* overflows before the 0 */
    assert_int_equal(nn_numel(3, zero_after), -1);

    nn_tensor_t t = {.dtype = NN_DTYPE_BF16, .ndim = 3, .shape = {2, 3, 4}};
    assert_int_equal(nn_tensor_numel(&t), 24);
    assert_int_equal(nn_tensor_bytes(&t), 48);
    t.shape[1] = -3;
    assert_int_equal(nn_tensor_bytes(&t), 0);
    t = (nn_tensor_t){.dtype = NN_DTYPE_I64, .ndim = 2, .shape = {INT64_MAX / 4, 2}};
    assert_int_equal(nn_tensor_bytes(&t), 0); /* 16 x (INT64_MAX / 4) bytes: no size_t */
}

static void test_tensor_alloc(void **state)
{
    nn_tensor_t t;
    int64_t shape[3] = {3, 5, 7};
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F16, 3, shape), 0);
    assert_non_null(t.data);
    assert_true(t.owned);
    assert_int_equal(t.device, NN_DEVICE_CPU);
    assert_int_equal(t.dtype, NN_DTYPE_F16);
    assert_int_equal(t.ndim, 3);
    assert_int_equal(t.shape[2], 7);
    assert_int_equal((uintptr_t)t.data % 64, 0);
    assert_int_equal(nn_tensor_bytes(&t), 3 * 5 * 7 * 2);
    const uint8_t *p = t.data;
    for (size_t i = 0; i < nn_tensor_bytes(&t); i++)
        assert_int_equal(p[i], 0);
    nn_tensor_free(&t);
    assert_null(t.data);
    assert_false(t.owned);
    nn_tensor_free(&t); /* twice is harmless */

    int64_t empty[2] = {0, 16};
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F32, 2, empty), 0);
    assert_non_null(t.data);
    assert_int_equal(nn_tensor_bytes(&t), 0);
    nn_tensor_free(&t);

    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F32, 0, NULL), 0); /* a scalar */
    assert_int_equal(nn_tensor_bytes(&t), 4);
    nn_tensor_free(&t);

    int64_t neg[1] = {-2};
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F32, 1, neg), -1);
    assert_null(t.data);
    int64_t huge[2] = {INT64_MAX / 2, 3};
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F32, 2, huge), -1);
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_COUNT, 1, shape), -1);
    assert_int_equal(nn_tensor_alloc(&t, NN_DTYPE_F32, NN_MAX_DIMS + 1, shape), -1);
}

static void test_shape_str(void **state)
{
    char buf[64];
    int64_t s[3] = {2, 16, 64};
    assert_string_equal(nn_shape_str(buf, sizeof buf, NN_DTYPE_F32, 3, s), "f32[2,16,64]");
    assert_string_equal(nn_shape_str(buf, sizeof buf, NN_DTYPE_BF16, 0, s), "bf16[]");
    int64_t one[1] = {-5};
    assert_string_equal(nn_shape_str(buf, sizeof buf, NN_DTYPE_I64, 1, one), "i64[-5]");
    /* A short buffer truncates, terminated. */
    char small[7];
    memset(small, 'x', sizeof small);
    nn_shape_str(small, sizeof small, NN_DTYPE_F32, 3, s);
    assert_string_equal(small, "f32[2,");
    assert_ptr_equal(nn_shape_str(small, 0, NN_DTYPE_F32, 3, s), small);
}

/* The exact value of a binary float with `mbits` mantissa bits and exponent `bias`, decoded
 * from its fields with the exponent unbounded, so that the all-ones exponent with a zero
 * mantissa reads as the next power of two: IEEE rounds to infinity from exactly there. */
static double value_of(int sign, uint32_t exp, uint32_t mant, int mbits, int bias)
{
    double v = exp == 0 ? ldexp((double)mant, 1 - bias - mbits)
                        : ldexp((double)((1u << mbits) + mant), (int)exp - bias - mbits);
    return sign ? -v : v;
}

/* Rounds x to the nearest bf16 by comparing the exact distances to the two candidates. */
static uint16_t ref_f32_to_bf16(float x)
{
    uint32_t w = bits_of(x);
    uint16_t lo = (uint16_t)(w >> 16);
    if ((w & 0xffff) == 0)
        return lo;
    uint16_t hi = (uint16_t)(lo + 1); /* next bf16 away from zero (carries into the exponent) */
    double dl = fabs((double)x - value_of(lo >> 15, (lo >> 7) & 0xff, lo & 0x7f, 7, 127));
    double dh = fabs(value_of(hi >> 15, (hi >> 7) & 0xff, hi & 0x7f, 7, 127) - (double)x);
    if (dl < dh)
        return lo;
    if (dh < dl)
        return hi;
    return (lo & 1) ? hi : lo;
}

static void check_bf16(uint32_t w)
{
    float x = float_of(w);
    if (isnan(x))
        return;
    uint16_t got = nn_f32_to_bf16(x), want = ref_f32_to_bf16(x);
    if (got != want)
        fail_msg("f32 0x%08x (%g): bf16 0x%04x, expected 0x%04x", w, (double)x, got, want);
}

static void test_bf16_from_f32(void **state)
{
    /* A sweep of the whole f32 range, then the neighbourhoods of ties. */
    for (uint64_t w = 0; w <= UINT32_MAX; w += 4093)
        check_bf16((uint32_t)w);
    static const uint16_t low[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff};
    for (int i = 0; i < 20000; i++) {
        uint32_t hi = rng_next() & 0xffff;
        for (size_t k = 0; k < sizeof low / sizeof low[0]; k++)
            check_bf16(hi << 16 | low[k]);
    }
    assert_int_equal(nn_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(nn_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(nn_f32_to_bf16(float_of(0x3f808000)), 0x3f80); /* tie, even stays */
    assert_int_equal(nn_f32_to_bf16(float_of(0x3f818000)), 0x3f82); /* tie, odd goes up */
    assert_int_equal(nn_f32_to_bf16(float_of(0x3f808001)), 0x3f81);
    assert_int_equal(nn_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(nn_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(nn_f32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(nn_f32_to_bf16(float_of(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds up */
    assert_int_equal(nn_f32_to_bf16(float_of(0x00000001)), 0x0000);  /* tiny subnormal */
    assert_int_equal(nn_f32_to_bf16(float_of(0x00018000)), 0x0002);  /* subnormal tie */
    /* torch: every NaN, either sign, any payload, becomes 0x7fc0. */
    static const uint32_t nans[] = {0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001,
                                    0x7fffffff, 0x7f80ffff, 0xffffffff};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++)
        assert_int_equal(nn_f32_to_bf16(float_of(nans[i])), 0x7fc0);
}

static void test_bf16_to_f32(void **state)
{
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float x = nn_bf16_to_f32((uint16_t)h);
        assert_int_equal(bits_of(x), h << 16);
        uint32_t exp = (h >> 7) & 0xff;
        if (exp != 0xff) {
            double want = value_of((int)(h >> 15), exp, h & 0x7f, 7, 127);
            assert_true((double)x == want);
            assert_int_equal(nn_f32_to_bf16(x), h); /* round trip */
        }
    }
    assert_true(nn_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(isinf(nn_bf16_to_f32(0xff80)) && nn_bf16_to_f32(0xff80) < 0);
    assert_true(isnan(nn_bf16_to_f32(0x7fc0)));
}

/* torch's f32 -> f16 (c10/util/Half.h fp16_ieee_from_fp32_value, from the FP16 library): a
 * different algorithm, which lets the FPU do the rounding. */
static uint16_t torch_fp16_from_fp32(float f)
{
    const float scale_to_inf = float_of(0x77800000);
    const float scale_to_zero = float_of(0x08800000);
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = bits_of(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xff000000u;
    if (bias < 0x71000000u)
        bias = 0x71000000u;
    base = float_of((bias >> 1) + 0x07800000u) + base;
    const uint32_t b = bits_of(base);
    const uint32_t exp_bits = (b >> 13) & 0x00007c00u;
    const uint32_t mantissa_bits = b & 0x00000fffu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

static void check_f16(uint32_t w)
{
    float x = float_of(w);
    uint16_t got = nn_f32_to_f16(x), want = torch_fp16_from_fp32(x);
    if (got != want)
        fail_msg("f32 0x%08x (%g): f16 0x%04x, torch gives 0x%04x", w, (double)x, got, want);
}

static void test_f16_from_f32(void **state)
{
    for (uint64_t w = 0; w <= UINT32_MAX; w += 4093)
        check_f16((uint32_t)w);
    /* Every f32 near an f16 value: the f16 range with each f16's ties and neighbours. */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        uint32_t base = bits_of(nn_f16_to_f32((uint16_t)h));
        for (int d = -3; d <= 3; d++)
            for (uint32_t s = 0; s <= 1; s++)
                check_f16((base + (uint32_t)d) | s << 31);
        float next = nn_f16_to_f32((uint16_t)(h + 1));
        float mid = (float)(((double)float_of(base) + (double)next) / 2); /* exact tie */
        for (int d = -1; d <= 1; d++)
            check_f16(bits_of(mid) + (uint32_t)d);
    }
    for (int i = 0; i < 1000000; i++)
        check_f16(rng_next());

    /* Known encodings. */
    assert_int_equal(nn_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(nn_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(nn_f32_to_f16(0.5f), 0x3800);
    assert_int_equal(nn_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(nn_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(nn_f32_to_f16(65520.0f), 0x7c00); /* the tie with an odd 65504 */
    assert_int_equal(nn_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(nn_f32_to_f16(-1e6f), 0xfc00);
    assert_int_equal(nn_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(nn_f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(nn_f32_to_f16(ldexpf(1.0f, -14)), 0x0400);  /* smallest normal */
    assert_int_equal(nn_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);  /* smallest subnormal */
    assert_int_equal(nn_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);  /* tie, to even 0 */
    assert_int_equal(nn_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);  /* tie, to even 2 */
    assert_int_equal(nn_f32_to_f16(float_of(0x33000001)), 0x0001); /* just over 2^-25 */
    assert_int_equal(nn_f32_to_f16(ldexpf(1023.0f, -24)), 0x03ff); /* largest subnormal */
    assert_int_equal(nn_f32_to_f16(ldexpf(2047.0f, -25)), 0x0400); /* rounds up to normal */
    assert_int_equal(nn_f32_to_f16(1e-10f), 0x0000);
    assert_int_equal(nn_f32_to_f16(-1e-10f), 0x8000);
    assert_int_equal(nn_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(nn_f32_to_f16(float_of(0x7fc00000)), 0x7e00);
    assert_int_equal(nn_f32_to_f16(float_of(0xffc00001)), 0xfe00);
    assert_int_equal(nn_f32_to_f16(float_of(0x7f800001)), 0x7e00);
}

static void test_f16_to_f32(void **state)
{
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float x = nn_f16_to_f32((uint16_t)h);
        int sign = (int)(h >> 15);
        uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
        if (exp == 0x1f && mant != 0) {
            /* NaN: sign and payload kept, quiet bit set, as torch's FP multiply leaves it. */
            assert_true(isnan(x));
            assert_int_equal(bits_of(x), (h & 0x8000u) << 16 | 0x7fc00000u | mant << 13);
            assert_int_equal(nn_f32_to_f16(x), (h & 0x8000u) | 0x7e00u);
            continue;
        }
        if (exp == 0x1f) {
            assert_true(isinf(x) && (x < 0) == sign);
        } else {
            double want = value_of(sign, exp, mant, 10, 15);
            if ((double)x != want)
                fail_msg("f16 0x%04x: %.17g, expected %.17g", h, (double)x, want);
        }
        assert_int_equal(signbit(x) != 0, sign);
        assert_int_equal(nn_f32_to_f16(x), h); /* round trip, all 63490 non-NaN values */
    }
    assert_true(nn_f16_to_f32(0x3c00) == 1.0f);
    assert_true(nn_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(nn_f16_to_f32(0x0001) == 5.9604644775390625e-8f);
    assert_true(nn_f16_to_f32(0x03ff) == 6.097555160522461e-5f);
    assert_true(nn_f16_to_f32(0x0400) == 6.103515625e-5f);
    assert_true(nn_f16_to_f32(0xc000) == -2.0f);
}

/* torch's f8e4m3fn decoder (c10/util/Float8_e4m3fn.h fp8e4m3fn_to_fp32_value), for the bits
 * of its NaNs. */
static uint32_t torch_fp8e4m3fn_bits(uint8_t input)
{
    const uint32_t w = (uint32_t)input << 24;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t nonsign = w & 0x7fffffffu;
    /* (__builtin_clz(0) is undefined; zero_mask discards that case's result anyway.) */
    uint32_t renorm_shift = nonsign == 0 ? 32 : (uint32_t)__builtin_clz(nonsign);
    renorm_shift = renorm_shift > 4 ? renorm_shift - 4 : 0;
    const int32_t inf_nan_mask = ((int32_t)(nonsign + 0x01000000) >> 8) & INT32_C(0x7f800000);
    const int32_t zero_mask = (int32_t)(nonsign - 1) >> 31;
    return sign | ((((nonsign << renorm_shift >> 4) + ((0x78 - renorm_shift) << 23)) |
                    (uint32_t)inf_nan_mask) &
                   ~(uint32_t)zero_mask);
}

static void test_f8e4m3_to_f32(void **state)
{
    for (uint32_t b = 0; b < 256; b++) {
        float x = nn_f8e4m3_to_f32((uint8_t)b);
        int sign = (int)(b >> 7);
        uint32_t exp = (b >> 3) & 0xf, mant = b & 0x7;
        if (exp == 0xf && mant == 0x7) {
            assert_true(isnan(x)); /* 0x7f and 0xff; no infinities in the fn format */
        } else {
            double want = exp == 0 ? ldexp(mant, -9) : ldexp(8 + mant, (int)exp - 10);
            if (sign)
                want = -want;
            if ((double)x != want)
                fail_msg("f8e4m3 0x%02x: %.17g, expected %.17g", b, (double)x, want);
            assert_int_equal(signbit(x) != 0, sign);
        }
        if (bits_of(x) != torch_fp8e4m3fn_bits((uint8_t)b))
            fail_msg("f8e4m3 0x%02x: bits 0x%08x, torch gives 0x%08x", b, bits_of(x),
                     torch_fp8e4m3fn_bits((uint8_t)b));
    }
    assert_true(nn_f8e4m3_to_f32(0x7e) == 448.0f);
    assert_true(nn_f8e4m3_to_f32(0xfe) == -448.0f);
    assert_true(nn_f8e4m3_to_f32(0x01) == 0.001953125f); /* 2^-9 */
    assert_true(nn_f8e4m3_to_f32(0x08) == 0.015625f);    /* 2^-6 */
    assert_true(nn_f8e4m3_to_f32(0x38) == 1.0f);
    assert_true(isnan(nn_f8e4m3_to_f32(0xff)));
    assert_true(isfinite(nn_f8e4m3_to_f32(0x78))); /* 256: exponent 15 is not special */
}

/* nn_convert_to_f32 equals the scalar conversions, from unaligned sources and for lengths
 * around the vectorised block. */
static void test_convert_to_f32(void **state)
{
    static const size_t lengths[] = {0, 1, 7, 31, 32, 33, 64, 100, 1031};
    uint8_t *src = malloc(1031 * 4 + 8);
    float *dst = malloc(1031 * sizeof *dst + 4);
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < 1031 * 4 + 8; i++)
        src[i] = (uint8_t)rng_next();
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        size_t n = lengths[li];
        for (size_t off = 0; off < 2; off++) {
            const uint8_t *s = src + off;
            float guard = float_of(0x12345678);
            dst[n] = guard;

            assert_int_equal(nn_convert_to_f32(NN_DTYPE_BF16, s, dst, n), 0);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(bits_of(dst[i]),
                                 bits_of(nn_bf16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8))));
            assert_int_equal(nn_convert_to_f32(NN_DTYPE_F16, s, dst, n), 0);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(bits_of(dst[i]),
                                 bits_of(nn_f16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8))));
            assert_int_equal(nn_convert_to_f32(NN_DTYPE_F8E4M3, s, dst, n), 0);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(bits_of(dst[i]), bits_of(nn_f8e4m3_to_f32(s[i])));
            assert_int_equal(nn_convert_to_f32(NN_DTYPE_F32, s, dst, n), 0);
            if (n > 0)
                assert_memory_equal(dst, s, n * 4);
            assert_int_equal(bits_of(dst[n]), bits_of(guard)); /* nothing past n */
        }
    }
    assert_int_equal(nn_convert_to_f32(NN_DTYPE_U8, src, dst, 4), -1);
    assert_int_equal(nn_convert_to_f32(NN_DTYPE_I32, src, dst, 4), -1);
    assert_int_equal(nn_convert_to_f32(NN_DTYPE_I64, src, dst, 4), -1);
    assert_int_equal(nn_convert_to_f32(NN_DTYPE_COUNT, src, dst, 4), -1);
    free(src);
    free(dst);
}

static void test_arena(void **state)
{
    nn_arena_t a;
    assert_int_equal(nn_arena_init(&a, 1000), 0);
    assert_int_equal(a.cap, 1024); /* rounded up to the alignment */
    assert_int_equal((uintptr_t)a.base % 64, 0);

    uint8_t *p = nn_arena_alloc(&a, 1);
    assert_ptr_equal(p, a.base);
    assert_int_equal(a.used, 64);
    float *f = nn_arena_f32(&a, 17); /* 68 bytes: two pieces */
    assert_ptr_equal(f, a.base + 64);
    assert_int_equal(a.used, 192);
    memset(f, 0xab, 17 * sizeof *f); /* writable, for ASan */

    size_t mark = nn_arena_mark(&a);
    assert_int_equal(mark, 192);
    assert_non_null(nn_arena_alloc(&a, 512));
    assert_int_equal(a.used, 704);
    assert_int_equal(a.peak, 704);
    assert_null(nn_arena_alloc(&a, 321)); /* 320 left */
    assert_int_equal(a.used, 704);        /* a refusal takes nothing */
    assert_non_null(nn_arena_alloc(&a, 320));
    assert_int_equal(a.used, 1024);
    assert_null(nn_arena_alloc(&a, 1));

    nn_arena_release(&a, mark);
    assert_int_equal(a.used, 192);
    assert_int_equal(a.peak, 1024); /* the peak stays */
    uint8_t *q = nn_arena_alloc(&a, 64);
    assert_ptr_equal(q, a.base + 192); /* the released space is handed out again */
    assert_int_equal((uintptr_t)q % 64, 0);

    assert_null(nn_arena_alloc(&a, SIZE_MAX));
    assert_null(nn_arena_f32(&a, SIZE_MAX / 2));
    assert_null(nn_arena_f32(&a, SIZE_MAX / 4 + 1));

    nn_arena_release(&a, 0);
    assert_int_equal(a.used, 0);
    nn_arena_free(&a);
    assert_null(a.base);
    assert_int_equal(a.cap, 0);
    assert_null(nn_arena_alloc(&a, 1)); /* a freed arena hands out nothing */
    nn_arena_free(&a);

    assert_int_equal(nn_arena_init(&a, SIZE_MAX), -1);
    assert_null(a.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_size_name), cmocka_unit_test(test_numel),
        cmocka_unit_test(test_tensor_alloc),    cmocka_unit_test(test_shape_str),
        cmocka_unit_test(test_bf16_from_f32),   cmocka_unit_test(test_bf16_to_f32),
        cmocka_unit_test(test_f16_from_f32),    cmocka_unit_test(test_f16_to_f32),
        cmocka_unit_test(test_f8e4m3_to_f32),   cmocka_unit_test(test_convert_to_f32),
        cmocka_unit_test(test_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
