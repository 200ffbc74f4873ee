/* test_gen_request: request validation's limits that the API tests reach only with a special
 * config: the default size within http_pixels_max, and job params that must fit one message
 * (PROTO_MAX_PARAMS) whatever the prompts' bytes are. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/proto.h"
#include "pipeline/gen_request.h"

static const gen_request_limits_t limits = {
    .prompt_max = 8192, .pixels_max = 4194304, .steps_max = 100, .n_max = 10,
};

/* {"prompt": "<n bytes of c>"[, "negative_prompt": "<n bytes of c>"]<extra>}, malloc'd; c is
 * written as a JSON escape where it needs one. */
static char *body_with(char c, size_t n, bool negative, const char *extra)
{
    char esc[8];
    if ((unsigned char)c < 0x20)
        snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
    else if (c == '"' || c == '\\')
        snprintf(esc, sizeof esc, "\\%c", c);
    else
        snprintf(esc, sizeof esc, "%c", c);
    size_t e = strlen(esc), cap = 2 * n * e + strlen(extra) + 64;
    char *b = malloc(cap), *w = b;
    assert_non_null(b);
    w += sprintf(w, "{\"prompt\":\"");
    for (size_t i = 0; i < n; i++, w += e)
        memcpy(w, esc, e);
    if (negative) {
        w += sprintf(w, "\",\"negative_prompt\":\"");
        for (size_t i = 0; i < n; i++, w += e)
            memcpy(w, esc, e);
    }
    sprintf(w, "\"%s}", extra);
    return b;
}

static int parse(const char *body, const gen_request_limits_t *lim, gen_request_t *req,
                 gen_request_error_t *err)
{
    return gen_request_parse(body, strlen(body), lim, req, err);
}

static void test_default_size_fits_pixels_max(void **state)
{
    (void)state;
    static const struct {
        int64_t pixels_max;
        int side;
    } cases[] = {
        {4194304, 1024}, {1048576, 1024}, {1048575, 1008}, {500000, 704}, {65536, 256},
        {300, 16}, {256, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gen_request_limits_t lim = limits;
        lim.pixels_max = cases[i].pixels_max;
        static const char *const bodies[] = {"{\"prompt\":\"a\"}",
                                             "{\"prompt\":\"a\",\"size\":\"auto\"}"};
        for (size_t k = 0; k < 2; k++) {
            gen_request_t req;
            gen_request_error_t err;
            if (parse(bodies[k], &lim, &req, &err) != 0)
                fail_msg("pixels_max %lld: %s", (long long)lim.pixels_max, err.message);
            assert_int_equal(req.params.width, cases[i].side);
            assert_int_equal(req.params.height, cases[i].side);
            gen_request_free(&req);
        }
    }
    /* a size given is still checked against the limit, not clamped */
    gen_request_limits_t lim = limits;
    lim.pixels_max = 500000;
    gen_request_t req;
    gen_request_error_t err;
    assert_int_equal(parse("{\"prompt\":\"a\",\"size\":\"1024x1024\"}", &lim, &req, &err), -1);
    assert_string_equal(err.param, "size");
}

static void test_params_must_fit_a_message(void **state)
{
    (void)state;
    gen_request_t req;
    gen_request_error_t err;
    /* 8192 control characters each: 2 x 49152 bytes of escapes, over 64 KiB together */
    char *b = body_with('\x01', 8192, true, "");
    assert_int_equal(parse(b, &limits, &req, &err), -1);
    assert_string_equal(err.param, "negative_prompt");
    assert_string_equal(err.code, "invalid_value");
    assert_non_null(strstr(err.message, "65536"));
    free(b);
    /* one of them alone fits */
    b = body_with('\x01', 8192, false, "");
    assert_int_equal(parse(b, &limits, &req, &err), 0);
    gen_request_free(&req);
    free(b);
    /* plain text at the byte limit, both prompts: fits */
    b = body_with('x', 8192, true, ",\"seed\":\"18446744073709551615\"");
    assert_int_equal(parse(b, &limits, &req, &err), 0);
    gen_request_free(&req);
    free(b);
    /* a prompt too long alone (a config allowing 24000 bytes) is named as the prompt */
    gen_request_limits_t lim = limits;
    lim.prompt_max = 24000;
    b = body_with('\x1f', 24000, true, "");
    assert_int_equal(parse(b, &lim, &req, &err), -1);
    assert_string_equal(err.param, "prompt");
    free(b);
}

/* Every request that passes encodes into params within the limit, for any seed. */
static void test_passed_requests_encode_within_the_limit(void **state)
{
    (void)state;
    gen_request_limits_t lim = limits;
    lim.prompt_max = 24000;
    for (size_t n = 4000; n <= 24000; n += 500) {
        char *b = body_with('"', n, true, "");
        gen_request_t req;
        gen_request_error_t err;
        if (parse(b, &lim, &req, &err) == 0) {
            req.params.seed = UINT64_MAX;
            char *params = NULL, why[256];
            size_t len = 0;
            assert_int_equal(gen_params_encode(&req.params, &params, &len, why, sizeof why), 0);
            assert_true(len <= PROTO_MAX_PARAMS);
            free(params);
            gen_request_free(&req);
        } else {
            assert_string_equal(err.code, "invalid_value");
            assert_true(n * 2 * 2 > PROTO_MAX_PARAMS - 256); /* only when near the limit */
        }
        free(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_size_fits_pixels_max),
        cmocka_unit_test(test_params_must_fit_a_message),
        cmocka_unit_test(test_passed_requests_encode_within_the_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
