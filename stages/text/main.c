/* diffusiond-text: the text stage. Loads the model folder's tokenizer/ and text_encoder/ once,
 * then for each generation job encodes its prompt and negative prompt as QwenImagePipeline
 * does (text/qwen_image_prompt.h) and attaches the embeddings and masks (pipeline/gen_job.h).
 * Each prompt is encoded on its own, so its embeddings are the same bits whatever else is in
 * flight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/log.h"
#include "ipc/stage.h"
#include "nn/ops.h"
#include "nn/qwen_text_encoder.h"
#include "pipeline/model_stage.h"
#include "text/qwen_image_prompt.h"
#include "text/tokenizer.h"

typedef struct {
    nn_ctx_t ctx;
    tokenizer_t *tok;
    qwen_text_encoder_t *enc;
} text_stage_t;

/* One prompt's embeddings [1, L, D] and mask [1, L] (all ones when the pipeline has none). */
static int attach_prompt(text_stage_t *ts, gen_task_t *t, const char *prompt)
{
    char err[512];
    qwen_prompt_embeds_t pe;
    /* The prompt is valid UTF-8 (the ingress's JSON parser saw to that) and is cut, not
     * refused, at the model's length: a failure here is the server's (no memory), or a stop
     * (the worker then answers 499 or 503). */
    if (qwen_image_encode_prompts(ts->tok, ts->enc, &prompt, 1, t->params.max_sequence_length,
                                  &pe, err, sizeof err) != 0)
        return gen_task_fail(t, 500, "text: %s", err);
    int64_t shape[3] = {1, pe.len, pe.dim};
    float *e = gen_output_alloc(t, PROTO_DTYPE_F32, 3, shape);
    float *m = e ? gen_output_alloc(t, PROTO_DTYPE_F32, 2, shape) : NULL;
    if (!m) {
        qwen_prompt_embeds_free(&pe);
        return gen_task_fail(t, 503, "text: out of memory");
    }
    memcpy(e, pe.embeds, (size_t)(pe.len * pe.dim) * sizeof(float));
    for (int64_t i = 0; i < pe.len; i++)
        m[i] = pe.mask ? pe.mask[i] : 1.0f;
    qwen_prompt_embeds_free(&pe);
    return 0;
}

static int text_compute(void *model, gen_task_t *t)
{
    text_stage_t *ts = model;
    if (attach_prompt(ts, t, t->params.prompt) != 0)
        return -1;
    if (t->params.negative_prompt && attach_prompt(ts, t, t->params.negative_prompt) != 0)
        return -1;
    return 0;
}

static int text_init(stage_t *st, model_stage_spec_t *spec)
{
    char path[1024], err[1024];
    text_stage_t *ts = calloc(1, sizeof *ts);
    if (!ts || nn_ctx_init_cpu(&ts->ctx, stage_section(st)->threads) != 0)
        return STAGE_EXIT_ERROR;
    if (model_stage_folder(st, "tokenizer", path, sizeof path) != 0)
        return STAGE_EXIT_CONFIG;
    if (!(ts->tok = tokenizer_load(path, err, sizeof err))) {
        log_error("%s", err);
        return STAGE_EXIT_CONFIG;
    }
    if (model_stage_folder(st, "text_encoder", path, sizeof path) != 0)
        return STAGE_EXIT_CONFIG;
    if (!(ts->enc = qwen_text_encoder_load(path, &ts->ctx, err, sizeof err))) {
        log_error("%s", err);
        return STAGE_EXIT_CONFIG;
    }
    /* the largest job: a prompt and a negative prompt, each at the longest token count */
    const uint64_t L = QWEN_IMAGE_MAX_SEQUENCE_LENGTH;
    const uint64_t D = (uint64_t)qwen_text_encoder_config(ts->enc)->hidden_size;
    const uint64_t outputs[4] = {L * D * 4, L * 4, L * D * 4, L * 4};
    int bad = model_stage_check_pool(st, outputs, 4);
    if (bad)
        return bad;
    *spec = (model_stage_spec_t){.what = "text", .min_inputs = 0, .max_inputs = 0,
                                 .compute = text_compute, .model = ts,
                                 .ctx = &ts->ctx};
    log_info("text encoder loaded: %zu MiB of weights",
             qwen_text_encoder_weight_bytes(ts->enc) >> 20);
    return 0;
}

static void text_fini(void *model)
{
    text_stage_t *ts = model;
    qwen_text_encoder_free(&ts->enc);
    tokenizer_free(&ts->tok);
    nn_ctx_free(&ts->ctx);
    free(ts);
}

int main(int argc, char **argv)
{
    static const model_stage_def_t def = {.init = text_init, .fini = text_fini};
    return model_stage_main(argc, argv, &def);
}
