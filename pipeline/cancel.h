/* cancel: the table in which an origin (ingress) marks the jobs whose clients are gone, so
 * that the stages working on them can stop early instead of computing images nobody reads.
 *
 * One small POSIX shared-memory segment per origin process, /diffusiond.INSTANCE.cancel.SLOT,
 * created (mode 0600) by that origin, which removes it when it exits, and mapped read-only by
 * the stages; the supervisor's sweep of the instance's segments (pool_unlink_all) removes one
 * whose origin died. It holds the origin's generation and a ring of the last GEN_CANCEL_RING
 * cancelled job ids. The origin writes with atomic stores; readers scan the ring with atomic
 * loads (GEN_CANCEL_RING x 8 bytes: a few microseconds, cheap at a denoising step boundary). A
 * job cancelled more than GEN_CANCEL_RING cancellations ago is forgotten: the stage then
 * finishes it and the origin drops the result.
 *
 * A job whose origin process has been replaced (the segment of its slot now carries a newer
 * generation) counts as cancelled too: results go back only to the exact process that made a
 * job, so nobody would read it. Without a segment (no origin ever made one, or it could not
 * be opened) nothing counts as cancelled: the check never stops work by mistake. */
#ifndef DIFFUSIOND_PIPELINE_CANCEL_H
#define DIFFUSIOND_PIPELINE_CANCEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GEN_CANCEL_RING 4096

/* The origin's side: creates (replacing a predecessor's) the table of its slot. NULL with err
 * when the segment cannot be made. */
typedef struct gen_cancel_table gen_cancel_table_t;
gen_cancel_table_t *gen_cancel_table_create(const char *instance, uint32_t slot, uint32_t gen,
                                            char *err, size_t errlen);
/* Marks job id (not 0) cancelled. */
void gen_cancel_mark(gen_cancel_table_t *t, uint64_t id);
/* Unmaps and removes the segment; sets *t to NULL. */
void gen_cancel_table_destroy(gen_cancel_table_t **t);

/* The readers' side: a cache of the tables of every origin slot, opened on first use. */
typedef struct gen_cancel gen_cancel_t;
gen_cancel_t *gen_cancel_new(const char *instance);
void gen_cancel_free(gen_cancel_t **c);
/* True when job id, made by origin process (origin_slot, origin_gen), was cancelled or its
 * origin has been replaced. The arguments are a job's proto fields (msg.origin_slot,
 * msg.origin_gen, msg.id). */
bool gen_cancel_check(gen_cancel_t *c, uint32_t origin_slot, uint32_t origin_gen, uint64_t id);

/* The segment name of a slot's table, "/diffusiond.INSTANCE.cancel.SLOT". */
int gen_cancel_name(const char *instance, uint32_t slot, char *buf, size_t len);

#endif
