/* tensor: the n-dimensional arrays the models compute with, their element types, the
 * conversions between those types, and a bump arena for activations.
 *
 * A tensor is plain data: dtype, shape (row-major, last dimension contiguous), device and a
 * data pointer. It owns its data only when it was allocated by nn_tensor_alloc. */
#ifndef DIFFUSIOND_NN_TENSOR_H
#define DIFFUSIOND_NN_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NN_MAX_DIMS 5
#define NN_DEVICE_CPU (-1)

/* Same numbering as the wire protocol's proto_dtype_t, so a tensor reference converts as is. */
typedef enum {
    NN_DTYPE_F32 = 0,
    NN_DTYPE_BF16,
    NN_DTYPE_F16,
    NN_DTYPE_F8E4M3,
    NN_DTYPE_U8,
    NN_DTYPE_I32,
    NN_DTYPE_I64,
    NN_DTYPE_COUNT
} nn_dtype_t;

typedef struct {
    nn_dtype_t dtype;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
    int device;        /* NN_DEVICE_CPU or a CUDA ordinal */
    void *data;
    bool owned;        /* data was allocated by nn_tensor_alloc: nn_tensor_free frees it */
} nn_tensor_t;

size_t nn_dtype_size(nn_dtype_t dtype);   /* 0 for an unknown dtype */
const char *nn_dtype_name(nn_dtype_t dtype);

/* Product of the shape (1 for ndim 0); -1 if it overflows int64. */
int64_t nn_numel(int ndim, const int64_t *shape);
int64_t nn_tensor_numel(const nn_tensor_t *t);
size_t nn_tensor_bytes(const nn_tensor_t *t);

/* Allocates a CPU tensor (64-byte aligned, zeroed). Returns 0, or -1 on a bad shape or no
 * memory. */
int nn_tensor_alloc(nn_tensor_t *t, nn_dtype_t dtype, int ndim, const int64_t *shape);
void nn_tensor_free(nn_tensor_t *t);
/* "f32[2,16,64]" into buf, for messages. */
const char *nn_shape_str(char *buf, size_t len, nn_dtype_t dtype, int ndim, const int64_t *shape);

/* Element conversions. bf16 and f16 from f32 round to nearest even; f8e4m3 is the OCP FP8
 * E4M3 "fn" format (no infinities, 0x7f/0xff are NaN), as torch.float8_e4m3fn. */
float nn_bf16_to_f32(uint16_t h);
uint16_t nn_f32_to_bf16(float f);
float nn_f16_to_f32(uint16_t h);
uint16_t nn_f32_to_f16(float f);
float nn_f8e4m3_to_f32(uint8_t b);
/* The bits of a float and back (memcpy: no aliasing games). */
static inline uint32_t nn_f32_bits(float f)
{
    uint32_t w;
    __builtin_memcpy(&w, &f, sizeof w);
    return w;
}

static inline float nn_f32_from_bits(uint32_t w)
{
    float f;
    __builtin_memcpy(&f, &w, sizeof f);
    return f;
}

/* Converts n elements of src (of dtype) into f32; -1 for a dtype that is not a float type. */
int nn_convert_to_f32(nn_dtype_t dtype, const void *src, float *dst, size_t n);

/* A bump allocator for activations: one block reserved up front, handed out in 64-byte
 * aligned pieces, released all at once (or back to a mark), so that a forward pass makes no
 * malloc calls and its peak memory is known. */
typedef struct {
    uint8_t *base;
    size_t cap;
    size_t used;
    size_t peak;
} nn_arena_t;

int nn_arena_init(nn_arena_t *a, size_t cap);
void nn_arena_free(nn_arena_t *a);
/* NULL when the arena is full (a caller bug: arenas are sized from the config). */
void *nn_arena_alloc(nn_arena_t *a, size_t bytes);
float *nn_arena_f32(nn_arena_t *a, size_t n);
size_t nn_arena_mark(const nn_arena_t *a);
void nn_arena_release(nn_arena_t *a, size_t mark);

#endif
