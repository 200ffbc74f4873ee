/* qwen_text_encoder: Qwen2.5-VL's language model on the text path (see the header), following
 * transformers' modeling_qwen2_5_vl.py: Qwen2_5_VLTextModel.forward, Qwen2_5_VLDecoderLayer,
 * Qwen2_5_VLAttention (sdpa with the causal mask), Qwen2MLP, Qwen2_5_VLRMSNorm and
 * Qwen2_5_VLRotaryEmbedding. */
#include "nn/qwen_text_encoder.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/json_file.h"
#include "nn/safetensors.h"
#include "nn/tensor.h"

typedef struct {
    float *in_norm;                    /* input_layernorm [D] */
    float *q_w, *q_b;                  /* [H*hd, D], [H*hd] */
    float *k_w, *k_b, *v_w, *v_b;      /* [KV*hd, D], [KV*hd] */
    float *o_w;                        /* [D, H*hd], no bias */
    float *post_norm;                  /* post_attention_layernorm [D] */
    float *gate_w, *up_w;              /* [I, D] */
    float *down_w;                     /* [D, I] */
} text_layer_t;

struct qwen_text_encoder {
    qwen_text_config_t cfg;
    text_layer_t *layers;
    float *final_norm;
    float *storage;                    /* every f32 weight above, one allocation */
    size_t n_floats;
    safetensors_t *st;                 /* kept open: the embedding is read from it per token */
    const st_tensor_t *embed;          /* [vocab, D] in the checkpoint's dtype */
    float *inv_freq;                   /* [head_dim / 2] */
    nn_ctx_t *ctx;
    nn_arena_t arena;                  /* activations, grown to the longest prompt so far */
};

const qwen_text_config_t *qwen_text_encoder_config(const qwen_text_encoder_t *enc)
{
    return &enc->cfg;
}

size_t qwen_text_encoder_weight_bytes(const qwen_text_encoder_t *enc)
{
    return enc->n_floats * sizeof(float);
}

/* ---- config.json ---------------------------------------------------------------------------- */

/* A key of the text model: text_config's where it has it, else the top level's. */
static json_t *text_key(json_t *root, json_t *text, const char *key)
{
    json_t *v = text ? json_object_get(text, key) : NULL;
    return v && !json_is_null(v) ? v : json_object_get(root, key);
}

static int text_int(json_t *root, json_t *text, const char *key, int lo, int hi, int *out,
                    bool required, const char *path, char *err, size_t errlen)
{
    json_t *holder = text && json_object_get(text, key) ? text : root;
    return nn_json_int(holder, key, lo, hi, out, required, path, err, errlen);
}

/* The rope settings: transformers 5 writes rope_parameters {rope_theta, mrope_section,
 * rope_type}; older files rope_theta beside rope_scaling {mrope_section, type}. */
static int rope_config(json_t *root, json_t *text, qwen_text_config_t *c, const char *path,
                       char *err, size_t errlen)
{
    json_t *params = text_key(root, text, "rope_parameters");
    json_t *scaling = text_key(root, text, "rope_scaling");
    json_t *theta = params ? json_object_get(params, "rope_theta") : NULL;
    if (!theta)
        theta = text_key(root, text, "rope_theta");
    if (theta) {
        if (!json_is_number(theta) || json_number_value(theta) <= 1.0) {
            snprintf(err, errlen, "%s: rope_theta must be a number above 1", path);
            return -1;
        }
        c->rope_theta = json_number_value(theta);
    }
    json_t *section = params ? json_object_get(params, "mrope_section") : NULL;
    if (!section && scaling)
        section = json_object_get(scaling, "mrope_section");
    if (section) {
        if (!json_is_array(section) || json_array_size(section) != 3) {
            snprintf(err, errlen, "%s: mrope_section must be a list of 3 integers", path);
            return -1;
        }
        int sum = 0;
        for (int i = 0; i < 3; i++) {
            json_t *v = json_array_get(section, (size_t)i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 4096) {
                snprintf(err, errlen, "%s: mrope_section[%d] must be a small integer", path, i);
                return -1;
            }
            c->mrope_section[i] = (int)json_integer_value(v);
            sum += c->mrope_section[i];
        }
        if (sum != c->head_dim / 2) {
            snprintf(err, errlen, "%s: mrope_section adds up to %d, not head_dim / 2 = %d", path,
                     sum, c->head_dim / 2);
            return -1;
        }
    }
    json_t *holder = params ? params : scaling;
    json_t *type = holder ? json_object_get(holder, "rope_type") : NULL;
    if (!type && holder)
        type = json_object_get(holder, "type");
    if (type && json_is_string(type) && strcmp(json_string_value(type), "default") != 0 &&
        strcmp(json_string_value(type), "mrope") != 0) {
        snprintf(err, errlen, "%s: rope_type \"%s\" is not supported (only \"default\")", path,
                 json_string_value(type));
        return -1;
    }
    return 0;
}

int qwen_text_config_load(qwen_text_config_t *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_t *root = nn_json_load_object(path, err, errlen);
    if (!root)
        return -1;
    json_t *text = json_object_get(root, "text_config");
    if (text && !json_is_object(text))
        text = NULL;
    int rc = -1;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 1000000.0;
    if (text_int(root, text, "hidden_size", 1, 1 << 16, &c->hidden_size, true, path, err,
                 errlen) ||
        text_int(root, text, "num_hidden_layers", 1, 1024, &c->num_layers, true, path, err,
                 errlen) ||
        text_int(root, text, "num_attention_heads", 1, 1024, &c->num_heads, true, path, err,
                 errlen) ||
        text_int(root, text, "intermediate_size", 1, 1 << 20, &c->intermediate_size, true, path,
                 err, errlen) ||
        text_int(root, text, "vocab_size", 1, 1 << 24, &c->vocab_size, true, path, err, errlen))
        goto out;
    c->num_kv_heads = c->num_heads;
    if (text_int(root, text, "num_key_value_heads", 1, 1024, &c->num_kv_heads, false, path, err,
                 errlen))
        goto out;
    if (c->hidden_size % c->num_heads != 0 || c->num_heads % c->num_kv_heads != 0) {
        snprintf(err, errlen,
                 "%s: hidden_size (%d) must divide by num_attention_heads (%d), and that by "
                 "num_key_value_heads (%d)", path, c->hidden_size, c->num_heads,
                 c->num_kv_heads);
        goto out;
    }
    c->head_dim = c->hidden_size / c->num_heads;
    int head_dim = c->head_dim;
    if (text_int(root, text, "head_dim", 1, 4096, &head_dim, false, path, err, errlen))
        goto out;
    if (head_dim != c->head_dim || c->head_dim % 2 || c->head_dim > NN_ATTENTION_MAX_HEAD_DIM) {
        snprintf(err, errlen, "%s: head_dim %d is not supported (hidden_size / heads = %d, even, "
                 "at most %d)", path, head_dim, c->head_dim, NN_ATTENTION_MAX_HEAD_DIM);
        goto out;
    }
    c->mrope_section[0] = c->head_dim / 2; /* text only: every split gives the same angles */
    json_t *eps = text_key(root, text, "rms_norm_eps");
    if (eps) {
        if (!json_is_number(eps) || json_number_value(eps) <= 0 || json_number_value(eps) > 1) {
            snprintf(err, errlen, "%s: rms_norm_eps must be a number in (0, 1]", path);
            goto out;
        }
        c->rms_norm_eps = (float)json_number_value(eps);
    }
    json_t *act = text_key(root, text, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0)) {
        snprintf(err, errlen, "%s: hidden_act must be \"silu\"", path);
        goto out;
    }
    json_t *sliding = text_key(root, text, "use_sliding_window");
    if (sliding && json_is_true(sliding)) {
        snprintf(err, errlen, "%s: use_sliding_window = true is not supported", path);
        goto out;
    }
    if (rope_config(root, text, c, path, err, errlen) != 0)
        goto out;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- weights ----------------------------------------------------------------------------- */

/* The decoder's tensors in checkpoint order, with their shapes; prefix is "model." in files
 * written before transformers 5 moved the text model to "model.language_model.". */
typedef struct {
    char name[160];
    float **dst;
    int ndim;
    int64_t shape[2];
} text_tensor_t;

static size_t text_table(const qwen_text_config_t *c, const char *prefix, text_layer_t *layers,
                         float **final_norm, text_tensor_t *t)
{
    const int64_t D = c->hidden_size, Q = (int64_t)c->num_heads * c->head_dim;
    const int64_t KV = (int64_t)c->num_kv_heads * c->head_dim, I = c->intermediate_size;
    size_t n = 0;
#define ROW(dst_, d0, d1, ...)                                                               \
    do {                                                                                     \
        if (t) {                                                                             \
            snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                              \
            t[n].dst = (dst_);                                                               \
            t[n].ndim = (d1) ? 2 : 1;                                                        \
            t[n].shape[0] = (d0);                                                            \
            t[n].shape[1] = (d1);                                                            \
        }                                                                                    \
        n++;                                                                                 \
    } while (0)
    for (int i = 0; i < c->num_layers; i++) {
        text_layer_t *L = layers ? &layers[i] : NULL;
#define DST(field) (L ? &L->field : NULL)
        ROW(DST(in_norm), D, 0, "%slayers.%d.input_layernorm.weight", prefix, i);
        ROW(DST(q_w), Q, D, "%slayers.%d.self_attn.q_proj.weight", prefix, i);
        ROW(DST(q_b), Q, 0, "%slayers.%d.self_attn.q_proj.bias", prefix, i);
        ROW(DST(k_w), KV, D, "%slayers.%d.self_attn.k_proj.weight", prefix, i);
        ROW(DST(k_b), KV, 0, "%slayers.%d.self_attn.k_proj.bias", prefix, i);
        ROW(DST(v_w), KV, D, "%slayers.%d.self_attn.v_proj.weight", prefix, i);
        ROW(DST(v_b), KV, 0, "%slayers.%d.self_attn.v_proj.bias", prefix, i);
        ROW(DST(o_w), D, Q, "%slayers.%d.self_attn.o_proj.weight", prefix, i);
        ROW(DST(post_norm), D, 0, "%slayers.%d.post_attention_layernorm.weight", prefix, i);
        ROW(DST(gate_w), I, D, "%slayers.%d.mlp.gate_proj.weight", prefix, i);
        ROW(DST(up_w), I, D, "%slayers.%d.mlp.up_proj.weight", prefix, i);
        ROW(DST(down_w), D, I, "%slayers.%d.mlp.down_proj.weight", prefix, i);
#undef DST
    }
    ROW(final_norm, D, 0, "%snorm.weight", prefix);
#undef ROW
    return n;
}

/* 1 / theta^(2j / head_dim) as transformers computes it in float32: the exponent
 * arange(0, dim, 2).float() / dim, the power (rounded to float), its reciprocal. */
static void rope_inv_freq(const qwen_text_config_t *c, float *inv)
{
    for (int j = 0; j < c->head_dim / 2; j++) {
        float e = (float)(2 * j) / (float)c->head_dim;
        float p = (float)pow(c->rope_theta, (double)e);
        inv[j] = 1.0f / p;
    }
}

qwen_text_encoder_t *qwen_text_encoder_load(const char *folder, nn_ctx_t *ctx, char *err,
                                            size_t errlen)
{
    char path[1024];
    text_tensor_t *table = NULL;
    qwen_text_encoder_t *enc = calloc(1, sizeof *enc);
    if (!enc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    enc->ctx = ctx;
    snprintf(path, sizeof path, "%s/config.json", folder);
    if (qwen_text_config_load(&enc->cfg, path, err, errlen) != 0)
        goto fail;
    const qwen_text_config_t *c = &enc->cfg;
    enc->st = safetensors_open(folder, err, errlen);
    if (!enc->st)
        goto fail;
    const char *prefix = "model.language_model.";
    char embed_name[160];
    snprintf(embed_name, sizeof embed_name, "%sembed_tokens.weight", prefix);
    if (!safetensors_find(enc->st, embed_name)) {
        prefix = "model.";
        snprintf(embed_name, sizeof embed_name, "%sembed_tokens.weight", prefix);
    }
    enc->embed = safetensors_find(enc->st, embed_name);
    if (!enc->embed) {
        snprintf(err, errlen, "%s: no tensor model.embed_tokens.weight or "
                 "model.language_model.embed_tokens.weight: not a Qwen2.5-VL text encoder",
                 folder);
        goto fail;
    }
    if (enc->embed->ndim != 2 || enc->embed->shape[0] != c->vocab_size ||
        enc->embed->shape[1] != c->hidden_size ||
        (enc->embed->dtype != NN_DTYPE_F32 && enc->embed->dtype != NN_DTYPE_BF16 &&
         enc->embed->dtype != NN_DTYPE_F16)) {
        char found[160];
        snprintf(err, errlen, "%s: tensor %s has shape %s, expected f32, bf16 or f16 [%d,%d]",
                 enc->embed->file, embed_name,
                 nn_shape_str(found, sizeof found, enc->embed->dtype, enc->embed->ndim,
                              enc->embed->shape),
                 c->vocab_size, c->hidden_size);
        goto fail;
    }

    enc->layers = calloc((size_t)c->num_layers, sizeof *enc->layers);
    size_t rows = text_table(c, prefix, NULL, NULL, NULL);
    table = calloc(rows, sizeof *table);
    enc->inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof(float));
    if (!enc->layers || !table || !enc->inv_freq) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    text_table(c, prefix, enc->layers, &enc->final_norm, table);
    size_t total = 0;
    for (size_t i = 0; i < rows; i++)
        total += (size_t)(table[i].shape[0] * (table[i].ndim == 2 ? table[i].shape[1] : 1));
    enc->storage = aligned_alloc(64, (total * sizeof(float) + 63) / 64 * 64);
    if (!enc->storage) {
        snprintf(err, errlen, "cannot allocate %zu MiB for the text encoder's weights",
                 total * sizeof(float) >> 20);
        goto fail;
    }
    enc->n_floats = total;
    float *next = enc->storage;
    for (size_t i = 0; i < rows; i++) {
        *table[i].dst = next;
        if (safetensors_read_f32(enc->st, table[i].name, table[i].ndim, table[i].shape, next,
                                 err, errlen) != 0)
            goto fail;
        next += table[i].shape[0] * (table[i].ndim == 2 ? table[i].shape[1] : 1);
    }
    rope_inv_freq(c, enc->inv_freq);
    free(table);
    return enc;
fail:
    free(table);
    qwen_text_encoder_free(&enc);
    return NULL;
}

void qwen_text_encoder_free(qwen_text_encoder_t **penc)
{
    qwen_text_encoder_t *enc = *penc;
    if (!enc)
        return;
    safetensors_close(&enc->st);
    free(enc->storage);
    free(enc->layers);
    free(enc->inv_freq);
    nn_arena_free(&enc->arena);
    free(enc);
    *penc = NULL;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* cos/sin [n, head_dim/2] for positions 0..n-1: the angle pos * inv_freq rounded to float
 * as torch's float product, then its cosine and sine rounded once. */
static void rope_table(const qwen_text_encoder_t *enc, int64_t n, float *cos_t, float *sin_t)
{
    const int half = enc->cfg.head_dim / 2;
    for (int64_t p = 0; p < n; p++)
        for (int j = 0; j < half; j++) {
            float angle = (float)p * enc->inv_freq[j];
            cos_t[p * half + j] = (float)cos((double)angle);
            sin_t[p * half + j] = (float)sin((double)angle);
        }
}

typedef struct {
    float *x;        /* [n, D] the residual stream */
    float *h;        /* [n, D] normed input of a sub-layer, then its output */
    float *q, *att;  /* [n, H*hd] */
    float *k, *v;    /* [n, KV*hd] */
    float *gate, *up; /* [n, I] */
    float *cos_t, *sin_t; /* [n, hd/2] */
} text_scratch_t;

static int scratch_alloc(qwen_text_encoder_t *enc, int64_t n, text_scratch_t *s, char *err,
                         size_t errlen)
{
    const qwen_text_config_t *c = &enc->cfg;
    const size_t D = (size_t)c->hidden_size, Q = (size_t)c->num_heads * (size_t)c->head_dim;
    const size_t KV = (size_t)c->num_kv_heads * (size_t)c->head_dim;
    const size_t I = (size_t)c->intermediate_size, half = (size_t)c->head_dim / 2;
    const size_t N = (size_t)n;
    /* each array rounded up to the arena's alignment */
    const size_t sizes[] = {N * D, N * D, N * Q, N * Q, N * KV, N * KV, N * I, N * I,
                            N * half, N * half};
    size_t need = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        need += (sizes[i] * sizeof(float) + 127) / 128 * 128;
    if (enc->arena.cap < need) {
        nn_arena_free(&enc->arena);
        if (nn_arena_init(&enc->arena, need) != 0) {
            snprintf(err, errlen, "cannot allocate %zu MiB of activations for %lld tokens",
                     need >> 20, (long long)n);
            return -1;
        }
    }
    nn_arena_t *a = &enc->arena;
    nn_arena_release(a, 0);
    float **dst[] = {&s->x, &s->h, &s->q, &s->att, &s->k, &s->v, &s->gate, &s->up, &s->cos_t,
                     &s->sin_t};
    for (size_t i = 0; i < sizeof dst / sizeof dst[0]; i++) {
        *dst[i] = nn_arena_f32(a, sizes[i]);
        if (!*dst[i]) {
            snprintf(err, errlen, "activation arena too small (a bug)");
            return -1;
        }
    }
    return 0;
}

/* Embedding rows, converted from the mapped table as they are needed. */
static int embed_tokens(const qwen_text_encoder_t *enc, const int32_t *ids, int64_t n, float *x,
                        char *err, size_t errlen)
{
    const int64_t D = enc->cfg.hidden_size;
    const size_t row_bytes = (size_t)D * nn_dtype_size(enc->embed->dtype);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= enc->cfg.vocab_size) {
            snprintf(err, errlen, "token id %d at position %lld is outside the vocabulary "
                     "(0..%d)", ids[i], (long long)i, enc->cfg.vocab_size - 1);
            return -1;
        }
        const uint8_t *row = (const uint8_t *)enc->embed->data + (size_t)ids[i] * row_bytes;
        if (nn_convert_to_f32(enc->embed->dtype, row, x + i * D, (size_t)D) != 0) {
            snprintf(err, errlen, "embedding table of unsupported dtype");
            return -1;
        }
    }
    return 0;
}

static void decoder_layer(qwen_text_encoder_t *enc, const text_layer_t *L, int64_t n,
                          const text_scratch_t *s)
{
    nn_ctx_t *ctx = enc->ctx;
    const qwen_text_config_t *c = &enc->cfg;
    const int64_t D = c->hidden_size, H = c->num_heads, KVH = c->num_kv_heads, hd = c->head_dim;
    const int64_t I = c->intermediate_size;

    nn_rmsnorm(ctx, s->x, n, D, L->in_norm, c->rms_norm_eps, s->h);
    nn_linear(ctx, s->h, n, D, L->q_w, L->q_b, s->q, H * hd);
    nn_linear(ctx, s->h, n, D, L->k_w, L->k_b, s->k, KVH * hd);
    nn_linear(ctx, s->h, n, D, L->v_w, L->v_b, s->v, KVH * hd);
    nn_rope_half(ctx, s->q, n, H, hd, s->cos_t, s->sin_t);
    nn_rope_half(ctx, s->k, n, KVH, hd, s->cos_t, s->sin_t);
    /* torch: head_dim ** -0.5 in double, handed to sdpa as the scale */
    nn_causal_attention(ctx, s->q, n, s->k, s->v, n, H, KVH, hd, NULL,
                        (float)pow((double)hd, -0.5), s->att);
    nn_linear(ctx, s->att, n, H * hd, L->o_w, NULL, s->h, D);
    nn_gated_add(ctx, s->x, n, D, NULL, s->h);

    nn_rmsnorm(ctx, s->x, n, D, L->post_norm, c->rms_norm_eps, s->h);
    nn_linear(ctx, s->h, n, D, L->gate_w, NULL, s->gate, I);
    nn_linear(ctx, s->h, n, D, L->up_w, NULL, s->up, I);
    nn_silu_mul(ctx, s->gate, s->up, n * I);
    nn_linear(ctx, s->gate, n, I, L->down_w, NULL, s->h, D);
    nn_gated_add(ctx, s->x, n, D, NULL, s->h);
}

int qwen_text_encoder_forward(qwen_text_encoder_t *enc, const int32_t *ids, int64_t n,
                              float *out, const qwen_text_trace_t *trace, char *err,
                              size_t errlen)
{
    const qwen_text_config_t *c = &enc->cfg;
    const int64_t D = c->hidden_size;
    if (n <= 0) {
        snprintf(err, errlen, "no tokens to encode");
        return -1;
    }
    text_scratch_t s;
    if (scratch_alloc(enc, n, &s, err, errlen) != 0)
        return -1;
    if (embed_tokens(enc, ids, n, s.x, err, errlen) != 0)
        return -1;
    rope_table(enc, n, s.cos_t, s.sin_t);
    float **keep = trace ? trace->layers : NULL;
    if (keep && keep[0])
        memcpy(keep[0], s.x, (size_t)(n * D) * sizeof(float));
    for (int i = 0; i < c->num_layers; i++) {
        if (nn_stopped(enc->ctx)) {
            snprintf(err, errlen, "stopped");
            return -1;
        }
        decoder_layer(enc, &enc->layers[i], n, &s);
        if (keep && keep[i + 1])
            memcpy(keep[i + 1], s.x, (size_t)(n * D) * sizeof(float));
    }
    nn_rmsnorm(enc->ctx, s.x, n, D, enc->final_norm, c->rms_norm_eps, out);
    return 0;
}
