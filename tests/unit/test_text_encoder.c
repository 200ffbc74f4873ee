/* test_text_encoder: the Qwen2.5-VL text encoder against the golden vectors that
 * tools/golden/gen_text_encoder.py made with the reference (transformers + torch): every
 * prompt of a padded batch run on its own real tokens, compared per layer with the reference's
 * hidden states at the same positions (relative error below 1e-4; a failure names the first
 * layer that is off). Then the loader's errors and the properties the text stage relies on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/ops.h"
#include "nn/qwen_text_encoder.h"
#include "nn/safetensors.h"
#include "tests/common/files.h"
#include "tests/common/golden.h"
#include "tests/common/stop.h"

#define GOLDEN "tests/golden"
#define TOL 1e-4

typedef struct {
    nn_ctx_t ctx;
    qwen_text_encoder_t *enc;
    safetensors_t *io;
    int64_t batch, seq, dim;
    int layers;
} text_case_t;

static void case_open(text_case_t *k, const char *name, int threads)
{
    char path[512], err[1024];
    memset(k, 0, sizeof *k);
    assert_int_equal(nn_ctx_init_cpu(&k->ctx, threads), 0);
    snprintf(path, sizeof path, GOLDEN "/%s/text_encoder", name);
    k->enc = qwen_text_encoder_load(path, &k->ctx, err, sizeof err);
    if (!k->enc)
        fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN "/%s/io.safetensors", name);
    k->io = safetensors_open(path, err, sizeof err);
    if (!k->io)
        fail_msg("%s", err);
    const st_tensor_t *ids = safetensors_find(k->io, "input_ids");
    assert_non_null(ids);
    k->batch = ids->shape[0];
    k->seq = ids->shape[1];
    k->dim = qwen_text_encoder_config(k->enc)->hidden_size;
    k->layers = qwen_text_encoder_config(k->enc)->num_layers;
}

static void case_close(text_case_t *k)
{
    qwen_text_encoder_free(&k->enc);
    safetensors_close(&k->io);
    nn_ctx_free(&k->ctx);
}

/* Sample b's real tokens (the batch is right-padded: the mask is 1 then 0). */
static int32_t *sample_ids(const text_case_t *k, int64_t b, int64_t *n)
{
    int32_t *ids = malloc((size_t)k->seq * sizeof *ids);
    assert_non_null(ids);
    *n = 0;
    for (int64_t j = 0; j < k->seq; j++) {
        if (golden_int(k->io, "attention_mask", b * k->seq + j) == 0)
            break;
        ids[(*n)++] = (int32_t)golden_int(k->io, "input_ids", b * k->seq + j);
    }
    return ids;
}

/* Every sample alone against the reference's rows for it; every stored layer. */
static void check_case(const char *name)
{
    text_case_t k;
    case_open(&k, name, 2);
    char err[512], key[64];
    const int64_t D = k.dim;
    float **ref = calloc((size_t)k.layers + 1, sizeof *ref);
    float **mine = calloc((size_t)k.layers + 1, sizeof *mine);
    assert_non_null(ref);
    assert_non_null(mine);
    for (int i = 0; i <= k.layers; i++) {
        snprintf(key, sizeof key, "hidden.%d", i);
        if (safetensors_find(k.io, key))
            ref[i] = golden(k.io, key, NULL);
    }
    assert_non_null(ref[0]);
    assert_non_null(ref[k.layers]); /* the final norm's output */
    for (int i = 0; i < k.layers; i++)
        mine[i] = malloc((size_t)(k.seq * D) * sizeof(float));
    float *out = malloc((size_t)(k.seq * D) * sizeof(float));

    for (int64_t b = 0; b < k.batch; b++) {
        int64_t n;
        int32_t *ids = sample_ids(&k, b, &n);
        qwen_text_trace_t trace = {.layers = mine};
        if (qwen_text_encoder_forward(k.enc, ids, n, out, &trace, err, sizeof err) != 0)
            fail_msg("%s sample %lld: %s", name, (long long)b, err);
        /* the first layer that is off, then the output */
        for (int i = 0; i <= k.layers; i++) {
            if (!ref[i])
                continue;
            const float *got = i == k.layers ? out : mine[i];
            double e = rel_err(got, ref[i] + b * k.seq * D, n * D);
            if (!(e < TOL)) {
                char what[64];
                if (i == 0)
                    snprintf(what, sizeof what, "the embeddings");
                else if (i == k.layers)
                    snprintf(what, sizeof what, "the final hidden state");
                else
                    snprintf(what, sizeof what, "decoder layer %d's output", i);
                fail_msg("%s sample %lld (%lld tokens): %s off by %.3g (relative)", name,
                         (long long)b, (long long)n, what, e);
            }
            if (i == k.layers)
                print_message("  %s sample %lld: %lld tokens, final hidden state rel err %.2e\n",
                              name, (long long)b, (long long)n, e);
        }
        free(ids);
    }
    for (int i = 0; i <= k.layers; i++) {
        free(ref[i]);
        free(mine[i]);
    }
    free(ref);
    free(mine);
    free(out);
    case_close(&k);
}

static void test_text_tiny(void **state)
{
    (void)state;
    check_case("text_tiny");
}

static void test_text_gqa(void **state)
{
    (void)state;
    check_case("text_gqa");
}

/* A prompt's hidden states are the same bits after a longer prompt (the activations are
 * reused, not carried over) and with 1 thread as with 2. */
static void test_same_bits(void **state)
{
    (void)state;
    text_case_t k2, k1;
    case_open(&k2, "text_gqa", 2);
    case_open(&k1, "text_gqa", 1);
    char err[512];
    int64_t n0, n1;
    int32_t *short_ids = sample_ids(&k2, 0, &n0), *long_ids = sample_ids(&k2, 1, &n1);
    assert_true(n1 > n0);
    const int64_t D = k2.dim;
    float *a = malloc((size_t)(n0 * D) * 4), *b = malloc((size_t)(n1 * D) * 4);
    float *c = malloc((size_t)(n0 * D) * 4);
    assert_int_equal(qwen_text_encoder_forward(k2.enc, short_ids, n0, a, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_text_encoder_forward(k2.enc, long_ids, n1, b, NULL, err, sizeof err), 0);
    assert_int_equal(qwen_text_encoder_forward(k2.enc, short_ids, n0, c, NULL, err, sizeof err), 0);
    assert_memory_equal(a, c, (size_t)(n0 * D) * 4);
    assert_int_equal(qwen_text_encoder_forward(k1.enc, short_ids, n0, c, NULL, err, sizeof err), 0);
    assert_memory_equal(a, c, (size_t)(n0 * D) * 4);
    /* the short prompt's tokens as the start of the long one: causal, so the same rows (the
     * GEMMs have other row counts, so to rounding, not bits) */
    assert_int_equal(qwen_text_encoder_forward(k2.enc, long_ids, n0, c, NULL, err, sizeof err), 0);
    float *head = malloc((size_t)(n0 * D) * 4);
    memcpy(head, b, (size_t)(n0 * D) * 4);
    assert_true(rel_err(c, head, n0 * D) < 1e-5);
    free(head);
    free(a);
    free(b);
    free(c);
    free(short_ids);
    free(long_ids);
    case_close(&k2);
    case_close(&k1);
}

/* The context's stop is asked before each layer: saying no changes no bit, saying yes ends the
 * forward with "stopped", and the encoder works on afterwards. */
static void test_stop(void **state)
{
    (void)state;
    text_case_t k;
    case_open(&k, "text_gqa", 2);
    char err[512];
    int64_t n;
    int32_t *ids = sample_ids(&k, 0, &n);
    const size_t bytes = (size_t)(n * k.dim) * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes);
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, n, a, NULL, err, sizeof err), 0);
    test_stop_t never = {.left = 1 << 30}, second = {.left = 1};
    k.ctx.stop = test_stop_after;
    k.ctx.stop_user = &never;
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, n, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, bytes);
    assert_int_equal(never.asked, k.layers);
    k.ctx.stop_user = &second;
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, n, b, NULL, err, sizeof err), -1);
    assert_string_equal(err, "stopped");
    assert_int_equal(second.asked, 2);
    k.ctx.stop = NULL;
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, n, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, bytes);
    free(a);
    free(b);
    free(ids);
    case_close(&k);
}

static void test_bad_ids(void **state)
{
    (void)state;
    text_case_t k;
    case_open(&k, "text_tiny", 1);
    char err[512] = "";
    float out[64 * 16];
    const int vocab = qwen_text_encoder_config(k.enc)->vocab_size;
    int32_t ids[] = {1, 2, vocab};
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, 3, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "outside the vocabulary"));
    ids[2] = -1;
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, 3, out, NULL, err, sizeof err), -1);
    assert_int_equal(qwen_text_encoder_forward(k.enc, ids, 0, out, NULL, err, sizeof err), -1);
    case_close(&k);
}

/* ---- loader errors: a copy of text_tiny's folder with one thing changed ---------------------- */

static char g_tmp[256];

static int make_tmp(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_text_encoder.XXXXXX");
    if (!mkdtemp(g_tmp))
        return -1;
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", g_tmp);
    test_copy_file(GOLDEN "/text_tiny/text_encoder/model.safetensors", path);
    return 0;
}

static int remove_tmp(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", g_tmp);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    unlink(path);
    rmdir(g_tmp);
    return 0;
}

/* Loads g_tmp with this config.json; returns the error ("" when it loaded). */
static const char *load_with(const char *config, char *err, size_t errlen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    test_write_text(path, config);
    nn_ctx_t ctx;
    assert_int_equal(nn_ctx_init_cpu(&ctx, 1), 0);
    err[0] = 0;
    qwen_text_encoder_t *enc = qwen_text_encoder_load(g_tmp, &ctx, err, errlen);
    if (enc)
        assert_string_equal(err, "");
    qwen_text_encoder_free(&enc);
    nn_ctx_free(&ctx);
    return err;
}

#define TINY_TEXT "\"hidden_size\": 16, \"intermediate_size\": 16, \"num_attention_heads\": 2, " \
                  "\"num_key_value_heads\": 2, \"vocab_size\": 2320"

static void test_loader_errors(void **state)
{
    (void)state;
    char err[1024];
    /* the older layout: text keys at the top level, rope_scaling beside rope_theta */
    assert_string_equal(load_with("{" TINY_TEXT ", \"num_hidden_layers\": 2, \"rope_theta\": 1e6,"
                                  " \"rope_scaling\": {\"type\": \"mrope\", \"mrope_section\": [1, 1, 2]}}",
                                  err, sizeof err), "");
    /* transformers 5: text_config with rope_parameters */
    assert_string_equal(load_with("{\"text_config\": {" TINY_TEXT ", \"num_hidden_layers\": 2, "
                                  "\"rope_parameters\": {\"rope_theta\": 1e6, \"rope_type\": \"default\", "
                                  "\"mrope_section\": [1, 1, 2]}}}", err, sizeof err), "");
    /* a layer the file does not have: the error names the tensor, the file and the shape */
    load_with("{" TINY_TEXT ", \"num_hidden_layers\": 3}", err, sizeof err);
    assert_non_null(strstr(err, "model.layers.2.input_layernorm.weight"));
    assert_non_null(strstr(err, "model.safetensors"));
    /* widths that do not match the file */
    load_with("{\"hidden_size\": 16, \"intermediate_size\": 32, \"num_attention_heads\": 2, "
              "\"vocab_size\": 2320, \"num_hidden_layers\": 2}", err, sizeof err);
    assert_non_null(strstr(err, "model.layers.0.mlp.gate_proj.weight has shape f32[16,16], "
                                "expected [32,16]"));
    load_with("{\"hidden_size\": 16, \"intermediate_size\": 16, \"num_attention_heads\": 2, "
              "\"vocab_size\": 100, \"num_hidden_layers\": 2}", err, sizeof err);
    assert_non_null(strstr(err, "embed_tokens.weight"));
    load_with("{" TINY_TEXT "}", err, sizeof err);
    assert_non_null(strstr(err, "missing num_hidden_layers"));
    load_with("{" TINY_TEXT ", \"num_hidden_layers\": 2, \"use_sliding_window\": true}", err,
              sizeof err);
    assert_non_null(strstr(err, "use_sliding_window"));
    load_with("{" TINY_TEXT ", \"num_hidden_layers\": 2, \"hidden_act\": \"gelu\"}", err,
              sizeof err);
    assert_non_null(strstr(err, "hidden_act"));
    load_with("{" TINY_TEXT ", \"num_hidden_layers\": 2, \"rope_scaling\": {\"mrope_section\": [1, 1, 1]}}",
              err, sizeof err);
    assert_non_null(strstr(err, "mrope_section adds up to 3"));
    load_with("{" TINY_TEXT ", \"num_hidden_layers\": 2, \"rope_parameters\": {\"rope_type\": \"yarn\"}}",
              err, sizeof err);
    assert_non_null(strstr(err, "yarn"));
    load_with("{\"hidden_size\": 16, \"intermediate_size\": 16, \"num_attention_heads\": 3, "
              "\"vocab_size\": 2320, \"num_hidden_layers\": 2}", err, sizeof err);
    assert_non_null(strstr(err, "must divide"));
    load_with("[1, 2]", err, sizeof err);
    assert_non_null(strstr(err, "not a JSON object"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_tiny),
        cmocka_unit_test(test_text_gqa),
        cmocka_unit_test(test_same_bits),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test_setup_teardown(test_loader_errors, make_tmp, remove_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
