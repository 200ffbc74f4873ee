/* test_qwen_image_prompt: QwenImagePipeline's prompt path (template, tokenizer, text encoder,
 * drop, padding, max_sequence_length, the all-ones mask rule) against the golden vectors of
 * tools/golden/gen_text_encoder.py: the template's token ids exactly, prompt_embeds with
 * relative error below 1e-4, the masks exactly; and a prompt's embeddings the same bits alone
 * as in its batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nn/ops.h"
#include "nn/qwen_text_encoder.h"
#include "nn/safetensors.h"
#include "tests/common/golden.h"
#include "text/qwen_image_prompt.h"
#include "text/tokenizer.h"

#define GOLDEN "tests/golden"
#define TOL 1e-4

typedef struct {
    nn_ctx_t ctx;
    tokenizer_t *tok;
    qwen_text_encoder_t *enc;
    safetensors_t *io;
    json_t *prompts_json;
    const char **prompts;
    int batch;
    int max_sequence_length;
} prompt_case_t;

static void case_open(prompt_case_t *k, const char *name)
{
    char path[512], err[1024];
    memset(k, 0, sizeof *k);
    assert_int_equal(nn_ctx_init_cpu(&k->ctx, 2), 0);
    snprintf(path, sizeof path, GOLDEN "/%s/tokenizer", name);
    k->tok = tokenizer_load(path, err, sizeof err);
    if (!k->tok)
        fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN "/%s/text_encoder", name);
    k->enc = qwen_text_encoder_load(path, &k->ctx, err, sizeof err);
    if (!k->enc)
        fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN "/%s/io.safetensors", name);
    k->io = safetensors_open(path, err, sizeof err);
    if (!k->io)
        fail_msg("%s", err);
    const char *prompts = safetensors_metadata(k->io, "prompts");
    const char *msl = safetensors_metadata(k->io, "max_sequence_length");
    const char *drop = safetensors_metadata(k->io, "drop_idx");
    assert_non_null(prompts);
    assert_non_null(msl);
    assert_non_null(drop);
    assert_int_equal(atoi(drop), QWEN_IMAGE_PROMPT_DROP);
    k->max_sequence_length = atoi(msl);
    k->prompts_json = json_loads(prompts, 0, NULL);
    assert_true(json_is_array(k->prompts_json));
    k->batch = (int)json_array_size(k->prompts_json);
    k->prompts = calloc((size_t)k->batch, sizeof *k->prompts);
    for (int b = 0; b < k->batch; b++)
        k->prompts[b] = json_string_value(json_array_get(k->prompts_json, (size_t)b));
}

static void case_close(prompt_case_t *k)
{
    free(k->prompts);
    json_decref(k->prompts_json);
    safetensors_close(&k->io);
    qwen_text_encoder_free(&k->enc);
    tokenizer_free(&k->tok);
    nn_ctx_free(&k->ctx);
}

/* The template's ids for every prompt equal the reference tokenizer call's unpadded row. */
static void check_ids(const prompt_case_t *k)
{
    const st_tensor_t *t = safetensors_find(k->io, "input_ids");
    assert_non_null(t);
    const int64_t S = t->shape[1];
    char err[512];
    for (int b = 0; b < k->batch; b++) {
        int32_t *ids;
        size_t n;
        if (qwen_image_prompt_ids(k->tok, k->prompts[b], strlen(k->prompts[b]), &ids, &n, err,
                                  sizeof err) != 0)
            fail_msg("prompt %d: %s", b, err);
        size_t want = 0;
        while ((int64_t)want < S && golden_int(k->io, "attention_mask", b * S + (int64_t)want))
            want++;
        if (n != want)
            fail_msg("prompt %d: %zu ids, the reference has %zu", b, n, want);
        for (size_t j = 0; j < n; j++)
            if (ids[j] != golden_int(k->io, "input_ids", b * S + (int64_t)j))
                fail_msg("prompt %d: id %zu is %d, the reference has %lld", b, j, ids[j],
                         (long long)golden_int(k->io, "input_ids", b * S + (int64_t)j));
        free(ids);
    }
}

/* out against the golden embeds/mask pair (mask_name absent: the reference passed no mask). */
static void check_embeds(const prompt_case_t *k, const qwen_prompt_embeds_t *out,
                         const char *embeds_name, const char *mask_name)
{
    const st_tensor_t *e = safetensors_find(k->io, embeds_name);
    assert_non_null(e);
    assert_int_equal(e->shape[0], out->batch);
    assert_int_equal(e->shape[1], out->len);
    assert_int_equal(e->shape[2], out->dim);
    float *ref = golden(k->io, embeds_name, NULL);
    const int64_t row = out->len * out->dim;
    for (int b = 0; b < out->batch; b++) {
        double err = rel_err(out->embeds + b * row, ref + b * row, row);
        if (!(err < TOL))
            fail_msg("%s sample %d: relative error %.3g", embeds_name, b, err);
    }
    const st_tensor_t *m = safetensors_find(k->io, mask_name);
    if (!m) {
        assert_null(out->mask);
    } else {
        assert_non_null(out->mask);
        for (int64_t i = 0; i < out->batch * out->len; i++)
            if (out->mask[i] != (float)golden_int(k->io, mask_name, i))
                fail_msg("%s[%lld] differs", mask_name, (long long)i);
    }
    free(ref);
}

static void check_case(const char *name)
{
    prompt_case_t k;
    case_open(&k, name);
    check_ids(&k);
    char err[512];
    qwen_prompt_embeds_t full, cut, alone;
    /* 1024: no cut, the reference's _get_qwen_prompt_embeds */
    if (qwen_image_encode_prompts(k.tok, k.enc, k.prompts, k.batch, 1024, &full, err,
                                  sizeof err) != 0)
        fail_msg("%s", err);
    check_embeds(&k, &full, "prompt_embeds", "prompt_mask");
    /* encode_prompt with the case's max_sequence_length */
    if (qwen_image_encode_prompts(k.tok, k.enc, k.prompts, k.batch, k.max_sequence_length, &cut,
                                  err, sizeof err) != 0)
        fail_msg("%s", err);
    check_embeds(&k, &cut, "sliced_embeds", "sliced_mask");
    /* each prompt alone: its rows of the batch, bit for bit, and no mask (all real). The batch
     * runs every prompt on its own, so this holds by construction today; it guards the
     * text stage's promise if batching inside the encoder ever comes */
    for (int b = 0; b < k.batch; b++) {
        if (qwen_image_encode_prompts(k.tok, k.enc, &k.prompts[b], 1, 1024, &alone, err,
                                      sizeof err) != 0)
            fail_msg("%s", err);
        assert_null(alone.mask);
        assert_memory_equal(alone.embeds, full.embeds + (size_t)b * (size_t)(full.len * full.dim),
                            (size_t)(alone.len * alone.dim) * sizeof(float));
        for (int64_t j = alone.len; j < full.len; j++)
            assert_true(full.mask[b * full.len + j] == 0.0f);
        qwen_prompt_embeds_free(&alone);
    }
    qwen_prompt_embeds_free(&full);
    qwen_prompt_embeds_free(&cut);
    case_close(&k);
}

static void test_prompt_tiny(void **state)
{
    (void)state;
    check_case("text_tiny");
}

static void test_prompt_gqa(void **state)
{
    (void)state;
    check_case("text_gqa");
}

static void test_prompt_errors(void **state)
{
    (void)state;
    prompt_case_t k;
    case_open(&k, "text_tiny");
    char err[512];
    qwen_prompt_embeds_t out;
    const char *bad[] = {"fine", "bad \xff byte"};
    assert_int_equal(qwen_image_encode_prompts(k.tok, k.enc, bad, 2, 512, &out, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "prompt 1"));
    assert_non_null(strstr(err, "UTF-8"));
    assert_null(out.embeds);
    assert_int_equal(qwen_image_encode_prompts(k.tok, k.enc, bad, 1, 1025, &out, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "max_sequence_length"));
    assert_int_equal(qwen_image_encode_prompts(k.tok, k.enc, bad, 0, 512, &out, err, sizeof err),
                     -1);
    /* a prompt longer than the tokenizer's limit is cut at 1024 + 34 tokens, as the reference
     * truncates it; the embeddings then have 1024 rows */
    size_t big = 3000;
    char *text = malloc(big * 2 + 1);
    for (size_t i = 0; i < big; i++)
        memcpy(text + 2 * i, "a ", 2);
    text[2 * big] = 0;
    int32_t *ids;
    size_t n;
    assert_int_equal(qwen_image_prompt_ids(k.tok, text, strlen(text), &ids, &n, err, sizeof err), 0);
    assert_int_equal(n, QWEN_IMAGE_TOKENIZER_MAX + QWEN_IMAGE_PROMPT_DROP);
    free(ids);
    const char *one[] = {text};
    assert_int_equal(qwen_image_encode_prompts(k.tok, k.enc, one, 1, 1024, &out, err, sizeof err), 0);
    assert_int_equal(out.len, 1024);
    qwen_prompt_embeds_free(&out);
    free(text);
    case_close(&k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_tiny),
        cmocka_unit_test(test_prompt_gqa),
        cmocka_unit_test(test_prompt_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
