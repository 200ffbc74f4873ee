/* ops: what every backend shares: releasing a context and asking which ops it has. Each
 * backend's constructor (nn_ctx_init_cpu in ops_cpu.c) and kernels live in its own file. */
#include <stddef.h>
#include <string.h>

#include "nn/ops.h"

void nn_ctx_free(nn_ctx_t *ctx)
{
    if (!ctx)
        return;
    if (ctx->backend && ctx->backend->ctx_free)
        ctx->backend->ctx_free(ctx);
    memset(ctx, 0, sizeof *ctx);
}

bool nn_supports(const nn_ctx_t *ctx, nn_op_t op)
{
    if (!ctx || !ctx->backend)
        return false;
    const nn_backend_t *b = ctx->backend;
    switch (op) {
    case NN_OP_LINEAR:             return b->linear != NULL;
    case NN_OP_LAYERNORM:          return b->layernorm != NULL;
    case NN_OP_RMSNORM:            return b->rmsnorm != NULL;
    case NN_OP_MODULATE:           return b->modulate != NULL;
    case NN_OP_GATED_ADD:          return b->gated_add != NULL;
    case NN_OP_GELU_TANH:          return b->gelu_tanh != NULL;
    case NN_OP_SILU:               return b->silu != NULL;
    case NN_OP_ROPE:               return b->rope != NULL;
    case NN_OP_ROPE_HALF:          return b->rope_half != NULL;
    case NN_OP_SILU_MUL:           return b->silu_mul != NULL;
    case NN_OP_ATTENTION:          return b->attention != NULL;
    case NN_OP_TIMESTEP_EMBEDDING: return b->timestep_embedding != NULL;
    case NN_OP_CONV2D:
        return b->conv2d != NULL && b->conv2d_pack != NULL && b->conv2d_packed_floats != NULL;
    case NN_OP_L2NORM:             return b->l2norm != NULL;
    case NN_OP_COUNT:              break;
    }
    return false;
}
