/* diffusiond-denoise: the denoise stage. Loads the model folder's transformer/, the scheduler
 * config and the VAE's latent statistics once; for each generation job it draws the seed's
 * noise, runs the sampling loop with true CFG over the prompt embeddings the text stage
 * attached, and attaches the de-normalised latents for the VAE (pipeline/gen_job.h), through
 * pipeline/t2i.c, the code diffusiond-generate runs too. Jobs run one at a time, each sample
 * alone (batching jobs of one size is a later step). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/log.h"
#include "ipc/stage.h"
#include "nn/ops.h"
#include "nn/qwen_image_dit.h"
#include "nn/scheduler.h"
#include "pipeline/model_stage.h"
#include "pipeline/t2i.h"

typedef struct {
    nn_ctx_t ctx;
    dit_t *dit;
    sched_config_t sched;
    float mean[SAMPLER_LATENT_CHANNELS], std[SAMPLER_LATENT_CHANNELS];
} denoise_stage_t;

/* Input i as a prompt: embeds [1, L, D] f32 and its mask [1, L] f32. */
static int take_text(const gen_task_t *t, uint32_t i, int64_t dim, t2i_text_t *out)
{
    const proto_tensor_ref_t *e = &t->in_ref[i], *m = &t->in_ref[i + 1];
    if (e->dtype != PROTO_DTYPE_F32 || e->ndim != 3 || e->shape[0] != 1 || e->shape[1] < 1 ||
        e->shape[2] != dim || m->dtype != PROTO_DTYPE_F32 || m->ndim != 2 ||
        m->shape[0] != 1 || m->shape[1] != e->shape[1])
        return -1;
    *out = (t2i_text_t){.embeds = t->in[i], .mask = t->in[i + 1], .len = e->shape[1]};
    return 0;
}

/* Between denoising steps: a client that left, or a stage that stops. */
static bool should_stop(void *ctx) { return gen_task_cancelled(ctx); }

static int denoise_compute(void *model, gen_task_t *t)
{
    denoise_stage_t *ds = model;
    const dit_config_t *c = dit_config(ds->dit);
    const gen_params_t *gp = &t->params;
    t2i_text_t pos, neg;
    if (t->n_in == 3) /* a prompt, and a negative prompt's embeddings without their mask */
        return gen_task_fail(t, 500, "denoise: a job with 3 tensors, expected 2 or 4");
    if (take_text(t, GEN_T_PROMPT, c->joint_attention_dim, &pos) != 0 ||
        (t->n_in == 4 && take_text(t, GEN_T_NEG, c->joint_attention_dim, &neg) != 0))
        return gen_task_fail(t, 500, "denoise: the prompt tensors have the wrong shape");
    int h, w;
    int64_t S;
    sampler_latent_size(gp->height, gp->width, &h, &w, &S);
    float *packed = malloc(sizeof(float) * (size_t)(S * 4 * SAMPLER_LATENT_CHANNELS));
    int64_t shape[5] = {1, SAMPLER_LATENT_CHANNELS, 1, h, w};
    float *out = packed ? gen_output_alloc(t, PROTO_DTYPE_F32, 5, shape) : NULL;
    if (!out || t2i_initial_latents(gp->seed, gp->width, gp->height, packed) != 0) {
        free(packed);
        return gen_task_fail(t, 503, "denoise: out of memory");
    }
    t2i_params_t p = {
        .width = gp->width, .height = gp->height, .steps = gp->steps,
        .true_cfg_scale = (float)gp->true_cfg_scale, .prompt = pos,
        .negative = t->n_in == 4 ? &neg : NULL, .stop = should_stop, .stop_ctx = t,
    };
    char err[512];
    int rc = t2i_denoise(ds->dit, &ds->sched, &p, packed, ds->mean, ds->std, out, err, sizeof err);
    free(packed);
    if (rc == -2) /* the request's step count cannot be scheduled: the client's error */
        return gen_task_fail(t, 400, "denoise: %s", err);
    if (rc != 0) /* when it was stopped (a client gone, the stage stopping), the worker
                  * answers 499 or 503 instead */
        return gen_task_fail(t, 500, "denoise: %s", err);
    return 0;
}

static int denoise_init(stage_t *st, model_stage_spec_t *spec)
{
    char path[1024], err[1024] = "";
    denoise_stage_t *ds = calloc(1, sizeof *ds);
    if (!ds || nn_ctx_init_cpu(&ds->ctx, stage_section(st)->threads) != 0)
        return STAGE_EXIT_ERROR;
    if (model_stage_folder(st, "transformer", path, sizeof path) != 0)
        return STAGE_EXIT_CONFIG;
    if (!(ds->dit = dit_load(path, &ds->ctx, err, sizeof err))) {
        log_error("%s", err);
        return STAGE_EXIT_CONFIG;
    }
    const dit_config_t *c = dit_config(ds->dit);
    if (c->patch_size != 2 || c->in_channels != 4 * SAMPLER_LATENT_CHANNELS ||
        c->out_channels != SAMPLER_LATENT_CHANNELS) {
        log_error("%s: not a Qwen-Image text-to-image transformer (patch_size %d, in_channels "
                  "%d, out_channels %d)", path, c->patch_size, c->in_channels, c->out_channels);
        return STAGE_EXIT_CONFIG;
    }
    if (model_stage_folder(st, "scheduler/scheduler_config.json", path, sizeof path) != 0)
        return STAGE_EXIT_CONFIG;
    if (sched_config_load(&ds->sched, path, err, sizeof err) != 0) {
        log_error("%s", err);
        return STAGE_EXIT_CONFIG;
    }
    if (t2i_load_vae_stats(stage_config(st)->model.path, ds->mean, ds->std, err, sizeof err) != 0) {
        log_error("%s", err[0] ? err : "the model folder has no vae/config.json");
        return STAGE_EXIT_CONFIG;
    }
    /* the largest job's latents: 16 f32 channels at an eighth of each side, as many bytes
     * as the image has pixels */
    const uint64_t latents = (uint64_t)stage_config(st)->server.http_pixels_max;
    int bad = model_stage_check_pool(st, &latents, 1);
    if (bad)
        return bad;
    *spec = (model_stage_spec_t){.what = "denoise", .min_inputs = 2, .max_inputs = 4,
                                 .compute = denoise_compute, .model = ds,
                                 .ctx = &ds->ctx};
    log_info("transformer loaded: %zu MiB of weights", dit_weight_bytes(ds->dit) >> 20);
    return 0;
}

static void denoise_fini(void *model)
{
    denoise_stage_t *ds = model;
    dit_free(&ds->dit);
    nn_ctx_free(&ds->ctx);
    free(ds);
}

int main(int argc, char **argv)
{
    static const model_stage_def_t def = {.init = denoise_init, .fini = denoise_fini};
    return model_stage_main(argc, argv, &def);
}
