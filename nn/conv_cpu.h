/* conv_cpu: the CPU backend's 2D convolution (nn_conv2d in ops.h), apart from ops_cpu.c
 * because it is its own kernel: the weight packing and a direct, tiled convolution on NHWC
 * images. Only ops_cpu.c includes this; models call nn_conv2d*. */
#ifndef DIFFUSIOND_NN_CONV_CPU_H
#define DIFFUSIOND_NN_CONV_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/ops.h"

size_t conv_cpu_packed_floats(int64_t out_c, int64_t in_c, int kernel);
void conv_cpu_pack(const float *w, int64_t out_c, int64_t in_c, int kernel, float *packed);
/* fma: the AVX2+FMA kernel (the caller has checked the CPU); otherwise the portable one. */
void conv_cpu_run(int threads, bool fma, const nn_conv2d_t *p, const float *x,
                  const float *packed, const float *bias, const float *residual, float *y);

#endif
