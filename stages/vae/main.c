/* diffusiond-vae: the VAE stage. Loads the model folder's vae/ decoder once; for each
 * generation job it decodes the de-normalised latents the denoise stage attached and attaches
 * the 8-bit image the pipeline would return (nn/qwen_image_vae.h: decode, then postprocess's
 * clamp, scale and round half to even), tiling images beyond the default size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/log.h"
#include "ipc/stage.h"
#include "nn/ops.h"
#include "nn/qwen_image_sampler.h"
#include "nn/qwen_image_vae.h"
#include "pipeline/model_stage.h"

typedef struct {
    nn_ctx_t ctx;
    qwen_vae_t *vae;
    qwen_vae_tiling_t tiling;
} vae_stage_t;

static int vae_compute(void *model, gen_task_t *t)
{
    vae_stage_t *vs = model;
    const qwen_vae_config_t *c = qwen_vae_config(vs->vae);
    const proto_tensor_ref_t *r = &t->in_ref[GEN_T_LATENTS];
    const gen_params_t *gp = &t->params;
    const int f = c->spatial_factor;
    if (r->dtype != PROTO_DTYPE_F32 || r->ndim != 5 || r->shape[0] != 1 ||
        r->shape[1] != c->z_dim || r->shape[2] != 1 || r->shape[3] != gp->height / f ||
        r->shape[4] != gp->width / f || gp->height % f || gp->width % f)
        return gen_task_fail(t, 500, "vae: latents of the wrong shape for %dx%d", gp->width,
                             gp->height);
    float *image = malloc(sizeof(float) * 3 * (size_t)gp->width * (size_t)gp->height);
    int64_t shape[3] = {gp->height, gp->width, 3};
    uint8_t *rgb8 = image ? gen_output_alloc(t, PROTO_DTYPE_U8, 3, shape) : NULL;
    if (!rgb8) {
        free(image);
        return gen_task_fail(t, 503, "vae: out of memory");
    }
    char err[512];
    if (qwen_vae_decode(vs->vae, t->in[GEN_T_LATENTS], 1, (int)r->shape[3], (int)r->shape[4],
                        &vs->tiling, image, NULL, err, sizeof err) != 0) {
        free(image);
        return gen_task_fail(t, 500, "vae: %s", err);
    }
    qwen_vae_postprocess(image, gp->height, gp->width, NULL, rgb8);
    free(image);
    return 0;
}

static int vae_init(stage_t *st, model_stage_spec_t *spec)
{
    char path[1024], err[1024];
    vae_stage_t *vs = calloc(1, sizeof *vs);
    if (!vs || nn_ctx_init_cpu(&vs->ctx, stage_section(st)->threads) != 0)
        return STAGE_EXIT_ERROR;
    if (model_stage_folder(st, "vae", path, sizeof path) != 0)
        return STAGE_EXIT_CONFIG;
    if (!(vs->vae = qwen_vae_load(path, &vs->ctx, QWEN_VAE_DECODER, err, sizeof err))) {
        log_error("%s", err);
        return STAGE_EXIT_CONFIG;
    }
    /* the latents the denoise stage sends: 16 channels at an eighth of the image's size */
    const qwen_vae_config_t *c = qwen_vae_config(vs->vae);
    if (c->z_dim != SAMPLER_LATENT_CHANNELS || c->spatial_factor != SAMPLER_VAE_SCALE) {
        log_error("%s: z_dim %d and spatial factor %d; the Qwen-Image pipeline needs %d and %d",
                  path, c->z_dim, c->spatial_factor, SAMPLER_LATENT_CHANNELS, SAMPLER_VAE_SCALE);
        return STAGE_EXIT_CONFIG;
    }
    /* the largest job's image: 8-bit RGB */
    const uint64_t rgb8 = 3 * (uint64_t)stage_config(st)->server.http_pixels_max;
    int bad = model_stage_check_pool(st, &rgb8, 1);
    if (bad)
        return bad;
    qwen_vae_tiling_default(&vs->tiling);
    *spec = (model_stage_spec_t){.what = "vae", .min_inputs = 1, .max_inputs = 1,
                                 .compute = vae_compute, .model = vs,
                                 .ctx = &vs->ctx};
    log_info("VAE decoder loaded: %zu MiB of weights", qwen_vae_weight_bytes(vs->vae) >> 20);
    return 0;
}

static void vae_fini(void *model)
{
    vae_stage_t *vs = model;
    qwen_vae_free(&vs->vae);
    nn_ctx_free(&vs->ctx);
    free(vs);
}

int main(int argc, char **argv)
{
    static const model_stage_def_t def = {.init = vae_init, .fini = vae_fini};
    return model_stage_main(argc, argv, &def);
}
