/* gen_job: the generation job's parameters as JSON (see the header). */
#include "pipeline/gen_job.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

int gen_params_check(const gen_params_t *p, char *err, size_t errlen)
{
    if (!p->prompt || strlen(p->prompt) > GEN_TEXT_MAX) {
        snprintf(err, errlen, "prompt: missing or longer than %d bytes", GEN_TEXT_MAX);
        return -1;
    }
    if (p->negative_prompt && strlen(p->negative_prompt) > GEN_TEXT_MAX) {
        snprintf(err, errlen, "negative_prompt: longer than %d bytes", GEN_TEXT_MAX);
        return -1;
    }
    if (p->width < GEN_SIDE_MIN || p->width > GEN_SIDE_MAX || p->width % 16 ||
        p->height < GEN_SIDE_MIN || p->height > GEN_SIDE_MAX || p->height % 16) {
        snprintf(err, errlen, "size: %dx%d is not two multiples of 16 in %d..%d", p->width,
                 p->height, GEN_SIDE_MIN, GEN_SIDE_MAX);
        return -1;
    }
    if (p->steps < 1 || p->steps > GEN_STEPS_MAX) {
        snprintf(err, errlen, "steps: %d is outside 1..%d", p->steps, GEN_STEPS_MAX);
        return -1;
    }
    if (!isfinite(p->true_cfg_scale) || p->true_cfg_scale < 0 || p->true_cfg_scale > GEN_CFG_MAX) {
        snprintf(err, errlen, "true_cfg_scale: outside 0..%g", GEN_CFG_MAX);
        return -1;
    }
    if (p->max_sequence_length < 1 || p->max_sequence_length > 1024) {
        snprintf(err, errlen, "max_sequence_length: %d is outside 1..1024",
                 p->max_sequence_length);
        return -1;
    }
    if (p->format != GEN_FORMAT_PNG && p->format != GEN_FORMAT_JPEG &&
        p->format != GEN_FORMAT_WEBP) {
        snprintf(err, errlen, "format: unknown (%d)", (int)p->format);
        return -1;
    }
    if (p->quality < 0 || p->quality > 100) {
        snprintf(err, errlen, "quality: %d is outside 0..100", p->quality);
        return -1;
    }
    return 0;
}

int gen_params_encode(const gen_params_t *p, char **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (gen_params_check(p, err, errlen) != 0)
        return -1;
    /* the seed as a string: JSON numbers above 2^53 lose digits in many readers */
    char seed[24];
    snprintf(seed, sizeof seed, "%" PRIu64, p->seed);
    json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:f, s:s, s:i, s:i, s:i}", "prompt", p->prompt,
                          "width", p->width, "height", p->height, "steps", p->steps,
                          "true_cfg_scale", p->true_cfg_scale, "seed", seed,
                          "max_sequence_length", p->max_sequence_length, "format",
                          (int)p->format, "quality", p->quality);
    if (o && p->negative_prompt &&
        json_object_set_new(o, "negative_prompt", json_string(p->negative_prompt)) != 0) {
        json_decref(o);
        o = NULL;
    }
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (!text) {
        snprintf(err, errlen, "cannot encode the job's parameters (out of memory, or a prompt "
                              "that is not UTF-8)");
        return -1;
    }
    *out = text;
    *len = strlen(text);
    return 0;
}

void gen_params_free(gen_params_t *p)
{
    if (!p)
        return;
    free(p->prompt);
    free(p->negative_prompt);
    memset(p, 0, sizeof *p);
}

static int get_int(json_t *o, const char *key, int *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
        json_integer_value(v) > INT32_MAX) {
        snprintf(err, errlen, "params: %s is missing or not an integer", key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

int gen_params_decode(const uint8_t *data, size_t len, gen_params_t *p, char *err,
                      size_t errlen)
{
    memset(p, 0, sizeof *p);
    json_error_t jerr;
    json_t *o = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        snprintf(err, errlen, "params: not a JSON object (%s)", o ? "another type" : jerr.text);
        json_decref(o);
        return -1;
    }
    int rc = -1, format = -1;
    json_t *prompt = json_object_get(o, "prompt"), *neg = json_object_get(o, "negative_prompt");
    json_t *cfg = json_object_get(o, "true_cfg_scale"), *seed = json_object_get(o, "seed");
    if (!json_is_string(prompt) || (neg && !json_is_string(neg))) {
        snprintf(err, errlen, "params: prompt or negative_prompt is not a string");
        goto out;
    }
    if (!json_is_number(cfg)) {
        snprintf(err, errlen, "params: true_cfg_scale is missing or not a number");
        goto out;
    }
    char *end = NULL;
    const char *seed_text = json_is_string(seed) ? json_string_value(seed) : "";
    errno = 0;
    unsigned long long seed_value = strtoull(seed_text, &end, 10);
    if (!*seed_text || *seed_text == '-' || *end || errno == ERANGE) {
        snprintf(err, errlen, "params: seed is not a whole number in a string");
        goto out;
    }
    if (get_int(o, "width", &p->width, err, errlen) || get_int(o, "height", &p->height, err, errlen) ||
        get_int(o, "steps", &p->steps, err, errlen) ||
        get_int(o, "max_sequence_length", &p->max_sequence_length, err, errlen) ||
        get_int(o, "format", &format, err, errlen) || get_int(o, "quality", &p->quality, err, errlen))
        goto out;
    p->format = (gen_format_t)format;
    p->seed = (uint64_t)seed_value;
    p->true_cfg_scale = json_number_value(cfg);
    /* the prompt may not hold NUL bytes: the stages read it as a C string */
    if (strlen(json_string_value(prompt)) != json_string_length(prompt) ||
        (neg && strlen(json_string_value(neg)) != json_string_length(neg))) {
        snprintf(err, errlen, "params: a prompt holds a NUL character");
        goto out;
    }
    p->prompt = strdup(json_string_value(prompt));
    p->negative_prompt = neg ? strdup(json_string_value(neg)) : NULL;
    if (!p->prompt || (neg && !p->negative_prompt)) {
        snprintf(err, errlen, "params: out of memory");
        goto out;
    }
    rc = gen_params_check(p, err, errlen);
out:
    json_decref(o);
    if (rc != 0)
        gen_params_free(p);
    return rc;
}
