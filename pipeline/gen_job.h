/* gen_job: what a text-to-image job carries between the stages, the one contract that ingress,
 * text, denoise, vae and encode share (and diffusiond-generate, which runs the same steps in
 * one process).
 *
 * One job makes one image. Its route is text -> denoise -> vae -> encode -> back to its origin
 * (ingress); a request for n images is n jobs with seeds seed, seed+1, ...
 *
 * Parameters travel in the job's params bytes as a JSON object (gen_params_encode/decode):
 * small, readable in a log, and parsed with jansson, whose allocations are bounded by the
 * input's size; every field is checked again on arrival, as all wire data is.
 *
 * Tensors, by the step that reads them (each stage releases what it read and attaches what it
 * made):
 *   text     reads nothing;    attaches GEN_T_PROMPT [1, L, D] f32, GEN_T_PROMPT_MASK [1, L]
 *            f32 and, with a negative prompt, GEN_T_NEG [1, Ln, D], GEN_T_NEG_MASK [1, Ln]
 *   denoise  reads those;      attaches GEN_T_LATENTS [1, 16, 1, h, w] f32: the final latents,
 *            de-normalised for the VAE (h = H/8, w = W/8)
 *   vae      reads latents;    attaches GEN_T_PIXELS [H, W, 3] u8
 *   encode   reads pixels;     attaches GEN_T_FILE [bytes] u8: the PNG, JPEG or WebP file
 * A mask tensor of all ones is still sent (the denoise stage applies the pipeline's rule that
 * an all-ones mask is no mask). */
#ifndef DIFFUSIOND_PIPELINE_GEN_JOB_H
#define DIFFUSIOND_PIPELINE_GEN_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GEN_TEXT_MAX 24000          /* bytes of a prompt or a negative prompt */
#define GEN_SIDE_MIN 16
#define GEN_SIDE_MAX 16384
#define GEN_STEPS_MAX 1000
#define GEN_CFG_MAX 100.0

/* Tensor positions in the job as it leaves text (denoise's inputs). */
enum { GEN_T_PROMPT = 0, GEN_T_PROMPT_MASK = 1, GEN_T_NEG = 2, GEN_T_NEG_MASK = 3 };
/* The single tensor after denoise, vae and encode. */
enum { GEN_T_LATENTS = 0, GEN_T_PIXELS = 0, GEN_T_FILE = 0 };

typedef enum {
    GEN_FORMAT_PNG = 0,
    GEN_FORMAT_JPEG = 1,
    GEN_FORMAT_WEBP = 2,
} gen_format_t;

typedef struct {
    char *prompt;              /* owned, NUL-terminated UTF-8 (the tokenizer checks it) */
    char *negative_prompt;     /* owned; NULL when the request has none */
    int width, height;         /* pixels, multiples of 16 */
    int steps;
    double true_cfg_scale;     /* guidance runs when > 1 and a negative prompt is given */
    uint64_t seed;             /* this image's seed (the request's seed + its index) */
    int max_sequence_length;   /* 1..1024 */
    gen_format_t format;
    int quality;               /* 0..100: JPEG and WebP quality (100: lossless WebP) */
} gen_params_t;

/* The params as JSON; *out is malloc'd (not NUL-terminated in *len). 0, or -1 with err when a
 * field is out of bounds (a caller bug: ingress validates first) or memory ran out. */
int gen_params_encode(const gen_params_t *p, char **out, size_t *len, char *err, size_t errlen);

/* Parses and checks params bytes from a job. 0, or -1 with err naming the field; *p is then
 * empty. Free with gen_params_free. */
int gen_params_decode(const uint8_t *data, size_t len, gen_params_t *p, char *err,
                      size_t errlen);
void gen_params_free(gen_params_t *p);

/* Checks the fields of p against the bounds above (what decode enforces). */
int gen_params_check(const gen_params_t *p, char *err, size_t errlen);

#endif
