/* qwen_image_prompt: the pipeline's prompt encoding (see the header). */
#include "text/qwen_image_prompt.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* QwenImagePipeline.prompt_template_encode, with the prompt between PREFIX and SUFFIX. */
#define TEMPLATE_PREFIX                                                                      \
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "   \
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"       \
    "<|im_start|>user\n"
#define TEMPLATE_SUFFIX "<|im_end|>\n<|im_start|>assistant\n"

int qwen_image_prompt_ids(const tokenizer_t *tok, const char *prompt, size_t len, int32_t **ids,
                          size_t *n, char *err, size_t errlen)
{
    const size_t pre = sizeof TEMPLATE_PREFIX - 1, suf = sizeof TEMPLATE_SUFFIX - 1;
    *ids = NULL;
    *n = 0;
    if (len > SIZE_MAX - pre - suf) {
        snprintf(err, errlen, "prompt too long");
        return -1;
    }
    char *text = malloc(pre + len + suf);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(text, TEMPLATE_PREFIX, pre);
    memcpy(text + pre, prompt, len);
    memcpy(text + pre + len, TEMPLATE_SUFFIX, suf);
    /* The whole template in one call, as the reference tokenizes it: a prompt's first and
     * last characters may merge with the template's around them. */
    int rc = tokenizer_encode(tok, text, pre + len + suf, ids, n, err, errlen);
    free(text);
    if (rc == 0 && *n > QWEN_IMAGE_TOKENIZER_MAX + QWEN_IMAGE_PROMPT_DROP)
        *n = QWEN_IMAGE_TOKENIZER_MAX + QWEN_IMAGE_PROMPT_DROP;
    return rc;
}

void qwen_prompt_embeds_free(qwen_prompt_embeds_t *p)
{
    if (!p)
        return;
    free(p->embeds);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

int qwen_image_encode_prompts(const tokenizer_t *tok, qwen_text_encoder_t *enc,
                              const char *const *prompts, int batch, int max_sequence_length,
                              qwen_prompt_embeds_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (batch < 1) {
        snprintf(err, errlen, "no prompt to encode");
        return -1;
    }
    if (max_sequence_length < 1 || max_sequence_length > QWEN_IMAGE_MAX_SEQUENCE_LENGTH) {
        snprintf(err, errlen, "max_sequence_length must be in 1..%d, not %d",
                 QWEN_IMAGE_MAX_SEQUENCE_LENGTH, max_sequence_length);
        return -1;
    }
    const int64_t D = qwen_text_encoder_config(enc)->hidden_size;
    int32_t **ids = calloc((size_t)batch, sizeof *ids);
    size_t *n = calloc((size_t)batch, sizeof *n);
    float *hidden = NULL;
    int rc = -1;
    if (!ids || !n)
        goto oom;
    char why[512];
    size_t longest = 0, kept = 0;
    for (int b = 0; b < batch; b++) {
        if (qwen_image_prompt_ids(tok, prompts[b], strlen(prompts[b]), &ids[b], &n[b], why,
                                  sizeof why) != 0) {
            snprintf(err, errlen, "prompt %d: %s", b, why);
            goto out;
        }
        if (n[b] > longest)
            longest = n[b];
        size_t own = n[b] > QWEN_IMAGE_PROMPT_DROP ? n[b] - QWEN_IMAGE_PROMPT_DROP : 0;
        if (own > kept)
            kept = own;
    }
    /* the batch's longest prompt after the drop, then the max_sequence_length cut */
    const int64_t L = (int64_t)kept < max_sequence_length ? (int64_t)kept : max_sequence_length;
    out->batch = batch;
    out->len = L;
    out->dim = (int)D;
    out->embeds = calloc((size_t)(batch * (L > 0 ? L : 1) * D), sizeof(float));
    out->mask = calloc((size_t)(batch * (L > 0 ? L : 1)), sizeof(float));
    hidden = malloc(longest * (size_t)D * sizeof(float));
    if (!out->embeds || !out->mask || !hidden)
        goto oom;
    bool all_real = true;
    for (int b = 0; b < batch; b++) {
        if (qwen_text_encoder_forward(enc, ids[b], (int64_t)n[b], hidden, NULL, why,
                                      sizeof why) != 0) {
            snprintf(err, errlen, "prompt %d: %s", b, why);
            goto out;
        }
        int64_t own = (int64_t)n[b] - QWEN_IMAGE_PROMPT_DROP;
        if (own > L)
            own = L;
        if (own > 0)
            memcpy(out->embeds + (size_t)b * (size_t)(L * D),
                   hidden + (size_t)QWEN_IMAGE_PROMPT_DROP * (size_t)D,
                   (size_t)(own * D) * sizeof(float));
        for (int64_t j = 0; j < own; j++)
            out->mask[b * L + j] = 1.0f;
        if (own < L)
            all_real = false;
    }
    if (all_real) { /* encode_prompt: a mask of all ones is no mask */
        free(out->mask);
        out->mask = NULL;
    }
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    if (rc != 0)
        qwen_prompt_embeds_free(out);
    for (int b = 0; ids && b < batch; b++)
        free(ids[b]);
    free(ids);
    free(n);
    free(hidden);
    return rc;
}
