/* golden: reading the reference's golden vectors (tests/golden/, written by tools/golden/) in
 * the cmocka tests: a tensor as f32, an integer element, and the relative error the model
 * tests compare with. Test code only; include after <cmocka.h>. */
#ifndef DIFFUSIOND_TESTS_GOLDEN_H
#define DIFFUSIOND_TESTS_GOLDEN_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn/safetensors.h"

/* ||out - ref|| / ||ref|| (the plain norm of the difference when ref is all zeros). */
static inline double rel_err(const float *out, const float *ref, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)out[i] - ref[i];
        d += e * e;
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* A tensor of the golden file as f32, with its element count. */
static inline float *golden(const safetensors_t *st, const char *name, int64_t *n)
{
    if (n)
        *n = 0;
    const st_tensor_t *t = safetensors_find(st, name);
    if (!t) {
        fail_msg("golden tensor %s missing", name);
        return NULL;
    }
    int64_t count = 1;
    for (int i = 0; i < t->ndim; i++)
        count *= t->shape[i];
    float *out = malloc(sizeof(float) * (size_t)(count ? count : 1));
    char err[512];
    if (safetensors_read_f32(st, name, t->ndim, t->shape, out, err, sizeof err) != 0)
        fail_msg("%s", err);
    if (n)
        *n = count;
    return out;
}

static inline int64_t golden_int(const safetensors_t *st, const char *name, int64_t i)
{
    const st_tensor_t *t = safetensors_find(st, name);
    if (!t)
        fail_msg("golden tensor %s missing", name);
    /* memcpy: a tensor's data is aligned only as far as the file's offsets are */
    if (t->dtype == NN_DTYPE_I64) {
        int64_t v;
        memcpy(&v, (const char *)t->data + 8 * i, 8);
        return v;
    }
    if (t->dtype == NN_DTYPE_I32) {
        int32_t v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        return v;
    }
    float *f = golden(st, name, NULL);
    int64_t v = (int64_t)f[i];
    free(f);
    return v;
}

#endif
