/* qwen_image_vae: Qwen-Image's VAE (see qwen_image_vae.h), following diffusers'
 * autoencoder_kl_qwenimage.py: AutoencoderKLQwenImage (_encode, _decode, tiled_decode,
 * blend_v, blend_h), QwenImageEncoder3d, QwenImageDecoder3d, QwenImageResidualBlock,
 * QwenImageAttentionBlock, QwenImageMidBlock, QwenImageUpBlock, QwenImageResample and
 * QwenImageRMS_norm, for the first (only) frame of a clip. */
#include "nn/qwen_image_vae.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/json_file.h"
#include "nn/safetensors.h"
#include "nn/tensor.h"

#define VAE_NORM_EPS 1e-12f /* F.normalize's default */

/* A convolution's weights. 3x3 kernels are packed for nn_conv2d (a causal 3x3x3 kernel keeps
 * only its last temporal slice, all a first frame sees); 1x1 kernels stay in torch's [out, in]
 * layout and run as nn_linear over the pixels. */
typedef struct {
    float *w, *b;
    int64_t in_c, out_c;
} vae_conv_t;

typedef struct {
    int64_t in_c, out_c;
    float *gamma1, *gamma2;  /* [in_c], [out_c] */
    vae_conv_t conv1, conv2; /* 3x3: in -> out, out -> out */
    vae_conv_t shortcut;     /* 1x1 in -> out when in != out; w NULL otherwise (identity) */
} vae_res_t;

typedef struct {
    int64_t c;
    float *gamma;            /* [c] */
    float *qkv_w, *qkv_b;    /* [3c, c], [3c]: q, k, v in that order */
    float *proj_w, *proj_b;  /* [c, c], [c] */
} vae_attn_t;

typedef struct {
    vae_res_t res0, res1;
    vae_attn_t attn;
} vae_mid_t;

typedef enum { VAE_UP2D, VAE_UP3D, VAE_DOWN2D, VAE_DOWN3D } vae_resample_mode_t;

typedef struct {
    vae_resample_mode_t mode;
    vae_conv_t conv;         /* 3x3: up c -> c/2 after nearest x2; down c -> c, stride 2 */
} vae_resample_t;

/* encoder.down_blocks[j]: a residual block or a downsample, in the reference's flat order. */
typedef struct {
    bool is_res;
    vae_res_t res;
    vae_resample_t resample;
} vae_down_layer_t;

/* decoder.up_blocks[i]: num_res_blocks + 1 residual blocks, then an upsample but in the last. */
typedef struct {
    vae_res_t *res;
    bool has_up;
    vae_resample_t up;
} vae_up_block_t;

typedef struct {
    vae_conv_t conv_in;
    vae_down_layer_t *down;
    int n_down;
    vae_mid_t mid;
    float *norm_out;
    vae_conv_t conv_out;     /* 3x3 -> 2 z_dim */
    vae_conv_t quant;        /* 1x1 2 z_dim -> 2 z_dim */
} vae_encoder_t;

typedef struct {
    vae_conv_t post_quant;   /* 1x1 z_dim -> z_dim */
    vae_conv_t conv_in;
    vae_mid_t mid;
    vae_up_block_t *up;      /* [levels] */
    float *norm_out;
    vae_conv_t conv_out;     /* 3x3 -> input_channels */
} vae_decoder_t;

struct qwen_vae {
    qwen_vae_config_t cfg;
    int parts;
    vae_encoder_t enc;
    vae_decoder_t dec;
    vae_res_t *res_storage;  /* every vae_up_block_t's res points in here */
    float *storage;          /* every weight, one allocation */
    size_t n_floats;
    nn_ctx_t *ctx;
    nn_arena_t arena;        /* activations, kept between calls, grown to the largest */
};

const qwen_vae_config_t *qwen_vae_config(const qwen_vae_t *vae) { return &vae->cfg; }
size_t qwen_vae_weight_bytes(const qwen_vae_t *vae) { return vae->n_floats * sizeof(float); }
size_t qwen_vae_activation_bytes(const qwen_vae_t *vae) { return vae->arena.cap; }

/* Channels of the encoder's levels: dims[i] = base_dim x ([1] + dim_mult)[i], i <= levels. */
static int64_t enc_dim(const qwen_vae_config_t *c, int i)
{
    return (int64_t)c->base_dim * (i == 0 ? 1 : c->dim_mult[i - 1]);
}

/* The decoder's: base_dim x ([dim_mult[-1]] + dim_mult[::-1])[i]. */
static int64_t dec_dim(const qwen_vae_config_t *c, int i)
{
    return (int64_t)c->base_dim *
           (i == 0 ? c->dim_mult[c->levels - 1] : c->dim_mult[c->levels - i]);
}

/* Up block i's input channels: the previous upsample halved them. */
static int64_t dec_in_dim(const qwen_vae_config_t *c, int i)
{
    return i == 0 ? dec_dim(c, 0) : dec_dim(c, i) / 2;
}

/* ---- config.json ------------------------------------------------------------------------- */

static const float real_mean[16] = {-0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f,
                                    -0.1517f, 1.5508f,  0.4134f,  -0.0715f, 0.5517f, -0.3632f,
                                    -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
static const float real_std[16] = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f,
                                   2.6052f, 2.0743f, 3.2687f, 2.1526f, 2.8652f, 1.5579f,
                                   1.6382f, 1.1253f, 2.8251f, 1.9160f};

/* A list of n numbers into out (as float, what torch.tensor(list) makes of them). */
static int float_list(json_t *root, const char *key, int n, bool positive, float *out,
                      const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_array(v) || (int)json_array_size(v) != n) {
        snprintf(err, errlen, "%s: %s must be a list of z_dim = %d numbers", path, key, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        double d = json_is_number(e) ? json_number_value(e) : NAN;
        if (!isfinite(d) || fabs(d) > 1e6 || (positive && !(d > 0))) {
            snprintf(err, errlen, "%s: %s[%d] must be a %snumber", path, key, i,
                     positive ? "positive " : "");
            return -1;
        }
        out[i] = (float)d;
    }
    return 0;
}

int qwen_vae_config_load(qwen_vae_config_t *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_t *root = nn_json_load_object(path, err, errlen);
    if (!root)
        return -1;
    int rc = -1;
    /* AutoencoderKLQwenImage's defaults: the real model */
    c->base_dim = 96;
    c->z_dim = 16;
    c->levels = 4;
    const int mult[4] = {1, 2, 4, 4};
    memcpy(c->dim_mult, mult, sizeof mult);
    c->num_res_blocks = 2;
    c->temporal_down[1] = c->temporal_down[2] = true;
    c->input_channels = 3;
    json_t *cls = json_object_get(root, "_class_name");
    if (cls && (!json_is_string(cls) ||
                strcmp(json_string_value(cls), "AutoencoderKLQwenImage") != 0)) {
        snprintf(err, errlen, "%s: _class_name is %s, not AutoencoderKLQwenImage", path,
                 json_is_string(cls) ? json_string_value(cls) : "not a string");
        goto out;
    }
    if (nn_json_int(root, "base_dim", 1, 4096, &c->base_dim, false, path, err, errlen) ||
        nn_json_int(root, "z_dim", 1, QWEN_VAE_MAX_Z, &c->z_dim, false, path, err, errlen) ||
        nn_json_int(root, "num_res_blocks", 1, 64, &c->num_res_blocks, false, path, err,
                    errlen) ||
        nn_json_int(root, "input_channels", 3, 3, &c->input_channels, false, path, err,
                    errlen)) /* the API's images are 3 planes (RGB): qwen_vae_postprocess */
        goto out;
    json_t *dm = json_object_get(root, "dim_mult");
    if (dm) {
        if (!json_is_array(dm) || json_array_size(dm) < 1 ||
            json_array_size(dm) > QWEN_VAE_MAX_LEVELS) {
            snprintf(err, errlen, "%s: dim_mult must be a list of 1..%d integers", path,
                     QWEN_VAE_MAX_LEVELS);
            goto out;
        }
        c->levels = (int)json_array_size(dm);
        for (int i = 0; i < c->levels; i++) {
            json_t *e = json_array_get(dm, (size_t)i);
            if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 64) {
                snprintf(err, errlen, "%s: dim_mult[%d] must be an integer in 1..64", path, i);
                goto out;
            }
            c->dim_mult[i] = (int)json_integer_value(e);
        }
    }
    json_t *td = json_object_get(root, "temperal_downsample");
    if (td || dm) { /* the default list has 3 entries: a dim_mult of other length needs one */
        if (!json_is_array(td) || (int)json_array_size(td) != c->levels - 1) {
            snprintf(err, errlen, "%s: temperal_downsample must be a list of len(dim_mult) - 1 "
                     "= %d booleans", path, c->levels - 1);
            goto out;
        }
        for (int i = 0; i < c->levels - 1; i++) {
            json_t *e = json_array_get(td, (size_t)i);
            if (!json_is_boolean(e)) {
                snprintf(err, errlen, "%s: temperal_downsample[%d] must be true or false", path, i);
                goto out;
            }
            c->temporal_down[i] = json_is_true(e);
        }
    }
    json_t *attn = json_object_get(root, "attn_scales");
    if (attn && !(json_is_array(attn) && json_array_size(attn) == 0)) {
        snprintf(err, errlen, "%s: attn_scales other than [] is not supported", path);
        goto out;
    }
    if (json_object_get(root, "latents_mean") || c->z_dim != 16) {
        if (float_list(root, "latents_mean", c->z_dim, false, c->latents_mean, path, err, errlen))
            goto out;
    } else {
        memcpy(c->latents_mean, real_mean, sizeof real_mean);
    }
    if (json_object_get(root, "latents_std") || c->z_dim != 16) {
        if (float_list(root, "latents_std", c->z_dim, true, c->latents_std, path, err, errlen))
            goto out;
    } else {
        memcpy(c->latents_std, real_std, sizeof real_std);
    }
    int64_t widest = 0;
    for (int i = 0; i < c->levels; i++)
        if ((int64_t)c->base_dim * c->dim_mult[i] > widest)
            widest = (int64_t)c->base_dim * c->dim_mult[i];
    /* the convolution kernel's input limit, and the mid block's single attention head */
    if (widest > NN_CONV2D_MAX_IN_C / 2) {
        snprintf(err, errlen, "%s: base_dim x dim_mult reaches %lld channels; at most %d are "
                 "supported", path, (long long)widest, NN_CONV2D_MAX_IN_C / 2);
        goto out;
    }
    if (dec_dim(c, 0) > NN_ATTENTION_MAX_HEAD_DIM) {
        snprintf(err, errlen, "%s: the mid block's attention is %lld channels wide; at most %d "
                 "are supported", path, (long long)dec_dim(c, 0), NN_ATTENTION_MAX_HEAD_DIM);
        goto out;
    }
    for (int i = 1; i < c->levels; i++)
        if (dec_dim(c, i) % 2) {
            snprintf(err, errlen, "%s: the decoder's upsample halves %lld channels: they must "
                     "be even", path, (long long)dec_dim(c, i));
            goto out;
        }
    c->spatial_factor = 1 << (c->levels - 1);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- weights ----------------------------------------------------------------------------- */

typedef enum {
    ROW_VEC,      /* a norm's gamma or a bias: [C] (stored [C,1,1,1] or [C,1,1] for gammas) */
    ROW_LINEAR,   /* a 1x1(x1) kernel: kept as [out, in] */
    ROW_CONV3D,   /* a causal 3x3x3 kernel: the last temporal slice, packed */
    ROW_CONV2D,   /* a 3x3 kernel, packed */
    ROW_UNUSED,   /* time_conv: checked, not kept (a first frame never runs it) */
} vae_row_kind_t;

typedef struct {
    char name[128];
    vae_row_kind_t kind;
    int ndim;
    int64_t shape[5];
    float **dst;
    bool load;    /* in a part being loaded; otherwise only known */
} vae_row_t;

typedef struct {
    vae_row_t *rows;
    size_t n, cap;
    bool oom, load;
} vae_table_t;

static void row_add(vae_table_t *t, vae_row_kind_t kind, float **dst, int ndim,
                    const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void row_add(vae_table_t *t, vae_row_kind_t kind, float **dst, int ndim,
                    const int64_t *shape, const char *fmt, ...)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 128;
        vae_row_t *rows = realloc(t->rows, cap * sizeof *rows);
        if (!rows) {
            t->oom = true;
            return;
        }
        t->rows = rows;
        t->cap = cap;
    }
    vae_row_t *r = &t->rows[t->n++];
    memset(r, 0, sizeof *r);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->name, sizeof r->name, fmt, ap);
    va_end(ap);
    r->kind = kind;
    r->ndim = ndim;
    memcpy(r->shape, shape, (size_t)ndim * sizeof *shape);
    r->dst = dst;
    r->load = t->load;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define ROW(t, kind, dst, name_fmt, ...)                                                     \
    row_add(t, kind, dst, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), "%s" name_fmt, prefix)

/* A causal conv3d: weight [out, in, k, k, k] and bias. */
static void conv3d_rows(vae_table_t *t, vae_conv_t *cv, int64_t in, int64_t out, int k,
                        const char *prefix)
{
    cv->in_c = in;
    cv->out_c = out;
    if (k == 1)
        ROW(t, ROW_LINEAR, &cv->w, ".weight", out, in, 1, 1, 1);
    else
        ROW(t, ROW_CONV3D, &cv->w, ".weight", out, in, 3, 3, 3);
    ROW(t, ROW_VEC, &cv->b, ".bias", out);
}

static void res_rows(vae_table_t *t, vae_res_t *r, int64_t in, int64_t out, const char *p)
{
    char prefix[112];
    r->in_c = in;
    r->out_c = out;
    snprintf(prefix, sizeof prefix, "%s.norm1", p);
    ROW(t, ROW_VEC, &r->gamma1, ".gamma", in, 1, 1, 1);
    snprintf(prefix, sizeof prefix, "%s.conv1", p);
    conv3d_rows(t, &r->conv1, in, out, 3, prefix);
    snprintf(prefix, sizeof prefix, "%s.norm2", p);
    ROW(t, ROW_VEC, &r->gamma2, ".gamma", out, 1, 1, 1);
    snprintf(prefix, sizeof prefix, "%s.conv2", p);
    conv3d_rows(t, &r->conv2, out, out, 3, prefix);
    if (in != out) {
        snprintf(prefix, sizeof prefix, "%s.conv_shortcut", p);
        conv3d_rows(t, &r->shortcut, in, out, 1, prefix);
    }
}

static void attn_rows(vae_table_t *t, vae_attn_t *a, int64_t c, const char *prefix)
{
    a->c = c;
    ROW(t, ROW_VEC, &a->gamma, ".norm.gamma", c, 1, 1);
    ROW(t, ROW_LINEAR, &a->qkv_w, ".to_qkv.weight", 3 * c, c, 1, 1);
    ROW(t, ROW_VEC, &a->qkv_b, ".to_qkv.bias", 3 * c);
    ROW(t, ROW_LINEAR, &a->proj_w, ".proj.weight", c, c, 1, 1);
    ROW(t, ROW_VEC, &a->proj_b, ".proj.bias", c);
}

static void mid_rows(vae_table_t *t, vae_mid_t *m, int64_t c, const char *p)
{
    char prefix[112];
    snprintf(prefix, sizeof prefix, "%s.resnets.0", p);
    res_rows(t, &m->res0, c, c, prefix);
    snprintf(prefix, sizeof prefix, "%s.attentions.0", p);
    attn_rows(t, &m->attn, c, prefix);
    snprintf(prefix, sizeof prefix, "%s.resnets.1", p);
    res_rows(t, &m->res1, c, c, prefix);
}

/* The resample's 2D conv, and time_conv for the 3D modes (its shape: [c, c, 3, 1, 1] down,
 * [2c, c, 3, 1, 1] up). */
static void resample_rows(vae_table_t *t, vae_resample_t *rs, vae_resample_mode_t mode,
                          int64_t c, const char *prefix)
{
    bool up = mode == VAE_UP2D || mode == VAE_UP3D;
    int64_t out = up ? c / 2 : c;
    rs->mode = mode;
    rs->conv.in_c = c;
    rs->conv.out_c = out;
    ROW(t, ROW_CONV2D, &rs->conv.w, ".resample.1.weight", out, c, 3, 3);
    ROW(t, ROW_VEC, &rs->conv.b, ".resample.1.bias", out);
    if (mode == VAE_UP3D || mode == VAE_DOWN3D) {
        int64_t tc = mode == VAE_UP3D ? 2 * c : c;
        ROW(t, ROW_UNUSED, NULL, ".time_conv.weight", tc, c, 3, 1, 1);
        ROW(t, ROW_UNUSED, NULL, ".time_conv.bias", tc);
    }
}

/* Every tensor of the checkpoint, as diffusers names them; rows of the parts not loaded are
 * known (so that the file's other half is no surprise) but not kept. */
static void vae_build_table(qwen_vae_t *vae, vae_table_t *t)
{
    const qwen_vae_config_t *c = &vae->cfg;
    const char *prefix;
    char p[112];

    t->load = (vae->parts & QWEN_VAE_ENCODER) != 0;
    vae_encoder_t *e = &vae->enc;
    prefix = "encoder.conv_in";
    conv3d_rows(t, &e->conv_in, c->input_channels, enc_dim(c, 0), 3, prefix);
    int j = 0;
    for (int i = 0; i < c->levels; i++) {
        int64_t in = enc_dim(c, i), out = enc_dim(c, i + 1);
        for (int r = 0; r < c->num_res_blocks; r++, j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d", j);
            e->down[j].is_res = true;
            res_rows(t, &e->down[j].res, in, out, p);
            in = out;
        }
        if (i != c->levels - 1) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d", j);
            resample_rows(t, &e->down[j].resample, c->temporal_down[i] ? VAE_DOWN3D : VAE_DOWN2D,
                          out, p);
            j++;
        }
    }
    e->n_down = j;
    int64_t top = enc_dim(c, c->levels);
    mid_rows(t, &e->mid, top, "encoder.mid_block");
    prefix = "encoder.norm_out";
    ROW(t, ROW_VEC, &e->norm_out, ".gamma", top, 1, 1, 1);
    prefix = "encoder.conv_out";
    conv3d_rows(t, &e->conv_out, top, 2 * c->z_dim, 3, prefix);
    prefix = "quant_conv";
    conv3d_rows(t, &e->quant, 2 * c->z_dim, 2 * c->z_dim, 1, prefix);

    t->load = (vae->parts & QWEN_VAE_DECODER) != 0;
    vae_decoder_t *d = &vae->dec;
    prefix = "post_quant_conv";
    conv3d_rows(t, &d->post_quant, c->z_dim, c->z_dim, 1, prefix);
    prefix = "decoder.conv_in";
    conv3d_rows(t, &d->conv_in, c->z_dim, dec_dim(c, 0), 3, prefix);
    mid_rows(t, &d->mid, dec_dim(c, 0), "decoder.mid_block");
    for (int i = 0; i < c->levels; i++) {
        vae_up_block_t *ub = &d->up[i];
        int64_t in = dec_in_dim(c, i), out = dec_dim(c, i + 1);
        for (int r = 0; r <= c->num_res_blocks; r++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, r);
            res_rows(t, &ub->res[r], in, out, p);
            in = out;
        }
        ub->has_up = i != c->levels - 1;
        if (ub->has_up) {
            /* the decoder's temporal flags are the encoder's reversed */
            bool t3d = c->temporal_down[c->levels - 2 - i];
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0", i);
            resample_rows(t, &ub->up, t3d ? VAE_UP3D : VAE_UP2D, out, p);
        }
    }
    int64_t last = dec_dim(c, c->levels);
    prefix = "decoder.norm_out";
    ROW(t, ROW_VEC, &d->norm_out, ".gamma", last, 1, 1, 1);
    prefix = "decoder.conv_out";
    conv3d_rows(t, &d->conv_out, last, c->input_channels, 3, prefix);
}

/* Floats a row takes in storage, a multiple of 16 (rows start 64-byte aligned). */
static size_t row_floats(nn_ctx_t *ctx, const vae_row_t *r)
{
    size_t n;
    switch (r->kind) {
    case ROW_CONV3D:
    case ROW_CONV2D:
        n = nn_conv2d_packed_floats(ctx, r->shape[0], r->shape[1], 3);
        break;
    case ROW_UNUSED:
        return 0;
    default:
        n = (size_t)nn_numel(r->ndim, r->shape);
    }
    return (n + 15) / 16 * 16;
}

/* The row's tensor from the file into dst, as the forward wants it; tmp holds the file's
 * tensor and, for 3D kernels, the 2D slice after it. */
static int load_row(qwen_vae_t *vae, const safetensors_t *st, const vae_row_t *r, float *tmp,
                    float *dst, char *err, size_t errlen)
{
    if (safetensors_read_f32(st, r->name, r->ndim, r->shape, tmp, err, errlen) != 0)
        return -1;
    const int64_t n = nn_numel(r->ndim, r->shape);
    switch (r->kind) {
    case ROW_VEC:
    case ROW_LINEAR:
        memcpy(dst, tmp, (size_t)n * sizeof(float));
        break;
    case ROW_CONV3D: {
        /* [out, in, kt, kh, kw] -> [out, in, kh, kw] at kt = 2: the only slice a frame with an
         * empty cache meets (the two before it see the zero frames in front) */
        const int64_t oi = r->shape[0] * r->shape[1];
        float *slice = tmp + n;
        for (int64_t k = 0; k < oi; k++)
            memcpy(slice + k * 9, tmp + k * 27 + 18, 9 * sizeof(float));
        nn_conv2d_pack(vae->ctx, slice, r->shape[0], r->shape[1], 3, dst);
        break;
    }
    case ROW_CONV2D:
        nn_conv2d_pack(vae->ctx, tmp, r->shape[0], r->shape[1], 3, dst);
        break;
    case ROW_UNUSED:
        break;
    }
    return 0;
}

qwen_vae_t *qwen_vae_load(const char *folder, nn_ctx_t *ctx, int parts, char *err,
                          size_t errlen)
{
    char path[1024];
    vae_table_t table = {0};
    safetensors_t *st = NULL;
    float *tmp = NULL;
    qwen_vae_t *vae = calloc(1, sizeof *vae);
    if (!vae) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vae->ctx = ctx;
    vae->parts = parts & QWEN_VAE_BOTH;
    if (!vae->parts) {
        snprintf(err, errlen, "qwen_vae_load: no part to load");
        goto fail;
    }
    if (!nn_supports(ctx, NN_OP_CONV2D) || !nn_supports(ctx, NN_OP_L2NORM) ||
        !nn_supports(ctx, NN_OP_LINEAR) || !nn_supports(ctx, NN_OP_ATTENTION) ||
        !nn_supports(ctx, NN_OP_GATED_ADD)) {
        snprintf(err, errlen, "the %s backend lacks an op the VAE needs", ctx->backend->name);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/config.json", folder);
    if (qwen_vae_config_load(&vae->cfg, path, err, errlen) != 0)
        goto fail;
    const qwen_vae_config_t *c = &vae->cfg;
    int n_down = c->levels * c->num_res_blocks + c->levels - 1;
    vae->enc.down = calloc((size_t)n_down, sizeof *vae->enc.down);
    vae->dec.up = calloc((size_t)c->levels, sizeof *vae->dec.up);
    vae->res_storage = calloc((size_t)(c->levels * (c->num_res_blocks + 1)),
                              sizeof *vae->res_storage);
    if (!vae->enc.down || !vae->dec.up || !vae->res_storage) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->levels; i++)
        vae->dec.up[i].res = vae->res_storage + i * (c->num_res_blocks + 1);
    vae_build_table(vae, &table);
    if (table.oom) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    size_t total = 0, tmp_floats = 0;
    for (size_t i = 0; i < table.n; i++) {
        const vae_row_t *r = &table.rows[i];
        if (r->load)
            total += row_floats(ctx, r);
        size_t n = (size_t)nn_numel(r->ndim, r->shape);
        if (r->kind == ROW_CONV3D)
            n += n / 3; /* and the slice */
        if (n > tmp_floats)
            tmp_floats = n;
    }
    vae->storage = aligned_alloc(64, total * sizeof(float) + 64);
    tmp = malloc(tmp_floats * sizeof(float));
    if (!vae->storage || !tmp) {
        snprintf(err, errlen, "cannot allocate %zu MiB for the VAE's weights",
                 (total + tmp_floats) * sizeof(float) >> 20);
        goto fail;
    }
    vae->n_floats = total;
    st = safetensors_open(folder, err, errlen);
    if (!st)
        goto fail;
    float *next = vae->storage;
    for (size_t i = 0; i < table.n; i++) {
        const vae_row_t *r = &table.rows[i];
        if (!r->load) {
            /* the other half is checked for presence only: a decoder-only load must not
             * fail on an encoder it will never run, nor pay for converting it */
            if (!safetensors_find(st, r->name)) {
                snprintf(err, errlen, "%s: no tensor %s", folder, r->name);
                goto fail;
            }
            continue;
        }
        if (r->kind != ROW_UNUSED)
            *r->dst = next;
        if (load_row(vae, st, r, tmp, next, err, errlen) != 0)
            goto fail;
        next += row_floats(ctx, r);
    }
    /* A checkpoint with tensors we do not know is not the model we think it is. */
    if (safetensors_count(st) != table.n) {
        for (size_t i = 0; i < safetensors_count(st); i++) {
            const st_tensor_t *t = safetensors_at(st, i);
            bool known = false;
            for (size_t k = 0; k < table.n && !known; k++)
                known = strcmp(table.rows[k].name, t->name) == 0;
            if (!known) {
                snprintf(err, errlen, "%s: unexpected tensor %s for a VAE of %d levels with %d "
                         "residual blocks each", t->file, t->name, c->levels, c->num_res_blocks);
                goto fail;
            }
        }
        snprintf(err, errlen, "%s: %zu tensors, expected %zu", folder, safetensors_count(st),
                 table.n);
        goto fail;
    }
    safetensors_close(&st);
    free(table.rows);
    free(tmp);
    return vae;
fail:
    safetensors_close(&st);
    free(table.rows);
    free(tmp);
    qwen_vae_free(&vae);
    return NULL;
}

void qwen_vae_free(qwen_vae_t **pvae)
{
    qwen_vae_t *vae = *pvae;
    if (!vae)
        return;
    free(vae->storage);
    free(vae->enc.down);
    free(vae->dec.up);
    free(vae->res_storage);
    nn_arena_free(&vae->arena);
    free(vae);
    *pvae = NULL;
}

/* ---- sizes ------------------------------------------------------------------------------- */

/* The downsample's output: ZeroPad2d((0, 1, 0, 1)) then a 3x3 convolution at stride 2. */
static int64_t down_size(int64_t n) { return n >= 2 ? (n - 2) / 2 + 1 : 0; }

int qwen_vae_latent_size(const qwen_vae_config_t *c, int height, int width, int *h, int *w)
{
    if (height < 1 || width < 1 || height > QWEN_VAE_MAX_SIDE || width > QWEN_VAE_MAX_SIDE)
        return -1;
    int64_t y = height, x = width;
    for (int i = 0; i < c->levels - 1; i++) {
        y = down_size(y);
        x = down_size(x);
        if (y < 1 || x < 1)
            return -1;
    }
    *h = (int)y;
    *w = (int)x;
    return 0;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The largest activation (channels x pixels) of a decode from h x w latents. */
static int64_t decode_span(const qwen_vae_config_t *c, int64_t h, int64_t w)
{
    int64_t n = h * w, s = max64((int64_t)c->z_dim, dec_dim(c, 0)) * n;
    for (int i = 0; i < c->levels; i++) {
        s = max64(s, max64(dec_in_dim(c, i), dec_dim(c, i + 1)) * n);
        if (i != c->levels - 1) {
            n *= 4;
            s = max64(s, dec_dim(c, i + 1) / 2 * n);
        }
    }
    return max64(s, (int64_t)c->input_channels * n);
}

/* The largest activation of an encode of an H x W image. */
static int64_t encode_span(const qwen_vae_config_t *c, int64_t hh, int64_t ww)
{
    int64_t s = max64(c->input_channels, enc_dim(c, 0)) * hh * ww;
    for (int i = 0; i < c->levels; i++) {
        s = max64(s, max64(enc_dim(c, i), enc_dim(c, i + 1)) * hh * ww);
        if (i != c->levels - 1) {
            hh = down_size(hh);
            ww = down_size(ww);
        }
    }
    return max64(s, 2 * (int64_t)c->z_dim * hh * ww);
}

/* ---- forward ----------------------------------------------------------------------------- */

/* The activation and two scratch buffers of the same size (three: a residual block holds its
 * input for the sum while its two convolutions need an input and an output), and the
 * attention's q, k, v. The blocks hand the activation on by swapping pointers. */
typedef struct {
    float *x, *s1, *s2;
    float *q, *k, *v;
    const qwen_vae_trace_t *trace;
} vae_bufs_t;

static void swap(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

static void trace_at(const vae_bufs_t *b, const char *name, const float *x, int64_t ch,
                     int64_t h, int64_t w)
{
    if (b->trace && b->trace->fn)
        b->trace->fn(b->trace->user, name, x, ch, h, w);
}

/* Between blocks: true, with err, when the caller asked the call to stop (nn_ctx_t.stop). */
static bool vae_stopped(nn_ctx_t *ctx, char *err, size_t errlen)
{
    if (!nn_stopped(ctx))
        return false;
    snprintf(err, errlen, "stopped");
    return true;
}

/* A causal 3x3x3 convolution (QwenImageCausalConv3d, padding 1) of the first frame: with an
 * empty cache the reference pads two zero frames in front, so only the last temporal slice
 * meets data and this is its 2D convolution, zero-padded by 1.
 *
 * Video would enter here: frame t > 0 adds the same convolution of the cached frames t-2 and
 * t-1 with slices 0 and 1 (nn_conv2d with y as the residual accumulates them), the cache
 * being each conv's input of the last two frames as the reference's feat_cache keeps it;
 * load_row would then keep all three slices, and the resamples' time_conv would run. */
static void vae_causal_conv(nn_ctx_t *ctx, const vae_conv_t *cv, const float *x, int64_t h,
                            int64_t w, const float *residual, float *y)
{
    const nn_conv2d_t p = {.in_h = h, .in_w = w, .in_c = cv->in_c, .out_c = cv->out_c,
                           .kernel = 3, .stride = 1, .upsample = 1,
                           .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1};
    nn_conv2d(ctx, &p, x, cv->w, cv->b, residual, y);
}

/* QwenImageResidualBlock: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))). */
static void vae_res(nn_ctx_t *ctx, const vae_res_t *r, vae_bufs_t *b, int64_t h, int64_t w)
{
    const int64_t n = h * w;
    nn_l2norm(ctx, b->x, n, r->in_c, r->gamma1, sqrtf((float)r->in_c), VAE_NORM_EPS, true,
              b->s1);
    vae_causal_conv(ctx, &r->conv1, b->s1, h, w, NULL, b->s2);
    nn_l2norm(ctx, b->s2, n, r->out_c, r->gamma2, sqrtf((float)r->out_c), VAE_NORM_EPS, true,
              b->s2);
    if (r->shortcut.w) {
        /* s1 is free again: the projected input goes there and the sum lands on it */
        nn_linear(ctx, b->x, n, r->in_c, r->shortcut.w, r->shortcut.b, b->s1, r->out_c);
        vae_causal_conv(ctx, &r->conv2, b->s2, h, w, b->s1, b->s1);
        swap(&b->x, &b->s1);
    } else {
        vae_causal_conv(ctx, &r->conv2, b->s2, h, w, b->x, b->x);
    }
}

/* QwenImageAttentionBlock: one head over the frame's pixels, x + proj(attention(q, k, v))
 * with q, k, v the thirds of to_qkv(norm(x)), scale 1/sqrt(c). */
static void vae_attn(nn_ctx_t *ctx, const vae_attn_t *a, vae_bufs_t *b, int64_t n)
{
    const int64_t c = a->c;
    nn_l2norm(ctx, b->x, n, c, a->gamma, sqrtf((float)c), VAE_NORM_EPS, false, b->s1);
    nn_linear(ctx, b->s1, n, c, a->qkv_w, a->qkv_b, b->q, c);
    nn_linear(ctx, b->s1, n, c, a->qkv_w + c * c, a->qkv_b + c, b->k, c);
    nn_linear(ctx, b->s1, n, c, a->qkv_w + 2 * c * c, a->qkv_b + 2 * c, b->v, c);
    /* torch's sdpa: 1 / sqrt(E) in double, applied in float */
    nn_attention(ctx, b->q, n, b->k, b->v, n, 1, c, NULL, (float)(1.0 / sqrt((double)c)),
                 b->s1);
    nn_linear(ctx, b->s1, n, c, a->proj_w, a->proj_b, b->s2, c);
    nn_gated_add(ctx, b->x, n, c, NULL, b->s2);
}

static void vae_mid(nn_ctx_t *ctx, const vae_mid_t *m, vae_bufs_t *b, int64_t h, int64_t w)
{
    vae_res(ctx, &m->res0, b, h, w);
    vae_attn(ctx, &m->attn, b, h * w);
    vae_res(ctx, &m->res1, b, h, w);
}

/* QwenImageResample on a first frame: up = nearest x2 then 3x3 (c -> c/2), fused into one
 * convolution that reads each input pixel for its 2x2 block; down = ZeroPad2d((0, 1, 0, 1))
 * then 3x3 at stride 2. time_conv does not run for the first frame (the reference marks the
 * cache "Rep" for up3d, stores the frame for down3d). */
static void vae_resample(nn_ctx_t *ctx, const vae_resample_t *rs, vae_bufs_t *b, int64_t *h,
                         int64_t *w)
{
    bool up = rs->mode == VAE_UP2D || rs->mode == VAE_UP3D;
    nn_conv2d_t p = {.in_h = *h, .in_w = *w, .in_c = rs->conv.in_c, .out_c = rs->conv.out_c,
                     .kernel = 3, .stride = up ? 1 : 2, .upsample = up ? 2 : 1};
    if (up)
        p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    else
        p.pad_bottom = p.pad_right = 1;
    nn_conv2d(ctx, &p, b->x, rs->conv.w, rs->conv.b, NULL, b->s1);
    swap(&b->x, &b->s1);
    *h = nn_conv2d_out_h(&p);
    *w = nn_conv2d_out_w(&p);
}

/* Makes room for three activations of `span` floats and the attention's q, k, v of `attn`
 * floats each. */
static int vae_bufs(qwen_vae_t *vae, int64_t span, int64_t attn, vae_bufs_t *b,
                    const qwen_vae_trace_t *trace, char *err, size_t errlen)
{
    const size_t align = 64 / sizeof(float);
    size_t s = ((size_t)span + align - 1) / align * align;
    size_t a = ((size_t)attn + align - 1) / align * align;
    size_t need = (3 * s + 3 * a) * sizeof(float);
    nn_arena_t *ar = &vae->arena;
    if (ar->cap < need) {
        nn_arena_free(ar);
        if (nn_arena_init(ar, need) != 0) {
            snprintf(err, errlen, "cannot allocate %zu MiB of VAE activations", need >> 20);
            return -1;
        }
    }
    nn_arena_release(ar, 0);
    b->x = nn_arena_f32(ar, s);
    b->s1 = nn_arena_f32(ar, s);
    b->s2 = nn_arena_f32(ar, s);
    b->q = nn_arena_f32(ar, a);
    b->k = nn_arena_f32(ar, a);
    b->v = nn_arena_f32(ar, a);
    b->trace = trace;
    if (!b->v) {
        snprintf(err, errlen, "VAE activation arena too small (a bug)");
        return -1;
    }
    return 0;
}

/* [c, n] planar -> [n, c] pixel-major, and back. The API's arrays are the reference's layout;
 * these two are the only transposes, at the edges, and with the output's clamp and the trace
 * the only places where this file touches activation memory itself: on a device backend they
 * become the upload and the download (transposing copies), everything between is ops. */
static void planar_to_pixels(const float *src, int64_t c, int64_t n, float *dst)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++)
            dst[i * c + k] = src[k * n + i];
}

static void pixels_to_planar(const float *src, int64_t c_src, int64_t c, int64_t n, float *dst)
{
    for (int64_t k = 0; k < c; k++)
        for (int64_t i = 0; i < n; i++)
            dst[k * n + i] = src[i * c_src + k];
}

/* AutoencoderKLQwenImage._decode of one frame: z [z_dim, h, w] -> image [3, 8h, 8w]. */
static int vae_decode_frame(qwen_vae_t *vae, const float *z, int64_t h, int64_t w, bool clamp,
                            float *image, const qwen_vae_trace_t *trace, char *err,
                            size_t errlen)
{
    const qwen_vae_config_t *c = &vae->cfg;
    const vae_decoder_t *d = &vae->dec;
    nn_ctx_t *ctx = vae->ctx;
    vae_bufs_t b;
    if (vae_bufs(vae, decode_span(c, h, w), dec_dim(c, 0) * h * w, &b, trace, err, errlen) != 0)
        return -1;
    const int64_t zc = c->z_dim;
    planar_to_pixels(z, zc, h * w, b.s1);
    nn_linear(ctx, b.s1, h * w, zc, d->post_quant.w, d->post_quant.b, b.x, zc);
    trace_at(&b, "post_quant_conv", b.x, zc, h, w);
    vae_causal_conv(ctx, &d->conv_in, b.x, h, w, NULL, b.s1);
    swap(&b.x, &b.s1);
    trace_at(&b, "decoder.conv_in", b.x, dec_dim(c, 0), h, w);
    vae_mid(ctx, &d->mid, &b, h, w);
    trace_at(&b, "decoder.mid_block", b.x, dec_dim(c, 0), h, w);
    int64_t ch = dec_dim(c, 0);
    for (int i = 0; i < c->levels; i++) {
        const vae_up_block_t *ub = &d->up[i];
        for (int r = 0; r <= c->num_res_blocks; r++) {
            if (vae_stopped(ctx, err, errlen))
                return -1;
            vae_res(ctx, &ub->res[r], &b, h, w);
        }
        ch = dec_dim(c, i + 1);
        if (ub->has_up) {
            vae_resample(ctx, &ub->up, &b, &h, &w);
            ch /= 2;
        }
        char name[64];
        snprintf(name, sizeof name, "decoder.up_blocks.%d", i);
        trace_at(&b, name, b.x, ch, h, w);
    }
    nn_l2norm(ctx, b.x, h * w, ch, d->norm_out, sqrtf((float)ch), VAE_NORM_EPS, true, b.s1);
    vae_causal_conv(ctx, &d->conv_out, b.s1, h, w, NULL, b.s2);
    const int64_t oc = c->input_channels, n = h * w;
    trace_at(&b, "decoder", b.s2, oc, h, w);
    pixels_to_planar(b.s2, oc, oc, n, image);
    if (clamp)
        for (int64_t i = 0; i < oc * n; i++) /* torch.clamp: NaN stays NaN */
            image[i] = image[i] < -1.0f ? -1.0f : image[i] > 1.0f ? 1.0f : image[i];
    return 0;
}

void qwen_vae_tiling_default(qwen_vae_tiling_t *t)
{
    t->max_pixels = 2048 * 1024;
    t->tile_height = t->tile_width = 256;
    t->stride_height = t->stride_width = 192;
}

/* blend_v / blend_h: the first e rows (columns) of b fade in over the last e of a, with
 * weights 1 - y/e and y/e computed in double and rounded to float (torch's python scalars),
 * each product rounded before the sum. a and b are [ch, *, *] planar. */
static void blend_rows(const float *a, int64_t ah, float *b, int64_t bh, int64_t wd, int64_t ch,
                       int64_t extent)
{
    int64_t e = ah < bh ? ah : bh;
    e = e < extent ? e : extent;
    for (int64_t k = 0; k < ch; k++)
        for (int64_t y = 0; y < e; y++) {
            const float wa = (float)(1.0 - (double)y / (double)e);
            const float wb = (float)((double)y / (double)e);
            const float *ar = a + (k * ah + ah - e + y) * wd;
            float *br = b + (k * bh + y) * wd;
            for (int64_t x = 0; x < wd; x++) {
                float pa = ar[x] * wa;
                float pb = br[x] * wb;
                br[x] = pa + pb;
            }
        }
}

static void blend_cols(const float *a, int64_t aw, float *b, int64_t bw, int64_t hg, int64_t ch,
                       int64_t extent)
{
    int64_t e = aw < bw ? aw : bw;
    e = e < extent ? e : extent;
    for (int64_t x = 0; x < e; x++) {
        const float wa = (float)(1.0 - (double)x / (double)e);
        const float wb = (float)((double)x / (double)e);
        for (int64_t k = 0; k < ch; k++)
            for (int64_t y = 0; y < hg; y++) {
                float pa = a[(k * hg + y) * aw + aw - e + x] * wa;
                float pb = b[(k * hg + y) * bw + x] * wb;
                b[(k * hg + y) * bw + x] = pa + pb;
            }
    }
}

/* AutoencoderKLQwenImage.tiled_decode: tiles of tile x tile pixels every stride pixels, each
 * decoded alone from its latents (zero padding at its own edges, as the reference slices z),
 * each blended with the already blended tiles above and to its left, then cut to stride x
 * stride and laid side by side. Two rows of tiles are kept, not all of them. */
static int vae_decode_tiled(qwen_vae_t *vae, const float *z, int64_t h, int64_t w,
                            const qwen_vae_tiling_t *t, float *image, char *err, size_t errlen)
{
    const qwen_vae_config_t *c = &vae->cfg;
    const int64_t sf = c->spatial_factor, zc = c->z_dim, oc = c->input_channels;
    const int64_t lat_th = t->tile_height / sf, lat_tw = t->tile_width / sf;
    const int64_t lat_sh = t->stride_height / sf, lat_sw = t->stride_width / sf;
    const int64_t blend_h = t->tile_height - t->stride_height;
    const int64_t blend_w = t->tile_width - t->stride_width;
    const int64_t H = h * sf, W = w * sf;
    const int64_t rows = (h + lat_sh - 1) / lat_sh, cols = (w + lat_sw - 1) / lat_sw;
    const size_t tile_floats = (size_t)(oc * lat_th * sf * lat_tw * sf);
    float *zt = malloc((size_t)(zc * lat_th * lat_tw) * sizeof(float));
    float *prev = malloc((size_t)cols * tile_floats * sizeof(float));
    float *cur = malloc((size_t)cols * tile_floats * sizeof(float));
    int64_t *prev_h = calloc((size_t)cols, sizeof(int64_t));
    int64_t *cur_h = calloc((size_t)cols, sizeof(int64_t));
    int rc = -1;
    if (!zt || !prev || !cur || !prev_h || !cur_h) {
        snprintf(err, errlen, "out of memory for %lld tiles", (long long)cols * 2);
        goto out;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t zi = r * lat_sh, th = h - zi < lat_th ? h - zi : lat_th;
        for (int64_t q = 0; q < cols; q++) {
            const int64_t zj = q * lat_sw, tw = w - zj < lat_tw ? w - zj : lat_tw;
            for (int64_t k = 0; k < zc; k++)
                for (int64_t y = 0; y < th; y++)
                    memcpy(zt + (k * th + y) * tw, z + (k * h + zi + y) * w + zj,
                           (size_t)tw * sizeof(float));
            float *tile = cur + (size_t)q * tile_floats;
            if (vae_decode_frame(vae, zt, th, tw, false, tile, NULL, err, errlen) != 0)
                goto out;
            const int64_t ph = th * sf, pw = tw * sf;
            cur_h[q] = ph;
            if (r > 0)
                blend_rows(prev + (size_t)q * tile_floats, prev_h[q], tile, ph, pw, oc, blend_h);
            if (q > 0) /* the left tile has this row's height */
                blend_cols(cur + (size_t)(q - 1) * tile_floats,
                           (w - (q - 1) * lat_sw < lat_tw ? w - (q - 1) * lat_sw : lat_tw) * sf,
                           tile, pw, ph, oc, blend_w);
            /* tile[:, :stride_h, :stride_w] at (r * stride_h, q * stride_w), within the image */
            const int64_t y0 = r * t->stride_height, x0 = q * t->stride_width;
            int64_t ch_ = ph < t->stride_height ? ph : t->stride_height;
            int64_t cw = pw < t->stride_width ? pw : t->stride_width;
            if (y0 + ch_ > H)
                ch_ = H - y0;
            if (x0 + cw > W)
                cw = W - x0;
            for (int64_t k = 0; k < oc; k++)
                for (int64_t y = 0; y < ch_; y++)
                    memcpy(image + (k * H + y0 + y) * W + x0, tile + (k * ph + y) * pw,
                           (size_t)cw * sizeof(float));
        }
        float *tmp = prev;
        prev = cur;
        cur = tmp;
        int64_t *tmph = prev_h;
        prev_h = cur_h;
        cur_h = tmph;
    }
    rc = 0;
out:
    free(zt);
    free(prev);
    free(cur);
    free(prev_h);
    free(cur_h);
    return rc;
}

int qwen_vae_decode(qwen_vae_t *vae, const float *z, int frames, int h, int w,
                    const qwen_vae_tiling_t *tiling, float *image,
                    const qwen_vae_trace_t *trace, char *err, size_t errlen)
{
    const qwen_vae_config_t *c = &vae->cfg;
    if (!(vae->parts & QWEN_VAE_DECODER)) {
        snprintf(err, errlen, "the VAE was loaded without its decoder");
        return -1;
    }
    if (frames != 1) {
        snprintf(err, errlen, "%d frames: video decoding is not implemented (1 frame only)",
                 frames);
        return -1;
    }
    if (h < 1 || w < 1 || (int64_t)h * c->spatial_factor > QWEN_VAE_MAX_SIDE ||
        (int64_t)w * c->spatial_factor > QWEN_VAE_MAX_SIDE) {
        snprintf(err, errlen, "latents of %dx%d: each side must give 1..%d pixels", h, w,
                 QWEN_VAE_MAX_SIDE);
        return -1;
    }
    qwen_vae_tiling_t def;
    if (!tiling) {
        qwen_vae_tiling_default(&def);
        tiling = &def;
    }
    const int sf = c->spatial_factor;
    const int64_t pixels = (int64_t)h * w * sf * sf;
    if (tiling->max_pixels > 0 && pixels > tiling->max_pixels) {
        const qwen_vae_tiling_t *t = tiling;
        if (t->tile_height < sf || t->tile_width < sf || t->tile_height % sf ||
            t->tile_width % sf || t->stride_height < sf || t->stride_width < sf ||
            t->stride_height % sf || t->stride_width % sf || t->stride_height > t->tile_height ||
            t->stride_width > t->tile_width || t->tile_height > QWEN_VAE_MAX_SIDE ||
            t->tile_width > QWEN_VAE_MAX_SIDE) {
            snprintf(err, errlen, "tiling %dx%d every %dx%d: tiles and strides must be "
                     "multiples of %d, strides at most the tile", t->tile_height, t->tile_width,
                     t->stride_height, t->stride_width, sf);
            return -1;
        }
        /* as the reference: tiles only when the latents exceed one tile */
        if (h > t->tile_height / sf || w > t->tile_width / sf)
            return vae_decode_tiled(vae, z, h, w, t, image, err, errlen);
    }
    return vae_decode_frame(vae, z, h, w, true, image, trace, err, errlen);
}

int qwen_vae_encode(qwen_vae_t *vae, const float *image, int frames, int height, int width,
                    float *mean, const qwen_vae_trace_t *trace, char *err, size_t errlen)
{
    const qwen_vae_config_t *c = &vae->cfg;
    const vae_encoder_t *e = &vae->enc;
    nn_ctx_t *ctx = vae->ctx;
    if (!(vae->parts & QWEN_VAE_ENCODER)) {
        snprintf(err, errlen, "the VAE was loaded without its encoder");
        return -1;
    }
    if (frames != 1) {
        snprintf(err, errlen, "%d frames: video encoding is not implemented (1 frame only)",
                 frames);
        return -1;
    }
    int lh, lw;
    if (qwen_vae_latent_size(c, height, width, &lh, &lw) != 0) {
        snprintf(err, errlen, "an image of %dx%d cannot be encoded: each side must be 1..%d "
                 "pixels and reach %d levels of downsampling", width, height, QWEN_VAE_MAX_SIDE,
                 c->levels);
        return -1;
    }
    int64_t h = height, w = width;
    vae_bufs_t b;
    if (vae_bufs(vae, encode_span(c, h, w), enc_dim(c, c->levels) * lh * lw, &b, trace, err,
                 errlen) != 0)
        return -1;
    planar_to_pixels(image, c->input_channels, h * w, b.s1);
    vae_causal_conv(ctx, &e->conv_in, b.s1, h, w, NULL, b.x);
    trace_at(&b, "encoder.conv_in", b.x, enc_dim(c, 0), h, w);
    int64_t ch = enc_dim(c, 0);
    for (int j = 0; j < e->n_down; j++) {
        const vae_down_layer_t *l = &e->down[j];
        if (vae_stopped(ctx, err, errlen))
            return -1;
        if (l->is_res) {
            vae_res(ctx, &l->res, &b, h, w);
            ch = l->res.out_c;
        } else {
            vae_resample(ctx, &l->resample, &b, &h, &w);
        }
        char name[64];
        snprintf(name, sizeof name, "encoder.down_blocks.%d", j);
        trace_at(&b, name, b.x, ch, h, w);
    }
    vae_mid(ctx, &e->mid, &b, h, w);
    trace_at(&b, "encoder.mid_block", b.x, ch, h, w);
    nn_l2norm(ctx, b.x, h * w, ch, e->norm_out, sqrtf((float)ch), VAE_NORM_EPS, true, b.s1);
    const int64_t z2 = 2 * (int64_t)c->z_dim;
    vae_causal_conv(ctx, &e->conv_out, b.s1, h, w, NULL, b.s2);
    trace_at(&b, "encoder", b.s2, z2, h, w);
    nn_linear(ctx, b.s2, h * w, z2, e->quant.w, e->quant.b, b.s1, z2);
    trace_at(&b, "quant_conv", b.s1, z2, h, w);
    /* DiagonalGaussianDistribution: mean and logvar are the two halves of the channels */
    pixels_to_planar(b.s1, z2, c->z_dim, h * w, mean);
    return 0;
}

/* ---- latents and pixels ------------------------------------------------------------------ */

void qwen_vae_denormalize(const qwen_vae_t *vae, float *x, int64_t hw)
{
    const qwen_vae_config_t *c = &vae->cfg;
    for (int k = 0; k < c->z_dim; k++) {
        const float inv = 1.0f / c->latents_std[k], m = c->latents_mean[k];
        float *p = x + (int64_t)k * hw;
        for (int64_t i = 0; i < hw; i++) {
            float v = p[i] / inv;
            p[i] = v + m;
        }
    }
}

void qwen_vae_normalize(const qwen_vae_t *vae, float *x, int64_t hw)
{
    const qwen_vae_config_t *c = &vae->cfg;
    for (int k = 0; k < c->z_dim; k++) {
        const float s = c->latents_std[k], m = c->latents_mean[k];
        float *p = x + (int64_t)k * hw;
        for (int64_t i = 0; i < hw; i++) {
            float v = p[i] - m;
            p[i] = v / s;
        }
    }
}

void qwen_vae_postprocess(const float *image, int height, int width, float *rgb,
                          uint8_t *rgb8)
{
    const int64_t n = (int64_t)height * width;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            float v = image[k * n + i] * 0.5f;
            v = v + 0.5f;
            v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; /* NaN: see below */
            if (rgb)
                rgb[i * 3 + k] = v;
            if (rgb8) {
                float s = v * 255.0f;
                /* nearbyintf: ties to even in the default rounding mode, as numpy's round;
                 * a NaN (never from a clamped decode) would be undefined as uint8: 0 */
                rgb8[i * 3 + k] = s == s ? (uint8_t)nearbyintf(s) : 0;
            }
        }
}

void qwen_vae_preprocess_rgb8(const uint8_t *rgb8, int height, int width, float *image)
{
    const int64_t n = (int64_t)height * width;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            float v = (float)rgb8[i * 3 + k] / 255.0f;
            image[k * n + i] = 2.0f * v - 1.0f;
        }
}
