/* gen_request: an OpenAI-style image generation request (the JSON body of
 * POST /v1/images/generations) checked and turned into a job's parameters.
 *
 * The ingress stage calls it on every body; it is pure (no I/O, no globals) so that the unit
 * tests and the fuzz target run it as the server does. Every field is checked for its type
 * and range, unknown fields are refused (as OpenAI's API does), and a failure says which
 * parameter is wrong and why, in OpenAI's error vocabulary (param, code). */
#ifndef DIFFUSIOND_PIPELINE_GEN_REQUEST_H
#define DIFFUSIOND_PIPELINE_GEN_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline/gen_job.h"

/* What the configuration allows (config [server] http_*). */
typedef struct {
    int prompt_max;            /* bytes of prompt and of negative_prompt */
    int64_t pixels_max;        /* width x height */
    int steps_max;
    int n_max;
    const char *model;         /* the name "model" must equal; NULL or "": any name */
} gen_request_limits_t;

/* Defaults for the fields a request leaves out (QwenImagePipeline's where it has one). */
#define GEN_REQUEST_DEFAULT_SIDE 1024
#define GEN_REQUEST_DEFAULT_STEPS 50
#define GEN_REQUEST_DEFAULT_CFG 4.0
#define GEN_REQUEST_DEFAULT_MAX_SEQ 512
/* A random seed is drawn below 2^53 so that every JSON reader gets it back exactly. */
#define GEN_REQUEST_RANDOM_SEED_MAX ((UINT64_C(1) << 53) - 1)

typedef struct {
    gen_params_t params;       /* params.seed: the first image's; image i gets seed + i */
    int n;
    bool seed_given;           /* false: the caller draws one (params.seed is 0 then) */
    char quality[16];          /* as given, echoed in the answer ("auto" when absent) */
} gen_request_t;

typedef struct {
    char message[512];
    char param[32];            /* the field at fault, "" for the body as a whole */
    const char *code;          /* "invalid_json", "invalid_type", "invalid_value",
                                  "missing_required_parameter", "unknown_parameter",
                                  "unsupported_value" */
} gen_request_error_t;

/* Parses body (len bytes, not NUL-terminated) into *req. 0, or -1 with *err filled and *req
 * empty. Free a parsed request with gen_request_free. */
int gen_request_parse(const char *body, size_t len, const gen_request_limits_t *lim,
                      gen_request_t *req, gen_request_error_t *err);
void gen_request_free(gen_request_t *req);

/* "png", "jpeg", "webp". */
const char *gen_request_format_name(gen_format_t f);

#endif
