/* pool_cuda: the CUDA device-memory half of a pool (pool.c calls it; nothing else should).
 * One device allocation per pool, exported once by the owner as a CUDA IPC handle and opened
 * once by each consumer. In a build without DIFFUSIOND_HAVE_CUDA every function fails with
 * "built without CUDA". Each call restores the calling thread's current device. */
#ifndef DIFFUSIOND_POOL_CUDA_H
#define DIFFUSIOND_POOL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "ipc/pool.h"

/* Owner: cudaMalloc(bytes) on device and its IPC handle. 0, or -1 with err. */
int pool_cuda_alloc(int device, uint64_t bytes, void **dptr,
                    uint8_t handle[POOL_CUDA_HANDLE_BYTES], char *err, size_t errlen);
/* Owner: frees what pool_cuda_alloc returned. Consumers should have closed their handles
 * first: a consumer's pointer is not to be used once the exporter has freed the memory. */
void pool_cuda_free(int device, void *dptr);

/* Consumer: opens the owner's allocation in the calling thread's current device (peer access
 * is enabled lazily when that is not the owner's device). *opened_on receives that device,
 * which pool_cuda_close needs. 0, or -1 with err. */
int pool_cuda_open(const uint8_t handle[POOL_CUDA_HANDLE_BYTES], void **dptr, int *opened_on,
                   char *err, size_t errlen);
/* Consumer: closes what pool_cuda_open returned. */
void pool_cuda_close(int opened_on, void *dptr);

#endif
