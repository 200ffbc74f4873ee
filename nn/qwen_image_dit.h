/* qwen_image_dit: the Qwen-Image diffusion transformer (diffusers'
 * QwenImageTransformer2DModel), its config, weights and forward pass on an nn backend.
 *
 * The forward runs each sample on its own (every GEMM has the sample's own row count), so a
 * sample's result is the same, bit for bit, alone or in any batch. */
#ifndef DIFFUSIOND_NN_QWEN_IMAGE_DIT_H
#define DIFFUSIOND_NN_QWEN_IMAGE_DIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/ops.h"
#include "nn/tensor.h"

#define DIT_MAX_IMAGES 8   /* generated image + condition images per sample */

/* transformer/config.json */
typedef struct {
    int patch_size;            /* 2 */
    int in_channels;           /* 64: packed latent channels (16 x 2 x 2) */
    int out_channels;          /* 16; the output has patch^2 x out_channels per token */
    int num_layers;            /* 60 */
    int attention_head_dim;    /* 128 */
    int num_attention_heads;   /* 24 */
    int joint_attention_dim;   /* 3584: text embedding width */
    int axes_dims_rope[3];     /* (16, 56, 56): frame, height, width; sum = head dim */
    bool zero_cond_t;          /* condition-image tokens modulated with t = 0 (Edit-2511) */
    int dim;                   /* derived: heads x head_dim */
} dit_config_t;

/* Parses config.json; unsupported options (guidance_embeds, use_additional_t_cond,
 * use_layer3d_rope) are an error that names them. */
int dit_config_load(dit_config_t *c, const char *path, char *err, size_t errlen);

/* One double-stream block's weights (torch Linear layout [out, in]). D = dim. */
typedef struct {
    float *img_mod_w, *img_mod_b;     /* [6D, D], [6D] */
    float *txt_mod_w, *txt_mod_b;     /* [6D, D], [6D] */
    float *to_q_w, *to_q_b, *to_k_w, *to_k_b, *to_v_w, *to_v_b;             /* [D, D], [D] */
    float *add_q_w, *add_q_b, *add_k_w, *add_k_b, *add_v_w, *add_v_b;       /* [D, D], [D] */
    float *norm_q, *norm_k, *norm_added_q, *norm_added_k;                   /* [head_dim] */
    float *to_out_w, *to_out_b, *to_add_out_w, *to_add_out_b;               /* [D, D], [D] */
    float *img_mlp1_w, *img_mlp1_b, *img_mlp2_w, *img_mlp2_b; /* [4D, D], [4D], [D, 4D], [D] */
    float *txt_mlp1_w, *txt_mlp1_b, *txt_mlp2_w, *txt_mlp2_b;
} dit_block_t;

typedef struct {
    float *img_in_w, *img_in_b;       /* [D, in_channels], [D] */
    float *txt_norm;                  /* [joint_attention_dim] */
    float *txt_in_w, *txt_in_b;       /* [D, joint_attention_dim], [D] */
    float *t_lin1_w, *t_lin1_b;       /* [D, 256], [D] */
    float *t_lin2_w, *t_lin2_b;       /* [D, D], [D] */
    dit_block_t *blocks;              /* [num_layers] */
    float *norm_out_w, *norm_out_b;   /* [2D, D], [2D]: scale then shift */
    float *proj_out_w, *proj_out_b;   /* [patch^2 x out_channels, D] */
    float *storage;                   /* one allocation holding every tensor above */
    size_t n_floats;
} dit_weights_t;

typedef struct dit dit_t;

/* Loads config.json and the weights of a transformer folder (sharded or not). */
dit_t *dit_load(const char *folder, nn_ctx_t *ctx, char *err, size_t errlen);
void dit_free(dit_t **dit);
const dit_config_t *dit_config(const dit_t *dit);
size_t dit_weight_bytes(const dit_t *dit);

/* (frames, height, width) of one image in patch units (h = H/16 for the real VAE). */
typedef struct {
    int frames, height, width;
} dit_image_shape_t;

/* One forward call's inputs, for `batch` samples sharing the sequence lengths and the image
 * shapes. (The reference takes the first sample's shapes for RoPE but each sample's own for
 * zero_cond_t's split between generated and condition tokens: a batch whose samples differ
 * there must be run as separate calls.) */
typedef struct {
    int batch;
    int64_t img_len;            /* image tokens per sample: sum of f*h*w over images */
    int64_t txt_len;            /* text tokens per sample, padded */
    const float *img;           /* [batch, img_len, in_channels] packed latents */
    const float *txt;           /* [batch, txt_len, joint_attention_dim] prompt embeddings */
    const float *txt_mask;      /* [batch, txt_len] 1/0, or NULL: every token is real */
    const float *timestep;      /* [batch]: t / 1000 as the pipeline passes it */
    int n_images;
    dit_image_shape_t images[DIT_MAX_IMAGES];
} dit_input_t;

/* Per-block outputs for localising a mismatch against the reference; any may be NULL. */
typedef struct {
    float *temb;                /* [batch, D] */
    float *img_in;              /* [batch, img_len, D] */
    float *txt_in;              /* [batch, txt_len, D] */
    float **block_img;          /* [num_layers] of [batch, img_len, D] */
    float **block_txt;          /* [num_layers] of [batch, txt_len, D] */
    float *norm_out;            /* [batch, img_len, D] */
} dit_trace_t;

/* out [batch, img_len, patch^2 x out_channels]. Returns 0, or -1 with err on bad input
 * (shapes that do not add up, too many images), no memory, or "stopped" when the context's
 * stop said so between blocks (nn_ctx_t.stop). The activations live in the
 * dit between calls (grown to the largest call so far): one caller at a time per dit. */
int dit_forward(dit_t *dit, const dit_input_t *in, float *out, dit_trace_t *trace, char *err,
                size_t errlen);

#endif
