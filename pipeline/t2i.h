/* t2i: text-to-image from prompt embeddings to the decoder's input, the same code for the
 * denoise stage and diffusiond-generate, so that a request and the CLI give the same bits:
 * initial noise from the seed (Philox, nn/philox.h) in the pipeline's (16, h, w) order then
 * packed, the sampling loop (nn/qwen_image_sampler.h), then the latents unpacked and
 * de-normalised with the VAE config's latents_mean and latents_std. */
#ifndef DIFFUSIOND_PIPELINE_T2I_H
#define DIFFUSIOND_PIPELINE_T2I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/qwen_image_dit.h"
#include "nn/qwen_image_sampler.h"
#include "nn/scheduler.h"

/* A prompt's embeddings [len, dim] and mask [len] (NULL: every token real). */
typedef struct {
    const float *embeds, *mask;
    int64_t len;
} t2i_text_t;

/* latents_mean and latents_std of MODEL/vae/config.json. 0, 1 when the folder has no vae/
 * (nothing to de-normalise with), -1 with err for a config without usable values. */
int t2i_load_vae_stats(const char *model_dir, float mean[SAMPLER_LATENT_CHANNELS],
                       float std[SAMPLER_LATENT_CHANNELS], char *err, size_t errlen);

/* The seed's initial noise, packed [S, 64], for a width x height image. 0, or -1 when out of
 * memory. */
int t2i_initial_latents(uint64_t seed, int width, int height, float *packed);

typedef struct {
    int width, height, steps;
    float true_cfg_scale;
    t2i_text_t prompt;
    const t2i_text_t *negative;            /* NULL: none (no true CFG) */
    /* passed to the sampler as they are */
    void (*on_step)(void *ctx, int step, int steps, const float *latents);
    void *on_step_ctx;
    bool (*stop)(void *ctx);
    void *stop_ctx;
} t2i_params_t;

/* Denoises packed [S, 64] in place (its initial noise on entry: t2i_initial_latents or given
 * latents), then, when denorm is not NULL, writes the decoder's input (16, h, w) de-normalised
 * with mean and std. 0, -2 with err for a step count the scheduler config cannot schedule
 * (sampler_denoise), or -1 with err. */
int t2i_denoise(dit_t *dit, const sched_config_t *sched, const t2i_params_t *p, float *packed,
                const float *mean, const float *std, float *denorm, char *err, size_t errlen);

#endif
