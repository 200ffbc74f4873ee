/* qwen_image_dit: the Qwen-Image transformer (see qwen_image_dit.h), following diffusers'
 * transformer_qwenimage.py (QwenImageTransformer2DModel.forward, QwenImageTransformerBlock,
 * QwenDoubleStreamAttnProcessor2_0, QwenEmbedRope) block by block. */
#include "nn/qwen_image_dit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/json_file.h"
#include "nn/safetensors.h"

#define DIT_EPS 1e-6f
#define DIT_TIME_DIM 256  /* sinusoidal channels of the timestep projection */

struct dit {
    dit_config_t cfg;
    dit_weights_t w;
    nn_ctx_t *ctx;
    nn_arena_t arena;   /* activations, kept between calls: its pages stay mapped, so a
                           forward pays no page faults after the first of its size */
};

const dit_config_t *dit_config(const dit_t *dit) { return &dit->cfg; }
size_t dit_weight_bytes(const dit_t *dit) { return dit->w.n_floats * sizeof(float); }

/* ---- config.json ---------------------------------------------------------------------------- */

int dit_config_load(dit_config_t *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_t *root = nn_json_load_object(path, err, errlen);
    if (!root)
        return -1;
    int rc = -1;
    c->patch_size = 2;
    c->in_channels = 64;
    c->out_channels = 16;
    c->num_layers = 60;
    c->attention_head_dim = 128;
    c->num_attention_heads = 24;
    c->joint_attention_dim = 3584;
    c->axes_dims_rope[0] = 16;
    c->axes_dims_rope[1] = 56;
    c->axes_dims_rope[2] = 56;
    if (nn_json_int(root, "patch_size", 1, 16, &c->patch_size, false, path, err, errlen) ||
        nn_json_int(root, "in_channels", 1, 1 << 16, &c->in_channels, false, path, err, errlen) ||
        nn_json_int(root, "num_layers", 1, 1024, &c->num_layers, false, path, err, errlen) ||
        nn_json_int(root, "attention_head_dim", 2, NN_ATTENTION_MAX_HEAD_DIM,
                 &c->attention_head_dim, false, path, err, errlen) ||
        nn_json_int(root, "num_attention_heads", 1, 1024, &c->num_attention_heads, false, path,
                 err, errlen) ||
        nn_json_int(root, "joint_attention_dim", 1, 1 << 16, &c->joint_attention_dim, false, path,
                 err, errlen))
        goto out;
    json_t *oc = json_object_get(root, "out_channels");
    if (oc && json_is_null(oc))
        c->out_channels = c->in_channels; /* out_channels or in_channels */
    else if (nn_json_int(root, "out_channels", 1, 1 << 16, &c->out_channels, false, path, err,
                      errlen))
        goto out;
    json_t *axes = json_object_get(root, "axes_dims_rope");
    if (axes) {
        if (!json_is_array(axes) || json_array_size(axes) != 3) {
            snprintf(err, errlen, "%s: axes_dims_rope must be a list of 3 integers", path);
            goto out;
        }
        for (int i = 0; i < 3; i++) {
            json_t *a = json_array_get(axes, (size_t)i);
            if (!json_is_integer(a) || json_integer_value(a) < 0 ||
                json_integer_value(a) > 1024 || json_integer_value(a) % 2) {
                snprintf(err, errlen, "%s: axes_dims_rope[%d] must be an even integer", path, i);
                goto out;
            }
            c->axes_dims_rope[i] = (int)json_integer_value(a);
        }
    }
    static const char *const unsupported[] = {"guidance_embeds", "use_additional_t_cond",
                                              "use_layer3d_rope"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        json_t *v = json_object_get(root, unsupported[i]);
        if (v && json_is_true(v)) {
            snprintf(err, errlen, "%s: %s = true is not supported", path, unsupported[i]);
            goto out;
        }
    }
    json_t *z = json_object_get(root, "zero_cond_t");
    c->zero_cond_t = z && json_is_true(z);
    c->dim = c->num_attention_heads * c->attention_head_dim;
    if (c->axes_dims_rope[0] + c->axes_dims_rope[1] + c->axes_dims_rope[2] !=
        c->attention_head_dim) {
        snprintf(err, errlen, "%s: axes_dims_rope must add up to attention_head_dim (%d)", path,
                 c->attention_head_dim);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- weights ----------------------------------------------------------------------------- */

/* One row of the checkpoint table: a tensor's name, where it goes, and its shape. */
typedef struct {
    char name[128];
    float **dst;
    int ndim;
    int64_t shape[2];
} dit_tensor_spec_t;

typedef struct {
    dit_tensor_spec_t *rows;
    size_t n, cap;
    bool oom;
} dit_table_t;

static void table_add(dit_table_t *t, float **dst, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void table_add(dit_table_t *t, float **dst, int64_t d0, int64_t d1, const char *fmt, ...)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        dit_tensor_spec_t *rows = realloc(t->rows, cap * sizeof *rows);
        if (!rows) {
            t->oom = true;
            return;
        }
        t->rows = rows;
        t->cap = cap;
    }
    dit_tensor_spec_t *r = &t->rows[t->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->name, sizeof r->name, fmt, ap);
    va_end(ap);
    r->dst = dst;
    r->ndim = d1 ? 2 : 1;
    r->shape[0] = d0;
    r->shape[1] = d1;
}

/* Every tensor of the checkpoint, named as diffusers names them. */
static void dit_build_table(const dit_config_t *c, dit_weights_t *w, dit_table_t *t)
{
    int64_t D = c->dim, Dh = c->attention_head_dim, Dt = c->joint_attention_dim;
    int64_t out = (int64_t)c->patch_size * c->patch_size * c->out_channels;
    table_add(t, &w->img_in_w, D, c->in_channels, "img_in.weight");
    table_add(t, &w->img_in_b, D, 0, "img_in.bias");
    table_add(t, &w->txt_norm, Dt, 0, "txt_norm.weight");
    table_add(t, &w->txt_in_w, D, Dt, "txt_in.weight");
    table_add(t, &w->txt_in_b, D, 0, "txt_in.bias");
    table_add(t, &w->t_lin1_w, D, DIT_TIME_DIM, "time_text_embed.timestep_embedder.linear_1.weight");
    table_add(t, &w->t_lin1_b, D, 0, "time_text_embed.timestep_embedder.linear_1.bias");
    table_add(t, &w->t_lin2_w, D, D, "time_text_embed.timestep_embedder.linear_2.weight");
    table_add(t, &w->t_lin2_b, D, 0, "time_text_embed.timestep_embedder.linear_2.bias");
    for (int i = 0; i < c->num_layers; i++) {
        dit_block_t *b = &w->blocks[i];
        const char *p = "transformer_blocks";
        table_add(t, &b->img_mod_w, 6 * D, D, "%s.%d.img_mod.1.weight", p, i);
        table_add(t, &b->img_mod_b, 6 * D, 0, "%s.%d.img_mod.1.bias", p, i);
        table_add(t, &b->txt_mod_w, 6 * D, D, "%s.%d.txt_mod.1.weight", p, i);
        table_add(t, &b->txt_mod_b, 6 * D, 0, "%s.%d.txt_mod.1.bias", p, i);
        struct { float **w, **b; const char *name; } lin[] = {
            {&b->to_q_w, &b->to_q_b, "attn.to_q"},         {&b->to_k_w, &b->to_k_b, "attn.to_k"},
            {&b->to_v_w, &b->to_v_b, "attn.to_v"},         {&b->add_q_w, &b->add_q_b, "attn.add_q_proj"},
            {&b->add_k_w, &b->add_k_b, "attn.add_k_proj"}, {&b->add_v_w, &b->add_v_b, "attn.add_v_proj"},
            {&b->to_out_w, &b->to_out_b, "attn.to_out.0"}, {&b->to_add_out_w, &b->to_add_out_b, "attn.to_add_out"},
        };
        for (size_t k = 0; k < sizeof lin / sizeof lin[0]; k++) {
            table_add(t, lin[k].w, D, D, "%s.%d.%s.weight", p, i, lin[k].name);
            table_add(t, lin[k].b, D, 0, "%s.%d.%s.bias", p, i, lin[k].name);
        }
        table_add(t, &b->norm_q, Dh, 0, "%s.%d.attn.norm_q.weight", p, i);
        table_add(t, &b->norm_k, Dh, 0, "%s.%d.attn.norm_k.weight", p, i);
        table_add(t, &b->norm_added_q, Dh, 0, "%s.%d.attn.norm_added_q.weight", p, i);
        table_add(t, &b->norm_added_k, Dh, 0, "%s.%d.attn.norm_added_k.weight", p, i);
        table_add(t, &b->img_mlp1_w, 4 * D, D, "%s.%d.img_mlp.net.0.proj.weight", p, i);
        table_add(t, &b->img_mlp1_b, 4 * D, 0, "%s.%d.img_mlp.net.0.proj.bias", p, i);
        table_add(t, &b->img_mlp2_w, D, 4 * D, "%s.%d.img_mlp.net.2.weight", p, i);
        table_add(t, &b->img_mlp2_b, D, 0, "%s.%d.img_mlp.net.2.bias", p, i);
        table_add(t, &b->txt_mlp1_w, 4 * D, D, "%s.%d.txt_mlp.net.0.proj.weight", p, i);
        table_add(t, &b->txt_mlp1_b, 4 * D, 0, "%s.%d.txt_mlp.net.0.proj.bias", p, i);
        table_add(t, &b->txt_mlp2_w, D, 4 * D, "%s.%d.txt_mlp.net.2.weight", p, i);
        table_add(t, &b->txt_mlp2_b, D, 0, "%s.%d.txt_mlp.net.2.bias", p, i);
    }
    table_add(t, &w->norm_out_w, 2 * D, D, "norm_out.linear.weight");
    table_add(t, &w->norm_out_b, 2 * D, 0, "norm_out.linear.bias");
    table_add(t, &w->proj_out_w, out, D, "proj_out.weight");
    table_add(t, &w->proj_out_b, out, 0, "proj_out.bias");
}

dit_t *dit_load(const char *folder, nn_ctx_t *ctx, char *err, size_t errlen)
{
    char path[1024];
    dit_t *dit = calloc(1, sizeof *dit);
    dit_table_t table = {0};
    safetensors_t *st = NULL;
    if (!dit) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    dit->ctx = ctx;
    snprintf(path, sizeof path, "%s/config.json", folder);
    if (dit_config_load(&dit->cfg, path, err, errlen) != 0)
        goto fail;
    dit->w.blocks = calloc((size_t)dit->cfg.num_layers, sizeof *dit->w.blocks);
    if (!dit->w.blocks) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    dit_build_table(&dit->cfg, &dit->w, &table);
    if (table.oom) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    size_t total = 0;
    for (size_t i = 0; i < table.n; i++)
        total += (size_t)(table.rows[i].shape[0] * (table.rows[i].ndim == 2 ? table.rows[i].shape[1] : 1));
    /* One allocation for all weights: they live as long as the model, and the size is known. */
    dit->w.storage = aligned_alloc(64, ((total * sizeof(float)) + 63) / 64 * 64);
    if (!dit->w.storage) {
        snprintf(err, errlen, "cannot allocate %zu MiB for the transformer's weights",
                 total * sizeof(float) >> 20);
        goto fail;
    }
    dit->w.n_floats = total;
    st = safetensors_open(folder, err, errlen);
    if (!st)
        goto fail;
    float *next = dit->w.storage;
    for (size_t i = 0; i < table.n; i++) {
        dit_tensor_spec_t *r = &table.rows[i];
        *r->dst = next;
        if (safetensors_read_f32(st, r->name, r->ndim, r->shape, next, err, errlen) != 0)
            goto fail;
        next += r->shape[0] * (r->ndim == 2 ? r->shape[1] : 1);
    }
    /* A checkpoint with tensors we do not know is not the model we think it is. */
    if (safetensors_count(st) != table.n) {
        for (size_t i = 0; i < safetensors_count(st); i++) {
            const st_tensor_t *t = safetensors_at(st, i);
            bool known = false;
            for (size_t k = 0; k < table.n && !known; k++)
                known = strcmp(table.rows[k].name, t->name) == 0;
            if (!known) {
                snprintf(err, errlen, "%s: unexpected tensor %s for a %d-layer transformer",
                         t->file, t->name, dit->cfg.num_layers);
                goto fail;
            }
        }
    }
    safetensors_close(&st);
    free(table.rows);
    return dit;
fail:
    safetensors_close(&st);
    free(table.rows);
    dit_free(&dit);
    return NULL;
}

void dit_free(dit_t **pdit)
{
    dit_t *dit = *pdit;
    if (!dit)
        return;
    free(dit->w.storage);
    free(dit->w.blocks);
    nn_arena_free(&dit->arena);
    free(dit);
    *pdit = NULL;
}

/* ---- rotary embedding --------------------------------------------------------------------- */

/* cos/sin [T, head_dim/2] for the joint sequence [text, image]: QwenEmbedRope with
 * scale_rope. Image token (f, r, c) of image idx sits at (idx + f, r - ceil(h/2),
 * c - ceil(w/2)); text token k at P + k on all three axes, P = max over images of
 * max(h/2, w/2). Angles in float32 as torch.outer and torch.polar compute them. */
static void dit_rope_table(const dit_config_t *c, const dit_input_t *in, float *cos_t,
                           float *sin_t)
{
    int half = c->attention_head_dim / 2;
    float inv[3][512];
    for (int a = 0; a < 3; a++)
        for (int j = 0; j < c->axes_dims_rope[a] / 2; j++)
            inv[a][j] = 1.0f / powf(10000.0f, (float)(2 * j) / (float)c->axes_dims_rope[a]);
    int64_t row = in->txt_len; /* image rows follow the text */
    int max_vid = 0;
    for (int idx = 0; idx < in->n_images; idx++) {
        const dit_image_shape_t *s = &in->images[idx];
        int h_half = s->height / 2, w_half = s->width / 2;
        if (h_half > max_vid)
            max_vid = h_half;
        if (w_half > max_vid)
            max_vid = w_half;
        for (int f = 0; f < s->frames; f++)
            for (int r = 0; r < s->height; r++)
                for (int col = 0; col < s->width; col++, row++) {
                    int pos[3] = {idx + f, r - (s->height - h_half), col - (s->width - w_half)};
                    float *cr = cos_t + row * half, *sr = sin_t + row * half;
                    int k = 0;
                    for (int a = 0; a < 3; a++)
                        for (int j = 0; j < c->axes_dims_rope[a] / 2; j++, k++) {
                            float angle = (float)pos[a] * inv[a][j];
                            cr[k] = cosf(angle);
                            sr[k] = sinf(angle);
                        }
                }
    }
    for (int64_t t = 0; t < in->txt_len; t++) {
        float *cr = cos_t + t * half, *sr = sin_t + t * half;
        int k = 0;
        for (int a = 0; a < 3; a++)
            for (int j = 0; j < c->axes_dims_rope[a] / 2; j++, k++) {
                float angle = (float)(max_vid + t) * inv[a][j];
                cr[k] = cosf(angle);
                sr[k] = sinf(angle);
            }
    }
}

/* ---- forward ---------------------------------------------------------------------------- */

/* Scratch of one sample's forward. */
typedef struct {
    float *x_img, *x_txt;      /* the two streams [S, D], [L, D] */
    float *n_img, *n_txt;      /* normed and modulated [S, D], [L, D] */
    float *q, *k, *v, *att;    /* joint [T, D] */
    float *y_img, *y_txt;      /* projection outputs [S, D], [L, D] */
    float *hidden;             /* MLP hidden [max(S, L), 4D] */
    float *txt_normed;         /* [L, joint_attention_dim] */
    float *temb, *silu_temb, *silu_temb0; /* [D] each; 0: t = 0 for condition images */
    float *img_mod, *img_mod0, *txt_mod;  /* [6D] each */
    float *t_proj, *t_hidden;  /* [256], [D] */
    float *key_mask;           /* [T] */
} dit_scratch_t;

/* x[rows, D] normed, then modulated per token range: tokens [0, n_first) with (shift, scale)
 * and the rest with (shift0, scale0) (zero_cond_t's condition images), into y. */
static void dit_norm_modulate(nn_ctx_t *ctx, const float *x, int64_t rows, int64_t D,
                              int64_t n_first, const float *shift, const float *scale,
                              const float *shift0, const float *scale0, float *y)
{
    nn_layernorm(ctx, x, rows, D, DIT_EPS, y);
    nn_modulate(ctx, y, n_first, D, shift, scale, y);
    if (rows > n_first)
        nn_modulate(ctx, y + n_first * D, rows - n_first, D, shift0, scale0, y + n_first * D);
}

static void dit_gated_add(nn_ctx_t *ctx, float *x, int64_t rows, int64_t D, int64_t n_first,
                          const float *gate, const float *gate0, const float *y)
{
    nn_gated_add(ctx, x, n_first, D, gate, y);
    if (rows > n_first)
        nn_gated_add(ctx, x + n_first * D, rows - n_first, D, gate0, y + n_first * D);
}

/* The timestep embedding: linear_2(silu(linear_1(proj(t)))). */
static void dit_temb(dit_t *dit, dit_scratch_t *s, float t, float *temb)
{
    const dit_weights_t *w = &dit->w;
    int64_t D = dit->cfg.dim;
    nn_timestep_embedding(dit->ctx, &t, 1, DIT_TIME_DIM, 1000.0f, s->t_proj);
    nn_linear(dit->ctx, s->t_proj, 1, DIT_TIME_DIM, w->t_lin1_w, w->t_lin1_b, s->t_hidden, D);
    nn_silu(dit->ctx, s->t_hidden, D);
    nn_linear(dit->ctx, s->t_hidden, 1, D, w->t_lin2_w, w->t_lin2_b, temb, D);
}

static void dit_block(dit_t *dit, const dit_block_t *b, dit_scratch_t *s, int64_t S, int64_t L,
                      int64_t n_first, const float *cos_t, const float *sin_t, bool masked)
{
    nn_ctx_t *ctx = dit->ctx;
    const dit_config_t *c = &dit->cfg;
    int64_t D = c->dim, H = c->num_attention_heads, Dh = c->attention_head_dim, T = L + S;

    /* Modulation: [shift1, scale1, gate1, shift2, scale2, gate2], each [D]. */
    nn_linear(ctx, s->silu_temb, 1, D, b->img_mod_w, b->img_mod_b, s->img_mod, 6 * D);
    nn_linear(ctx, s->silu_temb, 1, D, b->txt_mod_w, b->txt_mod_b, s->txt_mod, 6 * D);
    const float *im0 = s->img_mod;
    if (c->zero_cond_t) {
        nn_linear(ctx, s->silu_temb0, 1, D, b->img_mod_w, b->img_mod_b, s->img_mod0, 6 * D);
        im0 = s->img_mod0;
    }
    const float *im = s->img_mod, *tm = s->txt_mod;

    dit_norm_modulate(ctx, s->x_img, S, D, n_first, im, im + D, im0, im0 + D, s->n_img);
    dit_norm_modulate(ctx, s->x_txt, L, D, L, tm, tm + D, NULL, NULL, s->n_txt);

    /* Joint attention over [text, image]. */
    nn_linear(ctx, s->n_txt, L, D, b->add_q_w, b->add_q_b, s->q, D);
    nn_linear(ctx, s->n_txt, L, D, b->add_k_w, b->add_k_b, s->k, D);
    nn_linear(ctx, s->n_txt, L, D, b->add_v_w, b->add_v_b, s->v, D);
    nn_linear(ctx, s->n_img, S, D, b->to_q_w, b->to_q_b, s->q + L * D, D);
    nn_linear(ctx, s->n_img, S, D, b->to_k_w, b->to_k_b, s->k + L * D, D);
    nn_linear(ctx, s->n_img, S, D, b->to_v_w, b->to_v_b, s->v + L * D, D);
    nn_rmsnorm(ctx, s->q, L * H, Dh, b->norm_added_q, DIT_EPS, s->q);
    nn_rmsnorm(ctx, s->k, L * H, Dh, b->norm_added_k, DIT_EPS, s->k);
    nn_rmsnorm(ctx, s->q + L * D, S * H, Dh, b->norm_q, DIT_EPS, s->q + L * D);
    nn_rmsnorm(ctx, s->k + L * D, S * H, Dh, b->norm_k, DIT_EPS, s->k + L * D);
    nn_rope(ctx, s->q, T, H, Dh, cos_t, sin_t);
    nn_rope(ctx, s->k, T, H, Dh, cos_t, sin_t);
    nn_attention(ctx, s->q, T, s->k, s->v, T, H, Dh, masked ? s->key_mask : NULL,
                 1.0f / sqrtf((float)Dh), s->att);
    nn_linear(ctx, s->att + L * D, S, D, b->to_out_w, b->to_out_b, s->y_img, D);
    nn_linear(ctx, s->att, L, D, b->to_add_out_w, b->to_add_out_b, s->y_txt, D);
    dit_gated_add(ctx, s->x_img, S, D, n_first, im + 2 * D, im0 + 2 * D, s->y_img);
    dit_gated_add(ctx, s->x_txt, L, D, L, tm + 2 * D, NULL, s->y_txt);

    /* Feed-forward: Linear(D, 4D), GELU (tanh), Linear(4D, D), per stream. */
    dit_norm_modulate(ctx, s->x_img, S, D, n_first, im + 3 * D, im + 4 * D, im0 + 3 * D,
                      im0 + 4 * D, s->n_img);
    nn_linear(ctx, s->n_img, S, D, b->img_mlp1_w, b->img_mlp1_b, s->hidden, 4 * D);
    nn_gelu_tanh(ctx, s->hidden, S * 4 * D);
    nn_linear(ctx, s->hidden, S, 4 * D, b->img_mlp2_w, b->img_mlp2_b, s->y_img, D);
    dit_gated_add(ctx, s->x_img, S, D, n_first, im + 5 * D, im0 + 5 * D, s->y_img);

    dit_norm_modulate(ctx, s->x_txt, L, D, L, tm + 3 * D, tm + 4 * D, NULL, NULL, s->n_txt);
    nn_linear(ctx, s->n_txt, L, D, b->txt_mlp1_w, b->txt_mlp1_b, s->hidden, 4 * D);
    nn_gelu_tanh(ctx, s->hidden, L * 4 * D);
    nn_linear(ctx, s->hidden, L, 4 * D, b->txt_mlp2_w, b->txt_mlp2_b, s->y_txt, D);
    dit_gated_add(ctx, s->x_txt, L, D, L, tm + 5 * D, NULL, s->y_txt);
}

int dit_forward(dit_t *dit, const dit_input_t *in, float *out, dit_trace_t *trace, char *err,
                size_t errlen)
{
    const dit_config_t *c = &dit->cfg;
    const dit_weights_t *w = &dit->w;
    nn_ctx_t *ctx = dit->ctx;
    int64_t D = c->dim, S = in->img_len, L = in->txt_len, T = S + L, Dt = c->joint_attention_dim;
    int64_t Dh = c->attention_head_dim, out_ch = (int64_t)c->patch_size * c->patch_size * c->out_channels;

    if (in->batch < 1 || L < 1 || S < 1 || in->n_images < 1 || in->n_images > DIT_MAX_IMAGES) {
        snprintf(err, errlen, "bad forward input: batch %d, %lld image and %lld text tokens, "
                 "%d images", in->batch, (long long)S, (long long)L, in->n_images);
        return -1;
    }
    int64_t tokens = 0;
    for (int i = 0; i < in->n_images; i++) {
        const dit_image_shape_t *sh = &in->images[i];
        if (sh->frames < 1 || sh->height < 1 || sh->width < 1) {
            snprintf(err, errlen, "bad image shape %d: %dx%dx%d", i, sh->frames, sh->height,
                     sh->width);
            return -1;
        }
        tokens += (int64_t)sh->frames * sh->height * sh->width;
    }
    if (tokens != S) {
        snprintf(err, errlen, "the image shapes make %lld tokens, the input has %lld",
                 (long long)tokens, (long long)S);
        return -1;
    }
    /* The first image's tokens take the timestep's modulation, the others t = 0's. */
    int64_t n_first = c->zero_cond_t
        ? (int64_t)in->images[0].frames * in->images[0].height * in->images[0].width : S;

    int64_t hidden_rows = S > L ? S : L;
    size_t floats = (size_t)(2 * S * D + 2 * L * D + 4 * T * D + S * D + L * D +
                             hidden_rows * 4 * D + L * Dt + 3 * D + 18 * D + DIT_TIME_DIM + D +
                             T + T * Dh);
    size_t need = floats * sizeof(float) + 64 * 32;
    nn_arena_t *ap = &dit->arena;
    if (ap->cap < need) {
        nn_arena_free(ap);
        if (nn_arena_init(ap, need) != 0) {
            snprintf(err, errlen, "cannot allocate %zu MiB of activations", need >> 20);
            return -1;
        }
    }
    nn_arena_release(ap, 0);
    dit_scratch_t s = {
        .x_img = nn_arena_f32(ap, (size_t)(S * D)), .x_txt = nn_arena_f32(ap, (size_t)(L * D)),
        .n_img = nn_arena_f32(ap, (size_t)(S * D)), .n_txt = nn_arena_f32(ap, (size_t)(L * D)),
        .q = nn_arena_f32(ap, (size_t)(T * D)), .k = nn_arena_f32(ap, (size_t)(T * D)),
        .v = nn_arena_f32(ap, (size_t)(T * D)), .att = nn_arena_f32(ap, (size_t)(T * D)),
        .y_img = nn_arena_f32(ap, (size_t)(S * D)), .y_txt = nn_arena_f32(ap, (size_t)(L * D)),
        .hidden = nn_arena_f32(ap, (size_t)(hidden_rows * 4 * D)),
        .txt_normed = nn_arena_f32(ap, (size_t)(L * Dt)),
        .temb = nn_arena_f32(ap, (size_t)D), .silu_temb = nn_arena_f32(ap, (size_t)D),
        .silu_temb0 = nn_arena_f32(ap, (size_t)D),
        .img_mod = nn_arena_f32(ap, (size_t)(6 * D)), .img_mod0 = nn_arena_f32(ap, (size_t)(6 * D)),
        .txt_mod = nn_arena_f32(ap, (size_t)(6 * D)),
        .t_proj = nn_arena_f32(ap, DIT_TIME_DIM), .t_hidden = nn_arena_f32(ap, (size_t)D),
        .key_mask = nn_arena_f32(ap, (size_t)T),
    };
    float *cos_t = nn_arena_f32(ap, (size_t)(T * Dh / 2));
    float *sin_t = nn_arena_f32(ap, (size_t)(T * Dh / 2));
    if (!sin_t) {
        snprintf(err, errlen, "activation arena too small (a bug)");
        return -1;
    }
    /* RoPE from the one set of image shapes, as the reference takes img_shapes[0] for it. */
    dit_rope_table(c, in, cos_t, sin_t);

    for (int b = 0; b < in->batch; b++) {
        const float *img = in->img + (size_t)b * S * c->in_channels;
        const float *txt = in->txt + (size_t)b * L * Dt;
        float *o = out + (size_t)b * S * out_ch;

        dit_temb(dit, &s, in->timestep[b], s.temb);
        memcpy(s.silu_temb, s.temb, (size_t)D * sizeof(float));
        nn_silu(ctx, s.silu_temb, D);
        if (c->zero_cond_t) {
            dit_temb(dit, &s, 0.0f, s.silu_temb0);
            nn_silu(ctx, s.silu_temb0, D);
        }
        if (trace && trace->temb)
            memcpy(trace->temb + (size_t)b * D, s.temb, (size_t)D * sizeof(float));

        nn_linear(ctx, img, S, c->in_channels, w->img_in_w, w->img_in_b, s.x_img, D);
        nn_rmsnorm(ctx, txt, L, Dt, w->txt_norm, DIT_EPS, s.txt_normed);
        nn_linear(ctx, s.txt_normed, L, Dt, w->txt_in_w, w->txt_in_b, s.x_txt, D);
        if (trace && trace->img_in)
            memcpy(trace->img_in + (size_t)b * S * D, s.x_img, (size_t)(S * D) * sizeof(float));
        if (trace && trace->txt_in)
            memcpy(trace->txt_in + (size_t)b * L * D, s.x_txt, (size_t)(L * D) * sizeof(float));

        bool masked = in->txt_mask != NULL;
        if (masked) {
            memcpy(s.key_mask, in->txt_mask + (size_t)b * L, (size_t)L * sizeof(float));
            for (int64_t i = L; i < T; i++)
                s.key_mask[i] = 1.0f;
        }
        for (int i = 0; i < c->num_layers; i++) {
            if (nn_stopped(ctx)) {
                snprintf(err, errlen, "stopped");
                return -1;
            }
            dit_block(dit, &w->blocks[i], &s, S, L, n_first, cos_t, sin_t, masked);
            if (trace && trace->block_img && trace->block_img[i])
                memcpy(trace->block_img[i] + (size_t)b * S * D, s.x_img,
                       (size_t)(S * D) * sizeof(float));
            if (trace && trace->block_txt && trace->block_txt[i])
                memcpy(trace->block_txt[i] + (size_t)b * L * D, s.x_txt,
                       (size_t)(L * D) * sizeof(float));
        }

        /* norm_out (AdaLayerNormContinuous): scale first, then shift. */
        nn_linear(ctx, s.silu_temb, 1, D, w->norm_out_w, w->norm_out_b, s.img_mod, 2 * D);
        nn_layernorm(ctx, s.x_img, S, D, DIT_EPS, s.n_img);
        nn_modulate(ctx, s.n_img, S, D, s.img_mod + D, s.img_mod, s.n_img);
        if (trace && trace->norm_out)
            memcpy(trace->norm_out + (size_t)b * S * D, s.n_img, (size_t)(S * D) * sizeof(float));
        nn_linear(ctx, s.n_img, S, D, w->proj_out_w, w->proj_out_b, o, out_ch);
    }
    return 0;
}
