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
    model_stage_t *ms;
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

static int text_init(stage_t *st, int argc, char **argv, void **state)
{
    (void)argc;
    (void)argv;
    int bad = model_stage_check_section(st);
    if (bad)
        return bad;
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
    if ((bad = model_stage_check_pool(st, outputs, 4)) != 0)
        return bad;
    model_stage_spec_t spec = {.what = "text", .min_inputs = 0, .max_inputs = 0,
                               .compute = text_compute, .model = ts,
                               .ctx = &ts->ctx};
    if (!(ts->ms = model_stage_start(&spec, st)))
        return STAGE_EXIT_ERROR;
    log_info("text encoder loaded: %zu MiB of weights",
             qwen_text_encoder_weight_bytes(ts->enc) >> 20);
    *state = ts;
    return 0;
}

static stage_job_result_t text_job(stage_t *st, void *state, stage_job_t *job)
{
    return model_stage_job(((text_stage_t *)state)->ms, st, job);
}

static void text_tick(stage_t *st, void *state) { model_stage_tick(((text_stage_t *)state)->ms, st); }

static uint32_t text_inflight(stage_t *st, void *state)
{
    (void)st;
    return model_stage_inflight(((text_stage_t *)state)->ms);
}

static void text_fini(stage_t *st, void *state)
{
    text_stage_t *ts = state;
    model_stage_stop(ts->ms, st);
    qwen_text_encoder_free(&ts->enc);
    tokenizer_free(&ts->tok);
    nn_ctx_free(&ts->ctx);
    free(ts);
}

int main(int argc, char **argv)
{
    static const stage_ops_t ops = {.init = text_init, .job = text_job, .tick = text_tick,
                                    .inflight = text_inflight, .fini = text_fini, .tick_ms = 5};
    return stage_main(argc, argv, &ops);
}
