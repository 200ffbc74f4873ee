/* test_qwen_image: the Qwen-Image transformer, scheduler and sampling loop against the golden
 * vectors that tools/golden/gen_qwen_image.py made with the reference (diffusers + torch), and
 * the properties the service relies on (batch invariance, Philox streams).
 * Relative error ||out - ref|| / ||ref|| below 1e-4 per tensor; on a mismatch the test names
 * the first intermediate (temb, img_in, txt_in, block i, norm_out) that is off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "nn/ops.h"
#include "nn/philox.h"
#include "nn/qwen_image_dit.h"
#include "nn/qwen_image_sampler.h"
#include "nn/safetensors.h"
#include "nn/scheduler.h"
#include "tests/common/golden.h"
#include "tests/common/stop.h"

#define GOLDEN "tests/golden"
#define TOL 1e-4

/* The golden vectors are committed: a missing one is a broken checkout, not a skip. */
static bool have(const char *path)
{
    if (access(path, R_OK) == 0)
        return true;
    fail_msg("%s is missing: tools/golden/gen_qwen_image.py makes it", path);
    return false;
}

/* Loads a dit_* golden case and its inputs. */
typedef struct {
    dit_t *dit;
    safetensors_t *io;
    dit_input_t in;
    float *img, *txt, *mask, *timestep;
    nn_ctx_t ctx;
} dit_case_t;

static void case_open(dit_case_t *k, const char *name, int threads)
{
    char path[512], err[1024];
    memset(k, 0, sizeof *k);
    assert_int_equal(nn_ctx_init_cpu(&k->ctx, threads), 0);
    snprintf(path, sizeof path, GOLDEN "/%s/transformer", name);
    k->dit = dit_load(path, &k->ctx, err, sizeof err);
    if (!k->dit)
        fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN "/%s/io.safetensors", name);
    k->io = safetensors_open(path, err, sizeof err);
    if (!k->io)
        fail_msg("%s", err);
    const st_tensor_t *hs = safetensors_find(k->io, "hidden_states");
    const st_tensor_t *ehs = safetensors_find(k->io, "encoder_hidden_states");
    const st_tensor_t *shapes = safetensors_find(k->io, "img_shapes");
    assert_non_null(hs);
    assert_non_null(ehs);
    assert_non_null(shapes);
    k->img = golden(k->io, "hidden_states", NULL);
    k->txt = golden(k->io, "encoder_hidden_states", NULL);
    k->timestep = golden(k->io, "timestep", NULL);
    if (safetensors_find(k->io, "encoder_hidden_states_mask"))
        k->mask = golden(k->io, "encoder_hidden_states_mask", NULL);
    k->in = (dit_input_t){
        .batch = (int)hs->shape[0], .img_len = hs->shape[1], .txt_len = ehs->shape[1],
        .img = k->img, .txt = k->txt, .txt_mask = k->mask, .timestep = k->timestep,
        .n_images = (int)shapes->shape[0],
    };
    for (int i = 0; i < k->in.n_images; i++)
        k->in.images[i] = (dit_image_shape_t){(int)golden_int(k->io, "img_shapes", 3 * i),
                                              (int)golden_int(k->io, "img_shapes", 3 * i + 1),
                                              (int)golden_int(k->io, "img_shapes", 3 * i + 2)};
}

static void case_close(dit_case_t *k)
{
    dit_free(&k->dit);
    safetensors_close(&k->io);
    free(k->img);
    free(k->txt);
    free(k->mask);
    free(k->timestep);
    nn_ctx_free(&k->ctx);
}

/* Runs the forward with a full trace and compares every intermediate, in order. */
static void check_dit_case(const char *name)
{
    char path[512], err[1024];
    snprintf(path, sizeof path, GOLDEN "/%s/io.safetensors", name);
    if (!have(path)) {
        skip();
        return;
    }
    dit_case_t k;
    case_open(&k, name, 2);
    const dit_config_t *c = dit_config(k.dit);
    int64_t B = k.in.batch, S = k.in.img_len, L = k.in.txt_len, D = c->dim;
    int64_t out_ch = (int64_t)c->patch_size * c->patch_size * c->out_channels;
    float *out = calloc((size_t)(B * S * out_ch), sizeof(float));
    dit_trace_t tr = {
        .temb = calloc((size_t)(B * D), 4), .img_in = calloc((size_t)(B * S * D), 4),
        .txt_in = calloc((size_t)(B * L * D), 4), .norm_out = calloc((size_t)(B * S * D), 4),
        .block_img = calloc((size_t)c->num_layers, sizeof(float *)),
        .block_txt = calloc((size_t)c->num_layers, sizeof(float *)),
    };
    for (int i = 0; i < c->num_layers; i++) {
        tr.block_img[i] = calloc((size_t)(B * S * D), 4);
        tr.block_txt[i] = calloc((size_t)(B * L * D), 4);
    }
    if (dit_forward(k.dit, &k.in, out, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);

    /* In the order the forward computes them: the first one off is where it goes wrong. */
    struct { char name[64]; const float *got; } stages[256];
    int n = 0;
    snprintf(stages[n].name, 64, "temb"), stages[n++].got = tr.temb;
    snprintf(stages[n].name, 64, "img_in"), stages[n++].got = tr.img_in;
    snprintf(stages[n].name, 64, "txt_in"), stages[n++].got = tr.txt_in;
    for (int i = 0; i < c->num_layers && n < 250; i++) {
        snprintf(stages[n].name, 64, "block.%d.img", i), stages[n++].got = tr.block_img[i];
        snprintf(stages[n].name, 64, "block.%d.txt", i), stages[n++].got = tr.block_txt[i];
    }
    snprintf(stages[n].name, 64, "norm_out"), stages[n++].got = tr.norm_out;
    snprintf(stages[n].name, 64, "output"), stages[n++].got = out;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int64_t count;
        float *ref = golden(k.io, stages[i].name, &count);
        /* With zero_cond_t the reference embeds [t, 0]: its temb has 2B rows, t's first. */
        if (i == 0 && c->zero_cond_t && count == 2 * B * D)
            count = B * D;
        double e = rel_err(stages[i].got, ref, count);
        printf("  %s %-14s rel err %.3g\n", name, stages[i].name, e);
        if (e > TOL && !failed) {
            printf("  %s: first mismatch at %s (%.3g > %g)\n", name, stages[i].name, e, TOL);
            failed = 1;
        }
        free(ref);
    }
    for (int i = 0; i < c->num_layers; i++) {
        free(tr.block_img[i]);
        free(tr.block_txt[i]);
    }
    free(tr.block_img);
    free(tr.block_txt);
    free(tr.temb);
    free(tr.img_in);
    free(tr.txt_in);
    free(tr.norm_out);
    free(out);
    case_close(&k);
    assert_int_equal(failed, 0);
}

static void test_dit_tiny(void **state) { (void)state; check_dit_case("dit_tiny"); }
static void test_dit_cfg2(void **state) { (void)state; check_dit_case("dit_cfg2"); }

/* A sample's output is the same, bit for bit, alone and as one of 4 with other timesteps. */
static void test_dit_batch_invariance(void **state)
{
    (void)state;
    if (!have(GOLDEN "/dit_cfg2/io.safetensors")) {
        skip();
        return;
    }
    dit_case_t k;
    char err[1024];
    case_open(&k, "dit_cfg2", 2);
    const dit_config_t *c = dit_config(k.dit);
    int64_t S = k.in.img_len, L = k.in.txt_len, Dt = c->joint_attention_dim;
    int64_t out_ch = (int64_t)c->patch_size * c->patch_size * c->out_channels;
    dit_input_t one = k.in;
    one.batch = 1;
    float *alone = malloc(sizeof(float) * (size_t)(S * out_ch));
    if (dit_forward(k.dit, &one, alone, NULL, err, sizeof err) != 0)
        fail_msg("%s", err);

    /* Batch of 4: sample 0 of the golden input at position 2, others with other times. */
    dit_input_t four = k.in;
    four.batch = 4;
    float *img = malloc(sizeof(float) * (size_t)(4 * S * c->in_channels));
    float *txt = malloc(sizeof(float) * (size_t)(4 * L * Dt));
    float *mask = malloc(sizeof(float) * (size_t)(4 * L));
    float ts[4] = {0.7f, 0.2f, k.timestep[0], 0.95f};
    for (int b = 0; b < 4; b++) {
        int src = b == 2 ? 0 : (b % k.in.batch);
        memcpy(img + b * S * c->in_channels, k.img + src * S * c->in_channels,
               sizeof(float) * (size_t)(S * c->in_channels));
        memcpy(txt + b * L * Dt, k.txt + src * L * Dt, sizeof(float) * (size_t)(L * Dt));
        for (int64_t i = 0; i < L; i++)
            mask[b * L + i] = k.mask ? k.mask[src * L + i] : 1.0f;
    }
    four.img = img;
    four.txt = txt;
    four.txt_mask = mask;
    four.timestep = ts;
    float *batched = malloc(sizeof(float) * (size_t)(4 * S * out_ch));
    if (dit_forward(k.dit, &four, batched, NULL, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_memory_equal(alone, batched + 2 * S * out_ch, sizeof(float) * (size_t)(S * out_ch));
    free(alone);
    free(batched);
    free(img);
    free(txt);
    free(mask);
    case_close(&k);
}

/* The context's stop is asked before each block: saying no changes no bit, saying yes ends
 * the forward with "stopped", and the transformer works on afterwards. */
static void test_dit_stop(void **state)
{
    (void)state;
    if (!have(GOLDEN "/dit_tiny/io.safetensors")) {
        skip();
        return;
    }
    dit_case_t k;
    char err[1024];
    case_open(&k, "dit_tiny", 2);
    const dit_config_t *c = dit_config(k.dit);
    const size_t bytes = sizeof(float) * (size_t)(k.in.batch * k.in.img_len) *
                         (size_t)(c->patch_size * c->patch_size * c->out_channels);
    float *a = malloc(bytes), *b = malloc(bytes);
    assert_int_equal(dit_forward(k.dit, &k.in, a, NULL, err, sizeof err), 0);
    test_stop_t never = {.left = 1 << 30}, second = {.left = 1};
    k.ctx.stop = test_stop_after;
    k.ctx.stop_user = &never;
    assert_int_equal(dit_forward(k.dit, &k.in, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, bytes);
    assert_int_equal(never.asked, k.in.batch * c->num_layers);
    k.ctx.stop_user = &second;
    assert_int_equal(dit_forward(k.dit, &k.in, b, NULL, err, sizeof err), -1);
    assert_string_equal(err, "stopped");
    assert_int_equal(second.asked, 2);
    k.ctx.stop = NULL;
    assert_int_equal(dit_forward(k.dit, &k.in, b, NULL, err, sizeof err), 0);
    assert_memory_equal(a, b, bytes);
    free(a);
    free(b);
    case_close(&k);
}

static void test_dit_rejects_bad_input(void **state)
{
    (void)state;
    if (!have(GOLDEN "/dit_tiny/io.safetensors")) {
        skip();
        return;
    }
    dit_case_t k;
    char err[1024];
    case_open(&k, "dit_tiny", 1);
    float out[16];
    dit_input_t bad = k.in;
    bad.img_len += 1; /* the shapes no longer add up */
    assert_int_equal(dit_forward(k.dit, &bad, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "tokens"));
    bad = k.in;
    bad.n_images = 0;
    assert_int_equal(dit_forward(k.dit, &bad, out, NULL, err, sizeof err), -1);
    case_close(&k);
}

static void test_dit_load_errors(void **state)
{
    (void)state;
    char err[1024];
    nn_ctx_t ctx;
    assert_int_equal(nn_ctx_init_cpu(&ctx, 1), 0);
    assert_null(dit_load("/nonexistent/transformer", &ctx, err, sizeof err));
    assert_non_null(strstr(err, "config.json"));
    nn_ctx_free(&ctx);
    /* Configs outside what the code can run are refused, naming the key. */
    static const struct { const char *json, *key; } bad[] = {
        {"{\"attention_head_dim\": 1024, \"num_attention_heads\": 1, \"axes_dims_rope\": [16, 504, 504]}",
         "attention_head_dim"},
        {"{\"attention_head_dim\": 128, \"axes_dims_rope\": [16, 56, 58]}", "axes_dims_rope"},
        {"{\"num_layers\": 0}", "num_layers"},
        {"{\"guidance_embeds\": true}", "guidance_embeds"},
        {"[1, 2]", "not a JSON object"},
    };
    char path[] = "/tmp/diffusiond-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(bad[i].json, f);
        fclose(f);
        dit_config_t c;
        assert_int_equal(dit_config_load(&c, path, err, sizeof err), -1);
        if (!strstr(err, bad[i].key))
            fail_msg("config %s: error '%s' does not name %s", bad[i].json, err, bad[i].key);
    }
    unlink(path);
}

/* ---- scheduler ---- */

static void test_scheduler(void **state)
{
    (void)state;
    const char *file = GOLDEN "/scheduler/sigmas.safetensors";
    if (!have(file)) {
        skip();
        return;
    }
    char err[1024];
    safetensors_t *st = safetensors_open(file, err, sizeof err);
    if (!st)
        fail_msg("%s", err);
    /* Tensor names: "<variant>.n<steps>.seq<image_seq_len>.sigmas" / ".timesteps"; the
     * variant's config is <variant>.json beside the file. */
    int checked = 0;
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        char variant[64];
        int steps;
        long long seq;
        size_t len = strlen(t->name);
        if (len < 7 || strcmp(t->name + len - 7, ".sigmas") != 0 ||
            sscanf(t->name, "%63[^.].n%d.seq%lld.sigmas", variant, &steps, &seq) != 3)
            continue;
        char cfg_path[256];
        snprintf(cfg_path, sizeof cfg_path, GOLDEN "/scheduler/%s.json", variant);
        sched_config_t c;
        if (sched_config_load(&c, cfg_path, err, sizeof err) != 0)
            fail_msg("%s", err);
        float *sig = malloc(sizeof(float) * (size_t)(steps + 1)), *ts = malloc(sizeof(float) * (size_t)steps);
        assert_int_equal(sched_set_timesteps(&c, steps, sched_mu(&c, seq), sig, ts), 0);
        int64_t n;
        float *ref = golden(st, t->name, &n);
        if (n != steps + 1)
            fail_msg("%s: %lld values, want %d", t->name, (long long)n, steps + 1);
        /* One step with shift_terminal divides 0 by 0 in the reference: NaN there too. */
        for (int k = 0; k <= steps; k++)
            if (isnan(ref[k]) != isnan(sig[k]) || (!isnan(ref[k]) && sig[k] != ref[k]))
                fail_msg("%s[%d]: %.9g, reference %.9g", t->name, k, (double)sig[k], (double)ref[k]);
        char tname[128];
        snprintf(tname, sizeof tname, "%s.n%d.seq%lld.timesteps", variant, steps, seq);
        float *tref = golden(st, tname, &n);
        assert_int_equal(n, steps);
        for (int k = 0; k < steps; k++)
            if (isnan(tref[k]) != isnan(ts[k]) || (!isnan(tref[k]) && ts[k] != tref[k]))
                fail_msg("%s[%d]: %.9g, reference %.9g", tname, k, (double)ts[k], (double)tref[k]);
        free(ref);
        free(tref);
        free(sig);
        free(ts);
        checked++;
    }
    printf("  %d scheduler schedules checked, bit for bit\n", checked);
    assert_true(checked >= 8);
    /* The Euler step at a few step indices of the real config's 20-step schedule. */
    sched_config_t c;
    if (sched_config_load(&c, GOLDEN "/scheduler/exp.json", err, sizeof err) != 0)
        fail_msg("%s", err);
    /* The "call" metadata records how the reference made them: {"euler": {"steps", "seq"}}. */
    const char *call = safetensors_metadata(st, "call");
    assert_non_null(call);
    json_error_t jerr;
    json_t *cj = json_loads(call, 0, &jerr), *ej = json_object_get(cj, "euler");
    assert_non_null(ej);
    int euler = 0;
    {
        int steps = (int)json_integer_value(json_object_get(ej, "steps"));
        long long seq = json_integer_value(json_object_get(ej, "seq"));
        assert_true(steps > 0 && steps <= 1000 && seq > 0);
        float sig[1001], ts[1000];
        sched_set_timesteps(&c, steps, sched_mu(&c, seq), sig, ts);
        for (int k = 0; k < steps; k++) {
            char name[64];
            snprintf(name, sizeof name, "euler.k%d.sample", k);
            if (!safetensors_find(st, name))
                continue;
            int64_t n;
            float *x = golden(st, name, &n);
            snprintf(name, sizeof name, "euler.k%d.model_output", k);
            float *v = golden(st, name, NULL);
            snprintf(name, sizeof name, "euler.k%d.prev_sample", k);
            float *ref = golden(st, name, NULL);
            sched_euler_step(x, v, n, sig[k], sig[k + 1]);
            assert_memory_equal(x, ref, sizeof(float) * (size_t)n);
            free(x);
            free(v);
            free(ref);
            euler++;
        }
    }
    json_decref(cj);
    printf("  %d Euler steps checked, bit for bit\n", euler);
    assert_true(euler >= 3);
    safetensors_close(&st);
}

/* ---- the sampling loop ---- */

static void test_sample_tiny(void **state)
{
    (void)state;
    const char *io_path = GOLDEN "/sample_tiny/io.safetensors";
    if (!have(io_path)) {
        skip();
        return;
    }
    char err[1024];
    nn_ctx_t ctx;
    assert_int_equal(nn_ctx_init_cpu(&ctx, 2), 0);
    dit_t *dit = dit_load(GOLDEN "/sample_tiny/transformer", &ctx, err, sizeof err);
    if (!dit)
        fail_msg("%s", err);
    sched_config_t sc;
    if (sched_config_load(&sc, GOLDEN "/sample_tiny/scheduler/scheduler_config.json", err,
                          sizeof err) != 0)
        fail_msg("%s", err);
    safetensors_t *io = safetensors_open(io_path, err, sizeof err);
    if (!io)
        fail_msg("%s", err);
    const st_tensor_t *pe = safetensors_find(io, "prompt_embeds");
    const st_tensor_t *ne = safetensors_find(io, "negative_prompt_embeds");
    assert_non_null(pe);
    assert_non_null(ne);
    float *latents = golden(io, "latents", NULL);
    float *pemb = golden(io, "prompt_embeds", NULL), *nemb = golden(io, "negative_prompt_embeds", NULL);
    float *pmask = safetensors_find(io, "prompt_embeds_mask") ? golden(io, "prompt_embeds_mask", NULL) : NULL;
    float *nmask = safetensors_find(io, "negative_prompt_embeds_mask")
                       ? golden(io, "negative_prompt_embeds_mask", NULL) : NULL;
    const char *h_s = safetensors_metadata(io, "height"), *w_s = safetensors_metadata(io, "width");
    const char *steps_s = safetensors_metadata(io, "num_inference_steps");
    const char *cfg_s = safetensors_metadata(io, "true_cfg_scale");
    assert_non_null(h_s);
    assert_non_null(w_s);
    assert_non_null(steps_s);
    assert_non_null(cfg_s);
    sampler_params_t p = {
        .height = atoi(h_s), .width = atoi(w_s), .steps = atoi(steps_s),
        .true_cfg_scale = strtof(cfg_s, NULL),
        .txt_len = pe->shape[1], .txt = pemb, .txt_mask = pmask,
        .neg_len = ne->shape[1], .neg = nemb, .neg_mask = nmask,
    };
    if (sampler_denoise(dit, &sc, &p, latents, err, sizeof err) != 0)
        fail_msg("%s", err);
    int64_t n;
    float *ref = golden(io, "final_latents", &n);
    double e = rel_err(latents, ref, n);
    printf("  sample_tiny final latents rel err %.3g\n", e);
    assert_true(e < TOL);
    /* Unpacked and de-normalised for the VAE, with the reference's own final latents. */
    int h, w;
    int64_t S;
    assert_int_equal(sampler_latent_size(p.height, p.width, &h, &w, &S), 0);
    float *x = malloc(sizeof(float) * (size_t)n), *dref = golden(io, "denorm_latents", NULL);
    sampler_unpack(ref, SAMPLER_LATENT_CHANNELS, h, w, x);
    float mean[16], std[16];
    {
        json_error_t jerr;
        json_t *vae = json_load_file(GOLDEN "/sample_tiny/vae/config.json", 0, &jerr);
        assert_non_null(vae);
        for (int i = 0; i < 16; i++) {
            mean[i] = (float)json_number_value(json_array_get(json_object_get(vae, "latents_mean"), (size_t)i));
            std[i] = (float)json_number_value(json_array_get(json_object_get(vae, "latents_std"), (size_t)i));
        }
        json_decref(vae);
    }
    sampler_denormalize(x, SAMPLER_LATENT_CHANNELS, (int64_t)h * w, mean, std);
    assert_memory_equal(x, dref, sizeof(float) * (size_t)n);
    free(x);
    free(dref);
    free(ref);
    free(latents);
    free(pemb);
    free(nemb);
    free(pmask);
    free(nmask);
    safetensors_close(&io);
    dit_free(&dit);
    nn_ctx_free(&ctx);
}

/* ---- packing and Philox ---- */

static void test_pack_round_trip(void **state)
{
    (void)state;
    int C = 16, h = 6, w = 4;
    float x[16 * 6 * 4], packed[16 * 6 * 4], back[16 * 6 * 4];
    for (int i = 0; i < C * h * w; i++)
        x[i] = (float)i;
    sampler_pack(x, C, h, w, packed);
    /* token (i, j) channel c*4 + dy*2 + dx is x[c, 2i+dy, 2j+dx] */
    assert_true(packed[(1 * 2 + 1) * 64 + 3 * 4 + 1 * 2 + 0] == x[(3 * h + 3) * w + 2]);
    sampler_unpack(packed, C, h, w, back);
    assert_memory_equal(x, back, sizeof x);
}

static void test_philox_known_answers(void **state)
{
    (void)state;
    /* Known-answer vectors of Philox4x32-10 (Random123's kat_vectors), as an independent
     * implementation prints them: tools/golden/philox_kat.py (randomgen 2.5.1). */
    static const struct { uint32_t ctr[4], key[2], out[4]; } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        philox4x32_10(kat[i].ctr, kat[i].key, out);
        assert_memory_equal(out, kat[i].out, sizeof out);
    }
}

static void test_philox_stream_is_positional(void **state)
{
    (void)state;
    /* Any slice of a seed's stream equals the same slice of the whole stream. */
    float whole[103], part[50];
    philox_normal(42, 0, 103, whole);
    philox_normal(42, 37, 50, part);
    assert_memory_equal(whole + 37, part, sizeof part);
    float other[103];
    philox_normal(43, 0, 103, other);
    assert_memory_not_equal(whole, other, sizeof whole);
    /* And they look like standard normals. */
    enum { N = 200000 };
    float *z = malloc(sizeof(float) * N);
    philox_normal(7, 0, N, z);
    double m = 0, v = 0;
    for (int i = 0; i < N; i++)
        m += z[i];
    m /= N;
    for (int i = 0; i < N; i++)
        v += (z[i] - m) * (z[i] - m);
    v /= N;
    free(z);
    assert_true(fabs(m) < 0.01 && fabs(v - 1.0) < 0.01);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dit_tiny),
        cmocka_unit_test(test_dit_cfg2),
        cmocka_unit_test(test_dit_batch_invariance),
        cmocka_unit_test(test_dit_stop),
        cmocka_unit_test(test_dit_rejects_bad_input),
        cmocka_unit_test(test_dit_load_errors),
        cmocka_unit_test(test_scheduler),
        cmocka_unit_test(test_sample_tiny),
        cmocka_unit_test(test_pack_round_trip),
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_philox_stream_is_positional),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
