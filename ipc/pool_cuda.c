/* pool_cuda: a pool's data as one CUDA device allocation shared through the CUDA IPC API
 * (export once in the owner, open once per consumer). Kept apart from pool.c so that the CUDA
 * runtime is the only thing this file knows and pool.c builds the same with or without it. */
#include "ipc/pool_cuda.h"

#include <stdio.h>
#include <string.h>

#ifdef DIFFUSIOND_HAVE_CUDA

#include <cuda_runtime.h>

_Static_assert(sizeof(cudaIpcMemHandle_t) == POOL_CUDA_HANDLE_BYTES,
               "the pool header stores a cudaIpcMemHandle_t");

static void cuda_err(char *err, size_t errlen, const char *what, cudaError_t e)
{
    snprintf(err, errlen, "CUDA %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* Makes device current for the rest of the call; *prev receives the device to restore, -1 if
 * none was current yet (the runtime had not been initialised in this thread). */
static cudaError_t cuda_enter(int device, int *prev)
{
    if (cudaGetDevice(prev) != cudaSuccess)
        *prev = -1;
    cudaGetLastError(); /* a failed query must not leak into the next call's status */
    if (*prev == device)
        return cudaSuccess;
    return cudaSetDevice(device);
}

static void cuda_leave(int device, int prev)
{
    if (prev >= 0 && prev != device)
        cudaSetDevice(prev);
}

int pool_cuda_alloc(int device, uint64_t bytes, void **dptr,
                    uint8_t handle[POOL_CUDA_HANDLE_BYTES], char *err, size_t errlen)
{
    int prev;
    cudaError_t e = cuda_enter(device, &prev);
    if (e != cudaSuccess) {
        char what[48];
        snprintf(what, sizeof(what), "cudaSetDevice(%d)", device);
        cuda_err(err, errlen, what, e);
        return -1;
    }
    if ((uint64_t)(size_t)bytes != bytes) {
        snprintf(err, errlen, "CUDA: %llu bytes do not fit size_t", (unsigned long long)bytes);
        cuda_leave(device, prev);
        return -1;
    }
    void *p = NULL;
    e = cudaMalloc(&p, (size_t)bytes);
    if (e != cudaSuccess) {
        cuda_err(err, errlen, "cudaMalloc", e);
        cuda_leave(device, prev);
        return -1;
    }
    cudaIpcMemHandle_t h;
    e = cudaIpcGetMemHandle(&h, p);
    if (e != cudaSuccess) {
        cuda_err(err, errlen, "cudaIpcGetMemHandle", e);
        cudaFree(p);
        cuda_leave(device, prev);
        return -1;
    }
    memcpy(handle, &h, sizeof(h));
    *dptr = p;
    cuda_leave(device, prev);
    return 0;
}

void pool_cuda_free(int device, void *dptr)
{
    int prev;
    if (cuda_enter(device, &prev) == cudaSuccess)
        cudaFree(dptr);
    cuda_leave(device, prev);
}

int pool_cuda_open(const uint8_t handle[POOL_CUDA_HANDLE_BYTES], void **dptr, int *opened_on,
                   char *err, size_t errlen)
{
    /* The consumer's current device, not the owner's: the pointer must be valid where the
     * consumer computes, and the lazy peer-access flag covers the case where they differ. */
    int dev;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) {
        cuda_err(err, errlen, "cudaGetDevice", e);
        return -1;
    }
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof(h));
    void *p = NULL;
    e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
        cuda_err(err, errlen, "cudaIpcOpenMemHandle", e);
        return -1;
    }
    *dptr = p;
    *opened_on = dev;
    return 0;
}

void pool_cuda_close(int opened_on, void *dptr)
{
    int prev;
    if (cuda_enter(opened_on, &prev) == cudaSuccess)
        cudaIpcCloseMemHandle(dptr);
    cuda_leave(opened_on, prev);
}

#else /* !DIFFUSIOND_HAVE_CUDA */

int pool_cuda_alloc(int device, uint64_t bytes, void **dptr,
                    uint8_t handle[POOL_CUDA_HANDLE_BYTES], char *err, size_t errlen)
{
    snprintf(err, errlen, "device %d: diffusiond was built without CUDA", device);
    return -1;
}

void pool_cuda_free(int device, void *dptr)
{
}

int pool_cuda_open(const uint8_t handle[POOL_CUDA_HANDLE_BYTES], void **dptr, int *opened_on,
                   char *err, size_t errlen)
{
    snprintf(err, errlen, "device pool: diffusiond was built without CUDA");
    return -1;
}

void pool_cuda_close(int opened_on, void *dptr)
{
}

#endif
