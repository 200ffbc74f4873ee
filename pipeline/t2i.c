/* t2i: the text-to-image steps that the denoise stage and diffusiond-generate share. */
#include "pipeline/t2i.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/json_file.h"
#include "nn/philox.h"

int t2i_load_vae_stats(const char *model_dir, float mean[SAMPLER_LATENT_CHANNELS],
                       float std[SAMPLER_LATENT_CHANNELS], char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/vae/config.json", model_dir);
    if (access(path, F_OK) != 0)
        return 1;
    json_t *root = nn_json_load_object(path, err, errlen);
    if (!root)
        return -1;
    int rc = -1;
    json_t *m = json_object_get(root, "latents_mean"), *s = json_object_get(root, "latents_std");
    if (!json_is_array(m) || !json_is_array(s) || json_array_size(m) != SAMPLER_LATENT_CHANNELS ||
        json_array_size(s) != SAMPLER_LATENT_CHANNELS) {
        snprintf(err, errlen, "%.900s: wants latents_mean and latents_std of %d numbers", path,
                 SAMPLER_LATENT_CHANNELS);
        goto out;
    }
    for (int i = 0; i < SAMPLER_LATENT_CHANNELS; i++) {
        json_t *a = json_array_get(m, (size_t)i), *b = json_array_get(s, (size_t)i);
        if (!json_is_number(a) || !json_is_number(b) || json_number_value(b) == 0) {
            snprintf(err, errlen, "%.900s: latents_mean/std[%d] is not a usable number", path, i);
            goto out;
        }
        mean[i] = (float)json_number_value(a);
        std[i] = (float)json_number_value(b);
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int t2i_initial_latents(uint64_t seed, int width, int height, float *packed)
{
    int h, w;
    int64_t S;
    sampler_latent_size(height, width, &h, &w, &S);
    const int64_t n = S * 4 * SAMPLER_LATENT_CHANNELS;
    float *noise = malloc(sizeof(float) * (size_t)n);
    if (!noise)
        return -1;
    philox_normal(seed, 0, (uint64_t)n, noise);
    sampler_pack(noise, SAMPLER_LATENT_CHANNELS, h, w, packed);
    free(noise);
    return 0;
}

int t2i_denoise(dit_t *dit, const sched_config_t *sched, const t2i_params_t *p, float *packed,
                const float *mean, const float *std, float *denorm, char *err, size_t errlen)
{
    sampler_params_t sp = {
        .height = p->height, .width = p->width, .steps = p->steps,
        .true_cfg_scale = p->true_cfg_scale,
        .txt_len = p->prompt.len, .txt = p->prompt.embeds, .txt_mask = p->prompt.mask,
        .on_step = p->on_step, .on_step_ctx = p->on_step_ctx,
        .stop = p->stop, .stop_ctx = p->stop_ctx,
    };
    if (p->negative) {
        sp.neg_len = p->negative->len;
        sp.neg = p->negative->embeds;
        sp.neg_mask = p->negative->mask;
    }
    int rc = sampler_denoise(dit, sched, &sp, packed, err, errlen);
    if (rc != 0)
        return rc;
    if (denorm) {
        int h, w;
        int64_t S;
        sampler_latent_size(p->height, p->width, &h, &w, &S);
        sampler_unpack(packed, SAMPLER_LATENT_CHANNELS, h, w, denorm);
        sampler_denormalize(denorm, SAMPLER_LATENT_CHANNELS, (int64_t)h * w, mean, std);
    }
    return 0;
}
