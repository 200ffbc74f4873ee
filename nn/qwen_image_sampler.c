/* qwen_image_sampler: QwenImagePipeline.__call__'s denoising loop (see the header), in the
 * pipeline's float32 order of operations. */
#include "nn/qwen_image_sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sampler_latent_size(int height, int width, int *h, int *w, int64_t *tokens)
{
    if (height < 16 || width < 16 || height > 16384 || width > 16384)
        return -1;
    /* prepare_latents: 2 * (H // (vae_scale * 2)) */
    *h = 2 * (height / (SAMPLER_VAE_SCALE * 2));
    *w = 2 * (width / (SAMPLER_VAE_SCALE * 2));
    *tokens = (int64_t)(*h / 2) * (*w / 2);
    return 0;
}

void sampler_pack(const float *x, int C, int h, int w, float *packed)
{
    int hp = h / 2, wp = w / 2;
    for (int i = 0; i < hp; i++)
        for (int j = 0; j < wp; j++) {
            float *tok = packed + ((size_t)i * wp + j) * (size_t)C * 4;
            for (int c = 0; c < C; c++)
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++)
                        tok[c * 4 + dy * 2 + dx] =
                            x[((size_t)c * h + (size_t)(2 * i + dy)) * w + (size_t)(2 * j + dx)];
        }
}

void sampler_unpack(const float *packed, int C, int h, int w, float *x)
{
    int hp = h / 2, wp = w / 2;
    for (int i = 0; i < hp; i++)
        for (int j = 0; j < wp; j++) {
            const float *tok = packed + ((size_t)i * wp + j) * (size_t)C * 4;
            for (int c = 0; c < C; c++)
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++)
                        x[((size_t)c * h + (size_t)(2 * i + dy)) * w + (size_t)(2 * j + dx)] =
                            tok[c * 4 + dy * 2 + dx];
        }
}

void sampler_denormalize(float *x, int C, int64_t hw, const float *mean, const float *std)
{
    for (int c = 0; c < C; c++) {
        float inv_std = 1.0f / std[c]; /* the pipeline divides by 1/std, not multiplies */
        for (int64_t i = 0; i < hw; i++)
            x[(int64_t)c * hw + i] = x[(int64_t)c * hw + i] / inv_std + mean[c];
    }
}

/* comb = neg + s * (cond - neg), rescaled per token to the norm of cond (no epsilon, as the
 * reference). Result in cond. */
static void sampler_true_cfg(float *cond, const float *neg, int64_t tokens, int64_t ch, float s)
{
    for (int64_t t = 0; t < tokens; t++) {
        float *c = cond + t * ch;
        const float *n = neg + t * ch;
        float comb[1024];
        double cn = 0, kn = 0;
        for (int64_t i = 0; i < ch; i++) {
            comb[i] = n[i] + s * (c[i] - n[i]);
            cn += (double)c[i] * c[i];
            kn += (double)comb[i] * comb[i];
        }
        float ratio = (float)sqrt(cn) / (float)sqrt(kn);
        for (int64_t i = 0; i < ch; i++)
            c[i] = comb[i] * ratio;
    }
}

int sampler_denoise(dit_t *dit, const sched_config_t *sched, const sampler_params_t *p,
                    float *latents, char *err, size_t errlen)
{
    const dit_config_t *c = dit_config(dit);
    int h, w;
    int64_t S;
    if (sampler_latent_size(p->height, p->width, &h, &w, &S) != 0 || p->steps < 1 ||
        p->steps > 1000 || !p->txt || p->txt_len < 1) {
        snprintf(err, errlen, "bad sampling parameters: %dx%d, %d steps", p->width, p->height,
                 p->steps);
        return -1;
    }
    int64_t ch = (int64_t)c->patch_size * c->patch_size * c->out_channels;
    if (ch != c->in_channels || ch != 4 * SAMPLER_LATENT_CHANNELS || c->patch_size != 2) {
        snprintf(err, errlen, "the transformer takes %d channels and makes %lld with patch %d: "
                 "the sampler wants 2x2 patches of %d latent channels in and out",
                 c->in_channels, (long long)ch, c->patch_size, SAMPLER_LATENT_CHANNELS);
        return -1;
    }
    bool cfg = p->true_cfg_scale > 1.0f && p->neg;
    float *sigmas = malloc(sizeof(float) * (size_t)(p->steps + 1));
    float *timesteps = malloc(sizeof(float) * (size_t)p->steps);
    float *v = malloc(sizeof(float) * (size_t)(S * ch));
    float *v_neg = cfg ? malloc(sizeof(float) * (size_t)(S * ch)) : NULL;
    int rc = -1;
    if (!sigmas || !timesteps || !v || (cfg && !v_neg)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    double mu = sched_mu(sched, S);
    sched_set_timesteps(sched, p->steps, mu, sigmas, timesteps);
    for (int i = 0; i <= p->steps; i++)
        if (!isfinite(sigmas[i])) {
            /* The reference divides 0 by 0 here (one step with shift_terminal). */
            snprintf(err, errlen, "the scheduler config gives no usable schedule for %d step%s",
                     p->steps, p->steps == 1 ? "" : "s");
            rc = -2; /* the request's step count, not the machine: the caller's 400 */
            goto out;
        }

    dit_input_t in = {
        .batch = 1, .img_len = S, .img = latents, .n_images = 1,
        .images = {{.frames = 1, .height = h / 2, .width = w / 2}},
    };
    for (int i = 0; i < p->steps; i++) {
        if (p->stop && p->stop(p->stop_ctx)) {
            snprintf(err, errlen, "stopped at step %d of %d", i, p->steps);
            goto out;
        }
        float t = timesteps[i] / 1000.0f; /* the pipeline passes timestep / 1000 */
        in.timestep = &t;
        in.txt_len = p->txt_len;
        in.txt = p->txt;
        in.txt_mask = p->txt_mask;
        if (dit_forward(dit, &in, v, NULL, err, errlen) != 0)
            goto out;
        if (cfg) {
            in.txt_len = p->neg_len;
            in.txt = p->neg;
            in.txt_mask = p->neg_mask;
            if (dit_forward(dit, &in, v_neg, NULL, err, errlen) != 0)
                goto out;
            sampler_true_cfg(v, v_neg, S, ch, p->true_cfg_scale);
        }
        sched_euler_step(latents, v, S * ch, sigmas[i], sigmas[i + 1]);
        if (p->on_step)
            p->on_step(p->on_step_ctx, i, p->steps, latents);
    }
    rc = 0;
out:
    free(sigmas);
    free(timesteps);
    free(v);
    free(v_neg);
    return rc;
}
