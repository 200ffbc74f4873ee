/* safetensors: reading model weights from .safetensors files, single or sharded.
 *
 * Files are mapped (mmap, read-only) and their JSON headers validated before anything is
 * trusted: header length bounded, every entry's dtype known, shape non-negative, byte range
 * inside the data area and equal to dtype size x elements, no two ranges overlapping. A
 * sharded checkpoint is opened through its "*.safetensors.index.json" (weight_map: tensor
 * name -> shard file). Tensors are converted to f32 as they are copied out.
 *
 * Errors name what is wrong and where: "transformer/diffusion_pytorch_model.safetensors:
 * tensor img_in.weight has shape f32[64,32], expected [64,64]". */
#ifndef DIFFUSIOND_NN_SAFETENSORS_H
#define DIFFUSIOND_NN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nn/tensor.h"

#define ST_MAX_HEADER (100u * 1024 * 1024) /* the format's own limit */
#define ST_NAME_MAX 256

typedef struct {
    const char *name;          /* owned by the safetensors_t */
    nn_dtype_t dtype;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
    const void *data;          /* inside the mapping; aligned to the element size only if
                                  the file's offsets are (safetensors_write's and the
                                  reference writer's are): read other files with memcpy */
    uint64_t bytes;
    const char *file;          /* path of the file that holds it */
} st_tensor_t;

typedef struct safetensors safetensors_t;

/* Opens path: a .safetensors file, a .safetensors.index.json, or a folder holding exactly one
 * of "diffusion_pytorch_model.safetensors[.index.json]" / "model.safetensors[.index.json]".
 * NULL with the reason in err. */
safetensors_t *safetensors_open(const char *path, char *err, size_t errlen);
void safetensors_close(safetensors_t **st);

size_t safetensors_count(const safetensors_t *st);
const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i);
const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name);
/* A "__metadata__" string value, or NULL. */
const char *safetensors_metadata(const safetensors_t *st, const char *key);

/* Copies the tensor `name` into out as f32, converting from f32/bf16/f16/f8e4m3. The shape
 * must equal shape[0..ndim). Returns 0, or -1 with an error naming the tensor, the file, and
 * the expected and found shapes (or "missing"). */
int safetensors_read_f32(const safetensors_t *st, const char *name, int ndim,
                         const int64_t *shape, float *out, char *err, size_t errlen);

/* Validates one file's header (the 8-byte length, the JSON, every entry) against the file's
 * size, without mapping anything else: the fuzz target's entry point. On success fills
 * *count with the number of tensors. */
int safetensors_check_header(const uint8_t *buf, size_t len, size_t *count, char *err,
                             size_t errlen);

/* Writes tensors into a .safetensors file (f32 data, or any dtype as raw bytes); for the
 * CLI's --dump and for tests. names[i], dtypes[i], ndims[i], shapes[i], datas[i]. Header
 * entries keep the caller's order; the data is laid out largest element size first, so that
 * every tensor is aligned to its element size. Arguments are checked before the file is
 * touched, and a failed write leaves no half-written file. */
int safetensors_write(const char *path, size_t n, const char *const *names,
                      const nn_dtype_t *dtypes, const int *ndims,
                      const int64_t (*shapes)[NN_MAX_DIMS], const void *const *datas,
                      char *err, size_t errlen);

#endif
