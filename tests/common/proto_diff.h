/* proto_diff: field-by-field comparison of two decoded protocol messages, for the protocol's
 * unit tests and its fuzz target (deliberately not memcmp: padding and unused array slots may
 * differ). Test code only. */
#ifndef DIFFUSIOND_TESTS_PROTO_DIFF_H
#define DIFFUSIOND_TESTS_PROTO_DIFF_H

#include <stdio.h>
#include <string.h>

#include "ipc/proto.h"

#define DIFF(expr, ...) \
    do { \
        if (expr) { \
            snprintf(why, whylen, __VA_ARGS__); \
            return 1; \
        } \
    } while (0)

static int tensor_diff(const proto_tensor_ref_t *a, const proto_tensor_ref_t *b, unsigned i,
                       char *why, size_t whylen)
{
    DIFF(a->pool != b->pool, "tensors[%u].pool", i);
    DIFF(a->gen != b->gen, "tensors[%u].gen", i);
    DIFF(a->offset != b->offset, "tensors[%u].offset", i);
    DIFF(a->bytes != b->bytes, "tensors[%u].bytes", i);
    DIFF(a->device != b->device, "tensors[%u].device", i);
    DIFF(a->dtype != b->dtype, "tensors[%u].dtype", i);
    DIFF(a->ndim != b->ndim, "tensors[%u].ndim", i);
    for (unsigned d = 0; d < a->ndim && d < PROTO_MAX_DIMS; d++)
        DIFF(a->shape[d] != b->shape[d], "tensors[%u].shape[%u]", i, d);
    return 0;
}

/* 0 if a and b carry the same message; else 1, with the first differing field in why. */
static int msg_diff(const proto_msg_t *a, const proto_msg_t *b, char *why, size_t whylen)
{
    DIFF(a->type != b->type, "type %d vs %d", (int)a->type, (int)b->type);
    switch (a->type) {
    case PROTO_MSG_HELLO:
        DIFF(strcmp(a->u.hello.stage, b->u.hello.stage) != 0, "hello.stage");
        DIFF(a->u.hello.slot != b->u.hello.slot, "hello.slot");
        DIFF(a->u.hello.gen != b->u.hello.gen, "hello.gen");
        DIFF(a->u.hello.pid != b->u.hello.pid, "hello.pid");
        return 0;
    case PROTO_MSG_READY:
        DIFF(a->u.ready.slot != b->u.ready.slot, "ready.slot");
        DIFF(a->u.ready.gen != b->u.ready.gen, "ready.gen");
        return 0;
    case PROTO_MSG_HEARTBEAT: {
        const proto_heartbeat_t *x = &a->u.heartbeat, *y = &b->u.heartbeat;
        DIFF(x->slot != y->slot, "heartbeat.slot");
        DIFF(x->gen != y->gen, "heartbeat.gen");
        DIFF(x->jobs_done != y->jobs_done, "heartbeat.jobs_done");
        DIFF(x->jobs_failed != y->jobs_failed, "heartbeat.jobs_failed");
        DIFF(x->jobs_dropped != y->jobs_dropped, "heartbeat.jobs_dropped");
        DIFF(x->inflight != y->inflight, "heartbeat.inflight");
        DIFF(x->busy_us != y->busy_us, "heartbeat.busy_us");
        DIFF(x->pool_used != y->pool_used, "heartbeat.pool_used");
        DIFF(x->pool_capacity != y->pool_capacity, "heartbeat.pool_capacity");
        DIFF(x->draining != y->draining, "heartbeat.draining");
        return 0;
    }
    case PROTO_MSG_ROSTER: {
        const proto_roster_t *x = &a->u.roster, *y = &b->u.roster;
        DIFF(x->seq != y->seq, "roster.seq");
        DIFF(x->n != y->n, "roster.n %u vs %u", x->n, y->n);
        DIFF(x->n > PROTO_MAX_SLOTS, "roster.n %u out of bounds", x->n);
        for (uint32_t i = 0; i < x->n; i++) {
            DIFF(x->entries[i].slot != y->entries[i].slot, "roster.entries[%u].slot", i);
            DIFF(strcmp(x->entries[i].stage, y->entries[i].stage) != 0, "roster.entries[%u].stage", i);
            DIFF(x->entries[i].replica != y->entries[i].replica, "roster.entries[%u].replica", i);
            DIFF(x->entries[i].gen != y->entries[i].gen, "roster.entries[%u].gen", i);
            DIFF(x->entries[i].state != y->entries[i].state, "roster.entries[%u].state", i);
        }
        return 0;
    }
    case PROTO_MSG_JOB: {
        const proto_job_t *x = &a->u.job, *y = &b->u.job;
        DIFF(x->id != y->id, "job.id");
        DIFF(x->attempt != y->attempt, "job.attempt");
        DIFF(x->to_gen != y->to_gen, "job.to_gen");
        DIFF(strcmp(x->origin, y->origin) != 0, "job.origin");
        DIFF(x->origin_slot != y->origin_slot, "job.origin_slot");
        DIFF(x->origin_gen != y->origin_gen, "job.origin_gen");
        DIFF(x->n_route != y->n_route, "job.n_route");
        DIFF(x->n_route > PROTO_MAX_ROUTE, "job.n_route %u out of bounds", x->n_route);
        for (uint32_t i = 0; i < x->n_route; i++)
            DIFF(strcmp(x->route[i], y->route[i]) != 0, "job.route[%u]", i);
        DIFF(x->n_tensors != y->n_tensors, "job.n_tensors");
        DIFF(x->n_tensors > PROTO_MAX_TENSORS, "job.n_tensors %u out of bounds", x->n_tensors);
        for (uint32_t i = 0; i < x->n_tensors; i++)
            if (tensor_diff(&x->tensors[i], &y->tensors[i], i, why, whylen))
                return 1;
        DIFF(x->error != y->error, "job.error");
        DIFF(strcmp(x->error_msg, y->error_msg) != 0, "job.error_msg");
        DIFF(x->params_len != y->params_len, "job.params_len %u vs %u", x->params_len, y->params_len);
        DIFF(x->params_len > 0 && memcmp(x->params, y->params, x->params_len) != 0, "job.params bytes");
        return 0;
    }
    case PROTO_MSG_DRAIN:
    case PROTO_MSG_SHUTDOWN:
        return 0;
    default:
        DIFF(1, "decoded an unknown type %d", (int)a->type);
    }
    return 0;
}

#undef DIFF

#endif
