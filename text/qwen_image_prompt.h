/* qwen_image_prompt: QwenImagePipeline's prompt encoding (diffusers' _get_qwen_prompt_embeds
 * and encode_prompt): each prompt put in the pipeline's chat template, tokenized, run through
 * the Qwen2.5-VL text encoder, the template's first 34 tokens dropped, the batch right-padded
 * with zero vectors to its longest prompt, then cut to max_sequence_length.
 *
 * Each prompt runs through the encoder on its own (see qwen_text_encoder.h): its embeddings
 * are the same bits whatever else is in the batch. */
#ifndef DIFFUSIOND_TEXT_QWEN_IMAGE_PROMPT_H
#define DIFFUSIOND_TEXT_QWEN_IMAGE_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "nn/qwen_text_encoder.h"
#include "text/tokenizer.h"

#define QWEN_IMAGE_PROMPT_DROP 34         /* the system turn and "<|im_start|>user\n" */
#define QWEN_IMAGE_TOKENIZER_MAX 1024     /* the tokenizer call's max_length, plus the drop */
#define QWEN_IMAGE_MAX_SEQUENCE_LENGTH 1024 /* the largest max_sequence_length accepted */
#define QWEN_IMAGE_DEFAULT_SEQUENCE_LENGTH 512

/* The template's ids for one prompt, cut at QWEN_IMAGE_TOKENIZER_MAX + QWEN_IMAGE_PROMPT_DROP
 * tokens as the reference's truncation does (its end, the assistant turn, is cut with it).
 * *ids is malloc'd; 0, or -1 with err (invalid UTF-8, no memory). */
int qwen_image_prompt_ids(const tokenizer_t *tok, const char *prompt, size_t len, int32_t **ids,
                          size_t *n, char *err, size_t errlen);

typedef struct {
    int batch;
    int64_t len;          /* tokens per sample after padding and the max_sequence_length cut */
    int dim;              /* the text encoder's hidden size */
    float *embeds;        /* [batch, len, dim] */
    float *mask;          /* [batch, len] 1 for real tokens, 0 for padding; NULL when every
                             token is real (the reference passes no mask then) */
} qwen_prompt_embeds_t;

/* Encodes prompts[0..batch) (NUL-terminated UTF-8). max_sequence_length in 1..1024. Returns 0,
 * or -1 with err naming the prompt (by index) that failed. out is filled on success only;
 * free it with qwen_prompt_embeds_free. */
int qwen_image_encode_prompts(const tokenizer_t *tok, qwen_text_encoder_t *enc,
                              const char *const *prompts, int batch, int max_sequence_length,
                              qwen_prompt_embeds_t *out, char *err, size_t errlen);
void qwen_prompt_embeds_free(qwen_prompt_embeds_t *p);

#endif
