/* qwen_image_sampler: the denoising loop of diffusers' QwenImagePipeline: flow-match Euler
 * steps over the transformer, true classifier-free guidance with its norm-preserving rescale,
 * the 2x2 latent packing, and the latents' de-normalisation for the VAE. */
#ifndef DIFFUSIOND_NN_QWEN_IMAGE_SAMPLER_H
#define DIFFUSIOND_NN_QWEN_IMAGE_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "nn/qwen_image_dit.h"
#include "nn/scheduler.h"

#define SAMPLER_LATENT_CHANNELS 16 /* z_dim of the Qwen-Image VAE */
#define SAMPLER_VAE_SCALE 8

typedef struct {
    int height, width;            /* pixels; latents are 2*(H/16) x 2*(W/16) */
    int steps;
    float true_cfg_scale;         /* guidance runs only when > 1 and a negative is given */
    int64_t txt_len;              /* the prompt: [txt_len, joint_attention_dim] */
    const float *txt;
    const float *txt_mask;        /* [txt_len] or NULL (all ones) */
    int64_t neg_len;              /* the negative prompt, or neg == NULL */
    const float *neg;
    const float *neg_mask;
    /* Called after each step with the packed latents (for traces and progress); may be NULL. */
    void (*on_step)(void *ctx, int step, int steps, const float *latents);
    void *on_step_ctx;
    /* Asked before each step; true stops the loop with an error ("stopped at step i"): a
     * cancelled request or a stopping stage. May be NULL. */
    bool (*stop)(void *ctx);
    void *stop_ctx;
} sampler_params_t;

/* Latent geometry of an image: h, w of the (16, h, w) latents and the packed token count. */
int sampler_latent_size(int height, int width, int *h, int *w, int64_t *tokens);

/* (C, h, w) -> (h/2 * w/2, C*4), channel index c*4 + dy*2 + dx (the pipeline's _pack_latents). */
void sampler_pack(const float *x, int C, int h, int w, float *packed);
void sampler_unpack(const float *packed, int C, int h, int w, float *x);

/* x / (1 / std) + mean per channel, as the pipeline does before the VAE. x is (C, h, w). */
void sampler_denormalize(float *x, int C, int64_t hw, const float *mean, const float *std);

/* Runs the loop on one sample's packed latents in place. Returns 0, -2 with err when the
 * scheduler config gives no usable schedule for that many steps (one step with
 * shift_terminal: the reference divides 0 by 0), or -1 with err. */
int sampler_denoise(dit_t *dit, const sched_config_t *sched, const sampler_params_t *p,
                    float *latents, char *err, size_t errlen);

#endif
