/* gen_request: the JSON body of an image generation request, checked (see the header). */
#include "pipeline/gen_request.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ipc/proto.h"

static int req_fail(gen_request_error_t *err, const char *param, const char *code,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int req_fail(gen_request_error_t *err, const char *param, const char *code,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof err->param, "%s", param);
    err->code = code;
    return -1;
}

const char *gen_request_format_name(gen_format_t f)
{
    switch (f) {
    case GEN_FORMAT_PNG: return "png";
    case GEN_FORMAT_JPEG: return "jpeg";
    case GEN_FORMAT_WEBP: return "webp";
    }
    return "?";
}

/* An integer field in lo..hi; absent or null keeps *out. */
static int req_int(json_t *o, const char *key, long long lo, long long hi, int *out,
                   gen_request_error_t *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return req_fail(err, key, "invalid_type", "'%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return req_fail(err, key, "invalid_value", "'%s' is %lld; allowed: %lld..%lld", key,
                        (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

/* A string field; absent or null gives NULL. */
static int req_string(json_t *o, const char *key, const char **out, gen_request_error_t *err)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return req_fail(err, key, "invalid_type", "'%s' must be a string", key);
    *out = json_string_value(v);
    return 0;
}

/* A string field that must be one of `allowed` (NULL-terminated); `refused` values are
 * understood but cannot be honoured (unsupported_value, with `why`). */
static int req_enum(json_t *o, const char *key, const char *const *allowed,
                    const char *const *refused, const char *why, const char **out,
                    gen_request_error_t *err)
{
    const char *s;
    if (req_string(o, key, &s, err) != 0)
        return -1;
    *out = s;
    if (!s)
        return 0;
    for (int i = 0; refused && refused[i]; i++)
        if (strcmp(s, refused[i]) == 0)
            return req_fail(err, key, "unsupported_value", "'%s' = '%s' is not supported: %s",
                            key, refused[i], why);
    char list[256] = "";
    size_t n = 0;
    for (int i = 0; allowed[i]; i++) {
        if (strcmp(s, allowed[i]) == 0)
            return 0;
        int m = snprintf(list + n, sizeof list - n, "%s'%s'", i ? ", " : "", allowed[i]);
        if (m > 0 && (size_t)m < sizeof list - n)
            n += (size_t)m;
    }
    return req_fail(err, key, "invalid_value", "'%s' = '%.64s' is not valid; allowed: %s", key,
                    s, list);
}

/* "WxH": two decimal numbers without signs or spaces. */
static int req_size(const char *s, int *w, int *h)
{
    long long v[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        int digits = 0;
        while (*s >= '0' && *s <= '9') {
            if (++digits > 6)
                return -1;
            v[k] = v[k] * 10 + (*s++ - '0');
        }
        if (digits == 0 || *s != (k == 0 ? 'x' : '\0'))
            return -1;
        s++;
    }
    *w = (int)v[0];
    *h = (int)v[1];
    return 0;
}

static int req_prompt(json_t *o, const char *key, bool required, int max, char **out,
                      gen_request_error_t *err)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return req_fail(err, key, "missing_required_parameter", "'%s' is required", key);
        return 0;
    }
    if (!json_is_string(v))
        return req_fail(err, key, "invalid_type", "'%s' must be a string", key);
    size_t len = json_string_length(v);
    if (required && len == 0)
        return req_fail(err, key, "invalid_value", "'%s' must not be empty", key);
    if (len > (size_t)max)
        return req_fail(err, key, "invalid_value", "'%s' is %zu bytes; allowed: at most %d",
                        key, len, max);
    /* jansson refuses \u0000 unless asked; the check stays for a body parsed otherwise */
    if (strlen(json_string_value(v)) != len)
        return req_fail(err, key, "invalid_value", "'%s' holds a NUL character", key);
    *out = strdup(json_string_value(v));
    if (!*out)
        return req_fail(err, key, "invalid_value", "out of memory");
    return 0;
}

/* seed: a whole number 0..2^64-1, as a JSON integer (up to 2^63-1, jansson's range) or as a
 * decimal string (the whole range; JavaScript clients lose digits above 2^53 in numbers). */
static int req_seed(json_t *o, gen_request_t *req, gen_request_error_t *err)
{
    json_t *v = json_object_get(o, "seed");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return req_fail(err, "seed", "invalid_value",
                            "'seed' is negative; allowed: 0..18446744073709551615");
        req->params.seed = (uint64_t)json_integer_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno == ERANGE ||
            json_string_length(v) > 20)
            return req_fail(err, "seed", "invalid_value",
                            "'seed' = '%.32s' is not a whole number 0..18446744073709551615", s);
        req->params.seed = (uint64_t)x;
    } else {
        return req_fail(err, "seed", "invalid_type",
                        "'seed' must be an integer (or a decimal string)");
    }
    req->seed_given = true;
    return 0;
}

static const char *const req_known[] = {
    "prompt", "n", "size", "response_format", "output_format", "output_compression", "model",
    "quality", "style", "user", "background", "moderation", "stream", "partial_images",
    "negative_prompt", "num_inference_steps", "true_cfg_scale", "seed", "max_sequence_length",
    "safety_identifier", NULL,
};

static int req_fields(json_t *o, const gen_request_limits_t *lim, gen_request_t *req,
                      gen_request_error_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach(o, key, value) {
        bool known = false;
        for (int i = 0; req_known[i] && !known; i++)
            known = strcmp(key, req_known[i]) == 0;
        if (!known)
            return req_fail(err, "", "unknown_parameter",
                            "unknown parameter '%.64s'; allowed: prompt, n, size, "
                            "response_format, output_format, output_compression, model, "
                            "quality, style, user, safety_identifier, background, moderation, "
                            "negative_prompt, "
                            "num_inference_steps, true_cfg_scale, seed, max_sequence_length",
                            key);
    }
    gen_params_t *p = &req->params;
    if (req_prompt(o, "prompt", true, lim->prompt_max, &p->prompt, err) ||
        req_prompt(o, "negative_prompt", false, lim->prompt_max, &p->negative_prompt, err))
        return -1;
    if (req_int(o, "n", 1, lim->n_max, &req->n, err) ||
        req_int(o, "num_inference_steps", 1, lim->steps_max, &p->steps, err) ||
        req_int(o, "max_sequence_length", 1, 1024, &p->max_sequence_length, err) ||
        req_int(o, "output_compression", 0, 100, &p->quality, err))
        return -1;

    const char *size;
    if (req_string(o, "size", &size, err) != 0)
        return -1;
    if (size && strcmp(size, "auto") != 0) {
        int w, h;
        if (req_size(size, &w, &h) != 0)
            return req_fail(err, "size", "invalid_value",
                            "'size' = '%.32s' is not WIDTHxHEIGHT (as in 1024x1024) or 'auto'",
                            size);
        if (w < GEN_SIDE_MIN || h < GEN_SIDE_MIN || w > GEN_SIDE_MAX || h > GEN_SIDE_MAX ||
            w % 16 || h % 16)
            return req_fail(err, "size", "invalid_value",
                            "'size' = '%s': width and height must be multiples of 16 in %d..%d",
                            size, GEN_SIDE_MIN, GEN_SIDE_MAX);
        p->width = w;
        p->height = h;
    }
    if ((int64_t)p->width * p->height > lim->pixels_max)
        return req_fail(err, "size", "invalid_value",
                        "'size' = %dx%d is %lld pixels; allowed: at most %lld", p->width,
                        p->height, (long long)p->width * p->height, (long long)lim->pixels_max);

    json_t *cfg = json_object_get(o, "true_cfg_scale");
    if (cfg && !json_is_null(cfg)) {
        if (!json_is_number(cfg))
            return req_fail(err, "true_cfg_scale", "invalid_type",
                            "'true_cfg_scale' must be a number");
        double c = json_number_value(cfg);
        if (!isfinite(c) || c < 0 || c > GEN_CFG_MAX)
            return req_fail(err, "true_cfg_scale", "invalid_value",
                            "'true_cfg_scale' is %g; allowed: 0..%g", c, GEN_CFG_MAX);
        p->true_cfg_scale = c;
    }
    if (req_seed(o, req, err) != 0)
        return -1;

    static const char *const formats[] = {"png", "jpeg", "webp", NULL};
    static const char *const response_formats[] = {"b64_json", NULL};
    static const char *const urls[] = {"url", NULL};
    static const char *const qualities[] = {"auto", "high", "medium", "low", "standard", "hd",
                                            "xhigh", "max", NULL};
    static const char *const styles[] = {"vivid", "natural", NULL};
    static const char *const backgrounds[] = {"auto", "opaque", NULL};
    static const char *const transparent[] = {"transparent", NULL};
    static const char *const moderations[] = {"auto", "low", NULL};
    const char *s;
    if (req_enum(o, "response_format", response_formats, urls,
                 "this server keeps no files to link to; use 'b64_json'", &s, err))
        return -1;
    if (req_enum(o, "output_format", formats, NULL, NULL, &s, err))
        return -1;
    if (s)
        p->format = strcmp(s, "png") == 0 ? GEN_FORMAT_PNG
                    : strcmp(s, "jpeg") == 0 ? GEN_FORMAT_JPEG : GEN_FORMAT_WEBP;
    if (req_enum(o, "quality", qualities, NULL, NULL, &s, err))
        return -1;
    snprintf(req->quality, sizeof req->quality, "%s", s ? s : "auto");
    if (req_enum(o, "style", styles, NULL, NULL, &s, err) ||
        req_enum(o, "background", backgrounds, transparent,
                 "the model makes opaque images only", &s, err) ||
        req_enum(o, "moderation", moderations, NULL, NULL, &s, err) ||
        req_string(o, "user", &s, err) || req_string(o, "safety_identifier", &s, err))
        return -1;

    json_t *stream = json_object_get(o, "stream");
    if (stream && !json_is_null(stream)) {
        if (!json_is_boolean(stream))
            return req_fail(err, "stream", "invalid_type", "'stream' must be a boolean");
        if (json_is_true(stream))
            return req_fail(err, "stream", "unsupported_value",
                            "'stream' = true is not supported yet; leave it out or false");
    }
    int partial = 0;
    if (req_int(o, "partial_images", 0, 3, &partial, err))
        return -1;
    if (partial != 0)
        return req_fail(err, "partial_images", "unsupported_value",
                        "'partial_images' needs streaming, which is not supported yet");

    const char *model;
    if (req_string(o, "model", &model, err) != 0)
        return -1;
    if (model && lim->model && lim->model[0] && strcmp(model, lim->model) != 0)
        return req_fail(err, "model", "invalid_value",
                        "'model' = '%.64s' is not served here; allowed: '%s'", model, lim->model);
    return 0;
}

/* The bytes of the job params that p encodes to with the longest seed (image i's seed is the
 * request's + i, any 64-bit number); 0 when they cannot be encoded. */
static size_t req_params_len(const gen_params_t *p)
{
    gen_params_t q = *p;
    q.seed = UINT64_MAX;
    char *text = NULL, why[256];
    size_t len = 0;
    if (gen_params_encode(&q, &text, &len, why, sizeof why) != 0)
        len = 0;
    free(text);
    return len;
}

/* The params must fit one job message (PROTO_MAX_PARAMS): the prompts' byte limit does not
 * make sure of it, since JSON writes a control character as \u00XX, six bytes for one. The
 * param named is the prompt when it is too long alone, else the negative prompt. */
static int req_params_fit(const gen_params_t *p, gen_request_error_t *err)
{
    size_t len = req_params_len(p);
    if (len == 0)
        return req_fail(err, "", "invalid_value",
                        "the request cannot be made into a job (out of memory)");
    if (len <= PROTO_MAX_PARAMS)
        return 0;
    gen_params_t alone = *p;
    alone.negative_prompt = NULL;
    size_t prompt_len = req_params_len(&alone);
    const char *param = prompt_len == 0 || prompt_len > PROTO_MAX_PARAMS ? "prompt"
                                                                         : "negative_prompt";
    return req_fail(err, param, "invalid_value",
                    "'prompt' and 'negative_prompt' make %zu bytes of job parameters as JSON, "
                    "where control characters take 6 bytes each (\\u00XX); allowed: at most "
                    "%d", len, PROTO_MAX_PARAMS);
}

/* The default size: 1024x1024, or the largest square of sides a multiple of 16 within
 * pixels_max when that is smaller (as the default steps within steps_max), so that a request
 * without "size" is never refused for it. */
static int req_default_side(int64_t pixels_max)
{
    int side = GEN_REQUEST_DEFAULT_SIDE;
    while (side > GEN_SIDE_MIN && (int64_t)side * side > pixels_max)
        side -= 16;
    return side;
}

int gen_request_parse(const char *body, size_t len, const gen_request_limits_t *lim,
                      gen_request_t *req, gen_request_error_t *err)
{
    memset(req, 0, sizeof *req);
    memset(err, 0, sizeof *err);
    gen_params_t *p = &req->params;
    req->n = 1;
    p->width = p->height = req_default_side(lim->pixels_max);
    p->steps = GEN_REQUEST_DEFAULT_STEPS < lim->steps_max ? GEN_REQUEST_DEFAULT_STEPS
                                                          : lim->steps_max;
    p->true_cfg_scale = GEN_REQUEST_DEFAULT_CFG;
    p->max_sequence_length = GEN_REQUEST_DEFAULT_MAX_SEQ;
    p->format = GEN_FORMAT_PNG;
    p->quality = 100;

    if (len == 0)
        return req_fail(err, "", "invalid_json", "the body is empty; send a JSON object");
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o)
        return req_fail(err, "", "invalid_json", "the body is not valid JSON: %s (at byte %d)",
                        jerr.text, jerr.position);
    int rc = json_is_object(o) ? req_fields(o, lim, req, err)
                               : req_fail(err, "", "invalid_json",
                                          "the body must be a JSON object");
    json_decref(o);
    if (rc == 0) {
        char why[256];
        if (gen_params_check(p, why, sizeof why) != 0)
            rc = req_fail(err, "", "invalid_value", "%s", why); /* a limit above GEN_* */
        else
            rc = req_params_fit(p, err);
    }
    if (rc != 0)
        gen_request_free(req);
    return rc;
}

void gen_request_free(gen_request_t *req)
{
    if (req)
        gen_params_free(&req->params);
}
