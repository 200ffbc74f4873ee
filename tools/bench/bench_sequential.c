/* bench_sequential: the one-process baseline of the service benchmark. It runs the same jobs
 * as diffusiond-generate does (the same code: text/qwen_image_prompt, pipeline/t2i,
 * nn/qwen_image_vae, codec/image_codec), one after another, with every model loaded once
 * before the clock starts, and prints the throughput.
 *   bench_sequential MODEL --count N [--width W --height H --steps S --threads T --seed S0]
 * Image i uses seed S0 + i, as the service's n images do. Prints "seq_images N",
 * "seq_seconds T", "seq_ms_per_image M". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/image_codec.h"
#include "nn/ops.h"
#include "nn/qwen_image_dit.h"
#include "nn/qwen_image_vae.h"
#include "nn/qwen_text_encoder.h"
#include "nn/scheduler.h"
#include "pipeline/t2i.h"
#include "text/qwen_image_prompt.h"
#include "text/tokenizer.h"
#include "tools/bench/bench_util.h"

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "bench_sequential: " __VA_ARGS__);                               \
            fputc('\n', stderr);                                                             \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_sequential MODEL --count N [--width W --height H "
                        "--steps S --threads T --seed S0 --prompt TEXT]\n");
        return 2;
    }
    const char *model = argv[1], *prompt = "a lighthouse at dusk";
    int count = 4, width = 256, height = 256, steps = 4, threads = 0;
    unsigned long long seed0 = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--count")) count = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--width")) width = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--height")) height = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed0 = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--prompt")) prompt = argv[i + 1];
    }
    CHECK(count >= 1 && width % 16 == 0 && height % 16 == 0 && width > 0 && height > 0 &&
          steps >= 1, "bad arguments");
    char path[1024], err[1024];
    nn_ctx_t ctx;
    CHECK(nn_ctx_init_cpu(&ctx, threads) == 0, "no CPU context");
    snprintf(path, sizeof path, "%s/tokenizer", model);
    tokenizer_t *tok = tokenizer_load(path, err, sizeof err);
    CHECK(tok, "%s", err);
    snprintf(path, sizeof path, "%s/text_encoder", model);
    qwen_text_encoder_t *enc = qwen_text_encoder_load(path, &ctx, err, sizeof err);
    CHECK(enc, "%s", err);
    snprintf(path, sizeof path, "%s/transformer", model);
    dit_t *dit = dit_load(path, &ctx, err, sizeof err);
    CHECK(dit, "%s", err);
    sched_config_t sched;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", model);
    CHECK(sched_config_load(&sched, path, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/vae", model);
    qwen_vae_t *vae = qwen_vae_load(path, &ctx, QWEN_VAE_DECODER, err, sizeof err);
    CHECK(vae, "%s", err);
    float mean[SAMPLER_LATENT_CHANNELS], std[SAMPLER_LATENT_CHANNELS];
    CHECK(t2i_load_vae_stats(model, mean, std, err, sizeof err) == 0, "no vae stats");
    qwen_vae_tiling_t tiling;
    qwen_vae_tiling_default(&tiling);

    int h, w;
    int64_t S;
    sampler_latent_size(height, width, &h, &w, &S);
    float *packed = malloc(sizeof(float) * (size_t)(S * 64));
    float *denorm = malloc(sizeof(float) * (size_t)(S * 64));
    float *image = malloc(sizeof(float) * 3 * (size_t)width * (size_t)height);
    uint8_t *rgb8 = malloc(3 * (size_t)width * (size_t)height);
    CHECK(packed && denorm && image && rgb8, "out of memory");

    /* time per phase, to set against the stages' busy time in the service */
    double phase[4] = {0};
    double *per_image_ms = malloc(sizeof(double) * (size_t)count);
    CHECK(per_image_ms, "out of memory");
    double start = bench_now_s();
    for (int i = 0; i < count; i++) {
        double t0 = bench_now_s();
        /* every job from its prompt, as a request is: the text encoder runs each time */
        qwen_prompt_embeds_t pe;
        CHECK(qwen_image_encode_prompts(tok, enc, &prompt, 1, 512, &pe, err, sizeof err) == 0,
              "%s", err);
        double t1 = bench_now_s();
        CHECK(t2i_initial_latents(seed0 + (unsigned long long)i, width, height, packed) == 0,
              "out of memory");
        t2i_params_t p = {.width = width, .height = height, .steps = steps,
                          .true_cfg_scale = 4.0f,
                          .prompt = {.embeds = pe.embeds, .mask = pe.mask, .len = pe.len}};
        CHECK(t2i_denoise(dit, &sched, &p, packed, mean, std, denorm, err, sizeof err) == 0,
              "%s", err);
        qwen_prompt_embeds_free(&pe);
        double t2 = bench_now_s();
        CHECK(qwen_vae_decode(vae, denorm, 1, h, w, &tiling, image, NULL, err, sizeof err) == 0,
              "%s", err);
        qwen_vae_postprocess(image, height, width, NULL, rgb8);
        double t3 = bench_now_s();
        uint8_t *file;
        size_t len;
        CHECK(image_encode(IMAGE_PNG, rgb8, width, height, 100, &file, &len, err,
                           sizeof err) == 0, "%s", err);
        free(file);
        double t4 = bench_now_s();
        phase[0] += t1 - t0;
        phase[1] += t2 - t1;
        phase[2] += t3 - t2;
        phase[3] += t4 - t3;
        per_image_ms[i] = (t4 - t0) * 1e3;
    }
    double seconds = bench_now_s() - start;
    printf("seq_images %d\nseq_seconds %.3f\nseq_ms_per_image %.2f\n", count, seconds,
           seconds * 1e3 / count);
    printf("seq_p50_ms %.2f\n", bench_median(per_image_ms, count));
    free(per_image_ms);
    static const char *const phase_name[4] = {"text", "denoise", "vae", "encode"};
    for (int k = 0; k < 4; k++)
        printf("seq_%s_ms %.3f\n", phase_name[k], phase[k] * 1e3 / count);
    free(packed);
    free(denorm);
    free(image);
    free(rgb8);
    qwen_vae_free(&vae);
    dit_free(&dit);
    qwen_text_encoder_free(&enc);
    tokenizer_free(&tok);
    nn_ctx_free(&ctx);
    return 0;
}
