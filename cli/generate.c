/* diffusiond-generate: the generation pipeline in one process, no HTTP. It encodes the prompts
 * with the model folder's tokenizer and text encoder (or takes prompt embeddings from files),
 * runs the denoising loop, writes the final latents and decodes them into a PNG with the VAE;
 * or, with --image, encodes an input image into latents as the edit pipelines do. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec/image_codec.h"
#include "nn/json_file.h"
#include "nn/ops.h"
#include "nn/philox.h"
#include "nn/qwen_image_dit.h"
#include "nn/qwen_image_sampler.h"
#include "nn/qwen_image_vae.h"
#include "nn/safetensors.h"
#include "nn/qwen_text_encoder.h"
#include "nn/scheduler.h"
#include "pipeline/t2i.h"
#include "text/qwen_image_prompt.h"
#include "text/tokenizer.h"

typedef struct {
    const char *model, *prompt, *negative_prompt, *prompt_embeds, *negative_embeds, *latents,
        *dump, *output, *image, *dump_latents;
    uint64_t seed;
    bool have_seed;
    int steps, width, height, threads, max_sequence_length;
    float true_cfg_scale;
    bool quiet;
} args_t;

static void usage(FILE *out)
{
    fprintf(out,
        "usage: diffusiond-generate --model DIR (--prompt TEXT | --prompt-embeds FILE) [options]\n"
        "       diffusiond-generate --model DIR --image FILE --dump-latents FILE [--threads N]\n"
        "  --model DIR              a diffusers Qwen-Image folder (transformer/, scheduler/, vae/;\n"
        "                           tokenizer/ and text_encoder/ for --prompt)\n"
        "  --prompt TEXT            the prompt, encoded by the folder's text encoder\n"
        "  --negative-prompt TEXT   the negative prompt (enables true CFG; \"\" counts as given)\n"
        "  --prompt-embeds FILE     instead of --prompt: safetensors with prompt_embeds [1,L,D]\n"
        "                           and, optionally, prompt_embeds_mask [1,L]\n"
        "  --negative-embeds FILE   instead of --negative-prompt: the same for the negative\n"
        "                           prompt; negative_prompt_embeds[_mask] are taken when present\n"
        "  --latents FILE           initial noise: safetensors with latents, packed [1,S,64]\n"
        "  --seed N                 initial noise from Philox4x32-10 (when --latents is not given;\n"
        "                           default 0)\n"
        "  --steps N                denoising steps (default 50, 1..1000)\n"
        "  --true-cfg-scale S       guidance scale (default 4.0; needs a negative prompt)\n"
        "  --width W --height H     image size in pixels, multiples of 16 (default 1024)\n"
        "  --max-sequence-length N  prompt tokens kept, as the pipeline cuts them (default 512,\n"
        "                           1..1024)\n"
        "  --threads N              compute threads (default: every core)\n"
        "  --dump FILE              write the final latents: latents (packed) and, with a vae/\n"
        "                           config, latents_denormalized [1,16,1,h,w] for the decoder\n"
        "  -o, --output FILE        decode the final latents with vae/ and write the image (PNG)\n"
        "  --image FILE             instead of generating: encode a PNG, JPEG or WebP image at its\n"
        "                           own size with vae/'s encoder, as the edit pipelines do\n"
        "  --dump-latents FILE      with --image: write posterior_mean and image_latents (the\n"
        "                           mean normalised with latents_mean/std), each [1,16,1,h,w]\n"
        "  --quiet                  no progress on stderr\n");
}

static int parse_int(const char *opt, const char *text, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *text == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "diffusiond-generate: %s wants a whole number in %ld..%ld, not '%s'\n",
                opt, lo, hi, text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, args_t *a)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'P'},
        {"negative-prompt", required_argument, NULL, 'N'},
        {"prompt-embeds", required_argument, NULL, 'p'},
        {"negative-embeds", required_argument, NULL, 'n'},
        {"latents", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 's'},
        {"steps", required_argument, NULL, 'S'},
        {"true-cfg-scale", required_argument, NULL, 'g'},
        {"width", required_argument, NULL, 'W'},
        {"height", required_argument, NULL, 'H'},
        {"threads", required_argument, NULL, 't'},
        {"max-sequence-length", required_argument, NULL, 'L'},
        {"dump", required_argument, NULL, 'd'},
        {"output", required_argument, NULL, 'o'},
        {"image", required_argument, NULL, 'I'},
        {"dump-latents", required_argument, NULL, 'D'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *a = (args_t){.steps = 50, .width = 1024, .height = 1024, .true_cfg_scale = 4.0f,
                  .max_sequence_length = 512};
    int c;
    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'P': a->prompt = optarg; break;
        case 'N': a->negative_prompt = optarg; break;
        case 'p': a->prompt_embeds = optarg; break;
        case 'n': a->negative_embeds = optarg; break;
        case 'l': a->latents = optarg; break;
        case 'd': a->dump = optarg; break;
        case 'o': a->output = optarg; break;
        case 'I': a->image = optarg; break;
        case 'D': a->dump_latents = optarg; break;
        case 'q': a->quiet = true; break;
        case 's':
            errno = 0;
            a->seed = strtoull(optarg, &end, 10);
            if (errno || *optarg == '\0' || *optarg == '-' || *end != '\0') {
                fprintf(stderr, "diffusiond-generate: --seed wants a whole number in "
                                "0..18446744073709551615, not '%s'\n", optarg);
                return -1;
            }
            a->have_seed = true;
            break;
        case 'S': if (parse_int("--steps", optarg, 1, 1000, &a->steps)) return -1; break;
        case 'W': if (parse_int("--width", optarg, 16, 16384, &a->width)) return -1; break;
        case 'H': if (parse_int("--height", optarg, 16, 16384, &a->height)) return -1; break;
        case 't': if (parse_int("--threads", optarg, 0, 1024, &a->threads)) return -1; break;
        case 'L':
            if (parse_int("--max-sequence-length", optarg, 1, 1024, &a->max_sequence_length))
                return -1;
            break;
        case 'g':
            errno = 0;
            a->true_cfg_scale = strtof(optarg, &end);
            if (errno || *optarg == '\0' || *end != '\0' || !(a->true_cfg_scale >= 0.0f) ||
                a->true_cfg_scale > 100.0f) {
                fprintf(stderr, "diffusiond-generate: --true-cfg-scale wants a number in "
                                "0..100, not '%s'\n", optarg);
                return -1;
            }
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "diffusiond-generate: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (a->dump_latents && !a->image) {
        fprintf(stderr, "diffusiond-generate: --dump-latents needs --image\n");
        return -1;
    }
    if (a->image) { /* encode mode: the image in, its latents out, nothing generated */
        const char *why = !a->model ? "--image needs --model"
                        : !a->dump_latents ? "--image needs --dump-latents"
                        : a->output ? "--image and -o exclude each other"
                        : a->prompt || a->prompt_embeds || a->negative_prompt || a->negative_embeds
                            ? "--image takes no prompt" : NULL;
        if (why) {
            fprintf(stderr, "diffusiond-generate: %s\n", why);
            return -1;
        }
        return 0;
    }
    if (!a->model || !a->prompt_embeds == !a->prompt) {
        fprintf(stderr, "diffusiond-generate: --model and one of --prompt and --prompt-embeds "
                        "are required\n");
        usage(stderr);
        return -1;
    }
    if (a->negative_prompt && a->negative_embeds) {
        fprintf(stderr, "diffusiond-generate: --negative-prompt and --negative-embeds exclude "
                        "each other\n");
        return -1;
    }
    if (a->width % 16 || a->height % 16) {
        fprintf(stderr, "diffusiond-generate: --width and --height must be multiples of 16\n");
        return -1;
    }
    if (a->latents && a->have_seed) {
        fprintf(stderr, "diffusiond-generate: --latents and --seed exclude each other\n");
        return -1;
    }
    return 0;
}

/* Prompt embeddings [1, L, Dt] and an optional mask [1, L] from a safetensors file. */
typedef struct {
    float *embeds, *mask;
    int64_t len;
} embeds_t;

/* The tensors are prompt_embeds and prompt_embeds_mask, or, in a negative file, also
 * negative_prompt_embeds and negative_prompt_embeds_mask (as the pipeline names them). */
static int load_embeds(const char *path, int64_t dim, bool negative, int64_t max_len,
                       embeds_t *e, char *err, size_t errlen)
{
    memset(e, 0, sizeof *e);
    safetensors_t *st = safetensors_open(path, err, errlen);
    if (!st)
        return -1;
    int rc = -1;
    const char *name = "prompt_embeds", *mask_name = "prompt_embeds_mask";
    if (negative && safetensors_find(st, "negative_prompt_embeds")) {
        name = "negative_prompt_embeds";
        mask_name = "negative_prompt_embeds_mask";
    }
    const st_tensor_t *t = safetensors_find(st, name);
    if (!t || t->ndim != 3 || t->shape[0] != 1 || t->shape[2] != dim || t->shape[1] < 1) {
        snprintf(err, errlen, "%s: wants a tensor %s of shape [1, L, %lld]", path, name,
                 (long long)dim);
        goto out;
    }
    e->len = t->shape[1];
    e->embeds = malloc(sizeof(float) * (size_t)(e->len * dim));
    if (!e->embeds || safetensors_read_f32(st, name, 3, t->shape, e->embeds, err, errlen) != 0)
        goto out;
    if (safetensors_find(st, mask_name)) {
        int64_t shape[2] = {1, e->len};
        e->mask = malloc(sizeof(float) * (size_t)e->len);
        if (!e->mask || safetensors_read_f32(st, mask_name, 2, shape, e->mask, err, errlen) != 0)
            goto out;
        for (int64_t i = 0; i < e->len; i++)
            if (e->mask[i] != 0.0f && e->mask[i] != 1.0f) {
                snprintf(err, errlen, "%s: %s holds %g; only 0 and 1 mean something", path,
                         mask_name, (double)e->mask[i]);
                goto out;
            }
    }
    /* encode_prompt cuts embeddings and mask to max_sequence_length, given ones too. */
    if (e->len > max_len)
        e->len = max_len;
    rc = 0;
out:
    safetensors_close(&st);
    if (rc) {
        free(e->embeds);
        free(e->mask);
        memset(e, 0, sizeof *e);
    }
    return rc;
}

/* The prompt and the negative prompt through MODEL/tokenizer and MODEL/text_encoder, each on
 * its own as the pipeline encodes them (encode_prompt is called once for each). The caller
 * runs this before it loads the transformer, and the encoder is freed on return, so the two
 * models are never in memory together. */
static int encode_prompts(const args_t *a, nn_ctx_t *ctx, int64_t dim, embeds_t *pos,
                          embeds_t *neg, char *err, size_t errlen)
{
    char path[PATH_MAX], why[768];
    int rc = -1;
    qwen_text_encoder_t *enc = NULL;
    snprintf(path, sizeof path, "%s/tokenizer", a->model);
    tokenizer_t *tok = tokenizer_load(path, why, sizeof why);
    if (!tok) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    snprintf(path, sizeof path, "%s/text_encoder", a->model);
    if (!(enc = qwen_text_encoder_load(path, ctx, why, sizeof why))) {
        snprintf(err, errlen, "%s", why);
        goto out;
    }
    if (qwen_text_encoder_config(enc)->hidden_size != dim) {
        snprintf(err, errlen, "%.900s: hidden_size %d, but the transformer takes text of width "
                 "%lld", path, qwen_text_encoder_config(enc)->hidden_size, (long long)dim);
        goto out;
    }
    const char *texts[2] = {a->prompt, a->negative_prompt};
    embeds_t *dst[2] = {pos, neg};
    for (int i = 0; i < 2; i++) {
        if (!texts[i])
            continue;
        qwen_prompt_embeds_t pe;
        if (qwen_image_encode_prompts(tok, enc, &texts[i], 1, a->max_sequence_length, &pe, why,
                                      sizeof why) != 0) {
            snprintf(err, errlen, "%s: %s", i ? "--negative-prompt" : "--prompt", why);
            goto out;
        }
        *dst[i] = (embeds_t){.embeds = pe.embeds, .mask = pe.mask, .len = pe.len};
    }
    rc = 0;
out:
    qwen_text_encoder_free(&enc);
    tokenizer_free(&tok);
    return rc;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Writes len bytes to path through a temporary file and a rename: a failed run leaves no
 * half-written image behind. */
static int write_file(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%.900s: path too long", path);
        return -1;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "%.900s: %s", path, strerror(errno));
        return -1;
    }
    bool ok = fwrite(data, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%.900s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The VAE's geometry must be the sampler's: 16 latent channels, spatial factor 8, RGB. */
static int check_vae_config(const char *path, const qwen_vae_config_t *c, char *err,
                            size_t errlen)
{
    if (c->z_dim == SAMPLER_LATENT_CHANNELS && c->spatial_factor == SAMPLER_VAE_SCALE &&
        c->input_channels == 3)
        return 0;
    snprintf(err, errlen, "%.900s: z_dim %d, spatial factor %d, %d image channels; the Qwen-Image "
             "pipeline needs %d, %d and 3", path, c->z_dim, c->spatial_factor, c->input_channels,
             SAMPLER_LATENT_CHANNELS, SAMPLER_VAE_SCALE);
    return -1;
}

static qwen_vae_t *load_vae(const char *model, nn_ctx_t *ctx, int part, char *err,
                            size_t errlen)
{
    char path[PATH_MAX], why[900];
    snprintf(path, sizeof path, "%s/vae", model);
    qwen_vae_t *vae = qwen_vae_load(path, ctx, part, why, sizeof why);
    if (!vae) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (check_vae_config(path, qwen_vae_config(vae), err, errlen) != 0)
        qwen_vae_free(&vae);
    return vae;
}

/* -o: QwenImagePipeline's end: z (unpacked, de-normalised) -> vae.decode -> postprocess to
 * 8-bit RGB (qwen_vae_postprocess's rounding) -> PNG. */
static int write_image(const args_t *a, nn_ctx_t *ctx, const float *z, int h, int w, char *err,
                       size_t errlen)
{
    int rc = -1;
    float *image = NULL;
    uint8_t *rgb8 = NULL, *png = NULL;
    size_t png_len = 0;
    char why[900];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    qwen_vae_t *vae = load_vae(a->model, ctx, QWEN_VAE_DECODER, err, errlen);
    if (!vae)
        return -1;
    const int H = h * SAMPLER_VAE_SCALE, W = w * SAMPLER_VAE_SCALE;
    image = malloc(sizeof(float) * 3 * (size_t)H * (size_t)W);
    rgb8 = malloc(3 * (size_t)H * (size_t)W);
    if (!image || !rgb8) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (qwen_vae_decode(vae, z, 1, h, w, NULL, image, NULL, why, sizeof why) != 0) {
        snprintf(err, errlen, "decoding: %s", why);
        goto out;
    }
    qwen_vae_postprocess(image, H, W, NULL, rgb8);
    if (image_encode(IMAGE_PNG, rgb8, W, H, 0, &png, &png_len, why, sizeof why) != 0) {
        snprintf(err, errlen, "%.300s: %.600s", a->output, why);
        goto out;
    }
    if (write_file(a->output, png, png_len, err, errlen) != 0)
        goto out;
    if (!a->quiet)
        fprintf(stderr, "decoded %dx%d into %s: %.2f s\n", W, H, a->output, seconds_since(&t0));
    rc = 0;
out:
    free(image);
    free(rgb8);
    free(png);
    qwen_vae_free(&vae);
    return rc;
}

/* --image: the edit pipelines' VAE path for one image (QwenImageEditPipeline._encode_vae_image)
 * at the image's own size (their resize to a 1024x1024 area comes with them): 8-bit RGB ->
 * [-1, 1] -> encoder -> posterior mean, and that normalised with latents_mean/std. */
#define IMAGE_MAX_BYTES (256 << 20)
#define IMAGE_MAX_PIXELS (2048 * 2048) /* the encoder holds 1.2 KiB a pixel */

static int encode_image(const args_t *a, nn_ctx_t *ctx, char *err, size_t errlen)
{
    int rc = -1, width = 0, height = 0, lh, lw;
    uint8_t *file = NULL, *rgb8 = NULL;
    float *pixels = NULL, *mean = NULL, *normed = NULL;
    qwen_vae_t *vae = NULL;
    char why[900];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    FILE *f = fopen(a->image, "rb");
    if (!f) {
        snprintf(err, errlen, "%.900s: %s", a->image, strerror(errno));
        return -1;
    }
    file = malloc(IMAGE_MAX_BYTES);
    size_t len = file ? fread(file, 1, IMAGE_MAX_BYTES, f) : 0;
    bool too_big = file && len == IMAGE_MAX_BYTES && fgetc(f) != EOF;
    fclose(f);
    if (!file || too_big) {
        snprintf(err, errlen, "%.900s: %s", a->image,
                 file ? "larger than 256 MiB" : "out of memory");
        goto out;
    }
    image_format_t fmt;
    if (image_decode(file, len, IMAGE_MAX_PIXELS, &rgb8, &width, &height, &fmt, why,
                     sizeof why) != 0) {
        snprintf(err, errlen, "%.300s: %.600s", a->image, why);
        goto out;
    }
    if (!(vae = load_vae(a->model, ctx, QWEN_VAE_ENCODER, err, errlen)))
        goto out;
    if (qwen_vae_latent_size(qwen_vae_config(vae), height, width, &lh, &lw) != 0) {
        snprintf(err, errlen, "%.900s: an image of %dx%d cannot be encoded (too small for "
                 "three downsamplings)", a->image, width, height);
        goto out;
    }
    const size_t n = (size_t)SAMPLER_LATENT_CHANNELS * (size_t)lh * (size_t)lw;
    pixels = malloc(sizeof(float) * 3 * (size_t)width * (size_t)height);
    mean = malloc(sizeof(float) * n);
    normed = malloc(sizeof(float) * n);
    if (!pixels || !mean || !normed) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    qwen_vae_preprocess_rgb8(rgb8, height, width, pixels);
    if (qwen_vae_encode(vae, pixels, 1, height, width, mean, NULL, why, sizeof why) != 0) {
        snprintf(err, errlen, "%.300s: %.600s", a->image, why);
        goto out;
    }
    memcpy(normed, mean, sizeof(float) * n);
    qwen_vae_normalize(vae, normed, (int64_t)lh * lw);
    const char *names[2] = {"posterior_mean", "image_latents"};
    nn_dtype_t dtypes[2] = {NN_DTYPE_F32, NN_DTYPE_F32};
    int ndims[2] = {5, 5};
    int64_t shapes[2][NN_MAX_DIMS] = {{1, SAMPLER_LATENT_CHANNELS, 1, lh, lw},
                                      {1, SAMPLER_LATENT_CHANNELS, 1, lh, lw}};
    const void *datas[2] = {mean, normed};
    if (safetensors_write(a->dump_latents, 2, names, dtypes, ndims,
                          (const int64_t(*)[NN_MAX_DIMS])shapes, datas, err, errlen) != 0)
        goto out;
    if (!a->quiet)
        fprintf(stderr, "encoded %dx%d %s into %dx%d latents: %.2f s\n", width, height,
                image_format_name(fmt), lw, lh, seconds_since(&t0));
    rc = 0;
out:
    free(file);
    free(rgb8);
    free(pixels);
    free(mean);
    free(normed);
    qwen_vae_free(&vae);
    return rc;
}

static void progress(void *ctx, int step, int steps, const float *latents)
{
    const args_t *a = ctx;
    if (!a->quiet)
        fprintf(stderr, "\rstep %d/%d", step + 1, steps);
    if (!a->quiet && step + 1 == steps)
        fputc('\n', stderr);
    (void)latents;
}

int main(int argc, char **argv)
{
    /* OpenMP's idle threads spin after each threaded op on the cores the next OpenBLAS GEMM
     * needs unless they sleep; libgomp reads the setting only when it loads, so set it and
     * start again. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        execv("/proc/self/exe", argv);
        /* if that fails, run with spinning threads: slower, not wrong */
    }
    args_t a;
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    char err[1024], path[PATH_MAX];
    nn_ctx_t ctx;
    if (nn_ctx_init_cpu(&ctx, a.threads) != 0) {
        fprintf(stderr, "diffusiond-generate: cannot set up the CPU backend\n");
        return 1;
    }
    int rc = 1;
    dit_t *dit = NULL;
    embeds_t pos = {0}, neg = {0};
    float *latents = NULL, *denorm = NULL;
    if (a.image) {
        if (encode_image(&a, &ctx, err, sizeof err) != 0) {
            fprintf(stderr, "diffusiond-generate: %s\n", err);
            goto out;
        }
        rc = 0;
        goto out;
    }
    if (a.output) { /* a VAE that cannot decode these latents fails before the long part */
        qwen_vae_config_t vc;
        snprintf(path, sizeof path, "%s/vae/config.json", a.model);
        if (qwen_vae_config_load(&vc, path, err, sizeof err) != 0 ||
            check_vae_config(path, &vc, err, sizeof err) != 0) {
            fprintf(stderr, "diffusiond-generate: -o: %s\n", err);
            goto out;
        }
    }

    /* The transformer's config first: its geometry is checked, and its text width taken,
     * before anything large is loaded. */
    dit_config_t dcfg;
    const dit_config_t *dc = &dcfg;
    snprintf(path, sizeof path, "%s/transformer/config.json", a.model);
    if (dit_config_load(&dcfg, path, err, sizeof err) != 0) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    /* The sampler's latents are 2x2 patches of the VAE's 16 channels, in and out. */
    if (dc->patch_size != 2 || dc->in_channels != 4 * SAMPLER_LATENT_CHANNELS ||
        dc->out_channels != SAMPLER_LATENT_CHANNELS) {
        fprintf(stderr, "diffusiond-generate: %s/transformer: patch_size %d, in_channels %d, "
                "out_channels %d; a Qwen-Image text-to-image model has 2, %d and %d\n", a.model,
                dc->patch_size, dc->in_channels, dc->out_channels, 4 * SAMPLER_LATENT_CHANNELS,
                SAMPLER_LATENT_CHANNELS);
        goto out;
    }
    sched_config_t sched;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", a.model);
    if (sched_config_load(&sched, path, err, sizeof err) != 0) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    if ((a.prompt || a.negative_prompt) &&
        encode_prompts(&a, &ctx, dc->joint_attention_dim, &pos, &neg, err, sizeof err) != 0) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    if ((a.prompt_embeds && load_embeds(a.prompt_embeds, dc->joint_attention_dim, false,
                                        a.max_sequence_length, &pos, err, sizeof err) != 0) ||
        (a.negative_embeds && load_embeds(a.negative_embeds, dc->joint_attention_dim, true,
                                          a.max_sequence_length, &neg, err, sizeof err) != 0)) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    snprintf(path, sizeof path, "%s/transformer", a.model);
    if (!(dit = dit_load(path, &ctx, err, sizeof err))) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    int h, w;
    int64_t S;
    sampler_latent_size(a.height, a.width, &h, &w, &S);
    int64_t ch = dc->in_channels;
    latents = malloc(sizeof(float) * (size_t)(S * ch));
    if (!latents) {
        fprintf(stderr, "diffusiond-generate: out of memory\n");
        goto out;
    }
    if (a.latents) {
        safetensors_t *st = safetensors_open(a.latents, err, sizeof err);
        int64_t shape[3] = {1, S, ch};
        if (!st || safetensors_read_f32(st, "latents", 3, shape, latents, err, sizeof err) != 0) {
            fprintf(stderr, "diffusiond-generate: %s\n", err);
            safetensors_close(&st);
            goto out;
        }
        safetensors_close(&st);
    } else if (t2i_initial_latents(a.seed, a.width, a.height, latents) != 0) {
        fprintf(stderr, "diffusiond-generate: out of memory\n");
        goto out;
    }
    float mean[SAMPLER_LATENT_CHANNELS], std[SAMPLER_LATENT_CHANNELS];
    int have_vae = t2i_load_vae_stats(a.model, mean, std, err, sizeof err);
    if (have_vae < 0) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    denorm = malloc(sizeof(float) * (size_t)(S * ch));
    if (!denorm) {
        fprintf(stderr, "diffusiond-generate: out of memory\n");
        goto out;
    }
    t2i_text_t neg_text = {.embeds = neg.embeds, .mask = neg.mask, .len = neg.len};
    t2i_params_t p = {
        .width = a.width, .height = a.height, .steps = a.steps,
        .true_cfg_scale = a.true_cfg_scale,
        .prompt = {.embeds = pos.embeds, .mask = pos.mask, .len = pos.len},
        .negative = neg.embeds ? &neg_text : NULL,
        .on_step = progress, .on_step_ctx = &a,
    };
    if (a.true_cfg_scale > 1.0f && !neg.embeds && !a.quiet)
        fprintf(stderr, "diffusiond-generate: no negative prompt: true CFG is off\n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (t2i_denoise(dit, &sched, &p, latents, mean, std, have_vae == 0 ? denorm : NULL, err,
                    sizeof err) != 0) {
        fprintf(stderr, "diffusiond-generate: %s\n", err);
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!a.quiet)
        fprintf(stderr, "denoised %dx%d in %d steps: %.2f s\n", a.width, a.height, a.steps,
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (a.dump) {
        /* without a vae/ folder there is nothing to de-normalise with: latents alone */
        const char *names[2] = {"latents", "latents_denormalized"};
        nn_dtype_t dtypes[2] = {NN_DTYPE_F32, NN_DTYPE_F32};
        int ndims[2] = {3, 5};
        int64_t shapes[2][NN_MAX_DIMS] = {{1, S, ch}, {1, SAMPLER_LATENT_CHANNELS, 1, h, w}};
        const void *datas[2] = {latents, denorm};
        int n = have_vae == 0 ? 2 : 1;
        if (safetensors_write(a.dump, (size_t)n, names, dtypes, ndims,
                              (const int64_t(*)[NN_MAX_DIMS])shapes, datas, err, sizeof err) != 0) {
            fprintf(stderr, "diffusiond-generate: %s\n", err);
            goto out;
        }
    }
    if (a.output) {
        dit_free(&dit); /* the decoder's activations take its place */
        if (have_vae != 0 || write_image(&a, &ctx, denorm, h, w, err, sizeof err) != 0) {
            fprintf(stderr, "diffusiond-generate: %s\n", have_vae ? "-o: no vae/config.json" : err);
            goto out;
        }
    }
    rc = 0;
out:
    free(latents);
    free(denorm);
    free(pos.embeds);
    free(pos.mask);
    free(neg.embeds);
    free(neg.mask);
    dit_free(&dit);
    nn_ctx_free(&ctx);
    return rc;
}
