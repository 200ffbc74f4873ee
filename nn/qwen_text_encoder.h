/* qwen_text_encoder: the language model of Qwen2.5-VL (transformers' Qwen2_5_VLTextModel) on
 * the text path, as Qwen-Image's text encoder runs it: token embeddings, pre-norm decoder
 * layers (GQA self-attention with q/k/v bias and rotate-half RoPE, SiLU-gated MLP), the final
 * RMSNorm. Its output is the last hidden state, which the pipeline takes as prompt embeddings.
 *
 * Text-only positions are equal on M-RoPE's three axes, so the rotary embedding is the plain
 * one; the three-axis positions of image tokens come with the edit pipelines.
 *
 * One sequence per call, without padding: with the reference's causal and key-padding mask a
 * real token never sees a pad, and its positions are cumsum(mask) - 1, so a prompt's hidden
 * states are the same alone as in any padded batch; here they are also the same bits. */
#ifndef DIFFUSIOND_NN_QWEN_TEXT_ENCODER_H
#define DIFFUSIOND_NN_QWEN_TEXT_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "nn/ops.h"

/* text_encoder/config.json: the text model's keys, read from "text_config" where the file has
 * one (transformers 5) and from the top level otherwise (older files). */
typedef struct {
    int hidden_size;           /* 3584 */
    int num_layers;            /* 28 */
    int num_heads;             /* 28 */
    int num_kv_heads;          /* 4 */
    int head_dim;              /* hidden_size / num_heads: 128 */
    int intermediate_size;     /* 18944 */
    int vocab_size;            /* 152064 */
    float rms_norm_eps;        /* 1e-6 */
    double rope_theta;         /* 1e6 */
    int mrope_section[3];      /* [16, 24, 24]; adds up to head_dim / 2 */
} qwen_text_config_t;

/* Parses config.json; options this port does not implement (sliding-window attention, an
 * activation other than SiLU, a rope_type other than "default") are errors that name them. */
int qwen_text_config_load(qwen_text_config_t *c, const char *path, char *err, size_t errlen);

typedef struct qwen_text_encoder qwen_text_encoder_t;

/* Loads config.json and the weights of a text_encoder folder (sharded or not). The decoder
 * weights are converted to f32; the embedding table stays in the mapped file (bf16 in real
 * checkpoints) and only the rows a prompt uses are converted; the LM head and the vision tower
 * are not read. */
qwen_text_encoder_t *qwen_text_encoder_load(const char *folder, nn_ctx_t *ctx, char *err,
                                            size_t errlen);
void qwen_text_encoder_free(qwen_text_encoder_t **enc);
const qwen_text_config_t *qwen_text_encoder_config(const qwen_text_encoder_t *enc);
size_t qwen_text_encoder_weight_bytes(const qwen_text_encoder_t *enc);

/* The hidden states of every layer, for localising a mismatch: layers[0] the embeddings,
 * layers[i] the output of decoder layer i (1..num_layers); any entry may be NULL, each
 * [n, hidden_size]. The final norm's output is the forward's own output. */
typedef struct {
    float **layers;            /* [num_layers + 1] */
} qwen_text_trace_t;

/* out [n, hidden_size]: the final hidden state of the n tokens ids (positions 0..n-1). Returns
 * 0, or -1 with err for an id outside the vocabulary, n <= 0, no memory, or "stopped" when the
 * context's stop said so between layers (nn_ctx_t.stop). The activations
 * live in the encoder between calls: one caller at a time per encoder. */
int qwen_text_encoder_forward(qwen_text_encoder_t *enc, const int32_t *ids, int64_t n,
                              float *out, const qwen_text_trace_t *trace, char *err,
                              size_t errlen);

#endif
